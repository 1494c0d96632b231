"""What every `gatewayd` command shares: exit codes, the parser class, the global options
(--config, --state-dir, --log-level, --log-format) and loading the config from them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, NoReturn

from gatewayd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    load_config,
)
from gatewayd.errors import (
    EXIT_USAGE,
)
from gatewayd.logs import FORMATS, LEVELS, configure_logging

#: Environment variable naming the config file when --config is not given.
CONFIG_ENV = "GATEWAYD_CONFIG"


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE: Final = 141


Command = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse with sysexits: a usage error exits 64 (EX_USAGE), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def usage_error(command: str, message: str) -> int:
    print(f"gatewayd {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def config_named(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> bool:
    """Whether a config file was named (--config, or $GATEWAYD_CONFIG) rather than defaulted
    to the installed /etc/gatewayd one."""
    env = os.environ if env is None else env
    return args.config != str(DEFAULT_CONFIG_PATH) or bool(env.get(CONFIG_ENV))


def load_config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
    """Load --config and configure logging from it; --log-level/--log-format win over the file."""
    env = os.environ if env is None else env
    config = load_config(args.config, env, state_dir=getattr(args, "state_dir", None))
    configure_logging(
        args.log_level or config.logging.level,
        args.log_format or config.logging.format,
        env=env,
    )
    return config


def global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--config, --state-dir, --log-level and --log-format, before and after the subcommand.

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
        "--state-dir",
        metavar="PATH",
        default=default(None),
        help="state directory: paired devices and the event log (overrides [gateway] state_dir)",
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def models_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir",
        type=Path,
        metavar="PATH",
        help="folder of <name>.onnx + <name>.onnx.json (default: the installed gatewayd/models)",
    )
