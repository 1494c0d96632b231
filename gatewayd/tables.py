"""Plain-text tables for command output (pure)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] | None = None,
) -> str:
    """Columns padded to their widest cell; ``right`` columns right-aligned (default: all but
    the first, for tables of numbers), the rest left-aligned."""
    right_cols = set(range(1, len(headers))) if right is None else set(right)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i in right_cols else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in [headers, *rows]
    )
