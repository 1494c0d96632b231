"""Figure 3 of `gatewayd bench paper`: reading the networks' runs and the arithmetic (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gatewayd.bench.paper_fig3 import (
    ArchRun,
    figure3,
    format_figure3,
    read_arch_run,
)
from gatewayd.energy import inference_j, local_window

REAL = "real (all measured sets)"


def cv_json(arch: str, *, macs: int, accuracy: float, hr: float, epochs: int = 8) -> dict[str, Any]:
    return {
        "command": f"gatewayd-train --arch {arch} --cv-only",
        "datasets": ["BAMI: 16 subjects", "synthetic (generator): 8 subjects"],
        "synthetic": True,
        "cross_validation": "5 folds by subject (48 subjects)",
        "config": {"arch": arch, "epochs": epochs, "folds": 5, "seed": 0, "stride_s": 4},
        "architecture": {
            "name": arch,
            "class": "X",
            "width": 1.0,
            "params": macs // 10,
            "macs": macs,
            "onnx_fp32_bytes": macs // 2,
            "onnx": "architecture.onnx",
        },
        "per_dataset": {
            "BAMI": {
                "labelled_windows": 100,
                "hr_windows": 100,
                "methods": {"model": {"accuracy": accuracy - 0.1}},
                "hr_mae_bpm": {"model": hr + 1},
            },
            REAL: {
                "labelled_windows": 300,
                "hr_windows": 200,
                "methods": {
                    "model": {"accuracy": accuracy, "rest_vs_moving": 0.9, "macro_f1": 0.7},
                    "hgb": {"accuracy": 0.85},
                },
                "hr_mae_bpm": {"model": hr},
            },
        },
    }


def write_run(root: Path, arch: str, **kw: Any) -> Path:
    run = root / arch
    run.mkdir(parents=True)
    (run / "cv.json").write_text(json.dumps(cv_json(arch, **kw)), encoding="utf-8")
    (run / "architecture.onnx").write_bytes(b"onnx")
    return run


def test_read_arch_run_takes_the_pooled_measured_figures(tmp_path: Path) -> None:
    run = read_arch_run(write_run(tmp_path, "squeezenet", macs=7_000_000, accuracy=0.8, hr=9.0))
    assert run.arch == "squeezenet"
    assert run.macs == 7_000_000
    assert run.pooled_over == REAL
    assert run.accuracy == 0.8
    assert run.rest_vs_moving == 0.9
    assert run.hr_mae_bpm == 9.0
    assert run.baseline_accuracy == 0.85
    assert run.per_dataset == {"BAMI": pytest.approx(0.7), REAL: 0.8}
    assert run.settings["epochs"] == 8


def test_read_arch_run_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cv\.json: not found"):
        read_arch_run(tmp_path)
    (tmp_path / "cv.json").write_text(json.dumps({"per_dataset": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match="no 'architecture'"):
        read_arch_run(tmp_path)
    run = write_run(tmp_path, "shufflenetv2", macs=1, accuracy=0.5, hr=1.0)
    (run / "architecture.onnx").unlink()
    with pytest.raises(ValueError, match=r"architecture\.onnx: not found"):
        read_arch_run(run)


def runs(tmp_path: Path, *, epochs: int = 8) -> list[ArchRun]:
    return [
        read_arch_run(write_run(tmp_path, "mobilenetv2", macs=20_000_000, accuracy=0.8, hr=10.0)),
        read_arch_run(
            write_run(tmp_path, "squeezenet", macs=5_000_000, accuracy=0.75, hr=12.5, epochs=epochs)
        ),
    ]


def test_figure3_ratios_are_to_mobilenet_and_energy_follows_the_macs(tmp_path: Path) -> None:
    fig = figure3(runs(tmp_path), [2.0, 0.5], timed_runs=10, environment={"cpu": "test"})
    ref, squeeze = fig.rows
    assert ref.vs_reference == {
        "size": 1.0, "macs": 1.0, "latency": 1.0, "accuracy_delta_points": 0.0,
        "hr_mae_delta_bpm": 0.0,
    }  # fmt: skip
    vs = squeeze.vs_reference
    assert vs is not None
    assert vs["macs"] == pytest.approx(0.25)
    assert vs["size"] == pytest.approx(0.25)
    assert vs["latency"] == pytest.approx(0.25)
    assert vs["accuracy_delta_points"] == pytest.approx(-5.0)
    assert vs["hr_mae_delta_bpm"] == pytest.approx(2.5)
    assert squeeze.mcu_mj_int8 == pytest.approx(1e3 * inference_j(5_000_000, int8=True))
    assert squeeze.mcu_mj_fp32 == pytest.approx(3 * squeeze.mcu_mj_int8)
    assert squeeze.local_window_mj == pytest.approx(
        1e3 * local_window(5_000_000, int8=True).total_j
    )
    assert fig.differences == {}
    doc = fig.to_json()
    assert doc["trained_the_same_way"] is True
    assert doc["rows"][1]["label"].startswith("SqueezeNet")
    text = format_figure3(fig)
    assert text.startswith("## Figure 3")
    assert "every setting agrees" in text
    assert "| SqueezeNet-1D (1.1) |" in text


def test_figure3_says_when_the_networks_were_not_trained_the_same_way(tmp_path: Path) -> None:
    fig = figure3(runs(tmp_path, epochs=3), [2.0, 0.5], timed_runs=10, environment={})
    assert fig.differences == {"epochs": [8, 3]}
    assert fig.to_json()["trained_the_same_way"] is False
    assert "Not trained the same way" in format_figure3(fig)


def test_without_mobilenet_there_are_no_ratios(tmp_path: Path) -> None:
    only = runs(tmp_path)[1:]
    fig = figure3(only, [0.5], timed_runs=10, environment={})
    assert fig.rows[0].vs_reference is None
    assert "| - |" in format_figure3(fig)
