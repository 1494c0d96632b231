"""The link against impostors, unbonded devices, gateway restarts, a stalled consumer and a hung
bluetoothd: real bleak, the emulated BlueZ and virtual wearables (docs/pairing.md, protocol.md).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from gatewayd.datasets.recording import Recording
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.bluez import OUT_OF_RANGE_CONNECT_S
from gatewayd.emulator.faults import FaultPlan
from gatewayd.emulator.virtual import Fleet, FleetSetup, build_fleet, running
from gatewayd.lifecycle import ReentryError
from gatewayd.link.backoff import BASE_DELAY_S, FailureKind
from gatewayd.link.connection import LinkSettings
from gatewayd.link.events import (
    DeviceUntrusted,
    FrameReceived,
    HeartRateReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    MessagesLost,
    ResumePoint,
)
from gatewayd.link.manager import LinkManager
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from gatewayd.link.stream import DeviceStream
from gatewayd.protocol.control import Resend
from gatewayd.protocol.messages import MessageFlags, SampleFormat
from tests.emulator_fixtures import release_bleak_manager
from tests.test_link_pure import frags, info_at

pytest_plugins = ["tests.emulator_fixtures"]

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
    pytest.mark.asyncio,
]

#: Safety net only: every wait below ends on an event, this bounds a broken one.
LIMIT_S = 60.0


@pytest_asyncio.fixture
async def fake(fake_bluez: FakeBluez) -> AsyncIterator[FakeBluez]:
    yield fake_bluez
    fake_bluez.hang(False)
    await release_bleak_manager()


def synthetic(subject: int, minutes: float) -> Recording:
    return generate_recording(subject, minutes, seed=subject)


def paired(
    fleet: Fleet, tmp_path: Path, allow_unbonded: frozenset[str] = frozenset()
) -> list[PairedDevice]:
    """Every wearable and strap of the fleet in the allowlist (registry only, no BlueZ pairing)."""
    registry = DeviceRegistry.in_state_dir(tmp_path)
    for i, (device, _) in enumerate(fleet.wearables):
        registry.add(device.address, "wearable", device.name or "", f"w{i}")
    for i, (device, _) in enumerate(fleet.straps):
        alias = f"s{i}"
        registry.add(device.address, "heart_rate", device.name or "", alias,
                     allow_unbonded=alias in allow_unbonded)  # fmt: skip
    return registry.load()


async def collect_until(
    manager: LinkManager, done: Callable[[list[LinkEvent]], bool]
) -> list[LinkEvent]:
    """Events from an entered manager until ``done(events)``."""
    events: list[LinkEvent] = []
    async with asyncio.timeout(LIMIT_S):
        while not done(events):
            events.append(await manager.events.get())
    return events


def frames_of(events: list[LinkEvent], device_id: str) -> list[FrameReceived]:
    return [e for e in events if isinstance(e, FrameReceived) and e.device_id == device_id]


async def test_an_impostor_at_a_bonded_address_gets_no_frame_through(
    fake: FakeBluez, tmp_path: Path
) -> None:
    fleet = await build_fleet(fake, [synthetic(1, 1.0)], FleetSetup(devices=2, speed=20.0))
    real, _ = fleet.wearables[0]
    impostor_device, impostor = fleet.wearables[1]
    # BlueZ holds the victim's bond; the device now advertising that address lacks its keys.
    impostor_device.holds_keys = False
    devices = await asyncio.to_thread(paired, fleet, tmp_path)
    async with running(fleet, 20.0), LinkManager(["hci0"], 5, devices, LinkSettings()) as link:
        events = await collect_until(
            link,
            lambda ev: (
                len(frames_of(ev, "w0")) >= 10 and any(isinstance(e, DeviceUntrusted) for e in ev)
            ),
        )
    untrusted = [e for e in events if isinstance(e, DeviceUntrusted)]
    assert [(e.device_id, e.reason) for e in untrusted] == [("w1", "bond_rejected")]
    assert "le-connection-key-missing" in untrusted[0].detail
    assert frames_of(events, "w1") == []
    assert not [e for e in events if isinstance(e, LinkUp) and e.device_id == "w1"]
    assert impostor.messages_sent == 0
    assert not impostor_device.connected
    assert real.encrypted is False  # the link is gone now; it was encrypted while up
    assert link.closed is not None
    assert link.closed.disconnects_abandoned == 0


async def test_the_impostor_fault_of_gatewayd_emulate_is_refused_as_one(
    fake: FakeBluez, tmp_path: Path
) -> None:
    faults = FaultPlan(impostor=1)
    setup = FleetSetup(devices=2, speed=20.0, bonded=False, faults=faults, decoy=False)
    fleet = await build_fleet(fake, [synthetic(6, 1.0)], setup)
    impostor_device, impostor = fleet.wearables[0]
    assert (impostor_device.paired, impostor_device.holds_keys) == (True, False)
    assert not fleet.wearables[1][0].paired  # the others wait for `gatewayd pair`
    devices = await asyncio.to_thread(paired, fleet, tmp_path)
    async with running(fleet, 20.0), LinkManager(["hci0"], 5, devices, LinkSettings()) as link:
        events = await collect_until(
            link, lambda ev: sum(isinstance(e, DeviceUntrusted) for e in ev) >= 2
        )
    untrusted = {(e.device_id, e.reason) for e in events if isinstance(e, DeviceUntrusted)}
    assert untrusted == {("w0", "bond_rejected"), ("w1", "not_bonded")}
    assert not [e for e in events if isinstance(e, FrameReceived)]
    assert impostor.messages_sent == 0


async def test_unbonded_devices_are_refused_unless_the_user_allowed_that_one(
    fake: FakeBluez, tmp_path: Path
) -> None:
    setup = FleetSetup(devices=1, heart_rate_straps=2, speed=20.0, bonded=False)
    fleet = await build_fleet(fake, [synthetic(2, 1.0)], setup)
    devices = await asyncio.to_thread(paired, fleet, tmp_path, frozenset({"s1"}))
    async with running(fleet, 20.0), LinkManager(["hci0"], 5, devices, LinkSettings()) as link:
        events = await collect_until(
            link,
            lambda ev: (
                sum(isinstance(e, HeartRateReceived) for e in ev) >= 3
                and sum(isinstance(e, DeviceUntrusted) for e in ev) >= 2
            ),
        )
    untrusted = {(e.device_id, e.reason) for e in events if isinstance(e, DeviceUntrusted)}
    assert untrusted == {("w0", "not_bonded"), ("s0", "not_bonded")}
    assert {e.device_id for e in events if isinstance(e, HeartRateReceived)} == {"s1"}
    assert frames_of(events, "w0") == []
    assert fleet.wearables[0][1].messages_sent == 0
    # the wearable's encrypted characteristics were never touched: nothing to pair behind our back
    wearable = fleet.wearables[0][0]
    touched = [c for c in fake.call_log if c.path.startswith(wearable.path + "/")]
    assert touched == []


async def test_a_wearable_whose_hardware_changes_is_untrusted_until_paired_again(
    fake: FakeBluez, tmp_path: Path
) -> None:
    # Corrupted fragments make the link read the info characteristic again while streaming.
    setup = FleetSetup(devices=1, speed=20.0, faults=FaultPlan(corrupt=0.05), decoy=False)
    fleet = await build_fleet(fake, [synthetic(7, 2.0)], setup)
    device, wearable = fleet.wearables[0]
    registry = DeviceRegistry.in_state_dir(tmp_path)
    await asyncio.to_thread(
        registry.add, device.address, "wearable", "w", "w0", profile="bvp64-acc32-lsb64-int16"
    )
    devices = await asyncio.to_thread(registry.load)
    async with running(fleet, 20.0):
        link = LinkManager(["hci0"], 5, devices, LinkSettings(), registry=registry)
        async with link:
            await collect_until(link, lambda ev: len(frames_of(ev, "w0")) >= 3)
            # Same address, same bond, other sensors: not the wearable that was paired.
            wearable.core.spec = replace(wearable.core.spec, sample_format=SampleFormat.INT8)
            events = await collect_until(
                link, lambda ev: any(isinstance(e, DeviceUntrusted) for e in ev)
            )
            async with asyncio.timeout(LIMIT_S):
                while device.connected:  # noqa: ASYNC110 - emulator state, no event
                    await asyncio.sleep(0.02)
        [untrusted] = [e for e in events if isinstance(e, DeviceUntrusted)]
        assert untrusted.reason == "identity_changed"
        assert "bvp64-acc32-lsb64-int8" in untrusted.detail
        [stored] = await asyncio.to_thread(registry.load)
        assert "bvp64-acc32-lsb64-int8" in stored.untrusted
        # A restarted gateway does not connect to it at all, and says why at once.
        connects = sum(1 for c in fake.call_log if c.member == "Connect")
        async with LinkManager(["hci0"], 5, [stored], LinkSettings()) as again:
            [event] = await collect_until(again, lambda ev: len(ev) >= 1)
            await asyncio.sleep(0.5)  # time it would have had to connect
        assert event == DeviceUntrusted("w0", "identity_changed", stored.untrusted)
        assert sum(1 for c in fake.call_log if c.member == "Connect") == connects
        assert again.events.empty()


async def test_a_wearable_back_in_range_reconnects_without_waiting_out_its_backoff(
    fake: FakeBluez, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every failure after the first waits ten minutes: only the device advertising again can
    # bring it back within this test's limit.
    def delay(kind: FailureKind, attempt: int, **_: object) -> float:
        return BASE_DELAY_S[kind] if attempt <= 1 else 600.0

    monkeypatch.setattr("gatewayd.link.connection.backoff_delay", delay)
    setup = FleetSetup(devices=1, speed=20.0, decoy=False)
    fleet = await build_fleet(fake, [synthetic(4, 2.0)], setup)
    device, _ = fleet.wearables[0]
    devices = await asyncio.to_thread(paired, fleet, tmp_path)
    async with running(fleet, 20.0), LinkManager(["hci0"], 5, devices, LinkSettings()) as link:
        await collect_until(link, lambda ev: len(frames_of(ev, "w0")) >= 3)
        connects = sum(1 for c in fake.call_log if c.member == "Connect")
        await device.set_in_range(False)
        # The link drops; the attempt that follows fails ("Host is down"), and the next one
        # would wait ten minutes.
        async with asyncio.timeout(LIMIT_S):
            while sum(1 for c in fake.call_log if c.member == "Connect") == connects:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(OUT_OF_RANGE_CONNECT_S + 0.5)  # it has failed
        assert not device.connected
        await device.set_in_range(True)
        events = await collect_until(
            link,
            lambda ev: any(isinstance(e, LinkUp) for e in ev) and len(frames_of(ev, "w0")) >= 3,
        )
    assert [e.device_id for e in events if isinstance(e, LinkDown)] == ["w0"]
    assert [e.device_id for e in events if isinstance(e, LinkUp)] == ["w0"]


async def test_a_restarted_gateway_resumes_from_the_ring_and_reports_the_rest_lost(
    fake: FakeBluez, tmp_path: Path
) -> None:
    speed = 40.0
    setup = FleetSetup(devices=1, speed=speed, keep_sent=True, decoy=False)
    fleet = await build_fleet(fake, [synthetic(3, 4.0)], setup)
    _, wearable = fleet.wearables[0]
    core = wearable.core
    devices = await asyncio.to_thread(paired, fleet, tmp_path)
    delivered: list[FrameReceived] = []
    lost = 0
    async with running(fleet, speed):
        async with LinkManager(["hci0"], 5, devices, LinkSettings()) as first:
            events = await collect_until(first, lambda ev: len(frames_of(ev, "w0")) >= 15)
        delivered += frames_of(events, "w0")
        # What arrived after the 15th frame but before the stop is in the queue: the pipeline
        # drains it at shutdown (gatewayd.app), so does this test.
        while not first.events.empty():
            event = first.events.get_nowait()
            if isinstance(event, FrameReceived):
                delivered.append(event)
        last = delivered[-1]
        assert last.boot_id == core.spec.boot_id
        resume = ResumePoint(last.boot_id, last.message.seq + 1, last.received_at)
        # The gateway is down while the wearable goes on: more than its ring (64) holds.
        async with asyncio.timeout(LIMIT_S):
            while core.produced < resume.next_seq + 100:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.05)
        resent_before = core.counters.resent
        second = LinkManager(["hci0"], 5, devices, LinkSettings(), resume={"w0": resume})
        async with second:
            events = await collect_until(
                second,
                lambda ev: (
                    core.finished
                    and len(frames_of(ev, "w0"))
                    + sum(e.count for e in ev if isinstance(e, MessagesLost))
                    >= core.windows_total - resume.next_seq
                ),
            )
        delivered += frames_of(events, "w0")
        lost = sum(e.count for e in events if isinstance(e, MessagesLost))
    seqs = [f.message.seq for f in delivered]
    assert seqs == sorted(set(seqs)), "exactly once, in order"
    assert core.produced == core.windows_total
    assert len(delivered) + lost == core.produced, "every message delivered or reported lost"
    assert lost >= 100 - core.spec.ring_slots, "what the ring no longer held is reported"
    assert core.counters.resent - resent_before >= 50, "the missed range came from the ring"
    sent = core.sent
    assert sent is not None
    for f in delivered:  # what came back is what was sent, not something else
        assert f.message.seq in sent
        assert type(f.message) is type(sent[f.message.seq])


async def test_a_stalled_consumer_loses_frames_but_says_so_and_keeps_every_state_event(
    fake: FakeBluez, tmp_path: Path
) -> None:
    speed = 60.0
    fleet = await build_fleet(fake, [synthetic(4, 2.0)], FleetSetup(devices=1, speed=speed))
    _, wearable = fleet.wearables[0]
    devices = await asyncio.to_thread(paired, fleet, tmp_path)
    async with (
        running(fleet, speed),
        LinkManager(["hci0"], 5, devices, LinkSettings(), queue_size=5) as link,
    ):
        # Nobody reads while the wearable sends everything.
        async with asyncio.timeout(LIMIT_S):
            await wearable.done.wait()
            stats = link.links[fleet.wearables[0][0].address].stream.stats
            while stats.delivered < wearable.core.windows_total:  # noqa: ASYNC110 - a counter
                await asyncio.sleep(0.05)
    events: list[LinkEvent] = []
    while not link.events.empty():
        events.append(link.events.get_nowait())
    frames = frames_of(events, "w0")
    losses = [e for e in events if isinstance(e, MessagesLost)]
    assert len(frames) == 5
    assert link.dropped > 0
    assert sum(e.count for e in losses if e.cause == "queue_full") == link.dropped
    assert len(frames) + sum(e.count for e in losses) == wearable.core.windows_total
    # the state events came through although frames did not
    assert [type(e) for e in events if isinstance(e, LinkUp | LinkDown)] == [LinkUp, LinkDown]


async def test_leaving_the_link_with_bluetoothd_hung_abandons_the_disconnect_within_the_bound(
    fake: FakeBluez, tmp_path: Path
) -> None:
    fleet = await build_fleet(fake, [synthetic(5, 2.0)], FleetSetup(devices=1, speed=10.0))
    device, _ = fleet.wearables[0]
    devices = await asyncio.to_thread(paired, fleet, tmp_path)
    link = LinkManager(["hci0"], 5, devices, LinkSettings(), close_timeout_s=2.0)
    async with running(fleet, 10.0):
        async with link:
            await collect_until(link, lambda ev: len(frames_of(ev, "w0")) >= 2)
            fake.hang()  # bluetoothd answers no method call from now on
        with pytest.raises(ReentryError, match="runs once"):
            await link.__aenter__()
    assert fake.unanswered >= 1, "the disconnect was sent and never answered"
    assert link.closed is not None
    assert link.closed.devices == 1
    assert link.closed.disconnects_abandoned == 1
    left = []
    while not link.events.empty():
        left.append(link.events.get_nowait())
    assert LinkDown("w0", "gateway stopping") in left, "never left 'connected' forever"
    fake.hang(False)
    assert device.connected  # bluetoothd never got to drop it: the next run takes it over


async def test_an_answer_arriving_message_by_message_is_not_asked_for_again() -> None:
    # Pure: the resume gap of 256 is asked once; the ring's answer comes oldest first, and every
    # message of it moves the start of what is still missing. Asking anew for each remainder
    # (as the link did) made the wearable queue the same messages over and over, until it
    # refused a RESEND (ATT Unlikely Error) and the session ended.
    s = DeviceStream("w1", resume=ResumePoint(0xABCD, 100, heard_at=1000.0))
    s.on_info(info_at(356), now=0.0, wall=1100.0)
    asked = s.resend_requests(0.0)
    assert asked == [Resend(100, 256)]
    # Live ones, then what the ring holds of the range (its newest 64 are 296..359).
    for seq in [*range(356, 360), *range(296, 356)]:
        for f in frags(seq, flags=MessageFlags.RESENT if seq < 356 else MessageFlags.NONE):
            s.on_fragment(f, 0.1, 1100.1)
        asked += s.resend_requests(0.1)
    assert asked == [Resend(100, 256)], "asked again while the answer was arriving"
    # Once the interval has passed, what is still missing is asked again, once.
    assert s.resend_requests(1.2) == [Resend(100, 196)]
    assert s.resend_requests(1.3) == []
    assert s.stats.resend_requests == 2
