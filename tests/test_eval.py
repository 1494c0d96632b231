"""`gatewayd eval hr`: the MAE it prints is the MAE computed here independently."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gatewayd.cli import main
from gatewayd.datasets import Recording, find_recordings, load, write_synthetic_dataset
from gatewayd.errors import EXIT_UNAVAILABLE
from gatewayd.eval import (
    ACC_MOTION_THRESHOLD,
    BASELINE,
    acc_motion,
    evaluate,
    mae,
    model_moving,
    plan_estimators,
)
from gatewayd.inference import ACTIVITY_CLASSES, softmax
from gatewayd.signals import HrTracker, preprocess_window

TROIKA = Path(__file__).resolve().parents[2] / "shared" / "data" / "troika"


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two synthetic subjects of 2 minutes (57 windows each), the PPG-DaLiA cache in tmp."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "data"
    write_synthetic_dataset(out, subjects=2, minutes=2.0, seed=7)
    return out


def recordings(path: Path) -> list[Recording]:
    return [load(s) for s in find_recordings(path)]


def run_json(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else {}, err


def independent_signal_mae(recording: Recording) -> tuple[int, float]:
    tracker = HrTracker()
    errors = []
    for i in range(recording.window_count()):
        bvp, acc = recording.window(i)
        bpm = tracker.update(bvp, acc).bpm
        ref = recording.hr_for_window(i)
        if bpm is not None and ref is not None:
            errors.append(abs(bpm - ref))
    return len(errors), sum(errors) / len(errors)


def test_signal_mae_is_exactly_the_trackers(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc, _ = run_json(["eval", "hr", str(dataset), "--estimator", "signal", "--json"], capsys)
    assert code == 0
    # The synthetic subjects carry PPG-DaLiA activities, so the rest/moving check runs too.
    assert set(doc) == {"recordings", "mean_mae_bpm", "activity"}
    assert set(doc["recordings"]) == {"S1", "S2"}
    maes = []
    for recording in recordings(dataset):
        windows, expected = independent_signal_mae(recording)
        got = doc["recordings"][recording.name]
        assert got == {"windows": windows, "mae_bpm": {"signal": pytest.approx(expected, abs=1e-9)}}
        maes.append(expected)
    assert doc["mean_mae_bpm"] == {"signal": pytest.approx(sum(maes) / 2, abs=1e-9)}


def test_model_mae_is_the_expected_value_computed_in_numpy(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_inference import install_tiny_model

    tiny = install_tiny_model(tmp_path / "models", "tiny", layout="conv2d")
    argv = ["eval", "hr", str(dataset), "--models-dir", str(tmp_path / "models"), "--json"]
    code, doc, _ = run_json([*argv, "--estimator", "both"], capsys)
    assert code == 0
    assert set(doc) == {"recordings", "mean_mae_bpm", "activity"}  # labelled: activity key
    for recording in recordings(dataset):
        bvp, acc = recording.windows()
        x = np.stack([preprocess_window(b, a) for b, a in zip(bvp, acc, strict=True)])
        hr = softmax(tiny.logits(x)[1]) @ (np.arange(200) + 30.0)
        windows, signal = independent_signal_mae(recording)
        tracker = HrTracker()
        signal_bpm = [tracker.update(b, a).bpm for b, a in zip(bvp, acc, strict=True)]
        tracked = [
            i
            for i, bpm in enumerate(signal_bpm)
            if bpm is not None and recording.hr_for_window(i) is not None
        ]
        assert len(tracked) == windows
        assert recording.hr_ref_bpm is not None
        expected = float(np.mean(np.abs(hr[tracked] - recording.hr_ref_bpm[tracked])))
        got = doc["recordings"][recording.name]
        assert set(got) == {"windows", "mae_bpm"}
        assert got["windows"] == windows
        assert got["mae_bpm"]["signal"] == pytest.approx(signal, abs=1e-9)
        assert got["mae_bpm"]["model"] == pytest.approx(expected, abs=1e-4)
    assert set(doc["mean_mae_bpm"]) == {"signal", "model"}

    # The model alone is scored on every window with a reference.
    code, alone, _ = run_json([*argv, "--estimator", "model"], capsys)
    assert code == 0
    assert {k: v["windows"] for k, v in alone["recordings"].items()} == {"S1": 57, "S2": 57}
    assert set(alone["mean_mae_bpm"]) == {"model"}


def test_text_output_names_recordings_and_the_mean(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "hr", str(dataset), "--estimator", "signal"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "RECORDING",
        "WINDOWS",
        "SKIPPED",
        "MAE",
        "SIGNAL",
        "(bpm)",
    ]
    assert "S1" in out
    assert "mean over recordings" in out


def test_model_asked_for_but_not_installed(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["eval", "hr", str(dataset), "--models-dir", str(empty), "--json"]

    code, doc, err = run_json([*argv, "--estimator", "model"], capsys)
    assert code == EXIT_UNAVAILABLE
    assert doc == {}
    assert "no model is installed" in err

    # `both`: the signal results are printed, and the exit status says the model did not run.
    code, doc, err = run_json([*argv, "--estimator", "both"], capsys)
    assert code == EXIT_UNAVAILABLE
    assert set(doc["mean_mae_bpm"]) == {"signal"}
    assert "only the signal estimator ran" in err

    # Nothing asked for: signal alone is what there is, not an error.
    code, doc, _ = run_json(argv, capsys)
    assert code == 0
    assert set(doc["mean_mae_bpm"]) == {"signal"}


def test_no_recordings_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "hr", str(tmp_path), "--estimator", "signal"]) == 1
    assert "no recordings found under" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("requested", "have_model", "expected"),
    [
        (None, True, (("signal", "model"), False)),
        (None, False, (("signal",), False)),
        ("signal", False, (("signal",), False)),
        ("model", True, (("model",), False)),
        ("model", False, ((), True)),
        ("both", True, (("signal", "model"), False)),
        ("both", False, (("signal",), True)),
    ],
)
def test_plan_estimators(requested: str | None, have_model: bool, expected: object) -> None:
    assert plan_estimators(requested, have_model=have_model) == expected  # type: ignore[arg-type]


def test_mae_helpers() -> None:
    assert mae([1.0, 3.0], [2.0, 2.0]) == 1.0
    assert math.isnan(mae([], []))
    still = np.full((256, 3), 64.0)
    shaking = still + 30.0 * np.where(np.arange(256) % 2, 1.0, -1.0)[:, None]
    np.testing.assert_allclose(acc_motion(np.stack([still, shaking])), [0.0, 30.0 * math.sqrt(3)])
    probs = np.zeros((2, 9))
    probs[0, ACTIVITY_CLASSES.index("walking")] = 0.6
    probs[0, ACTIVITY_CLASSES.index("sitting")] = 0.4
    probs[1, ACTIVITY_CLASSES.index("cycling")] = 0.3
    probs[1, ACTIVITY_CLASSES.index("working")] = 0.7
    assert model_moving(probs).tolist() == [True, False]


def test_rest_vs_moving_baseline_on_phase_labels() -> None:
    """A recording still for 60 s then shaking for 60 s, with rest/run phases to match."""
    rng = np.random.default_rng(0)
    t = np.arange(120 * 64) / 64
    bvp = (100 * np.sin(2 * np.pi * 1.2 * t) + rng.standard_normal(t.size)).astype(np.float32)
    ta = np.arange(120 * 32) / 32
    acc = np.tile([0.0, 0.0, 64.0], (ta.size, 1))
    acc[ta >= 60] += 40 * np.sin(2 * np.pi * 2.5 * ta[ta >= 60])[:, None]
    phase = np.repeat(np.array([0, 1], dtype=np.int8), 60 * 4)
    recording = Recording(
        name="treadmill",
        source="troika",
        subject="99",
        bvp=bvp,
        acc=acc.astype(np.float32),
        hr_ref_bpm=np.full(57, 72.0),
        hr_ref_kind="ecg",
        labels=phase,
        label_names=("rest", "run"),
    )
    report = evaluate([recording], ["signal"])
    assert report.activity is not None
    # 57 windows; the one straddling the change (56-64 s, 4 s each) has no group.
    assert report.activity.windows == 56
    assert report.activity.accuracy[BASELINE] >= 0.9
    assert ACC_MOTION_THRESHOLD == 15.0
    doc = report.to_json()
    assert set(doc) == {"recordings", "mean_mae_bpm", "activity"}
    assert doc["recordings"]["treadmill"]["windows"] == 57  # type: ignore[index]


@pytest.mark.needs_data
def test_troika_signal_estimator(capsys: pytest.CaptureFixture[str]) -> None:
    if not any(TROIKA.glob("DATA_*.mat")):
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    code, doc, _ = run_json(["eval", "hr", str(TROIKA), "--estimator", "signal", "--json"], capsys)
    assert code == 0
    assert len(doc["recordings"]) == 5
    assert sum(r["windows"] for r in doc["recordings"].values()) > 600
    # Measured 2.25 bpm (docs/signals.md, docs/models.md); the bound leaves a margin.
    assert doc["mean_mae_bpm"]["signal"] < 3.5
    assert 0.6 < doc["activity"]["accuracy"][BASELINE] <= 1.0
