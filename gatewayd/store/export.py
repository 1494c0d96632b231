"""`gatewayd store export`: the per-window results as CSV or JSON Lines.

Each window the gateway stored becomes one row, oldest first: when it arrived, the device, its
heart rate and where that came from, its activity group, whether it was offloaded, and the rest
of the `windows` table's columns (docs/store.md). Rows are written as they are read, so a log of
millions of windows streams in constant memory. Raw samples are not exported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

from gatewayd.store.records import StoredWindow

__all__ = ["EXPORT_COLUMNS", "ExportFormat", "export_row", "write_windows"]

ExportFormat = Literal["csv", "jsonl"]

#: The columns of a CSV export, in order (JSON Lines adds ``result`` and ``invalid``).
EXPORT_COLUMNS: Final = (
    "time",
    "device_id",
    "seq",
    "t_ms",
    "kind",
    "hr_bpm",
    "hr_source",
    "activity",
    "activity_conf",
    "entropy_bits",
    "signal_quality",
    "battery",
    "offloaded",
    "model_id",
    "has_raw",
    "received_at",
)


def export_row(window: StoredWindow) -> dict[str, Any]:
    """One window as a flat mapping: ``time`` is its arrival in UTC ISO-8601 (milliseconds),
    ``received_at`` the same instant in Unix seconds, ``t_ms`` the wearable's own clock."""
    return {
        "time": datetime.fromtimestamp(window.received_at, UTC).isoformat(timespec="milliseconds"),
        "device_id": window.device_id,
        "seq": window.seq,
        "t_ms": window.t_ms,
        "kind": window.kind,
        "hr_bpm": window.hr_bpm,
        "hr_source": window.hr_source,
        "activity": window.activity,
        "activity_conf": window.activity_conf,
        "entropy_bits": window.entropy_bits,
        "signal_quality": window.signal_quality,
        "battery": window.battery,
        "offloaded": window.offloaded,
        "model_id": window.model_id,
        "has_raw": window.has_raw,
        "received_at": window.received_at,
    }


def write_windows(windows: Iterable[StoredWindow], out: TextIO, fmt: ExportFormat) -> int:
    """Write ``windows`` to ``out`` as they come; return how many were written.

    CSV: a header row, then one row per window; a missing value is an empty cell, booleans are
    0/1. JSON Lines: one object per line, with ``result`` (the model's outputs) and ``invalid``
    (values the store could not hold as sent) as JSON.
    """
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for window in windows:
            row = export_row(window)
            writer.writerow(_cell(row[c]) for c in EXPORT_COLUMNS)
            count += 1
        return count
    for window in windows:
        row = export_row(window)
        row["result"] = window.result
        row["invalid"] = window.invalid
        out.write(json.dumps(row, separators=(",", ":")) + "\n")
        count += 1
    return count


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return value
