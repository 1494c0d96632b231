"""gatewayd.inference.analysis: the gateway's per-window path, on arrays and the shipped models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator.wearable import WearableCore, WearableSpec
from gatewayd.inference import ModelRegistry, ModelSession, softmax
from gatewayd.inference.analysis import (
    PREPROCESSING_V1,
    HrFusion,
    WindowAnalysis,
    analyse_windows,
    analyses_from_prediction,
    analysis_from_prediction,
    fuse_hr,
    hr_mass_within,
    model_input,
    predict,
    window_input,
    window_inputs,
)
from gatewayd.inference.cards import Calibration
from gatewayd.inference.session import OutputSpec, decode
from gatewayd.protocol.messages import MessageFlags, SampleFormat, Summary, Window
from gatewayd.signals import filters, preprocess
from gatewayd.signals.heart_rate import HrState, HrTracker

RECORDING = generate_recording(3, 1.0, seed=3)


def full_model() -> ModelSession:
    registry = ModelRegistry.discover()
    gateway = registry.for_role("gateway")
    if not gateway:
        pytest.skip("no gateway model is installed in gatewayd/models")
    return ModelSession(gateway[0].card, gateway[0].path)


def wire_windows(count: int, *, hr_cbpm: int | None = None) -> list[Window]:
    """Windows of the synthetic recording as a wearable sends them (its summary included)."""
    core = WearableCore(WearableSpec("C0:FF:EE:00:00:01", "w", RECORDING, boot_id=1))
    out = []
    tracker = HrTracker()
    for i in range(count):
        bvp, acc = core.wire_samples(i)
        estimate = tracker.update(bvp, acc)
        hr = round((estimate.bpm or 0) * 100) if hr_cbpm is None else hr_cbpm
        summary = Summary(
            seq=i, t_ms=2000 * i, flags=MessageFlags.OFFLOAD_CONFIDENCE, activity=255,
            pruning_pct=40, activity_conf_e4=0, entropy_mbits=3900, hr_cbpm=hr,
            signal_quality=estimate.quality if hr else 255, battery_pct=90,
        )  # fmt: skip
        out.append(Window(summary, SampleFormat.INT16, 64, 32, 64, bvp, acc))
    return out


# --- the model input ---------------------------------------------------------------------------


def test_model_input_is_the_transform_the_card_names() -> None:
    bvp, acc = RECORDING.window(5)
    v1 = model_input(bvp, acc, bvp_rate_hz=64, acc_rate_hz=32, acc_lsb_per_g=64,
                     preprocessing=PREPROCESSING_V1)  # fmt: skip
    assert v1.shape == (4, 512)
    np.testing.assert_array_equal(v1, filters.preprocess_window(bvp, acc, 64, 32))
    v3 = model_input(bvp, acc, bvp_rate_hz=64, acc_rate_hz=32, acc_lsb_per_g=64,
                     preprocessing=preprocess.PREPROCESSING_ID)  # fmt: skip
    assert v3.shape == (15, 256)
    np.testing.assert_array_equal(v3, preprocess.preprocess_window(bvp, acc, 64, 32))
    # v2 models (before the band channels) get the first 7 channels, the v2 transform.
    v2 = model_input(bvp, acc, bvp_rate_hz=64, acc_rate_hz=32, acc_lsb_per_g=64,
                     preprocessing=preprocess.PREPROCESSING_V2)  # fmt: skip
    assert v2.shape == (7, 256)
    assert v2.flags.c_contiguous
    np.testing.assert_array_equal(v2, v3[:7])
    with pytest.raises(ValueError, match="not one this gateway knows"):
        model_input(bvp, acc, bvp_rate_hz=64, acc_rate_hz=32, acc_lsb_per_g=64,
                    preprocessing="someone-elses/v9")  # fmt: skip


def test_a_flat_bvp_is_a_window_without_ppg_on_both_sides() -> None:
    _, acc = RECORDING.window(5)
    flat = np.zeros(512, dtype=np.int16)
    x = model_input(flat, acc, bvp_rate_hz=64, acc_rate_hz=32, acc_lsb_per_g=64,
                    preprocessing=preprocess.PREPROCESSING_ID)  # fmt: skip
    ppg = preprocess.MODEL_CHANNEL_NAMES.index("ppg")
    assert (x[ppg] == 0).all()
    assert (x[0] == 0).all()
    np.testing.assert_array_equal(x, preprocess.preprocess_window(flat, acc, has_bvp=False))


def test_predict_applies_the_cards_temperatures() -> None:
    session = full_model()
    x = np.stack([window_input(w, session.card) for w in wire_windows(3)])
    activity, hr = session.run_logits(x)
    shipped = session.card.calibration
    assert shipped is not None  # the shipped models carry their held-out temperatures
    t_act, t_hr = shipped.activity_temperature, shipped.hr_temperature or 1.0
    as_shipped = predict(session, x)
    np.testing.assert_allclose(as_shipped.activity_probs, softmax(activity / t_act), rtol=1e-5)
    np.testing.assert_allclose(as_shipped.hr_probs, softmax(hr / t_hr), rtol=1e-5)
    raw = ModelSession(session.card.model_copy(update={"calibration": None}), session.path)
    plain = predict(raw, x)
    np.testing.assert_allclose(plain.activity_probs, softmax(activity), rtol=1e-6)
    card = session.card.model_copy(
        update={
            "calibration": Calibration(
                activity_temperature=2.0, hr_temperature=0.5, fitted_on="a test"
            )
        }
    )
    calibrated = ModelSession(card, session.path)
    scaled = predict(calibrated, x)
    np.testing.assert_allclose(scaled.activity_probs, softmax(activity / 2.0), rtol=1e-5)
    np.testing.assert_allclose(scaled.hr_probs, softmax(hr / 0.5), rtol=1e-5)
    # A temperature above 1 flattens: the top class is less probable than uncalibrated.
    assert (scaled.activity_confidence < plain.activity_confidence).all()


# --- heart-rate fusion -------------------------------------------------------------------------


def test_hr_mass_within_counts_the_bins_near_the_estimate() -> None:
    centres = np.arange(200, dtype=np.float64) + 30.0
    probs = np.zeros((2, 200))
    probs[0, [40, 50, 70]] = [0.5, 0.3, 0.2]  # 70, 80 and 100 bpm
    probs[1, 100] = 1.0
    out = hr_mass_within(probs, centres, np.array([75.0, 100.0]), 10.0)
    np.testing.assert_allclose(out, [0.8, 0.0])


def test_a_batch_is_read_row_by_row_as_each_row_alone() -> None:
    spec = OutputSpec()
    rng = np.random.default_rng(3)
    prediction = decode(
        rng.normal(size=(7, len(spec.activity_classes))) * 3,
        rng.normal(size=(7, spec.hr_bin_count)) * 3,
        spec,
    )
    together = analyses_from_prediction(prediction, "m")
    assert together == [analysis_from_prediction(prediction, i, "m") for i in range(7)]
    assert analyses_from_prediction(prediction, "m", rows=[5, 2]) == [together[5], together[2]]
    assert len({a.activity for a in together}) > 1  # the rows differ: not one row seven times


def model(bpm: float, confidence: float) -> WindowAnalysis:
    return WindowAnalysis(bpm, confidence, "model", activity=1, activity_confidence=0.7)


@pytest.mark.parametrize(
    ("fusion", "wearable", "answer", "expected"),
    [
        (HrFusion("fused", 0.0), (70.0, 0.9), model(90.0, 0.5), (70.0, 0.9, "signal")),
        (HrFusion("fused", 0.0), (70.0, 0.3), model(90.0, 0.5), (90.0, 0.5, "model")),
        (HrFusion("fused", 0.3), (70.0, 0.3), model(90.0, 0.5), (70.0, 0.3, "signal")),
        (HrFusion("fused", -0.3), (70.0, 0.7), model(90.0, 0.5), (90.0, 0.5, "model")),
        (HrFusion("fused", 0.0, 0.8), (70.0, 0.8), model(90.0, 0.99), (70.0, 0.8, "signal")),
        (HrFusion("fused", 0.0, 0.8), (70.0, 0.7), model(90.0, 0.99), (90.0, 0.99, "model")),
        (HrFusion("fused", 0.0), (None, 0.0), model(90.0, 0.1), (90.0, 0.1, "model")),
        (HrFusion("signal"), (70.0, 0.1), model(90.0, 0.9), (70.0, 0.1, "signal")),
        (HrFusion("model"), (70.0, 0.9), model(90.0, 0.1), (90.0, 0.1, "model")),
        (HrFusion("model"), (70.0, 0.9), None, (70.0, 0.9, "signal")),
        (HrFusion("fused"), (None, 0.0), None, (None, 0.0, "signal")),
    ],
)
def test_fuse_hr_picks_by_the_rule(
    fusion: HrFusion,
    wearable: tuple[float | None, float],
    answer: WindowAnalysis | None,
    expected: tuple[float | None, float, str],
) -> None:
    assert fuse_hr(wearable[0], wearable[1], answer, fusion) == expected


def test_on_the_cadence_the_cadence_margin_decides() -> None:
    wearable, answer = (70.0, 0.6), model(90.0, 0.7)
    plain = HrFusion("fused", 0.5, cadence_margin=-0.2)
    assert fuse_hr(*wearable, answer, plain)[2] == "signal"  # 0.7 does not beat 0.6 + 0.5
    assert fuse_hr(*wearable, answer, plain, on_cadence=True)[2] == "model"  # it beats 0.6 - 0.2
    # Without a cadence margin the flag changes nothing.
    assert fuse_hr(*wearable, answer, HrFusion("fused", 0.5), on_cadence=True)[2] == "signal"
    # The trust ceiling still holds.
    ceiling = HrFusion("fused", 0.5, 0.5, cadence_margin=-0.2)
    assert fuse_hr(*wearable, answer, ceiling, on_cadence=True)[2] == "signal"


def test_the_gateway_sees_a_wearable_hr_on_the_wrists_rhythm() -> None:
    """A window whose wearable HR equals its ACC cadence takes the model's HR at the cadence
    margin; the same window with the HR elsewhere keeps the wearable's."""
    session = full_model()
    t = np.arange(256) / 32
    acc = np.round(np.stack([0.5 * np.sin(2 * np.pi * 2.5 * t), 0 * t, 1 + 0 * t], axis=1) * 64)
    w = wire_windows(1)[0]
    on = replace(w, acc=acc.astype(np.int16), summary=replace(w.summary, hr_cbpm=15000,
                                                              signal_quality=90))  # fmt: skip
    off = replace(on, summary=replace(on.summary, hr_cbpm=12000))
    # Margin -1: the model wins on the cadence whatever it says; +1 elsewhere: it never does.
    fusion = HrFusion("fused", 1.0, cadence_margin=-1.0)
    answers = analyse_windows([("a", on), ("b", off)], {}, session, fusion).analyses
    assert answers[0] is not None
    assert answers[0].hr_source == "model"
    assert answers[1] is not None
    assert (answers[1].hr_source, answers[1].hr_bpm) == ("signal", 120.0)
    assert analyse_windows([("a", on)], {}, session, HrFusion("fused", 1.0)).analyses[0] == replace(
        answers[0], hr_bpm=150.0, hr_confidence=0.9, hr_source="signal",
        result={**(answers[0].result or {}), "hr_choice": "signal"},
    )  # fmt: skip


# --- analyse_windows ---------------------------------------------------------------------------


def test_without_a_model_the_wearables_hr_is_reported_and_no_tracker_runs() -> None:
    windows = wire_windows(4)
    answer = analyse_windows([("a", w) for w in windows], {}, None)
    assert answer.model_error is None
    assert answer.states == {}  # every window carried the wearable's own heart rate
    for w, a in zip(windows, answer.analyses, strict=True):
        assert a is not None
        assert (a.hr_bpm, a.hr_source, a.activity) == (w.summary.hr_bpm, "signal", None)
        assert a.hr_confidence == pytest.approx(w.summary.signal_quality / 100)


def test_windows_without_a_heart_rate_get_the_gateways_tracker_one_state_per_device() -> None:
    windows = wire_windows(6, hr_cbpm=0)
    alone = analyse_windows([("a", w) for w in windows], {}, None)
    # Interleaved with another device, in two batches: device a's answers do not change.
    other = wire_windows(6, hr_cbpm=0)[::-1]
    mixed = [
        x for pair in zip(windows, other, strict=True) for x in (("a", pair[0]), ("b", pair[1]))
    ]
    first = analyse_windows(mixed[:5], {}, None)
    second = analyse_windows(mixed[5:], first.states, None)
    a_mixed = [r for (d, _), r in zip(mixed, first.analyses + second.analyses, strict=True)
               if d == "a"]  # fmt: skip
    assert [r.hr_bpm if r else None for r in a_mixed] == [
        r.hr_bpm if r else None for r in alone.analyses
    ]
    assert set(second.states) == {"a", "b"}
    # The state is the tracker's after these windows: carrying it on equals one tracker.
    tracker = HrTracker()
    for w in windows:
        expected = tracker.update(w.bvp, w.acc)
    assert alone.states["a"] == tracker.state
    last = alone.analyses[-1]
    assert last is not None
    assert (last.hr_bpm, last.quality) == (expected.bpm, expected.quality)


def test_the_shipped_model_answers_activity_and_the_fusion_picks_the_hr() -> None:
    session = full_model()
    windows = wire_windows(5)
    for mode in ("fused", "signal", "model"):
        answer = analyse_windows([("a", w) for w in windows], {}, session, HrFusion(mode))  # type: ignore[arg-type]
        assert answer.model_error is None
        for w, a in zip(windows, answer.analyses, strict=True):
            assert a is not None
            assert a.model_id == session.model_id
            assert a.activity in {int(g) for g in ActivityGroup}
            assert a.result is not None
            model_hr, model_conf = a.result["model_hr_bpm"], a.result["model_hr_confidence"]
            wearable = (w.summary.hr_bpm, w.summary.signal_quality / 100)
            bpm, _, source = fuse_hr(wearable[0], wearable[1], model(model_hr, model_conf),
                                     HrFusion(mode))  # type: ignore[arg-type]  # fmt: skip
            assert a.hr_source == source == a.result["hr_choice"]
            assert a.hr_bpm == pytest.approx(bpm, abs=0.01)


def test_a_window_the_transform_refuses_gets_no_model_answer_but_keeps_its_hr() -> None:
    session = full_model()
    good = wire_windows(1)[0]
    short = replace(good, bvp=good.bvp[:100], acc=good.acc[:50])
    answer = analyse_windows([("a", good), ("a", short)], {}, session)
    assert answer.model_error is None
    first, second = answer.analyses
    assert first is not None
    assert first.model_id == session.model_id
    assert second is not None
    assert (second.model_id, second.hr_bpm, second.hr_source) == (
        None, good.summary.hr_bpm, "signal",
    )  # fmt: skip


def test_a_state_made_elsewhere_is_continued() -> None:
    windows = wire_windows(2, hr_cbpm=0)
    start = {"a": HrState(bpm=150.0)}
    answer = analyse_windows([("a", windows[0])], start, None)
    assert answer.states["a"].windows == 1
    assert answer.states["a"] != HrState(bpm=150.0)


def test_a_flat_window_gets_the_models_activity_but_no_heart_rate() -> None:
    session = full_model()
    w = wire_windows(1, hr_cbpm=0)[0]
    flat = replace(w, bvp=np.zeros_like(w.bvp))
    for mode in ("fused", "signal", "model"):
        answer = analyse_windows([("a", flat)], {}, session, HrFusion(mode))  # type: ignore[arg-type]
        (a,) = answer.analyses
        assert a is not None
        assert a.hr_bpm is None
        assert a.activity in {int(g) for g in ActivityGroup}


# --- batched preprocessing, and the band-pass the tracker reuses --------------------------------


def test_window_inputs_equal_window_input_for_every_window_of_a_mixed_batch() -> None:
    session = full_model()
    good = wire_windows(4)
    nan_free_short = replace(good[1], bvp=good[1].bvp[:100], acc=good[1].acc[:50])
    flat = replace(good[2], bvp=np.zeros_like(good[2].bvp))
    other_scale = replace(good[3], acc_lsb_per_g=1000)
    windows = [good[0], nan_free_short, flat, other_scale, good[1]]
    made = window_inputs(windows, session.card)
    for w, x in zip(windows, made.x, strict=True):
        assert x is not None
        assert np.array_equal(x, window_input(w, session.card))
    # The shipped wearable sends 64 Hz BVP: the model's 32 Hz band-pass is not the tracker's.
    assert made.bvp_bandpassed == [None] * len(windows)


def test_a_window_the_batch_cannot_take_is_refused_alone() -> None:
    session = full_model()
    good = wire_windows(3)
    samples = good[1].bvp.astype(np.float64)
    samples[7] = np.nan  # not on the wire (int16), but the transform must refuse it alone
    nan = replace(good[1], bvp=samples)
    made = window_inputs([good[0], nan, good[2]], session.card)
    assert made.x[1] is None
    for i in (0, 2):
        x = made.x[i]
        assert x is not None
        assert np.array_equal(x, window_input(good[i], session.card))


def _at_32_hz(w: Window) -> Window:
    """The window as a wearable sampling its PPG at the model's rate would send it."""
    return replace(w, bvp_rate_hz=32, bvp=np.ascontiguousarray(w.bvp[::2]))


def test_the_tracker_reuses_the_model_inputs_band_pass_and_answers_the_same() -> None:
    session = full_model()
    windows = [_at_32_hz(w) for w in wire_windows(4, hr_cbpm=0)]
    made = window_inputs(windows, session.card)
    for w, shared in zip(windows, made.bvp_bandpassed, strict=True):
        assert shared is not None
        assert np.array_equal(shared, filters.bandpass(w.bvp, 32))
    answer = analyse_windows([("a", w) for w in windows], {}, session, HrFusion("signal"))
    tracker = HrTracker(bvp_rate_hz=32)
    for w, a in zip(windows, answer.analyses, strict=True):
        expected = tracker.update(w.bvp, w.acc)
        assert a is not None
        assert (a.hr_bpm, a.hr_confidence, a.quality) == (
            expected.bpm, expected.confidence, expected.quality,
        )  # fmt: skip
    assert answer.states["a"] == tracker.state
