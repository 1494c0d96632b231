"""gatewayd.pipeline: pure decisions with literals; the Pipeline and worker with scripted fakes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from structlog.testing import capture_logs

from gatewayd.activity import ActivityGroup
from gatewayd.config import InferenceConfig
from gatewayd.ids import new_event_id
from gatewayd.inference import ModelRegistry, ModelSession, decode
from gatewayd.inference.analysis import WindowAnalysis, analysis_from_prediction
from gatewayd.inference.backpressure import (
    BackpressureConfig,
    BackpressureState,
    plan_backpressure,
    throttled_policy,
)
from gatewayd.inference.cards import ACTIVITY_CLASSES, OutputSpec
from gatewayd.inference.worker import InferenceWorker
from gatewayd.link.connection import LinkSettings
from gatewayd.link.events import (
    BatteryLevel,
    DeviceRemoved,
    DeviceUntrusted,
    FrameReceived,
    HeartRateReceived,
    LinkDown,
    LinkUp,
    MessagesLost,
    SequenceJump,
)
from gatewayd.link.manager import LinkManager
from gatewayd.link.registry import PairedDevice
from gatewayd.mapping import (
    alert_event,
    data_lost_event,
    gateway_event,
    observation_for_frame,
    observation_for_strap,
    record_for_frame,
    sequence_jump_event,
    untrusted_event,
    window_time,
)
from gatewayd.pipeline import Pipeline, Tick
from gatewayd.protocol.control import SetPolicy
from gatewayd.protocol.heart_rate import HeartRateMeasurement
from gatewayd.protocol.messages import MessageFlags, SampleFormat, Summary, Window
from gatewayd.publish.build import alert_payload, gateway_alert_payload, telemetry_for
from gatewayd.publish.outbox import StoreOutbox
from gatewayd.publish.payloads import MESSAGE_MAX_CHARS, DeviceState, GatewayAlert, Telemetry
from gatewayd.publish.topics import Topics
from gatewayd.rules.config import RulesConfig
from gatewayd.rules.engine import RuleEngine
from gatewayd.store.records import DeviceCursor, NewEvent, StoredEvent, WindowRecord
from tests.test_inference import install_tiny_model

T0 = 1_700_000_000.0


def summary(seq: int = 3, *, hr_cbpm: int = 7250, flags: MessageFlags = MessageFlags.NONE,
            quality: int = 80, battery: int = 90, activity: int = 255) -> Summary:  # fmt: skip
    return Summary(
        seq=seq,
        t_ms=int((T0 - 8) * 1000),
        flags=flags,
        activity=activity,
        pruning_pct=40,
        activity_conf_e4=7000,
        entropy_mbits=3200,
        hr_cbpm=hr_cbpm,
        signal_quality=quality,
        battery_pct=battery,
    )


def window(seq: int = 4, bpm: float = 72.0, *, hr_cbpm: int = 7250) -> Window:
    t = np.arange(512) / 64
    bvp = (1000 * np.sin(2 * np.pi * bpm / 60 * t)).astype("<i2")
    acc = np.zeros((256, 3), dtype="<i2")
    acc[:, 2] = 64  # 1 g on z
    return Window(
        summary=summary(seq, flags=MessageFlags.OFFLOAD_ENTROPY, hr_cbpm=hr_cbpm),
        sample_format=SampleFormat.INT16,
        bvp_rate_hz=64,
        acc_rate_hz=32,
        acc_lsb_per_g=64,
        bvp=bvp,
        acc=acc,
    )


# --- pure decisions ------------------------------------------------------------------------------


def test_window_time_uses_the_device_clock_only_once_synced() -> None:
    assert window_time(summary(), T0) == T0 - 8
    synced = summary(flags=MessageFlags.CLOCK_SYNCED)
    assert window_time(synced, T0 + 100) == pytest.approx(T0 - 8)


def test_a_summary_is_observed_with_the_wearables_own_values() -> None:
    obs = observation_for_frame("w1", summary(), T0, window_id="17")
    assert (obs.device_id, obs.seq, obs.t, obs.window_id) == ("w1", 3, T0, "17")
    assert obs.hr_bpm == 72.5
    assert obs.hr_source == "model"
    # HR confidence is the signal quality (80 %), not activity_conf_e4 (7000: the group's).
    assert obs.hr_confidence == 0.8
    assert obs.activity is None  # 255: unknown
    assert (obs.signal_quality, obs.battery) == (80, 90)
    assert obs.acc is None


@pytest.mark.parametrize("group", list(ActivityGroup))
def test_a_summary_carries_the_wearables_group_and_its_probability(group: ActivityGroup) -> None:
    s = summary(activity=int(group), quality=55)
    obs = observation_for_frame("w1", s, T0, window_id="1")
    known = group is not ActivityGroup.UNKNOWN
    assert obs.activity == (int(group) if known else None)
    assert obs.activity_confidence == 0.7
    assert obs.hr_confidence == 0.55
    t = telemetry_for("w1", s, T0, obs)
    assert t.activity == group.name.lower()
    assert t.activity_confidence == (0.7 if known else None)
    assert t.confidence == 0.55


def test_a_summary_without_a_signal_quality_is_trusted_like_a_strap() -> None:
    obs = observation_for_frame("w1", summary(quality=255), T0, window_id="1")
    assert (obs.signal_quality, obs.hr_confidence) == (None, 1.0)


def test_unknown_quality_and_battery_are_none_and_off_wrist_is_passed_on() -> None:
    s = summary(quality=255, battery=255, flags=MessageFlags.OFF_WRIST | MessageFlags.CHARGING)
    obs = observation_for_frame("w1", s, T0, window_id=None)
    assert (obs.signal_quality, obs.battery, obs.off_wrist, obs.charging) == (
        None, None, True, True,
    )  # fmt: skip


def test_an_offloaded_window_is_observed_with_the_gateways_analysis_and_acc_in_g() -> None:
    analysis = WindowAnalysis(hr_bpm=131.0, hr_confidence=0.9, hr_source="signal", quality=70)
    obs = observation_for_frame("w1", window(), T0, window_id="5", analysis=analysis)
    assert (obs.hr_bpm, obs.hr_source, obs.hr_confidence) == (131.0, "signal", 0.9)
    assert obs.acc is not None
    assert obs.acc.shape == (256, 3)
    assert obs.acc[0].tolist() == [0.0, 0.0, 1.0]
    assert obs.acc_rate_hz == 32.0


def test_model_analysis_overrides_the_stored_record() -> None:
    analysis = WindowAnalysis(hr_bpm=88.0, hr_confidence=0.8, hr_source="model", activity=1,
                              activity_confidence=0.9, model_id="m1", result={"x": 1})  # fmt: skip
    record = record_for_frame("w1", window(), T0, analysis, keep_raw=False)
    assert isinstance(record, WindowRecord)
    assert (record.kind, record.hr_bpm, record.hr_source, record.model_id) == (
        "window", 88.0, "gateway_model", "m1",
    )  # fmt: skip
    assert (record.activity, record.activity_conf, record.result) == ("light", 0.9, {"x": 1})
    plain = record_for_frame("w1", summary(), T0, None, keep_raw=False)
    assert (plain.hr_source, plain.hr_bpm) == ("wearable", 72.5)


def test_an_offloaded_window_takes_the_models_group_even_when_it_is_unknown() -> None:
    wearable_says_rest = replace(window(), summary=summary(4, activity=0))
    signal = WindowAnalysis(hr_bpm=70.0, hr_confidence=0.9, hr_source="signal")
    obs = observation_for_frame("w1", wearable_says_rest, T0, window_id="1", analysis=signal)
    assert (obs.activity, obs.activity_confidence) == (0, 0.7)  # no model: the wearable's
    model = WindowAnalysis(hr_bpm=70.0, hr_confidence=0.9, hr_source="model", activity=2,
                           activity_confidence=0.8)  # fmt: skip
    obs = observation_for_frame("w1", wearable_says_rest, T0, window_id="1", analysis=model)
    assert (obs.activity, obs.activity_confidence) == (2, 0.8)
    unsure = replace(model, activity=int(ActivityGroup.UNKNOWN), activity_confidence=0.6)
    obs = observation_for_frame("w1", wearable_says_rest, T0, window_id="1", analysis=unsure)
    assert obs.activity is None  # the model's "unknown" wins over the wearable's "rest"


@pytest.mark.parametrize(
    ("classes", "row", "group", "confidence"),
    [
        # PPG-DaLiA head: walking 0.3 + table soccer 0.3 = light 0.6, though sitting (0.35)
        # is the single most likely class.
        (ACTIVITY_CLASSES, [0.0, 0.35, 0.0, 0.3, 0.0, 0.0, 0.0, 0.3, 0.05], 1, 0.6),
        (ACTIVITY_CLASSES, [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 255, 0.9),
        (("rest", "light", "vigorous"), [0.1, 0.2, 0.7], 2, 0.7),
    ],
)
def test_a_model_answer_becomes_a_group_with_the_groups_probability(
    classes: Sequence[str], row: list[float], group: int, confidence: float
) -> None:
    spec = OutputSpec(activity_classes=list(classes))
    hr_logits = np.zeros((2, spec.hr_bin_count))
    logits = np.log(np.maximum(np.array([row, row[::-1]]), 1e-12))
    prediction = decode(logits, hr_logits, spec)
    analysis = analysis_from_prediction(prediction, 0, "m", classes)
    assert analysis.activity == group
    assert analysis.activity_confidence == pytest.approx(confidence, abs=1e-6)
    assert analysis.result is not None
    assert len(analysis.result["group_probs"]) == 3
    assert analysis.result["activity_probs"] == pytest.approx(row, abs=1e-4)


def test_telemetry_names_where_the_heart_rate_came_from() -> None:
    obs = observation_for_frame("w1", summary(), T0, window_id="1")
    t = telemetry_for("w1", summary(), T0, obs)
    assert isinstance(t, Telemetry)
    assert (t.hr_source, t.hr_bpm, t.offloaded, t.signal_quality) == (
        "device_model", 72.5, False, 0.8,
    )  # fmt: skip
    analysis = WindowAnalysis(hr_bpm=70.0, hr_confidence=0.5, hr_source="signal")
    obs = observation_for_frame("w1", window(), T0, window_id="2", analysis=analysis)
    t = telemetry_for("w1", window(), T0, obs)
    assert (t.hr_source, t.offloaded, t.confidence) == ("signal", True, 0.5)
    analysis = WindowAnalysis(hr_bpm=70.0, hr_confidence=0.5, hr_source="model", model_id="m")
    obs = observation_for_frame("w1", window(), T0, window_id="2", analysis=analysis)
    assert telemetry_for("w1", window(), T0, obs).hr_source == "gateway_model"
    none = observation_for_frame("w1", summary(hr_cbpm=0), T0, window_id="3")
    assert telemetry_for("w1", summary(hr_cbpm=0), T0, none).hr_source is None


def test_a_strap_measurement_is_an_observation_with_source_strap() -> None:
    m = HeartRateMeasurement(hr_bpm=64, sensor_contact=False, energy_kj=None, rr_1024=())
    obs = observation_for_strap(HeartRateReceived("strap", m, T0))
    assert (obs.hr_bpm, obs.hr_source, obs.off_wrist, obs.t) == (64.0, "strap", True, T0)


def test_data_lost_is_a_technical_event_with_first_and_count() -> None:
    event = data_lost_event("w1", 10, 3, T0)
    assert (event.kind, event.severity, event.state, event.device_id) == (
        "data_lost", "warning", "raised", "w1",
    )  # fmt: skip
    assert event.payload["category"] == "technical"
    assert event.payload["evidence"] == {"first": 10, "count": 3, "cause": "gap"}
    resumed = data_lost_event("w1", 10, 3, T0, cause="resume")
    assert resumed.payload["evidence"]["cause"] == "resume"


def stored(event: NewEvent, event_id: str | None = None) -> StoredEvent:
    return StoredEvent(
        id=event_id or new_event_id(),
        device_id=event.device_id,
        kind=event.kind,
        severity=event.severity,
        state=event.state,
        created_at=T0,
        t_ms=event.t_ms,
        payload=event.payload,
    )


def tachycardia_engine() -> RuleEngine:
    return RuleEngine(
        RulesConfig.model_validate(
            {
                "hr": {"min_confidence": 0.0, "min_signal_quality": 0},
                "tachycardia": {"unknown_bpm": 100.0, "min_duration_s": 0.0, "cooldown_s": 0.0},
            }
        )
    )


def test_an_alert_transition_round_trips_to_the_mqtt_alert_payload() -> None:
    engine = tachycardia_engine()
    obs = observation_for_frame("w1", summary(hr_cbpm=15000), T0, window_id="9")
    (transition,) = [t for t in engine.observe(obs) if t.kind == "tachycardia"]
    event = alert_event(transition)
    assert (event.kind, event.state, event.device_id) == ("tachycardia", "raised", "w1")
    alert = alert_payload(stored(event), "gw")
    assert uuid.UUID(alert.event_id).version == 7
    assert (alert.kind, alert.category, alert.state, alert.device_id, alert.gateway_id) == (
        "tachycardia", "physiological", "raised", "w1", "gw",
    )  # fmt: skip
    assert alert.t.timestamp() == pytest.approx(T0)
    assert alert.evidence["episode"] == 1
    assert alert.evidence["reason"] == "threshold"


# --- the outbox adapter --------------------------------------------------------------------------


@dataclass
class Row:
    event: StoredEvent


@dataclass
class FakeOutboxStore:
    rows: list[Row]
    marked: list[str] = field(default_factory=list)
    attempted: list[str] = field(default_factory=list)

    async def pending_outbox(self, limit: int = 100) -> Sequence[Row]:
        return [r for r in self.rows if r.event.id not in self.marked][:limit]

    async def mark_published(self, event_ids: Sequence[str]) -> int:
        self.marked.extend(event_ids)
        return len(event_ids)

    async def record_attempts(self, event_ids: Sequence[str]) -> None:
        self.attempted.extend(event_ids)


def test_a_gateway_event_round_trips_to_the_mqtt_gateway_alert_payload() -> None:
    event = stored(gateway_event("store_recovered", "critical", "event log was corrupt", T0,
                                 moved_to=["/var/lib/gatewayd/x.db.corrupt"]))  # fmt: skip
    alert = gateway_alert_payload(event, "gw")
    assert isinstance(alert, GatewayAlert)
    assert (alert.event_id, alert.gateway_id, alert.kind, alert.severity, alert.state) == (
        event.id, "gw", "store_recovered", "critical", "raised",
    )  # fmt: skip
    assert alert.category == "technical"
    assert alert.message == "event log was corrupt"
    assert alert.details == {"moved_to": ["/var/lib/gatewayd/x.db.corrupt"]}
    assert alert.t.timestamp() == pytest.approx(T0)
    long = stored(gateway_event("model_missing", "warning", "x" * 5000, T0))
    assert len(gateway_alert_payload(long, "gw").message) == MESSAGE_MAX_CHARS


@pytest.mark.asyncio
async def test_the_outbox_serves_gateway_events_and_device_alerts_in_order() -> None:
    gw_event = stored(gateway_event("model_missing", "warning", "no model", T0, model="m1"))
    lost = stored(data_lost_event("w1", 1, 2, T0))
    store = FakeOutboxStore([Row(gw_event), Row(lost)])
    outbox = StoreOutbox(store, "gw")
    first, second = await outbox.pending(10)
    assert store.marked == []  # nothing is marked before the broker's PUBACK
    assert (first.event_id, first.device_id, first.channel) == (gw_event.id, None, "alerts")
    assert GatewayAlert.model_validate_json(first.payload).details == {"model": "m1"}
    assert (second.event_id, second.device_id, second.channel) == (lost.id, "w1", "alerts")
    assert b'"kind":"data_lost"' in second.payload
    await outbox.mark_published([first.event_id, second.event_id])
    assert await outbox.pending(10) == []


@pytest.mark.asyncio
async def test_an_event_that_cannot_be_a_payload_is_logged_and_marked_done() -> None:
    bad_gateway = stored(gateway_event("Not A Kind", "warning", "?", T0))
    bad_device = replace(stored(data_lost_event("w1", 1, 2, T0)), severity="dire")
    good = stored(data_lost_event("w2", 3, 1, T0))
    store = FakeOutboxStore([Row(bad_gateway), Row(bad_device), Row(good)])
    outbox = StoreOutbox(store, "gw")
    with capture_logs() as logs:
        (item,) = await outbox.pending(10)
    assert item.event_id == good.id
    assert store.marked == [bad_gateway.id, bad_device.id]
    skipped = [e for e in logs if e["log_level"] == "error"]
    assert [e["event_id"] for e in skipped] == [bad_gateway.id, bad_device.id]


@pytest.mark.asyncio
async def test_an_outbox_of_only_unpublishable_events_is_emptied() -> None:
    bad = [stored(gateway_event("Bad Kind", "warning", "?", T0)) for _ in range(3)]
    store = FakeOutboxStore([Row(e) for e in bad])
    with capture_logs():
        assert await StoreOutbox(store, "gw").pending(2) == []
    assert store.marked == [e.id for e in bad]


# --- the pipeline with scripted fakes ------------------------------------------------------------


@dataclass
class Calls:
    log: list[tuple[str, Any]] = field(default_factory=list)


class FakeStore:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.windows: list[WindowRecord] = []
        self.cursors: list[tuple[str, DeviceCursor | None]] = []
        self.events: list[NewEvent] = []

    async def record_window(
        self, window: WindowRecord, *, cursor: DeviceCursor | None = None
    ) -> int:
        self.cursors.append(("window", cursor))
        if window.device_id == "buggy":
            raise RuntimeError("a bug in the store, seen by one device's windows")
        self.windows.append(window)
        self.calls.log.append(("window", window.seq))
        return len(self.windows)

    async def record_windows(
        self, windows: Sequence[tuple[WindowRecord, DeviceCursor | None]]
    ) -> list[int | Exception]:
        answers: list[int | Exception] = []
        for window, cursor in windows:
            try:
                answers.append(await self.record_window(window, cursor=cursor))
            except Exception as exc:  # as the real store answers
                answers.append(exc)
        return answers

    async def append_event(self, event: NewEvent, *, cursor: DeviceCursor | None = None) -> str:
        self.cursors.append((event.kind, cursor))
        self.events.append(event)
        self.calls.log.append(("event", (event.kind, event.state, event.device_id)))
        return new_event_id()


class FakePublisher:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.states: list[DeviceState] = []
        self.telemetry: list[Telemetry] = []

    def notify(self) -> None:
        self.calls.log.append(("notify", None))

    def update_state(self, state: DeviceState) -> None:
        self.states.append(state)

    def publish_telemetry(self, telemetry: Telemetry) -> bool:
        self.telemetry.append(telemetry)
        return True

    def forget(self, device_id: str) -> None:
        self.calls.log.append(("forget", device_id))


def make_pipeline(analyse: Any = None) -> tuple[Pipeline, Calls, FakeStore, FakePublisher]:
    calls = Calls()
    store, publisher = FakeStore(calls), FakePublisher(calls)
    pipeline = Pipeline(
        gateway_id="gw", topics=Topics("gatewayd", "gw"), engine=tachycardia_engine(),
        store=store, publisher=publisher, analyse=analyse, clock=lambda: T0,
        monotonic=lambda: T0,
    )  # fmt: skip
    return pipeline, calls, store, publisher


async def feed(pipeline: Pipeline, events: Sequence[Any]) -> None:
    runner = asyncio.create_task(pipeline.run())
    for event in events:
        await pipeline.submit(event)
    await pipeline.drain()
    await runner


@pytest.mark.asyncio
async def test_an_alert_is_in_the_log_before_the_publisher_is_notified() -> None:
    pipeline, calls, _, publisher = make_pipeline()
    await feed(pipeline, [
        LinkUp("w1", "hci0", None, 247),
        FrameReceived("w1", summary(1, hr_cbpm=15000), T0),
        Tick(T0 + 1),
    ])  # fmt: skip
    kinds = [entry for entry in calls.log if entry[0] != "window"]
    assert kinds == [
        ("event", ("tachycardia", "raised", "w1")),
        ("notify", None),
    ]
    assert calls.log[0] == ("window", 1)  # the window first: its id is the evidence
    assert [t.seq for t in publisher.telemetry] == [1]
    assert publisher.states[0].connected
    assert publisher.states[-1].hr_bpm == 150.0
    assert pipeline.stats.handled == 3


@pytest.mark.asyncio
async def test_a_device_taken_off_the_list_has_its_alerts_cleared_and_is_let_go() -> None:
    pipeline, calls, store, _ = make_pipeline()
    await feed(pipeline, [
        LinkUp("w1", "hci0", None, 247),
        FrameReceived("w1", summary(1, hr_cbpm=15000), T0),
        LinkUp("w2", "hci0", None, 247),
        FrameReceived("w2", summary(1, hr_cbpm=15000), T0),
        LinkDown("w1", "unpaired"),
        DeviceRemoved("w1"),
    ])  # fmt: skip
    events = [entry[1] for entry in calls.log if entry[0] == "event"]
    assert events == [
        ("tachycardia", "raised", "w1"),
        ("tachycardia", "raised", "w2"),
        ("tachycardia", "cleared", "w1"),
        ("device_removed", "raised", "w1"),
    ]
    cleared, removed = store.events[-2:]
    assert cleared.payload["reason"] == "unpaired"
    assert cleared.payload["episode"] == 1
    assert (removed.severity, removed.payload["category"]) == ("info", "technical")
    assert removed.payload["reason"].startswith("taken off the paired list")
    # Cleared and said in the event log (the publisher woken) before the publisher lets go.
    assert calls.log[-5:] == [
        ("event", ("tachycardia", "cleared", "w1")), ("notify", None),
        ("event", ("device_removed", "raised", "w1")), ("notify", None), ("forget", "w1"),
    ]  # fmt: skip
    assert set(pipeline.views) == {"w2"}
    assert pipeline.engine.active("w2")
    assert not pipeline.engine.active("w1")


@pytest.mark.asyncio
async def test_the_state_carries_the_latest_group_and_forgets_a_stale_confidence() -> None:
    pipeline, _, _, publisher = make_pipeline()
    await feed(pipeline, [
        FrameReceived("w1", summary(1, activity=2), T0),
        FrameReceived("w1", summary(2, activity=255), T0 + 2),
    ])  # fmt: skip
    vigorous, unknown = publisher.states[-2], publisher.states[-1]
    assert (vigorous.activity, vigorous.activity_confidence) == ("vigorous", 0.7)
    assert (unknown.activity, unknown.activity_confidence) == ("unknown", None)
    assert [t.activity for t in publisher.telemetry] == ["vigorous", "unknown"]


@pytest.mark.asyncio
async def test_lost_messages_link_down_and_battery_are_never_silent() -> None:
    pipeline, calls, _, publisher = make_pipeline()
    await feed(pipeline, [
        LinkUp("w1", "hci0", None, 247),
        MessagesLost("w1", 5, 2),
        BatteryLevel("w1", 12),
        LinkDown("w1", "link lost"),
    ])  # fmt: skip
    assert ("event", ("data_lost", "raised", "w1")) in calls.log
    assert pipeline.stats.data_lost == 2
    assert publisher.states[-1].battery_pct == 12
    assert publisher.states[-1].connected is False


@pytest.mark.asyncio
async def test_windows_go_through_the_analyser_in_order() -> None:
    seen: list[int] = []

    async def analyse(device_id: str, w: Window) -> WindowAnalysis:
        seen.append(w.seq)
        await asyncio.sleep(0.01 if w.seq == 4 else 0)  # the first answer is the slowest
        return WindowAnalysis(hr_bpm=60.0 + w.seq, hr_confidence=1.0, hr_source="signal")

    pipeline, _, store, publisher = make_pipeline(analyse)
    await feed(pipeline, [FrameReceived("w1", window(4), T0), FrameReceived("w1", window(5), T0),
                          FrameReceived("w1", summary(6), T0)])  # fmt: skip
    assert seen == [4, 5]
    assert [w.seq for w in store.windows] == [4, 5, 6]
    assert [(t.seq, t.hr_bpm, t.hr_source) for t in publisher.telemetry] == [
        (4, 64.0, "signal"), (5, 65.0, "signal"), (6, 72.5, "device_model"),
    ]  # fmt: skip


# --- the inference worker ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_worker_batches_windows_and_without_a_model_reports_the_wearables_hr() -> None:
    worker = InferenceWorker(None, InferenceConfig(max_batch=8))
    # Device "a" sends its own heart rate (72.5 in the summary); "b" sends none, so the
    # gateway's tracker estimates it from the samples (a 78 bpm sine), one state per device.
    jobs = [
        asyncio.ensure_future(
            worker.analyse(device, window(seq, bpm=78.0, hr_cbpm=7250 if device == "a" else 0))
        )
        for seq in range(3) for device in ("a", "b")
    ]  # fmt: skip
    runner = asyncio.create_task(worker.run())
    try:
        results = await asyncio.gather(*jobs)
    finally:
        runner.cancel()
    assert worker.model_id is None
    assert worker.stats.windows == 6
    assert worker.stats.largest_batch == 6  # all were queued before the worker ran
    for result in results:
        assert result is not None
        assert result.hr_source == "signal"
    from_a = [r for i, r in enumerate(results) if i % 2 == 0]
    from_b = [r for i, r in enumerate(results) if i % 2 == 1]
    assert [r.hr_bpm for r in from_a if r is not None] == [72.5, 72.5, 72.5]
    last = from_b[-1]
    assert last is not None
    assert last.hr_bpm is not None
    assert last.hr_bpm == pytest.approx(78.0, abs=3.0)
    assert last.quality is not None  # the gateway's own tracker answered


@pytest.mark.asyncio
@pytest.mark.parametrize("heart_rate", ["model", "signal", "fused"])
async def test_the_worker_runs_the_model_in_batches_when_one_is_installed(
    tmp_path: Path, heart_rate: Literal["model", "signal", "fused"]
) -> None:
    await asyncio.to_thread(install_tiny_model, tmp_path, "tiny-full")
    registry = await asyncio.to_thread(ModelRegistry.discover, tmp_path)
    installed = registry.get("tiny-full")
    session = await asyncio.to_thread(ModelSession, installed.card, installed.path)
    config = InferenceConfig(max_batch=4, heart_rate=heart_rate)
    worker = InferenceWorker(session, config)
    jobs = [asyncio.ensure_future(worker.analyse("a", window(seq))) for seq in range(6)]
    runner = asyncio.create_task(worker.run())
    try:
        results = await asyncio.gather(*jobs)
    finally:
        runner.cancel()
    assert worker.model_id == "tiny-full"
    assert (worker.stats.windows, worker.stats.largest_batch) == (6, 4)
    for result in results:
        assert result is not None
        assert result.result is not None
        model_conf = result.result["model_hr_confidence"]
        # Activity always from the model; heart rate from where the config says: "fused"
        # takes the model's only when it is more confident than the wearable (quality 80).
        expected = {"model": "model", "signal": "signal"}.get(
            heart_rate, "model" if model_conf > 0.8 else "signal"
        )
        assert (result.hr_source, result.model_id) == (expected, "tiny-full")
        wanted = result.result["model_hr_bpm"] if expected == "model" else 72.5
        assert result.hr_bpm == pytest.approx(wanted, abs=0.01)  # the record rounds to 0.01
        assert result.activity in {int(g) for g in ActivityGroup}
        assert 0.0 <= result.hr_confidence <= 1.0


# --- backpressure --------------------------------------------------------------------------------

BP = BackpressureConfig(saturated_checks=2, relaxed_checks=2, max_level=2)


def test_saturation_throttles_the_busiest_device_one_level_per_streak() -> None:
    state = BackpressureState()
    state, changes = plan_backpressure(state, BP, backlog=90, capacity=100,
                                       offloads={"a": 3, "b": 9})  # fmt: skip
    assert (changes, state.saturated) == ({}, 1)  # one saturated check is not a streak
    state, changes = plan_backpressure(state, BP, backlog=90, capacity=100,
                                       offloads={"a": 3, "b": 9})  # fmt: skip
    assert changes == {"b": 1}
    assert (dict(state.levels), state.saturated) == ({"b": 1}, 0)
    for _ in range(2):
        state, changes = plan_backpressure(state, BP, backlog=100, capacity=100,
                                           offloads={"a": 3, "b": 9})  # fmt: skip
    assert changes == {"b": 2}
    for _ in range(2):  # b is at max_level: the next busiest is throttled
        state, changes = plan_backpressure(state, BP, backlog=100, capacity=100,
                                           offloads={"a": 3, "b": 9})  # fmt: skip
    assert changes == {"a": 1}
    assert dict(state.levels) == {"a": 1, "b": 2}


def test_a_relaxed_queue_lowers_the_most_throttled_device_back_to_normal() -> None:
    state = BackpressureState(levels={"a": 1, "b": 2})
    changes: dict[str, int] = {}
    steps = []
    for _ in range(6):
        state, changes = plan_backpressure(state, BP, backlog=0, capacity=100, offloads={})
        steps.append(changes)
    assert steps == [{}, {"b": 1}, {}, {"b": 0}, {}, {"a": 0}]
    assert dict(state.levels) == {}


def test_a_queue_between_the_marks_resets_both_streaks() -> None:
    state = BackpressureState(levels={"a": 1}, saturated=1, relaxed=1)
    state, changes = plan_backpressure(state, BP, backlog=50, capacity=100, offloads={"a": 5})
    assert (changes, state.saturated, state.relaxed, dict(state.levels)) == ({}, 0, 0, {"a": 1})


def test_throttled_policy_raises_tau_and_lowers_min_confidence() -> None:
    cfg = BackpressureConfig(tau_step_mbits=500, conf_step_e4=1000)
    assert throttled_policy(4000, 6000, 0, cfg) == (4000, 6000)
    assert throttled_policy(4000, 6000, 2, cfg) == (5000, 4000)
    assert throttled_policy(65_000, 500, 3, cfg) == (65_535, 0)


@pytest.mark.asyncio
async def test_a_policy_set_from_outside_the_link_is_kept_for_reconnects() -> None:
    device = PairedDevice("w1", "C0:FF:EE:00:00:01", "wearable")
    manager = LinkManager(["hci0"], 1, [device], LinkSettings(tau_mbits=4000, min_conf_e4=6000))
    (link,) = manager.links.values()
    assert link.policy == SetPolicy(4000, 6000)
    assert manager.set_policy("w1", SetPolicy(5000, 4000))
    assert link.policy == SetPolicy(5000, 4000)
    assert not manager.set_policy("nobody", SetPolicy(5000, 4000))


def _steady_stream(
    wall_jump_s: float, silence_s: float
) -> tuple[list[Any], list[float], list[float]]:
    """Ten minutes of one resting wearable (a window every 8 s, a tick every second), with the
    wall clock stepped by ``wall_jump_s`` after five minutes (NTP on a Pi without an RTC) and
    ``silence_s`` of real silence there. Returns the events and, per event, the wall and
    monotonic clocks the pipeline reads while processing it."""
    events: list[Any] = [LinkUp("w1", "hci0", None, 247)]
    walls, monos = [T0], [0.0]
    seq = 0
    for second in range(600):
        mono = float(second) + (silence_s if second >= 300 else 0.0)
        wall = T0 + mono + (wall_jump_s if second >= 300 else 0.0)
        if second % 8 == 0 and not (300 <= second < 300 + silence_s):
            flags = MessageFlags.NONE
            events.append(FrameReceived("w1", summary(seq, activity=0, flags=flags), wall))
            walls.append(wall)
            monos.append(mono)
            seq += 1
        events.append(Tick(wall, mono))
        walls.append(wall)
        monos.append(mono)
    return events, walls, monos


async def _alerts_for(wall_jump_s: float, silence_s: float) -> list[Any]:
    events, walls, monos = _steady_stream(wall_jump_s, silence_s)
    at = iter(range(10**9))
    index = [0]

    def wall() -> float:
        return walls[min(index[0], len(walls) - 1)]

    def mono() -> float:
        return monos[min(index[0], len(monos) - 1)]

    calls = Calls()
    pipeline = Pipeline(
        gateway_id="gw", topics=Topics("gatewayd", "gw"), engine=RuleEngine(RulesConfig()),
        store=FakeStore(calls), publisher=FakePublisher(calls), clock=wall, monotonic=mono,
    )  # fmt: skip
    runner = asyncio.create_task(pipeline.run())
    for n, event in enumerate(events, start=1):
        index[0] = next(at)
        await pipeline.submit(event)
        # Each event is processed with the clocks of its own moment before the next comes.
        while pipeline.stats.handled < n:  # noqa: ASYNC110 - no event for "handled n"
            await asyncio.sleep(0)
    await pipeline.drain()
    await runner
    return [entry[1] for entry in calls.log if entry[0] == "event"]


@pytest.mark.asyncio
async def test_a_two_hour_ntp_jump_fires_nothing() -> None:
    assert await _alerts_for(wall_jump_s=2 * 3600, silence_s=0) == []
    assert await _alerts_for(wall_jump_s=-2 * 3600, silence_s=0) == []


@pytest.mark.asyncio
async def test_real_silence_of_the_same_length_on_the_monotonic_clock_does_fire() -> None:
    # The control: the rules are not simply asleep. Two hours without a window is silence.
    alerts = await _alerts_for(wall_jump_s=0, silence_s=2 * 3600)
    assert ("device_silent", "raised", "w1") in alerts


@pytest.mark.asyncio
async def test_an_unexpected_error_is_one_devices_fault_and_every_other_device_goes_on() -> None:
    pipeline, calls, store, publisher = make_pipeline()
    await feed(pipeline, [
        FrameReceived("buggy", summary(1), T0),
        FrameReceived("w1", summary(1), T0),
        FrameReceived("buggy", summary(2), T0 + 8),
        FrameReceived("w1", summary(2), T0 + 8),
    ])  # fmt: skip
    assert [w.seq for w in store.windows if w.device_id == "w1"] == [1, 2]
    assert [t.seq for t in publisher.telemetry if t.device_id == "w1"] == [1, 2]
    faults = [entry[1] for entry in calls.log if entry[0] == "event"]
    assert faults == [("device_fault", "raised", "buggy")]  # once per device and kind
    assert pipeline.stats.errors == 2
    assert pipeline.stats.handled == 4


@pytest.mark.asyncio
async def test_a_sequence_jump_and_an_untrusted_device_are_technical_events_not_losses() -> None:
    pipeline, calls, store, _ = make_pipeline()
    await feed(pipeline, [
        SequenceJump("w1", 12, 2_147_483_000, 1_100),
        DeviceUntrusted("w2", "bond_rejected", "le-connection-key-missing"),
        DeviceUntrusted("w3", "not_bonded", "no bond with C0:FF:EE:00:00:03"),
    ])  # fmt: skip
    events = [entry[1] for entry in calls.log if entry[0] == "event"]
    assert events == [
        ("sequence_jump", "raised", "w1"),
        ("device_untrusted", "raised", "w2"),
        ("device_untrusted", "raised", "w3"),
    ]
    assert pipeline.stats.data_lost == 0  # not two billion lost messages
    assert store.windows == []


def test_an_untrusted_device_is_critical_when_something_may_impersonate_it() -> None:
    impostor = untrusted_event("w2", "bond_rejected", "key missing", T0)
    unbonded = untrusted_event("w3", "not_bonded", "no bond", T0)
    assert (impostor.severity, unbonded.severity) == ("critical", "warning")
    assert impostor.payload["evidence"] == {"untrusted": "bond_rejected"}
    jump = sequence_jump_event("w1", 12, 2_147_483_000, 1_100, T0)
    assert jump.payload["evidence"] == {"expected": 12, "got": 2_147_483_000, "bound": 1_100}
    assert "not counted as lost" in jump.payload["reason"]


@pytest.mark.asyncio
async def test_a_loss_moves_the_resume_point_forward_and_never_back() -> None:
    pipeline, _, store, _ = make_pipeline()
    await feed(pipeline, [
        FrameReceived("w1", summary(1), T0, boot_id=7),
        MessagesLost("w1", 2, 3),  # 2..4 given up: a restart must not ask for them again
        FrameReceived("w1", summary(5), T0 + 8, boot_id=7),
        MessagesLost("w1", 3, 1, cause="queue_full"),  # reported late: behind the cursor
    ])  # fmt: skip
    points = [(kind, None if c is None else (c.boot_id, c.next_seq)) for kind, c in store.cursors]
    assert points == [
        ("window", (7, 2)),
        ("data_lost", (7, 5)),
        ("window", (7, 6)),
        ("data_lost", None),
    ]
