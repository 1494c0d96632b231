"""systemd without libsystemd: sd_notify (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) and journald.

sd_notify is one datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(sd_notify(3), "Notes"): a path, or an abstract socket when the name starts with ``@``. That is
all systemd-python's ``systemd.daemon.notify`` does, so no C extension (and no libsystemd-dev) is
needed for it.

`notifier` returns a callable that sends one notification string. Under systemd
(``$NOTIFY_SOCKET`` set) it sends; otherwise it does nothing, so the gateway runs the same in a
terminal, in tests and under systemd. The supervisor (gatewayd.app) takes these callables as
arguments: tests pass a list's ``append``.

journald's native protocol is as small: one datagram per entry to /run/systemd/journal/socket,
each field a ``KEY=value`` line, or, when the value holds a newline, ``KEY``, a newline, the
value's length as a 64-bit little-endian integer, the value and a newline; an entry too big for
a datagram goes as a sealed memfd passed with SCM_RIGHTS (systemd's "Native Journal Protocol"
document). `journal_entry` encodes (pure), `JournalSocket` sends; gatewayd.logs uses them for
``--log-format journald`` (docs/decisions.md, "systemd").
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Final

import structlog

__all__ = [
    "JOURNAL_SOCKET",
    "NOTIFY_SOCKET_ENV",
    "WATCHDOG_PID_ENV",
    "WATCHDOG_USEC_ENV",
    "JournalSocket",
    "Notify",
    "journal_entry",
    "journal_field_name",
    "notifier",
    "notify_address",
    "watchdog_interval_s",
]

log = structlog.get_logger("gatewayd.systemd")

#: Set by systemd for Type=notify units: where sd_notify writes.
NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
#: Set by systemd when WatchdogSec= is configured: the interval in microseconds.
WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"
#: Set with WATCHDOG_USEC: the process that is watched (a child that inherited it is not).
WATCHDOG_PID_ENV: Final = "WATCHDOG_PID"

#: Sends one sd_notify message such as "READY=1" or "STATUS=..."; never raises.
Notify = Callable[[str], None]


def _no_op(_message: str) -> None:
    """Not under systemd: nothing to tell."""


def notify_address(value: str) -> str | None:
    """The AF_UNIX address for a ``$NOTIFY_SOCKET`` value; None when it is not one.

    ``/run/systemd/notify`` is a path; ``@name`` is the abstract socket ``\\0name``. Anything
    else (empty, relative, or another family such as ``vsock:`` of newer systemd) is None.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def notifier(env: Mapping[str, str] | None = None) -> Notify:
    """A sender of sd_notify messages to ``$NOTIFY_SOCKET``, or a no-op when it is unset."""
    env = os.environ if env is None else env
    value = env.get(NOTIFY_SOCKET_ENV, "")
    if not value:
        return _no_op
    address = notify_address(value)
    if address is None:
        log.warning(
            "NOTIFY_SOCKET is not a unix socket path or @abstract name: READY=1 and the"
            " watchdog will not be sent",
            notify_socket=value,
        )
        return _no_op

    def notify(message: str) -> None:
        # One short-lived non-blocking datagram socket per message, as sd_notify does: a
        # message is sent or dropped at once, never blocking the event loop (a full receive
        # queue is EAGAIN). The kernel attaches our credentials, which systemd checks
        # (NotifyAccess=main).
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), address)
        except OSError as exc:  # the socket went away (systemd restarting): not our failure
            log.debug("sd_notify failed", message=message, error=str(exc))

    return notify


def watchdog_interval_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Half of systemd's watchdog timeout ($WATCHDOG_USEC), in seconds; None when unset.

    Like sd_watchdog_enabled(3): None as well when ``$WATCHDOG_PID`` names another process
    than ``pid`` (default: this one).
    """
    env = os.environ if env is None else env
    watched = env.get(WATCHDOG_PID_ENV, "")
    if watched:
        try:
            if int(watched) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    raw = env.get(WATCHDOG_USEC_ENV, "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


# --- journald's native protocol --------------------------------------------------------------

#: journald's socket for structured entries (systemd-journald.socket).
JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
#: A field name journald accepts: upper case, digits, '_'; not starting with '_' (those are the
#: trusted fields journald adds itself) or a digit; at most 64 characters.
_FIELD_NAME: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: What libsystemd asks for its journal socket's send buffer (journal-send.c, SNDBUF_SIZE); the
#: kernel caps it at net.core.wmem_max. Entries bigger than the buffer go as a memfd.
_SNDBUF: Final = 8 * 1024 * 1024
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def journal_field_name(key: str) -> str:
    """A valid journal field name for ``key``: ``event-id`` -> ``EVENT_ID``, ``2x`` -> ``X2X``."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "X" + name
    return name[:64]


def journal_entry(fields: Mapping[str, str | bytes]) -> bytes:
    """One entry in the native protocol; ValueError for a field name journald would refuse."""
    out = bytearray()
    for key, value in fields.items():
        if not _FIELD_NAME.fullmatch(key):
            raise ValueError(f"not a journal field name: {key!r}")
        data = value.encode("utf-8") if isinstance(value, str) else value
        if b"\n" in data:
            out += key.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


class JournalSocket:
    """Sends entries to journald's native socket; blocking, as libsystemd's sd_journal_send.

    One unconnected datagram socket for the process; `send` raises OSError when journald is
    not there (the caller decides what to do with the entry).
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Capped at net.core.wmem_max without a word: never fails for lack of privilege.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)

    def send(self, fields: Mapping[str, str | bytes]) -> None:
        """Send one entry: a datagram, or a sealed memfd when it is too big for one."""
        data = journal_entry(fields)
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("gatewayd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # journald maps a sealed memfd as it is; an unsealed one it would have to copy.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = array.array("i", [fd]).tobytes()
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
