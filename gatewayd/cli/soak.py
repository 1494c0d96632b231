"""`gatewayd bench soak`: the gateway for M minutes under scheduled faults, then the account of
every window and every alert (gatewayd/bench/soak.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gatewayd.bench.soak_verify import FAULT_KINDS
from gatewayd.cli.common import EXIT_ERROR, EXIT_OK, global_options, positive_int, usage_error
from gatewayd.errors import EXIT_UNAVAILABLE, GatewayError
from gatewayd.runner import EXIT_TERMINATED, cancelled_by_sigterm

__all__ = ["add_soak_parser", "cmd_bench_soak"]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def cmd_bench_soak(args: argparse.Namespace) -> int:
    """Run the soak, write its artefacts, print the summary; exit 1 on unexplained loss."""
    # Imported here: the soak pulls in the emulator, aiomqtt and (for the plot) matplotlib.
    from gatewayd.bench.soak import SoakOptions, run_soak  # noqa: PLC0415
    from gatewayd.bench.soak_report import format_soak, write_artefacts  # noqa: PLC0415

    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        return usage_error(
            "bench soak", f"--faults: unknown {', '.join(unknown) or '(none given)'};"
            f" known: {', '.join(FAULT_KINDS)}",
        )  # fmt: skip
    options = SoakOptions(
        minutes=args.minutes, devices=args.devices, seed=args.seed, out=args.out,
        speed=args.speed, fault_interval_s=args.fault_interval_s, faults=kinds,
        warmup_s=args.warmup_s, broker_outage_s=args.broker_outage_s,
        gateway_down_s=args.gateway_down_s, sample_every_s=args.sample_every_s,
        models_dir=args.models_dir, no_model=args.no_model,
    )  # fmt: skip
    try:
        result = asyncio.run(cancelled_by_sigterm(run_soak(options, sys.stderr)))
    except asyncio.CancelledError:
        print("gatewayd bench soak: stopped by SIGTERM; its processes are stopped, nothing"
              " written", file=sys.stderr)  # fmt: skip
        return EXIT_TERMINATED
    except GatewayError as exc:
        print(f"gatewayd bench soak: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    paths = write_artefacts(result, options.out)
    print(format_soak(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return EXIT_OK if result.account.ok else EXIT_ERROR


def add_soak_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `soak` to `gatewayd bench`'s subcommands (the object add_subparsers returned)."""
    soak: argparse.ArgumentParser = subparsers.add_parser(
        "soak",
        help="the gateway for M minutes under link drops, broker restarts, corrupted fragments"
        " and SIGKILLs; then account for every window and alert",
        description="Runs emulated wearables, a private mosquitto and `gatewayd run` as a"
        " subprocess for M minutes, with faults on a seeded schedule (printed at the start);"
        " then checks that every window the wearables produced is stored or recorded lost with"
        " a reason, and that every event in the log reached a subscriber. Writes soak.json,"
        " soak.md and soak.png (RSS and outbox depth over time) into --out. Exit 1 on"
        " unexplained loss or an undelivered event, 69 without mosquitto or dbus-daemon.",
    )
    global_options(soak, suppress=True)
    soak.set_defaults(func=cmd_bench_soak)
    soak.add_argument("--minutes", type=_positive_float, default=20.0, help="length (20)")
    soak.add_argument("--devices", type=positive_int, default=4, help="emulated wearables (4)")
    soak.add_argument("--seed", type=int, default=1, help="seeds the data and the schedule (1)")
    soak.add_argument("--out", type=Path, default=Path("bench-results/soak"), metavar="DIR",
                      help="where the artefacts go (bench-results/soak)")  # fmt: skip
    soak.add_argument("--speed", type=_positive_float, default=4.0,
                      help="wearables' simulated seconds per real second (4)")  # fmt: skip
    soak.add_argument("--fault-interval-s", type=_positive_float, default=60.0, metavar="S",
                      help="mean seconds between faults, +-25%% (60)")  # fmt: skip
    soak.add_argument("--faults", default=",".join(FAULT_KINDS), metavar="K,K",
                      help=f"fault kinds in the rotation ({','.join(FAULT_KINDS)})")  # fmt: skip
    soak.add_argument("--warmup-s", type=float, default=30.0, metavar="S",
                      help="quiet seconds before the first fault (30)")  # fmt: skip
    soak.add_argument("--broker-outage-s", type=float, default=15.0, metavar="S",
                      help="seconds mosquitto stays down per restart (15)")  # fmt: skip
    soak.add_argument("--gateway-down-s", type=float, default=3.0, metavar="S",
                      help="seconds between a SIGKILL and the restart (3)")  # fmt: skip
    soak.add_argument("--sample-every-s", type=_positive_float, default=5.0, metavar="S",
                      help="RSS and outbox sampling period (5)")  # fmt: skip
    soak.add_argument("--models-dir", type=Path, metavar="PATH",
                      help="the gateway's models (default: the installed ones)")  # fmt: skip
    soak.add_argument("--no-model", action="store_true",
                      help="run the gateway without a model (degraded mode, less CPU)")  # fmt: skip
    return soak
