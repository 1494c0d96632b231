"""inference: model cards, the registry of shipped models, and ONNX Runtime sessions.

Only onnxruntime and numpy at run time: torch and onnx belong to training/ and the tests.
"""

from gatewayd.inference.cards import (
    ACTIVITY_CLASSES,
    HR_BIN_COUNT,
    HR_BIN_LOW_BPM,
    HR_BIN_WIDTH_BPM,
    ModelCard,
    ModelCardError,
    card_path,
    read_card,
    sha256_of,
    verify,
    write_card,
)
from gatewayd.inference.registry import DEFAULT_MODELS_DIR, InstalledModel, ModelRegistry, Role
from gatewayd.inference.session import (
    InferenceError,
    ModelSession,
    Prediction,
    decode,
    entropy_bits,
    expected_bpm,
    hr_bin_centres,
    softmax,
)

__all__ = [
    "ACTIVITY_CLASSES",
    "DEFAULT_MODELS_DIR",
    "HR_BIN_COUNT",
    "HR_BIN_LOW_BPM",
    "HR_BIN_WIDTH_BPM",
    "InferenceError",
    "InstalledModel",
    "ModelCard",
    "ModelCardError",
    "ModelRegistry",
    "ModelSession",
    "Prediction",
    "Role",
    "card_path",
    "decode",
    "entropy_bits",
    "expected_bpm",
    "hr_bin_centres",
    "read_card",
    "sha256_of",
    "softmax",
    "verify",
    "write_card",
]
