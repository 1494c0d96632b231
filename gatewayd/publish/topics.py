"""The topic tree and Home Assistant MQTT discovery: pure functions, no I/O.

``<topic_root>/<gateway_id>/{status,alerts}`` and ``<topic_root>/<gateway_id>/devices/
<device_id>/{state,alerts,telemetry,open_alerts}`` (docs/mqtt.md). Device ids are
the stable aliases given at pairing, never MAC addresses; anything that could change the shape
of a topic (a wildcard, a slash, a NUL, a colon from a MAC) is rejected here with `TopicError`.

Discovery is one retained config per entity (HA's single-component discovery, docs/decisions.md
"Home Assistant discovery"), under ``<prefix>/<component>/<gateway_id>/...``: the gateway id as
HA's node id lets the publisher find every config it ever left with one wildcard, and
`stale_topics` says which of those to remove.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from gatewayd.errors import GatewayError
from gatewayd.publish.payloads import DEVICE_EVENT_KINDS, ActivityName
from gatewayd.rules.alerts import CATEGORY, AlertKind

__all__ = [
    "ACTIVITY_OPTIONS",
    "ALERT_KINDS",
    "DEVICE_CHANNELS",
    "EVENT_TYPES",
    "RETAINED_CHANNELS",
    "Channel",
    "DiscoveryMessage",
    "TopicError",
    "Topics",
    "check_device_id",
    "config_owner",
    "device_discovery_topics",
    "discovery_messages",
    "gateway_discovery_message",
    "stale_topics",
]

#: The states of the activity entity: every activity group the state payload can carry.
ACTIVITY_OPTIONS: Final[tuple[str, ...]] = get_args(ActivityName)
#: Every kind of alert the rules raise and clear: one problem binary_sensor each.
ALERT_KINDS: Final[tuple[str, ...]] = tuple(kind.value for kind in AlertKind)
#: The event entity's event types: every alert kind, and the one-off technical events that share
#: the device alert topic (raised, never cleared: payloads.DEVICE_EVENT_KINDS).
EVENT_TYPES: Final[tuple[str, ...]] = (*ALERT_KINDS, *DEVICE_EVENT_KINDS)

Channel = Literal["state", "alerts", "telemetry", "open_alerts"]
DEVICE_CHANNELS: Final[frozenset[str]] = frozenset(get_args(Channel))
#: The device channels whose messages are retained; removing a device clears them.
RETAINED_CHANNELS: Final[tuple[Channel, ...]] = ("state", "open_alerts")

#: A device alias: a letter or digit, then letters, digits, '_' or '-'; at most 64 characters.
#: The same characters Home Assistant accepts in a discovery node or object id.
_DEVICE_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_GATEWAY_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MAC_RE: Final = re.compile(r"^([0-9A-Fa-f]{2}[-_]?){5}[0-9A-Fa-f]{2}$")


class TopicError(GatewayError):
    """A device or gateway id, or a topic root, cannot be used in an MQTT topic."""


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a safe alias for a topic level, else raise TopicError."""
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise TopicError(
            f"device id {device_id!r} cannot be an MQTT topic level: use 1 to 64 letters,"
            " digits, '_' or '-', starting with a letter or digit"
        )
    if _MAC_RE.fullmatch(device_id):
        raise TopicError(
            f"device id {device_id!r} looks like a MAC address; topics carry the device's alias"
            " (set at pairing) so that a subscriber never learns hardware addresses"
        )
    return device_id


def _check_root(root: str, what: str) -> str:
    levels = root.split("/")
    if not root or any(not level for level in levels) or any(c in root for c in "+#\0"):
        raise TopicError(f"{what} {root!r}: expected topic levels without wildcards or '//'")
    return root


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one gateway: ``<root>/<gateway_id>/...``."""

    root: str
    gateway_id: str

    def __post_init__(self) -> None:
        _check_root(self.root, "mqtt.topic_root")
        if not _GATEWAY_ID_RE.fullmatch(self.gateway_id):
            raise TopicError(f"gateway id {self.gateway_id!r} cannot be an MQTT topic level")

    @property
    def base(self) -> str:
        """``<root>/<gateway_id>``."""
        return f"{self.root}/{self.gateway_id}"

    @property
    def status(self) -> str:
        """The retained online/offline topic, also the last will's topic."""
        return f"{self.base}/status"

    @property
    def gateway_alerts(self) -> str:
        """The QoS 1 topic of gateway-level alerts (no device: model missing, store recovered)."""
        return f"{self.base}/alerts"

    def device(self, device_id: str, channel: str) -> str:
        """``<base>/devices/<device_id>/<channel>``; raises TopicError on a bad id or channel."""
        if channel not in DEVICE_CHANNELS:
            raise TopicError(
                f"unknown device channel {channel!r}; expected one of"
                f" {', '.join(sorted(DEVICE_CHANNELS))}"
            )
        return f"{self.base}/devices/{check_device_id(device_id)}/{channel}"

    def state(self, device_id: str) -> str:
        """The retained state topic of one device."""
        return self.device(device_id, "state")

    def alerts(self, device_id: str) -> str:
        """The QoS 1 alert topic of one device."""
        return self.device(device_id, "alerts")

    def telemetry(self, device_id: str) -> str:
        """The per-window telemetry topic of one device."""
        return self.device(device_id, "telemetry")

    def open_alerts(self, device_id: str) -> str:
        """The retained topic of the alert kinds now raised on one device."""
        return self.device(device_id, "open_alerts")

    @property
    def all_devices(self) -> str:
        """A subscription filter for every device topic of this gateway (for tools and docs)."""
        return f"{self.base}/devices/+/+"

    def retained_filters(self) -> tuple[str, ...]:
        """Filters for every retained device topic of this gateway (``state``, ``open_alerts``)."""
        return tuple(f"{self.base}/devices/+/{channel}" for channel in RETAINED_CHANNELS)

    def parse_device_topic(self, topic: str) -> tuple[str, str] | None:
        """``(device_id, channel)`` of a topic under ``<base>/devices/``, or None."""
        prefix = f"{self.base}/devices/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 2 or parts[1] not in DEVICE_CHANNELS:
            return None
        if not _DEVICE_ID_RE.fullmatch(parts[0]):
            return None
        return parts[0], parts[1]


# --- Home Assistant MQTT discovery -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveryMessage:
    """One retained discovery config: publish ``payload`` to ``topic`` with retain."""

    topic: str
    payload: bytes


#: The HA device model of a wearable whose state does not name one.
DEFAULT_WEARABLE_MODEL: Final = "BLE wearable"
GATEWAY_MODEL: Final = "gatewayd BLE gateway"
_KIND_WORDS: Final = {"hr": "HR"}


def _entity_slug(text: str) -> str:
    """An HA object id: lower case, runs of anything else than a-z0-9 as one '_'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _kind_name(kind: str) -> str:
    words = [_KIND_WORDS.get(word, word) for word in kind.split("_")]
    return " ".join(words)[:1].upper() + " ".join(words)[1:]


@dataclass(frozen=True, slots=True)
class _Entity:
    component: str
    key: str
    config: dict[str, Any]


def _wearable_entities(topics: Topics, device_id: str) -> list[_Entity]:
    """The entities of one wearable, without device, availability and ids (pure data)."""
    state = topics.state(device_id)
    alerts = topics.alerts(device_id)
    open_alerts = topics.open_alerts(device_id)
    entities = [
        _Entity(
            "sensor",
            "heart_rate",
            {
                "name": "Heart rate",
                "state_topic": state,
                "value_template": "{{ value_json.hr_bpm | default(None) }}",
                "unit_of_measurement": "bpm",
                "state_class": "measurement",
                "icon": "mdi:heart-pulse",
            },
        ),
        _Entity(
            "sensor",
            "battery",
            {
                "name": "Battery",
                "state_topic": state,
                "value_template": "{{ value_json.battery_pct | default(None) }}",
                "device_class": "battery",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "entity_category": "diagnostic",
            },
        ),
        # An enum sensor: HA offers the four groups in automations and history. A state
        # without an activity (no window yet) shows as unknown, which is one of them.
        _Entity(
            "sensor",
            "activity",
            {
                "name": "Activity",
                "state_topic": state,
                "value_template": "{{ value_json.activity | default('unknown') }}",
                "device_class": "enum",
                "options": list(ACTIVITY_OPTIONS),
                "icon": "mdi:run",
            },
        ),
        _Entity(
            "binary_sensor",
            "connected",
            {
                "name": "Connected",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.connected else 'OFF' }}",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
            },
        ),
        # Fed by the alert topic itself: a raised alert fires an event of its kind, with the
        # alert's facts as attributes. A clear renders nothing, which HA ignores; the problem
        # sensors below show it. Every value spliced in is a validated enum, id or time
        # (payloads.Alert), so the JSON is built as text without quoting.
        _Entity(
            "event",
            "alert",
            {
                "name": "Alert",
                "state_topic": alerts,
                "event_types": list(EVENT_TYPES),
                "value_template": (
                    "{% if value_json.state == 'raised' %}"
                    '{"event_type": "{{ value_json.kind }}",'
                    ' "severity": "{{ value_json.severity }}",'
                    ' "category": "{{ value_json.category }}",'
                    ' "event_id": "{{ value_json.event_id }}",'
                    ' "t": "{{ value_json.t }}"}'
                    "{% endif %}"
                ),
                "icon": "mdi:alert",
            },
        ),
    ]
    for kind in AlertKind:
        config: dict[str, Any] = {
            "name": _kind_name(kind.value),
            "state_topic": open_alerts,
            "value_template": f"{{{{ 'ON' if '{kind.value}' in value_json.kinds else 'OFF' }}}}",
            "device_class": "problem",
        }
        if CATEGORY[kind] == "technical":
            config["entity_category"] = "diagnostic"
        entities.append(_Entity("binary_sensor", f"problem_{kind.value}", config))
    return entities


def _config_topic(prefix: str, component: str, gateway_id: str, object_id: str) -> str:
    return f"{prefix}/{component}/{gateway_id}/{object_id}/config"


def _origin(sw_version: str | None) -> dict[str, Any]:
    return {"name": "gatewayd"} | ({"sw_version": sw_version} if sw_version else {})


def _dump(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def device_identifier(topics: Topics, device_id: str) -> str:
    """The HA device identifier (and unique id stem) of one wearable."""
    return f"gatewayd_{topics.gateway_id}_{device_id}"


def gateway_identifier(topics: Topics) -> str:
    """The HA device identifier of the gateway itself."""
    return f"gatewayd_{topics.gateway_id}"


def discovery_messages(
    topics: Topics,
    device_id: str,
    *,
    prefix: str = "homeassistant",
    model: str | None = None,
    sw_version: str | None = None,
    origin_version: str | None = None,
) -> tuple[DiscoveryMessage, ...]:
    """Home Assistant discovery configs for one wearable (publish retained, on every connect).

    Topic ``<prefix>/<component>/<gateway_id>/<device_id>_<key>/config``; ``unique_id``
    ``gatewayd_<gateway_id>_<device_id>_<key>`` and ``default_entity_id``
    ``<component>.<the same, as an HA slug>``. Every entity shares one HA device block
    (``model``: the state's model or a generic one; ``sw_version``: the wearable's firmware)
    and uses the gateway's status topic for availability, so a gateway that dies shows its
    wearables as unavailable rather than stale.
    """
    _check_root(prefix, "mqtt.discovery_prefix")
    check_device_id(device_id)
    unique_base = device_identifier(topics, device_id)
    device: dict[str, Any] = {
        "identifiers": [unique_base],
        "name": device_id,
        "manufacturer": "gatewayd",
        "model": model or DEFAULT_WEARABLE_MODEL,
        "via_device": gateway_identifier(topics),
    }
    if sw_version:
        device["sw_version"] = sw_version
    availability = [
        {
            "topic": topics.status,
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    messages: list[DiscoveryMessage] = []
    for entity in _wearable_entities(topics, device_id):
        unique_id = f"{unique_base}_{entity.key}"
        payload = {
            **entity.config,
            "unique_id": unique_id,
            "default_entity_id": f"{entity.component}.{_entity_slug(unique_id)}",
            "device": device,
            "availability": availability,
            "origin": _origin(origin_version),
        }
        topic = _config_topic(
            prefix, entity.component, topics.gateway_id, f"{device_id}_{entity.key}"
        )
        messages.append(DiscoveryMessage(topic, _dump(payload)))
    return tuple(messages)


def device_discovery_topics(
    topics: Topics, device_id: str, *, prefix: str = "homeassistant"
) -> frozenset[str]:
    """The config topics `discovery_messages` publishes for one wearable."""
    return frozenset(
        _config_topic(prefix, e.component, topics.gateway_id, f"{device_id}_{e.key}")
        for e in _wearable_entities(topics, device_id)
    )


def gateway_discovery_message(
    topics: Topics, *, prefix: str = "homeassistant", sw_version: str | None = None
) -> DiscoveryMessage:
    """The gateway's own HA device: one connectivity binary_sensor on the status topic.

    The wearables name it as ``via_device``.
    """
    _check_root(prefix, "mqtt.discovery_prefix")
    identifier = gateway_identifier(topics)
    device: dict[str, Any] = {
        "identifiers": [identifier],
        "name": f"gatewayd {topics.gateway_id}",
        "manufacturer": "gatewayd",
        "model": GATEWAY_MODEL,
    }
    if sw_version:
        device["sw_version"] = sw_version
    unique_id = f"{identifier}_status"
    payload = {
        "name": "Broker connection",
        "unique_id": unique_id,
        "default_entity_id": f"binary_sensor.{_entity_slug(unique_id)}",
        "state_topic": topics.status,
        "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": device,
        "origin": _origin(sw_version),
    }
    topic = _config_topic(prefix, "binary_sensor", topics.gateway_id, "status")
    return DiscoveryMessage(topic, _dump(payload))


def config_filter(topics: Topics, prefix: str = "homeassistant") -> str:
    """A subscription filter for every discovery config this gateway publishes (node id)."""
    _check_root(prefix, "mqtt.discovery_prefix")
    return f"{prefix}/+/{topics.gateway_id}/+/config"


#: `config_owner` of the gateway's own config.
GATEWAY: Final = "<gateway>"


def config_owner(topics: Topics, payload: bytes) -> str | None:
    """Whose discovery config this is: a device id, `GATEWAY`, or None (not one of ours).

    Read from the payload's device identifiers (``gatewayd_<gw>`` or ``gatewayd_<gw>_<id>``),
    not from the topic: device ids may contain '_', and configs of entity kinds that no longer
    exist (older versions) are recognised the same way.
    """
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    device = body.get("device") if isinstance(body, dict) else None
    identifiers = device.get("identifiers") if isinstance(device, dict) else None
    if not isinstance(identifiers, list):
        return None
    gateway = gateway_identifier(topics)
    for identifier in identifiers:
        if identifier == gateway:
            return GATEWAY
        if isinstance(identifier, str) and identifier.startswith(gateway + "_"):
            device_id = identifier[len(gateway) + 1 :]
            if _DEVICE_ID_RE.fullmatch(device_id):
                return device_id
    return None


def stale_topics(
    topics: Topics,
    *,
    configs: Mapping[str, bytes],
    device_topics: Iterable[str],
    prefix: str = "homeassistant",
    discovery: bool,
    paired: Collection[str] | None,
) -> list[str]:
    """The retained topics to clear (empty retained payload), in a stable order.

    ``configs`` are the retained discovery configs found under `config_filter`, ``device_topics``
    the retained device topics found under `Topics.retained_filters`. Cleared: every config when
    discovery is off; the configs and retained device topics of a device that is not paired (when
    ``paired`` is known; None means "cannot tell", and then no device is removed); and configs
    this version no longer publishes (an entity kind that was dropped, such as the old "last
    alert" sensor). Configs that are not ours (`config_owner` None) are left alone.
    """
    gateway_topic = gateway_discovery_message(topics, prefix=prefix).topic
    stale: list[str] = []
    wanted: dict[str, frozenset[str]] = {}
    for topic in sorted(configs):
        owner = config_owner(topics, configs[topic])
        if owner is None:
            continue
        if not discovery:
            stale.append(topic)
        elif owner == GATEWAY:
            if topic != gateway_topic:
                stale.append(topic)
        elif paired is not None and owner not in paired:
            stale.append(topic)
        else:
            if owner not in wanted:
                wanted[owner] = device_discovery_topics(topics, owner, prefix=prefix)
            if topic not in wanted[owner]:
                stale.append(topic)
    if paired is not None:
        for topic in sorted(device_topics):
            parsed = topics.parse_device_topic(topic)
            if parsed is not None and parsed[1] in RETAINED_CHANNELS and parsed[0] not in paired:
                stale.append(topic)
    return stale
