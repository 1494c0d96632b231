"""gatewayd.datasets.wesad and .ecg: WESAD-layout pickles written here (WESAD is not in
../shared/data), the derived ECG reference, and the R-peak helpers on synthetic beats."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import (
    DatasetError,
    find_recordings,
    generate_subject,
    load,
    load_subject_pickle,
    load_wesad,
)
from gatewayd.datasets.dalia import looks_like_wesad, restricted_load
from gatewayd.datasets.ecg import MAX_RR_S, detect_rpeaks, hr_from_rpeaks
from gatewayd.datasets.wesad import CHEST_RATE_HZ, WESAD_LABELS, wesad_labels_at_4hz
from tests.test_datasets import CountingOpener, py2_pickle

MINUTES = 3.0


@pytest.fixture(scope="module")
def dalia_tree() -> dict[str, Any]:
    """A synthetic subject (PPG-DaLiA layout) whose chest ECG and true HR we reuse."""
    return generate_subject(2, MINUTES, seed=21)


def wesad_labels(n: int) -> np.ndarray:
    """700 Hz labels: 0-30 s transient (0), 30-90 s baseline (1), 90-120 s ignore (6),
    120-150 s stress (2), then meditation (4)."""
    t = np.arange(n) / CHEST_RATE_HZ
    out = np.full(n, 4, dtype=np.int32)
    out[t < 150] = 2
    out[t < 120] = 6
    out[t < 90] = 1
    out[t < 30] = 0
    return out


@pytest.fixture(scope="module")
def tree(dalia_tree: dict[str, Any]) -> dict[str, Any]:
    """The same subject in WESAD's layout: no activity/rpeaks/questionnaire, label at 700 Hz."""
    chest = dict(dalia_tree["signal"]["chest"])
    n = chest["ECG"].shape[0]
    return {
        "signal": {"chest": chest, "wrist": dict(dalia_tree["signal"]["wrist"])},
        "label": wesad_labels(n),
        "subject": "S2",
    }


def write(path: Path, obj: object, raw: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else pickle.dumps(obj, protocol=4))
    return path


# --- telling the layouts apart ------------------------------------------------------------------


def test_wesad_is_told_apart_from_dalia_by_its_keys(
    tree: dict[str, Any], dalia_tree: dict[str, Any]
) -> None:
    assert looks_like_wesad(tree)
    assert not looks_like_wesad(dalia_tree)
    no_activity = {k: v for k, v in dalia_tree.items() if k not in ("activity", "rpeaks")}
    no_activity.pop("gatewayd_synthetic")
    # PPG-DaLiA's label is one value per window: far shorter than the wrist BVP.
    assert not looks_like_wesad(no_activity)


def test_load_subject_pickle_reads_wesad(
    tmp_path: Path, tree: dict[str, Any], dalia_tree: dict[str, Any]
) -> None:
    pkl = write(tmp_path / "S2" / "S2.pkl", tree)
    rec = load_subject_pickle(pkl, cache_dir=tmp_path / "cache")
    assert (rec.source, rec.subject, rec.name) == ("wesad", "S2", "S2")
    assert rec.hr_ref_kind == "ecg-derived"
    assert rec.label_names == WESAD_LABELS
    np.testing.assert_array_equal(rec.bvp, tree["signal"]["wrist"]["BVP"][:, 0].astype(np.float32))
    np.testing.assert_array_equal(rec.acc, tree["signal"]["wrist"]["ACC"].astype(np.float32))
    # Labels: 0 transient, 1 baseline, 6 -> unlabelled, 2 stress, 4 meditation.
    assert rec.labels is not None
    assert rec.labels.shape == (MINUTES * 60 * 4,)
    assert rec.label_for_window(0) == "transient"
    assert rec.label_for_window(20) == "baseline"  # 40-48 s
    assert rec.label_for_window(50) is None  # 100-108 s: "to be ignored"
    assert rec.label_for_window(62) == "stress"  # 124-132 s
    assert rec.group_for_window(20) == ActivityGroup.REST
    assert rec.group_for_window(0) == ActivityGroup.UNKNOWN
    # The derived reference follows the generator's true heart rate (what an R-peak reference
    # measures) on the windows it answers, and answers most of them on this clean ECG.
    truth = dalia_tree["label"].reshape(-1)
    assert rec.hr_ref_bpm is not None
    known = ~np.isnan(rec.hr_ref_bpm)
    assert known.mean() > 0.9
    err = np.abs(rec.hr_ref_bpm[known] - truth[: rec.hr_ref_bpm.size][known])
    assert float(np.median(err)) < 1.0
    assert float(err.max()) < 5.0
    # Discovery: the pickle is one recording of kind "dalia" (the pickle family).
    found = find_recordings(tmp_path)
    assert [s.path for s in found] == [pkl]
    assert load(found[0], cache_dir=tmp_path / "cache").source == "wesad"


def test_wesad_pickle_is_cached_after_the_first_load(tmp_path: Path, tree: dict[str, Any]) -> None:
    pkl = write(tmp_path / "S2.pkl", tree)
    cache = tmp_path / "cache"
    first = load_subject_pickle(pkl, cache_dir=cache)
    assert not first.metadata["from_cache"]
    assert list(cache.glob("wesad-S2-*.npz"))
    second = load_subject_pickle(pkl, cache_dir=cache)
    assert second.metadata["from_cache"]
    assert first.hr_ref_bpm is not None
    assert second.hr_ref_bpm is not None
    np.testing.assert_array_equal(first.hr_ref_bpm, second.hr_ref_bpm)
    assert first.labels is not None
    assert second.labels is not None
    np.testing.assert_array_equal(first.labels, second.labels)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_chest_ecg_is_kept_and_the_rest_of_the_chest_skipped(
    tree: dict[str, Any], protocol: int
) -> None:
    raw = py2_pickle(tree, protocol) if protocol in (0, 2) else pickle.dumps(tree, protocol)
    loaded = restricted_load(io.BytesIO(raw), "S2.pkl", keep_chest=frozenset({"ECG"}))
    chest: Any = loaded.obj["signal"]["chest"]  # type: ignore[index]
    np.testing.assert_array_equal(chest["ECG"], tree["signal"]["chest"]["ECG"])
    assert not isinstance(chest["EMG"], np.ndarray)
    assert not isinstance(chest["ACC"], np.ndarray)
    skipped = sum(a.nbytes for k, a in tree["signal"]["chest"].items() if k != "ECG")
    assert loaded.skipped_bytes >= skipped


def test_python2_protocol0_wesad_pickle_loads(tmp_path: Path, tree: dict[str, Any]) -> None:
    pkl = write(tmp_path / "S3.pkl", None, raw=py2_pickle(tree, 0))
    rec = load_wesad(pkl, use_cache=False)
    assert rec.source == "wesad"
    assert rec.hr_ref_bpm is not None
    assert np.isfinite(rec.hr_ref_bpm).mean() > 0.9


def test_dalia_pickles_are_still_read_once(tmp_path: Path, dalia_tree: dict[str, Any]) -> None:
    from gatewayd.datasets import load_dalia

    pkl = write(tmp_path / "S1.pkl", dalia_tree)
    opener = CountingOpener()
    rec = load_dalia(pkl, cache_dir=tmp_path / "cache", opener=opener)
    assert rec.source == "synthetic"
    assert opener.opened == [pkl]
    assert load_subject_pickle(pkl, cache_dir=tmp_path / "cache").source == "synthetic"


# --- malformed ------------------------------------------------------------------------------


def test_wesad_without_chest_ecg_is_a_dataset_error(tmp_path: Path, tree: dict[str, Any]) -> None:
    broken = {**tree, "signal": {**tree["signal"], "chest": dict(tree["signal"]["chest"])}}
    del broken["signal"]["chest"]["ECG"]
    pkl = write(tmp_path / "S4.pkl", broken)
    with pytest.raises(DatasetError, match=r"S4\.pkl: missing key signal\.chest\.ECG"):
        load_subject_pickle(pkl, use_cache=False)


def test_wesad_label_and_ecg_lengths_must_match(tmp_path: Path, tree: dict[str, Any]) -> None:
    broken = {**tree, "label": tree["label"][:-700]}
    pkl = write(tmp_path / "S5.pkl", broken)
    with pytest.raises(DatasetError, match="label has"):
        load_wesad(pkl, use_cache=False)


def test_truncated_wesad_pickle_is_a_dataset_error(tmp_path: Path, tree: dict[str, Any]) -> None:
    raw = pickle.dumps(tree, protocol=4)
    pkl = write(tmp_path / "S6.pkl", None, raw=raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"S6\.pkl"):
        load_subject_pickle(pkl, use_cache=False)


def test_wesad_e4_zip_next_to_the_pickle_is_skipped(tmp_path: Path, tree: dict[str, Any]) -> None:
    import zipfile

    pkl = write(tmp_path / "S2" / "S2.pkl", tree)
    with zipfile.ZipFile(tmp_path / "S2" / "S2_E4_Data.zip", "w") as zf:
        zf.writestr("BVP.csv", "1.0\n64.0\n0.5\n")
        zf.writestr("ACC.csv", "1.0,1.0,1.0\n32.0,32.0,32.0\n0,0,64\n")
    assert [s.path for s in find_recordings(tmp_path)] == [pkl]


# --- labels and the R-peak helpers ----------------------------------------------------------


def test_labels_at_4hz_take_the_commonest_raw_label() -> None:
    raw = np.concatenate([np.full(175, 1), np.full(100, 2), np.full(75, 3), np.full(175, 7)])
    assert wesad_labels_at_4hz(raw).tolist() == [1, 2, -1]


def test_hr_from_rpeaks_is_60_over_the_mean_rr_inside_each_window() -> None:
    beats = np.arange(0.3, 30.0, 0.8)  # 75 bpm
    hr = hr_from_rpeaks(beats, 12)
    np.testing.assert_allclose(hr, 75.0)
    # Only intervals with both beats inside [2i, 2i + 8) count: a slower beat after 20 s shows
    # in the windows that hold it, not before.
    slow = np.concatenate([np.arange(0.3, 20.0, 0.8), 19.5 + np.arange(1, 12) * 1.2])
    hr = hr_from_rpeaks(slow, 11)
    assert hr[5] == pytest.approx(75.0)  # 10-18 s
    # 18-26 s: beats 18.7, 19.5, then 20.7 ... 25.5: one 0.8 s and five 1.2 s intervals.
    assert hr[9] == pytest.approx(60.0 * 6 / (0.8 + 5 * 1.2))
    assert hr[10] == pytest.approx(50.0)  # 20-28 s: 20.7 ... 27.9, all 1.2 s apart
    # An RR outside 0.25-2 s is dropped (a missed beat); too few intervals: NaN.
    gap = np.array([0.0, 0.8, 1.6, 1.6 + MAX_RR_S + 0.5, 4.9, 5.7, 6.5])
    assert hr_from_rpeaks(gap, 1)[0] == pytest.approx(75.0)
    assert np.isnan(hr_from_rpeaks(np.array([0.5, 1.5]), 1)[0])


def test_hr_regularity_gate_drops_windows_with_a_missed_beat() -> None:
    beats = np.arange(0.3, 30.0, 0.8)
    missed = np.delete(beats, 12)  # a 1.6 s interval at about 10 s
    plain = hr_from_rpeaks(missed, 12)
    gated = hr_from_rpeaks(missed, 12, max_deviation=0.25)
    assert np.isnan(gated[4])  # 8-16 s holds the missed beat
    assert np.isfinite(plain[4])
    assert gated[0] == pytest.approx(75.0)


def test_detect_rpeaks_finds_the_generators_beats(dalia_tree: dict[str, Any]) -> None:
    ecg = dalia_tree["signal"]["chest"]["ECG"][:, 0]
    truth = dalia_tree["rpeaks"]
    found = detect_rpeaks(ecg, CHEST_RATE_HZ)
    nearest = np.abs(found[:, None] - truth[None, :]).min(axis=1)
    assert abs(found.size - truth.size) <= 2
    assert np.mean(nearest <= 0.02 * CHEST_RATE_HZ) > 0.98
    # Either polarity.
    flipped = detect_rpeaks(-ecg, CHEST_RATE_HZ)
    assert abs(flipped.size - truth.size) <= 2
