"""The gateway as a real process, SIGKILLed mid-stream and started again: nothing written is lost.

Acceptance (issue): "The gateway is killed with SIGKILL mid-stream and restarted: every event it
had written is still delivered; the store passes its integrity check."

Real parts: `python -m gatewayd run --config F` in a subprocess whose bleak talks to
the emulated BlueZ of this process over a private D-Bus (paired devices from the state
directory's devices.json); the wearables run here; a private mosquitto; the SQLite event log is
read read-only from the test. tests/test_app_startup.py reuses the process helpers below.

No timing assertions: every wait is for a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.emulator import FakeBluez
from gatewayd.emulator.virtual import Fleet, running
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from tests.emulator_fixtures import EmulatorEnv
from tests.mqtt_fixtures import MOSQUITTO, Broker
from tests.test_app_emulated import (
    GATEWAY_ID,
    RULES,
    SPEED,
    Received,
    build,
    read_db,
    subscribe,
)

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed"),
]

#: Simulated minutes of each recording: enough for the first run, the outage and the restart.
MINUTES = 6.0
#: Seconds a gateway process may take to start, or to stop after SIGTERM (a loaded 2-core box).
PROCESS_LIMIT_S = 30.0


# --- the gateway as a process (also used by tests/test_app_startup.py) ---------------------------


def write_config_file(directory: Path, *, port: int, extra: str = "") -> Path:
    """A gatewayd.toml: state in ``directory/state``, broker on 127.0.0.1:``port``, low thresholds.

    ``extra`` is appended (more TOML sections).
    """
    path = directory / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "{directory / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\n'
        "[offload]\ntau_bits = 3.5\nmin_confidence = 0.5\n" + RULES + extra,
        encoding="utf-8",
    )
    return path


def pair(state_dir: Path, devices: list[PairedDevice]) -> None:
    """Write the paired-device list (devices.json) the way `gatewayd pair` does."""
    registry = DeviceRegistry.in_state_dir(state_dir)
    for device in devices:
        registry.add(device.address, device.kind, device.name, alias=device.device_id)


class GatewayProcess:
    """A running `gatewayd run` with its JSON log lines (stderr), parsed as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        #: Every stderr line, as written (JSON log records and anything else).
        self.lines: list[str] = []
        #: The stderr lines that are JSON objects: structlog's records.
        self.records: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            with contextlib.suppress(ValueError):
                record = json.loads(text)
                if isinstance(record, dict):
                    self.records.append(record)

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The records whose event (message) is ``event``."""
        return [r for r in self.records if r.get("event") == event]

    def logged_prefix(self, prefix: str) -> list[dict[str, Any]]:
        """The records whose event (message) starts with ``prefix``."""
        return [r for r in self.records if str(r.get("event", "")).startswith(prefix)]

    def stderr(self) -> str:
        """The last lines of stderr, for failure messages."""
        return "\n".join(self.lines[-60:])

    async def wait_logged(self, event: str, limit_s: float = PROCESS_LIMIT_S) -> dict[str, Any]:
        """The first record of ``event``, once logged; fail if the process exits or time is up."""
        deadline = time.monotonic() + limit_s
        while not (found := self.logged(event)):
            if self.process.returncode is not None:
                await self._reader
                pytest.fail(
                    f"gatewayd exited ({self.process.returncode}) before logging {event!r}:\n"
                    f"{self.stderr()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"gatewayd did not log {event!r} within {limit_s:g} s:\n{self.stderr()}"
                )
            await asyncio.sleep(0.1)
        return found[0]

    async def wait_until(
        self, condition: Callable[[], Awaitable[bool]], limit_s: float, what: str
    ) -> None:
        """Poll ``condition`` until it holds; fail with the gateway's log after ``limit_s``."""
        deadline = time.monotonic() + limit_s
        while not await condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; gatewayd's log:\n{self.stderr()}")
            await asyncio.sleep(0.2)

    async def terminate(self) -> int:
        """SIGTERM, as systemd stops it; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await self.wait()

    async def kill(self) -> int:
        """SIGKILL: no shutdown code runs; the exit code (-9)."""
        self.process.kill()
        return await self.wait()

    async def wait(self) -> int:
        """Wait for the exit (and the last stderr line); kill and fail after the limit."""
        try:
            async with asyncio.timeout(PROCESS_LIMIT_S):
                returncode = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            await self._reader
            pytest.fail(f"gatewayd did not exit within {PROCESS_LIMIT_S:g} s:\n{self.stderr()}")
        await self._reader
        return returncode


@contextlib.asynccontextmanager
async def gatewayd_run(config: Path, env: EmulatorEnv, *args: str) -> AsyncIterator[GatewayProcess]:
    """`python -m gatewayd run --config CONFIG --log-format json ARGS` against the emulator.

    Killed at the end of the block if still running (a failed test leaves nothing behind).
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "run", "--config", str(config), "--log-format", "json",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env.environ(),
        limit=1 << 20,  # one log line may be long (a traceback in JSON)
    )  # fmt: skip
    gw = GatewayProcess(process)
    try:
        yield gw
    finally:
        if process.returncode is None:
            process.kill()
        await gw.wait()


# --- reading the event log (read-only, as a separate process would) ------------------------------


def read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: the test never writes to the gateway's file."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def integrity(path: Path) -> list[str]:
    """`PRAGMA integrity_check` rows (["ok"] for a sound file)."""
    conn = read_only(path)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def all_events(path: Path) -> dict[str, tuple[Any, ...]]:
    """Every event (gateway-level ones too) by id, with its stored fields."""
    conn = read_only(path)
    try:
        rows = conn.execute(
            "SELECT id, device_id, kind, severity, state, created_at, t_ms, payload FROM events"
        )
        return {row[0]: tuple(row) for row in rows}
    finally:
        conn.close()


def outbox_pending(path: Path) -> int:
    """Outbox rows not yet marked published, device and gateway events alike."""
    conn = read_only(path)
    try:
        pending: int = conn.execute("SELECT count(*) FROM outbox WHERE done_at IS NULL").fetchone()[
            0
        ]
        return pending
    finally:
        conn.close()


# --- the test -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_gateway_killed_mid_stream_delivers_every_event_it_had_written(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, durable_broker: Broker, tmp_path: Path
) -> None:
    """SIGKILL while alerts wait in the outbox (broker down), restart: all delivered, file ok."""
    broker = durable_broker
    config = await asyncio.to_thread(write_config_file, tmp_path, port=broker.port)
    db = tmp_path / "state" / "gatewayd.db"
    no_models = str(tmp_path / "no-models")  # degraded mode: no ONNX session to load twice
    fleet, devices = await build(fake_bluez, MINUTES, periodic=True)
    await asyncio.to_thread(pair, tmp_path / "state", devices)
    received = Received()
    subscribed = asyncio.Event()
    sub = asyncio.create_task(subscribe(broker, received, subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        async with gatewayd_run(config, private_bus, "--models-dir", no_models) as first:
            await first.wait_logged("gateway running")
            async with running(fleet, SPEED):
                await first.wait_until(lambda: _some_alert(received), 30,
                                       "the first alert, delivered live")  # fmt: skip
                # The broker goes away: what is written from now on waits in the outbox.
                await broker.stop()
                await first.wait_until(lambda: _pending_device_events(db), 30,
                                       "an alert written while the broker is down")  # fmt: skip
                assert await first.kill() == -signal.SIGKILL
                at_kill = await asyncio.to_thread(all_events, db)
                pending_at_kill = await asyncio.to_thread(outbox_pending, db)
                integrity_at_kill = await asyncio.to_thread(integrity, db)

                await broker.start()
                async with gatewayd_run(config, private_bus, "--models-dir", no_models) as second:
                    await second.wait_logged("gateway running")
                    streaming_at_restart = _still_streaming(fleet)
                    await second.wait_until(
                        lambda: _drained(db, at_kill, received), 60,
                        "the outbox empty and every event received",
                    )  # fmt: skip
                    assert await second.terminate() == 0, second.stderr()
    finally:
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub

    assert pending_at_kill > 0, "nothing was pending at the kill: the test proves little"
    assert integrity_at_kill == ["ok"]
    assert await asyncio.to_thread(integrity, db) == ["ok"]
    device_events = {i for i, row in at_kill.items() if row[1] is not None}
    assert device_events, "no device event in the log at the kill"
    # Every event: the devices' alerts and the gateway's own (model_missing: no models here).
    assert any(row[1] is None for row in at_kill.values()), "no gateway event at the kill"
    got = [a["event_id"] for a in received.alerts]
    missing = set(at_kill) - set(got) - {a["event_id"] for a in received.gateway_alerts}
    assert not missing, f"{len(missing)} event(s) written before the kill never arrived"
    # Nothing was lost from the event log, and what was there is unchanged.
    final = await asyncio.to_thread(all_events, db)
    assert {i: final.get(i) for i in at_kill} == at_kill
    # In order per device: first arrivals follow the log's order (outbox = creation order).
    for device in devices:
        _, stored, _ = await asyncio.to_thread(read_db, db)
        log_order = [e["id"] for e in stored if e["device_id"] == device.device_id]
        first_seen = list(dict.fromkeys(
            a["event_id"] for a in received.alerts if a["device_id"] == device.device_id
        ))  # fmt: skip
        assert first_seen == [i for i in log_order if i in set(got)], device.device_id
    assert streaming_at_restart, "the recordings ended before the restart: lengthen MINUTES"


async def _some_alert(received: Received) -> bool:
    return bool(received.alerts)


async def _pending_device_events(db: Path) -> bool:
    _, _, pending = await asyncio.to_thread(read_db, db)
    return pending > 0


def _windows(db: Path) -> int:
    """Windows stored so far; 0 while the gateway has yet to create the file or its schema."""
    if not db.exists():
        return 0
    try:
        return read_db(db)[0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise


async def _more_windows(db: Path, before: int) -> bool:
    return await asyncio.to_thread(_windows, db) > before


def _still_streaming(fleet: Fleet) -> bool:
    return not all(w.done.is_set() for _, w in fleet.wearables)


async def _drained(db: Path, at_kill: dict[str, tuple[Any, ...]], received: Received) -> bool:
    """The outbox is empty and every event of the log at the kill was received."""
    got = {a["event_id"] for a in received.alerts + received.gateway_alerts}
    return await asyncio.to_thread(outbox_pending, db) == 0 and set(at_kill) <= got


@pytest.mark.asyncio
async def test_a_gateway_restarted_after_sigkill_picks_up_the_stream_again(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    """BlueZ keeps a link up when the process that opened it dies: the next one must use it."""
    config = await asyncio.to_thread(write_config_file, tmp_path, port=mosquitto_broker.port)
    db = tmp_path / "state" / "gatewayd.db"
    no_models = str(tmp_path / "no-models")
    fleet, devices = await build(fake_bluez, MINUTES, periodic=True)
    await asyncio.to_thread(pair, tmp_path / "state", devices)
    async with running(fleet, SPEED):
        async with gatewayd_run(config, private_bus, "--models-dir", no_models) as first:
            await first.wait_until(lambda: _more_windows(db, 0), 30, "the first windows")
            await first.kill()
        windows_at_kill = await asyncio.to_thread(_windows, db)
        async with gatewayd_run(config, private_bus, "--models-dir", no_models) as second:
            await second.wait_logged("gateway running")
            await second.wait_until(lambda: _more_windows(db, windows_at_kill), 30,
                                    "windows stored by the restarted gateway")  # fmt: skip
            assert await second.terminate() == 0
