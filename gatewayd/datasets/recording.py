"""`Recording`: one wearable session at the wearable's rates (BVP 64 Hz, ACC 32 Hz in 1/64 g).

Every dataset reader returns this one type, so the BLE emulator, training and evaluation never
see a dataset's own layout, units or rates. Windows are the 8 s / 2 s windows of
`gatewayd.signals.windows`; the reference heart rate, when there is one, is one value per such
window. Activity labels are the dataset's own words (`Recording.label_names`) at 4 Hz; their
intensity group comes from `gatewayd.activity.LABEL_GROUPS` (docs/activity.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import numpy as np
import numpy.typing as npt

from gatewayd.activity import ActivityGroup, group_of, window_group
from gatewayd.errors import DatasetError
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
    "ACTIVITY_RATE_HZ",
    "NO_LABEL",
    "DatasetError",
    "HrRefKind",
    "Recording",
    "Source",
    "flat_bvp",
]

#: Where a recording came from; ``subject_key`` = ``source:subject`` groups cross-subject folds.
Source = Literal[
    "dalia",
    "wesad",
    "e4",
    "troika",
    "bami",
    "wrist-ppg-exercise",
    "sp-sw-har",
    "basic-motions",
    "synthetic",
]
#: What the reference heart rate was derived from: a per-window ECG heart rate shipped with the
#: dataset (PPG-DaLiA, TROIKA, BAMI), ECG R-peaks annotated by the dataset's authors and turned
#: into a per-window rate here (PhysioNet wrist-ppg-exercise), R-peaks detected here in a raw
#: chest ECG (WESAD: derived, not checked by the authors), the Empatica E4's own PPG-based
#: HR.csv (not a reference of ECG quality), or the synthetic generator's ground truth.
HrRefKind = Literal["ecg", "ecg-rpeaks", "ecg-derived", "e4-derived", "synthetic-truth"]

#: Rate of the label arrays (PPG-DaLiA's ``activity`` rate).
ACTIVITY_RATE_HZ: Final = 4
#: The code of an unlabelled sample in `Recording.labels`.
NO_LABEL: Final = -1
_WINDOW_LABELS: Final = round(WINDOW_S * ACTIVITY_RATE_HZ)


def _readonly(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    view = arr.view()
    view.flags.writeable = False
    return view


def flat_bvp(acc_samples: int) -> npt.NDArray[np.float32]:
    """Return the all-zero BVP (64 Hz) that goes with ``acc_samples`` ACC samples (32 Hz)."""
    return np.zeros(acc_samples * BVP_RATE_HZ // ACC_RATE_HZ, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Recording:
    """One session: BVP (64 Hz), ACC (32 Hz, 1/64 g), optional reference HR and labels.

    ``hr_ref_bpm[i]`` is the reference heart rate of window ``i`` (NaN where unknown).
    ``labels`` holds indices into ``label_names`` (the dataset's own activity words) at 4 Hz,
    `NO_LABEL` (-1) where a sample is unlabelled. ``has_bvp`` is False for sets without PPG:
    their ``bvp`` is all zeros, and consumers must not learn from or score it.
    ``metadata`` is JSON-like. Arrays are read-only.
    """

    name: str
    source: Source
    subject: str
    bvp: npt.NDArray[np.float32]
    acc: npt.NDArray[np.float32]
    hr_ref_bpm: npt.NDArray[np.float64] | None = None
    hr_ref_kind: HrRefKind | None = None
    labels: npt.NDArray[np.int8] | None = None
    label_names: tuple[str, ...] = ()
    has_bvp: bool = True
    #: Unix time of the first sample, when the dataset records it (E4 sessions).
    start_time_s: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    bvp_rate_hz: ClassVar[int] = BVP_RATE_HZ
    acc_rate_hz: ClassVar[int] = ACC_RATE_HZ
    label_rate_hz: ClassVar[int] = ACTIVITY_RATE_HZ

    def __post_init__(self) -> None:
        """Check shapes, dtypes and label codes and freeze the arrays."""
        if self.bvp.dtype != np.float32 or self.bvp.ndim != 1:
            raise ValueError(f"bvp must be float32 (n,), got {self.bvp.dtype} {self.bvp.shape}")
        if self.acc.dtype != np.float32 or self.acc.ndim != 2 or self.acc.shape[1] != 3:
            raise ValueError(f"acc must be float32 (m, 3), got {self.acc.dtype} {self.acc.shape}")
        if not self.has_bvp and self.bvp.size and np.any(self.bvp != 0):
            raise ValueError("bvp must be all zeros when has_bvp is False")
        object.__setattr__(self, "bvp", _readonly(self.bvp))
        object.__setattr__(self, "acc", _readonly(self.acc))
        if self.hr_ref_bpm is not None:
            if self.hr_ref_bpm.dtype != np.float64 or self.hr_ref_bpm.ndim != 1:
                raise ValueError("hr_ref_bpm must be float64 (windows,)")
            if self.hr_ref_kind is None:
                raise ValueError("hr_ref_kind is required when hr_ref_bpm is given")
            object.__setattr__(self, "hr_ref_bpm", _readonly(self.hr_ref_bpm))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.labels is not None:
            if self.labels.dtype != np.int8 or self.labels.ndim != 1:
                raise ValueError("labels must be int8 (k,)")
            if not self.label_names:
                raise ValueError("labels need label_names")
            if self.labels.size and not (
                self.labels.min() >= NO_LABEL and self.labels.max() < len(self.label_names)
            ):
                raise ValueError(
                    f"labels must be -1 (unlabelled) or 0..{len(self.label_names) - 1}"
                )
            object.__setattr__(self, "labels", _readonly(self.labels))

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

    def _labels_in_window(self, i: int) -> npt.NDArray[np.int8] | None:
        self._check_index(i)
        if self.labels is None:
            return None
        start = i * samples_in(STEP_S, ACTIVITY_RATE_HZ, what="step")
        return self.labels[start : start + _WINDOW_LABELS]

    def label_for_window(self, i: int) -> str | None:
        """Return the majority label of window ``i``; None when unlabelled samples win."""
        labels = self._labels_in_window(i)
        if labels is None:
            return None
        # Samples past the end of the label array count as unlabelled.
        counts = Counter(labels.tolist())
        counts[NO_LABEL] += _WINDOW_LABELS - labels.size
        # Ties go to the smaller code, so an unlabelled tie never becomes a label.
        code = min(counts, key=lambda c: (-counts[c], c))
        return None if code == NO_LABEL else self.label_names[code]

    def group_for_window(self, i: int) -> ActivityGroup:
        """Return window ``i``'s intensity group: UNKNOWN if unlabelled, mixed or a transition."""
        # The groups of the window's samples by LABEL_GROUPS[source], then the purity rule.
        labels = self._labels_in_window(i)
        if labels is None:
            return ActivityGroup.UNKNOWN
        counts: Counter[ActivityGroup] = Counter()
        for code, n in Counter(labels.tolist()).items():
            if code != NO_LABEL:
                counts[group_of(self.source, self.label_names[code])] += n
        return window_group(counts, _WINDOW_LABELS)

    def hr_for_window(self, i: int) -> float | None:
        """Return the reference heart rate of window ``i`` in bpm, or None if unknown."""
        self._check_index(i)
        if self.hr_ref_bpm is None or i >= self.hr_ref_bpm.shape[0]:
            return None
        value = float(self.hr_ref_bpm[i])
        return None if np.isnan(value) else value
