"""Figure 6 of `gatewayd bench paper`: training loss curves, from a training run's own log.

`gatewayd-train` writes every per-epoch loss to its ``--out`` folder's history.json (per
cross-validation fold: the full model's and each pruned copy's train and held-out loss; the
final fits' train loss) and describes the run in cv.json (command, datasets, synthetic or not).
`loss_curves` reads the curves out of that JSON (pure); `read_run` reads the two files;
`tiny_training_run` runs the smallest useful training run (`--quick` without ``--run``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from gatewayd.bench.paper_common import markdown_table, read_run_json

__all__ = [
    "TINY_TRAINING_ARGS",
    "Curve",
    "LossFigure",
    "format_losses",
    "loss_curves",
    "plot_losses",
    "read_run",
    "tiny_training_run",
    "training_available",
]

#: `--quick` without ``--run``: two synthetic subjects of two minutes, left out one at a time,
#: three epochs of a quarter-width model and two of its 40 % pruned copy (about 10 s here).
TINY_TRAINING_ARGS: Final = (
    "--synthetic-subjects", "2", "--synthetic-minutes", "2", "--folds", "0", "--epochs", "3",
    "--prune", "40", "--prune-epochs", "2", "--width", "0.25", "--seed", "0", "--no-cache",
)  # fmt: skip
#: Longest a tiny training run may take before it is given up.
TINY_TRAINING_TIMEOUT_S: Final = 600.0


@dataclass(frozen=True)
class Curve:
    """One model's losses: per fold (train, held out) and the final fit's train loss."""

    name: str
    folds_train: list[list[float]] = field(default_factory=list)
    folds_val: list[list[float]] = field(default_factory=list)
    final_train: list[float] = field(default_factory=list)

    def mean(self, which: str) -> list[float]:
        """The fold mean per epoch of ``train`` or ``val`` (epochs every fold has)."""
        runs = [r for r in (self.folds_train if which == "train" else self.folds_val) if r]
        if not runs:
            return []
        epochs = min(len(r) for r in runs)
        return [float(v) for v in np.mean([r[:epochs] for r in runs], axis=0)]

    def to_json(self) -> dict[str, Any]:
        """The curve as JSON."""
        return {
            "folds": [
                {"train": t, "val": v}
                for t, v in zip(self.folds_train, self.folds_val, strict=True)
            ],
            "train_mean": self.mean("train"),
            "val_mean": self.mean("val"),
            "final_train": self.final_train,
        }


@dataclass(frozen=True)
class LossFigure:
    """The curves of one training run, and what the run was."""

    curves: list[Curve]
    source: str
    command: str | None = None
    datasets: list[str] = field(default_factory=list)
    synthetic: bool | None = None
    cross_validation: str | None = None
    #: Why this run: ``--run`` given, or the tiny run `--quick` did itself.
    origin: str = "--run"

    def to_json(self) -> dict[str, Any]:
        """The figure's data as JSON (docs/paper.md)."""
        return {
            "artefact": "fig6",
            "status": "done",
            "source": self.source,
            "origin": self.origin,
            "run": {
                "command": self.command,
                "datasets": self.datasets,
                "synthetic": self.synthetic,
                "cross_validation": self.cross_validation,
            },
            "curves": {c.name: c.to_json() for c in self.curves},
        }


def _floats(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    return [float(v) for v in values]


def loss_curves(history: Mapping[str, Any]) -> list[Curve]:
    """The curves in a history.json: the full model first, then each pruned level in order.

    ValueError when it holds no fold and no final fit (not a training run's history).
    """
    folds = history.get("folds")
    if not isinstance(folds, list):
        folds = []
    names = ["full"]
    for fold in folds:
        for level in fold.get("pruned", {}) if isinstance(fold, dict) else {}:
            if level not in names:
                names.append(level)
    for key in history:
        if key.startswith("final_") and key[6:] not in names:
            names.append(key[6:])
    curves = []
    for name in sorted(names, key=lambda n: (n != "full", int(n[1:]) if n[1:].isdigit() else 0)):
        train, val = [], []
        for fold in folds:
            part = fold.get("model") if name == "full" else fold.get("pruned", {}).get(name)
            if isinstance(part, dict):
                train.append(_floats(part.get("train")))
                val.append(_floats(part.get("val")))
        final = history.get("final" if name == "full" else f"final_{name}")
        curves.append(
            Curve(
                name=name,
                folds_train=train,
                folds_val=val,
                final_train=_floats(final.get("train")) if isinstance(final, dict) else [],
            )
        )
    curves = [c for c in curves if c.folds_train or c.final_train]
    if not curves:
        raise ValueError("no loss curve in it (no 'folds' and no 'final' fit)")
    return curves


def read_run(run: Path, *, origin: str = "--run") -> LossFigure:
    """The loss curves of a training run's ``--out`` folder (history.json, and cv.json when
    there is one). ValueError naming the file when it is missing or not a history. Blocks."""
    path = run / "history.json"
    history = read_run_json(path)
    try:
        curves = loss_curves(history if isinstance(history, dict) else {})
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    cv: dict[str, Any] = {}
    try:
        loaded = json.loads((run / "cv.json").read_text(encoding="utf-8"))
        cv = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        cv = {}
    synthetic = cv.get("synthetic")
    return LossFigure(
        curves=curves,
        source=str(run),
        command=cv.get("command"),
        datasets=[str(d) for d in cv.get("datasets", [])],
        synthetic=bool(synthetic) if synthetic is not None else None,
        cross_validation=cv.get("cross_validation"),
        origin=origin,
    )


def training_available() -> str | None:
    """None when this Python can train (the train extra: PyTorch), else why not."""
    for module in ("torch", "training"):
        if importlib.util.find_spec(module) is None:
            return f"no {module!r} module here (the train extra: pip install -e '.[train]')"
    return None


def tiny_training_run(out: Path, log: Path, args: Sequence[str] = TINY_TRAINING_ARGS) -> None:
    """Run `gatewayd-train` with ``args`` (`TINY_TRAINING_ARGS`) into ``out``, its output into
    ``log``. RuntimeError (with the log's path) when it fails or times out. Blocks for about 10 s.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GATEWAYD_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "training", *args, "--out", str(out)]
    with log.open("w", encoding="utf-8") as sink:
        try:
            done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=TINY_TRAINING_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"the tiny training run took over {TINY_TRAINING_TIMEOUT_S:.0f} s (see {log})"
            ) from None
    if done.returncode != 0:
        raise RuntimeError(f"the tiny training run exited {done.returncode} (see {log})")


def _last(values: Sequence[float]) -> str:
    return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "-"


def data_label(figure: LossFigure) -> str:
    """What the run trained on, for titles: says ``synthetic`` when any of it was."""
    if figure.synthetic is None:
        return "training data not described (no cv.json)"
    if figure.synthetic and all("synthetic" in d for d in figure.datasets):
        return "synthetic data"
    return "real data with synthetic subjects" if figure.synthetic else "real data"


def format_losses(figure: LossFigure) -> str:
    """Figure 6's Markdown: the run, and each curve's first and last loss."""
    rows = [
        [
            c.name,
            str(len(c.folds_train)),
            str(max((len(t) for t in c.folds_train), default=0)),
            _last(c.mean("train")),
            _last(c.mean("val")),
            _last(c.final_train),
        ]
        for c in figure.curves
    ]
    lines = [
        "## Figure 6: training loss curves",
        "",
        f"From `{figure.source}/history.json` ({figure.origin}); {data_label(figure)}.",
    ]
    if figure.command:
        lines.append(f"Command: `{figure.command}`.")
    if figure.datasets:
        lines.append(f"Data: {'; '.join(figure.datasets)}.")
    if figure.cross_validation:
        lines.append(f"Cross-validation: {figure.cross_validation}.")
    lines += [
        "",
        "Loss = activity cross-entropy + HR cross-entropy; a pruned copy's train loss includes"
        " its distillation term. Fold means over the folds' epochs; first -> last epoch.",
        "",
        *markdown_table(
            ("model", "folds", "epochs", "train (fold mean)", "held out (fold mean)", "final fit"),
            rows,
        ),
        "",
    ]
    return "\n".join(lines)


def plot_losses(figure: LossFigure, path: Path) -> Path:
    """fig6_loss.png: train and held-out loss per epoch of every model (fold mean, the folds'
    range shaded; a pruned copy's fine-tuning epochs after the full model's), and the final
    fits. Needs matplotlib."""
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, 2)
    # A pruned copy is fine-tuned from the trained full model: its epochs come after the full
    # model's (in each fold, and in the final fits).
    full = next((c for c in figure.curves if c.name == "full"), None)
    after_folds = len(full.mean("train")) if full else 0
    after_final = len(full.final_train) if full else 0
    for k, curve in enumerate(figure.curves):
        colour = f"C{k % 10}"
        pruned = curve is not full
        for ax, which in zip(axes, ("train", "val"), strict=True):
            runs = [r for r in (curve.folds_train if which == "train" else curve.folds_val) if r]
            mean = curve.mean(which)
            if not mean:
                continue
            x = np.arange(1, len(mean) + 1) + (after_folds if pruned else 0)
            ax.plot(x, mean, ".-", color=colour, label=f"{curve.name} (fold mean)")
            if len(runs) > 1:
                trimmed = np.array([r[: len(mean)] for r in runs])
                ax.fill_between(x, trimmed.min(0), trimmed.max(0), color=colour, alpha=0.15)
        if curve.final_train:
            x = np.arange(1, len(curve.final_train) + 1) + (after_final if pruned else 0)
            axes[0].plot(x, curve.final_train, "x--", color=colour, label=f"{curve.name} final fit")
    axes[0].set_title("Train loss (pruned: fine-tuning, incl. distillation)", fontsize=9)
    axes[1].set_title("Held-out loss (subjects left out)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch (a pruned copy's after the full model's)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
        if not ax.lines:
            ax.text(0.5, 0.5, "no curve", ha="center", va="center", transform=ax.transAxes)
    for ax in axes:
        ax.set_ylabel("loss (activity CE + HR CE)")
    values = [v for c in figure.curves for r in c.folds_train + c.folds_val for v in r]
    if values and not all(math.isfinite(v) for v in values):
        fig.text(0.5, 0.01, "some losses are not finite", ha="center", fontsize=8)
    fig.suptitle(
        f"gatewayd bench paper: Figure 6, training loss ({data_label(figure)})", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
