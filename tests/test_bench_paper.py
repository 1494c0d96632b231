"""`gatewayd bench paper`: a --quick smoke run writes its artefacts, well formed (not what the
figures are); the sweep takes the wearable core's own decisions; with out-of-fold answers,
Figure 5's points are what the gateway reports at each policy; the pure helpers' arithmetic."""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gatewayd.bench.models import ModelBench
from gatewayd.bench.paper import (
    PaperOptions,
    PaperReport,
    Progress,
    _figure4,
    _figure5,
    check_options,
)
from gatewayd.bench.paper_accuracy import (
    ALL_OFFLOADED,
    HeldOutScorer,
    accuracy_point,
    held_out_setup,
    replay_held_out,
)
from gatewayd.bench.paper_activity import (
    ActivityRow,
    MappingCheck,
    PublishedWindow,
    end_to_end_available,
    figure4,
)
from gatewayd.bench.paper_common import EXPERIMENTS, markdown_table
from gatewayd.bench.paper_energy import (
    SessionWindows,
    WindowCosts,
    decisions,
    energy_point,
    replay_session,
    session_from_table,
    sweep_energy,
)
from gatewayd.bench.paper_loss import loss_curves, read_run, training_available
from gatewayd.bench.paper_table1 import PAPER_DELTA_POINTS, table1
from gatewayd.cli import main
from gatewayd.datasets import find_recordings, generate_recording, load
from gatewayd.datasets.synthetic import write_synthetic_dataset
from gatewayd.emulator.virtual import pick_wearable_model
from gatewayd.emulator.wearable import LocalActivity
from gatewayd.energy import local_window, offloaded_window
from gatewayd.errors import EXIT_USAGE
from gatewayd.eval import OffloadCounts, OutOfFold, mae, offload_counts, replay
from gatewayd.inference import ModelRegistry, ModelSession
from gatewayd.inference.analysis import HrFusion
from gatewayd.inference.cards import ModelCard
from gatewayd.protocol.messages import SampleFormat
from gatewayd.signals.offload import OffloadReason

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100
    assert height > 100
    assert data[-8:-4] == b"IEND"


def assert_markdown_table(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("## ")
    lines = text.splitlines()
    assert any(line.startswith("| ---") for line in lines), path
    return text


@pytest.mark.parametrize(
    "only",
    [
        # Everything: Figure 3 trains four tiny networks (about 75 s) and Figure 4 replays its
        # sessions end to end (about 50 s; the fold-model test below replays too): make bench.
        pytest.param(None, marks=pytest.mark.slow, id="all"),
        # The rest, with Figure 6's tiny training run, in make test.
        pytest.param("table1,fig5,fig6", id="table1-fig5-fig6"),
    ],
)
def test_quick_run_writes_every_artefact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], only: str | None
) -> None:
    out = tmp_path / "paper"
    args = ["bench", "paper", "--quick", "--out", str(out), "--json"]
    asked = set(EXPERIMENTS) if only is None else set(only.split(","))
    assert main(args if only is None else [*args, "--only", only]) == 0
    index = json.loads(capsys.readouterr().out)
    assert index == json.loads((out / "paper.json").read_text(encoding="utf-8"))
    assert index["quick"] is True
    assert index["sessions"]["kind"] == "synthetic"
    expected = ["table1", "fig5_energy"]
    end_to_end = end_to_end_available() is None and "fig4" in asked
    if end_to_end:
        expected.append("fig4")
    else:
        assert "fig4" in index["not_run"]
    can_train = training_available() is None
    if can_train:
        expected += ["fig6_loss"]
    else:
        assert "fig6" in index["not_run"]
    if can_train and "fig3" in asked:
        expected += ["fig3"]
    else:
        assert "fig3" in index["not_run"]
    assert sorted(index["artefacts"]) == sorted(expected)
    for key in expected:
        assert index["artefacts"][key] == [
            str(out / f"{key}.{ext}") for ext in ("json", "md", "png")
        ]
        assert_png(out / f"{key}.png")
        assert_markdown_table(out / f"{key}.md")

    t1 = json.loads((out / "table1.json").read_text(encoding="utf-8"))
    assert t1["artefact"] == "table1"
    assert len(t1["paper_table_1"]) == 5
    assert {r["dtype"] for r in t1["rows"]} == {"fp32", "int8"}
    assert {r["pruning_pct"] for r in t1["rows"]} == {0, 20, 40, 60, 80}
    for row in t1["rows"]:
        for key in ("size_mb", "macs", "latency_ms", "mcu_latency_ms", "mcu_energy_mj",
                    "activity_top1", "hr_mae_bpm", "vs_unpruned", "paper"):  # fmt: skip
            assert key in row
        assert set(row["vs_unpruned"]) >= {"size", "macs", "latency", "top1_delta_points"}

    if "fig3" in expected:
        f3 = json.loads((out / "fig3.json").read_text(encoding="utf-8"))
        assert f3["artefact"] == "fig3"
        assert f3["origin"].startswith("--quick")
        assert f3["trained_the_same_way"] is True
        assert [r["arch"] for r in f3["rows"]] == [
            "mobilenetv2", "squeezenet", "shufflenetv2", "efficientnet-lite0",
        ]  # fmt: skip
        for row in f3["rows"]:
            assert row["latency_ms"] > 0
            assert row["mcu_energy_mj_int8"] > 0
            assert row["activity_accuracy"] is not None
            assert set(row["vs_reference"]) == {
                "size", "macs", "latency", "accuracy_delta_points", "hr_mae_delta_bpm",
            }  # fmt: skip
        assert "synthetic data" in (out / "fig3.md").read_text(encoding="utf-8")

    f5 = json.loads((out / "fig5_energy.json").read_text(encoding="utf-8"))
    assert f5["artefact"] == "fig5"
    assert f5["sessions"]["kind"] == "synthetic"
    assert f5["core_agrees"] is True
    assert f5["decisions"] == "shipped_model"
    assert f5["accuracy"] is None
    assert "oof.npz" in f5["accuracy_note"]
    assert "oof.npz" in index["not_run"]["fig5_accuracy"]
    assert f5["costs"]["window"]["notifications"] >= 1
    assert f5["points"]
    point = f5["points"][0]
    assert set(point) >= {"tau_mbits", "min_conf_e4", "offload_ratio", "local_only", "as_built"}
    assert set(point["as_built"]) == {"mj_per_window", "saved_vs_local_only", "battery_h"}
    assert f5["groups"]
    assert "synthetic" in (out / "fig5_energy.md").read_text(encoding="utf-8")
    assert "oof.npz" in (out / "fig5_energy.md").read_text(encoding="utf-8")

    if end_to_end:
        assert_figure4(out / "fig4.json", (out / "fig4.md").read_text(encoding="utf-8"))

    if can_train:
        f6 = json.loads((out / "fig6_loss.json").read_text(encoding="utf-8"))
        assert f6["artefact"] == "fig6"
        assert f6["run"]["synthetic"] is True
        assert set(f6["curves"]) == {"full", "p40"}
        assert f6["curves"]["full"]["train_mean"]
        assert "synthetic" in (out / "fig6_loss.md").read_text(encoding="utf-8")

    md = (out / "paper.md").read_text(encoding="utf-8")
    assert "## Not run" in md
    assert "Figure 3" in md
    assert "Figure 4" in md


def assert_figure4(path: Path, markdown: str) -> None:
    """fig4.json is well formed: every synthetic session replayed end to end, rows per label,
    per group and in all, each with its figures (not what they are)."""
    f4 = json.loads(path.read_text(encoding="utf-8"))
    assert f4["artefact"] == "fig4"
    assert f4["sessions"]["kind"] == "synthetic"
    assert f4["sessions"]["replayed"] == f4["run"]["wearables"] == f4["sessions"]["recordings"]
    assert f4["run"]["speed"] > 1
    check = f4["mapping_check"]
    assert set(check) == {"published_windows", "offload_decision_agrees", "local_windows",
                          "local_activity_agrees", "holds"}  # fmt: skip
    assert isinstance(check["holds"], bool)
    assert f4["labels"]
    assert all(r["name"].startswith("synthetic: ") for r in f4["labels"])
    assert {r["name"] for r in f4["groups"]} <= {"rest", "light", "vigorous", "unknown"}
    rows = [*f4["labels"], *f4["groups"], f4["all"]]
    for row in rows:
        assert set(row) >= {"windows", "published", "offload_ratio", "accuracy", "hr_mae_bpm",
                            "latency_ms", "energy_mj_per_window"}  # fmt: skip
        assert set(row["accuracy"]) == {"edge_assisted", "local_only"}
        assert set(row["latency_ms"]) >= {"p50", "p95"}
        assert 0 <= row["published"] <= row["windows"]
    assert f4["all"]["windows"] == sum(r["windows"] for r in f4["labels"])
    assert f4["all"]["windows"] == sum(r["windows"] for r in f4["groups"])
    assert "synthetic" in markdown
    assert "### By activity group" in markdown


def published(
    group: int,
    activity: int,
    *,
    offloaded: bool = False,
    local: int | None = None,
    hr: float = 70.0,
    ref: float = 72.0,
    latency: float = 5.0,
) -> PublishedWindow:
    """A published window of BAMI's "walking"; the wearable's own answer ``local`` (default:
    what was published), its heart rate 1 bpm below the published one."""
    return PublishedWindow(
        recording=0, source="bami", label="walking", group=group, ref_hr=ref, published=True,
        activity=activity, hr_bpm=hr, offloaded=offloaded, latency_ms=latency,
        local_activity=activity if local is None else local, local_hr=hr - 1,
        local_offloaded=offloaded,
    )  # fmt: skip


def test_figure4_rows_score_what_was_published_against_local_only() -> None:
    c = costs()
    rows = [
        published(1, 1, latency=2.0),
        published(1, 2, offloaded=True, local=1, hr=80.0, latency=9.0),
        published(1, 1, offloaded=True, local=0, latency=7.0),
        published(255, 0, ref=math.nan),
        replace(published(1, 1), published=False, activity=255, hr_bpm=math.nan),
    ]
    row = ActivityRow.of("bami: walking", "light", rows, c)
    assert (row.windows, row.published, row.offloaded, row.scored) == (5, 4, 2, 3)
    assert (row.correct, row.local_correct) == (2, 2)
    assert row.hr_windows == 3
    assert row.hr_mae == pytest.approx((2 + 8 + 2) / 3)
    assert row.local_hr_mae == pytest.approx((3 + 7 + 3) / 3)
    assert row.latency["local_p50"] == 2.0
    assert row.edge_j == pytest.approx((2 * c.local_j + 2 * c.offloaded_j) / 4)
    fig = figure4(rows, c, model_id="m", sessions={"describe": "x"}, run={"describe": "y"})
    assert [r.name for r in fig.labels] == ["bami: walking"]
    assert {r.name: r.windows for r in fig.groups} == {"light": 4, "unknown": 1}
    assert fig.mapping.holds
    moved = [*rows, replace(rows[0], activity=2)]
    assert not MappingCheck.of(moved).holds


def test_only_runs_what_is_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "paper"
    assert main(["bench", "paper", "--quick", "--out", str(out), "--only", "table1", "--json"]) == 0
    index = json.loads(capsys.readouterr().out)
    assert list(index["artefacts"]) == ["table1"]
    for key in ("fig3", "fig4", "fig5", "fig6"):
        assert "not asked for (--only)" in index["not_run"][key]
    assert main(["bench", "paper", "--only", "fig7"]) == EXIT_USAGE


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out")
    assert main(["bench", "paper", "--quick", "--out", out, "--data", str(empty)]) == EXIT_USAGE
    assert main(["bench", "paper", "--quick", "--out", out, "--run", str(empty)]) == EXIT_USAGE
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps(HISTORY), encoding="utf-8")
    np.savez(run / "oof.npz", recording=np.array(["S1"]))
    assert main(["bench", "paper", "--quick", "--out", out, "--run", str(run)]) == EXIT_USAGE
    assert main(["bench", "paper", "--quick", "--out", out, "--arch-run", str(empty)]) == EXIT_USAGE
    assert not (tmp_path / "out").exists()


def fake_model(index: int) -> LocalActivity:
    """A local model whose confidence walks over 0..10000 from window to window."""
    return LocalActivity(0, (index * 997) % 10001)


def test_the_sweep_takes_the_decisions_the_core_takes_at_each_policy() -> None:
    recording = generate_recording(2, 4.0, 3, events=[("fall", 60.0)])
    base = replay_session(recording, fake_model)
    assert base.motion.any()
    assert not base.motion.all()
    for tau, conf in ((0, 0), (3900, 3000), (4000, 7000), (65535, 5000), (4050, 10000)):
        again = replay_session(recording, fake_model, tau_mbits=tau, min_conf_e4=conf)
        np.testing.assert_array_equal(decisions(base, tau, conf) != 0, again.offloaded)
    result = sweep_energy([base], WindowCosts.of(1000, int8=True, summary_bytes=32,
                                                 window_bytes=2604))  # fmt: skip
    assert result.core_agrees


def costs() -> WindowCosts:
    return WindowCosts.of(8_549_240, int8=True, summary_bytes=32, window_bytes=2604)


def test_window_costs_come_from_the_energy_model() -> None:
    c = costs()
    assert c.local_j == local_window(8_549_240, int8=True).total_j
    assert c.offloaded_j == offloaded_window(8_549_240, int8=True).total_j
    assert c.offloaded_skip_j == offloaded_window(8_549_240, int8=True, infer=False).total_j
    # docs/energy.md: at MTU 247 a SUMMARY is 1 packet, a WINDOW 11 packets of 2879 octets.
    assert (c.summary.notifications, c.summary.ll_packets) == (1, 1)
    assert (c.window.ll_packets, c.window.air_bytes) == (11, 2879)


def test_an_energy_point_prices_each_decision() -> None:
    c = costs()
    reasons = np.array(
        [
            0,
            int(OffloadReason.ENTROPY),
            int(OffloadReason.LOW_CONFIDENCE),
            int(OffloadReason.MOTION | OffloadReason.LOW_CONFIDENCE),
        ]
    )
    p = energy_point(reasons, c, 4050, 5000)
    assert (p.windows, p.offloaded, p.skippable) == (4, 3, 2)
    assert (p.entropy, p.confidence, p.motion) == (1, 2, 1)
    assert p.offload_ratio == 0.75
    assert p.as_built_j == pytest.approx((c.local_j + 3 * c.offloaded_j) / 4)
    assert p.model_skipped_j == pytest.approx(
        (c.local_j + c.offloaded_j + 2 * c.offloaded_skip_j) / 4
    )
    assert p.saved(p.as_built_j) == pytest.approx(1 - p.as_built_j / c.local_j)
    assert p.saved(p.as_built_j) < 0  # offloading as built only adds radio energy
    empty = energy_point(np.empty(0, np.int64), c, 4050, 5000)
    assert empty.windows == 0
    assert np.isnan(empty.offload_ratio)
    assert empty.to_json(2.0)["as_built"]["mj_per_window"] is None


def test_the_sweep_reports_each_activity_group() -> None:
    n = 6
    windows = SessionWindows(
        name="s",
        source="synthetic",
        entropy_mbits=np.array([3000, 4200, 3000, 4200, 3000, 3000]),
        confidence_e4=np.array([9000, 9000, 1000, 9000, 9000, 9000]),
        motion=np.zeros(n, np.bool_),
        group=np.array([0, 0, 2, 2, 255, 255]),
        offloaded=np.array([False, True, True, True, False, False]),
        tau_mbits=4050,
        min_conf_e4=5000,
        summary_bytes=32,
        window_bytes=2604,
    )
    result = sweep_energy([windows], costs(), taus=(4050,), confs=(5000,))
    assert result.core_agrees
    assert list(result.groups) == ["rest", "vigorous", "unknown"]
    assert [p.offloaded for p in result.pooled] == [3]
    assert result.groups["rest"][0].offloaded == 1
    assert result.groups["vigorous"][0].offloaded == 2
    assert result.groups["unknown"][0].offloaded == 0


def bench(model_id: str, pruning: int, size: float, macs: int, top1: float | None) -> ModelBench:
    return ModelBench(
        model_id=model_id, role="wearable", family="f", pruning_pct=pruning, layout="conv2d",
        size_mb=size, params=1, macs=macs, latency_ms=size / 10, throughput_wps=1.0, batch=1,
        activity_top1=top1, hr_mae_bpm=10.0 + pruning / 10, evaluated_on="held out",
        synthetic_training=False,
    )  # fmt: skip


def test_table1_ratios_are_to_the_unpruned_model_of_the_same_type() -> None:
    assert PAPER_DELTA_POINTS == {0: 0.0, 20: -0.6, 40: -2.1, 60: -4.9, 80: -10.2}
    t = table1(
        [
            (bench("q40", 40, 1.0, 4_000_000, 0.75), "int8-static"),
            (bench("f40", 40, 4.0, 4_000_000, 0.75), "none"),
            (bench("f0", 0, 10.0, 10_000_000, 0.80), "none"),
            (bench("q0", 0, 2.5, 10_000_000, 0.80), "int8-static"),
            (bench("f30", 30, 5.0, 5_000_000, None), "none"),
        ],
        runs=3,
        environment={},
    )
    assert [r.bench.model_id for r in t.rows] == ["f0", "f30", "f40", "q0", "q40"]
    by_id = {r.bench.model_id: r for r in t.rows}
    f40, q40 = by_id["f40"].vs_unpruned, by_id["q40"].vs_unpruned
    assert f40 is not None
    assert q40 is not None
    assert f40["size"] == pytest.approx(0.4)
    assert q40["size"] == pytest.approx(0.4)
    assert f40["macs"] == pytest.approx(0.4)
    assert f40["top1_delta_points"] == pytest.approx(-5.0)
    assert f40["hr_mae_delta_bpm"] == pytest.approx(4.0)
    assert by_id["f30"].vs_unpruned is not None
    assert by_id["f30"].vs_unpruned["top1_delta_points"] is None
    assert by_id["f30"].paper is None
    assert by_id["f40"].paper is not None
    assert by_id["f40"].paper.pruning_pct == 40
    # int8 at 2 cycles/MAC, fp32 at 6: the same MACs take three times as long in fp32.
    assert by_id["f40"].mcu_ms == pytest.approx(3 * by_id["q40"].mcu_ms)
    assert by_id["q40"].mcu_ms == pytest.approx(4_000_000 * 2 / 64e6 * 1e3)
    assert by_id["f0"].feasible  # 10 M MACs in fp32: 0.94 s of the 2 s step
    row = t.to_json()["rows"][0]
    assert row["paper"]["vs_unpruned"]["top1_delta_points"] == 0.0


HISTORY = {
    "folds": [
        {
            "held_out": ["a:1"],
            "model": {"train": [3.0, 2.0, 1.0], "val": [3.5, 3.0, 2.5]},
            "pruned": {"p40": {"train": [2.0, 1.5], "val": [3.0, 2.8]},
                       "p20": {"train": [1.8, 1.4], "val": [2.9, 2.7]}},
        },
        {
            "held_out": ["a:2"],
            "model": {"train": [5.0, 4.0, 3.0], "val": [4.5, 4.0, 3.5]},
            "pruned": {"p40": {"train": [4.0, 3.5], "val": [4.0, 3.8]},
                       "p20": {"train": [3.8, 3.4], "val": [3.9, 3.7]}},
        },
    ],
    "final": {"train": [4.0, 3.0, 2.0], "val": []},
    "final_p40": {"train": [3.0, 2.5], "val": []},
}  # fmt: skip


def test_loss_curves_read_a_training_history() -> None:
    curves = loss_curves(HISTORY)
    assert [c.name for c in curves] == ["full", "p20", "p40"]
    full = curves[0]
    assert full.mean("train") == [4.0, 3.0, 2.0]
    assert full.mean("val") == [4.0, 3.5, 3.0]
    assert full.final_train == [4.0, 3.0, 2.0]
    assert curves[2].final_train == [3.0, 2.5]
    assert curves[1].final_train == []
    with pytest.raises(ValueError, match="no loss curve"):
        loss_curves({"folds": []})


def test_a_run_folder_gives_the_figure_and_says_what_it_trained_on(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"history\.json"):
        read_run(tmp_path)
    (tmp_path / "history.json").write_text(json.dumps(HISTORY), encoding="utf-8")
    figure = read_run(tmp_path)
    assert figure.synthetic is None
    (tmp_path / "cv.json").write_text(
        json.dumps({"synthetic": True, "datasets": ["synthetic (generator)"], "command": "c"}),
        encoding="utf-8",
    )
    figure = read_run(tmp_path)
    assert figure.synthetic is True
    assert figure.to_json()["run"]["command"] == "c"


def test_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    plain = io.StringIO()
    progress = Progress(4, plain, bar=False)
    for stage in ("a", "a", "b", "b"):
        progress.step(stage)
    assert plain.getvalue().splitlines() == [
        "gatewayd bench paper: a (1/4)",
        "gatewayd bench paper: b (3/4)",
    ]
    tty = io.StringIO()
    progress = Progress(2, tty, bar=True)
    progress.step("a", "x")
    progress.step("a", "y")
    assert "[" + "#" * 24 + "] 2/2 a: y" in tty.getvalue()
    assert tty.getvalue().endswith("\n")


def test_markdown_tables_align_numbers_right() -> None:
    assert markdown_table(("a", "b"), [["x", "1"]]) == ["| a | b |", "| --- | ---: |", "| x | 1 |"]


# --- Figure 5 held out: out-of-fold answers ------------------------------------------------------


def shipped_models() -> tuple[ModelSession, ModelSession]:
    """The wearable's model (40 %) and the gateway's (unpruned), as installed."""
    registry = ModelRegistry.discover()
    wearable = pick_wearable_model(registry, 40)
    gateway = [m for m in registry.for_role("gateway") if m.card.pruning_pct == 0]
    if wearable is None or not gateway:
        pytest.skip("the shipped models are not installed in gatewayd/models")
    return (ModelSession(wearable.card, wearable.path, threads=1),
            ModelSession(gateway[0].card, gateway[0].path, threads=1))  # fmt: skip


def fake_out_of_fold(
    recordings: list[Any], cards: tuple[ModelCard, ...], seed: int = 0
) -> dict[str, Any]:
    """Arrays as a training run writes oof.npz (every other window, the training's 4 s stride),
    with seeded random logits in place of fold models'."""
    rng = np.random.default_rng(seed)
    names = [r.name for r in recordings for i in range(0, r.window_count(), 2)]
    windows = [i for r in recordings for i in range(0, r.window_count(), 2)]
    arrays: dict[str, Any] = {"recording": np.array(names), "window": np.array(windows)}
    for card in cards:
        n, level = len(names), card.pruning_pct
        classes, bins = len(card.outputs.activity_classes), card.outputs.hr_bin_count
        arrays[f"act_logits_p{level}"] = rng.normal(0, 2, (n, classes)).astype(np.float32)
        arrays[f"hr_logits_p{level}"] = rng.normal(0, 3, (n, bins)).astype(np.float32)
    return arrays


def test_held_out_points_are_what_the_gateway_reports_at_each_policy() -> None:
    """One replay with every window offloaded, the rule applied per point, gives exactly the
    decisions, bad-window recall and reported answers of `gatewayd eval`'s replay at that
    policy."""
    recording = generate_recording(2, 4.0, 3)
    wearable, gateway = shipped_models()
    oof = OutOfFold.from_arrays(fake_out_of_fold([recording], (wearable.card, gateway.card)))
    # The model's heart rate whenever it has one, so the reported HR differs from the wearable's.
    setup = held_out_setup(oof, wearable, gateway, HrFusion("fused", -1.0, 1.01))
    table = replay_held_out(recording, setup)
    tau, conf = ALL_OFFLOADED
    session = session_from_table(table, tau_mbits=tau, min_conf_e4=conf,
                                 sample_format=SampleFormat.INT16)  # fmt: skip
    measured = replay_session(recording, fake_model)
    assert (session.summary_bytes, session.window_bytes) == (
        measured.summary_bytes,
        measured.window_bytes,
    )
    score = HeldOutScorer([table])
    offloaded = set()
    for tau, conf in ((3900, 6000), (4050, 5000), (65535, 8000), (4050, 0)):
        exact = replay(recording, replace(setup, tau_mbits=tau, min_conf_e4=conf))
        off = decisions(session, tau, conf) != 0
        np.testing.assert_array_equal(off, exact.offloaded)
        point = score(off)
        counts = offload_counts(exact)
        assert (point.windows, point.offloaded, point.bad, point.bad_offloaded) == (
            counts.windows, counts.offloaded, counts.bad, counts.bad_offloaded)  # fmt: skip
        hr = ~np.isnan(exact.ref_hr) & ~np.isnan(exact.local_hr) & ~np.isnan(table.gateway_hr)
        assert point.hr_windows == int(hr.sum()) > 0
        assert point.local_hr_mae_bpm == pytest.approx(mae(exact.local_hr[hr], exact.ref_hr[hr]))
        assert point.reported_hr_mae_bpm == pytest.approx(
            mae(exact.gateway_hr[hr], exact.ref_hr[hr])
        )
        known = exact.truth != 255
        assert point.activity_windows == int(known.sum()) > 0
        assert point.reported_activity_accuracy == pytest.approx(
            float(np.mean(exact.gateway_activity[known] == exact.truth[known]))
        )
        offloaded.add(point.offloaded)
        if point.offloaded:
            assert point.reported_hr_mae_bpm != point.local_hr_mae_bpm
    assert len(offloaded) > 2  # the policies took different decisions
    # Per group: the same figures on the group's windows only.
    rest = table.truth == 0
    assert score(off, rest).windows == int(rest.sum())


def test_an_accuracy_point_swaps_the_wearables_answers_for_the_gateways() -> None:
    every = OffloadCounts(windows=10, offloaded=10, scored=9, bad=4, bad_offloaded=4,
                          hr_windows=8, wearable_abs_err=40.0, gateway_abs_err=24.0,
                          act_windows=5, wearable_right=2, gateway_right=4)  # fmt: skip
    chosen = OffloadCounts(windows=10, offloaded=3, scored=9, bad=4, bad_offloaded=3,
                           hr_windows=2, wearable_abs_err=20.0, gateway_abs_err=6.0,
                           act_windows=2, wearable_right=0, gateway_right=2)  # fmt: skip
    p = accuracy_point(every, chosen)
    assert p.bad_window_recall == 0.75
    assert p.local_hr_mae_bpm == 5.0
    assert p.reported_hr_mae_bpm == (40 - 20 + 6) / 8
    assert p.hr_mae_change_bpm == pytest.approx(-14 / 8)
    assert p.local_activity_accuracy == 0.4
    assert p.reported_activity_accuracy == 0.8
    assert p.to_json()["activity_accuracy"]["change"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="every window"):
        accuracy_point(chosen, chosen)


def test_figure5_with_out_of_fold_answers_writes_the_accuracy_cost(tmp_path: Path) -> None:
    """Well formed, not what the figures are: the held-out path's JSON, Markdown and PNG."""
    wearable, gateway = shipped_models()
    # Labelled as PPG-DaLiA (the layout the generator writes), as if measured, so that the
    # out-of-fold answers apply: a synthetic session never takes them.
    measured = replace(generate_recording(2, 4.0, 3), source="dalia")
    synthetic = generate_recording(2, 1.0, 5)
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps(HISTORY), encoding="utf-8")
    np.savez(run / "oof.npz", **fake_out_of_fold([measured], (wearable.card, gateway.card)))
    # The run's own exported models: their cards read its answers (as `eval --models-dir`).
    (run / "models").mkdir()
    for model in (wearable, gateway):
        for path in (model.path, model.path.with_name(model.path.name + ".json")):
            (run / "models" / path.name).symlink_to(path)
    options = PaperOptions(out=tmp_path / "out", run=run)
    check_options(options)
    sessions = {"kind": "real", "describe": "one relabelled synthetic session", "label": "test"}
    report = PaperReport(options=options, environment={}, sessions=sessions)
    _figure5(report, ModelRegistry.discover(), [measured, synthetic],
             Progress(3, io.StringIO(), bar=False))  # fmt: skip
    out = tmp_path / "out"
    assert_png(out / "fig5_energy.png")
    md = assert_markdown_table(out / "fig5_energy.md")
    assert "Held out" in md
    assert "activity accuracy reported" in md
    f5 = json.loads((out / "fig5_energy.json").read_text(encoding="utf-8"))
    assert f5["decisions"] == "held_out"
    assert f5["core_agrees"] is True
    assert f5["out_of_fold"]["recordings"] == 1
    assert f5["out_of_fold"]["cards_from"] == str(run / "models")
    assert f5["out_of_fold"]["left_out"] == {"measured_not_covered": 0, "synthetic": 1}
    assert f5["accuracy"]["local_only"]["activity_windows"] > 0
    assert set(f5["accuracy"]["definitions"]) >= {"reported", "local_only", "hr_mae_bpm"}
    assert f5["accuracy"]["default_policy"]["windows"] == f5["out_of_fold"]["windows"]
    for point in [*f5["points"], *(p for g in f5["groups"].values() for p in g)]:
        acc = point["accuracy"]
        assert acc["windows"] == point["windows"]
        assert acc["offloaded"] == point["offloaded"]
        assert set(acc["hr_mae_bpm"]) == {"windows", "local_only", "reported", "change"}
        assert set(acc["activity_accuracy"]) == {"windows", "local_only", "reported", "change"}
    assert "fig5_accuracy" not in report.not_run


@pytest.mark.skipif(end_to_end_available() is not None, reason="no dbus-daemon for the emulator")
def test_figure4_with_fold_models_replays_each_session_by_the_fold_that_held_it_out(
    tmp_path: Path,
) -> None:
    """`gatewayd-train --export-folds`'s layout: one end-to-end run per fold, its sessions only,
    with that fold's models; sessions no fold held out are left out and said so."""
    wearable, gateway = shipped_models()
    # Two minutes each, 12 s at --quick's 10x: a gateway slow to start on a loaded machine
    # (it connected 5-10 s after the emulator with three busy loops beside it) still gets some.
    paths = write_synthetic_dataset(tmp_path / "sessions", 3, 2.0, 7)
    found = [s for p in paths for s in find_recordings(p)]
    recordings = [load(s) for s in found]
    keys = [r.subject_key for r in recordings]
    run = tmp_path / "run"
    for k in (1, 2):
        folder = run / "folds" / f"fold-{k}"
        folder.mkdir(parents=True)
        for model in (wearable, gateway):
            for path in (model.path, model.path.with_name(model.path.name + ".json")):
                (folder / path.name).symlink_to(path)
    index = {"folds": [{"fold": 1, "dir": "fold-1", "held_out": [keys[0]]},
                       {"fold": 2, "dir": "fold-2", "held_out": [keys[1], "bami:99"]}]}  # fmt: skip
    (run / "folds" / "folds.json").write_text(json.dumps(index), encoding="utf-8")
    options = PaperOptions(out=tmp_path / "out", run=run, quick=True)
    sessions = {"kind": "real", "describe": "three synthetic sessions", "label": "test",
                "recordings": len(recordings)}  # fmt: skip
    report = PaperReport(options=options, environment={}, sessions=sessions)
    progress = Progress(len(recordings) + 21, io.StringIO(), bar=False)
    _figure4(report, ModelRegistry.discover(), recordings, found, progress)
    assert "fig4" not in report.not_run, report.not_run
    f4 = json.loads((tmp_path / "out" / "fig4.json").read_text(encoding="utf-8"))
    assert f4["run"]["held_out_by_fold"] == str(run / "folds" / "folds.json")
    assert [(r["models"], r["sessions"]) for r in f4["run"]["runs"]] == [
        ("fold-1", 1), ("fold-2", 1),
    ]  # fmt: skip
    assert f4["run"]["left_out_no_fold"] == [recordings[2].name]
    assert f4["run"]["wearables"] == 2
    assert f4["run"]["left_out_without_ppg"] == 0
    assert "Held out" in f4["run"]["describe"]
    assert "sessions no fold held out" in f4["run"]["describe"]
    windows = sum(r.window_count() for r in recordings[:2])
    assert f4["all"]["windows"] == windows
    # Windows made before the gateway first connected are not owed to it: the bench's list
    # records no numbering at pairing (docs/protocol.md §4).
    assert 0 < f4["all"]["published"] <= windows
    assert f4["mapping_check"]["holds"] is True
