"""training.offload_analysis: thresholds and learned scores chosen without the scored subject."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the analysis needs the `train` extra (scikit-learn)")

from gatewayd.eval import WINDOW_COLUMNS
from training.offload_analysis import choose, features, held_out, read


def test_choose_takes_the_least_offload_that_reaches_the_target() -> None:
    score = np.arange(100, dtype=np.float64)
    bad = score < 20  # the 20 lowest scores are the bad windows
    threshold = choose(score, bad)
    # 80 % of 20 is 16: offloading the 16 lowest reaches it, more would only cost.
    assert int((score < threshold).sum()) == 16


def test_choose_stays_within_the_budget() -> None:
    score = np.arange(100, dtype=np.float64)
    bad = score >= 50  # the bad windows rank last: nothing within 35 % catches one
    assert int((score < choose(score, bad)).sum()) == 0


def _write(path: Path, subjects: list[str], products: list[float], bad: list[bool]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=WINDOW_COLUMNS)
        writer.writeheader()
        for k, (s, p, b) in enumerate(zip(subjects, products, bad, strict=True)):
            row = dict.fromkeys(WINDOW_COLUMNS, "")
            row.update(
                recording=s, source="set", subject=s, window=k, ref_hr_bpm=80.0,
                wearable_hr_bpm=80.0 + (20 if b else 0), signal_quality=round(p * 100),
                truth_group="unknown", wearable_group="light", activity_conf_e4=10000,
                entropy_mbits=3000, offload_confidence_e4=round(p * 1e4), acc_motion=0.1,
                scored=1, bad_hr=int(b), bad_activity=0,
            )  # fmt: skip
            writer.writerow(row)


def test_each_subject_is_scored_with_the_others_threshold(tmp_path: Path) -> None:
    # Subjects a-d: the product is low exactly on the bad windows. Subject e: the other way
    # round (its quality lies). e is scored with a threshold chosen on a-d and catches nothing,
    # which a threshold chosen on e itself would have hidden.
    subjects, products, bad = [], [], []
    for s in "abcde":
        for k in range(10):
            is_bad = k < 2
            lying = s == "e"
            subjects.append(s)
            products.append(0.9 if is_bad == lying else 0.1)
            bad.append(is_bad)
    path = tmp_path / "windows.csv"
    _write(path, subjects, products, bad)
    t = read(path)
    assert features(t).shape == (50, 11)
    result = held_out(t, None)
    e_bad = 2
    assert result.recall == pytest.approx(8 / (8 + e_bad))
    # e offloads its good windows (product 0.1): 8 of its 10.
    assert result.offloaded == pytest.approx((8 + 8) / 50)


def test_a_learned_score_is_fitted_without_the_scored_subject(tmp_path: Path) -> None:
    subjects = [s for s in "abcde" for _ in range(10)]
    bad = [k < 2 for _ in "abcde" for k in range(10)]
    path = tmp_path / "windows.csv"
    _write(path, subjects, [0.5] * 50, bad)
    t = read(path)
    seen: list[int] = []

    def fit(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return np.zeros(len(x_test))

    held_out(t, fit)
    # Per held-out subject: one fit on the other 40 windows, then 4 inner fits (one per other
    # subject left out) on 30 of them; never all 50.
    assert sorted(set(seen)) == [30, 40]
    assert len(seen) == 5 * (1 + 4)


def test_a_table_without_the_scored_column_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    _write(path, ["a", "b"], [0.5, 0.5], [False, True])
    lines = path.read_text(encoding="utf-8").splitlines()
    at = lines[0].split(",").index("scored")
    path.write_text(
        "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != at) for line in lines)
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(SystemExit, match=r"no 'scored' column.*write it again"):
        read(path)
