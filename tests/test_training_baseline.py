"""The accelerometer baseline: features on known arrays, the shipped linear model, the fits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gatewayd.signals.acc_features import (
    ACC_FEATURE_NAMES,
    LinearActivityBaseline,
    acc_features,
    acc_features_batch,
)

RATE = 32
T = np.arange(256) / RATE


def _f(acc: np.ndarray, **kw: float) -> dict[str, float]:
    return dict(zip(ACC_FEATURE_NAMES, acc_features(acc, **kw).tolist(), strict=True))


def _sine(amp_g: float, hz: float, axis: int = 0, gravity_axis: int = 2) -> np.ndarray:
    acc = np.zeros((256, 3))
    acc[:, gravity_axis] = 64.0  # 1 g in 1/64 g
    acc[:, axis] += 64.0 * amp_g * np.sin(2 * np.pi * hz * T)
    return acc


def test_a_still_wrist_has_no_motion_whatever_its_orientation() -> None:
    for axis in range(3):
        still = np.zeros((256, 3))
        still[:, axis] = 64.0
        f = _f(still)
        assert f["log_spread"] == 0.0
        assert f["x_log_std"] == pytest.approx(-4.0)  # the floor: log10(1e-4)
        assert f["x_p95"] == pytest.approx(0.0, abs=1e-9)
        assert f["dominant_share"] == 0.0
        assert f["corr_xy"] == 0.0


def test_a_sine_on_one_axis_reads_as_its_amplitude_and_frequency() -> None:
    f = _f(_sine(0.5, 2.0))
    # std of a sine of amplitude A is A / sqrt(2); its 95th percentile is A sin(0.45 pi).
    assert f["x_log_std"] == pytest.approx(math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert f["x_p95"] == pytest.approx(0.5 * math.sin(0.45 * math.pi), abs=0.01)
    assert f["x_p05"] == pytest.approx(-f["x_p95"], abs=0.01)
    assert f["dominant_hz"] == pytest.approx(2.0)
    # Its energy is in the 2-3 Hz band, a thousand times more than in the others.
    bands = [f"axes_log_energy_{b}hz" for b in ("0.25_1", "1_2", "2_3", "3_5")]
    assert max(bands, key=lambda b: f[b]) == "axes_log_energy_2_3hz"
    assert f["axes_log_energy_2_3hz"] - max(f[bands[0]], f[bands[3]]) > 3
    # The spread is the sine's std (in g) on the motion scale log2(1 + s / 10 mg).
    assert f["log_spread"] == pytest.approx(math.log2(1 + 0.5 / math.sqrt(2) / 0.01), abs=0.01)
    assert f["y_log_std"] == pytest.approx(-4.0, abs=0.01)


def test_features_ignore_gravity_and_scale_with_the_lsb() -> None:
    with_gravity = acc_features(_sine(0.3, 1.5, gravity_axis=2))
    without = acc_features(_sine(0.3, 1.5, gravity_axis=2) - np.array([0.0, 0.0, 64.0]))
    names = np.array(ACC_FEATURE_NAMES)
    # Only |a| depends on gravity: the per-axis features are identical without it.
    axis_features = np.array([not n.startswith("mag") for n in names])
    np.testing.assert_allclose(with_gravity[axis_features], without[axis_features], atol=1e-5)
    # The same motion in another unit (1/4096 g) gives the same features.
    np.testing.assert_allclose(
        acc_features(_sine(0.3, 1.5) * 64.0, acc_lsb_per_g=4096.0), with_gravity, atol=1e-5
    )


def test_motion_above_5_hz_is_filtered_out() -> None:
    # A 10 Hz buzz (what a 100 Hz sensor sees and a 10 Hz one cannot) barely moves the features.
    slow = _sine(0.3, 1.5)
    buzz = slow + 64.0 * 0.2 * np.sin(2 * np.pi * 10.0 * T)[:, None] * np.array([1, 0, 0])
    f_slow, f_buzz = _f(slow), _f(buzz)
    assert f_buzz["x_log_std"] == pytest.approx(f_slow["x_log_std"], abs=0.01)
    assert f_buzz["dominant_hz"] == f_slow["dominant_hz"]


def test_axis_correlation_and_refusals() -> None:
    acc = _sine(0.4, 2.0)
    acc[:, 1] = -acc[:, 0]
    f = _f(acc)
    assert f["corr_xy"] == pytest.approx(-1.0, abs=1e-6)
    assert acc_features_batch(np.stack([acc, acc])).shape == (2, len(ACC_FEATURE_NAMES))
    with pytest.raises(ValueError, match="shape"):
        acc_features(np.zeros((256, 2)))
    with pytest.raises(ValueError, match="NaN"):
        acc_features(np.full((256, 3), np.nan))


def _baseline() -> LinearActivityBaseline:
    rng = np.random.default_rng(0)
    n = len(ACC_FEATURE_NAMES)
    return LinearActivityBaseline(
        classes=("rest", "light", "vigorous"),
        feature_names=ACC_FEATURE_NAMES,
        mean=rng.normal(size=n),
        scale=rng.uniform(0.5, 2.0, size=n),
        coef=rng.normal(size=(3, n)),
        intercept=rng.normal(size=3),
    )


def test_linear_baseline_round_trips_and_computes_softmax_of_its_logits() -> None:
    base = _baseline()
    again = LinearActivityBaseline.from_dict(base.to_dict())
    feats = np.random.default_rng(1).normal(size=(5, len(ACC_FEATURE_NAMES)))
    np.testing.assert_allclose(again.predict_proba(feats), base.predict_proba(feats))
    z = (feats - base.mean) / base.scale @ base.coef.T + base.intercept
    expected = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(base.predict_proba(feats), expected, rtol=1e-12)
    assert base.predict(feats).tolist() == z.argmax(1).tolist()
    bad = base.to_dict() | {"features_id": "other/v9"}
    with pytest.raises(ValueError, match="fitted on features"):
        LinearActivityBaseline.from_dict(bad)
    with pytest.raises(ValueError, match="coef"):
        LinearActivityBaseline.from_dict(base.to_dict() | {"coef": [[1.0]]})


def test_fitted_baselines_separate_still_from_moving_windows() -> None:
    pytest.importorskip("sklearn", reason="the baselines are fitted with scikit-learn")
    pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
    from gatewayd.datasets import generate_recording
    from training.baseline import fit_hgb, fit_logistic, hgb_proba
    from training.data import NO_ACTIVITY, build_window_set

    # Synthetic subjects: sitting (rest) against stairs/cycling (vigorous); data is generated.
    recs = [generate_recording(i, 1.0, seed=2, activities=[(1, 30.0), (2, 30.0)]) for i in (1, 2)]
    ws = build_window_set(recs)
    lin = fit_logistic(ws, 0.5)
    sklearn_free = LinearActivityBaseline.from_dict(lin.to_dict())
    labelled = ws.activity != NO_ACTIVITY
    assert set(np.unique(ws.activity[labelled]).tolist()) == {0, 2}
    pred = sklearn_free.predict(ws.features[labelled])
    assert np.mean(pred == ws.activity[labelled]) > 0.9  # in-sample: a sanity check only
    proba = hgb_proba(fit_hgb(ws, 0, 0.5), ws.features[labelled])
    assert proba.shape == (int(labelled.sum()), 3)
    assert (proba[:, 1] == 0).all()  # a group the fit never saw gets no probability
