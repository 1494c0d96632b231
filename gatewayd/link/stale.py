"""Links BlueZ holds to a paired device while no session of ours does: stale connections.

bluetoothd, not the D-Bus client that asked for it, owns an LE connection: when that client
dies (a gateway SIGKILLed, OOM-killed or restarted by the watchdog) the link stays up
(bluez/bluez#89; bleak's ``client.py`` says so where it skips ``Connect``), and a connected
peripheral does not advertise. A restarted gateway waiting for an advertisement would wait
forever. So the slot pool asks BlueZ first: bleak 3.1's :class:`bleak.BleakAdapter` lists the
connected devices from the Device1 objects its BlueZ manager mirrors (``Connected=True``,
services resolved), without scanning, and a :class:`BleakClient` given such a device takes the
link over: bleak sees ``Connected`` and skips ``Device1.Connect``. bleak-retry-connector's
``get_device`` does the same; its ``close_stale_connections`` disconnects instead, which would
make us wait for the device to advertise again.

The decision (which link, through which adapter) is the pure :func:`stale_sightings`;
:func:`bluez_links` is the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog
from bleak import BleakAdapter
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from dbus_fast.errors import DBusFastError

from .scanner import SCAN_SERVICE_UUIDS, Sighting, device_kind

log = structlog.get_logger("gatewayd.link")

#: How long asking bleak's BlueZ manager may take (it connects to the bus the first time).
QUERY_TIMEOUT_S: Final = 10.0
#: The RSSI a link is ranked with when BlueZ has none for it (it is only a tie-breaker).
NO_RSSI: Final = -127


async def bluez_links(adapters: Sequence[str]) -> dict[str, list[BLEDevice]]:
    """The devices BlueZ holds a link to through each of ``adapters``, if they speak our services.

    Best effort: if BlueZ cannot be asked, this logs at DEBUG and returns what it has (the
    scanners report an unreachable BlueZ at WARNING).
    """
    found: dict[str, list[BLEDevice]] = {}
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S):
            for adapter in adapters:
                bluez = await BleakAdapter.get(bluez={"adapter": adapter})
                found[adapter] = await bluez.get_connected_devices(list(SCAN_SERVICE_UUIDS))
    except (BleakError, DBusFastError, OSError, EOFError, TimeoutError) as exc:
        log.debug("cannot ask BlueZ which links it holds", error=str(exc) or type(exc).__name__)
    return found


def stale_sightings(
    address: str, links: Mapping[str, Sequence[BLEDevice]], now: float
) -> dict[str, Sighting]:
    """The links of :func:`bluez_links` to ``address``, by adapter, as sightings to connect to.

    The caller holds no client for ``address`` (the slot pool is asked between sessions), so
    any link BlueZ holds to it is stale. Devices offering none of our services are ignored.
    """
    wanted = address.upper()
    found: dict[str, Sighting] = {}
    for adapter, devices in links.items():
        for device in devices:
            if device.address.upper() != wanted:
                continue
            props = _props(device)
            uuids = props.get("UUIDs")
            kind = device_kind([str(u) for u in uuids] if isinstance(uuids, list | tuple) else [])
            if kind is None:
                continue
            rssi = props.get("RSSI")
            found[adapter] = Sighting(
                device,
                adapter,
                rssi if isinstance(rssi, int) else NO_RSSI,
                device.name or "",
                kind,
                now,
            )
    return found


def _props(device: BLEDevice) -> Mapping[str, Any]:
    """The Device1 properties bleak's BlueZ backend keeps in ``details`` (empty elsewhere)."""
    details = device.details
    props = details.get("props") if isinstance(details, Mapping) else None
    return props if isinstance(props, Mapping) else {}
