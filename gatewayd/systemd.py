"""systemd notification (sd_notify) in plain Python: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

The protocol is one datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(sd_notify(3), "Notes"): a path, or an abstract socket when the name starts with ``@``. That is
all systemd-python's ``systemd.daemon.notify`` does, so no C extension (and no libsystemd-dev) is
needed for it; systemd-python stays optional, for the journald log format only
(docs/decisions.md, "systemd").

`notifier` returns a callable that sends one notification string. Under systemd
(``$NOTIFY_SOCKET`` set) it sends; otherwise it does nothing, so the gateway runs the same in a
terminal, in tests and under systemd. The supervisor (gatewayd.app) takes these callables as
arguments: tests pass a list's ``append``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Final

import structlog

__all__ = [
    "NOTIFY_SOCKET_ENV",
    "WATCHDOG_PID_ENV",
    "WATCHDOG_USEC_ENV",
    "Notify",
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
