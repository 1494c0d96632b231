"""Loss curves and the activity confusion matrix as PNG files.

A bare `matplotlib.figure.Figure` renders PNG through the Agg canvas: no pyplot, no global
backend state, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gatewayd.inference.cards import ACTIVITY_CLASSES
from training.train import CvResult, History


def plot_losses(result: CvResult, path: Path, final: History | None = None) -> Path:
    """Save the per-fold train/validation loss curves as a PNG."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for k, fold in enumerate(result.folds):
        epochs = range(1, len(fold.history.train) + 1)
        (line,) = ax.plot(epochs, fold.history.train, label=f"fold {k + 1} train")
        if fold.history.val:
            ax.plot(epochs, fold.history.val, "--", color=line.get_color(), label="held out")
    if final is not None:
        ax.plot(range(1, len(final.train) + 1), final.train, "k-", lw=2, label="final fit")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (activity CE + HR CE)")
    ax.set_title(f"Loss, {result.description}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(
    true: npt.NDArray[np.int64], pred: npt.NDArray[np.int64], path: Path, title: str
) -> Path:
    """Save the activity confusion matrix (rows: true, normalised per row) as a PNG."""
    n = len(ACTIVITY_CLASSES)
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    rows = counts.sum(1, keepdims=True)
    norm = counts / np.maximum(rows, 1)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(n), ACTIVITY_CLASSES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), ACTIVITY_CLASSES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
