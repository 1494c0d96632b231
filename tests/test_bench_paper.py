"""`gatewayd bench paper`: a --quick smoke run writes every artefact, well formed (not what the
figures are); the sweep takes the wearable core's own decisions; the pure helpers' arithmetic."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gatewayd.bench.models import ModelBench
from gatewayd.bench.paper import NOT_RUN, Progress
from gatewayd.bench.paper_common import markdown_table
from gatewayd.bench.paper_energy import (
    SessionWindows,
    WindowCosts,
    decisions,
    energy_point,
    replay_session,
    sweep_energy,
)
from gatewayd.bench.paper_loss import loss_curves, read_run, training_available
from gatewayd.bench.paper_table1 import PAPER_DELTA_POINTS, table1
from gatewayd.cli import main
from gatewayd.datasets import generate_recording
from gatewayd.emulator.wearable import LocalActivity
from gatewayd.energy import local_window, offloaded_window
from gatewayd.errors import EXIT_USAGE
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


def test_quick_run_writes_every_artefact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "paper"
    assert main(["bench", "paper", "--quick", "--out", str(out), "--json"]) == 0
    index = json.loads(capsys.readouterr().out)
    assert index == json.loads((out / "paper.json").read_text(encoding="utf-8"))
    assert index["quick"] is True
    assert index["sessions"]["kind"] == "synthetic"
    for key in NOT_RUN:
        assert key in index["not_run"]
    expected = ["table1", "fig5_energy"]
    can_train = training_available() is None
    if can_train:
        expected.append("fig6_loss")
    else:
        assert "fig6" in index["not_run"]
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

    f5 = json.loads((out / "fig5_energy.json").read_text(encoding="utf-8"))
    assert f5["artefact"] == "fig5"
    assert f5["sessions"]["kind"] == "synthetic"
    assert f5["core_agrees"] is True
    assert f5["accuracy"] is None
    assert f5["costs"]["window"]["notifications"] >= 1
    assert f5["points"]
    point = f5["points"][0]
    assert set(point) >= {"tau_mbits", "min_conf_e4", "offload_ratio", "local_only", "as_built"}
    assert set(point["as_built"]) == {"mj_per_window", "saved_vs_local_only", "battery_h"}
    assert f5["groups"]
    assert "synthetic" in (out / "fig5_energy.md").read_text(encoding="utf-8")

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


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out")
    assert main(["bench", "paper", "--quick", "--out", out, "--data", str(empty)]) == EXIT_USAGE
    assert main(["bench", "paper", "--quick", "--out", out, "--run", str(empty)]) == EXIT_USAGE
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
