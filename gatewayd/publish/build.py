"""The MQTT payloads the gateway publishes, built from what it observed and stored (pure).

`telemetry_for` (one window, QoS 0), `device_state` of a `DeviceView` (the retained state topic)
and `state_changed` (whether a new view is worth publishing),
`alert_payload` and `gateway_alert_payload` of a stored event (what the outbox delivers). The
payload models themselves are in payloads.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, cast

from gatewayd.activity import group_name
from gatewayd.mapping import window_time
from gatewayd.protocol.messages import Summary, Window, summary_of
from gatewayd.publish.payloads import (
    MESSAGE_MAX_CHARS,
    ActivityName,
    Alert,
    DeviceState,
    GatewayAlert,
    Telemetry,
)
from gatewayd.rules.inputs import Observation
from gatewayd.store.records import StoredEvent

__all__ = [
    "DeviceView",
    "activity_confidence",
    "activity_name",
    "alert_payload",
    "device_state",
    "gateway_alert_payload",
    "state_changed",
    "telemetry_for",
]

#: While only per-window values move, the retained state is published again this often (s of
#: ``last_seen``): its heart rate and last-seen time stay fresh without a publish per window.
STATE_REFRESH_S: Final = 60.0
#: A heart rate this far (bpm) from the published one is a change, published at once.
STATE_HR_STEP_BPM: Final = 5.0


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


def activity_name(obs: Observation) -> ActivityName:
    """The group name an observation reports: "rest", "light", "vigorous" or "unknown"."""
    return cast(ActivityName, group_name(obs.activity))


def activity_confidence(obs: Observation) -> float | None:
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
        activity=activity_name(obs),
        activity_confidence=activity_confidence(obs),
        confidence=_fraction(obs.hr_confidence if obs.hr_bpm is not None else None),
        entropy_bits=s.entropy_bits,
        motion_g=obs.motion_g,
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


def state_changed(
    published: DeviceView | None,
    view: DeviceView,
    *,
    refresh_s: float = STATE_REFRESH_S,
    hr_step_bpm: float = STATE_HR_STEP_BPM,
) -> bool:
    """Whether ``view`` should be published over ``published`` (the view last published).

    A change is: connected, battery, activity group, firmware or model; a heart rate that
    appears, goes, or moves by ``hr_step_bpm`` or more. Per-window values alone (last seen, a
    small heart-rate move, signal quality, the group's probability) are published once
    ``last_seen`` is ``refresh_s`` past the published one.
    """
    if published is None:
        return True
    slow = ("connected", "battery_pct", "activity", "firmware", "model_id")
    if any(getattr(view, name) != getattr(published, name) for name in slow):
        return True
    if (view.hr_bpm is None) != (published.hr_bpm is None):
        return True
    if (
        view.hr_bpm is not None
        and published.hr_bpm is not None
        and abs(view.hr_bpm - published.hr_bpm) >= hr_step_bpm
    ):
        return True
    if view.last_seen is None or view == published:
        return False
    return published.last_seen is None or view.last_seen - published.last_seen >= refresh_s


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
