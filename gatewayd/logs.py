"""Logging: structlog everywhere, one renderer for our events and for the stdlib's.

Our code logs with ``structlog.get_logger(__name__)`` and key/value pairs. Libraries that use
the standard ``logging`` module (bleak, aiomqtt, dbus-fast) go through the same renderer via
`structlog.stdlib.ProcessorFormatter`, so one run produces one format:

- ``console``: coloured, human lines (the default on a terminal);
- ``json``: one JSON object per line (the default when stderr is a pipe or a file);
- ``journald``: native journal entries with MESSAGE, PRIORITY and one ``GATEWAYD_<KEY>`` field
  per event key (the default under systemd, when systemd-python is installed);
- ``auto``: journald if stderr is connected to the journal ($JOURNAL_STREAM), else console on a
  terminal, else json.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "FORMATS",
    "LEVELS",
    "JournalSend",
    "configure_logging",
    "reset_logging",
    "running_under_journald",
]

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("auto", "console", "json", "journald")
Format = Literal["console", "json", "journald"]

#: ``systemd.journal.send``: MESSAGE positionally, every other field as a keyword.
JournalSend = Callable[..., Any]

# syslog priorities, as journald expects them in PRIORITY.
_PRIORITY: Final = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_FIELD_PREFIX: Final = "GATEWAYD_"
_SYSLOG_IDENTIFIER: Final = "gatewayd"

_installed_handler: logging.Handler | None = None
_previous_root_level: int | None = None


def _shared_processors() -> list[Processor]:
    """Processors every event passes, structlog's and the stdlib's alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    level: str,
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    env: Mapping[str, str] | None = None,
    journal_send: JournalSend | None = None,
) -> Format:
    """Route structlog and stdlib logging to ``stream`` (default stderr); return the format used.

    ``env`` (default os.environ) supplies $JOURNAL_STREAM and $NO_COLOR. ``journal_send``
    replaces ``systemd.journal.send`` (tests inject a fake); without it, systemd-python is
    imported if present, and if not, journald falls back to JSON lines with one warning.
    Calling it again replaces the previous configuration.
    """
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env

    chosen = _choose_format(fmt, stream, env)
    fallback_warning = None
    if chosen == "journald" and journal_send is None:
        journal_send = _import_journal_send()
        if journal_send is None:
            chosen = "json"
            fallback_warning = (
                "journald logging needs systemd-python (pip install 'gatewayd[systemd]');"
                " writing JSON lines instead"
            )
    handler = _make_handler(chosen, stream, env, journal_send)
    _install(handler, logging.getLevelNamesMapping()[level.upper()])

    if fallback_warning is not None:
        structlog.get_logger(__name__).warning(fallback_warning)
    return chosen


def _choose_format(fmt: str, stream: TextIO, env: Mapping[str, str]) -> Format:
    if fmt != "auto":
        return cast(Format, fmt)  # checked against FORMATS by the caller
    if running_under_journald(stream, env):
        return "journald"
    return "console" if _isatty(stream) else "json"


def _make_handler(
    chosen: Format, stream: TextIO, env: Mapping[str, str], journal_send: JournalSend | None
) -> logging.Handler:
    handler: logging.Handler
    renderers: list[Processor]
    if chosen == "journald":
        assert journal_send is not None
        handler = _JournalHandler(journal_send)
        renderers = [_journal_fields]
    elif chosen == "console":
        handler = logging.StreamHandler(stream)
        colors = _isatty(stream) and "NO_COLOR" not in env
        renderers = [structlog.dev.ConsoleRenderer(colors=colors)]
    else:
        handler = logging.StreamHandler(stream)
        renderers = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    handler.setFormatter(_formatter(renderers))
    return handler


def reset_logging() -> None:
    """Undo `configure_logging`: remove our handler and restore structlog's defaults."""
    global _installed_handler, _previous_root_level  # noqa: PLW0603 - logging is process-global
    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
        _installed_handler.close()
        _installed_handler = None
    if _previous_root_level is not None:
        root.setLevel(_previous_root_level)
        _previous_root_level = None
    structlog.reset_defaults()


def running_under_journald(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True if ``stream`` is the journal stream systemd connected us to ($JOURNAL_STREAM).

    systemd sets JOURNAL_STREAM=<st_dev>:<st_ino> of the stdout/stderr it connected to the
    journal; comparing with the stream's own fstat tells apart a redirected stderr.
    """
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation is both; closed streams raise it
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed stream
        return False


def _import_journal_send() -> JournalSend | None:
    # systemd-python is an optional extra (it needs libsystemd-dev to build); import it only
    # when journald output is actually wanted.
    try:
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    send: JournalSend = journal.send
    return send


def _formatter(renderers: list[Processor]) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
    )


def _install(handler: logging.Handler, level: int) -> None:
    global _installed_handler, _previous_root_level  # noqa: PLW0603 - logging is process-global
    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
        _installed_handler.close()
    else:
        _previous_root_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    _installed_handler = handler
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: configure_logging may run again (config loaded after argv), and loggers
        # created at import time must follow.
        cache_logger_on_first_use=False,
    )


# --- journald ----------------------------------------------------------------------------------

_FIELD_NAME_RE: Final = re.compile(r"[^A-Z0-9_]")
# Keys that journald already records itself, or that become MESSAGE/PRIORITY.
_NOT_FIELDS: Final = frozenset({"event", "level", "timestamp", "exception"})


def _journal_field_name(key: str) -> str:
    return _FIELD_PREFIX + _FIELD_NAME_RE.sub("_", key.upper())


def _journal_fields(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> str:
    """Final processor for journald: the entry's fields, JSON-encoded for `_JournalHandler`."""
    event_dict = structlog.processors.format_exc_info(_logger, _name, event_dict)
    level = str(event_dict.get("level", "info"))
    extra = {k: v for k, v in event_dict.items() if k not in _NOT_FIELDS}
    # MESSAGE is what `journalctl` shows by default, so it carries the key=value pairs too;
    # the GATEWAYD_* fields are for `journalctl GATEWAYD_DEVICE=...` and -o json.
    pairs = (f"{k}={v}" for k, v in extra.items() if k != "logger")
    message = " ".join([str(event_dict.get("event", "")), *pairs])
    if "exception" in event_dict:
        message += "\n" + str(event_dict["exception"])
    fields: dict[str, str] = {
        "MESSAGE": message,
        "PRIORITY": str(_PRIORITY.get(level, 6)),
        "SYSLOG_IDENTIFIER": _SYSLOG_IDENTIFIER,
    }
    for key, value in extra.items():
        fields[_journal_field_name(key)] = value if isinstance(value, str) else _to_text(value)
    return json.dumps(fields)


def _to_text(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


class _JournalHandler(logging.Handler):
    """Sends each record to journald as one entry with structured fields."""

    def __init__(self, send: JournalSend) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = json.loads(self.format(record))
            message = fields.pop("MESSAGE")
            self._send(message, **fields)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
