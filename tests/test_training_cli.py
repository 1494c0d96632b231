"""python -m training end to end on a tiny synthetic set: plots, cv.json, ONNX files and cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
pytest.importorskip("torch_pruning", reason="pruning needs torch-pruning (the `train` extra)")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")

from gatewayd.inference.cards import card_path, read_card, verify
from training.__main__ import main


def test_cli_refuses_to_train_on_nothing(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_cli_trains_prunes_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    status = main(
        [
            "--synthetic-subjects", "3",
            "--synthetic-minutes", "1",
            "--folds", "0",
            "--epochs", "1",
            "--width", "0.25",
            "--prune", "50",
            "--export",
            "--bench-runs", "5",
            "--cache", str(tmp_path / "cache"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    for name in ("loss_curves.png", "confusion_activity.png", "cv.json", "export.json"):
        assert (out / name).stat().st_size > 0
    cv = json.loads((out / "cv.json").read_text())
    assert len(cv["folds"]) == 3  # leave one subject out
    assert {tuple(f["held_out"]) for f in cv["folds"]} == {
        ("synthetic:S1",),
        ("synthetic:S2",),
        ("synthetic:S3",),
    }
    onnx_files = sorted((out / "models").glob("*.onnx"))
    assert {p.name for p in onnx_files} >= {"mnv2-1d-w0.25.onnx", "mnv2-1d-w0.25-p50.onnx"}
    for path in onnx_files:
        card = read_card(card_path(path))
        verify(card, path)
        assert card.training.synthetic
        assert card.role == ("gateway" if card.pruning_pct == 0 else "wearable")
