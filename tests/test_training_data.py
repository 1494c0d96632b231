"""training.data: the training tensors are preprocess_window v2's; masks; balance; no leaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import Recording, flat_bvp, generate_recording
from gatewayd.signals.acc_features import acc_features
from gatewayd.signals.preprocess import preprocess_window
from training.data import (
    BVP_CHANNEL,
    NO_ACTIVITY,
    PPG_FLAG_CHANNEL,
    build_window_set,
    cache_file,
    group_weights,
    sample_probabilities,
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


def _no_ppg(rec: Recording, subject: str) -> Recording:
    """The same ACC as a set without PPG (like smartwatch HAR), keeping labels and even an HR."""
    return Recording(
        name=f"s{subject}_01_sw",
        source="sp-sw-har",
        subject=subject,
        bvp=flat_bvp(rec.acc.shape[0]),
        acc=np.array(rec.acc),
        hr_ref_bpm=None if rec.hr_ref_bpm is None else np.array(rec.hr_ref_bpm),
        hr_ref_kind="synthetic-truth",
        labels=None,
        has_bvp=False,
    )


@pytest.fixture(scope="module")
def recordings() -> list[Recording]:
    synthetic = [generate_recording(i, 0.5, seed=3) for i in (1, 2)]
    return [*synthetic, _troika_like(synthetic[0], "07"), _no_ppg(synthetic[1], "s09")]


def test_training_tensor_is_preprocess_window_of_each_window(
    recordings: list[Recording], tmp_path: Path
) -> None:
    ws = build_window_set(recordings, cache_dir=tmp_path)
    offset = 0
    for rec in recordings:
        for i in range(rec.window_count()):
            bvp, acc = rec.window(i)
            expected = preprocess_window(bvp, acc, has_bvp=rec.has_bvp)
            assert ws.x[offset + i].dtype == np.float32
            np.testing.assert_array_equal(ws.x[offset + i], expected)
            np.testing.assert_array_equal(ws.features[offset + i], acc_features(acc))
        offset += rec.window_count()
    assert offset == len(ws)
    assert ws.x.shape[1:] == (15, 256)


def test_stride_keeps_every_other_window(recordings: list[Recording]) -> None:
    full = build_window_set(recordings[:1])
    half = build_window_set(recordings[:1], stride=2)
    np.testing.assert_array_equal(half.x, full.x[::2])
    np.testing.assert_array_equal(half.window, np.arange(0, len(full), 2))


def test_cache_round_trip_is_exact_and_keyed_by_content(
    recordings: list[Recording], tmp_path: Path
) -> None:
    rec = recordings[0]
    first = windows_of(rec, tmp_path)
    assert cache_file(rec, tmp_path).is_file()
    np.testing.assert_array_equal(windows_of(rec, tmp_path), first)
    # Same name and size, other samples: another cache entry; features are kept apart.
    other = generate_recording(1, 0.5, seed=4)
    assert other.name == rec.name
    assert cache_file(other, tmp_path) != cache_file(rec, tmp_path)
    assert cache_file(rec, tmp_path, "features") != cache_file(rec, tmp_path)


def test_a_window_without_ppg_has_zero_ppg_channels_and_no_hr_label(
    recordings: list[Recording],
) -> None:
    ws = build_window_set(recordings)
    no_ppg = ws.recording == 3
    assert recordings[3].hr_ref_bpm is not None  # the recording does carry a reference ...
    assert not ws.has_bvp[no_ppg].any()
    assert np.isnan(ws.hr_bpm[no_ppg]).all()  # ... which is masked: nothing to read it from
    assert (ws.x[no_ppg, BVP_CHANNEL] == 0).all()
    assert (ws.x[no_ppg, PPG_FLAG_CHANNEL] == 0).all()
    assert (ws.x[~no_ppg, PPG_FLAG_CHANNEL] == 1).all()
    # The ACC channels are the same as the PPG-bearing twin's: only the PPG is masked.
    twin = ws.recording == 1
    np.testing.assert_array_equal(ws.x[no_ppg, 1:6], ws.x[twin, 1:6])


def test_labels_are_masked_where_unknown(recordings: list[Recording]) -> None:
    ws = build_window_set(recordings)
    troika = ws.recording == 2
    assert (ws.activity[troika] == NO_ACTIVITY).all()
    # Synthetic windows carry the group code of their (sitting) activity: rest = 0.
    assert (ws.activity[ws.recording < 2] == int(ActivityGroup.REST)).all()
    assert np.isfinite(ws.hr_bpm[ws.has_bvp]).all()
    assert ws.synthetic
    assert any("TROIKA" in d for d in ws.datasets)


def test_sources_are_balanced_by_the_power_of_their_size(recordings: list[Recording]) -> None:
    ws = build_window_set([*recordings[:2], recordings[2]])
    names = ws.source_names()
    n_syn, n_tro = int(np.sum(names == "synthetic")), int(np.sum(names == "troika"))
    for power in (0.0, 0.5, 1.0):
        p = sample_probabilities(ws, power)
        assert p.sum() == pytest.approx(1.0)
        ratio = p[names == "synthetic"].sum() / p[names == "troika"].sum()
        assert ratio == pytest.approx((n_syn / n_tro) ** power)


def test_group_weights_even_out_the_drawn_groups() -> None:
    activity = np.array([0, 0, 0, 1, 2, NO_ACTIVITY])
    probs = np.full(6, 1 / 6)
    w = group_weights(activity, probs)
    mass = np.array([3, 1, 1]) / 6
    # Each group's total weight is the same, and the mean weight of a drawn window is 1.
    np.testing.assert_allclose(w * mass, (w * mass)[0])
    assert float(np.sum(w * mass) / mass.sum()) == pytest.approx(1.0)
    assert group_weights(np.array([0, 0]), np.array([0.5, 0.5]))[1:].tolist() == [0.0, 0.0]


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
    assert len(ws.subjects) == 4
    for k in (0, 2):
        for fold in subject_folds(ws.subjects, k, seed=0):
            train_idx, val_idx = split(ws, fold)
            train_subjects = {ws.subjects[s] for s in ws.subject[train_idx]}
            val_subjects = {ws.subjects[s] for s in ws.subject[val_idx]}
            assert val_subjects == set(fold)
            assert not train_subjects & val_subjects
            assert len(train_idx) + len(val_idx) == len(ws)
