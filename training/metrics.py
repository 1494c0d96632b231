"""Scores of activity-group predictions and heart-rate distributions, and temperature scaling.

Pure numpy (scipy for the one-dimensional temperature fit). Group codes are 0 rest, 1 light,
2 vigorous (`gatewayd.activity.GROUP_NAMES`); "moving" is light or vigorous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar

from gatewayd.inference.cards import HR_BIN_COUNT, HR_BIN_LOW_BPM

N_GROUPS: Final = 3
REST: Final = 0
#: Equal-width confidence bins of the expected calibration error and the reliability diagram.
ECE_BINS: Final = 15
#: Central intervals of the HR distribution whose coverage is checked.
HR_LEVELS: Final = (0.5, 0.8, 0.9)
_T_BOUNDS: Final = (math.log(0.05), math.log(20.0))


def confusion(
    true: npt.NDArray[np.int64], pred: npt.NDArray[np.int64], n: int = N_GROUPS
) -> npt.NDArray[np.int64]:
    """Return the (n, n) count matrix, rows true, columns predicted."""
    out = np.zeros((n, n), dtype=np.int64)
    np.add.at(out, (true, pred), 1)
    return out


def macro_f1(true: npt.NDArray[np.int64], pred: npt.NDArray[np.int64]) -> float | None:
    """Mean F1 over the groups that occur in ``true`` or ``pred`` (scikit-learn's default)."""
    if len(true) == 0:
        return None
    labels = np.union1d(true, pred)
    scores = []
    for g in labels:
        tp = float(np.sum((true == g) & (pred == g)))
        fp = float(np.sum((true != g) & (pred == g)))
        fn = float(np.sum((true == g) & (pred != g)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0)
    return float(np.mean(scores))


def group_scores(
    true: npt.NDArray[np.int64], pred: npt.NDArray[np.int64]
) -> dict[str, float | None]:
    """Group accuracy, rest-vs-moving accuracy and macro-F1 of labelled windows."""
    n = len(true)
    if n == 0:
        return {"windows": 0.0, "accuracy": None, "rest_vs_moving": None, "macro_f1": None}
    return {
        "windows": float(n),
        "accuracy": float(np.mean(true == pred)),
        "rest_vs_moving": float(np.mean((true == REST) == (pred == REST))),
        "macro_f1": macro_f1(true, pred),
        "rest_windows": float(np.sum(true == REST)),
    }


def softmax(logits: npt.NDArray[np.floating], temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """Softmax of ``logits / temperature`` along the last axis, float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def nll(logits: npt.NDArray[np.floating], labels: npt.NDArray[np.int64], t: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / t)."""
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def fit_temperature(logits: npt.NDArray[np.floating], labels: npt.NDArray[np.int64]) -> float:
    """Return the temperature in [0.05, 20] that minimises the NLL of ``labels``."""
    if len(labels) == 0:
        return 1.0
    res = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(res.x))


def reliability(
    probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], bins: int = ECE_BINS
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per confidence bin: mean confidence, accuracy (NaN if empty) and count."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        acc = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / count
    return mean_conf, acc, count.astype(np.int64)


def ece(
    probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], bins: int = ECE_BINS
) -> float:
    """Expected calibration error of the top-class confidence over equal-width bins."""
    if len(labels) == 0:
        return float("nan")
    conf, acc, count = reliability(probs, labels, bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(acc[used] - conf[used])) / count.sum())


def _hr_bins(ref_bpm: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    idx = np.rint(np.asarray(ref_bpm, dtype=np.float64) - HR_BIN_LOW_BPM)
    return np.clip(idx, 0, HR_BIN_COUNT - 1).astype(np.int64)


def hr_nll(
    hr_logits: npt.NDArray[np.floating], ref_bpm: npt.NDArray[np.floating], t: float = 1.0
) -> float:
    """Mean NLL of the 1-bpm bin holding each reference under softmax(hr_logits / t)."""
    return nll(hr_logits, _hr_bins(ref_bpm), t)


def fit_hr_temperature(
    hr_logits: npt.NDArray[np.floating], ref_bpm: npt.NDArray[np.floating]
) -> float:
    """Return the HR-head temperature that minimises `hr_nll`."""
    return fit_temperature(hr_logits, _hr_bins(ref_bpm))


def hr_coverage(
    hr_logits: npt.NDArray[np.floating],
    ref_bpm: npt.NDArray[np.floating],
    t: float = 1.0,
    levels: Sequence[float] = HR_LEVELS,
) -> dict[str, float]:
    """Share of references inside each central interval of the HR distribution (bins +-0.5)."""
    if len(ref_bpm) == 0:
        return {}
    cdf = np.cumsum(softmax(hr_logits, t), axis=1)
    ref = np.asarray(ref_bpm, dtype=np.float64)
    out: dict[str, float] = {}
    for level in levels:
        lo = np.argmax(cdf >= (1.0 - level) / 2.0, axis=1) + HR_BIN_LOW_BPM - 0.5
        hi = np.argmax(cdf >= (1.0 + level) / 2.0, axis=1) + HR_BIN_LOW_BPM + 0.5
        out[f"{round(level * 100)}%"] = float(np.mean((ref >= lo) & (ref <= hi)))
    return out
