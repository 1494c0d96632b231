"""`gatewayd bench pipeline`: what one offloaded window costs end to end, beside the model alone.

The goal (docs/architecture.md, "Performance budget"): the whole pipeline per window (decode +
infer + rules + log + publish) should cost little more than the model itself; report the ratio.
One run measures, on the same windows:

- the bare model: the configured gateway model (``inference.model``, found as `gatewayd run`
  finds it) on one preprocessed window at a time, batch 1, one thread: per-window wall time
  (mean, median, p95) and CPU time; and the same at the pipeline's batch size;
- the whole pipeline: WINDOW messages encoded beforehand by `WearableCore` from synthetic
  recordings (offload policy tau 0, so every window is offloaded), cut into BLE fragments, fed
  through the link's decode path (`DeviceStream`, no BLE) as a flood, though stamped with the
  wall-clock arrival a real-time link gives them (each at its window's end, a window every
  2 s per wearable: what the rules take the samples' time from), and handed as `LinkEvent`s to a
  `Pipeline` with the real `InferenceWorker`, `RuleEngine`, a `Store` on a temporary SQLite
  file and a `Publisher` connected to a real broker, until every window is stored and its
  telemetry published. Wall and CPU time (``time.process_time``: every thread of this process,
  not the broker's) per window, and the ratios pipeline / model;
- each part alone, in the same run and as the pipeline does it, so the difference can be
  attributed: decode, preprocessing (in the worker's batches of ``max_batch``), the gateway's
  heart-rate tracker (on the windows that arrive without the wearable's heart rate, reusing the
  model input's band-pass where it can), the rules, the store write and the telemetry publish;
- beside them, not counted as the pipeline's work: preprocessing one window at a time, the
  tracker on every window (as if no wearable sent its heart rate), and the model at the mean
  batch the worker actually ran (it batches what is queued when it is free).

The report names the CPU, its SIMD flags (avx2, avx512f, fma), onnxruntime and the threads.

All data is synthetic (`gatewayd.datasets.synthetic`). Timing is measured here, never asserted
in tests (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.app import build_gateway
from gatewayd.bench.models import bench_environment, environment_line
from gatewayd.bench.procstat import task_cpu_s
from gatewayd.config import Config, MqttConfig, StoreConfig
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.demo.broker import BrokerChoice, choose_broker
from gatewayd.emulator.wearable import WearableCore, WearableSpec
from gatewayd.inference.analysis import (
    HrFusion,
    WindowAnalysis,
    WindowInputs,
    analyse_windows,
    answers_from_prediction,
    calibrated,
    window_input,
    window_inputs,
)
from gatewayd.inference.cards import ModelCardError
from gatewayd.inference.registry import InstalledModel, ModelRegistry
from gatewayd.inference.session import ModelSession
from gatewayd.link.events import LinkUp
from gatewayd.link.stream import DeviceStream
from gatewayd.mapping import observation_for_frame, record_for_frame
from gatewayd.protocol.control import DeviceInfo, decode_info
from gatewayd.protocol.fragments import fragment
from gatewayd.protocol.messages import Message, Window, decode_message
from gatewayd.publish.build import telemetry_for
from gatewayd.publish.client import Publisher
from gatewayd.publish.payloads import Telemetry
from gatewayd.rules.engine import RuleEngine
from gatewayd.signals.heart_rate import HrEstimate, HrState, HrTracker, estimate_hr
from gatewayd.signals.windows import STEP_S, WINDOW_S
from gatewayd.store.store import Store
from gatewayd.tables import format_table

__all__ = [
    "DATA_NOTE",
    "Cost",
    "Latency",
    "PipelineBench",
    "Workload",
    "arrival",
    "bench_broker",
    "bench_pipeline",
    "format_pipeline_bench",
    "format_repeated",
    "latency",
    "prepare_workload",
    "repeated_ratios",
    "split_windows",
]

#: Untimed model runs before the timed ones.
WARMUP_RUNS: Final = 20
#: How long the pipeline may take to publish what it has stored before the run fails.
PUBLISH_TIMEOUT_S: Final = 120.0
#: How often completion (everything published) is checked: the publisher has no event for it.
_POLL_S: Final = 0.01
TOPIC_ROOT: Final = "gatewayd-bench"
#: The ATT MTU the fragments are cut to: BLE 4.2+ data length, as BlueZ negotiates with a
#: modern wearable.
BENCH_MTU: Final = 247
GATEWAY_ID: Final = "bench"
DATA_NOTE: Final = (
    "synthetic data (gatewayd.datasets.synthetic, a model of PPG and motion, not a measurement)"
)


# --- pure figures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """Wall and CPU time spent on ``windows`` windows."""

    windows: int
    wall_s: float
    cpu_s: float

    @property
    def wall_ms(self) -> float:
        """Mean wall time per window, ms."""
        return 1e3 * self.wall_s / self.windows if self.windows else math.nan

    @property
    def cpu_ms(self) -> float:
        """Mean CPU time per window (every thread of this process), ms."""
        return 1e3 * self.cpu_s / self.windows if self.windows else math.nan

    def to_json(self) -> dict[str, float]:
        """The totals and the per-window means."""
        return {
            "windows": self.windows,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "wall_ms_per_window": self.wall_ms,
            "cpu_ms_per_window": self.cpu_ms,
        }


@dataclass(frozen=True)
class Latency:
    """Median and 95th percentile of per-call times, ms."""

    median_ms: float
    p95_ms: float


def latency(seconds: Sequence[float]) -> Latency:
    """Median and p95 (nearest rank) of per-call times given in seconds, as ms."""
    if not seconds:
        raise ValueError("no times to summarise")
    ordered = sorted(seconds)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return Latency(1e3 * statistics.median(ordered), 1e3 * ordered[rank - 1])


def split_windows(windows: int, devices: int) -> list[int]:
    """Windows per device: ``windows`` shared as evenly as possible, the first devices get more."""
    if windows < 1 or devices < 1:
        raise ValueError(f"windows and devices must be >= 1, got {windows}, {devices}")
    if devices > windows:
        raise ValueError(f"{devices} devices cannot share {windows} windows (one at least each)")
    base, extra = divmod(windows, devices)
    return [base + (1 if i < extra else 0) for i in range(devices)]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else math.nan


@dataclass(frozen=True)
class PipelineBench:
    """One run's figures: the bare model, the pipeline, each part alone, counts, environment."""

    model_id: str
    windows: int
    devices: int
    mtu: int
    fragments: int
    #: The bare model at batch 1 (one thread), and its per-call latency.
    model: Cost
    model_latency: Latency
    #: The bare model at ``batch`` (the pipeline's max_batch).
    model_batched: Cost
    batch: int
    pipeline: Cost
    #: The pipeline's CPU by thread group (`thread_group`), from /proc (10 ms ticks); no wall.
    pipeline_threads: dict[str, Cost]
    #: Each part alone on the same windows, as the pipeline does it (decode, preprocess in the
    #: worker's batches, signal_hr on the windows the gateway's tracker runs on, rules, store,
    #: publish); per window of the whole run.
    parts: dict[str, Cost]
    #: Measured beside the parts, not work the pipeline did: ``preprocess_window`` one window at
    #: a time, and the tracker on every window (as if no wearable sent its heart rate).
    asides: dict[str, Cost]
    #: Invariants: what went through (stored, published, ...).
    counts: dict[str, int]
    broker: str
    heart_rate: str
    peak_rss_mb: float
    environment: dict[str, str]
    data: str = DATA_NOTE
    notes: list[str] = field(default_factory=list)

    @property
    def ratio_cpu(self) -> float:
        """Pipeline CPU per window / bare model (batch 1) CPU per window."""
        return ratio(self.pipeline.cpu_ms, self.model.cpu_ms)

    @property
    def ratio_wall(self) -> float:
        """Pipeline wall time per window / bare model (batch 1) wall time per window."""
        return ratio(self.pipeline.wall_ms, self.model.wall_ms)

    def unattributed(self) -> Cost:
        """Pipeline minus the parts and the model at the pipeline's batch: glue, by difference."""
        cpu = (
            self.pipeline.cpu_s
            - self.model_batched.cpu_s
            - sum(c.cpu_s for c in self.parts.values())
        )
        wall = (
            self.pipeline.wall_s
            - self.model_batched.wall_s
            - sum(c.wall_s for c in self.parts.values())
        )
        return Cost(self.windows, wall, cpu)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "data": self.data,
            "model_id": self.model_id,
            "windows": self.windows,
            "devices": self.devices,
            "mtu": self.mtu,
            "fragments": self.fragments,
            "heart_rate": self.heart_rate,
            "broker": self.broker,
            "model": {**self.model.to_json(), "batch": 1, **asdict(self.model_latency)},
            "model_batched": {**self.model_batched.to_json(), "batch": self.batch},
            "pipeline": self.pipeline.to_json(),
            "pipeline_threads": {
                name: {"cpu_s": c.cpu_s, "cpu_ms_per_window": c.cpu_ms}
                for name, c in self.pipeline_threads.items()
            },
            "ratio": {"cpu": self.ratio_cpu, "wall": self.ratio_wall},
            "parts": {name: cost.to_json() for name, cost in self.parts.items()},
            "asides": {name: cost.to_json() for name, cost in self.asides.items()},
            "unattributed": self.unattributed().to_json(),
            "counts": dict(self.counts),
            "peak_rss_mb": self.peak_rss_mb,
            "environment": self.environment,
            "notes": list(self.notes),
        }


# --- the workload: encoded beforehand, like a wearable would ------------------------------------


@dataclass(frozen=True)
class DeviceWorkload:
    """One emulated wearable: its id, its info characteristic and its messages' fragments."""

    device_id: str
    info: DeviceInfo
    #: Per message: its BLE notifications, in order.
    messages: list[list[bytes]]


@dataclass(frozen=True)
class Workload:
    """Every device's fragments, the windows they decode to, and the model to run."""

    devices: list[DeviceWorkload]
    #: (device id, window) in feed order: the same windows the pipeline decodes.
    windows: list[tuple[str, Window]]
    mtu: int
    model: InstalledModel

    @property
    def fragments(self) -> int:
        """Notifications in all."""
        return sum(len(m) for d in self.devices for m in d.messages)

    def feed(self, t0: float) -> Iterator[tuple[int, bytes, float]]:
        """(device index, fragment, arrival) in arrival order: devices take turns, one message
        each. The arrival (wall clock) is the one a real-time link gives: ``t0`` plus the end of
        the message's window on its wearable (`arrival`), though the fragments come as a flood."""
        longest = max(len(d.messages) for d in self.devices)
        for i in range(longest):
            at = arrival(t0, i)
            for index, device in enumerate(self.devices):
                if i < len(device.messages):
                    for frag in device.messages[i]:
                        yield index, frag, at


def arrival(t0: float, index: int) -> float:
    """When a wearable's ``index``-th window arrives in real time: at its end, ``t0`` being its
    first window's start. What the rules see (they take a window's samples as ending at its
    arrival when the wearable's clock is not synced): a window every STEP_S, as live."""
    return t0 + index * STEP_S + WINDOW_S


def prepare_workload(
    windows: int, devices: int, model: InstalledModel, *, mtu: int = 247, seed: int = 1
) -> Workload:
    """Synthetic recordings, encoded as WINDOW messages (tau 0) and cut to ``mtu``. Blocks."""
    out: list[DeviceWorkload] = []
    decoded: list[list[Message]] = []
    for index, count in enumerate(split_windows(windows, devices)):
        end_s = (count - 1) * STEP_S + WINDOW_S
        recording = generate_recording(index, end_s / 60 + 0.05, seed)
        spec = WearableSpec(
            address=f"02:00:00:00:{index // 256:02X}:{index % 256:02X}",
            name=f"bench-{index:03d}",
            recording=recording,
            boot_id=index + 1,
            tau_mbits=0,  # every window with any entropy at all is offloaded
        )
        core = WearableCore(spec)
        info = decode_info(core.info())
        encoded = core.produce(end_s)
        decoded.append([decode_message(data) for _, data in encoded])
        out.append(
            DeviceWorkload(
                device_id=f"bench-w{index:03d}",
                info=info,
                messages=[fragment(data, seq, mtu) for seq, data in encoded],
            )
        )
    order: list[tuple[str, Window]] = []
    for i in range(max(len(m) for m in decoded)):
        for device, messages in zip(out, decoded, strict=True):
            message = messages[i] if i < len(messages) else None
            if isinstance(message, Window):
                order.append((device.device_id, message))
    return Workload(out, order, mtu, model)


# --- measuring ---------------------------------------------------------------------------------


class _Clock:
    """Wall and CPU time since it was created."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def cost(self, windows: int) -> Cost:
        return Cost(windows, time.perf_counter() - self.wall, time.process_time() - self.cpu)


@contextmanager
def _measure(into: dict[str, Cost], name: str, windows: int) -> Iterator[None]:
    clock = _Clock()
    yield
    into[name] = clock.cost(windows)


@dataclass
class _SyncParts:
    model: Cost
    model_latency: Latency
    model_batched: Cost
    parts: dict[str, Cost]
    asides: dict[str, Cost]
    analyses: list[WindowAnalysis]
    tracked: int
    #: Every window's model input, stacked (N, channels, samples).
    inputs: npt.NDArray[np.float32]


def _measure_tracker(
    work: Workload,
    bandpassed: Sequence[npt.NDArray[np.float64] | None],
    config: Config,
    parts: dict[str, Cost],
    asides: dict[str, Cost],
) -> tuple[int, dict[int, HrEstimate]]:
    """The gateway's tracker as the pipeline runs it, and on every window beside. Blocks.

    It runs on the windows whose wearable sent no heart rate (unless heart_rate = "model"),
    reusing the model input's band-pass where that is the tracker's own (as `analyse_windows`).
    Returns how many windows it ran on and their estimates by window index.
    """
    n = len(work.windows)
    tracked = [
        i
        for i, (_, w) in enumerate(work.windows)
        if w.summary.hr_bpm is None and config.inference.heart_rate != "model"
    ]
    states: dict[str, HrState] = {}
    estimates: dict[int, HrEstimate] = {}
    with _measure(parts, "signal_hr", n):
        for i in tracked:
            device_id, w = work.windows[i]
            estimates[i] = estimate_hr(
                w.bvp,
                w.acc,
                bvp_rate_hz=w.bvp_rate_hz,
                acc_rate_hz=w.acc_rate_hz,
                state=states.get(device_id),
                bandpassed_bvp=bandpassed[i],
            )
            states[device_id] = estimates[i].state
    # What it would cost if no wearable sent its own heart rate: every window, beside the parts.
    trackers: dict[str, HrTracker] = {}
    with _measure(asides, "signal_hr_every_window", n):
        for device_id, w in work.windows:
            tracker = trackers.setdefault(
                device_id, HrTracker(bvp_rate_hz=w.bvp_rate_hz, acc_rate_hz=w.acc_rate_hz)
            )
            tracker.update(w.bvp, w.acc)
    return len(tracked), estimates


def _model_at(session: ModelSession, stacked: npt.NDArray[np.float32], batch: int) -> Cost:
    """The model over every window in batches of ``batch`` (after one untimed batch). Blocks."""
    session.run_logits(stacked[:batch])
    clock = _Clock()
    for i in range(0, stacked.shape[0], batch):
        session.run_logits(stacked[i : i + batch])
    return clock.cost(stacked.shape[0])


def _worker_at(session: ModelSession, work: Workload, batch: int, config: Config) -> Cost:
    """The inference worker's own work alone, in batches of ``batch`` in arrival order:
    `analyse_windows` (preprocessing, the model, decoding, the answers, the heart-rate fusion)
    as `InferenceWorker` calls it, with no thread handing batches over (one untimed batch
    first). Blocks."""
    fusion = HrFusion.of(config.inference)
    states: dict[str, HrState] = {}
    analyse_windows(work.windows[:batch], states, session, fusion)
    clock = _Clock()
    for i in range(0, len(work.windows), batch):
        states.update(analyse_windows(work.windows[i : i + batch], states, session, fusion).states)
    return clock.cost(len(work.windows))


def _measure_sync_parts(work: Workload, session: ModelSession, config: Config) -> _SyncParts:
    """Decode, preprocessing, the model, the signal estimator and the rules, each alone. Blocks."""
    parts: dict[str, Cost] = {}
    asides: dict[str, Cost] = {}
    n = len(work.windows)
    with _measure(parts, "decode", n):
        streams = [DeviceStream(d.device_id) for d in work.devices]
        now = time.monotonic()
        for stream, device in zip(streams, work.devices, strict=True):
            stream.on_info(device.info, now)
        for index, frag, at in work.feed(time.time()):
            streams[index].on_fragment(frag, time.monotonic(), at)
    batch = config.inference.max_batch
    windows = [w for _, w in work.windows]
    # Preprocessing as the worker does it: its batches (max_batch windows in arrival order, one
    # vectorised pass each); the per-window form beside it, not part of the pipeline's work.
    made: list[WindowInputs] = []
    with _measure(parts, "preprocess", n):
        for i in range(0, n, batch):
            made.append(window_inputs(windows[i : i + batch], session.card))
    with _measure(asides, "preprocess_window", n):
        for w in windows:
            window_input(w, session.card)
    made_x = [x for m in made for x in m.x]
    bandpassed = [b for m in made for b in m.bvp_bandpassed]
    if any(x is None for x in made_x):
        raise ValueError("the model input transform refused a synthetic window")
    inputs = [x[None] for x in made_x if x is not None]
    for x in inputs[:WARMUP_RUNS]:
        session.run_logits(x)
    times: list[float] = []
    logits: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    clock = _Clock()
    for x in inputs:
        start = time.perf_counter()
        logits.append(session.run_logits(x))
        times.append(time.perf_counter() - start)
    model = clock.cost(n)
    stacked = np.concatenate(inputs)
    model_batched = _model_at(session, stacked, batch)

    analyses = [
        answers_from_prediction(calibrated(a, h, session.card), session.card)[0] for a, h in logits
    ]
    tracked, estimates = _measure_tracker(work, bandpassed, config, parts, asides)
    if config.inference.heart_rate == "signal":
        analyses = [
            replace(a, hr_bpm=e.bpm, hr_confidence=e.confidence, hr_source="signal")
            if (e := estimates.get(i)) is not None
            else a
            for i, a in enumerate(analyses)
        ]
    engine = RuleEngine(config.rules)
    # Each window as the pipeline sees it: arriving at its end in real time (`arrival`), so the
    # fall rule takes STEP_S of new samples from each, as live.
    t0 = time.time()
    observations = [
        observation_for_frame(d, w, arrival(t0, w.summary.seq), window_id=str(i), analysis=a)
        for i, ((d, w), a) in enumerate(zip(work.windows, analyses, strict=True))
    ]
    with _measure(parts, "rules", n):
        for obs in observations:
            engine.observe(obs)
    return _SyncParts(
        model, latency(times), model_batched, parts, asides, analyses, tracked, stacked
    )


def thread_group(name: str) -> str:
    """Which part of the gateway a Python thread belongs to, from its name."""
    if name == "MainThread":
        return "event_loop"
    if name.startswith("asyncio_"):
        return "executor"  # asyncio.to_thread: the inference worker's batches
    if name.startswith("gatewayd-store-writer"):
        return "store_writer"
    if name.startswith("gatewayd-store-reader"):
        return "store_readers"
    return "other"


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds so far of this process's Python threads, by `thread_group`. Linux; blocks."""
    out: dict[str, float] = {}
    pid = os.getpid()
    for thread in threading.enumerate():
        if thread.native_id is None or (seconds := task_cpu_s(pid, thread.native_id)) is None:
            continue
        group = thread_group(thread.name)
        out[group] = out.get(group, 0.0) + seconds
    return out


async def _until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait (bounded) until ``done()``; the publisher offers no event for "all published"."""
    try:
        async with asyncio.timeout(timeout_s):
            # Polling, bounded: the publisher exposes counters, not an event, for "all sent".
            while not done():  # noqa: ASYNC110
                await asyncio.sleep(_POLL_S)
    except TimeoutError:
        raise TimeoutError(f"gatewayd bench pipeline: {what} within {timeout_s:g} s") from None


def _mqtt(host: str, port: int, client_id: str) -> MqttConfig:
    return MqttConfig(host=host, port=port, topic_root=TOPIC_ROOT, client_id=client_id)


async def _run_pipeline(
    work: Workload, config: Config, broker: tuple[str, int], directory: Path
) -> tuple[Cost, dict[str, int], dict[str, Cost]]:
    """The whole pipeline over every window, until each is stored and its telemetry published.

    The gateway is built as `gatewayd run` builds it (gatewayd.app.build_gateway), without the
    link: the windows' fragments go through the link's decode path here and into its pipeline.
    """
    host, port = broker
    n = len(work.windows)
    config = config.model_copy(
        update={
            "gateway": config.gateway.model_copy(update={"id": GATEWAY_ID}),
            "mqtt": _mqtt(host, port, f"gatewayd-bench-{os.getpid()}"),
            "store": config.store.model_copy(update={"path": directory / "pipeline.db"}),
            "inference": config.inference.model_copy(update={"model": work.model.model_id}),
        }
    )
    # A flood is not real time: with the default bound (1024) the publisher can fall behind
    # and drop telemetry, which would then not be measured. A queue as long as the run keeps
    # every window's publish in the figures (drops are still counted).
    async with build_gateway(
        config,
        devices=[],
        models_dir=work.model.path.parent,
        with_link=False,
        telemetry_queue_size=n + 1,
    ) as gateway:
        pipeline, publisher, worker = gateway.pipeline, gateway.publisher, gateway.worker
        streams = [DeviceStream(d.device_id) for d in work.devices]
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await publisher.wait_connected()

        threads_before = await asyncio.to_thread(_thread_cpu_s)
        clock = _Clock()
        now = time.monotonic()
        for stream, device in zip(streams, work.devices, strict=True):
            stream.on_info(device.info, now)
            await pipeline.submit(LinkUp(device.device_id, "bench", device.info, work.mtu))
        for index, frag, at in work.feed(time.time()):
            for event in streams[index].on_fragment(frag, time.monotonic(), at):
                await pipeline.submit(event)
        await pipeline.drain()
        stats = publisher.stats
        await _until(
            lambda: (
                stats.telemetry_published + stats.telemetry_dropped >= n
                and stats.alerts_published >= pipeline.stats.alerts
            ),
            PUBLISH_TIMEOUT_S,
            "telemetry and alerts not all published",
        )
        cost = clock.cost(n)
        threads_after = await asyncio.to_thread(_thread_cpu_s)
        stored = await gateway.store.stats()
    counts = {
        "windows_decoded": sum(s.stats.delivered for s in streams),
        "windows_offloaded": pipeline.stats.offloaded,
        "windows_stored": stored.windows,
        "telemetry_published": publisher.stats.telemetry_published,
        "telemetry_dropped": publisher.stats.telemetry_dropped,
        "alerts": pipeline.stats.alerts,
        "alerts_published": publisher.stats.alerts_published,
        "states_published": publisher.stats.states_published,
        "pipeline_errors": pipeline.stats.errors,
        "decode_rejected": sum(sum(s.stats.rejected.values()) for s in streams),
        "messages_lost": sum(s.stats.lost for s in streams),
        "frame_groups": pipeline.stats.groups,
        "inference_batches": worker.stats.batches,
        "inference_windows": worker.stats.windows,
        "largest_batch": worker.stats.largest_batch,
        "model_failures": worker.stats.model_failures,
    }
    threads = {
        group: Cost(n, 0.0, seconds - threads_before.get(group, 0.0))
        for group, seconds in sorted(threads_after.items())
    }
    return cost, counts, threads


async def _store_alone(
    work: Workload,
    analyses: Sequence[WindowAnalysis],
    config: Config,
    directory: Path,
    group: int,
) -> Cost:
    """The store write alone, as the pipeline does it: awaited `record_windows` of ``group``
    windows at a time (the pipeline's mean group)."""
    store_config: StoreConfig = config.store.model_copy(update={"path": directory / "alone.db"})
    now = time.time()
    records = [
        record_for_frame(d, w, now, a, keep_raw=store_config.keep_raw_windows)
        for (d, w), a in zip(work.windows, analyses, strict=True)
    ]
    async with Store.open(store_config.path, store_config) as store:
        clock = _Clock()
        for i in range(0, len(records), group):
            await store.record_windows([(record, None) for record in records[i : i + group]])
        return clock.cost(len(records))


class _NoOutbox:
    """An empty outbox: the publish-alone run sends telemetry only."""

    async def pending(self, limit: int) -> Sequence[Any]:
        return []

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        return None

    async def record_attempt(self, event_ids: Sequence[str]) -> None:
        return None


async def _publish_alone(
    work: Workload, analyses: Sequence[WindowAnalysis], host: str, port: int
) -> Cost:
    """Telemetry alone: every window's telemetry through a second publisher to the same broker."""
    now = time.time()
    telemetry: list[Telemetry] = []
    for i, ((d, w), a) in enumerate(zip(work.windows, analyses, strict=True)):
        obs = observation_for_frame(d, w, now, window_id=str(i), analysis=a)
        telemetry.append(telemetry_for(d, w, now, obs))
    # A queue as long as the run: this measures publishing, not the queue's bound.
    publisher = Publisher(
        _mqtt(host, port, f"gatewayd-bench-alone-{os.getpid()}"),
        f"{GATEWAY_ID}-alone",
        _NoOutbox(),
        telemetry_queue_size=len(telemetry) + 1,
    )
    async with publisher:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await publisher.wait_connected()
        clock = _Clock()
        for t in telemetry:
            publisher.publish_telemetry(t)
        await _until(
            lambda: publisher.stats.telemetry_published >= len(telemetry),
            PUBLISH_TIMEOUT_S,
            "telemetry (publish alone) not all published",
        )
        return clock.cost(len(telemetry))


def bench_broker(
    host: str | None, port: int | None
) -> contextlib.AbstractAsyncContextManager[BrokerChoice]:
    """The broker to publish to: the one given, else a private mosquitto, else in-process.

    Unlike the demo, a broker already on 127.0.0.1:1883 is not used unless given: the
    benchmark's thousands of messages belong to no one else's broker. An in-process broker's
    CPU counts as the pipeline's (the report says which broker it used).
    """
    return choose_broker(host, port, local=None)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports kB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def bench_pipeline(
    config: Config,
    model: InstalledModel,
    *,
    windows: int,
    devices: int,
    host: str,
    port: int,
    broker: str,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> PipelineBench:
    """Measure the bare model and the whole pipeline on the same synthetic windows (one run).

    ``host``/``port`` is a running MQTT broker (``broker`` says which, for the report).
    """
    say = progress or (lambda _text: None)
    mtu = BENCH_MTU
    say(f"encoding {windows} synthetic windows for {devices} devices")
    # Generating, encoding and loading ONNX Runtime block for a while: in a thread.
    work = await asyncio.to_thread(prepare_workload, windows, devices, model, mtu=mtu, seed=seed)
    bare_session = await asyncio.to_thread(ModelSession, model.card, model.path, 1)
    say("measuring the model and each part alone")
    sync = await asyncio.to_thread(_measure_sync_parts, work, bare_session, config)
    # sqlite files: created and removed off the loop.
    directory = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="gatewayd-bench-"))
    try:
        say("running the whole pipeline")
        pipeline, counts, threads = await _run_pipeline(work, config, (host, port), directory)
        say("measuring the store and the publisher alone")
        parts = dict(sync.parts)
        # The pipeline records the windows of a group together: the store alone does the same.
        mean_group = max(1, round(counts["windows_stored"] / max(1, counts["frame_groups"])))
        counts["pipeline_mean_group"] = mean_group
        parts["store"] = await _store_alone(work, sync.analyses, config, directory, mean_group)
        parts["publish"] = await _publish_alone(work, sync.analyses, host, port)
        # The worker batches what is queued when it is free: the model at the batch it ran.
        mean_batch = max(
            1, round(counts["inference_windows"] / max(1, counts["inference_batches"]))
        )
        asides = dict(sync.asides)
        asides["model_at_pipeline_batch"] = await asyncio.to_thread(
            _model_at, bare_session, sync.inputs, mean_batch
        )
        asides["worker_at_pipeline_batch"] = await asyncio.to_thread(
            _worker_at, bare_session, work, mean_batch, config
        )
        counts["pipeline_mean_batch"] = mean_batch
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
    environment = await asyncio.to_thread(bench_environment)  # reads /proc/cpuinfo
    notes = []
    offloaded = len(work.windows)
    if offloaded != windows:
        notes.append(f"{windows - offloaded} windows had zero entropy and were not offloaded")
    return PipelineBench(
        model_id=model.model_id,
        windows=offloaded,
        devices=devices,
        mtu=mtu,
        fragments=work.fragments,
        model=sync.model,
        model_latency=sync.model_latency,
        model_batched=sync.model_batched,
        batch=config.inference.max_batch,
        pipeline=pipeline,
        pipeline_threads=threads,
        parts=parts,
        asides=asides,
        counts={**counts, "signal_hr_windows": sync.tracked},
        broker=broker,
        heart_rate=config.inference.heart_rate,
        peak_rss_mb=peak_rss_mb(),
        environment={**environment, "pipeline_threads": str(config.inference.threads)},
        notes=notes,
    )


def find_model(config: Config, models_dir: Path | None) -> tuple[InstalledModel | None, str]:
    """The configured gateway model as `gatewayd run` finds it, or None and why not. Blocks."""
    registry = ModelRegistry.discover(models_dir)
    try:
        return registry.get(config.inference.model), ""
    except ModelCardError as exc:
        errors = "; ".join(str(e) for e in registry.errors)
        return None, str(exc) + (f" ({errors})" if errors else "")


# --- text ---------------------------------------------------------------------------------------

_THREAD_NAMES: Final = {
    "event_loop": "event loop (decode, pipeline, rules, MQTT, store glue)",
    "executor": "executor (inference worker: preprocess, model, signal HR)",
    "store_writer": "SQLite writer",
    "store_readers": "SQLite readers (outbox)",
    "other": "other Python threads",
}
_PART_NAMES: Final = {
    "decode": "decode (reassemble, decode, order)",
    "preprocess": "preprocess (the worker's batches)",
    "signal_hr": "gateway's HR tracker (windows without the wearable's HR)",
    "rules": "rules (RuleEngine.observe)",
    "store": "store write (record_windows in the pipeline's groups)",
    "publish": "telemetry publish (QoS 0)",
}


_ASIDE_NAMES: Final = {
    "preprocess_window": "preprocess_window, one window at a time",
    "signal_hr_every_window": "gateway's HR tracker on every window",
    "model_at_pipeline_batch": "model at the pipeline's mean batch",
    "worker_at_pipeline_batch": "inference worker's work at that batch, no hand-over",
}


def repeated_ratios(reports: Sequence[PipelineBench]) -> dict[str, Any]:
    """The CPU ratio pipeline / model of each run (each measured within its own run) and their
    median, lowest and highest: what `--repeat` adds, since one run on a shared machine is a
    draw from a spread."""
    ratios = [r.ratio_cpu for r in reports]
    return {
        "runs": ratios,
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
    }


def format_repeated(reports: Sequence[PipelineBench]) -> str:
    """`--repeat`'s text: every run's report, then the ratios side by side."""
    parts = []
    for k, report in enumerate(reports, start=1):
        parts += [f"## Run {k} of {len(reports)}", "", format_pipeline_bench(report), ""]
    r = repeated_ratios(reports)
    runs = ", ".join(f"{x:.2f}x" for x in r["runs"])
    parts.append(
        f"Ratio pipeline / model, CPU, each within its own run: {runs}; median {r['median']:.2f}x"
        f" ({r['min']:.2f}-{r['max']:.2f}x over {len(reports)} runs)."
    )
    return "\n".join(parts)


def format_pipeline_bench(report: PipelineBench) -> str:
    """The plain-text report `gatewayd bench pipeline` prints."""
    env = report.environment
    c = report.counts
    lines = [
        environment_line(env)
        + f"; pipeline: {env.get('pipeline_threads', '?')} inference thread(s)",
        f"Model {report.model_id}; {report.windows} windows from {report.devices} devices,"
        f" MTU {report.mtu} ({report.fragments} fragments); broker: {report.broker}",
        f"Data: {report.data}.",
        "",
    ]

    def row(name: str, cost: Cost) -> list[str]:
        return [
            name,
            f"{cost.wall_ms:.3f}",
            f"{cost.cpu_ms:.3f}",
            f"{ratio(cost.cpu_ms, report.model.cpu_ms):.2f}",
        ]

    rows = [
        row("model alone, batch 1, 1 thread", report.model),
        row(f"model alone, batch {report.batch}", report.model_batched),
        row("whole pipeline", report.pipeline),
    ]
    lines.append(format_table(["PER WINDOW", "WALL ms", "CPU ms", "x MODEL CPU"], rows))
    lines += [
        "",
        f"Model batch 1 per call: median {report.model_latency.median_ms:.3f} ms,"
        f" p95 {report.model_latency.p95_ms:.3f} ms.",
        f"Ratio pipeline / model (batch 1): CPU {report.ratio_cpu:.2f}x,"
        f" wall {report.ratio_wall:.2f}x.",
        "",
        "Each part alone, same windows, same run (wall and CPU per window):",
    ]
    part_rows = [row(_PART_NAMES.get(name, name), cost) for name, cost in report.parts.items()]
    part_rows.append(row("rest of the pipeline (by difference)", report.unattributed()))
    lines.append(format_table(["PART", "WALL ms", "CPU ms", "x MODEL CPU"], part_rows))
    if report.asides:
        lines += [
            "",
            f"Beside them, not the pipeline's work ({c['signal_hr_windows']} windows of"
            f" {report.windows} arrived without the wearable's HR):",
            format_table(
                ["ASIDE", "WALL ms", "CPU ms", "x MODEL CPU"],
                [row(_ASIDE_NAMES.get(name, name), cost) for name, cost in report.asides.items()],
            ),
        ]
    if report.pipeline_threads:
        lines += [
            "",
            "The pipeline's CPU by thread (/proc, 10 ms ticks), per window:",
            format_table(
                ["THREAD", "CPU ms"],
                [
                    [_THREAD_NAMES.get(name, name), f"{cost.cpu_ms:.3f}"]
                    for name, cost in report.pipeline_threads.items()
                ],
            ),
        ]
    lines += [
        "",
        f"Pipeline: heart_rate = {report.heart_rate}; {c['inference_batches']} inference batches"
        f" (largest {c['largest_batch']}, mean"
        f" {c['inference_windows'] / max(1, c['inference_batches']):.1f});"
        f" {c.get('frame_groups', 0)} groups of frames (mean {c.get('pipeline_mean_group', 1)});"
        f" {c['windows_stored']} windows stored, {c['telemetry_published']} telemetry published"
        f" ({c['telemetry_dropped']} dropped), {c['alerts']} alerts"
        f" ({c['alerts_published']} published).",
        f"Peak RSS of the process: {report.peak_rss_mb:.0f} MB."
        " CPU is time.process_time (all threads of this process; the broker's own CPU is not"
        " counted).",
    ]
    lines += [f"Note: {note}" for note in report.notes]
    return "\n".join(lines)
