"""ONNX export (Conv1d and Conv2d layouts), int8 quantization, latency and model cards.

Exporter: torch >= 2.9 defaults `torch.onnx.export` to the torch.export-based ("dynamo")
exporter, which needs onnxscript. It is used here: it folds BatchNorm into the convolutions and
emits a clean graph (Conv, Clip, Add, ReduceMean, Gemm; no Identity/Constant clutter), and the
TorchScript exporter is deprecated (it warns on every call). The batch axis is dynamic
(``N``); the weights are stored inside the .onnx file (no external-data side file).

Layouts: ``conv1d`` takes x (N, C, 256); ``conv2d`` is the same weights as Conv2d with
kernels (1, k) and takes x (N, C, 1, 256), for runtimes whose 2D kernels are faster.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from onnxruntime import quantization as q
from torch import nn

from gatewayd.activity import GROUP_NAMES
from gatewayd.inference.cards import (
    Calibration,
    InputSpec,
    Metrics,
    ModelCard,
    OutputSpec,
    TrainingInfo,
    card_path,
    sha256_of,
    write_card,
)
from gatewayd.signals.preprocess import (
    MODEL_CHANNEL_NAMES,
    MODEL_CHANNELS,
    MODEL_RATE_HZ,
    MODEL_WINDOW_LEN,
    PREPROCESSING_ID,
    PREPROCESSING_V2,
    V2_CHANNELS,
)
from training.model import count_macs, count_params, hr_estimate_np, input_channels, to_conv2d

Layout = Literal["conv1d", "conv2d"]
OPSET: Final = 18
INPUT_NAME: Final = "x"
OUTPUT_NAMES: Final = ("activity_logits", "hr_logits")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter warns about its own deprecations (FutureWarning/DeprecationWarning from torch
    # internals) and logs missing torchvision ops: neither concerns this model.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


#: The model inputs a network can take, by input channels: (id on the card, channel names).
PREPROCESSING_BY_CHANNELS: Final = {
    MODEL_CHANNELS: (PREPROCESSING_ID, MODEL_CHANNEL_NAMES),
    V2_CHANNELS: (PREPROCESSING_V2, MODEL_CHANNEL_NAMES[:V2_CHANNELS]),
}


def input_shape(
    layout: Layout, batch: int | str = "N", channels: int = MODEL_CHANNELS
) -> list[int | str]:
    """Return the input shape of a layout."""
    if layout == "conv1d":
        return [batch, channels, MODEL_WINDOW_LEN]
    return [batch, channels, 1, MODEL_WINDOW_LEN]


def to_layout(x: npt.NDArray[np.float32], layout: Layout) -> npt.NDArray[np.float32]:
    """Reshape (N, C, 256) windows to a layout's input."""
    return x if layout == "conv1d" else x[:, :, None, :]


def export_onnx(model: nn.Module, path: Path, layout: Layout = "conv1d") -> Path:
    """Export ``model`` (Conv1d) to ``path`` in ``layout``, with a dynamic batch axis."""
    net = (to_conv2d(model) if layout == "conv2d" else model).eval()
    # Batch 2 in the example: torch.export specialises a dimension traced with size 1.
    example = torch.zeros(2, input_channels(model), MODEL_WINDOW_LEN)
    if layout == "conv2d":
        example = example.unsqueeze(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("N")}},
            opset_version=OPSET,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    onnx.checker.check_model(str(path))
    return path


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """Return a CPU onnxruntime session with ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_predict(
    path: Path, x: npt.NDArray[np.float32], layout: Layout, batch: int = 256
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Run windows (N, C, 256) through an ONNX file; return (activity, hr) logits."""
    sess = session(path, threads=0)
    acts, hrs = [], []
    for i in range(0, len(x), batch):
        a, h = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: to_layout(x[i : i + batch], layout)})
        acts.append(a)
        hrs.append(h)
    return np.concatenate(acts), np.concatenate(hrs)


def latency_ms(path: Path, layout: Layout, runs: int = 300, warmup: int = 20) -> float:
    """Median wall time in ms of one window (batch 1, one thread) over ``runs`` runs."""
    sess = session(path, threads=1)
    rng = np.random.default_rng(0)
    channels = int(sess.get_inputs()[0].shape[1])
    x = to_layout(rng.standard_normal((1, channels, MODEL_WINDOW_LEN), np.float32), layout)
    feed = {INPUT_NAME: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


class _Calibration(q.CalibrationDataReader):  # type: ignore[misc]  # untyped base
    def __init__(self, x: npt.NDArray[np.float32], layout: Layout, batch: int = 16) -> None:
        self._batches = [to_layout(x[i : i + batch], layout) for i in range(0, len(x), batch)]
        self._i = 0

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return {INPUT_NAME: self._batches[self._i - 1]}


def quantize_int8_static(
    fp32: Path, out: Path, calibration: npt.NDArray[np.float32], layout: Layout
) -> Path:
    """Static int8 (QDQ, u8 activations, s8 per-channel weights) calibrated on ``calibration``."""
    prepped = out.with_name(out.stem + ".pre.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q.quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
            q.quantize_static(
                str(prepped),
                str(out),
                _Calibration(calibration, layout),
                quant_format=q.QuantFormat.QDQ,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                per_channel=True,
                calibrate_method=q.CalibrationMethod.MinMax,
            )
    finally:
        prepped.unlink(missing_ok=True)
    return out


def quantize_int8_dynamic(fp32: Path, out: Path) -> Path:
    """Dynamic int8 (weights only, activations quantized at run time), for comparison."""
    prepped = out.with_name(out.stem + ".pre.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q.quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
            q.quantize_dynamic(str(prepped), str(out), weight_type=q.QuantType.QInt8)
    finally:
        prepped.unlink(missing_ok=True)
    return out


def opset_of(path: Path) -> int:
    """Return the default-domain opset of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


@dataclass(frozen=True)
class CardInfo:
    """What a card needs besides the file itself."""

    model_id: str
    version: str
    role: Literal["gateway", "wearable"]
    width: float
    pruning_pct: int
    training: TrainingInfo
    metrics: Metrics
    quantization: Literal["none", "int8-static"] = "none"
    calibration: Calibration | None = None


def write_model_card(model: nn.Module, path: Path, layout: Layout, info: CardInfo) -> ModelCard:
    """Write ``<path>.json`` describing the ONNX file at ``path`` (made from ``model``)."""
    channels = input_channels(model)
    preprocessing, names = PREPROCESSING_BY_CHANNELS[channels]
    card = ModelCard(
        model_id=info.model_id,
        version=info.version,
        file=path.name,
        sha256=sha256_of(path),
        role=info.role,
        width_multiplier=info.width,
        pruning_pct=info.pruning_pct,
        quantization=info.quantization,
        layout=layout,
        opset=opset_of(path),
        params=count_params(model),
        macs=count_macs(model),
        size_bytes=path.stat().st_size,
        input=InputSpec(
            shape=input_shape(layout, channels=channels),
            channels=list(names),
            rate_hz=MODEL_RATE_HZ,
            preprocessing=preprocessing,
        ),
        outputs=OutputSpec(activity_classes=list(GROUP_NAMES)),
        training=info.training,
        metrics=info.metrics,
        calibration=info.calibration,
    )
    write_card(card, card_path(path))
    return card


def torch_logits(
    model: nn.Module, x: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Run windows (N, C, 256) through the torch model in eval mode."""
    model.eval()
    with torch.no_grad():
        a, h = model(torch.from_numpy(np.ascontiguousarray(x)))
    return a.numpy(), h.numpy()


def max_abs_diff(model: nn.Module, path: Path, x: npt.NDArray[np.float32], layout: Layout) -> float:
    """Return the largest |torch - onnxruntime| over both heads' logits."""
    ta, th = torch_logits(model, x)
    oa, oh = onnx_predict(path, x, layout)
    return float(max(np.abs(ta - oa).max(), np.abs(th - oh).max()))


def agreement(
    a: Sequence[npt.NDArray[np.float32]], b: Sequence[npt.NDArray[np.float32]]
) -> dict[str, float]:
    """Compare two models' (activity, hr) logits: argmax agreement and HR estimate difference."""
    act = float(np.mean(a[0].argmax(1) == b[0].argmax(1)))
    hr_diff = float(np.mean(np.abs(hr_estimate_np(a[1]) - hr_estimate_np(b[1]))))
    return {"activity_argmax_agreement": act, "hr_mean_abs_diff_bpm": hr_diff}
