"""One connection task per paired device: connect, set up, stream, and reconnect with backoff.

The protocol work is in :class:`gatewayd.link.stream.DeviceStream` (pure); this module is the
thin bleak-facing shell around it: it owns the BleakClient, feeds notifications in, writes the
control commands out (one at a time: BlueZ rejects overlapping GATT operations), and forwards
events through ``emit``.

Trust (docs/pairing.md): before touching any characteristic the link checks that BlueZ holds a
bond with the device (Device1.Paired; BlueZ then encrypts the link with the bond's keys at
connect, and a device without them cannot complete the connection). Otherwise, or when BlueZ
fails the connection or an encrypted access for want of the keys, or when the device's identity
changes (stream.py), it emits :class:`DeviceUntrusted` instead of streaming and backs off.

Every connected device holds one D-Bus connection of bleak's: the links share a
:class:`~gatewayd.link.buslimit.BusCeiling` that recognises the system bus refusing another one
(max_connections_per_user) and queues the attempts while it does.
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
from bleak.backends.bluezdbus.manager import get_global_bluez_manager
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import (
    BleakDBusError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from dbus_fast.errors import DBusError

from gatewayd.errors import DecodeError
from gatewayd.protocol.control import (
    ControlCommand,
    DeviceInfo,
    SetPolicy,
    SetRestLimit,
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
from gatewayd.protocol.sequencing import DEFAULT_MAX_RATE_HZ

from .backoff import BASE_DELAY_S, FailureKind, backoff_delay, classify
from .buslimit import BusCeiling, bus_level_failure
from .events import (
    BatteryLevel,
    DeviceUntrusted,
    HeartRateReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    ResumePoint,
)
from .registry import PairedDevice
from .scanner import Sighting, Sightings
from .stream import DeviceStream

log = structlog.get_logger("gatewayd.link")

TICK_S: Final = 0.5
CONTROL_QUEUE: Final = 64
#: After malformed input, read the info characteristic at most this often (seconds).
INFO_POLL_INTERVAL_S: Final = 1.0
#: A queued "read the info characteristic" among the control writes (GATT operations go one by one).
READ_INFO: Final = None
#: How long one disconnect may take before it is abandoned (seconds).
DISCONNECT_TIMEOUT_S: Final = 5.0
#: bluetoothd's error text when the LE link could not be encrypted because the peer lacks the
#: bond's keys (ERR_LE_CONN_KEY_MISSING in bluez src/error.h; br-connection-key-missing for
#: BR/EDR).
KEY_MISSING: Final = "connection-key-missing"
#: ATT errors on a control write that are about the link's security, not the command: the
#: session ends (the next connect checks the bond again). Any other ATT error rejects the one
#: command, which is logged and skipped (docs/protocol.md §6.1).
_SECURITY_ATT_ERRORS: Final = frozenset(
    {
        BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHORIZATION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE,
    }
)
_AUTH_ERRORS: Final = frozenset(
    {"org.bluez.Error.AuthenticationFailed", "org.bluez.Error.AuthenticationRejected"}
)


async def bluez_paired(device: object) -> bool:
    """Whether BlueZ holds a bond with the device of a sighting (Device1.Paired).

    Read from bleak's mirror of BlueZ's objects (its manager), by the device's object path; a
    device BlueZ does not know is not paired.
    """
    details = getattr(device, "details", None)
    path = details.get("path") if isinstance(details, dict) else None
    if not isinstance(path, str):
        return False
    manager = await get_global_bluez_manager()
    return bool(manager.is_paired(path))


def bond_rejected(exc: BaseException) -> bool:
    """Whether BlueZ failed a connection or an access because the link is not encrypted with the
    bond's keys: ``le-connection-key-missing``, AuthenticationFailed/Rejected, or an ATT
    Insufficient Authentication/Encryption it relays as ``NotPermitted: Not paired``.
    """
    if not isinstance(exc, BleakDBusError):
        return False
    details = exc.dbus_error_details or ""
    if exc.dbus_error in _AUTH_ERRORS or KEY_MISSING in details:
        return True
    return exc.dbus_error == "org.bluez.Error.NotPermitted" and "Not paired" in details


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings:
    """What a connection needs from the configuration."""

    connect_timeout_s: float = 20.0
    #: Subscribe to the data characteristic with AcquireNotify where BlueZ offers it.
    acquire_notify: bool = True
    tau_mbits: int = 4000
    min_conf_e4: int = 6000
    #: The resting limit sent with SET_REST_LIMIT at every connect (1/100 bpm; 0 turns the
    #: wearable's check off), or None: not sent, the wearable keeps its own. The gateway sends
    #: its tachycardia limit at rest.
    rest_limit_cbpm: int | None = None
    gap_timeout_s: float = 5.0
    resend_interval_s: float = 1.0
    #: The most messages a second a wearable may produce: bounds plausible sequence jumps
    #: (docs/protocol.md §4). An emulator running N times real time needs N times this.
    max_message_rate_hz: float = DEFAULT_MAX_RATE_HZ


#: Failures that an absent device explains: a fresh advertisement ends the wait after them.
_ABSENCE_KINDS: Final = frozenset(
    {FailureKind.NOT_FOUND, FailureKind.TIMEOUT, FailureKind.OTHER, FailureKind.TRANSIENT}
)


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


class _UntrustedError(Exception):
    """The device is not the bonded one (or not bonded): no data from it."""

    def __init__(self, event: DeviceUntrusted) -> None:
        super().__init__(event.detail)
        self.event = event


class DeviceLink:
    """Keeps one paired device connected for as long as the gateway runs."""

    def __init__(
        self,
        device: PairedDevice,
        *,
        acquire: Callable[[str], Awaitable[SlotLease]],
        emit: Callable[[LinkEvent], None],
        settings: LinkSettings,
        resume: ResumePoint | None = None,
        on_untrusted: Callable[[DeviceUntrusted], Awaitable[None]] | None = None,
        ceiling: BusCeiling | None = None,
        sightings: Sightings | None = None,
        is_paired: Callable[[object], Awaitable[bool]] = bluez_paired,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``resume``: where a previous run stopped. ``on_untrusted``: called (awaited) once when
        the device's identity changed, to record it (the registry); the link then stops.
        ``ceiling``: the system bus's connection ceiling, shared by the links of one gateway.
        ``sightings``: the scanners' advertisements; a device that comes back into range ends
        the wait before the next attempt (`_back_off`).
        """
        self.device = device
        self.settings = settings
        self.stream = DeviceStream(
            device.device_id,
            gap_timeout_s=settings.gap_timeout_s,
            resend_interval_s=settings.resend_interval_s,
            resume=resume,
            profile=device.profile or None,
            max_rate_hz=settings.max_message_rate_hz,
        )
        #: The last DeviceUntrusted emitted while no trusted connection followed it.
        self.untrusted: DeviceUntrusted | None = None
        self._on_untrusted = on_untrusted
        self._is_paired = is_paired
        self.ceiling = ceiling if ceiling is not None else BusCeiling()
        self._sightings = sightings
        self.connected = False
        #: In the final disconnect of a session (LinkManager counts those it had to abandon).
        self.disconnecting = False
        self.connections = 0
        #: What the LinkDown says when the link is cancelled while connected.
        self.stop_reason = "gateway stopping"
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
        """Connect, stream until the link drops, back off, and again; until cancelled.

        Returns only when the device's identity changed (it is untrusted until paired again).
        """
        if self.device.untrusted:
            self._distrust(
                DeviceUntrusted(self.device.device_id, "identity_changed", self.device.untrusted)
            )
            return
        failures = 0
        warned = False
        kind = FailureKind.OTHER
        attempted_at = 0.0
        while True:
            if failures:
                await self._back_off(kind, failures, attempted_at)
            lease = await self._acquire(self.device.address)
            attempted_at = self._sightings.now() if self._sightings is not None else 0.0
            try:
                kind, error = await self._session(lease.sighting)
            finally:
                lease.release()
            if kind is FailureKind.DISCONNECTED:
                failures = 1  # it worked: reconnect promptly, the next failure warns again
                warned = False
                continue
            if kind is FailureKind.UNTRUSTED and self.stream.untrusted is not None:
                if self._on_untrusted is not None:
                    await self._on_untrusted(self.stream.untrusted)
                return
            # The first failure of a streak is a WARNING, repeats are DEBUG; the bus refusing a
            # connection is said once for every device, by the ceiling.
            loud = not warned and kind is not FailureKind.BUS_LIMIT
            warned = warned or loud
            (self._log.warning if loud else self._log.debug)(
                "connection attempt failed",
                adapter=lease.sighting.adapter,
                kind=kind.value,
                error=error,
                attempt=failures,
            )
            failures += 1

    async def _back_off(self, kind: FailureKind, failures: int, attempted_at: float) -> None:
        """Wait before the next attempt: the backoff delay, unless the device comes back.

        An attempt that failed while the device was not advertising (out of range, switched
        off) says nothing about the next one once it advertises again: a fresh advertisement
        ends the wait, after the first failure's delay at least, so a wearable that walks back
        into range reconnects at once instead of after a backoff grown while it was away. A
        device that advertised during the failed attempt waits the whole delay, as does one
        whose failure was its own (protocol, trust) or the adapter's (slots, the bus).
        """
        delay = backoff_delay(kind, failures, rng=self._rng)
        sightings = self._sightings
        last = None if sightings is None else sightings.last_seen(self.device.address)
        if (
            sightings is None
            or kind not in _ABSENCE_KINDS
            or (last is not None and last > attempted_at)
        ):
            await asyncio.sleep(delay)
            return
        floor = min(delay, BASE_DELAY_S[kind])
        await asyncio.sleep(floor)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay - floor):
                await sightings.seen_after(self.device.address, attempted_at)
                self._log.debug("advertising again; reconnecting before the backoff ends")

    def _distrust(self, event: DeviceUntrusted) -> None:
        """Emit ``event`` unless the same verdict was emitted since the last trusted link."""
        if self.untrusted is not None and self.untrusted.reason == event.reason:
            return
        self.untrusted = event
        self._emit(event)
        self._log.warning("device not trusted; no data from it", reason=event.reason,
                          detail=event.detail)  # fmt: skip

    async def _session(self, sighting: Sighting) -> tuple[FailureKind, str]:
        disconnected = asyncio.Event()
        client = BleakClient(
            sighting.device,
            disconnected_callback=lambda _c: disconnected.set(),
            timeout=self.settings.connect_timeout_s,
        )
        device_id = self.device.device_id
        try:
            # One at a time while the system bus refuses connections (buslimit.py).
            async with self.ceiling.turn():
                # A safety timeout around the whole setup: a stalled D-Bus call must not hang us.
                async with asyncio.timeout(self.settings.connect_timeout_s):
                    await self._connect_trusted(client, sighting)
                    info = await self._setup(client)
        except _UntrustedError as exc:
            self._distrust(exc.event)
            # Closes bleak's D-Bus connection of the attempt too (also when connect failed).
            await self._disconnect_quietly(client)
            self.ceiling.failed_otherwise(device_id)
            return FailureKind.UNTRUSTED, str(exc)
        except (BleakError, TimeoutError, EOFError, OSError, DBusError, _SetupError) as exc:
            kind = FailureKind.PROTOCOL if isinstance(exc, _SetupError) else classify(exc)
            await self._disconnect_quietly(client)
            if bus_level_failure(exc) and await self.ceiling.refused(device_id):
                kind = FailureKind.BUS_LIMIT
            else:
                self.ceiling.failed_otherwise(device_id)
            return kind, str(exc) or type(exc).__name__
        self.ceiling.holding(device_id)
        self.connected = True
        self.connections += 1
        self.untrusted = None
        mtu = _negotiated_mtu(client)
        self._emit(LinkUp(self.device.device_id, sighting.adapter, info, mtu))
        self._log.info("connected", adapter=sighting.adapter, mtu=mtu)
        reason = None
        try:
            reason = await self._stream(client, disconnected)
        finally:
            self.connected = False
            self.stream.on_disconnected()
            reason = self.stop_reason if reason is None else reason
            # Said before the disconnect: a hung bluetoothd must not keep it "connected".
            self._emit(LinkDown(self.device.device_id, reason))
            self._log.info("disconnected", reason=reason)
            await self._disconnect_quietly(client)
            self.ceiling.released(device_id)
        if self.stream.untrusted is not None:
            return FailureKind.UNTRUSTED, reason
        return FailureKind.DISCONNECTED, reason

    async def _connect_trusted(self, client: BleakClient, sighting: Sighting) -> None:
        """Connect; _UntrustedError unless BlueZ holds a bond (or the device may do without)."""
        device_id = self.device.device_id
        try:
            await client.connect()
        except BleakDBusError as exc:
            if bond_rejected(exc):
                raise _UntrustedError(
                    DeviceUntrusted(device_id, "bond_rejected", _bond_rejected_detail(exc))
                ) from exc
            raise
        if self.device.allow_unbonded or await self._is_paired(sighting.device):
            return
        raise _UntrustedError(
            DeviceUntrusted(
                device_id,
                "not_bonded",
                "BlueZ holds no bond with this address; pair it with `gatewayd pair` (a strap"
                " that cannot bond: `gatewayd pair --allow-unbonded`)",
            )
        )

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
            if isinstance(exc, _UntrustedError):  # an info read while streaming
                self._distrust(exc.event)
                return f"device not trusted: {exc.event.reason}"
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
            rejected = self.stream.take_error()
            raise _SetupError(f"info characteristic: {rejected[0] if rejected else 'malformed'}")
        # The queue of an earlier connection is stale: setup commands go first, then resends.
        self._drain_control()
        for cmd in (
            TimeSync(int(self._wall() * 1000)),
            self.policy,
        ):
            await client.write_gatt_char(CONTROL_CHAR_UUID, encode_control(cmd), response=True)
        if self.settings.rest_limit_cbpm is not None:
            await self._set_rest_limit(client, SetRestLimit(self.settings.rest_limit_cbpm))
        # AcquireNotify: BlueZ writes each notification to a socket of ours instead of sending a
        # D-Bus signal, less work for bluetoothd and dbus-daemon (docs/decisions.md). bleak falls
        # back to StartNotify where the characteristic has no NotifyAcquired property.
        await client.start_notify(
            DATA_CHAR_UUID,
            self._on_fragment,
            bluez={"use_start_notify": not self.settings.acquire_notify},
        )
        await self._setup_battery(client)
        return info

    async def _set_rest_limit(self, client: BleakClient, cmd: SetRestLimit) -> None:
        """Send the resting limit; firmware from before SET_REST_LIMIT refuses it, and streams."""
        refused = await self._write_command(client, cmd)
        if refused is None:
            return
        # Once per link: it refuses it at every connect.
        first = "set_rest_limit" not in self._rejected_logged
        self._rejected_logged.add("set_rest_limit")
        (self._log.warning if first else self._log.debug)(
            "the device refused the resting limit (firmware from before SET_REST_LIMIT?);"
            " it offloads by its own", rest_limit_cbpm=cmd.rest_limit_cbpm, error=str(refused),
        )  # fmt: skip

    async def _write_command(
        self, client: BleakClient, cmd: ControlCommand
    ) -> BleakGATTProtocolError | None:
        """Write one control command; the ATT error if the wearable refused it (counted).

        A refusal leaves the link as it was; a security error (the bond) ends the session.
        """
        try:
            await client.write_gatt_char(CONTROL_CHAR_UUID, encode_control(cmd), response=True)
        except BleakGATTProtocolError as exc:
            if _att_code(exc) in _SECURITY_ATT_ERRORS:
                raise
            self.stream.command_rejected()
            return exc
        return None

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
        try:
            raw = await client.read_gatt_char(INFO_CHAR_UUID)
        except BleakDBusError as exc:
            if bond_rejected(exc):
                raise _UntrustedError(
                    DeviceUntrusted(
                        self.device.device_id, "bond_rejected", _bond_rejected_detail(exc)
                    )
                ) from exc
            raise
        try:
            info = decode_info(raw)
        except DecodeError as exc:
            self.stream.reject(exc)
            return None
        for event in self.stream.on_info(info, self._clock(), self._wall()):
            if isinstance(event, DeviceUntrusted):
                raise _UntrustedError(event)
            self._emit(event)
        return info

    def _on_fragment(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        now = self._clock()
        for event in self.stream.on_fragment(data, now, self._wall()):
            self._emit(event)
        rejected = self.stream.take_error()
        if rejected is not None:
            err, total = rejected
            # First of each kind at WARNING, repeats at DEBUG; the counters keep the total.
            first = err.reason not in self._rejected_logged
            self._rejected_logged.add(err.reason)
            (self._log.warning if first else self._log.debug)(
                "malformed input from device", reason=err.reason, detail=err.detail, total=total,
            )  # fmt: skip
        self._queue_resends(now)

    def _on_heart_rate(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        try:
            m = parse_heart_rate_measurement(data)
        except DecodeError as exc:
            self.stream.reject(exc)
            self.stream.take_error()  # logged here, at DEBUG: straps send noise
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
                continue
            refused = await self._write_command(client, cmd)
            if refused is not None:
                # A refused RESEND is asked again while its gap is open, a refused policy at
                # the next connect.
                self._log.warning("control command rejected by the device",
                                  command=repr(cmd), error=str(refused))  # fmt: skip

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self._clock()
            for event in self.stream.tick(now, self._wall()):
                self._emit(event)
            self._queue_resends(now)

    async def _disconnect_quietly(self, client: BleakClient) -> None:
        self.disconnecting = True
        try:
            with contextlib.suppress(BleakError, TimeoutError, EOFError, OSError):
                async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                    await client.disconnect()
        finally:
            self.disconnecting = False


def _att_code(exc: BleakGATTProtocolError) -> int | None:
    """The ATT error code of ``exc`` (None if bleak gave an unknown one)."""
    try:
        return int(exc.code)
    except ValueError:
        return None


def _bond_rejected_detail(exc: BleakDBusError) -> str:
    return (
        f"BlueZ could not use the bond's keys with the device at this address"
        f" ({exc.dbus_error}: {exc.dbus_error_details or ''}): an impostor, or the wearable lost"
        " its bond (then pair it again)"
    )


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
