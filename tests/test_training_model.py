"""training.model / training.train: shapes, layouts, MACs, losses and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from torch import nn  # noqa: E402

from gatewayd.datasets import generate_recording  # noqa: E402
from gatewayd.signals.preprocess import MODEL_CHANNELS  # noqa: E402
from training.data import NO_ACTIVITY, build_window_set  # noqa: E402
from training.model import (  # noqa: E402
    HR_CENTRES,
    MobileNetV2_1D,
    count_macs,
    hr_estimate_np,
    hr_expectation,
    to_conv2d,
)
from training.train import (  # noqa: E402
    TrainConfig,
    augment_batch,
    hard_loss,
    hr_target,
    kd_loss,
    train_model,
)


def test_heads_have_the_card_shapes() -> None:
    model = MobileNetV2_1D(0.25).eval()
    act, hr = model(torch.randn(3, MODEL_CHANNELS, 256))
    assert act.shape == (3, 3)  # rest, light, vigorous
    assert hr.shape == (3, 200)
    assert float(HR_CENTRES[0]) == 30.0
    assert float(HR_CENTRES[-1]) == 229.0


def test_blocks_are_inverted_residuals_with_depthwise_convs() -> None:
    model = MobileNetV2_1D(1.0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 17  # one per inverted residual block
    assert all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    # Linear bottleneck: the project conv's Sequential ends with BatchNorm, no activation.
    block = model.features[3]
    assert isinstance(block.conv[-1][-1], nn.BatchNorm1d)
    assert block.use_residual


def test_conv2d_layout_is_the_same_function() -> None:
    torch.manual_seed(0)
    model = MobileNetV2_1D(0.25).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, MODEL_CHANNELS, 256)
    model2d = to_conv2d(model)
    assert not any(isinstance(m, nn.Conv1d) for m in model2d.modules())
    with torch.no_grad():
        a1, h1 = model(x)
        a2, h2 = model2d(x.unsqueeze(2))
    torch.testing.assert_close(a1, a2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)


def test_macs_count_by_hand() -> None:
    c = MODEL_CHANNELS
    net = nn.Sequential(
        nn.Conv1d(c, 8, 3, 2, 1),  # out length 128: 128 * 8 * c * 3
        nn.Conv1d(8, 8, 3, 1, 1, groups=8),  # 128 * 8 * 1 * 3
    )
    assert count_macs(net) == 128 * 8 * c * 3 + 128 * 8 * 3
    head = nn.Linear(16, 9)
    assert count_macs(nn.Sequential(nn.Conv1d(c, 16, 256), nn.Flatten(), head)) == (
        16 * c * 256 + 16 * 9
    )


def test_hr_target_and_expectation() -> None:
    target = hr_target(torch.tensor([72.0, 10.0, 300.0]))
    torch.testing.assert_close(target.sum(1), torch.ones(3))
    expected = target @ HR_CENTRES
    assert math.isclose(float(expected[0]), 72.0, abs_tol=1e-3)
    assert float(expected[1]) < 32.0  # clamped into the bin range
    assert float(expected[2]) > 227.0
    logits = torch.log(target)
    np.testing.assert_allclose(
        hr_estimate_np(logits.numpy()), hr_expectation(logits).numpy(), rtol=1e-5
    )


def test_unlabelled_windows_are_masked_out_of_the_losses() -> None:
    act = torch.randn(4, 3, requires_grad=True)
    hr = torch.randn(4, 200)
    labels = torch.tensor([NO_ACTIVITY] * 4)
    ref = torch.tensor([float("nan")] * 4)
    a_loss, h_loss = hard_loss(act, hr, labels, ref)
    assert float(a_loss.detach()) == 0.0
    assert float(h_loss.detach()) == 0.0
    a_loss.backward()  # still differentiable, no NaN
    assert act.grad is not None
    assert torch.isfinite(act.grad).all()
    partial = torch.tensor([NO_ACTIVITY, 2, NO_ACTIVITY, 2])
    a_loss, _ = hard_loss(act, hr, partial, ref)
    expected = nn.functional.cross_entropy(act[[1, 3]], partial[[1, 3]])
    torch.testing.assert_close(a_loss, expected)


def test_kd_loss_is_zero_for_identical_logits() -> None:
    z = torch.randn(5, 9)
    assert float(kd_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(z, -z)) > 0.0


def test_training_is_reproducible_with_a_seed() -> None:
    ws = build_window_set([generate_recording(1, 0.5, seed=0)])

    def run() -> list[torch.Tensor]:
        torch.manual_seed(5)
        model = MobileNetV2_1D(0.25)
        history = train_model(model, ws, ws, TrainConfig(epochs=2, seed=5, batch=16))
        assert len(history.train) == len(history.val) == 2
        assert all(math.isfinite(v) for v in history.train)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(), run(), strict=True):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)


def test_hr_loss_ignores_windows_without_ppg_and_their_gradient_is_zero() -> None:
    # Window 0 has PPG and a reference; window 1 has the same reference but no PPG: the
    # augmentation's view of it (and of a dropped or swapped PPG) is a NaN label.
    hr_logits = torch.randn(2, 200, requires_grad=True)
    act_logits = torch.randn(2, 3)
    x = torch.randn(2, MODEL_CHANNELS, 256)
    x[1, 0] = 0.0
    x[1, 6] = 0.0
    has_bvp = torch.tensor([True, False])
    gen = torch.Generator().manual_seed(0)
    xb, hr, own = augment_batch(
        x, torch.tensor([80.0, 80.0]), has_bvp, ppg_dropout=0.0, ppg_swap=0.0, generator=gen
    )
    assert own.tolist() == [True, False]
    assert torch.isnan(hr[1])
    _, h_loss = hard_loss(act_logits, hr_logits, torch.tensor([NO_ACTIVITY] * 2), hr)
    h_loss.backward()
    assert hr_logits.grad is not None
    assert float(hr_logits.grad[1].abs().sum()) == 0.0
    assert float(hr_logits.grad[0].abs().sum()) > 0.0
    torch.testing.assert_close(xb, x)


def test_ppg_dropout_zeroes_both_ppg_channels_and_masks_hr() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 400
    x = torch.randn(n, MODEL_CHANNELS, 256)
    x[:, 6] = 1.0
    has_bvp = torch.arange(n) % 4 != 0  # a quarter of the windows come without PPG
    x[~has_bvp, 0] = 0.0
    x[~has_bvp, 6] = 0.0
    hr = torch.full((n,), 90.0)
    xb, hr_out, own = augment_batch(x, hr, has_bvp, ppg_dropout=0.5, ppg_swap=0.0, generator=gen)
    dropped = has_bvp & (xb[:, 6, 0] == 0)
    # About half of the PPG windows lose their PPG, exactly like a set without PPG.
    assert 0.35 < float(dropped.sum()) / float(has_bvp.sum()) < 0.65
    assert (xb[dropped, 0] == 0).all()
    assert torch.isnan(hr_out[dropped]).all()
    assert torch.isnan(hr_out[~has_bvp]).all()
    assert (hr_out[own] == 90.0).all()
    torch.testing.assert_close(xb[:, 1:6], x[:, 1:6])  # the ACC is never touched
    torch.testing.assert_close(xb[own], x[own])


def test_bvp_swap_keeps_the_acc_and_takes_another_windows_bvp() -> None:
    gen = torch.Generator().manual_seed(2)
    n = 200
    x = torch.randn(n, MODEL_CHANNELS, 256)
    x[:, 6] = 1.0
    has_bvp = torch.ones(n, dtype=torch.bool)
    xb, hr_out, own = augment_batch(
        x, torch.full((n,), 70.0), has_bvp, ppg_dropout=0.0, ppg_swap=0.5, generator=gen
    )
    swapped = ~own
    assert 0.3 < float(swapped.float().mean()) < 0.7
    assert torch.isnan(hr_out[swapped]).all()
    torch.testing.assert_close(xb[:, 1:], x[:, 1:])
    # Every swapped BVP is some window's BVP from the batch.
    for i in torch.nonzero(swapped).flatten().tolist():
        assert bool((x[:, 0] == xb[i, 0]).all(dim=1).any())
