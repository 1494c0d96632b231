"""The link layer as one unit: scanners per adapter, a slot pool, one task per paired device.

Frames and link events come out of one queue (queue.py), in order per device and round-robin
over devices, so a device that floods does not delay the others. Frames are bounded; if the
consumer stalls, the frames that do not fit (a device's beyond its share of the bound) are
counted per device and reported as a MessagesLost; events that carry state are never dropped.

:class:`LinkManager` is an async context manager: entering starts the scanners and the device
tasks, leaving cancels them and disconnects every device within one overall bound
(``close_timeout_s``), even when bluetoothd stops answering; :attr:`LinkManager.closed` says how
many disconnects had to be abandoned. ``run()`` enters it and waits (until cancelled).

A device is connected when an adapter with a free slot sees it advertise, or at once when BlueZ
still holds a link to it from a previous run (stale.py): a connected device never advertises.
Every connected device holds one D-Bus connection (bleak's), and the system bus limits them per
user: :attr:`LinkManager.bus` (buslimit.py) recognises the refusal, says so once and queues the
devices that wait for the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeAlias

import structlog
from bleak.backends.device import BLEDevice

from gatewayd.lifecycle import EnterOnce
from gatewayd.protocol.control import SetPolicy

from . import stale
from .buslimit import BusCeiling
from .connection import DeviceLink, LinkSettings, SlotLease
from .events import DeviceRemoved, DeviceUntrusted, LinkEvent, ResumePoint
from .queue import EventQueue
from .registry import DeviceRegistry, PairedDevice, RegistryError, resume_point
from .scanner import AdapterStates, Sighting, Sightings, scan_forever
from .slots import SlotBudget

log = structlog.get_logger("gatewayd.link")

DEFAULT_QUEUE_SIZE: Final = 4096
#: The most leaving a LinkManager may take: cancelling every task and disconnecting every device.
DEFAULT_CLOSE_TIMEOUT_S: Final = 10.0
#: While a device is not seen, ask BlueZ this often whether it holds a link to it (seconds).
LINK_CHECK_INTERVAL_S: Final = 5.0

#: A device counts as waiting for a slot while it advertised this recently (seconds; BlueZ
#: reports every advertisement to bleak's scanner, DuplicateData off): one that left is absent,
#: not waiting.
SEEN_WITHIN_S: Final = 30.0

#: What to do when paired devices wait for a connection slot (logs, STATUS=, doctor).
SLOTS_FIX: Final = (
    "add an adapter to [ble] adapters, or raise [ble] slots_per_adapter if the controller holds"
    " more connections (a Raspberry Pi's built-in one holds about 4-7); see docs/running.md"
)

#: Asks BlueZ which devices it holds links to, by adapter (:func:`stale.bluez_links`).
BluezLinks: TypeAlias = Callable[[Sequence[str]], Awaitable[Mapping[str, Sequence[BLEDevice]]]]


class SlotPool:
    """Hands out connection slots: for a link BlueZ holds, or a sighting on an adapter with room.

    A device seen advertising (within SEEN_WITHIN_S) while every adapter that sees it is full
    waits for a slot; the first to wait is logged (WARNING, with the fix), the end of the wait
    for the last one at INFO, and :attr:`problem` is the line for STATUS= meanwhile.
    """

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
        #: Devices seen advertising that wait because every adapter seeing them is full.
        self._full: set[str] = set()
        #: BlueZ's last answer (when asked, slots released by then, links by adapter), shared
        #: by every waiting device for a fifth of the check interval and until a slot is
        #: released (a link of ours that just ended may still be in it).
        self._links: tuple[float, int, Mapping[str, Sequence[BLEDevice]]] | None = None
        #: The question under way, which every device asking meanwhile awaits.
        self._asking: asyncio.Task[Mapping[str, Sequence[BLEDevice]]] | None = None
        #: Slots released so far.
        self._releases = 0
        #: Set (and replaced) when a slot is released.
        self._freed = asyncio.Event()

    @property
    def waiting(self) -> int:
        """Devices seen advertising that wait for a free slot."""
        return len(self._full)

    @property
    def problem(self) -> str | None:
        """One line for STATUS= while devices wait for a slot, else None."""
        if not self._full:
            return None
        return (
            f"{self.waiting} device(s) wait for a connection slot, all {self.budget.total} are"
            f" taken: {SLOTS_FIX}"
        )

    async def acquire(self, address: str) -> SlotLease:
        """Wait until ``address`` can be connected through an adapter with a free slot; hold it.

        A link BlueZ still holds to the device comes first (a previous run's, see stale.py):
        a connected device does not advertise, so sightings of it are old. BlueZ is asked at
        once and then every ``check_interval_s`` while this waits; one answer serves every
        device waiting at the time (`_held_links`). Meanwhile a sighting of the device wakes
        it while some adapter has a free slot, and a released slot always does.
        """
        linked: dict[str, Sighting] = {}
        check_at = time.monotonic()
        try:
            while True:
                if time.monotonic() >= check_at:
                    links = await self._held_links()
                    linked = stale.stale_sightings(address, links, time.monotonic())
                    check_at = time.monotonic() + self._check_interval_s
                candidates = linked or self.sightings.of(address)
                adapter = self.budget.choose({a: s.rssi for a, s in candidates.items()})
                if adapter is not None:
                    self.budget.take(adapter)
                    if linked:
                        log.info("found a stale BlueZ connection from a previous run;"
                                 " reconnecting", address=address, adapter=adapter)  # fmt: skip
                    return SlotLease(candidates[adapter], functools.partial(self._release, adapter))
                if linked or self._seen_lately(candidates):
                    self._no_room(address)
                else:  # not seen, or not for a while: absent, not waiting for a slot
                    self._done_waiting(address)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, check_at - time.monotonic())):
                        if self.budget.total_free():
                            # Room elsewhere: a sighting there would do.
                            await self.sightings.changed(address)
                        else:
                            # Every slot is taken: only a released one can change that.
                            await self._freed.wait()
        finally:
            self._done_waiting(address)

    def _seen_lately(self, candidates: Mapping[str, Sighting]) -> bool:
        now = self.sightings.now()
        return any(now - s.seen_at <= SEEN_WITHIN_S for s in candidates.values())

    def _no_room(self, address: str) -> None:
        """``address`` advertises, but every adapter that sees it is full."""
        if address in self._full:
            return
        first = not self._full
        self._full.add(address)
        if first:
            log.warning(
                "every connection slot is taken: paired devices that advertise wait until a"
                " connected one leaves",
                address=address, slots=self.budget.total, fix=SLOTS_FIX,
            )  # fmt: skip
        else:
            log.debug("waiting for a connection slot", address=address, waiting=self.waiting)

    def _done_waiting(self, address: str) -> None:
        if address not in self._full:
            return
        self._full.discard(address)
        if not self._full:
            log.info("no device waits for a connection slot any more", slots=self.budget.total)

    async def _held_links(self) -> Mapping[str, Sequence[BLEDevice]]:
        """The links BlueZ holds, by adapter. The answer is the same for every device, so one
        question serves all that ask within a fifth of the check interval: hundreds of devices
        waiting for a slot, each asking every few seconds, would otherwise walk BlueZ's whole
        device list hundreds of times a minute."""
        if self._links is not None:
            asked_at, releases, links = self._links
            fresh = time.monotonic() - asked_at < self._check_interval_s / 5
            if fresh and releases == self._releases:
                return links
        if self._asking is None:
            self._asking = asyncio.create_task(self._ask(), name="slot-pool-bluez-links")
        return await asyncio.shield(self._asking)

    async def _ask(self) -> Mapping[str, Sequence[BLEDevice]]:
        asked_at, releases = time.monotonic(), self._releases
        try:
            links = await self._bluez_links(self.budget.adapters)
        finally:
            self._asking = None
        self._links = (asked_at, releases, links)
        return links

    async def close(self, timeout_s: float = 1.0) -> None:
        """Stop a question to BlueZ still under way (its askers have gone)."""
        if (asking := self._asking) is not None:
            asking.cancel()
            await asyncio.wait({asking}, timeout=timeout_s)

    def _release(self, adapter: str) -> None:
        self.budget.release(adapter)
        self._releases += 1  # BlueZ's last answer may still hold this link: not used again
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()
        self.sightings.notify()  # someone may be waiting for this slot


@dataclass(frozen=True, slots=True)
class CloseOutcome:
    """How leaving a :class:`LinkManager` went."""

    #: Device tasks stopped.
    devices: int
    #: Devices whose disconnect did not finish within the bound (bluetoothd did not answer).
    disconnects_abandoned: int
    #: Tasks (scanners, devices) still running when the bound was reached, left behind.
    tasks_abandoned: int


@dataclass(slots=True)
class DeviceListChange:
    """What `LinkManager.update_devices` did with a changed paired-device list (device ids)."""

    #: New to the list: connected from now on.
    added: list[str] = field(default_factory=list)
    #: Paired again (or otherwise changed while trusted): the link was started again.
    restarted: list[str] = field(default_factory=list)
    #: Taken off the list: its link stopped.
    removed: list[str] = field(default_factory=list)
    #: Renamed (old id, new id): its link stopped and started again under the new id.
    renamed: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.restarted or self.removed or self.renamed)


def logged_point(device: PairedDevice, resume: Mapping[str, ResumePoint]) -> ResumePoint | None:
    """The event log's point for ``device`` (``resume``: by device id): under its id or an id
    it had before a rename (`PairedDevice.renamed_from`), the one heard last."""
    ids = (device.device_id, *reversed(device.renamed_from))  # newest first: ties go to it
    points = [p for i in ids if (p := resume.get(i)) is not None]
    # A point with no time (an older log) counts as older than any with one.
    return max(points, key=lambda p: -1.0 if p.heard_at is None else p.heard_at, default=None)


def _resume_from(link: DeviceLink, heard_at: float | None = None) -> ResumePoint | None:
    """Where a stopped link's stream stopped (None before its first info).

    Without ``heard_at``: the device may have gone on for a long while since (an untrusted one,
    say), and a day's bound reports what its ring no longer holds as lost rather than as a jump.
    With it (a link stopped just now), the point also outranks where the device stood when it
    was paired (`resume_point`).
    """
    boot_id, next_seq = link.stream.boot_id, link.stream.expected_seq
    if boot_id is None or next_seq is None:
        return None
    return ResumePoint(boot_id, next_seq, heard_at)


class LinkManager:
    """Runs the BLE side of the gateway: ``async with LinkManager(...) as link`` (or ``run()``)."""

    def __init__(
        self,
        adapters: Sequence[str],
        slots_per_adapter: int,
        devices: Sequence[PairedDevice],
        settings: LinkSettings,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        resume: Mapping[str, ResumePoint] | None = None,
        registry: DeviceRegistry | None = None,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        bus: BusCeiling | None = None,
    ) -> None:
        """``resume``: the event log's resume points by device id (each weighed against where
        the device stood when paired, `registry.resume_point`). ``registry``: where a device
        whose identity changed is recorded as untrusted (it stays so across restarts until
        paired again).
        ``bus``: the system bus's connection ceiling (default: a new one, probing the bus).
        """
        self.sightings = Sightings()
        #: Whether each adapter answers, or its scanner's last failure (gatewayd.app waits for
        #: one before READY=1, and explains failures).
        self.adapters = AdapterStates(adapters)
        self.pool = SlotPool(SlotBudget(dict.fromkeys(adapters, slots_per_adapter)), self.sightings)
        self.settings = settings
        self.close_timeout_s = close_timeout_s
        self.events = EventQueue(queue_size)
        self._registry = registry
        #: The system bus's connection ceiling, shared by every device (STATUS= reads
        #: ``bus.problem``).
        self.bus = bus if bus is not None else BusCeiling()
        resume = resume or {}
        self.links = {d.address: self._link(d, logged_point(d, resume)) for d in devices}
        #: Each address's entry of the paired list as last applied (`update_devices`).
        self._entries = {d.address: d for d in devices}
        #: Set when the manager has been left.
        self.closed: CloseOutcome | None = None
        self._enter_once = EnterOnce("a LinkManager")
        self._entered = False
        self._scanners: list[asyncio.Task[None]] = []
        self._devices: dict[str, asyncio.Task[None]] = {}
        #: Device tasks stopped by `update_devices` and not seen to end (bluetoothd hung).
        self._stopped: list[asyncio.Task[None]] = []
        self._updating = asyncio.Lock()
        self._failed: asyncio.Future[None] | None = None

    def _link(self, device: PairedDevice, logged: ResumePoint | None) -> DeviceLink:
        """The device's link, starting where the event log says (``logged``) or where the
        device stood when it was paired, whichever is later (`resume_point`)."""
        return DeviceLink(
            device,
            acquire=self.pool.acquire,
            emit=self._emit,
            settings=self.settings,
            resume=resume_point(device, logged),
            on_untrusted=self._record_untrusted,
            ceiling=self.bus,
            sightings=self.sightings,
        )

    @property
    def devices(self) -> tuple[PairedDevice, ...]:
        """The devices served: the paired list as last applied."""
        return tuple(self._entries.values())

    @property
    def dropped(self) -> int:
        """Frames dropped because the consumer did not keep up (each reported as lost)."""
        return sum(self.events.dropped.values())

    def _emit(self, event: LinkEvent) -> None:
        if not self.events.put(event):
            dropped = self.events.dropped[event.device_id]
            if dropped == 1 or dropped % 1000 == 0:
                log.error("link event queue full: the pipeline is not keeping up; frames are"
                          " dropped and reported lost", device=event.device_id,
                          dropped=dropped)  # fmt: skip

    async def _record_untrusted(self, event: DeviceUntrusted) -> None:
        if self._registry is None:
            return
        try:
            await asyncio.to_thread(self._registry.mark_untrusted, event.device_id, event.detail)
        except RegistryError as exc:
            log.warning("cannot record an untrusted device", device=event.device_id,
                        error=str(exc))  # fmt: skip

    async def __aenter__(self) -> LinkManager:
        self._enter_once()  # ReentryError the second time
        self._entered = True
        self._failed = asyncio.get_running_loop().create_future()
        log.info("link starting", adapters=list(self.pool.budget.adapters),
                 devices=[link.device.device_id for link in self.links.values()])  # fmt: skip
        for adapter in self.pool.budget.adapters:
            self._scanners.append(
                self._start(
                    scan_forever(adapter, self.sightings, states=self.adapters), f"scan-{adapter}"
                )
            )
        for address, link in self.links.items():
            self._devices[address] = self._start(link.run(), f"link-{link.device.device_id}")
        return self

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error("link task failed", task=task.get_name(), error=repr(exc))
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closed = await self._close()

    async def _close(self) -> CloseOutcome:
        """Cancel everything; wait at most ``close_timeout_s`` in all, abandoning what hangs."""
        tasks = [*self._devices.values(), *self._stopped, *self._scanners]
        for task in tasks:
            task.cancel()
        grace = min(1.0, self.close_timeout_s / 5)
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.close_timeout_s - grace)
        hung = [link for link in self.links.values() if link.disconnecting]
        if pending:
            for task in pending:
                task.cancel()  # again: interrupts a disconnect bluetoothd does not answer
            _, pending = await asyncio.wait(pending, timeout=grace)
        outcome = CloseOutcome(len(self._devices), len(hung), len(pending))
        if hung or pending:
            log.warning("link stopped without waiting for bluetoothd",
                        disconnects_abandoned=len(hung), tasks_abandoned=len(pending),
                        devices=[link.device.device_id for link in hung])  # fmt: skip
        await self.pool.close(grace)
        if self._failed is not None and not self._failed.done():
            self._failed.cancel()
        return outcome

    async def wait(self) -> None:
        """Return never (until cancelled); raise what a link task failed with (a bug)."""
        if self._failed is None:
            raise RuntimeError("enter the LinkManager first (async with)")
        await asyncio.shield(self._failed)

    async def run(self) -> None:
        """Scan on every adapter and keep every paired device connected, until cancelled."""
        if self._entered:
            await self.wait()
            return
        async with self:
            await self.wait()

    async def update_devices(
        self, devices: Sequence[PairedDevice], resume: Mapping[str, ResumePoint] | None = None
    ) -> DeviceListChange:
        """Follow the paired-device list while running, without touching the other devices.

        A device new to the list is connected, from where it stood when paired or the event
        log's point in ``resume`` (by device id), whichever is later. A device whose entry
        changed under the same id while trusted (paired again after it was untrusted, a new
        hardware profile, the unbonded opt-in) has its link stopped and started again the same
        way; with neither point, from where the old link stopped. An entry marked untrusted
        changes nothing here (the link has stopped itself, or does when it next connects).

        A device taken off the list has its link stopped (its connection slot goes to a device
        waiting for one), and a `DeviceRemoved` follows its last events out of the queue, so
        the consumer can let go of everything it holds under that id. A device renamed (the same
        address under another id) likewise, then its link starts again under the new id, from
        where the old one stopped.
        """
        if not self._entered:
            raise RuntimeError("enter the LinkManager first (async with)")
        resume = resume or {}
        async with self._updating:
            wanted = {d.address: d for d in devices}
            change = DeviceListChange()
            restart: list[PairedDevice] = []
            gone: list[tuple[PairedDevice, PairedDevice | None]] = []
            for address, entry in self._entries.items():
                new = wanted.get(address)
                if new is None or new.device_id != entry.device_id:
                    gone.append((entry, new))
                elif new != entry and not new.untrusted:
                    restart.append(new)
            for entry, new in gone:
                old = self.links[entry.address]
                await self._stop_link(entry.address, "unpaired" if new is None else "renamed")
                del self._entries[entry.address], self.links[entry.address]
                self._emit(DeviceRemoved(entry.device_id, None if new is None else new.device_id))
                if new is None:
                    change.removed.append(entry.device_id)
                    continue
                self._entries[new.address] = new
                # The same wearable, the same pairing: its numbering goes on from where the old
                # link stopped (just now), else from the event log's point under the old id.
                self._begin(new, _resume_from(old, time.time()) or logged_point(new, resume))
                change.renamed.append((entry.device_id, new.device_id))
            for device in restart:
                old = self.links[device.address]
                await self._stop_link(device.address, "paired again")
                self._entries[device.address] = device
                # Paired again, it starts where it stood then; else where the old link stopped.
                logged = logged_point(device, resume)
                if logged is None and device.paired_point() is None:
                    logged = _resume_from(old)
                self._begin(device, logged)
                change.restarted.append(device.device_id)
            for address, device in wanted.items():
                if address not in self._entries:
                    self._entries[address] = device
                    self._begin(device, logged_point(device, resume))
                    change.added.append(device.device_id)
                elif device.untrusted and self._entries[address].device_id == device.device_id:
                    self._entries[address] = device
            return change

    def _begin(self, device: PairedDevice, resume: ResumePoint | None) -> None:
        link = self._link(device, resume)
        self.links[device.address] = link
        self._devices[device.address] = self._start(link.run(), f"link-{device.device_id}")

    async def _stop_link(self, address: str, reason: str) -> None:
        """Stop one device's task (its LinkDown says ``reason``), within ``close_timeout_s``."""
        link, task = self.links[address], self._devices.pop(address)
        link.stop_reason = reason
        task.cancel()
        self._stopped.append(task)  # until it ends: leaving the manager waits for it too
        _, pending = await asyncio.wait([task], timeout=self.close_timeout_s)
        if pending:
            log.warning("link stopped without waiting for bluetoothd",
                        device=link.device.device_id)  # fmt: skip
        else:
            self._stopped.remove(task)

    def set_policy(self, device_id: str, policy: SetPolicy) -> bool:
        """Change one device's offload policy (backpressure); False if unknown or not queued."""
        for link in self.links.values():
            if link.device.device_id == device_id:
                return link.set_policy(policy)
        return False
