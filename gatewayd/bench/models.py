"""`gatewayd bench models`: what each shipped model costs and how good it is, beside the paper.

For every model: file size, parameters and MACs (from its card), ONNX Runtime latency at batch 1
on one thread (median of ``runs`` runs after a warm-up), throughput at a larger batch (windows/s,
one thread), and the held-out accuracy / MAE its card reports. The paper's Table 1 (pruning
0/20/40/60/80 %) is printed beside ours as ratios to each side's unpruned model, so that the
shape of the trade-off can be compared across very different hardware. The same run measures
one window's preprocessing (the transform the models' cards name, `model_input`) and reports
the model's cost relative to it.

Timing is measured here, never asserted in tests (docs/architecture.md).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gatewayd.inference.analysis import model_input
from gatewayd.inference.registry import InstalledModel
from gatewayd.inference.session import ModelSession
from gatewayd.signals import ACC_RATE_HZ, BVP_RATE_HZ
from gatewayd.signals.preprocess import PREPROCESSING_ID
from gatewayd.signals.windows import window_length
from gatewayd.tables import format_table

__all__ = [
    "PAPER_TABLE_1",
    "BenchReport",
    "ModelBench",
    "PaperRow",
    "bench_environment",
    "bench_models",
    "environment_line",
    "format_bench",
    "median_seconds",
    "ratios",
]

WARMUP_RUNS: Final = 20


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 1 (its hardware, its models)."""

    pruning_pct: int
    size_mb: float
    latency_ms: float
    top1_pct: float


#: The paper's Table 1: L1-norm channel pruning of the 1D MobileNet.
PAPER_TABLE_1: Final = (
    PaperRow(0, 12.4, 92.6, 91.3),
    PaperRow(20, 9.8, 74.1, 90.7),
    PaperRow(40, 7.2, 61.4, 89.2),
    PaperRow(60, 5.1, 48.6, 86.4),
    PaperRow(80, 3.5, 37.2, 81.1),
)


@dataclass(frozen=True)
class ModelBench:
    """One model's figures."""

    model_id: str
    role: str
    #: Architecture, width multiplier and quantization: pruned models are compared with the
    #: unpruned model of their family.
    family: str
    pruning_pct: int
    layout: str
    size_mb: float
    params: int
    macs: int
    #: Median latency of one window (batch 1, one thread), ms.
    latency_ms: float
    #: Windows per second at batch ``batch`` on one thread.
    throughput_wps: float
    batch: int
    #: From the card: held-out top-1 (fraction 0-1) and HR MAE (bpm), and what they were
    #: measured on.
    activity_top1: float | None
    hr_mae_bpm: float | None
    evaluated_on: str
    synthetic_training: bool

    @property
    def gflops_batch1(self) -> float:
        """Arithmetic throughput at batch 1 (2 FLOPs per MAC), GFLOP/s: compare with the core's
        peak (its FMA units x SIMD width x 2 x clock) to check a latency is plausible."""
        return 2 * self.macs / (self.latency_ms * 1e-3) / 1e9

    @property
    def gflops_batch(self) -> float:
        """Arithmetic throughput at batch ``batch``, GFLOP/s."""
        return 2 * self.macs * self.throughput_wps / 1e9


@dataclass(frozen=True)
class BenchReport:
    """Every model's figures, the preprocessing cost and the environment."""

    models: list[ModelBench]
    preprocess_ms: float
    runs: int
    environment: dict[str, str]

    def to_json(self) -> dict[str, object]:
        """The report as JSON-ready data, with the paper's rows and both sides' ratios."""
        ours = ratios(self.models)
        paper = _paper_ratios()
        return {
            "environment": self.environment,
            "runs": self.runs,
            "preprocess_ms": self.preprocess_ms,
            "models": [
                {
                    **asdict(m),
                    "model_over_preprocess": m.latency_ms / self.preprocess_ms,
                    "gflops_batch1": m.gflops_batch1,
                    "gflops_batch": m.gflops_batch,
                    "vs_unpruned": ours.get(m.model_id),
                }
                for m in self.models
            ],
            "paper_table_1": [
                {**asdict(row), "vs_unpruned": paper[row.pruning_pct]} for row in PAPER_TABLE_1
            ],
        }


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = WARMUP_RUNS) -> float:
    """Median wall time of ``fn()`` over ``runs`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_windows(shape: tuple[int, int], batch: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape)).astype(np.float32)


def _preprocess_ms(runs: int, preprocessing: str) -> float:
    rng = np.random.default_rng(1)
    bvp = rng.standard_normal(window_length(BVP_RATE_HZ)) * 50.0
    acc = rng.standard_normal((window_length(ACC_RATE_HZ), 3)) * 10.0 + 64.0
    return 1e3 * median_seconds(
        lambda: model_input(
            bvp, acc, bvp_rate_hz=BVP_RATE_HZ, acc_rate_hz=ACC_RATE_HZ, acc_lsb_per_g=64.0,
            preprocessing=preprocessing,
        ),
        runs,
    )  # fmt: skip


def bench_one(model: InstalledModel, runs: int, batch: int) -> ModelBench:
    """Measure one model on one thread (ONNX Runtime calls block: this is not for the loop)."""
    session = ModelSession(model.card, model.path, threads=1)
    one = _random_windows(session.window_shape, 1)
    many = _random_windows(session.window_shape, batch)
    latency = median_seconds(lambda: session.run_logits(one), runs)
    batch_runs = max(3, runs // batch)
    batched = median_seconds(lambda: session.run_logits(many), batch_runs, warmup=2)
    card = model.card
    return ModelBench(
        model_id=card.model_id,
        role=card.role,
        family=f"{card.architecture} x{card.width_multiplier:g} {card.quantization}",
        pruning_pct=card.pruning_pct,
        layout=card.layout,
        size_mb=model.path.stat().st_size / 1e6,
        params=card.params,
        macs=card.macs,
        latency_ms=1e3 * latency,
        throughput_wps=batch / batched,
        batch=batch,
        activity_top1=card.metrics.activity_top1,
        hr_mae_bpm=card.metrics.hr_mae_bpm,
        evaluated_on=card.metrics.evaluated_on,
        synthetic_training=card.training.synthetic,
    )


#: The /proc/cpuinfo flags that decide which SIMD kernels ONNX Runtime and numpy can use.
SIMD_FLAGS: Final = ("avx2", "avx512f", "fma")


def bench_environment() -> dict[str, str]:
    """The machine and libraries a run measured: CPU model and SIMD flags, versions, threads."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] | None = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:  # noqa: PTH123 - Linux only, optional
            info = f.read()
    except OSError:
        info = ""
    # The first processor's lines: every core of the machines we run on is alike.
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name", cpu)
    if "flags" in fields:
        flags = set(fields["flags"].split())
    simd = "unknown" if flags is None else " ".join(
        flag if flag in flags else f"no-{flag}" for flag in SIMD_FLAGS
    )  # fmt: skip
    return {
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "simd": simd,
        "python": platform.python_version(),
        "onnxruntime": str(ort.__version__),
        "numpy": np.__version__,
        "threads": "1",
    }


def environment_line(env: Mapping[str, str]) -> str:
    """The environment as the reports print it: CPU, SIMD flags, onnxruntime, threads."""
    return (
        f"{env['cpu']} ({env['cpus']} CPUs; {env.get('simd', 'unknown')}),"
        f" onnxruntime {env['onnxruntime']} on {env['threads']} thread(s), numpy {env['numpy']}"
    )


def bench_models(models: Sequence[InstalledModel], runs: int = 200, batch: int = 32) -> BenchReport:
    """Measure every model and one window's preprocessing; blocks for a few seconds per model."""
    if runs < 1 or batch < 1:
        raise ValueError(f"runs and batch must be >= 1, got {runs}, {batch}")
    return BenchReport(
        models=[bench_one(m, runs, batch) for m in models],
        # The transform the models name (all shipped models share one); v2 without models.
        preprocess_ms=_preprocess_ms(
            runs, models[0].card.input.preprocessing if models else PREPROCESSING_ID
        ),
        runs=runs,
        environment=bench_environment(),
    )


def ratios(models: Sequence[ModelBench]) -> dict[str, dict[str, float | None]]:
    """Each model's size, latency and top-1 as ratios to the unpruned model of its family.

    A family (architecture, width, quantization) without a 0 % model gets no ratios.
    """
    base = {m.family: m for m in models if m.pruning_pct == 0}
    out: dict[str, dict[str, float | None]] = {}
    for m in models:
        ref = base.get(m.family)
        if ref is None:
            continue
        top1 = (
            m.activity_top1 / ref.activity_top1
            if m.activity_top1 is not None and ref.activity_top1
            else None
        )
        out[m.model_id] = {
            "size": m.size_mb / ref.size_mb,
            "latency": m.latency_ms / ref.latency_ms,
            "top1": top1,
        }
    return out


def _paper_ratios() -> dict[int, dict[str, float | None]]:
    ref = PAPER_TABLE_1[0]
    return {
        row.pruning_pct: {
            "size": row.size_mb / ref.size_mb,
            "latency": row.latency_ms / ref.latency_ms,
            "top1": row.top1_pct / ref.top1_pct,
        }
        for row in PAPER_TABLE_1
    }


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def format_bench(report: BenchReport) -> str:
    """The plain-text tables `gatewayd bench models` prints."""
    env = report.environment
    lines = [
        f"{environment_line(env)}; median of {report.runs} runs after {WARMUP_RUNS} warm-up runs",
        "",
        "Our models:",
    ]
    # Each model's "metrics on" text (long: datasets, folds) once, below the table.
    metrics_on = [
        m.evaluated_on + (" (synthetic data in training)" if m.synthetic_training else "")
        for m in report.models
    ]
    notes: dict[str, int] = {}
    for text in metrics_on:
        notes.setdefault(text, len(notes) + 1)
    rows = [
        [
            m.model_id,
            m.role,
            f"{m.pruning_pct}%",
            f"{m.size_mb:.2f}",
            f"{m.params / 1e6:.3f}",
            f"{m.macs / 1e6:.1f}",
            f"{m.latency_ms:.3f}",
            f"{m.throughput_wps:.0f}",
            f"{m.gflops_batch1:.1f} / {m.gflops_batch:.1f}",
            _f(None if m.activity_top1 is None else 100 * m.activity_top1, ".1f"),
            _f(m.hr_mae_bpm, ".2f"),
            f"{m.latency_ms / report.preprocess_ms:.2f}",
            f"[{notes[text]}]",
        ]
        for m, text in zip(report.models, metrics_on, strict=True)
    ]
    batch = report.models[0].batch if report.models else 32
    lines.append(
        format_table(
            [
                "MODEL",
                "ROLE",
                "PRUNED",
                "SIZE MB",
                "PARAMS M",
                "MMACS",
                "LATENCY ms",
                f"WIN/S @{batch}",
                f"GFLOP/S @1/@{batch}",
                "TOP-1 %",
                "HR MAE",
                "x PREPROC",
                "METRICS ON",
            ],
            rows,
        )
    )
    lines.extend(f"[{n}] {text}" for text, n in notes.items())
    lines.append(
        f"\nOne window's preprocessing (model_input): {report.preprocess_ms:.3f} ms;"
        " x PREPROC = model latency / preprocessing."
    )
    mine = ratios(report.models)
    paper = _paper_ratios()
    families: list[str | None] = [m.family for m in report.models if m.pruning_pct == 0]
    for family in dict.fromkeys(families or [None]):
        ours = {m.pruning_pct: m for m in report.models if m.family == family}
        side_rows = []
        for row in PAPER_TABLE_1:
            m = ours.get(row.pruning_pct)
            r = mine.get(m.model_id) if m is not None else None
            side_rows.append(
                [
                    f"{row.pruning_pct}%",
                    f"{row.size_mb:.1f}",
                    f"{row.latency_ms:.1f}",
                    f"{row.top1_pct:.1f}",
                    _f(paper[row.pruning_pct]["size"], ".2f"),
                    _f(paper[row.pruning_pct]["latency"], ".2f"),
                    _f(paper[row.pruning_pct]["top1"], ".3f"),
                    "-" if m is None else m.model_id,
                    _f(None if r is None else r["size"], ".2f"),
                    _f(None if r is None else r["latency"], ".2f"),
                    _f(None if r is None else r["top1"], ".3f"),
                ]
            )
        lines += [
            "",
            "Beside the paper's Table 1, as ratios to each side's unpruned model"
            + (
                f" (ours: family {family}):"
                if family is not None
                else " (ours: no unpruned model shipped, so no ratios):"
            ),
            format_table(
                [
                    "PRUNED",
                    "PAPER MB",
                    "PAPER ms",
                    "PAPER TOP-1 %",
                    "PAPER SIZE x",
                    "PAPER LAT x",
                    "PAPER TOP-1 x",
                    "OUR MODEL",
                    "OUR SIZE x",
                    "OUR LAT x",
                    "OUR TOP-1 x",
                ],
                side_rows,
            ),
        ]
    return "\n".join(lines)
