"""`gatewayd demo`: the whole path on embedded defaults, and `gatewayd demo --wire`.

The default demo (`gatewayd.demo.live`) runs synthetic wearables in the emulated BlueZ, the
gateway and a broker, with a live view or, ``--headless``, a JSON summary. ``--wire`` runs the
older firmware-stub -> decoder demo (`gatewayd.demo.wire`). The CLI imports this package lazily
and calls :func:`add_arguments` and :func:`run`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from gatewayd.errors import EXIT_USAGE
from gatewayd.logs import configure_logging

__all__ = ["add_arguments", "run"]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"expected 0 < seconds <= 86400, got {text}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `gatewayd demo`."""
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no live view: run unattended and print a JSON summary (exit 0 when every alert"
        " due arrived and no window was lost)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        metavar="S",
        help="replay S seconds, wait for the last windows and alerts, then stop"
        " (default: until Ctrl-C; --headless needs it)",
    )
    parser.add_argument("--mqtt-host", metavar="H", help="use this broker instead of finding one")
    parser.add_argument("--mqtt-port", type=_port, metavar="P", help="its port (default 1883)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep the demo's config and event log here (default: a temporary directory)",
    )
    wire = parser.add_argument_group("the wire-level demo (firmware stub -> decoder)")
    wire.add_argument("--wire", action="store_true", help="run it instead")
    wire.add_argument("--mtu", type=int, default=247, help="ATT MTU to fragment for (23-517)")
    wire.add_argument("--seed", type=int, default=1, help="seed of the synthetic window")
    wire.add_argument(
        "--firmware",
        type=Path,
        help="firmware stub demo program (default: build firmware_stub/ of this checkout)",
    )
    wire.add_argument("--json", action="store_true", help="print one JSON object instead")


def run(args: argparse.Namespace) -> int:
    """Run the demo asked for; return the exit code."""
    if args.wire or args.firmware is not None:
        from gatewayd.demo import wire  # noqa: PLC0415 - only this path needs it

        return wire.run(args)
    if args.headless and args.duration is None:
        print("gatewayd demo: --headless needs --duration S", file=sys.stderr)
        return EXIT_USAGE
    if args.mqtt_port is not None and args.mqtt_host is None:
        args.mqtt_host = "127.0.0.1"
    if args.mqtt_host is not None and args.mqtt_port is None:
        args.mqtt_port = 1883
    from gatewayd.demo.live import DemoOptions, run_demo, write_summary  # noqa: PLC0415

    # `gatewayd demo --state-dir DIR` reaches here through the global option, a string.
    args.state_dir = None if args.state_dir is None else Path(args.state_dir)
    log_path = _configure_logging(args)
    options = DemoOptions(
        headless=args.headless,
        duration_s=args.duration,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        state_dir=args.state_dir,
        log_path=log_path,
    )
    result = asyncio.run(run_demo(options, sys.stdout))
    if args.headless:
        write_summary(result.summary)
    else:
        _print_outcome(result.summary, kept=args.state_dir is not None)
    return 0 if result.ok else 1


def _configure_logging(args: argparse.Namespace) -> Path | None:
    """The gateway's log: stderr (warnings and up by default), or a file under the live view.

    Returns the log file's path when there is one (the live view redraws the terminal).
    """
    level = getattr(args, "log_level", None) or "warning"
    fmt = getattr(args, "log_format", None) or "auto"
    # bleak warns when it cancels a connection attempt to a device out of range: expected here.
    logging.getLogger("bleak").setLevel(logging.ERROR)
    if args.headless or not sys.stdout.isatty():
        configure_logging(level, fmt)
        return None
    directory = args.state_dir or Path(tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"gatewayd-demo-{os.getpid()}.log"
    stream = path.open("a", encoding="utf-8")  # open for the life of the process
    configure_logging(getattr(args, "log_level", None) or "info", "console", stream)
    return path


def _print_outcome(summary: dict[str, object], *, kept: bool) -> None:
    expectations = summary["expectations"]
    assert isinstance(expectations, dict)
    print(
        f"\nstopped after {summary['elapsed_s']} s: {summary['windows']} windows"
        f" ({summary['offloaded']} offloaded), {len(summary['alerts'])}"  # type: ignore[arg-type]
        f" alert messages; expected alerts met: {', '.join(expectations['met']) or 'none'}"
        + (f"; MISSED: {', '.join(expectations['missed'])}" if expectations["missed"] else "")
        + f"\nevent log: {summary['event_log']}"
        + ("" if kept else " (removed with its temporary directory; keep it with --state-dir)")
    )
