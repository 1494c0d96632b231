"""`Recording`: one wearable session at the wearable's rates (BVP 64 Hz, ACC 32 Hz in 1/64 g).

Every dataset reader returns this one type, so the BLE emulator, training and evaluation never
see a dataset's own layout, units or rates. Windows are the 8 s / 2 s windows of
`gatewayd.signals.windows`; the reference heart rate, when there is one, is one value per such
window (PPG-DaLiA and TROIKA both label that way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import numpy as np
import numpy.typing as npt

from gatewayd.errors import DatasetError
from gatewayd.protocol.messages import ACTIVITY_NAMES
from gatewayd.signals.windows import (
    ACC_RATE_HZ,
    BVP_RATE_HZ,
    STEP_S,
    WINDOW_S,
    samples_in,
    sliding_windows,
    window_count,
    window_length,
)

__all__ = [
    "ACTIVITY_NAMES",
    "ACTIVITY_RATE_HZ",
    "PHASE_NAMES",
    "DatasetError",
    "HrRefKind",
    "Recording",
    "Source",
]

#: Where a recording came from.
Source = Literal["dalia", "e4", "troika", "synthetic"]
#: What the reference heart rate was derived from: a chest ECG (PPG-DaLiA, TROIKA), the
#: Empatica E4's own PPG-based HR.csv (not a reference of ECG quality), or the synthetic
#: generator's ground truth.
HrRefKind = Literal["ecg", "e4-derived", "synthetic-truth"]

#: Rate of the activity and phase label arrays (PPG-DaLiA's ``activity`` rate).
ACTIVITY_RATE_HZ: Final = 4
#: TROIKA treadmill phases (the index is the code in `Recording.phase`).
PHASE_NAMES: Final = ("rest", "run")


def _readonly(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    view = arr.view()
    view.flags.writeable = False
    return view


def _majority(labels: npt.NDArray[np.int8]) -> int | None:
    if labels.size == 0:
        return None
    # Ties go to the smaller id (bincount's argmax returns the first maximum).
    return int(np.argmax(np.bincount(labels.astype(np.intp))))


@dataclass(frozen=True, eq=False)
class Recording:
    """One session: BVP (64 Hz), ACC (32 Hz, 1/64 g), optional reference HR and labels.

    ``hr_ref_bpm[i]`` is the reference heart rate of window ``i`` (NaN where unknown).
    ``activity`` holds PPG-DaLiA activity ids (see `ACTIVITY_NAMES`) at 4 Hz; ``phase`` holds
    TROIKA treadmill phase codes (see `PHASE_NAMES`) at 4 Hz. ``metadata`` is JSON-like.
    Arrays are read-only.
    """

    name: str
    source: Source
    subject: str
    bvp: npt.NDArray[np.float32]
    acc: npt.NDArray[np.float32]
    hr_ref_bpm: npt.NDArray[np.float64] | None = None
    hr_ref_kind: HrRefKind | None = None
    activity: npt.NDArray[np.int8] | None = None
    phase: npt.NDArray[np.int8] | None = None
    #: Unix time of the first sample, when the dataset records it (E4 sessions).
    start_time_s: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    bvp_rate_hz: ClassVar[int] = BVP_RATE_HZ
    acc_rate_hz: ClassVar[int] = ACC_RATE_HZ
    activity_rate_hz: ClassVar[int] = ACTIVITY_RATE_HZ
    phase_rate_hz: ClassVar[int] = ACTIVITY_RATE_HZ

    def __post_init__(self) -> None:
        """Check shapes and dtypes and freeze the arrays."""
        if self.bvp.dtype != np.float32 or self.bvp.ndim != 1:
            raise ValueError(f"bvp must be float32 (n,), got {self.bvp.dtype} {self.bvp.shape}")
        if self.acc.dtype != np.float32 or self.acc.ndim != 2 or self.acc.shape[1] != 3:
            raise ValueError(f"acc must be float32 (m, 3), got {self.acc.dtype} {self.acc.shape}")
        object.__setattr__(self, "bvp", _readonly(self.bvp))
        object.__setattr__(self, "acc", _readonly(self.acc))
        if self.hr_ref_bpm is not None:
            if self.hr_ref_bpm.dtype != np.float64 or self.hr_ref_bpm.ndim != 1:
                raise ValueError("hr_ref_bpm must be float64 (windows,)")
            if self.hr_ref_kind is None:
                raise ValueError("hr_ref_kind is required when hr_ref_bpm is given")
            object.__setattr__(self, "hr_ref_bpm", _readonly(self.hr_ref_bpm))
        for name, names in (("activity", ACTIVITY_NAMES), ("phase", PHASE_NAMES)):
            labels = getattr(self, name)
            if labels is not None:
                if labels.dtype != np.int8 or labels.ndim != 1:
                    raise ValueError(f"{name} must be int8 (k,)")
                if labels.size and not 0 <= labels.min() <= labels.max() < len(names):
                    raise ValueError(f"{name} ids must be in 0..{len(names) - 1}")
                object.__setattr__(self, name, _readonly(labels))

    @property
    def subject_key(self) -> str:
        """Return ``source:subject``, the grouping key for subject-wise cross-validation."""
        return f"{self.source}:{self.subject}"

    @property
    def duration_s(self) -> float:
        """Return the BVP duration in seconds."""
        return float(self.bvp.shape[0] / self.bvp_rate_hz)

    def window_count(self) -> int:
        """Return the number of complete 8 s windows that both BVP and ACC cover."""
        return min(
            window_count(self.bvp.shape[0], self.bvp_rate_hz),
            window_count(self.acc.shape[0], self.acc_rate_hz),
        )

    def _check_index(self, i: int) -> None:
        count = self.window_count()
        if not 0 <= i < count:
            raise IndexError(f"window {i} out of range: {self.name} has {count} windows")

    def window(self, i: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return window ``i`` as read-only views: BVP (512,) and ACC (256, 3)."""
        self._check_index(i)
        b0 = i * samples_in(STEP_S, self.bvp_rate_hz, what="step")
        a0 = i * samples_in(STEP_S, self.acc_rate_hz, what="step")
        return (
            self.bvp[b0 : b0 + window_length(self.bvp_rate_hz)],
            self.acc[a0 : a0 + window_length(self.acc_rate_hz)],
        )

    def windows(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return all windows as strided views: BVP (n, 512) and ACC (n, 256, 3)."""
        count = self.window_count()
        return (
            sliding_windows(self.bvp, self.bvp_rate_hz)[:count],
            sliding_windows(self.acc, self.acc_rate_hz)[:count],
        )

    def window_start_s(self, i: int) -> float:
        """Return the start of window ``i`` in seconds from the first sample."""
        return i * STEP_S

    def _labels_in_window(
        self, labels: npt.NDArray[np.int8] | None, i: int
    ) -> npt.NDArray[np.int8] | None:
        self._check_index(i)
        if labels is None:
            return None
        start = i * samples_in(STEP_S, ACTIVITY_RATE_HZ, what="step")
        return labels[start : start + samples_in(WINDOW_S, ACTIVITY_RATE_HZ, what="window")]

    def activity_for_window(self, i: int) -> int | None:
        """Return the majority activity id of window ``i``, or None without activity labels."""
        labels = self._labels_in_window(self.activity, i)
        return None if labels is None else _majority(labels)

    def phase_for_window(self, i: int) -> str | None:
        """Return the majority treadmill phase name of window ``i``, or None if unknown."""
        labels = self._labels_in_window(self.phase, i)
        code = None if labels is None else _majority(labels)
        return None if code is None else PHASE_NAMES[code]

    def hr_for_window(self, i: int) -> float | None:
        """Return the reference heart rate of window ``i`` in bpm, or None if unknown."""
        self._check_index(i)
        if self.hr_ref_bpm is None or i >= self.hr_ref_bpm.shape[0]:
            return None
        value = float(self.hr_ref_bpm[i])
        return None if np.isnan(value) else value
