"""The `gatewayd` command: argparse, one small function per subcommand.

Each subcommand is registered with ``set_defaults(func=...)``; a later milestone replaces one
function (and its parser) at a time. Commands that are not built yet say so and exit 69
(EX_UNAVAILABLE). Exit codes: 0 ok, 1 error, 64 usage, 69 not built, 78 configuration, 130
interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from gatewayd import __version__
from gatewayd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    config_warnings,
    load_config,
    resolve_mqtt_password,
)
from gatewayd.errors import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ConfigError,
    GatewayError,
    NotYetAvailableError,
)
from gatewayd.logs import FORMATS, LEVELS, configure_logging

__all__ = ["CONFIG_ENV", "build_parser", "load_config_from_args", "main"]

#: Environment variable naming the config file when --config is not given.
CONFIG_ENV = "GATEWAYD_CONFIG"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]

#: Where each not-yet-built command comes from; the message a user sees until then.
_MILESTONES: dict[str, str] = {
    "run": "the pipeline milestone (issue 5)",
    "pair": "the BLE link milestone (issue 3)",
    "devices list": "the BLE link milestone (issue 3)",
    "devices rename": "the BLE link milestone (issue 3)",
    "devices remove": "the BLE link milestone (issue 3)",
    "events": "the pipeline milestone (issue 5)",
    "emulate": "the BLE emulator milestone (issue 3)",
    "demo": "the pipeline milestone (issue 5)",
    "bench": "the models milestone (issue 4)",
    "eval": "the models milestone (issue 4)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with sysexits: a usage error exits 64 (EX_USAGE), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# --- commands ----------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file (and the secrets it names); print a one-line summary."""
    path = Path(args.path if args.path is not None else args.config)
    config = load_config(path, os.environ)
    # A password file that cannot be read is a configuration error too: find it now,
    # not on the first broker connection.
    resolve_mqtt_password(config.mqtt, os.environ)
    for warning in config_warnings(config):
        print(f"gatewayd: warning: {warning}", file=sys.stderr)
    adapters = len(config.ble.adapters)
    print(
        f"ok: {path.absolute()} (gateway id {config.gateway.id},"
        f" mqtt {config.mqtt.host}:{config.mqtt.port},"
        f" {adapters} adapter{'s' if adapters != 1 else ''})"
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run gatewayd.demo if it is built; its own parser reads the arguments after `demo`."""
    try:
        # Imported here, not at the top: the demo pulls in the whole pipeline, and the CLI
        # must work (check-config under systemd, --help) while that module is absent.
        demo = importlib.import_module("gatewayd.demo")
    except ImportError as exc:
        if exc.name == "gatewayd.demo":
            return _not_built("demo")
        # The demo exists but something it needs does not (yet): say what, still exit 69.
        raise NotYetAvailableError(f"gatewayd demo cannot start: {exc}") from exc
    parser = _Parser(prog="gatewayd demo", description="Run the end-to-end demo.")
    demo.add_arguments(parser)
    demo_args = parser.parse_args(args.extra, namespace=argparse.Namespace(**vars(args)))
    result: int = demo.run(demo_args)
    return result


def _not_built(command: str) -> int:
    print(
        f"gatewayd {command}: not built yet — arrives with {_MILESTONES[command]}",
        file=sys.stderr,
    )
    return EXIT_UNAVAILABLE


def _stub(command: str) -> Command:
    def not_built(_args: argparse.Namespace) -> int:
        return _not_built(command)

    not_built.__name__ = f"cmd_{command.replace(' ', '_')}"
    return not_built


cmd_run = _stub("run")
cmd_pair = _stub("pair")
cmd_devices_list = _stub("devices list")
cmd_devices_rename = _stub("devices rename")
cmd_devices_remove = _stub("devices remove")
cmd_events = _stub("events")
cmd_emulate = _stub("emulate")
cmd_bench = _stub("bench")
cmd_eval = _stub("eval")


# --- shared helpers for commands ---------------------------------------------------------------


def load_config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
    """Load --config and configure logging from it; --log-level/--log-format win over the file."""
    env = os.environ if env is None else env
    config = load_config(args.config, env)
    configure_logging(
        args.log_level or config.logging.level,
        args.log_format or config.logging.format,
        env=env,
    )
    return config


# --- the parser --------------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--config, --log-level and --log-format, accepted before and after the subcommand.

    On subcommands the defaults are suppressed so that they do not overwrite a value given
    before the subcommand.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default(os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG_PATH)),
        help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        type=str.lower,
        default=default(None),
        help="override [logging] level",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        type=str.lower,
        default=default(None),
        help="override [logging] format",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full `gatewayd` argument parser."""
    parser = _Parser(
        prog="gatewayd",
        description="Edge gateway for wearable health monitoring: BLE in, ONNX inference,"
        " SQLite event log, MQTT out.",
    )
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    _global_options(parser, suppress=False)
    parser.set_defaults(extra_ok=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Command, help_text: str, *, extra_ok: bool = False) -> _Parser:
        # extra_ok: unparsed arguments are handed on (demo) or ignored (not-built stubs) rather
        # than being a usage error.
        p: _Parser = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(p, suppress=True)
        p.set_defaults(func=func, extra_ok=extra_ok)
        return p

    check = add("check-config", cmd_check_config, "validate a config file and exit")
    check.add_argument("path", nargs="?", metavar="PATH", help="config file (default: --config)")

    add("run", cmd_run, "run the gateway (under systemd: Type=notify)", extra_ok=True)
    add("pair", cmd_pair, "scan for and pair a wearable", extra_ok=True)

    devices = add("devices", cmd_devices_list, "list, rename or remove paired wearables")
    devices_sub = devices.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    for action, func, help_text in (
        ("list", cmd_devices_list, "list paired wearables"),
        ("rename", cmd_devices_rename, "give a wearable a new alias"),
        ("remove", cmd_devices_remove, "forget a wearable"),
    ):
        p = devices_sub.add_parser(action, help=help_text, description=help_text)
        _global_options(p, suppress=True)
        p.set_defaults(func=func)
        if action in {"rename", "remove"}:
            p.add_argument("device", help="device id or alias")
        if action == "rename":
            p.add_argument("alias", help="the new alias")

    add("events", cmd_events, "query the event log", extra_ok=True)
    add("emulate", cmd_emulate, "run emulated BlueZ with virtual wearables", extra_ok=True)
    # add_help=False: `gatewayd demo --help` is answered by the demo's own parser.
    demo = sub.add_parser(
        "demo", help="run the end-to-end demo on embedded defaults", add_help=False
    )
    _global_options(demo, suppress=True)
    demo.set_defaults(func=cmd_demo, extra_ok=True)
    add("bench", cmd_bench, "benchmark models and the pipeline", extra_ok=True)
    add("eval", cmd_eval, "evaluate models on recorded data", extra_ok=True)
    return parser


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
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
