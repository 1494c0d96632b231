"""Figure 5's held-out decisions and accuracy cost, from a training run's out-of-fold answers.

With ``--run RUN`` whose folder has ``oof.npz`` (each window's logits from the fold model that
never saw its subject, docs/eval.md), each measured recording it covers is replayed by
`gatewayd.eval.replay`, the code `gatewayd eval offload --oof` runs: the emulated wearable's core
with the out-of-fold pruned model's answers (so its confidence, and every offload decision, is
held out), then the gateway's per-window path (`analyse_windows` with the out-of-fold full
model's answers, `observation_for_frame`). The replay offloads every window (tau 0, minimum
confidence 10001), so the gateway answers every window; what the wearable computes does not
depend on the policy (`paper_energy`). At a policy, what the gateway *reports* is then the
wearable's answer on the windows kept local and the gateway's on those offloaded:

- on a window whose SUMMARY carries a heart rate, the gateway's heart rate is `fuse_hr` of that
  window's own two answers, and its activity the model's: neither depends on which other windows
  were offloaded, so the reports at any policy are exact (a test replays a policy and compares);
- a window whose wearable sent no heart rate would need the gateway's own tracker, whose state
  depends on the windows offloaded before: such windows are left out of the heart-rate figures.

The counts come from `gatewayd.eval.offload_counts`, the function `eval offload` scores with.
Pure, apart from `replay_held_out` (which runs the replay, no I/O), and `check_out_of_fold` and
`load_out_of_fold` (which read the file).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.datasets.recording import Recording
from gatewayd.eval import (
    BAD_HR_BPM,
    OffloadCounts,
    OutOfFold,
    ReplaySetup,
    WindowTable,
    offload_counts,
    replay,
)
from gatewayd.inference.analysis import HrFusion
from gatewayd.inference.session import ModelSession
from gatewayd.signals.offload import CONFIDENCE_SCALE

__all__ = [
    "ALL_OFFLOADED",
    "OOF_FILE",
    "AccuracyPoint",
    "HeldOutScorer",
    "accuracy_point",
    "check_out_of_fold",
    "held_out_setup",
    "load_out_of_fold",
    "replay_held_out",
]

#: The out-of-fold answers in a training run's --out folder.
OOF_FILE: Final = "oof.npz"
#: The held-out replay's policy, (tau_mbits, min_conf_e4): every window offloaded (a
#: confidence is at most 10000), so the gateway answers every window.
ALL_OFFLOADED: Final = (0, CONFIDENCE_SCALE + 1)


def check_out_of_fold(path: Path) -> None:
    """Check that ``path`` names out-of-fold outputs (array names only: reads no array data).

    ValueError names what is wrong.
    """
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = set(arrays.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not out-of-fold outputs: {exc}") from None
    missing = [k for k in ("recording", "window") if k not in names]
    if missing:
        raise ValueError(f"{path}: not out-of-fold outputs: no {missing[0]!r} array")
    if not any(k.startswith("act_logits_p") for k in names):
        raise ValueError(f"{path}: not out-of-fold outputs: no act_logits_p<level> arrays")


def load_out_of_fold(path: Path) -> OutOfFold:
    """Read ``oof.npz`` as `gatewayd eval --oof` reads it; ValueError when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return OutOfFold.from_arrays({k: arrays[k] for k in arrays.files})
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not out-of-fold outputs: {exc}") from None


def held_out_setup(
    out_of_fold: OutOfFold,
    wearable: ModelSession,
    gateway: ModelSession | None,
    fusion: HrFusion,
) -> ReplaySetup:
    """The replay of `gatewayd eval offload --oof`, offloading every window.

    The models' cards give the classes, the calibration and the pruning level of the answers
    (their ONNX files are not run); the baseline is not scored.
    """
    tau, conf = ALL_OFFLOADED
    return ReplaySetup(
        wearable_model=wearable,
        gateway_model=gateway,
        tau_mbits=tau,
        min_conf_e4=conf,
        fusion=fusion,
        out_of_fold=out_of_fold,
    )


def replay_held_out(recording: Recording, setup: ReplaySetup) -> WindowTable:
    """`gatewayd.eval.replay` of one recording: the windows the out-of-fold answers cover."""
    if (setup.tau_mbits, setup.min_conf_e4) != ALL_OFFLOADED or setup.out_of_fold is None:
        raise ValueError("a held-out replay offloads every window and has out-of-fold answers")
    return replay(recording, setup)


@dataclass(frozen=True)
class AccuracyPoint:
    """One policy over some windows: what the gateway reports against local only.

    Local only: every window answered by the wearable. Reported: the wearable's answer on the
    windows kept local, the gateway's on the windows offloaded.
    """

    windows: int
    offloaded: int
    #: Windows with a reference heart rate or a known group (`gatewayd.eval.bad_windows`).
    scored: int
    #: Bad local windows (the wearable's heart rate > 10 bpm off or none, or its group wrong),
    #: and those offloaded.
    bad: int
    bad_offloaded: int
    #: Windows with a reference heart rate where the wearable and the gateway both answered.
    hr_windows: int
    local_hr_mae_bpm: float
    reported_hr_mae_bpm: float
    #: Windows with a known activity group.
    activity_windows: int
    local_activity_accuracy: float
    reported_activity_accuracy: float

    @property
    def bad_window_recall(self) -> float:
        """Share of the bad local windows offloaded (NaN: none was bad)."""
        return self.bad_offloaded / self.bad if self.bad else math.nan

    @property
    def hr_mae_change_bpm(self) -> float:
        """Reported minus local-only HR MAE, bpm (negative: offloading helped)."""
        return self.reported_hr_mae_bpm - self.local_hr_mae_bpm

    @property
    def activity_accuracy_change(self) -> float:
        """Reported minus local-only activity accuracy, as a fraction (positive: it helped)."""
        return self.reported_activity_accuracy - self.local_activity_accuracy

    def to_json(self) -> dict[str, Any]:
        """The point's counts and figures (null: nothing scored)."""
        return {
            "windows": self.windows,
            "offloaded": self.offloaded,
            "scored": self.scored,
            "bad": self.bad,
            "bad_offloaded": self.bad_offloaded,
            "bad_window_recall": _none(self.bad_window_recall),
            "hr_mae_bpm": {
                "windows": self.hr_windows,
                "local_only": _none(self.local_hr_mae_bpm),
                "reported": _none(self.reported_hr_mae_bpm),
                "change": _none(self.hr_mae_change_bpm),
            },
            "activity_accuracy": {
                "windows": self.activity_windows,
                "local_only": _none(self.local_activity_accuracy),
                "reported": _none(self.reported_activity_accuracy),
                "change": _none(self.activity_accuracy_change),
            },
        }


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _div(part: float, whole: int) -> float:
    return part / whole if whole else math.nan


def accuracy_point(every: OffloadCounts, chosen: OffloadCounts) -> AccuracyPoint:
    """The figures of a policy from two `offload_counts` of the same windows: ``every`` with
    every window offloaded (the gateway's answer everywhere) and ``chosen`` with the policy's."""
    if (every.windows, every.offloaded) != (chosen.windows, every.windows):
        raise ValueError("every window must be offloaded in the first counts, of the same windows")
    local_err = every.wearable_abs_err
    right = every.wearable_right
    return AccuracyPoint(
        windows=chosen.windows,
        offloaded=chosen.offloaded,
        scored=chosen.scored,
        bad=chosen.bad,
        bad_offloaded=chosen.bad_offloaded,
        hr_windows=every.hr_windows,
        local_hr_mae_bpm=_div(local_err, every.hr_windows),
        reported_hr_mae_bpm=_div(
            local_err - chosen.wearable_abs_err + chosen.gateway_abs_err, every.hr_windows
        ),
        activity_windows=every.act_windows,
        local_activity_accuracy=_div(right, every.act_windows),
        reported_activity_accuracy=_div(
            right - chosen.wearable_right + chosen.gateway_right, every.act_windows
        ),
    )


def _merge(tables: Sequence[WindowTable]) -> WindowTable:
    """One table of the windows of tables sharing their flags (``has_bvp``, ``local_model``)."""
    arrays: dict[str, Any] = {
        f.name: np.concatenate([getattr(t, f.name) for t in tables])
        for f in fields(WindowTable)
        if isinstance(getattr(tables[0], f.name), np.ndarray)
    }
    return replace(tables[0], name="merged", alerts=(), **arrays)


class HeldOutScorer:
    """Scores a policy's decisions on held-out replays (`replay_held_out`), windows in order.

    Called with the policy's offload decision per window (the tables' windows one after the
    other) and the windows to score (None: all), it returns their `AccuracyPoint`.
    """

    def __init__(self, tables: Sequence[WindowTable]) -> None:
        """Merge the tables (offload_counts only sums over windows), keeping each window's
        place in the order the tables come."""
        if any(not t.offloaded.all() for t in tables):
            raise ValueError("held-out tables must have every window offloaded")
        starts = np.cumsum([0, *(len(t) for t in tables)])
        self.windows = int(starts[-1])
        by_flags: dict[tuple[bool, bool], list[int]] = {}
        for k, t in enumerate(tables):
            by_flags.setdefault((t.has_bvp, t.local_model), []).append(k)
        self.parts: list[tuple[WindowTable, npt.NDArray[np.int64]]] = []
        for members in by_flags.values():
            index = np.concatenate(
                [np.arange(starts[k], starts[k + 1], dtype=np.int64) for k in members]
            )
            self.parts.append((_merge([tables[k] for k in members]), index))

    def __call__(
        self, offloaded: npt.NDArray[np.bool_], keep: npt.NDArray[np.bool_] | None = None
    ) -> AccuracyPoint:
        """The figures of these decisions on the kept windows."""
        if offloaded.shape != (self.windows,):
            raise ValueError(f"{offloaded.shape[0]} decisions for {self.windows} windows")
        every, chosen = OffloadCounts(), OffloadCounts()
        for table, index in self.parts:
            part = table if keep is None else table.subset(keep[index])
            off = offloaded[index] if keep is None else offloaded[index][keep[index]]
            every += offload_counts(part)
            chosen += offload_counts(replace(part, offloaded=off))
        return accuracy_point(every, chosen)


#: What the accuracy figures mean (fig5_energy.json's ``accuracy.definitions``).
DEFINITIONS: Final = {
    "local_only": "every window answered by the wearable (its tracker's heart rate, its pruned"
    " model's activity group)",
    "reported": "what the gateway reports: the wearable's answer on the windows kept local, the"
    " gateway's (fused heart rate, full model's group) on the windows offloaded",
    "hr_mae_bpm": "mean |heart rate - reference| over the windows with a reference heart rate"
    " where the wearable and the gateway both answered (windows without a wearable heart rate"
    " are left out)",
    "activity_accuracy": "share of the windows with a known activity group whose group is right",
    "bad_window_recall": f"share of the bad local windows (the wearable's heart rate more than"
    f" {BAD_HR_BPM:g} bpm off the reference or none, or its group wrong) that were offloaded",
    "change": "reported minus local only (HR: negative is better; activity: positive is better)",
}

#: Scores a policy's decisions on some windows (`HeldOutScorer`).
Scorer = Callable[[npt.NDArray[np.bool_], npt.NDArray[np.bool_] | None], AccuracyPoint]
