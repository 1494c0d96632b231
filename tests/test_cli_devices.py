"""`gatewayd devices remove` clears the device's retained MQTT topics at once (issue 10).

Against a real mosquitto on an ephemeral port (tests/mqtt_fixtures.py): what an earlier gateway
left retained for two wearables is seeded, one is removed with the real command, and what the
broker still retains is read back. Without a broker the device is removed all the same, with a
warning that the gateway clears the topics at its next start.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from gatewayd.cli import main
from gatewayd.link.registry import DeviceRegistry
from gatewayd.publish import DeviceState, Topics
from gatewayd.publish.payloads import OpenAlerts
from gatewayd.publish.topics import discovery_messages, gateway_discovery_message
from gatewayd.store.lock import EventLogLock
from tests.mqtt_fixtures import Broker, free_port, needs_mosquitto
from tests.test_publish_mqtt import retained

pytest_plugins = ["tests.mqtt_fixtures"]

GW = "gw-cli"
W1 = "F0:11:22:33:44:01"
W2 = "F0:11:22:33:44:02"


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GW}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[logging]\nlevel = "warning"\nformat = "json"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nhomeassistant_discovery = true\n',
        encoding="utf-8",
    )
    registry = DeviceRegistry.in_state_dir(tmp_path / "state")
    registry.add(W1, "wearable", "wearable-01", "bed-1")
    registry.add(W2, "wearable", "wearable-02", "bed-2")
    return path


def left_behind(topics: Topics, device_id: str) -> dict[str, bytes]:
    """What a gateway retains for one wearable: discovery configs, state, open-alert set."""
    now = datetime.now(UTC)
    left = {m.topic: m.payload for m in discovery_messages(topics, device_id)}
    left[topics.state(device_id)] = DeviceState(
        device_id=device_id, gateway_id=GW, connected=True, t=now, hr_bpm=61
    ).to_json()
    left[topics.open_alerts(device_id)] = OpenAlerts(
        device_id=device_id, gateway_id=GW, kinds=("tachycardia",), t=now
    ).to_json()
    return left


@needs_mosquitto
@pytest.mark.asyncio
async def test_remove_clears_the_device_retained_topics_on_the_broker(
    mosquitto_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker.port)
    topics = Topics("gatewayd", GW)
    gateway_config = gateway_discovery_message(topics)
    left = {gateway_config.topic: gateway_config.payload}
    left |= left_behind(topics, "bed-1") | left_behind(topics, "bed-2")
    async with aiomqtt.Client(mosquitto_broker.host, mosquitto_broker.port) as client:
        for topic, payload in left.items():
            await client.publish(topic, payload, qos=1, retain=True)
    everything = ("homeassistant/#", f"gatewayd/{GW}/#")
    assert await retained(mosquitto_broker, *everything) == left

    # The command runs its own event loop (asyncio.run): in a thread, off the test's loop.
    code = await asyncio.to_thread(main, ["--config", str(config), "devices", "remove", "bed-1"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    gone = {t for t in left if "bed-1" in t}
    assert out.splitlines() == [
        f"removed bed-1 ({W1}): the gateway will not connect to it",
        f"cleared {len(gone)} retained topics of bed-1 on the MQTT broker"
        f" 127.0.0.1:{mosquitto_broker.port}",
    ]
    # Only bed-1's: the other wearable and the gateway's own entity stay.
    assert await retained(mosquitto_broker, *everything) == {
        t: p for t, p in left.items() if t not in gone
    }
    registry = DeviceRegistry.in_state_dir(tmp_path / "state")
    assert [d.device_id for d in await asyncio.to_thread(registry.load)] == ["bed-2"]


def test_remove_without_a_broker_warns_and_still_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    config = write_config(tmp_path, port)

    code = main(["--config", str(config), "devices", "remove", "bed-2"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == f"removed bed-2 ({W2}): the gateway will not connect to it\n"
    assert err.startswith(
        "gatewayd devices remove: warning: could not clear the retained topics of bed-2 on the"
        f" MQTT broker 127.0.0.1:{port}: "
    )
    assert err.endswith("The gateway clears them when it next reaches the broker.\n")
    assert err.count("\n") == 1
    registry = DeviceRegistry.in_state_dir(tmp_path / "state")
    assert [d.device_id for d in registry.load()] == ["bed-1"]


def test_remove_and_rename_beside_a_running_gateway_say_it_follows_within_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, free_port())
    # This process holds the event log's lock, as a running `gatewayd run` does.
    with EventLogLock.acquire(tmp_path / "state" / "gatewayd.db"):
        assert main(["--config", str(config), "devices", "rename", "bed-1", "bed-9"]) == 0
        assert main(["--config", str(config), "devices", "remove", "bed-2"]) == 0
    out, _ = capsys.readouterr()
    pid = os.getpid()
    assert out.splitlines() == [
        f"renamed bed-1 to bed-9 ({W1}); the running gateway (pid {pid}) serves it under the"
        " new id within seconds, and clears what is open under the old one (alerts: reason"
        " unpaired)",
        f"removed bed-2 ({W2}): the running gateway (pid {pid}) disconnects it within seconds"
        " and clears its open alerts (reason unpaired)",
    ]
