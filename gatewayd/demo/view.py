"""What the demo shows: the MQTT messages a subscriber receives, folded into a view (pure).

:class:`DemoState` is built only from what arrives on the broker (status, per-device state,
telemetry, alerts), so the live view shows the path a user's own subscriber would see; queue
depths come from the gateway itself. :func:`render` draws one frame as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["AlertLine", "DemoState", "DeviceRow", "Gauges", "render"]

#: The Home Assistant discovery prefix the demo's gateway publishes under (the default).
DISCOVERY_PREFIX: Final = "homeassistant"
_SEVERITY_MARK: Final = {"critical": "!!", "warning": "! ", "info": "  "}
_MAX_ALERT_LINES: Final = 8


@dataclass
class DeviceRow:
    """One wearable as the subscriber knows it."""

    device_id: str
    connected: bool | None = None
    hr_bpm: float | None = None
    hr_source: str | None = None
    #: The activity group ("rest", "light", "vigorous", "unknown") and its probability.
    activity: str | None = None
    activity_confidence: float | None = None
    battery_pct: int | None = None
    windows: int = 0
    offloaded: int = 0
    #: Distinct window sequence numbers received (telemetry is QoS 0: no repeats expected).
    seqs: set[int] = field(default_factory=set)
    open_alerts: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class AlertLine:
    """One alert message as received."""

    t_s: float
    event_id: str
    device_id: str
    kind: str
    state: str
    severity: str
    category: str


@dataclass(frozen=True, slots=True)
class Gauges:
    """Figures read off the gateway rather than the broker."""

    pipeline_backlog: int = 0
    inference_backlog: int = 0
    inference_capacity: int = 0
    mqtt_connected: bool = False
    model: str = ""


@dataclass
class DemoState:
    """Everything the demo's subscriber received, by kind."""

    devices: dict[str, DeviceRow] = field(default_factory=dict)
    alerts: list[AlertLine] = field(default_factory=list)
    #: Every alert message's event id, with how many times it arrived (QoS 1 may repeat).
    deliveries: dict[str, int] = field(default_factory=dict)
    #: (device_id, kind) -> demo time of the first "raised" alert received.
    first_raised: dict[tuple[str, str], float] = field(default_factory=dict)
    gateway_status: str | None = None
    gateway_alerts: list[AlertLine] = field(default_factory=list)
    #: Home Assistant discovery config topics present (retained, not emptied).
    discovery: set[str] = field(default_factory=set)
    messages: int = 0
    malformed: int = 0

    def row(self, device_id: str) -> DeviceRow:
        """The row of ``device_id``, created on first sight."""
        return self.devices.setdefault(device_id, DeviceRow(device_id))

    def on_message(self, topic: str, payload: bytes, t_s: float) -> None:
        """Fold one MQTT message received at demo time ``t_s``.

        Topics: ``gatewayd/<gw>/...``, and ``homeassistant/<component>/<gw>/<id>/config``.
        An empty payload clears a retained topic: not malformed, nothing to show.
        """
        self.messages += 1
        parts = topic.split("/")
        if parts[0] == DISCOVERY_PREFIX and parts[-1] == "config":
            (self.discovery.add if payload else self.discovery.discard)(topic)
            return
        if not payload:
            return
        try:
            body = json.loads(payload)
        except ValueError:
            self.malformed += 1
            return
        if not isinstance(body, dict):
            self.malformed += 1
            return
        leaf = parts[-1]
        if len(parts) == 3 and leaf == "status":
            self.gateway_status = str(body.get("state"))
        elif len(parts) == 3 and leaf == "alerts":
            self.gateway_alerts.append(_alert_line(body, t_s, "gateway"))
        elif len(parts) == 5 and parts[2] == "devices":
            self._device_message(parts[3], leaf, body, t_s)

    def _device_message(self, device_id: str, leaf: str, body: dict[str, Any], t_s: float) -> None:
        row = self.row(device_id)
        if leaf == "telemetry":
            row.windows += 1
            row.offloaded += bool(body.get("offloaded"))
            if isinstance(body.get("seq"), int):
                row.seqs.add(body["seq"])
            if body.get("hr_bpm") is not None:
                row.hr_bpm = float(body["hr_bpm"])
                row.hr_source = body.get("hr_source")
            if body.get("activity") is not None:
                row.activity = str(body["activity"])
                confidence = body.get("activity_confidence")
                row.activity_confidence = (
                    float(confidence) if isinstance(confidence, int | float) else None
                )
            if body.get("battery_pct") is not None:
                row.battery_pct = int(body["battery_pct"])
        elif leaf == "state":
            row.connected = bool(body.get("connected"))
            if body.get("battery_pct") is not None:
                row.battery_pct = int(body["battery_pct"])
        elif leaf == "alerts":
            line = _alert_line(body, t_s, device_id)
            count = self.deliveries.get(line.event_id, 0)
            self.deliveries[line.event_id] = count + 1
            if count:
                return  # a QoS 1 redelivery: already shown
            self.alerts.append(line)
            if line.state == "raised":
                row.open_alerts.add(line.kind)
                self.first_raised.setdefault((device_id, line.kind), t_s)
            else:
                row.open_alerts.discard(line.kind)

    @property
    def windows(self) -> int:
        """Telemetry messages received, all devices."""
        return sum(r.windows for r in self.devices.values())

    @property
    def offloaded(self) -> int:
        """Offloaded windows among them."""
        return sum(r.offloaded for r in self.devices.values())


def _alert_line(body: dict[str, Any], t_s: float, device_id: str) -> AlertLine:
    return AlertLine(
        t_s=t_s,
        event_id=str(body.get("event_id", "")),
        device_id=str(body.get("device_id", device_id)),
        kind=str(body.get("kind", "?")),
        state=str(body.get("state", "?")),
        severity=str(body.get("severity", "info")),
        category=str(body.get("category", "?")),
    )


def _ratio(part: int, whole: int) -> str:
    return f"{100 * part / whole:3.0f}%" if whole else "   -"


def _opt(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def render(
    state: DemoState,
    gauges: Gauges,
    *,
    elapsed_s: float,
    header: list[str],
    stories: dict[str, str],
) -> str:
    """One frame of the live view: header, device table, queue gauges, recent alerts."""
    lines = list(header)
    lines.append("")
    lines.append(
        f"{'device':<12} {'link':<5} {'HR':>5} {'src':<6} {'activity':<13} {'batt':>4}"
        f" {'windows':>7} {'offload':>7}  open alerts"
    )
    for device_id in sorted(set(state.devices) | set(stories)):
        r = state.row(device_id)
        link = {True: "up", False: "DOWN", None: "..."}[r.connected]
        src = {"gateway_model": "model", "device_model": "device", "signal": "signal"}.get(
            r.hr_source or "", "-"
        )
        lines.append(
            f"{device_id:<12} {link:<5} {_opt(r.hr_bpm, '{:.0f}'):>5} {src:<6}"
            f" {_activity(r):<13} {_opt(r.battery_pct, '{}%'):>4} {r.windows:>7}"
            f" {_ratio(r.offloaded, r.windows):>7}  {', '.join(sorted(r.open_alerts)) or '-'}"
        )
    lines.append("")
    lines.append(
        f"t={elapsed_s:5.1f}s  gateway {state.gateway_status or '...'}"
        f" (mqtt {'up' if gauges.mqtt_connected else 'down'}, model {gauges.model or '-'})"
        f"  windows {state.windows}, offloaded {_ratio(state.offloaded, state.windows).strip()}"
        f"  queue: pipeline {gauges.pipeline_backlog},"
        f" inference {gauges.inference_backlog}/{gauges.inference_capacity}"
    )
    lines.append("")
    recent = (state.alerts + state.gateway_alerts)[-_MAX_ALERT_LINES:]
    recent.sort(key=lambda a: a.t_s)
    lines.append(f"alerts received over MQTT ({len(state.alerts)} device, "
                 f"{len(state.gateway_alerts)} gateway):")  # fmt: skip
    if not recent:
        lines.append("  (none yet)")
    for a in recent:
        lines.append(
            f"  {a.t_s:5.1f}s {_SEVERITY_MARK.get(a.severity, '  ')} {a.device_id:<12}"
            f" {a.kind:<14} {a.state:<8} {a.severity:<8} {a.category}"
        )
    return "\n".join(lines)


def _activity(row: DeviceRow) -> str:
    """The group and, when known, its probability: "vigorous 0.83"."""
    if row.activity is None:
        return "-"
    if row.activity_confidence is None:
        return row.activity
    return f"{row.activity} {row.activity_confidence:.2f}"
