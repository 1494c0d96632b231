"""The gateway's analysis of offloaded windows: one code path for the daemon and `gatewayd eval`.

Given a batch of offloaded WINDOW messages with their device ids, the per-device state of the
gateway's own heart-rate tracker and an optional `ModelSession`, `analyse_windows` returns one
`WindowAnalysis` per window (what the gateway reports for it) and the trackers' new states. The
inference worker (gatewayd/pipeline.py) only adds threads and queues around it; `gatewayd eval`
calls it on recordings replayed through the emulated wearable, so what eval scores is what the
gateway does.

Also here, because there must be exactly one of each:

- `model_input`: the only call of the model input transform, for the gateway's full model, the
  wearable's pruned model and eval alike. It picks the transform the model card names
  (``input.preprocessing``): v1 (`gatewayd.signals.filters.preprocess_window`, 4 x 512) or v2
  (`gatewayd.signals.preprocess.preprocess_window`, 7 x 256). `window_inputs` is its batch
  form: the v2 windows of one shape in one vectorised pass (`preprocess.preprocess_batch`,
  equal to `preprocess_window` bit for bit), keeping the band-passed BVP for the gateway's
  tracker where it is the tracker's own step 1;
- `predict`: a model's answer with the card's calibration applied (temperature scaling:
  softmax(logits / T)). `ModelSession.predict` decodes the raw logits; every caller that wants
  probabilities that mean what they say goes through here;
- `fuse_hr`: how the gateway's heart rate is chosen from the wearable's estimate (its tracker,
  in the WINDOW's summary part) and the full model's (docs/eval.md has the measurements).

Pure apart from running the model: no I/O, no clock, no logging (a model failure is returned
for the caller to log).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from gatewayd.config import InferenceConfig
from gatewayd.inference.cards import ACTIVITY_CLASSES, ModelCard, OutputSpec
from gatewayd.inference.groups import group_prediction
from gatewayd.inference.session import (
    InferenceError,
    ModelSession,
    Prediction,
    decode,
    hr_bin_centres,
)
from gatewayd.protocol.messages import UNKNOWN_PERCENT, Window
from gatewayd.signals import filters, preprocess
from gatewayd.signals.acc_features import acc_cadence, near_cadence
from gatewayd.signals.heart_rate import HrState, estimate_hr

__all__ = [
    "HR_AGREEMENT_BPM",
    "PREPROCESSING_V1",
    "BatchAnalysis",
    "HrFusion",
    "HrMode",
    "HrSourceName",
    "WindowAnalysis",
    "WindowInputs",
    "analyse_windows",
    "analyses_from_prediction",
    "analysis_from_prediction",
    "answers_from_prediction",
    "calibrated",
    "fuse_hr",
    "hr_mass_within",
    "model_answers",
    "model_input",
    "predict",
    "wearable_hr",
    "window_cadence",
    "window_input",
    "window_inputs",
]

#: What v1 model cards name as their preprocessing (the 4 x 512 z-scored input).
PREPROCESSING_V1: Final = "gatewayd.signals.preprocess_window"
#: A heart rate within this many bpm of the truth counts as right: the tracker's confidence
#: estimates that probability, and the model's HR confidence is its head's mass within it.
HR_AGREEMENT_BPM: Final = 10.0

HrSourceName = Literal["model", "signal"]
#: How the gateway picks an offloaded window's heart rate (`InferenceConfig.heart_rate`).
HrMode = Literal["fused", "signal", "model"]


@dataclass(frozen=True, slots=True)
class WindowAnalysis:
    """What the gateway made of one offloaded window (full model, signal estimate, or both)."""

    hr_bpm: float | None
    hr_confidence: float
    hr_source: HrSourceName
    #: The model's activity group (`ActivityGroup` code, 255 when it is unsure which); None
    #: when nothing here looked at the activity (no model): the wearable's stays.
    activity: int | None = None
    #: Probability of that group (summed over the model's classes in it), calibrated when the
    #: card has a calibration.
    activity_confidence: float = 0.0
    quality: int | None = None
    model_id: str | None = None
    result: Mapping[str, Any] | None = None


#: The [inference] defaults: one source for the fusion's defaults (the config's).
_INFERENCE_DEFAULTS: Final = InferenceConfig()


@dataclass(frozen=True, slots=True)
class HrFusion:
    """How the heart rate of an offloaded window is chosen.

    ``fused``: the wearable's estimate, unless the model's confidence exceeds the wearable's
    (its signal quality / 100) by more than ``model_margin`` and the wearable's confidence is
    below ``signal_trusted``; both estimate the probability of being within `HR_AGREEMENT_BPM`
    of the truth. Where the wearable's estimate coincides with the wrist's own rhythm
    (`gatewayd.signals.acc_features.near_cadence`: the error a wrist tracker's signal quality
    does not see) and ``cadence_margin`` is set, that margin applies instead. ``signal``: the
    wearable's (the gateway's own tracker when the wearable sent none). ``model``: the model's
    whenever there is one.
    """

    mode: HrMode = _INFERENCE_DEFAULTS.heart_rate
    model_margin: float = _INFERENCE_DEFAULTS.hr_model_margin
    #: A wearable estimate at least this confident is kept whatever the model says (> 1: never).
    signal_trusted: float = _INFERENCE_DEFAULTS.hr_signal_trusted
    #: The margin where the wearable's estimate coincides with the ACC cadence (None: no
    #: different rule there).
    cadence_margin: float | None = _INFERENCE_DEFAULTS.hr_cadence_margin

    @classmethod
    def of(cls, config: InferenceConfig) -> HrFusion:
        """The fusion an [inference] section asks for."""
        return cls(
            config.heart_rate,
            config.hr_model_margin,
            config.hr_signal_trusted,
            config.hr_cadence_margin,
        )

    def prefers_model(
        self, model_confidence: float, wearable_confidence: float, *, on_cadence: bool = False
    ) -> bool:
        """``fused``: whether the model's estimate beats the wearable's (both present);
        ``on_cadence``: the wearable's estimate coincides with the wrist's rhythm."""
        margin = self.model_margin
        if on_cadence and self.cadence_margin is not None:
            margin = self.cadence_margin
        return (
            model_confidence > wearable_confidence + margin
            and wearable_confidence < self.signal_trusted
        )


@dataclass(frozen=True, slots=True)
class BatchAnalysis:
    """The answers for one batch, in order, and the gateway trackers' states after it."""

    analyses: list[WindowAnalysis | None]
    #: The gateway tracker's state of every device it ran for (others are unchanged).
    states: dict[str, HrState] = field(default_factory=dict)
    #: Why the model gave no answer for this batch (the caller logs it), else None.
    model_error: str | None = None


def model_input(
    bvp: npt.ArrayLike,
    acc: npt.ArrayLike,
    *,
    bvp_rate_hz: int,
    acc_rate_hz: int,
    acc_lsb_per_g: float,
    preprocessing: str,
) -> npt.NDArray[np.float32]:
    """The model input of one window, by the transform a card names (the only call of either).

    For v2 and v3, a window whose BVP is constant (a set without PPG, a sensor that sends none)
    is marked as having no PPG: decided on the samples, so the wearable and the gateway agree.
    """
    channels = _channels(preprocessing)
    if channels is not None:
        b = np.asarray(bvp)
        x = preprocess.preprocess_window(
            b, acc, bvp_rate_hz, acc_rate_hz, acc_lsb_per_g=acc_lsb_per_g, has_bvp=_has_bvp(b)
        )
        return x if channels == x.shape[0] else np.ascontiguousarray(x[:channels])
    if preprocessing == PREPROCESSING_V1:
        # v1 z-scores every channel, so the ACC's scale (acc_lsb_per_g) does not matter.
        return filters.preprocess_window(bvp, acc, bvp_rate_hz, acc_rate_hz)
    raise ValueError(
        f"model input {preprocessing!r} is not one this gateway knows"
        f" ({PREPROCESSING_V1!r}, {preprocess.PREPROCESSING_V2!r},"
        f" {preprocess.PREPROCESSING_ID!r})"
    )


def _channels(preprocessing: str) -> int | None:
    """Channels of `preprocess.preprocess_batch`'s output a v2 or v3 model takes; else None."""
    if preprocessing == preprocess.PREPROCESSING_ID:
        return preprocess.MODEL_CHANNELS
    if preprocessing == preprocess.PREPROCESSING_V2:
        return preprocess.V2_CHANNELS
    return None


def _has_bvp(bvp: npt.NDArray[Any]) -> bool:
    """Whether a window's BVP carries a PPG at all (not empty, not constant)."""
    return bool(bvp.size) and bool(np.ptp(bvp) > 0)


@dataclass(frozen=True, slots=True)
class WindowInputs:
    """The model inputs of a batch of windows, and what the gateway's tracker can reuse."""

    #: Per window, its model input, or None where the transform refused its samples.
    x: list[npt.NDArray[np.float32] | None]
    #: Per window, ``bandpass(bvp, bvp_rate_hz)`` when making the model input computed exactly
    #: that (the model's rate is the window's BVP rate), else None: the tracker's step 1.
    bvp_bandpassed: list[npt.NDArray[np.float64] | None]


def window_inputs(windows: Sequence[Window], card: ModelCard) -> WindowInputs:
    """`window_input` of every window, v2/v3 windows of the same shape preprocessed as one batch.

    Equal, window for window, to `window_input` (`preprocess.preprocess_batch` is bit for bit
    `preprocess_window`); a group the batch refuses (one NaN window) is redone window by window,
    so only the refused windows get None.
    """
    x: list[npt.NDArray[np.float32] | None] = [None] * len(windows)
    shared: list[npt.NDArray[np.float64] | None] = [None] * len(windows)
    channels = _channels(card.input.preprocessing)
    if channels is None:
        for i, w in enumerate(windows):
            with contextlib.suppress(ValueError):
                x[i] = window_input(w, card)
        return WindowInputs(x, shared)
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, w in enumerate(windows):
        key = (w.bvp_rate_hz, w.acc_rate_hz, w.bvp.shape[0], w.acc.shape[0])
        groups.setdefault(key, []).append(i)
    for (bvp_rate, acc_rate, _, _), members in groups.items():
        has = [_has_bvp(windows[i].bvp) for i in members]
        try:
            batch = preprocess.preprocess_batch(
                np.stack([windows[i].bvp for i in members]),
                np.stack([windows[i].acc for i in members]),
                bvp_rate,
                acc_rate,
                # 0 means the wearable did not say: the E4 convention the models were trained on.
                acc_lsb_per_g=np.array([float(windows[i].acc_lsb_per_g or 64) for i in members]),
                has_bvp=np.array(has),
                channels=channels,
            )
        except ValueError:
            for i in members:
                with contextlib.suppress(ValueError):
                    x[i] = window_input(windows[i], card)
            continue
        for row, i in enumerate(members):
            x[i] = batch.x[row]
            if has[row] and bvp_rate == preprocess.MODEL_RATE_HZ:
                shared[i] = batch.bvp[row]
    return WindowInputs(x, shared)


def window_input(window: Window, card: ModelCard) -> npt.NDArray[np.float32]:
    """The model input of a WINDOW message's samples for the model ``card`` describes."""
    return model_input(
        window.bvp,
        window.acc,
        bvp_rate_hz=window.bvp_rate_hz,
        acc_rate_hz=window.acc_rate_hz,
        # 0 means the wearable did not say: the E4 convention the models were trained on.
        acc_lsb_per_g=float(window.acc_lsb_per_g or 64),
        preprocessing=card.input.preprocessing,
    )


def predict(session: ModelSession, x: npt.ArrayLike) -> Prediction:
    """Run the model on preprocessed windows and decode its heads with the card's calibration."""
    activity, hr = session.run_logits(x)
    return calibrated(activity, hr, session.card)


def calibrated(
    activity_logits: npt.ArrayLike, hr_logits: npt.ArrayLike, card: ModelCard
) -> Prediction:
    """Decode a model's logits with its card's temperatures (softmax(logits / T)), if any."""
    activity = np.asarray(activity_logits, dtype=np.float32)
    hr = np.asarray(hr_logits, dtype=np.float32)
    calibration = card.calibration
    if calibration is not None:
        activity = activity / np.float32(calibration.activity_temperature)
        if calibration.hr_temperature is not None:
            hr = hr / np.float32(calibration.hr_temperature)
    return decode(activity, hr, card.outputs)


def answers_from_prediction(prediction: Prediction, card: ModelCard) -> list[WindowAnalysis]:
    """Every row of a model's (calibrated) answer as the gateway reads it."""
    return analyses_from_prediction(
        prediction,
        card.model_id,
        card.outputs.activity_classes,
        centres=hr_bin_centres(card.outputs),
    )


def hr_mass_within(
    hr_probs: npt.NDArray[np.float64],
    centres: npt.NDArray[np.float64],
    bpm: npt.NDArray[np.float64],
    halfwidth_bpm: float = HR_AGREEMENT_BPM,
) -> npt.NDArray[np.float64]:
    """Per row, the HR head's probability within ``halfwidth_bpm`` of ``bpm``, (N,)."""
    near = np.abs(centres[None, :] - bpm[:, None]) <= halfwidth_bpm
    out: npt.NDArray[np.float64] = np.clip((hr_probs * near).sum(axis=1), 0.0, 1.0)
    return out


def analysis_from_prediction(
    prediction: Prediction,
    i: int,
    model_id: str,
    classes: Sequence[str] = ACTIVITY_CLASSES,
    *,
    centres: npt.NDArray[np.float64] | None = None,
) -> WindowAnalysis:
    """Row ``i`` of a model's batch answer, as the model alone sees the window.

    The HR confidence is the head's probability within `HR_AGREEMENT_BPM` of its estimate (what
    the tracker's confidence estimates too, so the two can be compared). ``classes`` are the
    card's ``outputs.activity_classes``; the activity is their group
    (`gatewayd.inference.groups`), its confidence the group's summed probability. ``centres``
    are the HR bins' centres (default: the card format's default bins).
    """
    return analyses_from_prediction(prediction, model_id, classes, centres=centres, rows=[i])[0]


def analyses_from_prediction(
    prediction: Prediction,
    model_id: str,
    classes: Sequence[str] = ACTIVITY_CLASSES,
    *,
    centres: npt.NDArray[np.float64] | None = None,
    rows: Sequence[int] | None = None,
) -> list[WindowAnalysis]:
    """`analysis_from_prediction` of each of ``rows`` (default: every row), computed for the
    rows together."""
    if centres is None:
        centres = hr_bin_centres(OutputSpec())
    picked = list(range(len(prediction))) if rows is None else list(rows)
    bpm = prediction.hr_bpm[picked]
    confidence = hr_mass_within(prediction.hr_probs[picked], centres, bpm).tolist()
    activity_probs = prediction.activity_probs[picked]
    groups = group_prediction(activity_probs, classes)
    entropy = prediction.hr_entropy_bits[picked].tolist()
    out: list[WindowAnalysis] = []
    for k, (hr, probs, group_probs) in enumerate(
        zip(bpm.tolist(), activity_probs.tolist(), groups.group_probs.tolist(), strict=True)
    ):
        out.append(
            WindowAnalysis(
                hr_bpm=hr,
                hr_confidence=confidence[k],
                hr_source="model",
                activity=int(groups.group[k]),
                activity_confidence=float(groups.confidence[k]),
                model_id=model_id,
                result={
                    "activity_probs": [round(p, 4) for p in probs],
                    "group_probs": [round(p, 4) for p in group_probs],
                    "hr_entropy_bits": round(entropy[k], 4),
                    "model_hr_bpm": round(hr, 2),
                    "model_hr_confidence": round(confidence[k], 4),
                },
            )
        )
    return out


def wearable_hr(window: Window) -> tuple[float | None, float]:
    """The wearable's own heart rate of a WINDOW (from its summary part) and its confidence.

    The confidence is the signal quality / 100; a wearable that reports no quality (255) is
    taken at its word (1.0), as the rules do with a SUMMARY.
    """
    s = window.summary
    if s.signal_quality == UNKNOWN_PERCENT:
        return s.hr_bpm, 1.0
    return s.hr_bpm, s.signal_quality / 100


def fuse_hr(
    wearable_bpm: float | None,
    wearable_confidence: float,
    model: WindowAnalysis | None,
    fusion: HrFusion,
    *,
    on_cadence: bool = False,
) -> tuple[float | None, float, HrSourceName]:
    """The gateway's heart rate of one offloaded window: (bpm, confidence, source);
    ``on_cadence``: the wearable's estimate coincides with the window's ACC cadence."""
    model_bpm = None if model is None else model.hr_bpm
    if (
        model is not None
        and model_bpm is not None
        and math.isfinite(model_bpm)
        and (
            fusion.mode == "model"
            or wearable_bpm is None
            or (
                fusion.mode == "fused"
                and fusion.prefers_model(
                    model.hr_confidence, wearable_confidence, on_cadence=on_cadence
                )
            )
        )
    ):
        return model_bpm, model.hr_confidence, "model"
    return wearable_bpm, wearable_confidence if wearable_bpm is not None else 0.0, "signal"


def model_answers(
    session: ModelSession, windows: Sequence[Window]
) -> tuple[list[WindowAnalysis | None], str | None]:
    """The model alone on each window (None where its samples cannot be used), or an error."""
    answers, error, _ = _model_answers(session, windows)
    return answers, error


def _model_answers(
    session: ModelSession, windows: Sequence[Window]
) -> tuple[list[WindowAnalysis | None], str | None, WindowInputs]:
    """`model_answers`, and the inputs it made (the tracker reuses their band-passed BVP)."""
    out: list[WindowAnalysis | None] = [None] * len(windows)
    made = window_inputs(windows, session.card)
    inputs: list[npt.NDArray[np.float32]] = []
    usable: list[int] = []
    expected = session.window_shape
    for i, x in enumerate(made.x):
        # None: a window the transform refuses (NaN, bad rates) gets no model answer; another
        # window length than the model's: no answer either, not a failed batch.
        if x is not None and x.shape == expected:
            inputs.append(x)
            usable.append(i)
    if not inputs:
        return out, None, made
    try:
        prediction = predict(session, np.stack(inputs))
    except (InferenceError, ValueError) as exc:
        return out, str(exc), made
    for i, answer in zip(usable, answers_from_prediction(prediction, session.card), strict=True):
        out[i] = answer
    return out, None, made


def window_cadence(window: Window) -> float | None:
    """`acc_cadence` of a window's ACC, in its own rate and units (None: no rhythm, or ACC it
    cannot read)."""
    try:
        lsb = float(window.acc_lsb_per_g)
        return acc_cadence(window.acc, window.acc_rate_hz, acc_lsb_per_g=lsb)
    except ValueError:
        return None


def _on_cadence(
    bpm: float | None, window: Window, model: WindowAnalysis | None, fusion: HrFusion
) -> bool:
    """Whether ``bpm`` coincides with the window's ACC cadence, where the fusion asks."""
    if fusion.cadence_margin is None or bpm is None or model is None or model.hr_bpm is None:
        return False
    return near_cadence(bpm, window_cadence(window))


def analyse_windows(
    windows: Sequence[tuple[str, Window]],
    states: Mapping[str, HrState],
    session: ModelSession | None,
    fusion: HrFusion | None = None,
    *,
    answers: Sequence[WindowAnalysis | None] | None = None,
) -> BatchAnalysis:
    """Analyse a batch of offloaded windows (device id, WINDOW), in order.

    The full model (when there is a session) answers the activity and its heart rate; the
    heart rate reported is `fuse_hr` of the wearable's and the model's. The gateway runs its own
    tracker (state per device, ``states``) only on windows whose summary carries no heart rate:
    the wearable's tracker sees every window, the gateway's only the offloaded ones.
    ``answers``, when given, stand for the model's (one per window; ``session`` is not run):
    `gatewayd eval` passes a training run's out-of-fold answers this way.
    """
    fusion = HrFusion() if fusion is None else fusion
    error = None
    bandpassed: list[npt.NDArray[np.float64] | None] = [None] * len(windows)
    if answers is not None:
        if len(answers) != len(windows):
            raise ValueError(f"{len(answers)} answers for {len(windows)} windows")
    elif session is not None:
        answers, error, made = _model_answers(session, [w for _, w in windows])
        bandpassed = made.bvp_bandpassed
    else:
        answers = [None] * len(windows)
    new_states: dict[str, HrState] = {}
    out: list[WindowAnalysis | None] = []
    for (device_id, w), answer, bvp_bp in zip(windows, answers, bandpassed, strict=True):
        model = answer
        if model is not None and not _has_bvp(w.bvp):
            # A flat BVP (no PPG, off the wrist) has no pulse: the model's HR head still
            # answers, but with nothing to go on. Its activity stands.
            model = replace(model, hr_bpm=None, hr_confidence=0.0)
        bpm, confidence = wearable_hr(w)
        quality: int | None = None
        if bpm is None and not (model is not None and fusion.mode == "model"):
            state = new_states.get(device_id, states.get(device_id, HrState()))
            try:
                estimate = estimate_hr(
                    w.bvp,
                    w.acc,
                    bvp_rate_hz=w.bvp_rate_hz,
                    acc_rate_hz=w.acc_rate_hz,
                    state=state,
                    bandpassed_bvp=bvp_bp,
                )
            except ValueError:
                estimate = None
            if estimate is not None:
                new_states[device_id] = estimate.state
                bpm, confidence, quality = estimate.bpm, estimate.confidence, estimate.quality
        if model is None and bpm is None:
            out.append(None)
            continue
        hr, hr_conf, source = fuse_hr(
            bpm, confidence, model, fusion, on_cadence=_on_cadence(bpm, w, model, fusion)
        )
        if model is None:
            out.append(WindowAnalysis(hr, hr_conf, source, quality=quality))
            continue
        result = dict(model.result or {})
        result["hr_choice"] = source
        out.append(
            WindowAnalysis(
                hr_bpm=hr,
                hr_confidence=hr_conf,
                hr_source=source,
                activity=model.activity,
                activity_confidence=model.activity_confidence,
                quality=quality,
                model_id=model.model_id,
                result=result,
            )
        )
    return BatchAnalysis(out, new_states, error)
