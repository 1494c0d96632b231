"""training.export: torch <-> onnxruntime parity in both layouts, int8, and model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
onnx = pytest.importorskip("onnx", reason="export needs onnx (the `train` extra)")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from gatewayd.datasets import generate_recording  # noqa: E402
from gatewayd.inference.cards import (  # noqa: E402
    Calibration,
    Metrics,
    ModelCard,
    TrainingInfo,
    card_path,
    read_card,
    verify,
)
from gatewayd.inference.cards import sha256_of as card_sha256  # noqa: E402
from gatewayd.signals.preprocess import (  # noqa: E402
    MODEL_CHANNEL_NAMES,
    MODEL_CHANNELS,
    PREPROCESSING_ID,
)
from training.data import preprocess_recording  # noqa: E402
from training.export import (  # noqa: E402
    CardInfo,
    Layout,
    agreement,
    export_onnx,
    max_abs_diff,
    onnx_predict,
    quantize_int8_static,
    torch_logits,
    write_model_card,
)
from training.model import MobileNetV2_1D, count_macs, count_params  # noqa: E402


@pytest.fixture(scope="module")
def model() -> MobileNetV2_1D:
    """A tiny model with non-trivial BatchNorm statistics and spread-out logits."""
    torch.manual_seed(0)
    net = MobileNetV2_1D(0.25).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    for head in (net.activity_head, net.hr_head):
        nn.init.normal_(head.weight, 0.0, 0.5)
    return net


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """Random windows and real (preprocessed synthetic) ones."""
    rng = np.random.default_rng(0)
    real = preprocess_recording(generate_recording(2, 1.0, seed=1))
    return np.concatenate([rng.standard_normal((6, MODEL_CHANNELS, 256)).astype(np.float32), real])


@pytest.fixture(scope="module")
def exported(model: MobileNetV2_1D, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {
        layout: export_onnx(model, out / f"m-{layout}.onnx", layout)
        for layout in ("conv1d", "conv2d")
    }


@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_fp32_parity_with_torch(
    model: MobileNetV2_1D, windows: np.ndarray, exported: dict[str, Path], layout: Layout
) -> None:
    assert max_abs_diff(model, exported[layout], windows, layout) < 1e-4


@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_graph_has_the_card_interface(exported: dict[str, Path], layout: Layout) -> None:
    graph = onnx.load(str(exported[layout]))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in graph.graph.input] == ["x"]
    assert [o.name for o in graph.graph.output] == ["activity_logits", "hr_logits"]
    assert not (exported[layout].parent / (exported[layout].name + ".data")).exists()
    sess = ort.InferenceSession(str(exported[layout]), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else "N" for d in sess.get_inputs()[0].shape]
    assert shape == (
        ["N", MODEL_CHANNELS, 256] if layout == "conv1d" else ["N", MODEL_CHANNELS, 1, 256]
    )
    for batch in (1, 5):  # the batch axis is dynamic
        x = np.zeros((batch, *shape[1:]), dtype=np.float32)
        act, hr = sess.run(None, {"x": x})
        assert act.shape == (batch, 3)
        assert hr.shape == (batch, 200)


def test_static_int8_runs_and_stays_close(
    model: MobileNetV2_1D, windows: np.ndarray, exported: dict[str, Path], tmp_path: Path
) -> None:
    q = quantize_int8_static(exported["conv1d"], tmp_path / "q.onnx", windows[6:], "conv1d")
    graph = onnx.load(str(q))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert q.stat().st_size < exported["conv1d"].stat().st_size / 2
    fp32 = onnx_predict(exported["conv1d"], windows[6:], "conv1d")
    int8 = onnx_predict(q, windows[6:], "conv1d")
    agree = agreement(fp32, int8)
    assert agree["activity_argmax_agreement"] >= 0.9
    assert agree["hr_mean_abs_diff_bpm"] < 5.0
    torch_act, _ = torch_logits(model, windows[6:])
    np.testing.assert_allclose(fp32[0], torch_act, atol=1e-4)


def training_info(**extra: Any) -> TrainingInfo:
    """The training record of an untrained test model."""
    return TrainingInfo(
        datasets=["synthetic (test)"], synthetic=True, subjects=1, windows=1,
        cross_validation="none", seed=0, epochs=0, **extra,
    )  # fmt: skip


def test_card_matches_its_file_and_round_trips_the_new_fields(
    model: MobileNetV2_1D, exported: dict[str, Path]
) -> None:
    path = exported["conv2d"]
    calibration = Calibration(
        activity_temperature=1.7,
        hr_temperature=0.9,
        fitted_on="out-of-fold outputs (test)",
        activity_ece_before=0.12,
        activity_ece_after=0.03,
        hr_interval_coverage={"50%": 0.4, "90%": 0.8},
    )
    info = CardInfo(
        model_id="mnv2-1d-w0.25-test",
        version="0.0.0",
        role="gateway",
        width=0.25,
        pruning_pct=0,
        training=training_info(
            subject_ids={"synthetic": ["S1"], "troika": ["01", "04"]},
            folds=[["synthetic:S1"], ["troika:01", "troika:04"]],
        ),
        metrics=Metrics(
            evaluated_on="nothing: untrained test model",
            activity_top1=0.5,
            activity_macro_f1=0.4,
            rest_vs_moving_accuracy=0.8,
            per_dataset={"troika": {"accuracy": 0.5, "hr_mae_bpm": None}},
        ),
        calibration=calibration,
    )
    card = write_model_card(model, path, "conv2d", info)
    again = read_card(card_path(path))
    assert again == card
    assert ModelCard.model_validate(again.model_dump()) == card
    assert again.calibration == calibration
    assert again.training.folds == [["synthetic:S1"], ["troika:01", "troika:04"]]
    assert again.metrics.per_dataset["troika"]["hr_mae_bpm"] is None
    assert card.sha256 == card_sha256(path)
    verify(card, path)
    assert card.size_bytes == path.stat().st_size
    assert card.params == count_params(model)
    assert card.macs == count_macs(model)
    assert card.layout == "conv2d"
    assert card.input.shape == ["N", MODEL_CHANNELS, 1, 256]
    assert card.input.channels == list(MODEL_CHANNEL_NAMES)
    assert card.input.preprocessing == PREPROCESSING_ID
    assert card.input.rate_hz == 32
    assert card.outputs.activity_classes == ["rest", "light", "vigorous"]
    assert card.opset >= 17


def test_cards_stay_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        Calibration.model_validate({"activity_temperature": 1.0, "fitted_on": "x", "bins": 3})
    with pytest.raises(ValueError, match="greater than 0"):
        Calibration(activity_temperature=0.0, fitted_on="x")
    with pytest.raises(ValueError, match="extra"):
        TrainingInfo.model_validate(
            {
                "datasets": [],
                "synthetic": False,
                "subjects": 0,
                "windows": 0,
                "cross_validation": "",
                "seed": 0,
                "epochs": 0,
                "fold": [],
            }
        )


@pytest.mark.needs_data
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_fp32_parity_on_troika_windows(
    model: MobileNetV2_1D, exported: dict[str, Path], layout: Layout
) -> None:
    from gatewayd.datasets import load_troika
    from tests.test_datasets_troika import TROIKA

    path = TROIKA / "DATA_01_TYPE01.mat"
    if not path.is_file():
        pytest.skip(f"TROIKA recordings not found at {TROIKA} (set GATEWAYD_SHARED_DATA)")
    x = preprocess_recording(load_troika(path))[::4]
    assert max_abs_diff(model, exported[layout], x, layout) < 1e-4


def test_a_v2_network_exports_a_v2_card_the_gateway_runs(tmp_path: Path) -> None:
    """`gatewayd-train --input v2` (the shipped models' input): a 7-channel network, pruned,
    exported with a v2 card, which the gateway feeds the first seven channels of the input."""
    from gatewayd.inference.analysis import window_inputs
    from gatewayd.inference.session import ModelSession
    from gatewayd.protocol.messages import SampleFormat, Summary, Window
    from gatewayd.signals.preprocess import PREPROCESSING_V2, V2_CHANNELS
    from training.model import input_channels
    from training.prune import prune_l1

    torch.manual_seed(0)
    full = MobileNetV2_1D(0.25, in_channels=V2_CHANNELS).eval()
    pruned = prune_l1(full, 0.4)
    assert input_channels(full) == input_channels(pruned) == V2_CHANNELS
    path = export_onnx(pruned, tmp_path / "v2.onnx", "conv2d")
    info = CardInfo(
        model_id="mnv2-1d-w0.25-p40-v2-test",
        version="0.0.0",
        role="wearable",
        width=0.25,
        pruning_pct=40,
        training=training_info(),
        metrics=Metrics(evaluated_on="nothing: untrained test model"),
    )
    card = write_model_card(pruned, path, "conv2d", info)
    assert card.input.preprocessing == PREPROCESSING_V2
    assert card.input.shape == ["N", V2_CHANNELS, 1, 256]
    assert card.input.channels == list(MODEL_CHANNEL_NAMES[:V2_CHANNELS])
    rec = generate_recording(3, 0.5, seed=2)
    bvp, acc = rec.window(0)
    summary = Summary(seq=1, t_ms=0, flags=0, activity=255, pruning_pct=40, activity_conf_e4=0,
                      entropy_mbits=3900, hr_cbpm=0, signal_quality=255,
                      battery_pct=90)  # fmt: skip
    window = Window(summary, SampleFormat.INT16, 64, 32, 64,
                    np.round(bvp * 100).astype(np.int16),
                    np.round(acc).astype(np.int16))  # fmt: skip
    (x,) = window_inputs([window], card).x
    assert x is not None
    assert x.shape == (V2_CHANNELS, 256)
    session = ModelSession(card, path)
    act, _ = session.run_logits(x[None])
    assert act.shape == (1, 3)
