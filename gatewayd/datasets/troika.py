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
- labels ``rest``/``run`` (`PHASE_NAMES`, 4 Hz) from the documented treadmill schedule counted
  from the first sample (rest to 30 s, run to 270 s, rest to the end), unlabelled in a guard
  band around each transition, for any recording that lasts at least to the end of the last
  running bout; shorter ones did not complete the protocol and get none. Subjects stand and run
  on a treadmill: "rest" is standing, not PPG-DaLiA's "sitting". The test set (arm exercises)
  gets no labels.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.datasets._mat import loadmat, numeric
from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, NO_LABEL, DatasetError, Recording
from gatewayd.signals.filters import resample_to
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, window_count

__all__ = [
    "ACC_G_TO_E4",
    "PHASE_NAMES",
    "PROTOCOLS",
    "RUN_END_S",
    "RUN_START_S",
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
#: Treadmill phases: the label names of TROIKA recordings (index = code in `Recording.labels`).
PHASE_NAMES: Final = ("rest", "run")
#: The documented schedule (Readme.pdf), from the first sample: 30 s rest, four 60 s bouts.
RUN_START_S: Final = 30.0
RUN_END_S: Final = 270.0
#: Unlabelled bands around the two transitions, seconds relative to them. On the five training
#: recordings here the wrist's running motion starts 4-7 s late and ends 3-21 s late (the
#: subject mounts the moving belt, the belt runs down), so the bands lean late.
_START_GUARD_S: Final = (-4.0, 10.0)
_END_GUARD_S: Final = (-4.0, 26.0)
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


def _phase_labels(duration_s: float) -> npt.NDArray[np.int8]:
    """Rest/run codes at 4 Hz from the schedule counted from the first sample, with guard bands.

    Rest until `RUN_START_S`, run until `RUN_END_S`, rest to the end, whatever the recording's
    length; samples inside a guard band around either transition are unlabelled (-1).
    """
    n = round(duration_s * ACTIVITY_RATE_HZ)
    out = np.full(n, NO_LABEL, dtype=np.int8)
    rest, run = PHASE_NAMES.index("rest"), PHASE_NAMES.index("run")
    (a_lo, a_hi), (b_lo, b_hi) = _START_GUARD_S, _END_GUARD_S

    def at(t: float) -> int:
        return min(n, round(t * ACTIVITY_RATE_HZ))

    out[: at(RUN_START_S + a_lo)] = rest
    out[at(RUN_START_S + a_hi) : at(RUN_END_S + b_lo)] = run
    out[at(RUN_END_S + b_hi) :] = rest
    return out


def load_troika(
    data_path: str | os.PathLike[str], ref_path: str | os.PathLike[str] | None = None
) -> Recording:
    """Load a TROIKA recording, with its reference heart rate when a REF file is found."""
    path = Path(data_path)
    mat = loadmat(path)
    sig = numeric(mat, ("sig",), path)
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
        metadata["schedule"] = [
            {"phase": s.phase, "duration_s": s.duration_s, "speed_kmh": s.speed_kmh}
            for s in protocol
        ]
        if duration >= RUN_END_S:
            phase = _phase_labels(duration)
            metadata["phase"] = (
                f"from the schedule counted from the first sample: rest to {RUN_START_S:g} s, "
                f"run to {RUN_END_S:g} s, rest to the end; unlabelled "
                f"{RUN_START_S + _START_GUARD_S[0]:g}-{RUN_START_S + _START_GUARD_S[1]:g} s and "
                f"{RUN_END_S + _END_GUARD_S[0]:g}-{RUN_END_S + _END_GUARD_S[1]:g} s"
            )
        else:
            metadata["phase"] = (
                f"not recoverable: the recording ends at {duration:.1f} s, before the "
                f"schedule's last running bout ends ({RUN_END_S:g} s)"
            )

    hr_ref: npt.NDArray[np.float64] | None = None
    ref = Path(ref_path) if ref_path is not None else find_troika_ref(path)
    if ref is not None:
        bpm = numeric(loadmat(ref), _REF_VARIABLES, ref)
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
        labels=phase,
        label_names=PHASE_NAMES if phase is not None else (),
        metadata=metadata,
    )
