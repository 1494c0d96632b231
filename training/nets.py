"""1D analogues of the lightweight networks the method's paper compares (its Figure 3).

Each takes the same input as `training.model.MobileNetV2_1D` (N, C, 256) and ends in the same two
heads on the globally pooled features (activity logits over the 3 groups, heart-rate logits over
200 bins), so every one is trained, scored and exported by the same code. 2D kernels k x k become
1D kernels of length k; the channel plans are the ImageNet networks' own:

- *SqueezeNet 1.1* (Iandola et al., 2016): Fire modules (1x1 squeeze, then 1x1 and 3-wide
  expands, concatenated), max pooling after the stem and the 2nd and 4th Fire. BatchNorm after
  every convolution (the original has none; the others all have it, and without it the network
  does not train from scratch in our epochs). The original's final 1x1 convolution to the
  classes is replaced by the two heads on the pooled 512 features.
- *ShuffleNetV2 1.0x* (Ma et al., 2018): stem 24 channels and max pooling, stages of 4, 8, 4
  units with 116, 232, 464 channels (channel split, 1x1 / depthwise 3 / 1x1 branch, channel
  shuffle of 2 groups; the stride-2 unit has a second depthwise branch), a 1x1 convolution to
  1024.
- *EfficientNet-Lite0* (TensorFlow's EfficientNet-Lite: EfficientNet-B0 without
  squeeze-and-excitation, ReLU6 for swish, stem and head not scaled): MBConv stages
  (expansion, kernel, stride, channels, repeats) (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2)
  (6,3,2,80,3) (6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1), a 1x1 convolution to 1280.

Every network downsamples the 256 samples 32 times, as MobileNetV2-1D does. ``width`` scales
every channel count (rounded to a multiple of 8, as the originals do) except, as in
MobileNetV2, the last layer's.
"""

from __future__ import annotations

from typing import Final

import torch
from torch import nn

from gatewayd.signals.preprocess import MODEL_CHANNELS
from training.model import (
    InvertedResidual,
    MobileNetV2_1D,
    TwoHeads,
    conv_bn,
    make_divisible,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "EfficientNetLite0_1D",
    "ShuffleNetV2_1D",
    "SqueezeNet1D",
    "build_model",
]


def _conv(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, *, relu: bool = True
) -> nn.Sequential:
    """Conv1d + BatchNorm1d (+ ReLU unless ``relu`` is False): SqueezeNet's and ShuffleNet's."""
    return conv_bn(cin, cout, kernel, stride, groups, act=relu, activation=nn.ReLU)


# --- SqueezeNet 1.1 -------------------------------------------------------------------------


class Fire(nn.Module):
    """Squeeze (1x1) then expand (1x1 and 3-wide), the two expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        """``expand`` channels from each expand branch (2 x ``expand`` out)."""
        super().__init__()
        self.squeeze = _conv(cin, squeeze)
        self.expand1 = _conv(squeeze, expand)
        self.expand3 = _conv(squeeze, expand, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


#: SqueezeNet 1.1's Fire modules (squeeze, expand) and where max pooling follows.
SQUEEZE_FIRES: Final = ((16, 64), (16, 64), "pool", (32, 128), (32, 128), "pool",
                        (48, 192), (48, 192), (64, 256), (64, 256))  # fmt: skip


class SqueezeNet1D(TwoHeads):
    """1D SqueezeNet 1.1 with the two heads."""

    def __init__(
        self, width: float = 1.0, dropout: float = 0.2, in_channels: int = MODEL_CHANNELS
    ) -> None:
        """Build the network; ``width`` scales every channel count."""
        cin = make_divisible(64 * width)
        layers: list[nn.Module] = [
            _conv(in_channels, cin, 3, 2),
            nn.MaxPool1d(3, 2, padding=1),
        ]
        for spec in SQUEEZE_FIRES:
            if spec == "pool":
                layers.append(nn.MaxPool1d(3, 2, padding=1))
                continue
            squeeze, expand = spec
            fire = Fire(cin, make_divisible(squeeze * width), make_divisible(expand * width))
            layers.append(fire)
            cin = 2 * make_divisible(expand * width)
        # SqueezeNet reaches 1/16; one more pooling brings it to MobileNetV2-1D's 1/32.
        layers.append(nn.MaxPool1d(3, 2, padding=1))
        super().__init__(nn.Sequential(*layers), cin, dropout)
        self.width = width


# --- ShuffleNetV2 ---------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (N, C, ...)."""
    n, c = x.shape[0], x.shape[1]
    rest = x.shape[2:]
    return x.reshape(n, groups, c // groups, *rest).transpose(1, 2).reshape(n, c, *rest)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: split (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        """Build one unit; a stride-1 unit needs ``cin == cout``."""
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride == 1:
            if cin != cout:
                raise ValueError(f"a stride-1 unit keeps its channels ({cin} != {cout})")
            into = branch
            self.branch1: nn.Module = nn.Identity()
        else:
            into = cin
            self.branch1 = nn.Sequential(
                _conv(cin, cin, 3, stride, groups=cin, relu=False), _conv(cin, branch)
            )
        self.branch2 = nn.Sequential(
            _conv(into, branch),
            _conv(branch, branch, 3, stride, groups=branch, relu=False),
            _conv(branch, branch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit."""
        if self.stride == 1:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch2(work)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


#: ShuffleNetV2 1.0x: (repeats, channels) of stages 2-4; the stem's and the last conv's.
SHUFFLE_STAGES: Final = ((4, 116), (8, 232), (4, 464))
SHUFFLE_STEM, SHUFFLE_LAST = 24, 1024


class ShuffleNetV2_1D(TwoHeads):  # noqa: N801 - the architecture's name
    """1D ShuffleNetV2 1.0x with the two heads."""

    def __init__(
        self, width: float = 1.0, dropout: float = 0.2, in_channels: int = MODEL_CHANNELS
    ) -> None:
        """Build the network; ``width`` scales every channel count except the last 1024."""
        cin = make_divisible(SHUFFLE_STEM * width)
        layers: list[nn.Module] = [
            _conv(in_channels, cin, 3, 2),
            nn.MaxPool1d(3, 2, padding=1),
        ]
        for repeats, channels in SHUFFLE_STAGES:
            # Even, so that the channel split halves it.
            cout = 2 * make_divisible(channels * width / 2, 4)
            for i in range(repeats):
                layers.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        last = make_divisible(SHUFFLE_LAST * max(1.0, width))
        layers.append(_conv(cin, last))
        super().__init__(nn.Sequential(*layers), last, dropout)
        self.width = width


# --- EfficientNet-Lite0 ---------------------------------------------------------------------


#: EfficientNet-Lite0's stages: (expansion, kernel, stride, channels, repeats).
LITE0_STAGES: Final = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
LITE0_STEM, LITE0_LAST = 32, 1280


class EfficientNetLite0_1D(TwoHeads):  # noqa: N801 - the architecture's name
    """1D EfficientNet-Lite0 with the two heads."""

    def __init__(
        self, width: float = 1.0, dropout: float = 0.2, in_channels: int = MODEL_CHANNELS
    ) -> None:
        """Build the network; ``width`` scales every channel count except stem and head."""
        cin = LITE0_STEM
        layers: list[nn.Module] = [conv_bn(in_channels, cin, 3, 2)]
        for expand, kernel, stride, channels, repeats in LITE0_STAGES:
            cout = make_divisible(channels * width)
            for i in range(repeats):
                # MBConv without squeeze-excitation is MobileNetV2's block, kernel aside.
                block = InvertedResidual(cin, cout, stride if i == 0 else 1, expand, kernel)
                layers.append(block)
                cin = cout
        layers.append(conv_bn(cin, LITE0_LAST))
        super().__init__(nn.Sequential(*layers), LITE0_LAST, dropout)
        self.width = width


#: ``--arch`` names; the default is the method's network, the only one pruned and shipped.
DEFAULT_ARCH: Final = "mobilenetv2"
ARCHITECTURES: Final[dict[str, type[nn.Module]]] = {
    DEFAULT_ARCH: MobileNetV2_1D,
    "squeezenet": SqueezeNet1D,
    "shufflenetv2": ShuffleNetV2_1D,
    "efficientnet-lite0": EfficientNetLite0_1D,
}


def build_model(arch: str, width: float = 1.0, in_channels: int = MODEL_CHANNELS) -> nn.Module:
    """A fresh network of ``arch`` (an `ARCHITECTURES` name) taking ``in_channels`` input
    channels (15: the model input v3, 7: v2); KeyError names the choices."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        choices = ", ".join(ARCHITECTURES)
        raise KeyError(f"unknown architecture {arch!r}; one of {choices}") from None
    return cls(width, in_channels=in_channels)
