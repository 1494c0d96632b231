"""`gatewayd bench soak`: the whole gateway for M minutes under faults on a schedule, then an
account of every window and every alert (docs/benchmarks.md).

Processes: the emulator in this process (the fake BlueZ on a private D-Bus, N wearables replaying
synthetic sessions with planted tachycardia, started a few seconds apart, at ``speed`` times real
time), a mosquitto of our own (`RestartableMosquitto`), `gatewayd run` as a subprocess against
the emulated bus (`GatewayProcess`), and a subscriber here recording what is delivered.

Faults, seeded and printed before the start, one every ``fault_interval_s`` (+-25 %), the kinds
in a shuffled rotation so that each comes round:

- ``link_drop``: the emulator drops one wearable's link (supervision timeout);
- ``broker_restart``: mosquitto stopped for ``broker_outage_s``, then started on the same port;
- ``corrupt``: one wearable sends a fragment with one bit flipped in its message bytes;
- ``gateway_kill``: SIGKILL of `gatewayd run`, ``gateway_down_s`` down, started again.

When the recordings end the faults stop, the gateway is given time to ask the rings for what it
missed and to empty its outbox, then stopped (SIGTERM). The account (`soak_verify`) is built
from the emulator's record, the event log (read-only) and the subscriber's. The gateway's RSS
and its outbox depth are sampled every ``sample_every_s``; `soak_report` writes JSON, Markdown
and a PNG plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from gatewayd.bench.procstat import read_proc
from gatewayd.bench.soak_procs import GatewayProcess, RestartableMosquitto, Subscriber
from gatewayd.bench.soak_verify import (
    FAULT_KINDS,
    FaultSpan,
    LostRange,
    Owed,
    SoakAccount,
    StoredWindow,
    account,
)
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import DBUS_SYSTEM_BUS_ADDRESS, FakeBluez, PrivateBus
from gatewayd.emulator.bluez import install_bluetoothctl_shim
from gatewayd.emulator.bluez_specs import DisconnectReason
from gatewayd.emulator.faults import CorruptTrigger, ScheduledFaultPlan
from gatewayd.emulator.virtual import Fleet, FleetSetup, VirtualWearable, build_fleet
from gatewayd.errors import GatewayError
from gatewayd.link.registry import DeviceRegistry

__all__ = [
    "FAULT_KINDS",
    "PlannedFault",
    "Sample",
    "SoakOptions",
    "SoakResult",
    "plan_faults",
    "run_soak",
]

#: The faults aimed at one wearable (the others hit the whole gateway).
DEVICE_FAULTS: Final = frozenset({"link_drop", "corrupt"})
GATEWAY_ID: Final = "gw-soak"
TOPIC_ROOT: Final = "gatewayd"
#: PPG-DaLiA's activity id for sitting: the heart rate stays low between planted episodes.
SITTING: Final = 1
#: A tachycardia episode every EPISODE_EVERY_S simulated seconds, EPISODE_S long, at 150 bpm.
EPISODE_EVERY_S: Final = 90.0
EPISODE_S: Final = 40.0
#: Thresholds low enough for the planted episodes to raise and clear alerts.
RULES: Final = """
[rules.hr]
min_confidence = 0.0
min_signal_quality = 0
[rules.tachycardia]
rest_bpm = 100.0
light_bpm = 100.0
vigorous_bpm = 100.0
unknown_bpm = 100.0
hysteresis_bpm = 5.0
min_duration_s = 0.0
cooldown_s = 0.0
[rules.abrupt_change]
cooldown_s = 0.0
"""
#: Telemetry of windows received this long before a fault and after its recovery may be lost
#: without the gateway's fault (QoS 0 in flight, the publisher's reconnect backoff, the
#: subscriber's reconnect): such misses are counted apart.
SETTLE_S: Final = 30.0
#: Connection slots of each emulated adapter (and [ble] slots_per_adapter): the gateway's
#: default; the soak adds adapters so that every wearable is connected at once.
SLOTS_PER_ADAPTER: Final = 5
#: How long after the last window the gateway may take to account for everything and drain.
DRAIN_LIMIT_S: Final = 240.0
#: How long a corruption fault waits for its wearable to send a fragment.
CORRUPT_WAIT_S: Final = 30.0
#: Samples this soon after a gateway (re)start are left out of the RSS slope (model loading).
RSS_WARMUP_S: Final = 20.0


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """What `gatewayd bench soak` was asked for."""

    minutes: float = 20.0
    devices: int = 4
    seed: int = 1
    out: Path = Path("soak")
    #: Simulated seconds per real second of the wearables (1: real time).
    speed: float = 4.0
    fault_interval_s: float = 60.0
    faults: tuple[str, ...] = FAULT_KINDS
    #: Seconds of quiet before the first fault.
    warmup_s: float = 30.0
    broker_outage_s: float = 15.0
    gateway_down_s: float = 3.0
    sample_every_s: float = 5.0
    #: Seconds between the starts of successive wearables.
    stagger_s: float = 3.0
    #: Models for the gateway (None: the installed ones).
    models_dir: Path | None = None
    #: Run the gateway without a model (degraded mode: less CPU).
    no_model: bool = False


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """A fault the schedule holds: when (seconds after the start), what, and on which device."""

    at_s: float
    kind: str
    device: int


@dataclass
class DoneFault:
    """A fault as it happened (unix times)."""

    kind: str
    device_id: str | None
    start: float
    end: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class Sample:
    """The gateway at one instant: seconds since the start, RSS (None while it is down), pid,
    and outbox depth (None when the log could not be read)."""

    t_s: float
    rss_mb: float | None
    pid: int | None
    outbox: int | None


@dataclass
class SoakResult:
    """Everything the report needs."""

    options: SoakOptions
    started_at: float
    ended_at: float
    plan: list[PlannedFault]
    faults: list[DoneFault]
    samples: list[Sample]
    account: SoakAccount
    #: Gateway processes started (1 + kills).
    gateway_runs: int
    decode_errors_logged: int
    corrupted_fragments: int
    work_dir: Path
    produced: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def plan_faults(options: SoakOptions, duration_s: float) -> list[PlannedFault]:
    """The seeded schedule: from ``warmup_s`` on, one fault an interval (+-25 %), kinds in a
    shuffled rotation, none in the last half interval (pure)."""
    rng = random.Random(options.seed)  # noqa: S311 - a schedule, not a secret
    plan: list[PlannedFault] = []
    kinds: list[str] = []
    t = options.warmup_s
    while t < duration_s - options.fault_interval_s / 2:
        if not kinds:
            kinds = list(options.faults)
            rng.shuffle(kinds)
        plan.append(PlannedFault(round(t, 1), kinds.pop(), rng.randrange(options.devices)))
        t += options.fault_interval_s * rng.uniform(0.75, 1.25)
    return plan


def _adapters(devices: int) -> int:
    """Emulated adapters enough for every wearable to hold a connection slot at once."""
    return math.ceil(devices / SLOTS_PER_ADAPTER)


def _config_text(port: int, devices: int) -> str:
    """The gateway's config, written into the work dir: its state dir is "state" beside it
    (a relative path in a config file is relative to the file's own folder)."""
    adapters = ", ".join(f'"hci{i}"' for i in range(_adapters(devices)))
    return (
        f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "state"\n'
        f"[ble]\nadapters = [{adapters}]\nslots_per_adapter = {SLOTS_PER_ADAPTER}\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\ntopic_root = "{TOPIC_ROOT}"\n'
        "[offload]\ntau_bits = 3.5\nmin_confidence = 0.5\n" + RULES
    )


def _episodes(first_s: float, minutes: float) -> list[tuple[str, float, float, float]]:
    out = []
    start = first_s
    while start + EPISODE_S < minutes * 60.0:
        out.append(("tachycardia", start, EPISODE_S, 150.0))
        start += EPISODE_EVERY_S
    return out


async def _build(fake: FakeBluez, options: SoakOptions, sim_minutes: float) -> Fleet:
    recordings = [
        await asyncio.to_thread(
            generate_recording, i + 1, sim_minutes, seed=options.seed + i,
            events=_episodes(20.0 + 17.0 * i, sim_minutes),
            activities=[(SITTING, sim_minutes * 60.0)],
        )
        for i in range(options.devices)
    ]  # fmt: skip
    setup = FleetSetup(
        devices=options.devices, adapters=_adapters(options.devices), slots=SLOTS_PER_ADAPTER,
        speed=options.speed, seed=options.seed, tau_mbits=3500, min_conf_e4=5000, decoy=False,
    )  # fmt: skip
    fleet = await build_fleet(fake, recordings, setup)
    for _, wearable in fleet.wearables:
        # Each wearable its own trigger: a scheduled corruption hits the device it names.
        wearable.faults = ScheduledFaultPlan(trigger=CorruptTrigger())
    return fleet


def _device_id(i: int) -> str:
    return f"wrist-{i + 1:02d}"


def _pair(state_dir: Path, fleet: Fleet) -> None:
    registry = DeviceRegistry.in_state_dir(state_dir)
    for i, (device, wearable) in enumerate(fleet.wearables):
        registry.add(device.address, "wearable", wearable.core.spec.name, alias=_device_id(i))


def _trigger(wearable: VirtualWearable) -> CorruptTrigger:
    plan = wearable.faults
    assert isinstance(plan, ScheduledFaultPlan)
    return plan.trigger


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)


def outbox_depth(db: Path) -> int | None:
    """Outbox rows not yet published, read-only; None when the log cannot be read (yet)."""
    if not db.exists():
        return None
    try:
        conn = _read_only(db)
        try:
            depth: int = conn.execute(
                "SELECT count(*) FROM outbox WHERE done_at IS NULL"
            ).fetchone()[0]
            return depth
        finally:
            conn.close()
    except sqlite3.Error:
        return None


@dataclass
class _LogView:
    """What the event log holds, read once (read-only)."""

    stored: list[StoredWindow]
    lost: list[LostRange]
    outbox: dict[str, str]


def read_log(db: Path) -> _LogView:
    """Windows, data_lost ranges and outbox events from the event log (read-only; blocks)."""
    if not db.exists():
        return _LogView([], [], {})
    conn = _read_only(db)
    try:
        stored = [
            StoredWindow(d, s, r)
            for d, s, r in conn.execute(
                "SELECT device_id, seq, received_at FROM windows WHERE seq IS NOT NULL ORDER BY id"
            )
        ]
        lost = []
        for device, payload in conn.execute(
            "SELECT device_id, payload FROM events WHERE kind = 'data_lost' ORDER BY rowid"
        ):
            evidence = json.loads(payload).get("evidence", {})
            lost.append(
                LostRange(device, int(evidence["first"]), int(evidence["count"]),
                          str(evidence.get("cause", "unknown")))
            )  # fmt: skip
        outbox = dict(
            conn.execute("SELECT e.id, e.kind FROM outbox o JOIN events e ON e.id = o.event_id")
        )
        return _LogView(stored, lost, outbox)
    finally:
        conn.close()


class _Soak:
    """One soak run's moving parts and records."""

    def __init__(self, options: SoakOptions, out: TextIO, work: Path) -> None:
        self.options = options
        self.out = out
        self.work = work
        self.db = work / "state" / "gatewayd.db"
        self.t0 = time.time()
        self.samples: list[Sample] = []
        self.faults: list[DoneFault] = []
        self.gateways: list[GatewayProcess] = []
        self.rng = random.Random(options.seed + 1)  # noqa: S311 - a schedule, not a secret

    def say(self, text: str) -> None:
        self.out.write(f"[{time.time() - self.t0:7.1f} s] {text}\n")
        self.out.flush()

    @property
    def gateway(self) -> GatewayProcess:
        return self.gateways[-1]

    async def start_gateway(self, env: dict[str, str], config: Path) -> None:
        args: list[str] = []
        if self.options.no_model:
            args = ["--models-dir", str(self.work / "no-models")]
        elif self.options.models_dir is not None:
            args = ["--models-dir", str(self.options.models_dir)]
        gw = GatewayProcess(config, env, self.work / "gatewayd.log", args)
        self.gateways.append(gw)
        await gw.__aenter__()
        self.say(f"gateway running (pid {gw.pid}, run {len(self.gateways)})")

    async def sampler(self) -> None:
        while True:
            gw = self.gateways[-1] if self.gateways else None
            pid = gw.pid if gw is not None else None
            proc = await asyncio.to_thread(read_proc, pid) if pid is not None else None
            depth = await asyncio.to_thread(outbox_depth, self.db)
            self.samples.append(
                Sample(
                    round(time.time() - self.t0, 2),
                    None if proc is None else round(proc.rss_bytes / 2**20, 2),
                    pid if proc is not None else None,
                    depth,
                )
            )
            await asyncio.sleep(self.options.sample_every_s)


async def _run_faults(
    soak: _Soak,
    plan: list[PlannedFault],
    fleet: Fleet,
    broker: RestartableMosquitto,
    restart_gateway: Callable[[], Any],
) -> None:
    options = soak.options
    for fault in plan:
        delay = soak.t0 + fault.at_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        start = time.time()
        device, wearable = fleet.wearables[fault.device]
        device_id: str | None = _device_id(fault.device)
        note = ""
        if fault.kind == "link_drop":
            if not device.connected:
                connected = [i for i, (d, _) in enumerate(fleet.wearables) if d.connected]
                if connected:
                    i = soak.rng.choice(connected)
                    device, device_id = fleet.wearables[i][0], _device_id(i)
            if device.connected:
                await device.drop_link(DisconnectReason.TIMEOUT)
            else:
                note = "skipped: no wearable connected"
        elif fault.kind == "broker_restart":
            device_id = None
            await broker.stop()
            await asyncio.sleep(options.broker_outage_s)
            await broker.start()
        elif fault.kind == "corrupt":
            note = await _corrupt_one(_trigger(wearable))
        elif fault.kind == "gateway_kill":
            device_id = None
            await soak.gateway.kill()
            await asyncio.sleep(options.gateway_down_s)
            await restart_gateway()
        done = DoneFault(fault.kind, device_id, start, time.time(), note)
        soak.faults.append(done)
        soak.say(f"fault {fault.kind}{f' on {device_id}' if device_id else ''} done"
                 f" in {done.end - done.start:.1f} s{f' ({note})' if note else ''}")  # fmt: skip


async def _corrupt_one(trigger: CorruptTrigger) -> str:
    """Arm the trigger and wait until the fragment went out; a note if it did not in time."""
    before = trigger.applied
    trigger.arm(1)
    try:
        async with asyncio.timeout(CORRUPT_WAIT_S):
            while trigger.applied == before:  # noqa: ASYNC110 - the wearable sends when due
                await asyncio.sleep(0.05)
    except TimeoutError:
        trigger.armed = 0
        return f"skipped: the wearable sent nothing within {CORRUPT_WAIT_S:g} s"
    return ""


def _owed(fleet: Fleet) -> list[Owed]:
    """From the first info read (what came before was never owed) to the last produced."""
    return [
        Owed(_device_id(i), w.info_next_seqs[0] if w.info_next_seqs else 0, w.core.produced)
        for i, (_, w) in enumerate(fleet.wearables)
    ]


async def _settled(soak: _Soak, fleet: Fleet, subscriber: Subscriber) -> bool:
    """Every owed window stored or reported lost, the outbox empty and all of it received."""
    view = await asyncio.to_thread(read_log, soak.db)
    verdict = account(
        _owed(fleet), view.stored, view.lost, view.outbox, subscriber.delivered.event_ids
    )
    depth = await asyncio.to_thread(outbox_depth, soak.db)
    return verdict.unexplained == 0 and depth == 0 and not verdict.alerts.undelivered


async def run_soak(options: SoakOptions, out: TextIO) -> SoakResult:
    """Run the soak (about ``minutes`` plus the drain) and return its records and account."""
    if options.devices < 1 or options.minutes <= 0 or options.speed <= 0:
        raise ValueError("devices, minutes and speed must be positive")
    if shutil.which("dbus-daemon") is None:
        raise GatewayError("dbus-daemon is not installed (apt-get install dbus)")
    await asyncio.to_thread(options.out.mkdir, parents=True, exist_ok=True)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="run-", dir=options.out))
    soak = _Soak(options, out, work)
    duration_s = options.minutes * 60.0
    plan = plan_faults(options, duration_s)
    soak.say(f"soak of {options.minutes:g} min, {options.devices} wearables at"
             f" {options.speed:g}x real time, seed {options.seed}; work dir {work}")  # fmt: skip
    for p in plan:
        on = f" on {_device_id(p.device)}" if p.kind in DEVICE_FAULTS else ""
        soak.say(f"  planned: {p.at_s:7.1f} s {p.kind}{on}")
    sim_minutes = options.minutes * options.speed
    shim = work / "bin"
    await asyncio.to_thread(install_bluetoothctl_shim, shim)
    config = work / "gatewayd.toml"
    broker = RestartableMosquitto(work / "broker")
    async with contextlib.AsyncExitStack() as stack:
        address = await stack.enter_async_context(PrivateBus())
        fake = await stack.enter_async_context(FakeBluez(address, report_interval=0.05,
                                                         seed=options.seed))  # fmt: skip
        fleet = await _build(fake, options, sim_minutes)
        await asyncio.to_thread(_pair, work / "state", fleet)
        await stack.enter_async_context(broker)
        await asyncio.to_thread(
            config.write_text, _config_text(broker.port, options.devices), "utf-8"
        )
        subscriber = await stack.enter_async_context(
            Subscriber(broker.host, broker.port, TOPIC_ROOT, GATEWAY_ID)
        )
        async with asyncio.timeout(30.0):
            await subscriber.subscribed.wait()
        env = _environ(address, shim)
        soak.t0 = time.time()
        await soak.start_gateway(env, config)
        stack.push_async_callback(_kill_all, soak)
        tasks = _Tasks()
        stack.push_async_callback(tasks.cancel_all)
        tasks.start(soak.sampler())
        for i, (device, wearable) in enumerate(fleet.wearables):
            tasks.start(_wearable(wearable, device, options.speed, i * options.stagger_s))
        faults = tasks.start(
            _run_faults(soak, plan, fleet, broker, lambda: soak.start_gateway(env, config))
        )
        # The soak proper: until every recording has ended.
        await _until_recordings_end(fleet, faults)
        soak.say("recordings ended; waiting for the faults in progress, then the drain")
        with contextlib.suppress(asyncio.CancelledError):
            await faults
        deadline = time.time() + DRAIN_LIMIT_S
        while time.time() < deadline and not await _settled(soak, fleet, subscriber):  # noqa: ASYNC110 - polled
            await asyncio.sleep(2.0)
        code = await soak.gateway.terminate()
        soak.say(f"gateway stopped (exit {code})")
        await asyncio.sleep(1.0)  # the last messages in flight to the subscriber
        result = await _result(soak, plan, fleet, subscriber)
        if code != 0:
            result.notes.append(f"the last gateway exited {code} on SIGTERM")
    return result


async def _until_recordings_end(fleet: Fleet, faults: asyncio.Task[None]) -> None:
    """Return once every wearable has produced its last window; a failed fault task raises."""
    while not all(w.core.finished for _, w in fleet.wearables):
        await asyncio.sleep(1.0)
        if faults.done() and not faults.cancelled() and (exc := faults.exception()) is not None:
            raise exc


async def _result(
    soak: _Soak, plan: list[PlannedFault], fleet: Fleet, subscriber: Subscriber
) -> SoakResult:
    """The account, from the emulator's, the event log's and the subscriber's records."""
    view = await asyncio.to_thread(read_log, soak.db)
    delivered = subscriber.delivered
    verdict = account(
        _owed(fleet), view.stored, view.lost, view.outbox, delivered.event_ids,
        received_telemetry=[(d, s) for d, s, _ in delivered.telemetry],
        faults=_fault_spans(soak),
        recorded_telemetry_drops=sum(g.run_log.telemetry_dropped for g in soak.gateways),
    )  # fmt: skip
    return SoakResult(
        options=soak.options, started_at=soak.t0, ended_at=time.time(), plan=plan,
        faults=soak.faults, samples=soak.samples, account=verdict,
        gateway_runs=len(soak.gateways),
        decode_errors_logged=sum(g.run_log.decode_errors for g in soak.gateways),
        corrupted_fragments=sum(_trigger(w).applied for _, w in fleet.wearables),
        work_dir=soak.work,
        produced={_device_id(i): w.core.produced for i, (_, w) in enumerate(fleet.wearables)},
    )  # fmt: skip


def _environ(address: str, shim: Path) -> dict[str, str]:
    import os  # noqa: PLC0415

    env = dict(os.environ)
    env[DBUS_SYSTEM_BUS_ADDRESS] = address
    env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    return env


def _fault_spans(soak: _Soak) -> list[FaultSpan]:
    spans = []
    for f in soak.faults:
        if f.kind in ("broker_restart", "gateway_kill"):
            spans.append(FaultSpan(f.kind, f.start - SETTLE_S, f.end + SETTLE_S))
    return spans


async def _wearable(wearable: VirtualWearable, device: Any, speed: float, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await wearable.run(device, speed)


async def _kill_all(soak: _Soak) -> None:
    for gw in soak.gateways:
        await gw.kill()


class _Tasks:
    """Background tasks of the soak, cancelled together at the end."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    async def cancel_all(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
