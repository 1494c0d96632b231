"""Long-lived scanning: one BleakScanner per adapter, filtered by the services we speak.

Every advertisement updates :class:`Sightings` (which adapters see which device, how well);
connection tasks wait on it instead of polling. Unpaired devices are recorded (for
`gatewayd pair`) and never connected. :class:`AdapterStates` records whether each adapter
answers (its scanner started) or why not (the last failure), for the supervisor's READY=1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
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
    """Who is visible through which adapter; a waiter is woken by its own device's sightings.

    Waiters wait for one device (`changed`): a sighting wakes only the waiters of the device
    it is of, and `notify` (a slot freed) wakes them all. Waking every waiter at every
    advertisement cost the event loop O(waiters x advertisements): with 300 wearables on 10
    slots, two thirds of the gateway's CPU went to links re-checking for a slot they could
    not have, on other devices' advertisements.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_address: dict[str, dict[str, Sighting]] = {}
        #: One event per device someone waits for, set and dropped at the device's next
        #: sighting (or at `notify`); the next waiter makes a new one.
        self._waiting: dict[str, asyncio.Event] = {}
        self._clock = clock

    def record(self, device: BLEDevice, adv: AdvertisementData, adapter: str) -> Sighting | None:
        """Store one advertisement; ignore devices that offer none of our services."""
        kind = device_kind(adv.service_uuids)
        if kind is None:
            return None
        sighting = Sighting(
            device, adapter, adv.rssi, adv.local_name or device.name or "", kind, self._clock()
        )
        address = device.address.upper()
        self._by_address.setdefault(address, {})[adapter] = sighting
        if (event := self._waiting.pop(address, None)) is not None:
            event.set()
        return sighting

    def notify(self) -> None:
        """Wake every waiter, whatever device it waits for (a slot freed elsewhere)."""
        waiting, self._waiting = self._waiting, {}
        for event in waiting.values():
            event.set()

    async def changed(self, address: str) -> None:
        """Return at the next sighting of ``address``, or at the next `notify`."""
        key = address.upper()
        event = self._waiting.get(key)
        if event is None:
            event = self._waiting[key] = asyncio.Event()
        await event.wait()

    def last_seen(self, address: str) -> float | None:
        """When ``address`` last advertised through any adapter (this object's clock), or None."""
        seen = self._by_address.get(address.upper())
        return max(s.seen_at for s in seen.values()) if seen else None

    async def seen_after(self, address: str, after: float) -> None:
        """Return once ``address`` has advertised later than ``after`` (at once if it has)."""
        while (last := self.last_seen(address)) is None or last <= after:
            await self.changed(address)

    def now(self) -> float:
        """This object's clock (what ``seen_at`` is measured on)."""
        return self._clock()

    def of(self, address: str) -> dict[str, Sighting]:
        """Sightings of ``address`` by adapter."""
        return dict(self._by_address.get(address.upper(), {}))

    def all(self) -> list[Sighting]:
        """The best (strongest) sighting of every device seen."""
        return [max(s.values(), key=lambda x: x.rssi) for s in self._by_address.values() if s]


@dataclass(frozen=True, slots=True)
class AdapterState:
    """What an adapter's scanner last said: it answers (scanning), or the failure why not."""

    answers: bool = False
    #: The last failure while it does not answer; None before the first attempt ended.
    error: BaseException | None = None


class AdapterStates:
    """Whether each adapter answers; waiters are woken on every change.

    An adapter answers once BlueZ started discovery on it (the scanner entered); it stops
    answering when a scanner on it fails. ``version`` counts changes, so a watcher that was busy
    can tell whether it missed one (`wait_change`).
    """

    def __init__(self, adapters: Iterable[str]) -> None:
        self._states = {adapter: AdapterState() for adapter in adapters}
        self._changed = asyncio.Event()
        self.version = 0

    def up(self, adapter: str) -> None:
        """The scanner on ``adapter`` started."""
        self._set(adapter, AdapterState(answers=True))

    def failed(self, adapter: str, error: BaseException) -> None:
        """The scanner on ``adapter`` failed (to start, or while scanning) with ``error``."""
        self._set(adapter, AdapterState(answers=False, error=error))

    def _set(self, adapter: str, state: AdapterState) -> None:
        self._states[adapter] = state
        self.version += 1
        self._changed.set()
        self._changed.clear()

    def snapshot(self) -> dict[str, AdapterState]:
        """Every adapter's state, in the configured order."""
        return dict(self._states)

    def answering(self) -> list[str]:
        """The adapters that answer."""
        return [adapter for adapter, state in self._states.items() if state.answers]

    async def wait_change(self, seen: int) -> None:
        """Return once ``version`` differs from ``seen`` (at once if it already does)."""
        while self.version == seen:
            await self._changed.wait()


async def scan_forever(
    adapter: str,
    sightings: Sightings,
    *,
    restart_delay_s: float = 1.0,
    states: AdapterStates | None = None,
) -> None:
    """Keep a filtered scanner running on ``adapter``; restart it (with backoff) if it fails.

    With ``states``, every start and failure is recorded there and failures are logged at
    DEBUG only: whoever watches ``states`` explains them (the supervisor, gatewayd.app).
    """
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
                if states is not None:
                    states.up(adapter)
                if failures:
                    log.info("scanner restarted", adapter=adapter)
                failures = 0
                await asyncio.Event().wait()  # scan until cancelled
        except (BleakError, OSError, EOFError) as exc:
            failures += 1
            if states is not None:
                states.failed(adapter, exc)
            delay = max(restart_delay_s, backoff_delay(classify(exc), failures))
            level = log.warning if failures == 1 and states is None else log.debug
            level("scanner failed", adapter=adapter, error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
