"""One shipped model in ONNX Runtime, and the pure maths that turns its logits into answers.

`ModelSession` hides the model's input layout (Conv1d exports take (N, C, L), Conv2d exports
(N, C, 1, L)): callers always pass preprocessed windows, float32 (N, C, L), from the transform
the card names (`gatewayd.inference.analysis.model_input`; C x L is 7 x 256 for the shipped
models, `window_shape`). The heads are decoded in numpy by pure functions
(`softmax`, `expected_bpm`, `entropy_bits`, `decode`) that the tests check against arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gatewayd.errors import GatewayError
from gatewayd.inference.cards import ModelCard, OutputSpec

__all__ = [
    "InferenceError",
    "ModelSession",
    "Prediction",
    "decode",
    "entropy_bits",
    "expected_bpm",
    "hr_bin_centres",
    "softmax",
    "window_shape",
]

_FLOAT32: Final = np.dtype(np.float32)


class InferenceError(GatewayError):
    """A model could not be loaded into ONNX Runtime, or did not answer as its card says."""


@dataclass(frozen=True, eq=False)
class Prediction:
    """The decoded heads for a batch of N windows (all arrays have N rows)."""

    #: Softmax over the activity classes (card.outputs.activity_classes), (N, 9).
    activity_probs: npt.NDArray[np.float64]
    #: Softmax over the heart-rate bins, (N, 200).
    hr_probs: npt.NDArray[np.float64]
    #: Expected heart rate over the bins, bpm, (N,).
    hr_bpm: npt.NDArray[np.float64]
    #: Entropy of the heart-rate distribution in bits (0 = certain, log2(200) = uniform), (N,).
    hr_entropy_bits: npt.NDArray[np.float64]
    #: Index of the most probable activity class, (N,).
    activity: npt.NDArray[np.intp]
    #: Probability of that class, (N,).
    activity_confidence: npt.NDArray[np.float64]

    def __len__(self) -> int:
        """Return N, the number of windows."""
        return int(self.hr_bpm.shape[0])


def softmax(logits: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.float64]:
    """Numerically stable softmax along ``axis``, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=axis, keepdims=True)
    return out


def hr_bin_centres(spec: OutputSpec) -> npt.NDArray[np.float64]:
    """Centres of the heart-rate bins in bpm (default 30, 31, ..., 229)."""
    return spec.hr_bin_low_bpm + spec.hr_bin_width_bpm * np.arange(
        spec.hr_bin_count, dtype=np.float64
    )


def expected_bpm(
    probs: npt.NDArray[np.float64], centres: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Expected value of the heart rate over the bins: sum_k p_k * centre_k, (N,)."""
    out: npt.NDArray[np.float64] = probs @ centres
    return out


def entropy_bits(probs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Shannon entropy of each row in bits; 0 * log 0 counts as 0."""
    logs = np.log2(probs, out=np.zeros_like(probs), where=probs > 0.0)
    out: npt.NDArray[np.float64] = -(probs * logs).sum(axis=-1)
    return out


def decode(
    activity_logits: npt.ArrayLike, hr_logits: npt.ArrayLike, spec: OutputSpec
) -> Prediction:
    """Turn both heads' logits, (N, classes) and (N, bins), into a `Prediction`."""
    activity_probs = softmax(activity_logits)
    hr_probs = softmax(hr_logits)
    if activity_probs.ndim != 2 or activity_probs.shape[1] != len(spec.activity_classes):
        raise InferenceError(
            f"activity head has shape {activity_probs.shape}, expected"
            f" (N, {len(spec.activity_classes)}) as the model card says"
        )
    if hr_probs.shape != (activity_probs.shape[0], spec.hr_bin_count):
        raise InferenceError(
            f"heart-rate head has shape {hr_probs.shape}, expected"
            f" ({activity_probs.shape[0]}, {spec.hr_bin_count}) as the model card says"
        )
    activity = np.argmax(activity_probs, axis=1)
    return Prediction(
        activity_probs=activity_probs,
        hr_probs=hr_probs,
        hr_bpm=expected_bpm(hr_probs, hr_bin_centres(spec)),
        hr_entropy_bits=entropy_bits(hr_probs),
        activity=activity,
        activity_confidence=np.take_along_axis(activity_probs, activity[:, None], axis=1)[:, 0],
    )


class ModelSession:
    """A verified model file in an ONNX Runtime CPU session.

    ONNX Runtime's ``run`` is a blocking C++ call that holds the calling thread for the whole
    inference (it releases the GIL, but does not yield to an event loop): on the gateway it must
    run in a worker thread (the batching worker hands batches to it through an executor), never
    on the asyncio loop. Here, in ``gatewayd eval`` and ``gatewayd bench``, there is no loop and
    it is called directly.
    """

    def __init__(self, card: ModelCard, path: Path, threads: int = 1) -> None:
        """Load ``path`` (the file ``card`` describes) with ``threads`` intra-op threads."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.card = card
        self.path = path
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One model per session and no parallel branches worth a second pool.
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: Any = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph…)
            raise InferenceError(
                f"{path}: ONNX Runtime cannot load model {card.model_id}: {exc}"
            ) from exc
        self.window_shape = window_shape(card)
        self._input_shape = _input_shape(card)
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = {o.name for o in self._session.get_outputs()}
        wanted = {card.outputs.activity, card.outputs.hr}
        if inputs != [card.input.name] or not wanted <= outputs:
            raise InferenceError(
                f"{path}: model {card.model_id} has inputs {inputs} and outputs {sorted(outputs)},"
                f" but its card names input {card.input.name!r} and outputs {sorted(wanted)};"
                " re-export the model or fix its card"
            )
        self._output_names = [card.outputs.activity, card.outputs.hr]

    @property
    def model_id(self) -> str:
        """Return the card's model id."""
        return self.card.model_id

    def run_logits(
        self, x: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Run the model on (N, C, L) float32 windows; return (activity, hr) logits. Blocks."""
        batch = np.asarray(x)
        if batch.dtype != _FLOAT32:
            raise TypeError(f"model input must be float32, got {batch.dtype}")
        if batch.ndim != 3 or batch.shape[1:] != self.window_shape:
            c, n = self.window_shape
            raise ValueError(f"model input must have shape (N, {c}, {n}), got {batch.shape}")
        feed = np.ascontiguousarray(batch).reshape((batch.shape[0], *self._input_shape))
        try:
            activity, hr = self._session.run(self._output_names, {self.card.input.name: feed})
        except Exception as exc:  # onnxruntime's own error types; translate at the boundary
            raise InferenceError(f"model {self.model_id} failed on a batch: {exc}") from exc
        return np.asarray(activity, dtype=np.float32), np.asarray(hr, dtype=np.float32)

    def predict(self, x: npt.ArrayLike) -> Prediction:
        """Run the model on (N, C, L) float32 windows and decode both heads. Blocks."""
        activity, hr = self.run_logits(x)
        return decode(activity, hr, self.card.outputs)


def window_shape(card: ModelCard) -> tuple[int, int]:
    """(channels, samples) of one preprocessed window, as the card's input shape names them."""
    dims = [d for d in card.input.shape[1:] if isinstance(d, int)]
    if card.layout == "conv2d" and len(dims) == 3:
        del dims[1]  # the Conv2d export's height-1 axis: (C, 1, L)
    if len(dims) != 2:
        raise InferenceError(
            f"model {card.model_id}: input shape {card.input.shape} is not (N, C, L) or"
            " (N, C, 1, L)"
        )
    return dims[0], dims[1]


def _input_shape(card: ModelCard) -> tuple[int, ...]:
    """Per-window input shape for the card's layout: (C, L) or (C, 1, L)."""
    c, n = window_shape(card)
    return (c, 1, n) if card.layout == "conv2d" else (c, n)
