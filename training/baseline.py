"""The accelerometer-feature baselines, fitted with scikit-learn on the same folds as the model.

Features: `gatewayd.signals.acc_features` (per-axis and |a| spread and percentiles, the motion
spread, band energies up to 5 Hz, the dominant frequency, jerk, axis correlations). Two
classifiers, both with scikit-learn's defaults (nothing tuned), weighted like the model's loss
(sources balanced by `training.data.sample_probabilities`, groups evened by `group_weights`):

- ``hgb``: `HistGradientBoostingClassifier`, the strong reference the model must beat;
- ``logistic``: multinomial `LogisticRegression` on standardised features, small enough to ship
  as plain numbers (`gatewayd.signals.acc_features.LinearActivityBaseline`, JSON) so the gateway
  can score it without scikit-learn.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from gatewayd.activity import GROUP_NAMES
from gatewayd.signals.acc_features import ACC_FEATURE_NAMES, LinearActivityBaseline
from training.data import NO_ACTIVITY, WindowSet, group_weights, sample_probabilities

N_GROUPS: Final = len(GROUP_NAMES)
#: Logit of a group the training folds never showed (the linear model cannot predict it).
_ABSENT_LOGIT: Final = -1000.0


def baseline_weights(ws: WindowSet, power: float) -> npt.NDArray[np.float64]:
    """Return the sample weights of the labelled windows of ``ws`` (mean 1)."""
    probs = sample_probabilities(ws, power)
    labelled = ws.activity != NO_ACTIVITY
    w = probs[labelled] * group_weights(ws.activity, probs)[ws.activity[labelled]]
    return np.asarray(w / w.mean(), dtype=np.float64)


def fit_hgb(train: WindowSet, seed: int, power: float) -> HistGradientBoostingClassifier:
    """Fit the gradient-boosting baseline on the labelled windows of ``train``."""
    labelled = train.activity != NO_ACTIVITY
    # early_stopping off: it would carve a random validation split out of the training subjects.
    model = HistGradientBoostingClassifier(early_stopping=False, random_state=seed)
    model.fit(
        train.features[labelled],
        train.activity[labelled],
        sample_weight=baseline_weights(train, power),
    )
    return model


def hgb_proba(
    model: HistGradientBoostingClassifier, features: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """Return (N, 3) group probabilities (0 for a group the model never saw)."""
    out = np.zeros((len(features), N_GROUPS))
    classes = np.asarray(model.classes_, dtype=np.int64)
    if len(classes) == 1:
        # One group seen: the only possible answer (scikit-learn would add a phantom column).
        out[:, classes[0]] = 1.0
    elif len(features):
        out[:, classes] = model.predict_proba(features)
    return out


def fit_logistic(train: WindowSet, power: float) -> LinearActivityBaseline:
    """Fit the shippable multinomial logistic regression on standardised features."""
    labelled = train.activity != NO_ACTIVITY
    f = train.features[labelled].astype(np.float64)
    mean = f.mean(axis=0)
    scale = f.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature carries nothing; keep it finite
    coef = np.zeros((N_GROUPS, f.shape[1]))
    intercept = np.full(N_GROUPS, _ABSENT_LOGIT)
    seen = np.unique(train.activity[labelled])
    if len(seen) == 1:
        intercept[seen[0]] = 0.0  # one group seen: the only possible answer
        return LinearActivityBaseline(GROUP_NAMES, ACC_FEATURE_NAMES, mean, scale, coef, intercept)
    clf = LogisticRegression(max_iter=5000)
    clf.fit(
        (f - mean) / scale, train.activity[labelled], sample_weight=baseline_weights(train, power)
    )
    classes = clf.classes_.astype(np.int64)
    if len(classes) == 2:
        # scikit-learn keeps one row for two classes: logit(second) - logit(first).
        coef[classes[1]] = clf.coef_[0]
        intercept[classes[1]] = clf.intercept_[0]
        intercept[classes[0]] = 0.0
    else:
        coef[classes] = clf.coef_
        intercept[classes] = clf.intercept_
    return LinearActivityBaseline(
        classes=GROUP_NAMES,
        feature_names=ACC_FEATURE_NAMES,
        mean=mean,
        scale=scale,
        coef=coef,
        intercept=intercept,
    )
