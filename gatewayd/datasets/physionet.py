"""PhysioNet "Wrist PPG During Exercise" (Jarchi & Casson): ``sN_<activity>.edf`` -> `Recording`.

What the files hold (checked on the ten in ../shared/data/wrist-ppg-exercise): EDF, 15 signals
at 256 Hz. The labels are cut to EDF's 16 characters (three read ``wrist_low_noise_``, three
``wrist_wide_range``), so channels are read by position, and the reader checks the prefixes:

====  =====================  =====  ==========================================================
pos   label                  unit   use
====  =====================  =====  ==========================================================
0     chest_ecg              mV     not read: the R-peaks come annotated
1     wrist_ppg              mV     BVP
2-4   wrist_gyro_x/y/z       deg/s  not read
5-7   wrist_low_noise_ x/y/z m/s^2  ACC
8-10  wrist_wide_range x/y/z m/s^2  not read
11-13 wrist_mag_x/y/z        Ga     not read
14    sample_times_for...    s      not read
====  =====================  =====  ==========================================================

The wrist channels stop before the file does: their last 286-565 samples (1.1-2.2 s) repeat the
final value (the chest ECG's last 255, one data record). Samples after the point where the PPG
and all three ACC axes stop changing are dropped.

- BVP = the wrist PPG less its mean, resampled 256 -> 64 Hz; the pulse already peaks upwards
  (trough to peak takes 42-49 % of a beat on 7 of the 10 recordings);
- ACC = the low-noise accelerometer in m/s^2 x 64 / 9.80665 (-> 1/64 g), resampled 256 ->
  32 Hz. The wide-range one clips at about 2 g (15.6 % of s4_run's x samples sit on +2.006 g)
  where the low-noise one reaches 2.56 g, and it reads smaller swings;
- ``hr_ref_bpm`` from ``sN_<activity>.ecg-peaks.txt`` (WFDB annotations as text, sample numbers
  at 256 Hz, beats typed ``N``), by `gatewayd.datasets.ecg.hr_from_rpeaks`: 60 / mean RR of
  the intervals inside each window, intervals outside 0.25-2 s dropped (8 of s4_run's 838);
- one label per recording, from the file name: ``walk``, ``run``, ``low_resistance_bike`` or
  ``high_resistance_bike``.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.datasets.ecg import MAX_RR_S, MIN_RR_S, hr_from_rpeaks
from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, DatasetError, Recording
from gatewayd.signals.filters import resample_to
from gatewayd.signals.windows import (
    ACC_RATE_HZ,
    BVP_RATE_HZ,
    WINDOW_S,
    window_count,
)

if TYPE_CHECKING:
    import edfio

__all__ = [
    "ACTIVITIES",
    "EDF_RATE_HZ",
    "is_wrist_ppg_file",
    "load_wrist_ppg",
    "peaks_file_for",
    "read_rpeaks",
]

#: The activities, as the file names spell them (index = code in `Recording.labels`).
ACTIVITIES: Final = ("walk", "run", "low_resistance_bike", "high_resistance_bike")
#: Rate of every signal in the EDF files.
EDF_RATE_HZ: Final = 256
_G: Final = 9.80665
_PPG: Final = 1
_ACC: Final = (5, 6, 7)
#: Label prefixes expected at each position read (EDF cuts labels to 16 characters).
_EXPECTED: Final = {
    1: "wrist_ppg",
    5: "wrist_low_noise",
    6: "wrist_low_noise",
    7: "wrist_low_noise",
}
_NAME = re.compile(r"^(s\d+)_(" + "|".join(ACTIVITIES) + r")\.edf$", re.IGNORECASE)
#: WFDB beat annotation codes (everything else is a comment, rhythm or signal-quality mark).
_BEAT_CODES: Final = frozenset("NLRBAaJSVrFejnE/fQ?")
_EDF_ERRORS: Final = (
    OSError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    UnicodeError,
    EOFError,
    struct.error,
    OverflowError,
)


def is_wrist_ppg_file(path: Path) -> bool:
    """Return True if the file name is one of the set's recordings (``sN_<activity>.edf``)."""
    return _NAME.match(path.name) is not None


def read_rpeaks(path: Path) -> npt.NDArray[np.int64]:
    """Return the beat sample numbers of a WFDB annotation text file (``rdann`` output)."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError as exc:
        raise DatasetError(path, "no such file") from exc
    except (OSError, UnicodeError) as exc:
        raise DatasetError(path, f"cannot read: {exc}") from exc
    lines = text.splitlines()
    if not lines or "Sample" not in lines[0]:
        raise DatasetError(path, "line 1 is not the header 'Time Sample # Type Sub Chan Num Aux'")
    samples: list[int] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            sample = int(fields[1])
        except (IndexError, ValueError):
            raise DatasetError(
                path, f"line {lineno} has no sample number: {line.strip()[:60]!r}"
            ) from None
        if len(fields) > 2 and fields[2] in _BEAT_CODES:
            samples.append(sample)
    beats = np.asarray(samples, dtype=np.int64)
    if beats.size > 1 and np.any(np.diff(beats) <= 0):
        raise DatasetError(path, "beat sample numbers are not increasing")
    return beats


def _read_edf(path: Path) -> edfio.Edf:
    try:
        import edfio  # noqa: PLC0415  (optional: only this reader needs it)
    except ImportError as exc:
        raise DatasetError(
            path, "reading EDF needs the edfio package: pip install 'gatewayd[datasets]'"
        ) from exc
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with warnings.catch_warnings():
            # edfio only warns about an incomplete last data record: a truncated file to us.
            warnings.simplefilter("error")
            edf = edfio.read_edf(path)
            # Touch every signal read here so a truncated file fails now, inside the try.
            for index in (_PPG, *_ACC):
                _ = edf.signals[index].data
    except (*_EDF_ERRORS, Warning) as exc:
        raise DatasetError(
            path, f"not a readable EDF file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    return edf


def _signal(edf: edfio.Edf, index: int, path: Path) -> tuple[npt.NDArray[np.float64], str]:
    if index >= edf.num_signals:
        raise DatasetError(
            path, f"has {edf.num_signals} signals; expected {_EXPECTED[index]!r} at {index}"
        )
    sig = edf.signals[index]
    if not sig.label.lower().startswith(_EXPECTED[index]):
        raise DatasetError(
            path, f"signal {index} is {sig.label!r}, expected {_EXPECTED[index]!r}..."
        )
    if sig.sampling_frequency != EDF_RATE_HZ:
        raise DatasetError(
            path, f"signal {index} ({sig.label}) is at {sig.sampling_frequency:g} Hz, not 256"
        )
    data = np.asarray(sig.data, dtype=np.float64)
    if not np.isfinite(data).all():
        raise DatasetError(path, f"signal {index} ({sig.label}) contains NaN or infinite values")
    return data, sig.physical_dimension.strip()


def _acc_to_g(unit: str, path: Path) -> float:
    unit_key = unit.lower().replace(" ", "")
    if unit_key in ("ms^-2", "m/s^2", "m/s2", "ms-2", "m/s\u00b2"):
        return 1.0 / _G
    if unit_key == "g":
        return 1.0
    raise DatasetError(path, f"accelerometer unit {unit!r} is neither m/s^2 nor g")


def _padding(signals: npt.NDArray[np.float64]) -> int:
    """How many trailing samples repeat the last one on every channel (the padded record)."""
    same = np.all(signals == signals[:, -1:], axis=0)
    changed = np.flatnonzero(~same)
    # The first sample of the constant run is the last real one.
    return max(0, signals.shape[1] - (int(changed[-1]) + 2)) if changed.size else 0


def load_wrist_ppg(
    path: str | os.PathLike[str], peaks_path: str | os.PathLike[str] | None = None
) -> Recording:
    """Load one recording (EDF) with its R-peak reference when the annotation file is there."""
    file = Path(path)
    edf = _read_edf(file)
    ppg, _ = _signal(edf, _PPG, file)
    axes = [_signal(edf, i, file) for i in _ACC]
    scale = _acc_to_g(axes[0][1], file)
    n = min(ppg.shape[0], *(a.shape[0] for a, _ in axes))
    stacked = np.vstack([ppg[:n], *(a[:n] for a, _ in axes)])
    pad = _padding(stacked)
    n -= pad
    if n < WINDOW_S * EDF_RATE_HZ:
        raise DatasetError(file, f"{n} samples at 256 Hz: less than one 8 s window")
    bvp = resample_to(ppg[:n] - ppg[:n].mean(), EDF_RATE_HZ, BVP_RATE_HZ).astype(np.float32)
    acc_g = np.stack([a[:n] for a, _ in axes], axis=1) * scale
    acc = (resample_to(acc_g, EDF_RATE_HZ, ACC_RATE_HZ) * 64.0).astype(np.float32)
    windows = min(window_count(bvp.shape[0], BVP_RATE_HZ), window_count(acc.shape[0], ACC_RATE_HZ))

    match = _NAME.match(file.name)
    subject = match.group(1).lower() if match else file.stem
    activity = match.group(2).lower() if match else None
    metadata: dict[str, Any] = {
        "file": str(file),
        "native_rate_hz": EDF_RATE_HZ,
        "native_samples": int(n),
        "padding_samples_dropped": int(pad),
        "bvp": "wrist_ppg (signal 1) less its mean, resampled 256 -> 64 Hz",
        "acc": "low-noise accelerometer (signals 5-7), m/s^2 x 64 / 9.80665, resampled "
        "256 -> 32 Hz",
        "citation": "D. Jarchi, A. J. Casson, Description of a database containing wrist PPG "
        "signals recorded during physical exercise with both accelerometer and gyroscope "
        "measures of motion, Data 2(1):1, 2017; PhysioNet, doi:10.13026/C2B37M",
    }
    hr_ref: npt.NDArray[np.float64] | None = None
    peaks = Path(peaks_path) if peaks_path is not None else peaks_file_for(file)
    if peaks is not None and peaks.is_file():
        beats = read_rpeaks(peaks)
        hr_ref = hr_from_rpeaks(beats / EDF_RATE_HZ, windows)
        metadata["ref_file"] = str(peaks)
        metadata["beats"] = int(beats.size)
        metadata["hr_ref"] = (
            f"60 / mean RR of the annotated R-peak intervals inside each 8 s window, intervals "
            f"outside {MIN_RR_S}-{MAX_RR_S} s dropped"
        )
    labels: npt.NDArray[np.int8] | None = None
    if activity is not None:
        labels = np.full(
            round(acc.shape[0] / ACC_RATE_HZ * ACTIVITY_RATE_HZ),
            ACTIVITIES.index(activity),
            dtype=np.int8,
        )
        metadata["labels"] = f"{activity} for the whole recording (from the file name)"
    return Recording(
        name=file.stem,
        source="wrist-ppg-exercise",
        subject=subject,
        bvp=bvp,
        acc=acc,
        hr_ref_bpm=hr_ref,
        hr_ref_kind="ecg-rpeaks" if hr_ref is not None else None,
        labels=labels,
        label_names=ACTIVITIES if labels is not None else (),
        metadata=metadata,
    )


def peaks_file_for(edf_path: Path) -> Path | None:
    """Return ``<stem>.ecg-peaks.txt`` next to an EDF file, or None if there is none."""
    candidate = edf_path.with_name(f"{edf_path.stem}.ecg-peaks.txt")
    return candidate if candidate.is_file() else None
