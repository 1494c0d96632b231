"""The link's outbox: frames are bounded, state events are never dropped, losses are never silent.

One FIFO per device keeps each device's events in order, and the devices are served round-robin
(gatewayd/lanes.py): a device that floods delays another's event by at most one of its own.
Frames (:class:`FrameReceived`, :class:`HeartRateReceived`) count against ``max_frames``; when
the consumer stalls and that many are waiting, a further frame of a device that already holds
its share (``max_frames`` divided by the devices with frames waiting) is dropped, counted for its
device, and recorded as a :class:`MessagesLost` with cause ``"queue_full"`` placed where the frame
would have been (a run of dropped frames of one device becomes one event). A device under its
share is still taken, so a flood costs the others nothing; at twice ``max_frames`` every frame is
dropped. Every other event carries state (a link up or down, a loss, a restart, an untrusted
device, a jump) and is always queued; a :class:`BatteryLevel` still waiting is updated in place
rather than queued twice. Pure: no I/O.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from gatewayd.lanes import Lanes
from gatewayd.protocol.sequencing import SEQ_MODULUS

from .events import BatteryLevel, FrameReceived, HeartRateReceived, LinkEvent, MessagesLost


@dataclass(eq=False)
class _Loss:
    """A queued MessagesLost that later drops of the same run may still extend."""

    device_id: str
    first: int
    count: int

    def event(self) -> MessagesLost:
        return MessagesLost(self.device_id, self.first, self.count, "queue_full")


@dataclass(eq=False)
class _Battery:
    device_id: str
    percent: int


_Entry = LinkEvent | _Loss | _Battery


class EventQueue:
    """What :class:`~gatewayd.link.manager.LinkManager` hands out (``get``, ``get_nowait``...)."""

    def __init__(self, max_frames: int) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.max_frames = max_frames
        #: Frames dropped because the consumer did not keep up, by device id.
        self.dropped: Counter[str] = Counter()
        self._items: Lanes[str, _Entry] = Lanes()
        self._frames = 0
        #: Frames waiting, by device id.
        self._frames_of: Counter[str] = Counter()
        self._open_loss: dict[str, _Loss] = {}
        self._battery: dict[str, _Battery] = {}
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        """Events waiting (a run of dropped frames counts once)."""
        return len(self._items)

    def empty(self) -> bool:
        """Nothing waiting."""
        return not self._items

    @property
    def frames(self) -> int:
        """Frames waiting."""
        return self._frames

    def put(self, event: LinkEvent) -> bool:
        """Queue ``event``; False if it was a frame and had to be dropped (and recorded as lost)."""
        device_id = event.device_id
        if isinstance(event, FrameReceived | HeartRateReceived):
            if self._refused(device_id):
                self._drop(event)
                return False
            self._frames += 1
            self._frames_of[device_id] += 1
            self._append(event)
            return True
        if isinstance(event, BatteryLevel):
            waiting = self._battery.get(device_id)
            if waiting is not None:
                waiting.percent = event.percent
                return True
            entry = _Battery(device_id, event.percent)
            self._battery[device_id] = entry
            self._append(entry)
            return True
        self._append(event)
        return True

    def _refused(self, device_id: str) -> bool:
        """Whether a frame of ``device_id`` must be dropped now."""
        if self._frames < self.max_frames:
            return False
        if self._frames >= 2 * self.max_frames:
            return True
        held = self._frames_of[device_id]
        devices = len(self._frames_of) + (0 if held else 1)
        return held >= max(1, self.max_frames // devices)

    def _append(self, entry: _Entry) -> None:
        # Anything else of the device queued after a loss ends that run of drops.
        if not isinstance(entry, _Loss):
            self._open_loss.pop(entry.device_id, None)
        self._items.append(entry.device_id, entry)
        self._ready.set()

    def _drop(self, frame: FrameReceived | HeartRateReceived) -> None:
        device_id = frame.device_id
        self.dropped[device_id] += 1
        seq = frame.message.seq if isinstance(frame, FrameReceived) else -1
        loss = self._open_loss.get(device_id)
        if loss is not None and (seq == -1 or (loss.first + loss.count) % SEQ_MODULUS == seq):
            loss.count += 1
            return
        loss = _Loss(device_id, seq, 1)
        self._append(loss)
        self._open_loss[device_id] = loss

    def get_nowait(self) -> LinkEvent:
        """The oldest event of the device whose turn it is; asyncio.QueueEmpty when none."""
        if not self._items:
            raise asyncio.QueueEmpty
        _, entry = self._items.popleft()
        if not self._items:
            self._ready.clear()
        match entry:
            case _Loss():
                if self._open_loss.get(entry.device_id) is entry:
                    del self._open_loss[entry.device_id]
                return entry.event()
            case _Battery():
                del self._battery[entry.device_id]
                return BatteryLevel(entry.device_id, entry.percent)
            case FrameReceived() | HeartRateReceived():
                self._frames -= 1
                self._frames_of[entry.device_id] -= 1
                if not self._frames_of[entry.device_id]:
                    del self._frames_of[entry.device_id]
                return entry
            case _:
                return entry

    async def get(self) -> LinkEvent:
        """The oldest event of the device whose turn it is, waiting for one."""
        while not self._items:
            await self._ready.wait()
        return self.get_nowait()
