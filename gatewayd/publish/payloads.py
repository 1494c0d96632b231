"""The JSON payloads gatewayd publishes over MQTT, as frozen pydantic models.

These models are the MQTT contract (docs/mqtt.md). Every payload carries
``schema_version``; a change that breaks subscribers bumps it. docs/mqtt.md embeds the JSON
Schema of each model, and a test fails when the document and the models disagree
(`schema_markdown` renders the section; ``GATEWAYD_UPDATE_DOCS=1`` makes the test rewrite it).

Pure: no I/O, no clock. Event ids come from `gatewayd.ids.new_event_id` (UUIDv7).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "DATA_LOST_KIND",
    "DEVICE_EVENT_KINDS",
    "PAYLOAD_MODELS",
    "SCHEMA_VERSION",
    "ActivityName",
    "Alert",
    "DeviceState",
    "GatewayAlert",
    "OpenAlerts",
    "Status",
    "Telemetry",
    "schema_markdown",
]

#: Bumped on any change that breaks a subscriber parsing the payloads.
SCHEMA_VERSION: Final = 1


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _iso_z(value: datetime) -> str:
    # RFC 3339 with milliseconds and "Z": what JavaScript's Date.toISOString() writes.
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: A timezone-aware instant, normalised to UTC, serialised as ISO 8601 with a "Z".
UtcTime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(_iso_z, return_type=str, when_used="json"),
]


def _check_uuid7(value: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ValueError(f"expected a UUID string, got {value!r}") from None
    if parsed.version != 7 or str(parsed) != value:
        raise ValueError(f"expected a lower-case, hyphenated UUIDv7, got {value!r}")
    return value


#: The event's stable id: a UUIDv7 (time-ordered), the key subscribers deduplicate on.
EventId = Annotated[str, AfterValidator(_check_uuid7)]
DeviceId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
]
GatewayId = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Percent = Annotated[int, Field(ge=0, le=100)]
Bpm = Annotated[float, Field(ge=0.0, le=300.0, allow_inf_nan=False)]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Payload schema version."
    )

    def to_json(self) -> bytes:
        """The payload as compact UTF-8 JSON, optional fields that are unset left out."""
        return self.model_dump_json(exclude_none=True).encode()


class Status(_Payload):
    """`<root>/<gateway_id>/status` (retained): is the gateway connected to the broker."""

    state: Literal["online", "offline"]
    gateway_id: GatewayId
    reason: Literal["connected", "shutdown", "connection_lost"] = Field(
        description="connected: online after a (re)connect; shutdown: clean stop;"
        " connection_lost: the broker published our last will."
    )
    t: UtcTime | None = Field(
        default=None, description="When the state was published (absent in the last will)."
    )
    version: str | None = Field(default=None, description="gatewayd version.")


#: An activity group (gatewayd/activity.py): the one activity vocabulary of the wire, the
#: models and the rules.
ActivityName = Literal["rest", "light", "vigorous", "unknown"]


class DeviceState(_Payload):
    """`devices/<device_id>/state` (retained): the latest known state of one wearable."""

    device_id: DeviceId
    gateway_id: GatewayId
    connected: bool
    t: UtcTime = Field(description="When this state was computed.")
    last_seen: UtcTime | None = Field(default=None, description="Last frame from the device.")
    battery_pct: Percent | None = None
    hr_bpm: Bpm | None = None
    activity: ActivityName | None = Field(
        default=None,
        description="Activity group of the latest window; absent before the first window.",
    )
    activity_confidence: Fraction | None = Field(
        default=None,
        description="Probability of that group (absent when it is unknown); the rules treat a"
        " group below rules.activities.min_confidence as unknown.",
    )
    signal_quality: Fraction | None = Field(
        default=None, description="0 = unusable (off-wrist), 1 = clean."
    )
    rssi_dbm: int | None = Field(default=None, ge=-127, le=20)
    firmware: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=64, description="Wearable hardware model.")
    model_id: str | None = Field(
        default=None, max_length=64, description="On-device inference model id."
    )


class Alert(_Payload):
    """`devices/<device_id>/alerts` (QoS 1, not retained): an alert raised or cleared."""

    event_id: EventId = Field(description="UUIDv7; subscribers drop duplicates by this id.")
    device_id: DeviceId
    gateway_id: GatewayId
    kind: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")] = Field(
        description="Rule name, e.g. tachycardia, low_battery, device_silent."
    )
    category: Literal["physiological", "technical"] = Field(
        description="technical: no data, not worn, battery, gateway degraded; never confused"
        " with physiological."
    )
    severity: Literal["info", "warning", "critical"]
    state: Literal["raised", "cleared"]
    t: UtcTime = Field(description="When the rule fired (or cleared).")
    evidence: dict[str, Any] = Field(
        default_factory=dict,
        description="What the rule saw: window ids, values, thresholds, model id.",
    )


#: The kind of the device event for messages the link could not recover: raised, never
#: cleared, published on the device alert topic like the rules' alerts.
DATA_LOST_KIND: Final = "data_lost"
#: Device technical events that are raised once and never cleared, beside the rules' alerts on
#: the device alert topic: messages lost; input the gateway could not fully process
#: (``device_fault``); a device that failed authentication or changed identity
#: (``device_untrusted``); a sequence number that jumped further than the device could have
#: counted (``sequence_jump``); a device taken off the paired list or renamed, no longer
#: monitored under its id (``device_removed``, severity info).
DEVICE_EVENT_KINDS: Final[tuple[str, ...]] = (
    DATA_LOST_KIND,
    "device_fault",
    "device_untrusted",
    "sequence_jump",
    "device_removed",
)

AlertKindName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]


class OpenAlerts(_Payload):
    """`devices/<device_id>/open_alerts` (retained): the alert kinds raised and not cleared.

    Kept by the publisher from the alerts it delivers (a raise adds its kind, a clear removes
    it), published after the alert that changed it, and again after every reconnect. What Home
    Assistant's problem sensors read, so they show the truth after a restart of either side.
    """

    device_id: DeviceId
    gateway_id: GatewayId
    kinds: tuple[AlertKindName, ...] = Field(
        description="The alert kinds raised and not yet cleared, sorted; empty when none."
    )
    t: UtcTime = Field(description="When this set was computed.")


#: The longest `GatewayAlert.message`; longer texts are cut (they are in the journal in full).
MESSAGE_MAX_CHARS: Final = 1000


class GatewayAlert(_Payload):
    """`<root>/<gateway_id>/alerts` (QoS 1, not retained): a gateway-level technical event.

    Events about the gateway itself, not about a wearable: no model installed (degraded mode),
    the event log recovered from corruption.
    """

    event_id: EventId = Field(description="UUIDv7; subscribers drop duplicates by this id.")
    gateway_id: GatewayId
    kind: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")] = Field(
        description="What happened, e.g. model_missing, store_recovered."
    )
    category: Literal["technical"] = Field(
        default="technical", description="Always technical: the gateway, never a patient."
    )
    severity: Literal["info", "warning", "critical"]
    state: Literal["raised", "cleared"]
    t: UtcTime = Field(description="When the gateway noticed.")
    message: str = Field(
        min_length=1, max_length=MESSAGE_MAX_CHARS, description="What happened, for a human."
    )
    details: dict[str, Any] = Field(
        default_factory=dict, description="Facts for tools: the model asked for, files moved."
    )


class Telemetry(_Payload):
    """`devices/<device_id>/telemetry` (QoS 0): the summary of one 8 s window."""

    device_id: DeviceId
    seq: int = Field(ge=0, description="Window sequence number from the wearable.")
    t: UtcTime = Field(description="Window start.")
    hr_bpm: Bpm | None = None
    hr_source: Literal["device_model", "gateway_model", "signal"] | None = Field(
        default=None,
        description="device_model: the wearable's pruned model; gateway_model: the full model"
        " on an offloaded window; signal: the spectral estimator.",
    )
    activity: ActivityName | None = Field(
        default=None,
        description="Activity group: the gateway model's on an offloaded window, else the"
        " wearable's.",
    )
    activity_confidence: Fraction | None = Field(
        default=None, description="Probability of that group; absent when it is unknown."
    )
    confidence: Fraction | None = Field(default=None, description="Confidence of hr_bpm.")
    entropy_bits: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    motion_g: float | None = Field(
        default=None,
        ge=0.0,
        allow_inf_nan=False,
        description="How hard the wrist moved over the window (RMS g about its mean; 0 still,"
        " about 0.2 walking, 1 running); absent when the wearable does not report it.",
    )
    offloaded: bool = False
    signal_quality: Fraction | None = None
    battery_pct: Percent | None = None
    model_id: str | None = Field(default=None, max_length=64)


#: Every payload model, in the order docs/mqtt.md lists them.
PAYLOAD_MODELS: Final[tuple[type[_Payload], ...]] = (
    Status,
    DeviceState,
    Alert,
    GatewayAlert,
    OpenAlerts,
    Telemetry,
)


def schema_markdown() -> str:
    """The generated schema section of docs/mqtt.md (between the BEGIN/END markers)."""
    parts: list[str] = []
    for model in PAYLOAD_MODELS:
        schema = model.model_json_schema(mode="serialization")
        text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False)
        parts.append(f"### {model.__name__}\n\n```json\n{text}\n```\n")
    return "\n".join(parts)
