"""Why the activity targets are missed: `python -m training.activity_analysis RUN`.

Reads a training run's ``cv.json`` (its configuration rebuilds the same windows) and
``oof.npz`` (every window's out-of-fold answers) and prints, for the measured labelled sets
(synthetic windows are left out of every figure):

1. **Rest vs moving, error by error**: per set, how many rest windows the full model calls
   moving and how many moving windows it calls rest, what the ACC threshold (motion spread
   >= 15/64 g RMS = moving) gets wrong, and what separates the groups on each set: the motion
   spread of the rest windows and of the moving windows the model calls rest, and the reference
   heart rate of each. If one set's rest moves the wrist more than another set's exercise, no
   rule on the accelerometer alone is right on both.
2. **Model and feature baseline mixed, held out**: the model's calibrated group probabilities
   and a feature baseline's (both out of fold) mixed geometrically, p ~ p_model^(1-w) p_base^w;
   each subject is scored with the weight best on the other subjects (the mean over sets of
   group accuracy), for the logistic and the gradient-boosting baseline.
3. **A rest-vs-moving stacker, held out**: logistic regression on the model's rest logit, the
   log motion spread, the model's heart rate and whether there is PPG, fitted leave one subject
   out.

Analysis only: nothing here changes a model or a default.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.inference.cards import OutputSpec
from gatewayd.inference.session import hr_bin_centres
from training.metrics import softmax
from training.report import ACC_THRESHOLD_G

#: Mixing weights of the baseline tried (0: the model alone, 1: the baseline alone).
WEIGHTS: Final = tuple(round(w, 1) for w in np.linspace(0.0, 1.0, 11))

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def geometric_mix(model: Floats, base: Floats, weight: float) -> Floats:
    """p ~ model^(1 - weight) * base^weight, renormalised per row."""
    z = (1.0 - weight) * np.log(model + 1e-9) + weight * np.log(base + 1e-9)
    return softmax(z)


def mean_set_accuracy(probs: Floats, labels: Ints, sets: npt.NDArray[np.str_], mask: Any) -> float:
    """Group accuracy on ``mask`` per set, averaged over the sets present (each set alike)."""
    right = probs.argmax(axis=1) == labels
    scores = [right[mask & (sets == s)].mean() for s in np.unique(sets[mask])]
    return float(np.mean(scores)) if scores else float("nan")


def held_out_mix(
    model: Floats,
    base: Floats,
    labels: Ints,
    sets: npt.NDArray[np.str_],
    subjects: npt.NDArray[np.str_],
    *,
    scored: npt.NDArray[np.bool_],
    weights: Sequence[float] = WEIGHTS,
) -> tuple[Floats, dict[str, float]]:
    """Each subject of ``scored`` gets the mix whose weight is best on the other subjects.

    Returns the mixed probabilities (the model's where a row is not scored) and the weight each
    subject was given."""
    mixes = [geometric_mix(model, base, w) for w in weights]
    out = model.copy()
    chosen: dict[str, float] = {}
    for subject in np.unique(subjects[scored]):
        others = scored & (subjects != subject)
        best = max(
            range(len(weights)),
            key=lambda i: mean_set_accuracy(mixes[i], labels, sets, others),
        )
        rows = subjects == subject
        out[rows] = mixes[best][rows]
        chosen[str(subject)] = float(weights[best])
    return out, chosen


def held_out_stacker(
    features: Floats, moving: Ints, subjects: npt.NDArray[np.str_], fit: Any, scored: Any
) -> Ints:
    """Leave-one-subject-out predictions of a classifier (``fit(X, y)`` returns one with
    ``predict``) for the rows of ``scored``; -1 elsewhere. Every other labelled row trains it."""
    out = np.full(len(moving), -1, dtype=np.int64)
    for subject in np.unique(subjects[scored]):
        train = (moving >= 0) & (subjects != subject)
        test = scored & (subjects == subject)
        out[test] = fit(features[train], moving[train]).predict(features[test])
    return out


def _pct(values: Floats, qs: Sequence[float] = (10, 50, 90)) -> str:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return "n/a"
    return " / ".join(f"{v:.3g}" for v in np.percentile(finite, qs))


def _load(run: Path) -> tuple[dict[str, Any], Any, Any]:
    from training.__main__ import build_parser, load_window_set  # noqa: PLC0415 - heavy

    cv = json.loads((run / "cv.json").read_text())
    config = cv["config"]
    argv = ["--input", config.get("input", "v3"), "--stride-s", str(config["stride_s"])]
    for path in config.get("dataset") or []:
        argv += ["--dataset", str(path)]
    argv += ["--synthetic-subjects", str(config["synthetic_subjects"])]
    argv += ["--synthetic-minutes", str(config["synthetic_minutes"]), "--seed", str(config["seed"])]
    ws = load_window_set(build_parser().parse_args(argv))
    oof = np.load(run / "oof.npz")
    if len(oof["window"]) != len(ws) or not np.array_equal(oof["window"], ws.window):
        raise SystemExit(f"{run}: oof.npz does not match the windows its cv.json describes")
    return cv, ws, oof


def analyse(run: Path, say: Callable[[str], None] = print) -> None:
    """Print the three analyses of the module docstring for the run in ``run``."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - the train extra

    cv, ws, oof = _load(run)
    temperature = cv["calibration"]["p0"]["activity_temperature"]
    model = softmax(oof["act_logits_p0"], temperature)
    labels = oof["activity"].astype(np.int64)
    sets = oof["source"].astype(str)
    subjects = oof["subject"].astype(str)
    spread = ws.spread_g.astype(np.float64)
    reference = ws.hr_bpm.astype(np.float64)
    scored = (labels >= 0) & (sets != "synthetic")
    model_rest = model.argmax(axis=1) == 0
    acc_rest = spread < ACC_THRESHOLD_G
    say(f"Run {run}: {int(scored.sum())} labelled windows of measured sets (out of fold).\n")
    say("## Rest vs moving, error by error\n")
    say("| set | rest / moving windows | model: rest called moving / moving called rest "
        "| ACC threshold: same | spread of rest windows, g (p10 / p50 / p90) "
        "| spread of moving windows the model calls rest | reference HR at rest, bpm "
        "| reference HR moving |")  # fmt: skip
    say("|---|---|---|---|---|---|---|---|")
    for s in np.unique(sets[scored]):
        m = scored & (sets == s)
        rest, moving = m & (labels == 0), m & (labels > 0)
        say(
            f"| {s} | {int(rest.sum())} / {int(moving.sum())} "
            f"| {int((rest & ~model_rest).sum())} / {int((moving & model_rest).sum())} "
            f"| {int((rest & ~acc_rest).sum())} / {int((moving & acc_rest).sum())} "
            f"| {_pct(spread[rest])} | {_pct(spread[moving & model_rest])} "
            f"| {_pct(reference[rest])} | {_pct(reference[moving])} |"
        )
    say("\n## Model and feature baseline mixed, held out (groups / rest vs moving, %)\n")
    candidates: dict[str, Floats] = {"model alone": model}
    for name in ("logistic", "hgb"):
        key = f"probs_{name}"
        if key in oof:
            mixed, chosen = held_out_mix(
                model, oof[key].astype(np.float64), labels, sets, subjects, scored=scored
            )
            candidates[f"{name} alone"] = oof[key].astype(np.float64)
            weights = sorted(set(chosen.values()))
            candidates[f"model + {name}, held out (weights {weights})"] = mixed
    names = list(np.unique(sets[scored]))
    say("| answer | " + " | ".join(names) + " | all |")
    say("|---|" + "---:|" * (len(names) + 1))
    for label, probs in candidates.items():
        cells = []
        for m in [scored & (sets == s) for s in names] + [scored]:
            group = (probs.argmax(axis=1) == labels)[m].mean() * 100
            rvm = ((probs.argmax(axis=1) == 0) == (labels == 0))[m].mean() * 100
            cells.append(f"{group:.1f} / {rvm:.1f}")
        say(f"| {label} | " + " | ".join(cells) + " |")
    say("\n## A rest-vs-moving stacker, held out (rest vs moving, %)\n")
    centres = hr_bin_centres(OutputSpec())
    model_hr = softmax(oof["hr_logits_p0"]) @ centres
    has = oof["has_bvp"].astype(np.float64)
    p_rest = np.clip(model[:, 0], 1e-6, 1 - 1e-6)
    features = np.c_[
        np.log(p_rest / (1 - p_rest)), np.log(spread + 1e-3), (model_hr - 100) / 30 * has, has
    ]
    moving = np.where(labels >= 0, (labels > 0).astype(np.int64), -1)

    def fit(x: Floats, y: Ints) -> Any:
        return LogisticRegression(max_iter=1000, class_weight="balanced").fit(x, y)

    stacked = held_out_stacker(features, moving, subjects, fit, scored)
    say("| set | model | stacker |")
    say("|---|---:|---:|")
    for s in [*names, None]:
        m = scored if s is None else scored & (sets == s)
        say(
            f"| {s or 'all'} | {((~model_rest) == (moving == 1))[m].mean() * 100:.1f} "
            f"| {(stacked == moving)[m].mean() * 100:.1f} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    p = argparse.ArgumentParser(prog="python -m training.activity_analysis", description=__doc__)
    p.add_argument("run", type=Path, help="a gatewayd-train --out folder (cv.json, oof.npz)")
    args = p.parse_args(argv)
    analyse(args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
