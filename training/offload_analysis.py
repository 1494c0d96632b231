"""Could a learned offload score catch more bad windows? `python -m training.offload_analysis CSV`.

Reads the per-window table of `gatewayd eval offload ... --windows-csv CSV` (made with a training
run's out-of-fold answers, ``--oof RUN/oof.npz``) and compares, held out by subject, ways for the
wearable to rank its own windows for offloading:

- ``product``: the wire's offload confidence (the pruned model's activity probability times the
  tracker's signal quality), offloading the lowest; alone, without the entropy term;
- ``logistic``: a logistic regression predicting a bad local window from what the wearable knows
  of each window: the log of both confidences, whether it has a heart rate and a quality, the
  window's entropy, the log of its ACC motion, its heart rate and its group;
- ``boosting``: gradient boosting on the same inputs, as a ceiling for those inputs (too big to
  run on a wearable);
- and two with a memory of one row: the lower of this row's product and the previous row's of
  the same recording, and a logistic regression on both confidences with the previous row's
  product beside them. With ``--oof`` the rows are the training run's windows, 4 s apart (two
  of the wearable's 2 s hops).

Each subject is scored with a threshold chosen on the other subjects as `gatewayd eval offload
--sweep` chooses its own: the least offload that catches 80 % of the bad windows within a 35 %
budget, else the best recall within it. The learned scores are fitted on the other subjects only,
and their thresholds chosen on those subjects' scores from fits without them. Printed, pooled over
subjects: windows offloaded and bad windows caught; the recall when exactly 35 % of the pooled
held-out scores are offloaded (one threshold for all, an upper bound rather than a policy); the
ROC AUC of the held-out scores for the bad windows (for a learned score both pool the scores of
one fit per subject); and offloaded / caught per dataset. Synthetic
windows are not in the table (`gatewayd eval` replays real recordings only).

Analysis only: nothing here changes a model or a default.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from gatewayd.eval import TARGET_OFFLOAD_RATIO, choose_policy, roc_auc

GROUPS: Final = ("rest", "light", "vigorous", "unknown")
#: Threshold candidates: quantiles of the score on the training subjects.
QUANTILES: Final = np.linspace(0.0, 0.6, 241)

MaybeArray = npt.NDArray[np.float64] | None
Fit = Callable[
    [npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.float64]],
    npt.NDArray[np.float64],
]


def read(path: Path) -> dict[str, npt.NDArray[np.float64] | list[str]]:
    """The columns the analysis needs, as arrays (NaN where a number is unknown)."""
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no windows")
    if "scored" not in rows[0]:
        raise SystemExit(
            f"{path}: no 'scored' column: written by an older `gatewayd eval --windows-csv`;"
            " write it again"
        )

    def num(name: str) -> npt.NDArray[np.float64]:
        return np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])

    product = num("offload_confidence_e4") / 1e4
    recording = [(r["subject"], r["recording"]) for r in rows]
    first = np.array([k == 0 or recording[k] != recording[k - 1] for k in range(len(rows))])
    return {
        "subject": [r["subject"] for r in rows],
        "source": [r["source"] for r in rows],
        "group": [r["wearable_group"] for r in rows],
        "activity": num("activity_conf_e4") / 1e4,
        "quality": num("signal_quality") / 100,
        "hr": num("wearable_hr_bpm"),
        "entropy": num("entropy_mbits") / 1000,
        "motion": num("acc_motion"),
        "product": product,
        # The previous row's product in the same recording (a recording's first row: its own).
        "previous_product": np.where(first, product, np.roll(product, 1)),
        "bad": np.array([r["bad_hr"] == "1" or r["bad_activity"] == "1" for r in rows], float),
        "scored": np.array([r["scored"] == "1" for r in rows], float),
    }


def features(t: dict[str, npt.NDArray[np.float64] | list[str]]) -> npt.NDArray[np.float64]:
    """What the wearable knows of each window, one row per window."""
    activity = np.asarray(t["activity"])
    quality = np.asarray(t["quality"])
    hr = np.asarray(t["hr"])
    has_q = ~np.isnan(quality)
    has_hr = ~np.isnan(hr)
    cols = [
        np.log(np.clip(activity, 1e-3, 1)),
        np.where(has_q, np.log(np.clip(np.nan_to_num(quality), 1e-2, 1)), 0.0),
        has_q.astype(float),
        has_hr.astype(float),
        np.nan_to_num(hr) / 100,
        np.asarray(t["entropy"]),
        np.log(np.clip(np.asarray(t["motion"]), 1e-3, None)),
        *[np.array([g == name for g in t["group"]], float) for name in GROUPS],
    ]
    return np.column_stack(cols)


def confidences(
    t: dict[str, npt.NDArray[np.float64] | list[str]], *, previous: bool = False
) -> npt.NDArray[np.float64]:
    """Both confidences alone (the first four columns of `features`), and with ``previous`` the
    log of the previous row's product."""
    x = features(t)[:, :4]
    if not previous:
        return x
    before = np.log(np.clip(np.asarray(t["previous_product"]), 1e-3, 1))
    return np.column_stack([x, before])


def logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.bool_], x_test: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Minus P(bad) from a standardised logistic regression (low scores are offloaded)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(x, y)
    return -model.predict_proba(x_test)[:, 1]


def boosting(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.bool_], x_test: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Minus P(bad) from gradient boosting (low scores are offloaded)."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: PLC0415

    model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=0)
    model.fit(x, y)
    return -model.predict_proba(x_test)[:, 1]


def choose(score: npt.NDArray[np.float64], bad: npt.NDArray[np.bool_]) -> float:
    """The threshold (offload where score < it) the sweep's rule (`choose_policy`) picks here."""
    thresholds = np.unique(np.quantile(score, QUANTILES))
    counts = np.zeros((len(thresholds), 1, 4), dtype=np.int64)
    counts[..., 0], counts[..., 2] = len(score), int(bad.sum())
    for k, threshold in enumerate(thresholds):
        off = score < threshold
        counts[k, 0, 1], counts[k, 0, 3] = int(off.sum()), int((off & bad).sum())
    return float(thresholds[choose_policy(counts, TARGET_OFFLOAD_RATIO)[0]])


def inner_scores(
    fit: Fit, x: npt.NDArray[np.float64], y: npt.NDArray[np.bool_], groups: npt.NDArray[np.str_]
) -> npt.NDArray[np.float64]:
    """Scores of the training windows, each from a fit without its subject (up to 5 folds by
    subject), so that a threshold is chosen on scores like those a held-out subject gets."""
    from sklearn.model_selection import GroupKFold  # noqa: PLC0415

    out = np.empty(len(y))
    for fit_rows, score_rows in GroupKFold(n_splits=min(5, len(np.unique(groups)))).split(
        x, y, groups
    ):
        out[score_rows] = fit(x[fit_rows], y[fit_rows], x[score_rows])
    return out


class Result(NamedTuple):
    """One way of ranking, held out."""

    offloaded: float
    recall: float
    #: Recall when exactly `TARGET_OFFLOAD_RATIO` of all windows are offloaded, the held-out
    #: scores pooled (one threshold for every subject, chosen on them: an upper bound, not a
    #: policy).
    recall_at_budget: float
    auc: float
    per_source: dict[str, tuple[float, float]]


def held_out(
    t: dict[str, npt.NDArray[np.float64] | list[str]],
    fit: Fit | None,
    *,
    x: npt.NDArray[np.float64] | None = None,
    score: npt.NDArray[np.float64] | None = None,
) -> Result:
    """Pooled (offloaded, recall) and per source, each subject scored with the others' choice.

    Without ``fit`` the windows are ranked by ``score`` (default: the product); with it, by the
    fit's score on the inputs ``x`` (default: `features`).
    """
    subjects = np.array(t["subject"])
    sources = np.array(t["source"])
    bad = np.asarray(t["bad"]).astype(bool) & np.asarray(t["scored"]).astype(bool)
    x = features(t) if x is None else x
    fixed = np.asarray(t["product"]) if score is None else score
    off = np.zeros(len(subjects), bool)
    pooled = np.zeros(len(subjects))
    for s in np.unique(subjects):
        test = subjects == s
        if fit is None:
            train_score, test_score = fixed[~test], fixed[test]
        else:
            test_score = fit(x[~test], bad[~test], x[test])
            train_score = inner_scores(fit, x[~test], bad[~test], subjects[~test])
        off[test] = test_score < choose(train_score, bad[~test])
        pooled[test] = test_score
    scored = np.asarray(t["scored"]).astype(bool)
    lowest = pooled <= np.quantile(pooled, TARGET_OFFLOAD_RATIO)
    per = {
        src: (
            float(off[sources == src].mean()),
            float((off & bad)[sources == src].sum() / max(bad[sources == src].sum(), 1)),
        )
        for src in np.unique(sources)
    }
    return Result(
        offloaded=float(off.mean()),
        recall=float((off & bad).sum() / bad.sum()),
        recall_at_budget=float((lowest & bad).sum() / bad.sum()),
        auc=roc_auc(-pooled[scored], bad[scored]),
        per_source=per,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.offload_analysis", description=__doc__
    )
    parser.add_argument("csv", type=Path, help="gatewayd eval offload --windows-csv output")
    args = parser.parse_args(argv)
    t = read(args.csv)
    bad = np.asarray(t["bad"]).astype(bool)
    print(f"{len(bad)} windows, {int(bad.sum())} bad, {len(set(t['subject']))} subjects")
    lower = np.minimum(np.asarray(t["product"]), np.asarray(t["previous_product"]))
    ways: tuple[tuple[str, Fit | None, MaybeArray, MaybeArray], ...] = (
        ("product", None, None, None),
        ("product, lower of this row's and the previous row's", None, None, lower),
        ("logistic, both confidences", logistic, confidences(t), None),
        ("logistic, both confidences and the previous row's product", logistic,
         confidences(t, previous=True), None),
        ("logistic, everything", logistic, None, None),
        ("boosting, everything", boosting, None, None),
    )  # fmt: skip
    for name, fit, x, score in ways:
        r = held_out(t, fit, x=x, score=score)
        detail = "  ".join(
            f"{src} {a * 100:.1f}/{c * 100:.1f}" for src, (a, c) in r.per_source.items()
        )
        print(
            f"{name}\n    held out: {r.offloaded * 100:5.1f} % offloaded,"
            f" {r.recall * 100:5.1f} % caught; at {TARGET_OFFLOAD_RATIO:.0%} pooled"
            f" {r.recall_at_budget * 100:5.1f} %; ROC AUC {r.auc:.3f}   {detail}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
