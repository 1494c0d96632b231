"""`gatewayd run` starting in trouble: a corrupt event log, a missing model, no broker, leftovers.

Acceptance (issue): "A corrupt database file, a missing model file and an unreachable broker at
start each give one clear message and the documented behaviour (exit code or degraded mode with
an alert)." docs/running.md ("Degraded modes") documents each: the gateway starts anyway. An
unwritable state directory is said in `gatewayd doctor`'s words and exits 1, and a device removed
while the gateway was stopped leaves nothing retained on the broker once it starts (issue 10).

Each test runs the real CLI in a subprocess against the emulated BlueZ (JSON logs on stderr,
parsed), stops it with SIGTERM once it logged "gateway running", and checks its log, its exit
code and its event log (read-only). Each message is checked against the issue's wording:
one clear line, naming what is wrong and what the gateway does about it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gatewayd.emulator import FakeBluez
from gatewayd.emulator.virtual import running
from gatewayd.inference.registry import DEFAULT_MODELS_DIR
from gatewayd.link.registry import PairedDevice
from gatewayd.publish import DeviceState, Topics
from gatewayd.publish.topics import discovery_messages, gateway_discovery_message
from tests.emulator_fixtures import EmulatorEnv, run_gatewayd
from tests.mqtt_fixtures import MOSQUITTO, Broker, free_port
from tests.test_app_durability import (
    GatewayProcess,
    gatewayd_run,
    integrity,
    outbox_pending,
    pair,
    read_only,
    write_config_file,
)
from tests.test_app_emulated import GATEWAY_ID, SPEED, build, read_db
from tests.test_publish_mqtt import retained
from tests.test_systemd_notify import NotifySocket, notify_socket, wait_for_prefix

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
    pytest.mark.asyncio,
]

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")

MISSING_MODEL = "some-model-that-is-not-installed"
#: The model gatewayd ships and runs by default ([inference] model).
SHIPPED_MODEL = "mnv2-1d-w1.0"
CORRUPT = b"this is not an SQLite database at all\n" * 200
#: Simulated minutes of the recordings of the broker test (it stops long before their end).
MINUTES = 4.0


def text(record: dict[str, Any]) -> str:
    """A log record as one searchable string."""
    return json.dumps(record)


def at_least(gw: GatewayProcess, *levels: str) -> list[dict[str, Any]]:
    """The records at one of ``levels``."""
    return [r for r in gw.records if r.get("level") in levels]


def events(path: Path) -> list[dict[str, Any]]:
    """Every event in the log, read-only."""
    conn = read_only(path)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT device_id, kind, severity, payload FROM events")
        return [dict(row) | {"payload": json.loads(row["payload"])} for row in rows]
    finally:
        conn.close()


async def with_adapter(fake: FakeBluez) -> None:
    """One powered adapter, no wearables: the link scans quietly."""
    await fake.add_adapter("hci0", "00:1A:7D:DA:71:00", slots=5)


@needs_mosquitto
async def test_a_corrupt_event_log_is_moved_aside_and_a_fresh_one_started(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    await with_adapter(fake_bluez)
    config = await asyncio.to_thread(write_config_file, tmp_path, port=mosquitto_broker.port)
    state = tmp_path / "state"
    db = state / "gatewayd.db"
    await asyncio.to_thread(state.mkdir)
    await asyncio.to_thread(db.write_bytes, CORRUPT)

    async with gatewayd_run(config, private_bus) as gw:
        await gw.wait_logged("gateway running")
        assert await gw.terminate() == 0, gw.stderr()

    moved = await asyncio.to_thread(lambda: sorted(state.glob("gatewayd.db.corrupt-*")))
    assert len(moved) == 1, moved
    assert await asyncio.to_thread(moved[0].read_bytes) == CORRUPT, "the moved file was changed"
    assert await asyncio.to_thread(integrity, db) == ["ok"]
    recovered = [e for e in await asyncio.to_thread(events, db) if e["kind"] == "store_recovered"]
    assert [(e["severity"], e["device_id"]) for e in recovered] == [("critical", None)]
    assert str(moved[0]) in text(recovered[0])
    problems = at_least(gw, "error", "critical")
    assert any(str(moved[0]) in text(r) for r in problems), gw.stderr()
    assert not [r for r in problems if str(moved[0]) not in text(r)], "an unrelated error"
    assert len(problems) == 1, f"one message for one recovery, got {problems}"


@needs_mosquitto
async def test_a_missing_model_is_one_warning_and_degraded_mode(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    await with_adapter(fake_bluez)
    extra = f'[inference]\nmodel = "{MISSING_MODEL}"\n'
    config = await asyncio.to_thread(
        write_config_file, tmp_path, port=mosquitto_broker.port, extra=extra
    )
    db = tmp_path / "state" / "gatewayd.db"

    # The installed models (gatewayd/models) are discovered as usual; the configured one is not
    # among them.
    async with gatewayd_run(config, private_bus) as gw:
        started = await gw.wait_logged("gateway running")
        assert await gw.terminate() == 0, gw.stderr()

    assert started["model"] == "no model (degraded)"
    warnings = [r for r in at_least(gw, "warning", "error", "critical") if MISSING_MODEL in text(r)]
    assert len(warnings) == 1, gw.stderr()
    assert warnings[0]["level"] == "warning"
    assert "degraded" in warnings[0]["event"]
    assert warnings[0]["fix"].startswith("reinstall gatewayd")
    assert not at_least(gw, "error", "critical"), gw.stderr()
    missing = [e for e in await asyncio.to_thread(events, db) if e["kind"] == "model_missing"]
    assert [(e["severity"], e["device_id"]) for e in missing] == [("warning", None)]
    assert MISSING_MODEL in text(missing[0]["payload"]), "the event does not name the model"


async def test_a_corrupted_model_is_said_as_doctor_says_it_and_degraded_mode(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, tmp_path: Path
) -> None:
    await with_adapter(fake_bluez)
    # A copy of the shipped model in a models folder of its own, one byte flipped.
    models = tmp_path / "models"
    await asyncio.to_thread(models.mkdir)
    for name in (f"{SHIPPED_MODEL}.onnx", f"{SHIPPED_MODEL}.onnx.json"):
        await asyncio.to_thread(shutil.copy, DEFAULT_MODELS_DIR / name, models / name)
    onnx = models / f"{SHIPPED_MODEL}.onnx"
    data = bytearray(await asyncio.to_thread(onnx.read_bytes))
    data[len(data) // 2] ^= 0xFF
    await asyncio.to_thread(onnx.write_bytes, bytes(data))
    extra = f'[inference]\nmodel = "{SHIPPED_MODEL}"\n'
    config = await asyncio.to_thread(write_config_file, tmp_path, port=free_port(), extra=extra)
    db = tmp_path / "state" / "gatewayd.db"
    doctor = await run_gatewayd(
        "doctor", "--config", str(config), "--models-dir", str(models), env=private_bus
    )
    (doctor_line,) = [
        line for line in doctor.stdout.splitlines() if line[6:20] == "model".ljust(14)
    ]

    async with gatewayd_run(config, private_bus, "--models-dir", str(models)) as gw:
        started = await gw.wait_logged("gateway running")
        assert await gw.terminate() == 0, gw.stderr()  # degraded mode: runs, stops cleanly

    assert started["model"] == "no model (degraded)"
    (said,) = [r for r in at_least(gw, "warning", "error") if str(onnx) in text(r)]
    assert said["level"] == "warning"
    assert said["event"].startswith(f"{SHIPPED_MODEL}: {onnx}: sha256 ")
    assert "does not match its card" in said["event"]
    assert said["event"].endswith("; gatewayd runs degraded (no gateway model)")
    assert said["fix"].startswith("reinstall gatewayd")
    # The same words as `gatewayd doctor`, with its fix.
    assert doctor_line == f"FAIL  {'model':<14} {said['event']} — fix: {said['fix']}"
    missing = [e for e in await asyncio.to_thread(events, db) if e["kind"] == "model_missing"]
    assert [e["payload"]["reason"] for e in missing] == [said["event"]]


async def test_an_unreachable_broker_is_said_once_and_alerts_wait_in_the_outbox(
    private_bus: EmulatorEnv,
    fake_bluez: FakeBluez,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()  # nothing listens there
    config = await asyncio.to_thread(write_config_file, tmp_path, port=port)
    db = tmp_path / "state" / "gatewayd.db"
    fleet, devices = await build(fake_bluez, MINUTES, periodic=True)
    await asyncio.to_thread(pair, tmp_path / "state", devices)
    doctor = await run_gatewayd("doctor", "--config", str(config), env=private_bus)
    (doctor_line,) = [
        line for line in doctor.stdout.splitlines() if line[6:20] == "broker".ljust(14)
    ]
    cause = f"cannot connect to mqtt://127.0.0.1:{port}: "

    # At debug level the repeated attempts are visible too: the test can tell "said once"
    # from "tried once".
    with notify_socket(str(tmp_path / "notify")) as receiver:
        monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
        async with gatewayd_run(config, private_bus, "--log-level", "debug") as gw:
            await gw.wait_logged("gateway running")
            async with running(fleet, SPEED):
                await gw.wait_until(lambda: _pending_alerts(db), 30, "an alert in the outbox")
                await gw.wait_until(lambda: _attempts(gw, cause, 2), 30, "a second attempt")
                # STATUS= names the cause too (the line every 10 s while running).
                await wait_for_prefix(receiver, "STATUS=")
                await gw.wait_until(
                    lambda: _status_names(receiver, cause), 30, "the cause in STATUS="
                )
                assert gw.process.returncode is None, "gatewayd gave up without a broker"
                assert await gw.terminate() == 0, gw.stderr()

    attempts = gw.logged_prefix(cause)
    assert [r["level"] for r in attempts][:2] == ["warning", "debug"]
    assert [r for r in attempts if r["level"] != "debug"] == attempts[:1], "said more than once"
    assert (attempts[0]["host"], attempts[0]["port"]) == ("127.0.0.1", port)
    assert "Connection refused" in attempts[0]["event"]
    # The same words as `gatewayd doctor`, with its fix, rather than the bare errno.
    message = attempts[0]["event"].removesuffix(
        "; alerts are kept in the outbox and sent when it is back"
    )
    assert attempts[0]["fix"] == (
        "start the broker, or set [mqtt] host and port to where it listens"
    )
    assert doctor_line.endswith(f"{message} — fix: {attempts[0]['fix']}"), doctor_line
    assert not at_least(gw, "error", "critical"), gw.stderr()
    # The alerts written meanwhile stay in the outbox for the next start.
    _, stored, pending = await asyncio.to_thread(read_db, db)
    assert stored, "no alert was written without a broker"
    assert pending == len(stored)
    assert await asyncio.to_thread(outbox_pending, db) >= pending
    assert any("outbox" in text(r) for r in at_least(gw, "warning")), (
        "the broker warning says that alerts are kept in the outbox"
    )


async def _pending_alerts(db: Path) -> bool:
    if not await asyncio.to_thread(db.exists):
        return False
    _, _, pending = await asyncio.to_thread(read_db, db)
    return pending > 0


async def _attempts(gw: GatewayProcess, cause: str, count: int) -> bool:
    return len(gw.logged_prefix(cause)) >= count


async def _status_names(receiver: NotifySocket, cause: str) -> bool:
    return any(m.startswith("STATUS=") and f"; {cause}" in m for m in receiver.messages())


async def test_an_unwritable_state_dir_is_said_as_doctor_says_it_and_exits_1(
    private_bus: EmulatorEnv, tmp_path: Path
) -> None:
    # A regular file where the state directory's parent should be: unwritable, even for root.
    blocker = tmp_path / "not-a-dir"
    await asyncio.to_thread(blocker.write_text, "")
    config = await asyncio.to_thread(write_config_file, tmp_path, port=free_port())
    text = await asyncio.to_thread(config.read_text)
    state_dir = blocker / "state"
    await asyncio.to_thread(
        config.write_text, text.replace(str(tmp_path / "state"), str(state_dir))
    )
    doctor = await run_gatewayd("doctor", "--config", str(config), env=private_bus)
    (doctor_line,) = [line for line in doctor.stdout.splitlines() if " state dir " in line]

    async with gatewayd_run(config, private_bus) as gw:
        assert await gw.wait() == 1, gw.stderr()

    problems = at_least(gw, "error", "critical")
    assert len(problems) == 1, gw.stderr()
    message = f"{state_dir} is not writable by"
    assert problems[0]["event"].startswith(message)
    assert problems[0]["event"].endswith(f"{blocker} is not a directory")
    assert problems[0]["fix"].startswith(f"sudo install -d -o gatewayd {state_dir}")
    # The same words as `gatewayd doctor`.
    assert f"{problems[0]['event']} — fix: {problems[0]['fix']}" in doctor_line
    assert not gw.logged("gateway running")


@needs_mosquitto
async def test_a_device_removed_while_stopped_has_its_retained_topics_cleared_at_start(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    await with_adapter(fake_bluez)
    config = await asyncio.to_thread(write_config_file, tmp_path, port=mosquitto_broker.port)
    toml = await asyncio.to_thread(config.read_text)
    await asyncio.to_thread(
        config.write_text,
        toml.replace("[mqtt]\n", "[mqtt]\nhomeassistant_discovery = true\n", 1),
    )
    topics = Topics("gatewayd", GATEWAY_ID)
    # What an earlier run left retained for two wearables: discovery configs and states.
    left: dict[str, bytes] = {}
    for device_id in ("bed-kept", "bed-gone"):
        for message in discovery_messages(topics, device_id):
            left[message.topic] = message.payload
        left[topics.state(device_id)] = DeviceState(
            device_id=device_id, gateway_id=GATEWAY_ID, connected=False, t=datetime.now(UTC)
        ).to_json()
    async with aiomqtt.Client(mosquitto_broker.host, mosquitto_broker.port) as client:
        for topic, payload in left.items():
            await client.publish(topic, payload, qos=1, retain=True)
    everything = ("homeassistant/#", f"gatewayd/{GATEWAY_ID}/#")
    assert set(left) <= set(await retained(mosquitto_broker, *everything))
    # bed-gone was removed from the paired list while the gateway was stopped.
    kept = PairedDevice("bed-kept", "F0:11:22:33:44:01", "wearable", "wearable-01")
    await asyncio.to_thread(pair, tmp_path / "state", [kept])

    async with gatewayd_run(config, private_bus) as gw:
        cleared = await gw.wait_logged(
            "cleared retained topics of removed devices or obsolete entities"
        )
        await gw.wait_logged("gateway running")
        assert await gw.terminate() == 0, gw.stderr()

    gone = {t for t in left if "bed-gone" in t}
    assert gone, "nothing of bed-gone was seeded"
    assert set(cleared["topics"]) == gone
    after = await retained(mosquitto_broker, *everything)
    assert not [t for t in after if "bed-gone" in t], sorted(after)
    # The paired device keeps its entities; the gateway announced its own.
    assert {t for t in left if "bed-kept" in t} <= set(after)
    assert gateway_discovery_message(topics).topic in after
