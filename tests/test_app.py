"""gatewayd.app and gatewayd.systemd: exit codes, degraded start, signals, the watchdog rule.

The gateway runs for real here (SQLite in tmp_path, the publisher against a closed port, bleak
against the emulated BlueZ with one adapter: READY=1 waits for it), only without wearables or a
broker: these tests are about the supervisor. tests/test_app_emulated.py runs the whole data path.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gatewayd import cli
from gatewayd.app import (
    ShutdownTimeouts,
    build_gateway,
    link_settings,
    run_gateway,
    should_ping_watchdog,
    store_options,
)
from gatewayd.config import Config, load_config
from gatewayd.emulator import FakeBluez
from gatewayd.link.registry import DeviceRegistry
from gatewayd.mapping import alert_event
from gatewayd.rules.alerts import AlertKind, AlertTransition, Evidence
from gatewayd.runner import EXIT_INTERRUPTED, run_until_signalled
from gatewayd.store.store import Store
from gatewayd.systemd import notifier, watchdog_interval_s
from tests.emulator_fixtures import EmulatorEnv
from tests.mqtt_fixtures import free_port

pytest_plugins = ["tests.emulator_fixtures"]

needs_dbus = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"
)


def write_config(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "gw-app"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n{extra}',
        encoding="utf-8",
    )
    return load_config(path, env={})


@pytest.mark.parametrize(("extra", "limit"), [
    ("", 10000),
    ("[rules.tachycardia]\nrest_bpm = 112.5\n", 11250),
    # A limit that rounds to 0 puts every resting window above it; 0 would turn the check off.
    ("[rules.bradycardia]\nrest_bpm = 0\n[rules.tachycardia]\nrest_bpm = 0.004\n", 1),
])  # fmt: skip
def test_the_wearables_resting_limit_is_the_tachycardia_limit_at_rest(
    tmp_path: Path, extra: str, limit: int
) -> None:
    config = write_config(tmp_path, "[offload]\ntau_bits = 3.5\nmin_confidence = 0.5\n" + extra)
    settings = link_settings(config)
    assert (settings.tau_mbits, settings.min_conf_e4) == (3500, 5000)
    assert settings.rest_limit_cbpm == limit


def event_kinds(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT kind, severity FROM events")]
    finally:
        conn.close()


async def start(config: Config, notes: list[str], **kwargs: object) -> asyncio.Task[int]:
    task = asyncio.create_task(
        run_gateway(
            config,
            registry_devices=[],
            ready=lambda: notes.append("READY=1"),
            watchdog=lambda: notes.append("WATCHDOG=1"),
            status=lambda line: notes.append(f"STATUS={line}"),
            models_dir=Path(config.gateway.state_dir) / "no-models",
            watchdog_interval_s=0.1,
            **kwargs,  # type: ignore[arg-type]
        )
    )
    async with asyncio.timeout(20):
        while "READY=1" not in notes:
            if task.done():
                return task
            await asyncio.sleep(0.05)
    return task


async def wait_until(condition: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Poll until ``condition()`` holds; fail after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        await asyncio.sleep(0.05)


def test_the_watchdog_is_pinged_only_while_work_progresses_or_there_is_none() -> None:
    assert should_ping_watchdog(previous=5, handled=6, backlog=10)
    assert should_ping_watchdog(previous=5, handled=5, backlog=0)
    assert not should_ping_watchdog(previous=5, handled=5, backlog=3)


def test_gatewayd_run_with_a_missing_config_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "--config", str(tmp_path / "nope.toml")]) == 78
    assert "no such file" in capsys.readouterr().err


def test_systemd_notifier_is_a_no_op_outside_systemd() -> None:
    notify = notifier({})
    notify("READY=1")  # nothing to assert but that it does not raise
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "nonsense"}) is None


@needs_dbus
@pytest.mark.asyncio
async def test_runs_degraded_without_model_or_broker_and_stops_cleanly(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, tmp_path: Path
) -> None:
    await fake_bluez.add_adapter("hci0", "00:1A:7D:DA:71:00")
    config = await asyncio.to_thread(write_config, tmp_path)
    stop = asyncio.Event()
    notes: list[str] = []
    task = await start(config, notes, stop=stop)
    assert "READY=1" in notes, notes
    await wait_until(lambda: "WATCHDOG=1" in notes)  # an idle pipeline is pinged
    stop.set()
    async with asyncio.timeout(30):
        assert await task == 0
    assert notes[-1] == "STATUS=stopped"
    assert any("no model (degraded)" in n for n in notes)
    kinds = await asyncio.to_thread(event_kinds, config.store.path)
    assert ("model_missing", "warning") in kinds


@needs_dbus
@pytest.mark.asyncio
async def test_a_recovered_store_is_a_critical_event(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, tmp_path: Path
) -> None:
    await fake_bluez.add_adapter("hci0", "00:1A:7D:DA:71:00")
    config = await asyncio.to_thread(write_config, tmp_path)
    path = config.store.path
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, b"this is not an SQLite database at all" * 200)
    stop = asyncio.Event()
    task = await start(config, [], stop=stop)
    stop.set()
    async with asyncio.timeout(30):
        assert await task == 0
    kinds = await asyncio.to_thread(event_kinds, path)
    assert ("store_recovered", "critical") in kinds


def low_battery_events(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sql = "SELECT device_id, state, payload FROM events WHERE kind = 'low_battery'"
        return list(conn.execute(sql + " ORDER BY rowid"))
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_the_open_alerts_of_a_device_removed_while_it_was_down_are_cleared_at_start(
    tmp_path: Path,
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path)
    registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
    await asyncio.to_thread(registry.add, "C0:FF:EE:00:00:01", "wearable", "w", "kept")
    options = store_options(config, ShutdownTimeouts())
    async with Store.open(config.store.path, config.store, options) as store:
        for device_id in ("kept", "gone"):  # "gone" was paired once, raised, then removed
            raised = AlertTransition(
                device_id=device_id, kind=AlertKind.LOW_BATTERY, category="technical",
                severity="warning", state="raised", t=1000.0, episode=3, raised_at=1000.0,
                reason="threshold", evidence=Evidence(),
            )  # fmt: skip
            await store.append_event(alert_event(raised))
    async with build_gateway(config, models_dir=tmp_path / "no-models", with_link=False):
        pass
    rows = await asyncio.to_thread(low_battery_events, config.store.path)
    cleared = [(d, json.loads(p)) for d, state, p in rows if state == "cleared"]
    assert [(d, p["reason"], p["episode"]) for d, p in cleared] == [("gone", "unpaired", 3)]


@pytest.mark.parametrize(("value", "pragma"), [("normal", "NORMAL"), ("FULL", "FULL")])
def test_store_synchronous_from_the_config_file_becomes_the_store_option(
    tmp_path: Path, value: str, pragma: str
) -> None:
    path = tmp_path / "gatewayd.toml"
    path.write_text(f'[store]\nsynchronous = "{value}"\n', encoding="utf-8")
    options = store_options(load_config(path, env={}), ShutdownTimeouts(store_s=3.0))
    assert options.synchronous == pragma
    assert options.close_timeout_s == 3.0


@pytest.mark.asyncio
async def test_an_unreadable_password_file_exits_78(tmp_path: Path) -> None:
    extra = f'username = "gw"\npassword_file = "{tmp_path / "missing"}"\n'
    config = await asyncio.to_thread(write_config, tmp_path, extra)
    notes: list[str] = []
    task = await start(config, notes, stop=asyncio.Event())
    async with asyncio.timeout(30):
        assert await task == 78
    assert any(n.startswith("STATUS=configuration error") for n in notes)


@pytest.mark.parametrize("ca", ["missing", "garbage"])
@pytest.mark.asyncio
async def test_a_bad_tls_ca_file_fails_check_config_and_run_before_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ca: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    if ca == "garbage":
        await asyncio.to_thread(ca_file.write_text, "-----BEGIN CERTIFICATE-----\nnot base64\n")
    extra = f'[mqtt.tls]\nenabled = true\nca_file = "{ca_file}"\n'
    config = await asyncio.to_thread(write_config, tmp_path, extra)
    path = str(tmp_path / "gatewayd.toml")
    assert await asyncio.to_thread(cli.main, ["check-config", path]) == 78
    assert "mqtt.tls" in capsys.readouterr().err
    notes: list[str] = []
    task = await start(config, notes, stop=asyncio.Event())
    async with asyncio.timeout(30):
        assert await task == 78
    assert "READY=1" not in notes
    assert any(n.startswith("STATUS=configuration error") and "mqtt.tls" in n for n in notes)


def _signal_later(*signums: signal.Signals, after_s: float = 0.3) -> threading.Thread:
    """Send this process ``signums``, one every ``after_s``, from a thread."""

    def send() -> None:
        for signum in signums:
            time.sleep(after_s)
            os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_sigterm_sets_stop_and_the_exit_code_is_the_gateways() -> None:
    async def main(stop: asyncio.Event) -> int:
        await stop.wait()
        return 0

    _signal_later(signal.SIGTERM)
    assert run_until_signalled(main) == 0


def test_a_second_sigint_forces_exit_130_while_shutdown_hangs() -> None:
    reached: list[str] = []

    async def main(stop: asyncio.Event) -> int:
        await stop.wait()
        reached.append("stopping")
        await asyncio.Event().wait()  # a shutdown that never ends
        return 0

    _signal_later(signal.SIGINT, signal.SIGINT)
    assert run_until_signalled(main) == EXIT_INTERRUPTED
    assert reached == ["stopping"]


def test_tasks_that_ignore_cancellation_are_abandoned_not_waited_for() -> None:
    abandoned: list[str] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                abandoned.append("ignored a cancel")  # a call into a hung daemon, say

    async def main(stop: asyncio.Event) -> int:
        asyncio.create_task(stubborn(), name="stubborn")  # noqa: RUF006 - left behind on purpose
        await stop.wait()
        return 0

    _signal_later(signal.SIGTERM)
    assert run_until_signalled(main, leftover_s=0.2) == 0
    assert abandoned  # it was asked, ignored it, and the runner returned all the same
