"""What the artefacts of `gatewayd bench paper` share: the experiments' names, ratios and
table cells, Markdown tables (pure) and reading a training run's JSON files. Light: the CLI
imports it before the bench's heavy modules."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

__all__ = [
    "EXPERIMENTS",
    "delta",
    "markdown_table",
    "number_cell",
    "ratio",
    "read_run_json",
    "signed_cell",
]

#: The experiments, for --only: key and what `not_run` calls it.
EXPERIMENTS: Final = {
    "table1": "Table 1", "fig3": "Figure 3", "fig4": "Figure 4", "fig5": "Figure 5",
    "fig6": "Figure 6",
}  # fmt: skip


def ratio(value: float | None, ref: float | None) -> float | None:
    """``value / ref``, or None when either is missing or NaN or ``ref`` is 0."""
    if value is None or ref is None or not ref or math.isnan(value) or math.isnan(ref):
        return None
    return value / ref


def delta(value: float | None, ref: float | None, scale: float = 1.0) -> float | None:
    """``scale * (value - ref)``, or None when either is missing."""
    if value is None or ref is None:
        return None
    return scale * (value - ref)


def number_cell(value: float | None, spec: str) -> str:
    """A table cell: ``value`` formatted, or "-" when missing or NaN."""
    return "-" if value is None or math.isnan(value) else format(value, spec)


def signed_cell(value: float | None, spec: str) -> str:
    """A table cell with its sign (a change), or "-" when missing or NaN."""
    return "-" if value is None or math.isnan(value) else format(value, "+" + spec)


def read_run_json(path: Path) -> Any:
    """A JSON file of a gatewayd-train ``--out`` folder. ValueError naming the file when it is
    missing or not JSON. Blocks."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (a gatewayd-train --out folder has one)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the first column left-aligned, the others right-aligned."""
    align = ["---", *["---:"] * (len(head) - 1)]
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
