"""Model cards: what a shipped ONNX file is, what it expects, how it was made and how good it is.

One JSON file next to each model (``<file>.json``), validated strictly like the configuration.
Training writes them (training/export.py); the gateway reads them (registry.py) and refuses a
model whose file does not match its card's sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gatewayd.errors import GatewayError

CARD_FORMAT_VERSION: Final = 1
#: The default activity head's classes in order: PPG-DaLiA's activity ids 0-8, which the shipped
#: models were trained on. A card names its own classes; the gateway maps each to an activity
#: group by name (`gatewayd.inference.groups`).
ACTIVITY_CLASSES: Final = (
    "transient",
    "sitting",
    "stairs",
    "table soccer",
    "cycling",
    "driving",
    "lunch",
    "walking",
    "working",
)
#: Heart-rate bins of the HR head: 1 bpm wide, centres 30..229 bpm (200 bins).
HR_BIN_LOW_BPM: Final = 30
HR_BIN_COUNT: Final = 200
HR_BIN_WIDTH_BPM: Final = 1.0


class ModelCardError(GatewayError):
    """A model card is missing, malformed, or does not match its model file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The model's input tensor and the preprocessing that produces it."""

    name: str = "x"
    #: ["N", C, L] for Conv1d exports, ["N", C, 1, L] for the Conv2d layout (C channels, L
    #: samples per window: 4 x 512 for preprocessing v1, 7 x 256 for v2, 15 x 256 for v3).
    shape: list[int | str]
    dtype: Literal["float32"] = "float32"
    channels: list[str] = Field(default_factory=lambda: ["bvp", "acc_x", "acc_y", "acc_z"])
    rate_hz: int = 64
    window_s: float = 8.0
    #: The one preprocessing function, shared by training, gateway and wearable; v3 models name
    #: `gatewayd.signals.preprocess.PREPROCESSING_ID`, v2 models its `PREPROCESSING_V2`.
    preprocessing: str = "gatewayd.signals.preprocess_window"


class OutputSpec(_Strict):
    """The model's outputs: activity logits and heart-rate logits over bins."""

    activity: str = "activity_logits"
    activity_classes: list[str] = Field(default_factory=lambda: list(ACTIVITY_CLASSES))
    hr: str = "hr_logits"
    hr_bin_low_bpm: float = HR_BIN_LOW_BPM
    hr_bin_width_bpm: float = HR_BIN_WIDTH_BPM
    hr_bin_count: int = HR_BIN_COUNT


class TrainingInfo(_Strict):
    """Where the weights came from; synthetic data is always named as such."""

    datasets: list[str]
    synthetic: bool
    subjects: int
    windows: int
    cross_validation: str
    seed: int
    epochs: int
    teacher: str | None = None
    notes: str = ""
    #: The subject ids of every source trained on, e.g. {"troika": ["01", "02"]}.
    subject_ids: dict[str, list[str]] = Field(default_factory=dict)
    #: The held-out subject keys (``source:subject``) of each cross-validation fold.
    folds: list[list[str]] = Field(default_factory=list)


class Metrics(_Strict):
    """Held-out figures, with the data they were measured on."""

    evaluated_on: str
    #: Top-1 over the activity head's classes (for group heads: the group accuracy).
    activity_top1: float | None = None
    hr_mae_bpm: float | None = None
    activity_macro_f1: float | None = None
    #: Rest against light + vigorous, from the group head.
    rest_vs_moving_accuracy: float | None = None
    per_fold: list[dict[str, float]] = Field(default_factory=list)
    #: The held-out figures of each source, keyed by `Recording.source`.
    per_dataset: dict[str, dict[str, float | None]] = Field(default_factory=dict)


class Calibration(_Strict):
    """Temperature scaling of the heads: probabilities are softmax(logits / temperature).

    Fitted on held-out (out-of-fold) predictions only, never on the windows the model was
    trained on. The exported graph outputs raw logits: the runtime divides by the temperature.
    """

    method: Literal["temperature"] = "temperature"
    activity_temperature: float = Field(gt=0)
    hr_temperature: float | None = Field(default=None, gt=0)
    fitted_on: str
    #: Expected calibration error of the activity confidence (equal-width bins), held out.
    activity_ece_before: float | None = None
    activity_ece_after: float | None = None
    ece_bins: int = 15
    #: Share of held-out references inside the HR head's central intervals, after scaling.
    hr_interval_coverage: dict[str, float] = Field(default_factory=dict)


class ModelCard(_Strict):
    """One model file's card."""

    card_version: Literal[1] = CARD_FORMAT_VERSION
    model_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")
    version: str
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["gateway", "wearable"]
    architecture: str = "mobilenetv2-1d"
    width_multiplier: float
    pruning_pct: int = Field(ge=0, le=100)
    quantization: Literal["none", "int8-static"] = "none"
    layout: Literal["conv1d", "conv2d"] = "conv1d"
    opset: int
    params: int
    macs: int
    size_bytes: int
    input: InputSpec
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    training: TrainingInfo
    metrics: Metrics
    calibration: Calibration | None = None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(model_file: Path) -> Path:
    """Where a model's card lives: ``model.onnx`` -> ``model.onnx.json``."""
    return model_file.with_name(model_file.name + ".json")


def read_card(path: Path) -> ModelCard:
    """Read and validate one card; ModelCardError names the file and the problem."""
    try:
        return ModelCard.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise ModelCardError(f"{path}: no model card") from exc
    except (OSError, ValueError, ValidationError) as exc:
        raise ModelCardError(f"{path}: not a valid model card: {exc}") from exc


def write_card(card: ModelCard, path: Path) -> None:
    """Write a card as stable, readable JSON."""
    path.write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")


def verify(card: ModelCard, model_file: Path) -> None:
    """Raise ModelCardError unless ``model_file`` is the file the card describes."""
    if not model_file.is_file():
        raise ModelCardError(f"{model_file}: model file missing (its card is {card.model_id})")
    actual = sha256_of(model_file)
    if actual != card.sha256:
        raise ModelCardError(
            f"{model_file}: sha256 {actual[:12]}… does not match its card ({card.sha256[:12]}…); "
            "the file was changed or truncated — reinstall it or re-export the model"
        )
