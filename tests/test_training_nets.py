"""training.nets (Figure 3's networks) and gatewayd-train --arch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
pytest.importorskip("sklearn", reason="the baselines need scikit-learn (the `train` extra)")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")

from torch import nn  # noqa: E402

from gatewayd.bench.paper_fig3 import read_arch_run  # noqa: E402
from gatewayd.signals.preprocess import MODEL_CHANNELS, MODEL_WINDOW_LEN  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.export import export_onnx, max_abs_diff  # noqa: E402
from training.model import MobileNetV2_1D, count_macs, count_params  # noqa: E402
from training.nets import (  # noqa: E402
    ARCHITECTURES,
    DEFAULT_ARCH,
    ShuffleNetV2_1D,
    ShuffleUnit,
    SqueezeNet1D,
    build_model,
    channel_shuffle,
)

OTHERS = [a for a in ARCHITECTURES if a != DEFAULT_ARCH]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_network_has_the_two_heads_and_downsamples_32_times(arch: str) -> None:
    model = build_model(arch, 0.25).eval()
    x = torch.randn(3, MODEL_CHANNELS, MODEL_WINDOW_LEN)
    act, hr = model(x)
    assert act.shape == (3, 3)
    assert hr.shape == (3, 200)
    with torch.no_grad():
        feats = model.features(x)
    assert feats.shape[-1] == MODEL_WINDOW_LEN // 32


def test_the_default_is_the_shipped_mobilenet() -> None:
    assert DEFAULT_ARCH == "mobilenetv2"
    assert isinstance(build_model(DEFAULT_ARCH), MobileNetV2_1D)
    with pytest.raises(KeyError, match="squeezenet"):
        build_model("resnet")


def test_the_networks_differ_in_cost_as_their_designs_do() -> None:
    macs = {a: count_macs(build_model(a)) for a in ARCHITECTURES}
    params = {a: count_params(build_model(a)) for a in ARCHITECTURES}
    # SqueezeNet is the smallest; EfficientNet-Lite0 (5-wide kernels, more blocks) the largest.
    assert min(params, key=params.__getitem__) == "squeezenet"
    assert max(macs, key=macs.__getitem__) == "efficientnet-lite0"
    assert macs["shufflenetv2"] < macs["mobilenetv2"]


def test_channel_shuffle_interleaves_the_two_halves() -> None:
    x = torch.arange(6.0).reshape(1, 6, 1)
    out = channel_shuffle(x, 2)
    assert out.flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    # The same in the 2D layout (N, C, 1, L).
    x4 = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x4, 2).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_shuffle_units_split_or_branch() -> None:
    with pytest.raises(ValueError, match="keeps its channels"):
        ShuffleUnit(24, 48, 1)
    unit = ShuffleUnit(24, 48, 2).eval()
    assert unit(torch.randn(2, 24, 64)).shape == (2, 48, 32)
    model = ShuffleNetV2_1D(1.0)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv1d) and m.groups > 1]
    # One per unit (16) and one more in each stage's stride-2 unit (3).
    assert len(depthwise) == 19


def test_squeezenet_fires_concatenate_both_expands() -> None:
    model = SqueezeNet1D(1.0)
    fires = [m for m in model.features if type(m).__name__ == "Fire"]
    assert len(fires) == 8
    assert model.activity_head.in_features == 512


@pytest.mark.parametrize("arch", OTHERS)
def test_onnx_export_is_the_same_function(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 0.25).eval()
    path = export_onnx(model, tmp_path / f"{arch}.onnx", "conv1d")
    x = np.random.default_rng(0).standard_normal((4, MODEL_CHANNELS, MODEL_WINDOW_LEN))
    assert max_abs_diff(model, path, x.astype(np.float32), "conv1d") < 1e-3


@pytest.mark.parametrize(
    "extra", [["--prune", "40"], ["--export", "--cv-only"], []], ids=["prune", "export", "fit"]
)
def test_other_networks_are_for_comparison_only(extra: list[str], tmp_path: Path) -> None:
    args = ["--synthetic-subjects", "2", "--arch", "squeezenet", "--out", str(tmp_path), *extra]
    assert main(args) == 2
    assert not (tmp_path / "cv.json").exists()


def test_cv_only_run_of_another_network_describes_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "--synthetic-subjects", "2", "--synthetic-minutes", "1", "--folds", "0", "--epochs", "1",
        "--width", "0.25", "--no-cache", "--cv-only", "--bench-runs", "5",
        "--arch", "shufflenetv2", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    cv = json.loads((out / "cv.json").read_text(encoding="utf-8"))
    arch = cv["architecture"]
    model = ShuffleNetV2_1D(0.25)
    assert arch["name"] == "shufflenetv2"
    assert arch["class"] == "ShuffleNetV2_1D"
    assert arch["macs"] == count_macs(model)
    assert arch["params"] == count_params(model)
    assert arch["onnx_fp32_bytes"] == (out / "architecture.onnx").stat().st_size
    assert arch["latency_ms"] > 0
    assert cv["config"]["arch"] == "shufflenetv2"
    run = read_arch_run(out)
    assert run.arch == "shufflenetv2"
    assert run.macs == arch["macs"]
    assert run.synthetic
    assert run.accuracy is not None
    assert 0.0 <= run.accuracy <= 1.0
    assert run.hr_mae_bpm is not None
    assert run.hr_mae_bpm > 0
