"""training.model / training.train: shapes, layouts, MACs, losses and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from torch import nn  # noqa: E402

from gatewayd.datasets import generate_recording  # noqa: E402
from training.data import NO_ACTIVITY, build_window_set  # noqa: E402
from training.model import (  # noqa: E402
    HR_CENTRES,
    MobileNetV2_1D,
    count_macs,
    hr_estimate_np,
    hr_expectation,
    to_conv2d,
)
from training.train import hard_loss, hr_target, kd_loss, train_model  # noqa: E402


def test_heads_have_the_card_shapes() -> None:
    model = MobileNetV2_1D(0.25).eval()
    act, hr = model(torch.randn(3, 4, 512))
    assert act.shape == (3, 9)
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
    x = torch.randn(4, 4, 512)
    model2d = to_conv2d(model)
    assert not any(isinstance(m, nn.Conv1d) for m in model2d.modules())
    with torch.no_grad():
        a1, h1 = model(x)
        a2, h2 = model2d(x.unsqueeze(2))
    torch.testing.assert_close(a1, a2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)


def test_macs_count_by_hand() -> None:
    net = nn.Sequential(
        nn.Conv1d(4, 8, 3, 2, 1),  # out length 256: 256 * 8 * 4 * 3
        nn.Conv1d(8, 8, 3, 1, 1, groups=8),  # 256 * 8 * 1 * 3
    )
    assert count_macs(net) == 256 * 8 * 4 * 3 + 256 * 8 * 3
    head = nn.Linear(16, 9)
    assert count_macs(nn.Sequential(nn.Conv1d(4, 16, 512), nn.Flatten(), head)) == (
        16 * 4 * 512 + 16 * 9
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
    act = torch.randn(4, 9, requires_grad=True)
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
        history = train_model(model, ws, ws, epochs=2, seed=5, batch=16)
        assert len(history.train) == len(history.val) == 2
        assert all(math.isfinite(v) for v in history.train)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(), run(), strict=True):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)


def test_cv_summary_pools_folds_and_splits_hr_by_source() -> None:
    from training.train import CvResult, Evaluation, FoldResult, History

    def fold(err: list[float], src: list[str], true: list[int], pred: list[int]) -> FoldResult:
        e = Evaluation(
            loss=0.0,
            activity_top1=None,
            hr_mae_bpm=None,
            activity_true=np.array(true, dtype=np.int64),
            activity_pred=np.array(pred, dtype=np.int64),
            windows=len(err),
            hr_abs_err=np.array(err),
            hr_source=np.array(src, dtype=np.str_),
        )
        return FoldResult(("a",), History(), {0: e})

    cv = CvResult(
        [
            fold([1.0, 3.0], ["synthetic", "troika"], [1, 2], [1, 1]),
            fold([5.0], ["troika"], [3], [3]),
        ],
        "test",
    )
    s = cv.summary(0)
    assert s["activity_top1"] == pytest.approx(2 / 3)
    assert s["hr_mae_bpm"] == pytest.approx(3.0)
    assert s["hr_mae_bpm_troika"] == pytest.approx(4.0)
    assert s["hr_mae_bpm_synthetic"] == pytest.approx(1.0)
    assert s["hr_windows_troika"] == 2
