"""The system bus's per-user connection limit: real dbus-daemon (limited to a few connections per
user), the emulated BlueZ, real bleak, the LinkManager in this process and `gatewayd run` in
another (docs/running.md, "Many wearables").

bleak holds one D-Bus connection per connected device. The bus also carries the fake
bluetoothd's connection and bleak's BlueZ manager's (all of this user's), so a limit of LIMIT
connections per user leaves LIMIT - 2 for devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError
from structlog.testing import capture_logs

from gatewayd.bench.scale import bus_connections_per_user
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import DBUS_SYSTEM_BUS_ADDRESS, FakeBluez
from gatewayd.emulator.bus import (
    SYSTEM_BUS_COMPLETED_CONNECTIONS,
    SYSTEM_BUS_CONNECTIONS_PER_USER,
    BusLimits,
    PrivateBus,
    bus_config,
)
from gatewayd.emulator.virtual import Fleet, FleetSetup, build_fleet, running
from gatewayd.link.buslimit import (
    LIMITS_EXCEEDED,
    BusCeiling,
    bus_level_failure,
    probe_bus,
    refusal_text,
)
from gatewayd.link.connection import LinkSettings
from gatewayd.link.events import FrameReceived, LinkEvent, LinkUp
from gatewayd.link.manager import LinkManager
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from tests.emulator_fixtures import EmulatorEnv, needs_dbus_daemon, release_bleak_manager
from tests.mqtt_fixtures import free_port
from tests.test_app_durability import gatewayd_run, write_config_file
from tests.test_systemd_notify import NotifySocket, notify_socket, wait_for_prefix

pytest_plugins = ["tests.emulator_fixtures"]

#: Connections per user on the test's bus, and wearables: more than the bus lets connect.
LIMIT = 8
DEVICES = 10
#: The fake bluetoothd's connection and bleak's BlueZ manager's.
OTHERS = 2
#: Safety net only: every wait below ends on a condition, this bounds a broken one.
LIMIT_S = 45.0
REFUSED = "the system D-Bus refused a connection"


def test_the_private_bus_has_the_system_bus_limits_unless_raised(tmp_path: Path) -> None:
    config = bus_config(tmp_path / "socket")
    assert f'"max_connections_per_user">{SYSTEM_BUS_CONNECTIONS_PER_USER}<' in config
    assert f'"max_completed_connections">{SYSTEM_BUS_COMPLETED_CONNECTIONS}<' in config
    assert (SYSTEM_BUS_CONNECTIONS_PER_USER, SYSTEM_BUS_COMPLETED_CONNECTIONS) == (256, 2048)
    raised = BusLimits.for_connections_per_user(4000)
    assert (raised.connections_per_user, raised.completed_connections) == (4000, 4000)
    assert BusLimits.for_connections_per_user(300).completed_connections == 2048
    with pytest.raises(ValueError, match="at least 1"):
        BusLimits(0)


def test_bench_scale_raises_the_emulators_bus_limit_above_its_wearables() -> None:
    # The gateway and the emulator (one user) hold a connection per wearable and a few more.
    assert bus_connections_per_user(10) == SYSTEM_BUS_CONNECTIONS_PER_USER
    assert bus_connections_per_user(300) == 364
    assert bus_connections_per_user(3000) == 3064


def test_a_refusal_is_told_from_a_unique_name_and_bus_errors_from_device_errors() -> None:
    text = "The maximum number of active connections for UID 999 has been reached"
    assert refusal_text(text) == text
    assert refusal_text(":1.42") is None
    assert refusal_text("something else") is None
    assert bus_level_failure(EOFError())
    assert bus_level_failure(OSError(9, "Bad file descriptor"))
    assert bus_level_failure(BrokenPipeError())
    assert not bus_level_failure(TimeoutError())
    assert not bus_level_failure(ValueError())
    assert bus_level_failure(DBusError(LIMITS_EXCEEDED, text))
    assert not bus_level_failure(DBusError("org.freedesktop.DBus.Error.AccessDenied", text))


@pytest.fixture
def link_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="bleak")
    return caplog


@contextlib.asynccontextmanager
async def limited_bus(
    monkeypatch: pytest.MonkeyPatch, limits: BusLimits
) -> AsyncIterator[PrivateBus]:
    bus = PrivateBus(limits=limits)
    async with bus as address:
        monkeypatch.setenv(DBUS_SYSTEM_BUS_ADDRESS, address)
        try:
            yield bus
        finally:
            await release_bleak_manager()


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_the_probe_tells_a_refused_connection_from_an_accepted_one(
    monkeypatch: pytest.MonkeyPatch, bluetoothctl_shim: Path
) -> None:
    async with limited_bus(monkeypatch, BusLimits(2)) as bus:
        assert await probe_bus() is None
        held = [MessageBus(bus_address=bus.address) for _ in range(2)]
        for b in held:
            await b.connect()
        refusal = await probe_bus()
        assert refusal is not None
        assert "maximum number of active connections" in refusal
        # The administrator's fix, as on a real bus: a higher limit, the daemon reloaded.
        await bus.reload(BusLimits(3))
        assert await probe_bus() is None
        for b in held:
            b.disconnect()
            await b.wait_for_disconnect()  # type: ignore[no-untyped-call]


def paired(fleet: Fleet, state_dir: Path) -> list[PairedDevice]:
    """Every wearable of the fleet in the allowlist of ``state_dir`` (BlueZ holds their bonds)."""
    registry = DeviceRegistry.in_state_dir(state_dir)
    for i, (device, _) in enumerate(fleet.wearables):
        registry.add(device.address, "wearable", device.name or "", f"w{i}")
    return registry.load()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after LIMIT_S."""
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {LIMIT_S} s: {what}")
        await asyncio.sleep(0.05)


async def through_the_ceiling(
    link: LinkManager, fleet: Fleet, bus: PrivateBus, events: list[LinkEvent]
) -> list[str]:
    """The bus fills, two connected wearables walk away, the limit is raised; the two gone."""
    ceiling = link.bus

    def connected() -> set[str]:
        return {k.device.device_id for k in link.links.values() if k.connected}

    def frames(device_id: str) -> int:
        return sum(isinstance(e, FrameReceived) and e.device_id == device_id for e in events)

    await until(
        lambda: len(connected()) == LIMIT - OTHERS and ceiling.waiting == DEVICES - LIMIT + OTHERS,
        "the bus full and the other devices waiting",
    )
    first = connected()
    assert ceiling.problem is not None
    assert f"at {LIMIT - OTHERS} connected devices" in ceiling.problem
    assert f"({DEVICES - LIMIT + OTHERS} waiting)" in ceiling.problem
    assert "max_connections_per_user" in ceiling.problem
    # The connected ones keep streaming while the others wait.
    counts = {d: frames(d) for d in first}
    await until(
        lambda: all(frames(d) >= counts[d] + 5 for d in first),
        "frames from every connected device after the refusal",
    )
    assert connected() == first

    # Two connected wearables walk away: their D-Bus connections are let go and two waiting
    # devices take them, no more and no fewer (no connection leaked).
    gone = sorted(first)[:2]
    addresses = {k.device.device_id: k.device.address for k in link.links.values()}
    for device, _ in fleet.wearables:
        if device.address in {addresses[g] for g in gone}:
            await device.set_in_range(False)
    await until(lambda: len(connected() - first) == 2, "two waiting devices connected")
    assert len(connected()) == LIMIT - OTHERS
    assert ceiling.waiting == DEVICES - LIMIT + OTHERS - 2
    assert ceiling.problem is not None

    # The administrator raises the limit and reloads the bus: the rest connect.
    await bus.reload(BusLimits(LIMIT + DEVICES))
    await until(lambda: len(connected()) == DEVICES - 2, "every device in range connected")
    assert ceiling.problem is None
    assert {e.device_id for e in events if isinstance(e, LinkUp)} == set(addresses)
    return gone


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_past_the_bus_limit_the_connected_stream_the_rest_wait_quietly_and_connect_later(
    monkeypatch: pytest.MonkeyPatch,
    bluetoothctl_shim: Path,
    tmp_path: Path,
    link_records: pytest.LogCaptureFixture,
) -> None:
    events: list[LinkEvent] = []
    # Probes again at most 1 s after a refused one (the default waits longer).
    ceiling = BusCeiling(base_s=0.5, cap_s=1.0)
    async with (
        limited_bus(monkeypatch, BusLimits(LIMIT)) as bus,
        FakeBluez(bus.address, report_interval=0.05, seed=7) as fake,
    ):
        setup = FleetSetup(devices=DEVICES, slots=DEVICES, speed=20.0, decoy=False)
        fleet = await build_fleet(fake, [generate_recording(1, 2.0, seed=1)], setup)
        devices = await asyncio.to_thread(paired, fleet, tmp_path)
        with capture_logs() as logs:
            async with (
                running(fleet, 20.0),
                LinkManager(["hci0"], DEVICES, devices, LinkSettings(), bus=ceiling) as link,
            ):

                async def collect() -> None:
                    while True:
                        events.append(await link.events.get())

                collector = asyncio.create_task(collect())
                try:
                    gone = await through_the_ceiling(link, fleet, bus, events)
                finally:
                    collector.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await collector
        await release_bleak_manager()
        gc.collect()  # dbus-fast's futures that bleak left unretrieved say so now, not at exit

    warnings = [r for r in logs if r["log_level"] == "warning"]
    refused = [r for r in warnings if r["event"].startswith(REFUSED)]
    assert len(refused) == 1, warnings
    fix = refused[0]["fix"]
    assert 'name="max_connections_per_user"' in fix
    assert "/etc/dbus-1/system-local.conf" in fix
    assert "systemctl reload dbus" in fix
    assert refused[0]["connected"] + refused[0]["connecting"] <= LIMIT - OTHERS
    # No per-device warning for the refusals: the only others are the walked-away devices'.
    assert {r.get("device") for r in warnings if r is not refused[0]} <= set(gone)
    failed = [
        r for r in logs if r["event"] == "connection attempt failed" and r["device"] not in gone
    ]
    assert failed, "the refused attempts are logged at DEBUG"
    assert {r["kind"] for r in failed} == {"bus_limit"}
    assert {r["log_level"] for r in failed} == {"debug"}
    # No spinning: bleak met the refusal once per waiting device; later tries were probed
    # first, one device at a time.
    assert ceiling.refusals == DEVICES - (LIMIT - OTHERS)
    assert len(failed) == ceiling.refusals
    assert len([r for r in logs if r["event"] == "connected"]) == DEVICES
    recovered = [r for r in logs if r["event"].startswith("the system D-Bus accepts")]
    assert len(recovered) == 1
    # bleak's own words on the refused connections (and asyncio's on dbus-fast's futures they
    # left behind): at most one each per refusal, none for the probes.
    records = link_records.records
    closed = [r for r in records if r.name.startswith("bleak") and "Bad file" in r.getMessage()]
    assert 1 <= len(closed) <= ceiling.refusals, [r.getMessage() for r in closed]
    unretrieved = [r for r in records if r.name == "asyncio" and "never retrieved" in r.msg]
    assert len(unretrieved) <= ceiling.refusals


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_gatewayd_run_past_the_bus_limit_warns_once_and_says_so_in_status(
    monkeypatch: pytest.MonkeyPatch, bluetoothctl_shim: Path, tmp_path: Path
) -> None:
    devices = LIMIT - OTHERS + 2
    config = await asyncio.to_thread(
        write_config_file,
        tmp_path,
        port=free_port(),
        extra=f"[ble]\nslots_per_adapter = {devices}\n",
    )
    async with (
        limited_bus(monkeypatch, BusLimits(LIMIT)) as bus,
        FakeBluez(bus.address, report_interval=0.05, seed=7) as fake,
    ):
        setup = FleetSetup(devices=devices, slots=devices, decoy=False)
        fleet = await build_fleet(fake, [generate_recording(1, 2.0, seed=1)], setup)
        await asyncio.to_thread(paired, fleet, tmp_path / "state")
        with notify_socket(str(tmp_path / "notify")) as receiver:
            monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
            async with (
                running(fleet, 1.0),
                gatewayd_run(config, EmulatorEnv(bus.address, bluetoothctl_shim)) as gw,
            ):
                # STATUS= every 10 s says why the last two wait, with the fix.
                await wait_for_prefix(
                    receiver,
                    f"STATUS={LIMIT - OTHERS}/{devices} devices connected",
                )
                await gw.wait_until(
                    lambda: _status_names_the_ceiling(receiver), 30, "STATUS= naming the bus"
                )
                assert await gw.terminate() == 0, gw.stderr()
            messages = receiver.messages()
    refused = gw.logged_prefix(REFUSED)
    assert len(refused) == 1, gw.stderr()
    assert refused[0]["level"] == "warning"
    assert "system-local.conf" in refused[0]["fix"]
    assert gw.logged_prefix("connection attempt failed") == [], "bus refusals are DEBUG"
    assert len(gw.logged("connected")) == LIMIT - OTHERS
    # No flood: the link's only warning is that one; bleak's words on the refused connections
    # come once per refused device at most.
    link_warnings = [
        r for r in gw.records if r.get("logger") == "gatewayd.link" and r["level"] != "info"
    ]
    assert link_warnings == refused
    closed = [r for r in gw.records if "Bad file descriptor" in json.dumps(r)]
    assert len(closed) <= 2 * 2, closed
    status = [m for m in messages if "refuses more connections" in m]
    assert f"at {LIMIT - OTHERS} connected devices (2 waiting)" in status[-1]
    assert "max_connections_per_user" in status[-1]


async def _status_names_the_ceiling(receiver: NotifySocket) -> bool:
    return any("the system D-Bus refuses more connections" in m for m in receiver.messages())
