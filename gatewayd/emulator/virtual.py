"""Virtual wearables on the fake BlueZ: a WearableCore per device, moved over BLE in real time.

Each :class:`VirtualWearable` is the :class:`~gatewayd.emulator.Peripheral` of one FakeDevice.
Its simulated clock runs ``speed`` times faster than the event loop's; every completed window is
encoded by the core, cut into fragments for the device's MTU and notified (awaiting the fake's
flow control). Windows produced while nobody listens stay in the core's ring for RESEND.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import structlog

from gatewayd.datasets.recording import Recording
from gatewayd.errors import DecodeError
from gatewayd.inference.cards import ModelCardError
from gatewayd.inference.registry import InstalledModel, ModelRegistry
from gatewayd.inference.session import InferenceError, ModelSession
from gatewayd.protocol import gatt
from gatewayd.protocol.fragments import fragment
from gatewayd.protocol.heart_rate import HeartRateMeasurement, encode_heart_rate_measurement
from gatewayd.protocol.messages import SampleFormat
from gatewayd.signals.offload import DEFAULT_MIN_CONF_E4, DEFAULT_TAU_MBITS
from gatewayd.signals.windows import STEP_S

from .bluez import FakeBluez, FakeDevice
from .bluez_specs import (
    ATT_ERROR_READ_NOT_PERMITTED,
    ATT_ERROR_WRITE_NOT_PERMITTED,
    CharSpec,
    DisconnectReason,
    GattError,
    ServiceSpec,
    StaticPeripheral,
    battery_service,
    wearable_service,
)
from .faults import FaultPlan
from .wearable import SIGNAL_ONLY_MODEL_ID, SharedLocalModel, WearableCore, WearableSpec

log = structlog.get_logger("gatewayd.emulator")

#: ATT "Value Not Allowed" (Core spec Vol 3 Part F 3.4.1.1): what the firmware answers to a
#: control write it rejects.
ATT_ERROR_VALUE_NOT_ALLOWED: Final = 0x13
ENVIRONMENTAL_SENSING_UUID: Final = "0000181a-0000-1000-8000-00805f9b34fb"
TEMPERATURE_CHAR_UUID: Final = "00002a6e-0000-1000-8000-00805f9b34fb"


def heart_rate_service() -> ServiceSpec:
    """The standard Heart Rate Service with its measurement characteristic."""
    return ServiceSpec(
        gatt.HEART_RATE_SERVICE_UUID,
        (CharSpec(gatt.HEART_RATE_MEASUREMENT_CHAR_UUID, ("notify",)),),
    )


class SimClock:
    """Simulated seconds since start, ``speed`` times the event loop's clock."""

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._t0 = asyncio.get_running_loop().time()

    def now(self) -> float:
        """Simulated seconds elapsed."""
        return (asyncio.get_running_loop().time() - self._t0) * self.speed

    async def sleep_until(self, sim_s: float) -> None:
        """Sleep until the simulated clock reaches ``sim_s``."""
        delay = (sim_s - self.now()) / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


class SendStamps:
    """When each wearable began to notify each new message: for end-to-end latency benches.

    ``record`` is the hot path (one tuple appended); ``take`` hands over what was recorded since
    the last call, for a writer off the wearables' path. Times are ``time.monotonic_ns()``
    (CLOCK_MONOTONIC: one clock for every process on the machine, so another process can match
    them with its own receive times). Resends are not stamped: their latency is the outage's.
    """

    def __init__(self) -> None:
        self._rows: list[tuple[str, int, int]] = []

    def record(self, address: str, seq: int) -> None:
        """Message ``seq`` of ``address`` starts going out now."""
        self._rows.append((address, seq, time.monotonic_ns()))

    def take(self) -> list[tuple[str, int, int]]:
        """(address, seq, monotonic ns) recorded since the last call, oldest first."""
        rows, self._rows = self._rows, []
        return rows


def format_stamps(rows: Sequence[tuple[str, int, int]]) -> str:
    """Stamp rows as the lines of a stamps file: ``address seq monotonic_ns``."""
    return "".join(f"{address} {seq} {t_ns}\n" for address, seq, t_ns in rows)


def parse_stamps(text: str) -> list[tuple[str, int, int]]:
    """The rows of a stamps file (`format_stamps`); a torn last line is skipped."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


class VirtualWearable:
    """A gatewayd wearable replaying a recording (implements the fake's Peripheral protocol)."""

    def __init__(
        self,
        core: WearableCore,
        *,
        faults: FaultPlan | None = None,
        seed: int = 0,
        flood: bool = False,
        phase_s: float = 0.0,
        stamps: SendStamps | None = None,
    ) -> None:
        """``phase_s``: simulated seconds the wearable is switched on after the fleet starts
        (its windows complete that much later); ``stamps``: where to record each new message's
        send time."""
        self.core = core
        self.faults = faults or FaultPlan()
        self.flood = flood
        self.phase_s = phase_s
        self.stamps = stamps
        self.device: FakeDevice | None = None
        self.done = asyncio.Event()
        self.fragments_sent = 0
        self.messages_sent = 0
        self._rng = random.Random(seed)
        self._clock: SimClock | None = None
        #: Resends waiting to go, by seq, oldest asked first. As a firmware marks ring slots to
        #: resend, a seq asked again while it waits is not queued twice, and no more wait than
        #: the ring has slots: a RESEND is never refused for want of room.
        self._pending: OrderedDict[int, bytes] = OrderedDict()
        self._pending_added = asyncio.Event()
        self._last_battery = -1
        #: ``next_seq`` at each info read: the first is where a gateway's numbering began (what
        #: the wearable produced before that was never owed to it, docs/protocol.md §4).
        self.info_next_seqs: list[int] = []

    # ---- Peripheral -------------------------------------------------------------------------

    def on_connect(self) -> None:
        """Nothing to do: the gateway syncs time and policy with writes."""

    def on_disconnect(self, reason: DisconnectReason) -> None:
        """Nothing to do: messages keep going into the ring."""

    def on_read(self, char_uuid: str) -> bytes:
        """Info and battery level."""
        if char_uuid == gatt.INFO_CHAR_UUID:
            self.info_next_seqs.append(self.core.produced)
            return self.core.info()
        if char_uuid == gatt.BATTERY_LEVEL_CHAR_UUID:
            return bytes([self.core.battery_pct(self._sim_now())])
        raise GattError(ATT_ERROR_READ_NOT_PERMITTED)

    def on_write(self, char_uuid: str, data: bytes) -> None:
        """Control commands; a RESEND's answer is queued for the sender."""
        if char_uuid != gatt.CONTROL_CHAR_UUID:
            raise GattError(ATT_ERROR_WRITE_NOT_PERMITTED)
        try:
            answer = self.core.handle_control(data, self._sim_now())
        except DecodeError as exc:
            raise GattError(ATT_ERROR_VALUE_NOT_ALLOWED, str(exc)) from exc
        for seq, raw in answer:
            self._pending.setdefault(seq, raw)
        while len(self._pending) > self.core.spec.ring_slots:
            self._pending.popitem(last=False)
        if answer:
            self._pending_added.set()

    def on_notify_changed(self, char_uuid: str, enabled: bool) -> None:
        """Nothing to do: sending checks whether anyone listens."""

    # ---- running ----------------------------------------------------------------------------

    def _sim_now(self) -> float:
        return self._clock.now() if self._clock is not None else 0.0

    async def run(self, device: FakeDevice, speed: float) -> None:
        """Replay the recording in simulated time, then keep answering resends until cancelled.

        The recording (and the wearable's clock) starts ``phase_s`` simulated seconds late.
        """
        self.device = device
        if self.faults.connect_fail:
            device.fail_next_connects(self.faults.connect_fail)
        if self.phase_s > 0:
            await asyncio.sleep(self.phase_s / speed)
        self._clock = SimClock(speed)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._resender())
            if self.faults.drop_every_s > 0:
                tg.create_task(self._dropper())
            if self.flood:
                tg.create_task(self._flooder())
            await self._producer()
            self.done.set()

    async def _producer(self) -> None:
        assert self._clock is not None
        while (due := self.core.next_window_due_s()) is not None:
            await self._clock.sleep_until(due)
            for seq, raw in self.core.produce(self._clock.now()):
                await self._send(seq, raw, new=True)
            await self._battery_update()

    async def _resender(self) -> None:
        while True:
            await self._pending_added.wait()
            self._pending_added.clear()
            while self._pending:
                seq, raw = self._pending.popitem(last=False)
                await self._send(seq, raw)

    async def _send(self, seq: int, raw: bytes, *, new: bool = False) -> None:
        device = self.device
        assert device is not None
        if not device.notifying(gatt.DATA_CHAR_UUID):
            return  # stays in the ring
        if new and self.stamps is not None:
            self.stamps.record(device.address, seq)
        for frag in fragment(raw, seq, device.mtu):
            for wire in self.faults.mangle(frag, self._rng):
                if not await device.notify(gatt.DATA_CHAR_UUID, wire):
                    return  # link lost mid-message: the gateway will ask again
                self.fragments_sent += 1
        self.messages_sent += 1

    async def _battery_update(self) -> None:
        device = self.device
        assert device is not None
        level = self.core.battery_pct(self._sim_now())
        if level != self._last_battery and device.notifying(gatt.BATTERY_LEVEL_CHAR_UUID):
            self._last_battery = level
            await device.notify(gatt.BATTERY_LEVEL_CHAR_UUID, bytes([level]))

    async def _dropper(self) -> None:
        device = self.device
        assert device is not None
        while True:
            period = self.faults.drop_every_s
            await asyncio.sleep(period * self._rng.uniform(0.75, 1.25))
            if device.connected:
                await device.drop_link(DisconnectReason.TIMEOUT)

    async def _flooder(self) -> None:
        device = self.device
        assert device is not None
        while True:
            await asyncio.sleep(1.0 / self.faults.flood_rate)
            if device.notifying(gatt.DATA_CHAR_UUID):
                junk = self._rng.randbytes(self._rng.randint(1, device.mtu - 3))
                await device.notify(gatt.DATA_CHAR_UUID, junk)


class HeartRateStrap:
    """A standard Heart Rate Service device: one measurement a (simulated) second."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.device: FakeDevice | None = None
        self.sent = 0

    def on_connect(self) -> None:
        """Nothing to do."""

    def on_disconnect(self, reason: DisconnectReason) -> None:
        """Nothing to do."""

    def on_read(self, char_uuid: str) -> bytes:
        """No readable characteristics."""
        raise GattError(ATT_ERROR_READ_NOT_PERMITTED)

    def on_write(self, char_uuid: str, data: bytes) -> None:
        """No writable characteristics."""
        raise GattError(ATT_ERROR_WRITE_NOT_PERMITTED)

    def on_notify_changed(self, char_uuid: str, enabled: bool) -> None:
        """Nothing to do."""

    def hr_at(self, sim_s: float) -> int:
        """The recording's reference heart rate at ``sim_s`` (72 when it has none)."""
        ref = self.recording.hr_ref_bpm
        if ref is None or ref.size == 0:
            return 72
        i = min(int(max(sim_s - 4.0, 0.0) // 2.0), ref.size - 1)
        value = float(ref[i])
        return round(value) if np.isfinite(value) else 72

    async def run(self, device: FakeDevice, speed: float) -> None:
        """Notify one measurement per simulated second, until cancelled."""
        self.device = device
        clock = SimClock(speed)
        tick = 0
        while True:
            tick += 1
            await clock.sleep_until(float(tick))
            if not device.notifying(gatt.HEART_RATE_MEASUREMENT_CHAR_UUID):
                continue
            hr = self.hr_at(clock.now())
            rr = round(60.0 / hr * 1024)
            m = HeartRateMeasurement(hr, True, None, (rr,))
            if await device.notify(gatt.HEART_RATE_MEASUREMENT_CHAR_UUID,
                                   encode_heart_rate_measurement(m)):  # fmt: skip
                self.sent += 1


@dataclass(frozen=True, slots=True)
class FleetSetup:
    """What to emulate."""

    devices: int = 2
    adapters: int = 1
    slots: int = 5
    heart_rate_straps: int = 0
    decoy: bool = True
    speed: float = 1.0
    mtu: int = 247
    seed: int = 0
    sample_format: SampleFormat = SampleFormat.INT16
    tau_mbits: int = DEFAULT_TAU_MBITS
    min_conf_e4: int = DEFAULT_MIN_CONF_E4
    faults: FaultPlan = field(default_factory=FaultPlan)
    keep_sent: bool = False
    #: The pruned model every wearable runs (one session for all), or None: activity unknown.
    local_model: ModelSession | None = None
    pruning_pct: int = 40
    #: BlueZ already holds a bond with every wearable and strap (as after `gatewayd pair` in an
    #: earlier run: bluetoothd loads bonds at start). False: they wait to be paired.
    bonded: bool = True
    #: Each wearable is switched on at a random phase of the 2 s window hop (drawn from
    #: ``seed``), as real ones are; False: all in lock-step, every window completing at once.
    stagger: bool = True
    #: Record each new message's send time here (for latency benches), or None.
    stamps: SendStamps | None = None
    #: Replay each recording endlessly, each wearable from its own window of it
    #: (`replay_starts`), its tracker having followed the LOOP_WORN_WINDOWS before; False:
    #: every wearable from the first window, once, as just switched on.
    loop: bool = False


#: A looping wearable has been worn this many windows (a minute) before its first: its heart-rate
#: tracker has locked on, as on a wrist worn for a while (from a cold start it offloads for up to
#: a minute). Costs ~0.5 ms of CPU per window per wearable when the fleet is built.
LOOP_WORN_WINDOWS: Final = 30


def stagger_phases(devices: int, seed: int, hop_s: float = STEP_S) -> list[float]:
    """Each wearable's switch-on phase, simulated seconds in [0, hop_s): uniform, seeded."""
    rng = random.Random(seed * 104729 + 17)
    return [rng.uniform(0.0, hop_s) for _ in range(devices)]


def replay_starts(devices: int, windows: Sequence[int], seed: int) -> list[int]:
    """The window each wearable's replay starts at, when the fleet loops its recordings.

    Wearable ``i`` replays recording ``i % len(windows)``, of ``windows[r]`` windows. Those that
    share a recording are spread evenly over it, from a seeded point of it, so that a fleet
    larger than its recordings is not copies of a few wearables in step, and a small fleet does
    not replay only its recordings' beginnings.
    """
    rng = random.Random(seed * 15485863 + 29)
    rotations = [rng.randrange(w) if w > 0 else 0 for w in windows]
    sharing = [len(range(r, devices, len(windows))) for r in range(len(windows))]
    starts = []
    for i in range(devices):
        r, k = i % len(windows), i // len(windows)
        w = windows[r]
        starts.append((rotations[r] + k * w // sharing[r]) % w if w > 0 else 0)
    return starts


def pick_wearable_model(registry: ModelRegistry, pruning_pct: int) -> InstalledModel | None:
    """The shipped wearable model at a pruning level: int8 (what an MCU runs) before fp32."""
    candidates = [m for m in registry.for_role("wearable") if m.card.pruning_pct == pruning_pct]
    candidates.sort(key=lambda m: (m.card.quantization != "int8-static", m.model_id))
    return candidates[0] if candidates else None


def load_wearable_model(
    pruning_pct: int = 40, models_dir: Path | None = None
) -> tuple[ModelSession | None, str | None]:
    """The wearable model's session, or (None, why not): a missing model is not an error."""
    registry = ModelRegistry.discover(models_dir)
    chosen = pick_wearable_model(registry, pruning_pct)
    if chosen is None:
        return None, f"no wearable model pruned {pruning_pct} % in {registry.directory}"
    try:
        return ModelSession(chosen.card, chosen.path), None
    except (InferenceError, ModelCardError) as exc:
        return None, str(exc)


def wearable_address(index: int) -> str:
    """Deterministic addresses: C0:FF:EE:00:hh:ll."""
    return f"C0:FF:EE:00:{index >> 8 & 0xFF:02X}:{index & 0xFF:02X}"


def strap_address(index: int) -> str:
    """Deterministic addresses for heart-rate straps: C0:FF:EE:01:hh:ll."""
    return f"C0:FF:EE:01:{index >> 8 & 0xFF:02X}:{index & 0xFF:02X}"


DECOY_ADDRESS: Final = "C0:FF:EE:DE:C0:01"


@dataclass
class Fleet:
    """The emulated devices, once added to the fake BlueZ."""

    wearables: list[tuple[FakeDevice, VirtualWearable]]
    straps: list[tuple[FakeDevice, HeartRateStrap]]
    decoy: FakeDevice | None


async def build_fleet(fake: FakeBluez, recordings: Sequence[Recording], setup: FleetSetup) -> Fleet:
    """Add adapters and devices to ``fake``; recordings are dealt round-robin (``loop``: each
    wearable from its own window, `replay_starts`)."""
    if not recordings:
        raise ValueError("the emulator needs at least one recording")
    adapters = [
        await fake.add_adapter(f"hci{i}", f"00:1A:7D:DA:71:{i:02X}", slots=setup.slots)
        for i in range(setup.adapters)
    ]
    phases = stagger_phases(setup.devices, setup.seed) if setup.stagger else [0.0] * setup.devices
    starts = (
        replay_starts(setup.devices, [r.window_count() for r in recordings], setup.seed)
        if setup.loop
        else [0] * setup.devices
    )
    # One verdict per recording window, whichever wearables replay it (the model is pure).
    shared = {
        id(r): SharedLocalModel(setup.local_model, r, setup.sample_format)
        for r in recordings
        if setup.local_model is not None
    }
    wearables = []
    for i in range(setup.devices):
        recording = recordings[i % len(recordings)]
        impostor = i < setup.faults.impostor
        spec = WearableSpec(
            address=wearable_address(i + 1),
            name=f"gw-wearable-{i + 1:02d}",
            recording=recording,
            boot_id=random.Random(setup.seed * 7919 + i).getrandbits(32),
            sample_format=setup.sample_format,
            pruning_pct=setup.pruning_pct,
            tau_mbits=setup.tau_mbits,
            min_conf_e4=setup.min_conf_e4,
            boot_unix_ms=int(setup.faults.skew_s * 1000),
            clock_drift_ms_per_s=setup.faults.drift_ms_per_s,
            model_id=setup.local_model.model_id if setup.local_model else SIGNAL_ONLY_MODEL_ID,
            start_window=starts[i],
            loop=setup.loop,
            worn_windows=LOOP_WORN_WINDOWS if setup.loop else 0,
            knows_rest_limit=i >= setup.faults.old_firmware,
        )
        virtual = VirtualWearable(
            WearableCore(spec, keep_sent=setup.keep_sent, local_model=shared.get(id(recording))),
            faults=setup.faults,
            seed=setup.seed * 1000 + i,
            flood=i < setup.faults.flood,
            phase_s=phases[i],
            stamps=setup.stamps,
        )
        device = await fake.add_device(
            adapters[i % len(adapters)], spec.address, spec.name, [gatt.SERVICE_UUID],
            [wearable_service(), battery_service()], peripheral=virtual, mtu=setup.mtu,
            rssi=-55 - (i % 20), paired=setup.bonded or impostor,
            holds_keys=False if impostor else None,
        )  # fmt: skip
        wearables.append((device, virtual))
    straps = []
    for i in range(setup.heart_rate_straps):
        strap = HeartRateStrap(recordings[i % len(recordings)])
        device = await fake.add_device(
            adapters[i % len(adapters)], strap_address(i + 1), f"HR strap {i + 1}",
            [gatt.HEART_RATE_SERVICE_UUID], [heart_rate_service(), battery_service()],
            peripheral=strap, mtu=setup.mtu, paired=setup.bonded,
        )  # fmt: skip
        straps.append((device, strap))
    decoy = None
    if setup.decoy:
        decoy = await fake.add_device(
            adapters[0], DECOY_ADDRESS, "Thermometer", [ENVIRONMENTAL_SENSING_UUID],
            [ServiceSpec(ENVIRONMENTAL_SENSING_UUID, (CharSpec(TEMPERATURE_CHAR_UUID, ("read",)),))],  # noqa: E501
            peripheral=StaticPeripheral({TEMPERATURE_CHAR_UUID: b"\x0c\x08"}),
        )  # fmt: skip
    return Fleet(wearables, straps, decoy)


async def run_fleet(fleet: Fleet, speed: float) -> None:
    """Run every device until cancelled."""
    async with asyncio.TaskGroup() as tg:
        for device, wearable in fleet.wearables:
            tg.create_task(wearable.run(device, speed), name=f"wearable-{device.address}")
        for device, strap in fleet.straps:
            tg.create_task(strap.run(device, speed), name=f"strap-{device.address}")


async def wait_finished(fleet: Fleet) -> None:
    """Return once every wearable has produced its last window."""
    for _, wearable in fleet.wearables:
        await wearable.done.wait()


@contextlib.asynccontextmanager
async def running(fleet: Fleet, speed: float):  # type: ignore[no-untyped-def]
    """Run the fleet in the background for the duration of the block."""
    task = asyncio.create_task(run_fleet(fleet, speed))
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
