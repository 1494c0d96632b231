"""From a model's activity classes to activity groups: the one vocabulary the gateway speaks.

A model card names its activity head's classes (``outputs.activity_classes``). A class named
like a group ("rest", "light", "vigorous", "unknown") is that group; any other name is looked up
in PPG-DaLiA's labels (`gatewayd.activity.LABEL_GROUPS` ``["dalia"]``), which is what the shipped
9-class models were trained on; a name found in neither counts as unknown. A group's
probability is the sum of its classes' probabilities, so with a 9-class head the confidence is
the group's ("walking" 0.4 + "table soccer" 0.3 is light at 0.7), not one class's.

Pure numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gatewayd.activity import GROUP_NAMES, LABEL_GROUPS, ActivityGroup

__all__ = ["GroupPrediction", "class_groups", "group_prediction"]


def class_groups(classes: Sequence[str]) -> tuple[ActivityGroup, ...]:
    """The activity group of each class of a model's activity head, by the class's name."""
    dalia = LABEL_GROUPS["dalia"]
    out: list[ActivityGroup] = []
    for name in classes:
        key = name.strip().lower()
        if key in GROUP_NAMES or key == "unknown":
            out.append(ActivityGroup[key.upper()])
        else:
            out.append(dalia.get(key, ActivityGroup.UNKNOWN))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class GroupPrediction:
    """Per-window activity groups for a batch of N windows (all arrays have N rows)."""

    #: P(rest), P(light), P(vigorous): the summed probabilities of each group's classes, (N, 3).
    group_probs: npt.NDArray[np.float64]
    #: Probability on classes that belong to no group (PPG-DaLiA's "transient"), (N,).
    unknown_prob: npt.NDArray[np.float64]
    #: The `ActivityGroup` code of each window (0, 1, 2 or 255), (N,).
    group: npt.NDArray[np.int64]
    #: The probability of that group (of the unknown classes when ``group`` is 255), (N,).
    confidence: npt.NDArray[np.float64]

    def __len__(self) -> int:
        """Return N, the number of windows."""
        return int(self.group.shape[0])


def group_prediction(activity_probs: npt.ArrayLike, classes: Sequence[str]) -> GroupPrediction:
    """Sum class probabilities (N, len(classes)) into groups and pick each window's group.

    The group is the known group with the largest summed probability (ties go to the lower
    code); when the classes that belong to no group hold more than that, the window is unknown.
    """
    probs = np.asarray(activity_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(
            f"activity probabilities have shape {probs.shape}, expected (N, {len(classes)})"
            " for the classes the model card names"
        )
    groups = np.array([int(g) for g in class_groups(classes)], dtype=np.int64)
    # (classes, 3) membership matrix: summing probabilities is one matrix product.
    membership = (groups[:, None] == np.arange(len(GROUP_NAMES))[None, :]).astype(np.float64)
    group_probs: npt.NDArray[np.float64] = probs @ membership
    unknown_prob: npt.NDArray[np.float64] = probs[:, groups == int(ActivityGroup.UNKNOWN)].sum(
        axis=1
    )
    best = np.argmax(group_probs, axis=1)
    best_prob = np.take_along_axis(group_probs, best[:, None], axis=1)[:, 0]
    unknown = unknown_prob > best_prob
    return GroupPrediction(
        group_probs=group_probs,
        unknown_prob=unknown_prob,
        group=np.where(unknown, int(ActivityGroup.UNKNOWN), best).astype(np.int64),
        confidence=np.where(unknown, unknown_prob, best_prob),
    )
