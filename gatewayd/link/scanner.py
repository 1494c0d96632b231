"""Long-lived scanning: one BleakScanner per adapter, filtered by the services we speak.

Every advertisement updates :class:`Sightings` (which adapters see which device, how well);
connection tasks wait on it instead of polling. Unpaired devices are recorded (for
`gatewayd pair`) and never connected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from gatewayd.protocol.gatt import HEART_RATE_SERVICE_UUID, SERVICE_UUID

from .backoff import backoff_delay, classify
from .registry import DeviceKind

log = structlog.get_logger("gatewayd.link")

SCAN_SERVICE_UUIDS: Final = (SERVICE_UUID, HEART_RATE_SERVICE_UUID)


def device_kind(service_uuids: list[str]) -> DeviceKind | None:
    """What a device is from the services it advertises; None for anything we do not speak."""
    uuids = {u.lower() for u in service_uuids}
    if SERVICE_UUID in uuids:
        return "wearable"
    if HEART_RATE_SERVICE_UUID in uuids:
        return "heart_rate"
    return None


@dataclass(frozen=True, slots=True)
class Sighting:
    """The latest advertisement of a device through one adapter."""

    device: BLEDevice
    adapter: str
    rssi: int
    name: str
    kind: DeviceKind
    seen_at: float


class Sightings:
    """Who is visible through which adapter; waiters are woken on every change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_address: dict[str, dict[str, Sighting]] = {}
        self._changed = asyncio.Event()
        self._clock = clock

    def record(self, device: BLEDevice, adv: AdvertisementData, adapter: str) -> Sighting | None:
        """Store one advertisement; ignore devices that offer none of our services."""
        kind = device_kind(adv.service_uuids)
        if kind is None:
            return None
        sighting = Sighting(
            device, adapter, adv.rssi, adv.local_name or device.name or "", kind, self._clock()
        )
        self._by_address.setdefault(device.address.upper(), {})[adapter] = sighting
        self.notify()
        return sighting

    def notify(self) -> None:
        """Wake everyone waiting for a change (a sighting, or a slot freed elsewhere)."""
        self._changed.set()
        self._changed.clear()

    async def changed(self) -> None:
        """Return at the next change."""
        await self._changed.wait()

    def of(self, address: str) -> dict[str, Sighting]:
        """Sightings of ``address`` by adapter."""
        return dict(self._by_address.get(address.upper(), {}))

    def all(self) -> list[Sighting]:
        """The best (strongest) sighting of every device seen."""
        return [max(s.values(), key=lambda x: x.rssi) for s in self._by_address.values() if s]


async def scan_forever(adapter: str, sightings: Sightings, *, restart_delay_s: float = 1.0) -> None:
    """Keep a filtered scanner running on ``adapter``; restart it (with backoff) if it fails."""
    failures = 0
    while True:
        try:

            def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
                sightings.record(device, adv, adapter)

            scanner = BleakScanner(
                detection_callback=on_advertisement,
                service_uuids=list(SCAN_SERVICE_UUIDS),
                bluez={"adapter": adapter},
            )
            async with scanner:
                if failures:
                    log.info("scanner restarted", adapter=adapter)
                failures = 0
                await asyncio.Event().wait()  # scan until cancelled
        except (BleakError, OSError, EOFError) as exc:
            failures += 1
            delay = max(restart_delay_s, backoff_delay(classify(exc), failures))
            level = log.warning if failures == 1 else log.debug
            level("scanner failed", adapter=adapter, error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
