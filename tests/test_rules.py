"""Alert rules on explicit sequences of windows, link events and ticks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.rules import (
    AlertKind,
    AlertTransition,
    LinkStatus,
    Observation,
    RuleEngine,
    RulesConfig,
    Tick,
)

DEV = "w1"
REST, LIGHT, VIGOROUS = ActivityGroup.REST, ActivityGroup.LIGHT, ActivityGroup.VIGOROUS
UNKNOWN = ActivityGroup.UNKNOWN
HOP = 2.0


def obs(t: float, hr: float | None = 70.0, **kw: Any) -> Observation:
    """A good window of DEV at time t (seq derived from t)."""
    fields: dict[str, Any] = {
        "activity": REST,
        "activity_confidence": 0.9,
        "hr_confidence": 0.9,
        "signal_quality": 90,
        "battery": 80,
        "model_id": "mnv2-1d-w1.0",
    }
    fields.update(kw)
    return Observation(DEV, seq=int(t // HOP), t=t, hr_bpm=hr, **fields)


def run(
    engine: RuleEngine, items: Iterable[Observation | LinkStatus | Tick]
) -> list[AlertTransition]:
    out: list[AlertTransition] = []
    for item in items:
        out.extend(engine.feed(item))
    return out


def windows(start: float, stop: float, **kw: Any) -> list[Observation]:
    """Windows every 2 s in [start, stop)."""
    return [obs(float(t), **kw) for t in np.arange(start, stop, HOP)]


def kinds(transitions: list[AlertTransition]) -> list[tuple[str, str]]:
    return [(tr.kind.value, tr.state) for tr in transitions]


# --- tachycardia ---------------------------------------------------------------------------------


def test_planted_tachycardia_at_rest_raises_once_then_clears_with_hysteresis() -> None:
    engine = RuleEngine()
    out = run(engine, windows(0, 60, hr=70.0))
    assert out == []
    # 120 bpm at rest from t=60: raises when the run spans 30 s, i.e. at t=90.
    out = run(engine, windows(60, 200, hr=120.0))
    tachy = [tr for tr in out if tr.kind is AlertKind.TACHYCARDIA]
    assert len(tachy) == 1
    raised = tachy[0]
    assert (raised.state, raised.t, raised.category, raised.severity) == (
        "raised",
        90.0,
        "physiological",
        "warning",
    )
    # Inside the band (limit 100, clears below 90): stays raised.
    assert run(engine, windows(200, 260, hr=95.0)) == []
    out = run(engine, [obs(260, hr=89.0)])
    assert kinds(out) == [("tachycardia", "cleared")]
    assert out[0].reason == "recovered"
    assert out[0].episode == raised.episode == 1
    assert out[0].raised_at == 90.0


def test_tachycardia_evidence_names_windows_values_model_and_thresholds() -> None:
    engine = RuleEngine()
    out = run(engine, windows(0, 32, hr=120.0))
    (raised,) = [tr for tr in out if tr.kind is AlertKind.TACHYCARDIA]
    evidence = raised.evidence
    assert evidence.seqs[0] == 0
    assert evidence.seqs[-1] == 15
    assert all(s.value == 120.0 for s in evidence.samples)
    assert evidence.model_ids == ("mnv2-1d-w1.0",)
    assert dict(evidence.thresholds)["limit_bpm"] == 100.0
    assert dict(evidence.thresholds)["clear_below_bpm"] == 90.0
    assert evidence.fact("activity") == "rest"
    assert evidence.fact("reported_activity") == "rest"
    assert evidence.fact("activity_confidence") == 0.9
    assert {s.activity for s in evidence.samples} == {"rest"}
    payload = raised.to_payload()
    json.dumps(payload)  # JSON-ready
    assert payload["kind"] == "tachycardia"
    assert payload["category"] == "physiological"
    assert payload["state"] == "raised"
    assert payload["evidence"]["activity"] == "rest"
    assert payload["evidence"]["windows"][0]["activity"] == "rest"
    assert payload["evidence"]["seqs"][:2] == [0, 1]
    assert payload["evidence"]["windows"][0]["model_id"] == "mnv2-1d-w1.0"
    assert payload["evidence"]["windows"][0]["hr_source"] == "model"


def test_evidence_is_bounded_keeping_the_first_window() -> None:
    engine = RuleEngine(RulesConfig.model_validate({"max_evidence": 4}))
    out = run(engine, windows(0, 32, hr=120.0))
    (raised,) = out
    assert raised.evidence.seqs == (0, 13, 14, 15)


def test_light_at_120_does_not_raise_but_the_vigorous_limit_applies_to_vigorous() -> None:
    config = RulesConfig()
    light, vigorous = config.tachycardia.light_bpm, config.tachycardia.vigorous_bpm
    engine = RuleEngine(config)
    assert run(engine, windows(0, 300, hr=120.0, activity=LIGHT)) == []
    assert run(engine, windows(300, 600, hr=vigorous - 1, activity=VIGOROUS)) == []
    out = run(engine, windows(600, 700, hr=vigorous + 5, activity=VIGOROUS))
    assert kinds(out) == [("tachycardia", "raised")]
    assert out[0].evidence.fact("activity") == "vigorous"
    assert light < vigorous


@pytest.mark.parametrize(
    ("activity", "confidence"),
    [(UNKNOWN, 1.0), (None, 1.0), (LIGHT, 0.3), (VIGOROUS, 0.49)],
)
def test_an_unknown_or_unsure_group_uses_the_unknown_limits(
    activity: int | None, confidence: float
) -> None:
    config = RulesConfig()
    tachy, brady = config.tachycardia, config.bradycardia
    assert tachy.unknown_bpm < tachy.vigorous_bpm  # else the check below proves nothing
    engine = RuleEngine(config)
    kw = {"activity": activity, "activity_confidence": confidence}
    out = run(engine, windows(0, 40, hr=tachy.unknown_bpm + 5, **kw))
    assert kinds(out) == [("tachycardia", "raised")]
    assert dict(out[0].evidence.thresholds)["limit_bpm"] == tachy.unknown_bpm
    assert out[0].evidence.fact("activity") == "unknown"
    engine = RuleEngine(config)
    out = run(engine, windows(0, 40, hr=brady.unknown_bpm - 2, **kw))
    assert kinds(out) == [("bradycardia", "raised")]
    assert dict(out[0].evidence.thresholds)["limit_bpm"] == brady.unknown_bpm


def test_the_confidence_gate_is_configurable() -> None:
    # Above the rest limit, below the unknown one: only a trusted "rest" raises.
    default = RulesConfig()
    hr = default.tachycardia.rest_bpm + 10
    assert hr <= default.tachycardia.unknown_bpm
    items = windows(0, 60, hr=hr, activity=REST, activity_confidence=0.3)
    assert run(RuleEngine(default), items) == []
    lenient = RulesConfig.model_validate({"activities": {"min_confidence": 0.2}})
    assert kinds(run(RuleEngine(lenient), items)) == [("tachycardia", "raised")]


def test_a_wrist_moving_hard_raises_the_tachycardia_limit_to_vigorous() -> None:
    # Running that the model calls "light" (a real BAMI subject): 160 bpm is above the light
    # limit, but the wearable's motion says vigorous, so the vigorous limit applies.
    config = RulesConfig()
    floor = config.activities.vigorous_motion_g
    assert config.tachycardia.light_bpm < 160 < config.tachycardia.vigorous_bpm
    running = windows(0, 120, hr=160.0, activity=LIGHT, motion_g=floor)
    assert run(RuleEngine(config), running) == []
    # Just below the floor, or with the floor off, or unknown motion: the light limit.
    for kw, cfg in (
        ({"motion_g": floor - 0.01}, config),
        ({"motion_g": None}, config),
        ({"motion_g": 2.0}, RulesConfig.model_validate({"activities": {"vigorous_motion_g": 0}})),
    ):
        out = run(RuleEngine(cfg), windows(0, 120, hr=160.0, activity=LIGHT, **kw))
        assert kinds(out) == [("tachycardia", "raised")]
        assert out[0].evidence.fact("limit_activity") == "light"
        assert out[0].evidence.fact("motion_g") == kw["motion_g"]
    # It raises an unknown group too, and the vigorous limit still holds above it.
    engine = RuleEngine(config)
    out = run(engine, windows(0, 120, hr=190.0, activity=UNKNOWN, motion_g=1.5))
    assert kinds(out) == [("tachycardia", "raised")]
    assert out[0].evidence.fact("limit_activity") == "vigorous"
    assert out[0].evidence.fact("activity") == "unknown"  # what was reported


def test_a_bout_of_hard_motion_starts_the_recovery_hold() -> None:
    # 240 s of running called "light" but moving hard, then sitting at 140 bpm: the vigorous
    # limit keeps applying while recovering, as after a bout reported vigorous.
    engine = _recovery_engine(180.0)
    assert run(engine, windows(0, 240, hr=150.0, activity=LIGHT, motion_g=1.2)) == []
    assert run(engine, windows(240, 418, hr=140.0, activity=REST, motion_g=0.02)) == []
    out = run(engine, windows(418, 460, hr=140.0, activity=REST, motion_g=0.02))
    assert kinds(out) == [("tachycardia", "raised")]


def test_the_motion_floor_never_raises_an_alert_of_its_own() -> None:
    # Motion only raises limits: the same windows with and without it, at every heart rate
    # between the lowest and highest limits, raise a subset of the alerts.
    config = RulesConfig()
    for hr in (35.0, 45.0, 105.0, 125.0, 135.0, 190.0):
        for group in (REST, LIGHT, VIGOROUS, UNKNOWN):
            plain = run(RuleEngine(config), windows(0, 700, hr=hr, activity=group))
            moving = run(RuleEngine(config), windows(0, 700, hr=hr, activity=group, motion_g=2.5))
            assert set(kinds(moving)) <= set(kinds(plain)), (hr, group)


def test_high_hr_at_rest_is_not_rest_when_the_wrist_moves_hard() -> None:
    config = RulesConfig.model_validate({"tachycardia": {"enabled": False}})
    assert run(RuleEngine(config), windows(0, 700, hr=105.0, motion_g=1.0)) == []
    out = run(RuleEngine(config), windows(0, 700, hr=105.0, motion_g=0.1))
    assert kinds(out) == [("high_hr_at_rest", "raised")]


def _recovery_engine(recovery_s: float = 180.0, ratio: float = 1.0) -> RuleEngine:
    limits = {"recovery_s": recovery_s, "recovery_ratio": ratio}
    return RuleEngine(RulesConfig.model_validate({"tachycardia": limits}))


def test_sitting_down_after_a_vigorous_bout_keeps_the_vigorous_limit_while_recovering() -> None:
    engine = _recovery_engine(180.0)
    # 240 s of vigorous activity (bout 0..238), then sitting with the rate still at 140.
    assert run(engine, windows(0, 240, hr=150.0, activity=VIGOROUS)) == []
    assert run(engine, windows(240, 418, hr=140.0, activity=REST)) == []  # up to 238 + 180
    out = run(engine, windows(418, 460, hr=140.0, activity=REST))
    assert kinds(out) == [("tachycardia", "raised")]
    # The rest limit applies again from 420 (the first window past 238 + 180): 30 s later.
    assert out[0].t == 450.0
    assert out[0].evidence.fact("limit_activity") == "rest"
    assert dict(out[0].evidence.thresholds)["limit_bpm"] == 100.0


def test_recovery_lasts_no_longer_than_the_bout() -> None:
    # A single vigorous window (a misclassification, say) carries nothing over: the rest
    # limit applies to the windows after it as if it had not been there.
    engine = _recovery_engine(180.0)
    items = [obs(0.0, hr=140.0, activity=VIGOROUS), *windows(2, 60, hr=140.0)]
    out = run(engine, items)
    assert kinds(out) == [("tachycardia", "raised")]
    assert out[0].t == 32.0
    # A 20 s bout carries over for 20 s.
    engine = _recovery_engine(180.0)
    items = [*windows(0, 22, hr=140.0, activity=VIGOROUS), *windows(22, 100, hr=140.0)]
    out = run(engine, items)
    assert kinds(out) == [("tachycardia", "raised")]
    assert out[0].t == 72.0  # 20 s of bout ends at 20; recovery to 40; first rest run 42..72


def test_a_stray_window_after_a_bout_does_not_end_its_recovery() -> None:
    # 240 s vigorous, then walking at 140 bpm with one window called vigorous in the middle:
    # that window starts a bout of its own; the long bout's recovery still holds.
    engine = _recovery_engine(180.0)
    assert run(engine, windows(0, 240, hr=150.0, activity=VIGOROUS)) == []
    walk = windows(240, 400, hr=140.0, activity=LIGHT)
    walk[30] = replace(walk[30], activity=VIGOROUS)
    assert run(engine, walk) == []
    out = run(engine, windows(400, 480, hr=140.0, activity=LIGHT))
    assert kinds(out) == [("tachycardia", "raised")]  # after 238 + 180, the light limit
    assert out[0].t == 450.0


def test_recovery_lasts_ratio_times_the_bout() -> None:
    # The default ratio 2: a 20 s bout (0..20) carries over for 40 s, to 60; the rest limit's
    # 30 s run starts at the first rest window after that (62) and raises at 92.
    engine = _recovery_engine(300.0, ratio=2.0)
    items = [*windows(0, 22, hr=140.0, activity=VIGOROUS), *windows(22, 140, hr=140.0)]
    out = run(engine, items)
    assert kinds(out) == [("tachycardia", "raised")]
    assert out[0].t == 92.0
    assert RulesConfig().tachycardia.recovery_ratio == 2.0


def test_recovery_off_applies_the_current_groups_limit_at_once() -> None:
    engine = _recovery_engine(0.0)
    items = [*windows(0, 240, hr=150.0, activity=VIGOROUS), *windows(240, 300, hr=140.0)]
    out = run(engine, items)
    assert kinds(out) == [("tachycardia", "raised")]
    assert out[0].t == 270.0
    assert out[0].evidence.fact("limit_activity") == "rest"


def test_a_hole_in_a_bout_starts_a_new_one() -> None:
    # Two 20 s bouts 60 s apart are two bouts, not one of 80 s: 20 s of recovery, not 80.
    engine = _recovery_engine(180.0)
    items = [*windows(0, 22, hr=140.0, activity=VIGOROUS)]
    items += [*windows(80, 102, hr=140.0, activity=VIGOROUS), *windows(102, 200, hr=140.0)]
    out = [tr for tr in run(engine, items) if tr.kind is AlertKind.TACHYCARDIA]
    assert [tr.t for tr in out] == [152.0]  # rest windows from 122 (100 + 20 + 2) to 152


def test_low_confidence_hr_never_raises_and_does_not_count_duration() -> None:
    engine = RuleEngine()
    assert run(engine, windows(0, 300, hr=150.0, hr_confidence=0.2)) == []
    assert run(engine, windows(300, 600, hr=150.0, signal_quality=10))[0].kind is (
        AlertKind.POOR_SIGNAL
    )
    assert engine.active(DEV) == (AlertKind.POOR_SIGNAL,)


def test_a_gap_in_trustworthy_data_restarts_the_duration() -> None:
    engine = RuleEngine()
    # 20 s high, 20 s untrustworthy, 20 s high: never 30 s of continuous evidence.
    items = [
        *windows(0, 20, hr=120.0),
        *windows(20, 40, hr=120.0, hr_confidence=0.1),
        *windows(40, 60, hr=120.0),
    ]
    assert run(engine, items) == []


def test_cooldown_delays_a_re_raise() -> None:
    config = RulesConfig.model_validate({"tachycardia": {"cooldown_s": 100.0}})
    engine = RuleEngine(config)
    out = run(engine, [*windows(0, 40, hr=120.0), obs(40, hr=80.0), *windows(42, 200, hr=120.0)])
    times = [(tr.state, tr.t) for tr in out if tr.kind is AlertKind.TACHYCARDIA]
    # raised at 30, cleared at 40, re-raise held back until 40 + 100 = 140.
    assert times == [("raised", 30.0), ("cleared", 40.0), ("raised", 140.0)]
    assert [tr.episode for tr in out if tr.kind is AlertKind.TACHYCARDIA] == [1, 1, 2]


def test_bradycardia_at_rest() -> None:
    engine = RuleEngine()
    out = run(engine, windows(0, 100, hr=35.0))
    assert kinds(out) == [("bradycardia", "raised")]
    assert out[0].t == 30.0
    assert run(engine, [obs(100, hr=42.0)]) == []  # inside the band (clears above 45)
    assert kinds(run(engine, [obs(102, hr=50.0)])) == [("bradycardia", "cleared")]


# --- sustained high heart rate at rest -----------------------------------------------------------


def test_sustained_high_hr_at_rest_needs_ten_minutes_at_rest() -> None:
    config = RulesConfig.model_validate({"tachycardia": {"enabled": False}})
    engine = RuleEngine(config)
    assert run(engine, windows(0, 598, hr=105.0)) == []
    out = run(engine, windows(598, 620, hr=105.0))
    assert kinds(out) == [("high_hr_at_rest", "raised")]
    assert out[0].t == 600.0
    out = run(engine, [obs(620, hr=105.0, activity=LIGHT)])
    assert kinds(out) == [("high_hr_at_rest", "cleared")]
    assert out[0].reason == "activity_changed"


def test_sustained_high_hr_is_not_raised_when_the_rest_is_interrupted_by_walking() -> None:
    config = RulesConfig.model_validate({"tachycardia": {"enabled": False}})
    engine = RuleEngine(config)
    items = [*windows(0, 400, hr=105.0), obs(400, hr=105.0, activity=LIGHT)]
    items += windows(402, 800, hr=105.0)
    assert run(engine, items) == []  # 402..798 is under 600 s of rest


@pytest.mark.parametrize(("activity", "confidence"), [(UNKNOWN, 1.0), (None, 1.0), (REST, 0.2)])
def test_unknown_is_never_rest_for_high_hr_at_rest(activity: int | None, confidence: float) -> None:
    config = RulesConfig.model_validate({"tachycardia": {"enabled": False}})
    engine = RuleEngine(config)
    kw = {"activity": activity, "activity_confidence": confidence}
    assert run(engine, windows(0, 1300, hr=105.0, **kw)) == []


def test_unknown_windows_neither_count_nor_end_a_run_at_rest() -> None:
    config = RulesConfig.model_validate({"tachycardia": {"enabled": False}})
    engine = RuleEngine(config)
    items = windows(0, 300, hr=105.0)
    items += [obs(300.0, hr=105.0, activity=UNKNOWN)]
    items += windows(302, 620, hr=105.0)
    out = run(engine, items)
    assert kinds(out) == [("high_hr_at_rest", "raised")]
    assert out[0].t == 600.0  # the run started at 0: the unknown window did not end it


# --- abrupt change -------------------------------------------------------------------------------


def test_abrupt_change_without_activity_change_raises_and_clears() -> None:
    # The newest reading alone decides (confirm_readings = 1).
    engine = RuleEngine(RulesConfig.model_validate({"abrupt_change": {"confirm_readings": 1}}))
    out = run(engine, [*windows(0, 20, hr=70.0), *windows(20, 24, hr=90.0)])
    assert out == []  # +20 bpm
    out = run(engine, [obs(24, hr=105.0)])  # 70 at t=14..18 is within 10 s: +35
    assert kinds(out) == [("abrupt_change", "raised")]
    facts = dict(out[0].evidence.facts)
    assert facts["delta_bpm"] == 35.0
    assert facts["from_bpm"] == 70.0
    assert out[0].evidence.seqs == (12,)
    # Steady at 95 (below the tachycardia limit): after 10 s the change leaves the window.
    out = run(engine, windows(26, 40, hr=95.0))
    assert kinds(out) == [("abrupt_change", "cleared")]


def test_abrupt_change_is_raised_on_the_second_reading_of_a_new_level() -> None:
    engine = RuleEngine()
    assert run(engine, [*windows(0, 20, hr=70.0), obs(20, hr=110.0)]) == []
    out = run(engine, [obs(22, hr=108.0)])
    assert kinds(out) == [("abrupt_change", "raised")]
    facts = dict(out[0].evidence.facts)
    assert facts["delta_bpm"] == 38.0  # the smaller of the two moves from 70
    assert facts["from_bpm"] == 70.0
    assert dict(out[0].evidence.thresholds)["confirm_readings"] == 2


@pytest.mark.parametrize("confirm", [1, 2, 3])
def test_one_wrong_window_is_not_an_abrupt_change_unless_one_reading_decides(
    confirm: int,
) -> None:
    # 70 bpm, one window at 125 (a wrong estimate), then 72 again: up and back down.
    engine = RuleEngine(
        RulesConfig.model_validate({"abrupt_change": {"confirm_readings": confirm}})
    )
    items = [*windows(0, 20, hr=70.0), obs(20, hr=125.0), *windows(22, 40, hr=72.0)]
    raised = [tr for tr in run(engine, items) if tr.kind is AlertKind.ABRUPT_CHANGE]
    assert kinds(raised[:1]) == ([("abrupt_change", "raised")] if confirm == 1 else [])


def test_a_new_level_needs_as_many_readings_as_configured() -> None:
    config = RulesConfig.model_validate({"abrupt_change": {"confirm_readings": 3}})
    engine = RuleEngine(config)
    assert run(engine, [*windows(0, 16, hr=70.0), *windows(16, 20, hr=110.0)]) == []
    assert kinds(run(engine, [obs(20, hr=110.0)])) == [("abrupt_change", "raised")]


def test_abrupt_change_with_an_activity_change_does_not_raise() -> None:
    engine = RuleEngine()
    items = [*windows(0, 20, hr=70.0), *windows(20, 40, hr=115.0, activity=LIGHT)]
    assert run(engine, items) == []


def test_abrupt_change_never_compares_across_an_unknown_window() -> None:
    engine = RuleEngine()
    items = [*windows(0, 20, hr=70.0), obs(20, hr=72.0, activity=UNKNOWN)]
    items += windows(22, 40, hr=115.0)
    assert [tr for tr in run(engine, items) if tr.kind is AlertKind.ABRUPT_CHANGE] == []


def test_abrupt_change_compares_within_one_group_whatever_the_confidence() -> None:
    # Two windows of the same known group are comparable even if the confidence moved.
    engine = RuleEngine()
    items = [*windows(0, 20, hr=70.0, activity_confidence=0.95)]
    items += [obs(20, hr=105.0, activity_confidence=0.6), obs(22, hr=105.0)]
    assert kinds(run(engine, items)) == [("abrupt_change", "raised")]


# --- off-wrist and poor signal -------------------------------------------------------------------


def test_off_wrist_suppresses_physiological_rules_and_raises_a_technical_alert() -> None:
    engine = RuleEngine()
    # The wearable keeps producing (nonsense) heart rates while off the wrist.
    out = run(engine, windows(0, 120, hr=160.0, off_wrist=True, signal_quality=5))
    assert kinds(out) == [("off_wrist", "raised")]
    assert out[0].category == "technical"
    assert out[0].severity == "info"
    out = run(engine, [obs(120, hr=70.0)])
    assert kinds(out) == [("off_wrist", "cleared")]


def test_going_off_wrist_withdraws_a_raised_physiological_alert() -> None:
    engine = RuleEngine()
    run(engine, windows(0, 40, hr=120.0))
    assert engine.active(DEV) == (AlertKind.TACHYCARDIA,)
    out = run(engine, [obs(40, hr=120.0, off_wrist=True)])
    assert kinds(out) == [("tachycardia", "cleared")]
    assert out[0].reason == "off_wrist"
    # Back on the wrist: duration counts afresh (no carry-over of the off-wrist time).
    out = run(engine, windows(42, 70, hr=120.0))
    assert out == []


def test_poor_signal_raises_after_a_minute_and_clears_with_hysteresis() -> None:
    engine = RuleEngine()
    out = run(engine, windows(0, 100, signal_quality=20))
    assert kinds(out) == [("poor_signal", "raised")]
    assert out[0].t == 60.0
    assert out[0].category == "technical"
    assert run(engine, [obs(100, signal_quality=35)]) == []
    assert kinds(run(engine, [obs(102, signal_quality=40)])) == [("poor_signal", "cleared")]


# --- link: disconnected and silent ---------------------------------------------------------------


def test_disconnection_raises_after_30_s_and_clears_on_reconnect() -> None:
    engine = RuleEngine()
    run(engine, [LinkStatus(DEV, 0.0, connected=True), *windows(0, 20)])
    assert run(engine, [LinkStatus(DEV, 20.0, connected=False), Tick(40.0), Tick(49.0)]) == []
    out = run(engine, [Tick(50.0)])
    assert kinds(out) == [("disconnected", "raised")]
    assert (out[0].category, out[0].severity) == ("technical", "warning")
    assert dict(out[0].evidence.facts)["since"] == 20.0
    assert run(engine, [Tick(100.0)]) == []  # raised once
    out = run(engine, [LinkStatus(DEV, 110.0, connected=True)])
    assert kinds(out) == [("disconnected", "cleared")]
    assert out[0].reason == "reconnected"


def test_short_link_drops_do_not_raise() -> None:
    engine = RuleEngine()
    items: list[Observation | LinkStatus | Tick] = []
    for k in range(5):
        t = k * 40.0
        items += [LinkStatus(DEV, t, connected=False), Tick(t + 10), Tick(t + 20)]
        items += [LinkStatus(DEV, t + 25, connected=True), obs(t + 26)]
    assert run(engine, items) == []


def test_silence_while_connected_raises_and_data_clears_it() -> None:
    engine = RuleEngine()
    run(engine, [LinkStatus(DEV, 0.0, connected=True), *windows(0, 10)])
    assert run(engine, [Tick(60.0), Tick(67.9)]) == []  # last window at t=8
    out = run(engine, [Tick(68.0)])
    assert kinds(out) == [("device_silent", "raised")]
    assert out[0].category == "technical"
    assert dict(out[0].evidence.facts)["last_seq"] == 4
    out = run(engine, [obs(70)])
    assert kinds(out) == [("device_silent", "cleared")]
    assert out[0].reason == "data"


def test_silence_withdraws_heart_rate_alerts_as_no_data() -> None:
    engine = RuleEngine()
    run(engine, [LinkStatus(DEV, 0.0, connected=True), *windows(0, 40, hr=120.0)])
    out = run(engine, [Tick(100.0)])
    assert kinds(out) == [("device_silent", "raised"), ("tachycardia", "cleared")]
    assert out[1].reason == "no_data"


def test_disconnection_clears_silence() -> None:
    engine = RuleEngine()
    run(engine, [LinkStatus(DEV, 0.0, connected=True), obs(0), Tick(61.0)])
    assert engine.active(DEV) == (AlertKind.DEVICE_SILENT,)
    out = run(engine, [LinkStatus(DEV, 62.0, connected=False)])
    assert kinds(out) == [("device_silent", "cleared")]
    assert kinds(run(engine, [Tick(92.0)])) == [("disconnected", "raised")]


# --- battery -------------------------------------------------------------------------------------


def test_low_battery_hysteresis() -> None:
    engine = RuleEngine()
    out = run(engine, [obs(0, battery=16), obs(2, battery=14)])
    assert kinds(out) == [("low_battery", "raised")]
    assert out[0].category == "technical"
    # Noise around the threshold does not flap.
    assert run(engine, [obs(4, battery=15), obs(6, battery=14), obs(8, battery=19)]) == []
    out = run(engine, [obs(10, battery=20)])
    assert kinds(out) == [("low_battery", "cleared")]


def test_charging_clears_low_battery() -> None:
    engine = RuleEngine()
    run(engine, [obs(0, battery=10)])
    out = run(engine, [obs(2, battery=10, charging=True)])
    assert kinds(out) == [("low_battery", "cleared")]
    assert out[0].reason == "charging"


# --- fall ----------------------------------------------------------------------------------------

RATE = 32


def acc_window(
    t_end: float, *, impact_at: float | None = None, moving: bool = False, still_after: float = 0.0
) -> np.ndarray:
    """8 s of ACC in g ending at t_end: gravity on z, an optional impact, optional motion."""
    n = 8 * RATE
    times = t_end - (n - 1 - np.arange(n)) / RATE
    acc = np.zeros((n, 3))
    acc[:, 2] = 1.0
    acc += 0.005 * np.sin(times * 7.0)[:, None]  # sensor noise, deterministic
    if moving:
        acc[:, 0] += 0.5 * np.sin(2 * np.pi * 1.8 * times)
    if impact_at is not None:
        hit = np.abs(times - impact_at) < 0.1
        acc[hit, 0] += 5.0
        # Before the impact: walking; after settling: still.
        walking = times < impact_at - 0.5
        acc[walking, 0] += 0.5 * np.sin(2 * np.pi * 1.8 * times[walking])
        rolling = (times > impact_at + 0.1) & (times < impact_at + 1.5)
        acc[rolling, 1] += 0.4 * np.sin(2 * np.pi * 3 * times[rolling])
    return acc


def fall_windows(
    impact_at: float, stop: float, *, get_up_at: float | None = None, **kw: Any
) -> list[Observation]:
    out = []
    for t in (float(x) for x in np.arange(8.0, stop, HOP)):
        acc = acc_window(t, impact_at=impact_at)
        if get_up_at is not None and t > get_up_at:
            acc = acc_window(t, moving=True)
        out.append(obs(t, hr=80.0, acc=acc, activity=LIGHT, **kw))
    return out


def test_fall_is_impact_then_stillness_and_raises_critical() -> None:
    engine = RuleEngine()
    out = run(engine, fall_windows(impact_at=20.0, stop=60.0))
    falls = [tr for tr in out if tr.kind is AlertKind.FALL]
    assert kinds(falls) == [("fall", "raised")]
    fall = falls[0]
    assert (fall.severity, fall.category) == ("critical", "physiological")
    # impact at 20, settling until 22, 10 s of stillness: raised at ~32 s.
    assert 31.0 <= fall.t <= 33.5
    facts = dict(fall.evidence.facts)
    assert facts["impact_g"] is not None
    assert float(facts["impact_g"]) > 3.0
    assert facts["impact_t"] == pytest.approx(20.0, abs=0.1)
    assert fall.evidence.samples[0].value > 3.0  # the impact window comes first
    json.dumps(fall.to_payload())


def test_a_fall_is_timed_by_its_samples_not_by_when_windows_arrive() -> None:
    # Windows 2 s apart on the wearable's clock arrive in a burst (a stalled link, a loaded
    # emulator): 12 of them within 1.2 s. Timed by arrival they would cover 1.2 s, never the
    # 12 s of settling and stillness; timed by acc_end they cover what they measured.
    windows = fall_windows(impact_at=20.0, stop=40.0)
    burst = [replace(w, t=100.0 + 0.1 * k, acc_end=w.t) for k, w in enumerate(windows)]
    falls = [tr for tr in run(RuleEngine(), burst) if tr.kind is AlertKind.FALL]
    assert kinds(falls) == [("fall", "raised")]
    assert 31.0 <= falls[0].t <= 33.5  # on the samples' clock
    by_arrival = [replace(w, t=100.0 + 0.1 * k) for k, w in enumerate(windows)]
    assert [tr for tr in run(RuleEngine(), by_arrival) if tr.kind is AlertKind.FALL] == []


def test_fall_clears_on_movement() -> None:
    engine = RuleEngine()
    out = run(engine, fall_windows(impact_at=20.0, stop=80.0, get_up_at=50.0))
    falls = [tr for tr in out if tr.kind is AlertKind.FALL]
    assert kinds(falls) == [("fall", "raised"), ("fall", "cleared")]
    assert falls[1].reason == "movement"


def test_impact_without_stillness_is_not_a_fall() -> None:
    engine = RuleEngine()
    items = []
    for t in np.arange(8.0, 60.0, HOP):
        acc = acc_window(float(t), moving=True)
        if abs(t - 22.0) < 0.1:
            acc = acc_window(float(t), impact_at=20.0)
            acc[-4 * RATE :, 0] += 0.5 * np.sin(np.arange(4 * RATE))  # kept moving
        items.append(obs(float(t), acc=acc, activity=LIGHT))
    assert [tr for tr in run(engine, items) if tr.kind is AlertKind.FALL] == []


def test_fall_from_precomputed_summaries() -> None:
    engine = RuleEngine()
    items = [obs(10.0, acc_peak_g=5.0, acc_still=False)]
    items += [obs(t, acc_peak_g=1.0, acc_still=True) for t in (12.0, 14.0, 16.0, 18.0, 20.0)]
    items += [obs(t, acc_peak_g=1.0, acc_still=True) for t in (22.0, 24.0, 26.0)]
    out = [tr for tr in run(engine, items) if tr.kind is AlertKind.FALL]
    assert kinds(out) == [("fall", "raised")]
    assert out[0].t == 22.0  # settled at 12 (impact at 10 + 2), still for 10 s at 22


def test_a_device_dropped_while_off_wrist_is_not_a_fall() -> None:
    engine = RuleEngine()
    out = run(engine, fall_windows(impact_at=20.0, stop=60.0, off_wrist=True))
    assert [tr for tr in out if tr.kind is AlertKind.FALL] == []


# --- engine --------------------------------------------------------------------------------------


def test_devices_are_independent_and_ticks_are_ordered_by_device() -> None:
    engine = RuleEngine()
    run(engine, [LinkStatus("b", 0.0, connected=True), LinkStatus("a", 0.0, connected=True)])
    out = run(engine, [Tick(61.0)])
    assert [(tr.device_id, tr.kind.value) for tr in out] == [
        ("a", "device_silent"),
        ("b", "device_silent"),
    ]


def test_time_never_runs_backwards_for_a_device() -> None:
    engine = RuleEngine()
    run(engine, windows(0, 20, hr=120.0))
    run(engine, [obs(10.0, hr=120.0)])  # late, evaluated at t=18
    state = engine.devices[DEV]
    assert state.last_t == 18.0


def test_disabled_rule_never_fires() -> None:
    engine = RuleEngine(RulesConfig.model_validate({"low_battery": {"enabled": False}}))
    assert run(engine, windows(0, 20, battery=5)) == []


def test_evaluation_is_deterministic() -> None:
    items = [*windows(0, 100, hr=120.0), Tick(200.0), *windows(200, 240, hr=35.0, battery=10)]
    first = [tr.to_payload() for tr in run(RuleEngine(), items)]
    second = [tr.to_payload() for tr in run(RuleEngine(), items)]
    assert first == second
    assert first
