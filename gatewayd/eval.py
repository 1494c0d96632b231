"""`gatewayd eval hr | activity | offload`: the system's own per-window path, scored on recordings.

Every recording is replayed as the system runs it (docs/eval.md):

1. the emulated wearable (`WearableCore`, with the pruned model when one is given) cuts it into
   8 s / 2 s windows of wire samples, runs its heart-rate tracker and model, decides whether to
   offload, and encodes one SUMMARY or WINDOW per window; each message is decoded as the gateway
   decodes it;
2. the gateway's per-window path: the offloaded windows go, in order, through
   `gatewayd.inference.analysis.analyse_windows` (the inference worker's code: the full model,
   the heart-rate fusion), and every message becomes what the rules see through
   `gatewayd.pipeline.observation_for_frame`. That is "what the gateway reports";
3. beside it, for reference: the full model on every window (as if every window had been
   offloaded), the accelerometer threshold, and the shipped feature baseline when given.

One recording's result is a `WindowTable` of per-window arrays; everything scored is a pure
function of tables (`score_hr`, `score_activity`, `score_offload`, `sweep_offload`,
`sweep_fusion`). Window-level definitions (what counts as a bad local window, how windows
without a reference or a label count) are in docs/eval.md and on each function.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt

from gatewayd.activity import ActivityGroup, group_name
from gatewayd.datasets import Recording
from gatewayd.emulator.wearable import (
    SIGNAL_ONLY_MODEL_ID,
    LocalActivity,
    WearableCore,
    WearableSpec,
    activity_on_wire,
)
from gatewayd.inference.analysis import (
    HR_AGREEMENT_BPM,
    HrFusion,
    WindowAnalysis,
    analyse_windows,
    answers_from_prediction,
    calibrated,
    model_answers,
    window_cadence,
)
from gatewayd.inference.cards import ModelCard
from gatewayd.inference.groups import class_groups
from gatewayd.inference.session import InferenceError, ModelSession
from gatewayd.mapping import observation_for_frame
from gatewayd.protocol.messages import (
    MOTION_SHIFT,
    UNKNOWN_ACTIVITY,
    MessageFlags,
    Summary,
    Window,
    decode_message,
)
from gatewayd.rules import RuleEngine, RulesConfig
from gatewayd.signals.acc_features import (
    CADENCE_HALFWIDTH_BPM,
    CADENCE_MULTIPLES,
    LinearActivityBaseline,
    acc_features_batch,
)
from gatewayd.signals.filters import bandpass
from gatewayd.signals.heart_rate import HrConfig, HrState
from gatewayd.signals.offload import (
    DEFAULT_MIN_CONF_E4,
    DEFAULT_REST_LIMIT_CBPM,
    DEFAULT_TAU_MBITS,
    MOTION_CG_MAX,
    UNKNOWN_QUALITY,
    offload_confidence_e4,
)
from gatewayd.signals.windows import STEP_S, WINDOW_S
from gatewayd.tables import format_table

__all__ = [
    "ACC_MOTION_THRESHOLD",
    "BAD_HR_BPM",
    "BASELINE",
    "CONFIDENCES",
    "MAJORITY",
    "TARGET_OFFLOAD_RATIO",
    "TARGET_RECALL",
    "TERMS",
    "WINDOW_COLUMNS",
    "ActivityReport",
    "Alternative",
    "Estimator",
    "FusionSweep",
    "HrReport",
    "OffloadCounts",
    "OffloadReport",
    "OffloadSweep",
    "OutOfFold",
    "ReplaySetup",
    "SweepPoint",
    "WindowTable",
    "acc_motion",
    "bad_windows",
    "choose_policy",
    "format_activity",
    "format_fusion_sweep",
    "format_hr",
    "format_offload",
    "format_offload_sweep",
    "mae",
    "on_cadence",
    "plan_estimators",
    "plot_offload_sweep",
    "replay",
    "roc_auc",
    "run_temperatures",
    "score_activity",
    "score_hr",
    "score_offload",
    "spectral_entropy_bits",
    "sweep_fusion",
    "sweep_offload",
    "window_rows",
]

Estimator = Literal["signal", "model", "gateway"]
#: The name of the model-free rest/moving baseline in reports.
BASELINE: Final = "acc_threshold"
#: The name of the trivial reference: always the group most scored windows of the run have.
MAJORITY: Final = "majority"
#: ACC motion (1/64 g RMS, see `acc_motion`) at and above which the baseline says "moving":
#: the heart-rate estimator's ``motion_floor``, chosen for that estimator, not tuned on labels.
ACC_MOTION_THRESHOLD: Final = HrConfig().motion_floor
#: A local heart rate further than this from the reference makes a bad local window.
BAD_HR_BPM: Final = HR_AGREEMENT_BPM
#: The offload policy's targets (docs/eval.md): offload at most this share of windows...
TARGET_OFFLOAD_RATIO: Final = 0.35
#: ... while catching at least this share of the bad local windows.
TARGET_RECALL: Final = 0.80
#: Windows run through the full model at a time (bounds memory).
MODEL_BATCH: Final = 128
_UNKNOWN: Final = int(ActivityGroup.UNKNOWN)
_REST: Final = int(ActivityGroup.REST)
_DEVICE: Final = "eval"
_HR_SOURCES: Final = ("signal", "model")


# --- replay --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplaySetup:
    """What a recording is replayed through."""

    #: The wearable's pruned model (None: activity unknown, as a wearable without one).
    wearable_model: ModelSession | None = None
    #: The gateway's full model (None: the gateway's degraded mode).
    gateway_model: ModelSession | None = None
    tau_mbits: int = DEFAULT_TAU_MBITS
    min_conf_e4: int = DEFAULT_MIN_CONF_E4
    fusion: HrFusion = field(default_factory=HrFusion)
    #: The shipped accelerometer-feature baseline, scored beside the models when given.
    baseline: LinearActivityBaseline | None = None
    #: Also run the full model on every window (the ``model`` estimator).
    model_every_window: bool = True
    #: A training run's out-of-fold answers, in place of running the two models (their cards
    #: still give the classes and the calibration); only the windows it covers are kept.
    out_of_fold: OutOfFold | None = None
    #: The rules the gateway's reports go through (what alerts a resident would get).
    rules: RulesConfig = field(default_factory=RulesConfig)


@dataclass(frozen=True, eq=False)
class OutOfFold:
    """A training run's out-of-fold outputs: each window scored by a model that never saw it.

    training/ writes them (``oof.npz``) while it cross-validates by subject: for every window
    of a held-out subject (on its own stride, e.g. every other window), the raw logits of the
    fold's full model and of each pruned copy: ``act_logits_p0`` / ``hr_logits_p0``,
    ``act_logits_p40`` ..., with ``recording`` (the recording's name) and ``window`` (the
    index on the 8 s / 2 s grid). Scoring the wearable and the gateway with them gives
    cross-subject figures on the very subjects the shipped models were trained on. They were
    computed from the recording's samples, not the wire's int16 (a quantisation away).
    """

    rows: Mapping[tuple[str, int], int]
    #: Pruning level (0, 20, ...) -> (activity logits (N, C), HR logits (N, bins)).
    logits: Mapping[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]
    #: The linear feature baseline's out-of-fold class probabilities (``probs_logistic``), in
    #: the shipped baseline's class order, or None: then no baseline is scored.
    baseline: npt.NDArray[np.float64] | None = None
    #: Pruning level -> the run's own (activity, HR) temperatures (`run_temperatures`), in place
    #: of the card's; a level not here is calibrated with the card's.
    temperatures: Mapping[int, tuple[float, float | None]] = field(default_factory=dict)
    #: The input transform the run's models were trained on (its ``cv.json``'s
    #: ``preprocessing``), or None when not known. The figures are those models', whatever
    #: input the cards of --models-dir name.
    preprocessing: str | None = None

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> OutOfFold:
        """Read the arrays of an ``oof.npz``; ValueError names what is missing."""
        for key in ("recording", "window"):
            if key not in arrays:
                raise ValueError(f"out-of-fold outputs have no {key!r} array")
        rows = {
            (str(r), int(w)): i
            for i, (r, w) in enumerate(zip(arrays["recording"], arrays["window"], strict=True))
        }
        logits = {}
        for key in arrays:
            if key.startswith("act_logits_p") and key[12:].isdigit():
                level = int(key[12:])
                hr = f"hr_logits_p{level}"
                if hr not in arrays:
                    raise ValueError(f"out-of-fold outputs have {key} but no {hr}")
                logits[level] = (
                    np.asarray(arrays[key], dtype=np.float32),
                    np.asarray(arrays[hr], dtype=np.float32),
                )
        if not logits:
            raise ValueError("out-of-fold outputs hold no act_logits_p<level> arrays")
        baseline = arrays.get("probs_logistic")
        return cls(rows, logits, None if baseline is None else np.asarray(baseline, np.float64))

    def baseline_groups(self, classes: Sequence[str], recording: str, n: int) -> npt.NDArray[Any]:
        """The baseline's group of windows 0..n-1 (255 where it has no out-of-fold answer)."""
        out = np.full(n, _UNKNOWN, dtype=np.int64)
        if self.baseline is None:
            return out
        groups = np.array([int(g) for g in class_groups(classes)])
        for i in range(n):
            row = self.rows.get((recording, i))
            if row is not None:
                out[i] = groups[int(np.argmax(self.baseline[row]))]
        return out

    def answers(self, card: ModelCard, recording: str, n: int) -> list[WindowAnalysis | None]:
        """The model ``card`` describes, as the gateway reads it, on windows 0..n-1."""
        level = self._level(card)
        found = [(i, row) for i in range(n) if (row := self.rows.get((recording, i))) is not None]
        out: list[WindowAnalysis | None] = [None] * n
        if found:
            rows = [row for _, row in found]
            activity, hr = self.logits[level]
            prediction = calibrated(activity[rows], hr[rows], self._calibrated_card(card))
            for (i, _), answer in zip(
                found, answers_from_prediction(prediction, card), strict=True
            ):
                out[i] = answer
        return out

    def activity_probs(
        self, card: ModelCard, recording: str, n: int
    ) -> list[npt.NDArray[np.float64] | None]:
        """The (calibrated) activity class probabilities of windows 0..n-1, None where none."""
        level = self._level(card)
        found = [(i, row) for i in range(n) if (row := self.rows.get((recording, i))) is not None]
        out: list[npt.NDArray[np.float64] | None] = [None] * n
        if found:
            activity, hr = self.logits[level]
            rows = [row for _, row in found]
            probs = calibrated(activity[rows], hr[rows], self._calibrated_card(card)).activity_probs
            for (i, _), p in zip(found, probs, strict=True):
                out[i] = p
        return out

    def covered(self, recording: str, n: int) -> npt.NDArray[np.bool_]:
        """Which of windows 0..n-1 of a recording have out-of-fold answers."""
        return np.array([(recording, i) in self.rows for i in range(n)], dtype=np.bool_)

    def _calibrated_card(self, card: ModelCard) -> ModelCard:
        """``card`` with the run's temperatures for its pruning level, where the run has them."""
        own = self.temperatures.get(card.pruning_pct)
        if own is None or card.calibration is None:
            return card
        activity, hr = own
        calibration = card.calibration.model_copy(
            update={"activity_temperature": activity, "hr_temperature": hr}
        )
        return card.model_copy(update={"calibration": calibration})

    def _level(self, card: ModelCard) -> int:
        if card.pruning_pct not in self.logits:
            raise ValueError(
                f"out-of-fold outputs have no model pruned {card.pruning_pct} % (the card of"
                f" {card.model_id}); they have {sorted(self.logits)}"
            )
        return card.pruning_pct


@dataclass(frozen=True, eq=False)
class WindowTable:
    """One recording replayed: per-window arrays (N windows), NaN / 255 where unknown."""

    name: str
    source: str
    subject_key: str
    has_bvp: bool
    #: The wearable ran a local model (so its activity verdicts count).
    local_model: bool
    #: The reference heart rate (NaN: none) and the window's activity group (255: unknown).
    ref_hr: npt.NDArray[np.float64]
    truth: npt.NDArray[np.int64]
    # What the wearable said, decoded from its messages.
    entropy_mbits: npt.NDArray[np.int64]
    local_activity: npt.NDArray[np.int64]
    activity_conf_e4: npt.NDArray[np.int64]
    local_hr: npt.NDArray[np.float64]
    signal_quality: npt.NDArray[np.int64]
    flags: npt.NDArray[np.int64]
    offloaded: npt.NDArray[np.bool_]
    # The full model on every window (NaN / 255 without a model).
    model_hr: npt.NDArray[np.float64]
    model_hr_conf: npt.NDArray[np.float64]
    model_activity: npt.NDArray[np.int64]
    # What the gateway reports (what the rules see): HR, its source (0 signal, 1 model, -1
    # none), the activity group.
    gateway_hr: npt.NDArray[np.float64]
    gateway_hr_source: npt.NDArray[np.int64]
    gateway_activity: npt.NDArray[np.int64]
    # Baselines: ACC motion intensity and the feature baseline's group (255 without one).
    acc_motion: npt.NDArray[np.float64]
    baseline_activity: npt.NDArray[np.int64]
    #: A candidate "hard window" measure, from the wire samples (`spectral_entropy_bits`).
    spectral_entropy: npt.NDArray[np.float64]
    #: The wrist's rhythm per window from the wire's ACC (`acc_cadence`, per minute; NaN: none).
    cadence_bpm: npt.NDArray[np.float64]
    #: The alerts the gateway's rules raised on what it reported, over every window of the
    #: recording (also those a subset leaves out): (window index, alert kind).
    alerts: tuple[tuple[int, str], ...] = ()
    #: Each row's window index in the recording (None: the row's position).
    window: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        """Return the number of windows."""
        return int(self.ref_hr.shape[0])

    @property
    def local_hr_cbpm(self) -> npt.NDArray[np.int64]:
        """The wearable's heart rate as the wire carries it: centi-bpm, 0 where none."""
        return np.nan_to_num(np.round(self.local_hr * 100)).astype(np.int64)

    def confidence_e4(
        self, fn: Callable[[int, int, int, int], int] = offload_confidence_e4
    ) -> npt.NDArray[np.int64]:
        """``fn`` of each window's summary fields (activity_conf_e4, signal_quality, hr_cbpm,
        activity): by default the wire's offload confidence."""
        fields = zip(
            self.activity_conf_e4, self.signal_quality, self.local_hr_cbpm, self.local_activity,
            strict=True,
        )  # fmt: skip
        return np.array([fn(int(a), int(q), int(h), int(g)) for a, q, h, g in fields], np.int64)

    def subset(self, keep: npt.NDArray[np.bool_]) -> WindowTable:
        """The same recording with only the windows ``keep`` marks."""
        arrays = {
            k: getattr(self, k)[keep]
            for k in self.__dataclass_fields__
            if isinstance(getattr(self, k), np.ndarray)
        }
        return replace(self, **arrays)


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


def _full_window(core: WearableCore, index: int, message: Summary | Window) -> Window:
    """The WINDOW this window would have been, had it been offloaded (same wire samples)."""
    if isinstance(message, Window):
        return message
    bvp, acc = core.wire_samples(index)
    fmt = core.spec.sample_format
    return Window(message, fmt, 64, 32, 64, bvp, acc)


def _cadence(window: Window) -> float:
    """`window_cadence` as a number (NaN: no rhythm)."""
    c = window_cadence(window)
    return math.nan if c is None else c


def _answers(session: ModelSession, windows: Sequence[Window]) -> list[WindowAnalysis | None]:
    out: list[WindowAnalysis | None] = []
    for start in range(0, len(windows), MODEL_BATCH):
        answers, error = model_answers(session, windows[start : start + MODEL_BATCH])
        if error is not None:
            raise InferenceError(error)
        out.extend(answers)
    return out


def _sources(
    recording: Recording, setup: ReplaySetup
) -> tuple[
    ModelSession | Callable[[int], LocalActivity] | None, list[WindowAnalysis | None] | None
]:
    """The wearable's activity source and the gateway model's given answers (out-of-fold)."""
    oof, wearable = setup.out_of_fold, setup.wearable_model
    if oof is None:
        return wearable, None
    n = recording.window_count()
    gateway = None
    if setup.gateway_model is not None:
        gateway = oof.answers(setup.gateway_model.card, recording.name, n)
    if wearable is None:
        return None, gateway
    local_probs = oof.activity_probs(wearable.card, recording.name, n)
    classes = wearable.card.outputs.activity_classes

    def local(i: int) -> LocalActivity:
        p = local_probs[i] if i < n else None
        if p is None:
            return LocalActivity(_UNKNOWN, 0)  # no out-of-fold answer: left out of the table
        return activity_on_wire(p, classes)

    return local, gateway


def _gateway_path(
    messages: Sequence[Summary | Window],
    setup: ReplaySetup,
    given: Sequence[WindowAnalysis | None] | None,
) -> tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    tuple[tuple[int, str], ...],
]:
    """What the gateway reports per window: HR, its source (1 model, 0 signal, -1 none), group,
    and the alerts its rules raise on those reports (window index, kind)."""
    n = len(messages)
    offloaded = [i for i, m in enumerate(messages) if isinstance(m, Window)]
    analyses: dict[int, WindowAnalysis | None] = {}
    states: dict[str, HrState] = {}
    for start in range(0, len(offloaded), MODEL_BATCH):
        chunk = offloaded[start : start + MODEL_BATCH]
        batch = [(_DEVICE, m) for i in chunk if isinstance(m := messages[i], Window)]
        answers = None if given is None else [given[i] for i in chunk]
        answer = analyse_windows(batch, states, setup.gateway_model, setup.fusion, answers=answers)
        if answer.model_error is not None:
            raise InferenceError(answer.model_error)
        states.update(answer.states)
        analyses.update(zip(chunk, answer.analyses, strict=True))
    hr = np.full(n, np.nan)
    source = np.full(n, -1, dtype=np.int64)
    activity = np.full(n, _UNKNOWN, dtype=np.int64)
    engine = RuleEngine(setup.rules)
    alerts: list[tuple[int, str]] = []
    for i, message in enumerate(messages):
        obs = observation_for_frame(
            _DEVICE, message, i * STEP_S + WINDOW_S, window_id=None, analysis=analyses.get(i)
        )
        alerts += [(i, t.kind.value) for t in engine.observe(obs) if t.state == "raised"]
        if obs.hr_bpm is not None:
            hr[i] = obs.hr_bpm
            # A summary's heart rate is the wearable's tracker, whatever the observation names.
            source[i] = 1 if isinstance(message, Window) and obs.hr_source == "model" else 0
        if obs.activity is not None:
            activity[i] = obs.activity
    return hr, source, activity, tuple(alerts)


def run_temperatures(cv: Mapping[str, Any]) -> dict[int, tuple[float, float | None]]:
    """The (activity, HR) temperatures per pruning level of a training run's ``cv.json``.

    Its ``calibration`` section: ``{"p0": {"activity_temperature": T, "hr_temperature": T or
    null}, "p40": ...}``, fitted on that run's out-of-fold outputs. ValueError or TypeError says
    what is wrong.
    """
    section = cv.get("calibration")
    if not isinstance(section, Mapping):
        raise TypeError("no 'calibration' section")
    out: dict[int, tuple[float, float | None]] = {}
    for key, value in section.items():
        if not (isinstance(key, str) and key.startswith("p") and key[1:].isdigit()):
            raise ValueError(f"calibration key {key!r} is not p<pruning level>")
        try:
            activity = float(value["activity_temperature"])
            raw_hr = value.get("hr_temperature")
            hr = None if raw_hr is None else float(raw_hr)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"calibration {key}: no usable temperatures ({exc})") from exc
        if not (math.isfinite(activity) and activity > 0) or not (
            hr is None or (math.isfinite(hr) and hr > 0)
        ):
            raise ValueError(f"calibration {key}: temperatures must be positive")
        out[int(key[1:])] = (activity, hr)
    return out


def _model_columns(
    answers: Sequence[WindowAnalysis | None],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    n = len(answers)
    hr, conf = np.full(n, np.nan), np.full(n, np.nan)
    activity = np.full(n, _UNKNOWN, dtype=np.int64)
    for i, a in enumerate(answers):
        if a is None:
            continue
        if a.hr_bpm is not None:
            hr[i], conf[i] = a.hr_bpm, a.hr_confidence
        activity[i] = _UNKNOWN if a.activity is None else a.activity
    return hr, conf, activity


def replay(recording: Recording, setup: ReplaySetup) -> WindowTable:
    """Replay one recording through the wearable and the gateway's per-window path."""
    wearable = setup.wearable_model
    local, given = _sources(recording, setup)
    spec = WearableSpec(
        address="C0:FF:EE:00:00:01",
        name=recording.name,
        recording=recording,
        boot_id=0,
        pruning_pct=wearable.card.pruning_pct if wearable is not None else 40,
        tau_mbits=setup.tau_mbits,
        min_conf_e4=setup.min_conf_e4,
        model_id=wearable.model_id if wearable is not None else SIGNAL_ONLY_MODEL_ID,
    )
    core = WearableCore(spec, local_model=local)
    # Encoded and decoded exactly as on the wire (fragmentation is lossless and left out).
    messages = [decode_message(raw) for _, raw in core.produce(math.inf)]
    n = len(messages)
    gateway_hr, gateway_source, gateway_activity, alerts = _gateway_path(messages, setup, given)
    summaries = [m.summary if isinstance(m, Window) else m for m in messages]
    full = [_full_window(core, i, m) for i, m in enumerate(messages)]
    every: Sequence[WindowAnalysis | None] = [None] * n
    if setup.gateway_model is not None and setup.model_every_window:
        every = _answers(setup.gateway_model, full) if given is None else given
    model_hr, model_conf, model_activity = _model_columns(every)
    accs = np.stack([w.acc for w in full]) if full else np.empty((0, 256, 3))
    baseline = np.full(n, _UNKNOWN, dtype=np.int64)
    if setup.baseline is not None and setup.out_of_fold is not None:
        # The shipped baseline was fitted on every subject: with out-of-fold answers for the
        # models, the baseline's own out-of-fold answers (or none) keep the comparison fair.
        baseline = setup.out_of_fold.baseline_groups(setup.baseline.classes, recording.name, n)
    elif setup.baseline is not None and n:
        groups = np.array([int(g) for g in class_groups(setup.baseline.classes)])
        baseline = groups[setup.baseline.predict(acc_features_batch(accs, 32.0))]
    ref = np.full(n, np.nan)
    if recording.hr_ref_bpm is not None:
        k = min(n, recording.hr_ref_bpm.shape[0])
        ref[:k] = recording.hr_ref_bpm[:k]
    table = WindowTable(
        name=recording.name,
        source=recording.source,
        subject_key=recording.subject_key,
        has_bvp=recording.has_bvp,
        local_model=wearable is not None,
        ref_hr=ref,
        truth=np.array([int(recording.group_for_window(i)) for i in range(n)], dtype=np.int64),
        entropy_mbits=np.array([s.entropy_mbits for s in summaries], dtype=np.int64),
        local_activity=np.array([s.activity for s in summaries], dtype=np.int64),
        activity_conf_e4=np.array([s.activity_conf_e4 for s in summaries], dtype=np.int64),
        local_hr=np.array([np.nan if s.hr_bpm is None else s.hr_bpm for s in summaries]),
        signal_quality=np.array([s.signal_quality for s in summaries], dtype=np.int64),
        flags=np.array([int(s.flags) for s in summaries], dtype=np.int64),
        offloaded=np.array([isinstance(m, Window) for m in messages], dtype=np.bool_),
        model_hr=model_hr,
        model_hr_conf=model_conf,
        model_activity=model_activity,
        gateway_hr=gateway_hr,
        gateway_hr_source=gateway_source,
        gateway_activity=gateway_activity,
        acc_motion=acc_motion(accs) if n else np.empty(0),
        baseline_activity=np.asarray(baseline, dtype=np.int64),
        spectral_entropy=np.array([spectral_entropy_bits(w.bvp) for w in full]),
        cadence_bpm=np.array([_cadence(w) for w in full], dtype=np.float64),
        alerts=alerts,
        window=np.arange(n, dtype=np.int64),
    )
    oof = setup.out_of_fold
    return table if oof is None else table.subset(oof.covered(recording.name, n))


#: The columns of `window_rows`, in order.
WINDOW_COLUMNS: Final = (
    "recording", "source", "subject", "window", "start_s", "offloaded", "ref_hr_bpm",
    "wearable_hr_bpm", "signal_quality", "model_hr_bpm", "model_hr_confidence", "gateway_hr_bpm",
    "gateway_hr_source", "truth_group", "wearable_group", "activity_conf_e4", "model_group",
    "gateway_group", "entropy_mbits", "offload_confidence_e4", "acc_motion", "scored", "bad_hr",
    "bad_activity",
)  # fmt: skip
_SOURCE_NAMES: Final = {1: "model", 0: "signal", -1: ""}


def window_rows(tables: Sequence[WindowTable]) -> list[dict[str, object]]:
    """One row per replayed window (`WINDOW_COLUMNS`): what the wearable and the gateway said,
    beside the reference; an unknown number is "" and an unknown group "unknown"."""

    def num(x: float, digits: int = 2) -> object:
        return "" if math.isnan(x) else round(float(x), digits)

    rows: list[dict[str, object]] = []
    for t in tables:
        index = np.arange(len(t)) if t.window is None else t.window
        scored, bad_hr, bad_activity = bad_windows(t)
        confidence = t.confidence_e4()
        for k in range(len(t)):
            quality, activity_e4 = int(t.signal_quality[k]), int(t.activity_conf_e4[k])
            values = (
                t.name, t.source, t.subject_key, int(index[k]), int(index[k]) * STEP_S,
                int(t.offloaded[k]), num(t.ref_hr[k]), num(t.local_hr[k]),
                "" if quality == UNKNOWN_QUALITY else quality, num(t.model_hr[k]),
                num(t.model_hr_conf[k], 4), num(t.gateway_hr[k]),
                _SOURCE_NAMES[int(t.gateway_hr_source[k])], group_name(int(t.truth[k])),
                group_name(int(t.local_activity[k])), activity_e4,
                group_name(int(t.model_activity[k])), group_name(int(t.gateway_activity[k])),
                int(t.entropy_mbits[k]), int(confidence[k]),
                num(t.acc_motion[k], 4), int(scored[k]), int(bad_hr[k]), int(bad_activity[k]),
            )  # fmt: skip
            rows.append(dict(zip(WINDOW_COLUMNS, values, strict=True)))
    return rows


# --- helpers -------------------------------------------------------------------------------------


def mae(estimates: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """Mean absolute error of two equally long arrays; NaN when they are empty."""
    est = np.asarray(estimates, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"estimates {est.shape} and reference {ref.shape} differ in shape")
    return float(np.mean(np.abs(est - ref))) if est.size else math.nan


def _mean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _json(doc: dict[str, object]) -> dict[str, object]:
    """A report's JSON object with NaN (nothing scored) as null."""
    return cast(dict[str, object], _nulls(doc))


def _nulls(value: Any) -> Any:
    """NaN (nothing scored) becomes null, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls(v) for v in value]
    return value


def _fmt(value: float, spec: str = ".2f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _pct(fraction: float) -> str:
    return _fmt(100.0 * fraction, ".1f")


def _by_source(tables: Sequence[WindowTable]) -> dict[str, list[WindowTable]]:
    out: dict[str, list[WindowTable]] = {}
    for t in tables:
        out.setdefault(t.source, []).append(t)
    return out


def plan_estimators(
    requested: Literal["signal", "model", "both"] | None, *, have_model: bool
) -> tuple[tuple[Estimator, ...], bool]:
    """The HR estimators to report, and whether a model estimator that was asked for is missing.

    Nothing requested: signal, model and gateway with a model, else signal and gateway (the
    gateway's degraded mode; not an error). ``signal``: the wearable's tracker alone. ``model``
    without a model: nothing to run. ``both`` without a model: signal, and missing.
    """
    if requested is None:
        return (("signal", "model", "gateway") if have_model else ("signal", "gateway")), False
    if requested == "signal":
        return ("signal",), False
    if not have_model:
        return (("signal",) if requested == "both" else ()), True
    return (("model",) if requested == "model" else ("signal", "model", "gateway")), False


# --- heart rate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HrScore:
    """One recording's heart-rate result."""

    name: str
    source: str
    #: All complete windows of the recording.
    total_windows: int
    #: Windows without a reference heart rate (NaN or missing): skipped.
    no_reference: int
    #: Windows with a reference but no estimate from some estimator (not yet acquired).
    no_estimate: int
    #: Windows scored: reference known, every estimator answered.
    windows: int
    #: MAE in bpm per estimator over the scored windows (NaN when none was scored).
    mae_bpm: dict[str, float]


@dataclass(frozen=True)
class HrReport:
    """Every recording's heart-rate result, the mean over recordings and per dataset."""

    estimators: tuple[Estimator, ...]
    recordings: list[HrScore]
    mean_mae_bpm: dict[str, float]
    datasets: dict[str, dict[str, float]]
    model_id: str | None = None
    wearable_model_id: str | None = None

    def to_json(self) -> dict[str, object]:
        """The documented JSON object (docs/eval.md); NaN (nothing scored) becomes null."""
        return _json(
            {
                "estimators": list(self.estimators),
                "model_id": self.model_id,
                "wearable_model_id": self.wearable_model_id,
                "recordings": {
                    r.name: {
                        "source": r.source,
                        "windows": r.windows,
                        "no_reference": r.no_reference,
                        "no_estimate": r.no_estimate,
                        "mae_bpm": r.mae_bpm,
                    }
                    for r in self.recordings
                },
                "mean_mae_bpm": self.mean_mae_bpm,
                "datasets": {
                    source: {
                        "recordings": sum(r.source == source for r in self.recordings),
                        "windows": sum(r.windows for r in self.recordings if r.source == source),
                        "mean_mae_bpm": maes,
                    }
                    for source, maes in self.datasets.items()
                },
            }
        )


def _hr_estimates(table: WindowTable) -> dict[str, npt.NDArray[np.float64]]:
    return {"signal": table.local_hr, "model": table.model_hr, "gateway": table.gateway_hr}


def score_hr(
    tables: Sequence[WindowTable],
    estimators: Sequence[Estimator],
    *,
    model_id: str | None = None,
    wearable_model_id: str | None = None,
) -> HrReport:
    """MAE per estimator on the same windows: those with a reference and every estimate.

    Recordings without PPG or without any reference are left out. The mean is the unweighted
    mean of the recordings' MAEs; a dataset's is the mean over its recordings.
    """
    scores = []
    for t in tables:
        if not t.has_bvp or np.isnan(t.ref_hr).all():
            continue
        estimates = _hr_estimates(t)
        has_ref = ~np.isnan(t.ref_hr)
        answered = has_ref.copy()
        for e in estimators:
            answered &= ~np.isnan(estimates[e])
        scores.append(
            HrScore(
                name=t.name,
                source=t.source,
                total_windows=len(t),
                no_reference=int((~has_ref).sum()),
                no_estimate=int((has_ref & ~answered).sum()),
                windows=int(answered.sum()),
                mae_bpm={e: mae(estimates[e][answered], t.ref_hr[answered]) for e in estimators},
            )
        )
    datasets: dict[str, dict[str, float]] = {
        source: {e: _mean(s.mae_bpm[e] for s in scores if s.source == source) for e in estimators}
        for source in sorted({s.source for s in scores})
    }
    return HrReport(
        estimators=tuple(estimators),
        recordings=scores,
        mean_mae_bpm={e: _mean(s.mae_bpm[e] for s in scores) for e in estimators},
        datasets=datasets,
        model_id=model_id,
        wearable_model_id=wearable_model_id,
    )


def format_hr(report: HrReport) -> str:
    """The heart-rate report as `gatewayd eval hr` prints it."""
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
    lines = _model_lines(report.model_id, report.wearable_model_id)
    lines.append(format_table(head, rows))
    if len(report.datasets) > 1 or len(report.recordings) > len(report.datasets):
        drows = [
            [
                source,
                str(sum(r.source == source for r in report.recordings)),
                *(_fmt(maes[e]) for e in est),
            ]
            for source, maes in report.datasets.items()
        ]
        lines += ["", "Per dataset (mean over its recordings):"]
        lines.append(format_table(["DATASET", "RECORDINGS", *(f"{e.upper()}" for e in est)], drows))
    return "\n".join(lines)


def _model_lines(model_id: str | None, wearable_model_id: str | None) -> list[str]:
    return [
        f"gateway model: {model_id or 'none (degraded mode)'}; wearable model:"
        f" {wearable_model_id or 'none (activity unknown)'}"
    ]


# --- activity ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivityScore:
    """Accuracy of each method on the windows with a known activity group."""

    windows: int
    #: method -> {"groups": accuracy over rest/light/vigorous (None: the method only tells
    #: rest from moving), "rest_vs_moving": accuracy of rest against light + vigorous}.
    accuracy: dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class ActivityReport:
    """Per recording, per dataset, pooled over windows and the mean over recordings."""

    methods: tuple[str, ...]
    #: The majority method's constant answers (groups, rest_vs_moving).
    majority: tuple[str, str]
    recordings: dict[str, ActivityScore]
    datasets: dict[str, ActivityScore]
    pooled: ActivityScore
    mean_over_recordings: dict[str, dict[str, float | None]]
    model_id: str | None = None
    wearable_model_id: str | None = None
    #: Per dataset, the alerts the gateway's rules raised on what it reported (`alert_counts`).
    alerts: dict[str, dict[str, object]] = field(default_factory=dict)
    #: The tachycardia limit's motion floor, chosen held out (`choose_motion_floor`).
    motion_floor: MotionFloor | None = None

    def to_json(self) -> dict[str, object]:
        """The documented JSON object (docs/eval.md)."""

        def score(s: ActivityScore) -> dict[str, object]:
            return {"windows": s.windows, "accuracy": s.accuracy}

        return _json(
            {
                "methods": list(self.methods),
                "model_id": self.model_id,
                "wearable_model_id": self.wearable_model_id,
                "majority": {"groups": self.majority[0], "rest_vs_moving": self.majority[1]},
                "windows": self.pooled.windows,
                "accuracy": self.pooled.accuracy,
                "mean_over_recordings": self.mean_over_recordings,
                "datasets": {k: score(v) for k, v in self.datasets.items()},
                "recordings": {k: score(v) for k, v in self.recordings.items()},
                "alerts": self.alerts,
                "motion_floor": None if self.motion_floor is None else self.motion_floor.to_json(),
            }
        )


#: The motion floor raises a window to "vigorous" for the tachycardia limit; it is chosen as
#: the lowest motion at which at least this share of the labelled windows it raises are
#: vigorous (`choose_motion_floor`).
MOTION_FLOOR_PRECISION: Final = 0.90


def wire_motion_cg(flags: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The ``motion_cg`` each summary's flags carry; -1 where the wearable reported none."""
    reported = (flags & int(MessageFlags.MOTION_REPORTED)) != 0
    return np.where(reported, (flags >> MOTION_SHIFT) & 0xFF, -1).astype(np.int64)


@dataclass(frozen=True)
class MotionFloor:
    """The motion floor (rules.activities.vigorous_motion_g) chosen on labelled windows.

    ``chosen_cg`` is the choice on every subject; the held-out figures apply to each subject
    the floor chosen on the others and pool the subjects' windows.
    """

    chosen_cg: int | None
    windows: int
    #: Of the labelled windows at or above each subject's held-out floor: how many, the share
    #: that is vigorous, and how many are rest and light (raised wrongly).
    raised: int
    precision: float
    raised_rest: int
    raised_light: int
    #: The share of the vigorous windows that the floor raises.
    vigorous_recall: float
    #: Held-out floor (cg) -> how many subjects had it.
    per_subject: dict[int, int]
    #: Vigorous windows the gateway reported as rest, light or unknown (a lower limit), and how
    #: many of them the held-out floor raised back to vigorous.
    reported_lower: int = 0
    rescued: int = 0
    #: Rest and light windows the gateway reported right that the held-out floor raised.
    overridden: int = 0

    def to_json(self) -> dict[str, object]:
        """The ``motion_floor`` object of `gatewayd eval activity --json`."""
        return {
            "chosen_cg": self.chosen_cg,
            "precision_target": MOTION_FLOOR_PRECISION,
            "windows": self.windows,
            "held_out": {
                "raised": self.raised,
                "precision": self.precision,
                "raised_rest": self.raised_rest,
                "raised_light": self.raised_light,
                "vigorous_recall": self.vigorous_recall,
                "floors": {str(k): v for k, v in sorted(self.per_subject.items())},
                "vigorous_reported_lower": self.reported_lower,
                "rescued": self.rescued,
                "overridden": self.overridden,
            },
        }


def _lowest_floor(motion: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> int | None:
    """The lowest motion (cg) whose windows at or above it are vigorous often enough."""
    if not motion.size:
        return None
    # Windows at or above each candidate floor, from the top down: cumulative counts.
    counts = np.bincount(motion, minlength=MOTION_CG_MAX + 1)[::-1].cumsum()[::-1]
    vig = np.bincount(motion[truth == int(ActivityGroup.VIGOROUS)], minlength=MOTION_CG_MAX + 1)
    vig_above = vig[::-1].cumsum()[::-1]
    ok = (counts > 0) & (vig_above >= MOTION_FLOOR_PRECISION * counts)
    ok[0] = False  # a floor of 0 would raise every window
    hits = np.flatnonzero(ok)
    return int(hits[0]) if hits.size else None


def choose_motion_floor(tables: Sequence[WindowTable]) -> MotionFloor:
    """Choose the motion floor on labelled windows with a reported motion, held out by subject.

    The floor is the lowest motion_cg at which at least `MOTION_FLOOR_PRECISION` of the
    labelled windows at or above it are vigorous. Each subject is scored with the floor chosen
    on the other subjects.
    """
    keys, motions, truths, reports = [], [], [], []
    for t in tables:
        motion = wire_motion_cg(t.flags)
        keep = (t.truth != _UNKNOWN) & (motion >= 0)
        keys += [t.subject_key] * int(keep.sum())
        motions.append(motion[keep])
        truths.append(t.truth[keep])
        reports.append(t.gateway_activity[keep])
    key = np.array(keys, dtype=object)
    empty = [np.empty(0, np.int64)]
    motion = np.concatenate(motions or empty).astype(np.int64)
    truth = np.concatenate(truths or empty).astype(np.int64)
    reported = np.concatenate(reports or empty).astype(np.int64)
    raised = np.zeros(motion.size, dtype=np.bool_)
    per_subject: Counter[int] = Counter()
    for k in sorted(set(keys)):
        mine = key == k
        floor = _lowest_floor(motion[~mine], truth[~mine])
        if floor is not None:
            per_subject[floor] += 1
            raised |= mine & (motion >= floor)
    vigorous = truth == int(ActivityGroup.VIGOROUS)
    lower = vigorous & (reported != int(ActivityGroup.VIGOROUS))
    right = ~vigorous & (reported == truth)
    return MotionFloor(
        chosen_cg=_lowest_floor(motion, truth),
        windows=int(motion.size),
        raised=int(raised.sum()),
        precision=float(vigorous[raised].mean()) if raised.any() else math.nan,
        raised_rest=int((raised & (truth == int(ActivityGroup.REST))).sum()),
        raised_light=int((raised & (truth == int(ActivityGroup.LIGHT))).sum()),
        vigorous_recall=float(raised[vigorous].mean()) if vigorous.any() else math.nan,
        per_subject=dict(per_subject),
        reported_lower=int(lower.sum()),
        rescued=int((lower & raised).sum()),
        overridden=int((right & raised).sum()),
    )


def alert_counts(tables: Sequence[WindowTable]) -> dict[str, dict[str, object]]:
    """Per dataset: recordings, those where the gateway raised any alert, raises per kind."""
    out: dict[str, dict[str, object]] = {}
    for source, group in sorted(_by_source(tables).items()):
        kinds = Counter(kind for t in group for _, kind in t.alerts)
        out[source] = {
            "recordings": len(group),
            "recordings_with_alerts": sum(1 for t in group if t.alerts),
            "raised": dict(sorted(kinds.items())),
        }
    return out


def _activity_predictions(
    table: WindowTable, majority: tuple[int, bool]
) -> dict[str, npt.NDArray[np.int64]]:
    """Each method's group per window; 3 = "moving" for methods that only tell rest or not."""
    n = len(table)
    return {
        "model": table.model_activity,
        "wearable": table.local_activity,
        "gateway": table.gateway_activity,
        MAJORITY: np.full(n, majority[0], dtype=np.int64),
        BASELINE: np.where(table.acc_motion >= ACC_MOTION_THRESHOLD, 3, _REST).astype(np.int64),
        "baseline": table.baseline_activity,
    }


def _accuracy(
    pred: npt.NDArray[np.int64], truth: npt.NDArray[np.int64], *, groups: bool, moving: bool | None
) -> dict[str, float | None]:
    """Group and rest-vs-moving accuracy; an unknown (255) prediction is wrong either way."""
    if not truth.size:
        return {"groups": math.nan, "rest_vs_moving": math.nan}
    known = pred != _UNKNOWN
    truth_moving = truth != _REST
    pred_moving = (pred != _REST) if moving is None else np.full(pred.shape, moving)
    return {
        "groups": float(np.mean(known & (pred == truth))) if groups else None,
        "rest_vs_moving": float(np.mean(known & (pred_moving == truth_moving))),
    }


def _methods(tables: Sequence[WindowTable]) -> tuple[str, ...]:
    methods = []
    if any((t.model_activity != _UNKNOWN).any() for t in tables):
        methods.append("model")
    if any(t.local_model for t in tables):
        methods.append("wearable")
    methods += ["gateway", MAJORITY, BASELINE]
    if any((t.baseline_activity != _UNKNOWN).any() for t in tables):
        methods.append("baseline")
    return tuple(methods)


def _activity_score(
    tables: Sequence[WindowTable], methods: Sequence[str], majority: tuple[int, bool]
) -> ActivityScore:
    truth_parts, pred_parts = [], {m: [] for m in methods}  # type: ignore[var-annotated]
    for t in tables:
        known = t.truth != _UNKNOWN
        truth_parts.append(t.truth[known])
        preds = _activity_predictions(t, majority)
        for m in methods:
            pred_parts[m].append(preds[m][known])
    truth = np.concatenate(truth_parts) if truth_parts else np.empty(0, dtype=np.int64)
    accuracy = {}
    for m in methods:
        pred = np.concatenate(pred_parts[m]) if pred_parts[m] else np.empty(0, dtype=np.int64)
        accuracy[m] = _accuracy(
            pred,
            truth,
            groups=m != BASELINE,
            moving=majority[1] if m == MAJORITY else None,
        )
    return ActivityScore(int(truth.size), accuracy)


def score_activity(
    tables: Sequence[WindowTable],
    *,
    model_id: str | None = None,
    wearable_model_id: str | None = None,
) -> ActivityReport:
    """Group and rest-vs-moving accuracy of every method on windows with a known group.

    Windows whose group is unknown (a transition, mixed, unlabelled) are not scored. The
    majority answers the most common group (and the commoner of rest / moving) over all scored
    windows of the run: an oracle constant, the floor any method must beat.
    """
    labelled = [t for t in tables if (t.truth != _UNKNOWN).any()]
    truth = np.concatenate([t.truth[t.truth != _UNKNOWN] for t in labelled] or [np.empty(0)])
    counts = Counter(int(g) for g in truth)
    top = max(counts, key=lambda g: (counts[g], -g)) if counts else _REST
    moving = bool(np.mean(truth != _REST) > 0.5) if truth.size else True
    majority = (top, moving)
    methods = _methods(tables)
    recordings = {t.name: _activity_score([t], methods, majority) for t in labelled}
    datasets = {
        source: _activity_score(group, methods, majority)
        for source, group in sorted(_by_source(labelled).items())
    }
    mean = {
        m: {
            k: (
                _mean(v for s in recordings.values() if (v := s.accuracy[m][k]) is not None)
                if m != BASELINE or k != "groups"
                else None
            )
            for k in ("groups", "rest_vs_moving")
        }
        for m in methods
    }
    return ActivityReport(
        methods=methods,
        majority=(group_name(top), "moving" if moving else "rest"),
        recordings=recordings,
        datasets=datasets,
        pooled=_activity_score(labelled, methods, majority),
        mean_over_recordings=mean,
        model_id=model_id,
        wearable_model_id=wearable_model_id,
        alerts=alert_counts(tables),
        motion_floor=choose_motion_floor(labelled),
    )


def _acc_cells(score: ActivityScore, methods: Sequence[str]) -> list[str]:
    cells = []
    for m in methods:
        a = score.accuracy[m]
        g = a["groups"]
        cells.append(f"{_pct(g) if g is not None else '-':>5} / {_pct(a['rest_vs_moving'] or 0.0)}")
    return cells


def format_activity(report: ActivityReport, *, recordings: bool = False) -> str:
    """The activity report as `gatewayd eval activity` prints it (accuracy %, groups / r-v-m)."""
    methods = list(report.methods)
    head = ["", "WINDOWS", *(m.upper() for m in methods)]
    rows = [[k, str(s.windows), *_acc_cells(s, methods)] for k, s in report.datasets.items()]
    rows.append(["all windows", str(report.pooled.windows), *_acc_cells(report.pooled, methods)])
    mean_score = ActivityScore(0, report.mean_over_recordings)
    rows.append(["mean over recordings", "", *_acc_cells(mean_score, methods)])
    lines = _model_lines(report.model_id, report.wearable_model_id)
    lines.append(
        "Accuracy %, groups (rest/light/vigorous) / rest vs moving, on windows with a known group;"
        f" {MAJORITY}: always {report.majority[0]} / {report.majority[1]};"
        f" {BASELINE}: ACC motion >= {ACC_MOTION_THRESHOLD:g}/64 g RMS (rest vs moving only)"
    )
    lines.append(format_table(head, rows))
    if recordings:
        rrows = [[k, str(s.windows), *_acc_cells(s, methods)] for k, s in report.recordings.items()]
        lines += ["", format_table(["RECORDING", "WINDOWS", *(m.upper() for m in methods)], rrows)]
    arows = [
        [
            source,
            str(a["recordings"]),
            str(a["recordings_with_alerts"]),
            ", ".join(f"{k} {v}" for k, v in cast(dict[str, int], a["raised"]).items()) or "none",
        ]
        for source, a in report.alerts.items()
    ]
    if arows:
        lines += [
            "",
            "Alerts the gateway's rules (the defaults, or --config's [rules]) raised on what it"
            " reported:",
            format_table(["", "RECORDINGS", "WITH ALERTS", "RAISED"], arows),
        ]
    floor = report.motion_floor
    if floor is not None and floor.windows:
        chosen = "none" if floor.chosen_cg is None else f"{floor.chosen_cg / 100:.2f} g"
        lines += [
            "",
            f"Motion floor (rules.activities.vigorous_motion_g): {chosen} on every subject, the"
            f" lowest wrist motion at which {_pct(MOTION_FLOOR_PRECISION)} % of the labelled"
            " windows at or above it are vigorous. Held out (each subject under the floor chosen"
            f" on the others): {floor.raised} of {floor.windows} labelled windows raised,"
            f" {_pct(floor.precision)} % of them vigorous ({floor.raised_rest} rest,"
            f" {floor.raised_light} light); {_pct(floor.vigorous_recall)} % of the vigorous"
            f" windows raised, {floor.rescued} of the {floor.reported_lower} the gateway reported"
            f" lower; {floor.overridden} rest or light windows reported right were raised;"
            " floors chosen: "
            + ", ".join(f"{k / 100:.2f} g x{v}" for k, v in sorted(floor.per_subject.items())),
        ]
    return "\n".join(lines)


# --- offload -------------------------------------------------------------------------------------


def bad_windows(
    table: WindowTable,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(scored, bad_hr, bad_activity) per window: where the wearable alone got it wrong.

    The heart-rate criterion applies to windows with a reference heart rate (recordings with
    PPG): bad when the wearable sent no heart rate or one more than `BAD_HR_BPM` off. The
    activity criterion applies to windows with a known group, when the wearable runs a model:
    bad when its group differs (an unknown verdict is wrong). A window is scored when at least
    one criterion applies; it is bad when any applicable one fails.
    """
    has_ref = ~np.isnan(table.ref_hr) & table.has_bvp
    off = np.abs(table.local_hr - table.ref_hr)
    bad_hr = has_ref & (np.isnan(table.local_hr) | (off > BAD_HR_BPM))
    labelled = (table.truth != _UNKNOWN) & table.local_model
    bad_activity = labelled & (table.local_activity != table.truth)
    return has_ref | labelled, bad_hr, bad_activity


@dataclass(frozen=True)
class OffloadCounts:
    """Offload counts of some windows; the ratios are properties."""

    windows: int = 0
    offloaded: int = 0
    #: Windows with a reference or a label (see `bad_windows`); the others are not scored.
    scored: int = 0
    bad: int = 0
    bad_offloaded: int = 0
    bad_hr: int = 0
    bad_activity: int = 0
    #: Offloaded for each reason (a window may have several).
    entropy: int = 0
    confidence: int = 0
    motion: int = 0
    #: On offloaded windows with a reference and both answers: the wearable's and the gateway's
    #: summed absolute HR error (bpm) and how many windows.
    hr_windows: int = 0
    wearable_abs_err: float = 0.0
    gateway_abs_err: float = 0.0
    #: On offloaded windows with a known group: the wearable's and the gateway's right answers.
    act_windows: int = 0
    wearable_right: int = 0
    gateway_right: int = 0

    @property
    def offload_ratio(self) -> float:
        """Share of windows offloaded."""
        return _ratio(self.offloaded, self.windows)

    @property
    def bad_window_recall(self) -> float:
        """Share of the bad local windows that were offloaded (NaN: none was bad)."""
        return _ratio(self.bad_offloaded, self.bad)

    def __add__(self, other: OffloadCounts) -> OffloadCounts:
        """Counts of both sets of windows."""
        return OffloadCounts(
            **{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__}
        )

    def to_json(self) -> dict[str, object]:
        """Counts and ratios as JSON."""
        return {
            "windows": self.windows,
            "offload_ratio": self.offload_ratio,
            "bad_window_recall": self.bad_window_recall,
            "counts": {
                "offloaded": self.offloaded,
                "scored": self.scored,
                "unscored": self.windows - self.scored,
                "bad": self.bad,
                "bad_offloaded": self.bad_offloaded,
                "bad_hr": self.bad_hr,
                "bad_activity": self.bad_activity,
                "reasons": {
                    "entropy": self.entropy,
                    "confidence": self.confidence,
                    "motion": self.motion,
                },
            },
            "offloaded_windows": {
                "hr_windows": self.hr_windows,
                "wearable_hr_mae_bpm": _ratio_f(self.wearable_abs_err, self.hr_windows),
                "gateway_hr_mae_bpm": _ratio_f(self.gateway_abs_err, self.hr_windows),
                "activity_windows": self.act_windows,
                "wearable_activity_accuracy": _ratio(self.wearable_right, self.act_windows),
                "gateway_activity_accuracy": _ratio(self.gateway_right, self.act_windows),
            },
        }


def _ratio_f(part: float, whole: int) -> float:
    return part / whole if whole else math.nan


def offload_counts(table: WindowTable) -> OffloadCounts:
    """The offload counts of one replayed recording (its wearable's actual decisions)."""
    scored, bad_hr, bad_act = bad_windows(table)
    bad = bad_hr | bad_act
    off = table.offloaded
    hr = off & ~np.isnan(table.ref_hr) & ~np.isnan(table.local_hr) & ~np.isnan(table.gateway_hr)
    hr &= table.has_bvp
    act = off & (table.truth != _UNKNOWN)
    return OffloadCounts(
        windows=len(table),
        offloaded=int(off.sum()),
        scored=int(scored.sum()),
        bad=int(bad.sum()),
        bad_offloaded=int((bad & off).sum()),
        bad_hr=int(bad_hr.sum()),
        bad_activity=int(bad_act.sum()),
        entropy=int(((table.flags & MessageFlags.OFFLOAD_ENTROPY) != 0).sum()),
        confidence=int(((table.flags & MessageFlags.OFFLOAD_CONFIDENCE) != 0).sum()),
        motion=int(((table.flags & MessageFlags.OFFLOAD_MOTION) != 0).sum()),
        hr_windows=int(hr.sum()),
        wearable_abs_err=float(np.abs(table.local_hr - table.ref_hr)[hr].sum()),
        gateway_abs_err=float(np.abs(table.gateway_hr - table.ref_hr)[hr].sum()),
        act_windows=int(act.sum()),
        wearable_right=int((table.local_activity == table.truth)[act].sum()),
        gateway_right=int((table.gateway_activity == table.truth)[act].sum()),
    )


@dataclass(frozen=True)
class OffloadReport:
    """The wearable's offload decisions, per recording, per dataset, pooled and averaged."""

    tau_mbits: int
    min_conf_e4: int
    recordings: dict[str, OffloadCounts]
    datasets: dict[str, OffloadCounts]
    pooled: OffloadCounts
    #: Unweighted means over recordings (those with a scored bad window for the recall).
    mean_offload_ratio: float
    mean_bad_window_recall: float
    model_id: str | None = None
    wearable_model_id: str | None = None
    sweep: OffloadSweep | None = None

    def to_json(self) -> dict[str, object]:
        """The documented JSON object (docs/eval.md)."""
        doc: dict[str, object] = {
            "policy": {
                "tau_mbits": self.tau_mbits,
                "min_conf_e4": self.min_conf_e4,
                "confidence": "(activity_conf_e4 * signal_quality + 50) // 100",
            },
            "model_id": self.model_id,
            "wearable_model_id": self.wearable_model_id,
            "bad_hr_bpm": BAD_HR_BPM,
            **self.pooled.to_json(),
            "mean_over_recordings": {
                "offload_ratio": self.mean_offload_ratio,
                "bad_window_recall": self.mean_bad_window_recall,
            },
            "datasets": {k: v.to_json() for k, v in self.datasets.items()},
            "recordings": {k: v.to_json() for k, v in self.recordings.items()},
        }
        if self.sweep is not None:
            doc["sweep"] = self.sweep.to_json()
        return _json(doc)


def score_offload(
    tables: Sequence[WindowTable],
    *,
    tau_mbits: int = DEFAULT_TAU_MBITS,
    min_conf_e4: int = DEFAULT_MIN_CONF_E4,
    model_id: str | None = None,
    wearable_model_id: str | None = None,
    sweep: OffloadSweep | None = None,
) -> OffloadReport:
    """Offload ratio and bad-window recall of the decisions the wearables took."""
    recordings = {t.name: offload_counts(t) for t in tables}
    datasets = {
        source: sum((recordings[t.name] for t in group), OffloadCounts())
        for source, group in sorted(_by_source(tables).items())
    }
    pooled = sum(recordings.values(), OffloadCounts())
    return OffloadReport(
        tau_mbits=tau_mbits,
        min_conf_e4=min_conf_e4,
        recordings=recordings,
        datasets=datasets,
        pooled=pooled,
        mean_offload_ratio=_mean(c.offload_ratio for c in recordings.values()),
        mean_bad_window_recall=_mean(c.bad_window_recall for c in recordings.values()),
        model_id=model_id,
        wearable_model_id=wearable_model_id,
        sweep=sweep,
    )


def _offload_row(name: str, c: OffloadCounts) -> list[str]:
    return [
        name,
        str(c.windows),
        _pct(c.offload_ratio),
        f"{c.bad}/{c.scored}",
        _pct(c.bad_window_recall),
        f"{c.entropy}/{c.confidence}/{c.motion}",
        _fmt(_ratio_f(c.wearable_abs_err, c.hr_windows)),
        _fmt(_ratio_f(c.gateway_abs_err, c.hr_windows)),
        _pct(_ratio(c.wearable_right, c.act_windows)),
        _pct(_ratio(c.gateway_right, c.act_windows)),
    ]


def format_offload(report: OffloadReport, *, recordings: bool = False) -> str:
    """The offload report as `gatewayd eval offload` prints it."""
    head = ["", "WINDOWS", "OFFLOAD %", "BAD/SCORED", "RECALL %", "ENT/CONF/MOT",
            "OFF: HR WEAR", "HR GW", "ACT WEAR %", "ACT GW %"]  # fmt: skip
    rows = [_offload_row(k, c) for k, c in report.datasets.items()]
    rows.append(_offload_row("all windows", report.pooled))
    rows.append(
        ["mean over recordings", "", _pct(report.mean_offload_ratio), "",
         _pct(report.mean_bad_window_recall), "", "", "", "", ""]
    )  # fmt: skip
    lines = _model_lines(report.model_id, report.wearable_model_id)
    lines.append(
        f"Policy: entropy > {report.tau_mbits} mbits or activity_conf_e4 x quality / 100"
        f" (0 for rest above {DEFAULT_REST_LIMIT_CBPM / 100:g} bpm) < {report.min_conf_e4}, or a"
        " fall signature. A bad local window: the wearable's HR"
        f" > {BAD_HR_BPM:g} bpm off (or none) where there is a reference, or its group wrong"
        " where there is a label. OFF: on offloaded windows, HR MAE (bpm) and activity accuracy"
        " of the wearable alone and of what the gateway reports."
    )
    lines.append(format_table(head, rows))
    if recordings:
        rrows = [_offload_row(k, c) for k, c in report.recordings.items()]
        lines += ["", format_table(["RECORDING", *head[1:]], rrows)]
    if report.sweep is not None:
        lines += ["", format_offload_sweep(report.sweep)]
    return "\n".join(lines)


# --- the offload sweep ---------------------------------------------------------------------------


def _hr_confidence_e4(activity_conf_e4: int, quality: int, hr_cbpm: int, activity: int) -> int:
    return offload_confidence_e4(10000, quality, hr_cbpm, UNKNOWN_ACTIVITY)


def _activity_confidence_e4(
    activity_conf_e4: int, quality: int, hr_cbpm: int, activity: int
) -> int:
    return activity_conf_e4


def _lower_confidence_e4(activity_conf_e4: int, quality: int, hr_cbpm: int, activity: int) -> int:
    """The lower of both answers' confidences (the wire's rule until the product replaced it)."""
    return min(activity_conf_e4, _hr_confidence_e4(activity_conf_e4, quality, hr_cbpm, activity))


def _product_without_rest_check(
    activity_conf_e4: int, quality: int, hr_cbpm: int, activity: int
) -> int:
    """The wire's product without its rest check (the wire's rule until the check was added)."""
    return offload_confidence_e4(activity_conf_e4, quality, hr_cbpm, activity, rest_limit_cbpm=0)


#: The offload confidences compared by the sweep, from the summary's integers: the wire's
#: (`offload_confidence_e4`: both answers' probabilities multiplied, 0 for rest above the
#: resting limit), the product without that check, the lower of both and each answer's alone.
CONFIDENCES: Final[Mapping[str, Callable[[int, int, int, int], int]]] = {
    "product": offload_confidence_e4,
    "product_no_rest": _product_without_rest_check,
    "min": _lower_confidence_e4,
    "activity": _activity_confidence_e4,
    "hr": _hr_confidence_e4,
}
#: Entropy thresholds swept (milli-bits); 65535 switches the entropy reason off.
SWEEP_TAUS: Final = (3600, 3700, 3800, 3850, 3900, 3950, 4000, 4050, 4100, 65535)
#: Minimum confidences swept (1/10000).
SWEEP_CONFS: Final = tuple(range(0, 10001, 250))
#: The "hard window" measure beside the confidence: the wire's histogram entropy, and candidates
#: a wearable could compute cheaply (eval computes them from the wire samples; not on the wire).
TERMS: Final = ("entropy", "spectral_entropy", "acc_motion", "none")
_OFF: Final = math.inf


@dataclass(frozen=True)
class SweepPoint:
    """One policy's offload ratio and bad-window recall over some windows."""

    tau_mbits: int
    min_conf_e4: int
    offload_ratio: float
    bad_window_recall: float


@dataclass(frozen=True)
class Alternative:
    """One (measure, confidence) pair, chosen and scored leave-one-subject-out like the policy."""

    term: str
    confidence: str
    #: Held-out windows pooled: offload ratio and recall.
    offload_ratio: float
    bad_window_recall: float
    #: The threshold and minimum confidence chosen on all subjects (inf: the term is off).
    threshold: float
    min_conf_e4: int


@dataclass(frozen=True)
class OffloadSweep:
    """The trade-off curve of the policy, and the defaults chosen from it cross-subject."""

    confidence: str
    target_ratio: float
    #: Per dataset and "pooled": every (tau, min_conf) point of the wire's policy.
    curves: dict[str, list[SweepPoint]]
    #: Leave-one-subject-out: chosen on the other subjects, scored on the held-out one; the
    #: held-out windows pooled, per dataset and overall ("pooled").
    held_out: dict[str, tuple[float, float]]
    #: The policy chosen on every subject (what the defaults should be), and its figures.
    chosen: SweepPoint
    #: How often each (tau, min_conf) was chosen across the held-out subjects.
    fold_choices: dict[tuple[int, int], int]
    #: Every (measure, confidence) pair held out the same way (the wire's policy included).
    alternatives: list[Alternative] = field(default_factory=list)
    #: How well each per-window score ranks the bad windows: ROC AUC per dataset and pooled.
    auc: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The sweep as JSON (docs/eval.md)."""
        return _json(
            {
                "confidence": self.confidence,
                "target_offload_ratio": self.target_ratio,
                "chosen": _point(self.chosen),
                "held_out": {
                    k: {"offload_ratio": r, "bad_window_recall": c}
                    for k, (r, c) in self.held_out.items()
                },
                "fold_choices": [
                    {"tau_mbits": t, "min_conf_e4": c, "folds": n}
                    for (t, c), n in sorted(self.fold_choices.items())
                ],
                "alternatives": [
                    {
                        "term": a.term,
                        "confidence": a.confidence,
                        "offload_ratio": a.offload_ratio,
                        "bad_window_recall": a.bad_window_recall,
                        "threshold": None if math.isinf(a.threshold) else a.threshold,
                        "min_conf_e4": a.min_conf_e4,
                    }
                    for a in self.alternatives
                ],
                "auc": self.auc,
                "curves": {k: [_point(p) for p in v] for k, v in self.curves.items()},
            }
        )


def _point(p: SweepPoint) -> dict[str, object]:
    return {
        "tau_mbits": p.tau_mbits,
        "min_conf_e4": p.min_conf_e4,
        "offload_ratio": p.offload_ratio,
        "bad_window_recall": p.bad_window_recall,
    }


def spectral_entropy_bits(bvp: npt.ArrayLike, rate_hz: int = 64) -> float:
    """Entropy (bits) of a window's BVP power spectrum over the heart-rate band (40-220 bpm).

    A candidate "hard window" measure that a wearable's tracker has at hand (its FFT): the
    band-passed BVP, Hann-windowed, one FFT of the window's length; 0 for a flat window.
    """
    x = np.asarray(bvp, dtype=np.float64)
    if x.size < 2 or float(np.ptp(x)) == 0.0:
        return 0.0
    y = bandpass(x, rate_hz) * np.hanning(x.size)
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / rate_hz)
    band = power[(freqs >= 40 / 60) & (freqs <= 220 / 60)]
    total = float(band.sum())
    if total <= 0.0:
        return 0.0
    p = band[band > 0] / total
    return float(-(p * np.log2(p)).sum())


@dataclass(frozen=True, eq=False)
class _Windows:
    """Every window of a set of tables, flattened, with what the sweep needs."""

    subjects: list[str]
    sources: list[str]
    subject: npt.NDArray[np.int64]
    bad: npt.NDArray[np.bool_]
    scored: npt.NDArray[np.bool_]
    motion: npt.NDArray[np.bool_]
    terms: dict[str, npt.NDArray[np.float64]]
    confidences: dict[str, npt.NDArray[np.int64]]


def _windows(tables: Sequence[WindowTable]) -> _Windows:
    subjects = sorted({t.subject_key for t in tables})
    source_of = {t.subject_key: t.source for t in tables}
    index = {s: i for i, s in enumerate(subjects)}
    confidences = {
        name: np.concatenate([t.confidence_e4(fn) for t in tables])
        for name, fn in CONFIDENCES.items()
    }
    return _Windows(
        subjects=subjects,
        sources=[source_of[s] for s in subjects],
        subject=np.concatenate([np.full(len(t), index[t.subject_key]) for t in tables]),
        bad=np.concatenate([np.logical_or(*bad_windows(t)[1:]) for t in tables]),
        scored=np.concatenate([bad_windows(t)[0] for t in tables]),
        motion=np.concatenate([(t.flags & MessageFlags.OFFLOAD_MOTION) != 0 for t in tables]),
        terms={
            "entropy": np.concatenate([t.entropy_mbits for t in tables]).astype(np.float64),
            "spectral_entropy": np.concatenate([t.spectral_entropy for t in tables]),
            "acc_motion": np.concatenate([t.acc_motion for t in tables]),
            "none": np.zeros(sum(len(t) for t in tables)),
        },
        confidences=confidences,
    )


def _thresholds(term: str, values: npt.NDArray[np.float64]) -> list[float]:
    if term == "entropy":
        return [_OFF if t >= 65535 else float(t) for t in SWEEP_TAUS]
    if term == "none" or not values.size:
        return [_OFF]
    # Candidates without a wire unit: the upper half of their distribution, and off.
    return [*np.unique(np.quantile(values, np.linspace(0.5, 0.99, 25))).tolist(), _OFF]


def _counts(
    w: _Windows, term: str, confidence: str, thresholds: Sequence[float], confs: Sequence[int]
) -> npt.NDArray[np.int64]:
    """(threshold, min_conf, subject, [windows, offloaded, bad, bad_offloaded])."""
    k = len(w.subjects)
    out = np.zeros((len(thresholds), len(confs), k, 4), dtype=np.int64)
    out[..., 0] = np.bincount(w.subject, minlength=k)
    out[..., 2] = np.bincount(w.subject, weights=w.bad, minlength=k).astype(np.int64)
    x, conf = w.terms[term], w.confidences[confidence]
    for ti, threshold in enumerate(thresholds):
        high = (x > threshold) | w.motion
        for ki, min_conf in enumerate(confs):
            off = high | (conf < min_conf)
            out[ti, ki, :, 1] = np.bincount(w.subject, weights=off, minlength=k)
            out[ti, ki, :, 3] = np.bincount(w.subject, weights=off & w.bad, minlength=k)
    return out


def choose_policy(c: npt.NDArray[np.int64], target: float) -> tuple[int, int]:
    """The (threshold index, conf index) a policy search picks from counts c (T, K, 4).

    Among the policies offloading at most ``target`` of the windows: if some catch at least
    `TARGET_RECALL` of the bad ones, the one of them that offloads least (both targets met, the
    most energy saved); else the best recall (ties: the lower ratio). If none meets the ratio,
    the lowest ratio.
    """
    ratio = c[..., 1] / np.maximum(c[..., 0], 1)
    recall = c[..., 3] / np.maximum(c[..., 2], 1)
    feasible = ratio <= target + 1e-12
    enough = feasible & (recall >= TARGET_RECALL)
    if enough.any():
        flat = int(np.argmin(np.where(enough, ratio - 1e-6 * recall, np.inf)))
    elif feasible.any():
        flat = int(np.argmax(np.where(feasible, recall - 1e-6 * ratio, -np.inf)))
    else:
        flat = int(np.argmin(ratio))
    ti, ki = np.unravel_index(flat, ratio.shape)
    return int(ti), int(ki)


def _figures(c: npt.NDArray[np.int64]) -> tuple[float, float]:
    return _ratio(int(c[1]), int(c[0])), _ratio(int(c[3]), int(c[2]))


def _held_out(
    c: npt.NDArray[np.int64], sources: Sequence[str], target: float
) -> tuple[dict[str, npt.NDArray[np.int64]], Counter[tuple[int, int]], tuple[int, int]]:
    """Leave-one-subject-out over c (T, K, S, 4): held-out counts, fold picks, the all pick."""
    total = c.sum(axis=2)
    held: dict[str, npt.NDArray[np.int64]] = {}
    choices: Counter[tuple[int, int]] = Counter()
    for si, source in enumerate(sources):
        ti, ki = choose_policy(total - c[:, :, si], target)
        choices[(ti, ki)] += 1
        for key in (source, "pooled"):
            held[key] = held.get(key, np.zeros(4, dtype=np.int64)) + c[ti, ki, si]
    return held, choices, choose_policy(total, target)


def roc_auc(score: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """P(a positive scores above a negative), ties counted half; NaN without both classes."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    sorted_s = s[order]
    # Average ranks over ties (1-based).
    edges = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [s.size]])
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc(w: _Windows) -> dict[str, dict[str, float]]:
    """AUC of each score for telling bad local windows from good ones, per dataset and pooled."""
    scores = {
        "entropy": w.terms["entropy"],
        "spectral_entropy": w.terms["spectral_entropy"],
        "acc_motion": w.terms["acc_motion"],
        "1 - hr quality": -w.confidences["hr"].astype(np.float64),
        "1 - activity confidence": -w.confidences["activity"].astype(np.float64),
        "1 - offload confidence": -w.confidences["product"].astype(np.float64),
        "1 - lower of both": -w.confidences["min"].astype(np.float64),
    }
    source = np.array(w.sources)[w.subject]
    out: dict[str, dict[str, float]] = {}
    for name in [*sorted(set(w.sources)), "pooled"]:
        keep = w.scored & ((source == name) if name != "pooled" else True)
        out[name] = {k: roc_auc(v[keep], w.bad[keep]) for k, v in scores.items()}
    return out


def sweep_offload(
    tables: Sequence[WindowTable],
    *,
    target_ratio: float = TARGET_OFFLOAD_RATIO,
    confs: Sequence[int] = SWEEP_CONFS,
    confidence: str = "product",
) -> OffloadSweep:
    """Sweep tau and the minimum confidence; choose them leave-one-subject-out.

    For every held-out subject the policy `choose_policy` picks on the *other* subjects (both
    targets met at the least offload, else the best recall at an offload ratio <=
    ``target_ratio``) is applied to the held-out one; the held-out windows are pooled. The
    policy chosen on all subjects is the recommended default. The same is done for every other
    (measure, confidence) pair (`TERMS`, `CONFIDENCES`) to compare them.
    """
    w = _windows(tables)
    taus = list(SWEEP_TAUS)
    alternatives: list[Alternative] = []
    main: tuple[Any, ...] = ()
    for term in TERMS:
        thresholds = _thresholds(term, w.terms[term])
        for name in CONFIDENCES:
            c = _counts(w, term, name, thresholds, confs)
            held, choices, (ti, ki) = _held_out(c, w.sources, target_ratio)
            alternatives.append(
                Alternative(term, name, *_figures(held["pooled"]), thresholds[ti], confs[ki])
            )
            if (term, name) == ("entropy", confidence):
                main = (c, held, choices, ti, ki)
    c, held, choices, ti, ki = main
    total = c.sum(axis=2)
    curves: dict[str, list[SweepPoint]] = {}
    groups = {s: [i for i, src in enumerate(w.sources) if src == s] for s in w.sources}
    groups["pooled"] = list(range(len(w.subjects)))
    for name, members in sorted(groups.items()):
        part = c[:, :, members].sum(axis=2)
        curves[name] = [
            SweepPoint(tau, conf, *_figures(part[i, j]))
            for i, tau in enumerate(taus)
            for j, conf in enumerate(confs)
        ]
    return OffloadSweep(
        confidence=confidence,
        target_ratio=target_ratio,
        curves=curves,
        held_out={k: _figures(v) for k, v in sorted(held.items())},
        chosen=SweepPoint(taus[ti], confs[ki], *_figures(total[ti, ki])),
        fold_choices={(taus[i], confs[j]): n for (i, j), n in choices.items()},
        alternatives=alternatives,
        auc=_auc(w),
    )


def format_offload_sweep(sweep: OffloadSweep) -> str:
    """The sweep's tables: the frontier per dataset, held-out figures and the choice."""
    lines = [
        f"Sweep (confidence = {sweep.confidence}): best bad-window recall % at an offload ratio"
        " of at most 15 / 25 / 35 / 50 %, per dataset (in-sample curves, for the trade-off):"
    ]
    rows = []
    for name, points in sweep.curves.items():
        cells = []
        for budget in (0.15, 0.25, 0.35, 0.50):
            ok = [p for p in points if p.offload_ratio <= budget + 1e-12]
            best = max(ok, key=lambda p: (p.bad_window_recall, -p.offload_ratio), default=None)
            cells.append(
                "-"
                if best is None
                else f"{_pct(best.bad_window_recall)} ({best.tau_mbits},{best.min_conf_e4})"
            )
        rows.append([name, *cells])
    lines.append(format_table(["DATASET", "<=15 %", "<=25 %", "<=35 %", "<=50 %"], rows))
    lines += [
        "",
        "Chosen leave-one-subject-out on the other subjects (the least offload catching >="
        f" {_pct(TARGET_RECALL)} % of the bad windows within {_pct(sweep.target_ratio)} %"
        " offload, else the best recall within it), scored on the held-out subject; held-out"
        " windows pooled:",
    ]
    hrows = [[k, _pct(r), _pct(c)] for k, (r, c) in sweep.held_out.items()]
    lines.append(format_table(["HELD OUT", "OFFLOAD %", "RECALL %"], hrows))
    lines += [
        "",
        "Every measure beside the confidence, held out the same way (pooled; entropy/product is"
        " the wire's policy; thresholds chosen on all subjects):",
    ]
    arows = [
        [
            a.term,
            a.confidence,
            _pct(a.offload_ratio),
            _pct(a.bad_window_recall),
            "off" if math.isinf(a.threshold) else f"{a.threshold:.4g}",
            str(a.min_conf_e4),
        ]
        for a in sweep.alternatives
    ]
    lines.append(
        format_table(
            ["MEASURE", "CONFIDENCE", "OFFLOAD %", "RECALL %", "THRESHOLD", "MIN CONF E4"], arows
        )
    )
    scores = list(next(iter(sweep.auc.values()), {}))
    lines += ["", "ROC AUC of each score for the bad local windows (scored windows):"]
    lines.append(
        format_table(
            ["DATASET", *scores],
            [[k, *(_fmt(v[s], ".3f") for s in scores)] for k, v in sweep.auc.items()],
        )
    )
    folds = ", ".join(f"({t}, {c}) x{n}" for (t, c), n in sorted(sweep.fold_choices.items()))
    lines += [
        f"Folds chose (tau_mbits, min_conf_e4): {folds}",
        f"Chosen on all subjects: tau_mbits {sweep.chosen.tau_mbits}, min_conf_e4"
        f" {sweep.chosen.min_conf_e4}: offload {_pct(sweep.chosen.offload_ratio)} %, recall"
        f" {_pct(sweep.chosen.bad_window_recall)} % (in-sample)",
    ]
    return "\n".join(lines)


def plot_offload_sweep(sweep: OffloadSweep, path: Path) -> None:
    """Write the trade-off curves (recall against offload ratio) as a PNG (needs matplotlib)."""
    import matplotlib  # noqa: PLC0415 - optional, only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(sweep.curves)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    taus = sorted({p.tau_mbits for p in next(iter(sweep.curves.values()))})
    for ax, name in zip(axes.flat, names, strict=False):
        for tau in taus:
            pts = sorted(
                (p for p in sweep.curves[name] if p.tau_mbits == tau),
                key=lambda p: p.min_conf_e4,
            )
            label = "no entropy" if tau >= 65535 else f"tau {tau}"
            ax.plot(
                [p.offload_ratio for p in pts],
                [p.bad_window_recall for p in pts],
                marker=".",
                markersize=3,
                linewidth=1,
                label=label,
            )
        here = [
            p
            for p in sweep.curves[name]
            if (p.tau_mbits, p.min_conf_e4) == (sweep.chosen.tau_mbits, sweep.chosen.min_conf_e4)
        ]
        for p in here:
            ax.plot(
                p.offload_ratio,
                p.bad_window_recall,
                "k*",
                markersize=12,
                label="chosen (all subjects)",
            )
        ax.axvline(sweep.target_ratio, color="grey", linestyle=":", linewidth=1)
        ax.axhline(TARGET_RECALL, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("offload ratio")
        ax.set_ylabel("bad-window recall")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(
        f"Offload policy sweep (confidence = {sweep.confidence}); star: tau"
        f" {sweep.chosen.tau_mbits}, min_conf {sweep.chosen.min_conf_e4}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the heart-rate fusion sweep -----------------------------------------------------------------

#: Model margins swept: the model's HR is taken when its confidence beats the wearable's by more.
FUSION_MARGINS: Final = (-1.0, -0.5, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
#: Signal-trust ceilings swept: a wearable estimate at least this confident is always kept
#: (1.01 = never kept outright, the margin alone decides).
FUSION_TRUSTED: Final = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)
#: Margins swept where the wearable's estimate coincides with the ACC cadence (None: the
#: window's margin is the other one, as everywhere).
FUSION_CADENCE: Final = (None, -1.0, -0.5, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.5)

#: A fusion rule of the sweep: (margin, trust ceiling, margin on the cadence or None).
FusionRule = tuple[float, float, float | None]


def _rule_name(margin: float, trusted: float, cadence: float | None = None) -> str:
    return (
        f"margin {margin:+.1f}"
        + ("" if trusted > 1 else f", trusted >= {trusted:.2f}")
        + ("" if cadence is None else f", on cadence {cadence:+.1f}")
    )


@dataclass(frozen=True)
class FusionSweep:
    """The gateway's HR under each fusion rule, held out by subject (MAE over recordings)."""

    #: rule -> (held-out mean MAE over recordings, per dataset); rules: signal, model, fused
    #: (the rule chosen on the other subjects), likewise from margin and ceiling only
    #: (`sweep_fusion`), each margin without a trust ceiling, each trust ceiling at margin 0,
    #: and the chosen margin and ceiling with each cadence margin.
    mean_mae_bpm: dict[str, float]
    datasets: dict[str, dict[str, float]]
    #: The rule chosen on all subjects, and how often each rule was chosen per subject.
    chosen: FusionRule
    fold_choices: dict[FusionRule, int]
    #: Per held-out row of a family of rules ("fused, margin and ceiling only (held out)"):
    #: how often each rule was chosen per subject.
    family_choices: dict[str, dict[FusionRule, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The sweep as JSON."""
        return _json(
            {
                "mean_mae_bpm": self.mean_mae_bpm,
                "datasets": self.datasets,
                "chosen": _rule_json(self.chosen),
                "fold_choices": _choices_json(self.fold_choices),
                "family_choices": {
                    family: _choices_json(picks) for family, picks in self.family_choices.items()
                },
            }
        )


def _rule_json(rule: FusionRule) -> dict[str, float | None]:
    margin, trusted, cadence = rule
    return {"margin": margin, "trusted": trusted, "cadence_margin": cadence}


def _choices_json(choices: Mapping[FusionRule, int]) -> list[dict[str, float | None]]:
    """How often each rule was chosen, as `FusionSweep.to_json` lists it."""
    return [
        {**_rule_json(rule), "subjects": n} for rule, n in sorted(choices.items(), key=_rule_order)
    ]


def _rule_order(item: tuple[FusionRule, int]) -> tuple[float, float, float]:
    (m, t, c), _ = item
    return (m, t, -2.0 if c is None else c)


def on_cadence(table: WindowTable) -> npt.NDArray[np.bool_]:
    """Windows whose wearable HR coincides with the ACC cadence (`near_cadence`, vectorised)."""
    hr, c = table.local_hr[:, None], table.cadence_bpm[:, None]
    with np.errstate(invalid="ignore"):
        near = np.abs(hr - c * np.array(CADENCE_MULTIPLES)[None, :]) <= CADENCE_HALFWIDTH_BPM
    out: npt.NDArray[np.bool_] = near.any(axis=1)
    return out


def _fused(table: WindowTable, rule: FusionRule | None) -> npt.NDArray[np.float64]:
    """The gateway's HR per window under a rule; None = the model's whenever offloaded.

    The gateway's own test (`HrFusion.prefers_model`), vectorised over the windows.
    """
    wear = table.local_hr
    conf = np.where(table.signal_quality == UNKNOWN_QUALITY, 1.0, table.signal_quality / 100)
    model = table.model_hr
    if rule is None:
        take = ~np.isnan(model)
    else:
        margin, trusted, cadence = rule
        margins = np.full(len(table), margin)
        if cadence is not None:
            margins[on_cadence(table)] = cadence
        with np.errstate(invalid="ignore"):
            prefers = (table.model_hr_conf > conf + margins) & (conf < trusted)
        take = ~np.isnan(model) & (np.isnan(wear) | prefers)
    out: npt.NDArray[np.float64] = np.where(table.offloaded & take, model, wear)
    return out


def sweep_fusion(tables: Sequence[WindowTable]) -> FusionSweep:
    """Compare the HR fusion rules, choosing margin and trust ceiling leave-one-subject-out.

    Per recording the MAE is over windows with a reference where the wearable and the model both
    answered; the reported HR differs from the wearable's only on offloaded windows. The grid is
    every margin of `FUSION_MARGINS` with every ceiling of `FUSION_TRUSTED` and every cadence
    margin of `FUSION_CADENCE`. A rule's score on the training subjects is the mean over
    datasets of log(the dataset's mean MAE over recordings), so that each dataset weighs alike
    whatever its error scale; ties go to the rule nearest the defaults (no cadence rule, then
    the smallest |margin|, then no ceiling). Each subject is also scored with the rule chosen
    among margin and ceiling alone.
    """
    scored = [t for t in tables if t.has_bvp and not np.isnan(t.ref_hr).all()]
    grid = [(m, t, c) for m in FUSION_MARGINS for t in FUSION_TRUSTED for c in FUSION_CADENCE]
    per_rule: dict[FusionRule, dict[str, float]] = {r: {} for r in grid}
    per: dict[str, dict[str, float]] = {"signal": {}, "model": {}}
    for t in scored:
        ok = ~np.isnan(t.ref_hr) & ~np.isnan(t.local_hr) & ~np.isnan(t.model_hr)
        per["signal"][t.name] = mae(t.local_hr[ok], t.ref_hr[ok])
        per["model"][t.name] = mae(_fused(t, None)[ok], t.ref_hr[ok])
        for r in grid:
            per_rule[r][t.name] = mae(_fused(t, r)[ok], t.ref_hr[ok])

    def best(train: Sequence[WindowTable], rules: Sequence[FusionRule] = grid) -> FusionRule:
        # Each dataset weighs alike, on a log scale: a set where every estimator is 20-80 bpm
        # off must not outvote one where 2 bpm is at stake.
        groups = _by_source(train).values()

        def objective(r: FusionRule) -> float:
            return _mean(math.log(max(_mean(per_rule[r][t.name] for t in g), 1e-3)) for g in groups)

        return min(
            rules,
            key=lambda r: (objective(r), r[2] is not None, abs(r[0]), -r[1]),
        )

    subjects = sorted({t.subject_key for t in scored})
    # Held out over the whole grid and over margin and ceiling alone: whether the cadence
    # margin earns its place is the comparison of the two.
    families = {
        "fused (held out)": grid,
        "fused, margin and ceiling only (held out)": [r for r in grid if r[2] is None],
    }
    held: dict[str, dict[str, float]] = {name: {} for name in families}
    picked: dict[str, Counter[FusionRule]] = {name: Counter() for name in families}
    for s in subjects:
        train = [t for t in scored if t.subject_key != s]
        for name, rules in families.items():
            pick = best(train, rules)
            picked[name][pick] += 1
            for t in scored:
                if t.subject_key == s:
                    held[name][t.name] = per_rule[pick][t.name]
    per.update(held)
    never = FUSION_TRUSTED[-1]
    chosen = best(scored)
    shown: list[FusionRule] = [(m, never, None) for m in FUSION_MARGINS]
    shown += [(0.0, t, None) for t in FUSION_TRUSTED[:-1]]
    shown += [(chosen[0], chosen[1], c) for c in FUSION_CADENCE if c is not None]
    for r in (*shown, chosen):
        per[_rule_name(*r)] = per_rule[r]
    names = [t.name for t in scored]
    by_source = _by_source(scored)
    return FusionSweep(
        mean_mae_bpm={k: _mean(v[n] for n in names) for k, v in per.items()},
        datasets={
            source: {k: _mean(v[t.name] for t in group) for k, v in per.items()}
            for source, group in sorted(by_source.items())
        },
        chosen=chosen,
        fold_choices=dict(picked["fused (held out)"]),
        family_choices={name: dict(c) for name, c in picked.items() if name != "fused (held out)"},
    )


def format_fusion_sweep(sweep: FusionSweep) -> str:
    """The fusion comparison table."""
    rules = list(sweep.mean_mae_bpm)
    head = ["RULE", "MEAN", *sweep.datasets]
    rows = [
        [r, _fmt(sweep.mean_mae_bpm[r]), *(_fmt(d[r]) for d in sweep.datasets.values())]
        for r in rules
    ]

    def listed(choices: Mapping[FusionRule, int]) -> str:
        return ", ".join(
            f"({_rule_name(*r)}) x{n}" for r, n in sorted(choices.items(), key=_rule_order)
        )

    families = [
        f"  {name.removesuffix(' (held out)')}: {listed(c)}"
        for name, c in sweep.family_choices.items()
    ]
    return "\n".join(
        [
            "Gateway HR by fusion rule, MAE bpm (mean over recordings, windows where the wearable"
            " and the model both answered); 'fused (held out)': margin, trust ceiling and margin"
            " on the cadence chosen on the other subjects:",
            format_table(head, rows),
            f"Subjects' folds chose: {listed(sweep.fold_choices)}; on all subjects:"
            f" {_rule_name(*sweep.chosen)}",
            *(["Each family's folds chose:", *families] if families else []),
        ]
    )
