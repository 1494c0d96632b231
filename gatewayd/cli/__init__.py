"""The `gatewayd` command: argparse, one small function per subcommand, one module per group.

Each subcommand is registered with ``set_defaults(func=...)``. Exit codes: 0 ok, 1 error
(`doctor`: a check failed), 64 usage, 69 unavailable (something a command needs is not there,
e.g. no installed model), 78 configuration, 130 interrupted (docs/running.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gatewayd import __version__
from gatewayd.cli.common import (
    CONFIG_ENV,
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Command,
    Parser,
    global_options,
    load_config_from_args,
    models_dir_option,
)
from gatewayd.cli.devices import (
    add_pair_options,
    cmd_devices_list,
    cmd_devices_remove,
    cmd_devices_rename,
    cmd_pair,
)
from gatewayd.cli.emulate import add_emulate_options, cmd_emulate
from gatewayd.cli.evaluate import add_bench_parser, add_eval_parser, cmd_bench_models, cmd_eval_hr
from gatewayd.cli.events import add_events_options, cmd_events
from gatewayd.cli.service import (
    add_doctor_options,
    cmd_check_config,
    cmd_demo,
    cmd_doctor,
    cmd_run,
)
from gatewayd.cli.store import add_export_options, cmd_store_export, cmd_store_vacuum
from gatewayd.errors import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    ConfigError,
    GatewayError,
    NotYetAvailableError,
)

__all__ = ["CONFIG_ENV", "build_parser", "cmd_check_config", "load_config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full `gatewayd` argument parser."""
    parser = Parser(
        prog="gatewayd",
        description="Edge gateway for wearable health monitoring: BLE in, ONNX inference,"
        " SQLite event log, MQTT out.",
    )
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    global_options(parser, suppress=False)
    parser.set_defaults(extra_ok=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Command, help_text: str, *, extra_ok: bool = False) -> Parser:
        # extra_ok: unparsed arguments are handed on (demo) rather than a usage error.
        p: Parser = sub.add_parser(name, help=help_text, description=help_text)
        global_options(p, suppress=True)
        p.set_defaults(func=func, extra_ok=extra_ok)
        return p

    check = add("check-config", cmd_check_config, "validate a config file and exit")
    check.add_argument("path", nargs="?", metavar="PATH", help="config file (default: --config)")

    run = add("run", cmd_run, "run the gateway (under systemd: Type=notify)")
    models_dir_option(run)
    add_doctor_options(
        add(
            "doctor",
            cmd_doctor,
            "check BlueZ, adapters, permissions, config, disk, event log, broker, model",
        )
    )
    pair = add("pair", cmd_pair, "scan for wearables and heart-rate straps, and pair them")
    add_pair_options(pair)

    devices = add("devices", cmd_devices_list, "list, rename or remove paired devices")
    devices_sub = devices.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    for action, func, help_text in (
        ("list", cmd_devices_list, "list paired devices and what the event log knows"),
        (
            "rename",
            cmd_devices_rename,
            "give a paired device a new id (a running gateway follows within seconds)",
        ),
        (
            "remove",
            cmd_devices_remove,
            "forget a paired device (a running gateway lets it go within seconds)",
        ),
    ):
        p = devices_sub.add_parser(action, help=help_text, description=help_text)
        global_options(p, suppress=True)
        p.set_defaults(func=func)
        if action == "list":
            p.add_argument("--json", action="store_true", help="print the list as JSON")
        if action in {"rename", "remove"}:
            p.add_argument("device", metavar="ID", help="the device's id")
        if action == "rename":
            p.add_argument("alias", metavar="NEW", help="the new id (a-z, 0-9, '-', '_')")
        if action == "remove":
            p.add_argument(
                "--unpair",
                action="store_true",
                help="also ask BlueZ to forget the bond (Adapter1.RemoveDevice); beside a running"
                " gateway, once it has let the device go",
            )

    add_events_options(add("events", cmd_events, "show the event log (alerts, gateway events)"))
    store = add("store", cmd_store_export, "export the stored windows, or vacuum the event log")
    store_sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    for action, func, help_text in (
        (
            "export",
            cmd_store_export,
            "write the stored windows (heart rate, activity, offload, ...) as CSV or JSON Lines;"
            " read-only, beside a running gateway too",
        ),
        (
            "vacuum",
            cmd_store_vacuum,
            "rewrite the event log compactly (SQLite VACUUM); refused while gatewayd runs",
        ),
    ):
        p = store_sub.add_parser(action, help=help_text, description=help_text)
        global_options(p, suppress=True)
        p.set_defaults(func=func)
        if action == "export":
            add_export_options(p)
    emulate = add("emulate", cmd_emulate, "run emulated BlueZ with virtual wearables")
    add_emulate_options(emulate)
    # add_help=False: `gatewayd demo --help` is answered by the demo's own parser.
    demo = sub.add_parser(
        "demo", help="run the end-to-end demo on embedded defaults", add_help=False
    )
    global_options(demo, suppress=True)
    demo.set_defaults(func=cmd_demo, extra_ok=True)
    add_bench_parser(
        add(
            "bench",
            cmd_bench_models,
            "benchmarks: the models, the pipeline, scale, the paper's figures, soak",
        )
    )
    add_eval_parser(
        add("eval", cmd_eval_hr, "evaluate the wearable, the models and the gateway on recordings")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per outcome
    """Run the `gatewayd` command line; return the process exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not args.extra_ok:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        func: Command = args.func
        return func(args)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return _exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `gatewayd events | head`: the reader left. Quietly, as SIGPIPE would (128 + 13); point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"gatewayd: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NotYetAvailableError as exc:
        print(f"gatewayd: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except GatewayError as exc:
        print(f"gatewayd: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return EXIT_ERROR
