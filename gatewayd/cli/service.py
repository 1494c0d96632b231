"""`gatewayd run`, `check-config`, `doctor` and `demo`: the gateway as a service."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path

from gatewayd.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    Parser,
    load_config_from_args,
    models_dir_option,
)
from gatewayd.config import (
    config_warnings,
    load_config,
)
from gatewayd.link.registry import DeviceRegistry, RegistryError
from gatewayd.logs import configure_logging


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file (and the secrets it names); print a one-line summary."""
    path = Path(args.path if args.path is not None else args.config)
    config = load_config(path, os.environ)
    # The password and TLS files, loaded as `gatewayd run` loads them before it is ready: what
    # run would refuse (exit 78), check-config refuses too.
    from gatewayd.publish.client import load_credentials  # noqa: PLC0415 - pulls in aiomqtt

    load_credentials(config.mqtt, os.environ)
    # The paired-device list run reads at start (an absent file is none paired yet). One this
    # user may not read is said, not failed: check-config is often run by another user.
    try:
        paired = len(DeviceRegistry.in_state_dir(config.gateway.state_dir).load())
    except RegistryError as exc:
        if not isinstance(exc.__cause__, PermissionError):
            raise
        print(f"gatewayd: warning: {exc}", file=sys.stderr)
        paired = 0
    for warning in config_warnings(config):
        print(f"gatewayd: warning: {warning}", file=sys.stderr)
    adapters = len(config.ble.adapters)
    print(
        f"ok: {path.absolute()} (gateway id {config.gateway.id},"
        f" mqtt {config.mqtt.host}:{config.mqtt.port},"
        f" {adapters} adapter{'s' if adapters != 1 else ''}, {paired} paired)"
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run gatewayd.demo; its own parser reads the arguments after `demo`."""
    # Imported here, not at the top: the demo pulls in the whole gateway, and the CLI must
    # work (check-config under systemd, --help) without loading it.
    demo = importlib.import_module("gatewayd.demo")

    parser = Parser(
        prog="gatewayd demo",
        description="Emulated wearables (synthetic recordings) -> the gateway -> an MQTT broker:"
        " a scripted scenario that raises a tachycardia, a fall and a disconnection within a"
        " minute, with a live view (docs/demo.md).",
    )
    demo.add_arguments(parser)
    demo_args = parser.parse_args(args.extra, namespace=argparse.Namespace(**vars(args)))
    result: int = demo.run(demo_args)
    return result


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM/SIGINT (exit 0; 78 config error; 1 other failure).

    An unwritable state directory is said as `gatewayd doctor` says it, and exits 1.
    """
    # Imported here: the supervisor pulls in bleak, aiomqtt, onnxruntime and the store.
    import structlog  # noqa: PLC0415

    from gatewayd.app import run_gateway  # noqa: PLC0415
    from gatewayd.doctor import state_dir_checks  # noqa: PLC0415
    from gatewayd.runner import run_until_signalled  # noqa: PLC0415
    from gatewayd.systemd import notifier, watchdog_interval_s  # noqa: PLC0415

    log = structlog.get_logger("gatewayd.app")
    config = load_config_from_args(args)
    for warning in config_warnings(config):
        print(f"gatewayd: warning: {warning}", file=sys.stderr)
    notify = notifier(os.environ)
    # The state directory as `gatewayd doctor` checks it, with its words, before anything opens.
    for check in state_dir_checks(config):
        if check.status == "fail":
            log.error(check.message, check=check.name, fix=check.fix)
            notify(f"STATUS={check.message}")
            return EXIT_ERROR
        if check.status == "warn":
            log.warning(check.message, check=check.name, fix=check.fix)
    interval = watchdog_interval_s(os.environ)
    # Signals are handled here: the first SIGTERM/SIGINT sets `stop`, a second SIGINT forces.
    return run_until_signalled(
        lambda stop: run_gateway(
            config,
            stop=stop,
            ready=lambda: notify("READY=1"),
            watchdog=(lambda: notify("WATCHDOG=1")) if interval is not None else None,
            status=lambda line: notify(f"STATUS={line}"),
            stopping=lambda: notify("STOPPING=1"),
            models_dir=args.models_dir,
            watchdog_interval_s=interval if interval is not None else 5.0,
        )
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check what `gatewayd run` needs; one line per check with the fix; exit 1 if one failed."""
    # Imported here: doctor pulls in dbus-fast, aiomqtt and (for the model) onnxruntime.
    from gatewayd.doctor import exit_code, format_check, run_doctor  # noqa: PLC0415

    # Our own messages are the checks; the libraries' logging only when something is wrong.
    configure_logging(args.log_level or "warning", args.log_format or "auto")
    checks = asyncio.run(
        run_doctor(
            Path(args.config),
            os.environ,
            models_dir=args.models_dir,
            service_user=args.user,
            timeout_s=args.timeout,
        )
    )
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
        return exit_code(checks)
    for check in checks:
        print(format_check(check))
    failed = sum(1 for c in checks if c.status == "fail")
    warned = sum(1 for c in checks if c.status == "warn")
    if failed or warned:
        print(
            f"gatewayd doctor: {failed} failed, {warned} warning{'s' if warned != 1 else ''}"
            f" ({len(checks)} checks)"
        )
    else:
        print(f"gatewayd doctor: all {len(checks)} checks passed")
    return exit_code(checks)


def add_doctor_options(doctor: argparse.ArgumentParser) -> None:
    from gatewayd.doctor import DEFAULT_TIMEOUT_S, SERVICE_USER  # noqa: PLC0415

    doctor.add_argument(
        "--user",
        metavar="NAME",
        default=SERVICE_USER,
        help=f"the user the service runs as (default: {SERVICE_USER}); as root, its D-Bus access"
        " is checked with dbus-send run as that user",
    )
    doctor.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds for each D-Bus, tool and broker exchange (default: {DEFAULT_TIMEOUT_S:g})",
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON array")
    models_dir_option(doctor)
