"""What the artefacts of `gatewayd bench paper` share: Markdown tables (pure) and reading a
training run's JSON files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "read_run_json"]


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
