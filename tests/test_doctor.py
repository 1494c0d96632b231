"""`gatewayd doctor`: the pure checks, then the whole doctor against real parts.

The real parts: the emulated BlueZ on a private D-Bus (tests/emulator_fixtures.py), a private
mosquitto (tests/mqtt_fixtures.py, with a password file and TLS where a test needs them), the
shipped model files (copied and damaged for one test), ``dbus-send`` run as another user (as
root only). Doctor passes against them, and each broken part fails with its own fix line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pwd
import shutil
from pathlib import Path

import pytest

from gatewayd.doctor import (
    AdapterFacts,
    BluezVersion,
    BusFacts,
    BusLimitFacts,
    Check,
    DirFacts,
    UserFacts,
    check_adapter,
    check_bluez,
    check_bus_connections,
    check_dbus_access,
    check_event_log,
    check_service_user,
    check_slots,
    check_state_dir,
    connections_per_user,
    event_log_facts,
    exit_code,
    format_check,
    parse_dbus_send,
    parse_version,
    run_doctor,
    version_from_modalias,
)
from gatewayd.emulator import FakeBluez
from gatewayd.inference.registry import DEFAULT_MODELS_DIR
from gatewayd.store import NewEvent, Store
from gatewayd.store.records import gateway_event
from gatewayd.store.writer import DEGRADED_KIND
from tests import disk
from tests.emulator_fixtures import EmulatorEnv, needs_dbus_daemon, run_gatewayd
from tests.mqtt_fixtures import (
    Broker,
    free_port,
    make_password_file,
    make_tls_files,
    needs_mosquitto,
)

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

BUS = "unix:path=/run/test-bus"
ADAPTER = "00:1A:7D:DA:71:00"
MODEL = "mnv2-1d-w1.0"


def bus_with(*adapters: AdapterFacts) -> BusFacts:
    return BusFacts(BUS, "gatewayd", bluez_running=True, adapters=adapters)


# --- pure -------------------------------------------------------------------------------------


def test_versions_from_the_tools_and_from_an_adapters_modalias() -> None:
    assert parse_version("bluetoothctl: 5.66\n") == (5, 66)
    assert parse_version("5.72") == (5, 72)
    assert parse_version("no version here") is None
    # bluetoothd's default DeviceID: bluetooth:1d6b:0246:<major><minor in hex>
    assert version_from_modalias("usb:v1D6Bp0246d0542") == (5, 66)
    assert version_from_modalias("usb:v1D6Bp0246d0537") == (5, 55)
    assert version_from_modalias("usb:v05ACp8290d0100") is None


def test_bluez_check_names_the_cause_and_the_fix() -> None:
    no_bus = BusFacts(BUS, "gatewayd", bus_error="[Errno 2] No such file or directory")
    check = check_bluez(no_bus, None)
    assert check.status == "fail"
    assert "cannot reach the system D-Bus at unix:path=/run/test-bus" in check.message
    assert "[Errno 2]" in check.message

    not_running = check_bluez(BusFacts(BUS, "gatewayd"), BluezVersion((5, 66), "x"))
    assert not_running.status == "fail"
    assert not_running.message.startswith("bluetoothd is not running: nothing owns org.bluez")
    assert "systemctl enable --now bluetooth" in not_running.fix

    old = check_bluez(bus_with(), BluezVersion((5, 50), "bluetoothd --version"))
    assert old.status == "fail"
    assert "5.50 (bluetoothd --version) is older than 5.55" in old.message

    ok = check_bluez(bus_with(), BluezVersion((5, 66), "bluetoothctl --version"))
    assert ok == Check("bluez", "ok", "BlueZ 5.66 (bluetoothctl --version), bluetoothd running", "")


def test_the_running_daemons_version_stands_in_when_no_tool_answers() -> None:
    adapter = AdapterFacts("hci0", ADAPTER, True, "usb:v1D6Bp0246d0542")
    check = check_bluez(bus_with(adapter), None)
    assert check.status == "ok"
    assert check.message.startswith("BlueZ 5.66 (its adapters' Modalias)")
    unknown = check_bluez(bus_with(AdapterFacts("hci0", ADAPTER, True)), None)
    assert unknown.status == "warn"
    assert "version is unknown" in unknown.message


def test_adapter_checks() -> None:
    powered = AdapterFacts("hci0", ADAPTER, True)
    off = AdapterFacts("hci1", "00:1A:7D:DA:71:01", False)
    assert check_adapter(bus_with(powered), "hci0").status == "ok"
    missing = check_adapter(bus_with(off), "hci0")
    assert (missing.status, missing.message) == ("fail", "no adapter hci0; BlueZ has hci1")
    assert missing.fix == 'use it: [ble] adapters = ["hci1"] in the config file'
    assert "no Bluetooth adapter at all" in check_adapter(bus_with(), "hci0").message
    unpowered = check_adapter(bus_with(off), "hci1")
    assert unpowered.status == "fail"
    assert unpowered.message == "adapter hci1 (00:1A:7D:DA:71:01) is powered off"
    assert "/org/bluez/hci1 org.bluez.Adapter1 Powered b true" in unpowered.fix
    assert "rfkill unblock bluetooth" in unpowered.fix
    skipped = check_adapter(BusFacts(BUS, "gatewayd"), "hci0")
    assert skipped.status == "skip"


def test_dbus_access_denied_says_which_group_to_join() -> None:
    denied = BusFacts(
        BUS,
        "gatewayd",
        bluez_running=True,
        objects_error="org.freedesktop.DBus.Error.AccessDenied",
        objects_error_text="Rejected send message",
    )
    check = check_dbus_access(denied, bus_with())
    assert check.status == "fail"
    assert check.message == "user gatewayd may not talk to org.bluez (AccessDenied)"
    assert check.fix.startswith("sudo usermod -aG bluetooth gatewayd")
    assert check_dbus_access(bus_with(), bus_with()).status == "ok"
    assert check_dbus_access(bus_with(), BusFacts(BUS, "gatewayd")).status == "skip"


def test_dbus_send_outcomes() -> None:
    # What dbus-send prints to stderr in each case (dbus 1.14).
    assert parse_dbus_send(BUS, "nobody", 0, "").usable
    denied = parse_dbus_send(
        BUS,
        "nobody",
        1,
        "Error org.freedesktop.DBus.Error.AccessDenied: Rejected send message, 2 matched rules;"
        ' type="method_call", sender=":1.7" (uid=65534 pid=1 comm="dbus-send")\n',
    )
    assert denied.objects_error == "org.freedesktop.DBus.Error.AccessDenied"
    gone = parse_dbus_send(
        BUS, "nobody", 1, "Error org.freedesktop.DBus.Error.ServiceUnknown: The name is not"
    )
    assert not gone.bluez_running
    no_bus = parse_dbus_send(
        BUS,
        "nobody",
        1,
        'Failed to open connection to "system" message bus: Failed to connect to socket'
        " /tmp/x/bus: Permission denied\n",
    )
    assert no_bus.bus_error is not None
    assert no_bus.bus_error.endswith("Permission denied")


def test_service_user_checks() -> None:
    def users(**changes: object) -> UserFacts:
        base: dict[str, object] = {
            "current": "root",
            "is_root": True,
            "service_user": "gatewayd",
            "service_exists": True,
            "service_groups": ("gatewayd", "bluetooth"),
            "bluetooth_group": True,
        }
        return UserFacts(**(base | changes))  # type: ignore[arg-type]

    assert check_service_user(users()).status == "ok"
    outside = check_service_user(users(service_groups=("gatewayd",)))
    assert outside.status == "warn"
    assert outside.fix == "sudo usermod -aG bluetooth gatewayd"
    assert "no user gatewayd" in check_service_user(users(service_exists=False)).message
    assert "no group bluetooth" in check_service_user(users(bluetooth_group=False)).message


def test_state_dir_checks_writability_and_room() -> None:
    def facts(**changes: object) -> DirFacts:
        base: dict[str, object] = {
            "name": "state dir",
            "path": Path("/var/lib/gatewayd"),
            "user": "gatewayd",
            "exists": True,
            "write_error": None,
            "free_bytes": 5 * 10**9,
            "store_bytes": 0,
        }
        return DirFacts(**(base | changes))  # type: ignore[arg-type]

    assert check_state_dir(facts(), 1024).status == "ok"
    denied = check_state_dir(facts(write_error="Permission denied"), 1024)
    assert denied.status == "fail"
    assert denied.message == "/var/lib/gatewayd is not writable by gatewayd: Permission denied"
    assert denied.fix.startswith("sudo install -d -o gatewayd /var/lib/gatewayd")
    full = check_state_dir(facts(free_bytes=10 * 2**20), 1024)
    assert (full.status, full.message) == (
        "fail",
        "only 10.5 MB free on the file system of /var/lib/gatewayd",
    )
    tight = check_state_dir(facts(free_bytes=500 * 10**6, store_bytes=100 * 10**6), 1024)
    assert tight.status == "warn"
    assert "924.0 MB to [store] max_size_mb = 1024" in tight.message
    later = check_state_dir(facts(exists=False), 1024)
    assert later.message.startswith("/var/lib/gatewayd does not exist yet; gatewayd creates it")


def test_one_line_per_check_and_the_exit_code() -> None:
    ok = Check("config", "ok", "fine", "never shown")
    bad = Check("bluez", "fail", "bluetoothd is not running", "start it")
    assert format_check(ok) == "ok    config         fine"
    assert format_check(bad) == "FAIL  bluez          bluetoothd is not running — fix: start it"
    assert exit_code([ok, Check("x", "warn", "m"), Check("y", "skip", "m")]) == 0
    assert exit_code([ok, bad]) == 1


BUSCONFIG = (
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n<busconfig>{}</busconfig>\n'
)


def test_the_connection_limit_is_the_last_one_dbus_daemon_reads_else_its_default(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "system.conf"
    assert connections_per_user(conf) == (None, f"no {conf}: not dbus-daemon's system bus, or"
                                          " not on this machine")  # fmt: skip
    # The stock layout: a commented-out limit, system.d, then system-local.conf last.
    conf.write_text(
        BUSCONFIG.format(
            '<!-- <limit name="max_connections_per_user">256</limit> -->'
            '<include ignore_missing="yes">missing.conf</include>'
            "<includedir>system.d</includedir>"
            '<include ignore_missing="yes">system-local.conf</include>'
        )
    )
    assert connections_per_user(conf) == (256, "dbus-daemon's default")
    (tmp_path / "system.d").mkdir()
    (tmp_path / "system.d" / "a.conf").write_text(
        BUSCONFIG.format('<limit name="max_connections_per_user">300</limit>')
    )
    assert connections_per_user(conf) == (300, str(tmp_path / "system.d" / "a.conf"))
    local = tmp_path / "system-local.conf"
    local.write_text(BUSCONFIG.format('<limit name="max_connections_per_user">1024</limit>'))
    assert connections_per_user(conf) == (1024, str(local))
    local.write_text("<busconfig><limit")
    limit, why = connections_per_user(conf)
    assert limit is None
    assert why.startswith("cannot read the D-Bus configuration")


def test_more_paired_devices_than_the_bus_lets_one_user_connect_is_a_warning_with_the_fix() -> None:
    ok = check_bus_connections(BusLimitFacts(256, "dbus-daemon's default", 255))
    assert (ok.name, ok.status) == ("dbus limit", "ok")
    assert ok.message == (
        "255 paired devices need 256 system D-Bus connections of the service user;"
        " max_connections_per_user is 256 (dbus-daemon's default)"
    )
    warn = check_bus_connections(BusLimitFacts(256, "dbus-daemon's default", 300))
    assert warn.status == "warn"
    assert "at most 255 can be connected at once" in warn.message
    assert "/etc/dbus-1/system-local.conf" in warn.fix
    assert "systemctl reload dbus" in warn.fix
    unknown = check_bus_connections(BusLimitFacts(None, "no /x", 3))
    assert (unknown.status, unknown.message) == ("skip", "not checked: no /x")
    unread = check_bus_connections(BusLimitFacts(256, "d", None, "the paired devices: bad"))
    assert (unread.status, unread.message) == ("skip", "not checked: the paired devices: bad")


def test_more_paired_devices_than_connection_slots_is_a_warning_with_the_fix() -> None:
    ok = check_slots(BusLimitFacts(256, "d", 10), adapters=2, slots_per_adapter=5)
    assert (ok.name, ok.status) == ("slots", "ok")
    assert ok.message == (
        "10 paired devices, 10 connection slots (2 adapter(s) x slots_per_adapter 5)"
    )
    warn = check_slots(BusLimitFacts(256, "d", 8), adapters=1, slots_per_adapter=5)
    assert warn.status == "warn"
    assert warn.message.startswith("8 paired devices but 5 connection slots")
    assert "3 wait" in warn.message
    assert "[ble] adapters" in warn.fix
    assert "slots_per_adapter" in warn.fix
    unread = check_slots(BusLimitFacts(256, "d", None, "the paired devices: bad"), 1, 5)
    assert (unread.status, unread.message) == ("skip", "not checked: the paired devices: bad")


# --- real parts ------------------------------------------------------------------------------


def write_config(
    directory: Path, port: int, extra: str = "", mqtt: str = "", state_dir: Path | None = None
) -> Path:
    path = directory / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "gw-doctor"\nstate_dir = "{state_dir or directory / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n{mqtt}{extra}',
        encoding="utf-8",
    )
    return path


def lines_by_name(out: str) -> dict[str, str]:
    """The doctor's lines by check name (the second column)."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("gatewayd doctor:"):
            continue
        status, rest = line.split(maxsplit=1)
        name = rest[:14].strip()
        found[name] = f"{status} {rest[14:].strip()}"
    return found


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def doctor(config: Path, **options: object) -> dict[str, Check]:
    return by_name(await run_doctor(config, os.environ, timeout_s=5.0, **options))  # type: ignore[arg-type]


@needs_dbus_daemon
@needs_mosquitto
@pytest.mark.asyncio
async def test_doctor_passes_against_the_emulator_and_a_broker(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    await fake_bluez.add_adapter("hci0", ADAPTER, slots=5)
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker.port)
    done = await run_gatewayd("doctor", "--config", str(config), env=private_bus)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = lines_by_name(done.stdout)
    assert list(lines) == [
        "config",
        "bluez",
        "adapter hci0",
        "dbus access",
        "service user",
        "dbus limit",
        "slots",
        "state dir",
        "event log",
        "broker",
        "model",
    ]
    assert not [line for line in lines.values() if line.startswith("FAIL")], done.stdout
    assert lines["bluez"] == "ok BlueZ 5.66 (bluetoothctl --version), bluetoothd running"
    assert lines["adapter hci0"] == f"ok hci0 ({ADAPTER}) is powered"
    assert lines["broker"] == f"ok connected to mqtt://127.0.0.1:{mosquitto_broker.port}"
    assert lines["model"].startswith(f"ok {MODEL}: {MODEL}.onnx sha256 ")
    assert done.stdout.splitlines()[-1].startswith("gatewayd doctor: ")

    as_json = await run_gatewayd("doctor", "--config", str(config), "--json", env=private_bus)
    assert as_json.returncode == 0
    records = json.loads(as_json.stdout)
    assert {tuple(r) for r in records} == {("name", "status", "message", "fix")}


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_doctor_without_bluez_on_the_bus_says_so_in_one_line(
    private_bus: EmulatorEnv, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, free_port())
    done = await run_gatewayd("doctor", "--config", str(config), env=private_bus)
    assert done.returncode == 1
    bluez = [line for line in done.stdout.splitlines() if " bluez " in line]
    assert len(bluez) == 1
    assert bluez[0].startswith("FAIL  bluez          bluetoothd is not running: nothing owns")
    assert bluez[0].endswith(
        "— fix: sudo apt install bluez && sudo systemctl enable --now bluetooth"
    )
    lines = lines_by_name(done.stdout)
    assert lines["adapter hci0"].startswith("skip")  # one cause, said once
    assert lines["dbus access"].startswith("skip")


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_powered_off_adapter_fails_with_the_command_that_powers_it(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, tmp_path: Path
) -> None:
    await fake_bluez.add_adapter("hci0", ADAPTER, powered=False)
    config = await asyncio.to_thread(write_config, tmp_path, free_port())
    checks = await doctor(config)
    adapter = checks["adapter hci0"]
    assert adapter.status == "fail"
    assert adapter.message == f"adapter hci0 ({ADAPTER}) is powered off"
    assert "busctl set-property org.bluez /org/bluez/hci0" in adapter.fix
    assert checks["bluez"].status == "ok"
    # Powered on (as the fix does, over D-Bus in real life), it passes.
    await fake_bluez.adapters["hci0"].set_powered(True)
    assert (await doctor(config))["adapter hci0"].status == "ok"


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_dead_broker_port_fails_with_where_it_looked(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    config = await asyncio.to_thread(write_config, tmp_path, port)
    broker = (await doctor(config))["broker"]
    assert broker.status == "fail"
    assert broker.message.startswith(f"cannot connect to mqtt://127.0.0.1:{port}: ")
    assert "Connection refused" in broker.message
    assert broker.fix == "start the broker, or set [mqtt] host and port to where it listens"


@needs_mosquitto
@pytest.mark.asyncio
async def test_the_broker_check_uses_the_configured_credentials(tmp_path: Path) -> None:
    passwords = await asyncio.to_thread(make_password_file, tmp_path, {"gw": "right"})
    if passwords is None:
        pytest.skip("mosquitto_passwd not installed")
    broker = await asyncio.to_thread(Broker, tmp_path, password_file=passwords)
    await broker.start()
    try:
        secret = tmp_path / "secret"
        await asyncio.to_thread(secret.write_text, "wrong\n")
        mqtt = f'username = "gw"\npassword_file = "{secret}"\n'
        config = await asyncio.to_thread(write_config, tmp_path, broker.port, mqtt=mqtt)
        refused = (await doctor(config))["broker"]
        assert refused.status == "fail"
        assert refused.message.startswith(f"cannot connect to mqtt://127.0.0.1:{broker.port} as gw")
        assert refused.fix.startswith("check [mqtt] username, the password")
        await asyncio.to_thread(secret.write_text, "right\n")
        ok = (await doctor(config))["broker"]
        assert ok.message == f"connected to mqtt://127.0.0.1:{broker.port} as gw"
    finally:
        await broker.stop()


# paho leaks the socket of a failed TLS handshake (as in tests/test_publish_mqtt.py::test_tls):
# collected here, so that its ResourceWarning is ignored in this test only.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@needs_mosquitto
@pytest.mark.asyncio
async def test_the_broker_check_uses_the_configured_tls(tmp_path: Path) -> None:
    tls = await asyncio.to_thread(make_tls_files, tmp_path)
    if tls is None:
        pytest.skip("openssl not installed")
    broker = await asyncio.to_thread(Broker, tmp_path, tls=tls)
    await broker.start()
    try:
        # Without the test CA the broker's certificate is not trusted.
        untrusted = await asyncio.to_thread(
            write_config, tmp_path, broker.port, extra="[mqtt.tls]\nenabled = true\n"
        )
        failed = (await doctor(untrusted))["broker"]
        assert failed.status == "fail"
        assert "CERTIFICATE_VERIFY_FAILED" in failed.message
        assert failed.fix.startswith("check [mqtt.tls] ca_file")
        gc.collect()
        trusted = await asyncio.to_thread(
            write_config,
            tmp_path,
            broker.port,
            extra=f'[mqtt.tls]\nenabled = true\nca_file = "{tls.ca_file}"\n',
        )
        ok = (await doctor(trusted))["broker"]
        assert ok.message == f"connected to mqtts://127.0.0.1:{broker.port} (TLS)"
    finally:
        await broker.stop()


@pytest.mark.asyncio
async def test_an_unwritable_state_dir_fails_with_the_fix(tmp_path: Path) -> None:
    # A regular file where a directory should be: unwritable for root too (permissions are not).
    blocker = tmp_path / "not-a-dir"
    await asyncio.to_thread(blocker.write_text, "")
    state_dir = blocker / "state"
    config = await asyncio.to_thread(write_config, tmp_path, free_port(), state_dir=state_dir)
    state = (await doctor(config))["state dir"]
    assert state.status == "fail"
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert state.message == f"{state_dir} is not writable by {user}: {blocker} is not a directory"
    assert state.fix.startswith(f"sudo install -d -o gatewayd {state_dir}")


@pytest.mark.asyncio
async def test_a_corrupted_model_file_fails_with_its_sha256(tmp_path: Path) -> None:
    models = tmp_path / "models"
    await asyncio.to_thread(models.mkdir)
    for name in (f"{MODEL}.onnx", f"{MODEL}.onnx.json"):
        await asyncio.to_thread(shutil.copy, DEFAULT_MODELS_DIR / name, models / name)
    config = await asyncio.to_thread(write_config, tmp_path, free_port())
    good = (await doctor(config, models_dir=models))["model"]
    assert good.status == "ok", good

    onnx = models / f"{MODEL}.onnx"
    data = bytearray(await asyncio.to_thread(onnx.read_bytes))
    data[len(data) // 2] ^= 0xFF
    await asyncio.to_thread(onnx.write_bytes, bytes(data))
    bad = (await doctor(config, models_dir=models))["model"]
    assert bad.status == "fail"
    assert f"{onnx}: sha256 " in bad.message
    assert "does not match its card" in bad.message
    assert bad.fix.startswith("reinstall gatewayd")


@pytest.mark.asyncio
async def test_the_event_log_check_reads_the_file_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.db"
    none = check_event_log(await asyncio.to_thread(event_log_facts, path))
    assert none == Check(
        "event log", "ok", f"none at {path} yet; gatewayd creates it at its first start"
    )
    async with Store.open(path) as store:
        await store.append_event(NewEvent("low_battery", "warning", "raised", {"episode": 1}, "w1"))
    fine = check_event_log(await asyncio.to_thread(event_log_facts, path))
    assert fine.status == "ok"
    assert fine.message.startswith(f"{path}: ")
    assert fine.message.endswith(
        ", intact (quick_check), 1 event not yet delivered; no running gatewayd holds it"
    )
    async with Store.open(path):  # the lock's holder, found without taking the lock
        running = check_event_log(await asyncio.to_thread(event_log_facts, path))
    assert running.status == "ok"
    assert running.message.endswith(f"; held by a running gatewayd (pid {os.getpid()})")
    # Left degraded by a gateway that stopped while its writes were held in memory.
    async with Store.open(path) as store:
        await store.append_event(
            gateway_event(DEGRADED_KIND, "critical", "disk full on /var/lib/gatewayd", 1.0)
        )
        await store.flush()
        held = check_event_log(await asyncio.to_thread(event_log_facts, path))
    assert held.status == "warn"
    assert held.message.endswith("when last heard of: disk full on /var/lib/gatewayd")
    # Garbage over pages of the file: what gatewayd will do, and how to look into it.
    await asyncio.to_thread(disk.scribble_over_windows, path)
    bad = check_event_log(await asyncio.to_thread(event_log_facts, path))
    assert bad.status == "fail"
    assert bad.message.startswith(f"{path} is corrupt: quick_check says ")
    assert "moves it aside and starts a fresh one" in bad.fix
    assert f"sqlite3 {path} .recover" in bad.fix
    await asyncio.to_thread(path.write_bytes, b"not a database at all" * 100)
    alien = check_event_log(await asyncio.to_thread(event_log_facts, path))
    assert alien.status == "fail"
    assert "not a gatewayd event log" in alien.message


@pytest.mark.asyncio
async def test_a_broken_config_fails_and_skips_what_needs_it(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.toml"
    await asyncio.to_thread(path.write_text, "[mqtt]\nport = 0\n")
    checks = await doctor(path)
    assert checks["config"].status == "fail"
    assert "mqtt.port" in checks["config"].message
    assert checks["config"].fix.startswith(f"edit {path}")
    for name in ("adapters", "dbus limit", "slots", "state dir", "event log", "broker", "model"):
        assert checks[name].status == "skip", name


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
@pytest.mark.skipif(shutil.which("dbus-send") is None, reason="dbus-send not installed")
@needs_dbus_daemon
@pytest.mark.asyncio
async def test_dbus_access_is_checked_as_the_service_user(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, tmp_path: Path
) -> None:
    await fake_bluez.add_adapter("hci0", ADAPTER)
    config = await asyncio.to_thread(write_config, tmp_path, free_port())
    socket_dir = Path(private_bus.address.removeprefix("unix:path=").split(",")[0]).parent
    # The private bus lives in a directory only root may enter: user nobody cannot connect.
    locked = (await doctor(config, service_user="nobody"))["dbus access"]
    assert locked.status == "fail"
    assert locked.message.startswith("user nobody cannot connect to the system D-Bus")
    assert "Permission denied" in locked.message
    await asyncio.to_thread(socket_dir.chmod, 0o755)
    opened = (await doctor(config, service_user="nobody"))["dbus access"]
    assert opened == Check("dbus access", "ok", "user nobody may talk to org.bluez", "")
