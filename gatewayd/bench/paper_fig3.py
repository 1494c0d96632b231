"""Figure 3 of `gatewayd bench paper`: lightweight networks compared.

Each network is cross-validated by `gatewayd-train --arch NAME --cv-only` (`training.nets`: 1D
SqueezeNet 1.1, ShuffleNetV2 1.0x, EfficientNet-Lite0 and the method's MobileNetV2-1D) on the
same data, folds and settings. Its ``--out`` folder holds cv.json (the held-out figures, and
``architecture``: parameters, MACs, fp32 ONNX size) and architecture.onnx (the untrained network:
weights change neither its size nor its time). `read_arch_run` reads a folder; `time_onnx` times
every network here in one run (ONNX Runtime, batch 1, one thread, as Table 1); `figure3` adds the
modelled Cortex-M4F latency and energy per inference (`gatewayd.energy`) and the ratios to
MobileNetV2-1D (pure); `format_figure3` and `plot_figure3` write it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from gatewayd.bench.paper_common import delta as _delta
from gatewayd.bench.paper_common import markdown_table, read_run_json
from gatewayd.bench.paper_common import number_cell as _f
from gatewayd.bench.paper_common import ratio as _ratio
from gatewayd.bench.paper_common import signed_cell as _signed
from gatewayd.energy import inference_j, inference_s, local_window

__all__ = [
    "ARCH_LABELS",
    "REFERENCE_ARCH",
    "SAME_WAY_KEYS",
    "TINY_ARCH_ARGS",
    "ArchRun",
    "Figure3",
    "Figure3Row",
    "figure3",
    "format_figure3",
    "plot_figure3",
    "read_arch_run",
    "time_onnx",
]

#: The method's network: the others' ratios are to it.
REFERENCE_ARCH: Final = "mobilenetv2"
#: Display names of `gatewayd-train --arch`'s choices.
ARCH_LABELS: Final = {
    "mobilenetv2": "MobileNetV2-1D",
    "squeezenet": "SqueezeNet-1D (1.1)",
    "shufflenetv2": "ShuffleNetV2-1D (1.0x)",
    "efficientnet-lite0": "EfficientNet-Lite0-1D",
}
#: The training settings that must agree for the networks to be "trained the same way".
SAME_WAY_KEYS: Final = (
    "dataset", "synthetic_subjects", "synthetic_minutes", "stride_s", "folds", "epochs", "width",
    "batch", "lr", "ppg_dropout", "ppg_swap", "hr_weight", "source_power", "seed",
)  # fmt: skip
#: `--quick` without ``--arch-run``: one epoch of each network at quarter width on two
#: synthetic subjects of two minutes, left out one at a time (a few seconds each here).
TINY_ARCH_ARGS: Final = (
    "--synthetic-subjects", "2", "--synthetic-minutes", "2", "--folds", "0", "--epochs", "1",
    "--width", "0.25", "--seed", "0", "--no-cache", "--cv-only", "--bench-runs", "20",
)  # fmt: skip


@dataclass(frozen=True)
class ArchRun:
    """One network's cross-validation run, as its cv.json describes it."""

    source: str
    arch: str
    class_name: str
    width: float
    params: int
    macs: int
    size_bytes: int
    onnx: Path
    command: str | None
    cross_validation: str | None
    datasets: list[str]
    synthetic: bool
    settings: dict[str, Any]
    #: Held out, pooled over the measured sets' labelled windows (else all): 3-group accuracy,
    #: rest vs moving, macro F1; HR MAE over the windows with PPG and a reference.
    pooled_over: str
    accuracy: float | None
    rest_vs_moving: float | None
    macro_f1: float | None
    hr_mae_bpm: float | None
    #: The accelerometer-feature baseline (gradient boosting) on the same folds, pooled.
    baseline_accuracy: float | None
    #: Per source: the network's held-out group accuracy.
    per_dataset: dict[str, float | None] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _pooled(table: Mapping[str, Any], count: str) -> str:
    for name in ("real (all measured sets)", "all (measured + synthetic)"):
        row = table.get(name)
        if isinstance(row, dict) and row.get(count):
            return name
    raise ValueError("no pooled row in per_dataset (not a gatewayd-train cv.json)")


def read_arch_run(run: Path) -> ArchRun:
    """One ``gatewayd-train --cv-only`` folder: its cv.json and architecture.onnx.

    ValueError naming the file when either is missing or cv.json has no ``architecture`` (a run
    made before `--arch` existed). Blocks (reads two files).
    """
    path = run / "cv.json"
    cv = read_run_json(path)
    arch = cv.get("architecture") if isinstance(cv, dict) else None
    if not isinstance(arch, dict):
        raise ValueError(  # noqa: TRY004 - a bad file, reported as every other here
            f"{path}: no 'architecture' (made by a gatewayd-train without --arch)"
        )
    onnx = run / str(arch.get("onnx", "architecture.onnx"))
    if not onnx.is_file():
        raise ValueError(f"{onnx}: not found (gatewayd-train writes it beside cv.json)")
    table = cv.get("per_dataset", {})
    pooled = _pooled(table, "labelled_windows")
    methods = table[pooled]["methods"]
    hr_pooled = _pooled(table, "hr_windows")
    config = cv.get("config", {})
    return ArchRun(
        source=str(run),
        arch=str(arch["name"]),
        class_name=str(arch.get("class", "")),
        width=float(arch.get("width", 1.0)),
        params=int(arch["params"]),
        macs=int(arch["macs"]),
        size_bytes=int(arch["onnx_fp32_bytes"]),
        onnx=onnx,
        command=cv.get("command"),
        cross_validation=cv.get("cross_validation"),
        datasets=[str(d) for d in cv.get("datasets", [])],
        synthetic=bool(cv.get("synthetic")),
        settings={k: config.get(k) for k in SAME_WAY_KEYS},
        pooled_over=pooled,
        accuracy=_number(methods.get("model", {}).get("accuracy")),
        rest_vs_moving=_number(methods.get("model", {}).get("rest_vs_moving")),
        macro_f1=_number(methods.get("model", {}).get("macro_f1")),
        hr_mae_bpm=_number(table[hr_pooled].get("hr_mae_bpm", {}).get("model")),
        baseline_accuracy=_number(methods.get("hgb", {}).get("accuracy")),
        per_dataset={
            name: _number(row.get("methods", {}).get("model", {}).get("accuracy"))
            for name, row in table.items()
            if isinstance(row, dict) and row.get("labelled_windows")
        },
    )


def time_onnx(path: Path, runs: int) -> float:
    """Median ms of one window (batch 1, one thread) through an fp32 conv1d ONNX file. Blocks."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy, only when timing

    from gatewayd.bench.models import median_seconds  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    name = session.get_inputs()[0].name
    return 1e3 * median_seconds(lambda: session.run(None, {name: x}), runs)


@dataclass(frozen=True)
class Figure3Row:
    """One network: its run, its time here, modelled on the MCU, and its ratios."""

    run: ArchRun
    latency_ms: float
    #: Modelled on the nRF52840's Cortex-M4F (gatewayd.energy): one inference, int8 and fp32.
    mcu_ms_int8: float
    mcu_mj_int8: float
    mcu_ms_fp32: float
    mcu_mj_fp32: float
    #: A whole local-only window on the wearable with this network (int8), mJ.
    local_window_mj: float
    #: Against MobileNetV2-1D (None without it): size, MACs, latency x; accuracy points; HR bpm.
    vs_reference: dict[str, float | None] | None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        r = self.run
        return {
            "arch": r.arch,
            "label": ARCH_LABELS.get(r.arch, r.arch),
            "class": r.class_name,
            "width": r.width,
            "source": r.source,
            "params": r.params,
            "macs": r.macs,
            "size_mb": r.size_bytes / 1e6,
            "latency_ms": self.latency_ms,
            "mcu_latency_ms_int8": self.mcu_ms_int8,
            "mcu_energy_mj_int8": self.mcu_mj_int8,
            "mcu_latency_ms_fp32": self.mcu_ms_fp32,
            "mcu_energy_mj_fp32": self.mcu_mj_fp32,
            "local_window_mj": self.local_window_mj,
            "pooled_over": r.pooled_over,
            "activity_accuracy": r.accuracy,
            "rest_vs_moving": r.rest_vs_moving,
            "macro_f1": r.macro_f1,
            "hr_mae_bpm": r.hr_mae_bpm,
            "baseline_hgb_accuracy": r.baseline_accuracy,
            "per_dataset_accuracy": r.per_dataset,
            "vs_reference": self.vs_reference,
        }


@dataclass(frozen=True)
class Figure3:
    """Every network, how they were trained, and whether the settings agree."""

    rows: list[Figure3Row]
    runs: int
    environment: dict[str, str]
    #: The settings in which the runs differ (empty: trained the same way).
    differences: dict[str, list[Any]]
    origin: str = "--arch-run"

    def to_json(self) -> dict[str, Any]:
        """The figure as JSON (docs/paper.md)."""
        first = self.rows[0].run if self.rows else None
        return {
            "artefact": "fig3",
            "origin": self.origin,
            "runs": self.runs,
            "environment": self.environment,
            "reference": REFERENCE_ARCH,
            "trained_the_same_way": not self.differences,
            "differences": self.differences,
            "training": None
            if first is None
            else {
                "command": first.command,
                "datasets": first.datasets,
                "synthetic": first.synthetic,
                "cross_validation": first.cross_validation,
                "settings": first.settings,
            },
            "rows": [r.to_json() for r in self.rows],
            "paper": None,
            "paper_note": "the paper's Figure 3 values are not transcribed in this repository",
        }


def figure3(
    runs: Sequence[ArchRun],
    latencies_ms: Sequence[float],
    *,
    timed_runs: int,
    environment: dict[str, str],
    origin: str = "--arch-run",
) -> Figure3:
    """The rows in the order given, with the modelled MCU cost and the ratios (pure)."""
    ref_index = next((i for i, r in enumerate(runs) if r.arch == REFERENCE_ARCH), None)
    rows = []
    for run, latency in zip(runs, latencies_ms, strict=True):
        vs: dict[str, float | None] | None = None
        if ref_index is not None:
            ref, ref_latency = runs[ref_index], latencies_ms[ref_index]
            vs = {
                "size": _ratio(run.size_bytes, ref.size_bytes),
                "macs": _ratio(run.macs, ref.macs),
                "latency": _ratio(latency, ref_latency),
                "accuracy_delta_points": _delta(run.accuracy, ref.accuracy, 100.0),
                "hr_mae_delta_bpm": _delta(run.hr_mae_bpm, ref.hr_mae_bpm),
            }
        rows.append(
            Figure3Row(
                run=run,
                latency_ms=latency,
                mcu_ms_int8=1e3 * inference_s(run.macs, int8=True),
                mcu_mj_int8=1e3 * inference_j(run.macs, int8=True),
                mcu_ms_fp32=1e3 * inference_s(run.macs, int8=False),
                mcu_mj_fp32=1e3 * inference_j(run.macs, int8=False),
                local_window_mj=1e3 * local_window(run.macs, int8=True).total_j,
                vs_reference=vs,
            )
        )
    differences: dict[str, list[Any]] = {}
    for key in SAME_WAY_KEYS:
        values = [r.settings.get(key) for r in runs]
        if any(v != values[0] for v in values):
            differences[key] = values
    return Figure3(rows, timed_runs, environment, differences, origin)


FIG3_HEAD: Final = (
    "network", "params", "MMACs", "size MB", "latency here ms", "M4F int8 ms (model)",
    "mJ / inference int8 (model)", "group accuracy %", "rest vs moving %", "HR MAE bpm",
    "size x", "MACs x", "latency x", "Δ accuracy pts", "Δ HR MAE",
)  # fmt: skip


def _pct(value: float | None) -> str:
    return _f(None if value is None else 100 * value, ".1f")


def figure3_cells(row: Figure3Row) -> list[str]:
    """One Markdown row of Figure 3's table."""
    r, vs = row.run, row.vs_reference or {}
    return [
        ARCH_LABELS.get(r.arch, r.arch), f"{r.params:,}", f"{r.macs / 1e6:.2f}",
        f"{r.size_bytes / 1e6:.2f}", f"{row.latency_ms:.3f}", f"{row.mcu_ms_int8:.0f}",
        f"{row.mcu_mj_int8:.2f}", _pct(r.accuracy), _pct(r.rest_vs_moving),
        _f(r.hr_mae_bpm, ".2f"), _f(vs.get("size"), ".2f"), _f(vs.get("macs"), ".2f"),
        _f(vs.get("latency"), ".2f"), _signed(vs.get("accuracy_delta_points"), ".1f"),
        _signed(vs.get("hr_mae_delta_bpm"), ".2f"),
    ]  # fmt: skip


def _data_label(figure: Figure3) -> str:
    if not figure.rows:
        return "no runs"
    first = figure.rows[0].run
    if first.synthetic and all("synthetic" in d for d in first.datasets):
        return "synthetic data"
    return "real data with synthetic subjects" if first.synthetic else "real data"


def format_figure3(figure: Figure3) -> str:
    """Figure 3 as Markdown: how the networks were trained, the table, what the columns are."""
    env = figure.environment
    first = figure.rows[0].run if figure.rows else None
    lines = [
        "## Figure 3: lightweight networks compared",
        "",
        f"Each network cross-validated by `gatewayd-train --arch NAME --cv-only` ({figure.origin});"
        f" {_data_label(figure)}.",
    ]
    if first is not None:
        if first.command:
            lines.append(f"Command (first network): `{first.command}`.")
        if first.datasets:
            lines.append(f"Data: {'; '.join(first.datasets)}.")
        if first.cross_validation:
            lines.append(f"Cross-validation: {first.cross_validation}, the same folds for all.")
    lines.append(
        "Trained the same way: every setting agrees."
        if not figure.differences
        else "**Not trained the same way**: the runs differ in "
        + "; ".join(f"{k} {v}" for k, v in figure.differences.items())
        + "."
    )
    pooled = dict.fromkeys(r.run.pooled_over for r in figure.rows)
    lines += [
        "",
        *markdown_table(FIG3_HEAD, [figure3_cells(r) for r in figure.rows]),
        "",
        f"Latency here: ONNX Runtime {env.get('onnxruntime', '?')}, fp32, batch 1, one thread,"
        f" median of {figure.runs} runs on {env.get('cpu', '?')}, every network in this one run."
        " M4F: modelled for the wearable's nRF52840 (Cortex-M4F, 64 MHz) from the MACs at"
        " 2 cycles/MAC for int8 (docs/energy.md, an assumption; the same for every network, so"
        " it ranks them by MACs). Accuracy: held-out 3-group accuracy and rest vs moving, pooled"
        f" over {', '.join(pooled)}; HR MAE over the held-out windows with PPG and a reference."
        f" Ratios (x) and changes (Δ) are to {ARCH_LABELS[REFERENCE_ARCH]}.",
        "",
        "The paper's Figure 3 values are not transcribed in this repository: nothing of the"
        " paper's is set beside these numbers.",
        "",
    ]
    per = sorted({name for r in figure.rows for name in r.run.per_dataset})
    if per:
        cells = [
            [
                ARCH_LABELS.get(r.run.arch, r.run.arch),
                *(_pct(r.run.per_dataset.get(n)) for n in per),
            ]
            for r in figure.rows
        ]
        lines += [
            "Held-out group accuracy per source (%):",
            "",
            *markdown_table(("network", *per), cells),
            "",
        ]
    return "\n".join(lines)


def plot_figure3(figure: Figure3, path: Path) -> Path:
    """fig3.png: per network, size and latency here; modelled energy per inference; held-out
    group accuracy and HR MAE. Needs matplotlib."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(13, 4.4))
    ax_cost, ax_energy, ax_acc, ax_hr = fig.subplots(1, 4)
    names = [ARCH_LABELS.get(r.run.arch, r.run.arch).split(" ")[0] for r in figure.rows]
    x = np.arange(len(names))
    w = 0.38
    ax_cost.bar(x - w / 2, [r.run.size_bytes / 1e6 for r in figure.rows], w, label="size MB")
    ax_cost.bar(x + w / 2, [r.latency_ms for r in figure.rows], w, label="latency here ms")
    ax_cost.set_title("Size and latency here (fp32)", fontsize=9)
    ax_energy.bar(x, [r.mcu_mj_int8 for r in figure.rows], 0.6, color="C2")
    ax_energy.set_title("mJ per inference, M4F int8 (modelled)", fontsize=9)
    acc = [math.nan if r.run.accuracy is None else 100 * r.run.accuracy for r in figure.rows]
    rvm = [
        math.nan if r.run.rest_vs_moving is None else 100 * r.run.rest_vs_moving
        for r in figure.rows
    ]
    base = [
        math.nan if r.run.baseline_accuracy is None else 100 * r.run.baseline_accuracy
        for r in figure.rows
    ]
    ax_acc.bar(x - w / 2, acc, w, label="3 groups")
    ax_acc.bar(x + w / 2, rvm, w, label="rest vs moving")
    if base and not all(math.isnan(b) for b in base):
        ax_acc.axhline(float(np.nanmean(base)), color="black", linestyle="--", linewidth=1,
                       label="ACC-feature baseline, 3 groups")  # fmt: skip
    ax_acc.set_ylim(0, 100)
    ax_acc.set_title("Held-out activity accuracy %", fontsize=9)
    ax_hr.bar(x, [math.nan if r.run.hr_mae_bpm is None else r.run.hr_mae_bpm
                  for r in figure.rows], 0.6, color="C3")  # fmt: skip
    ax_hr.set_title("Held-out HR MAE, bpm", fontsize=9)
    for ax in (ax_cost, ax_energy, ax_acc, ax_hr):
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=7, rotation=20)
    ax_cost.legend(fontsize=7)
    ax_acc.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"gatewayd bench paper: Figure 3, lightweight networks compared ({_data_label(figure)},"
        " cross-subject)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
