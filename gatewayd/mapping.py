"""From what a wearable sent to what the rest of the gateway reads: pure mapping, no I/O, no clock.

A frame (SUMMARY or WINDOW, with the gateway's analysis of an offloaded one) becomes the
`Observation` the rules read and the `WindowRecord` the event log stores; a strap's measurement
becomes an observation too; an alert transition, a loss on the link or a gateway-level fact
becomes the `NewEvent` the event log (and so the outbox) holds. Every function here is tested
with literals (tests/test_pipeline.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

import numpy as np

from gatewayd.activity import ActivityGroup, group_name
from gatewayd.inference.analysis import WindowAnalysis
from gatewayd.link.events import HeartRateReceived
from gatewayd.protocol.messages import UNKNOWN_PERCENT, MessageFlags, Summary, Window, summary_of
from gatewayd.rules.alerts import AlertTransition
from gatewayd.rules.inputs import Observation
from gatewayd.signals.offload import motion_cg
from gatewayd.store.records import (
    NewEvent,
    WindowRecord,
    gateway_event,
    window_record_from_message,
)

__all__ = [
    "MAX_CLOCK_SKEW_S",
    "alert_event",
    "clock_problem",
    "data_lost_event",
    "device_fault_event",
    "gateway_event",
    "observation_for_frame",
    "observation_for_strap",
    "record_for_frame",
    "sequence_jump_event",
    "summary_hr_confidence",
    "untrusted_event",
    "window_time",
]


#: A synced wearable clock further than this from the window's arrival is not believed: the
#: wearable's ring holds minutes of windows, not days (an all-0xFF unset clock is ~584 My ahead).
MAX_CLOCK_SKEW_S: Final = 86_400.0


def clock_problem(summary: Summary, received_at: float) -> str | None:
    """Why a frame's claimed time cannot be believed, or None if it can (or it claims none)."""
    if not summary.flags & MessageFlags.CLOCK_SYNCED:
        return None
    skew = summary.t_ms / 1000 - received_at
    if abs(skew) <= MAX_CLOCK_SKEW_S:
        return None
    return (
        f"the wearable's clock says t_ms={summary.t_ms}, {abs(skew) / 86_400:.0f} days"
        f" {'ahead of' if skew > 0 else 'behind'} the gateway's; its windows are timed by"
        " arrival instead (set its clock: it is re-synced at every connection)"
    )


def window_time(summary: Summary, received_at: float) -> float:
    """Wall-clock start of a window: the wearable's clock once synced (and believable, see
    `clock_problem`), else arrival - length."""
    if summary.flags & MessageFlags.CLOCK_SYNCED and clock_problem(summary, received_at) is None:
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
    mono: float | None = None,
) -> Observation:
    """What the rules see for one frame: the gateway's analysis if any, else the wearable's.

    ``received_at`` (wall clock) labels it; ``mono`` (monotonic, None: same as received_at)
    times the rules' durations."""
    s = summary_of(message)
    quality = None if s.signal_quality == UNKNOWN_PERCENT else s.signal_quality
    acc = None
    acc_rate = 32.0
    motion = s.motion_g
    if isinstance(message, Window) and message.acc_lsb_per_g > 0:
        acc = message.acc.astype(np.float64) / message.acc_lsb_per_g
        acc_rate = float(message.acc_rate_hz)
        if motion is None:  # an older wearable: the raw samples say it as well
            motion = motion_cg(message.acc, message.acc_lsb_per_g) / 100
    common: dict[str, Any] = {
        "device_id": device_id,
        "seq": s.seq,
        "t": received_at,
        "signal_quality": quality,
        "off_wrist": bool(s.flags & MessageFlags.OFF_WRIST),
        "battery": s.battery,
        "charging": bool(s.flags & MessageFlags.CHARGING),
        "window_id": window_id,
        "mono": mono,
        "acc": acc,
        "acc_rate_hz": acc_rate,
        # The samples' own time (the wearable's clock once synced): bursts of late windows
        # still cover the seconds they were measured in (the fall rule's stillness).
        "acc_end": window_time(s, received_at) + s.window_ms / 1000,
        "window_s": s.window_ms / 1000,
        "motion_g": motion,
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


def observation_for_strap(event: HeartRateReceived, mono: float | None = None) -> Observation:
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
        mono=mono,
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
    if clock_problem(summary_of(message), received_at) is not None:
        record = replace(record, t_ms=None)  # unknown, rather than a value no column can hold
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


def _device_event(
    device_id: str, kind: str, severity: str, reason: str, t: float, **evidence: Any
) -> NewEvent:
    """A one-off technical event about a device: raised, never cleared (docs/mqtt.md)."""
    return NewEvent(
        kind=kind,
        severity=severity,
        state="raised",
        payload={
            "device_id": device_id,
            "kind": kind,
            "category": "technical",
            "t": t,
            "reason": reason,
            "evidence": evidence,
        },
        device_id=device_id,
        t_ms=round(t * 1000),
    )


def data_lost_event(
    device_id: str, first: int, count: int, t: float, cause: str = "gap"
) -> NewEvent:
    """A technical event for messages the link could not recover: loss is never silent.

    ``cause``: "gap" (never received, resends gave up), "resume" (produced while the gateway was
    down and no longer in the wearable's ring), "queue_full" (received, not kept up with).
    """
    return _device_event(device_id, "data_lost", "warning", "messages_lost", t,
                         first=first, count=count, cause=cause)  # fmt: skip


def sequence_jump_event(device_id: str, expected: int, got: int, bound: int, t: float) -> NewEvent:
    """A sequence number further ahead than the device could have counted: ordering resumed
    there, and nothing is declared lost (a wearable's counter fault, not missing data)."""
    return _device_event(
        device_id, "sequence_jump", "warning",
        f"sequence number jumped from {expected} to {got}, further than the {bound} messages the"
        " device could have produced since it was last heard from; ordering resumed at the new"
        " number and the skipped numbers are not counted as lost",
        t, expected=expected, got=got, bound=bound,
    )  # fmt: skip


def untrusted_event(device_id: str, reason: str, detail: str, t: float) -> NewEvent:
    """The device at a paired address failed authentication or changed identity: none of its
    data is taken (docs/pairing.md). Critical when something may be impersonating it."""
    severity = "warning" if reason == "not_bonded" else "critical"
    return _device_event(device_id, "device_untrusted", severity, detail, t, untrusted=reason)


def device_removed_event(device_id: str, renamed_to: str | None, t: float) -> NewEvent:
    """The device was taken off the paired list (or renamed to ``renamed_to``): nothing is
    monitored under its id from now on, which a subscriber must not learn from silence
    (docs/pairing.md). Sent when the running gateway lets it go, or at the next start."""
    if renamed_to is None:
        reason = "taken off the paired list: the gateway no longer monitors this device"
    else:
        reason = f"renamed to {renamed_to}: monitored under that id from now on"
    return _device_event(device_id, "device_removed", "info", reason, t, renamed_to=renamed_to)


def device_fault_event(device_id: str, fault: str, message: str, t: float) -> NewEvent:
    """A technical event for a device whose input could not be fully processed (``fault``: a
    short kind, such as "clock" or "store"); ``message`` says what and what was done instead."""
    return _device_event(device_id, "device_fault", "warning", message, t, fault=fault)
