"""One connection task per paired device: connect, set up, stream, and reconnect with backoff.

The protocol work is in :class:`gatewayd.link.stream.DeviceStream` (pure); this module is the
thin bleak-facing shell around it: it owns the BleakClient, feeds notifications in, writes the
control commands out (one at a time: BlueZ rejects overlapping GATT operations), and forwards
events through ``emit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakError

from gatewayd.errors import DecodeError
from gatewayd.protocol.control import (
    ControlCommand,
    DeviceInfo,
    SetPolicy,
    TimeSync,
    decode_info,
    encode_control,
)
from gatewayd.protocol.gatt import (
    BATTERY_LEVEL_CHAR_UUID,
    CONTROL_CHAR_UUID,
    DATA_CHAR_UUID,
    HEART_RATE_MEASUREMENT_CHAR_UUID,
    INFO_CHAR_UUID,
)
from gatewayd.protocol.heart_rate import parse_heart_rate_measurement

from .backoff import FailureKind, backoff_delay, classify
from .events import BatteryLevel, HeartRateReceived, LinkDown, LinkEvent, LinkUp
from .registry import PairedDevice
from .scanner import Sighting
from .stream import DeviceStream

log = structlog.get_logger("gatewayd.link")

TICK_S: Final = 0.5
CONTROL_QUEUE: Final = 64
#: After malformed input, read the info characteristic at most this often (seconds).
INFO_POLL_INTERVAL_S: Final = 1.0
#: A queued "read the info characteristic" among the control writes (GATT operations go one by one).
READ_INFO: Final = None


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """What a connection needs from the configuration."""

    connect_timeout_s: float = 20.0
    tau_mbits: int = 4000
    min_conf_e4: int = 6000
    gap_timeout_s: float = 5.0
    resend_interval_s: float = 1.0


class SlotLease:
    """What the slot pool hands a connection: an adapter, the device as seen there, a release."""

    def __init__(self, sighting: Sighting, release: Callable[[], None]) -> None:
        self.sighting = sighting
        self._release = release

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        release, self._release = self._release, lambda: None
        release()


class _SetupError(Exception):
    """The device connected but its setup failed in a way that is its fault (bad info etc.)."""


class DeviceLink:
    """Keeps one paired device connected for as long as the gateway runs."""

    def __init__(
        self,
        device: PairedDevice,
        *,
        acquire: Callable[[str], Awaitable[SlotLease]],
        emit: Callable[[LinkEvent], None],
        settings: LinkSettings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.device = device
        self.settings = settings
        self.stream = DeviceStream(
            device.device_id,
            gap_timeout_s=settings.gap_timeout_s,
            resend_interval_s=settings.resend_interval_s,
        )
        self.connected = False
        self.connections = 0
        self._acquire = acquire
        self._emit = emit
        self._clock = clock
        self._wall = wall
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not security
        self._control: asyncio.Queue[ControlCommand | None] = asyncio.Queue(CONTROL_QUEUE)
        self._info_polled_at = float("-inf")
        self._log = log.bind(device=device.device_id, address=device.address)
        self._rejected_logged: set[str] = set()
        #: The offload policy sent at every (re)connect; `set_policy` changes it (backpressure).
        self.policy = SetPolicy(settings.tau_mbits, settings.min_conf_e4)

    async def run(self) -> None:
        """Connect, stream until the link drops, back off, and again; until cancelled."""
        failures = 0
        kind = FailureKind.OTHER
        while True:
            if failures:
                await asyncio.sleep(backoff_delay(kind, failures, rng=self._rng))
            lease = await self._acquire(self.device.address)
            try:
                kind, error = await self._session(lease.sighting)
            finally:
                lease.release()
            if kind is FailureKind.DISCONNECTED:
                failures = 1  # it worked: reconnect promptly, the next failure warns again
                continue
            # The first failure of a streak is a WARNING, repeats are DEBUG.
            (self._log.warning if failures <= 1 else self._log.debug)(
                "connection attempt failed",
                adapter=lease.sighting.adapter,
                kind=kind.value,
                error=error,
                attempt=failures,
            )
            failures += 1

    async def _session(self, sighting: Sighting) -> tuple[FailureKind, str]:
        disconnected = asyncio.Event()
        client = BleakClient(
            sighting.device,
            disconnected_callback=lambda _c: disconnected.set(),
            timeout=self.settings.connect_timeout_s,
        )
        try:
            # A safety timeout around the whole setup: a stalled D-Bus call must not hang us.
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await client.connect()
                info = await self._setup(client)
        except (BleakError, TimeoutError, EOFError, OSError, _SetupError) as exc:
            kind = FailureKind.PROTOCOL if isinstance(exc, _SetupError) else classify(exc)
            await self._disconnect_quietly(client)
            return kind, str(exc) or type(exc).__name__
        self.connected = True
        self.connections += 1
        mtu = _negotiated_mtu(client)
        self._emit(LinkUp(self.device.device_id, sighting.adapter, info, mtu))
        self._log.info("connected", adapter=sighting.adapter, mtu=mtu)
        reason = "gateway stopping"
        try:
            reason = await self._stream(client, disconnected)
        finally:
            self.connected = False
            self.stream.on_disconnected()
            await self._disconnect_quietly(client)
            self._emit(LinkDown(self.device.device_id, reason))
            self._log.info("disconnected", reason=reason)
        return FailureKind.DISCONNECTED, reason

    async def _stream(self, client: BleakClient, disconnected: asyncio.Event) -> str:
        """Run the control writer and the ticker until the link drops; say why it ended."""
        writer = asyncio.create_task(self._write_control(client))
        ticker = asyncio.create_task(self._tick())
        waiter = asyncio.create_task(disconnected.wait())
        tasks = (writer, ticker, waiter)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if writer in done and (exc := writer.exception()) is not None:
            if not isinstance(exc, BleakError | EOFError | OSError | TimeoutError):
                raise exc
            return f"control write failed: {exc}"
        return "link lost"

    async def _setup(self, client: BleakClient) -> DeviceInfo | None:
        if self.device.kind == "heart_rate":
            await client.start_notify(HEART_RATE_MEASUREMENT_CHAR_UUID, self._on_heart_rate)
            await self._setup_battery(client)
            return None
        info = await self._read_info(client)
        if info is None:
            raise _SetupError(f"info characteristic: {self.stream.last_error}")
        # The queue of an earlier connection is stale: setup commands go first, then resends.
        self._drain_control()
        for cmd in (
            TimeSync(int(self._wall() * 1000)),
            self.policy,
        ):
            await client.write_gatt_char(CONTROL_CHAR_UUID, encode_control(cmd), response=True)
        await client.start_notify(DATA_CHAR_UUID, self._on_fragment)
        await self._setup_battery(client)
        return info

    async def _setup_battery(self, client: BleakClient) -> None:
        char = client.services.get_characteristic(BATTERY_LEVEL_CHAR_UUID)
        if char is None:
            return
        if "read" in char.properties:
            value = await client.read_gatt_char(char)
            if value:
                self._emit(BatteryLevel(self.device.device_id, value[0]))
        if "notify" in char.properties:
            await client.start_notify(char, self._on_battery)

    async def _read_info(self, client: BleakClient) -> DeviceInfo | None:
        """Read and apply the info characteristic; None (and counted) if it is malformed."""
        raw = await client.read_gatt_char(INFO_CHAR_UUID)
        try:
            info = decode_info(raw)
        except DecodeError as exc:
            self.stream.stats.rejected[exc.reason] += 1
            self.stream.last_error = exc
            return None
        for event in self.stream.on_info(info, self._clock()):
            self._emit(event)
        return info

    def _on_fragment(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        now = self._clock()
        for event in self.stream.on_fragment(data, now, self._wall()):
            self._emit(event)
        err = self.stream.last_error
        if err is not None:
            self.stream.last_error = None
            # First of each kind at WARNING, repeats at DEBUG; the counters keep the total.
            first = err.reason not in self._rejected_logged
            self._rejected_logged.add(err.reason)
            (self._log.warning if first else self._log.debug)(
                "malformed input from device", reason=err.reason, detail=err.detail,
                total=self.stream.stats.rejected[err.reason],
            )  # fmt: skip
        self._queue_resends(now)

    def _on_heart_rate(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        try:
            m = parse_heart_rate_measurement(data)
        except DecodeError as exc:
            self.stream.stats.rejected[exc.reason] += 1
            self._log.debug("malformed heart rate measurement", reason=exc.reason)
            return
        self._emit(HeartRateReceived(self.device.device_id, m, self._wall()))

    def _on_battery(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if data and data[0] <= 100:
            self._emit(BatteryLevel(self.device.device_id, data[0]))

    def set_policy(self, policy: SetPolicy) -> bool:
        """Use ``policy`` from now on: sent now if connected, and at every reconnect.

        Returns False if the control queue is full (the policy still applies at reconnect).
        """
        self.policy = policy
        if not self.connected:
            return True
        try:
            self._control.put_nowait(policy)
        except asyncio.QueueFull:
            self._log.warning("control queue full; policy sent at the next connection")
            return False
        return True

    def _queue_resends(self, now: float) -> None:
        wanted: list[ControlCommand | None] = list(self.stream.resend_requests(now))
        if self.stream.wants_info and now - self._info_polled_at >= INFO_POLL_INTERVAL_S:
            self._info_polled_at = now
            wanted.append(READ_INFO)
        for item in wanted:
            try:
                self._control.put_nowait(item)
            except asyncio.QueueFull:
                # Resends are asked again every interval; nothing is lost by dropping one here.
                self._log.warning("control queue full; request dropped", request=repr(item))

    def _drain_control(self) -> None:
        while not self._control.empty():
            self._control.get_nowait()

    async def _write_control(self, client: BleakClient) -> None:
        while True:
            cmd = await self._control.get()
            if cmd is READ_INFO:
                await self._read_info(client)
            else:
                await client.write_gatt_char(CONTROL_CHAR_UUID, encode_control(cmd), response=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self._clock()
            for event in self.stream.tick(now, self._wall()):
                self._emit(event)
            self._queue_resends(now)

    async def _disconnect_quietly(self, client: BleakClient) -> None:
        with contextlib.suppress(BleakError, TimeoutError, EOFError, OSError):
            async with asyncio.timeout(5.0):
                await client.disconnect()


def _negotiated_mtu(client: BleakClient) -> int:
    """The ATT MTU of the link, from the data characteristic (BleakClient.mtu_size warns on BlueZ).

    BlueZ reports it per characteristic; bleak exposes it as the largest write without response,
    which is MTU - 3.
    """
    for uuid in (DATA_CHAR_UUID, HEART_RATE_MEASUREMENT_CHAR_UUID):
        char = client.services.get_characteristic(uuid)
        if char is not None:
            return char.max_write_without_response_size + 3
    return 23
