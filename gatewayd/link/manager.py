"""The link layer as one unit: scanners per adapter, a slot pool, one task per paired device.

Frames and link events come out of one bounded queue, in order per device. The queue is sized
for bursts; if the consumer stalls and it fills, what is dropped is counted and logged.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Final

import structlog

from gatewayd.protocol.control import SetPolicy

from .connection import DeviceLink, LinkSettings, SlotLease
from .events import LinkEvent
from .registry import PairedDevice
from .scanner import Sightings, scan_forever
from .slots import SlotBudget

log = structlog.get_logger("gatewayd.link")

DEFAULT_QUEUE_SIZE: Final = 4096


class SlotPool:
    """Hands out connection slots: waits until a device is seen by an adapter with room."""

    def __init__(self, budget: SlotBudget, sightings: Sightings) -> None:
        self.budget = budget
        self.sightings = sightings

    async def acquire(self, address: str) -> SlotLease:
        """Wait for a sighting of ``address`` on an adapter with a free slot, and hold that slot."""
        while True:
            seen = self.sightings.of(address)
            adapter = self.budget.choose({a: s.rssi for a, s in seen.items()})
            if adapter is not None:
                self.budget.take(adapter)
                return SlotLease(seen[adapter], functools.partial(self._release, adapter))
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
                tg.create_task(scan_forever(adapter, self.sightings), name=f"scan-{adapter}")
            for link in self.links.values():
                tg.create_task(link.run(), name=f"link-{link.device.device_id}")

    def set_policy(self, device_id: str, policy: SetPolicy) -> bool:
        """Change one device's offload policy (backpressure); False if unknown or not queued."""
        for link in self.links.values():
            if link.device.device_id == device_id:
                return link.set_policy(policy)
        return False
