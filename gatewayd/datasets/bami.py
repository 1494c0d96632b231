"""BAMI wrist-PPG exercise recordings (Chung, Lee & Lee): ``Subject_N.mat`` -> `Recording`.

What the files hold (checked on the 16 in ../shared/data/bami, see docs/datasets.md):
``sigPPG``, ``sigAcc`` and ``sigGyro`` are uint16, 3 x N at 50 Hz; ``bpmECG`` (W x 1) is the
chest-ECG heart rate at ``timeECG`` (1 x W, seconds 0, 2, 4, ...); ``bpmPPG``/``timePPG`` and
``idxFSM`` are the authors' own estimates, not used. Recordings last 630 s or 840 s.

The conversion to the wearable's rates and units:

- BVP = minus the mean of the three PPG channels, less its mean over the recording, in raw ADC
  units, resampled 50 -> 64 Hz. The raw channels are detected light: the pulse is a fast drop
  and a slow recovery (trough to peak takes 52-76 % of a beat, median over the channels, on
  each of the 13 subjects with a still stretch; 26-48 % in TROIKA's BVP), so it is negated to
  peak upwards like the E4's BVP;
- ACC = (raw - `ACC_OFFSET_LSB`) / `ACC_LSB_PER_G` x 64 (-> 1/64 g), resampled 50 -> 32 Hz. The
  offset and scale come from a sphere fitted to the 1 s blocks in which the wrist is still, on
  all 16 subjects (657 blocks); the sensor is not named by the dataset. A 16-bit +-8 g part
  would read 32768 and 4096 LSB/g; the fit is within 0.3 % and 2.8 % of that;
- ``hr_ref_bpm``: ``bpmECG[k]`` is the reference of the 8 s window that *starts* at
  ``timeECG[k]`` (a lag scan of a plain spectral HR estimate against it peaks at 0-1 s, not at
  the centre, -4 s, or the end, -8 s), so value k goes to window ``timeECG[k] / 2``;
- labels ``stay`` / ``walking`` / ``running`` (4 Hz) from `SCHEDULE`: stay 60 s, walking 120 s,
  running 180 s, walking 120 s, running 180 s, walking 120 s, stay 60 s (840 s). The dataset says
  only "stay, walking, and running"; the order and durations are inferred, not documented: the
  accelerometer of all 16 recordings shows this sequence, the nine 840 s recordings whole and the
  seven 630 s ones without its first 210 s (they start running). So the schedule is counted back
  from the *last* sample, whatever the length, and samples within `GUARD_S` of a change are
  unlabelled (docs/datasets.md has the agreement with the accelerometer per subject).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.datasets._mat import loadmat, numeric
from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, NO_LABEL, DatasetError, Recording
from gatewayd.signals.filters import resample_to
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, STEP_S, window_count

__all__ = [
    "ACC_LSB_PER_G",
    "ACC_OFFSET_LSB",
    "BAMI_RATE_HZ",
    "GUARD_S",
    "LABEL_NAMES",
    "SCHEDULE",
    "is_bami_file",
    "load_bami",
    "schedule_labels",
]

#: Rate of every BAMI signal in the .mat files.
BAMI_RATE_HZ: Final = 50
#: Accelerometer zero (x, y, z) in raw LSB: sphere fit to still blocks (module docstring).
ACC_OFFSET_LSB: Final = (32843.1, 32712.5, 32714.7)
#: Accelerometer scale in LSB per g: the same fit's radius.
ACC_LSB_PER_G: Final = 4208.8
_E4_PER_G: Final = 64.0
_NAME = re.compile(r"^Subject_(\d+)\.mat$", re.IGNORECASE)
#: The activity labels, in the dataset's words (`gatewayd.activity.LABEL_GROUPS` ``["bami"]``).
LABEL_NAMES: Final = ("stay", "walking", "running")
#: The protocol as the recordings show it (inferred, module docstring): (label, seconds).
SCHEDULE: Final = (
    ("stay", 60.0),
    ("walking", 120.0),
    ("running", 180.0),
    ("walking", 120.0),
    ("running", 180.0),
    ("walking", 120.0),
    ("stay", 60.0),
)
#: Samples this close to a change of activity in `SCHEDULE` are unlabelled: people change pace
#: over several seconds and the recordings drift from the nominal times by up to ~15 s.
GUARD_S: Final = 15.0
#: ``timeECG`` must sit on the 2 s window grid within this much.
_GRID_SLACK_S: Final = 0.1


def is_bami_file(path: Path) -> bool:
    """Return True if the file name is a BAMI recording (``Subject_N.mat``)."""
    return _NAME.match(path.name) is not None


def _channels(mat: dict[str, Any], name: str, path: Path) -> npt.NDArray[np.float64]:
    sig = numeric(mat, (name,), path)
    if sig.ndim != 2 or 3 not in sig.shape:
        raise DatasetError(path, f"{name} has shape {sig.shape}, expected 3 x N")
    sig = sig if sig.shape[0] == 3 else sig.T
    if sig.shape[1] < 8 * BAMI_RATE_HZ:
        raise DatasetError(path, f"{name} has {sig.shape[1]} samples, less than one 8 s window")
    if not np.isfinite(sig).all():
        raise DatasetError(path, f"{name} contains NaN or infinite values")
    return sig


def _reference(
    mat: dict[str, Any], path: Path, windows: int
) -> tuple[npt.NDArray[np.float64], int]:
    bpm = numeric(mat, ("bpmECG",), path).reshape(-1)
    times = numeric(mat, ("timeECG",), path).reshape(-1)
    if bpm.shape != times.shape:
        raise DatasetError(
            path, f"bpmECG has {bpm.shape[0]} values but timeECG has {times.shape[0]}"
        )
    index = np.rint(times / STEP_S)
    if times.size and (
        not np.isfinite(times).all()
        or np.max(np.abs(index * STEP_S - times)) > _GRID_SLACK_S
        or index.min() < 0
    ):
        raise DatasetError(path, "timeECG is not on the 2 s window grid (0, 2, 4, ... s)")
    out = np.full(windows, np.nan)
    keep = index < windows
    values = np.where(np.isfinite(bpm) & (bpm > 0), bpm, np.nan)
    out[index[keep].astype(np.intp)] = values[keep]
    return out, int(np.count_nonzero(~keep))


def schedule_labels(duration_s: float) -> npt.NDArray[np.int8]:
    """Label codes at 4 Hz from `SCHEDULE` counted back from the last sample, with guard bands.

    A recording shorter than the schedule lacks its beginning; one longer has an unlabelled
    start. Samples within `GUARD_S` of a change are `NO_LABEL`.
    """
    n = round(duration_s * ACTIVITY_RATE_HZ)
    out = np.full(n, NO_LABEL, dtype=np.int8)
    total = sum(seconds for _, seconds in SCHEDULE)
    start = duration_s - total  # where the schedule begins, seconds from the first sample
    changes = [start]
    for _, seconds in SCHEDULE:
        changes.append(changes[-1] + seconds)

    def at(t: float) -> int:
        return min(n, max(0, round(t * ACTIVITY_RATE_HZ)))

    for k, (label, _) in enumerate(SCHEDULE):
        lo = changes[k] + (GUARD_S if k > 0 else 0.0)
        hi = changes[k + 1] - (GUARD_S if k < len(SCHEDULE) - 1 else 0.0)
        out[at(lo) : at(hi)] = LABEL_NAMES.index(label)
    return out


def load_bami(path: str | os.PathLike[str]) -> Recording:
    """Load a BAMI ``Subject_N.mat`` recording with its ECG reference heart rate."""
    file = Path(path)
    mat = loadmat(file)
    ppg = _channels(mat, "sigPPG", file)
    acc_raw = _channels(mat, "sigAcc", file)
    if ppg.shape[1] != acc_raw.shape[1]:
        raise DatasetError(
            file, f"sigPPG has {ppg.shape[1]} samples but sigAcc has {acc_raw.shape[1]}"
        )
    # Detected light falls as blood volume rises: negate so the pulse peaks upwards.
    light = ppg.mean(axis=0)
    bvp = resample_to(-(light - light.mean()), BAMI_RATE_HZ, BVP_RATE_HZ).astype(np.float32)
    acc_g = (acc_raw.T - np.asarray(ACC_OFFSET_LSB)) / ACC_LSB_PER_G
    acc = (resample_to(acc_g, BAMI_RATE_HZ, ACC_RATE_HZ) * _E4_PER_G).astype(np.float32)
    windows = min(window_count(bvp.shape[0], BVP_RATE_HZ), window_count(acc.shape[0], ACC_RATE_HZ))
    hr_ref, beyond = _reference(mat, file, windows)

    match = _NAME.match(file.name)
    metadata: dict[str, Any] = {
        "file": str(file),
        "native_rate_hz": BAMI_RATE_HZ,
        "native_samples": int(ppg.shape[1]),
        "bvp": "minus the mean of the 3 PPG channels less its recording mean, raw ADC units, "
        "resampled 50 -> 64 Hz",
        "acc": f"(raw - {ACC_OFFSET_LSB}) / {ACC_LSB_PER_G} LSB/g x 64, resampled 50 -> 32 Hz "
        "(offset and scale fitted to still blocks of all subjects)",
        "hr_ref": "bpmECG: chest-ECG heart rate of the 8 s window starting at timeECG",
        "ref_count": int(hr_ref.size - np.isnan(hr_ref).sum()),
        "ref_beyond_signal": beyond,
        "labels": "stay/walking/running from the inferred schedule (stay 60, walking 120, running "
        f"180, walking 120, running 180, walking 120, stay 60 s) counted back from the last "
        f"sample, {GUARD_S:g} s guard bands around each change",
        "citation": "H. Chung, H. Lee, J. Lee, State-dependent Gaussian kernel-based power "
        "spectrum modification for accurate instantaneous heart rate estimation, "
        "PLoS ONE 14(4):e0215014, 2019",
    }
    return Recording(
        name=file.stem,
        source="bami",
        subject=match.group(1) if match else file.stem,
        bvp=bvp,
        acc=acc,
        hr_ref_bpm=hr_ref,
        hr_ref_kind="ecg",
        labels=schedule_labels(acc.shape[0] / ACC_RATE_HZ),
        label_names=LABEL_NAMES,
        metadata=metadata,
    )
