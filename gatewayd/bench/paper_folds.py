"""Figure 4 held out: which fold models replay which sessions (`gatewayd-train --export-folds`).

A training run made with ``--export-folds`` holds, under its ``--out`` folder, every
cross-validation fold's models (``folds/fold-K/``, a models folder the emulator and the gateway
read with ``--models-dir``) and ``folds/folds.json``, the subjects (``source:subject``) each
fold held out. Replaying every session with the models of the fold that held its subject out
makes Figure 4 cross-subject: no model sees a subject it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

from gatewayd.config import InferenceConfig
from gatewayd.datasets.recording import Recording
from gatewayd.emulator.virtual import pick_wearable_model
from gatewayd.inference import InstalledModel, ModelRegistry

#: Under a training run's folder: the index `gatewayd-train --export-folds` writes.
FOLDS_INDEX: Final = Path("folds") / "folds.json"

T = TypeVar("T")


@dataclass(frozen=True)
class ModelGroup(Generic[T]):
    """Sessions replayed together by one pair of models (one end-to-end run)."""

    #: "shipped", or the fold's folder name ("fold-1", ...).
    name: str
    #: The models folder the emulator and the gateway read (None: the installed models).
    models_dir: Path | None
    wearable: InstalledModel
    gateway: InstalledModel | None
    #: The sessions, each with what the caller keeps beside it (where it was found).
    sessions: tuple[tuple[Recording, T], ...]


def gateway_model(registry: ModelRegistry) -> InstalledModel | None:
    """The gateway's model as `gatewayd eval` picks it: the daemon's default (`[inference]
    model`) when installed, else the first gateway model."""
    default = InferenceConfig().model
    if default in {m.model_id for m in registry.all()}:
        return registry.get(default)
    gateway = registry.for_role("gateway")
    return gateway[0] if gateway else None


def fold_groups(
    run: Path, sessions: Sequence[tuple[Recording, T]], pruning_pct: int
) -> tuple[list[ModelGroup[T]], list[Recording]] | str:
    """Each fold of ``run`` with the sessions whose subject it held out, and the sessions no
    fold held out; or why the fold models cannot be used (no index, a fold without models)."""
    index_path = run / FOLDS_INDEX
    if not index_path.is_file():
        return f"{index_path} does not exist (make it with gatewayd-train --export-folds)"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        folds = [(str(f["dir"]), [str(s) for s in f["held_out"]]) for f in index["folds"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{index_path}: not a folds index: {exc!r}"
    owner: dict[str, int] = {}
    for k, (_, held) in enumerate(folds):
        for subject in held:
            owner[subject] = k
    members: list[list[tuple[Recording, T]]] = [[] for _ in folds]
    unheld = []
    for recording, extra in sessions:
        fold = owner.get(recording.subject_key)
        if fold is None:
            unheld.append(recording)
        else:
            members[fold].append((recording, extra))
    groups = []
    for (folder, _), chosen in zip(folds, members, strict=True):
        if not chosen:
            continue
        directory = index_path.parent / folder
        registry = ModelRegistry.discover(directory)
        wearable = pick_wearable_model(registry, pruning_pct)
        if wearable is None:
            return f"{directory}: no wearable model pruned {pruning_pct} %"
        gateway = gateway_model(registry)
        groups.append(ModelGroup(folder, directory, wearable, gateway, tuple(chosen)))
    return groups, unheld


def seen_in_training(recordings: Sequence[Recording], model: InstalledModel) -> int:
    """How many measured recordings are of subjects the model was trained on (its card)."""
    ids = model.card.training.subject_ids
    return sum(
        1 for r in recordings if r.source != "synthetic" and r.subject in ids.get(r.source, [])
    )
