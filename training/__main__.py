"""Train, cross-validate, prune and export the 1D MobileNetV2 (the `train` extra).

    python -m training --dataset PATH [--dataset PATH ...]
        [--synthetic-subjects N --synthetic-minutes M] [--folds K] [--epochs E] [--width W]
        [--out DIR] [--seed S] [--prune 20,40,60,80] [--export [--models-dir DIR]]

Writes to ``--out``: cv.json (per-fold held-out figures), loss_curves.png,
confusion_activity.png, the final weights (model-w*.pt), and with ``--export`` the ONNX files
with their model cards and export.json (layouts, latencies, int8 decision). See docs/models.md.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gatewayd import __version__
from gatewayd.inference.cards import Metrics, TrainingInfo
from training.data import (
    WindowSet,
    build_window_set,
    default_window_cache,
    load_recordings,
    synthetic_recordings,
)
from training.export import (
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
from training.model import MobileNetV2_1D, conv_channels, count_macs, count_params
from training.plots import plot_confusion, plot_losses
from training.prune import prune_l1
from training.train import (
    CvResult,
    History,
    cross_validate,
    evaluate,
    seed_everything,
    train_model,
)

log = logging.getLogger("training")

#: fp32 parity bound between torch and onnxruntime logits.
PARITY_TOL = 1e-4
#: int8 is shipped only if it is faster and agrees with fp32 on at least this share of windows.
INT8_MIN_AGREEMENT = 0.9
INT8_MAX_HR_DIFF_BPM = 3.0


def _pcts(text: str) -> tuple[int, ...]:
    try:
        pcts = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prune wants e.g. 20,40,60,80, got {text!r}") from None
    if any(not 0 < p < 100 for p in pcts):
        raise argparse.ArgumentTypeError("pruning percentages must be between 1 and 99")
    return pcts


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = argparse.ArgumentParser(prog="gatewayd-train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="PATH",
        help="PPG-DaLiA / TROIKA / E4 file or folder (repeatable)",
    )
    p.add_argument(
        "--synthetic-subjects",
        type=int,
        default=0,
        metavar="N",
        help="add N synthetic subjects from the built-in generator",
    )
    p.add_argument("--synthetic-minutes", type=float, default=20.0, metavar="M")
    p.add_argument(
        "--folds",
        type=int,
        default=5,
        metavar="K",
        help="subject-wise folds; 0 = leave one subject out",
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
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument(
        "--prune",
        type=_pcts,
        default=(),
        metavar="P,P,...",
        help="L1 channel-pruning percentages, e.g. 20,40,60,80",
    )
    p.add_argument("--export", action="store_true", help="export ONNX files with model cards")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where exported models go (default: OUT/models)",
    )
    p.add_argument("--bench-runs", type=int, default=300, help="latency runs per model")
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
    role: str


def _metrics(cv: CvResult, pct: int, ws: WindowSet) -> Metrics:
    summary = cv.summary(pct)
    by_source = "; ".join(
        f"{key.removeprefix('hr_mae_bpm_')} {value:.2f} bpm over "
        f"{summary['hr_windows_' + key.removeprefix('hr_mae_bpm_')]:.0f} windows"
        for key, value in summary.items()
        if key.startswith("hr_mae_bpm_") and value is not None
    )
    return Metrics(
        evaluated_on=(
            f"held-out subjects, {cv.description}: {'; '.join(ws.datasets)}. "
            f"Activity top-1 over the {summary['activity_windows']:.0f} windows with activity "
            f"labels (TROIKA and E4 sessions have none). HR MAE by source: {by_source}."
        ),
        activity_top1=summary["activity_top1"],
        hr_mae_bpm=summary["hr_mae_bpm"],
        per_fold=[f.evaluations[pct].as_dict() for f in cv.folds if pct in f.evaluations],
    )


def _cv_json(cv: CvResult, pcts: Sequence[int]) -> dict[str, Any]:
    return {
        "description": cv.description,
        "summary": {str(p): cv.summary(p) for p in (0, *pcts)},
        "folds": [
            {
                "held_out": list(f.held_out),
                "train_loss": f.history.train,
                "val_loss": f.history.val,
                "evaluations": {str(p): e.as_dict() for p, e in f.evaluations.items()},
            }
            for f in cv.folds
        ],
    }


def export_all(
    models: Sequence[Trained],
    ws: WindowSet,
    cv: CvResult,
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
    epochs_of = {0: args.epochs}
    training = {
        pct: TrainingInfo(
            datasets=list(ws.datasets),
            synthetic=ws.synthetic,
            subjects=len(ws.subjects),
            windows=len(ws),
            cross_validation=cv.description,
            seed=args.seed,
            epochs=epochs_of.get(pct, args.prune_epochs),
            teacher=None if pct == 0 else f"mnv2-1d-w{args.width}",
            notes=(
                "final fit on all windows after cross-validation"
                if pct == 0
                else f"L1 channel pruning {pct}% (Torch-Pruning), distilled from the teacher"
            ),
        )
        for pct in {m.pct for m in models}
    }
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
            info = CardInfo(
                model_id=item.name,
                version=__version__,
                role="gateway" if item.pct == 0 else "wearable",
                width=args.width,
                pruning_pct=item.pct,
                training=training[item.pct],
                metrics=_metrics(cv, item.pct, ws),
            )
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
                    f"|HR difference| {agree['hr_mean_abs_diff_bpm']:.2f} bpm"
                )
                q_info = CardInfo(
                    model_id=f"{item.name}-int8",
                    version=__version__,
                    role=info.role,
                    width=args.width,
                    pruning_pct=item.pct,
                    quantization="int8-static",
                    training=training[item.pct].model_copy(update={"notes": notes}),
                    metrics=info.metrics.model_copy(
                        update={"evaluated_on": info.metrics.evaluated_on + " (fp32 model)"}
                    ),
                )
                write_model_card(item.model, q_file, layout_kept, q_info)
                entry["int8_size_bytes"] = q_file.stat().st_size
            report["models"][item.name] = entry
            log.info("%s: %s", item.name, json.dumps(entry))
    return report


def latency_table(report: dict[str, Any]) -> str:
    """Return the export report as a Markdown table."""
    lines = [
        "| model | params | MACs | conv1d ms | conv2d ms | int8 static ms | int8 dynamic ms "
        "| int8 agreement | shipped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, e in report["models"].items():
        lat = e["latency_ms"]
        shipped = e["layout"] + (" + int8" if e["int8_shipped"] else "")
        lines.append(
            f"| {name} | {e['params']:,} | {e['macs']:,} | {lat['conv1d']:.3f} | "
            f"{lat['conv2d']:.3f} | {lat['int8_static']:.3f} | {lat['int8_dynamic']:.3f} | "
            f"{e['int8_vs_fp32']['activity_argmax_agreement']:.3f} | {shipped} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Do everything the arguments ask for; return an exit status."""
    if not args.dataset and args.synthetic_subjects <= 0:
        log.error("nothing to train on: give --dataset PATH and/or --synthetic-subjects N")
        return 2
    if args.prune_epochs is None:
        args.prune_epochs = max(1, args.epochs // 2)
    seed_everything(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    recordings = load_recordings(args.dataset)
    if args.synthetic_subjects > 0:
        recordings += synthetic_recordings(
            args.synthetic_subjects, args.synthetic_minutes, args.seed
        )
    cache = None if args.no_cache else (args.cache or default_window_cache())
    ws = build_window_set(recordings, cache)
    log.info(
        "%d windows from %d recordings, %d subjects: %s",
        len(ws),
        len(recordings),
        len(ws.subjects),
        "; ".join(ws.datasets),
    )

    cv = cross_validate(
        ws,
        folds=args.folds,
        epochs=args.epochs,
        width=args.width,
        seed=args.seed,
        prune_pcts=args.prune,
        prune_epochs=args.prune_epochs,
        pruner=prune_l1,
    )
    (out / "cv.json").write_text(json.dumps(_cv_json(cv, args.prune), indent=2) + "\n")
    true = np.concatenate([f.evaluations[0].activity_true for f in cv.folds])
    pred = np.concatenate([f.evaluations[0].activity_pred for f in cv.folds])
    if len(true):
        plot_confusion(
            true,
            pred,
            out / "confusion_activity.png",
            f"Activity, held-out subjects ({cv.description})",
        )
    for pct in (0, *args.prune):
        log.info("CV p%d: %s", pct, cv.summary(pct))

    torch.manual_seed(args.seed)
    full = MobileNetV2_1D(args.width)
    final_history: History = train_model(
        full,
        ws,
        None,
        epochs=args.epochs,
        seed=args.seed,
        lr=args.lr,
        batch=args.batch,
        desc="final",
    )
    plot_losses(cv, out / "loss_curves.png", final_history)
    name = f"mnv2-1d-w{args.width}"
    torch.save(full.state_dict(), out / f"{name}.pt")
    models = [Trained(name, full, 0, "gateway")]
    for pct in args.prune:
        student = prune_l1(full, pct / 100.0)
        train_model(
            student,
            ws,
            None,
            epochs=args.prune_epochs,
            seed=args.seed,
            lr=1e-3,
            batch=args.batch,
            teacher=full,
            desc=f"final p{pct}",
        )
        # A pruned model is no longer the class's default shape: keep the whole module.
        torch.save(student, out / f"{name}-p{pct}.pt")
        models.append(Trained(f"{name}-p{pct}", student, pct, "wearable"))
        log.info("p%d: training-set figures %s", pct, evaluate(student, ws).as_dict())

    if args.export:
        report = export_all(models, ws, cv, args, args.models_dir or out / "models")
        report["cv"] = {str(p): cv.summary(p) for p in (0, *args.prune)}
        (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
        print(latency_table(report))
    log.info("done in %.0f s; results in %s", time.monotonic() - started, out)
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
