"""Pure parts of gatewayd.publish: payloads, schemas in docs/mqtt.md, topics, HA discovery,
backoff. No broker, no I/O (except reading docs/mqtt.md)."""

from __future__ import annotations

import json
import os
import random
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import get_args

import aiomqtt
import pytest
from pydantic import ValidationError

from gatewayd.config import MqttConfig
from gatewayd.ids import EventIdGenerator
from gatewayd.publish import Publisher, TopicError, Topics
from gatewayd.publish.backoff import MAX_DELAY_S, MqttFailure, backoff_delay, classify
from gatewayd.publish.payloads import (
    ActivityName,
    Alert,
    DeviceState,
    GatewayAlert,
    Status,
    Telemetry,
    schema_markdown,
)
from gatewayd.publish.topics import discovery_messages, gateway_discovery_message

DOC = Path(__file__).resolve().parent.parent / "docs" / "mqtt.md"
BEGIN, END = "<!-- BEGIN GENERATED SCHEMAS -->", "<!-- END GENERATED SCHEMAS -->"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
IDS = EventIdGenerator()  # its own state: these ids do not depend on other tests' ids
EVENT = IDS.next(1_767_323_045_678, lambda n: bytes(range(n)))


def test_docs_schemas_are_up_to_date() -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    expected = "\n" + schema_markdown() + "\n"
    if os.environ.get("GATEWAYD_UPDATE_DOCS") == "1":
        DOC.write_text(text[:start] + expected + text[end:])
        return
    assert text[start:end] == expected, (
        "docs/mqtt.md is out of date: run GATEWAYD_UPDATE_DOCS=1 pytest tests/test_publish_pure.py"
    )


def test_new_event_id_is_uuid7_and_time_ordered() -> None:
    parsed = uuid.UUID(EVENT)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert int.from_bytes(parsed.bytes[:6], "big") == 1_767_323_045_678
    later = IDS.next(1_767_323_045_679, bytes)
    assert later > EVENT


def test_alert_json_shape() -> None:
    alert = Alert(
        event_id=EVENT,
        device_id="wrist-01",
        gateway_id="room-12",
        kind="tachycardia",
        category="physiological",
        severity="warning",
        state="raised",
        t=T0.astimezone(timezone(timedelta(hours=2))),
        evidence={"hr_bpm": 142, "window_ids": [7, 8]},
    )
    data = json.loads(alert.to_json())
    assert data["t"] == "2026-01-02T03:04:05.678Z"
    assert data["schema_version"] == 1
    assert data["event_id"] == EVENT
    assert Alert.model_validate_json(alert.to_json()) == alert
    with pytest.raises(ValidationError):
        Alert.model_validate({**data, "event_id": str(uuid.uuid4())})
    with pytest.raises(ValidationError):
        Alert.model_validate({**data, "t": "2026-01-02T03:04:05"})  # naive time
    with pytest.raises(ValidationError):
        Alert.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        alert.kind = "other"  # type: ignore[misc]


def test_gateway_alert_json_shape() -> None:
    alert = GatewayAlert(
        event_id=EVENT,
        gateway_id="room-12",
        kind="model_missing",
        severity="warning",
        state="raised",
        t=T0,
        message="no model installed",
        details={"model": "mnv2-1d-w1.0"},
    )
    data = json.loads(alert.to_json())
    assert data == {
        "schema_version": 1,
        "event_id": EVENT,
        "gateway_id": "room-12",
        "kind": "model_missing",
        "category": "technical",
        "severity": "warning",
        "state": "raised",
        "t": "2026-01-02T03:04:05.678Z",
        "message": "no model installed",
        "details": {"model": "mnv2-1d-w1.0"},
    }
    assert GatewayAlert.model_validate_json(alert.to_json()) == alert
    with pytest.raises(ValidationError):
        GatewayAlert.model_validate({**data, "category": "physiological"})
    with pytest.raises(ValidationError):
        GatewayAlert.model_validate({**data, "device_id": "w1"})
    with pytest.raises(ValidationError):
        GatewayAlert.model_validate({**data, "message": ""})


def test_status_will_leaves_out_unset_fields() -> None:
    will = Status(state="offline", gateway_id="room-12", reason="connection_lost")
    assert json.loads(will.to_json()) == {
        "schema_version": 1,
        "state": "offline",
        "gateway_id": "room-12",
        "reason": "connection_lost",
    }


def test_state_and_telemetry_bounds() -> None:
    DeviceState(device_id="w1", gateway_id="g", connected=True, t=T0, battery_pct=100)
    with pytest.raises(ValidationError):
        DeviceState(device_id="w1", gateway_id="g", connected=True, t=T0, battery_pct=101)
    with pytest.raises(ValidationError):
        Telemetry(device_id="w1", seq=1, t=T0, confidence=1.5)
    with pytest.raises(ValidationError):
        Telemetry(device_id="aa/bb", seq=1, t=T0)


def test_topics() -> None:
    topics = Topics("gatewayd", "room-12")
    assert topics.status == "gatewayd/room-12/status"
    assert topics.gateway_alerts == "gatewayd/room-12/alerts"
    assert topics.state("wrist-01") == "gatewayd/room-12/devices/wrist-01/state"
    assert topics.alerts("wrist-01") == "gatewayd/room-12/devices/wrist-01/alerts"
    assert topics.telemetry("w_2") == "gatewayd/room-12/devices/w_2/telemetry"
    assert Topics("site/a", "g").status == "site/a/g/status"


@pytest.mark.parametrize(
    "device_id",
    ["", "a/b", "a+b", "#", "a b", "-lead", "x" * 65, "AA:BB:CC:DD:EE:FF", "aabbccddeeff", "é"],
)
def test_unsafe_device_ids_are_rejected(device_id: str) -> None:
    with pytest.raises(TopicError):
        Topics("gatewayd", "g").state(device_id)


@pytest.mark.parametrize(
    ("root", "gateway"),
    [("a/+", "g"), ("/a", "g"), ("a//b", "g"), ("a", "G"), ("a", "x/y"), ("", "g")],
)
def test_bad_roots_are_rejected(root: str, gateway: str) -> None:
    with pytest.raises(TopicError):
        Topics(root, gateway)


def test_unknown_channel_is_rejected() -> None:
    with pytest.raises(TopicError, match="channel"):
        Topics("gatewayd", "g").device("w1", "commands")


def test_home_assistant_discovery() -> None:
    topics = Topics("gatewayd", "room-12")
    messages = discovery_messages(topics, "wrist-01", prefix="ha", model="W1", sw_version="1.2")
    by_topic = {m.topic: json.loads(m.payload) for m in messages}
    assert set(by_topic) == {
        "ha/sensor/room-12/wrist-01_heart_rate/config",
        "ha/sensor/room-12/wrist-01_battery/config",
        "ha/sensor/room-12/wrist-01_activity/config",
        "ha/binary_sensor/room-12/wrist-01_connected/config",
        "ha/sensor/room-12/wrist-01_last_alert/config",
    }
    unique_ids = {p["unique_id"] for p in by_topic.values()}
    assert len(unique_ids) == len(by_topic)
    for topic, payload in by_topic.items():
        # HA: node_id and object_id are [a-zA-Z0-9_-]; no wildcard anywhere.
        assert re.fullmatch(r"ha/(sensor|binary_sensor)/[\w-]+/[\w-]+/config", topic)
        assert payload["availability"][0]["topic"] == topics.status
        assert payload["device"]["identifiers"] == ["gatewayd_room-12_wrist-01"]
        assert payload["device"]["via_device"] == "gatewayd_room-12"
        assert payload["device"]["model"] == "W1"
        assert payload["state_topic"] in (topics.state("wrist-01"), topics.alerts("wrist-01"))
    connectivity = by_topic["ha/binary_sensor/room-12/wrist-01_connected/config"]
    assert connectivity["device_class"] == "connectivity"
    gateway = gateway_discovery_message(topics, prefix="ha")
    assert gateway.topic == "ha/binary_sensor/room-12/status/config"
    assert json.loads(gateway.payload)["device"]["identifiers"] == ["gatewayd_room-12"]
    with pytest.raises(TopicError):
        discovery_messages(topics, "w1", prefix="ha/#")


def test_home_assistant_activity_is_an_enum_of_the_four_groups() -> None:
    topics = Topics("gatewayd", "room-12")
    by_topic = {m.topic: json.loads(m.payload) for m in discovery_messages(topics, "w1")}
    activity = by_topic["homeassistant/sensor/room-12/w1_activity/config"]
    assert activity["device_class"] == "enum"
    assert activity["options"] == ["rest", "light", "vigorous", "unknown"]
    # Every value the state payload can carry is one of the options (HA rejects any other).
    assert DeviceState.model_fields["activity"].annotation == ActivityName | None
    assert tuple(activity["options"]) == get_args(ActivityName)
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 (HA's template language) not installed")
    template = jinja2.Environment().from_string(activity["value_template"])
    base = DeviceState(device_id="w1", gateway_id="room-12", connected=True, t=T0)
    states = [base, *(base.model_copy(update={"activity": a}) for a in activity["options"])]
    rendered = [template.render(value_json=json.loads(s.to_json())) for s in states]
    assert rendered == ["unknown", *activity["options"]]


def test_backoff_delay_is_capped_exponential() -> None:
    assert backoff_delay(MqttFailure.UNREACHABLE, 0) == 0.0
    assert backoff_delay(MqttFailure.UNREACHABLE, 1) == 1.0
    assert backoff_delay(MqttFailure.UNREACHABLE, 2) == pytest.approx(1.8)
    assert backoff_delay(MqttFailure.UNREACHABLE, 3) == pytest.approx(3.24)
    assert backoff_delay(MqttFailure.UNREACHABLE, 50) == MAX_DELAY_S
    assert backoff_delay(MqttFailure.LOST, 1) < backoff_delay(MqttFailure.REFUSED, 1)
    jittered = backoff_delay(MqttFailure.TIMEOUT, 1, rng=random.Random(1), jitter=0.1)
    assert 2.0 <= jittered <= 2.2


def test_classify() -> None:
    assert classify(TimeoutError()) is MqttFailure.TIMEOUT
    assert classify(aiomqtt.MqttError("[Errno 111] Connection refused")) is (
        MqttFailure.UNREACHABLE
    )
    assert classify(aiomqtt.MqttCodeError(5, "not authorised")) is MqttFailure.REFUSED
    assert classify(aiomqtt.MqttCodeError(5), was_connected=True) is MqttFailure.LOST
    assert classify(aiomqtt.MqttError("Disconnected"), was_connected=True) is MqttFailure.LOST
    assert classify(ValueError("?")) is MqttFailure.OTHER


class _NoOutbox:
    async def pending(self, limit: int) -> list[object]:
        raise AssertionError("not running")

    async def mark_published(self, event_ids: object) -> None:
        raise AssertionError("not running")

    async def record_attempt(self, event_ids: object) -> None:
        raise AssertionError("not running")


def test_telemetry_queue_is_bounded_and_counts_drops() -> None:
    publisher = Publisher(MqttConfig(), "g", _NoOutbox(), telemetry_queue_size=3)  # type: ignore[arg-type]
    results = [
        publisher.publish_telemetry(Telemetry(device_id="w1", seq=i, t=T0)) for i in range(5)
    ]
    assert results == [True, True, True, False, False]
    assert publisher.stats.telemetry_dropped == 2
    with pytest.raises(TopicError):
        publisher.publish_telemetry(Telemetry(device_id="aabbccddeeff", seq=0, t=T0))
