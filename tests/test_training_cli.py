"""gatewayd-train end to end on a tiny synthetic set: cv.json, plots, baseline JSON, cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
pytest.importorskip("sklearn", reason="the baselines need scikit-learn (the `train` extra)")
pytest.importorskip("torch_pruning", reason="pruning needs torch-pruning (the `train` extra)")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")

from gatewayd.inference.cards import card_path, read_card, verify
from gatewayd.signals.acc_features import LinearActivityBaseline
from gatewayd.signals.preprocess import PREPROCESSING_V2, V2_CHANNELS
from training.__main__ import main

TINY = [
    "--synthetic-subjects", "3",
    "--synthetic-minutes", "1",
    "--folds", "0",
    "--epochs", "1",
    "--width", "0.25",
]  # fmt: skip


def test_cli_refuses_to_train_on_nothing(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 2


def test_cli_cross_validates_fits_and_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # --input v2: the shipped models' input (the default, v3, is trained by the other tests).
    cache = str(tmp_path / "cache")
    status = main([*TINY, "--input", "v2", "--cache", cache, "--out", str(out)])
    assert status == 0
    for name in (
        "loss_curves.png",
        "confusion_activity_all.png",
        "reliability.png",
        "cv.json",
        "history.json",
        "report.md",
        "oof.npz",
    ):
        assert (out / name).stat().st_size > 0, name
    cv = json.loads((out / "cv.json").read_text())
    assert [f["held_out"] for f in cv["folds"]] == [
        ["synthetic:S1"],
        ["synthetic:S2"],
        ["synthetic:S3"],
    ]
    assert cv["subject_ids"] == {"synthetic": ["S1", "S2", "S3"]}
    assert cv["synthetic"] is True
    assert cv["preprocessing"] == PREPROCESSING_V2
    assert (out / "report.md").read_text().startswith(f"Model input v2 ({PREPROCESSING_V2}); `")
    import torch

    stem = torch.load(out / "mnv2-1d-w0.25.pt")["features.0.0.weight"]
    assert stem.shape[1] == V2_CHANNELS  # the final fit takes the first seven channels
    row = cv["per_dataset"]["synthetic"]
    assert {"model", "hgb", "logistic", "majority", "acc_threshold"} <= set(row["methods"])
    assert cv["calibration"]["p0"]["activity_temperature"] > 0
    assert "all" in cv["leakage"]["p0"]
    oof = np.load(out / "oof.npz")
    assert (oof["fold_of"] >= 0).all()  # every window was held out once
    assert np.isfinite(oof["act_logits_p0"]).all()
    history = json.loads((out / "history.json").read_text())
    assert len(history["folds"]) == 3
    assert len(history["final"]["train"]) == 1
    baseline = json.loads((out / "models" / "activity-baseline.json").read_text())
    assert baseline["card"]["training"]["synthetic"] is True
    assert LinearActivityBaseline.from_dict(baseline).classes == ("rest", "light", "vigorous")
    assert not list((out / "models").glob("*.onnx"))  # no --export


def test_a_ppg_dalia_or_wesad_folder_trains_in_one_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    from gatewayd.datasets import generate_subject, write_synthetic_dataset
    from tests.test_datasets_wesad import wesad_labels

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the pickle readers' cache
    folder = tmp_path / "sets"
    # Two subjects in PPG-DaLiA's PPG_FieldStudy layout (generated, so read as synthetic) ...
    write_synthetic_dataset(folder / "PPG_FieldStudy", subjects=2, minutes=1.0, seed=5)
    # ... and one in WESAD's layout (no activity, 700 Hz labels, chest ECG).
    tree = generate_subject(3, 1.0, seed=6)
    chest = dict(tree["signal"]["chest"])
    wesad = {
        "signal": {"chest": chest, "wrist": dict(tree["signal"]["wrist"])},
        "label": wesad_labels(chest["ECG"].shape[0]),
        "subject": "S3",
    }
    (folder / "WESAD" / "S3").mkdir(parents=True)
    (folder / "WESAD" / "S3" / "S3.pkl").write_bytes(pickle.dumps(wesad, protocol=4))
    out = tmp_path / "run"
    args = ["--data", str(folder), "--folds", "0", "--epochs", "1", "--width", "0.25"]
    assert main([*args, "--cv-only", "--export-folds", "--no-cache", "--out", str(out)]) == 0
    cv = json.loads((out / "cv.json").read_text())
    assert cv["subject_ids"] == {"synthetic": ["S1", "S2"], "wesad": ["S3"]}
    # --export-folds: each fold's model, its card naming the subjects it was trained on only.
    index = json.loads((out / "folds" / "folds.json").read_text())
    held = [f["held_out"] for f in index["folds"]]
    assert sorted(h for f in held for h in f) == ["synthetic:S1", "synthetic:S2", "wesad:S3"]
    for fold in index["folds"]:
        path = out / "folds" / fold["dir"] / "mnv2-1d-w0.25.onnx"
        card = read_card(card_path(path))
        verify(card, path)
        trained = {f"{src}:{s}" for src, ids in card.training.subject_ids.items() for s in ids}
        assert trained == {"synthetic:S1", "synthetic:S2", "wesad:S3"} - set(fold["held_out"])
    assert any(d.startswith("WESAD") for d in cv["datasets"])
    # WESAD's conditions are all rest; its windows are scored per dataset like any other.
    assert cv["per_dataset"]["wesad"]["group_counts"]["rest"] > 0


@pytest.mark.slow
def test_cli_trains_prunes_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    status = main(
        [
            *TINY,
            "--prune", "50",
            "--export",
            "--bench-runs", "5",
            "--cache", str(tmp_path / "cache"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    assert (out / "export.json").stat().st_size > 0
    onnx_files = sorted((out / "models").glob("*.onnx"))
    assert {p.name for p in onnx_files} >= {"mnv2-1d-w0.25.onnx", "mnv2-1d-w0.25-p50.onnx"}
    for path in onnx_files:
        card = read_card(card_path(path))
        verify(card, path)
        assert card.training.synthetic
        assert card.role == ("gateway" if card.pruning_pct == 0 else "wearable")
        assert card.outputs.activity_classes == ["rest", "light", "vigorous"]
        assert card.calibration is not None
        assert card.training.folds == [["synthetic:S1"], ["synthetic:S2"], ["synthetic:S3"]]
        assert "synthetic" in card.metrics.per_dataset
