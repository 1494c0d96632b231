"""gatewayd.datasets.physionet: wrist-ppg-exercise EDF files written here, and the real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import DatasetError, find_recordings, load, load_wrist_ppg
from gatewayd.datasets.physionet import ACTIVITIES, read_rpeaks
from tests.test_datasets_bami import shared

edfio = pytest.importorskip("edfio", reason="the EDF reader needs edfio (the dev extra)")

FS = 256
G = 9.80665
WRIST = shared("wrist-ppg-exercise")
LABELS = (
    "chest_ecg",
    "wrist_ppg",
    "wrist_gyro_x",
    "wrist_gyro_y",
    "wrist_gyro_z",
    *["wrist_low_noise_"] * 3,
    *["wrist_wide_range"] * 3,
    "wrist_mag_x",
    "wrist_mag_y",
    "wrist_mag_z",
    "sample_times_for",
)
UNITS = ("mV", "mV", *["degs^-1"] * 3, *["ms^-2"] * 6, *["Ga"] * 3, "s")


def write_edf(
    path: Path,
    seconds: float = 40.0,
    *,
    pad_s: float = 1.0,
    labels: tuple[str, ...] = LABELS,
    units: tuple[str, ...] = UNITS,
) -> Path:
    """An EDF in the set's layout: PPG pulse at 1.25 Hz, low-noise ACC with gravity on y and a
    0.2 g sway on x, wide-range ACC different (so reading the wrong one shows), then ``pad_s``
    seconds in which the wrist channels hold their last value."""
    n = round(seconds * FS)
    t = np.arange(n) / FS
    data = [np.zeros(n) for _ in LABELS]
    data[0] = np.sin(2 * np.pi * 10 * t)
    data[1] = 1400 + 200 * np.sin(2 * np.pi * 1.25 * t)
    data[5] = 0.2 * G * np.sin(2 * np.pi * 1.0 * t)
    data[6] = np.full(n, -G)
    data[8] = np.full(n, 5.0)  # the wide-range one: not what we read
    data[14] = t % 60
    pad = round(pad_s * FS)
    for k in range(1, 15):
        data[k][n - pad :] = data[k][n - pad - 1]
    signals = [
        edfio.EdfSignal(d, FS, label=lab, physical_dimension=unit)
        for d, lab, unit in zip(data, labels, units, strict=True)
    ]
    edfio.Edf(signals).write(path)
    return path


def write_peaks(path: Path, beats: np.ndarray) -> Path:
    lines = ["      Time   Sample #  Type  Sub Chan  Num\tAux"]
    lines.append('    0:00.000        0     "    0    0    0\t## time resolution: 256')
    lines += [f"    0:00.000 {b:8d}     N    0    1    0" for b in beats]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- files written here ------------------------------------------------------------------------


def test_channels_by_position_units_and_padding(tmp_path: Path) -> None:
    edf = write_edf(tmp_path / "s7_run.edf")
    beats = np.arange(100, 40 * FS, 192)  # every 0.75 s: 80 bpm
    write_peaks(tmp_path / "s7_run.ecg-peaks.txt", beats)
    rec = load_wrist_ppg(edf)
    assert (rec.source, rec.subject, rec.name) == ("wrist-ppg-exercise", "s7", "s7_run")
    # The last second repeats the final value on the wrist channels: dropped.
    assert rec.metadata["padding_samples_dropped"] == FS
    assert rec.duration_s == pytest.approx(39.0, abs=0.01)
    assert rec.acc.shape == (39 * 32, 3)
    # Low-noise ACC (signals 5-7), m/s^2 -> 1/64 g: y reads -64, x sways +-0.2 g.
    np.testing.assert_allclose(rec.acc[32:-32, 1], -64.0, atol=0.1)
    assert float(np.max(np.abs(rec.acc[32:-32, 0]))) == pytest.approx(0.2 * 64, rel=0.03)
    # BVP: the PPG less its mean.
    t = np.arange(rec.bvp.shape[0]) / 64
    np.testing.assert_allclose(
        rec.bvp[64:-64], (200 * np.sin(2 * np.pi * 1.25 * t))[64:-64], atol=3
    )
    assert rec.hr_ref_kind == "ecg-rpeaks"
    assert rec.hr_ref_bpm is not None
    np.testing.assert_allclose(rec.hr_ref_bpm, 80.0)
    assert rec.labels is not None
    assert rec.label_names == ACTIVITIES
    assert {rec.label_for_window(i) for i in range(rec.window_count())} == {"run"}
    assert rec.group_for_window(0) == ActivityGroup.VIGOROUS


def test_without_the_peaks_file_there_is_no_reference(tmp_path: Path) -> None:
    rec = load_wrist_ppg(write_edf(tmp_path / "s3_walk.edf", pad_s=0.0))
    assert rec.hr_ref_bpm is None
    assert rec.metadata["padding_samples_dropped"] == 0
    assert rec.group_for_window(0) == ActivityGroup.LIGHT


def test_discovery_pairs_the_peaks_file(tmp_path: Path) -> None:
    edf = write_edf(tmp_path / "s2_low_resistance_bike.edf")
    peaks = write_peaks(tmp_path / "s2_low_resistance_bike.ecg-peaks.txt", np.arange(50, 9000, 200))
    found = find_recordings(tmp_path)
    assert [(s.kind, s.path, s.ref_path) for s in found] == [("wrist-ppg-exercise", edf, peaks)]
    assert load(found[0]).label_for_window(0) == "low_resistance_bike"


def test_rpeak_file_parsing(tmp_path: Path) -> None:
    path = write_peaks(tmp_path / "a.ecg-peaks.txt", np.array([10, 20, 35]))
    with path.open("a") as f:
        f.write("    0:01.000      40     +    0    1    0\t(N\n")  # a rhythm mark, not a beat
        f.write("    0:01.000      50     V    0    1    0\n")  # a ventricular beat
    assert read_rpeaks(path).tolist() == [10, 20, 35, 50]
    bad = tmp_path / "b.ecg-peaks.txt"
    bad.write_text("      Time   Sample #  Type\n    0:00.000   x12   N\n")
    with pytest.raises(DatasetError, match=r"b\.ecg-peaks\.txt: line 2 has no sample number"):
        read_rpeaks(bad)
    (tmp_path / "c.txt").write_text("no header\n")
    with pytest.raises(DatasetError, match="header"):
        read_rpeaks(tmp_path / "c.txt")
    back = write_peaks(tmp_path / "d.txt", np.array([30, 20]))
    with pytest.raises(DatasetError, match="not increasing"):
        read_rpeaks(back)


def test_wrong_channel_at_a_position_is_a_dataset_error(tmp_path: Path) -> None:
    swapped = list(LABELS)
    swapped[5], swapped[8] = swapped[8], swapped[5]
    edf = write_edf(tmp_path / "s2_walk.edf", labels=tuple(swapped))
    with pytest.raises(DatasetError, match=r"s2_walk\.edf: signal 5 is 'wrist_wide_range'"):
        load_wrist_ppg(edf)


def test_unknown_acc_unit_truncated_and_missing_files(tmp_path: Path) -> None:
    units = list(UNITS)
    units[5:8] = ["mg"] * 3
    edf = write_edf(tmp_path / "s2_walk.edf", units=tuple(units))
    with pytest.raises(DatasetError, match="accelerometer unit 'mg'"):
        load_wrist_ppg(edf)
    good = write_edf(tmp_path / "s3_run.edf").read_bytes()
    (tmp_path / "s4_run.edf").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"s4_run\.edf: not a readable EDF"):
        load_wrist_ppg(tmp_path / "s4_run.edf")
    (tmp_path / "s5_run.edf").write_bytes(b"0       not an edf header")
    with pytest.raises(DatasetError, match=r"s5_run\.edf"):
        load_wrist_ppg(tmp_path / "s5_run.edf")
    with pytest.raises(DatasetError, match="no such file"):
        load_wrist_ppg(tmp_path / "s6_run.edf")


# --- the real recordings -----------------------------------------------------------------------


@pytest.mark.needs_data
def test_real_recordings() -> None:
    files = sorted(WRIST.glob("*.edf")) if WRIST.is_dir() else []
    if not files:
        pytest.skip(f"wrist-ppg-exercise recordings not found at {WRIST}")
    subjects = set()
    for path in files:
        rec = load_wrist_ppg(path)
        subjects.add(rec.subject)
        assert rec.metadata["padding_samples_dropped"] < 3 * FS
        assert 270 < rec.duration_s < 420
        # |a| near 1 g on the whole (running adds impacts: a median up to 1.55 g on s4_run).
        median_g = float(np.median(np.linalg.norm(rec.acc, axis=1))) / 64
        assert 0.9 < median_g < 1.6
        # The reference: one per window, plausible, from the annotated beats.
        assert rec.hr_ref_bpm is not None
        assert np.isfinite(rec.hr_ref_bpm).mean() > 0.95
        assert np.nanmin(rec.hr_ref_bpm) > 60
        assert np.nanmax(rec.hr_ref_bpm) < 200
        beats = read_rpeaks(rec.metadata["ref_file"] and Path(rec.metadata["ref_file"]))
        overall = 60 * FS * (beats.size - 1) / (beats[-1] - beats[0])
        assert float(np.nanmedian(rec.hr_ref_bpm)) == pytest.approx(overall, rel=0.1)
        # Labels from the file name.
        assert rec.label_for_window(0) == path.stem.split("_", 1)[1]
    assert subjects == {"s2", "s3", "s4", "s5"}
