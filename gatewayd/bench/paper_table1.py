"""Table 1 of `gatewayd bench paper`: the wearable's models pruned 0-80 %, fp32 and int8.

Each shipped model of the wearable's family as `gatewayd bench models` measures it (size, MACs,
ONNX Runtime latency at batch 1 on one thread: `gatewayd.bench.models.bench_one`), its modelled
Cortex-M4F latency and energy per inference (`gatewayd.energy`, constants in docs/energy.md),
and the held-out activity accuracy and HR MAE its card reports; then every figure as a ratio to
the unpruned model of the same type (fp32 or int8), beside the paper's Table 1 as ratios to its
own unpruned model. The rows and ratios are pure arithmetic over the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from gatewayd.bench.models import PAPER_TABLE_1, ModelBench, PaperRow
from gatewayd.bench.paper_common import delta as _delta
from gatewayd.bench.paper_common import markdown_table
from gatewayd.bench.paper_common import number_cell as _f
from gatewayd.bench.paper_common import ratio as _ratio
from gatewayd.bench.paper_common import signed_cell as _signed
from gatewayd.energy import inference_j, inference_s, local_window

__all__ = [
    "PAPER_DELTA_POINTS",
    "Table1",
    "Table1Row",
    "format_table1",
    "paper_ratios",
    "plot_table1",
    "table1",
]

#: The paper's activity-accuracy change from pruning, points against its unpruned model
#: (from its Table 1: -0.6 / -2.1 / -4.9 / -10.2 at 20 / 40 / 60 / 80 %).
PAPER_DELTA_POINTS: Final = {
    row.pruning_pct: round(row.top1_pct - PAPER_TABLE_1[0].top1_pct, 1) for row in PAPER_TABLE_1
}


def paper_ratios(row: PaperRow) -> dict[str, float]:
    """One paper row as ratios to the paper's unpruned model, and its accuracy change."""
    ref = PAPER_TABLE_1[0]
    return {
        "size": row.size_mb / ref.size_mb,
        "latency": row.latency_ms / ref.latency_ms,
        "top1_delta_points": PAPER_DELTA_POINTS[row.pruning_pct],
    }


@dataclass(frozen=True)
class Table1Row:
    """One model: measured here, modelled on the MCU, its card's accuracy, and the ratios."""

    bench: ModelBench
    #: ``fp32`` or ``int8`` (the card's ``quantization``: none / int8-static).
    dtype: str
    #: Modelled on the nRF52840's Cortex-M4F (gatewayd.energy): one inference, ms and mJ.
    mcu_ms: float
    mcu_mj: float
    #: A whole local-only window on the wearable (base work, inference, SUMMARY, link, idle).
    local_window_mj: float
    #: The modelled inference fits in the 2 s window step.
    feasible: bool
    #: Ratios to the unpruned model of the same dtype (None without one): size, MACs (the
    #: modelled M4F latency and energy are proportional to them), latency here; the accuracy as
    #: a change in points and the HR MAE as a change in bpm.
    vs_unpruned: dict[str, float | None] | None
    #: The paper's row at this pruning level (None for a level the paper has not).
    paper: PaperRow | None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        b = self.bench
        return {
            "model_id": b.model_id,
            "role": b.role,
            "pruning_pct": b.pruning_pct,
            "dtype": self.dtype,
            "size_mb": b.size_mb,
            "params": b.params,
            "macs": b.macs,
            "latency_ms": b.latency_ms,
            "mcu_latency_ms": self.mcu_ms,
            "mcu_energy_mj": self.mcu_mj,
            "local_window_mj": self.local_window_mj,
            "mcu_feasible": self.feasible,
            "activity_top1": b.activity_top1,
            "hr_mae_bpm": b.hr_mae_bpm,
            "evaluated_on": b.evaluated_on,
            "synthetic_training": b.synthetic_training,
            "vs_unpruned": self.vs_unpruned,
            "paper": None
            if self.paper is None
            else {**asdict(self.paper), "vs_unpruned": paper_ratios(self.paper)},
        }


@dataclass(frozen=True)
class Table1:
    """Every row, the measuring set-up, and the paper's rows."""

    rows: list[Table1Row]
    runs: int
    environment: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """The table as JSON (docs/paper.md)."""
        return {
            "artefact": "table1",
            "runs": self.runs,
            "environment": self.environment,
            "rows": [r.to_json() for r in self.rows],
            "paper_table_1": [
                {**asdict(row), "vs_unpruned": paper_ratios(row)} for row in PAPER_TABLE_1
            ],
        }


def _dtype(quantization: str) -> str:
    return "fp32" if quantization == "none" else "int8"


def table1(
    benches: Sequence[tuple[ModelBench, str]], *, runs: int, environment: dict[str, str]
) -> Table1:
    """Table 1 from measured models, each with its card's ``quantization``; sorted by dtype
    (fp32 first) and pruning."""
    modelled = []
    for bench, quantization in benches:
        dtype = _dtype(quantization)
        int8 = dtype == "int8"
        modelled.append(
            (
                bench,
                dtype,
                1e3 * inference_s(bench.macs, int8=int8),
                1e3 * inference_j(bench.macs, int8=int8),
                local_window(bench.macs, int8=int8),
            )
        )
    modelled.sort(key=lambda m: (m[1] != "fp32", m[0].pruning_pct, m[0].model_id))
    base = {m[1]: m[0] for m in modelled if m[0].pruning_pct == 0}
    paper = {row.pruning_pct: row for row in PAPER_TABLE_1}
    rows = []
    for bench, dtype, mcu_ms, mcu_mj, window in modelled:
        rb = base.get(dtype)
        vs: dict[str, float | None] | None = None
        if rb is not None:
            vs = {
                "size": _ratio(bench.size_mb, rb.size_mb),
                "macs": _ratio(bench.macs, rb.macs),
                "latency": _ratio(bench.latency_ms, rb.latency_ms),
                "top1_delta_points": _delta(bench.activity_top1, rb.activity_top1, 100.0),
                "hr_mae_delta_bpm": _delta(bench.hr_mae_bpm, rb.hr_mae_bpm),
            }
        rows.append(
            Table1Row(
                bench=bench,
                dtype=dtype,
                mcu_ms=mcu_ms,
                mcu_mj=mcu_mj,
                local_window_mj=1e3 * window.total_j,
                feasible=window.feasible,
                vs_unpruned=vs,
                paper=paper.get(bench.pruning_pct),
            )
        )
    return Table1(rows=rows, runs=runs, environment=environment)


TABLE1_HEAD: Final = (
    "model", "type", "pruned", "size MB", "MMACs", "latency here ms", "M4F ms (model)",
    "mJ / inference (model)", "local window mJ (model)", "top-1 %", "HR MAE bpm",
    "size x", "MACs x", "latency x", "Δ top-1 pts", "Δ HR MAE",
    "paper: size x", "paper: latency x", "paper: Δ top-1 pts",
)  # fmt: skip


def table1_cells(row: Table1Row) -> list[str]:
    """One Markdown row of Table 1."""
    b, vs = row.bench, row.vs_unpruned or {}
    p = None if row.paper is None else paper_ratios(row.paper)
    top1 = None if b.activity_top1 is None else 100 * b.activity_top1
    return [
        f"`{b.model_id}`", row.dtype, f"{b.pruning_pct} %", f"{b.size_mb:.2f}",
        f"{b.macs / 1e6:.2f}", f"{b.latency_ms:.3f}",
        f"{row.mcu_ms:.0f}" + ("" if row.feasible else " (> 2 s step)"), f"{row.mcu_mj:.2f}",
        f"{row.local_window_mj:.2f}", _f(top1, ".1f"), _f(b.hr_mae_bpm, ".2f"),
        _f(vs.get("size"), ".2f"), _f(vs.get("macs"), ".2f"), _f(vs.get("latency"), ".2f"),
        _signed(vs.get("top1_delta_points"), ".1f"),
        _signed(vs.get("hr_mae_delta_bpm"), ".2f"),
        _f(None if p is None else p["size"], ".2f"), _f(None if p is None else p["latency"], ".2f"),
        _signed(None if p is None else p["top1_delta_points"], ".1f"),
    ]  # fmt: skip


def format_table1(table: Table1) -> str:
    """Table 1 as Markdown: the table, what each column is, and the paper's rows."""
    env = table.environment
    synthetic = any(r.bench.synthetic_training for r in table.rows)
    # An int8 card says its figures are its fp32 model's: one line for both.
    evaluated = dict.fromkeys(
        r.bench.evaluated_on.removesuffix(" (fp32 model)")
        for r in table.rows
        if r.bench.evaluated_on
    )
    lines = [
        "## Table 1: pruning against size, latency, energy and accuracy",
        "",
        f"Latency here: ONNX Runtime {env.get('onnxruntime', '?')}, batch 1, one thread, median"
        f" of {table.runs} runs on {env.get('cpu', '?')}. M4F: modelled for the wearable's"
        " nRF52840 (Cortex-M4F, 64 MHz) from the MACs, int8 at 2 and fp32 at 6 cycles/MAC"
        " (docs/energy.md, assumptions). Ratios (x) and changes (Δ) are to the unpruned model"
        " of the same type; the paper's are to its own unpruned model (its hardware, its data)."
        " The modelled M4F latency and energy per inference are proportional to the MACs, so"
        " their ratio is the MACs ratio.",
        "",
        *markdown_table(TABLE1_HEAD, [table1_cells(r) for r in table.rows]),
        "",
        "Top-1 and HR MAE are the model cards' held-out (cross-subject) figures from the release"
        " training run; an int8 card carries its fp32 model's figures."
        + (
            " The training data included synthetic subjects (the accuracy is pooled over the"
            " measured sets' held-out windows)."
            if synthetic
            else ""
        ),
    ]
    lines += [f"Evaluated on: {text}" for text in evaluated]
    lines += [
        "",
        "The paper's Table 1 (L1-norm channel pruning of its 1D MobileNet):",
        "",
        *markdown_table(
            ("pruned", "size MB", "latency ms", "top-1 %", "size x", "latency x", "Δ top-1 pts"),
            [
                [
                    f"{row.pruning_pct} %",
                    f"{row.size_mb:.1f}",
                    f"{row.latency_ms:.1f}",
                    f"{row.top1_pct:.1f}",
                    f"{paper_ratios(row)['size']:.2f}",
                    f"{paper_ratios(row)['latency']:.2f}",
                    _signed(paper_ratios(row)["top1_delta_points"], ".1f"),
                ]
                for row in PAPER_TABLE_1
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def plot_table1(table: Table1, path: Path) -> Path:
    """table1.png: ratios to the unpruned model and the accuracy change, ours beside the
    paper's, against pruning. Needs matplotlib."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(12, 4.6))
    ax_cost, ax_acc = fig.subplots(1, 2)
    paper_x = [row.pruning_pct for row in PAPER_TABLE_1]
    ax_cost.plot(paper_x, [paper_ratios(r)["size"] for r in PAPER_TABLE_1], "k--s",
                 label="paper: size")  # fmt: skip
    ax_cost.plot(paper_x, [paper_ratios(r)["latency"] for r in PAPER_TABLE_1], "k:^",
                 label="paper: latency")  # fmt: skip
    ax_acc.plot(paper_x, [PAPER_DELTA_POINTS[x] for x in paper_x], "k--s", label="paper")
    series = (("size", "o", "size"), ("latency", "^", "latency here"),
              ("macs", "d", "MACs = M4F latency and energy (model)"))  # fmt: skip
    for k, dtype in enumerate(("fp32", "int8")):
        rows = [r for r in table.rows if r.dtype == dtype and r.vs_unpruned is not None]
        if not rows:
            continue
        x = [r.bench.pruning_pct for r in rows]
        style = "-" if dtype == "fp32" else "-."
        for j, (key, marker, label) in enumerate(series):
            values = [r.vs_unpruned[key] if r.vs_unpruned else None for r in rows]
            ax_cost.plot(x, [math.nan if v is None else v for v in values], style + marker,
                         color=f"C{j}", label=f"ours {dtype}: {label}")  # fmt: skip
        acc = [r.vs_unpruned.get("top1_delta_points") if r.vs_unpruned else None for r in rows]
        ax_acc.plot(x, [math.nan if v is None else v for v in acc], style + "o", color=f"C{3 + k}",
                    label=f"ours {dtype} (cards' held-out top-1)")  # fmt: skip
    ax_cost.set_ylabel("x the unpruned model")
    ax_cost.set_title("Cost against pruning (ratio to unpruned)", fontsize=10)
    ax_acc.axhline(0.0, color="grey", linewidth=0.8)
    ax_acc.set_ylabel("activity top-1 change, points")
    ax_acc.set_title("Accuracy change against pruning", fontsize=10)
    for ax in (ax_cost, ax_acc):
        ax.set_xlabel("channels pruned, %")
        ax.set_xticks(paper_x)
        ax.legend(fontsize=7)
    synthetic = any(r.bench.synthetic_training for r in table.rows)
    fig.suptitle(
        "gatewayd bench paper: Table 1, ours beside the paper's"
        + (" (our training data included synthetic subjects)" if synthetic else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
