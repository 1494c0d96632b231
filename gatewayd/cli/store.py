"""`gatewayd store export | vacuum`: the event log's windows out as CSV or JSON Lines, and a
full VACUUM with the gateway stopped (docs/store.md)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from gatewayd.cli.common import EXIT_ERROR, EXIT_OK, load_config_from_args, usage_error
from gatewayd.cli.events import since_arg
from gatewayd.errors import EXIT_UNAVAILABLE


def cmd_store_export(args: argparse.Namespace) -> int:
    """Write the stored windows, oldest first; read-only, so it runs beside a running gateway."""
    # Imported here: the store pulls in structlog and its threads, which most commands skip.
    from gatewayd.store.export import write_windows  # noqa: PLC0415
    from gatewayd.store.report import EventLogMissingError, EventLogReader  # noqa: PLC0415

    config = load_config_from_args(args)
    if args.since is not None and args.until is not None and args.until <= args.since:
        return usage_error("store export", "--until must be later than --since")
    try:
        log = EventLogReader.open(config.store.path)
    except EventLogMissingError as exc:
        print(f"gatewayd store export: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        with log, _output(args.out) as out:
            windows = log.windows(args.device, args.since, args.until)
            count = write_windows(windows, out, args.format)
    except OSError as exc:  # FILE's directory missing or read-only, a full disk
        if args.out is None:
            raise  # standard output: a closed pipe is the command line's to handle
        reason = exc.strerror or str(exc)
        print(f"gatewayd store export: cannot write {args.out}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    where = f" to {args.out}" if args.out is not None else ""
    print(f"gatewayd store export: {count} window(s){where}", file=sys.stderr)
    return EXIT_OK


def cmd_store_vacuum(args: argparse.Namespace) -> int:
    """VACUUM the event log; refuses while a gatewayd has it open."""
    from gatewayd.store.vacuum import vacuum_event_log  # noqa: PLC0415

    config = load_config_from_args(args)
    path = Path(config.store.path)
    if not path.is_file():
        print(f"gatewayd store vacuum: no event log at {path}: nothing to vacuum", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"gatewayd store vacuum: rewriting {path} (the gateway must be stopped) ...")
    result = vacuum_event_log(path)
    print(
        f"gatewayd store vacuum: {path}: {result.before_bytes / 1e6:.1f} MB ->"
        f" {result.after_bytes / 1e6:.1f} MB ({result.live_bytes / 1e6:.1f} MB of live data)"
        f" in {result.seconds:.1f} s"
    )
    return EXIT_OK


@contextlib.contextmanager
def _output(name: str | None) -> Iterator[TextIO]:
    """Standard output, or FILE written whole or not at all: rows go to FILE.partial, renamed
    to FILE once every row is written (a failed export leaves no half file under FILE)."""
    if name is None:
        yield sys.stdout
        return
    path = Path(name)
    partial = path.with_name(f"{path.name}.partial")
    try:
        # newline="": the csv module writes its own line ends.
        with partial.open("w", encoding="utf-8", newline="") as out:
            yield out
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def add_export_options(export: argparse.ArgumentParser) -> None:
    export.add_argument("--device", metavar="ID", help="only this device's windows")
    export.add_argument(
        "--since",
        metavar="WHEN",
        type=since_arg,
        help="only windows received since WHEN: a duration back from now (15m, 2h, 7d) or an"
        " ISO-8601 date or time (2026-11-25, 2026-11-25T08:00; local unless it ends in Z or"
        " +HH:MM)",
    )
    export.add_argument(
        "--until",
        metavar="WHEN",
        type=since_arg,
        help="only windows received before WHEN (same forms as --since)",
    )
    export.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        default="csv",
        help="csv (a header row, then one row per window; the default) or jsonl (one JSON"
        " object per line, with the model's outputs)",
    )
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
