"""gatewayd.datasets.troika: TROIKA-layout .mat files written here, and the real recordings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import io as sio

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import NO_LABEL, DatasetError, find_recordings, load_troika
from gatewayd.datasets.troika import PROTOCOLS, RUN_END_S, RUN_START_S, find_troika_ref


def shared_troika() -> Path:
    """../shared/data/troika, or $GATEWAYD_SHARED_DATA (the data folder or troika itself)."""
    env = os.environ.get("GATEWAYD_SHARED_DATA")
    if env:
        base = Path(env)
        return base / "troika" if (base / "troika").is_dir() else base
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "troika"


TROIKA = shared_troika()
FS = 125


def make_sig(seconds: float, *, rows: int = 6, hr_hz: float = 1.5) -> npt.NDArray[np.float64]:
    """A TROIKA-like ``sig``: PPG1 = pulse + 100, PPG2 = pulse - 20, ACC in g (z = gravity)."""
    n = round(seconds * FS)
    t = np.arange(n) / FS
    pulse = 50 * np.sin(2 * np.pi * hr_hz * t)
    ecg = np.zeros(n)
    acc = np.vstack([0.1 * np.sin(2 * np.pi * 2.5 * t), np.zeros(n), np.full(n, 0.9)])
    sig = np.vstack([ecg, pulse + 100, pulse - 20, acc])
    return sig if rows == 6 else sig[6 - rows :]


def windows_at_125(n: int) -> int:
    return (n - 8 * FS) // (2 * FS) + 1


def write_pair(
    folder: Path, stem: str = "01_TYPE01", seconds: float = 300.0, ref_count: int | None = None
) -> Path:
    sig = make_sig(seconds)
    data = folder / f"DATA_{stem}.mat"
    sio.savemat(data, {"sig": sig})
    count = windows_at_125(sig.shape[1]) if ref_count is None else ref_count
    sio.savemat(folder / f"REF_{stem}.mat", {"BPM0": np.linspace(80, 160, count).reshape(-1, 1)})
    return data


# --- files written here ------------------------------------------------------------------------


def test_load_troika_converts_rates_units_and_channels(tmp_path: Path) -> None:
    rec = load_troika(write_pair(tmp_path))
    n = 300 * FS
    assert (rec.source, rec.subject, rec.name) == ("troika", "01", "DATA_01_TYPE01")
    assert rec.bvp.shape == (300 * 64,)
    assert rec.acc.shape == (300 * 32, 3)
    assert rec.bvp.dtype == rec.acc.dtype == np.float32
    # BVP is the mean of the two PPG channels: offsets +100 and -20 average to +40.
    assert float(np.mean(rec.bvp)) == pytest.approx(40.0, abs=0.1)
    t = np.arange(rec.bvp.shape[0]) / 64
    np.testing.assert_allclose(
        rec.bvp[64:-64], (50 * np.sin(2 * np.pi * 1.5 * t) + 40)[64:-64], atol=0.5
    )
    # ACC: g x 64 (the E4's 1/64 g).
    np.testing.assert_allclose(rec.acc[:, 2], 0.9 * 64, atol=1e-3)
    assert float(np.max(np.abs(rec.acc[:, 0]))) == pytest.approx(0.1 * 64, rel=0.02)
    assert rec.hr_ref_kind == "ecg"
    assert rec.hr_ref_bpm is not None
    assert rec.hr_ref_bpm.shape == (rec.window_count(),) == (windows_at_125(n),)
    assert rec.hr_for_window(0) == 80.0
    assert rec.label_names == ("rest", "run")  # treadmill phases, not PPG-DaLiA activities
    assert rec.metadata["ref_count"] == windows_at_125(n)


def test_phase_follows_the_documented_schedule(tmp_path: Path) -> None:
    rec = load_troika(write_pair(tmp_path, "02_TYPE02"))
    assert rec.labels is not None
    assert rec.labels.shape == (300 * 4,)
    # Rest to 26 s, unlabelled 26-40 s, run 40-266 s, unlabelled 266-296 s, rest from 296 s.
    assert rec.labels[: 26 * 4].tolist() == [0] * 26 * 4
    assert (rec.labels[26 * 4 : 40 * 4] == NO_LABEL).all()
    assert (rec.labels[40 * 4 : 266 * 4] == 1).all()
    assert (rec.labels[266 * 4 : 296 * 4] == NO_LABEL).all()
    assert (rec.labels[296 * 4 :] == 0).all()
    assert rec.label_for_window(0) == "rest"  # 0-8 s
    assert rec.group_for_window(0) == ActivityGroup.REST
    assert rec.label_for_window(10) == "rest"  # 20-28 s: 6 s rest, 2 s unlabelled
    assert rec.group_for_window(12) == ActivityGroup.UNKNOWN  # 24-32 s: mostly unlabelled
    assert rec.group_for_window(20) == ActivityGroup.VIGOROUS  # 40-48 s
    assert rec.label_for_window(100) == "run"  # 200-208 s
    assert rec.group_for_window(rec.window_count() - 1) == ActivityGroup.UNKNOWN  # 292-300 s
    speeds = [step["speed_kmh"] for step in rec.metadata["schedule"]]
    assert speeds == [0.0, 6.0, 12.0, 6.0, 12.0, 0.0]
    assert "first sample" in rec.metadata["phase"]
    assert sum(s.duration_s for s in PROTOCOLS["TYPE01"]) == 300.0
    assert sum(s.duration_s for s in PROTOCOLS["TYPE01"][1:-1]) == RUN_END_S - RUN_START_S


def test_phase_labels_do_not_depend_on_the_exact_length(tmp_path: Path) -> None:
    # A longer recording (hidden DATA_08 lasts 326 s) and a shorter one that still completes
    # the last bout: the same labels over their common part, rest to the end.
    long = load_troika(write_pair(tmp_path, "08_TYPE02", seconds=326.0))
    short = load_troika(write_pair(tmp_path, "09_TYPE02", seconds=280.0))
    assert long.labels is not None
    assert short.labels is not None
    np.testing.assert_array_equal(long.labels[: short.labels.size], short.labels)
    assert (long.labels[296 * 4 :] == 0).all()
    assert long.group_for_window(long.window_count() - 1) == ActivityGroup.REST  # 318-326 s
    assert short.group_for_window(short.window_count() - 1) == ActivityGroup.UNKNOWN


def test_phase_is_not_guessed_when_the_protocol_was_not_completed(tmp_path: Path) -> None:
    rec = load_troika(write_pair(tmp_path, "04_TYPE01", seconds=220.0))
    assert rec.labels is None
    assert rec.label_for_window(0) is None
    assert rec.group_for_window(0) == ActivityGroup.UNKNOWN
    assert "not recoverable" in rec.metadata["phase"]


def test_five_row_test_set_layout(tmp_path: Path) -> None:
    sio.savemat(tmp_path / "TEST_S01_T01.mat", {"sig": make_sig(60.0, rows=5)})
    sio.savemat(tmp_path / "True_S01_T01.mat", {"BPM0": np.full((27, 1), 90.0)})
    rec = load_troika(tmp_path / "TEST_S01_T01.mat")
    assert rec.subject == "S01"
    assert float(np.mean(rec.bvp)) == pytest.approx(40.0, abs=0.1)
    assert rec.hr_for_window(5) == 90.0
    assert rec.labels is None  # the test set's protocols are not the treadmill schedule


def test_bpmtrace_reference_and_no_reference(tmp_path: Path) -> None:
    sio.savemat(tmp_path / "DATA_05_TYPE02.mat", {"sig": make_sig(20.0)})
    assert find_troika_ref(tmp_path / "DATA_05_TYPE02.mat") is None
    assert load_troika(tmp_path / "DATA_05_TYPE02.mat").hr_ref_bpm is None
    sio.savemat(tmp_path / "DATA_05_TYPE02_BPMtrace.mat", {"BPM0": np.full((7, 1), 70.0)})
    rec = load_troika(tmp_path / "DATA_05_TYPE02.mat")
    assert rec.hr_for_window(6) == 70.0


def test_one_reference_value_more_or_less_is_tolerated(tmp_path: Path) -> None:
    rec = load_troika(write_pair(tmp_path, seconds=20.0, ref_count=6))
    assert rec.window_count() == 7
    assert rec.hr_for_window(5) is not None
    assert rec.hr_for_window(6) is None


# --- bad files ---------------------------------------------------------------------------------


def test_wrong_row_count_is_a_dataset_error(tmp_path: Path) -> None:
    sio.savemat(tmp_path / "DATA_01_TYPE01.mat", {"sig": make_sig(20.0)[:4]})
    with pytest.raises(
        DatasetError, match=r"^DATA_01_TYPE01\.mat: sig has 4 rows, expected 6 \(ECG, PPG1"
    ):
        load_troika(tmp_path / "DATA_01_TYPE01.mat")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"BPM0": np.zeros((3, 1))}, r"missing variable sig \(has: BPM0\)"),
        ({"sig": np.zeros((6, 500))}, "less than one 8 s window"),
        ({"sig": np.zeros((2, 3, 2000))}, "sig has 3 dimensions"),
        ({"sig": np.array(["abc"])}, "sig is not a numeric array"),
        ({"sig": np.full((6, 2000), np.nan)}, "NaN"),
    ],
)
def test_malformed_sig_is_a_dataset_error(
    tmp_path: Path, content: dict[str, object], message: str
) -> None:
    sio.savemat(tmp_path / "DATA_01_TYPE01.mat", content)
    with pytest.raises(DatasetError, match=message):
        load_troika(tmp_path / "DATA_01_TYPE01.mat")


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.2, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_mat_is_a_dataset_error(
    tmp_path: Path, fraction: float, compressed: bool
) -> None:
    path = tmp_path / "DATA_01_TYPE01.mat"
    sio.savemat(path, {"sig": make_sig(30.0)}, do_compression=compressed)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(DatasetError, match=r"^DATA_01_TYPE01\.mat: "):
        load_troika(path)


def test_not_a_mat_file(tmp_path: Path) -> None:
    path = tmp_path / "DATA_01_TYPE01.mat"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    with pytest.raises(DatasetError, match=r"^DATA_01_TYPE01\.mat: "):
        load_troika(path)
    path.write_text("sig = [1 2 3]\n")
    with pytest.raises(DatasetError, match="not a readable MAT file"):
        load_troika(path)
    with pytest.raises(DatasetError, match="no such file"):
        load_troika(tmp_path / "DATA_09_TYPE01.mat")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"BPM0": np.zeros((100, 1))}, r"^REF_01_TYPE01\.mat: BPM0 has 100 values but DATA_01"),
        ({"other": np.zeros((7, 1))}, r"^REF_01_TYPE01\.mat: missing variable BPM0"),
        ({"BPM0": np.zeros((7, 2))}, r"BPM0 has shape \(7, 2\)"),
    ],
)
def test_bad_reference_is_a_dataset_error(
    tmp_path: Path, ref: dict[str, object], message: str
) -> None:
    sio.savemat(tmp_path / "DATA_01_TYPE01.mat", {"sig": make_sig(20.0)})
    sio.savemat(tmp_path / "REF_01_TYPE01.mat", ref)
    with pytest.raises(DatasetError, match=message):
        load_troika(tmp_path / "DATA_01_TYPE01.mat")


# --- the real recordings -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_files() -> list[Path]:
    files = sorted(TROIKA.glob("DATA_*.mat")) if TROIKA.is_dir() else []
    if not files:
        pytest.skip(f"TROIKA recordings not found at {TROIKA} (set GATEWAYD_SHARED_DATA)")
    return files


@pytest.mark.needs_data
def test_real_recordings(real_files: list[Path]) -> None:
    for path in real_files:
        rec = load_troika(path)
        native = rec.metadata["native_samples"]
        assert rec.metadata["rows"].startswith("ECG")
        assert rec.bvp.shape[0] == pytest.approx(native * 64 / FS, abs=1)
        assert rec.acc.shape[0] == pytest.approx(native * 32 / FS, abs=1)
        assert rec.duration_s == pytest.approx(native / FS, abs=0.02)
        assert rec.hr_ref_bpm is not None
        # One reference value per window of the signal.
        assert rec.metadata["ref_count"] == windows_at_125(native) == rec.window_count()
        assert np.all((rec.hr_ref_bpm > 50) & (rec.hr_ref_bpm < 200))
        # ACC in 1/64 g: the wrist is near 1 g (~64) while resting at the start.
        still = np.linalg.norm(rec.acc[: 5 * 32], axis=1)
        assert 0.7 * 64 < float(np.median(still)) < 1.1 * 64
        if rec.labels is not None:
            assert rec.label_for_window(0) == "rest"
            assert rec.label_for_window(60) == "run"  # 120-128 s


@pytest.mark.needs_data
def test_real_recordings_phases_and_discovery(real_files: list[Path]) -> None:
    phases = {p.stem: load_troika(p).labels is not None for p in real_files}
    # DATA_04_TYPE01 lasts 220 s: it ends before the last running bout, no phases.
    assert phases.get("DATA_04_TYPE01", False) is False
    assert sum(phases.values()) >= len(real_files) - 1
    found = find_recordings(real_files[0].parent)
    assert [s.path for s in found] == real_files
    assert all(s.ref_path is not None for s in found)
