"""The link layer's pure parts: backoff, slot budget, the per-device stream, the registry."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError

from gatewayd.backoff import MAX_DELAY_S
from gatewayd.link.backoff import FailureKind, backoff_delay, classify
from gatewayd.link.events import DeviceRestarted, FrameReceived, MessagesLost
from gatewayd.link.manager import SlotPool
from gatewayd.link.registry import DeviceRegistry, RegistryError, default_alias
from gatewayd.link.scanner import Sightings
from gatewayd.link.slots import SlotBudget
from gatewayd.link.stale import NO_RSSI, bluez_links, stale_sightings
from gatewayd.link.stream import DeviceStream
from gatewayd.protocol.control import DeviceInfo, Resend
from gatewayd.protocol.fragments import fragment
from gatewayd.protocol.gatt import HEART_RATE_SERVICE_UUID, SERVICE_UUID
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
    assert bluez.calls == 2  # once per acquire: the freed slot needs no new question


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
async def test_bluez_links_is_empty_when_bluez_cannot_be_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The scanners report an unreachable BlueZ; the pool then just waits for advertisements.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    assert await bluez_links(["hci0"]) == {}


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
    assert s.last_error is not None
    assert s.stats.rejected == {"too_short": 1, "bad_crc": 1}
    assert s.wants_info
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
