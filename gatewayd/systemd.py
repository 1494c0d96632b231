"""systemd notification (sd_notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

`notifier` returns a callable that sends one notification string. Under systemd (``$NOTIFY_SOCKET``
set) and with systemd-python installed it is ``systemd.daemon.notify``; otherwise it does
nothing, so the gateway runs the same in a terminal, in tests and under systemd. The supervisor
(gatewayd.app) takes these callables as arguments: tests pass a list's ``append``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Final

import structlog

__all__ = ["NOTIFY_SOCKET_ENV", "Notify", "notifier", "watchdog_interval_s"]

log = structlog.get_logger("gatewayd.systemd")

#: Set by systemd for Type=notify units: where sd_notify writes.
NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
#: Set by systemd when WatchdogSec= is configured: the interval in microseconds.
WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"

#: Sends one sd_notify message such as "READY=1" or "STATUS=..."; never raises.
Notify = Callable[[str], None]


def _no_op(_message: str) -> None:
    """Not under systemd (or systemd-python missing): nothing to tell."""


def notifier(env: Mapping[str, str] | None = None) -> Notify:
    """``systemd.daemon.notify`` when running under systemd and importable, else a no-op."""
    env = os.environ if env is None else env
    if not env.get(NOTIFY_SOCKET_ENV):
        return _no_op
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        log.warning(
            "NOTIFY_SOCKET is set but systemd-python is not installed: READY=1 and the watchdog"
            " will not be sent (install gatewayd[systemd], or use Type=simple)"
        )
        return _no_op
    send: Callable[[str], object] = daemon.notify

    def notify(message: str) -> None:
        try:
            send(message)
        except OSError as exc:  # the socket went away (systemd restarting): not our failure
            log.debug("sd_notify failed", message=message, error=str(exc))

    return notify


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of systemd's watchdog timeout ($WATCHDOG_USEC), in seconds; None when unset."""
    env = os.environ if env is None else env
    raw = env.get(WATCHDOG_USEC_ENV, "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
