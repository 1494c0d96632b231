"""`gatewayd eval hr`: heart-rate MAE (and a rest/moving check) of the estimators on recordings.

Per recording, every 8 s window (2 s step) goes through the estimators asked for:

- ``signal``: `gatewayd.signals.HrTracker`, causal over the recording (one tracker per recording,
  windows in order), exactly as the wearable runs it;
- ``model``: `gatewayd.signals.preprocess_window` then a `ModelSession`, in batches; the heart
  rate is the expected value over the HR head's bins.

The MAE of a recording is taken over the windows that have a reference heart rate and an
estimate from *every* estimator evaluated, so that both are scored on the same windows (the
signal tracker gives no estimate until it has acquired the pulse; the model always answers).
The mean is the unweighted mean of the recordings' MAEs.

Where a recording's windows have an activity group (`Recording.group_for_window`: TROIKA's
treadmill rest/run, BAMI, ...), the rest-vs-moving (light or vigorous) accuracy is also
reported, for the model (its 9 PPG-DaLiA classes folded into two groups, `MOVING_CLASSES`)
and for a baseline that needs no model (`acc_motion` above `ACC_MOTION_THRESHOLD`). This is a
coarse proxy: the model was trained on daily-life activities, not on a treadmill, and TROIKA's
"rest" is standing, which PPG-DaLiA has no class for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import Recording
from gatewayd.inference.cards import ACTIVITY_CLASSES
from gatewayd.inference.session import ModelSession
from gatewayd.signals import HrConfig, HrTracker, preprocess_window
from gatewayd.tables import format_table

__all__ = [
    "ACC_MOTION_THRESHOLD",
    "BASELINE",
    "MAJORITY",
    "MOVING_CLASSES",
    "ActivityScore",
    "Estimator",
    "EvalReport",
    "RecordingScore",
    "acc_motion",
    "evaluate",
    "evaluate_recording",
    "format_report",
    "mae",
    "model_moving",
    "model_windows",
    "plan_estimators",
    "signal_windows",
]

Estimator = Literal["signal", "model"]
#: The name of the model-free rest/moving baseline in reports.
BASELINE: Final = "acc_threshold"
#: The name of the trivial reference: always the label most windows have.
MAJORITY: Final = "majority"

#: PPG-DaLiA classes counted as "moving" (TROIKA "run"); the others (sitting, table soccer,
#: driving, lunch, working) count as "rest". Transient is the walking between PPG-DaLiA's
#: stations, so it is moving. Table soccer is standing with arm movement: rest, like TROIKA's
#: standing rest phase, though the arms move more.
MOVING_CLASSES: Final = frozenset({"transient", "stairs", "cycling", "walking"})

#: ACC motion (1/64 g RMS, see `acc_motion`) at and above which the baseline says "moving".
#: It is the heart-rate estimator's ``motion_floor`` (below it the wrist is taken as still),
#: chosen for that estimator and not tuned on TROIKA's labels.
ACC_MOTION_THRESHOLD: Final = HrConfig().motion_floor

#: Windows preprocessed and run through the model at a time (bounds memory: 256 x 8 KiB).
MODEL_BATCH: Final = 256


@dataclass(frozen=True)
class ActivityScore:
    """Rest-vs-moving accuracy on windows with a known activity group."""

    windows: int
    #: Fraction of those windows labelled correctly, per method: ``model``, `BASELINE`, and
    #: `MAJORITY` (always the commoner label: the floor to beat).
    accuracy: dict[str, float]


@dataclass(frozen=True)
class RecordingScore:
    """One recording's result."""

    name: str
    #: All complete windows of the recording.
    total_windows: int
    #: Windows without a reference heart rate (NaN or missing): skipped.
    no_reference: int
    #: Windows with a reference but no estimate from some estimator (signal not yet acquired).
    no_estimate: int
    #: Windows scored: reference known, every estimator answered.
    windows: int
    #: MAE in bpm per estimator over the scored windows (NaN when no window was scored).
    mae_bpm: dict[str, float]
    activity: ActivityScore | None = None


@dataclass(frozen=True)
class EvalReport:
    """Every recording's result and the mean over recordings."""

    estimators: tuple[Estimator, ...]
    recordings: list[RecordingScore]
    model_id: str | None = None
    mean_mae_bpm: dict[str, float] = field(default_factory=dict)
    #: Pooled rest/moving accuracy over every window with a known group, or None without any.
    activity: ActivityScore | None = None

    def to_json(self) -> dict[str, object]:
        """The documented JSON object (NaN, i.e. nothing scored, becomes null)."""
        doc: dict[str, object] = {
            "recordings": {
                r.name: {"windows": r.windows, "mae_bpm": _nulls(r.mae_bpm)}
                for r in self.recordings
            },
            "mean_mae_bpm": _nulls(self.mean_mae_bpm),
        }
        if self.activity is not None:
            doc["activity"] = {
                "labels": "activity group, rest vs light/vigorous; model classes folded "
                "(docs/models.md)",
                "moving_classes": sorted(MOVING_CLASSES),
                "windows": self.activity.windows,
                "accuracy": _nulls(self.activity.accuracy),
                "recordings": {
                    r.name: {"windows": r.activity.windows, "accuracy": _nulls(r.activity.accuracy)}
                    for r in self.recordings
                    if r.activity is not None
                },
            }
        return doc


def _nulls(values: dict[str, float]) -> dict[str, float | None]:
    return {k: None if math.isnan(v) else v for k, v in values.items()}


def plan_estimators(
    requested: Literal["signal", "model", "both"] | None, *, have_model: bool
) -> tuple[tuple[Estimator, ...], bool]:
    """The estimators to run, and whether a model estimator that was asked for is missing.

    Nothing requested: both when a model is installed, else signal alone (not an error).
    ``model`` without a model: nothing to run. ``both`` without a model: signal, and missing.
    """
    if requested is None:
        return (("signal", "model") if have_model else ("signal",)), False
    if requested == "signal":
        return ("signal",), False
    if not have_model:
        return (("signal",) if requested == "both" else ()), True
    return (("model",) if requested == "model" else ("signal", "model")), False


def mae(estimates: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """Mean absolute error of two equally long arrays; NaN when they are empty."""
    est = np.asarray(estimates, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"estimates {est.shape} and reference {ref.shape} differ in shape")
    return float(np.mean(np.abs(est - ref))) if est.size else math.nan


def signal_windows(recording: Recording, config: HrConfig | None = None) -> npt.NDArray[np.float64]:
    """The signal estimator's heart rate per window (NaN where it gave none), causal."""
    tracker = HrTracker(
        bvp_rate_hz=recording.bvp_rate_hz, acc_rate_hz=recording.acc_rate_hz, config=config
    )
    bvp, acc = recording.windows()
    out = np.full(bvp.shape[0], np.nan)
    for i in range(bvp.shape[0]):
        bpm = tracker.update(bvp[i], acc[i]).bpm
        if bpm is not None:
            out[i] = bpm
    return out


def _model_inputs(recording: Recording, batch: int) -> Iterator[npt.NDArray[np.float32]]:
    bvp, acc = recording.windows()
    for start in range(0, bvp.shape[0], batch):
        stop = min(start + batch, bvp.shape[0])
        yield np.stack(
            [
                preprocess_window(bvp[i], acc[i], recording.bvp_rate_hz, recording.acc_rate_hz)
                for i in range(start, stop)
            ]
        )


def model_windows(
    recording: Recording, session: ModelSession, batch: int = MODEL_BATCH
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The model's heart rate (N,) and activity probabilities (N, 9) per window, in batches."""
    hr: list[npt.NDArray[np.float64]] = []
    probs: list[npt.NDArray[np.float64]] = []
    for x in _model_inputs(recording, batch):
        prediction = session.predict(x)
        hr.append(prediction.hr_bpm)
        probs.append(prediction.activity_probs)
    classes = len(session.card.outputs.activity_classes)
    if not hr:
        return np.empty(0), np.empty((0, classes))
    return np.concatenate(hr), np.concatenate(probs)


def model_moving(
    activity_probs: npt.NDArray[np.float64], classes: Sequence[str] = ACTIVITY_CLASSES
) -> npt.NDArray[np.bool_]:
    """Rest (False) or moving (True) per window: the group with the larger summed probability."""
    moving = np.array([c in MOVING_CLASSES for c in classes])
    p_moving = activity_probs[:, moving].sum(axis=1)
    out: npt.NDArray[np.bool_] = p_moving > 0.5 * activity_probs.sum(axis=1)
    return out


def acc_motion(acc: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Wrist motion per window: RMS over samples of the 3-axis ACC minus its mean, (N,).

    ``acc`` is (N, m, 3) (or one window, (m, 3)) in the recording's units (1/64 g).
    """
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    dev = a - a.mean(axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = np.sqrt((dev**2).sum(axis=2).mean(axis=1))
    return out


def _phases(recording: Recording) -> npt.NDArray[np.int8]:
    """Per window: 1 moving (a light or vigorous group), 0 rest, -1 unknown."""
    groups = [recording.group_for_window(i) for i in range(recording.window_count())]
    return np.array(
        [-1 if g == ActivityGroup.UNKNOWN else int(g != ActivityGroup.REST) for g in groups],
        dtype=np.int8,
    )


def _activity_score(
    recording: Recording, model_probs: npt.NDArray[np.float64] | None, classes: Sequence[str]
) -> ActivityScore | None:
    if recording.labels is None:
        return None
    phases = _phases(recording)
    known = phases >= 0
    if not known.any():
        return None
    truth = phases[known] == 1
    _, acc = recording.windows()
    baseline = acc_motion(acc)[known] >= ACC_MOTION_THRESHOLD
    moving_share = float(np.mean(truth))
    # What always guessing the commoner label scores: the floor both methods must beat.
    accuracy = {MAJORITY: max(moving_share, 1.0 - moving_share)}
    accuracy[BASELINE] = float(np.mean(baseline == truth))
    if model_probs is not None:
        accuracy["model"] = float(np.mean(model_moving(model_probs, classes)[known] == truth))
    return ActivityScore(windows=int(known.sum()), accuracy=accuracy)


def evaluate_recording(
    recording: Recording,
    estimators: Sequence[Estimator],
    session: ModelSession | None = None,
    *,
    config: HrConfig | None = None,
) -> RecordingScore:
    """Score the estimators on one recording (``session`` is needed for ``model``)."""
    count = recording.window_count()
    reference = np.full(count, np.nan)
    if recording.hr_ref_bpm is not None:
        n = min(count, recording.hr_ref_bpm.shape[0])
        reference[:n] = recording.hr_ref_bpm[:n]
    estimates: dict[str, npt.NDArray[np.float64]] = {}
    model_probs: npt.NDArray[np.float64] | None = None
    for estimator in estimators:
        if estimator == "signal":
            estimates["signal"] = signal_windows(recording, config)
        else:
            if session is None:
                raise ValueError("the model estimator needs a ModelSession")
            estimates["model"], model_probs = model_windows(recording, session)
    has_ref = ~np.isnan(reference)
    answered = np.logical_and.reduce([~np.isnan(e) for e in estimates.values()] + [has_ref])
    classes = session.card.outputs.activity_classes if session is not None else ACTIVITY_CLASSES
    return RecordingScore(
        name=recording.name,
        total_windows=count,
        no_reference=int((~has_ref).sum()),
        no_estimate=int((has_ref & ~answered).sum()),
        windows=int(answered.sum()),
        mae_bpm={k: mae(e[answered], reference[answered]) for k, e in estimates.items()},
        activity=_activity_score(recording, model_probs, classes),
    )


def _mean_over(scores: Iterable[float]) -> float:
    values = [s for s in scores if not math.isnan(s)]
    return float(np.mean(values)) if values else math.nan


def evaluate(
    recordings: Iterable[Recording],
    estimators: Sequence[Estimator],
    session: ModelSession | None = None,
    *,
    config: HrConfig | None = None,
) -> EvalReport:
    """Score the estimators on every recording; the mean is over recordings with scored windows."""
    scores = [evaluate_recording(r, estimators, session, config=config) for r in recordings]
    mean: dict[str, float] = {e: _mean_over(s.mae_bpm[e] for s in scores) for e in estimators}
    with_activity = [s.activity for s in scores if s.activity is not None]
    pooled = None
    if with_activity:
        total = sum(a.windows for a in with_activity)
        pooled = ActivityScore(
            windows=total,
            accuracy={
                method: sum(a.accuracy[method] * a.windows for a in with_activity) / total
                for method in with_activity[0].accuracy
            },
        )
    return EvalReport(
        estimators=tuple(estimators),
        recordings=scores,
        model_id=None if session is None else session.model_id,
        mean_mae_bpm=mean,
        activity=pooled,
    )


def _fmt(value: float, spec: str = ".2f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _pct(fraction: float) -> str:
    return _fmt(100.0 * fraction, ".1f")


def format_report(report: EvalReport) -> str:
    """The report as the plain-text tables `gatewayd eval hr` prints."""
    est = list(report.estimators)
    head = ["RECORDING", "WINDOWS", "SKIPPED", *(f"MAE {e.upper()} (bpm)" for e in est)]
    rows = [
        [
            r.name,
            str(r.windows),
            f"{r.no_reference} no ref, {r.no_estimate} no est."
            if r.no_reference or r.no_estimate
            else "0",
            *(_fmt(r.mae_bpm[e]) for e in est),
        ]
        for r in report.recordings
    ]
    total = sum(r.windows for r in report.recordings)
    rows.append(
        ["mean over recordings", str(total), "", *(_fmt(report.mean_mae_bpm[e]) for e in est)]
    )
    lines = []
    if report.model_id is not None:
        lines.append(f"model: {report.model_id}")
    lines.append(format_table(head, rows))
    if report.activity is not None:
        methods = list(report.activity.accuracy)
        lines += [
            "",
            "Rest vs moving on activity-group labels (majority: always the commoner label;"
            f" {BASELINE}: ACC motion >= {ACC_MOTION_THRESHOLD:g}/64 g RMS"
            + (
                "; model: its 9 daily-life classes folded into two groups, a coarse proxy"
                if "model" in methods
                else ""
            )
            + "; see docs/models.md):",
        ]
        arows = [
            [
                r.name,
                str(r.activity.windows),
                *(_fmt(100 * r.activity.accuracy[m], ".1f") for m in methods),
            ]
            for r in report.recordings
            if r.activity is not None
        ]
        arows.append(
            [
                "all windows",
                str(report.activity.windows),
                *(_pct(report.activity.accuracy[m]) for m in methods),
            ]
        )
        lines.append(
            format_table(["RECORDING", "WINDOWS", *(f"{m.upper()} (%)" for m in methods)], arows)
        )
    return "\n".join(lines)
