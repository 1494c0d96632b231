"""training.activity_analysis: the held-out mix and stacker choose without the scored subject."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from training.activity_analysis import geometric_mix, held_out_mix, held_out_stacker

RIGHT = np.array([0.1, 0.8, 0.1])  # class 1
WRONG = np.array([0.8, 0.1, 0.1])  # class 0


def test_geometric_mix_ends_at_either_side() -> None:
    model = np.array([[0.2, 0.3, 0.5]])
    base = np.array([[0.6, 0.3, 0.1]])
    np.testing.assert_allclose(geometric_mix(model, base, 0.0), model, atol=1e-8)
    np.testing.assert_allclose(geometric_mix(model, base, 1.0), base, atol=1e-8)
    mid = geometric_mix(model, base, 0.5)
    np.testing.assert_allclose(mid.sum(axis=1), 1.0)
    expected = np.sqrt(model * base)
    np.testing.assert_allclose(mid, expected / expected.sum(), atol=1e-8)


def test_each_subject_gets_the_weight_best_on_the_others() -> None:
    # Subjects a-d: the baseline is right and the model wrong. Subject e: the other way round.
    subjects = np.repeat(np.array(["a", "b", "c", "d", "e"]), 4)
    labels = np.ones(len(subjects), dtype=np.int64)
    e = subjects == "e"
    model = np.where(e[:, None], RIGHT, WRONG)
    base = np.where(e[:, None], WRONG, RIGHT)
    sets = np.full(len(subjects), "set")
    scored = np.ones(len(subjects), dtype=bool)
    mixed, chosen = held_out_mix(model, base, labels, sets, subjects, scored=scored)
    # Every choice was made on the others, where the baseline wins: e is scored with it too,
    # and gets its windows wrong, which an in-sample choice would have hidden.
    assert chosen["e"] > 0.5
    assert all(chosen[s] > 0.5 for s in "abcd")
    right = mixed.argmax(axis=1) == labels
    assert right[~e].all()
    assert not right[e].any()


class _Majority:
    """A classifier that answers its training labels' majority (for the stacker's plumbing)."""

    def __init__(self, y: np.ndarray) -> None:
        self.answer = int(np.bincount(y).argmax())

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.answer)


def test_the_stacker_is_fitted_without_the_scored_subject() -> None:
    subjects = np.array(["a"] * 5 + ["b"] * 2)
    moving = np.array([1, 1, 1, 1, 1, 0, 0])
    scored = np.array([True] * 7)
    out = held_out_stacker(np.zeros((7, 1)), moving, subjects, lambda x, y: _Majority(y), scored)
    # a is predicted from b alone (rest), b from a alone (moving).
    assert out.tolist() == [0, 0, 0, 0, 0, 1, 1]
