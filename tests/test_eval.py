"""`gatewayd eval hr | activity | offload`: what it prints is recomputed here independently.

The synthetic recordings are labelled synthetic (gatewayd.datasets.synthetic); the wearable is
replayed with `WearableCore` as the emulator runs it, so the independent computations below
start from the same wire samples and the same messages.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.cli import main
from gatewayd.config import InferenceConfig
from gatewayd.datasets import Recording, find_recordings, load, write_synthetic_dataset
from gatewayd.emulator.virtual import pick_wearable_model
from gatewayd.emulator.wearable import WearableCore, WearableSpec
from gatewayd.errors import EXIT_CONFIG, EXIT_UNAVAILABLE
from gatewayd.eval import (
    ACC_MOTION_THRESHOLD,
    BASELINE,
    MAJORITY,
    ReplaySetup,
    WindowTable,
    acc_motion,
    bad_windows,
    format_fusion_sweep,
    mae,
    on_cadence,
    plan_estimators,
    replay,
    roc_auc,
    score_activity,
    score_offload,
    sweep_fusion,
    sweep_offload,
)
from gatewayd.inference import ModelRegistry, ModelSession, softmax
from gatewayd.protocol.messages import Window, decode_message, summary_of
from gatewayd.signals import HrTracker
from gatewayd.signals.filters import preprocess_window
from gatewayd.signals.offload import offload_confidence_e4

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


def wearable(recording: Recording, session: ModelSession | None = None, **policy: int) -> list[Any]:
    """The wearable's decoded messages, replayed independently of gatewayd.eval."""
    spec = WearableSpec("C0:FF:EE:00:00:09", "w", recording, boot_id=5, **policy)  # type: ignore[arg-type]
    core = WearableCore(spec, local_model=session)
    return [decode_message(raw) for _, raw in core.produce(math.inf)]


def wire_windows(recording: Recording) -> list[tuple[np.ndarray, np.ndarray]]:
    core = WearableCore(WearableSpec("C0:FF:EE:00:00:09", "w", recording, boot_id=5))
    return [core.wire_samples(i) for i in range(recording.window_count())]


def shipped_wearable_model() -> ModelSession:
    picked = pick_wearable_model(ModelRegistry.discover(), 40)
    if picked is None:
        pytest.skip("no wearable model pruned 40 % is installed in gatewayd/models")
    return ModelSession(picked.card, picked.path)


# --- eval hr -------------------------------------------------------------------------------------


def test_signal_mae_is_exactly_the_wearables_tracker_on_its_wire_samples(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "hr", str(dataset), "--estimator", "signal", "--wearable-model", "none"]
    code, doc, _ = run_json([*argv, "--json"], capsys)
    assert code == 0
    assert {"recordings", "mean_mae_bpm", "datasets", "estimators"} <= set(doc)
    assert set(doc["recordings"]) == {"S1", "S2"}
    maes = []
    for recording in recordings(dataset):
        tracker = HrTracker()
        errors = []
        for i, (bvp, acc) in enumerate(wire_windows(recording)):
            bpm = tracker.update(bvp, acc).bpm
            ref = recording.hr_for_window(i)
            if bpm is not None and ref is not None:
                # The wire carries centi-bpm: what the gateway reports is rounded so.
                errors.append(abs(round(bpm * 100) / 100 - ref))
        got = doc["recordings"][recording.name]
        assert got["windows"] == len(errors)
        assert got["mae_bpm"] == {"signal": pytest.approx(np.mean(errors), abs=1e-9)}
        maes.append(float(np.mean(errors)))
    assert doc["mean_mae_bpm"] == {"signal": pytest.approx(np.mean(maes), abs=1e-9)}
    assert doc["datasets"]["synthetic"]["recordings"] == 2


def test_model_and_gateway_mae_are_recomputed_in_numpy(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_inference import install_tiny_model

    tiny = install_tiny_model(tmp_path / "models", "tiny", layout="conv2d")
    argv = ["eval", "hr", str(dataset), "--models-dir", str(tmp_path / "models"), "--json"]
    code, doc, _ = run_json(argv, capsys)
    assert code == 0
    assert doc["estimators"] == ["signal", "model", "gateway"]
    assert doc["wearable_model_id"] is None  # no wearable model in that folder
    centres = np.arange(200) + 30.0
    for recording in recordings(dataset):
        x = np.stack([preprocess_window(b, a) for b, a in wire_windows(recording)])
        probs = softmax(tiny.logits(x)[1])
        model_hr = probs @ centres
        model_conf = ((np.abs(centres[None] - model_hr[:, None]) <= 10) * probs).sum(axis=1)
        gateway, signal, ref = [], [], []
        for i, m in enumerate(wearable(recording)):
            s = summary_of(m)
            r = recording.hr_for_window(i)
            if s.hr_bpm is None or r is None:
                continue
            # The default fusion: the model's HR on an offloaded window when it is the more
            # confident by the default margin (the wearable's confidence is its signal quality).
            margin = InferenceConfig().hr_model_margin
            take = isinstance(m, Window) and model_conf[i] > s.signal_quality / 100 + margin
            gateway.append(model_hr[i] if take else s.hr_bpm)
            signal.append(s.hr_bpm)
            ref.append(r)
        kept = [
            i
            for i, m in enumerate(wearable(recording))
            if summary_of(m).hr_bpm is not None and recording.hr_for_window(i) is not None
        ]
        got = doc["recordings"][recording.name]
        assert got["windows"] == len(ref)
        assert got["mae_bpm"]["signal"] == pytest.approx(mae(signal, ref), abs=1e-9)
        assert got["mae_bpm"]["model"] == pytest.approx(mae(model_hr[kept], ref), abs=1e-4)
        assert got["mae_bpm"]["gateway"] == pytest.approx(mae(gateway, ref), abs=1e-4)

    # The model alone is scored on every window with a reference.
    code, alone, _ = run_json([*argv, "--estimator", "model"], capsys)
    assert code == 0
    assert {k: v["windows"] for k, v in alone["recordings"].items()} == {"S1": 57, "S2": 57}
    assert set(alone["mean_mae_bpm"]) == {"model"}


def test_windows_csv_holds_every_window_as_the_report_scored_it(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    from tests.test_inference import install_tiny_model

    install_tiny_model(tmp_path / "models", "tiny", layout="conv2d")
    out = tmp_path / "windows.csv"
    argv = ["eval", "hr", str(dataset), "--models-dir", str(tmp_path / "models")]
    code, doc, err = run_json([*argv, "--json", "--windows-csv", str(out)], capsys)
    assert code == 0
    assert f"wrote {out}" in err
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for recording in recordings(dataset):
        mine = [r for r in rows if r["recording"] == recording.name]
        messages = wearable(recording)
        assert [int(r["window"]) for r in mine] == list(range(len(messages)))
        assert {r["subject"] for r in mine} == {recording.subject_key}
        for r, m in zip(mine, messages, strict=True):
            s = summary_of(m)
            assert r["offloaded"] == str(int(isinstance(m, Window)))
            assert r["wearable_hr_bpm"] == ("" if s.hr_bpm is None else str(round(s.hr_bpm, 2)))
            assert int(r["offload_confidence_e4"]) == offload_confidence_e4(
                s.activity_conf_e4, s.signal_quality, s.hr_cbpm, s.activity
            )
            # Scored for offload when it has a reference (this set has no labels); bad only then.
            assert r["scored"] == ("1" if r["ref_hr_bpm"] else "0")
            assert r["bad_hr"] == "0" or r["scored"] == "1"
        # The report's gateway MAE, from the rows: windows with a reference and every estimate.
        kept = [r for r in mine if r["ref_hr_bpm"] and r["wearable_hr_bpm"] and r["model_hr_bpm"]]
        errors = [abs(float(r["gateway_hr_bpm"]) - float(r["ref_hr_bpm"])) for r in kept]
        got = doc["recordings"][recording.name]["mae_bpm"]["gateway"]
        assert np.mean(errors) == pytest.approx(got, abs=0.01)
        assert {r["gateway_hr_source"] for r in kept} <= {"signal", "model"}
    # A file it cannot write: a clear error and no report.
    code, _, err = run_json([*argv, "--windows-csv", str(tmp_path / "no" / "such.csv")], capsys)
    assert code != 0
    assert "--windows-csv" in err
    assert "No such file or directory" in err


def test_text_output_names_recordings_and_the_mean(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "hr", str(dataset), "--estimator", "signal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("gateway model: none")
    assert lines[1].split() == ["RECORDING", "WINDOWS", "SKIPPED", "MAE", "SIGNAL", "(bpm)"]
    assert any(line.startswith("S1 ") for line in lines)
    assert any(line.startswith("mean over recordings") for line in lines)


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

    # Nothing asked for: the wearable and the gateway's degraded mode, not an error.
    code, doc, _ = run_json(argv, capsys)
    assert code == 0
    assert set(doc["mean_mae_bpm"]) == {"signal", "gateway"}


@pytest.mark.parametrize("what", ["hr", "activity", "offload"])
def test_no_recordings_is_an_error(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", what, str(tmp_path)]) == 1
    assert "no recordings found under" in capsys.readouterr().err


def test_eval_runs_the_rules_of_a_config_file_given_with_config(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "activity", str(dataset), "--json"]
    code, default, _ = run_json(argv, capsys)
    assert code == 0
    # Limits every synthetic heart rate exceeds: the config's rules raise what the defaults do not.
    strict = tmp_path / "strict.toml"
    limits = "rest_bpm = {0}\nlight_bpm = {0}\nvigorous_bpm = {0}\nunknown_bpm = {0}\n"
    strict.write_text(
        "[rules.tachycardia]\n" + limits.format(41.0) + "min_duration_s = 0.0\n"
        "[rules.bradycardia]\n" + limits.format(30.0),
        encoding="utf-8",
    )
    code, doc, _ = run_json([*argv, "--config", str(strict)], capsys)
    assert code == 0
    raised = doc["alerts"]["synthetic"]["raised"]
    assert raised.get("tachycardia", 0) == 2  # once per recording: the run never ends
    assert default["alerts"]["synthetic"]["raised"].get("tachycardia", 0) < 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[rules.activities]\nvigorous_motion_g = "x"\n', encoding="utf-8")
    code, _, err = run_json([*argv, "--config", str(bad)], capsys)
    assert code == EXIT_CONFIG
    assert "rules.activities.vigorous_motion_g" in err


def test_a_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "offload", "x", "--tau-mbits", "lots"]) == 64
    assert "invalid int value" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("requested", "have_model", "expected"),
    [
        (None, True, (("signal", "model", "gateway"), False)),
        (None, False, (("signal", "gateway"), False)),
        ("signal", False, (("signal",), False)),
        ("model", True, (("model",), False)),
        ("model", False, ((), True)),
        ("both", True, (("signal", "model", "gateway"), False)),
        ("both", False, (("signal",), True)),
    ],
)
def test_plan_estimators(requested: str | None, have_model: bool, expected: object) -> None:
    assert plan_estimators(requested, have_model=have_model) == expected  # type: ignore[arg-type]


def test_roc_auc_counts_ties_half() -> None:
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert roc_auc([0.1, 0.5, 0.5, 0.9], [False, False, True, True]) == pytest.approx(0.875)
    assert math.isnan(roc_auc([0.1, 0.2], [True, True]))


def test_mae_and_acc_motion() -> None:
    assert mae([1.0, 3.0], [2.0, 2.0]) == 1.0
    assert math.isnan(mae([], []))
    still = np.full((256, 3), 64.0)
    shaking = still + 30.0 * np.where(np.arange(256) % 2, 1.0, -1.0)[:, None]
    np.testing.assert_allclose(acc_motion(np.stack([still, shaking])), [0.0, 30.0 * math.sqrt(3)])


# --- eval activity -------------------------------------------------------------------------------


def test_activity_json_and_the_wearables_accuracy_recomputed(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = shipped_wearable_model()
    code, doc, _ = run_json(["eval", "activity", str(dataset), "--json"], capsys)
    assert code == 0
    assert {"methods", "accuracy", "windows", "datasets", "recordings", "majority"} <= set(doc)
    assert {"model", "wearable", "gateway", MAJORITY, BASELINE} <= set(doc["methods"])
    for method, acc in doc["accuracy"].items():
        assert set(acc) == {"groups", "rest_vs_moving"}, method
    assert doc["accuracy"][BASELINE]["groups"] is None  # it only tells rest from moving
    truth, local = [], []
    for recording in recordings(dataset):
        for i, m in enumerate(wearable(recording, session)):
            group = int(recording.group_for_window(i))
            if group != int(ActivityGroup.UNKNOWN):
                truth.append(group)
                local.append(summary_of(m).activity)
    assert doc["windows"] == len(truth)
    t, w = np.array(truth), np.array(local)
    assert doc["accuracy"]["wearable"]["groups"] == pytest.approx(np.mean(w == t), abs=1e-12)
    rest = int(ActivityGroup.REST)
    rvm = np.mean((w != 255) & ((w != rest) == (t != rest)))
    assert doc["accuracy"]["wearable"]["rest_vs_moving"] == pytest.approx(rvm, abs=1e-12)
    # The majority is a constant: its accuracy is that group's share.
    top = max(set(truth), key=truth.count)
    assert doc["majority"]["groups"] == ["rest", "light", "vigorous"][top]
    assert doc["accuracy"][MAJORITY]["groups"] == pytest.approx(truth.count(top) / len(truth))


def treadmill(pulse_hz: float = 1.2) -> Recording:
    """Still for 60 s then shaking for 60 s, rest/run phase labels to match, a steady pulse."""
    rng = np.random.default_rng(0)
    t = np.arange(120 * 64) / 64
    bvp = (100 * np.sin(2 * np.pi * pulse_hz * t) + rng.standard_normal(t.size)).astype(np.float32)
    ta = np.arange(120 * 32) / 32
    acc = np.tile([0.0, 0.0, 64.0], (ta.size, 1))
    acc[ta >= 60] += 40 * np.sin(2 * np.pi * 2.5 * ta[ta >= 60])[:, None]
    phase = np.repeat(np.array([0, 1], dtype=np.int8), 60 * 4)
    return Recording(
        name="treadmill", source="troika", subject="99", bvp=bvp, acc=acc.astype(np.float32),
        hr_ref_bpm=np.full(57, 60.0 * pulse_hz), hr_ref_kind="ecg", labels=phase,
        label_names=("rest", "run"),
    )  # fmt: skip


def test_rest_vs_moving_threshold_on_phase_labels() -> None:
    report = score_activity([replay(treadmill(), ReplaySetup())])
    # 57 windows; the one straddling the change (56-64 s, 4 s each) has no group.
    assert report.pooled.windows == 56
    assert report.pooled.accuracy[BASELINE]["rest_vs_moving"] >= 0.9  # type: ignore[operator]
    assert ACC_MOTION_THRESHOLD == 15.0
    assert "wearable" not in report.methods  # no local model: it claims no activity
    assert report.to_json()["recordings"]["treadmill"]["windows"] == 56  # type: ignore[index]


def test_the_alerts_are_the_rules_on_what_the_gateway_reported() -> None:
    """72 bpm throughout raises nothing; 150 bpm sitting still (group unknown without a model:
    its limit, 130) raises a tachycardia, counted in the report per dataset."""
    calm = replay(treadmill(1.2), ReplaySetup())
    racing = replay(treadmill(2.5), ReplaySetup())
    assert calm.alerts == ()
    kinds = {kind for _, kind in racing.alerts}
    assert "tachycardia" in kinds
    first = min(i for i, kind in racing.alerts if kind == "tachycardia")
    assert racing.gateway_hr[first] > 130
    counts = score_activity([calm, racing]).to_json()["alerts"]
    assert counts["troika"]["recordings"] == 2  # type: ignore[index]
    assert counts["troika"]["recordings_with_alerts"] == 1  # type: ignore[index]
    assert counts["troika"]["raised"]["tachycardia"] == sum(  # type: ignore[index]
        kind == "tachycardia" for _, kind in racing.alerts
    )


# --- eval offload --------------------------------------------------------------------------------


def test_offload_ratio_is_the_share_of_window_messages_and_recall_adds_up(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = shipped_wearable_model()
    policy = {"tau_mbits": 3900, "min_conf_e4": 5000}
    argv = ["eval", "offload", str(dataset), "--tau-mbits", "3900", "--min-conf-e4", "5000"]
    code, doc, _ = run_json([*argv, "--json", "--sweep"], capsys)
    assert code == 0
    assert doc["policy"]["tau_mbits"] == 3900
    total = offloaded = 0
    for recording in recordings(dataset):
        messages = wearable(recording, session, **policy)
        windows = sum(isinstance(m, Window) for m in messages)
        got = doc["recordings"][recording.name]
        assert got["windows"] == len(messages)
        assert got["offload_ratio"] == pytest.approx(windows / len(messages), abs=1e-12)
        c = got["counts"]
        assert c["bad_offloaded"] <= c["bad"] <= c["scored"] <= got["windows"]
        assert c["bad"] <= c["bad_hr"] + c["bad_activity"]
        if c["bad"]:
            assert got["bad_window_recall"] == pytest.approx(c["bad_offloaded"] / c["bad"])
        total, offloaded = total + len(messages), offloaded + windows
    assert doc["offload_ratio"] == pytest.approx(offloaded / total, abs=1e-12)
    # The sweep recomputes decisions from the summaries' integers: at the policy the wearables
    # ran, it finds exactly what they did.
    point = next(
        p for p in doc["sweep"]["curves"]["pooled"]
        if (p["tau_mbits"], p["min_conf_e4"]) == (3900, 5000)
    )  # fmt: skip
    assert point["offload_ratio"] == pytest.approx(doc["offload_ratio"], abs=1e-12)
    assert point["bad_window_recall"] == pytest.approx(doc["bad_window_recall"], abs=1e-12)
    assert {"chosen", "held_out", "fold_choices", "alternatives"} <= set(doc["sweep"])


def test_bad_windows_follow_the_definition() -> None:
    table = replay(_synthetic_recordings()[0], ReplaySetup(wearable_model=shipped_wearable_model()))
    scored, bad_hr, bad_act = bad_windows(table)
    has_ref = ~np.isnan(table.ref_hr)
    labelled = table.truth != 255
    np.testing.assert_array_equal(scored, has_ref | labelled)
    off = np.abs(table.local_hr - table.ref_hr)
    np.testing.assert_array_equal(bad_hr, has_ref & (np.isnan(table.local_hr) | (off > 10)))
    np.testing.assert_array_equal(bad_act, labelled & (table.local_activity != table.truth))
    report = score_offload([table])
    assert report.pooled.bad == int((bad_hr | bad_act).sum())
    assert report.pooled.offloaded == int(table.offloaded.sum())
    # Without a local model the activity criterion does not apply: it claimed nothing.
    plain = replay(_synthetic_recordings()[0], ReplaySetup())
    assert not bad_windows(plain)[2].any()


def table(subject: str, seed: int, n: int = 200) -> WindowTable:
    """A replayed recording written down by hand: low confidence makes most bad windows."""
    rng = np.random.default_rng(seed)
    quality = rng.integers(0, 101, n)
    ref = np.full(n, 80.0)
    wrong = rng.random(n) < np.where(quality < 40, 0.8, 0.05)
    local = np.where(wrong, 100.0, 81.0)
    nan = np.full(n, np.nan)
    unknown = np.full(n, 255)
    return WindowTable(
        name=f"rec-{subject}", source="synthetic", subject_key=f"synthetic:{subject}",
        has_bvp=True, local_model=False, ref_hr=ref, truth=unknown,
        entropy_mbits=rng.integers(3500, 4200, n), local_activity=unknown,
        activity_conf_e4=quality * 100, local_hr=local, signal_quality=quality,
        flags=np.zeros(n, dtype=np.int64), offloaded=np.zeros(n, dtype=bool), model_hr=nan,
        model_hr_conf=nan, model_activity=unknown, gateway_hr=local,
        gateway_hr_source=np.zeros(n, dtype=np.int64), gateway_activity=unknown,
        acc_motion=rng.random(n), baseline_activity=unknown, spectral_entropy=rng.random(n) * 4,
        cadence_bpm=nan,
    )  # fmt: skip


def test_the_sweep_chooses_the_best_recall_within_the_target_and_plots(tmp_path: Path) -> None:
    tables = [table(s, seed) for seed, s in enumerate("abc")]
    sweep = sweep_offload(tables, target_ratio=0.35)
    feasible = [p for p in sweep.curves["pooled"] if p.offload_ratio <= 0.35]
    best = max(p.bad_window_recall for p in feasible)
    assert sweep.chosen.offload_ratio <= 0.35
    assert best > 0.6  # the low-quality windows are the bad ones: the confidence finds them
    enough = [p for p in feasible if p.bad_window_recall >= 0.8]
    if enough:  # both targets met: the least offload that does it
        assert sweep.chosen.bad_window_recall >= 0.8
        assert sweep.chosen.offload_ratio == min(p.offload_ratio for p in enough)
    else:
        assert sweep.chosen.bad_window_recall == pytest.approx(best)
    # A tighter budget: nothing catches 80 %, so the best recall within it.
    tight = sweep_offload(tables, target_ratio=0.1)
    within = [p for p in tight.curves["pooled"] if p.offload_ratio <= 0.1]
    assert tight.chosen.bad_window_recall == pytest.approx(max(p.bad_window_recall for p in within))
    assert set(sweep.held_out) == {"pooled", "synthetic"}
    assert sum(sweep.fold_choices.values()) == 3  # one choice per held-out subject
    # Held out, each subject is scored with a policy chosen on the other two.
    ratio, recall = sweep.held_out["pooled"]
    assert 0.0 < ratio <= 0.5
    assert recall > 0.5
    assert {(a.term, a.confidence) for a in sweep.alternatives} == {
        (t, c) for t in ("entropy", "spectral_entropy", "acc_motion", "none")
        for c in ("min", "product", "product_no_rest", "activity", "hr")
    }  # fmt: skip
    # The quality makes the bad windows here: it ranks them far better than chance.
    assert sweep.auc["pooled"]["1 - hr quality"] > 0.8
    assert 0.3 < sweep.auc["pooled"]["acc_motion"] < 0.7  # noise
    pytest.importorskip("matplotlib")
    from gatewayd.eval import plot_offload_sweep

    out = tmp_path / "sweep.png"
    plot_offload_sweep(sweep, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_fusion_sweep_finds_the_trust_ceiling_held_out() -> None:
    """Wearable right when its quality >= 60, the model confident and wrong there, right below."""
    tables = []
    for seed, s in enumerate("abcd"):
        t = table(s, seed)
        n = len(t)
        high = t.signal_quality >= 60
        local = np.where(high, 81.0, 100.0)  # right when the wearable is sure
        model_hr = np.where(high, 95.0, 80.0)  # wrong exactly there, right below
        model_conf = np.where(high, 0.95, 0.7)  # and more confident than the wearable
        tables.append(
            replace(t, local_hr=local, gateway_hr=local, model_hr=model_hr,
                    model_hr_conf=model_conf, offloaded=np.ones(n, dtype=bool))
        )  # fmt: skip
    sweep = sweep_fusion(tables)
    means = sweep.mean_mae_bpm
    assert means["signal"] == pytest.approx(np.mean([mae(t.local_hr, t.ref_hr) for t in tables]))
    # A margin alone cannot separate them (0.95 beats any quality); a ceiling in (0.4, 0.6] can.
    assert min(means[f"margin {m:+.1f}"] for m in (-0.3, 0.0, 0.3)) > 3.0
    assert sweep.chosen[1] in (0.5, 0.6)
    assert means["fused (held out)"] == pytest.approx(
        np.mean([mae(np.where(t.signal_quality >= 60, 81.0, 80.0), t.ref_hr) for t in tables])
    )
    # No window has a cadence here: the cadence rule changes nothing.
    assert means["fused, margin and ceiling only (held out)"] == means["fused (held out)"]
    assert sum(sweep.fold_choices.values()) == 4  # one choice per held-out subject
    assert "trusted" in format_fusion_sweep(sweep)
    assert json.loads(json.dumps(sweep.to_json()))["chosen"]["trusted"] == sweep.chosen[1]


def test_the_fusion_sweep_finds_a_wearable_locked_on_the_cadence_held_out() -> None:
    """The wearable is sure of itself everywhere and wrong exactly where its HR is the cadence
    (or its double); the model, less sure, is right there: only the cadence margin finds it."""
    tables = []
    for seed, s in enumerate("abcd"):
        t = table(s, seed)
        n = len(t)
        locked = np.arange(n) % 3 == 0
        local = np.where(locked, 120.0, 81.0)
        cadence = np.where(locked, np.where(np.arange(n) % 2 == 0, 120.0, 60.0), 200.0)
        tables.append(
            replace(t, local_hr=local, gateway_hr=local, signal_quality=np.full(n, 90),
                    model_hr=np.full(n, 84.0), model_hr_conf=np.full(n, 0.6),
                    cadence_bpm=cadence, offloaded=np.ones(n, dtype=bool))
        )  # fmt: skip
    assert on_cadence(tables[0]).tolist() == (np.arange(len(tables[0])) % 3 == 0).tolist()
    sweep = sweep_fusion(tables)
    means = sweep.mean_mae_bpm
    # No plain margin helps: taking the model everywhere costs 3 bpm on two windows of three.
    assert min(means[f"margin {m:+.1f}"] for m in (-1.0, 0.0, 0.5, 1.0)) > 2.0
    margin, _, cadence_margin = sweep.chosen
    assert cadence_margin is not None
    assert cadence_margin < -0.3 < margin
    expected = [mae(np.where(t.local_hr == 120.0, 84.0, 81.0), t.ref_hr) for t in tables]
    assert means["fused (held out)"] == pytest.approx(np.mean(expected))
    # Without the cadence rule the held-out choice cannot find it.
    assert means["fused, margin and ceiling only (held out)"] > means["fused (held out)"] + 1.5
    assert "on cadence" in format_fusion_sweep(sweep)
    doc = json.loads(json.dumps(sweep.to_json()))
    assert doc["chosen"]["cadence_margin"] == cadence_margin
    assert sum(f["subjects"] for f in doc["fold_choices"]) == 4


def test_the_sweeps_rule_is_the_gateways_own_path() -> None:
    """Every window offloaded: the sweep's vectorised rule (cadence margin included) reports
    what the gateway's own path reported, window by window."""
    from gatewayd.eval import _fused
    from gatewayd.inference.analysis import HrFusion

    gateway = ModelRegistry.discover().for_role("gateway")
    if not gateway:
        pytest.skip("no gateway model is installed in gatewayd/models")
    session = ModelSession(gateway[0].card, gateway[0].path)
    from gatewayd.datasets.synthetic import _WALKING, generate_recording

    # A walk whose heart rate is twice the arm swing on 34 windows of 42 (synthetic data).
    walk = generate_recording(1, 1.5, seed=12, activities=[(_WALKING, 90.0)])
    on_rhythm = 0
    # Margin -1: the model is preferred except on the cadence, where +0.5 keeps the wearable's
    # heart rate unless the model is far surer; the last rule has no cadence margin.
    for rule in ((-1.0, 1.01, 0.5), (0.1, 1.01, -1.0), (-1.0, 0.8, None)):
        fusion = HrFusion("fused", *rule)
        for recording in [*_synthetic_recordings(), walk]:
            t = replay(recording, ReplaySetup(shipped_wearable_model(), session, tau_mbits=0,
                                              fusion=fusion))  # fmt: skip
            assert t.offloaded.all()
            np.testing.assert_allclose(_fused(t, rule), t.gateway_hr, atol=1e-4)
            plain = _fused(t, (*rule[:2], None))
            on_rhythm += int((np.abs(t.gateway_hr - plain) > 1e-6).sum())
    assert on_rhythm > 0  # the cadence margin decided some windows


def _synthetic_recordings() -> list[Recording]:
    from gatewayd.datasets.synthetic import generate_recording

    return [generate_recording(i, 1.5, seed=10 + i) for i in (1, 2, 3)]  # synthetic data


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_troika_wearable_tracker(capsys: pytest.CaptureFixture[str]) -> None:
    if not any(TROIKA.glob("DATA_*.mat")):
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    argv = ["eval", "hr", str(TROIKA), "--estimator", "signal", "--wearable-model", "none"]
    code, doc, _ = run_json([*argv, "--json"], capsys)
    assert code == 0
    assert len(doc["recordings"]) == 5
    assert sum(r["windows"] for r in doc["recordings"].values()) > 600
    # Measured 2.2-2.3 bpm (docs/signals.md); the bound leaves a margin.
    assert doc["mean_mae_bpm"]["signal"] < 3.5


# --- out-of-fold answers -------------------------------------------------------------------------


def test_out_of_fold_answers_replay_exactly_as_the_models_would() -> None:
    """Logits written as a training run writes them give the replay the models themselves give."""
    from gatewayd.eval import OutOfFold
    from gatewayd.inference.analysis import window_input

    recording = _synthetic_recordings()[0]
    wearable_model = shipped_wearable_model()
    gateway = ModelRegistry.discover().for_role("gateway")
    if not gateway:
        pytest.skip("no gateway model is installed in gatewayd/models")
    gateway_model = ModelSession(gateway[0].card, gateway[0].path)
    core = WearableCore(WearableSpec("C0:FF:EE:00:00:09", "w", recording, boot_id=5))
    every_other = list(range(0, recording.window_count(), 2))  # training's 4 s stride
    arrays: dict[str, Any] = {
        "recording": np.array([recording.name] * len(every_other)),
        "window": np.array(every_other),
    }
    for session in (gateway_model, wearable_model):
        x = []
        for i in every_other:
            bvp, acc = core.wire_samples(i)
            probe = Window(summary_of(wearable(recording)[0]), core.spec.sample_format, 64, 32, 64,
                           bvp, acc)  # fmt: skip
            x.append(window_input(probe, session.card))
        act, hr = session.run_logits(np.stack(x))
        level = session.card.pruning_pct
        arrays[f"act_logits_p{level}"], arrays[f"hr_logits_p{level}"] = act, hr
    oof = OutOfFold.from_arrays(arrays)
    policy = {"tau_mbits": 3900, "min_conf_e4": 6000}
    real = replay(recording, ReplaySetup(wearable_model, gateway_model, **policy))  # type: ignore[arg-type]
    folds = replay(
        recording,
        ReplaySetup(wearable_model, gateway_model, out_of_fold=oof, **policy),  # type: ignore[arg-type]
    )
    kept = real.subset(np.isin(np.arange(len(real)), every_other))
    assert len(folds) == len(kept) == len(every_other)
    for column in ("local_activity", "activity_conf_e4", "offloaded", "flags", "model_activity",
                   "gateway_activity"):  # fmt: skip
        np.testing.assert_array_equal(getattr(folds, column), getattr(kept, column), column)
    for column in ("local_hr", "model_hr", "model_hr_conf", "gateway_hr"):
        np.testing.assert_allclose(getattr(folds, column), getattr(kept, column), atol=1e-4)
    # A run's own temperatures (its cv.json) replace the card's, at their pruning level only: a
    # colder HR head is surer of its heart rate; the wearable's copy is untouched.
    calibration = gateway_model.card.calibration
    assert calibration is not None
    assert calibration.hr_temperature is not None
    colder = replace(oof, temperatures={gateway_model.card.pruning_pct: (
        calibration.activity_temperature, calibration.hr_temperature / 3)})  # fmt: skip
    sharp = replay(
        recording,
        ReplaySetup(wearable_model, gateway_model, out_of_fold=colder, **policy),  # type: ignore[arg-type]
    )
    np.testing.assert_array_equal(sharp.local_activity, folds.local_activity)
    np.testing.assert_array_equal(sharp.activity_conf_e4, folds.activity_conf_e4)
    known = ~np.isnan(folds.model_hr_conf)
    assert known.any()
    assert np.nanmean(sharp.model_hr_conf[known]) > np.nanmean(folds.model_hr_conf[known]) + 0.02


def test_a_runs_temperatures_are_read_from_its_cv_json() -> None:
    from gatewayd.eval import run_temperatures

    cv = {
        "calibration": {
            "p0": {"activity_temperature": 1.6, "hr_temperature": 1.3, "x": 1},
            "p40": {"activity_temperature": 1.2, "hr_temperature": None},
        }
    }
    assert run_temperatures(cv) == {0: (1.6, 1.3), 40: (1.2, None)}
    with pytest.raises(TypeError, match="calibration"):
        run_temperatures({})
    with pytest.raises(ValueError, match="p<pruning level>"):
        run_temperatures({"calibration": {"full": {"activity_temperature": 1.0}}})
    with pytest.raises(ValueError, match="p0: no usable"):
        run_temperatures({"calibration": {"p0": {"hr_temperature": 1.0}}})
    with pytest.raises(ValueError, match="positive"):
        run_temperatures({"calibration": {"p0": {"activity_temperature": 0.0}}})


def test_out_of_fold_arrays_are_checked() -> None:
    from gatewayd.eval import OutOfFold

    with pytest.raises(ValueError, match="no 'window'"):
        OutOfFold.from_arrays({"recording": np.array(["a"])})
    with pytest.raises(ValueError, match="no hr_logits_p40"):
        OutOfFold.from_arrays({"recording": np.array(["a"]), "window": np.array([0]),
                               "act_logits_p40": np.zeros((1, 3))})  # fmt: skip
    with pytest.raises(ValueError, match="no act_logits"):
        OutOfFold.from_arrays({"recording": np.array(["a"]), "window": np.array([0])})
    oof = OutOfFold.from_arrays({
        "recording": np.array(["a", "a"]), "window": np.array([0, 2]),
        "act_logits_p0": np.zeros((2, 3)), "hr_logits_p0": np.zeros((2, 200)),
        "probs_logistic": np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]),
    })  # fmt: skip
    assert oof.covered("a", 4).tolist() == [True, False, True, False]
    groups = oof.baseline_groups(("rest", "light", "vigorous"), "a", 4)
    assert groups.tolist() == [2, 255, 0, 255]


def test_a_bad_out_of_fold_file_is_an_error(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "oof.npz"
    np.savez(bad, recording=np.array(["S1"]))
    assert main(["eval", "offload", str(dataset), "--oof", str(bad)]) == 1
    assert "not out-of-fold outputs" in capsys.readouterr().err
    # A run's cv.json beside a good oof.npz that holds no temperatures says so.
    good = tmp_path / "run" / "oof.npz"
    good.parent.mkdir()
    np.savez(good, recording=np.array(["S1"]), window=np.array([0]),
             act_logits_p0=np.zeros((1, 3)), hr_logits_p0=np.zeros((1, 200)))  # fmt: skip
    (good.parent / "cv.json").write_text('{"calibration": {"p0": {}}}', encoding="utf-8")
    assert main(["eval", "offload", str(dataset), "--oof", str(good)]) == 1
    assert "cv.json: not a training run's cv.json" in capsys.readouterr().err


def test_out_of_fold_answers_of_models_on_another_input_are_named_as_such(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run trained on another model input than the cards' (v3 beside the shipped v2): the
    figures are that run's models', and the report says which input they were trained on."""
    gateway = ModelRegistry.discover().for_role("gateway")
    if not gateway:
        pytest.skip("no gateway model is installed in gatewayd/models")
    card_input = gateway[0].card.input.preprocessing
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "oof.npz", recording=np.array(["S1"]), window=np.array([0]),
             act_logits_p0=np.zeros((1, 3)), hr_logits_p0=np.zeros((1, 200)),
             act_logits_p40=np.zeros((1, 3)), hr_logits_p40=np.zeros((1, 200)))  # fmt: skip
    calibration = {f"p{level}": {"activity_temperature": 1.0, "hr_temperature": 1.0}
                   for level in (0, 40)}  # fmt: skip
    other = "gatewayd.signals.preprocess_window/v9"
    for trained_on, named in ((card_input, False), (other, True)):
        cv = {"calibration": calibration, "preprocessing": trained_on}
        (run / "cv.json").write_text(json.dumps(cv), encoding="utf-8")
        assert main(["eval", "activity", str(dataset), "--oof", str(run / "oof.npz"),
                     "--json"]) == 0  # fmt: skip
        out, err = capsys.readouterr()
        model_id = json.loads(out)["model_id"]
        assert model_id.startswith(gateway[0].card.model_id + f" (out-of-fold: {run / 'oof.npz'}")
        assert (f"models trained on input {other}" in model_id) == named
        assert ("not the cards'" in err) == named
