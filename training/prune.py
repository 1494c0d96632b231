"""L1-norm channel pruning of the 1D MobileNetV2, with Torch-Pruning's dependency graph.

Channel importance is the L1 norm of the weights that produce (and consume) a channel,
``S_i = sum_j |w_ij|`` (`torch_pruning.importance.MagnitudeImportance` with ``p=1``). Torch-Pruning
traces the network once and builds a dependency graph, so the couplings a hand-written pruner
has to special-case are pruned together as one group:

- a depthwise conv's channels with the expand conv before it, its BatchNorms and the input
  channels of the project conv after it (``groups`` shrinks with the channels);
- every channel on a residual path: the project outputs of all blocks of one stage, joined by
  the identity additions, and the input channels of every conv that reads them;
- the last 1x1 conv's outputs with the input features of both heads.

Each group loses ``ratio`` of its channels, the lowest-importance ones (the group's importance is
the mean of its members' L1 norms). The head outputs (3 groups, 200 bins) are never pruned.
"""

from __future__ import annotations

import copy
from typing import Final

import torch
import torch_pruning as tp
from torch import nn

from gatewayd.signals.preprocess import MODEL_WINDOW_LEN
from training.model import MobileNetV2_1D, conv_channels, input_channels

#: Pruning ratios of the issue (percent of channels removed).
DEFAULT_RATIOS: Final = (20, 40, 60, 80)


def prune_l1(model: MobileNetV2_1D, ratio: float) -> MobileNetV2_1D:
    """Return a pruned copy of ``model`` with ``ratio`` of every channel group removed by L1."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio!r}")
    pruned = copy.deepcopy(model).eval()
    if ratio == 0.0:
        return pruned
    example = torch.zeros(1, input_channels(model), MODEL_WINDOW_LEN)
    pruner = tp.pruner.MagnitudePruner(
        pruned,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[pruned.activity_head, pruned.hr_head],
    )
    pruner.step()
    return pruned


def channel_ratio(original: nn.Module, pruned: nn.Module) -> float:
    """Return the fraction of Conv1d output channels removed."""
    return 1.0 - conv_channels(pruned) / conv_channels(original)
