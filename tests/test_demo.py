"""`gatewayd demo`: the scripted scenario end to end, and the pure parts it is built from.

The end-to-end test is the issue's first acceptance test: emulated wearables (synthetic
recordings with a planted tachycardia at rest, a fall and a disconnection) -> real bleak over the
emulated BlueZ -> the gateway with the shipped model -> a private mosquitto on an ephemeral port
-> the demo's subscriber. It checks that telemetry arrived for every window the wearables
produced and that every alert in the event log arrived exactly once, by event id.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gatewayd import cli
from gatewayd.demo.live import DemoOptions, progress_line, run_demo
from gatewayd.demo.scenario import SCENARIO, Expectation, away_changes, check_expectations
from gatewayd.demo.view import DemoState, Gauges, render
from gatewayd.publish.client import read_retained
from tests.emulator_fixtures import release_bleak_manager
from tests.mqtt_fixtures import MOSQUITTO, Broker

pytest_plugins = ["tests.mqtt_fixtures"]

# --- pure parts ----------------------------------------------------------------------------------


def test_a_relative_state_dir_is_where_the_demo_keeps_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gatewayd demo --state-dir demo-state`: the config written there names that very folder,
    not demo-state/demo-state (a relative path in a config file is relative to the file)."""
    from gatewayd.config import load_config
    from gatewayd.demo.broker import BrokerChoice
    from gatewayd.demo.live import demo_config_text

    monkeypatch.chdir(tmp_path)
    state = Path("demo-state")
    state.mkdir()
    broker = BrokerChoice("127.0.0.1", 1883, "local", "a broker")
    (state / "gatewayd-demo.toml").write_text(demo_config_text(broker), encoding="utf-8")
    config = load_config(state / "gatewayd-demo.toml")
    assert config.gateway.state_dir == (tmp_path / state).resolve()


def test_gatewayd_demo_state_dir_reaches_the_demo_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gatewayd demo --state-dir DIR` is parsed by the global option (a string): the demo used
    to crash on ``DIR / "gatewayd-demo.toml"``. Only the run itself is replaced here."""
    from types import SimpleNamespace

    import gatewayd.demo as demo
    import gatewayd.demo.live as live

    seen: list[Any] = []

    async def fake_run_demo(options: Any, out: Any) -> Any:
        seen.append(options)
        return SimpleNamespace(ok=True, summary={"ok": True})

    monkeypatch.setattr(live, "run_demo", fake_run_demo)
    # The demo would configure the process's logging: not for the tests that follow.
    monkeypatch.setattr(demo, "_configure_logging", lambda args: None)
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--headless", "--duration", "1", "--state-dir", "demo-state"]
    assert cli.main(argv) == 0
    assert seen[0].state_dir == Path("demo-state")


def test_expectations_are_met_missed_or_not_yet_due() -> None:
    expectations = [
        Expectation("a", "fall", due_s=30.0),
        Expectation("b", "tachycardia", due_s=30.0),
        Expectation("c", "disconnected", due_s=90.0),
    ]
    result = check_expectations(expectations, {("a", "fall"): 12.0}, elapsed_s=60.0)
    assert result == {
        "met": ["fall@a"],
        "missed": ["tachycardia@b"],
        "not_due": ["disconnected@c"],
    }


def test_the_scenario_plants_each_alert_the_issue_names() -> None:
    kinds = {e.kind for e in SCENARIO.expectations}
    assert kinds == {"tachycardia", "fall", "disconnected"}
    assert all(e.due_s <= 60 for e in SCENARIO.expectations), "within the first minute"
    changes = away_changes(SCENARIO.residents)
    assert [(t, in_range) for t, _, in_range in changes] == [(8.0, False), (38.0, True)]


def _message(state: DemoState, topic: str, body: dict[str, Any], t: float = 1.0) -> None:
    state.on_message(f"gatewayd/demo/{topic}", json.dumps(body).encode(), t)


def test_the_view_folds_mqtt_messages_and_counts_redeliveries_once() -> None:
    state = DemoState()
    _message(state, "status", {"state": "online"})
    _message(state, "devices/r1/state", {"connected": True, "battery_pct": 80})
    for seq in range(3):
        telemetry = {"seq": seq, "hr_bpm": 70.0 + seq, "hr_source": "signal"}
        _message(state, "devices/r1/telemetry", telemetry | {"offloaded": seq == 1})
    alert = {"event_id": "e1", "device_id": "r1", "kind": "fall", "state": "raised",
             "severity": "critical", "category": "physiological"}  # fmt: skip
    _message(state, "devices/r1/alerts", alert, t=5.0)
    _message(state, "devices/r1/alerts", alert, t=6.0)  # a QoS 1 redelivery
    state.on_message("gatewayd/demo/devices/r1/telemetry", b"not json", 7.0)
    state.on_message("gatewayd/demo/devices/r1/state", b"", 7.5)  # a cleared retained topic
    state.on_message("homeassistant/sensor/demo/r1_battery/config", b"{}", 7.5)
    state.on_message("homeassistant/sensor/demo/r2_battery/config", b"{}", 7.5)
    state.on_message("homeassistant/sensor/demo/r2_battery/config", b"", 7.6)
    assert state.discovery == {"homeassistant/sensor/demo/r1_battery/config"}

    row = state.devices["r1"]
    assert (row.connected, row.battery_pct, row.hr_bpm, row.seqs) == (True, 80, 72.0, {0, 1, 2})
    assert (state.windows, state.offloaded, state.malformed) == (3, 1, 1)
    assert len(state.alerts) == 1
    assert state.deliveries == {"e1": 2}
    assert state.first_raised == {("r1", "fall"): 5.0}
    assert row.open_alerts == {"fall"}

    tachycardia = alert | {"event_id": "e3", "kind": "tachycardia", "severity": "warning"}
    _message(state, "devices/r1/alerts", tachycardia, t=8.0)
    assert progress_line(state, 8.0).endswith("alerts open: fall@r1, tachycardia@r1")
    _message(state, "devices/r1/alerts", alert | {"event_id": "e2", "state": "cleared"}, t=9.0)
    assert row.open_alerts == {"tachycardia"}
    assert progress_line(state, 9.0).endswith("alerts open: tachycardia@r1; cleared: fall@r1")
    _message(state, "devices/r1/alerts",
             tachycardia | {"event_id": "e4", "state": "cleared"}, t=9.5)  # fmt: skip
    assert row.open_alerts == set()
    assert progress_line(state, 9.5).endswith("alerts open: none; cleared: fall@r1, tachycardia@r1")
    frame = render(state, Gauges(inference_capacity=256), elapsed_s=9.0, header=["demo"],
                   stories={"r1": "", "r2": ""})  # fmt: skip
    assert "r1" in frame
    assert "r2" in frame, "a device never heard from is still listed"
    assert "fall" in frame


def test_the_view_shows_the_activity_group_and_its_probability() -> None:
    state = DemoState()
    _message(state, "devices/r1/telemetry",
             {"seq": 0, "activity": "vigorous", "activity_confidence": 0.83})  # fmt: skip
    _message(state, "devices/r2/telemetry", {"seq": 0, "activity": "unknown"})
    frame = render(state, Gauges(), elapsed_s=1.0, header=["demo"], stories={})
    rows = {line.split()[0]: line for line in frame.splitlines() if line.startswith("r")}
    assert "vigorous 0.83" in rows["r1"]
    assert "unknown" in rows["r2"]
    assert "unknown 0" not in rows["r2"]  # no probability for an unknown group
    _message(state, "devices/r1/telemetry", {"seq": 1, "activity": "unknown"})
    assert (state.devices["r1"].activity, state.devices["r1"].activity_confidence) == (
        "unknown", None,
    )  # fmt: skip


def test_headless_needs_a_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--headless"]) == 64
    assert "--duration" in capsys.readouterr().err


# --- end to end ----------------------------------------------------------------------------------


def _read_log(path: Path) -> tuple[Counter[str], list[dict[str, Any]], str]:
    """(windows per device, device events, integrity check), read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        windows = Counter(
            {r[0]: r[1] for r in conn.execute("SELECT device_id, count(*) FROM windows GROUP BY 1")}
        )
        events = [
            dict(r)
            for r in conn.execute(
                "SELECT id, device_id, kind, state FROM events WHERE device_id IS NOT NULL"
                " ORDER BY rowid"
            )
        ]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return windows, events, integrity
    finally:
        conn.close()


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed")
@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
@pytest.mark.asyncio
async def test_the_scripted_scenario_reaches_a_subscriber_completely_and_exactly_once(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    options = DemoOptions(
        headless=True,
        duration_s=60.0,
        mqtt_host=mosquitto_broker.host,
        mqtt_port=mosquitto_broker.port,
        state_dir=tmp_path / "state",
    )
    try:
        result = await run_demo(options, io.StringIO())
    finally:
        await release_bleak_manager()
    summary = result.summary
    assert summary["replay_finished"], summary
    assert summary["gateway_exit"] == 0
    assert summary["expectations"]["missed"] == [], summary["expectations"]
    assert summary["expectations"]["not_due"] == []

    # Telemetry for every window each wearable produced, and the same windows in the log.
    windows, events, integrity = await asyncio.to_thread(_read_log, result.config.store.path)
    assert integrity == "ok"
    for device_id, produced in result.produced.items():
        assert produced > 20
        assert result.state.row(device_id).seqs == set(range(produced)), device_id
        assert windows[device_id] == produced, device_id

    # Every alert written arrived, exactly once by event id, and nothing else did.
    logged = {e["id"] for e in events}
    assert set(result.state.deliveries) == logged
    assert all(n == 1 for n in result.state.deliveries.values()), result.state.deliveries
    # Each planted episode raised its alert once.
    raised = Counter((e["device_id"], e["kind"]) for e in events if e["state"] == "raised")
    for expected in SCENARIO.expectations:
        assert raised[(expected.device_id, expected.kind)] == 1, (expected, raised)
    by_kind = {a.kind: a for a in result.state.alerts if a.state == "raised"}
    assert by_kind["disconnected"].category == "technical"
    assert by_kind["fall"].category == "physiological"
    assert by_kind["tachycardia"].category == "physiological"
    # The disconnection also ended while the demo ran: its clearing arrived too.
    assert any(a.kind == "disconnected" and a.state == "cleared" for a in result.state.alerts), (
        "resident-c came back in range"
    )
    # Discovery is on: the viewer saw the gateway's config and 15 per resident.
    assert result.config.mqtt.homeassistant_discovery
    assert summary["ha_discovery_configs"] == 1 + 15 * len(SCENARIO.residents)
    # On a broker it shares (one given, as here), the demo leaves nothing retained.
    assert await _retained(mosquitto_broker, "homeassistant/#", "gatewayd/demo/#") == {}
    assert result.ok


async def _retained(broker: Broker, *filters: str) -> dict[str, bytes]:
    async with aiomqtt.Client(broker.host, broker.port) as client, asyncio.timeout(20):

        async def publish_marker() -> bytes:
            await client.publish("test/demo-marker", b"end", qos=1)
            return b"end"

        return await read_retained(
            client, filters, marker="test/demo-marker", publish_marker=publish_marker
        )
