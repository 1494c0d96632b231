"""Empatica E4 session reader: a session folder or an ``SX_E4.zip`` -> `Recording`.

The E4 (and E4 connect's export) writes one CSV per sensor. Line 1 is the session start as a
unix time (one value per column for ACC.csv), line 2 the sample rate (ACC 32 Hz, BVP 64 Hz,
EDA and TEMP 4 Hz, HR 1 Hz), then one sample per line; ACC is in 1/64 g. IBI.csv differs: line 1
is the start time and the word ``IBI``, then rows ``t_offset_s, ibi_s``. HR.csv is the E4's own
PPG-based heart rate, its first value 10 s after the start: it becomes ``hr_ref_bpm`` only with
``hr_ref_kind == "e4-derived"`` (it is not an ECG reference). BVP and ACC are aligned to the
later of their two start times and cut to their common end.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.datasets.recording import DatasetError, Recording
from gatewayd.signals.filters import resample_to
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, STEP_S, WINDOW_S, window_count

__all__ = ["E4_FILES", "is_e4_folder", "is_e4_zip", "load_e4"]

#: The files an E4 session has; BVP.csv and ACC.csv are required, the rest optional.
E4_FILES: Final = ("ACC.csv", "BVP.csv", "TEMP.csv", "EDA.csv", "HR.csv", "IBI.csv")
_REQUIRED: Final = ("ACC.csv", "BVP.csv")
#: The largest CSV we read (a day of 64 Hz BVP is ~60 MB).
_MAX_CSV_BYTES: Final = 512 * 1024 * 1024
_ZIP_NAME = re.compile(r"^(.+?)_E4\.zip$", re.IGNORECASE)


@dataclass(frozen=True)
class _Sensor:
    start_s: float
    rate_hz: float
    data: npt.NDArray[np.float64]  # (n, columns)


def _label(where: str, member: str) -> str:
    return f"{where}:{member}" if where else member


def _parse_header_line(line: str, columns: int, what: str, label: str, lineno: int) -> float:
    fields = [f.strip() for f in line.split(",")]
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise DatasetError(label, f"line {lineno} is not a {what}: {line.strip()[:60]!r}") from None
    if len(values) != columns or not all(math.isfinite(v) for v in values):
        raise DatasetError(
            label, f"line {lineno} is not a {what}: expected {columns} number(s), got {line!r}"
        )
    if len(set(values)) != 1:
        raise DatasetError(label, f"line {lineno}: the columns disagree on the {what}: {values}")
    return values[0]


def _first_bad_line(lines: list[str], columns: int, label: str, first_lineno: int) -> None:
    for offset, line in enumerate(lines):
        fields = line.split(",")
        try:
            ok = len(fields) == columns and all(math.isfinite(float(f)) for f in fields)
        except ValueError:
            ok = False
        if not ok:
            raise DatasetError(
                label, f"line {first_lineno + offset} is not {columns} number(s): {line[:60]!r}"
            )


def _parse_rows(lines: list[str], columns: int, label: str, first_lineno: int) -> Any:
    if not any(line.strip() for line in lines):
        return np.zeros((0, columns))  # (np.loadtxt would warn about an empty input)
    try:
        data = np.loadtxt(io.StringIO("\n".join(lines)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        data = None
    if data is not None and data.size == 0:
        return np.zeros((0, columns))
    if data is None or data.shape[1] != columns or not np.isfinite(data).all():
        # loadtxt's messages count rows its own way: find the first bad line ourselves.
        _first_bad_line(lines, columns, label, first_lineno)
        raise DatasetError(label, f"malformed rows (expected {columns} number(s) per line)")
    return data


def _parse_sensor(text: str, columns: int, label: str) -> _Sensor:
    lines = text.splitlines()
    if len(lines) < 2:
        raise DatasetError(label, "too short: needs a start-time line and a sample-rate line")
    start = _parse_header_line(lines[0], columns, "start time (unix seconds)", label, 1)
    rate = _parse_header_line(lines[1], columns, "sample rate", label, 2)
    if rate <= 0:
        raise DatasetError(label, f"line 2 is not a sample rate: {rate!r} Hz")
    return _Sensor(start, rate, _parse_rows(lines[2:], columns, label, 3))


def _parse_ibi(text: str, label: str) -> tuple[float, npt.NDArray[np.float64]]:
    lines = text.splitlines()
    if not lines:
        raise DatasetError(label, "empty")
    head = [f.strip() for f in lines[0].split(",")]
    try:
        start = float(head[0])
    except ValueError:
        raise DatasetError(label, f"line 1 is not 'start_time, IBI': {lines[0][:60]!r}") from None
    if len(head) != 2 or head[1].upper() != "IBI":
        raise DatasetError(label, f"line 1 is not 'start_time, IBI': {lines[0][:60]!r}")
    return start, _parse_rows(lines[1:], 2, label, 2)


class _Source:
    """A folder or a zip, read member by member."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        if path.is_dir():
            for name in E4_FILES:
                if (path / name).is_file():
                    self._members[name] = name
        else:
            self._zip = zipfile.ZipFile(path)
            for info in self._zip.infolist():
                base = PurePosixPath(info.filename).name
                # A file at the root wins over one in a subfolder.
                if (
                    base in E4_FILES
                    and not info.is_dir()
                    and (base not in self._members or "/" not in info.filename)
                ):
                    self._members[base] = info.filename

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def label(self, name: str) -> str:
        if self._zip is not None:
            # "S1_E4.zip:ACC.csv" whatever folder the member sits in inside the zip.
            return _label(str(self.path), name)
        return str(self.path / name)

    def has(self, name: str) -> bool:
        return name in self._members

    def text(self, name: str) -> str:
        label = self.label(name)
        if self._zip is not None:
            info = self._zip.getinfo(self._members[name])
            if info.file_size > _MAX_CSV_BYTES:
                raise DatasetError(label, f"{info.file_size} bytes is too large for an E4 CSV")
            raw = self._zip.read(info)
        else:
            file = self.path / self._members[name]
            if file.stat().st_size > _MAX_CSV_BYTES:
                raise DatasetError(label, "too large for an E4 CSV")
            raw = file.read_bytes()
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DatasetError(label, f"not a text file: {exc}") from exc


def is_e4_folder(path: Path) -> bool:
    """Return True if ``path`` is a folder holding an E4 session (BVP.csv and ACC.csv)."""
    return path.is_dir() and all((path / name).is_file() for name in _REQUIRED)


def is_e4_zip(path: Path) -> bool:
    """Return True if ``path`` is a zip that holds BVP.csv and ACC.csv (not a deep check)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = {PurePosixPath(n).name for n in zf.namelist()}
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False
    return all(name in names for name in _REQUIRED)


def _to_rate(
    data: npt.NDArray[np.float64], rate: float, target: int, label: str
) -> npt.NDArray[np.float64]:
    if rate == target:
        return data
    if not float(rate).is_integer():
        raise DatasetError(label, f"sample rate {rate:g} Hz cannot be resampled to {target} Hz")
    return resample_to(data, rate, target)


def _hr_per_window(hr: _Sensor, t0: float, windows: int) -> npt.NDArray[np.float64]:
    """Mean E4 HR over each 8 s window (NaN where the E4 reported none)."""
    values = hr.data[:, 0]
    times = hr.start_s + np.arange(values.shape[0]) / hr.rate_hz - t0
    out = np.full(windows, np.nan)
    starts = np.arange(windows) * STEP_S
    lo = np.searchsorted(times, starts, side="left")
    hi = np.searchsorted(times, starts + WINDOW_S, side="left")
    sums = np.concatenate([[0.0], np.cumsum(values)])
    has = hi > lo
    out[has] = (sums[hi[has]] - sums[lo[has]]) / (hi[has] - lo[has])
    return out


def load_e4(path: str | os.PathLike[str], *, name: str | None = None) -> Recording:
    """Load an Empatica E4 session from a folder or an ``SX_E4.zip``."""
    root = Path(path)
    try:
        source = _Source(root)
    except FileNotFoundError as exc:
        raise DatasetError(root, "no such file or folder") from exc
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise DatasetError(root, f"not a readable zip (truncated or corrupt?): {exc}") from exc
    try:
        return _load(source, root, name)
    except DatasetError:
        raise
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError) as exc:
        raise DatasetError(root, f"cannot read (truncated or corrupt?): {exc}") from exc
    finally:
        source.close()


def _load(source: _Source, root: Path, name: str | None) -> Recording:
    for required in _REQUIRED:
        if not source.has(required):
            raise DatasetError(root, f"missing {required} (not an Empatica E4 session)")
    acc = _parse_sensor(source.text("ACC.csv"), 3, source.label("ACC.csv"))
    bvp = _parse_sensor(source.text("BVP.csv"), 1, source.label("BVP.csv"))
    for sensor, member in ((acc, "ACC.csv"), (bvp, "BVP.csv")):
        if sensor.data.shape[0] == 0:
            raise DatasetError(source.label(member), "has no samples after the two header lines")
    acc_data = _to_rate(acc.data, acc.rate_hz, ACC_RATE_HZ, source.label("ACC.csv"))
    bvp_data = _to_rate(bvp.data, bvp.rate_hz, BVP_RATE_HZ, source.label("BVP.csv"))[:, 0]
    t0 = max(acc.start_s, bvp.start_s)
    bvp_data = bvp_data[round((t0 - bvp.start_s) * BVP_RATE_HZ) :]
    acc_data = acc_data[round((t0 - acc.start_s) * ACC_RATE_HZ) :]
    # Common end, in whole 1/32 s so both stay on the same sample grid.
    ticks = min(bvp_data.shape[0] // 2, acc_data.shape[0])
    bvp_data = bvp_data[: 2 * ticks]
    acc_data = acc_data[:ticks]
    if ticks == 0:
        raise DatasetError(root, "BVP.csv and ACC.csv do not overlap in time")

    metadata: dict[str, Any] = {
        "file": str(root),
        "start_time_s": t0,
        "bvp_start_s": bvp.start_s,
        "acc_start_s": acc.start_s,
        "bvp_rate_hz_in_file": bvp.rate_hz,
        "acc_rate_hz_in_file": acc.rate_hz,
        "files": sorted(n for n in E4_FILES if source.has(n)),
    }
    hr_ref: npt.NDArray[np.float64] | None = None
    if source.has("HR.csv"):
        hr = _parse_sensor(source.text("HR.csv"), 1, source.label("HR.csv"))
        windows = window_count(bvp_data.shape[0], BVP_RATE_HZ)
        hr_ref = _hr_per_window(hr, t0, windows)
        metadata["hr_ref"] = (
            "e4-derived: mean of the E4's own HR.csv (1 Hz, PPG-based, first value 10 s after "
            "the start) over each 8 s window; NaN where it has none. Not an ECG reference."
        )
    if source.has("IBI.csv"):
        ibi_start, ibi = _parse_ibi(source.text("IBI.csv"), source.label("IBI.csv"))
        metadata["ibi_start_s"] = ibi_start
        metadata["ibi_count"] = int(ibi.shape[0])
    for optional in ("EDA.csv", "TEMP.csv"):
        if source.has(optional):
            # Not used by the gateway, but a broken file means a broken export: say so.
            sensor = _parse_sensor(source.text(optional), 1, source.label(optional))
            metadata[f"{optional[:-4].lower()}_samples"] = int(sensor.data.shape[0])

    stem = root.name if root.is_dir() else root.stem
    match = _ZIP_NAME.match(root.name)
    subject = match.group(1) if match else stem
    return Recording(
        name=name or stem,
        source="e4",
        subject=subject,
        bvp=bvp_data.astype(np.float32),
        acc=acc_data.astype(np.float32),
        hr_ref_bpm=hr_ref,
        hr_ref_kind="e4-derived" if hr_ref is not None else None,
        start_time_s=t0,
        metadata=metadata,
    )
