"""Open alerts survive a gateway restart: RuleEngine.restore."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gatewayd.rules import (
    AlertKind,
    AlertTransition,
    LinkStatus,
    Observation,
    OpenAlert,
    RuleEngine,
    RulesConfig,
    Tick,
)
from gatewayd.store.records import StoredEvent
from tests.test_rules import DEV, LIGHT, acc_window, kinds, obs, run, windows


def stored(tr: AlertTransition, event_id: str = "e1") -> StoredEvent:
    """The event-log row of a transition, its payload through JSON as the store keeps it."""
    return StoredEvent(
        id=event_id, device_id=tr.device_id, kind=tr.kind.value, severity=tr.severity,
        state=tr.state, created_at=tr.t, t_ms=round(tr.t * 1000),
        payload=json.loads(json.dumps(tr.to_payload())),
    )  # fmt: skip


def raised_before_restart(items: list[Any], kind: AlertKind) -> AlertTransition:
    """Run the first gateway until ``kind`` is raised; its raise."""
    out = [tr for tr in run(RuleEngine(), items) if tr.kind is kind]
    assert kinds(out)[-1] == (kind.value, "raised")
    return out[-1]


def test_the_condition_still_holding_after_a_restart_raises_nothing_new() -> None:
    first = raised_before_restart(windows(0, 40, hr=120.0), AlertKind.TACHYCARDIA)
    engine = RuleEngine()
    result = engine.restore([stored(first)], t=1000.0)
    assert result.skipped == ()
    assert [(r.device_id, r.kind, r.episode) for r in result.restored] == [
        (DEV, AlertKind.TACHYCARDIA, 1)
    ]
    assert engine.active(DEV) == (AlertKind.TACHYCARDIA,)
    assert run(engine, windows(1000, 1100, hr=120.0)) == []
    # ... and when it ends, the clear names the episode raised before the restart.
    assert run(engine, windows(1100, 1112, hr=95.0)) == []  # inside the band: still raised
    out = run(engine, windows(1112, 1114, hr=88.0))
    assert kinds(out) == [("tachycardia", "cleared")]
    assert (out[0].episode, out[0].raised_at, out[0].reason) == (1, first.t, "recovered")
    # The next raise is the next episode.
    out = run(engine, windows(1500, 1540, hr=120.0))
    assert [(tr.state, tr.episode) for tr in out] == [("raised", 2)]


def test_a_condition_gone_after_the_restart_clears_the_restored_episode() -> None:
    first = raised_before_restart(windows(0, 40, battery=5), AlertKind.LOW_BATTERY)
    engine = RuleEngine()
    engine.restore([stored(first)], t=500.0)
    out = run(engine, [obs(502.0, battery=80)])
    assert kinds(out) == [("low_battery", "cleared")]
    assert (out[0].episode, out[0].raised_at) == (first.episode, first.t)


def test_a_restored_heart_rate_alert_is_withdrawn_when_no_data_follows() -> None:
    first = raised_before_restart(windows(0, 40, hr=120.0), AlertKind.TACHYCARDIA)
    engine = RuleEngine()
    # Monotonic time restarts with the process; the restore is at mono 5.
    engine.restore([stored(first)], t=1_700_000_000.0, mono=5.0)
    stale = RulesConfig().hr.stale_s
    assert run(engine, [Tick(1_700_000_100.0, mono=5.0 + stale)]) == []
    out = run(engine, [Tick(1_700_000_101.0, mono=5.0 + stale + 1)])
    assert kinds(out) == [("tachycardia", "cleared")]
    assert (out[0].episode, out[0].reason, out[0].t) == (1, "no_data", 1_700_000_101.0)


def test_restored_link_alerts_clear_on_reconnection_and_data() -> None:
    engine = RuleEngine()
    down = run(engine, [LinkStatus(DEV, 0.0, connected=False), Tick(40.0)])
    assert kinds(down) == [("disconnected", "raised")]
    other = RuleEngine()
    up = run(other, [LinkStatus("w2", 0.0, connected=True), Tick(70.0)])
    assert [(tr.device_id, tr.kind.value) for tr in up] == [("w2", "device_silent")]
    engine = RuleEngine()
    engine.restore([stored(down[0]), stored(up[0], "e2")], t=100.0)
    out = run(engine, [Tick(200.0), LinkStatus(DEV, 201.0, connected=True)])
    assert [(tr.device_id, tr.kind.value, tr.reason, tr.episode) for tr in out] == [
        (DEV, "disconnected", "reconnected", 1)
    ]
    out = run(engine, [Observation("w2", seq=1, t=202.0)])
    assert [(tr.device_id, tr.kind.value, tr.reason) for tr in out] == [
        ("w2", "device_silent", "data")
    ]


def test_a_restored_fall_stays_until_movement() -> None:
    engine = RuleEngine()
    payload = {"kind": "fall", "state": "raised", "episode": 3, "raised_at": 50.0}
    engine.restore([OpenAlert(DEV, "fall", payload)], t=100.0)
    still = [obs(t, acc=acc_window(t), activity=LIGHT) for t in np.arange(100.0, 200.0, 2.0)]
    assert run(engine, still) == []  # no data for hours would not clear it either
    moving = [obs(t, acc=acc_window(t, moving=True), activity=LIGHT) for t in (202.0, 204.0)]
    out = [tr for tr in run(engine, moving) if tr.kind is AlertKind.FALL]
    assert [(tr.state, tr.episode, tr.raised_at, tr.reason) for tr in out] == [
        ("cleared", 3, 50.0, "movement")
    ]


def test_garbage_is_skipped_with_a_reason_and_the_rest_restored() -> None:
    good = {"device_id": DEV, "kind": "off_wrist", "state": "raised", "episode": 2,
            "raised_at": 10.0}  # fmt: skip
    records: list[Any] = [
        OpenAlert(DEV, "no_such_kind", good),
        OpenAlert(DEV, "poor_signal", "not a mapping"),  # type: ignore[arg-type]
        OpenAlert(None, "off_wrist", good),
        OpenAlert(DEV, "low_battery", {**good, "kind": "low_battery", "state": "cleared"}),
        OpenAlert(DEV, "low_battery", {**good, "kind": "low_battery", "episode": "2"}),
        OpenAlert(DEV, "low_battery", {**good, "kind": "low_battery", "episode": True}),
        OpenAlert(DEV, "low_battery", {**good, "kind": "low_battery", "raised_at": float("nan")}),
        OpenAlert(DEV, "tachycardia", good),  # the payload is another kind's
        OpenAlert("w2", "off_wrist", good),  # the payload is another device's
        object(),
        OpenAlert(DEV, "off_wrist", good),
        OpenAlert(DEV, "off_wrist", {**good, "episode": 1}),  # an older episode
    ]
    engine = RuleEngine()
    result = engine.restore(records, t=100.0)
    assert [(r.kind, r.episode) for r in result.restored] == [(AlertKind.OFF_WRIST, 2)]
    reasons = [s.reason for s in result.skipped]
    assert len(reasons) == len(records) - 1
    assert reasons == [
        "unknown alert kind 'no_such_kind'",
        "payload is str, not an object",
        "no device id",
        "state 'cleared' is not 'raised'",
        "episode '2' is not a positive integer",
        "episode True is not a positive integer",
        "raised_at nan is not a finite number",
        "payload kind 'off_wrist' is not the event's 'tachycardia'",
        "payload device_id 'w1' is not the event's 'w2'",
        "no device id",
        "superseded by episode 2",
    ]
    assert result.skipped[-1].alert is records[-1]
    assert engine.active(DEV) == (AlertKind.OFF_WRIST,)
    # Restoring again does not open a second episode of what is raised.
    again = engine.restore([OpenAlert(DEV, "off_wrist", good)], t=101.0)
    assert [s.reason for s in again.skipped] == ["off_wrist is already raised on w1"]


def test_the_open_alerts_of_a_device_no_longer_paired_are_cleared_at_restore() -> None:
    first = raised_before_restart(windows(0, 40, battery=5), AlertKind.LOW_BATTERY)
    engine = RuleEngine()
    # Removed (or renamed) while the gateway was down: another device is on the list now.
    result = engine.restore([stored(first)], t=300.0, paired={"w2"})
    assert result.restored == ()
    assert [(tr.kind, tr.state, tr.reason, tr.episode, tr.t) for tr in result.transitions] == [
        (AlertKind.LOW_BATTERY, "cleared", "unpaired", 1, 300.0)
    ]
    assert engine.active(DEV) == ()
    assert engine.tick(400.0) == [], "nothing more is said about it"
    # Still paired (or no list given): restored as before.
    for paired in ({DEV, "w2"}, None):
        again = RuleEngine()
        kept = again.restore([stored(first)], t=300.0, paired=paired)
        assert (kept.transitions, again.active(DEV)) == ((), (AlertKind.LOW_BATTERY,))


def test_a_device_removed_while_running_has_every_open_alert_cleared_and_is_forgotten() -> None:
    engine = RuleEngine()
    out = run(engine, windows(0, 40, hr=120.0, battery=5))
    assert set(engine.active(DEV)) == {AlertKind.TACHYCARDIA, AlertKind.LOW_BATTERY}
    raised = {tr.kind: tr for tr in out if tr.state == "raised"}
    cleared = engine.remove(DEV, 500.0, 450.0)
    assert sorted((tr.kind.value, tr.state, tr.reason, tr.t) for tr in cleared) == [
        ("low_battery", "cleared", "unpaired", 500.0),
        ("tachycardia", "cleared", "unpaired", 500.0),
    ]
    assert all((tr.episode, tr.raised_at) == (raised[tr.kind].episode, raised[tr.kind].t)
               for tr in cleared)  # fmt: skip
    assert DEV not in engine.devices
    assert engine.tick(2000.0) == [], "nothing more is said about it"
    assert engine.remove(DEV, 600.0) == [], "nor when it is removed again"


def test_an_alert_of_a_rule_now_disabled_is_cleared_at_restore() -> None:
    first = raised_before_restart(windows(0, 40, battery=5), AlertKind.LOW_BATTERY)
    engine = RuleEngine(RulesConfig.model_validate({"low_battery": {"enabled": False}}))
    result = engine.restore([stored(first)], t=300.0)
    assert result.restored == ()
    assert [(tr.kind, tr.state, tr.reason, tr.episode, tr.t) for tr in result.transitions] == [
        (AlertKind.LOW_BATTERY, "cleared", "disabled", 1, 300.0)
    ]
    assert engine.active(DEV) == ()
