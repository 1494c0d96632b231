"""The link layer's pure parts: backoff, slot budget, the per-device stream, the registry."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError
from structlog.testing import capture_logs

from gatewayd.backoff import MAX_DELAY_S
from gatewayd.link.backoff import BASE_DELAY_S, FailureKind, backoff_delay, classify
from gatewayd.link.connection import DeviceLink, LinkSettings, SlotLease, bond_rejected
from gatewayd.link.events import (
    BatteryLevel,
    DeviceRestarted,
    DeviceUntrusted,
    FrameReceived,
    HeartRateReceived,
    LinkDown,
    LinkUp,
    MessagesLost,
    ResumePoint,
    SequenceJump,
)
from gatewayd.link.manager import SEEN_WITHIN_S, SlotPool, logged_point
from gatewayd.link.queue import EventQueue
from gatewayd.link.registry import (
    DeviceRegistry,
    PairedDevice,
    RegistryError,
    default_alias,
    resume_point,
)
from gatewayd.link.scanner import Sightings
from gatewayd.link.slots import SlotBudget, SlotsAlarm
from gatewayd.link.stale import NO_RSSI, bluez_links, stale_sightings
from gatewayd.link.stream import DeviceStream, hardware_profile
from gatewayd.protocol.control import DeviceInfo, Resend
from gatewayd.protocol.fragments import fragment
from gatewayd.protocol.gatt import HEART_RATE_SERVICE_UUID, SERVICE_UUID
from gatewayd.protocol.heart_rate import HeartRateMeasurement
from gatewayd.protocol.messages import MessageFlags, SampleFormat, Summary, encode_message

# ---- backoff ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TimeoutError(), FailureKind.TIMEOUT),
        (BleakDeviceNotFoundError("AA:BB", "not found"), FailureKind.NOT_FOUND),
        (BleakDBusError("org.bluez.Error.InProgress", []), FailureKind.TRANSIENT),
        (
            BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"]),
            FailureKind.TRANSIENT,
        ),
        (BleakDBusError("org.freedesktop.DBus.Error.UnknownObject", []), FailureKind.NOT_FOUND),
        (BleakError("no available connection slot"), FailureKind.OUT_OF_SLOTS),
        (BleakError("Disconnected"), FailureKind.TRANSIENT),
        (
            BleakError("device '/org/bluez/hci0/dev_C0_FF_EE_00_00_01' not found"),
            FailureKind.NOT_FOUND,
        ),
        (ValueError("x"), FailureKind.OTHER),
    ],
)
def test_classify(exc: BaseException, kind: FailureKind) -> None:
    assert classify(exc) is kind


def test_backoff_grows_and_caps() -> None:
    delays = [backoff_delay(FailureKind.TRANSIENT, n) for n in range(1, 30)]
    assert delays[0] == 0.25
    assert delays[1] == pytest.approx(0.45)
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[-1] == MAX_DELAY_S
    assert backoff_delay(FailureKind.OUT_OF_SLOTS, 1) > backoff_delay(FailureKind.TRANSIENT, 1)
    assert backoff_delay(FailureKind.OTHER, 0) == 0.0


def test_backoff_jitter_is_bounded() -> None:
    rng = random.Random(1)
    for _ in range(100):
        d = backoff_delay(FailureKind.TIMEOUT, 3, rng=rng, jitter=0.1)
        assert 1.0 * 1.8**2 <= d <= 1.1 * 1.8**2


# ---- slots --------------------------------------------------------------------------------------


def test_slots_spread_and_fill() -> None:
    b = SlotBudget({"hci0": 2, "hci1": 2})
    chosen = []
    for _ in range(4):
        a = b.choose({"hci0": -50, "hci1": -80})
        assert a is not None
        b.take(a)
        chosen.append(a)
    # most free first, then signal: alternates rather than filling hci0
    assert chosen == ["hci0", "hci1", "hci0", "hci1"]
    assert b.choose({"hci0": -50, "hci1": -80}) is None
    b.release("hci1")
    assert b.choose(["hci0", "hci1"]) == "hci1"
    assert b.choose({"hci0": -40}) is None  # only seen where there is no room


def test_slots_misuse() -> None:
    b = SlotBudget({"hci0": 1})
    b.take("hci0")
    with pytest.raises(RuntimeError):
        b.take("hci0")
    b.release("hci0")
    with pytest.raises(RuntimeError):
        b.release("hci0")
    with pytest.raises(ValueError, match="at least 1"):
        SlotBudget({"hci0": 0})


def test_the_slots_alarm_raises_at_once_and_clears_after_a_calm_spell() -> None:
    alarm = SlotsAlarm(clear_after_s=60.0)
    assert alarm.step(0, now=0.0) is None
    assert alarm.step(2, now=5.0) == "raised"
    assert alarm.step(3, now=10.0) is None  # still raised: not again
    assert alarm.step(0, now=15.0) is None  # calm since 15 s ...
    assert alarm.step(1, now=40.0) is None  # ... but one waits again: the calm starts over
    assert alarm.step(0, now=45.0) is None
    assert alarm.step(0, now=104.0) is None
    assert alarm.step(0, now=105.0) == "cleared"  # 60 s without a device waiting
    assert alarm.step(0, now=200.0) is None
    # Left raised by the last run: cleared the same way if nothing waits any more.
    left = SlotsAlarm(clear_after_s=60.0, raised=True)
    assert left.step(0, now=0.0) is None
    assert left.step(0, now=60.0) == "cleared"


# ---- stale BlueZ links and the slot pool ---------------------------------------------------------

WEARABLE = "C0:FF:EE:00:00:01"
OTHER = "C0:FF:EE:00:00:02"


def bluez_device(
    address: str, adapter: str = "hci0", uuids: Sequence[str] = (SERVICE_UUID,), **props: object
) -> BLEDevice:
    """A BLEDevice as bleak's BlueZ backend builds it: Device1 properties in ``details``."""
    path = f"/org/bluez/{adapter}/dev_{address.replace(':', '_')}"
    return BLEDevice(
        address, None, {"path": path, "props": {"Address": address, "UUIDs": list(uuids), **props}}
    )


def advertisement(rssi: int) -> AdvertisementData:
    return AdvertisementData(None, {}, {}, [SERVICE_UUID], None, rssi, ())


class ScriptedBlueZ:
    """Answers the pool's "which links does BlueZ hold?" from a script; counts the questions."""

    def __init__(self, *answers: Mapping[str, Sequence[BLEDevice]]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, adapters: Sequence[str]) -> Mapping[str, Sequence[BLEDevice]]:
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_stale_sightings_are_links_to_the_address_that_speak_our_services() -> None:
    links = {
        "hci0": [bluez_device(OTHER), bluez_device(WEARABLE.lower(), RSSI=-61)],
        "hci1": [bluez_device(WEARABLE, "hci1", uuids=("0000181a-0000-1000-8000-00805f9b34fb",))],
        "hci2": [bluez_device(WEARABLE, "hci2", uuids=(HEART_RATE_SERVICE_UUID,))],
    }
    found = stale_sightings(WEARABLE, links, now=7.0)
    assert sorted(found) == ["hci0", "hci2"]  # hci1's offers none of our services
    assert (found["hci0"].rssi, found["hci0"].kind, found["hci0"].seen_at) == (-61, "wearable", 7.0)
    assert found["hci0"].device is links["hci0"][1]  # what BleakClient takes the link over with
    assert (found["hci2"].rssi, found["hci2"].kind) == (NO_RSSI, "heart_rate")
    assert stale_sightings(WEARABLE, {}, now=0.0) == {}
    assert stale_sightings(WEARABLE, {"hci0": [BLEDevice(WEARABLE, None, None)]}, now=0.0) == {}


@pytest.mark.asyncio
async def test_pool_hands_out_a_link_bluez_holds_without_waiting_for_an_advertisement() -> None:
    held = bluez_device(WEARABLE, "hci1")
    sightings = Sightings()
    sightings.record(bluez_device(WEARABLE, "hci0"), advertisement(-40), "hci0")  # an old one
    pool = SlotPool(SlotBudget({"hci0": 2, "hci1": 2}), sightings,
                    bluez_links=ScriptedBlueZ({"hci1": [held]}))  # fmt: skip
    lease = await asyncio.wait_for(pool.acquire(WEARABLE), 5)
    # A connected device does not advertise: the link wins over any sighting, however strong.
    assert (lease.sighting.adapter, lease.sighting.device) == ("hci1", held)
    assert pool.budget.used("hci1") == 1
    lease.release()
    assert pool.budget.used("hci1") == 0


@pytest.mark.asyncio
async def test_pool_waits_for_a_slot_on_the_adapter_that_holds_the_link() -> None:
    bluez = ScriptedBlueZ({"hci0": [bluez_device(WEARABLE), bluez_device(OTHER)]})
    sightings = Sightings()
    sightings.record(bluez_device(OTHER, "hci1"), advertisement(-40), "hci1")
    pool = SlotPool(SlotBudget({"hci0": 1, "hci1": 1}), sightings,
                    bluez_links=bluez, check_interval_s=3600)  # fmt: skip
    first = await asyncio.wait_for(pool.acquire(WEARABLE), 5)
    waiting = asyncio.create_task(pool.acquire(OTHER))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # not through hci1, where it was seen before BlueZ linked it
    first.release()
    second = await asyncio.wait_for(waiting, 5)
    assert second.sighting.adapter == "hci0"
    # One question for both: BlueZ's answer is the same for every device asking at the time,
    # and the freed slot needs no new one.
    assert bluez.calls == 1


@pytest.mark.asyncio
async def test_pool_asks_bluez_again_while_the_device_is_not_seen() -> None:
    bluez = ScriptedBlueZ({}, {}, {"hci0": [bluez_device(WEARABLE)]})
    pool = SlotPool(SlotBudget({"hci0": 1}), Sightings(), bluez_links=bluez, check_interval_s=0.01)
    lease = await asyncio.wait_for(pool.acquire(WEARABLE), 5)
    assert lease.sighting.adapter == "hci0"
    assert bluez.calls == 3


@pytest.mark.asyncio
async def test_pool_does_not_ask_bluez_at_every_advertisement() -> None:
    bluez = ScriptedBlueZ({})
    sightings = Sightings()
    pool = SlotPool(SlotBudget({"hci0": 1}), sightings, bluez_links=bluez, check_interval_s=3600)
    waiting = asyncio.create_task(pool.acquire(WEARABLE))
    for rssi in range(-90, -40):
        sightings.record(bluez_device(OTHER), advertisement(rssi), "hci0")
        await asyncio.sleep(0)
    sightings.record(bluez_device(WEARABLE), advertisement(-50), "hci0")
    lease = await asyncio.wait_for(waiting, 5)
    assert (lease.sighting.rssi, bluez.calls) == (-50, 1)


@pytest.mark.asyncio
async def test_devices_waiting_together_share_one_question_to_bluez() -> None:
    bluez = ScriptedBlueZ({})
    sightings = Sightings()
    pool = SlotPool(SlotBudget({"hci0": 1}), sightings, bluez_links=bluez, check_interval_s=3600)
    addresses = [f"C0:FF:EE:00:01:{i:02X}" for i in range(50)]
    waiting = [asyncio.create_task(pool.acquire(a)) for a in addresses]
    for _ in range(3):
        await asyncio.sleep(0)
    assert bluez.calls == 1  # not one per device: the answer is BlueZ's, the same for all
    sightings.record(bluez_device(addresses[0]), advertisement(-50), "hci0")
    lease = await asyncio.wait_for(waiting[0], 5)
    lease.release()
    # A link of ours just ended: BlueZ's earlier answer may still hold it, so it is asked again.
    again = await asyncio.wait_for(pool.acquire(addresses[0]), 5)
    assert bluez.calls == 2
    again.release()
    for task in waiting[1:]:
        task.cancel()
    await asyncio.gather(*waiting[1:], return_exceptions=True)
    await pool.close()


class CountingBudget(SlotBudget):
    """A slot budget that counts how often a waiting link looked for room."""

    looks = 0

    def choose(self, candidates: Mapping[str, int] | Iterable[str]) -> str | None:
        self.looks += 1
        return super().choose(candidates)


@pytest.mark.asyncio
async def test_a_link_waiting_for_a_slot_wakes_for_its_own_device_and_freed_slots_only() -> None:
    # Hundreds of wearables past the slots all advertise while they wait: if each
    # advertisement woke every waiting link, the event loop would do waiters x advertisements
    # of work for nothing (two thirds of the gateway's CPU at 300 wearables on 10 slots).
    bluez = ScriptedBlueZ({})
    sightings = Sightings()
    budget = CountingBudget({"hci0": 1, "hci1": 1})
    pool = SlotPool(budget, sightings, bluez_links=bluez, check_interval_s=3600)
    sightings.record(bluez_device(OTHER), advertisement(-50), "hci0")
    held = await asyncio.wait_for(pool.acquire(OTHER), 5)
    # hci1 has room but does not hear the wearable (yet).
    sightings.record(bluez_device(WEARABLE), advertisement(-50), "hci0")
    waiting = asyncio.create_task(pool.acquire(WEARABLE))
    await asyncio.sleep(0)
    looked = budget.looks
    for i in range(50):
        sightings.record(bluez_device(f"C0:FF:EE:00:01:{i:02X}"), advertisement(-60), "hci0")
        await asyncio.sleep(0)
    assert budget.looks == looked  # other devices' advertisements: not looked again
    sightings.record(bluez_device(WEARABLE), advertisement(-50), "hci0")
    await asyncio.sleep(0)
    assert budget.looks == looked + 1  # its own, with room elsewhere: looked again ...
    assert not waiting.done()  # ... but hci0 is full
    sightings.record(bluez_device(WEARABLE, "hci1"), advertisement(-70), "hci1")
    lease = await asyncio.wait_for(waiting, 5)  # heard where there is room
    assert lease.sighting.adapter == "hci1"
    # Every slot taken now: not even its own advertisements can help, only a freed slot.
    third = "C0:FF:EE:00:00:03"
    sightings.record(bluez_device(third), advertisement(-50), "hci0")
    waiting = asyncio.create_task(pool.acquire(third))
    await asyncio.sleep(0)
    looked = budget.looks
    for _ in range(20):
        sightings.record(bluez_device(third), advertisement(-50), "hci0")
        await asyncio.sleep(0)
    assert budget.looks == looked
    held.release()
    lease = await asyncio.wait_for(waiting, 5)
    assert (lease.sighting.adapter, budget.looks) == ("hci0", looked + 1)


@pytest.mark.asyncio
async def test_devices_waiting_for_a_slot_are_said_once_with_the_fix_until_none_waits() -> None:
    sightings = Sightings()
    pool = SlotPool(SlotBudget({"hci0": 1}), sightings, bluez_links=ScriptedBlueZ({}),
                    check_interval_s=3600)  # fmt: skip
    third = "C0:FF:EE:00:00:03"
    for address in (OTHER, WEARABLE, third):
        sightings.record(bluez_device(address), advertisement(-50), "hci0")
    with capture_logs() as logs:
        held = await asyncio.wait_for(pool.acquire(OTHER), 5)
        assert pool.problem is None  # it had room
        waiting = [asyncio.create_task(pool.acquire(a)) for a in (WEARABLE, third)]
        await asyncio.sleep(0)
        assert pool.waiting == 2
        assert pool.problem is not None
        assert pool.problem.startswith("2 device(s) wait for a connection slot, all 1 are taken")
        assert "slots_per_adapter" in pool.problem
        warned = [e for e in logs if e["log_level"] == "warning"]
        assert len(warned) == 1  # one for the episode, not one per device
        assert warned[0]["event"].startswith("every connection slot is taken")
        assert "[ble] adapters" in warned[0]["fix"]
        held.release()
        done, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        assert (len(done), pool.waiting) == (1, 1)  # one got the slot, one still waits
        (pending_task,) = pending
        pending_task.cancel()  # its link stopped: it waits no more
        with pytest.raises(asyncio.CancelledError):
            await pending_task
    assert pool.problem is None
    assert [e["event"] for e in logs if e["log_level"] == "info"] == [
        "no device waits for a connection slot any more"
    ]


@pytest.mark.asyncio
async def test_bluez_links_is_empty_when_bluez_cannot_be_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The scanners report an unreachable BlueZ; the pool then just waits for advertisements.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    assert await bluez_links(["hci0"]) == {}


def test_a_wearable_is_owed_from_its_pairing_or_from_the_event_log_whichever_is_later() -> None:
    paired = PairedDevice("w1", WEARABLE, "wearable", "w", "2026-12-07T10:00:00+00:00",
                          paired_boot_id=7, paired_next_seq=120)  # fmt: skip
    at = paired.paired_point()
    assert at == ResumePoint(7, 120, datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp())
    assert at is not None
    assert at.heard_at is not None
    before = ResumePoint(7, 100, at.heard_at - 60)  # heard before the pairing (removed, re-paired)
    after = ResumePoint(7, 150, at.heard_at + 60)
    assert resume_point(paired, None) == at
    assert resume_point(paired, before) == at
    assert resume_point(paired, after) == after
    assert resume_point(paired, ResumePoint(7, 100)) == at  # a log point without a time
    unknown = PairedDevice("w1", WEARABLE, "wearable", paired_at="2026-12-07T10:00:00+00:00")
    assert (unknown.paired_point(), resume_point(unknown, after)) == (None, after)
    assert resume_point(unknown, None) is None
    garbled = replace(paired, paired_at="yesterday")
    assert garbled.paired_point() is None


def test_pairing_records_the_numbering_and_a_rename_keeps_it_and_the_old_id(
    tmp_path: Path,
) -> None:
    registry = DeviceRegistry.in_state_dir(tmp_path)
    added = registry.add(WEARABLE, "wearable", "w", "bed-1", numbering=(7, 120))
    assert (added.paired_boot_id, added.paired_next_seq) == (7, 120)
    assert registry.load() == [added]
    # The same pairing: what it owes stays owed; the event log's point is under the old id.
    renamed = registry.rename("bed-1", "bed-2")
    assert renamed.paired_point() == added.paired_point()
    assert renamed.renamed_from == ("bed-1",)
    again = registry.rename("bed-2", "bed-1")  # back: the id it has is not a former one
    assert again.renamed_from == ("bed-2",)
    assert registry.load() == [again]
    # Where it resumes: the point heard last among its ids (one without a time is oldest).
    point = logged_point(again, {
        "bed-1": ResumePoint(7, 130, None), "bed-2": ResumePoint(7, 150, 2000.0),
        "other": ResumePoint(9, 999, 3000.0),
    })  # fmt: skip
    assert point == ResumePoint(7, 150, 2000.0)
    assert logged_point(again, {"bed-1": ResumePoint(7, 130, None)}) == ResumePoint(7, 130)
    assert logged_point(again, {}) is None
    # A list written before these fields existed still loads.
    entry = {"device_id": "old", "address": OTHER, "kind": "wearable"}
    text = json.dumps({"version": 1, "devices": [entry]})
    (tmp_path / "devices.json").write_text(text, encoding="utf-8")
    [old] = registry.load()
    assert old.paired_point() is None
    assert old.renamed_from == ()
    for garbage in (5, "bed-1", ["Bed 1"]):
        entry["renamed_from"] = garbage
        text = json.dumps({"version": 1, "devices": [entry]})
        (tmp_path / "devices.json").write_text(text, encoding="utf-8")
        with pytest.raises(RegistryError):
            registry.load()


class _Clock:
    """A settable monotonic clock for Sightings."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_a_device_that_stopped_advertising_does_not_count_as_waiting_for_a_slot() -> None:
    clock = _Clock()
    sightings = Sightings(clock)
    pool = SlotPool(SlotBudget({"hci0": 1}), sightings, bluez_links=ScriptedBlueZ({}),
                    check_interval_s=0.01)  # fmt: skip
    for address in (OTHER, WEARABLE):
        sightings.record(bluez_device(address), advertisement(-50), "hci0")
    held = await asyncio.wait_for(pool.acquire(OTHER), 5)
    with capture_logs() as logs:
        waiting = asyncio.create_task(pool.acquire(WEARABLE))
        await asyncio.sleep(0.05)
        assert pool.waiting == 1
        clock.now += SEEN_WITHIN_S + 1  # it walked away: no advertisement since
        await asyncio.sleep(0.05)
        assert (pool.waiting, pool.problem) == (0, None)  # absent, not waiting for a slot
        assert not waiting.done()  # its link still waits for it to come back
        sightings.record(bluez_device(WEARABLE), advertisement(-50), "hci0")  # back
        await asyncio.sleep(0.05)
        assert pool.waiting == 1
    assert [e["log_level"] for e in logs if "slot" in e["event"]] == ["warning", "info", "warning"]
    held.release()
    (await asyncio.wait_for(waiting, 5)).release()


def backing_off_link(sightings: Sightings, monkeypatch: pytest.MonkeyPatch) -> DeviceLink:
    """A link whose backoff is the first failure's delay, then ten minutes (never in a test)."""

    def delay(kind: FailureKind, attempt: int, **_: object) -> float:
        return BASE_DELAY_S[kind] if attempt <= 1 else 600.0

    monkeypatch.setattr("gatewayd.link.connection.backoff_delay", delay)
    monkeypatch.setitem(BASE_DELAY_S, FailureKind.OTHER, 0.05)
    monkeypatch.setitem(BASE_DELAY_S, FailureKind.PROTOCOL, 0.05)
    device = PairedDevice("w1", WEARABLE, "wearable")

    async def acquire(_address: str) -> SlotLease:
        raise AssertionError("not called")

    return DeviceLink(device, acquire=acquire, emit=lambda _e: None, settings=LinkSettings(),
                      sightings=sightings)  # fmt: skip


@pytest.mark.asyncio
async def test_a_device_that_advertises_again_ends_the_backoff_its_absence_grew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    sightings = Sightings(clock)
    sightings.record(bluez_device(WEARABLE), advertisement(-50), "hci0")  # before it left
    link = backing_off_link(sightings, monkeypatch)
    clock.now = 130.0  # the attempt that failed began here; nothing was heard since
    waiting = asyncio.create_task(link._back_off(FailureKind.OTHER, 5, attempted_at=130.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # ten minutes, unless it comes back
    sightings.record(bluez_device(OTHER), advertisement(-50), "hci0")  # someone else: no
    await asyncio.sleep(0.05)
    assert not waiting.done()
    clock.now = 131.0
    sightings.record(bluez_device(WEARABLE), advertisement(-60), "hci0")  # back in range
    await asyncio.wait_for(waiting, 5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "seen_during_attempt"),
    [(FailureKind.OTHER, True), (FailureKind.PROTOCOL, False)],
    ids=["advertised-while-failing", "its-own-fault"],
)
async def test_an_advertisement_does_not_cut_a_backoff_it_does_not_explain(
    monkeypatch: pytest.MonkeyPatch, kind: FailureKind, seen_during_attempt: bool
) -> None:
    clock = _Clock()
    sightings = Sightings(clock)
    link = backing_off_link(sightings, monkeypatch)
    if seen_during_attempt:
        clock.now = 131.0  # it advertised after the attempt began, and still failed
        sightings.record(bluez_device(WEARABLE), advertisement(-50), "hci0")
    waiting = asyncio.create_task(link._back_off(kind, 5, attempted_at=130.0))
    await asyncio.sleep(0.1)
    clock.now = 132.0
    sightings.record(bluez_device(WEARABLE), advertisement(-55), "hci0")
    await asyncio.sleep(0.2)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# ---- stream -------------------------------------------------------------------------------------


def summary(seq: int, flags: MessageFlags = MessageFlags.NONE) -> Summary:
    return Summary(seq, 1000 * seq, flags, 1, 0, 9000, 3000, 7000, 90, 80)


def frags(seq: int, mtu: int = 23, flags: MessageFlags = MessageFlags.NONE) -> list[bytes]:
    return fragment(encode_message(summary(seq, flags)), seq, mtu)


INFO = DeviceInfo(1, 0, 0, 0xABCD, 0, 64, 32, SampleFormat.INT16, 64, 4000, 6000, 0, "m")


def test_stream_delivers_in_order_and_recovers_a_gap_by_resend() -> None:
    s = DeviceStream("w1", resend_interval_s=1.0)
    s.on_info(INFO, 0.0)
    out = []
    for seq in (0, 1, 4, 5):  # 2 and 3 lost on the air
        for f in frags(seq):
            out += s.on_fragment(f, now=seq * 0.1, wall=100.0)
    assert [e.message.seq for e in out if isinstance(e, FrameReceived)] == [0, 1]
    assert s.resend_requests(now=0.5) == [Resend(2, 2)]
    assert s.resend_requests(now=0.6) == []  # not again within the interval
    for seq in (2, 3):
        for f in frags(seq, flags=MessageFlags.RESENT):
            out += s.on_fragment(f, now=0.7, wall=101.0)
    assert [e.message.seq for e in out if isinstance(e, FrameReceived)] == [0, 1, 2, 3, 4, 5]
    assert s.resend_requests(now=5.0) == []
    assert s.stats.delivered == 6
    assert s.stats.lost == 0


def test_stream_gives_up_after_timeout_and_reports_the_loss() -> None:
    s = DeviceStream("w1", gap_timeout_s=5.0, resend_interval_s=1.0)
    for seq in (0, 3):
        for f in frags(seq):
            s.on_fragment(f, now=0.0, wall=0.0)
    assert [len(s.resend_requests(t)) for t in (0.0, 0.5, 1.0, 1.9, 2.0)] == [1, 0, 1, 0, 1]
    s.on_info(INFO, 2.5)  # reconnected: ask again at once
    assert len(s.resend_requests(2.5)) == 1
    events = s.tick(now=5.0, wall=0.0)
    assert events[0] == MessagesLost("w1", 1, 2)
    assert isinstance(events[1], FrameReceived)
    assert s.stats.lost == 2
    assert s.resend_requests(6.0) == []  # given up: no more asking


def test_stream_long_gap_asks_for_the_newest_256() -> None:
    s = DeviceStream("w1")
    for seq in (0, 1000):
        for f in frags(seq):
            s.on_fragment(f, now=0.0, wall=0.0)
    assert s.resend_requests(0.0) == [Resend(1000 - 256, 256)]


def test_stream_counts_malformed_input_and_keeps_going() -> None:
    s = DeviceStream("w1")
    good = frags(0, mtu=247)
    assert s.on_fragment(b"\x00\x01", 0.0, 0.0) == []
    assert s.on_fragment(good[0][:-1] + b"\xff", 0.0, 0.0) == []
    assert s.stats.rejected == {"too_short": 1, "bad_crc": 1}
    assert s.wants_info
    # The last error is handed out once, as a value, with the running count of its kind.
    rejected = s.take_error()
    assert rejected is not None
    assert (rejected[0].reason, rejected[1]) == ("bad_crc", 1)
    assert s.take_error() is None
    # a damaged copy does not poison a later good one (its tag is not marked complete)
    assert [type(e) for e in s.on_fragment(good[0], 0.0, 0.0)] == [FrameReceived]


def test_stream_boot_id_change_is_a_restart() -> None:
    s = DeviceStream("w1")
    s.on_info(INFO, 0.0)
    for f in frags(500):
        s.on_fragment(f, 0.0, 0.0)
    s.on_disconnected()
    rebooted = DeviceInfo(1, 0, 0, 0x1234, 0, 64, 32, SampleFormat.INT16, 64, 4000, 6000, 0, "m")
    assert s.on_info(rebooted, 1.0) == [DeviceRestarted("w1", None)]
    events = [e for f in frags(0) for e in s.on_fragment(f, 1.0, 0.0)]
    assert [e.message.seq for e in events if isinstance(e, FrameReceived)] == [0]


def test_stream_disconnect_drops_half_messages_but_keeps_order() -> None:
    s = DeviceStream("w1")
    for f in frags(0):
        s.on_fragment(f, 0.0, 0.0)
    half = frags(1)
    s.on_fragment(half[0], 0.0, 0.0)
    s.on_disconnected()
    assert s.decoder.reassembler.pending == 0
    assert s.expected_seq == 1


# ---- registry -----------------------------------------------------------------------------------


def test_registry_round_trip(tmp_path: Path) -> None:
    reg = DeviceRegistry.in_state_dir(tmp_path / "state")
    assert reg.load() == []
    a = reg.add("aa:bb:cc:dd:ee:01", "wearable", "GW Wearable")
    assert a.device_id == "gw-wearable-ee01"
    assert a.address == "AA:BB:CC:DD:EE:01"
    b = reg.add("AA-BB-CC-DD-EE-02", "heart_rate", "Polar H10", alias="bed-3-strap")
    assert [d.device_id for d in reg.load()] == ["gw-wearable-ee01", "bed-3-strap"]
    again = reg.add("AA:BB:CC:DD:EE:01", "wearable", "GW Wearable")
    assert again.device_id == a.device_id  # re-pairing keeps the id
    assert reg.rename("bed-3-strap", "bed-4-strap").address == b.address
    with pytest.raises(RegistryError, match="already used"):
        reg.rename("bed-4-strap", "gw-wearable-ee01")
    reg.remove("gw-wearable-ee01")
    assert [d.device_id for d in reg.load()] == ["bed-4-strap"]
    doc = json.loads(reg.path.read_text())
    assert doc["version"] == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not a paired-device list"),
        ('{"version": 9, "devices": []}', "unknown format version"),
        ('{"version": 1, "devices": [{"address": "x"}]}', "not a paired-device list"),
        (
            '{"version": 1, "devices": [{"device_id": "A B", "address": "AA:BB:CC:DD:EE:01",'
            ' "kind": "wearable"}]}',
            "device id",
        ),
    ],
)
def test_registry_rejects_a_corrupt_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "devices.json"
    path.write_text(content)
    with pytest.raises(RegistryError, match=match) as err:
        DeviceRegistry(path).load()
    assert str(path) in str(err.value)


def test_registry_validation(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path / "devices.json")
    with pytest.raises(RegistryError, match="Bluetooth address"):
        reg.add("not-an-address", "wearable")
    with pytest.raises(RegistryError, match="device id"):
        reg.add("AA:BB:CC:DD:EE:01", "wearable", alias="Bad Alias")
    reg.add("AA:BB:CC:DD:EE:01", "wearable", alias="one")
    with pytest.raises(RegistryError, match="already used by"):
        reg.add("AA:BB:CC:DD:EE:02", "wearable", alias="one")
    with pytest.raises(RegistryError, match="no paired device"):
        reg.remove("two")
    assert default_alias("", "AA:BB:CC:DD:EE:0F") == "device-ee0f"


def test_stream_tail_loss_is_found_through_next_seq() -> None:
    s = DeviceStream("w1", gap_timeout_s=5.0)
    s.on_info(INFO, 0.0)
    for seq in (0, 1):
        for f in frags(seq):
            s.on_fragment(f, 0.0, 0.0)
    # message 2 was the last and was lost; the info read after reconnecting says next_seq = 3
    s.on_info(
        DeviceInfo(1, 0, 0, 0xABCD, 0, 64, 32, SampleFormat.INT16, 64, 4000, 6000, 3, "m"), 1.0
    )
    assert not s.wants_info
    assert s.resend_requests(1.0) == [Resend(2, 1)]
    events = [e for f in frags(2, flags=MessageFlags.RESENT) for e in s.on_fragment(f, 1.5, 0.0)]
    assert [e.message.seq for e in events if isinstance(e, FrameReceived)] == [2]


# ---- resume, jumps and identity -------------------------------------------------------------


def info_at(next_seq: int, boot_id: int = 0xABCD, acc_lsb: int = 64) -> DeviceInfo:
    return DeviceInfo(
        1, 0, 0, boot_id, 0, 64, 32, SampleFormat.INT16, acc_lsb, 4000, 6000, next_seq, "m"
    )


def test_stream_resumes_where_the_last_run_stopped_and_asks_the_ring() -> None:
    # The last run delivered up to 99; the wearable made 400 more while the gateway was down.
    s = DeviceStream("w1", resume=ResumePoint(0xABCD, 100, heard_at=1000.0))
    events = s.on_info(info_at(500), now=0.0, wall=1000.0 + 900)  # 15 min: 900 plausible
    # Beyond the largest RESEND nothing can come back: lost at once; the newest 256 are asked.
    assert events == [MessagesLost("w1", 100, 144, "resume")]
    assert s.resend_requests(0.0) == [Resend(244, 256)]
    out = [e for seq in range(436, 500) for f in frags(seq, flags=MessageFlags.RESENT)
           for e in s.on_fragment(f, 0.5, 2000.0)]  # fmt: skip
    # The ring held only the newest 64: the rest of the gap is given up after the timeout.
    out += s.tick(now=6.0, wall=2001.0)
    lost = [e for e in out if isinstance(e, MessagesLost)]
    assert lost == [MessagesLost("w1", 244, 192)]
    frames = [e for e in out if isinstance(e, FrameReceived)]
    assert [f.message.seq for f in frames] == list(range(436, 500))
    assert {f.boot_id for f in frames} == {0xABCD}
    assert s.stats.lost + s.stats.delivered == 400


def test_stream_resume_with_an_implausible_next_seq_is_a_jump() -> None:
    s = DeviceStream("w1", resume=ResumePoint(0xABCD, 100, heard_at=1000.0), jump_slack=256)
    events = s.on_info(info_at(2_000_000_000), now=0.0, wall=1010.0)
    assert events == [SequenceJump("w1", 100, 2_000_000_000, 10 + 256)]
    assert s.stats.lost == 0
    assert s.resend_requests(0.0) == []
    assert s.expected_seq == 2_000_000_000


def test_stream_resume_of_another_boot_is_a_restart() -> None:
    s = DeviceStream("w1", resume=ResumePoint(0x1111, 100, heard_at=1000.0))
    assert s.on_info(info_at(7), now=0.0, wall=1100.0) == [DeviceRestarted("w1", None)]
    assert s.expected_seq == 7


def test_a_changed_hardware_profile_is_untrusted_and_nothing_is_delivered() -> None:
    s = DeviceStream("w1", profile=hardware_profile(info_at(0)))
    assert s.on_info(info_at(0), 0.0) == []
    [event] = s.on_info(info_at(0, acc_lsb=4096), 1.0)
    assert isinstance(event, DeviceUntrusted)
    assert event.reason == "identity_changed"
    assert "bvp64-acc32-lsb4096-int16" in event.detail
    assert [e for f in frags(0) for e in s.on_fragment(f, 1.0, 0.0)] == []
    assert s.on_info(info_at(0), 2.0) == [event]  # it stays untrusted


def test_a_new_boot_id_whose_numbering_goes_on_is_untrusted() -> None:
    s = DeviceStream("w1", jump_slack=100)
    s.on_info(info_at(5000), 0.0)
    for f in frags(5000):
        s.on_fragment(f, 10.0, 0.0)
    # 20 s later a "rebooted" device that is already at 5001: it did not restart its numbering
    [event] = s.on_info(info_at(5001, boot_id=0x9999), 30.0)
    assert isinstance(event, DeviceUntrusted)
    assert event.reason == "identity_changed"
    # a real reboot restarts at 0: 15 messages since is plausible
    t = DeviceStream("w1", jump_slack=100)
    t.on_info(info_at(5000), 0.0)
    assert t.on_info(info_at(15, boot_id=0x9999), 30.0) == [DeviceRestarted("w1", None)]


def test_bond_rejected_knows_bluezs_ways_of_saying_the_keys_do_not_match() -> None:
    assert bond_rejected(BleakDBusError("org.bluez.Error.Failed", ["le-connection-key-missing"]))
    assert bond_rejected(BleakDBusError("org.bluez.Error.AuthenticationFailed", []))
    assert bond_rejected(BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"]))
    assert not bond_rejected(BleakDBusError("org.bluez.Error.NotPermitted", ["Read not permitted"]))
    assert not bond_rejected(
        BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"])
    )
    assert not bond_rejected(TimeoutError())


# ---- the event queue ------------------------------------------------------------------------


def frame(seq: int, device: str = "w1") -> FrameReceived:
    return FrameReceived(device, summary(seq), 0.0, 1)


def test_a_stalled_consumer_loses_frames_counted_but_never_a_state_event() -> None:
    q = EventQueue(max_frames=3)
    up = LinkUp("w1", "hci0", None, 247)
    assert q.put(up)
    assert [q.put(frame(i)) for i in range(6)] == [True, True, True, False, False, False]
    # Full, but w2 holds none of it: under its share (3 frames / 2 devices), so taken.
    assert q.put(frame(0, "w2")) is True
    assert q.put(frame(1, "w2")) is False  # now at its share
    down = LinkDown("w1", "link lost")
    assert q.put(down)  # a full queue never refuses a state event
    assert q.put(MessagesLost("w1", 9, 1))
    assert q.put(DeviceUntrusted("w3", "bond_rejected", "x"))
    assert q.put(SequenceJump("w1", 10, 99_999, 300))
    for level in (90, 89, 88):  # a battery level still waiting is updated, not queued again
        assert q.put(BatteryLevel("w1", level))
    assert q.put(frame(6)) is False  # still full: a new run of drops after the LinkDown
    hr = HeartRateReceived("s1", HeartRateMeasurement(70, True, None, ()), 0.0)
    assert [q.put(hr) for _ in range(3)] == [True, False, False]
    assert q.put(frame(0, "w4")) is True  # under its share: 6 frames, twice the bound
    assert q.put(frame(0, "w5")) is False  # twice the bound: nothing more
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    # Round-robin over the devices, each device's events in order.
    assert out == [
        up, frame(0, "w2"), DeviceUntrusted("w3", "bond_rejected", "x"), hr, frame(0, "w4"),
        MessagesLost("w5", 0, 1, "queue_full"),
        frame(0), MessagesLost("w2", 1, 1, "queue_full"), MessagesLost("s1", -1, 2, "queue_full"),
        frame(1), frame(2),
        MessagesLost("w1", 3, 3, "queue_full"),
        down,
        MessagesLost("w1", 9, 1),
        SequenceJump("w1", 10, 99_999, 300),
        BatteryLevel("w1", 88),
        MessagesLost("w1", 6, 1, "queue_full"),
    ]  # fmt: skip
    assert q.dropped == {"w1": 4, "w2": 1, "s1": 2, "w5": 1}
    # drained: frames fit again, and every dropped frame became a reported loss
    assert q.put(frame(7))
    lost = sum(e.count for e in out if isinstance(e, MessagesLost) and e.cause == "queue_full")
    assert lost == sum(q.dropped.values())


def test_a_flooding_device_neither_crowds_out_nor_delays_a_quiet_one() -> None:
    q = EventQueue(max_frames=100)
    flood = [q.put(frame(i % 65536, "flood")) for i in range(1000)]
    assert flood.count(True) == 100  # the flood took the whole bound, then lost the rest
    assert q.put(frame(0, "quiet"))
    assert q.put(frame(1, "quiet"))
    # The quiet device's frames come out second and fourth, not after the flood's 100.
    out = [q.get_nowait() for _ in range(4)]
    assert [(e.device_id, e.message.seq) for e in out if isinstance(e, FrameReceived)] == [
        ("flood", 0), ("quiet", 0), ("flood", 1), ("quiet", 1)
    ]  # fmt: skip
    assert q.dropped == {"flood": 900}


@pytest.mark.asyncio
async def test_event_queue_get_waits_for_an_event() -> None:
    q = EventQueue(max_frames=1)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put(LinkDown("w1", "x"))
    assert await getter == LinkDown("w1", "x")
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


def test_registry_reads_an_older_file_and_records_trust(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    old = {"device_id": "w1", "address": "C0:FF:EE:00:00:01", "kind": "wearable", "name": "x",
           "paired_at": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    path.write_text(json.dumps({"version": 1, "devices": [old]}))
    registry = DeviceRegistry(path)
    [device] = registry.load()
    assert (device.allow_unbonded, device.profile, device.untrusted) == (False, "", "")
    registry.mark_untrusted("w1", "hardware profile changed")
    assert registry.get("w1").untrusted == "hardware profile changed"
    again = registry.add("C0:FF:EE:00:00:01", "wearable", "x", profile="bvp64-acc32-lsb64-int16")
    assert (again.device_id, again.untrusted, again.profile) == (
        "w1", "", "bvp64-acc32-lsb64-int16",
    )  # fmt: skip
    strap = registry.add("C0:FF:EE:01:00:01", "heart_rate", "HRM", allow_unbonded=True)
    assert DeviceRegistry(path).get(strap.device_id).allow_unbonded
