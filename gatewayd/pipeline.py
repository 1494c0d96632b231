"""The stage runner: link events in, in order per device; windows, alerts and MQTT updates out.

One `Pipeline` consumes `LinkEvent`s in order per device in two stages joined by one bounded
queue, which holds one FIFO per device served round-robin (gatewayd/lanes.py; ticks have a lane
of their own): a device that floods delays another device's event by at most one of its own.

1. ``submit`` (intake): a raw WINDOW is handed to the analyser (the inference worker) at once,
   so windows of several devices can be batched together, unless its device already has
   `ANALYSES_PER_DEVICE` events ahead of it in the queue: then its analysis starts when it moves
   up to that place, so one device never fills the worker's queue ahead of the others. Every
   event is queued with its pending result.
2. the processing loop: each device's events in order, waits for the window's result, records
   the window in the store (frames ready one after the other, as a batch's are, form a group of
   up to `GROUP_MAX` whose windows are queued to the store together and commit in one
   transaction; then each goes on in turn), builds an `Observation`, feeds the `RuleEngine`,
   writes each alert transition to the event log (outbox) and only then notifies the
   publisher; telemetry and the retained device state go to the publisher best effort, the
   state only when it changed (`gatewayd.publish.build.state_changed`), not on every window.

A device whose next event is a window still being analysed is passed over (`Pipeline.run`):
the model's time delays that device only, not the devices behind it in the queue.

A tick is served in its lane's turn, so it may be processed before events of a device queued
just ahead of it (at most one turn of the queue).

What each step computes is pure and lives elsewhere: the mapping of frames and events in
gatewayd/mapping.py, the rules in gatewayd/rules, the payloads in gatewayd/publish/build.py.
The store, the publisher and the analyser are injected.

Faults are contained per event: an event that cannot be processed (a value the event log cannot
hold, a payload that does not validate, a bug) is logged with its device, counted, and reported
once per device and kind of fault as a technical event; every other event and device goes on.

``async with Pipeline(...) as pipeline`` runs the loop; leaving drains what was submitted
(bounded by ``drain_timeout_s``) and stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import structlog
from pydantic import ValidationError

from gatewayd.inference.analysis import WindowAnalysis
from gatewayd.lanes import Lanes
from gatewayd.lifecycle import BackgroundPart, raised_at
from gatewayd.link.events import (
    BatteryLevel,
    DeviceRemoved,
    DeviceRestarted,
    DeviceUntrusted,
    FrameReceived,
    HeartRateReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    MessagesLost,
    SequenceJump,
)
from gatewayd.mapping import (
    alert_event,
    clock_problem,
    data_lost_event,
    device_fault_event,
    device_removed_event,
    observation_for_frame,
    observation_for_strap,
    record_for_frame,
    sequence_jump_event,
    untrusted_event,
)
from gatewayd.protocol.messages import Window, summary_of
from gatewayd.protocol.sequencing import SEQ_MODULUS
from gatewayd.publish.build import (
    DeviceView,
    activity_confidence,
    activity_name,
    device_state,
    state_changed,
    telemetry_for,
)
from gatewayd.publish.payloads import DeviceState, Telemetry
from gatewayd.publish.topics import TopicError, Topics
from gatewayd.rules.alerts import AlertTransition
from gatewayd.rules.engine import RuleEngine
from gatewayd.rules.inputs import LinkStatus
from gatewayd.store.errors import StoreError
from gatewayd.store.records import DeviceCursor, NewEvent, WindowRecord

__all__ = [
    "Analyse",
    "EventSink",
    "Pipeline",
    "PipelineStats",
    "PublishSink",
    "Tick",
]

log = structlog.get_logger("gatewayd.pipeline")

#: Bound of the queue between the two stages (events, all devices together).
DEFAULT_QUEUE_SIZE: Final = 1024
#: A device's first events in the queue whose windows are being analysed; the rest wait.
ANALYSES_PER_DEVICE: Final = 8
#: At most this many windows, queued one after the other with their analyses done, are
#: processed as one group: their store writes are queued together (one commit), then each goes
#: through the rules and out in turn.
GROUP_MAX: Final = 32
#: How many devices, in turn, the loop looks at for one whose next event is ready.
READY_SCAN: Final = 64
#: How long leaving the pipeline waits for what was submitted to be processed.
DEFAULT_DRAIN_TIMEOUT_S: Final = 10.0


class EventSink(Protocol):
    """The parts of `gatewayd.store.Store` the pipeline writes to."""

    async def record_window(
        self, window: WindowRecord, *, cursor: DeviceCursor | None = None
    ) -> int:
        """Store one window (and where its device's stream resumes); return its id."""
        ...

    async def record_windows(
        self, windows: Sequence[tuple[WindowRecord, DeviceCursor | None]]
    ) -> list[int | Exception]:
        """`record_window` for each (window, cursor), committed together; each answer is the
        window's id or what that window alone met (a StoreError, or a bug)."""
        ...

    async def append_event(self, event: NewEvent, *, cursor: DeviceCursor | None = None) -> str:
        """Store one event and its outbox row (and where its device resumes); return its id."""
        ...


class PublishSink(Protocol):
    """The parts of `gatewayd.publish.Publisher` the pipeline calls (none blocks)."""

    def notify(self) -> None:
        """The outbox has new items."""

    def update_state(self, state: DeviceState) -> None:
        """A device's latest state (retained)."""

    def publish_telemetry(self, telemetry: Telemetry) -> bool:
        """One window's telemetry, best effort."""
        ...

    def forget(self, device_id: str) -> None:
        """A device taken off the paired list: its retained topics are emptied."""


#: Analyse one offloaded window of one device (model or signal estimator).
Analyse = Callable[[str, Window], Awaitable[WindowAnalysis | None]]


@dataclass(frozen=True, slots=True)
class Tick:
    """Clock tick for the time-based rules, queued like any event (so in order with them).

    ``t`` is the wall clock (it labels what fires), ``mono`` the monotonic clock (it times it).
    """

    t: float
    mono: float | None = None


@dataclass(slots=True)
class _Item:
    event: LinkEvent | Tick
    analysis: asyncio.Future[WindowAnalysis | None] | None = None


@dataclass(slots=True)
class PipelineStats:
    """Counters for STATUS= lines, the watchdog and the tests."""

    handled: int = 0
    windows: int = 0
    #: Groups of frames processed together (`GROUP_MAX`): windows / groups is the mean group.
    groups: int = 0
    offloaded: int = 0
    alerts: int = 0
    data_lost: int = 0
    #: Events not (fully) processed because of a fault; each is logged with its device.
    errors: int = 0
    telemetry_rejected: int = 0
    #: Windows processed without a row in the event log (the store refused them).
    windows_not_stored: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    #: Offloaded windows per device (the backpressure governor reads the increments).
    offloaded_by_device: dict[str, int] = field(default_factory=dict)


class Pipeline(BackgroundPart):
    """Link events in, stored windows, alerts in the outbox and MQTT updates out."""

    def __init__(
        self,
        *,
        gateway_id: str,
        topics: Topics,
        engine: RuleEngine,
        store: EventSink,
        publisher: PublishSink,
        analyse: Analyse | None = None,
        keep_raw: bool = False,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("pipeline")
        self.gateway_id = gateway_id
        self.topics = topics
        self.engine = engine
        self._store = store
        self._publisher = publisher
        self._analyse = analyse
        self._keep_raw = keep_raw
        self._clock = clock
        self._monotonic = monotonic
        self._drain_timeout_s = drain_timeout_s
        #: Queued events by device (None: ticks), served round-robin.
        self._queue: Lanes[str | None, _Item] = Lanes()
        self._queue_size = queue_size
        self._not_full = asyncio.Event()
        #: Set when an event is queued, an analysis finishes or a drain starts.
        self._wake = asyncio.Event()
        self._draining = False
        self._views: dict[str, DeviceView] = {}
        #: The view of each device last handed to the publisher.
        self._published: dict[str, DeviceView] = {}
        self._drained = asyncio.Event()
        #: (device, kind of fault) already reported as a technical event in this run.
        self._reported: set[tuple[str, str]] = set()
        #: Each device's current boot id, and the resume point last written (boot, next seq).
        self._boots: dict[str, int] = {}
        self._resume_at: dict[str, tuple[int, int]] = {}
        self.stats = PipelineStats()

    async def _wind_down(self) -> None:
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                await self.drain()
        except TimeoutError:
            log.warning("pipeline not drained in time", backlog=self.backlog,
                        timeout_s=self._drain_timeout_s)  # fmt: skip

    @property
    def backlog(self) -> int:
        """Events queued and not yet processed."""
        return len(self._queue)

    @property
    def views(self) -> Mapping[str, DeviceView]:
        """The latest state of every device seen."""
        return dict(self._views)

    def now(self) -> Tick:
        """A tick at the current wall and monotonic time."""
        return Tick(self._clock(), self._monotonic())

    async def submit(self, event: LinkEvent | Tick) -> None:
        """Queue one event (waits while the queue is full); start a window's analysis now if
        fewer than `ANALYSES_PER_DEVICE` events of its device are ahead of it."""
        while len(self._queue) >= self._queue_size:
            self._not_full.clear()
            await self._not_full.wait()
        item = _Item(event)
        # Cancelled before this line: not queued, the caller still holds the event.
        if self._queue.append(getattr(event, "device_id", None), item) <= ANALYSES_PER_DEVICE:
            self._start(item)
        self._wake.set()

    def _start(self, item: _Item) -> None:
        """Hand a raw window to the analyser (once)."""
        event = item.event
        if (
            self._analyse is not None
            and item.analysis is None
            and isinstance(event, FrameReceived)
            and isinstance(event.message, Window)
        ):
            item.analysis = asyncio.ensure_future(self._analyse(event.device_id, event.message))
            item.analysis.add_done_callback(self._analysed)

    def _analysed(self, _analysis: asyncio.Future[WindowAnalysis | None]) -> None:
        self._wake.set()

    async def drain(self) -> None:
        """Process everything queued, then make `run` return."""
        self._draining = True
        self._wake.set()
        await self._drained.wait()

    async def run(self) -> None:
        """Process queued events, in order per device and round-robin over devices, until
        `drain`ed (or cancelled).

        Each turn takes the next device (in round-robin order, among the first `READY_SCAN`
        with events) whose next event can be processed now: a frame whose analysis is done (or
        that needs none) or any other event. A device whose window is still being analysed is
        passed over, so its wait delays no other device; when no device's next event is ready
        the loop waits for an analysis to finish or an event to arrive."""
        while True:
            self._wake.clear()
            if not self._queue:
                if self._draining:
                    self._drained.set()
                    return
                await self._wake.wait()
                continue
            group = self._take_ready()
            if not group:
                await self._wake.wait()
                continue
            if isinstance(group[0].event, FrameReceived):
                self.stats.groups += 1
                await self._frames(group)
            else:
                try:
                    await self._process(group[0])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one event must not stop every device
                    await self._fault(group[0].event, exc)
            for done in group:
                self.stats.handled += 1
                name = type(done.event).__name__
                self.stats.by_type[name] = self.stats.by_type.get(name, 0) + 1

    def _take_ready(self) -> list[_Item]:
        """The next event that can be processed now, alone; or the next frames ready, up to
        `GROUP_MAX`, as one group (each the next of its device). Empty: none is ready."""
        found = self._next_ready(frames_only=False)
        if found is None:
            return []
        group = [self._take(found[0])]
        if not isinstance(group[0].event, FrameReceived):
            return group
        while len(group) < GROUP_MAX and (found := self._next_ready(frames_only=True)):
            group.append(self._take(found[0]))
        return group

    def _next_ready(self, *, frames_only: bool) -> tuple[str | None] | None:
        """(key,) of the first device (in turn, among `READY_SCAN`) whose next event is ready
        (the key None: a tick); None if there is none."""
        for key, item in self._queue.heads(READY_SCAN):
            if isinstance(item.event, FrameReceived):
                if self._ready(item):
                    return (key,)
            elif not frames_only:
                return (key,)
        return None

    def _take(self, key: str | None) -> _Item:
        """``key``'s next event, its analysis started (and the next of that device's)."""
        item = self._queue.pop(key)
        self._not_full.set()
        waiting = self._queue.lane(key)
        if waiting is not None and len(waiting) >= ANALYSES_PER_DEVICE:
            self._start(waiting[ANALYSES_PER_DEVICE - 1])  # moved up to its place
        self._start(item)
        return item

    def _ready(self, item: _Item) -> bool:
        """A frame that can be processed now: its analysis is done, or it needs none."""
        if item.analysis is not None:
            return item.analysis.done()
        if self._analyse is None or not isinstance(item.event, FrameReceived):
            return True
        if isinstance(item.event.message, Window):
            self._start(item)  # not started yet (it moved up): it will be
            return False
        return True

    async def _fault(self, event: LinkEvent | Tick, exc: Exception) -> None:
        """Count and log a fault, and report it once per device and kind as a technical event."""
        self.stats.errors += 1
        device_id = getattr(event, "device_id", None)
        log.error("event not processed", device=device_id, event_type=type(event).__name__,
                  error=f"{type(exc).__name__}: {exc}", where=raised_at(exc))  # fmt: skip
        if device_id is not None:
            await self._report(device_id, type(exc).__name__, f"{type(event).__name__} not"
                               f" processed: {type(exc).__name__}: {exc}")  # fmt: skip

    async def _report(self, device_id: str, kind: str, message: str) -> None:
        """A per-device technical event ("device_fault"), once per device and kind per run."""
        if (device_id, kind) in self._reported:
            return
        self._reported.add((device_id, kind))
        try:
            await self._append(device_fault_event(device_id, kind, message, self._clock()))
        except StoreError as exc:
            log.error(  # noqa: TRY400 - the store says what failed; no traceback
                "device fault not recorded in the event log",
                device=device_id,
                fault=message,
                error=str(exc),
            )

    async def _process(self, item: _Item) -> None:
        """Any event but a frame (frames go through `_frames`)."""
        event = item.event
        if isinstance(event, Tick):
            mono = event.mono if event.mono is not None else self._monotonic()
            await self._alerts(self.engine.tick(event.t, mono))
        elif isinstance(event, HeartRateReceived):
            obs = observation_for_strap(event, self._monotonic())
            await self._alerts(self.engine.observe(obs))
            self._update(event.device_id, last_seen=event.received_at, hr_bpm=obs.hr_bpm)
        elif isinstance(event, LinkUp):
            if event.info is not None:
                self._boots[event.device_id] = event.info.boot_id
            await self._alerts(self.engine.link(self._link_status(event.device_id, True)))
            firmware = event.info.firmware_version if event.info is not None else None
            model_id = event.info.model_id if event.info is not None else None
            self._update(event.device_id, connected=True, firmware=firmware, model_id=model_id)
        elif isinstance(event, LinkDown):
            await self._alerts(self.engine.link(self._link_status(event.device_id, False)))
            self._update(event.device_id, connected=False)
        elif isinstance(event, MessagesLost | SequenceJump | DeviceUntrusted):
            await self._technical(event)
        elif isinstance(event, BatteryLevel):
            self._update(event.device_id, battery_pct=event.percent)
        elif isinstance(event, DeviceRestarted):
            log.info("device restarted", device=event.device_id, seq=event.seq)
        elif isinstance(event, DeviceRemoved):
            await self._removed(event)

    async def _removed(self, event: DeviceRemoved) -> None:
        """A device taken off the paired list or renamed (its link has stopped, nothing more
        comes under its id): its open alerts are cleared (reason ``unpaired``) through the
        event log like any transition, then a ``device_removed`` event says it is no longer
        monitored, and its state here and on the broker is let go."""
        device = event.device_id
        transitions = self.engine.remove(device, self._clock(), self._monotonic())
        try:
            await self._alerts(transitions)
            await self._append(device_removed_event(device, event.renamed_to, self._clock()))
        finally:  # let go even if the event log refused a clear (reported as a fault)
            for held in (self._views, self._published, self._boots, self._resume_at):
                held.pop(device, None)
            self._reported = {r for r in self._reported if r[0] != device}
            self._publisher.forget(device)
        cleared = [t.kind.value for t in transitions]
        if event.renamed_to is None:
            log.info("device taken off the paired list: no longer served", device=device,
                     alerts_cleared=cleared)  # fmt: skip
        else:
            log.info("device renamed: no longer served under its old id", device=device,
                     renamed_to=event.renamed_to, alerts_cleared=cleared)  # fmt: skip

    async def _technical(self, event: MessagesLost | SequenceJump | DeviceUntrusted) -> None:
        """A loss, a sequence jump or an untrusted device: a technical event, never silent."""
        now, device = self._clock(), event.device_id
        if isinstance(event, MessagesLost):
            self.stats.data_lost += event.count
            # The range is given up: a restart must not ask for it (nor report it) again.
            cursor = self._cursor(device, (event.first + event.count) % SEQ_MODULUS, now)
            event_id = await self._append(
                data_lost_event(device, event.first, event.count, now, event.cause),
                cursor=None if event.first < 0 else cursor,
            )
            log.warning("messages lost on the link", device=device, first=event.first,
                        count=event.count, cause=event.cause, event_id=event_id)  # fmt: skip
        elif isinstance(event, SequenceJump):
            event_id = await self._append(
                sequence_jump_event(device, event.expected, event.got, event.bound, now)
            )
            log.warning("implausible sequence jump", device=device, expected=event.expected,
                        got=event.got, bound=event.bound, event_id=event_id)  # fmt: skip
        else:
            event_id = await self._append(untrusted_event(device, event.reason, event.detail, now))
            log.error("device not trusted: its data is not taken", device=device,
                      reason=event.reason, detail=event.detail, event_id=event_id)  # fmt: skip

    async def _frames(self, items: Sequence[_Item]) -> None:
        """Frames in the order given: each one's window is recorded (the group's writes are
        queued together, one commit), then each goes through the rules and to the publisher.
        A fault is contained to its frame."""
        records: list[tuple[WindowRecord, DeviceCursor | None]] = []
        prepared: list[tuple[_Item, WindowAnalysis | None]] = []
        for item in items:
            try:
                analysis = await item.analysis if item.analysis is not None else None
                records.append(await self._record(item.event, analysis))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one event must not stop every device
                await self._fault(item.event, exc)
                continue
            prepared.append((item, analysis))
        answers = await self._store.record_windows(records) if records else []
        for (item, analysis), answer in zip(prepared, answers, strict=True):
            try:
                await self._frame(item.event, analysis, answer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one event must not stop every device
                await self._fault(item.event, exc)

    async def _record(
        self, event: LinkEvent | Tick, analysis: WindowAnalysis | None
    ) -> tuple[WindowRecord, DeviceCursor | None]:
        """Count a frame; its window record and the device's new resume point."""
        assert isinstance(event, FrameReceived)
        message = event.message
        self.stats.windows += 1
        if isinstance(message, Window):
            self.stats.offloaded += 1
            by_device = self.stats.offloaded_by_device
            by_device[event.device_id] = by_device.get(event.device_id, 0) + 1
        s = summary_of(message)
        if (problem := clock_problem(s, event.received_at)) is not None:
            log.warning("implausible wearable clock", device=event.device_id, problem=problem)
            await self._report(event.device_id, "clock", problem)
        record = record_for_frame(
            event.device_id, message, event.received_at, analysis, keep_raw=self._keep_raw
        )
        if event.boot_id is not None:
            self._boots[event.device_id] = event.boot_id
        return record, self._cursor(event.device_id, (s.seq + 1) % SEQ_MODULUS, event.received_at)

    async def _frame(
        self, event: LinkEvent | Tick, analysis: WindowAnalysis | None, stored: int | Exception
    ) -> None:
        """A recorded frame (``stored``: its window id, or why it is not stored) through the
        rules, the event log's alerts and the publisher."""
        assert isinstance(event, FrameReceived)
        message = event.message
        s = summary_of(message)
        window_id: str | None = None
        if isinstance(stored, StoreError):
            # The window still reaches the rules and MQTT: an alert must not wait on the log.
            self.stats.windows_not_stored += 1
            log.error("window not stored", device=event.device_id, seq=s.seq, error=str(stored))
            await self._report(event.device_id, "store", f"window {s.seq} not stored: {stored}")
        elif isinstance(stored, Exception):
            raise stored
        else:
            window_id = str(stored)
        obs = observation_for_frame(
            event.device_id,
            message,
            event.received_at,
            window_id=window_id,
            analysis=analysis,
            mono=self._monotonic(),
        )
        await self._alerts(self.engine.observe(obs))
        try:
            self._publisher.publish_telemetry(
                telemetry_for(event.device_id, message, event.received_at, obs)
            )
        except (TopicError, ValidationError) as exc:
            self.stats.telemetry_rejected += 1
            if self.stats.telemetry_rejected == 1:
                log.warning("telemetry not published", device=event.device_id, error=str(exc))
        self._update(
            event.device_id,
            connected=True,
            last_seen=event.received_at,
            battery_pct=s.battery,
            hr_bpm=obs.hr_bpm,
            activity=activity_name(obs),
            activity_confidence=activity_confidence(obs),
            signal_quality=None if obs.signal_quality is None else obs.signal_quality / 100,
        )

    async def _alerts(self, transitions: Sequence[AlertTransition]) -> None:
        for transition in transitions:
            self.stats.alerts += 1
            event_id = await self._append(alert_event(transition))
            # event_id: the id subscribers see; EVENT_ID= in the journal (gatewayd/logs.py).
            log.info("alert", device=transition.device_id, kind=transition.kind.value,
                     state=transition.state, severity=transition.severity,
                     event_id=event_id)  # fmt: skip

    async def _append(self, event: NewEvent, cursor: DeviceCursor | None = None) -> str:
        """Store a device event with its outbox row, wake the publisher; return its id."""
        assert event.device_id is not None
        # Durable first (the outbox row commits with the event), then wake the publisher.
        event_id = await self._store.append_event(event, cursor=cursor)
        self._publisher.notify()
        return event_id

    def _cursor(self, device_id: str, next_seq: int, t: float) -> DeviceCursor | None:
        """Where ``device_id`` resumes after ``next_seq - 1``, if that moves its cursor forward.

        Never backwards: a loss reported late (frames dropped on a full queue) must not make a
        restart ask again for windows already stored.
        """
        boot = self._boots.get(device_id)
        if boot is None:
            return None
        last = self._resume_at.get(device_id)
        if last is not None and last[0] == boot:
            ahead = (next_seq - last[1]) % SEQ_MODULUS
            if ahead == 0 or ahead >= SEQ_MODULUS // 2:
                return None
        self._resume_at[device_id] = (boot, next_seq)
        return DeviceCursor(boot, next_seq, t)

    def _link_status(self, device_id: str, connected: bool) -> LinkStatus:
        return LinkStatus(device_id, self._clock(), connected, mono=self._monotonic())

    def _update(self, device_id: str, **changes: Any) -> None:
        old = self._views.get(device_id) or DeviceView(device_id)
        # None means "no longer known" for these, "not in this update" for the rest.
        clearable = ("hr_bpm", "activity_confidence")
        changes = {k: v for k, v in changes.items() if v is not None or k in clearable}
        new = replace(old, **changes)
        if new == old:
            return
        self._views[device_id] = new
        if not state_changed(self._published.get(device_id), new):
            return
        try:
            self._publisher.update_state(device_state(new, self.gateway_id, self._clock()))
            self._published[device_id] = new
        except (TopicError, ValidationError) as exc:
            log.warning("device state not published", device=device_id, error=str(exc))
