"""Smartwatch inertial HAR (Matey-Sanz, Casteleyn & Granell): ``sXX_YY_sw.csv`` -> `Recording`.

What the files hold (checked on the 145 smartwatch files in ../shared/data/sp-sw-har): a header
``x_acc,y_acc,z_acc,x_gyro,y_gyro,z_gyro,timestamp,label``, then one sample per line: the
watch's accelerometer in m/s^2 with gravity (|a| is about 9.8 while seated), the gyroscope,
a UNIX time in ms (10 ms median step, 0-56 ms, 881 repeated stamps) and a per-sample label
(SEATED, STANDING_UP, WALKING, TURNING, SITTING_DOWN). One file is one execution of a
seated -> stand up -> walk -> turn -> walk back -> turn -> sit down sequence, 8.6-14.8 s long.
The phone files (``_sp``) are not read: the wearable is on the wrist.

- no PPG: ``has_bvp`` is False and ``bvp`` is zeros at 64 Hz;
- ACC: samples with a repeated timestamp keep the first; the three axes are interpolated
  linearly onto a regular 96 Hz grid from the first timestamp, then resampled 96 -> 32 Hz
  (polyphase, so the decimation is low-passed) and scaled x 64 / 9.80665 (m/s^2 -> 1/64 g);
- labels at 4 Hz: the label of the sample nearest each 0.25 s slot's centre, as the dataset
  spells it (`HAR_LABELS`);
- subject ``sXX``; no heart-rate reference.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, DatasetError, Recording, flat_bvp
from gatewayd.signals.filters import resample_to
from gatewayd.signals.windows import ACC_RATE_HZ, WINDOW_S

__all__ = ["HAR_LABELS", "is_har_file", "load_har"]

#: The labels, as the files spell them (index = code in `Recording.labels`).
HAR_LABELS: Final = ("SEATED", "STANDING_UP", "WALKING", "TURNING", "SITTING_DOWN")
_COLUMNS: Final = ("x_acc", "y_acc", "z_acc", "timestamp", "label")
_G: Final = 9.80665
#: The regular grid the irregular samples are interpolated onto before decimating to 32 Hz.
_GRID_HZ: Final = 96
_NAME = re.compile(r"^(s\d+)_(\d+)_sw\.csv$", re.IGNORECASE)
_MAX_BYTES: Final = 64 * 1024 * 1024


def is_har_file(path: Path) -> bool:
    """Return True if the file name is a smartwatch execution (``sXX_YY_sw.csv``)."""
    return _NAME.match(path.name) is not None


def _read_rows(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[str]]:
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise DatasetError(path, "too large for one HAR execution")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DatasetError(path, "no such file") from exc
    except (OSError, UnicodeError) as exc:
        raise DatasetError(path, f"cannot read: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DatasetError(path, f"line 1 lacks column(s) {', '.join(missing)}: {header[:8]}")
    where = [header.index(c) for c in _COLUMNS]
    acc: list[tuple[float, float, float]] = []
    stamps: list[float] = []
    labels: list[str] = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            x, y, z, t = (float(row[i]) for i in where[:4])
            label = row[where[4]].strip()
        except (IndexError, ValueError):
            raise DatasetError(
                path, f"line {lineno} is not {len(header)} fields with numbers: {row[:8]}"
            ) from None
        if not all(np.isfinite((x, y, z, t))):
            raise DatasetError(path, f"line {lineno} holds a NaN or infinite value")
        acc.append((x, y, z))
        stamps.append(t)
        labels.append(label)
    if not stamps:
        raise DatasetError(path, "no samples after the header")
    return np.asarray(acc), np.asarray(stamps) / 1000.0, labels


def load_har(path: str | os.PathLike[str]) -> Recording:
    """Load one smartwatch execution (accelerometer and labels; no PPG)."""
    file = Path(path)
    acc_ms2, t_s, names = _read_rows(file)
    if np.any(np.diff(t_s) < 0):
        bad = int(np.flatnonzero(np.diff(t_s) < 0)[0]) + 3
        raise DatasetError(file, f"line {bad}: the timestamp goes backwards")
    t_s, first = np.unique(t_s, return_index=True)
    acc_ms2 = acc_ms2[first]
    names = [names[i] for i in first]
    unknown = sorted(set(names) - set(HAR_LABELS))
    if unknown:
        raise DatasetError(file, f"unknown label(s) {', '.join(unknown)}")
    span = float(t_s[-1] - t_s[0])
    if span < WINDOW_S:
        raise DatasetError(file, f"covers {span:.2f} s, less than one 8 s window")
    rel = t_s - t_s[0]
    grid = np.arange(int(span * _GRID_HZ) + 1) / _GRID_HZ
    regular = np.stack([np.interp(grid, rel, acc_ms2[:, k]) for k in range(3)], axis=1)
    acc = (resample_to(regular, _GRID_HZ, ACC_RATE_HZ) * (64.0 / _G)).astype(np.float32)
    codes = np.array([HAR_LABELS.index(n) for n in names], dtype=np.int8)
    slots = (np.arange(round(acc.shape[0] / ACC_RATE_HZ * ACTIVITY_RATE_HZ)) + 0.5) / 4.0
    nearest = np.clip(np.searchsorted(rel, slots), 1, rel.size - 1)
    nearest -= (slots - rel[nearest - 1]) < (rel[nearest] - slots)
    labels = codes[nearest]

    match = _NAME.match(file.name)
    metadata: dict[str, Any] = {
        "file": str(file),
        "native_samples": int(t_s.size),
        "native_rate_hz": round(float((t_s.size - 1) / span), 1),
        "start_unix_s": float(t_s[0]),
        "bvp": "none (accelerometer-only set): zeros, has_bvp False",
        "acc": "watch accelerometer m/s^2 (with gravity) x 64 / 9.80665; irregular samples "
        "interpolated onto 96 Hz, resampled 96 -> 32 Hz",
        "labels": "per-sample label, nearest sample to each 0.25 s slot's centre",
        "citation": "M. Matey-Sanz, S. Casteleyn, C. Granell, Dataset of inertial measurements "
        "of smartphones and smartwatches for human activity recognition, Data in Brief 51:109809, "
        "2023 (CC BY 4.0)",
    }
    return Recording(
        name=file.stem,
        source="sp-sw-har",
        subject=match.group(1).lower() if match else file.parent.name,
        bvp=flat_bvp(acc.shape[0]),
        acc=acc,
        labels=labels,
        label_names=HAR_LABELS,
        has_bvp=False,
        start_time_s=float(t_s[0]),
        metadata=metadata,
    )
