"""gatewayd.datasets.e4: Empatica E4 session folders and SX_E4.zip files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gatewayd.datasets import DatasetError, load_e4
from gatewayd.datasets.e4 import is_e4_folder, is_e4_zip

START = 1495437405.0
SECONDS = 60


def e4_files(
    *,
    bvp_start: float = START,
    acc_start: float = START + 1.0,
    seconds: int = SECONDS,
    bvp_rate: int = 64,
) -> dict[str, str]:
    """The CSV texts of an E4 session: BVP from ``bvp_start``, ACC from ``acc_start``."""
    t_bvp = np.arange(seconds * bvp_rate) / bvp_rate
    bvp = 40.0 * np.sin(2 * np.pi * 1.2 * t_bvp)
    acc_n = (seconds - int(acc_start - START)) * 32
    acc = np.column_stack([np.arange(acc_n) % 100, np.full(acc_n, -5), np.full(acc_n, 62)])
    hr = 72.0 + np.arange(seconds - 10)  # 1 Hz from start + 10 s
    return {
        "BVP.csv": f"{bvp_start:.6f}\n{bvp_rate:.6f}\n" + "".join(f"{v:.2f}\n" for v in bvp),
        "ACC.csv": (
            f"{acc_start:.6f}, {acc_start:.6f}, {acc_start:.6f}\n32.000000, 32.000000, 32.000000\n"
            + "".join(f"{x},{y},{z}\n" for x, y, z in acc)
        ),
        "HR.csv": f"{START + 10:.6f}\n1.000000\n" + "".join(f"{v:.2f}\n" for v in hr),
        "IBI.csv": f"{START:.6f}, IBI\n12.484500,0.781300\n13.265625,0.781250\n",
        "TEMP.csv": f"{START:.6f}\n4.000000\n" + "33.1\n" * seconds * 4,
        "EDA.csv": f"{START:.6f}\n4.000000\n" + "0.5\n" * seconds * 4,
        "tags.csv": "",
        "info.txt": "E4 session",
    }


def write_folder(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def write_zip(path: Path, files: dict[str, str], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(prefix + name, text)
    return path


def expected_bvp(files: dict[str, str]) -> npt.NDArray[np.float64]:
    return np.array(files["BVP.csv"].splitlines()[2:], dtype=np.float64)


# --- good sessions -----------------------------------------------------------------------------


def test_folder_session_is_aligned_to_the_later_start(tmp_path: Path) -> None:
    files = e4_files()
    rec = load_e4(write_folder(tmp_path / "S3", files))
    assert (rec.source, rec.subject, rec.name) == ("e4", "S3", "S3")
    # ACC starts 1 s after BVP: the first 64 BVP samples are dropped, both end together.
    assert rec.start_time_s == START + 1.0
    assert rec.bvp.shape == ((SECONDS - 1) * 64,)
    assert rec.acc.shape == ((SECONDS - 1) * 32, 3)
    np.testing.assert_allclose(rec.bvp, expected_bvp(files)[64:].astype(np.float32))
    assert rec.acc[0].tolist() == [0.0, -5.0, 62.0]
    assert rec.acc.dtype == np.float32
    assert rec.metadata["ibi_count"] == 2
    assert rec.metadata["files"] == sorted(
        ["ACC.csv", "BVP.csv", "EDA.csv", "HR.csv", "IBI.csv", "TEMP.csv"]
    )


def test_hr_csv_becomes_an_e4_derived_reference(tmp_path: Path) -> None:
    rec = load_e4(write_folder(tmp_path / "S3", e4_files()))
    assert rec.hr_ref_kind == "e4-derived"
    assert "Not an ECG reference" in rec.metadata["hr_ref"]
    assert rec.hr_ref_bpm is not None
    assert rec.hr_ref_bpm.shape == (rec.window_count(),)
    # HR samples are at START+10+k = (aligned t0)+9+k. Window 0 covers [0, 8) s: none yet.
    assert rec.hr_for_window(0) is None
    # Window 1 covers [2, 10): only the sample at t=9 (value 72).
    assert rec.hr_for_window(1) == 72.0
    # Window 5 covers [10, 18): samples at t=10..17, values 73..80.
    assert rec.hr_for_window(5) == pytest.approx(np.mean(np.arange(73, 81)))


def test_without_hr_csv_there_is_no_reference(tmp_path: Path) -> None:
    files = e4_files()
    del files["HR.csv"], files["IBI.csv"], files["TEMP.csv"], files["EDA.csv"]
    rec = load_e4(write_folder(tmp_path / "S3", files))
    assert rec.hr_ref_bpm is None
    assert rec.hr_ref_kind is None


@pytest.mark.parametrize("prefix", ["", "S4_E4/"])
def test_zip_session(tmp_path: Path, prefix: str) -> None:
    files = e4_files(acc_start=START)
    path = write_zip(tmp_path / "S4_E4.zip", files, prefix)
    assert is_e4_zip(path)
    rec = load_e4(path)
    assert (rec.subject, rec.name) == ("S4", "S4_E4")
    assert rec.bvp.shape == (SECONDS * 64,)
    np.testing.assert_allclose(rec.bvp, expected_bvp(files).astype(np.float32))


def test_other_bvp_rates_are_resampled(tmp_path: Path) -> None:
    rec = load_e4(write_folder(tmp_path / "S3", e4_files(acc_start=START, bvp_rate=128)))
    assert rec.bvp.shape == (SECONDS * 64,)
    t = np.arange(SECONDS * 64) / 64
    np.testing.assert_allclose(rec.bvp[64:-64], 40 * np.sin(2 * np.pi * 1.2 * t)[64:-64], atol=0.5)


def test_is_e4_folder(tmp_path: Path) -> None:
    assert is_e4_folder(write_folder(tmp_path / "a", e4_files()))
    assert not is_e4_folder(tmp_path)
    assert not is_e4_zip(tmp_path / "a" / "BVP.csv")


# --- bad sessions ------------------------------------------------------------------------------

BROKEN: dict[str, tuple[str, str, str]] = {
    # case: (file, replacement text or a marker, expected message)
    "rate not a number": (
        "ACC.csv",
        "1495437405.0, 1495437405.0, 1495437405.0\nthirty-two, 32, 32\n1,2,3\n",
        r"ACC\.csv: line 2 is not a sample rate",
    ),
    "rate zero": ("BVP.csv", "1495437405.0\n0.0\n1.0\n", r"BVP\.csv: line 2 is not a sample rate"),
    "start not a number": (
        "BVP.csv",
        "yesterday\n64.0\n1.0\n",
        r"BVP\.csv: line 1 is not a start time",
    ),
    "start columns disagree": (
        "ACC.csv",
        "1495437405.0, 1495437406.0, 1495437405.0\n32, 32, 32\n1,2,3\n",
        r"ACC\.csv: line 1: the columns disagree",
    ),
    "ACC two columns": (
        "ACC.csv",
        "1495437405.0, 1495437405.0\n32, 32\n1,2\n",
        r"ACC\.csv: line 1 is not a start time .*expected 3",
    ),
    "non-numeric row": (
        "BVP.csv",
        "1495437405.0\n64.0\n1.0\n2.0\n3.0\n4.0\nabc\n5.0\n",
        r"BVP\.csv: line 7 is not 1 number\(s\): 'abc'",
    ),
    "ragged ACC row": (
        "ACC.csv",
        "1495437405.0, 1495437405.0, 1495437405.0\n32, 32, 32\n1,2,3\n4,5\n",
        r"ACC\.csv: line 4 is not 3 number\(s\)",
    ),
    "NaN sample": ("BVP.csv", "1495437405.0\n64.0\n1.0\nnan\n", r"BVP\.csv: line 4"),
    "empty ACC": ("ACC.csv", "", r"ACC\.csv: too short"),
    "header-only BVP": ("BVP.csv", "1495437405.0\n64.0\n", r"BVP\.csv: has no samples"),
    "blank-line BVP": ("BVP.csv", "1495437405.0\n64.0\n\n\n", r"BVP\.csv: has no samples"),
    "binary BVP": ("BVP.csv", "\udcff", r"BVP\.csv: not a text file"),
    "IBI header": (
        "IBI.csv",
        "1495437405.0, RR\n1.0,0.8\n",
        r"IBI\.csv: line 1 is not 'start_time, IBI'",
    ),
    "IBI row": ("IBI.csv", "1495437405.0, IBI\n1.0\n", r"IBI\.csv: line 2 is not 2 number"),
    "HR rate": ("HR.csv", "1495437415.0\n\n", r"HR\.csv: line 2 is not a sample rate"),
    "EDA rows": ("EDA.csv", "1495437405.0\n4.0\n0.1\nx\n", r"EDA\.csv: line 4"),
    "no overlap": (
        "ACC.csv",
        "1495439405.0, 1495439405.0, 1495439405.0\n32, 32, 32\n1,2,3\n",
        "do not overlap",
    ),
    "missing BVP": ("BVP.csv", "<delete>", r"S3: missing BVP\.csv"),
}


def _broken_files(case: str) -> dict[str, str]:
    files = e4_files()
    name, text, _ = BROKEN[case]
    if text == "<delete>":
        del files[name]
    else:
        files[name] = text
    return files


def _write_raw(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_is_a_dataset_error(tmp_path: Path, case: str) -> None:
    _write_raw(tmp_path / "S3", _broken_files(case))
    with pytest.raises(DatasetError, match=BROKEN[case][2]):
        load_e4(tmp_path / "S3")


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_zip_member_names_the_zip_and_the_member(tmp_path: Path, case: str) -> None:
    files = _broken_files(case)
    path = tmp_path / "S3_E4.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text.encode("utf-8", "surrogateescape"))
    expected = BROKEN[case][2].replace("S3: ", r"S3_E4\.zip: ")
    with pytest.raises(DatasetError, match=expected) as info:
        load_e4(path)
    if expected.startswith(BROKEN[case][0].replace(".", r"\.")):
        assert str(info.value).startswith(f"S3_E4.zip:{BROKEN[case][0]}: ")
    else:
        assert str(info.value).startswith("S3_E4.zip: ")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_zip_is_a_dataset_error(tmp_path: Path, fraction: float) -> None:
    path = write_zip(tmp_path / "S4_E4.zip", e4_files())
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(DatasetError, match=r"^S4_E4\.zip: "):
        load_e4(path)


def test_corrupt_zip_member_is_a_dataset_error(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "S4_E4.zip", e4_files())
    raw = bytearray(path.read_bytes())
    # Flip bytes in the middle of the first member's compressed data: CRC or zlib error.
    raw[200:240] = bytes(40)
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"^S4_E4\.zip"):
        load_e4(path)


def test_missing_path_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_e4(tmp_path / "nope_E4.zip")
