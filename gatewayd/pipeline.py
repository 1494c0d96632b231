"""The glue between link events and the rest: analyse, log, evaluate rules, publish.

One `Pipeline` consumes `LinkEvent`s in arrival order (so in order per device) in two stages
joined by one bounded queue:

1. ``submit`` (intake): a raw WINDOW is handed to the inference worker at once, so windows of
   several devices can be batched together; every event is queued with its pending result.
2. ``run`` (processing): in the same order, waits for the window's result, records the window
   in the store, builds an `Observation`, feeds the `RuleEngine`, writes each alert transition
   to the event log (outbox) and only then notifies the publisher; telemetry and the retained
   device state go to the publisher best effort.

The decisions (what HR/activity a window has, what the rules see, what is published) are pure
functions below, tested with literals; the store, the publisher and the analyser are injected.

`InferenceWorker` runs the gateway's analysis of offloaded windows
(`gatewayd.inference.analysis.analyse_windows`: the full model, the heart-rate fusion, the
gateway's own tracker for windows that arrive without a heart rate) in a worker thread, batching
windows across devices up to ``max_batch`` or ``max_wait_ms``. `plan_backpressure` (pure)
decides which wearables to throttle while that worker's queue stays full, and
`throttled_policy` what their offload policy becomes.
`StoreOutbox` adapts the store's outbox to what the publisher reads: device events become
`Alert`s, gateway-level events (no device) `GatewayAlert`s.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, cast

import numpy as np
import structlog
from pydantic import ValidationError

from gatewayd.activity import ActivityGroup, group_name
from gatewayd.config import InferenceConfig
from gatewayd.inference.analysis import (
    HrFusion,
    WindowAnalysis,
    analyse_windows,
    analysis_from_prediction,
)
from gatewayd.inference.session import ModelSession
from gatewayd.link.events import (
    BatteryLevel,
    DeviceRestarted,
    FrameReceived,
    HeartRateReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    MessagesLost,
)
from gatewayd.protocol.messages import (
    UNKNOWN_PERCENT,
    MessageFlags,
    Summary,
    Window,
    summary_of,
)
from gatewayd.publish.client import OutboxItem as PublishItem
from gatewayd.publish.payloads import (
    MESSAGE_MAX_CHARS,
    ActivityName,
    Alert,
    DeviceState,
    GatewayAlert,
    Telemetry,
)
from gatewayd.publish.topics import TopicError, Topics
from gatewayd.rules.alerts import AlertTransition
from gatewayd.rules.engine import RuleEngine
from gatewayd.rules.inputs import LinkStatus, Observation
from gatewayd.signals.heart_rate import HrState
from gatewayd.store.records import NewEvent, StoredEvent, WindowRecord, window_record_from_message

__all__ = [
    "Analyse",
    "BackpressureConfig",
    "BackpressureState",
    "DeviceView",
    "EventSink",
    "InferenceWorker",
    "Pipeline",
    "PublishSink",
    "StoreOutbox",
    "Tick",
    "WindowAnalysis",
    "alert_event",
    "alert_payload",
    "analysis_from_prediction",
    "data_lost_event",
    "device_state",
    "gateway_alert_payload",
    "gateway_event",
    "observation_for_frame",
    "observation_for_strap",
    "plan_backpressure",
    "summary_hr_confidence",
    "telemetry_for",
    "throttled_policy",
    "window_time",
]

log = structlog.get_logger("gatewayd.pipeline")

#: Bound of the queue between the two stages (events, all devices together).
DEFAULT_QUEUE_SIZE: Final = 1024

# --- pure decisions ------------------------------------------------------------------------------


def window_time(summary: Summary, received_at: float) -> float:
    """Wall-clock start of a window: the wearable's clock once synced, else arrival - length."""
    if summary.flags & MessageFlags.CLOCK_SYNCED:
        return summary.t_ms / 1000
    return received_at - summary.window_ms / 1000


_KNOWN_GROUPS: Final = frozenset(int(g) for g in ActivityGroup if g is not ActivityGroup.UNKNOWN)


def _known_group(activity: int | None) -> int | None:
    """A known group's code, or None for unknown (255, or anything that is not a group)."""
    return activity if activity in _KNOWN_GROUPS else None


def summary_hr_confidence(summary: Summary) -> float:
    """Confidence of a SUMMARY's heart rate: its signal quality, 0-100 -> 0-1.

    A wearable that reports no quality (255) is taken at its word, as a strap is (1.0): the
    quality gate (rules.hr.min_signal_quality) lets such windows through too.
    """
    if summary.signal_quality == UNKNOWN_PERCENT:
        return 1.0
    return summary.signal_quality / 100


def observation_for_frame(
    device_id: str,
    message: Summary | Window,
    received_at: float,
    *,
    window_id: str | None,
    analysis: WindowAnalysis | None = None,
) -> Observation:
    """What the rules see for one frame: the gateway's analysis if any, else the wearable's."""
    s = summary_of(message)
    quality = None if s.signal_quality == UNKNOWN_PERCENT else s.signal_quality
    acc = None
    acc_rate = 32.0
    if isinstance(message, Window) and message.acc_lsb_per_g > 0:
        acc = message.acc.astype(np.float64) / message.acc_lsb_per_g
        acc_rate = float(message.acc_rate_hz)
    common: dict[str, Any] = {
        "device_id": device_id,
        "seq": s.seq,
        "t": received_at,
        "signal_quality": quality,
        "off_wrist": bool(s.flags & MessageFlags.OFF_WRIST),
        "battery": s.battery,
        "charging": bool(s.flags & MessageFlags.CHARGING),
        "window_id": window_id,
        "acc": acc,
        "acc_rate_hz": acc_rate,
        # The samples' own time (the wearable's clock once synced): bursts of late windows
        # still cover the seconds they were measured in (the fall rule's stillness).
        "acc_end": window_time(s, received_at) + s.window_ms / 1000,
        "window_s": s.window_ms / 1000,
    }
    if analysis is not None:
        activity = analysis.activity
        activity_conf = analysis.activity_confidence
        if activity is None:  # the signal estimator knows no activity: keep the wearable's
            activity = s.activity
            activity_conf = s.activity_confidence
        return Observation(
            **common,
            hr_bpm=analysis.hr_bpm,
            hr_source=analysis.hr_source,
            hr_confidence=analysis.hr_confidence,
            activity=_known_group(activity),
            activity_confidence=activity_conf,
            model_id=analysis.model_id,
        )
    # A summary: the wearable's own values. activity_conf_e4 is its local model's probability
    # of the group; how far its heart rate can be trusted is what its signal quality says.
    return Observation(
        **common,
        hr_bpm=s.hr_bpm,
        hr_source="model",
        hr_confidence=summary_hr_confidence(s),
        activity=_known_group(s.activity),
        activity_confidence=s.activity_confidence,
    )


def observation_for_strap(event: HeartRateReceived) -> Observation:
    """A standard heart-rate strap's measurement, as an observation with source "strap"."""
    m = event.measurement
    bpm = float(m.hr_bpm) if m.hr_bpm else None
    return Observation(
        device_id=event.device_id,
        seq=0,
        t=event.received_at,
        hr_bpm=bpm,
        hr_source="strap",
        hr_confidence=1.0,
        off_wrist=m.sensor_contact is False,
    )


def record_for_frame(
    device_id: str,
    message: Summary | Window,
    received_at: float,
    analysis: WindowAnalysis | None,
    *,
    keep_raw: bool,
) -> WindowRecord:
    """The store row of one frame: the wearable's values, overridden by the gateway's analysis."""
    record = window_record_from_message(device_id, message, received_at, keep_raw=keep_raw)
    if analysis is None:
        return record
    activity = analysis.activity
    return replace(
        record,
        hr_bpm=analysis.hr_bpm,
        hr_source="gateway_model" if analysis.hr_source == "model" else "signal",
        activity=group_name(activity) if activity is not None else record.activity,
        activity_conf=analysis.activity_confidence
        if activity is not None
        else record.activity_conf,
        model_id=analysis.model_id,
        result=analysis.result,
    )


def _fraction(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, value))


def _bpm(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or not 0 <= value <= 300:
        return None
    return round(value, 1)


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _activity_name(obs: Observation) -> ActivityName:
    """The group name an observation reports: "rest", "light", "vigorous" or "unknown"."""
    return cast(ActivityName, group_name(obs.activity))


def _activity_confidence(obs: Observation) -> float | None:
    """The probability of the reported group; None when the group is unknown."""
    return None if obs.activity is None else _fraction(obs.activity_confidence)


def telemetry_for(
    device_id: str, message: Summary | Window, received_at: float, obs: Observation
) -> Telemetry:
    """One window's telemetry (QoS 0) from the observation the rules saw."""
    s = summary_of(message)
    source: Literal["device_model", "gateway_model", "signal"] | None
    if obs.hr_bpm is None:
        source = None
    elif obs.hr_source == "signal":
        source = "signal"
    elif isinstance(message, Window):
        source = "gateway_model"
    else:
        source = "device_model"
    return Telemetry(
        device_id=device_id,
        seq=s.seq,
        t=_utc(window_time(s, received_at)),
        hr_bpm=_bpm(obs.hr_bpm),
        hr_source=source,
        activity=_activity_name(obs),
        activity_confidence=_activity_confidence(obs),
        confidence=_fraction(obs.hr_confidence if obs.hr_bpm is not None else None),
        entropy_bits=s.entropy_bits,
        offloaded=isinstance(message, Window),
        signal_quality=None if obs.signal_quality is None else obs.signal_quality / 100,
        battery_pct=s.battery,
        model_id=obs.model_id,
    )


@dataclass(frozen=True, slots=True)
class DeviceView:
    """The latest known state of one device, as the retained state topic shows it."""

    device_id: str
    connected: bool = False
    last_seen: float | None = None
    battery_pct: int | None = None
    hr_bpm: float | None = None
    activity: ActivityName | None = None
    activity_confidence: float | None = None
    signal_quality: float | None = None
    firmware: str | None = None
    model_id: str | None = None


def device_state(view: DeviceView, gateway_id: str, now: float) -> DeviceState:
    """The `DeviceState` payload of a view at ``now``."""
    return DeviceState(
        device_id=view.device_id,
        gateway_id=gateway_id,
        connected=view.connected,
        t=_utc(now),
        last_seen=None if view.last_seen is None else _utc(view.last_seen),
        battery_pct=view.battery_pct,
        hr_bpm=_bpm(view.hr_bpm),
        activity=view.activity,
        activity_confidence=_fraction(view.activity_confidence),
        signal_quality=_fraction(view.signal_quality),
        firmware=view.firmware,
        model_id=view.model_id,
    )


def alert_event(transition: AlertTransition) -> NewEvent:
    """The event-log entry of one alert transition (its payload is `to_payload()`)."""
    return NewEvent(
        kind=transition.kind.value,
        severity=transition.severity,
        state=transition.state,
        payload=transition.to_payload(),
        device_id=transition.device_id,
        t_ms=round(transition.t * 1000),
    )


def data_lost_event(device_id: str, first: int, count: int, t: float) -> NewEvent:
    """A technical event for messages the link could not recover: loss is never silent."""
    return NewEvent(
        kind="data_lost",
        severity="warning",
        state="raised",
        payload={
            "device_id": device_id,
            "kind": "data_lost",
            "category": "technical",
            "t": t,
            "reason": "messages_lost",
            "evidence": {"first": first, "count": count},
        },
        device_id=device_id,
        t_ms=round(t * 1000),
    )


def gateway_event(kind: str, severity: str, message: str, t: float, **facts: Any) -> NewEvent:
    """A gateway-level technical event (store recovered, model missing, ...): no device."""
    return NewEvent(
        kind=kind,
        severity=severity,
        state="raised",
        payload={
            "kind": kind,
            "category": "technical",
            "t": t,
            "reason": message,
            "evidence": dict(facts),
        },
        t_ms=round(t * 1000),
    )


def alert_payload(event: StoredEvent, gateway_id: str) -> Alert:
    """The MQTT `Alert` of a stored device event (raises ValidationError if it cannot be one)."""
    payload = event.payload
    evidence = dict(payload.get("evidence") or {})
    for key in ("episode", "reason", "raised_at"):
        if key in payload:
            evidence.setdefault(key, payload[key])
    t = payload.get("t")
    return Alert.model_validate(
        {
            "event_id": event.id,
            "device_id": event.device_id,
            "gateway_id": gateway_id,
            "kind": event.kind,
            "category": payload.get("category", "technical"),
            "severity": event.severity,
            "state": event.state,
            "t": _utc(float(t) if isinstance(t, int | float) else event.created_at),
            "evidence": evidence,
        }
    )


def gateway_alert_payload(event: StoredEvent, gateway_id: str) -> GatewayAlert:
    """The MQTT `GatewayAlert` of a stored gateway-level event (raises ValidationError if not)."""
    payload = event.payload
    message = str(payload.get("reason") or event.kind)
    if len(message) > MESSAGE_MAX_CHARS:
        message = message[: MESSAGE_MAX_CHARS - 1] + "…"
    t = payload.get("t")
    return GatewayAlert.model_validate(
        {
            "event_id": event.id,
            "gateway_id": gateway_id,
            "kind": event.kind,
            "severity": event.severity,
            "state": event.state,
            "t": _utc(float(t) if isinstance(t, int | float) else event.created_at),
            "message": message,
            "details": dict(payload.get("evidence") or {}),
        }
    )


# --- the injected I/O ----------------------------------------------------------------------------


class EventSink(Protocol):
    """The parts of `gatewayd.store.Store` the pipeline writes to."""

    async def record_window(self, window: WindowRecord) -> int:
        """Store one window; return its id."""
        ...

    async def append_event(self, event: NewEvent, *, topic: str) -> str:
        """Store one event and its outbox row; return the event id."""
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


#: Analyse one offloaded window of one device (model or signal estimator).
Analyse = Callable[[str, Window], Awaitable[WindowAnalysis | None]]


@dataclass(frozen=True, slots=True)
class Tick:
    """Clock tick for the time-based rules, queued like any event (so in order with them)."""

    t: float


@dataclass(slots=True)
class _Item:
    event: LinkEvent | Tick | None  # None: the drain marker
    analysis: asyncio.Future[WindowAnalysis | None] | None = None


@dataclass(slots=True)
class PipelineStats:
    """Counters for STATUS= lines, the watchdog and the tests."""

    handled: int = 0
    windows: int = 0
    offloaded: int = 0
    alerts: int = 0
    data_lost: int = 0
    errors: int = 0
    telemetry_rejected: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    #: Offloaded windows per device (the backpressure governor reads the increments).
    offloaded_by_device: dict[str, int] = field(default_factory=dict)


class Pipeline:
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway_id = gateway_id
        self.topics = topics
        self.engine = engine
        self._store = store
        self._publisher = publisher
        self._analyse = analyse
        self._keep_raw = keep_raw
        self._clock = clock
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._views: dict[str, DeviceView] = {}
        self._drained = asyncio.Event()
        self.stats = PipelineStats()

    @property
    def backlog(self) -> int:
        """Events queued and not yet processed."""
        return self._queue.qsize()

    @property
    def views(self) -> Mapping[str, DeviceView]:
        """The latest state of every device seen."""
        return dict(self._views)

    async def submit(self, event: LinkEvent | Tick) -> None:
        """Queue one event (waits while the queue is full); start a window's analysis now."""
        analysis = None
        if (
            self._analyse is not None
            and isinstance(event, FrameReceived)
            and isinstance(event.message, Window)
        ):
            analysis = asyncio.ensure_future(self._analyse(event.device_id, event.message))
        try:
            await self._queue.put(_Item(event, analysis))
        except asyncio.CancelledError:
            # Not queued: the caller still holds the event (and will submit it again).
            if analysis is not None:
                analysis.cancel()
            raise

    async def drain(self) -> None:
        """Process everything queued so far, then make `run` return."""
        await self._queue.put(_Item(None))
        await self._drained.wait()

    async def run(self) -> None:
        """Process queued events in order until `drain`ed (or cancelled)."""
        while True:
            item = await self._queue.get()
            if item.event is None:
                self._drained.set()
                return
            try:
                await self._process(item)
            except asyncio.CancelledError:
                raise
            except (ValueError, TypeError, TopicError, ValidationError) as exc:
                # One bad input must not stop the gateway; it is counted and logged.
                self.stats.errors += 1
                log.exception("pipeline: event not processed", error=str(exc),
                              event=type(item.event).__name__)  # fmt: skip
            self.stats.handled += 1
            name = type(item.event).__name__
            self.stats.by_type[name] = self.stats.by_type.get(name, 0) + 1

    async def _process(self, item: _Item) -> None:
        event = item.event
        if isinstance(event, Tick):
            await self._alerts(self.engine.tick(event.t))
        elif isinstance(event, FrameReceived):
            analysis = await item.analysis if item.analysis is not None else None
            await self._frame(event, analysis)
        elif isinstance(event, HeartRateReceived):
            obs = observation_for_strap(event)
            await self._alerts(self.engine.observe(obs))
            self._update(event.device_id, last_seen=event.received_at, hr_bpm=obs.hr_bpm)
        elif isinstance(event, LinkUp):
            await self._alerts(self.engine.link(LinkStatus(event.device_id, self._clock(), True)))
            firmware = event.info.firmware_version if event.info is not None else None
            model_id = event.info.model_id if event.info is not None else None
            self._update(event.device_id, connected=True, firmware=firmware, model_id=model_id)
        elif isinstance(event, LinkDown):
            now = self._clock()
            await self._alerts(self.engine.link(LinkStatus(event.device_id, now, False)))
            self._update(event.device_id, connected=False)
        elif isinstance(event, MessagesLost):
            self.stats.data_lost += event.count
            event_id = await self._append(data_lost_event(event.device_id, event.first,
                                                          event.count, self._clock()))  # fmt: skip
            log.warning("messages lost on the link", device=event.device_id,
                        first=event.first, count=event.count, event_id=event_id)  # fmt: skip
        elif isinstance(event, BatteryLevel):
            self._update(event.device_id, battery_pct=event.percent)
        elif isinstance(event, DeviceRestarted):
            log.info("device restarted", device=event.device_id, seq=event.seq)

    async def _frame(self, event: FrameReceived, analysis: WindowAnalysis | None) -> None:
        message = event.message
        self.stats.windows += 1
        if isinstance(message, Window):
            self.stats.offloaded += 1
            by_device = self.stats.offloaded_by_device
            by_device[event.device_id] = by_device.get(event.device_id, 0) + 1
        record = record_for_frame(
            event.device_id, message, event.received_at, analysis, keep_raw=self._keep_raw
        )
        window_id = await self._store.record_window(record)
        obs = observation_for_frame(
            event.device_id, message, event.received_at, window_id=str(window_id),
            analysis=analysis,
        )  # fmt: skip
        await self._alerts(self.engine.observe(obs))
        try:
            self._publisher.publish_telemetry(
                telemetry_for(event.device_id, message, event.received_at, obs)
            )
        except (TopicError, ValidationError) as exc:
            self.stats.telemetry_rejected += 1
            if self.stats.telemetry_rejected == 1:
                log.warning("telemetry not published", device=event.device_id, error=str(exc))
        s = summary_of(message)
        self._update(
            event.device_id,
            connected=True,
            last_seen=event.received_at,
            battery_pct=s.battery,
            hr_bpm=obs.hr_bpm,
            activity=_activity_name(obs),
            activity_confidence=_activity_confidence(obs),
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

    async def _append(self, event: NewEvent) -> str:
        """Store a device event with its outbox row, wake the publisher; return its id."""
        assert event.device_id is not None
        # Durable first (the outbox row commits with the event), then wake the publisher.
        event_id = await self._store.append_event(event, topic=self.topics.alerts(event.device_id))
        self._publisher.notify()
        return event_id

    def _update(self, device_id: str, **changes: Any) -> None:
        old = self._views.get(device_id) or DeviceView(device_id)
        # None means "no longer known" for these, "not in this update" for the rest.
        clearable = ("hr_bpm", "activity_confidence")
        changes = {k: v for k, v in changes.items() if v is not None or k in clearable}
        new = replace(old, **changes)
        if new == old:
            return
        self._views[device_id] = new
        try:
            self._publisher.update_state(device_state(new, self.gateway_id, self._clock()))
        except (TopicError, ValidationError) as exc:
            log.warning("device state not published", device=device_id, error=str(exc))


# --- backpressure: fewer offloads from the busiest wearables while inference is saturated -------


@dataclass(frozen=True, slots=True)
class BackpressureConfig:
    """When the inference queue counts as saturated or relaxed, and how far policies move."""

    #: Queue fill (backlog / capacity) at or above which a check counts as saturated.
    high_fraction: float = 0.75
    #: Queue fill at or below which a check counts as relaxed.
    low_fraction: float = 0.25
    #: Consecutive saturated checks before one device is throttled one level more.
    saturated_checks: int = 2
    #: Consecutive relaxed checks before one device is relaxed one level.
    relaxed_checks: int = 3
    max_level: int = 4
    #: Per level: entropy threshold up by this much, minimum confidence down by this much.
    tau_step_mbits: int = 500
    conf_step_e4: int = 1000


@dataclass(frozen=True, slots=True)
class BackpressureState:
    """Throttle level per device (absent = 0) and the current saturated/relaxed streaks."""

    levels: Mapping[str, int] = field(default_factory=dict)
    saturated: int = 0
    relaxed: int = 0


def plan_backpressure(
    state: BackpressureState,
    cfg: BackpressureConfig,
    *,
    backlog: int,
    capacity: int,
    offloads: Mapping[str, int],
) -> tuple[BackpressureState, dict[str, int]]:
    """One periodic check: the new state and the devices whose throttle level changes.

    ``offloads`` are the windows each device offloaded since the last check. While saturated,
    the busiest device that can still be throttled goes one level up (one device per streak);
    while relaxed, the most throttled device goes one level down.
    """
    fill = backlog / capacity if capacity > 0 else 0.0
    levels = dict(state.levels)
    if fill >= cfg.high_fraction:
        saturated = state.saturated + 1
        if saturated < cfg.saturated_checks:
            return BackpressureState(levels, saturated, 0), {}
        candidates = [
            (n, device)
            for device, n in offloads.items()
            if n > 0 and levels.get(device, 0) < cfg.max_level
        ]
        if not candidates:
            return BackpressureState(levels, saturated, 0), {}
        _, busiest = max(candidates, key=lambda c: (c[0], c[1]))
        levels[busiest] = levels.get(busiest, 0) + 1
        return BackpressureState(levels, 0, 0), {busiest: levels[busiest]}
    if fill <= cfg.low_fraction and levels:
        relaxed = state.relaxed + 1
        if relaxed < cfg.relaxed_checks:
            return BackpressureState(levels, 0, relaxed), {}
        _, device = max((level, d) for d, level in levels.items())
        levels[device] -= 1
        if levels[device] == 0:
            del levels[device]
        return BackpressureState(levels, 0, 0), {device: levels.get(device, 0)}
    return BackpressureState(levels, 0, 0), {}


def throttled_policy(
    base_tau_mbits: int, base_min_conf_e4: int, level: int, cfg: BackpressureConfig
) -> tuple[int, int]:
    """(tau_mbits, min_conf_e4) at a throttle level: offload only harder windows."""
    tau = min(65_535, base_tau_mbits + level * cfg.tau_step_mbits)
    conf = max(0, base_min_conf_e4 - level * cfg.conf_step_e4)
    return tau, conf


# --- the inference worker ------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    device_id: str
    window: Window
    future: asyncio.Future[WindowAnalysis | None]


@dataclass(slots=True)
class WorkerStats:
    """Batches run, windows analysed, and how often the queue was full."""

    batches: int = 0
    windows: int = 0
    largest_batch: int = 0
    full_waits: int = 0
    model_failures: int = 0


class InferenceWorker:
    """Batches offloaded windows across devices and analyses them in a worker thread.

    The analysis itself is `gatewayd.inference.analysis.analyse_windows` (the same code
    `gatewayd eval` scores): the full model when there is a `ModelSession` (activity, and a heart
    rate fused with the wearable's own estimate, `InferenceConfig.heart_rate`), the wearable's
    estimate alone without one (degraded mode), and the gateway's own tracker (one state per
    device) for windows that arrive without a heart rate. Batches run one at a time in a thread
    (ONNX Runtime and scipy block), so windows of one device are analysed in arrival order.
    """

    def __init__(self, session: ModelSession | None, config: InferenceConfig) -> None:
        self.session = session
        self.fusion = HrFusion.of(config)
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_ms / 1000
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(config.queue_size)
        self._states: dict[str, HrState] = {}
        self.stats = WorkerStats()

    @property
    def model_id(self) -> str | None:
        """The model in use, or None in degraded mode."""
        return None if self.session is None else self.session.model_id

    @property
    def backlog(self) -> int:
        """Windows waiting for a batch."""
        return self._queue.qsize()

    async def analyse(self, device_id: str, window: Window) -> WindowAnalysis | None:
        """Queue one window (waits while the queue is full) and return its analysis."""
        future: asyncio.Future[WindowAnalysis | None] = asyncio.get_running_loop().create_future()
        if self._queue.full():
            self.stats.full_waits += 1
            if self.stats.full_waits == 1 or self.stats.full_waits % 100 == 0:
                log.warning(
                    "inference queue full: offloaded windows wait",
                    queue_size=self._queue.maxsize,
                    waits=self.stats.full_waits,
                )
        await self._queue.put(_Job(device_id, window, future))
        return await future

    async def run(self) -> None:
        """Take batches off the queue and analyse them, until cancelled."""
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            try:
                # Blocking (ONNX Runtime, scipy): in a thread, never on the event loop.
                results = await asyncio.to_thread(self._run_batch, batch)
            except BaseException:
                for job in batch:
                    job.future.cancel()
                raise
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
            self.stats.batches += 1
            self.stats.windows += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

    def _run_batch(self, batch: Sequence[_Job]) -> list[WindowAnalysis | None]:
        """Analyse one batch. Runs in a worker thread (one batch at a time)."""
        windows = [(job.device_id, job.window) for job in batch]
        answer = analyse_windows(windows, self._states, self.session, self.fusion)
        if answer.model_error is not None and self.session is not None:
            self.stats.model_failures += 1
            log.error("model failed on a batch; using the signal estimate",
                      model_id=self.session.model_id, error=answer.model_error)  # fmt: skip
        self._states.update(answer.states)
        return answer.analyses


# --- the outbox, as the publisher reads it -------------------------------------------------------


class _OutboxStore(Protocol):
    async def pending_outbox(self, limit: int = 100) -> Sequence[Any]: ...

    async def mark_published(self, event_ids: Sequence[str]) -> int: ...

    async def record_attempts(self, event_ids: Sequence[str]) -> None: ...


class StoreOutbox:
    """`gatewayd.publish.OutboxSource` over the store: stored events become MQTT payloads.

    A device event becomes an `Alert` (``devices/<device_id>/alerts``), a gateway-level event
    (no device) a `GatewayAlert` (``<base>/alerts``). An event that cannot be a payload is
    logged and marked done, so that it never blocks the alerts behind it.
    """

    def __init__(self, store: _OutboxStore, gateway_id: str) -> None:
        self._store = store
        self._gateway_id = gateway_id

    async def pending(self, limit: int) -> Sequence[PublishItem]:
        """Up to ``limit`` pending events, oldest first, as publishable items."""
        out: list[PublishItem] = []
        while not out:
            rows = await self._store.pending_outbox(limit)
            skipped: list[str] = []
            for row in rows:
                event: StoredEvent = row.event
                try:
                    payload: Alert | GatewayAlert = (
                        gateway_alert_payload(event, self._gateway_id)
                        if event.device_id is None
                        else alert_payload(event, self._gateway_id)
                    )
                except ValidationError as exc:
                    log.error("stored event cannot be published as an alert; skipped",  # noqa: TRY400
                              event_id=event.id, device=event.device_id,
                              error=str(exc))  # fmt: skip
                    skipped.append(event.id)
                    continue
                out.append(PublishItem(event.id, event.device_id, payload.to_json()))
            if skipped:
                await self._store.mark_published(skipped)
            if not skipped:
                break
        return out

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        """The broker acknowledged these events."""
        await self._store.mark_published(event_ids)

    async def record_attempt(self, event_ids: Sequence[str]) -> None:
        """One more publish attempt for these events (the outbox's ``attempts`` column)."""
        await self._store.record_attempts(event_ids)
