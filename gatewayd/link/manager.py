"""The link layer as one unit: scanners per adapter, a slot pool, one task per paired device.

Frames and link events come out of one bounded queue, in order per device. The queue is sized
for bursts; if the consumer stalls and it fills, what is dropped is counted and logged.

A device is connected when an adapter with a free slot sees it advertise, or at once when BlueZ
still holds a link to it from a previous run (stale.py): a connected device never advertises.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, TypeAlias

import structlog
from bleak.backends.device import BLEDevice

from gatewayd.protocol.control import SetPolicy

from . import stale
from .connection import DeviceLink, LinkSettings, SlotLease
from .events import LinkEvent
from .registry import PairedDevice
from .scanner import AdapterStates, Sighting, Sightings, scan_forever
from .slots import SlotBudget

log = structlog.get_logger("gatewayd.link")

DEFAULT_QUEUE_SIZE: Final = 4096
#: While a device is not seen, ask BlueZ this often whether it holds a link to it (seconds).
LINK_CHECK_INTERVAL_S: Final = 5.0

#: Asks BlueZ which devices it holds links to, by adapter (:func:`stale.bluez_links`).
BluezLinks: TypeAlias = Callable[[Sequence[str]], Awaitable[Mapping[str, Sequence[BLEDevice]]]]


class SlotPool:
    """Hands out connection slots: for a link BlueZ holds, or a sighting on an adapter with room."""

    def __init__(
        self,
        budget: SlotBudget,
        sightings: Sightings,
        *,
        bluez_links: BluezLinks = stale.bluez_links,
        check_interval_s: float = LINK_CHECK_INTERVAL_S,
    ) -> None:
        self.budget = budget
        self.sightings = sightings
        self._bluez_links = bluez_links
        self._check_interval_s = check_interval_s

    async def acquire(self, address: str) -> SlotLease:
        """Wait until ``address`` can be connected through an adapter with a free slot; hold it.

        A link BlueZ still holds to the device comes first (a previous run's, see stale.py):
        a connected device does not advertise, so sightings of it are old. BlueZ is asked at
        once and then every ``check_interval_s`` while this waits.
        """
        linked: dict[str, Sighting] = {}
        check_at = time.monotonic()
        while True:
            if time.monotonic() >= check_at:
                links = await self._bluez_links(self.budget.adapters)
                linked = stale.stale_sightings(address, links, time.monotonic())
                check_at = time.monotonic() + self._check_interval_s
            candidates = linked or self.sightings.of(address)
            adapter = self.budget.choose({a: s.rssi for a, s in candidates.items()})
            if adapter is not None:
                self.budget.take(adapter)
                if linked:
                    log.info("found a stale BlueZ connection from a previous run; reconnecting",
                             address=address, adapter=adapter)  # fmt: skip
                return SlotLease(candidates[adapter], functools.partial(self._release, adapter))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, check_at - time.monotonic())):
                    await self.sightings.changed()

    def _release(self, adapter: str) -> None:
        self.budget.release(adapter)
        self.sightings.notify()  # someone may be waiting for this slot


class LinkManager:
    """Runs the BLE side of the gateway until cancelled."""

    def __init__(
        self,
        adapters: Sequence[str],
        slots_per_adapter: int,
        devices: Sequence[PairedDevice],
        settings: LinkSettings,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.sightings = Sightings()
        #: Whether each adapter answers, or its scanner's last failure (gatewayd.app waits for
        #: one before READY=1, and explains failures).
        self.adapters = AdapterStates(adapters)
        self.pool = SlotPool(SlotBudget(dict.fromkeys(adapters, slots_per_adapter)), self.sightings)
        self.settings = settings
        self.events: asyncio.Queue[LinkEvent] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.links = {
            d.address: DeviceLink(d, acquire=self.pool.acquire, emit=self._emit, settings=settings)
            for d in devices
        }

    def _emit(self, event: LinkEvent) -> None:
        if self.events.full():
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("link event queue full: the pipeline is not keeping up",
                          dropped=self.dropped, event=type(event).__name__)  # fmt: skip
            return
        self.events.put_nowait(event)

    async def run(self) -> None:
        """Scan on every adapter and keep every paired device connected, until cancelled."""
        log.info("link starting", adapters=list(self.pool.budget.adapters),
                 devices=[link.device.device_id for link in self.links.values()])  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            for adapter in self.pool.budget.adapters:
                tg.create_task(
                    scan_forever(adapter, self.sightings, states=self.adapters),
                    name=f"scan-{adapter}",
                )
            for link in self.links.values():
                tg.create_task(link.run(), name=f"link-{link.device.device_id}")

    def set_policy(self, device_id: str, policy: SetPolicy) -> bool:
        """Change one device's offload policy (backpressure); False if unknown or not queued."""
        for link in self.links.values():
            if link.device.device_id == device_id:
                return link.set_policy(policy)
        return False
