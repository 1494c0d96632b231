"""Model registry, ONNX Runtime sessions and the decoding of the heads, on tiny real ONNX models.

The models are built here with onnx.helper (a dev dependency; the gateway needs only
onnxruntime): x (N, 4, 512) -> flatten -> two MatMul + Add heads, activity_logits (N, 9) and
hr_logits (N, 200), so every prediction can be recomputed in numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest

from gatewayd.activity import GROUP_NAMES, LABEL_GROUPS, ActivityGroup
from gatewayd.inference import (
    DEFAULT_MODELS_DIR,
    HR_BIN_COUNT,
    InferenceError,
    ModelCard,
    ModelCardError,
    ModelRegistry,
    ModelSession,
    decode,
    entropy_bits,
    expected_bpm,
    hr_bin_centres,
    sha256_of,
    softmax,
    write_card,
)
from gatewayd.inference.cards import ACTIVITY_CLASSES, OutputSpec
from gatewayd.inference.groups import class_groups, group_prediction

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FEATURES = 4 * 512
CLASSES = 9


class TinyModel:
    """The weights of a tiny model and the numpy forward pass it must match."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.wa = (rng.standard_normal((FEATURES, CLASSES)) * 0.05).astype(np.float32)
        self.ba = rng.standard_normal(CLASSES).astype(np.float32)
        self.wh = (rng.standard_normal((FEATURES, HR_BIN_COUNT)) * 0.05).astype(np.float32)
        # A bump around 80 bpm so the expected value is a plausible heart rate.
        centres = np.arange(HR_BIN_COUNT) + 30.0
        self.bh = (-(((centres - 80.0) / 15.0) ** 2)).astype(np.float32)

    @property
    def params(self) -> int:
        return self.wa.size + self.ba.size + self.wh.size + self.bh.size

    def logits(
        self, x: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        flat = x.reshape(x.shape[0], FEATURES).astype(np.float64)
        return flat @ self.wa + self.ba, flat @ self.wh + self.bh

    def onnx_bytes(self, layout: Literal["conv1d", "conv2d"]) -> bytes:
        shape: list[Any] = ["N", 4, 512] if layout == "conv1d" else ["N", 4, 1, 512]
        return self.graph_bytes("tiny", shape)

    def graph_bytes(
        self,
        name: str,
        shape: list[Any],
        *,
        front: Sequence[onnx.NodeProto] = (),
        front_inits: Sequence[onnx.TensorProto] = (),
        features: str = "x",
    ) -> bytes:
        """A model whose heads read the tensor ``features``, computed from input ``x`` by
        ``front`` (nothing: the heads read the input itself)."""
        inits = [
            *front_inits,
            numpy_helper.from_array(np.array([-1, FEATURES], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(self.wa, "wa"),
            numpy_helper.from_array(self.ba, "ba"),
            numpy_helper.from_array(self.wh, "wh"),
            numpy_helper.from_array(self.bh, "bh"),
        ]
        nodes = [
            *front,
            helper.make_node("Reshape", [features, "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "wa"], ["a0"]),
            helper.make_node("Add", ["a0", "ba"], ["activity_logits"]),
            helper.make_node("MatMul", ["flat", "wh"], ["h0"]),
            helper.make_node("Add", ["h0", "bh"], ["hr_logits"]),
        ]
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [
                helper.make_tensor_value_info("activity_logits", TensorProto.FLOAT, ["N", 9]),
                helper.make_tensor_value_info("hr_logits", TensorProto.FLOAT, ["N", 200]),
            ],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        data: bytes = model.SerializeToString()
        return data


def install_tiny_model(
    directory: Path,
    model_id: str = "tiny-full",
    *,
    seed: int = 0,
    layout: Literal["conv1d", "conv2d"] = "conv1d",
    role: Literal["gateway", "wearable"] = "gateway",
    pruning_pct: int = 0,
    top1: float | None = 0.5,
) -> TinyModel:
    """Write ``<model_id>.onnx`` and its card into ``directory``; return the weights."""
    directory.mkdir(parents=True, exist_ok=True)
    tiny = TinyModel(seed)
    model_file = directory / f"{model_id}.onnx"
    model_file.write_bytes(tiny.onnx_bytes(layout))
    card = ModelCard.model_validate(
        {
            "model_id": model_id,
            "version": "0.0.1",
            "file": model_file.name,
            "sha256": sha256_of(model_file),
            "role": role,
            "architecture": "tiny-linear",
            "width_multiplier": 1.0,
            "pruning_pct": pruning_pct,
            "layout": layout,
            "opset": 17,
            "params": tiny.params,
            "macs": FEATURES * (CLASSES + HR_BIN_COUNT),
            "size_bytes": model_file.stat().st_size,
            "input": {"shape": ["N", 4, 512] if layout == "conv1d" else ["N", 4, 1, 512]},
            "training": {
                "datasets": ["none"],
                "synthetic": True,
                "subjects": 0,
                "windows": 0,
                "cross_validation": "none",
                "seed": seed,
                "epochs": 0,
                "notes": "random weights for tests",
            },
            "metrics": {"evaluated_on": "nothing (test model)", "activity_top1": top1},
        }
    )
    write_card(card, directory / f"{model_id}.onnx.json")
    return tiny


def windows(n: int, seed: int = 1) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, 4, 512)).astype(np.float32)


# --- registry ------------------------------------------------------------------------------------


def test_discover_indexes_verified_models(tmp_path: Path) -> None:
    install_tiny_model(tmp_path, "full", role="gateway")
    install_tiny_model(tmp_path, "p40", role="wearable", pruning_pct=40, layout="conv2d")
    install_tiny_model(tmp_path, "p20", role="wearable", pruning_pct=20)
    registry = ModelRegistry.discover(tmp_path)
    assert registry.errors == ()
    assert len(registry) == 3
    assert [m.model_id for m in registry.all()] == ["full", "p20", "p40"]
    assert [m.model_id for m in registry.for_role("gateway")] == ["full"]
    assert [m.model_id for m in registry.for_role("wearable")] == ["p20", "p40"]
    got = registry.get("p40")
    assert got.path == tmp_path / "p40.onnx"
    assert got.card.layout == "conv2d"


def test_discover_collects_every_bad_file_and_keeps_the_good(tmp_path: Path) -> None:
    install_tiny_model(tmp_path, "good")
    # sha256 mismatch: the file changed after its card was written.
    install_tiny_model(tmp_path, "changed")
    (tmp_path / "changed.onnx").write_bytes((tmp_path / "changed.onnx").read_bytes() + b"\0")
    # Card without its model file.
    install_tiny_model(tmp_path, "gone")
    (tmp_path / "gone.onnx").unlink()
    # Model file without a card.
    install_tiny_model(tmp_path, "orphan")
    (tmp_path / "orphan.onnx.json").unlink()
    # A card that is not JSON, and one that fails validation.
    (tmp_path / "broken.onnx.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "invalid.onnx.json").write_text(json.dumps({"model_id": "x"}), encoding="utf-8")
    # Two cards with one id.
    install_tiny_model(tmp_path, "twin")
    card = json.loads((tmp_path / "twin.onnx.json").read_text(encoding="utf-8"))
    (tmp_path / "twin2.onnx").write_bytes((tmp_path / "twin.onnx").read_bytes())
    card["file"] = "twin2.onnx"
    (tmp_path / "twin2.onnx.json").write_text(json.dumps(card), encoding="utf-8")

    registry = ModelRegistry.discover(tmp_path)

    assert sorted(m.model_id for m in registry.all()) == ["good", "twin"]
    messages = [str(e) for e in registry.errors]
    assert all(isinstance(e, ModelCardError) for e in registry.errors)
    assert len(messages) == 6, messages
    expected = {
        "changed.onnx: sha256",
        "gone.onnx: model file missing",
        "orphan.onnx: no model card",
        "broken.onnx.json: not a valid model card",
        "invalid.onnx.json: not a valid model card",
        "twin2.onnx.json: model id twin is also used by twin.onnx",
    }
    for fragment in expected:
        assert any(fragment in m for m in messages), (fragment, messages)


def test_card_must_be_named_after_its_model(tmp_path: Path) -> None:
    install_tiny_model(tmp_path, "a")
    (tmp_path / "a.onnx.json").rename(tmp_path / "b.onnx.json")
    registry = ModelRegistry.discover(tmp_path)
    assert len(registry) == 0
    assert "b.onnx.json: the card names file 'a.onnx'" in str(registry.errors[0])


def test_get_unknown_id_lists_installed_ones(tmp_path: Path) -> None:
    install_tiny_model(tmp_path, "only")
    with pytest.raises(ModelCardError, match=r"no model 'other' in .* \(installed: only\)"):
        ModelRegistry.discover(tmp_path).get("other")


def test_missing_folder_is_an_error_not_an_exception(tmp_path: Path) -> None:
    registry = ModelRegistry.discover(tmp_path / "nope")
    assert registry.all() == []
    assert "nope: no such folder" in str(registry.errors[0])


def test_default_folder_is_the_package_models_folder() -> None:
    assert Path(__file__).resolve().parents[1] / "gatewayd" / "models" == DEFAULT_MODELS_DIR
    assert ModelRegistry.discover().directory == DEFAULT_MODELS_DIR


# --- decoding: pure functions --------------------------------------------------------------------


def test_softmax_is_stable_and_normalised() -> None:
    p = softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75]])


def test_expected_bpm_and_entropy_on_known_distributions() -> None:
    spec = OutputSpec()
    centres = hr_bin_centres(spec)
    assert centres[0] == 30.0
    assert centres[-1] == 229.0
    assert centres.shape == (200,)
    one_hot = np.zeros((1, 200))
    one_hot[0, 42] = 1.0
    two = np.zeros((1, 200))
    two[0, [40, 50]] = 0.5  # 70 and 80 bpm
    uniform = np.full((1, 200), 1 / 200)
    probs = np.vstack([one_hot, two, uniform])
    np.testing.assert_allclose(expected_bpm(probs, centres), [72.0, 75.0, 129.5])
    np.testing.assert_allclose(entropy_bits(probs), [0.0, 1.0, math.log2(200)])


def test_decode_matches_a_numpy_reference() -> None:
    rng = np.random.default_rng(5)
    act = rng.standard_normal((7, 9)) * 3
    hr = rng.standard_normal((7, 200)) * 3
    pred = decode(act, hr, OutputSpec())
    pa = np.exp(act) / np.exp(act).sum(axis=1, keepdims=True)
    ph = np.exp(hr) / np.exp(hr).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(pred.activity_probs, pa, rtol=1e-12)
    np.testing.assert_allclose(pred.hr_probs, ph, rtol=1e-12)
    np.testing.assert_allclose(pred.hr_bpm, (ph * (np.arange(200) + 30)).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(pred.hr_entropy_bits, -(ph * np.log2(ph)).sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(pred.activity, act.argmax(axis=1))
    np.testing.assert_allclose(pred.activity_confidence, pa.max(axis=1), rtol=1e-12)
    assert len(pred) == 7


def test_decode_rejects_heads_that_disagree_with_the_card() -> None:
    with pytest.raises(InferenceError, match=r"activity head has shape \(2, 8\)"):
        decode(np.zeros((2, 8)), np.zeros((2, 200)), OutputSpec())
    with pytest.raises(InferenceError, match=r"heart-rate head has shape \(2, 100\)"):
        decode(np.zeros((2, 9)), np.zeros((2, 100)), OutputSpec())


# --- activity classes -> activity groups ---------------------------------------------------------


def test_class_groups_by_name_groups_first_then_ppg_dalia() -> None:
    assert class_groups(["rest", "light", "vigorous"]) == (
        ActivityGroup.REST, ActivityGroup.LIGHT, ActivityGroup.VIGOROUS,
    )  # fmt: skip
    # The shipped cards' nine PPG-DaLiA classes: each to the group LABEL_GROUPS gives it.
    assert class_groups(ACTIVITY_CLASSES) == tuple(
        LABEL_GROUPS["dalia"][name] for name in ACTIVITY_CLASSES
    )
    assert class_groups(["Walking", " REST ", "unknown", "yoga"]) == (
        ActivityGroup.LIGHT, ActivityGroup.REST, ActivityGroup.UNKNOWN, ActivityGroup.UNKNOWN,
    )  # fmt: skip


def test_group_probabilities_are_the_sums_of_their_classes() -> None:
    classes = ["transient", "sitting", "stairs", "walking", "cycling", "working"]
    probs = np.array(
        [
            # Sitting is the top class, but vigorous (0.25 + 0.25) beats rest (0.30 + 0.15).
            [0.00, 0.30, 0.25, 0.05, 0.25, 0.15],
            [0.00, 0.35, 0.00, 0.35, 0.15, 0.15],  # rest 0.50 vs light 0.35
            [0.70, 0.10, 0.05, 0.05, 0.05, 0.05],  # mostly transient: unknown
            [0.30, 0.30, 0.10, 0.10, 0.10, 0.10],  # transient ties rest: rest (not unknown)
        ]
    )
    g = group_prediction(probs, classes)
    np.testing.assert_allclose(
        g.group_probs,
        [[0.45, 0.05, 0.50], [0.50, 0.35, 0.15], [0.15, 0.05, 0.10], [0.40, 0.10, 0.20]],
    )
    np.testing.assert_allclose(g.unknown_prob, [0.0, 0.0, 0.70, 0.30])
    assert g.group.tolist() == [2, 0, 255, 0]
    np.testing.assert_allclose(g.confidence, [0.50, 0.50, 0.70, 0.40])
    assert len(g) == 4
    # Each row's group probabilities and unknown share add up to its total probability.
    np.testing.assert_allclose(g.group_probs.sum(axis=1) + g.unknown_prob, 1.0)


def test_a_three_class_head_is_its_own_groups() -> None:
    rng = np.random.default_rng(3)
    probs = softmax(rng.standard_normal((20, 3)) * 2)
    g = group_prediction(probs, list(GROUP_NAMES))
    np.testing.assert_allclose(g.group_probs, probs)
    assert g.group.tolist() == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose(g.confidence, probs.max(axis=1))
    assert not g.unknown_prob.any()


def test_ties_between_groups_go_to_the_lower_code() -> None:
    g = group_prediction(np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]), list(GROUP_NAMES))
    assert g.group.tolist() == [0, 1]


def test_group_prediction_checks_the_classes_against_the_head() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 9\), expected \(N, 3\)"):
        group_prediction(np.zeros((2, 9)), list(GROUP_NAMES))
    assert len(group_prediction(np.zeros((0, 9)), ACTIVITY_CLASSES)) == 0


# --- sessions: the real onnxruntime --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_predict_matches_numpy_forward_pass(
    tmp_path: Path, layout: Literal["conv1d", "conv2d"]
) -> None:
    tiny = install_tiny_model(tmp_path, layout=layout)
    model = ModelRegistry.discover(tmp_path).get("tiny-full")
    session = ModelSession(model.card, model.path, threads=1)
    x = windows(5)
    pred = session.predict(x)
    act, hr = tiny.logits(x)
    ph = softmax(hr)
    np.testing.assert_allclose(pred.activity_probs, softmax(act), atol=1e-5)
    np.testing.assert_allclose(pred.hr_bpm, ph @ (np.arange(200) + 30.0), atol=1e-3)
    np.testing.assert_allclose(pred.hr_entropy_bits, entropy_bits(ph), atol=1e-4)
    np.testing.assert_array_equal(pred.activity, act.argmax(axis=1))
    assert pred.hr_probs.shape == (5, 200)
    # One window at a time gives the same answers as the batch.
    single = session.predict(x[2:3])
    np.testing.assert_allclose(single.hr_bpm, pred.hr_bpm[2:3], atol=1e-6)


def test_session_checks_its_input(tmp_path: Path) -> None:
    install_tiny_model(tmp_path)
    model = ModelRegistry.discover(tmp_path).get("tiny-full")
    session = ModelSession(model.card, model.path)
    with pytest.raises(TypeError, match="float32"):
        session.predict(windows(1).astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(N, 4, 512\), got \(1, 4, 1, 512\)"):
        session.predict(windows(1).reshape(1, 4, 1, 512))


def test_session_refuses_a_model_whose_outputs_differ_from_its_card(tmp_path: Path) -> None:
    install_tiny_model(tmp_path)
    model = ModelRegistry.discover(tmp_path).get("tiny-full")
    card = model.card.model_copy(
        update={"outputs": OutputSpec(activity="activity", hr="hr_logits")}
    )
    with pytest.raises(InferenceError, match="its card names input 'x' and outputs"):
        ModelSession(card, model.path)


def test_session_translates_onnxruntime_load_errors(tmp_path: Path) -> None:
    install_tiny_model(tmp_path)
    model = ModelRegistry.discover(tmp_path).get("tiny-full")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(InferenceError, match="ONNX Runtime cannot load model tiny-full"):
        ModelSession(model.card, garbage)


def test_tiny_model_params_match_its_initializers(tmp_path: Path) -> None:
    tiny = install_tiny_model(tmp_path)
    graph = onnx.load(str(tmp_path / "tiny-full.onnx")).graph
    floats = [i for i in graph.initializer if i.data_type == TensorProto.FLOAT]
    assert sum(int(np.prod(i.dims)) for i in floats) == tiny.params
