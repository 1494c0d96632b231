"""Pure evaluation: (config, device state, input) -> (new device state, alert transitions).

No clock and no I/O: time comes in the inputs, and never runs backwards for a device (an input
older than the newest one seen is evaluated at the newest time). Every duration, cooldown,
staleness and history window is measured on the inputs' monotonic ``mono``; their wall-clock
``t`` only labels transitions and evidence (gatewayd.rules.inputs). Technical rules are
evaluated before physiological ones, so a window that turns a device off-wrist also withdraws
its physiological alerts in the same call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

from gatewayd.activity import ActivityGroup, group_name
from gatewayd.rules.alerts import (
    CATEGORY,
    AlertKind,
    AlertTransition,
    Evidence,
    EvidenceSample,
    Scalar,
)
from gatewayd.rules.config import ActivityClass, RuleBase, RulesConfig
from gatewayd.rules.fall import FallEvent, FallState, step_fall
from gatewayd.rules.inputs import LinkStatus, Observation
from gatewayd.rules.track import (
    Level,
    Outcome,
    TrackState,
    clear,
    clear_if_stale,
    in_cooldown,
    raise_,
    reset_run,
    step,
)

__all__ = ["Bout", "DeviceState", "HrPoint", "observe", "on_link", "on_removed", "on_tick"]

#: The heart-rate rules: withdrawn when the data behind them stops being trustworthy.
HR_KINDS: Final = (
    AlertKind.TACHYCARDIA,
    AlertKind.BRADYCARDIA,
    AlertKind.HIGH_HR_AT_REST,
    AlertKind.ABRUPT_CHANGE,
)

#: Each kind's `DeviceState` field and `RulesConfig` section: its value (``kind.value`` costs an
#: enum descriptor call; this is read several times per window).
_FIELD: Final[dict[AlertKind, str]] = {kind: kind.value for kind in AlertKind}


@dataclass(frozen=True, slots=True)
class HrPoint:
    """A trustworthy heart-rate value kept for the abrupt-change rule."""

    seq: int
    #: Monotonic time (the ``within_s`` window); ``wall`` labels it in the evidence.
    t: float
    hr_bpm: float
    #: The known activity group (`ActivityGroup` code) the value was measured in.
    activity: int
    wall: float


@dataclass(frozen=True, slots=True)
class Bout:
    """A stretch of windows of one known activity group, no hole longer than rules.hr.max_gap_s.

    ``start`` and ``last`` are monotonic times.
    """

    group: int
    start: float
    last: float

    def recovering(self, t: float, recovery_s: float, ratio: float) -> bool:
        """True while the heart rate may still be coming down from this bout at ``t``.

        A bout counts for ``ratio`` times as long as it lasted, at most ``recovery_s``: a
        single window (possibly a misclassified one) carries almost nothing over.
        """
        return t - self.last <= min(recovery_s, ratio * (self.last - self.start))


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Everything the rules remember about one device.

    Times named ``*_t`` are monotonic (the inputs' ``mono``); ``*_wall`` are their wall-clock
    labels, as they were when recorded.
    """

    device_id: str
    #: The newest monotonic input time seen: time never runs backwards for a device.
    last_t: float | None = None
    #: None until the first link status or observation.
    connected: bool | None = None
    link_changed_t: float | None = None
    link_changed_wall: float | None = None
    last_obs_t: float | None = None
    last_obs_wall: float | None = None
    last_seq: int | None = None
    hr_history: tuple[HrPoint, ...] = ()
    #: The latest bout of each known activity group (the tachycardia rule's recovery).
    bouts: tuple[Bout, ...] = ()
    tachycardia: TrackState = field(default_factory=TrackState)
    bradycardia: TrackState = field(default_factory=TrackState)
    high_hr_at_rest: TrackState = field(default_factory=TrackState)
    abrupt_change: TrackState = field(default_factory=TrackState)
    fall: FallState = field(default_factory=FallState)
    poor_signal: TrackState = field(default_factory=TrackState)
    off_wrist: TrackState = field(default_factory=TrackState)
    device_silent: TrackState = field(default_factory=TrackState)
    disconnected: TrackState = field(default_factory=TrackState)
    low_battery: TrackState = field(default_factory=TrackState)

    def track(self, kind: AlertKind) -> TrackState:
        """The state of one rule."""
        if kind is AlertKind.FALL:
            return self.fall.track
        value = getattr(self, _FIELD[kind])
        assert isinstance(value, TrackState)
        return value

    def active_kinds(self) -> tuple[AlertKind, ...]:
        """The kinds of alert currently raised on this device."""
        return tuple(kind for kind in AlertKind if self.track(kind).active)


class _Run:
    """Collects transitions while one input is evaluated (local to one pure call).

    Changes to the device's state are gathered (`update`, `set_track`) and made into a new
    `DeviceState` once, when `state` is read: one copy of it per input, not one per rule.
    """

    def __init__(
        self, config: RulesConfig, state: DeviceState, t: float, wall: float, **changes: Any
    ) -> None:
        self.config = config
        self._state = state
        #: Fields of ``_state`` changed since (DeviceState field name -> new value).
        self._changes: dict[str, Any] = changes
        #: Monotonic time of the input (every duration); ``wall`` labels what it produces.
        self.t = t
        self.wall = wall
        self.out: list[AlertTransition] = []

    @property
    def state(self) -> DeviceState:
        """The device's state with every change so far."""
        if self._changes:
            self._state = replace(self._state, **self._changes)
            self._changes = {}
        return self._state

    def update(self, **changes: Any) -> None:
        """Change fields of the device's state (`DeviceState` field names)."""
        self._changes.update(changes)

    def current(self, name: str) -> Any:
        """One field of the device's state, with the changes so far."""
        changes = self._changes
        return changes[name] if name in changes else getattr(self._state, name)

    @property
    def fall(self) -> FallState:
        """The fall rule's state, with the changes so far."""
        fall: FallState = self.current("fall")
        return fall

    def track(self, kind: AlertKind) -> TrackState:
        """The state of one rule, with the changes so far."""
        if kind is AlertKind.FALL:
            return self.fall.track
        track: TrackState = self.current(_FIELD[kind])
        return track

    def rule(self, kind: AlertKind) -> RuleBase:
        rule = getattr(self.config, _FIELD[kind])
        assert isinstance(rule, RuleBase)
        return rule

    def set_track(self, kind: AlertKind, track: TrackState) -> None:
        if kind is AlertKind.FALL:
            self._changes["fall"] = replace(self.fall, track=track)
        else:
            self._changes[_FIELD[kind]] = track

    def emit(
        self,
        kind: AlertKind,
        outcome: Outcome,
        before: TrackState,
        after: TrackState,
        *,
        reason: str,
        samples: tuple[EvidenceSample, ...] = (),
        thresholds: tuple[tuple[str, float], ...] = (),
        facts: tuple[tuple[str, Scalar], ...] = (),
        t: float | None = None,
    ) -> None:
        if outcome is None:
            return
        rule = self.rule(kind)
        if outcome == "raised":
            episode, raised_at, reason = after.episode, after.raised_at, "threshold"
            samples = after.samples
        else:
            episode, raised_at = before.episode, before.raised_at
        assert raised_at is not None
        self.out.append(
            AlertTransition(
                device_id=self._state.device_id,
                kind=kind,
                category=CATEGORY[kind],
                severity=rule.severity,
                state=outcome,
                t=self.wall if t is None else t,
                episode=episode,
                raised_at=raised_at,
                reason=reason,
                evidence=Evidence(samples, thresholds, facts),
            )
        )

    def apply(
        self,
        kind: AlertKind,
        level: Level,
        sample: EvidenceSample | None,
        *,
        thresholds: tuple[tuple[str, float], ...] = (),
        facts: tuple[tuple[str, Scalar], ...] = (),
        clear_reason: str = "recovered",
        stale_s: float | None = None,
    ) -> None:
        """Step one threshold rule and record its transition, if any."""
        rule = self.rule(kind)
        if not rule.enabled:
            return
        before = self.track(kind)
        after, outcome = step(
            before,
            level,
            self.t,
            sample,
            wall=self.wall,
            min_duration_s=rule.min_duration_s,
            cooldown_s=rule.cooldown_s,
            max_gap_s=self.config.hr.max_gap_s if kind in HR_KINDS else _TECHNICAL_GAP_S,
            max_evidence=self.config.max_evidence,
        )
        if level is Level.UNKNOWN and stale_s is not None:
            after, outcome = clear_if_stale(after, self.t, stale_s)
            clear_reason = "no_data"
        self.set_track(kind, after)
        clearing = (sample,) if sample is not None and outcome == "cleared" else ()
        self.emit(
            kind,
            outcome,
            before,
            after,
            reason=clear_reason,
            samples=clearing,
            thresholds=thresholds,
            facts=facts,
        )

    def withdraw_hr_rules(self, reason: str) -> None:
        """Clear raised heart-rate alerts and forget pending runs: their data is not trustworthy."""
        for kind in HR_KINDS:
            before = self.track(kind)
            if before.active:
                self.set_track(kind, clear(before, self.t))
                self.emit(kind, "cleared", before, before, reason=reason)
            else:
                self.set_track(kind, reset_run(before))
        self.update(hr_history=())


#: Technical values (quality, battery) arrive every 2 s; a longer hole restarts a duration.
_TECHNICAL_GAP_S: Final = 30.0


def _advance(state: DeviceState, wall: float, mono: float) -> tuple[float, float]:
    """The input's (monotonic, wall) time, never before the newest seen for the device (the
    state's ``last_t`` becomes the first).

    A late input is evaluated at the newest monotonic time; its wall label moves by as much.
    """
    now = mono if state.last_t is None else max(mono, state.last_t)
    return now, wall + (now - mono)


def _sample(
    obs: Observation, t: float, value: float, activity: str | None = None
) -> EvidenceSample:
    return EvidenceSample(
        seq=obs.seq,
        t=t,
        value=value,
        window_id=obs.window_id,
        model_id=obs.model_id,
        hr_source=obs.hr_source if obs.hr_bpm is not None else None,
        activity=activity,
    )


def _above(value: float, limit: float, band: float) -> Level:
    if value > limit:
        return Level.RAISE
    return Level.CLEAR if value <= limit - band else Level.HOLD


def _below(value: float, limit: float, band: float) -> Level:
    if value < limit:
        return Level.RAISE
    return Level.CLEAR if value >= limit + band else Level.HOLD


def usable_hr(config: RulesConfig, obs: Observation) -> float | None:
    """The observation's heart rate if physiological rules may use it, else None."""
    gate = config.hr
    hr = obs.hr_bpm
    if hr is None or obs.off_wrist:
        return None
    if not gate.plausible_min_bpm <= hr <= gate.plausible_max_bpm:
        return None
    if obs.hr_confidence < gate.min_confidence:
        return None
    if obs.signal_quality is not None and obs.signal_quality < gate.min_signal_quality:
        return None
    return hr


# --- observations ------------------------------------------------------------------------------


def observe(
    config: RulesConfig, state: DeviceState, obs: Observation
) -> tuple[DeviceState, list[AlertTransition]]:
    """Evaluate every rule on one window."""
    t, wall = _advance(state, obs.t, obs.clock)
    run = _Run(config, state, t, wall, last_t=t)
    if state.connected is not True:
        # Windows only arrive over a live link: data proves the connection.
        run.update(connected=True, link_changed_t=t, link_changed_wall=wall)
    run.update(last_obs_t=t, last_obs_wall=wall, last_seq=obs.seq)
    for kind in (AlertKind.DEVICE_SILENT, AlertKind.DISCONNECTED):
        before = run.track(kind)
        if before.active:
            run.set_track(kind, clear(before, t))
            data = (_sample(obs, wall, 1),)
            run.emit(kind, "cleared", before, before, reason="data", samples=data)
    _technical(run, obs)
    if obs.off_wrist:
        run.withdraw_hr_rules("off_wrist")
    else:
        _heart_rate(run, obs)
    _fall(run, obs)
    return run.state, run.out


def _technical(run: _Run, obs: Observation) -> None:
    config, wall = run.config, run.wall
    run.apply(
        AlertKind.OFF_WRIST,
        Level.RAISE if obs.off_wrist else Level.CLEAR,
        _sample(obs, wall, 1.0 if obs.off_wrist else 0.0),
        thresholds=(("min_duration_s", config.off_wrist.min_duration_s),),
        clear_reason="worn",
    )
    poor = config.poor_signal
    if obs.off_wrist:
        quality_level = Level.CLEAR  # not worn explains it; off_wrist is the alert that says so
    elif obs.signal_quality is None:
        quality_level = Level.UNKNOWN
    else:
        quality_level = _below(obs.signal_quality, poor.threshold, poor.hysteresis)
    run.apply(
        AlertKind.POOR_SIGNAL,
        quality_level,
        None if obs.signal_quality is None else _sample(obs, wall, obs.signal_quality),
        thresholds=(
            ("threshold", poor.threshold),
            ("clear_above", poor.threshold + poor.hysteresis),
            ("min_duration_s", poor.min_duration_s),
        ),
        clear_reason="worn" if obs.off_wrist else "recovered",
    )
    battery = config.low_battery
    if obs.charging:
        battery_level = Level.CLEAR
    elif obs.battery is None:
        battery_level = Level.UNKNOWN
    else:
        battery_level = _below(obs.battery, battery.threshold_pct, battery.hysteresis_pct)
    run.apply(
        AlertKind.LOW_BATTERY,
        battery_level,
        None if obs.battery is None else _sample(obs, wall, obs.battery),
        thresholds=(
            ("threshold_pct", battery.threshold_pct),
            ("clear_at_pct", battery.threshold_pct + battery.hysteresis_pct),
        ),
        facts=(("charging", obs.charging),),
        clear_reason="charging" if obs.charging else "recovered",
    )


def _heart_rate(run: _Run, obs: Observation) -> None:
    config, t = run.config, run.t
    hr = usable_hr(config, obs)
    group = config.activities.group_of(obs.activity, obs.activity_confidence)
    cls = config.activities.class_of(obs.activity, obs.activity_confidence)
    # The group the tachycardia limit and the rest rule go by: the reported one, or vigorous
    # when the wrist moves that hard (it only ever raises a limit).
    limit_group = config.activities.limit_group(obs.activity, obs.activity_confidence, obs.motion_g)
    limit_base = config.activities.class_of(int(limit_group), 1.0)
    sample = None if hr is None else _sample(obs, run.wall, hr, cls)
    stale = config.hr.stale_s
    # "activity" is the reported group as the rules take it; "unknown" when the reported one
    # (kept as reported_activity) was missing or below rules.activities.min_confidence. The
    # tachycardia limit's own group (raised by motion, or recovering) is limit_activity.
    facts: tuple[tuple[str, Scalar], ...] = (
        ("activity", cls),
        ("reported_activity", group_name(obs.activity)),
        ("activity_confidence", obs.activity_confidence),
        ("hr_bpm", obs.hr_bpm),
        ("hr_confidence", obs.hr_confidence),
        ("hr_source", obs.hr_source),
        ("model_id", obs.model_id),
        ("motion_g", obs.motion_g),
    )
    gate = (("min_confidence", config.hr.min_confidence),)

    tachy = config.tachycardia
    bouts = _update_bouts(
        run.current("bouts"), limit_group, t, config.hr.max_gap_s, tachy.recovery_s
    )
    run.update(bouts=bouts)
    limit_cls, limit = _tachycardia_limit(config, limit_base, bouts, t)
    run.apply(
        AlertKind.TACHYCARDIA,
        Level.UNKNOWN if hr is None else _above(hr, limit, tachy.hysteresis_bpm),
        sample,
        thresholds=(
            ("limit_bpm", limit),
            ("clear_below_bpm", limit - tachy.hysteresis_bpm),
            ("min_duration_s", tachy.min_duration_s),
            ("recovery_s", tachy.recovery_s),
            ("recovery_ratio", tachy.recovery_ratio),
            *gate,
        ),
        # limit_activity differs from activity while recovering from a more intense bout.
        facts=(*facts, ("limit_activity", limit_cls)),
        stale_s=stale,
    )
    brady = config.bradycardia
    limit = brady.limit(cls)
    run.apply(
        AlertKind.BRADYCARDIA,
        Level.UNKNOWN if hr is None else _below(hr, limit, brady.hysteresis_bpm),
        sample,
        thresholds=(
            ("limit_bpm", limit),
            ("clear_above_bpm", limit + brady.hysteresis_bpm),
            ("min_duration_s", brady.min_duration_s),
            *gate,
        ),
        facts=facts,
        stale_s=stale,
    )
    rest = config.high_hr_at_rest
    if hr is None or limit_base == "unknown":
        rest_level = Level.UNKNOWN
    elif limit_base != "rest":
        rest_level = Level.CLEAR
    else:
        rest_level = _above(hr, rest.threshold_bpm, rest.hysteresis_bpm)
    run.apply(
        AlertKind.HIGH_HR_AT_REST,
        rest_level,
        sample,
        thresholds=(
            ("threshold_bpm", rest.threshold_bpm),
            ("clear_below_bpm", rest.threshold_bpm - rest.hysteresis_bpm),
            ("min_duration_s", rest.min_duration_s),
            *gate,
        ),
        facts=facts,
        clear_reason="activity_changed" if limit_base not in ("rest", "unknown") else "recovered",
        stale_s=stale,
    )
    _abrupt_change(run, obs, hr, group=group, sample=sample, facts=facts)


def _update_bouts(
    bouts: tuple[Bout, ...], group: ActivityGroup, t: float, max_gap_s: float, keep_s: float
) -> tuple[Bout, ...]:
    """Extend (or start) the bout of ``group`` with a window at ``t``; unknown changes nothing.

    An earlier bout of the same group is kept while it may still be recovering (ended at most
    ``keep_s`` ago): one stray window of that group after a long bout starts a bout of its own
    and must not erase the long one's recovery.
    """
    if group is ActivityGroup.UNKNOWN:
        return bouts
    kept = tuple(b for b in bouts if t - b.last <= max(keep_s, max_gap_s))
    current = max((b for b in kept if b.group == group), key=lambda b: b.last, default=None)
    if current is not None and t - current.last <= max_gap_s:
        return (*(b for b in kept if b is not current), replace(current, last=t))
    return (*kept, Bout(int(group), t, t))


def _tachycardia_limit(
    config: RulesConfig, cls: ActivityClass, bouts: tuple[Bout, ...], t: float
) -> tuple[ActivityClass, float]:
    """The group whose limit applies, and that limit: the current group's, or a higher one.

    After a bout of a group with a higher limit (stairs, then sitting down) the heart rate takes
    minutes to come down; that group's limit keeps applying while the bout is `recovering`.
    """
    tachy = config.tachycardia
    best: tuple[ActivityClass, float] = (cls, tachy.limit(cls))
    for bout in bouts:
        name = config.activities.class_of(bout.group, 1.0)
        recovering = bout.recovering(t, tachy.recovery_s, tachy.recovery_ratio)
        if recovering and tachy.limit(name) > best[1]:
            best = (name, tachy.limit(name))
    return best


def _abrupt_change(
    run: _Run,
    obs: Observation,
    hr: float | None,
    *,
    group: ActivityGroup,
    sample: EvidenceSample | None,
    facts: tuple[tuple[str, Scalar], ...],
) -> None:
    config, t = run.config, run.t
    rule = config.abrupt_change
    if hr is None or group is ActivityGroup.UNKNOWN:
        if hr is not None:
            run.update(hr_history=())  # activity unknown: cannot compare
        run.apply(AlertKind.ABRUPT_CHANGE, Level.UNKNOWN, None, stale_s=config.hr.stale_s)
        return
    # Only values of the current group's run count: a change of activity explains a jump.
    history = tuple(p for p in run.current("hr_history") if t - p.t <= rule.within_s)
    if history and history[-1].activity != group:
        history = ()  # the history only ever holds one group's run
    reference, delta = _confirmed_change(history, hr, rule.confirm_readings)
    point = HrPoint(obs.seq, t, hr, int(group), run.wall)
    run.update(hr_history=(*history, point))
    extra: tuple[tuple[str, Scalar], ...] = ()
    if reference is not None:
        extra = (
            ("delta_bpm", round(delta, 2)),
            ("from_seq", reference.seq),
            ("from_t", reference.wall),
            ("from_bpm", reference.hr_bpm),
        )
    run.apply(
        AlertKind.ABRUPT_CHANGE,
        _above(abs(delta), rule.delta_bpm, rule.hysteresis_bpm),
        sample,
        thresholds=(
            ("delta_bpm", rule.delta_bpm),
            ("within_s", rule.within_s),
            ("confirm_readings", rule.confirm_readings),
            ("clear_below_bpm", rule.delta_bpm - rule.hysteresis_bpm),
        ),
        facts=(*facts, *extra),
        stale_s=config.hr.stale_s,
    )


def _confirmed_change(
    history: tuple[HrPoint, ...], hr: float, readings: int
) -> tuple[HrPoint | None, float]:
    """The change of level between ``readings`` readings in a row: the newest, and earlier ones.

    The newest block is ``hr`` and the last ``readings - 1`` of ``history``; every run of
    ``readings`` consecutive earlier points of ``history`` is a candidate. A candidate differs
    from the newest block only when the two do not overlap (all of one above all of the other),
    by the gap between them. So one wrong window, up and back down, changes no level when
    ``readings`` is 2 or more; with 1 it is the largest difference from any earlier reading.
    Returns the reference (the candidate's point nearest the newest block; None when nothing
    earlier is comparable) and the signed change.
    """
    split = max(0, len(history) - readings + 1)
    newest = [p.hr_bpm for p in history[split:]]
    newest.append(hr)
    if len(newest) < readings:
        return None, 0.0
    low, high = min(newest), max(newest)
    earlier = history[:split]
    best: HrPoint | None = None
    change = 0.0
    for i in range(len(earlier) - readings + 1):
        block = earlier[i : i + readings]
        top = max(block, key=lambda p: p.hr_bpm)
        bottom = min(block, key=lambda p: p.hr_bpm)
        if low > top.hr_bpm:
            reference, move = top, low - top.hr_bpm
        elif high < bottom.hr_bpm:
            reference, move = bottom, high - bottom.hr_bpm
        else:
            reference, move = block[-1], 0.0
        if best is None or abs(move) > abs(change):
            best, change = reference, move
    return best, change


def _fall(run: _Run, obs: Observation) -> None:
    rule = run.config.fall
    if not rule.enabled:
        return
    state, events = step_fall(run.fall, obs, rule, run.config.max_evidence, run.t)
    run.update(fall=state)
    thresholds = (
        ("impact_g", rule.impact_g),
        ("min_duration_s", rule.min_duration_s),
        ("still_max_std_g", rule.still_max_std_g),
        ("moving_min_std_g", rule.moving_min_std_g),
    )
    for event in events:
        _emit_fall(run, event, thresholds)


def _emit_fall(run: _Run, event: FallEvent, thresholds: tuple[tuple[str, float], ...]) -> None:
    before = event.before
    facts: tuple[tuple[str, Scalar], ...] = (
        ("impact_t", before.impact_t),
        ("impact_g", None if before.impact_g is None else round(before.impact_g, 3)),
        ("still_from", before.still_from),
        ("still_for_s", None if before.still_from is None else event.t - before.still_from),
        ("max_still_std_g", round(before.still_max_std_g, 4)),
    )
    run.emit(
        AlertKind.FALL,
        event.outcome,
        before.track,
        before.track,
        reason="movement",
        thresholds=thresholds,
        facts=facts if event.outcome == "raised" else (),
        t=event.t,
    )


# --- link status and time ----------------------------------------------------------------------


def on_link(
    config: RulesConfig, state: DeviceState, status: LinkStatus
) -> tuple[DeviceState, list[AlertTransition]]:
    """Record a link change, then let time-based rules look at the new time."""
    t, wall = _advance(state, status.t, status.clock)
    run = _Run(config, state, t, wall, last_t=t)
    if state.connected is not status.connected:
        run.update(connected=status.connected, link_changed_t=t, link_changed_wall=wall)
    if status.connected:
        _clear_now(run, AlertKind.DISCONNECTED, "reconnected")
    else:
        _clear_now(run, AlertKind.DEVICE_SILENT, "disconnected")
    _time_rules(run)
    return run.state, run.out


def on_tick(
    config: RulesConfig, state: DeviceState, t: float, mono: float | None = None
) -> tuple[DeviceState, list[AlertTransition]]:
    """Let time-based rules (silence, disconnection, staleness) look at wall ``t``, ``mono``."""
    now, wall = _advance(state, t, t if mono is None else mono)
    run = _Run(config, state, now, wall, last_t=now)
    _time_rules(run)
    return run.state, run.out


def on_removed(
    config: RulesConfig, state: DeviceState, t: float, mono: float | None = None
) -> list[AlertTransition]:
    """The clears (reason ``unpaired``) of every alert raised on a device taken off the paired
    list at wall ``t``, ``mono``: the gateway no longer serves it, so none stays open. Disabled
    rules included (an alert restored raised stays raised until cleared)."""
    now, wall = _advance(state, t, t if mono is None else mono)
    run = _Run(config, state, now, wall, last_t=now)
    for kind in state.active_kinds():
        _clear_now(run, kind, "unpaired")
    return run.out


def _clear_now(run: _Run, kind: AlertKind, reason: str) -> None:
    before = run.track(kind)
    if before.active:
        run.set_track(kind, clear(before, run.t))
        run.emit(kind, "cleared", before, before, reason=reason)


def _time_rules(run: _Run) -> None:
    config, state, t = run.config, run.state, run.t
    marks = [
        (mono, wall)
        for mono, wall in (
            (state.last_obs_t, state.last_obs_wall),
            (state.link_changed_t, state.link_changed_wall),
        )
        if mono is not None and wall is not None
    ]
    if state.connected is True and marks:
        _raise_after(
            run,
            AlertKind.DEVICE_SILENT,
            max(marks),
            (("last_seq", state.last_seq), ("last_data_t", state.last_obs_wall)),
        )
    if state.connected is False and state.link_changed_t is not None:
        assert state.link_changed_wall is not None
        _raise_after(
            run, AlertKind.DISCONNECTED, (state.link_changed_t, state.link_changed_wall), ()
        )
    for kind in HR_KINDS:
        if run.rule(kind).enabled:
            before = run.track(kind)
            after, outcome = clear_if_stale(before, t, config.hr.stale_s)
            run.set_track(kind, after)
            run.emit(kind, outcome, before, after, reason="no_data")


def _raise_after(
    run: _Run,
    kind: AlertKind,
    since: tuple[float, float],
    facts: tuple[tuple[str, Scalar], ...],
) -> None:
    """Raise a condition that has held since ``since`` (monotonic, wall) once it lasted
    min_duration_s (on the monotonic clock)."""
    rule = run.rule(kind)
    before = run.track(kind)
    if not rule.enabled or before.active:
        return
    since_mono, since_wall = since
    lasted = run.t - since_mono
    if lasted < rule.min_duration_s or in_cooldown(before, run.t, rule.cooldown_s):
        return
    after = raise_(replace(before, run_start=since_mono, run_last=run.t), run.t, run.wall)
    run.set_track(kind, after)
    run.emit(
        kind,
        "raised",
        before,
        after,
        reason="threshold",
        thresholds=(("min_duration_s", rule.min_duration_s),),
        facts=(("since", since_wall), ("for_s", lasted), *facts),
    )
    # No data is coming: heart-rate alerts can no longer be vouched for.
    run.withdraw_hr_rules("no_data")
