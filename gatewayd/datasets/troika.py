"""TROIKA / IEEE Signal Processing Cup 2015 reader: ``DATA_XX_TYPEYY.mat`` -> `Recording`.

What the files hold (checked on the five recordings in ../shared/data/troika, see
docs/datasets.md): ``sig`` is float64, 6 x N at 125 Hz, rows ECG, PPG1, PPG2, ACC x, y, z
(the competition's test files drop the ECG row: 5 x N). PPG is in raw ADC units (steps of 0.5),
pulse peaks upwards like the E4's BVP. ACC is in g: steps of 0.0078 g (1/128 g), clipped at
-3.9936 / +3.9858 g (-512 / +511 steps, a 10-bit +-4 g sensor), |a| about 0.86-0.93 g at rest.
The reference ``BPM0`` (ECG heart rate per 8 s window, 2 s shift) is in ``REF_XX_TYPEYY.mat``
(or ``DATA_XX_TYPEYY_BPMtrace.mat``, or ``True_SXX_TYY.mat`` for ``TEST_SXX_TYY.mat``).

The conversion to the wearable's rates and units:

- BVP = the mean of PPG1 and PPG2 (two green-LED sensors 2 cm apart on the same wristband;
  averaging halves uncorrelated noise), resampled 125 -> 64 Hz, raw units kept;
- ACC x 64 (g -> 1/64 g, the E4 convention), resampled 125 -> 32 Hz. Not clipped to the E4's
  +-2 g: about 3 % of the samples exceed it while running; whoever encodes to int8 saturates;
- ``phase`` (rest/run at 4 Hz) from the documented treadmill schedule, when the recording is as
  long as that schedule (300 s +- 15 s); TROIKA has no PPG-DaLiA activity labels (subjects stand
  and run on a treadmill: "rest" is not "sitting").
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import io as sio

from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, PHASE_NAMES, DatasetError, Recording
from gatewayd.signals.filters import resample_to
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, window_count

__all__ = [
    "ACC_G_TO_E4",
    "PROTOCOLS",
    "TROIKA_RATE_HZ",
    "ProtocolStep",
    "find_troika_ref",
    "is_troika_data",
    "load_troika",
]

#: Sample rate of every TROIKA channel.
TROIKA_RATE_HZ: Final = 125
#: TROIKA ACC is in g; the wearable's unit is 1/64 g.
ACC_G_TO_E4: Final = 64.0
#: The documented schedule must match the recording's length within this many seconds.
_SCHEDULE_SLACK_S: Final = 15.0
_MIN_SAMPLES: Final = 8 * TROIKA_RATE_HZ
_DATA_NAME = re.compile(r"^(DATA|TEST)_(S?\d+)_(TYPE|T)(\d+)$", re.IGNORECASE)
_REF_VARIABLES: Final = ("BPM0", "BPM", "bpm0")


@dataclass(frozen=True)
class ProtocolStep:
    """One step of the treadmill schedule."""

    phase: str
    duration_s: float
    speed_kmh: float


def _schedule(slow: float, fast: float) -> tuple[ProtocolStep, ...]:
    run = [ProtocolStep("run", 60.0, speed) for speed in (slow, fast, slow, fast)]
    return (ProtocolStep("rest", 30.0, 0.0), *run, ProtocolStep("rest", 30.0, 0.0))


#: The treadmill schedules of the training recordings (TROIKA Readme): 300 s each.
PROTOCOLS: Final = {"TYPE01": _schedule(8.0, 15.0), "TYPE02": _schedule(6.0, 12.0)}

# Everything scipy.io.loadmat raises on a file that is not a (complete) MAT file.
_MAT_ERRORS: Final = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    EOFError,
    NotImplementedError,
    struct.error,
    zlib.error,
    sio.matlab.MatReadError,
    OverflowError,
    MemoryError,
)


def _loadmat(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with warnings.catch_warnings():
            # A malformed header warns before it fails; the failure is what we report.
            warnings.simplefilter("ignore")
            mat: dict[str, Any] = sio.loadmat(str(path))
    except NotImplementedError as exc:
        raise DatasetError(
            path, f"MATLAB v7.3 (HDF5) files are not supported; save with -v7 ({exc})"
        ) from exc
    except _MAT_ERRORS as exc:
        raise DatasetError(
            path, f"not a readable MAT file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    return mat


def _numeric(mat: dict[str, Any], names: tuple[str, ...], path: Path) -> npt.NDArray[np.float64]:
    for name in names:
        if name in mat:
            value = mat[name]
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                raise DatasetError(path, f"{name} is not a numeric array")
            return value.astype(np.float64)
    found = sorted(k for k in mat if not k.startswith("__"))
    raise DatasetError(path, f"missing variable {names[0]} (has: {', '.join(found) or 'none'})")


def is_troika_data(path: Path) -> bool:
    """Return True if the file name is a TROIKA signal file (DATA_XX_TYPEYY / TEST_SXX_TYY)."""
    return path.suffix.lower() == ".mat" and _DATA_NAME.match(path.stem) is not None


def find_troika_ref(data_path: Path) -> Path | None:
    """Return the reference file next to a TROIKA signal file, or None if there is none."""
    stem = data_path.stem
    match = _DATA_NAME.match(stem)
    candidates = [data_path.with_name(f"{stem}_BPMtrace.mat")]
    if match is not None:
        rest = stem[len(match.group(1)) + 1 :]
        candidates.insert(0, data_path.with_name(f"REF_{rest}.mat"))
        if match.group(1).upper() == "TEST":
            candidates.append(data_path.with_name(f"True_{rest}.mat"))
    return next((c for c in candidates if c.is_file()), None)


def _phase_labels(protocol: tuple[ProtocolStep, ...], duration_s: float) -> npt.NDArray[np.int8]:
    n = round(duration_s * ACTIVITY_RATE_HZ)
    out = np.zeros(n, dtype=np.int8)
    start = 0.0
    for step in protocol:
        a = round(start * ACTIVITY_RATE_HZ)
        b = min(n, round((start + step.duration_s) * ACTIVITY_RATE_HZ))
        out[a:b] = PHASE_NAMES.index(step.phase)
        start += step.duration_s
    # A recording a little longer than the schedule ends at rest (as the schedule does).
    return out


def load_troika(
    data_path: str | os.PathLike[str], ref_path: str | os.PathLike[str] | None = None
) -> Recording:
    """Load a TROIKA recording, with its reference heart rate when a REF file is found."""
    path = Path(data_path)
    mat = _loadmat(path)
    sig = _numeric(mat, ("sig",), path)
    if sig.ndim != 2 or sig.shape[0] not in (5, 6):
        rows = sig.shape[0] if sig.ndim == 2 else f"{sig.ndim} dimensions and"
        raise DatasetError(
            path,
            f"sig has {rows} rows, expected 6 (ECG, PPG1, PPG2, ACC x, y, z) "
            "or 5 (PPG1, PPG2, ACC x, y, z)",
        )
    if sig.shape[1] < _MIN_SAMPLES:
        raise DatasetError(path, f"sig has {sig.shape[1]} samples, less than one 8 s window")
    if not np.isfinite(sig).all():
        raise DatasetError(path, "sig contains NaN or infinite values")
    has_ecg = sig.shape[0] == 6
    ppg = sig[1:3] if has_ecg else sig[0:2]
    acc_g = sig[-3:]
    bvp = resample_to(ppg.mean(axis=0), TROIKA_RATE_HZ, BVP_RATE_HZ).astype(np.float32)
    acc = (resample_to(acc_g.T, TROIKA_RATE_HZ, ACC_RATE_HZ) * ACC_G_TO_E4).astype(np.float32)
    native_windows = window_count(sig.shape[1], TROIKA_RATE_HZ)
    windows = min(window_count(bvp.shape[0], BVP_RATE_HZ), window_count(acc.shape[0], ACC_RATE_HZ))
    duration = sig.shape[1] / TROIKA_RATE_HZ

    match = _DATA_NAME.match(path.stem)
    subject = match.group(2) if match else path.stem
    kind = f"{match.group(3).upper()}{int(match.group(4)):02d}" if match else None
    metadata: dict[str, Any] = {
        "file": str(path),
        "rows": "ECG, PPG1, PPG2, ACC x, y, z" if has_ecg else "PPG1, PPG2, ACC x, y, z",
        "native_rate_hz": TROIKA_RATE_HZ,
        "native_samples": int(sig.shape[1]),
        "bvp": "mean of PPG1 and PPG2, raw ADC units, resampled 125 -> 64 Hz",
        "acc": "g x 64 = 1/64 g, resampled 125 -> 32 Hz, not clipped to the E4's +-2 g",
        "citation": "Z. Zhang, Z. Pi, B. Liu, TROIKA, IEEE TBME 62(2):522-531, 2015",
        "protocol": kind,
    }

    phase: npt.NDArray[np.int8] | None = None
    protocol = PROTOCOLS.get(kind or "") if match and match.group(1).upper() == "DATA" else None
    if protocol is not None:
        nominal = sum(step.duration_s for step in protocol)
        metadata["schedule"] = [
            {"phase": s.phase, "duration_s": s.duration_s, "speed_kmh": s.speed_kmh}
            for s in protocol
        ]
        if abs(duration - nominal) <= _SCHEDULE_SLACK_S:
            phase = _phase_labels(protocol, duration)
            metadata["phase"] = (
                "nominal: the documented schedule from the first sample; transitions may be off "
                "by several seconds"
            )
        else:
            metadata["phase"] = (
                f"not recoverable: the recording lasts {duration:.1f} s, the documented "
                f"schedule {nominal:.0f} s"
            )

    hr_ref: npt.NDArray[np.float64] | None = None
    ref = Path(ref_path) if ref_path is not None else find_troika_ref(path)
    if ref is not None:
        bpm = _numeric(_loadmat(ref), _REF_VARIABLES, ref)
        if bpm.ndim == 2 and 1 in bpm.shape:
            bpm = bpm.reshape(-1)
        if bpm.ndim != 1:
            raise DatasetError(ref, f"BPM0 has shape {bpm.shape}, expected (windows, 1)")
        if abs(bpm.shape[0] - native_windows) > 1:
            raise DatasetError(
                ref,
                f"BPM0 has {bpm.shape[0]} values but {path.name} has {native_windows} windows "
                "of 8 s with a 2 s shift",
            )
        hr_ref = np.full(windows, np.nan)
        hr_ref[: min(windows, bpm.shape[0])] = bpm[:windows]
        metadata["ref_file"] = str(ref)
        metadata["ref_count"] = int(bpm.shape[0])
        metadata["hr_ref"] = "BPM0: ECG heart rate per 8 s window, 2 s shift"
    return Recording(
        name=path.stem,
        source="troika",
        subject=subject,
        bvp=bvp,
        acc=acc,
        hr_ref_bpm=hr_ref,
        hr_ref_kind="ecg" if hr_ref is not None else None,
        phase=phase,
        metadata=metadata,
    )
