"""training.data: the training tensors are preprocess_window's output; folds never leak subjects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from gatewayd.datasets import Recording, generate_recording
from gatewayd.signals import preprocess_window
from training.data import (
    NO_ACTIVITY,
    build_window_set,
    cache_file,
    split,
    subject_folds,
    windows_of,
)


def _troika_like(rec: Recording, subject: str) -> Recording:
    """The same signals relabelled as a TROIKA recording: HR, no activity labels."""
    return Recording(
        name=f"DATA_{subject}_TYPE01",
        source="troika",
        subject=subject,
        bvp=np.array(rec.bvp),
        acc=np.array(rec.acc),
        hr_ref_bpm=None if rec.hr_ref_bpm is None else np.array(rec.hr_ref_bpm),
        hr_ref_kind="ecg",
    )


@pytest.fixture(scope="module")
def recordings() -> list[Recording]:
    synthetic = [generate_recording(i, 0.5, seed=3) for i in (1, 2)]
    return [*synthetic, _troika_like(synthetic[0], "07")]


def test_training_tensor_is_preprocess_window_of_each_window(
    recordings: list[Recording], tmp_path: Path
) -> None:
    ws = build_window_set(recordings, cache_dir=tmp_path)
    offset = 0
    for rec in recordings:
        for i in range(rec.window_count()):
            expected = preprocess_window(*rec.window(i))
            assert ws.x[offset + i].dtype == np.float32
            np.testing.assert_array_equal(ws.x[offset + i], expected)
        offset += rec.window_count()
    assert offset == len(ws)


def test_cache_round_trip_is_exact_and_keyed_by_content(
    recordings: list[Recording], tmp_path: Path
) -> None:
    rec = recordings[0]
    first = windows_of(rec, tmp_path)
    assert cache_file(rec, tmp_path).is_file()
    np.testing.assert_array_equal(windows_of(rec, tmp_path), first)
    # Same name and size, other samples: another cache entry.
    other = generate_recording(1, 0.5, seed=4)
    assert other.name == rec.name
    assert cache_file(other, tmp_path) != cache_file(rec, tmp_path)


def test_labels_are_masked_where_unknown(recordings: list[Recording]) -> None:
    ws = build_window_set(recordings)
    troika = ws.recording == 2
    assert (ws.activity[troika] == NO_ACTIVITY).all()
    assert (ws.activity[~troika] >= 0).all()
    assert np.isfinite(ws.hr_bpm).all()
    assert ws.synthetic
    assert any("TROIKA" in d for d in ws.datasets)


@pytest.mark.parametrize("k", [0, 2, 3, 5])
def test_folds_never_put_a_subject_on_both_sides(k: int) -> None:
    keys = [f"synthetic:S{i}" for i in range(1, 9)] + [f"troika:{i:02d}" for i in range(1, 5)]
    folds = subject_folds(keys, k, seed=1)
    held = [s for fold in folds for s in fold]
    assert sorted(held) == sorted(keys)  # every subject held out exactly once
    assert len(folds) == (len(keys) if k == 0 else k)
    for source in ("synthetic", "troika"):
        # Every source is spread evenly over the folds.
        per_fold = [sum(s.startswith(source) for s in fold) for fold in folds]
        assert max(per_fold) - min(per_fold) <= 1


def test_split_by_subject_key_never_leaks(recordings: list[Recording]) -> None:
    # Two recordings of one subject (the TROIKA subject 04 case) must stay together.
    twin = _troika_like(recordings[1], "07")
    ws = build_window_set([*recordings, twin])
    assert len(ws.subjects) == 3
    for fold in subject_folds(ws.subjects, 0, seed=0):
        train_idx, val_idx = split(ws, fold)
        train_subjects = {ws.subjects[s] for s in ws.subject[train_idx]}
        val_subjects = {ws.subjects[s] for s in ws.subject[val_idx]}
        assert val_subjects == set(fold)
        assert not train_subjects & val_subjects
        assert len(train_idx) + len(val_idx) == len(ws)
