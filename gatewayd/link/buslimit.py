"""The system bus's connection ceiling: bleak holds one D-Bus connection per connected device.

bleak's BlueZ backend opens a D-Bus connection of its own for every BleakClient connection
(on purpose: a BlueZ quirk re-enables notifications on reconnect otherwise), and dbus-daemon
refuses a user more than ``max_connections_per_user`` connections (256 on a stock system bus).
So a gateway with the BlueZ manager's connection and 255 connected wearables cannot connect
another one. The refusal is an error reply to the connection's Hello
(org.freedesktop.DBus.Error.LimitsExceeded, "The maximum number of active connections for UID
N has been reached") and the daemon then closes the socket; dbus-fast 5 does not raise on that
reply, so bleak's connect fails later with an EOFError or a closed socket.

:class:`BusCeiling`, shared by every :class:`~gatewayd.link.connection.DeviceLink`, tells that
refusal apart from a device's own failures by opening one connection of its own
(:func:`probe_bus`), says once (WARNING) what happened and how to raise the limit, and while
devices wait for the bus it lets them connect one at a time, each after a probe found the bus
accepting: when a connected device lets its connection go, or after a capped backoff (the limit
may have been raised). Repeats are DEBUG. docs/running.md, "Many wearables".
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import structlog
from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError, DBusFastError

from gatewayd.backoff import capped_backoff

__all__ = [
    "LIMITS_EXCEEDED",
    "RAISE_LIMIT_FIX",
    "BusCeiling",
    "bus_level_failure",
    "probe_bus",
    "refusal_text",
]

log = structlog.get_logger("gatewayd.link")

#: The D-Bus error a daemon answers Hello with when a connection is over one of its limits.
LIMITS_EXCEEDED: Final = "org.freedesktop.DBus.Error.LimitsExceeded"
#: In dbus-daemon's refusal texts for max_connections_per_user and max_completed_connections.
_REFUSAL_TEXT: Final = "maximum number of active connections"
#: How long a probe may take (connect, authenticate, Hello).
PROBE_TIMEOUT_S: Final = 5.0
#: A probe's answer is shared by the failures that ask within this many seconds.
PROBE_REUSE_S: Final = 1.0
#: While the bus refuses, the next probe follows a connection let go at once, else after this
#: base delay grown 1.8 times per refused probe up to PROBE_CAP_S (seconds).
PROBE_BASE_S: Final = 2.0
PROBE_CAP_S: Final = 30.0
RAISE_LIMIT_FIX: Final = (
    "raise the limit: in /etc/dbus-1/system-local.conf put <busconfig><limit"
    ' name="max_connections_per_user">1024</limit></busconfig> (any number above the devices'
    " paired, plus a few), then `sudo systemctl reload dbus`; see docs/running.md"
)


def refusal_text(hello_answer: str) -> str | None:
    """The daemon's refusal in what a connection's Hello got back, or None if it was accepted.

    An accepted connection gets a unique name (":1.42"); dbus-fast 5 keeps the text of an error
    reply in the same place (MessageBus.unique_name), so anything else is the error's text.
    """
    if hello_answer.startswith(":"):
        return None
    return hello_answer if _REFUSAL_TEXT in hello_answer else None


def bus_level_failure(exc: BaseException) -> bool:
    """Whether a failed connect may be the bus refusing bleak's connection (worth a probe).

    The refused connection is closed by the daemon, so bleak's next call on it ends in an
    EOFError or an OSError (a closed socket: EBADF, EPIPE); a dbus-fast that raised the Hello's
    error would give the DBusError itself. BlueZ's own failures are BleakDBusError, timeouts
    TimeoutError.
    """
    if isinstance(exc, DBusError):
        return exc.type == LIMITS_EXCEEDED
    return isinstance(exc, EOFError | OSError) and not isinstance(exc, TimeoutError)


async def probe_bus() -> str | None:
    """Open one connection to the system bus as bleak does; the daemon's refusal, or None.

    None also when the bus cannot be reached at all or the probe times out: that is not the
    connection limit, and the caller treats the failure as it would have anyway.
    """
    bus = MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await bus.connect()
    except DBusError as exc:  # a dbus-fast that raises the Hello's error
        return exc.text if exc.type == LIMITS_EXCEEDED else None
    except (DBusFastError, OSError, EOFError, TimeoutError):  # auth, address, socket: not it
        return None
    finally:
        bus.disconnect()
        # The daemon closes a refused connection: its reader stored an EOFError that nobody
        # would retrieve (asyncio logs that at ERROR) unless awaited here.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    return refusal_text(bus.unique_name or "")


class BusCeiling:
    """Whether the system bus refuses the gateway more connections, for every device link.

    A link reports each connection it holds (:meth:`holding`, :meth:`released`) and each
    failed attempt (:meth:`refused`, which probes the bus); it connects inside :meth:`turn`.
    :attr:`problem` is the one line for STATUS= while devices wait for the bus.
    """

    def __init__(
        self,
        *,
        probe: Callable[[], Awaitable[str | None]] = probe_bus,
        base_s: float = PROBE_BASE_S,
        cap_s: float = PROBE_CAP_S,
        rng: random.Random | None = None,
    ) -> None:
        self._probe = probe
        self._base_s = base_s
        self._cap_s = cap_s
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security
        #: Devices holding a connection (each with its own D-Bus connection, in bleak).
        self._holding: set[str] = set()
        #: Devices the bus refused and that have not connected (or failed otherwise) since.
        self._waiting: set[str] = set()
        #: Connects under way (each opening a D-Bus connection of its own).
        self._connecting = 0
        self._gate = asyncio.Lock()
        self._let_go = asyncio.Event()
        self._last: tuple[float, str | None] | None = None
        self._probing: asyncio.Future[str | None] | None = None
        #: Connects the bus refused, in all.
        self.refusals = 0
        #: What the daemon said, while devices wait for the bus (None otherwise).
        self.refusal: str | None = None

    @property
    def connected(self) -> int:
        """Devices connected now."""
        return len(self._holding)

    @property
    def waiting(self) -> int:
        """Devices the bus refused that wait for a connection to be let go."""
        return len(self._waiting)

    @property
    def problem(self) -> str | None:
        """One line for STATUS= while the bus refuses connections, else None."""
        if self.refusal is None:
            return None
        return (
            f"the system D-Bus refuses more connections at {self.connected} connected devices"
            f" ({self.waiting} waiting): each connected device holds one; raise"
            " max_connections_per_user in /etc/dbus-1/system-local.conf and reload dbus"
        )

    def holding(self, device_id: str) -> None:
        """``device_id`` connected (it holds a D-Bus connection now)."""
        self._holding.add(device_id)
        self._settled(device_id)

    def released(self, device_id: str) -> None:
        """``device_id``'s connection ended and its D-Bus connection was let go."""
        if device_id in self._holding:
            self._holding.discard(device_id)
            self._let_go.set()
            self._let_go = asyncio.Event()

    def failed_otherwise(self, device_id: str) -> None:
        """``device_id``'s attempt failed for a reason of its own (not the bus)."""
        self._settled(device_id)

    async def refused(self, device_id: str) -> bool:
        """After a connect of ``device_id`` failed at the bus level: whether the bus refused
        it (one probe answers the failures of the same moment). Warns once per episode."""
        refusal = await self._shared_probe()
        if refusal is None:
            self._settled(device_id)
            return False
        self.refusals += 1
        first = self.refusal is None
        self.refusal = refusal
        self._waiting.add(device_id)
        if first:
            log.warning(
                "the system D-Bus refused a connection: each connected wearable holds one D-Bus"
                " connection (bleak opens one per device) and dbus-daemon limits them per user"
                " (max_connections_per_user, 256 by default); the devices already connected"
                " keep streaming, the others wait and are retried as connections free up",
                connected=self.connected,
                connecting=self._connecting,
                waiting=self.waiting,
                refusal=refusal,
                fix=RAISE_LIMIT_FIX,
            )
        else:
            log.debug("the system D-Bus refused a connection", device=device_id,
                      connected=self.connected, waiting=self.waiting)  # fmt: skip
        return True

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold while connecting: at once while no device waits for the bus; otherwise one
        device at a time (first come, first served), once a probe found the bus accepting."""
        if self.refusal is None:
            async with self._attempt():
                yield
            return
        async with self._gate:
            refused = 0
            while self.refusal is not None:
                let_go = self._let_go
                # A fresh probe: a shared answer may predate the last device let in.
                if await self._probe() is None:
                    break
                refused += 1
                delay = capped_backoff(self._base_s, refused, rng=self._rng, cap_s=self._cap_s)
                log.debug("the system D-Bus still refuses connections", waiting=self.waiting,
                          connected=self.connected, retry_in_s=round(delay, 1))  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await let_go.wait()
            async with self._attempt():
                yield

    @contextlib.asynccontextmanager
    async def _attempt(self) -> AsyncIterator[None]:
        self._connecting += 1
        try:
            yield
        finally:
            self._connecting -= 1

    def _settled(self, device_id: str) -> None:
        if device_id not in self._waiting:
            return
        self._waiting.discard(device_id)
        if not self._waiting and self.refusal is not None:
            self.refusal = None
            log.info("the system D-Bus accepts connections again; no device waits for it",
                     connected=self.connected)  # fmt: skip

    async def _shared_probe(self) -> str | None:
        loop = asyncio.get_running_loop()
        if self._last is not None and loop.time() - self._last[0] < PROBE_REUSE_S:
            return self._last[1]
        if self._probing is None:
            self._probing = asyncio.ensure_future(self._probe())
            probing = self._probing
            try:
                result = await asyncio.shield(probing)
            finally:
                self._probing = None
            self._last = (loop.time(), result)
            return result
        return await asyncio.shield(self._probing)
