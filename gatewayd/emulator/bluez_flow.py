"""Flow control for the emulator's outgoing D-Bus signals.

Why: dbus-fast's asyncio writer tries to ``send()`` a new message at once whenever its queue is
empty, and treats ``EAGAIN`` from a full socket as a fatal error that closes the connection
(``_MessageWriter.write_callback`` in dbus_fast/aio/message_bus.py). A notifier that emits signals
faster than dbus-daemon reads them therefore kills the emulator's bus. Even when the daemon keeps
up, a consumer that reads slower than we write makes the daemon queue up to its
``max_outgoing_bytes`` and then drop signals for that consumer.

How: a bounded window of unacknowledged signals, counted in the socket memory they may occupy.
Every signal first takes credit with :meth:`FlowControl.acquire`; once half the window is in
flight a ``org.freedesktop.DBus.Peer.Ping`` goes to each known consumer (the connections that
called ``GetManagedObjects``: bleak's BlueZ manager), or to the daemon itself when nobody is known.
D-Bus keeps the order of messages from one sender to one receiver and dbus-fast dispatches a
connection's messages in order, so a Ping reply proves that every signal sent before it has been
read (by the daemon) or dispatched (by the consumer).

The window is a byte budget because the kernel charges a unix socket per buffer, not per byte:
each ``send()`` costs roughly the next power of two of (message + 320) bytes, plus 256 (measured
on Linux 6.x: 167 messages of 470 bytes, or 93 of 800, fill the default 208 KiB ``SO_SNDBUF`` when
the reader stalls). With the default budget of 96 KiB in flight the socket stays under half full
even if dbus-daemon stops reading, so the writer never meets ``EAGAIN``; and a slow gateway slows
the emulator down instead of losing data. No polling: waiters sleep on an event set by the Ping
replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from gatewayd.errors import EmulatorError

__all__ = ["DEFAULT_WINDOW", "FlowControl", "socket_cost"]

_LOG = logging.getLogger(__name__)

#: Socket memory (estimated, see :func:`socket_cost`) that unacknowledged signals may occupy:
#: under half of Linux's default 208 KiB unix-socket send buffer.
DEFAULT_WINDOW: Final = 96 * 1024
#: What a D-Bus header adds to a signal's payload (path, interface, member, signature, body
#: framing), generously.
_HEADER_ESTIMATE: Final = 320
#: A consumer that does not answer a Ping within this time stops pacing us (it is hung or gone).
DEFAULT_CONSUMER_TIMEOUT_S: Final = 10.0

_DAEMON: Final = "org.freedesktop.DBus"
_PEER: Final = "org.freedesktop.DBus.Peer"


def socket_cost(payload_size: int) -> int:
    """Estimate the unix-socket memory a signal with ``payload_size`` body bytes occupies."""
    message = payload_size + _HEADER_ESTIMATE
    buffer = 1 << (message + 320 - 1).bit_length()
    return buffer + 256


#: The credit a signal takes when its size is not given: a property change or small object.
DEFAULT_COST: Final = socket_cost(700)


class FlowControl:
    """Credits for outgoing signals, replenished by Ping round trips (see the module docstring)."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        window: int = DEFAULT_WINDOW,
        pace_consumers: bool = True,
        consumer_timeout: float = DEFAULT_CONSUMER_TIMEOUT_S,
    ) -> None:
        if window < 4 * DEFAULT_COST:
            raise ValueError(f"the flow-control window must be at least {4 * DEFAULT_COST} bytes")
        self._bus = bus
        self._window = window
        self._pace_consumers = pace_consumers
        self._consumer_timeout = consumer_timeout
        self._consumers: set[str] = set()
        self._sent = 0
        self._acked = 0
        self._ping: asyncio.Task[None] | None = None
        self._acked_event = asyncio.Event()
        self._closed = False
        self.pings = 0
        self.waits = 0

    @property
    def in_flight(self) -> int:
        """Estimated bytes sent and not yet acknowledged by a Ping reply."""
        return self._sent - self._acked

    @property
    def consumers(self) -> frozenset[str]:
        """Unique bus names whose reading paces us."""
        return frozenset(self._consumers)

    def add_consumer(self, unique_name: str) -> None:
        """Pace signals to ``unique_name`` too (it called GetManagedObjects)."""
        if self._pace_consumers and unique_name.startswith(":"):
            self._consumers.add(unique_name)

    def discard_consumer(self, unique_name: str) -> None:
        """Stop pacing to ``unique_name`` (it left the bus)."""
        self._consumers.discard(unique_name)

    async def acquire(self, cost: int = DEFAULT_COST) -> None:
        """Take credit for one signal; waits while the window is full of unacknowledged ones."""
        cost = min(cost, self._window // 2)
        while self._sent + cost - self._acked > self._window:
            if self._closed:
                raise EmulatorError("the emulator's bus is closed")
            self.waits += 1
            event = self._acked_event
            self._start_ping()
            await event.wait()
        if self._closed:
            raise EmulatorError("the emulator's bus is closed")
        self._sent += cost
        if self._sent - self._acked >= self._window // 2:
            self._start_ping()

    async def drain(self) -> None:
        """Wait until every signal sent so far is acknowledged."""
        while self._sent > self._acked and not self._closed:
            event = self._acked_event
            self._start_ping()
            await event.wait()

    async def close(self) -> None:
        """Wake every waiter with an error and stop the Ping in flight."""
        self._closed = True
        ping, self._ping = self._ping, None
        if ping is not None:
            ping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ping
        self._acked_event.set()

    def _start_ping(self) -> None:
        if self._ping is not None or self._closed:
            return
        self._ping = asyncio.create_task(self._run_ping(self._sent), name="emulator-flow-ping")

    async def _run_ping(self, mark: int) -> None:
        try:
            self.pings += 1
            targets = sorted(self._consumers) or [_DAEMON]
            await asyncio.gather(*(self._ping_one(target) for target in targets))
        except Exception:  # noqa: BLE001 - the bus failed; its next user gets the real error
            _LOG.debug("flow-control Ping failed", exc_info=True)
        finally:
            self._acked = max(self._acked, mark)
            self._ping = None
            event, self._acked_event = self._acked_event, asyncio.Event()
            event.set()
            if self._sent - self._acked >= self._window // 2 and not self._closed:
                self._start_ping()

    async def _ping_one(self, target: str) -> None:
        path = "/org/freedesktop/DBus" if target == _DAEMON else "/"
        message = Message(destination=target, path=path, interface=_PEER, member="Ping")
        try:
            async with asyncio.timeout(self._consumer_timeout):
                reply = await self._bus.call(message)
        except TimeoutError:
            _LOG.warning(
                "D-Bus client %s did not answer Ping within %.0f s; "
                "no longer pacing notifications to it",
                target,
                self._consumer_timeout,
            )
            self._consumers.discard(target)
            return
        if reply is not None and reply.message_type is MessageType.ERROR:
            # Gone from the bus (ServiceUnknown / NoReply): nothing left to pace against.
            _LOG.debug("Ping to %s failed (%s); dropping it", target, reply.error_name)
            self._consumers.discard(target)
