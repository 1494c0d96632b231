"""The topic tree and Home Assistant MQTT discovery: pure functions, no I/O.

``<topic_root>/<gateway_id>/{status,alerts}`` and ``<topic_root>/<gateway_id>/devices/
<device_id>/{state,alerts,telemetry}`` (DESIGN.md §8, docs/mqtt.md). Device ids are the stable
aliases given at pairing, never MAC addresses; anything that could change the shape of a topic
(a wildcard, a slash, a NUL, a colon from a MAC) is rejected here with `TopicError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from gatewayd.errors import GatewayError
from gatewayd.publish.payloads import ActivityName

__all__ = [
    "ACTIVITY_OPTIONS",
    "DEVICE_CHANNELS",
    "Channel",
    "DiscoveryMessage",
    "TopicError",
    "Topics",
    "check_device_id",
    "discovery_messages",
    "gateway_discovery_message",
]

#: The states of the activity entity: every activity group the state payload can carry.
ACTIVITY_OPTIONS: Final[tuple[str, ...]] = get_args(ActivityName)

Channel = Literal["state", "alerts", "telemetry"]
DEVICE_CHANNELS: Final[frozenset[str]] = frozenset({"state", "alerts", "telemetry"})

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
                f"unknown device channel {channel!r}; expected one of state, alerts, telemetry"
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

    @property
    def all_devices(self) -> str:
        """A subscription filter for every device topic of this gateway (for tools and docs)."""
        return f"{self.base}/devices/+/+"


# --- Home Assistant MQTT discovery -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveryMessage:
    """One retained discovery config: publish ``payload`` to ``topic`` with retain."""

    topic: str
    payload: bytes


def _entity(
    *,
    component: str,
    key: str,
    name: str,
    state_topic: str,
    value_template: str,
    extra: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    return component, {
        "key": key,
        "name": name,
        "state_topic": state_topic,
        "value_template": value_template,
        **extra,
    }


def discovery_messages(
    topics: Topics,
    device_id: str,
    *,
    prefix: str = "homeassistant",
    model: str | None = None,
    sw_version: str | None = None,
) -> tuple[DiscoveryMessage, ...]:
    """Home Assistant discovery configs for one wearable (publish retained, on every connect).

    Topic: ``<prefix>/<component>/<node_id>/<object_id>/config`` with node_id = gateway id and
    object_id = ``<device_id>_<entity>``. Every entity shares one HA device block and uses the
    gateway's status topic for availability, so a gateway that dies shows its wearables as
    unavailable rather than stale.
    """
    _check_root(prefix, "mqtt.discovery_prefix")
    check_device_id(device_id)
    state = topics.state(device_id)
    alerts = topics.alerts(device_id)
    unique_base = f"gatewayd_{topics.gateway_id}_{device_id}"
    device: dict[str, Any] = {
        "identifiers": [unique_base],
        "name": device_id,
        "manufacturer": "gatewayd",
        "via_device": f"gatewayd_{topics.gateway_id}",
    }
    if model is not None:
        device["model"] = model
    if sw_version is not None:
        device["sw_version"] = sw_version
    availability = [
        {
            "topic": topics.status,
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    entities = [
        _entity(
            component="sensor",
            key="heart_rate",
            name="Heart rate",
            state_topic=state,
            value_template="{{ value_json.hr_bpm | default(None) }}",
            extra={
                "unit_of_measurement": "bpm",
                "state_class": "measurement",
                "icon": "mdi:heart-pulse",
            },
        ),
        _entity(
            component="sensor",
            key="battery",
            name="Battery",
            state_topic=state,
            value_template="{{ value_json.battery_pct | default(None) }}",
            extra={
                "device_class": "battery",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "entity_category": "diagnostic",
            },
        ),
        _entity(
            component="sensor",
            key="activity",
            name="Activity",
            state_topic=state,
            # An enum sensor: HA offers the four groups in automations and history. A state
            # without an activity (no window yet) shows as unknown, which is one of them.
            value_template="{{ value_json.activity | default('unknown') }}",
            extra={"device_class": "enum", "options": list(ACTIVITY_OPTIONS), "icon": "mdi:run"},
        ),
        _entity(
            component="binary_sensor",
            key="connected",
            name="Connected",
            state_topic=state,
            value_template="{{ 'ON' if value_json.connected else 'OFF' }}",
            extra={"device_class": "connectivity", "entity_category": "diagnostic"},
        ),
        _entity(
            component="sensor",
            key="last_alert",
            name="Last alert",
            state_topic=alerts,
            value_template="{{ value_json.kind }} {{ value_json.state }}",
            extra={"json_attributes_topic": alerts, "icon": "mdi:alert"},
        ),
    ]
    messages: list[DiscoveryMessage] = []
    for component, config in entities:
        key = config.pop("key")
        object_id = f"{device_id}_{key}"
        payload = {
            **config,
            "unique_id": f"{unique_base}_{key}",
            "object_id": f"gatewayd_{topics.gateway_id}_{object_id}",
            "device": device,
            "availability": availability,
            "origin": {"name": "gatewayd"},
        }
        topic = f"{prefix}/{component}/{topics.gateway_id}/{object_id}/config"
        messages.append(
            DiscoveryMessage(topic, json.dumps(payload, separators=(",", ":")).encode())
        )
    return tuple(messages)


def gateway_discovery_message(
    topics: Topics, *, prefix: str = "homeassistant", sw_version: str | None = None
) -> DiscoveryMessage:
    """The gateway's own HA device: one connectivity binary_sensor on the status topic.

    The wearables name it as ``via_device``.
    """
    _check_root(prefix, "mqtt.discovery_prefix")
    identifier = f"gatewayd_{topics.gateway_id}"
    device: dict[str, Any] = {
        "identifiers": [identifier],
        "name": f"gatewayd {topics.gateway_id}",
        "manufacturer": "gatewayd",
    }
    if sw_version is not None:
        device["sw_version"] = sw_version
    payload = {
        "name": "Broker connection",
        "unique_id": f"{identifier}_status",
        "object_id": f"{identifier}_status",
        "state_topic": topics.status,
        "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": device,
        "origin": {"name": "gatewayd"},
    }
    topic = f"{prefix}/binary_sensor/{topics.gateway_id}/status/config"
    return DiscoveryMessage(topic, json.dumps(payload, separators=(",", ":")).encode())
