"""Loss curves, confusion matrices and reliability diagrams as PNG files.

A bare `matplotlib.figure.Figure` renders PNG through the Agg canvas: no pyplot, no global
backend state, no display needed. Every plot is drawn from plain lists and arrays that are also
written to the run's JSON, so it can be redrawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gatewayd.activity import GROUP_NAMES


def plot_losses(
    folds: Sequence[Mapping[str, list[float]]],
    path: Path,
    title: str,
    final: Mapping[str, list[float]] | None = None,
    pruned: Mapping[str, Sequence[Mapping[str, list[float]]]] | None = None,
) -> Path:
    """Save per-fold training and held-out loss curves (and the final fit's) as a PNG.

    ``folds``: one {"train": [...], "val": [...]} per fold; ``pruned``: the same per pruned
    model ("p20": [...]), drawn in a second panel as the mean over folds.
    """
    panels = 2 if pruned else 1
    fig = Figure(figsize=(7 * panels, 4.5))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    for k, fold in enumerate(folds):
        epochs = range(1, len(fold["train"]) + 1)
        (line,) = ax.plot(epochs, fold["train"], ".-", label=f"fold {k + 1} train")
        if fold.get("val"):
            ax.plot(epochs, fold["val"], ".--", color=line.get_color(), label="held out")
    if final is not None and final.get("train"):
        ax.plot(range(1, len(final["train"]) + 1), final["train"], "k.-", lw=2, label="final fit")
    ax.set_title(f"Full model: {title}", fontsize=9)
    if pruned:
        ax2 = axes[1]
        for name, runs in pruned.items():
            train = np.mean([r["train"] for r in runs], axis=0)
            epochs = range(1, len(train) + 1)
            (line,) = ax2.plot(epochs, train, ".-", label=f"{name} train (fold mean)")
            if all(r.get("val") for r in runs):
                val = np.mean([r["val"] for r in runs], axis=0)
                ax2.plot(epochs, val, ".--", color=line.get_color(), label=f"{name} held out")
        ax2.set_title("Pruned models, distillation fine-tuning (train loss incl. KD)", fontsize=9)
    for a in axes:
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_ylabel("loss (activity CE + HR CE)")
        a.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_confusions(matrices: Mapping[str, npt.NDArray[np.int64]], path: Path, title: str) -> Path:
    """Save one row-normalised confusion matrix (rows true) per method, side by side."""
    n = len(GROUP_NAMES)
    fig = Figure(figsize=(3.8 * len(matrices), 4.0))
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (name, counts) in zip(axes, matrices.items(), strict=True):
        rows = counts.sum(1, keepdims=True)
        norm = counts / np.maximum(rows, 1)
        ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(n):
            for j in range(n):
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{counts[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    fontsize=7, color=colour,
                )  # fmt: skip
        ax.set_xticks(range(n), GROUP_NAMES, fontsize=8)
        ax.set_yticks(range(n), GROUP_NAMES, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_reliability(
    curves: Mapping[
        str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]
    ],
    path: Path,
    title: str,
) -> Path:
    """Save a reliability diagram: accuracy against confidence per bin, one line per curve."""
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="perfect calibration")
    for name, (conf, acc, count) in curves.items():
        used = count > 0
        ax.plot(conf[used], acc[used], "o-", label=name, markersize=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-group probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
