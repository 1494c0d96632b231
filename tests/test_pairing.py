"""`gatewayd pair` and `gatewayd devices` through the real command line.

The emulated BlueZ runs in the test's event loop; commands that use bleak run as a subprocess
(``python -m gatewayd``; its own asyncio.run cannot nest in this loop) pointed at the private bus.
Commands that only touch the registry run in-process through ``gatewayd.cli.main``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio

from gatewayd.cli import main
from gatewayd.emulator import (
    CharSpec,
    FakeBluez,
    FakeDevice,
    ServiceSpec,
    StaticPeripheral,
    battery_service,
    wearable_service,
)
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from gatewayd.logs import reset_logging
from gatewayd.protocol import gatt
from gatewayd.protocol.control import DeviceInfo, encode_info
from gatewayd.protocol.messages import SampleFormat
from gatewayd.store.lock import EventLogLock
from tests.emulator_fixtures import EmulatorEnv, Finished, needs_dbus_daemon, run_gatewayd
from tests.mqtt_fixtures import Broker, free_port, needs_mosquitto

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

W1 = "C0:FF:EE:00:00:01"
W2 = "C0:FF:EE:00:00:02"
STRAP = "C0:FF:EE:00:00:03"
DECOY = "C0:FF:EE:00:00:99"
ENVIRONMENTAL_SENSING = "181a"
SCAN = ("--scan-seconds", "0.5")

INFO = DeviceInfo(
    fw_major=1,
    fw_minor=2,
    fw_patch=3,
    boot_id=7,
    pruning_pct=40,
    bvp_rate_hz=64,
    acc_rate_hz=32,
    sample_format=SampleFormat.INT16,
    acc_lsb_per_g=64,
    tau_mbits=4000,
    min_conf_e4=6000,
    next_seq=0,
    model_id="mnv2-p40",
)


def heart_rate_service() -> ServiceSpec:
    return ServiceSpec(
        gatt.HEART_RATE_SERVICE_UUID,
        (CharSpec(gatt.HEART_RATE_MEASUREMENT_CHAR_UUID, ("notify",)),),
    )


def write_config(path: Path, state_dir: Path, *, mqtt_port: int | None = None) -> Path:
    """A config whose broker is ``mqtt_port`` on 127.0.0.1, or a closed port (nothing listens).

    Never the default 127.0.0.1:1883: `devices remove` clears retained topics there, and a
    broker on that port is shared with whatever else runs on the machine.
    """
    port = free_port() if mqtt_port is None else mqtt_port
    path.write_text(
        f'[gateway]\nid = "test"\nstate_dir = "{state_dir}"\n'
        '[logging]\nlevel = "warning"\nformat = "json"\n'
        '[ble]\nadapters = ["hci0", "hci1"]\nconnect_timeout_s = 10.0\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    return path


def no_broker_warning(device_id: str, port: int) -> str:
    """The start of `devices remove`'s warning when nothing listens on ``port``."""
    return (
        f"gatewayd devices remove: warning: could not clear the retained topics of {device_id}"
        f" on the MQTT broker 127.0.0.1:{port}: "
    )


@dataclass
class World:
    """Two wearables and a decoy on hci0, a heart-rate strap on hci1, and a gatewayd config."""

    fake: FakeBluez
    env: EmulatorEnv
    config: Path
    state_dir: Path
    devices: dict[str, FakeDevice]

    async def gatewayd(self, *args: str) -> Finished:
        return await run_gatewayd("--config", str(self.config), *args, env=self.env)

    async def pair(self, *args: str) -> Finished:
        return await self.gatewayd("pair", *SCAN, *args)

    async def registry(self) -> list[PairedDevice]:
        # A file read: off the loop, as gatewayd code must be (the blockbuster fixture checks).
        return await asyncio.to_thread(DeviceRegistry.in_state_dir(self.state_dir).load)

    def pair_calls(self, address: str) -> int:
        path = self.devices[address].path
        return sum(1 for c in self.fake.call_log if c.member == "Pair" and c.path == path)


@pytest_asyncio.fixture
async def world(fake_bluez: FakeBluez, private_bus: EmulatorEnv, tmp_path: Path) -> World:
    hci0 = await fake_bluez.add_adapter("hci0", "00:1A:7D:DA:71:01")
    hci1 = await fake_bluez.add_adapter("hci1", "00:1A:7D:DA:71:02")
    devices: dict[str, FakeDevice] = {}
    for address, name, rssi in ((W1, "wearable-01", -50), (W2, "wearable-02", -70)):
        devices[address] = await fake_bluez.add_device(
            hci0,
            address,
            name,
            [gatt.SERVICE_UUID],
            [wearable_service(), battery_service()],
            peripheral=StaticPeripheral({gatt.INFO_CHAR_UUID: encode_info(INFO)}),
            rssi=rssi,
        )
    devices[STRAP] = await fake_bluez.add_device(
        hci1, STRAP, "HRM-Pro", [gatt.HEART_RATE_SERVICE_UUID], [heart_rate_service()], rssi=-60
    )
    # Next to them: something else with a GATT server, advertising another service.
    devices[DECOY] = await fake_bluez.add_device(
        hci0, DECOY, "thermometer", [ENVIRONMENTAL_SENSING], [battery_service()], rssi=-40
    )
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "gatewayd.toml", state_dir)
    return World(fake_bluez, private_bus, config, state_dir, devices)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # In-process commands configure logging from the config file; leave it as it was.
    yield
    reset_logging()


def ids(devices: list[PairedDevice]) -> dict[str, str]:
    return {d.device_id: d.address for d in devices}


# --- pair: scanning ----------------------------------------------------------------------------


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_pair_lists_wearables_and_strap_but_not_the_decoy(world: World) -> None:
    listed = await world.pair("--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    found = {c["address"]: c for c in doc["candidates"]}
    assert set(found) == {W1, W2, STRAP}
    assert found[W1]["kind"] == found[W2]["kind"] == "wearable"
    assert found[STRAP]["kind"] == "heart_rate"
    assert (found[W1]["adapter"], found[STRAP]["adapter"]) == ("hci0", "hci1")
    assert found[W1]["name"] == "wearable-01"
    assert -56 <= found[W1]["rssi"] <= -44
    assert [c["address"] for c in doc["candidates"]] == [W1, STRAP, W2]  # strongest first
    assert not any(c["paired"] for c in doc["candidates"])
    assert doc["paired"] == doc["failed"] == []

    table = await world.pair()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "RSSI", "KIND", "ADAPTER", "PAIRED"]
    assert lines[1].split()[:2] == ["wearable-01", W1]
    assert DECOY not in table.stdout
    assert "thermometer" not in table.stdout
    # It tells how to pair, with the same config.
    assert f"gatewayd --config {world.config} pair --address {W1} --alias <device-id>" in (
        table.stdout
    )
    assert f"gatewayd --config {world.config} pair --all" in table.stdout

    # Listing pairs nothing.
    assert (await world.registry()) == []
    assert not any(d.paired or d.trusted for d in world.devices.values())
    assert not any(c.member == "Pair" for c in world.fake.call_log)


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_pair_one_adapter_and_refuse_a_decoy_address(world: World) -> None:
    result = await world.pair("--adapter", "hci0", "--address", DECOY, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert {c["address"] for c in doc["candidates"]} == {W1, W2}  # the strap is on hci1
    [failed] = doc["failed"]
    assert failed["address"] == DECOY
    assert "not found" in failed["error"]
    assert f"{DECOY}: not found" in result.stderr
    assert "Heart Rate Service" in result.stderr
    assert (await world.registry()) == []
    assert world.pair_calls(DECOY) == 0
    assert not world.devices[DECOY].paired


# --- pair: pairing -----------------------------------------------------------------------------


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_pair_one_with_an_alias_then_all_the_rest_then_again(world: World) -> None:
    one = await world.pair("--address", W1.lower(), "--alias", "bed-1")
    assert one.returncode == 0, one.stderr
    assert (
        f"paired {W1} as bed-1 (wearable, model mnv2-p40 (pruned 40%), firmware 1.2.3,"
        " protocol 1)" in one.stdout
    )
    w1 = world.devices[W1]
    assert (w1.paired, w1.bonded, w1.trusted) == (True, True, True)
    assert not w1.connected  # pairing disconnects; `gatewayd run` connects later
    [device] = await world.registry()
    assert (device.device_id, device.address, device.kind, device.name) == (
        "bed-1",
        W1,
        "wearable",
        "wearable-01",
    )
    assert device.paired_at
    # Where its numbering stood: every message from there on is owed to the gateway.
    assert (device.paired_boot_id, device.paired_next_seq) == (INFO.boot_id, INFO.next_seq)
    assert not world.devices[W2].paired

    rest = await world.pair("--all", "--json")
    assert rest.returncode == 0, rest.stderr
    doc = json.loads(rest.stdout)
    by_address = {p["address"]: p for p in doc["paired"]}
    assert set(by_address) == {W2, STRAP}  # bed-1 is not paired again
    assert by_address[W2]["model"] == "mnv2-p40"
    assert by_address[W2]["firmware"] == "1.2.3"
    assert by_address[STRAP]["kind"] == "heart_rate"
    assert by_address[STRAP]["model"] is None
    expected = {"bed-1": W1, "wearable-02-0002": W2, "hrm-pro-0003": STRAP}
    assert ids(await world.registry()) == expected
    assert world.devices[W2].paired
    assert world.devices[STRAP].paired
    assert not world.devices[DECOY].paired

    # Again: nothing new to pair, nothing changes.
    again = await world.pair("--all")
    assert again.returncode == 0, again.stderr
    assert "Nothing to pair" in again.stdout
    assert "yes (bed-1)" in again.stdout
    assert ids(await world.registry()) == expected

    # Pairing a paired device again verifies it and keeps its id; BlueZ's bond is reused
    # (bleak calls Connect, not Pair, on a paired device).
    # Beside a running gateway (this process holds the event log's lock, as `gatewayd run`
    # does), it says that the gateway takes the device over; with none running it did not.
    lock = await asyncio.to_thread(EventLogLock.acquire, world.state_dir / "gatewayd.db")
    try:
        repeat = await world.pair("--address", W1)
    finally:
        await asyncio.to_thread(lock.release)
    assert repeat.returncode == 0, repeat.stderr
    assert f"paired {W1} as bed-1" in repeat.stdout
    running = f"the running gateway (pid {os.getpid()}) connects it within seconds"
    assert running in repeat.stdout
    assert "running gateway" not in one.stdout
    assert ids(await world.registry()) == expected
    assert world.pair_calls(W1) == 1


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_failed_pairing_is_reported_and_the_others_are_paired(world: World) -> None:
    world.devices[W2].fail_next_pairs(1)
    result = await world.pair("--all")
    assert result.returncode == 1
    assert f"{W2} (wearable-02): pairing failed" in result.stderr
    assert "org.bluez.Error.AuthenticationFailed" in result.stderr
    assert "1 of 3 device(s) not paired" in result.stderr
    assert f"paired {W1} as wearable-01-0001" in result.stdout
    assert f"paired {STRAP} as hrm-pro-0003" in result.stdout
    assert {d.address for d in (await world.registry())} == {W1, STRAP}
    # Nothing half-done is left behind: not paired, and bleak's Trusted=True is undone.
    w2 = world.devices[W2]
    assert not w2.paired
    assert not w2.trusted
    assert not w2.connected

    # The device's next attempt works.
    retry = await world.pair("--address", W2)
    assert retry.returncode == 0, retry.stderr
    assert {d.address for d in (await world.registry())} == {W1, W2, STRAP}


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_device_bluez_forgot_after_the_scan_is_found_again(world: World) -> None:
    # bluetoothd drops unpaired devices TemporaryTimeout after the scan (30 s; here 0.3 s), and
    # the first pairing takes longer than that.
    world.fake.temporary_timeout = 0.3
    world.devices[W1].connect_delay = 1.0
    result = await world.pair("--address", W1, "--address", W2)
    assert result.returncode == 0, result.stderr
    assert {d.address for d in (await world.registry())} == {W1, W2}
    hci0 = world.fake.adapters["hci0"].path
    starts = [c for c in world.fake.call_log if c.member == "StartDiscovery" and c.path == hci0]
    assert len(starts) == 2  # the scan, and the second look for W2


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_wearable_that_does_not_speak_our_protocol_is_refused(world: World) -> None:
    hci0 = world.fake.adapters["hci0"]
    impostors = {
        "C0:FF:EE:00:00:10": encode_info(replace(INFO, protocol_version=9)),
        "C0:FF:EE:00:00:11": b"hello",
    }
    for address, info in impostors.items():
        world.devices[address] = await world.fake.add_device(
            hci0,
            address,
            f"impostor-{address[-2:]}",
            [gatt.SERVICE_UUID],
            [wearable_service()],
            peripheral=StaticPeripheral({gatt.INFO_CHAR_UUID: info}),
        )
    result = await world.pair("--address", "C0:FF:EE:00:00:10", "--address", "C0:FF:EE:00:00:11")
    assert result.returncode == 1
    assert (
        "C0:FF:EE:00:00:10 (impostor-10): refused: its info characteristic is not gatewayd's"
        " (unsupported_version: device speaks protocol version 9; this gateway understands 1)"
        in result.stderr
    )
    assert "C0:FF:EE:00:00:11 (impostor-11): refused:" in result.stderr
    assert "too_short" in result.stderr
    assert "2 of 2 device(s) not paired" in result.stderr
    assert (await world.registry()) == []
    for address in impostors:
        # The bond made to read the info characteristic is removed again.
        assert not world.devices[address].paired
        assert not world.devices[address].exported


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_strap_that_cannot_bond_is_paired_only_when_allowed_unbonded(
    world: World,
) -> None:
    basic = "C0:FF:EE:00:00:20"
    world.devices[basic] = await world.fake.add_device(
        world.fake.adapters["hci1"], basic, "HR basic", [gatt.HEART_RATE_SERVICE_UUID],
        [heart_rate_service()], bondable=False,
    )  # fmt: skip
    refused = await world.pair("--address", basic)
    assert refused.returncode == 1
    assert "org.bluez.Error.AuthenticationFailed" in refused.stderr
    assert "--allow-unbonded" in refused.stderr  # the way out is named
    assert (await world.registry()) == []
    allowed = await world.pair("--address", basic, "--alias", "hr-basic", "--allow-unbonded",
                               "--json")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    [entry] = json.loads(allowed.stdout)["paired"]
    assert (entry["id"], entry["allow_unbonded"], entry["trusted"]) == ("hr-basic", True, True)
    [device] = await world.registry()
    assert device.allow_unbonded
    assert not world.devices[basic].paired  # no bond was made or needed
    listed = await world.gatewayd("devices", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [shown] = json.loads(listed.stdout)
    assert (shown["id"], shown["allow_unbonded"], shown["trusted"]) == ("hr-basic", True, True)
    text = await world.gatewayd("devices", "list")
    assert "hr-basic: accepted without a bond (--allow-unbonded)" in text.stdout
    # a wearable is never accepted unbonded: its data needs the encrypted link
    wearable = await world.pair("--address", W1, "--allow-unbonded")
    assert wearable.returncode == 1
    assert "--allow-unbonded is for heart-rate straps" in wearable.stderr


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_pairing_records_the_hardware_profile_and_trusts_an_untrusted_device_again(
    world: World,
) -> None:
    result = await world.pair("--address", W1, "--alias", "w1")
    assert result.returncode == 0, result.stderr
    [device] = await world.registry()
    assert device.profile == "bvp64-acc32-lsb64-int16"
    registry = DeviceRegistry.in_state_dir(world.state_dir)
    await asyncio.to_thread(registry.mark_untrusted, "w1", "hardware profile changed")
    text = await world.gatewayd("devices", "list")
    assert "w1: NOT TRUSTED (hardware profile changed)" in text.stdout
    assert f"gatewayd pair --address {W1}" in text.stdout
    again = await world.pair("--all")  # the untrusted one is paired again with the rest
    assert again.returncode == 0, again.stderr
    by_address = {d.address: d for d in await world.registry()}
    assert (by_address[W1].device_id, by_address[W1].untrusted) == ("w1", "")


# --- pair: argument errors (no radio involved) -------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--address", W1, "--alias", "Bed 1"], 1, "device id 'Bed 1' must be 1-63 characters"),
        (["--address", W1, "--address", W2, "--alias", "x"], 64, "--alias needs exactly one"),
        (["--all", "--alias", "x"], 64, "--alias needs exactly one --address"),
        (["--all", "--address", W1], 64, "not allowed with argument"),
        (["--address", "C0:FF:EE"], 64, "is not a Bluetooth address"),
        (["--adapter", "wlan0"], 64, "expected a BlueZ adapter name like hci0"),
        (["--scan-seconds", "0"], 64, "expected seconds above 0"),
    ],
)
def test_pair_argument_errors(
    argv: list[str], code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "gatewayd.toml", tmp_path / "state")
    assert main(["--config", str(config), "pair", *argv]) == code
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "state").exists()


# --- devices -----------------------------------------------------------------------------------


def test_devices_list_rename_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The config names another state dir: --state-dir wins. Nothing listens on its broker port.
    port = free_port()
    config = write_config(tmp_path / "gatewayd.toml", tmp_path / "elsewhere", mqtt_port=port)
    state = tmp_path / "state"
    registry = DeviceRegistry.in_state_dir(state)
    registry.add(W1, "wearable", "wearable-01", "bed-1")
    registry.add(STRAP, "heart_rate", "HRM-Pro")

    def gatewayd(*argv: str) -> tuple[int, str, str]:
        code = main(["--config", str(config), "devices", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = gatewayd("list", "--state-dir", str(state))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "ADDRESS", "KIND", "NAME", "PAIRED", "AT"]
    assert [r.split()[:4] for r in rows] == [
        ["bed-1", W1, "wearable", "wearable-01"],
        ["hrm-pro-0003", STRAP, "heart_rate", "HRM-Pro"],
    ]

    code, out, _ = gatewayd("--state-dir", str(state), "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [(d["id"], d["address"], d["kind"], d["name"]) for d in listed] == [
        ("bed-1", W1, "wearable", "wearable-01"),
        ("hrm-pro-0003", STRAP, "heart_rate", "HRM-Pro"),
    ]
    assert all(d["paired_at"] for d in listed)

    assert gatewayd("rename", "bed-1", "bed-2", "--state-dir", str(state))[:2] == (
        0,
        f"renamed bed-1 to bed-2 ({W1})\n",
    )
    code, out, err = gatewayd("rename", "bed-2", "Bed 2", "--state-dir", str(state))
    assert (code, out) == (1, "")
    assert err.startswith("gatewayd: error: device id 'Bed 2' must be 1-63 characters")
    assert err.count("\n") == 1
    code, _, err = gatewayd("rename", "bed-2", "hrm-pro-0003", "--state-dir", str(state))
    assert code == 1
    assert "'hrm-pro-0003' is already used" in err
    code, _, err = gatewayd("rename", "nobody", "x", "--state-dir", str(state))
    assert (code, err) == (
        1,
        "gatewayd: error: no paired device 'nobody' (see `gatewayd devices list`)\n",
    )

    code, out, err = gatewayd("remove", "bed-2", "--state-dir", str(state))
    assert (code, out) == (0, f"removed bed-2 ({W1}): the gateway will not connect to it\n")
    # No broker: removed all the same, its retained topics are left for the gateway to clear.
    assert err.startswith(no_broker_warning("bed-2", port))
    assert err.endswith("The gateway clears them when it next reaches the broker.\n")
    assert err.count("\n") == 1
    assert ids(registry.load()) == {"hrm-pro-0003": STRAP}
    code, _, err = gatewayd("remove", "bed-2", "--state-dir", str(state))
    assert code == 1
    assert "no paired device 'bed-2'" in err

    registry.remove("hrm-pro-0003")
    code, out, _ = gatewayd("list", "--state-dir", str(state))
    assert (code, out) == (0, "No paired devices; pair one with `gatewayd pair`.\n")
    assert not (tmp_path / "elsewhere").exists()


@needs_dbus_daemon
@needs_mosquitto
@pytest.mark.asyncio
async def test_remove_unpair_makes_bluez_forget_the_bond(
    fake_bluez: FakeBluez, private_bus: EmulatorEnv, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    """Both best-effort steps work (the bond, the retained topics on the test's own broker):
    nothing on stderr."""
    hci0 = await fake_bluez.add_adapter("hci0", "00:1A:7D:DA:71:01")
    # Bonded earlier: bluetoothd loads it at start, so its object exists without a scan.
    bonded = await fake_bluez.add_device(
        hci0, W1, "wearable-01", [gatt.SERVICE_UUID], [wearable_service()], paired=True
    )
    state = tmp_path / "state"
    config = await asyncio.to_thread(
        write_config, tmp_path / "gatewayd.toml", state, mqtt_port=mosquitto_broker.port
    )
    registry = DeviceRegistry.in_state_dir(state)
    await asyncio.to_thread(registry.add, W1, "wearable", "wearable-01", "bed-1")
    # BlueZ has never seen this one:
    await asyncio.to_thread(registry.add, W2, "wearable", "wearable-02", "bed-2")

    removed = await run_gatewayd(
        "--config", str(config), "devices", "remove", "bed-1", "--unpair", env=private_bus
    )
    assert (removed.returncode, removed.stderr) == (0, "")
    assert removed.stdout.splitlines() == [
        f"removed bed-1 ({W1}): the gateway will not connect to it",
        f"BlueZ forgot its bond with {W1}",
    ]
    assert not bonded.paired
    assert not bonded.exported
    assert any(c.member == "RemoveDevice" for c in fake_bluez.call_log)

    unknown = await run_gatewayd(
        "--config", str(config), "devices", "remove", "bed-2", "--unpair", env=private_bus
    )
    assert (unknown.returncode, unknown.stderr) == (0, "")
    assert f"BlueZ holds no device {W2}: no bond to forget" in unknown.stdout
    assert await asyncio.to_thread(registry.load) == []


def test_remove_unpair_without_bluez_warns_and_still_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-such-socket'}")
    state = tmp_path / "state"
    port = free_port()  # no broker either
    config = write_config(tmp_path / "gatewayd.toml", state, mqtt_port=port)
    registry = DeviceRegistry.in_state_dir(state)
    registry.add(W1, "wearable", "wearable-01", "bed-1")

    code = main(["--config", str(config), "devices", "remove", "bed-1", "--unpair"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == f"removed bed-1 ({W1}): the gateway will not connect to it\n"
    bond, topics = err.splitlines()
    assert bond.startswith(
        f"gatewayd devices remove: warning: the bond with {W1} is still in BlueZ"
    )
    assert "cannot reach BlueZ on the system D-Bus" in bond
    assert f"bluetoothctl remove {W1}" in bond
    assert topics.startswith(no_broker_warning("bed-1", port))
    assert topics.endswith("The gateway clears them when it next reaches the broker.")
    assert registry.load() == []
