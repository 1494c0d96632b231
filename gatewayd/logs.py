"""Logging: structlog everywhere, one renderer for our events and for the stdlib's.

Our code logs with ``structlog.get_logger(__name__)`` and key/value pairs. Libraries that use
the standard ``logging`` module (bleak, aiomqtt, dbus-fast) go through the same renderer via
`structlog.stdlib.ProcessorFormatter`, so one run produces one format:

- ``console``: coloured, human lines (the default on a terminal);
- ``json``: one JSON object per line (the default when stderr is a pipe or a file);
- ``journald``: native journal entries, written to journald's socket in plain Python
  (gatewayd.systemd.JournalSocket; no systemd-python): MESSAGE, PRIORITY, SYSLOG_IDENTIFIER,
  DEVICE and EVENT_ID for the ``device`` and ``event_id`` keys, and ``GATEWAYD_<KEY>`` for every
  other key (the default under systemd);
- ``auto``: journald if stderr is connected to the journal ($JOURNAL_STREAM), else console on a
  terminal, else json.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gatewayd.systemd import JOURNAL_SOCKET, JournalSocket, journal_field_name

__all__ = [
    "FORMATS",
    "JOURNAL_FIELDS",
    "LEVELS",
    "configure_logging",
    "reset_logging",
    "running_under_journald",
]

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("auto", "console", "json", "journald")
Format = Literal["console", "json", "journald"]

#: Event keys that become journal fields of their own name, for ``journalctl DEVICE=wrist-1``
#: and ``journalctl EVENT_ID=...``; every other key is ``GATEWAYD_<KEY>``.
JOURNAL_FIELDS: Final = {"device": "DEVICE", "event_id": "EVENT_ID"}

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
    journal_socket: str = JOURNAL_SOCKET,
) -> Format:
    """Route structlog and stdlib logging to ``stream`` (default stderr); return the format used.

    ``env`` (default os.environ) supplies $JOURNAL_STREAM and $NO_COLOR. journald entries go to
    ``journal_socket``; when nothing listens there, journald falls back to JSON lines with one
    warning. Calling it again replaces the previous configuration.
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
    if chosen == "journald" and not _is_socket(journal_socket):
        chosen = "json"
        fallback_warning = (
            f"journald logging: no journal socket at {journal_socket}; writing JSON lines instead"
        )
    handler = _make_handler(chosen, stream, env, journal_socket)
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
    chosen: Format, stream: TextIO, env: Mapping[str, str], journal_socket: str
) -> logging.Handler:
    handler: logging.Handler
    renderers: list[Processor]
    if chosen == "journald":
        handler = _JournalHandler(JournalSocket(journal_socket), stream)
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


def _is_socket(path: str) -> bool:
    return Path(path).is_socket()  # False when missing or unreadable


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

# Keys that journald already records itself, or that become MESSAGE/PRIORITY.
_NOT_FIELDS: Final = frozenset({"event", "level", "timestamp", "exception"})


def _journal_field_name(key: str) -> str:
    return JOURNAL_FIELDS.get(key) or journal_field_name(_FIELD_PREFIX + key)


def _journal_fields(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> str:
    """Final processor for journald: the entry's fields, JSON-encoded for `_JournalHandler`."""
    event_dict = structlog.processors.format_exc_info(_logger, _name, event_dict)
    level = str(event_dict.get("level", "info"))
    extra = {k: v for k, v in event_dict.items() if k not in _NOT_FIELDS}
    # MESSAGE is what `journalctl` shows by default, so it carries the key=value pairs too;
    # the fields are for `journalctl DEVICE=...` and -o json.
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
    """Sends each record to journald as one entry with structured fields.

    When journald cannot take it (restarting, gone), the entry's MESSAGE goes to ``fallback``
    (stderr, which systemd connects to the journal too) rather than being lost.
    """

    def __init__(self, journal: JournalSocket, fallback: TextIO) -> None:
        super().__init__()
        self._journal = journal
        self._fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, str] = json.loads(self.format(record))
            try:
                self._journal.send(fields)
            except OSError:
                self._fallback.write(f"<{fields['PRIORITY']}>{fields['MESSAGE']}\n")
                self._fallback.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def close(self) -> None:
        self._journal.close()
        super().close()
