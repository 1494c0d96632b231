"""`gatewayd bench scale`: how many real-time wearables one gateway serves, and at what latency.

Three processes, as in production, plus this one:

- the emulator (`gatewayd emulate --bonded --stamps FILE`): a private D-Bus (its connections per
  user raised above N: bleak holds one per connected device, docs/running.md), the fake BlueZ and
  N virtual wearables in real time, staggered over the 2 s window hop as real ones are, spread
  over ceil(N / 20) adapters of 20 connection slots. They replay synthetic subjects, or with
  ``datasets`` real recordings (`--dataset ... --loop`: dealt round-robin, each wearable looping
  from its own window of its recording), so that the default policy offloads what it would on
  real wrists. It appends to FILE the CLOCK_MONOTONIC time at which each new message's first
  notification goes out;
- the gateway (`gatewayd run`), with those wearables paired (devices.json written here) and the
  offload policy of the point ([offload] tau_bits);
- the broker (a private mosquitto unless --mqtt-host is given);
- this process subscribes to every device's telemetry and stamps each message on arrival
  (``time.monotonic_ns``: the same clock in every process on the machine).

Latency is notify→publish: from the wearable's first notification of a window to the arrival at
a subscriber of the telemetry that carries the same device id and ``seq``. For each point (device
count x offload mix) it waits until every device is connected and publishing, measures for
``seconds``, lets the gateway drain, stops it, and reports p50/p95/p99 latency, windows/s, the
offload ratio seen, loss (windows sent in the interval and never published), and the CPU and RSS
of the gateway, the emulator, its dbus-daemon, the broker and this subscriber (from /proc,
gatewayd.bench.procstat): all share the machine's cores, so the gateway's share is the honest
figure, not the total. Gateway CPU is also given per device and per window, and per *offloaded*
window as the slope between two offload mixes at the same count, beside the bare model's own
CPU per window measured at the start of the run (batch 1, one thread, synthetic windows).

It finds the largest count with p99 ≤ 50 ms and ≤ 100 ms (and no loss), runs the gateway once
more there under cProfile, and prints where its main thread's time goes. Output (``out``):
scale.json, scale.md, latency.png, cpu.png (matplotlib: the ``bench`` extra) and profile.txt.
Timing is measured here, never asserted in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import math
import os
import pstats
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Final

import aiomqtt

from gatewayd.bench.procstat import ProcSampler, Usage, descendants, thread_cpu
from gatewayd.datasets import require_recordings
from gatewayd.emulator.runner import STAMPS_FLUSH_S
from gatewayd.emulator.virtual import parse_stamps, wearable_address
from gatewayd.errors import DatasetError
from gatewayd.link.registry import DeviceRegistry
from gatewayd.tables import format_table

__all__ = [
    "DEFAULT_DEVICES",
    "DEFAULT_OFFLOAD",
    "QUICK",
    "OffloadMix",
    "PointResult",
    "ScaleOptions",
    "ScaleReport",
    "Sessions",
    "bench_scale",
    "bus_connections_per_user",
    "find_sessions",
    "format_markdown",
    "parse_devices",
    "parse_offload",
    "percentile",
    "write_outputs",
]

GATEWAY_ID: Final = "bench-scale"
TOPIC_ROOT: Final = "gatewayd"
#: Connection slots per emulated adapter: the most `[ble] slots_per_adapter` allows.
SLOTS: Final = 20
DEFAULT_DEVICES: Final = (10, 50, 100, 300, 500)
#: The shipped policy, about half the windows (synthetic data's entropy is ~3.9 bits, so tau
#: 3.9 offloads about half of them), and every window.
DEFAULT_OFFLOAD: Final = "default,tau=3.9,all"
#: The latency budgets the report finds the largest device count for, ms.
BUDGETS_MS: Final = (50.0, 100.0)
#: Seconds a process may take to start (print its bus address, connect) or to stop.
PROCESS_LIMIT_S: Final = 60.0
#: Windows a device must publish after connecting before the interval starts (the ring's
#: resends of what it produced while not yet connected come first and are not measured).
SETTLE_WINDOWS: Final = 2
#: dbus-daemon's default max_connections_per_user (the system bus's and the emulator's bus's).
DBUS_CONNECTIONS_PER_USER: Final = 256
#: The emulator's bus allows this many connections per user beyond one per wearable (bleak's
#: BlueZ manager, the emulator's own, a margin): bleak holds one per connected device.
BUS_HEADROOM: Final = 64
#: Warm-up gives up when no more devices connected or settled for this long.
STALL_S: Final = 60.0


@dataclass(frozen=True)
class OffloadMix:
    """An offload policy the gateway writes to every wearable."""

    name: str
    #: [offload] tau_bits; None: the configuration's default.
    tau_bits: float | None

    def config_lines(self) -> str:
        """The [offload] section, or nothing for the default."""
        return "" if self.tau_bits is None else f"[offload]\ntau_bits = {self.tau_bits}\n"


def parse_offload(text: str) -> list[OffloadMix]:
    """``default`` (the shipped policy), ``all`` (tau 0: every window is offloaded) or
    ``tau=BITS``, comma-separated."""
    out = []
    for item in (i.strip() for i in text.split(",")):
        if item == "default":
            out.append(OffloadMix("default", None))
        elif item == "all":
            out.append(OffloadMix("all", 0.0))
        elif item.startswith("tau="):
            try:
                tau = float(item[4:])
            except ValueError:
                raise ValueError(f"offload {item!r}: tau must be a number of bits") from None
            if not 0 <= tau <= 16:
                raise ValueError(f"offload {item!r}: tau must be 0..16 bits")
            out.append(OffloadMix(item, tau))
        else:
            raise ValueError(f"offload {item!r}: expected default, all or tau=BITS")
    if not out:
        raise ValueError("no offload mix given")
    return out


def parse_devices(text: str) -> list[int]:
    """Comma-separated positive device counts, sorted, without repeats."""
    try:
        counts = sorted({int(i) for i in text.split(",") if i.strip()})
    except ValueError:
        raise ValueError(f"devices {text!r}: expected counts like 10,50,100") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"devices {text!r}: expected positive counts")
    return counts


@dataclass(frozen=True)
class Sessions:
    """What the emulated wearables replay: synthetic subjects, or the recordings under
    ``datasets`` (real ones, unless the emulator says they are synthetic: `sources`)."""

    datasets: tuple[Path, ...] = ()
    #: Recordings found under ``datasets`` (each point replays min(found, N) of them).
    recordings: int = 0
    #: The recordings' sources as the emulator loaded them ("bami", ..., "synthetic").
    sources: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``real``, or ``synthetic`` (the default, or recordings that are synthetic)."""
        synthetic = not self.datasets or set(self.sources) == {"synthetic"}
        return "synthetic" if synthetic else "real"

    def label(self) -> str:
        """For plots: ``synthetic sessions`` or ``real sessions: bami, troika``."""
        if self.kind == "synthetic":
            return "synthetic sessions"
        return f"real sessions: {', '.join(self.sources)}" if self.sources else "real sessions"

    def describe(self) -> str:
        """One sentence for the report."""
        if not self.datasets:
            return (
                "Sessions: synthetic (gatewayd.datasets.synthetic, a model of wrist PPG and motion,"
                " not a measurement); each wearable replays one of up to 4 subjects from its start."
            )
        where = ", ".join(str(d) for d in self.datasets)
        what = f"{self.kind} recordings" + (f" ({', '.join(self.sources)})" if self.sources else "")
        return (
            f"Sessions: {what} from {where} ({self.recordings} found), dealt"
            " round-robin to the wearables, each looping from its own window of its recording,"
            " worn for a minute before (`gatewayd emulate --dataset ... --loop`)."
        )

    def to_json(self) -> dict[str, Any]:
        """The sessions as JSON-ready data."""
        return {
            "kind": self.kind,
            "datasets": [str(d) for d in self.datasets],
            "recordings": self.recordings if self.datasets else None,
            "sources": list(self.sources),
            "replay": "looped, each wearable from its own window" if self.datasets else "once",
        }


def find_sessions(datasets: Sequence[Path]) -> Sessions:
    """Check that every dataset path holds recordings; ValueError (naming it) if not. Blocks."""
    found = 0
    for path in datasets:
        try:
            found += len(require_recordings(path))
        except DatasetError as exc:
            raise ValueError(f"--dataset {path}: {exc.message}") from None
    return Sessions(datasets=tuple(datasets), recordings=found)


@dataclass(frozen=True)
class ScaleOptions:
    """What to sweep and how long."""

    devices: tuple[int, ...] = DEFAULT_DEVICES
    offload: tuple[OffloadMix, ...] = tuple(parse_offload(DEFAULT_OFFLOAD))
    #: Measured seconds per point.
    seconds: float = 60.0
    #: Seconds of the profiled run at the chosen point (0: no profile).
    profile_seconds: float = 30.0
    out: Path = Path("bench-results/scale")
    models_dir: Path | None = None
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    seed: int = 1
    #: Recordings the wearables replay (files or folders); none: synthetic subjects.
    datasets: tuple[Path, ...] = ()
    #: Longest wait for every device to connect and publish, per point (scaled up with N).
    warmup_limit_s: float = 120.0
    #: Longest wait for the last windows after the interval.
    drain_limit_s: float = 20.0
    #: Niceness of the emulator (0: the same priority as the gateway). Real wearables compute
    #: on their own MCUs; a positive value lets the gateway go first on the shared cores.
    emulator_nice: int = 0
    #: Adapters of SLOTS slots each, emulated and configured; None: enough for every wearable.
    #: Fewer leave the wearables beyond their slots advertising, waiting for one.
    adapters: int | None = None


#: `--quick` (what `make bench` runs): a reduced sweep of a few minutes.
QUICK: Final = ScaleOptions(
    devices=(5, 20, 50), offload=tuple(parse_offload("default,all")), seconds=20.0,
    profile_seconds=15.0,
)  # fmt: skip


# --- figures -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class PointResult:
    """One device count under one offload mix."""

    devices: int
    offload: str
    tau_bits: float | None
    seconds: float
    connected: int
    warmup_s: float
    sent: int
    received: int
    offloaded: int
    lost: int
    latency_ms: dict[str, float]
    processes: dict[str, Usage]
    #: The gateway's CPU seconds by thread in the interval: its main thread (the event loop)
    #: and the others (inference executor, SQLite, ONNX Runtime, bleak has none).
    gateway_threads: dict[str, float]
    notes: list[str] = field(default_factory=list)
    #: The recordings' sources, as the emulator said it loaded them ("synthetic", "bami", ...).
    sources: tuple[str, ...] = ()

    @property
    def windows_per_s(self) -> float:
        """Windows published per second in the interval."""
        return self.received / self.seconds if self.seconds > 0 else math.nan

    @property
    def offload_ratio(self) -> float:
        """Share of the windows received that were offloaded."""
        return self.offloaded / self.received if self.received else math.nan

    def cores(self, name: str) -> float:
        """Mean cores a process used in the interval (NaN if it was not sampled)."""
        usage = self.processes.get(name)
        return usage.cores if usage is not None else math.nan

    @property
    def gateway_ms_per_device_s(self) -> float:
        """Gateway CPU ms per device per second."""
        return 1e3 * self.cores("gateway") / self.devices

    @property
    def gateway_ms_per_window(self) -> float:
        """Gateway CPU ms per window published."""
        usage = self.processes.get("gateway")
        return 1e3 * usage.cpu_s / self.received if usage and self.received else math.nan

    def to_json(self) -> dict[str, Any]:
        """The point as JSON-ready data."""
        return {
            "devices": self.devices,
            "offload": self.offload,
            "tau_bits": self.tau_bits,
            "seconds": round(self.seconds, 3),
            "connected": self.connected,
            "warmup_s": round(self.warmup_s, 1),
            "windows_sent": self.sent,
            "windows_received": self.received,
            "windows_offloaded": self.offloaded,
            "offload_ratio": _round(self.offload_ratio, 4),
            "lost": self.lost,
            "windows_per_s": _round(self.windows_per_s, 2),
            "latency_ms": {k: _round(v, 2) for k, v in self.latency_ms.items()},
            "gateway_cpu_ms_per_device_s": _round(self.gateway_ms_per_device_s, 3),
            "gateway_cpu_ms_per_window": _round(self.gateway_ms_per_window, 3),
            "processes": {name: u.to_json() for name, u in self.processes.items()},
            "gateway_threads_cpu_s": {k: round(v, 2) for k, v in self.gateway_threads.items()},
            "sources": list(self.sources),
            "notes": list(self.notes),
        }


def _round(value: float, digits: int) -> float | None:
    return None if not math.isfinite(value) else round(value, digits)


@dataclass
class ScaleReport:
    """The whole sweep."""

    points: list[PointResult]
    broker: str
    environment: dict[str, str]
    #: The bare gateway model on synthetic windows: CPU ms per window (batch 1, one thread),
    #: and preprocessing alone.
    model: dict[str, Any]
    #: Largest device count per budget (ms) and mix, with no loss; None if none met it.
    largest: dict[str, dict[str, int | None]]
    #: Marginal gateway CPU per offloaded window, ms, per device count: the slope between the
    #: lightest and heaviest mix at that count.
    offloaded_window_ms: dict[int, float]
    profile: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    sessions: Sessions = field(default_factory=Sessions)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "broker": self.broker,
            "environment": self.environment,
            "sessions": self.sessions.to_json(),
            "model": self.model,
            "points": [p.to_json() for p in self.points],
            "largest_devices": self.largest,
            "gateway_cpu_ms_per_offloaded_window": {
                str(n): _round(v, 3) for n, v in self.offloaded_window_ms.items()
            },
            "profile": self.profile,
            "notes": list(self.notes),
        }


def largest_within(points: Iterable[PointResult], budget_ms: float) -> int | None:
    """The largest device count whose p99 is within ``budget_ms`` with every device connected
    and nothing lost (counts are tried in order: the first to fail ends the search)."""
    best = None
    for p in sorted(points, key=lambda p: p.devices):
        p99 = p.latency_ms.get("p99", math.nan)
        if not (p99 <= budget_ms and p.lost == 0 and p.connected == p.devices):
            break
        best = p.devices
    return best


def offloaded_window_cost(points: Sequence[PointResult]) -> dict[int, float]:
    """Gateway CPU per extra offloaded window, ms: at each count, between the mixes with the
    fewest and the most offloaded windows per second (needs two mixes that differ)."""
    out: dict[int, float] = {}
    for n in sorted({p.devices for p in points}):
        at = [p for p in points if p.devices == n and p.seconds > 0]
        if len(at) < 2:
            continue
        low = min(at, key=lambda p: p.offloaded / p.seconds)
        high = max(at, key=lambda p: p.offloaded / p.seconds)
        extra = high.offloaded / high.seconds - low.offloaded / low.seconds
        if extra <= 0:
            continue
        out[n] = 1e3 * (high.cores("gateway") - low.cores("gateway")) / extra
    return out


# --- processes -----------------------------------------------------------------------------------


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _find_named(parent: int, name: str) -> int | None:
    """A descendant of ``parent`` whose command name is ``name``. Blocks."""
    return next((pid for pid in descendants(parent) if _comm(pid) == name), None)


async def stop_process(
    process: asyncio.subprocess.Process, limit_s: float = PROCESS_LIMIT_S
) -> int:
    """SIGTERM, SIGKILL after ``limit_s``; the exit code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(limit_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


#: The emulator's first line names what it replays: "... from 16 bami recordings ...".
_REPLAYED = re.compile(r" from \d+ ([\w-]+(?:, [\w-]+)*) recordings")


async def _read_env(path: Path, process: asyncio.subprocess.Process) -> dict[str, str]:
    """The emulator's DBUS_SYSTEM_BUS_ADDRESS and PATH, from the lines it prints at start, and
    the sources of the recordings it replays (SOURCES, comma-separated) when it names them."""
    async with asyncio.timeout(PROCESS_LIMIT_S):
        while True:
            text = await asyncio.to_thread(path.read_text, "utf-8")
            env: dict[str, str] = {}
            for raw in text.splitlines():
                line = raw.strip()
                if line.startswith("export DBUS_SYSTEM_BUS_ADDRESS="):
                    env["DBUS_SYSTEM_BUS_ADDRESS"] = line.split("=", 1)[1].strip("'")
                elif line.startswith('export PATH="'):
                    env["SHIM"] = line.split('"')[1].split(":", 1)[0]
                elif line.startswith("emulating ") and (m := _REPLAYED.search(line)):
                    env["SOURCES"] = m.group(1)
            if {"DBUS_SYSTEM_BUS_ADDRESS", "SHIM"} <= env.keys():
                return env
            if process.returncode is not None:
                raise RuntimeError(f"the emulator exited ({process.returncode}):\n{text[-2000:]}")
            await asyncio.sleep(0.1)


@dataclass
class Received:
    """What the subscriber saw: first arrival (monotonic ns, offloaded) by (device, seq)."""

    telemetry: dict[tuple[str, int], tuple[int, bool]] = field(default_factory=dict)
    per_device: dict[str, int] = field(default_factory=dict)
    connected: set[str] = field(default_factory=set)
    #: The first telemetry payload of each (device, seq), when not None (keep_payloads).
    payloads: dict[tuple[str, int], dict[str, Any]] | None = None

    @classmethod
    def keep_payloads(cls) -> Received:
        """A record that also keeps each window's payload (seq, hr_bpm, activity, ...)."""
        return cls(payloads={})


async def subscribe(
    host: str, port: int, received: Received, ready: asyncio.Event, client_id: str
) -> None:
    """Subscribe to every device's telemetry and state and record them in ``received`` (each
    telemetry stamped with ``time.monotonic_ns`` on arrival); set ``ready`` once subscribed."""
    base = f"{TOPIC_ROOT}/{GATEWAY_ID}/devices"
    async with aiomqtt.Client(
        host, port, identifier=client_id, clean_session=True,
        protocol=aiomqtt.ProtocolVersion.V311, max_queued_incoming_messages=0,
    ) as client:  # fmt: skip
        await client.subscribe(f"{base}/+/telemetry", qos=0)
        await client.subscribe(f"{base}/+/state", qos=0)
        ready.set()
        async for message in client.messages:
            now = time.monotonic_ns()
            payload = message.payload
            topic = str(message.topic)
            device = topic.rsplit("/", 2)[-2]
            try:
                body = json.loads(payload)
            except ValueError:
                continue
            if topic.endswith("/telemetry"):
                key = (device, int(body.get("seq", -1)))
                if key not in received.telemetry:
                    received.telemetry[key] = (now, bool(body.get("offloaded")))
                    received.per_device[device] = received.per_device.get(device, 0) + 1
                    if received.payloads is not None:
                        received.payloads[key] = body
            elif body.get("connected"):
                received.connected.add(device)
            else:
                received.connected.discard(device)


def device_id(index: int) -> str:
    """The device id (its MQTT topic) of wearable ``index`` (0-based): w0001, ..."""
    return f"w{index + 1:04d}"


def adapters_for(n: int, adapters: int | None = None) -> int:
    """How many adapters of SLOTS slots the emulator and the gateway get for ``n`` wearables:
    ``adapters``, or by default enough for every one."""
    return adapters if adapters is not None else math.ceil(n / SLOTS)


def write_config(
    directory: Path, n: int, mix: OffloadMix, broker: tuple[str, int], adapters: int | None = None
) -> Path:
    """The gateway's configuration in ``directory`` for ``n`` wearables (paired: devices.json in
    its state folder, device ids `device_id`) publishing to ``broker`` under ``mix``, through
    `adapters_for` adapters. Blocks."""
    names = ", ".join(f'"hci{i}"' for i in range(adapters_for(n, adapters)))
    path = directory / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "{directory / "state"}"\n'
        f"[ble]\nadapters = [{names}]\nslots_per_adapter = {SLOTS}\n"
        f'[mqtt]\nhost = "{broker[0]}"\nport = {broker[1]}\n'
        f'topic_root = "{TOPIC_ROOT}"\n' + mix.config_lines(),
        encoding="utf-8",
    )
    registry = DeviceRegistry.in_state_dir(directory / "state")
    for i in range(n):
        registry.add(wearable_address(i + 1), "wearable", f"gw-wearable-{i + 1:02d}", device_id(i))
    return path


@dataclass
class _Run:
    """One run of emulator + gateway: the processes and what was seen."""

    directory: Path
    emulator: asyncio.subprocess.Process
    gateway: asyncio.subprocess.Process
    received: Received
    sampler: ProcSampler


async def poll(condition: Callable[[], bool], limit_s: float, interval_s: float = 0.2) -> bool:
    """Wait until ``condition()`` or ``limit_s``; whether it held."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


def _python() -> list[str]:
    return [sys.executable]


async def _start(
    n: int, mix: OffloadMix, options: ScaleOptions, broker: tuple[str, int], directory: Path,
    *, profile_to: Path | None = None,
) -> tuple[asyncio.subprocess.Process, asyncio.subprocess.Process, dict[str, str]]:  # fmt: skip
    """Start the emulator, then the gateway pointed at it."""
    config = await asyncio.to_thread(write_config, directory, n, mix, broker, options.adapters)
    minutes = (options.warmup_limit_s + n * 0.5 + options.seconds + options.drain_limit_s) / 60
    # Real recordings loop (they may be shorter than the run); synthetic ones are made long enough.
    sessions = (
        [a for d in options.datasets for a in ("--dataset", str(d))] + ["--loop"]
        if options.datasets
        else ["--minutes", f"{minutes + 1:.2f}"]
    )
    return await start_processes(
        n, config, directory, [*sessions, "--seed", str(options.seed)],
        models_dir=options.models_dir, profile_to=profile_to, nice=options.emulator_nice,
        adapters=options.adapters,
    )  # fmt: skip


async def start_processes(
    n: int, config: Path, directory: Path, sessions: Sequence[str], *,
    models_dir: Path | None = None, profile_to: Path | None = None, nice: int = 0,
    adapters: int | None = None,
) -> tuple[asyncio.subprocess.Process, asyncio.subprocess.Process, dict[str, str]]:  # fmt: skip
    """Start `gatewayd emulate` with ``n`` bonded wearables (``sessions``: what they replay and
    how, e.g. ``--dataset PATH --loop``), stamping sends to ``directory``/stamps.txt, then
    `gatewayd run --config config` pointed at it; (emulator, gateway, what the emulator printed:
    `_read_env`). Its output goes to emulator.txt, the gateway's to gateway.log. ``nice`` > 0
    starts the emulator (and its bus) under `nice -n`; ``adapters``: `adapters_for`."""
    emulator_out = directory / "emulator.txt"
    models = ["--models-dir", str(models_dir)] if models_dir else []
    niced = ["nice", "-n", str(nice)] if nice else []
    with emulator_out.open("w", encoding="utf-8") as out:
        emulator = await asyncio.create_subprocess_exec(
            *niced, *_python(), "-m", "gatewayd", "emulate", "--devices", str(n),
            "--adapters", str(adapters_for(n, adapters)), "--slots", str(SLOTS), "--bonded",
            "--stamps", str(directory / "stamps.txt"), *sessions, *models,
            "--bus-connections-per-user", str(bus_connections_per_user(n)),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        found = await _read_env(emulator_out, emulator)
        env = dict(os.environ)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = found["DBUS_SYSTEM_BUS_ADDRESS"]
        env["PATH"] = f"{found['SHIM']}{os.pathsep}{env.get('PATH', '')}"
        # Profiled: cProfile switched on and off by signals around the interval (profiled.py).
        program = ["gatewayd.bench.profiled", str(profile_to)] if profile_to else ["gatewayd"]
        with (directory / "gateway.log").open("w", encoding="utf-8") as log:
            gateway = await asyncio.create_subprocess_exec(
                *_python(), "-m", *program, "run", "--config", str(config),
                "--log-format", "json", "--log-level", "warning", *models,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
    except BaseException:  # a failed start, or SIGTERM meanwhile: no emulator left behind
        await stop_process(emulator)
        raise
    return emulator, gateway, found


async def _warm_up(run: _Run, n: int, limit_s: float) -> bool:
    """Until every device is connected and has published SETTLE_WINDOWS windows; False after
    ``limit_s``, or once no more devices have come in for STALL_S (a limit was hit)."""
    received = run.received
    progress = (-1, -1)
    moved = time.monotonic()

    def ready() -> bool:
        nonlocal progress, moved
        if run.gateway.returncode is not None or run.emulator.returncode is not None:
            raise RuntimeError(
                f"a process exited early (gateway {run.gateway.returncode}, emulator"
                f" {run.emulator.returncode}); see {run.directory}"
            )
        settled = sum(received.per_device.get(device_id(i), 0) >= SETTLE_WINDOWS for i in range(n))
        now = (len(received.connected), settled)
        if now != progress:
            progress, moved = now, time.monotonic()
        return (len(received.connected) >= n and settled >= n) or (
            time.monotonic() - moved > STALL_S
        )

    return await poll(ready, limit_s) and progress[1] >= n


def _latencies(
    stamps: Sequence[tuple[str, int, int]], received: Received, n: int, start_ns: int, end_ns: int
) -> tuple[list[float], int, int, int]:
    """(latencies ms, sent, received, offloaded) of the windows first sent in [start, end]."""
    sent = offloaded = 0
    latencies = []
    for _, _, latency_ms, got in matched(stamps, received, n, start_ns, end_ns):
        sent += 1
        if latency_ms is not None:
            latencies.append(latency_ms)
            offloaded += got
    return latencies, sent, len(latencies), offloaded


def matched(
    stamps: Sequence[tuple[str, int, int]],
    received: Received,
    n: int,
    start_ns: int = 0,
    end_ns: int = 2**63,
) -> Iterator[tuple[str, int, float | None, bool]]:
    """Each window of wearables 1..``n`` first sent in [start, end]: (device id, seq,
    notify -> publish latency in ms or None if never published, offloaded)."""
    ids = {wearable_address(i + 1): device_id(i) for i in range(n)}
    for address, seq, t_ns in stamps:
        device = ids.get(address)
        if device is None or not start_ns <= t_ns <= end_ns:
            continue
        got = received.telemetry.get((device, seq))
        if got is None:
            yield device, seq, None, False
        else:
            yield device, seq, (got[0] - t_ns) / 1e6, got[1]


async def drain(
    stamps: Path, received: Received, n: int, span: tuple[int, int], limit_s: float
) -> None:
    """Until every window first sent in ``span`` has arrived (stamps are flushed every 0.5 s)
    or ``limit_s``: the rest counts as lost."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(STAMPS_FLUSH_S)
        text = await asyncio.to_thread(stamps.read_text, "ascii")
        _, sent, got, _ = _latencies(parse_stamps(text), received, n, *span)
        if got >= sent:
            return


def bus_connections_per_user(n: int) -> int:
    """max_connections_per_user of the emulator's bus for ``n`` wearables: the system bus's,
    raised so that the gateway and the emulator (the same user) can hold all ``n``."""
    return max(DBUS_CONNECTIONS_PER_USER, n + BUS_HEADROOM)


def point_notes(
    n: int, connected: int, all_in: bool, gateway_code: int, emulator_code: int
) -> list[str]:
    """What went wrong in a point's run, for its notes."""
    notes = []
    if gateway_code not in (0, -signal.SIGTERM):
        notes.append(f"gateway exit code {gateway_code}")
    if emulator_code != 0:
        notes.append(f"emulator exit code {emulator_code}")
    if not all_in:
        notes.append(f"only {connected} of {n} devices connected when measured")
        limit = bus_connections_per_user(n)
        if connected >= limit - 10:
            notes.append(
                "bleak opens one D-Bus connection per connected device, and the emulator's bus"
                f" allowed {limit} per user (max_connections_per_user)"
            )
    return notes


@dataclass
class RunFolder:
    """A run's folder (configuration, logs, stamps) and whether to keep it."""

    path: Path
    keep: bool = False


@contextlib.asynccontextmanager
async def run_folder(prefix: str) -> AsyncIterator[RunFolder]:
    """A new temporary folder for one run, removed at the end unless the block set ``keep`` or
    raised (its logs say why)."""
    folder = RunFolder(Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=prefix)))
    try:
        yield folder
    except BaseException:
        folder.keep = True
        raise
    finally:
        if not folder.keep:
            await asyncio.to_thread(shutil.rmtree, folder.path, ignore_errors=True)


async def run_point(  # noqa: PLR0915 - one run, told in order
    n: int,
    mix: OffloadMix,
    options: ScaleOptions,
    broker: tuple[str, int],
    *,
    seconds: float,
    profile_to: Path | None = None,
    say: Callable[[str], None] = lambda _t: None,
) -> PointResult:
    """Measure ``n`` wearables under ``mix`` for ``seconds`` (optionally the gateway profiled)."""
    received = Received()
    async with run_folder("gatewayd-scale-") as folder:
        directory = folder.path
        emulator, gateway, found = await _start(
            n, mix, options, broker, directory, profile_to=profile_to
        )
        subscriber: asyncio.Task[None] | None = None
        # From here on the processes are stopped however this ends (SIGTERM included: it
        # cancels this task, maybe in one of the awaits below).
        try:
            sampler = ProcSampler(
                {"gateway": gateway.pid, "emulator": emulator.pid, "bench": os.getpid()},
                interval_s=1.0,
            )
            bus = await asyncio.to_thread(_find_named, emulator.pid, "dbus-daemon")
            if bus is not None:
                sampler.watch("dbus", bus)
            mosquitto = await asyncio.to_thread(_find_named, os.getpid(), "mosquitto")
            if mosquitto is not None:
                sampler.watch("broker", mosquitto)
            ready = asyncio.Event()
            subscriber = asyncio.create_task(
                subscribe(broker[0], broker[1], received, ready, f"gatewayd-scale-{os.getpid()}")
            )
            run = _Run(directory, emulator, gateway, received, sampler)
            async with sampler:
                await asyncio.wait_for(ready.wait(), PROCESS_LIMIT_S)
                t0 = time.monotonic()
                limit = options.warmup_limit_s + 0.5 * n
                all_in = await _warm_up(run, n, limit)
                warmup = time.monotonic() - t0
                if not all_in:
                    say(f"  only {len(received.connected)} of {n} connected after {limit:.0f} s")
                threads_before = await asyncio.to_thread(thread_cpu, gateway.pid)
                if profile_to is not None:
                    gateway.send_signal(signal.SIGUSR1)
                start = sampler.mark()
                start_ns = time.monotonic_ns()
                await asyncio.sleep(seconds)
                end_ns = time.monotonic_ns()
                end = sampler.mark()
                if profile_to is not None:
                    gateway.send_signal(signal.SIGUSR2)
                    await poll(profile_to.is_file, PROCESS_LIMIT_S)
                threads_after = await asyncio.to_thread(thread_cpu, gateway.pid)
                await sampler.sample_now()
                connected = len(received.connected)
                await drain(directory / "stamps.txt", received, n, (start_ns, end_ns),
                             options.drain_limit_s)  # fmt: skip
        finally:
            gateway_code = await stop_process(gateway)
            emulator_code = await stop_process(emulator)
            if subscriber is not None:
                subscriber.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await subscriber
        text = await asyncio.to_thread((directory / "stamps.txt").read_text, "ascii")
        stamps = parse_stamps(text)
        latencies, sent, got, offloaded = _latencies(stamps, received, n, start_ns, end_ns)
        notes = point_notes(n, connected, all_in, gateway_code, emulator_code)
        processes = {
            name: sampler.usage(name, since=start, until=end + 0.5) for name in sampler.names
        }
        main = threads_after.get("main", 0.0) - threads_before.get("main", 0.0)
        rest = sum(threads_after.values()) - sum(threads_before.values()) - main
        folder.keep = bool(notes)
        return PointResult(
            devices=n,
            offload=mix.name,
            tau_bits=mix.tau_bits,
            seconds=(end_ns - start_ns) / 1e9,
            connected=connected,
            warmup_s=warmup,
            sent=sent,
            received=got,
            offloaded=offloaded,
            lost=sent - got,
            latency_ms={
                "p50": percentile(latencies, 50),
                "p95": percentile(latencies, 95),
                "p99": percentile(latencies, 99),
                "max": max(latencies, default=math.nan),
            },
            processes=processes,
            gateway_threads={"main": main, "other": rest},
            notes=notes + ([f"logs kept in {directory}"] if folder.keep else []),
            sources=tuple(found["SOURCES"].split(", ")) if "SOURCES" in found else (),
        )


# --- the bare model ------------------------------------------------------------------------------


def measure_model(models_dir: Path | None, windows: int = 200) -> dict[str, Any]:
    """The configured gateway model alone on synthetic windows: CPU ms per window. Blocks."""
    from gatewayd.bench.pipeline import find_model, prepare_workload  # noqa: PLC0415
    from gatewayd.config import default_config  # noqa: PLC0415
    from gatewayd.inference.analysis import window_input  # noqa: PLC0415
    from gatewayd.inference.session import ModelSession  # noqa: PLC0415

    model, problem = find_model(default_config(), models_dir)
    if model is None:
        return {"model_id": None, "problem": problem}
    work = prepare_workload(windows, 4, model)
    session = ModelSession(model.card, model.path, 1)
    cpu = time.process_time()
    inputs = [window_input(w, session.card)[None] for _, w in work.windows]
    preprocess = time.process_time() - cpu
    for x in inputs[:20]:
        session.run_logits(x)
    cpu = time.process_time()
    for x in inputs:
        session.run_logits(x)
    infer = time.process_time() - cpu
    n = len(inputs)
    return {
        "model_id": model.model_id,
        "windows": n,
        "cpu_ms_per_window": round(1e3 * infer / n, 3),
        "preprocess_cpu_ms_per_window": round(1e3 * preprocess / n, 3),
    }


# --- the sweep -----------------------------------------------------------------------------------


#: Profile entries that are the event loop itself, not work: left out of the tops.
_PROFILE_FRAMEWORK: Final = ("selectors.py", "base_events.py", "runners.py", "events.py")


def profile_summary(path: Path, top: int = 20) -> dict[str, Any]:
    """Top functions of a cProfile dump by own and by cumulative time (main thread only).

    Waiting in epoll is idle time, reported apart; the event loop's own frames are left out of
    the tops (they wrap everything).
    """
    stats = pstats.Stats(str(path), stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = sum(e[2] for (_, _, name), e in raw.items() if "poll' of 'select." in name)
    busy = sum(e[2] for e in raw.values()) - idle

    def work(key: tuple[str, int, str]) -> bool:
        file, _, name = key
        return (
            "poll' of 'select." not in name
            and not any(f in file for f in _PROFILE_FRAMEWORK)
            and name not in {"<module>", "main", "cmd_run", "run_until_signalled"}
        )

    def rows(index: int) -> list[dict[str, Any]]:
        chosen = sorted(
            ((k, e) for k, e in raw.items() if work(k)), key=lambda kv: kv[1][index], reverse=True
        )[:top]
        return [
            {
                "function": f"{'/'.join(Path(file).parts[-2:])}:{line}({name})",
                "calls": entry[1],
                "own_s": round(entry[2], 3),
                "cumulative_s": round(entry[3], 3),
            }
            for (file, line, name), entry in chosen
        ]

    return {
        "main_thread_busy_s": round(busy, 3),
        "main_thread_idle_s": round(idle, 3),
        "by_own": rows(2),
        "by_cumulative": rows(3),
    }


def run_notes(options: ScaleOptions) -> list[str]:
    """What the report says of the whole run's setup."""
    notes = [
        f"the emulator's bus allowed max({DBUS_CONNECTIONS_PER_USER}, N + {BUS_HEADROOM})"
        " connections per user for N wearables (max_connections_per_user; each connected"
        f" wearable holds one): a stock system bus allows {DBUS_CONNECTIONS_PER_USER}, about"
        f" {DBUS_CONNECTIONS_PER_USER - 1} connected wearables per gateway unless raised"
        " (docs/running.md)"
    ]
    if options.adapters is not None:
        notes.append(
            f"{options.adapters} adapter(s) of {SLOTS} slots: at most"
            f" {options.adapters * SLOTS} wearables connected, the rest advertising and waiting"
            " for a slot"
        )
    if options.emulator_nice:
        notes.append(
            f"the emulator ran at nice {options.emulator_nice}: on the shared cores the gateway"
            " went first (real wearables compute on their own MCUs)"
        )
    return notes


async def bench_scale(
    options: ScaleOptions, *, say: Callable[[str], None] = lambda _t: None
) -> ScaleReport:
    """Run the sweep and the profile; return the report (the caller writes the files)."""
    from gatewayd.bench.models import bench_environment  # noqa: PLC0415
    from gatewayd.bench.pipeline import bench_broker  # noqa: PLC0415

    sessions = await asyncio.to_thread(find_sessions, options.datasets)
    say(sessions.describe())
    say("timing the bare gateway model")
    model = await asyncio.to_thread(measure_model, options.models_dir)
    points: list[PointResult] = []
    notes = run_notes(options)
    async with bench_broker(options.mqtt_host, options.mqtt_port) as broker:
        say(broker.note)
        address = (broker.host, broker.port)
        for mix in options.offload:
            for n in options.devices:
                say(f"{n} wearables, offload {mix.name}: measuring {options.seconds:g} s")
                try:
                    point = await run_point(
                        n, mix, options, address, seconds=options.seconds, say=say
                    )
                except (RuntimeError, TimeoutError, OSError) as exc:
                    notes.append(f"{n} wearables, offload {mix.name}: failed: {exc}")
                    say(f"  failed: {exc}")
                    break
                points.append(point)
                say(
                    f"  p50 {point.latency_ms['p50']:.1f} ms, p99 {point.latency_ms['p99']:.1f}"
                    f" ms, {point.windows_per_s:.1f} windows/s, lost {point.lost}, gateway"
                    f" {point.cores('gateway'):.2f} cores"
                )
        largest = {
            f"p99<={budget:g}ms": {
                mix.name: largest_within([p for p in points if p.offload == mix.name], budget)
                for mix in options.offload
            }
            for budget in BUDGETS_MS
        }
        profile: dict[str, Any] = {}
        if options.profile_seconds > 0 and points:
            first = options.offload[0]
            # The largest count within the tightest budget, else the next, else the smallest.
            n = min(options.devices)
            for by_mix in largest.values():
                if (found := by_mix.get(first.name)) is not None:
                    n = found
                    break
            say(f"profiling the gateway at {n} wearables, offload {first.name}")
            directory = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="gatewayd-prof-"))
            try:
                dump = directory / "gateway.prof"
                point = await run_point(
                    n, first, options, address, seconds=options.profile_seconds,
                    profile_to=dump, say=say,
                )  # fmt: skip
                if dump.is_file():
                    profile = await asyncio.to_thread(profile_summary, dump)
                    profile.update(
                        devices=n,
                        offload=first.name,
                        seconds=round(point.seconds, 1),
                        threads_cpu_s={k: round(v, 2) for k, v in point.gateway_threads.items()},
                        latency_ms_under_profiler={
                            k: _round(v, 2) for k, v in point.latency_ms.items()
                        },
                    )
                else:
                    notes.append("the profiled gateway wrote no profile")
            finally:
                await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        broker_name = f"{broker.kind} {broker.host}:{broker.port}"
        if broker.kind == "in-process":
            notes.append("in-process broker: its CPU is counted in 'bench'")
    environment = await asyncio.to_thread(bench_environment)
    replayed = sorted({s for p in points for s in p.sources})
    return ScaleReport(
        points=points,
        broker=broker_name,
        environment=environment,
        model=model,
        largest=largest,
        offloaded_window_ms=offloaded_window_cost(points),
        profile=profile,
        notes=notes,
        sessions=replace(sessions, sources=tuple(replayed)),
    )


# --- output --------------------------------------------------------------------------------------

_PROCESS_ORDER: Final = ("gateway", "emulator", "dbus", "broker", "bench")


def _f(value: float, fmt: str = "{:.1f}") -> str:
    return "-" if not math.isfinite(value) else fmt.format(value)


def format_markdown(report: ScaleReport) -> str:
    """The report as Markdown: the table, the thresholds, the model and the profile."""
    env = report.environment
    lines = [
        "# gatewayd bench scale",
        "",
        f"{env.get('cpu', '?')} ({env.get('cpus', '?')} CPUs); broker {report.broker};"
        " real-time wearables, staggered; latency = wearable notify -> subscriber receives.",
        "CPU columns are cores (1.0 = one core busy); every process shares the same machine.",
        "",
        report.sessions.describe(),
        "",
    ]
    head = [
        "devices", "offload", "ratio", "win/s", "p50 ms", "p95 ms", "p99 ms", "lost",
        "gw cores", "gw ms/dev/s", "gw ms/win", "gw RSS MB", "emu cores", "dbus cores",
        "broker cores",
    ]  # fmt: skip
    rows = []
    for p in report.points:
        gw = p.processes.get("gateway")
        rows.append(
            [
                str(p.devices), p.offload, _f(p.offload_ratio, "{:.2f}"), _f(p.windows_per_s),
                _f(p.latency_ms["p50"]), _f(p.latency_ms["p95"]), _f(p.latency_ms["p99"]),
                str(p.lost), _f(p.cores("gateway"), "{:.2f}"),
                _f(p.gateway_ms_per_device_s, "{:.2f}"), _f(p.gateway_ms_per_window, "{:.2f}"),
                _f(gw.rss_mb if gw else math.nan, "{:.0f}"), _f(p.cores("emulator"), "{:.2f}"),
                _f(p.cores("dbus"), "{:.2f}"), _f(p.cores("broker"), "{:.2f}"),
            ]
        )  # fmt: skip
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    noted = [p for p in report.points if p.notes]
    if noted:
        lines.append("")
        lines += [
            f"- {p.devices} wearables, offload {p.offload}: {'; '.join(p.notes)}" for p in noted
        ]
    lines += ["", "Largest device count with no loss (counts tried in order):", ""]
    for budget, by_mix in report.largest.items():
        for mix, n in by_mix.items():
            lines.append(f"- {budget}, offload {mix}: {n if n is not None else 'none'}")
    m = report.model
    lines += ["", "## Model and offloaded windows", ""]
    if m.get("model_id"):
        lines.append(
            f"Bare model {m['model_id']} (batch 1, one thread, synthetic windows):"
            f" {m['cpu_ms_per_window']} ms CPU per window, preprocessing"
            f" {m['preprocess_cpu_ms_per_window']} ms."
        )
    else:
        lines.append(f"No gateway model measured: {m.get('problem')}")
    for n, ms in report.offloaded_window_ms.items():
        ratio = ms / m["cpu_ms_per_window"] if m.get("cpu_ms_per_window") else math.nan
        lines.append(
            f"- {n} devices: gateway CPU per extra offloaded window {_f(ms, '{:.2f}')} ms"
            f" ({_f(ratio, '{:.1f}')}x the model)"
        )
    prof = report.profile
    if prof:
        lines += [
            "",
            f"## Where the gateway's time goes ({prof['devices']} devices, offload"
            f" {prof['offload']}, {prof['seconds']} s under cProfile)",
            "",
            f"Threads (CPU s in the measured interval): {prof['threads_cpu_s']}; 'main' is the"
            " event loop, 'other' the inference executor, SQLite and ONNX Runtime threads."
            " cProfile sees the main thread only, over the measured interval:"
            f" busy {prof['main_thread_busy_s']} s, idle in epoll {prof['main_thread_idle_s']}"
            " s (cProfile slows what it sees). The event loop's own frames are left out.",
            "",
            "```",
            format_table(
                ["FUNCTION (by own time)", "CALLS", "OWN s", "CUM s"],
                [
                    [r["function"], str(r["calls"]), str(r["own_s"]), str(r["cumulative_s"])]
                    for r in prof["by_own"]
                ],
            ),
            "",
            format_table(
                ["FUNCTION (by cumulative time)", "CALLS", "OWN s", "CUM s"],
                [
                    [r["function"], str(r["calls"]), str(r["own_s"]), str(r["cumulative_s"])]
                    for r in prof["by_cumulative"]
                ],
            ),
            "```",
        ]
    lines += [f"\nNote: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


_DASHES: Final = ("-", "--", ":", "-.")


def _latency_of(q: str, p: PointResult) -> float:
    return p.latency_ms[q]


def _cores_of(name: str, p: PointResult) -> float:
    return p.cores(name)


def plot(report: ScaleReport, out: Path) -> list[Path]:
    """latency.png and cpu.png against device count, one line per mix. Needs matplotlib."""
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    by_mix: dict[str, list[PointResult]] = {}
    for p in sorted(report.points, key=lambda p: p.devices):
        by_mix.setdefault(p.offload, []).append(p)
    figures = {
        "latency.png": ("notify -> publish latency, ms", "latency", [
            (q, style, functools.partial(_latency_of, q))
            for q, style in (("p50", ":"), ("p95", "--"), ("p99", "-"))
        ]),
        "cpu.png": ("CPU, cores", "CPU by process", [
            (name, "-", functools.partial(_cores_of, name))
            for name in _PROCESS_ORDER[:4]
            if any(name in p.processes for p in report.points)
        ]),
    }  # fmt: skip
    paths = []
    for filename, (ylabel, title, series) in figures.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m, (mix, pts) in enumerate(by_mix.items()):
            x = [p.devices for p in pts]
            for k, (label, style, value) in enumerate(series):
                # Latency: a colour per mix, a dash per percentile; CPU: a colour per process,
                # a dash per mix.
                latency = filename == "latency.png"
                ax.plot(
                    x, [value(p) for p in pts], style if latency else _DASHES[m % len(_DASHES)],
                    color=f"C{m if latency else k}", marker="o", label=f"{mix} {label}",
                )  # fmt: skip
        if filename == "latency.png":
            for budget in BUDGETS_MS:
                ax.axhline(budget, color="grey", linewidth=0.8)
            # Milliseconds to seconds once a point saturates: only a log axis shows both.
            ax.set_yscale("log")
        ax.set_xlabel("real-time wearables")
        ax.set_ylabel(ylabel)
        ax.set_title(f"gatewayd bench scale: {title} ({report.sessions.label()})")
        ax.legend(fontsize="small")
        fig.tight_layout()
        paths.append(out / filename)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_outputs(report: ScaleReport, out: Path, stream: IO[str] | None = None) -> list[Path]:
    """scale.json, scale.md, profile.txt and the plots in ``out``; the paths written. Blocks."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "scale.json", out / "scale.md"]
    written[0].write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    markdown = format_markdown(report)
    written[1].write_text(markdown, encoding="utf-8")
    if report.profile:
        written.append(out / "profile.txt")
        heading = "## Where the gateway's time goes"
        _, found, rest = markdown.partition(heading)
        written[-1].write_text(found + rest, encoding="utf-8")  # the section, heading included
    if report.points:
        written += plot(report, out)
    if stream is not None:
        stream.write(markdown)
    return written
