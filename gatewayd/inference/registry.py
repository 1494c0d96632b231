"""The shipped models: each ``<name>.onnx`` with a valid ``<name>.onnx.json`` card and sha256.

`ModelRegistry.discover` reads the cards of a folder (default: the package's gatewayd/models),
checks each model file against its card and indexes the good ones by model id. A bad card, a
missing file or a sha256 mismatch does not stop discovery: it becomes a `ModelCardError` in
``registry.errors`` (each message names the file) for the caller to report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gatewayd.inference.cards import ModelCard, ModelCardError, card_path, read_card, verify

__all__ = ["DEFAULT_MODELS_DIR", "InstalledModel", "ModelRegistry", "Role"]

Role = Literal["gateway", "wearable"]

#: Where `gatewayd` looks for models unless told otherwise: the package's own models folder
#: (package data, so it is there in a wheel install as in a checkout).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class InstalledModel:
    """A model whose file matches its card."""

    card: ModelCard
    path: Path

    @property
    def model_id(self) -> str:
        """Return the card's model id."""
        return self.card.model_id


def _load_one(card_file: Path, carded: set[Path]) -> InstalledModel:
    """Read one card and verify its model file; add the file to ``carded`` once it is named."""
    card = read_card(card_file)
    model_file = card_file.parent / card.file
    carded.add(model_file)
    if card_path(model_file) != card_file:
        raise ModelCardError(
            f"{card_file}: the card names file {card.file!r}; a card must be named after its"
            f" model ({card_path(model_file).name})"
        )
    verify(card, model_file)
    return InstalledModel(card, model_file)


class ModelRegistry:
    """The verified models of one folder, by model id."""

    def __init__(
        self,
        models: Iterable[InstalledModel],
        *,
        directory: Path,
        errors: Iterable[ModelCardError] = (),
    ) -> None:
        """Index ``models`` (ids must be unique); ``errors`` are the files that were refused."""
        self.directory = directory
        self._models: dict[str, InstalledModel] = {}
        for model in models:
            if model.model_id in self._models:
                raise ValueError(f"model id {model.model_id} given twice")
            self._models[model.model_id] = model
        self.errors: tuple[ModelCardError, ...] = tuple(errors)

    @classmethod
    def discover(cls, models_dir: Path | None = None) -> ModelRegistry:
        """Read every ``*.onnx.json`` card in ``models_dir`` and keep the models that verify."""
        directory = DEFAULT_MODELS_DIR if models_dir is None else Path(models_dir)
        if not directory.is_dir():
            return cls(
                (), directory=directory, errors=[ModelCardError(f"{directory}: no such folder")]
            )
        models: dict[str, InstalledModel] = {}
        errors: list[ModelCardError] = []
        carded: set[Path] = set()
        for card_file in sorted(directory.glob("*.onnx.json")):
            try:
                model = _load_one(card_file, carded)
            except ModelCardError as exc:
                errors.append(exc)
                continue
            if model.model_id in models:
                errors.append(
                    ModelCardError(
                        f"{card_file}: model id {model.model_id} is also used by"
                        f" {models[model.model_id].path.name}; ids must be unique"
                    )
                )
                continue
            models[model.model_id] = model
        for model_file in sorted(directory.glob("*.onnx")):
            if model_file not in carded:
                errors.append(
                    ModelCardError(
                        f"{model_file}: no model card ({card_path(model_file).name}); a model is"
                        " only used with its card"
                    )
                )
        return cls(models.values(), directory=directory, errors=errors)

    def __len__(self) -> int:
        """Return the number of verified models."""
        return len(self._models)

    def get(self, model_id: str) -> InstalledModel:
        """Return the model ``model_id``; ModelCardError lists the ids there are."""
        try:
            return self._models[model_id]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelCardError(
                f"no model {model_id!r} in {self.directory} (installed: {known})"
            ) from None

    def all(self) -> list[InstalledModel]:
        """Return every verified model, by role, then pruning, then id."""
        return sorted(
            self._models.values(),
            key=lambda m: (m.card.role, m.card.pruning_pct, m.model_id),
        )

    def for_role(self, role: Role) -> list[InstalledModel]:
        """Return the models meant for the gateway or for the wearable, least pruned first."""
        return [m for m in self.all() if m.card.role == role]
