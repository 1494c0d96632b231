"""training.metrics / leakage: temperature scaling, ECE, HR coverage, the BVP-swap check."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from torch import nn  # noqa: E402

from gatewayd.signals.preprocess import MODEL_CHANNELS  # noqa: E402
from training.data import WindowSet  # noqa: E402
from training.leakage import leakage_check, synthetic_fast_pulse  # noqa: E402
from training.metrics import (  # noqa: E402
    ece,
    fit_hr_temperature,
    fit_temperature,
    group_scores,
    hr_coverage,
    hr_nll,
    macro_f1,
    nll,
    softmax,
)


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) and logits 3 z: a model three times too sure of itself."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.5
    p = softmax(z)
    labels = np.array([rng.choice(3, p=row) for row in p])
    return 3.0 * z, labels


def test_temperature_scaling_recovers_an_overconfident_models_temperature() -> None:
    logits, labels = _toy(4000, 0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.15)
    test_logits, test_labels = _toy(4000, 1)  # scored on other draws
    assert nll(test_logits, test_labels, t) < nll(test_logits, test_labels) - 0.1
    before = ece(softmax(test_logits), test_labels)
    after = ece(softmax(test_logits, t), test_labels)
    assert after < before / 2
    # A calibrated model keeps a temperature near 1.
    assert fit_temperature(logits / 3.0, labels) == pytest.approx(1.0, rel=0.15)


def test_ece_of_known_bins() -> None:
    # Two windows at confidence 0.9 (one right, one wrong) and two at 0.6 (both right).
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.6, 0.4, 0.0]])
    labels = np.array([0, 1, 0, 0])
    assert ece(probs, labels) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))


def test_hr_coverage_and_temperature_of_a_too_narrow_distribution() -> None:
    rng = np.random.default_rng(3)
    ref = rng.uniform(60, 160, size=2000)
    est = ref + rng.normal(0, 6.0, size=ref.size)  # errors of sd 6 bpm ...
    centres = np.arange(200) + 30.0
    # ... but a head that says sd 2 bpm: its intervals are far too narrow.
    logits = -0.5 * ((centres[None, :] - est[:, None]) / 2.0) ** 2
    cov = hr_coverage(logits, ref)
    assert cov["90%"] < 0.5
    t = fit_hr_temperature(logits, ref)
    assert t > 4.0  # sd scales with sqrt(t) for a Gaussian in the logits: 2 * sqrt(9) = 6
    assert hr_nll(logits, ref, t) < hr_nll(logits, ref)
    wide = hr_coverage(logits, ref, t)
    assert wide["90%"] == pytest.approx(0.9, abs=0.05)
    assert wide["50%"] == pytest.approx(0.5, abs=0.06)


def test_group_scores_and_macro_f1() -> None:
    true = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 2, 0])
    s = group_scores(true, pred)
    assert s["accuracy"] == pytest.approx(4 / 6)
    # rest vs moving: windows 1 (rest -> light) and 5 (vigorous -> rest) are wrong.
    assert s["rest_vs_moving"] == pytest.approx(4 / 6)
    f1 = [2 * 1 / (2 + 1 + 1), 2 * 1 / (2 + 1), 2 * 2 / (4 + 0 + 1)]
    assert macro_f1(true, pred) == pytest.approx(np.mean(f1))
    assert group_scores(true[:0], pred[:0])["accuracy"] is None


class _PulseReader(nn.Module):
    """Says "vigorous" when the BVP channel oscillates fast, else "rest": reads the pulse."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = torch.fft.rfft(x[:, 0], dim=1).abs()  # 32 Hz, 256 samples: bin k = k / 8 Hz
        fast = spec[:, 18:30].sum(1) > spec[:, 4:14].sum(1)  # 2.25-3.6 Hz against 0.5-1.6 Hz
        act = torch.stack([(~fast).float(), torch.zeros_like(fast.float()), fast.float()], 1)
        return act * 10, torch.zeros(x.shape[0], 200)


class _MotionReader(nn.Module):
    """Reads only the motion channel: never changes its mind about a still wrist."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moving = x[:, 5, 0] > 0.4
        act = torch.stack([(~moving).float(), torch.zeros_like(moving.float()), moving.float()], 1)
        return act * 10, torch.zeros(x.shape[0], 200)


def _held_out(n_rest: int, n_vig: int) -> WindowSet:
    t = np.arange(256) / 32
    x = np.zeros((n_rest + n_vig, MODEL_CHANNELS, 256), np.float32)
    x[:n_rest, 0] = np.sin(2 * np.pi * 1.1 * t)  # 66 bpm at rest
    x[n_rest:, 0] = np.sin(2 * np.pi * 2.6 * t)  # 156 bpm running
    x[:n_rest, 5] = 0.1
    x[n_rest:, 5] = 0.8
    x[:, 6] = 1.0
    n = n_rest + n_vig
    return WindowSet(
        x=x,
        activity=np.array([0] * n_rest + [2] * n_vig),
        hr_bpm=np.array([66.0] * n_rest + [156.0] * n_vig, np.float32),
        has_bvp=np.ones(n, bool),
        features=np.zeros((n, 3), np.float32),
        spread_g=np.zeros(n, np.float32),
        subject=np.zeros(n, np.int64),
        subjects=("synthetic:S1",),
        source=np.zeros(n, np.int64),
        sources=("synthetic",),
        recordings=("S1",),
        recording=np.zeros(n, np.int64),
        window=np.arange(n),
        datasets=("test",),
        synthetic=True,
    )


def test_leakage_check_catches_a_model_that_reads_the_pulse() -> None:
    ws = _held_out(20, 10)
    leaky = leakage_check(_PulseReader(), ws, seed=0).summary()["all"]
    assert leaky["rest_windows"] == 20
    assert leaky["predicted_rest_before"] == 1.0
    assert leaky["real_changed"] == 1.0
    assert leaky["real_to_vigorous"] == 1.0
    assert leaky["synthetic_pulse_to_vigorous"] == 1.0
    assert leaky["real_donor_ref_bpm"] == pytest.approx(156.0)
    # The controls change the BVP without raising the rate: the pulse reader keeps "rest".
    assert leaky["control_real_changed"] == 0.0
    assert leaky["control_synthetic_changed"] == 0.0
    honest = leakage_check(_MotionReader(), ws, seed=0).summary()["all"]
    assert honest["real_changed"] == 0.0
    assert honest["synthetic_pulse_changed"] == 0.0


def test_synthetic_fast_pulse_is_fast() -> None:
    pulses = synthetic_fast_pulse(8, seed=1)
    assert pulses.shape == (8, 256)
    spec = np.abs(np.fft.rfft(pulses, axis=1))
    peak_hz = spec.argmax(1) / 8.0
    assert ((peak_hz >= 140 / 60 - 0.15) & (peak_hz <= 170 / 60 + 0.15)).all()
    np.testing.assert_allclose(pulses.std(1), 1.0, atol=1e-3)  # z-scored like any BVP
