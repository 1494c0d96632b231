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
from typing import Any, get_args

import aiomqtt
import pytest
from pydantic import ValidationError

from gatewayd.config import MqttConfig
from gatewayd.ids import EventIdGenerator
from gatewayd.publish import Publisher, TopicError, Topics
from gatewayd.publish.backoff import MAX_DELAY_S, MqttFailure, backoff_delay, classify
from gatewayd.publish.payloads import (
    DEVICE_EVENT_KINDS,
    ActivityName,
    Alert,
    DeviceState,
    GatewayAlert,
    OpenAlerts,
    Status,
    Telemetry,
    schema_markdown,
)
from gatewayd.publish.topics import (
    GATEWAY,
    config_owner,
    device_discovery_topics,
    discovery_messages,
    gateway_discovery_message,
    stale_topics,
)
from gatewayd.rules.alerts import CATEGORY, AlertKind

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
    assert topics.open_alerts("w1") == "gatewayd/room-12/devices/w1/open_alerts"
    assert topics.retained_filters() == (
        "gatewayd/room-12/devices/+/state",
        "gatewayd/room-12/devices/+/open_alerts",
    )
    assert topics.parse_device_topic("gatewayd/room-12/devices/w1/state") == ("w1", "state")
    assert topics.parse_device_topic("gatewayd/room-12/devices/w1/x") is None
    assert topics.parse_device_topic("gatewayd/room-13/devices/w1/state") is None
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


# --- Home Assistant discovery -----------------------------------------------------------------
# Checked against HA's MQTT discovery schema as documented (home-assistant.io, integrations
# mqtt, sensor.mqtt, binary_sensor.mqtt, event.mqtt) and as written in HA core's
# components/mqtt/schemas.py: the keys each platform accepts, the ones it requires, and the
# device, origin and availability blocks. The homeassistant package itself needs Python 3.13.

_COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "payload_available", "payload_not_available", "device", "entity_picture", "origin",
    "enabled_by_default", "entity_category", "icon", "json_attributes_topic",
    "json_attributes_template", "default_entity_id", "message_expiry_interval", "unique_id",
    "visible_by_default", "name", "qos", "encoding", "state_topic", "value_template",
}  # fmt: skip
_PLATFORM_KEYS = {
    "sensor": {"device_class", "unit_of_measurement", "state_class", "expire_after",
               "force_update", "last_reset_value_template", "options",
               "suggested_display_precision"},
    "binary_sensor": {"device_class", "expire_after", "force_update", "off_delay", "payload_on",
                      "payload_off"},
    "event": {"device_class", "event_types"},
}  # fmt: skip
_REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
}
_DEVICE_KEYS = {
    "identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
    "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url",
}  # fmt: skip
_DEVICE_CLASSES = {
    "sensor": {"battery", "enum"},
    "binary_sensor": {"connectivity", "problem"},
    "event": set(),
}
# HA's valid_entity_id: <domain>.<object id>, lower-case letters, digits and single '_'.
_ENTITY_ID_RE = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
_CONFIG_TOPIC_RE = re.compile(r"^ha/(sensor|binary_sensor|event)/room-12/[\w-]+/config$")


def _check_config(component: str, payload: dict[str, Any]) -> None:
    """One discovery config against the documented schema of its platform."""
    keys = set(payload)
    assert keys <= _COMMON_KEYS | _PLATFORM_KEYS[component], keys - _COMMON_KEYS
    assert _REQUIRED[component] <= keys
    assert "object_id" not in payload
    assert isinstance(payload["unique_id"], str)
    assert payload["unique_id"]
    domain, _, object_id = payload["default_entity_id"].partition(".")
    assert domain == component
    assert _ENTITY_ID_RE.fullmatch(payload["default_entity_id"]), payload["default_entity_id"]
    assert object_id
    device = payload["device"]
    assert set(device) <= _DEVICE_KEYS
    assert device["identifiers"]
    assert all(isinstance(i, str) for i in device["identifiers"])
    assert set(payload["origin"]) <= {"name", "sw_version", "support_url"}
    assert payload["origin"]["name"] == "gatewayd"
    for item in payload.get("availability", []):
        assert set(item) <= {"topic", "payload_available", "payload_not_available",
                             "value_template"}  # fmt: skip
        assert "topic" in item
    if "device_class" in payload:
        assert payload["device_class"] in _DEVICE_CLASSES[component]
    if payload.get("device_class") == "enum":
        # HA: an enum sensor needs its options and may have neither a unit nor a state class.
        assert payload["options"]
        assert "unit_of_measurement" not in payload
        assert "state_class" not in payload
    if "options" in payload:
        assert payload.get("device_class") == "enum"
    if component == "sensor" and "entity_category" in payload:
        assert payload["entity_category"] == "diagnostic"
    assert payload.get("entity_category", "diagnostic") in {"diagnostic", "config"}


def _configs(messages: Any) -> dict[str, dict[str, Any]]:
    return {m.topic: json.loads(m.payload) for m in messages}


def test_home_assistant_discovery_matches_the_documented_schema() -> None:
    topics = Topics("gatewayd", "room-12")
    by_topic = _configs(
        discovery_messages(topics, "wrist-01", prefix="ha", model="W1", sw_version="1.2")
    )
    base = "ha/{}/room-12/wrist-01_{}/config"
    assert set(by_topic) == {
        base.format("sensor", "heart_rate"),
        base.format("sensor", "battery"),
        base.format("sensor", "activity"),
        base.format("binary_sensor", "connected"),
        base.format("event", "alert"),
        *(base.format("binary_sensor", f"problem_{kind.value}") for kind in AlertKind),
    }
    assert set(by_topic) == device_discovery_topics(topics, "wrist-01", prefix="ha")
    for topic, payload in by_topic.items():
        assert _CONFIG_TOPIC_RE.fullmatch(topic)
        _check_config(topic.split("/")[1], payload)
        assert payload["availability"][0]["topic"] == topics.status
        assert payload["device"] == {
            "identifiers": ["gatewayd_room-12_wrist-01"],
            "name": "wrist-01",
            "manufacturer": "gatewayd",
            "model": "W1",
            "sw_version": "1.2",
            "via_device": "gatewayd_room-12",
        }
    # Stable ids: HA keys its entity registry on unique_id; these must never change.
    assert by_topic[base.format("sensor", "heart_rate")]["unique_id"] == (
        "gatewayd_room-12_wrist-01_heart_rate"
    )
    assert by_topic[base.format("sensor", "heart_rate")]["default_entity_id"] == (
        "sensor.gatewayd_room_12_wrist_01_heart_rate"
    )
    assert by_topic[base.format("binary_sensor", "problem_fall")]["unique_id"] == (
        "gatewayd_room-12_wrist-01_problem_fall"
    )
    assert len({p["unique_id"] for p in by_topic.values()}) == len(by_topic)
    assert len({p["default_entity_id"] for p in by_topic.values()}) == len(by_topic)
    again = _configs(discovery_messages(topics, "wrist-01", prefix="ha"))
    assert {t: p["unique_id"] for t, p in again.items()} == {
        t: p["unique_id"] for t, p in by_topic.items()
    }
    # Without a model in the state, the device still has one; no firmware, no sw_version.
    assert again[base.format("sensor", "battery")]["device"]["model"] == "BLE wearable"
    assert "sw_version" not in again[base.format("sensor", "battery")]["device"]
    connectivity = by_topic[base.format("binary_sensor", "connected")]
    assert connectivity["device_class"] == "connectivity"
    gateway = gateway_discovery_message(topics, prefix="ha", sw_version="9.9")
    assert gateway.topic == "ha/binary_sensor/room-12/status/config"
    gateway_payload = json.loads(gateway.payload)
    _check_config("binary_sensor", gateway_payload)
    assert gateway_payload["device"]["identifiers"] == ["gatewayd_room-12"]
    assert gateway_payload["device"]["sw_version"] == "9.9"
    assert gateway_payload["device"]["model"]
    with pytest.raises(TopicError):
        discovery_messages(topics, "w1", prefix="ha/#")


def test_home_assistant_activity_is_an_enum_of_the_four_groups() -> None:
    topics = Topics("gatewayd", "room-12")
    by_topic = _configs(discovery_messages(topics, "w1"))
    activity = by_topic["homeassistant/sensor/room-12/w1_activity/config"]
    assert activity["device_class"] == "enum"
    assert activity["options"] == ["rest", "light", "vigorous", "unknown"]
    # Every value the state payload can carry is one of the options (HA rejects any other).
    assert DeviceState.model_fields["activity"].annotation == ActivityName | None
    assert tuple(activity["options"]) == get_args(ActivityName)
    template = _jinja().from_string(activity["value_template"])
    base = DeviceState(device_id="w1", gateway_id="room-12", connected=True, t=T0)
    states = [base, *(base.model_copy(update={"activity": a}) for a in activity["options"])]
    rendered = [template.render(value_json=json.loads(s.to_json())) for s in states]
    assert rendered == ["unknown", *activity["options"]]


def _jinja() -> Any:
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 (HA's template language) not installed")
    return jinja2.Environment()


def _alert(kind: str, state: str) -> Alert:
    return Alert(
        event_id=EVENT,
        device_id="w1",
        gateway_id="room-12",
        kind=kind,
        category="technical" if kind in DEVICE_EVENT_KINDS else CATEGORY[AlertKind(kind)],
        severity="critical",
        state=state,  # type: ignore[arg-type]
        t=T0,
    )


def test_home_assistant_event_entity_fires_on_raised_alerts_of_every_kind() -> None:
    topics = Topics("gatewayd", "room-12")
    event = _configs(discovery_messages(topics, "w1"))[
        "homeassistant/event/room-12/w1_alert/config"
    ]
    # The event types come from the rules' own list, plus the one-off technical events.
    assert event["event_types"] == [k.value for k in AlertKind] + [
        "data_lost", "device_fault", "device_untrusted", "sequence_jump", "device_removed"
    ]  # fmt: skip
    assert event["state_topic"] == topics.alerts("w1")
    template = _jinja().from_string(event["value_template"])
    for kind in event["event_types"]:
        raised = template.render(value_json=json.loads(_alert(kind, "raised").to_json()))
        # What HA's MQTT event entity does with the rendered value: JSON, event_type popped,
        # the rest become the event's attributes.
        fired = json.loads(raised)
        assert fired == {
            "event_type": kind,
            "severity": "critical",
            "category": "technical" if kind in DEVICE_EVENT_KINDS else CATEGORY[AlertKind(kind)],
            "event_id": EVENT,
            "t": "2026-01-02T03:04:05.678Z",
        }
    cleared = template.render(value_json=json.loads(_alert("fall", "cleared").to_json()))
    assert cleared == ""  # HA ignores an empty rendering: a clear fires no event


def test_home_assistant_problem_sensors_read_the_open_alert_set() -> None:
    topics = Topics("gatewayd", "room-12")
    by_topic = _configs(discovery_messages(topics, "w1"))
    problems = {t: p for t, p in by_topic.items() if "/binary_sensor/" in t and "_problem_" in t}
    assert len(problems) == len(AlertKind)
    open_set = OpenAlerts(device_id="w1", gateway_id="room-12", kinds=("fall",), t=T0)
    jinja = _jinja()
    for kind in AlertKind:
        payload = problems[f"homeassistant/binary_sensor/room-12/w1_problem_{kind.value}/config"]
        assert payload["device_class"] == "problem"
        assert payload["state_topic"] == topics.open_alerts("w1")
        # Technical alerts are diagnostics of the wearable, physiological ones are not.
        assert ("entity_category" in payload) == (CATEGORY[kind] == "technical")
        rendered = jinja.from_string(payload["value_template"]).render(
            value_json=json.loads(open_set.to_json())
        )
        assert rendered == ("ON" if kind is AlertKind.FALL else "OFF")
    assert json.loads(open_set.to_json()) == {
        "schema_version": 1,
        "device_id": "w1",
        "gateway_id": "room-12",
        "kinds": ["fall"],
        "t": "2026-01-02T03:04:05.678Z",
    }


def test_config_owner_reads_the_device_identifier() -> None:
    topics = Topics("gatewayd", "room-12")
    configs = _configs(discovery_messages(topics, "my_wrist-1"))
    owners = {config_owner(topics, json.dumps(p).encode()) for p in configs.values()}
    assert owners == {"my_wrist-1"}
    gateway = gateway_discovery_message(topics)
    assert config_owner(topics, gateway.payload) == GATEWAY
    other = Topics("gatewayd", "room-13")
    assert config_owner(other, gateway.payload) is None
    assert config_owner(topics, b"not json") is None
    assert config_owner(topics, b'{"device": {"ids": ["gatewayd_room-12_w1"]}}') is None


def test_stale_topics_removed_devices_and_obsolete_entities() -> None:
    topics = Topics("gatewayd", "room-12")
    current = {m.topic: m.payload for m in discovery_messages(topics, "w1")}
    removed = {m.topic: m.payload for m in discovery_messages(topics, "w2")}
    gateway = gateway_discovery_message(topics)
    # A config an older gatewayd published (the "last alert" sensor): ours, not wanted now.
    obsolete_topic = "homeassistant/sensor/room-12/w1_last_alert/config"
    obsolete = json.dumps({"name": "Last alert", "device": {
        "identifiers": ["gatewayd_room-12_w1"]}}).encode()  # fmt: skip
    foreign = "homeassistant/sensor/room-12/thing/config"
    configs = {
        **current, **removed, gateway.topic: gateway.payload, obsolete_topic: obsolete,
        foreign: b'{"device": {"identifiers": ["zigbee_1"]}}',
    }  # fmt: skip
    device_topics = [topics.state("w1"), topics.open_alerts("w1"), topics.state("w2"),
                     topics.open_alerts("w2"), f"{topics.base}/devices/w2/weird"]  # fmt: skip
    stale = stale_topics(
        topics, configs=configs, device_topics=device_topics, discovery=True, paired={"w1"}
    )
    assert stale == [
        *sorted([*removed, obsolete_topic]),
        topics.open_alerts("w2"),
        topics.state("w2"),
    ]
    # Not knowing the paired devices, no device is removed; obsolete entities still are.
    assert stale_topics(
        topics, configs=configs, device_topics=device_topics, discovery=True, paired=None
    ) == [obsolete_topic]
    # Discovery switched off: every config of ours goes, foreign ones stay.
    off = stale_topics(
        topics, configs=configs, device_topics=(), discovery=False, paired={"w1", "w2"}
    )
    assert off == sorted(set(configs) - {foreign})


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
