"""`gatewayd pair`: find wearables and heart-rate straps, bond with them, remember them.

Pairing is done by BlueZ. We scan with bleak (filtered by the services we speak), connect with
``BleakClient(pair=True)`` — bleak sets Trusted and calls Device1.Pair, which connects, bonds
(Just Works) and resolves services — check that the device really speaks our protocol (a
wearable's info characteristic; a strap's Heart Rate Measurement), disconnect, and add it to the
paired-device registry. Forgetting a bond is Adapter1.RemoveDevice, called with dbus-fast.
docs/pairing.md is the user's side of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakCharacteristicNotFoundError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
)
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError

from gatewayd.errors import DecodeError, GatewayError
from gatewayd.protocol.control import DeviceInfo, decode_info
from gatewayd.protocol.gatt import HEART_RATE_MEASUREMENT_CHAR_UUID, INFO_CHAR_UUID

from .backoff import FailureKind, classify
from .registry import (
    DeviceKind,
    DeviceRegistry,
    PairedDevice,
    RegistryError,
    check_alias,
)
from .scanner import SCAN_SERVICE_UUIDS, Sightings
from .stream import hardware_profile

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "Candidate",
    "PairingError",
    "PairingResult",
    "forget_bond",
    "pair_device",
    "scan_candidates",
]

log = structlog.get_logger("gatewayd.link")

DEFAULT_CONNECT_TIMEOUT_S: Final = 20.0
#: How long one D-Bus exchange with bluetoothd may take before we give up on it.
BLUEZ_CALL_TIMEOUT_S: Final = 10.0
#: How long to look again for a device BlueZ forgot between the scan and its pairing.
RESCAN_S: Final = 5.0
#: A scan gets this much longer than asked before it is considered hung.
_SCAN_GRACE_S: Final = 10.0

_BLUEZ: Final = "org.bluez"
_DEVICE_INTERFACE: Final = "org.bluez.Device1"
_ADAPTER_INTERFACE: Final = "org.bluez.Adapter1"

#: D-Bus error name -> what it means for someone pairing a device, and what to do.
_ADVICE: Final[Mapping[str, str]] = {
    "org.bluez.Error.AuthenticationFailed": (
        "the device rejected pairing; it may still hold a bond with another gateway or an old one"
        " with this one: clear the bonds on the device (or see JustWorksRepairing in"
        " docs/pairing.md) and pair again; a heart-rate strap that cannot bond at all can be"
        " accepted unbonded with --allow-unbonded"
    ),
    "org.bluez.Error.AuthenticationRejected": "the device refused to pair; put it in pairing mode",
    "org.bluez.Error.AuthenticationCanceled": "pairing was cancelled (by the device or an agent)",
    "org.bluez.Error.AuthenticationTimeout": (
        "the device did not finish pairing in time; move it closer and try again"
    ),
    "org.bluez.Error.ConnectionAttemptFailed": "could not connect; move it closer and try again",
    "org.bluez.Error.InProgress": (
        "BlueZ is already connecting or pairing it (is `gatewayd run` or bluetoothctl busy with"
        " it?); try again in a moment"
    ),
    "org.bluez.Error.NotReady": "the adapter is not powered on (bluetoothctl power on)",
    "org.freedesktop.DBus.Error.ServiceUnknown": (
        "bluetoothd is not running (`systemctl status bluetooth`)"
    ),
    "org.freedesktop.DBus.Error.AccessDenied": (
        "D-Bus denied access to BlueZ; run as a user in group 'bluetooth' (docs/pairing.md)"
    ),
}


class PairingError(GatewayError):
    """Scanning, pairing or forgetting a device failed; the message says which device and why."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device seen during a pairing scan that offers a service gatewayd speaks."""

    address: str
    name: str
    rssi: int
    kind: DeviceKind
    adapter: str
    #: BlueZ already holds a bond with it (Device1.Paired at scan time).
    bonded: bool = False
    #: What bleak connects to; tied to ``adapter`` and valid while BlueZ keeps the object.
    device: BLEDevice | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """How error messages name it: address and name."""
        return f"{self.address} ({self.name})" if self.name else self.address


@dataclass(frozen=True, slots=True)
class PairingResult:
    """A device that was paired: its registry entry, and for wearables what its info says."""

    device: PairedDevice
    info: DeviceInfo | None = None


class _RefusedError(Exception):
    """The device paired but is not something gatewayd can use."""


# --- scanning ----------------------------------------------------------------------------------


async def scan_candidates(adapters: Sequence[str], seconds: float) -> list[Candidate]:
    """Scan every adapter at once for ``seconds``; return what offers our services, best first.

    Devices advertising neither the gatewayd service nor the Heart Rate Service are dropped
    (BlueZ filters by UUID, and :class:`Sightings` checks again, since another client's
    unfiltered discovery can show us anything). A device seen by several adapters is listed
    once, through the adapter that hears it best. An adapter that cannot scan is logged and
    skipped; PairingError if none can.
    """
    if not adapters:
        raise PairingError("no adapters to scan with; set [ble] adapters or pass --adapter")
    sightings = Sightings()

    async def scan(adapter: str) -> None:
        def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
            sightings.record(device, adv, adapter)

        scanner = BleakScanner(
            detection_callback=on_advertisement,
            service_uuids=list(SCAN_SERVICE_UUIDS),
            bluez={"adapter": adapter},
        )
        # A safety timeout: a stalled D-Bus call must not hang the command.
        async with asyncio.timeout(seconds + _SCAN_GRACE_S), scanner:
            await asyncio.sleep(seconds)

    outcomes = await asyncio.gather(*(scan(a) for a in adapters), return_exceptions=True)
    failures: dict[str, str] = {}
    for adapter, outcome in zip(adapters, outcomes, strict=True):
        if outcome is None:
            continue
        if not isinstance(outcome, BleakError | OSError | EOFError | TimeoutError):
            raise outcome  # a bug or a cancellation: not ours to explain
        failures[adapter] = _explain_scan(outcome, adapter, seconds + _SCAN_GRACE_S)
    if len(failures) == len(adapters):
        by_reason: dict[str, list[str]] = {}
        for adapter, why in failures.items():
            by_reason.setdefault(why, []).append(adapter)
        raise PairingError(
            "cannot scan for devices: "
            + "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
        )
    for adapter, why in failures.items():
        log.warning("cannot scan through this adapter; skipping it", adapter=adapter, error=why)
    candidates = [
        Candidate(
            address=s.device.address.upper(),
            name=s.name,
            rssi=s.rssi,
            kind=s.kind,
            adapter=s.adapter,
            bonded=_bluez_props(s.device).get("Paired") is True,
            device=s.device,
        )
        for s in sightings.all()
    ]
    return sorted(candidates, key=lambda c: (-c.rssi, c.address))


def _bluez_props(device: BLEDevice) -> Mapping[str, Any]:
    """The Device1 properties bleak's BlueZ backend keeps in ``details`` (empty elsewhere)."""
    details = device.details
    props = details.get("props") if isinstance(details, Mapping) else None
    return props if isinstance(props, Mapping) else {}


# --- pairing -----------------------------------------------------------------------------------


async def pair_device(
    candidate: Candidate,
    registry: DeviceRegistry,
    alias: str | None = None,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    allow_unbonded: bool = False,
) -> PairingResult:
    """Bond with ``candidate``, check it speaks our protocol, and add it to ``registry``.

    ``alias`` becomes its device id (default: the id it already has, else default_alias).
    ``allow_unbonded``: for a heart-rate strap that cannot bond: connect without bonding and
    record that the user accepts it unbonded (a wearable always needs its bond: its
    characteristics need an encrypted link). A wearable's hardware profile is recorded.
    Raises PairingError naming the device and the reason. A bond this call created is removed
    again when the device fails or is refused, so nothing half-paired is left trusted in BlueZ.
    """
    if candidate.device is None:
        raise PairingError(f"{candidate.label}: no scan result to connect to; scan again")
    # Refuse a clashing alias before touching the radio. File reads: off the loop.
    known = await asyncio.to_thread(registry.load)
    if alias is not None:
        check_alias(alias)
        clash = next((d for d in known if d.device_id == alias), None)
        if clash is not None and clash.address != candidate.address:
            raise PairingError(
                f"{candidate.label}: device id {alias!r} is already used by {clash.address};"
                " choose another --alias or `gatewayd devices rename` that one first"
            )
    if allow_unbonded and candidate.kind != "heart_rate":
        raise PairingError(
            f"{candidate.label}: --allow-unbonded is for heart-rate straps that cannot bond; a"
            " wearable's data needs the encrypted link of a bond"
        )
    bond = not allow_unbonded
    try:
        address, info = await _bond_with_rescan(
            candidate, candidate.device, connect_timeout_s, bond=bond
        )
    except _RefusedError as exc:
        if not candidate.bonded:
            await _forget_quietly(candidate)
        raise PairingError(f"{candidate.label}: refused: {exc}") from exc
    except (BleakError, OSError, EOFError, TimeoutError) as exc:
        if not candidate.bonded:
            await _forget_quietly(candidate)
        why = _explain(
            exc, f"no answer within {connect_timeout_s:g} s; move it closer and try again"
        )
        raise PairingError(f"{candidate.label}: pairing failed: {why}") from exc
    try:
        device = await asyncio.to_thread(
            functools.partial(
                registry.add, address, candidate.kind, candidate.name, alias,
                allow_unbonded=allow_unbonded,
                profile=hardware_profile(info) if info is not None else "",
                numbering=(info.boot_id, info.next_seq) if info is not None else None,
            )
        )  # fmt: skip
    except RegistryError as exc:
        raise PairingError(f"{candidate.label}: paired, but not saved: {exc}") from exc
    log.info("paired", device=device.device_id, address=device.address, kind=device.kind)
    return PairingResult(device, info)


async def _bond_with_rescan(
    candidate: Candidate, ble_device: BLEDevice, timeout_s: float, *, bond: bool = True
) -> tuple[str, DeviceInfo | None]:
    """_bond_and_verify, scanning once more for the device if BlueZ has forgotten it.

    bluetoothd drops an unpaired device TemporaryTimeout (30 s) after it was last seen, so
    when pairing several in a row the later ones may be gone; they are still advertising.
    """
    try:
        return await _bond_and_verify(ble_device, candidate.kind, timeout_s, bond=bond)
    except BleakError as exc:
        if not _forgotten(exc):
            raise
    log.info("device forgotten by BlueZ since the scan; scanning again", address=candidate.address)
    found = await BleakScanner.find_device_by_address(
        candidate.address,
        timeout=RESCAN_S,
        service_uuids=list(SCAN_SERVICE_UUIDS),
        bluez={"adapter": candidate.adapter},
    )
    if found is None:
        raise BleakDeviceNotFoundError(candidate.address, "not seen again")
    return await _bond_and_verify(found, candidate.kind, timeout_s, bond=bond)


async def _bond_and_verify(
    ble_device: BLEDevice, kind: DeviceKind, timeout_s: float, *, bond: bool = True
) -> tuple[str, DeviceInfo | None]:
    """Pair (bleak: Trusted, then Pair), verify, disconnect; the address BlueZ reports after it.

    Without ``bond`` it only connects (a strap the user accepts unbonded).
    """
    client = BleakClient(ble_device, pair=bond, timeout=timeout_s)
    # One safety timeout around the whole exchange, disconnect included.
    async with asyncio.timeout(timeout_s):
        await client.connect()
        try:
            info = await _verify(client, kind)
            # A device with a resolvable private address is known by its identity address
            # once bonded; bleak updates client.address from BlueZ after Pair.
            return client.address.upper(), info
        finally:
            await client.disconnect()


async def _verify(client: BleakClient, kind: DeviceKind) -> DeviceInfo | None:
    """The device's info for a wearable; _RefusedError if it is not what it advertised."""
    if kind == "heart_rate":
        if client.services.get_characteristic(HEART_RATE_MEASUREMENT_CHAR_UUID) is None:
            raise _RefusedError(
                "it advertises the Heart Rate Service but has no Heart Rate Measurement"
            )
        return None
    try:
        raw = await client.read_gatt_char(INFO_CHAR_UUID)
    except BleakCharacteristicNotFoundError:
        raise _RefusedError(
            "it advertises the gatewayd service but has no info characteristic"
        ) from None
    try:
        return decode_info(raw)
    except DecodeError as exc:
        raise _RefusedError(f"its info characteristic is not gatewayd's ({exc})") from exc


def _forgotten(exc: BleakError) -> bool:
    """Whether BlueZ has no object for the device (any more)."""
    # classify() knows bleak's ways of saying it: UnknownObject, BleakDeviceNotFoundError, and
    # the manager's "device '...' not found" when its copy of BlueZ's objects lacks the device.
    return classify(exc) is FailureKind.NOT_FOUND


def _explain_scan(exc: BaseException, adapter: str, limit_s: float) -> str:
    if isinstance(exc, BleakError) and str(exc) == f"adapter '{adapter}' not found":
        return "no such adapter (`bluetoothctl list` shows them; set [ble] adapters or --adapter)"
    why = _explain(exc, f"the scan did not finish within {limit_s:g} s")
    if type(exc) is BleakError:  # bleak's own words, without advice
        why += "; is bluetoothd running and the adapter powered (`bluetoothctl power on`)?"
    return why


def _explain(exc: BaseException, timeout_text: str) -> str:
    """One human line for an exception from bleak, dbus-fast or the socket."""
    if isinstance(exc, TimeoutError):
        return timeout_text
    if isinstance(exc, BleakError) and _forgotten(exc):
        return (
            "BlueZ no longer knows the device and it was not seen again (bluetoothd forgets"
            " unpaired devices 30 s after their last advertisement); is it still advertising?"
        )
    if isinstance(exc, BleakDBusError):
        detail = f"{exc.dbus_error}" + (
            f": {exc.dbus_error_details}" if exc.dbus_error_details else ""
        )
        if "connection-limit" in detail:
            return (
                f"{detail}: the adapter has no free connection slot; pair through another"
                " adapter (--adapter) or stop `gatewayd run` while pairing"
            )
        advice = _ADVICE.get(exc.dbus_error)
        return f"{advice} ({detail})" if advice else detail
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return f"the system D-Bus is not reachable ({exc}); is dbus running?"
    return str(exc) or type(exc).__name__


# --- forgetting a bond -------------------------------------------------------------------------


class _BluezCallError(Exception):
    """A D-Bus error reply, as 'name: message' with advice where we have some."""


async def forget_bond(
    address: str, adapter: str | None = None, *, call_timeout_s: float = BLUEZ_CALL_TIMEOUT_S
) -> list[str]:
    """Ask BlueZ to forget ``address`` on ``adapter`` (default: every adapter).

    Adapter1.RemoveDevice disconnects the device, deletes its bond keys and removes its
    object. Returns the D-Bus paths removed (empty when BlueZ holds no such device).
    PairingError when BlueZ cannot be reached or refuses.
    """
    address = address.upper()
    only = None if adapter is None else f"/org/bluez/{adapter}"
    bus: MessageBus | None = None
    try:
        async with asyncio.timeout(call_timeout_s):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            objects = await _call(
                bus, "/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"
            )
            removed: list[str] = []
            for path, interfaces in sorted(objects[0].items()):
                props = interfaces.get(_DEVICE_INTERFACE)
                if props is None or str(props["Address"].value).upper() != address:
                    continue
                owner = str(props["Adapter"].value)
                if only is not None and owner != only:
                    continue
                await _call(
                    bus, owner, _ADAPTER_INTERFACE, "RemoveDevice", signature="o", body=[path]
                )
                removed.append(path)
            return removed
    except _BluezCallError as exc:
        raise PairingError(f"BlueZ refused to forget {address}: {exc}") from exc
    except TimeoutError as exc:
        raise PairingError(f"BlueZ did not answer within {call_timeout_s:g} s") from exc
    except (OSError, EOFError, DBusFastError) as exc:
        raise PairingError(
            f"cannot reach BlueZ on the system D-Bus ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


async def _call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    *,
    signature: str = "",
    body: list[Any] | None = None,
) -> list[Any]:
    """Call a BlueZ method; its reply body, or _BluezCallError for an error reply."""
    reply = await bus.call(
        Message(
            destination=_BLUEZ,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply is None:  # only for NO_REPLY_EXPECTED calls, which these are not
        raise _BluezCallError(f"{member}: no reply")
    if reply.message_type == MessageType.ERROR:
        detail = f"{reply.error_name}" + (f": {reply.body[0]}" if reply.body else "")
        if (advice := _ADVICE.get(reply.error_name or "")) is not None:
            detail += f"; {advice}"
        raise _BluezCallError(detail)
    return list(reply.body)


async def _forget_quietly(candidate: Candidate) -> None:
    """Undo what a failed attempt left in BlueZ (a bond, bleak's Trusted=True); never raise."""
    try:
        removed = await forget_bond(candidate.address, candidate.adapter)
    except PairingError as exc:
        log.warning(
            "could not clean up after a failed pairing", address=candidate.address, error=str(exc)
        )
    else:
        log.debug("cleaned up after a failed pairing", address=candidate.address, paths=removed)
