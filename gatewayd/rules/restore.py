"""Restore the alerts that were open when the gateway stopped (pure: no clock, no I/O).

The rule state lives in memory; the event log keeps every transition. At start the caller reads
the alerts whose latest transition is a raise and hands them here: the engine then treats each
as raised, with its episode, so a condition that still holds raises nothing new and the clear
that ends it names the original episode (and ``raised_at``).

A restored alert has no monotonic time (that clock starts again with the process): it counts as
raised at the restore time ``mono`` for staleness (a heart-rate alert with no trustworthy window
for ``rules.hr.stale_s`` after the restore is cleared, reason ``no_data``); a cooldown starts at
its clear, as for any alert. An alert whose rule is now disabled is cleared at once (reason
``disabled``), and so is one of a device no longer on the paired list (reason ``unpaired``):
nothing would ever clear them otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gatewayd.rules.alerts import CATEGORY, AlertKind, AlertTransition, Evidence
from gatewayd.rules.config import RuleBase, RulesConfig
from gatewayd.rules.evaluate import DeviceState
from gatewayd.rules.track import TrackState

__all__ = [
    "AlertRecord",
    "OpenAlert",
    "RestoreResult",
    "Restored",
    "Skipped",
    "parse_open_alert",
    "restore_alert",
    "restore_alerts",
]


class AlertRecord(Protocol):
    """An alert event as stored: `gatewayd.store.records.StoredEvent` is one."""

    @property
    def device_id(self) -> str | None: ...

    @property
    def kind(self) -> str: ...

    @property
    def payload(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An `AlertRecord` built by hand: the payload is `AlertTransition.to_payload()`."""

    device_id: str | None
    kind: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Restored:
    """What restore keeps of an open alert."""

    device_id: str
    kind: AlertKind
    episode: int
    #: Wall-clock label of the raise, as the payload gave it.
    raised_at: float


@dataclass(frozen=True, slots=True)
class Skipped:
    """An alert not restored, and why (for the caller's log)."""

    alert: AlertRecord
    reason: str


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """The outcome of a restore."""

    restored: tuple[Restored, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    #: Clears of open alerts whose rule is now disabled (reason ``disabled``) or whose device
    #: is no longer paired (``unpaired``): to be written and published like any transition.
    transitions: tuple[AlertTransition, ...] = ()


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class _UnusableError(ValueError):
    """Why an alert record cannot be restored."""


def _field(payload: Mapping[str, Any], key: str, expected: object) -> None:
    if payload.get(key, expected) != expected:
        raise _UnusableError(f"payload {key} {payload.get(key)!r} is not the event's {expected!r}")


def _parse(alert: AlertRecord) -> Restored:
    device_id, kind_name = getattr(alert, "device_id", None), getattr(alert, "kind", None)
    payload: object = getattr(alert, "payload", None)
    if not isinstance(device_id, str) or not device_id:
        raise _UnusableError("no device id")
    if not isinstance(payload, Mapping):
        raise _UnusableError(f"payload is {type(payload).__name__}, not an object")
    try:
        kind = AlertKind(str(kind_name))
    except ValueError:
        raise _UnusableError(f"unknown alert kind {kind_name!r}") from None
    _field(payload, "kind", kind.value)
    _field(payload, "device_id", device_id)
    if payload.get("state") != "raised":
        raise _UnusableError(f"state {payload.get('state')!r} is not 'raised'")
    episode = payload.get("episode")
    if isinstance(episode, bool) or not isinstance(episode, int) or episode < 1:
        raise _UnusableError(f"episode {episode!r} is not a positive integer")
    raised_at = _number(payload.get("raised_at"))
    if raised_at is None:
        raise _UnusableError(f"raised_at {payload.get('raised_at')!r} is not a finite number")
    return Restored(device_id, kind, episode, raised_at)


def parse_open_alert(alert: AlertRecord) -> Restored | str:
    """The alert to restore, or why it cannot be (never raises)."""
    try:
        return _parse(alert)
    except _UnusableError as exc:
        return str(exc)


def restore_alert(
    config: RulesConfig,
    state: DeviceState,
    alert: Restored,
    *,
    t: float,
    mono: float,
    paired: Collection[str] | None = None,
) -> tuple[DeviceState, list[AlertTransition]]:
    """``state`` with ``alert`` raised, restored at wall ``t`` and monotonic ``mono``.

    The caller checks that the alert's kind is not raised already (`restore_alerts` does).
    Returns the clear of an alert whose rule is disabled, or (with ``paired``, the device ids
    on the paired list) whose device is no longer paired; the state is then unchanged.
    """
    rule = getattr(config, alert.kind.value)
    assert isinstance(rule, RuleBase)
    reason = None
    if not rule.enabled:
        reason = "disabled"
    elif paired is not None and alert.device_id not in paired:
        reason = "unpaired"
    if reason is not None:
        cleared = AlertTransition(
            device_id=alert.device_id,
            kind=alert.kind,
            category=CATEGORY[alert.kind],
            severity=rule.severity,
            state="cleared",
            t=t,
            episode=alert.episode,
            raised_at=alert.raised_at,
            reason=reason,
            evidence=Evidence(),
        )
        return state, [cleared]
    track = TrackState(
        active=True, episode=alert.episode, raised_at=alert.raised_at, last_known_t=mono
    )
    last_t = mono if state.last_t is None else max(state.last_t, mono)
    state = replace(state, last_t=last_t)
    if alert.kind is AlertKind.FALL:
        fall = replace(
            state.fall, track=track, phase="raised", impact_t=None, impact_g=None, still_from=None
        )
        return replace(state, fall=fall), []
    return replace(state, **{alert.kind.value: track}), []  # type: ignore[arg-type]


def restore_alerts(
    config: RulesConfig,
    states: Mapping[str, DeviceState],
    alerts: Iterable[AlertRecord],
    *,
    t: float,
    mono: float,
    paired: Collection[str] | None = None,
) -> tuple[dict[str, DeviceState], RestoreResult]:
    """Restore open alerts into per-device states (a new dict; ``states`` is not changed).

    With ``paired`` (the device ids on the paired list), the open alerts of any other device
    are cleared (reason ``unpaired``) rather than restored: it was removed or renamed.

    Never raises on bad input: an unknown kind, a malformed payload, a second open alert of the
    same kind on the same device (the higher episode is kept) or a kind already raised in
    ``states`` is skipped with its reason.
    """
    skipped: list[Skipped] = []
    chosen: dict[tuple[str, AlertKind], tuple[Restored, AlertRecord]] = {}
    for record in alerts:
        parsed = parse_open_alert(record)
        if isinstance(parsed, str):
            skipped.append(Skipped(record, parsed))
            continue
        key = (parsed.device_id, parsed.kind)
        entry, other = (parsed, record), chosen.get(key)
        if other is not None:
            if other[0].episode >= parsed.episode:
                entry, other = other, entry
            skipped.append(Skipped(other[1], f"superseded by episode {entry[0].episode}"))
        chosen[key] = entry
    out = dict(states)
    restored: list[Restored] = []
    transitions: list[AlertTransition] = []
    for (device_id, kind), (alert, record) in sorted(chosen.items()):
        state = out.get(device_id) or DeviceState(device_id)
        if state.track(kind).active:
            skipped.append(Skipped(record, f"{kind.value} is already raised on {device_id}"))
            continue
        state, cleared = restore_alert(config, state, alert, t=t, mono=mono, paired=paired)
        if cleared:
            transitions.extend(cleared)
            continue
        out[device_id] = state
        restored.append(alert)
    return out, RestoreResult(tuple(restored), tuple(skipped), tuple(transitions))
