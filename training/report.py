"""From out-of-fold outputs to the cross-subject tables: per dataset, pruning, calibration.

Everything here reads `CvResult`'s out-of-fold arrays: each window's outputs come from the fold
whose models never saw its subject. Nothing is tuned on these figures; the temperatures are
fitted on held-out outputs and, to report their effect, scored nested (the temperature applied
to fold k is fitted on the other folds' held-out outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.activity import GROUP_NAMES
from gatewayd.eval import ACC_MOTION_THRESHOLD
from training.data import NO_ACTIVITY, WindowSet
from training.metrics import (
    ECE_BINS,
    ece,
    fit_hr_temperature,
    fit_temperature,
    group_scores,
    hr_coverage,
    hr_nll,
    nll,
    reliability,
    softmax,
)
from training.model import hr_estimate_np
from training.train import CvResult

REST: Final = 0
#: The ACC-threshold baseline in g: `gatewayd eval`'s 15/64 g RMS motion, "moving" at or above.
ACC_THRESHOLD_G: Final = ACC_MOTION_THRESHOLD / 64.0
#: The pooled rows of the per-dataset table besides the sources themselves.
REAL: Final = "real (all measured sets)"
ALL: Final = "all (measured + synthetic)"


def _groups(ws: WindowSet) -> dict[str, npt.NDArray[np.bool_]]:
    names = ws.source_names()
    out = {str(s): names == s for s in ws.sources}
    out[REAL] = names != "synthetic"
    out[ALL] = np.ones(len(ws), dtype=np.bool_)
    return out


def predictions(cv: CvResult) -> dict[str, npt.NDArray[np.int64]]:
    """Return every method's held-out group prediction per window (N,)."""
    out = {
        f"model_p{p}" if p else "model": a.argmax(1).astype(np.int64)
        for p, a in cv.act_logits.items()
    }
    for name, probs in cv.baseline_probs.items():
        out[name] = probs.argmax(1).astype(np.int64)
    out["majority"] = cv.majority
    return out


def per_dataset(cv: CvResult, ws: WindowSet) -> dict[str, dict[str, Any]]:
    """Per source (and pooled): every method's group scores and each model's HR MAE."""
    preds = predictions(cv)
    labelled = ws.activity != NO_ACTIVITY
    moving_by_acc = ws.spread_g >= ACC_THRESHOLD_G
    has_ref = ws.has_bvp & np.isfinite(ws.hr_bpm)
    hr_est = {p: hr_estimate_np(h) for p, h in cv.hr_logits.items()}
    table: dict[str, dict[str, Any]] = {}
    for name, sel in _groups(ws).items():
        if not sel.any():
            continue
        lab = sel & labelled
        true = ws.activity[lab]
        row: dict[str, Any] = {
            "windows": int(sel.sum()),
            "labelled_windows": int(lab.sum()),
            "group_counts": {g: int(np.sum(true == i)) for i, g in enumerate(GROUP_NAMES)},
            "methods": {m: group_scores(true, p[lab]) for m, p in preds.items()},
        }
        if lab.any():
            rvm = float(np.mean(moving_by_acc[lab] == (true != REST)))
            row["methods"]["acc_threshold"] = {"rest_vs_moving": rvm, "windows": float(lab.sum())}
        ref = sel & has_ref
        row["hr_windows"] = int(ref.sum())
        row["hr_mae_bpm"] = {
            (f"model_p{p}" if p else "model"): (
                float(np.mean(np.abs(est[ref] - ws.hr_bpm[ref]))) if ref.any() else None
            )
            for p, est in hr_est.items()
        }
        table[name] = row
    return table


def pooled_row(table: dict[str, dict[str, Any]]) -> str:
    """Return the pooled row the headline figures come from: measured sets if there are any."""
    return REAL if REAL in table and table[REAL]["labelled_windows"] else ALL


def pruning_table(
    table: dict[str, dict[str, Any]], pcts: Sequence[int]
) -> list[dict[str, float | int | None]]:
    """Return per pruning level the pooled held-out figures and their change from the full model."""
    pooled = pooled_row(table)
    methods = table[pooled]["methods"]
    full = methods["model"]
    rows: list[dict[str, float | int | None]] = []
    for pct in (0, *pcts):
        key = f"model_p{pct}" if pct else "model"
        s = methods[key]
        rows.append(
            {
                "pruning_pct": pct,
                "accuracy": s["accuracy"],
                "accuracy_delta_points": _points(s["accuracy"], full["accuracy"]),
                "macro_f1": s["macro_f1"],
                "rest_vs_moving": s["rest_vs_moving"],
                "hr_mae_bpm": table[pooled]["hr_mae_bpm"][key],
                "pooled_over": pooled,
            }
        )
    return rows


def _points(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 100.0 * (a - b)


@dataclass(frozen=True)
class Calibrated:
    """One model's calibration: temperatures, and held-out reliability before and after."""

    activity_temperature: float
    hr_temperature: float | None
    summary: dict[str, Any]
    #: Reliability bins (mean confidence, accuracy, count) before and after (nested).
    before: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]
    after: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]


def calibrate(cv: CvResult, ws: WindowSet, pct: int = 0) -> Calibrated:
    """Fit the temperatures of one model on held-out outputs; score them nested by fold."""
    logits = cv.act_logits[pct].astype(np.float64)
    hr_logits = cv.hr_logits[pct].astype(np.float64)
    lab = ws.activity != NO_ACTIVITY
    ref = ws.has_bvp & np.isfinite(ws.hr_bpm)
    real = ws.source_names() != "synthetic"
    nested_act = np.empty_like(logits)
    nested_hr = np.empty_like(hr_logits)
    fold_t: list[dict[str, float]] = []
    for k in range(len(cv.folds)):
        here = cv.fold_of == k
        other = ~here
        t = fit_temperature(logits[other & lab], ws.activity[other & lab])
        t_hr = fit_hr_temperature(hr_logits[other & ref], ws.hr_bpm[other & ref])
        nested_act[here] = logits[here] / t
        nested_hr[here] = hr_logits[here] / t_hr
        fold_t.append({"activity": t, "hr": t_hr})
    t_all = fit_temperature(logits[lab], ws.activity[lab])
    t_hr_all = fit_hr_temperature(hr_logits[ref], ws.hr_bpm[ref])
    y = ws.activity[lab]
    p_before = softmax(logits[lab])
    p_after = softmax(nested_act[lab])
    summary: dict[str, Any] = {
        "activity_temperature": t_all,
        "hr_temperature": t_hr_all,
        "per_fold_temperatures": fold_t,
        "ece_bins": ECE_BINS,
        "activity": {
            "windows": int(lab.sum()),
            "ece_before": ece(p_before, y),
            "ece_after": ece(p_after, y),
            "nll_before": nll(logits[lab], y),
            "nll_after": nll(nested_act[lab], y),
            "ece_before_real": ece(softmax(logits[lab & real]), ws.activity[lab & real]),
            "ece_after_real": ece(softmax(nested_act[lab & real]), ws.activity[lab & real]),
            "mean_confidence_before": float(p_before.max(1).mean()) if len(y) else None,
            "mean_confidence_after": float(p_after.max(1).mean()) if len(y) else None,
            "accuracy": float(np.mean(p_before.argmax(1) == y)) if len(y) else None,
        },
        "hr": {
            "windows": int(ref.sum()),
            "nll_before": hr_nll(hr_logits[ref], ws.hr_bpm[ref]),
            "nll_after": hr_nll(nested_hr[ref], ws.hr_bpm[ref]),
            "coverage_before": hr_coverage(hr_logits[ref], ws.hr_bpm[ref]),
            "coverage_after": hr_coverage(nested_hr[ref], ws.hr_bpm[ref]),
        },
    }
    return Calibrated(
        activity_temperature=t_all,
        hr_temperature=t_hr_all if ref.any() else None,
        summary=summary,
        before=reliability(p_before, y),
        after=reliability(p_after, y),
    )


def markdown_tables(
    table: dict[str, dict[str, Any]], pcts: Sequence[int], leakage: dict[str, Any]
) -> str:
    """Return the per-dataset, pruning and leakage tables as Markdown."""

    def f(v: Any, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| dataset | labelled windows (rest/light/vig.) | model acc | HGB acc | logistic acc "
        "| majority acc | model rest-vs-moving | HGB r-v-m | logistic r-v-m | majority r-v-m "
        "| ACC threshold r-v-m | model macro-F1 | HGB macro-F1 | logistic macro-F1 | HR MAE bpm |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in table.items():
        c = row["group_counts"]

        def get(method: str, score: str, m: dict[str, Any] = row["methods"]) -> Any:
            return m.get(method, {}).get(score)

        lines.append(
            f"| {name} | {row['labelled_windows']} ({c['rest']}/{c['light']}/{c['vigorous']}) "
            f"| {f(get('model', 'accuracy'))} | {f(get('hgb', 'accuracy'))} "
            f"| {f(get('logistic', 'accuracy'))} | {f(get('majority', 'accuracy'))} "
            f"| {f(get('model', 'rest_vs_moving'))} | {f(get('hgb', 'rest_vs_moving'))} "
            f"| {f(get('logistic', 'rest_vs_moving'))} | {f(get('majority', 'rest_vs_moving'))} "
            f"| {f(get('acc_threshold', 'rest_vs_moving'))} | {f(get('model', 'macro_f1'))} "
            f"| {f(get('hgb', 'macro_f1'))} | {f(get('logistic', 'macro_f1'))} "
            f"| {f(row['hr_mae_bpm'].get('model'), '.2f')} ({row['hr_windows']}) |"
        )
    lines += [
        "",
        f"| pruned | accuracy ({pooled_row(table)}) | change, points | macro-F1 "
        "| rest-vs-moving | HR MAE |",
    ]
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for r in pruning_table(table, pcts):
        delta = f(r["accuracy_delta_points"], "+.1f")
        lines.append(
            f"| {r['pruning_pct']} % | {f(r['accuracy'])} | {delta} | {f(r['macro_f1'])} "
            f"| {f(r['rest_vs_moving'])} | {f(r['hr_mae_bpm'], '.2f')} |"
        )
    lines += [
        "",
        "| rest windows of | n | predicted rest | BVP of a vigorous window: changed | → vigorous "
        "| control (another rest BVP): changed | → vigorous "
        "| fast synthetic pulse: changed | → vigorous | control (slow synthetic): changed "
        "| → vigorous | HR before → after (real swap) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in leakage.items():
        lines.append(
            f"| {name} | {r['rest_windows']:.0f} | {f(r['predicted_rest_before'])} "
            f"| {f(r['real_changed'])} | {f(r['real_to_vigorous'])} "
            f"| {f(r.get('control_real_changed'))} | {f(r.get('control_real_to_vigorous'))} "
            f"| {f(r['synthetic_pulse_changed'])} | {f(r['synthetic_pulse_to_vigorous'])} "
            f"| {f(r.get('control_synthetic_changed'))} "
            f"| {f(r.get('control_synthetic_to_vigorous'))} "
            f"| {f(r['real_hr_before_bpm'], '.0f')} → {f(r['real_hr_after_bpm'], '.0f')} "
            f"(donor ref {f(r['real_donor_ref_bpm'], '.0f')}) |"
        )
    return "\n".join(lines)
