"""The 1D MobileNetV2: inverted residuals, linear bottlenecks, depthwise-separable convolutions.

Input (N, C, 256), 8 s at 32 Hz from `gatewayd.signals.preprocess.preprocess_window`: C = 7 for
the model input v2 (BVP, ACC x/y/z and |a| in g, the motion level, the PPG-present flag; the
shipped models), 15 for v3 (the same and the ACC's band energies). Two heads on the
globally pooled features: activity logits over the 3 intensity groups
(`gatewayd.activity.GROUP_NAMES`: rest, light, vigorous) and heart-rate logits over 200 bins of
1 bpm (centres 30..229 bpm). The heart-rate estimate is the expected value of the bin centres
under the softmax, so entropy and confidence of the estimate are defined.

`to_conv2d` rewrites any (also pruned) instance as Conv2d over (N, C, 1, 256) with the same
weights, for runtimes that have faster 2D kernels; `count_macs` counts multiply-accumulates.
"""

from __future__ import annotations

import copy
import math
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from gatewayd.activity import GROUP_NAMES
from gatewayd.inference.cards import HR_BIN_COUNT, HR_BIN_LOW_BPM
from gatewayd.signals.preprocess import MODEL_CHANNELS, MODEL_WINDOW_LEN

N_ACTIVITY: Final = len(GROUP_NAMES)
N_HR_BINS: Final = HR_BIN_COUNT
#: Bin centres of the HR head in bpm.
HR_CENTRES: Final = torch.arange(HR_BIN_COUNT, dtype=torch.float32) + HR_BIN_LOW_BPM

#: MobileNetV2's stages: (expansion t, output channels c, repeats n, first stride s).
SETTINGS: Final = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS: Final = 32
LAST_CHANNELS: Final = 1280
KERNEL: Final = 3


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, losing at most 10 % (MobileNetV2)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn(
    cin: int,
    cout: int,
    kernel: int = 1,
    stride: int = 1,
    groups: int = 1,
    *,
    act: bool = True,
    activation: type[nn.Module] = nn.ReLU6,
) -> nn.Sequential:
    """Conv1d + BatchNorm1d (+ ReLU6, or ``activation``, unless ``act`` is False: the linear
    bottleneck)."""
    layers: list[nn.Module] = [
        nn.Conv1d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm1d(cout),
    ]
    if act:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class GlobalAvgPool(nn.Module):
    """Mean over every axis after the channels: one ReduceMean in ONNX, in either layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return (N, C)."""
        return x.mean(dim=tuple(range(2, x.ndim)))


def init_weights(model: nn.Module) -> None:
    """MobileNetV2's initialisation: He (fan out) convolutions, unit BatchNorm, small heads."""
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (k) -> project (1x1, linear); identity shortcut if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int = KERNEL) -> None:
        """Build one block; ``expand`` is the expansion factor t, ``kernel`` the depthwise width."""
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden))
        layers.append(conv_bn(hidden, hidden, kernel, stride, groups=hidden))
        layers.append(conv_bn(hidden, cout, act=False))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_residual else out


class TwoHeads(nn.Module):
    """Features -> global average pool -> dropout -> activity and heart-rate heads: every
    network here (MobileNetV2-1D and training/nets.py's) is its features and these heads."""

    def __init__(self, features: nn.Module, last: int, dropout: float) -> None:
        """``features`` maps the input to ``last`` channels."""
        super().__init__()
        self.features = features
        self.pool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.activity_head = nn.Linear(last, N_ACTIVITY)
        self.hr_head = nn.Linear(last, N_HR_BINS)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (activity_logits (N, 3), hr_logits (N, 200))."""
        feats = self.dropout(self.pool(self.features(x)))
        return self.activity_head(feats), self.hr_head(feats)


class MobileNetV2_1D(TwoHeads):  # noqa: N801 - the architecture's name
    """1D MobileNetV2 with a width multiplier and two heads (activity, heart-rate bins)."""

    def __init__(
        self, width: float = 1.0, dropout: float = 0.2, in_channels: int = MODEL_CHANNELS
    ) -> None:
        """Build the network; ``width`` scales every channel count except the last 1280;
        ``in_channels`` is 15 for the model input v3, 7 for v2 (its first seven channels)."""
        cin = make_divisible(STEM_CHANNELS * width)
        last = make_divisible(LAST_CHANNELS * max(1.0, width))
        features: list[nn.Module] = [conv_bn(in_channels, cin, KERNEL, 2)]
        for t, c, n, s in SETTINGS:
            cout = make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(conv_bn(cin, last))
        super().__init__(nn.Sequential(*features), last, dropout)
        self.width = width


def hr_expectation(hr_logits: torch.Tensor) -> torch.Tensor:
    """Return the heart-rate estimate in bpm: the expected bin centre under the softmax."""
    probs = torch.softmax(hr_logits, dim=-1)
    return probs @ HR_CENTRES.to(hr_logits.device)


def hr_estimate_np(hr_logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Return the expected bin centre (bpm) of HR logits (N, 200)."""
    z = hr_logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    centres = np.arange(HR_BIN_COUNT, dtype=np.float64) + HR_BIN_LOW_BPM
    return np.asarray(p @ centres, dtype=np.float64)


def to_conv2d(model: nn.Module) -> nn.Module:
    """Return a copy with every Conv1d/BatchNorm1d as its 2D twin, over (N, C, 1, L)."""
    out = copy.deepcopy(model).eval()

    def convert(module: nn.Module) -> None:
        for name, child in module.named_children():
            new: nn.Module | None = None
            if isinstance(child, nn.Conv1d):
                conv = nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    (1, child.kernel_size[0]),
                    (1, child.stride[0]),
                    (0, _int_padding(child.padding)),
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                conv.weight.data.copy_(child.weight.data.unsqueeze(2))
                if child.bias is not None and conv.bias is not None:
                    conv.bias.data.copy_(child.bias.data)
                new = conv
            elif isinstance(child, nn.BatchNorm1d):
                bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum)
                bn.load_state_dict(child.state_dict())
                new = bn
            if new is not None:
                setattr(module, name, new.eval())
            else:
                convert(child)

    convert(out)
    return out


def _int_padding(padding: str | tuple[int, ...]) -> int:
    if isinstance(padding, str):
        raise TypeError(f"string padding {padding!r} is not supported by to_conv2d")
    return int(padding[0])


def count_params(model: nn.Module) -> int:
    """Return the number of parameters (BatchNorm included, as exported before folding)."""
    return sum(p.numel() for p in model.parameters())


def input_channels(model: nn.Module) -> int:
    """The input channels ``model`` takes: its first convolution's (15: input v3, 7: v2)."""
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            return int(m.in_channels)
    raise ValueError(f"{type(model).__name__} has no convolution")


def count_macs(model: nn.Module, length: int = MODEL_WINDOW_LEN) -> int:
    """Count multiply-accumulates of one window: convolutions and linear layers.

    conv: out_len * out_ch * in_ch / groups * k; linear: in * out. BatchNorm (folded into the
    convolutions by the runtime), activations, additions and pooling are not counted.
    """
    total = 0

    def conv_hook(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv1d | nn.Conv2d)
        k = math.prod(m.kernel_size)
        positions = math.prod(out.shape[2:])
        total += positions * m.out_channels * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Module, _inp: object, _out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, input_channels(model), length))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def conv_channels(model: nn.Module) -> int:
    """Return the sum of out_channels over all Conv1d layers (what pruning removes)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv1d))
