"""`gatewayd bench models` on tiny models: the tables and the paper columns, no timing asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gatewayd.bench.models import PAPER_TABLE_1, ModelBench, ratios
from gatewayd.cli import main
from gatewayd.errors import EXIT_UNAVAILABLE
from gatewayd.inference import ModelRegistry

onnx = pytest.importorskip("onnx")
from tests.test_inference import install_tiny_model  # noqa: E402


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    install_tiny_model(folder, "full", seed=0, top1=0.9)
    install_tiny_model(folder, "p40", seed=1, role="wearable", pruning_pct=40, top1=0.81)
    return folder


def test_bench_prints_our_models_beside_the_paper(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "models", "--models-dir", str(models), "--runs", "3", "--batch", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "full" in out
    assert "p40" in out
    for header in (
        "SIZE MB",
        "PARAMS M",
        "MMACS",
        "LATENCY ms",
        "WIN/S @4",
        "GFLOP/S @1/@4",
        "TOP-1 %",
        "x PREPROC",
    ):
        assert header in out
    for header in ("PAPER MB", "PAPER ms", "PAPER TOP-1 %", "OUR SIZE x", "OUR LAT x"):
        assert header in out
    for row in PAPER_TABLE_1:
        assert f"{row.size_mb:.1f}" in out
        assert f"{row.latency_ms:.1f}" in out
        assert f"{row.top1_pct:.1f}" in out
    assert "preprocessing (model_input)" in out
    assert "onnxruntime" in out
    assert "avx512f" in out or "unknown" in out
    # Ours at 40 %: top-1 0.81 / 0.9, and our 20/60/80 % rows are empty.
    p40 = next(line for line in out.splitlines() if line.startswith("40%"))
    assert "p40" in p40
    assert p40.split()[-1] == "0.900"
    line20 = next(line for line in out.splitlines() if line.startswith("20%"))
    assert line20.split()[-4:] == ["-", "-", "-", "-"]


def test_bench_json(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "models", "--models-dir", str(models), "--runs", "2", "--batch", "3", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"environment", "runs", "preprocess_ms", "models", "paper_table_1"}
    env = doc["environment"]
    assert {"cpu", "cpus", "simd", "onnxruntime", "threads"} <= set(env)
    # Each SIMD flag the report names is there or marked missing ("no-avx512f").
    assert [f.removeprefix("no-") for f in env["simd"].split()] in (
        ["avx2", "avx512f", "fma"],
        ["unknown"],
    )
    assert [m["model_id"] for m in doc["models"]] == ["full", "p40"]
    full, p40 = doc["models"]
    assert full["params"] == p40["params"] == 4 * 512 * 209 + 209
    assert full["vs_unpruned"]["size"] == 1.0
    assert p40["vs_unpruned"]["top1"] == pytest.approx(0.9)
    assert full["batch"] == 3
    # 2 FLOPs per MAC over the measured time: what tells a plausible latency from one above the
    # core's peak.
    assert full["gflops_batch1"] == pytest.approx(2 * full["macs"] / full["latency_ms"] / 1e6)
    assert full["gflops_batch"] == pytest.approx(2 * full["macs"] * full["throughput_wps"] / 1e9)
    assert full["model_over_preprocess"] > 0
    assert [r["pruning_pct"] for r in doc["paper_table_1"]] == [0, 20, 40, 60, 80]
    assert doc["paper_table_1"][4]["vs_unpruned"]["size"] == pytest.approx(3.5 / 12.4)


def test_bench_without_models_exits_69(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "models", "--models-dir", str(tmp_path)]) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == ""
    assert "no models installed in" in err


def bench(
    model_id: str, pruning: int, size: float, latency: float, top1: float | None
) -> ModelBench:
    return ModelBench(
        model_id=model_id,
        role="wearable",
        family="f",
        pruning_pct=pruning,
        layout="conv1d",
        size_mb=size,
        params=1,
        macs=1,
        latency_ms=latency,
        throughput_wps=1.0,
        batch=1,
        activity_top1=top1,
        hr_mae_bpm=None,
        evaluated_on="x",
        synthetic_training=True,
    )


def test_ratios_are_to_the_unpruned_model_of_the_family() -> None:
    got = ratios([bench("a", 0, 10.0, 2.0, 0.8), bench("b", 60, 4.0, 1.0, None)])
    assert got == {
        "a": {"size": 1.0, "latency": 1.0, "top1": 1.0},
        "b": {"size": 0.4, "latency": 0.5, "top1": None},
    }
    assert ratios([bench("b", 60, 4.0, 1.0, 0.5)]) == {}


def test_shipped_models_params_match_their_onnx_initializers() -> None:
    """Cross-check each shipped card's params against the graph (BN may be folded: within 5 %)."""
    registry = ModelRegistry.discover()
    if not registry.all():
        pytest.skip("no models shipped in gatewayd/models yet")
    for model in registry.all():
        graph = onnx.load(str(model.path)).graph
        # The weights: float tensors in fp32 files, int8 (and float biases) in static-int8 ones;
        # the quantisation scales and zero points are not parameters.
        kinds = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT8, onnx.TensorProto.INT32}
        weights = [
            i for i in graph.initializer
            if i.data_type in kinds and not i.name.endswith(("_scale", "_zero_point"))
        ]  # fmt: skip
        counted = sum(int(np.prod(i.dims)) for i in weights)
        assert abs(counted - model.card.params) <= 0.05 * model.card.params, (
            model.model_id,
            counted,
            model.card.params,
        )


def _graph_macs(path: Path) -> int:
    """Multiply-accumulates of one window, counted from the ONNX graph itself (Conv and Gemm)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {
        info.name: [d.dim_value or 1 for d in info.type.tensor_type.shape.dim]
        for info in [*graph.value_info, *graph.input, *graph.output]
    }
    weights = {init.name: list(init.dims) for init in graph.initializer}
    macs = 0
    for node in graph.node:
        if node.op_type == "Conv":
            # Each output element: (input channels / groups) x kernel taps, the weight's dims.
            weight = weights[node.input[1]]
            macs += int(np.prod(shapes[node.output[0]])) * int(np.prod(weight[1:]))
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            weight = weights[node.input[1]]
            macs += int(np.prod(shapes[node.output[0]])) * (weight[1] if trans_b else weight[0])
    return macs


def test_the_shipped_cards_count_the_macs_the_graphs_hold() -> None:
    """The MACs behind every GFLOP/s figure: each fp32 card's count equals the graph's own."""
    registry = ModelRegistry.discover()  # the package's gatewayd/models
    checked = 0
    for model in registry.all():
        if model.card.quantization != "none":
            continue
        assert _graph_macs(model.path) == model.card.macs, model.card.model_id
        checked += 1
    if not checked:
        pytest.skip("no fp32 models installed in gatewayd/models")
