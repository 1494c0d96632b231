"""training.prune: L1 channel pruning really removes channels, keeps couplings and shapes."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
pytest.importorskip("torch_pruning", reason="pruning needs torch-pruning (the `train` extra)")

from torch import nn  # noqa: E402

from gatewayd.signals.preprocess import MODEL_CHANNELS  # noqa: E402
from training.model import MobileNetV2_1D, conv_channels, count_macs, count_params  # noqa: E402
from training.prune import channel_ratio, prune_l1  # noqa: E402


@pytest.fixture(scope="module")
def model() -> MobileNetV2_1D:
    torch.manual_seed(0)
    return MobileNetV2_1D(0.5).eval()


@pytest.mark.parametrize("pct", [20, 40, 60, 80])
def test_pruning_removes_the_requested_share_of_channels(model: MobileNetV2_1D, pct: int) -> None:
    pruned = prune_l1(model, pct / 100)
    before, after = conv_channels(model), conv_channels(pruned)
    assert after < before
    # Each coupled group loses floor(ratio * size) channels: within a few percent of the ratio.
    assert channel_ratio(model, pruned) == pytest.approx(pct / 100, abs=0.04)
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned) < count_macs(model)
    # Depthwise convs stay depthwise, with their coupled expand/project convs.
    for m in pruned.modules():
        if isinstance(m, nn.Conv1d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    for block in pruned.features[1:-1]:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv1d)]
        for producer, consumer in itertools.pairwise(convs):
            assert producer.out_channels == consumer.in_channels
    # Heads keep their outputs; shapes are unchanged and the forward pass works.
    x = torch.randn(3, MODEL_CHANNELS, 256)
    with torch.no_grad():
        act, hr = pruned(x)
    assert act.shape == (3, 3)
    assert hr.shape == (3, 200)
    assert torch.isfinite(act).all()
    assert torch.isfinite(hr).all()


def test_pruning_keeps_the_original_untouched(model: MobileNetV2_1D) -> None:
    before = conv_channels(model)
    prune_l1(model, 0.5)
    assert conv_channels(model) == before


def test_lowest_l1_channels_are_the_ones_removed() -> None:
    torch.manual_seed(1)
    model = MobileNetV2_1D(0.25).eval()
    # Make one expand-conv channel of the last block clearly the weakest: it must go first.
    block = model.features[-2]
    expand = block.conv[0][0]
    with torch.no_grad():
        expand.weight[5].mul_(1e-3)
    kept_norms = expand.weight.abs().sum(dim=(1, 2))
    pruned = prune_l1(model, 0.2)
    new_expand = pruned.features[-2].conv[0][0]
    survivors = new_expand.weight.abs().sum(dim=(1, 2))
    assert new_expand.out_channels < expand.out_channels
    assert not torch.isclose(survivors, kept_norms[5]).any()


def test_invalid_ratio_is_refused(model: MobileNetV2_1D) -> None:
    with pytest.raises(ValueError, match="pruning ratio"):
        prune_l1(model, 1.0)
