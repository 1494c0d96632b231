"""The gateway assembled: `build_gateway` enters every part in order, `run_gateway` runs it.

`build_gateway` is one AsyncExitStack: the store, the model, the publisher, the inference
worker, the pipeline, then the link and the loops that join them (intake from the link, the
rules' clock, the backpressure governor, and the paired-device list followed while it runs).
Leaving it runs the stack in reverse, which is the shutdown order (docs/running.md): link
intake stops, the link disconnects, what was received is processed, the worker stops, the
publisher delivers what it can within its grace period and says "offline", the event log is
flushed and closed. Every step is bounded (`ShutdownTimeouts`). `gatewayd run`, `gatewayd
demo` and `gatewayd bench pipeline` all build the gateway here (the bench without a link: it
feeds the pipeline itself).

`run_gateway` adds what only a service needs: READY=1 once an adapter answers (until then
STATUS= says which adapter it waits for and why, in `gatewayd doctor`'s words), STATUS= lines,
the watchdog (pinged only while the pipeline makes progress), and the stop. It runs until its
``stop`` Event is set or a part fails; signal handling is the caller's (gatewayd/cli). A broker
that cannot be reached does not hold READY=1 back (alerts wait in the outbox): the publisher
logs why, in doctor's words, once per change of cause, and STATUS= names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import structlog

from gatewayd.config import Config
from gatewayd.doctor import Check, broker_failure, check_model, diagnose_adapter, registry_facts
from gatewayd.errors import EXIT_CONFIG, ConfigError, GatewayError
from gatewayd.inference.backpressure import Governor
from gatewayd.inference.registry import ModelRegistry
from gatewayd.inference.session import InferenceError, ModelSession
from gatewayd.inference.worker import InferenceWorker
from gatewayd.lifecycle import favour_the_loop, raised_at, settle_heap, start_task, stop_task
from gatewayd.link.connection import LinkSettings
from gatewayd.link.events import LinkEvent, ResumePoint
from gatewayd.link.manager import LinkManager
from gatewayd.link.registry import DeviceRegistry, PairedDevice, RegistryError
from gatewayd.link.slots import SlotsAlarm
from gatewayd.mapping import alert_event, device_removed_event, gateway_event
from gatewayd.pipeline import Pipeline
from gatewayd.protocol.control import SetPolicy
from gatewayd.publish.client import Publisher
from gatewayd.publish.outbox import StoreOutbox
from gatewayd.publish.topics import Topics
from gatewayd.rules.engine import RuleEngine
from gatewayd.store.errors import StoreError
from gatewayd.store.open import Synchronous
from gatewayd.store.store import Store, StoreOptions

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "Gateway",
    "ShutdownTimeouts",
    "build_gateway",
    "run_gateway",
    "should_ping_watchdog",
    "store_options",
]

log = structlog.get_logger("gatewayd.app")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
TICK_S: Final = 1.0
STATUS_INTERVAL_S: Final = 10.0
DEFAULT_WATCHDOG_INTERVAL_S: Final = 5.0
#: How often the backpressure governor looks at the inference queue.
BACKPRESSURE_INTERVAL_S: Final = 2.0
#: How often the paired-device list's file is looked at for changes (`gatewayd pair` etc.).
REGISTRY_POLL_S: Final = 2.0
#: The gateway event raised while paired wearables wait for a connection slot.
SLOTS_KIND: Final = "connection_slots_full"
#: How often the gateway looks whether wearables wait for a slot (seconds).
SLOTS_LOOK_S: Final = 5.0
#: How long no wearable may have waited before that event is cleared (seconds).
SLOTS_CLEAR_AFTER_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class ShutdownTimeouts:
    """Bounds of each shutdown step, seconds (docs/running.md)."""

    #: Stop the link: cancel every connection and disconnect (a hung bluetoothd is abandoned).
    link_s: float = 6.0
    #: Process what was received.
    drain_s: float = 10.0
    #: Deliver what the outbox holds (the publisher's grace period; then 2 s for "offline").
    publisher_s: float = 10.0
    #: Stop the inference worker (the batch in its thread).
    worker_s: float = 5.0
    #: Flush and close the event log (writes still held in memory then are logged as lost).
    store_s: float = 5.0

    @property
    def total_s(self) -> float:
        """The longest an orderly shutdown can take."""
        return self.link_s + self.drain_s + self.worker_s + self.publisher_s + 2 + self.store_s


def store_options(config: Config, timeouts: ShutdownTimeouts) -> StoreOptions:
    """The event log's options from [store] and the shutdown budget."""
    synchronous: Synchronous = "FULL" if config.store.synchronous == "full" else "NORMAL"
    return StoreOptions(synchronous=synchronous, close_timeout_s=timeouts.store_s)


@dataclass(slots=True)
class Gateway:
    """The running parts, for `run_gateway`, the demo's live view and the bench (read them;
    the pipeline is the one to feed when there is no link)."""

    config: Config
    topics: Topics
    store: Store
    publisher: Publisher
    worker: InferenceWorker
    pipeline: Pipeline
    link: LinkManager | None
    #: The model's id, or "no model (degraded)".
    model: str
    devices: tuple[PairedDevice, ...]
    #: The paired-device list the devices came from (None: given by the caller); the link
    #: records a device whose identity changed there, as untrusted.
    registry: DeviceRegistry | None = None
    #: Tasks whose end means the gateway cannot go on (a part failed).
    watched: list[asyncio.Task[Any]] = field(default_factory=list)

    async def failure(self) -> BaseException:
        """Wait until a watched part ends, and return why (its exception, or that it ended)."""
        tasks = [t for t in self.watched if t is not None]
        if not tasks:
            await asyncio.Event().wait()
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = next(iter(done))
        if task.cancelled():
            return GatewayError(f"{task.get_name()} was cancelled")
        return task.exception() or GatewayError(f"{task.get_name()} stopped")


def should_ping_watchdog(previous: int, handled: int, backlog: int) -> bool:
    """Ping only if the pipeline handled something since the last ping, or has nothing to do."""
    return handled != previous or backlog == 0


async def _load_model(
    config: Config, models_dir: Path | None
) -> tuple[ModelSession | None, Check | None]:
    """The configured model in an ONNX Runtime session, or None and why not, as `gatewayd
    doctor`'s model check says it (missing, sha256 mismatch, does not load; with the fix)."""
    # Reads and hashes files, loads ONNX Runtime: blocking, so in a thread.
    registry = await asyncio.to_thread(ModelRegistry.discover, models_dir)
    facts = await asyncio.to_thread(registry_facts, registry, config.inference.model)
    if facts.problem is not None:
        return None, check_model(facts)
    installed = registry.get(config.inference.model)
    try:
        session = await asyncio.to_thread(
            ModelSession, installed.card, installed.path, config.inference.threads
        )
    except InferenceError as exc:
        return None, check_model(replace(facts, problem=str(exc)))
    return session, None


def _explain_broker(config: Config, error: BaseException) -> tuple[str, str]:
    """A failed broker connection in `gatewayd doctor`'s words: (message, fix)."""
    check = broker_failure(config.mqtt, error)
    return check.message, check.fix


def link_settings(config: Config) -> LinkSettings:
    """What every wearable's connection is told and held to, from the configuration."""
    return LinkSettings(
        connect_timeout_s=config.ble.connect_timeout_s,
        acquire_notify=config.ble.acquire_notify,
        tau_mbits=round(config.offload.tau_bits * 1000),
        min_conf_e4=round(config.offload.min_confidence * 10_000),
        # The windows the wearable calls rest above the limit the rules alert on at rest are
        # the ones the gateway must see raw (docs/signals.md section 5). 0 would turn the check
        # off, where a limit of 0 bpm means every resting window is above it.
        rest_limit_cbpm=max(1, round(config.rules.tachycardia.rest_bpm * 100)),
    )


async def _note_startup_facts(
    store: Store,
    session: ModelSession | None,
    problem: Check | None,
    config: Config,
) -> None:
    """Gateway-level technical events for what the user must know: a recovered log, no model."""
    now = time.time()
    if store.recovery is not None:
        log.critical("event log recovered", message=store.recovery.message)
        await store.append_event(
            gateway_event("store_recovered", "critical", store.recovery.message, now,
                          moved_to=[str(p) for p in store.recovery.moved_to])
        )  # fmt: skip
    if problem is not None:
        # `gatewayd doctor`'s model line and fix (docs/running.md, "Degraded modes").
        log.warning(problem.message, model=config.inference.model, fix=problem.fix,
                    degraded="heart rate from the signal estimator on offloaded windows,"
                    " no gateway activity")  # fmt: skip
        await store.append_event(
            gateway_event("model_missing", "warning", problem.message, now,
                          model=config.inference.model)
        )  # fmt: skip
    elif session is not None:
        log.info("gateway model loaded", model_id=session.model_id)


async def _restored_engine(
    store: Store, config: Config, paired: Sequence[str] | None
) -> RuleEngine:
    """The rule engine, holding the alerts that were open when the gateway last stopped.

    A condition that still holds is not raised a second time, and its clear names the episode
    raised before the restart (docs/rules.md, "Restart"). With ``paired`` (the paired list's
    device ids), the open alerts of a device removed or renamed since are cleared.
    """
    engine = RuleEngine(config.rules)
    result = engine.restore(
        await store.open_events(),
        t=time.time(),
        mono=time.monotonic(),
        paired=None if paired is None else frozenset(paired),
    )
    for skipped in result.skipped:
        log.warning("open alert not restored", reason=skipped.reason,
                    device=skipped.alert.device_id, kind=skipped.alert.kind)  # fmt: skip
    for transition in result.transitions:
        await store.append_event(alert_event(transition))
        log.info("open alert cleared at start", device=transition.device_id,
                 kind=transition.kind.value, reason=transition.reason)  # fmt: skip
    if result.restored:
        log.info("open alerts restored", count=len(result.restored),
                 alerts=[f"{r.device_id}/{r.kind.value}#{r.episode}"
                         for r in result.restored])  # fmt: skip
    return engine


async def _announce_removals(store: Store, paired: Sequence[PairedDevice]) -> None:
    """Say ``device_removed`` for each device taken off the paired list or renamed while the
    gateway was stopped, as a running gateway does when it lets one go (docs/pairing.md):
    once, for a device the log holds windows of, after the clears of its open alerts."""
    renamed = {old: d.device_id for d in paired for old in d.renamed_from}
    try:
        removed = await store.unannounced_removals({d.device_id for d in paired})
        for device_id in removed:
            renamed_to = renamed.get(device_id)
            await store.append_event(device_removed_event(device_id, renamed_to, time.time()))
            log.info("device taken off the paired list while the gateway was stopped: no longer"
                     " served", device=device_id, renamed_to=renamed_to)  # fmt: skip
    except StoreError as exc:  # the event log says why elsewhere; nothing else depends on it
        log.warning("removed devices not announced", error=str(exc))


@contextlib.asynccontextmanager
async def build_gateway(
    config: Config,
    *,
    devices: Sequence[PairedDevice] | None = None,
    models_dir: Path | None = None,
    with_link: bool = True,
    timeouts: ShutdownTimeouts | None = None,
    backpressure_interval_s: float = BACKPRESSURE_INTERVAL_S,
    telemetry_queue_size: int | None = None,
    tick_s: float = TICK_S,
) -> AsyncIterator[Gateway]:
    """Enter every part of the gateway in order; leave them in reverse, each bounded.

    ``devices`` replaces the paired-device list of the state directory; ``with_link=False``
    builds everything but the link (the caller feeds ``gateway.pipeline``), and no rules clock.
    Raises ConfigError (unreadable password or TLS files) before anything runs.
    """
    timeouts = timeouts or ShutdownTimeouts()
    favour_the_loop()
    gateway_id = config.gateway.id
    topics = Topics(config.mqtt.topic_root, gateway_id)
    registry: DeviceRegistry | None = None
    if devices is None:
        registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
        # A small JSON file, but a file read all the same: off the loop.
        devices = await asyncio.to_thread(registry.load)
    paired = tuple(devices)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            Store.open(config.store.path, config.store, store_options(config, timeouts))
        )
        session, problem = await _load_model(config, models_dir)
        await _note_startup_facts(store, session, problem, config)
        extra: dict[str, Any] = {}
        if telemetry_queue_size is not None:
            extra["telemetry_queue_size"] = telemetry_queue_size
        publisher = await stack.enter_async_context(
            Publisher(
                config.mqtt,
                gateway_id,
                StoreOutbox(store, gateway_id),
                # The paired list it started with: a removed device's retained topics and
                # discovery configs are cleared on connect (docs/mqtt.md).
                paired=[d.device_id for d in paired],
                explain=lambda error: _explain_broker(config, error),
                stop_grace_s=timeouts.publisher_s,
                **extra,
            )
        )
        # Only the state directory's list says which devices were unpaired: a list given by
        # the caller (the demo, a bench) may be a part of it.
        engine = await _restored_engine(
            store, config, None if registry is None else [d.device_id for d in paired]
        )
        if registry is not None:
            await _announce_removals(store, paired)
        worker = await stack.enter_async_context(InferenceWorker(session, config.inference))
        pipeline = await stack.enter_async_context(
            Pipeline(
                gateway_id=gateway_id,
                topics=topics,
                engine=engine,
                store=store,
                publisher=publisher,
                analyse=worker.analyse,
                keep_raw=config.store.keep_raw_windows,
                drain_timeout_s=timeouts.drain_s,
            )
        )
        gateway = Gateway(
            config=config,
            topics=topics,
            store=store,
            publisher=publisher,
            worker=worker,
            pipeline=pipeline,
            link=None,
            model=session.model_id if session is not None else "no model (degraded)",
            devices=paired,
            registry=registry,
        )
        gateway.watched += [t for t in (publisher.task, worker.task, pipeline.task) if t]
        if with_link:
            await _start_link(gateway, stack, timeouts, backpressure_interval_s, tick_s)
        yield gateway
        log.info("gateway stopping", windows=pipeline.stats.windows,
                 alerts=pipeline.stats.alerts)  # fmt: skip


async def _start_link(
    gateway: Gateway,
    stack: contextlib.AsyncExitStack,
    timeouts: ShutdownTimeouts,
    backpressure_interval_s: float,
    tick_s: float,
) -> None:
    """The link, and the loops that join it to the pipeline, entered on ``stack``."""
    config, pipeline = gateway.config, gateway.pipeline
    settings = link_settings(config)
    # Where each device's stream stopped (or, never heard, where it stood when paired): the
    # gateway asks the wearables' rings for what it missed, and records the rest as lost
    # (docs/protocol.md).
    link = LinkManager(
        config.ble.adapters,
        config.ble.slots_per_adapter,
        gateway.devices,
        settings,
        queue_size=config.inference.queue_size * 16,
        resume=await _resume_points(gateway.store),
        registry=gateway.registry,
        close_timeout_s=max(1.0, timeouts.link_s - 1.0),
    )
    gateway.link = link
    # The event taken off the link queue but not yet accepted by the pipeline: shutdown
    # submits it again, so cancelling intake mid-submit loses nothing.
    in_hand: list[LinkEvent] = []

    async def flush_link_events() -> None:
        # Runs once the link has stopped: what it received (and its LinkDowns) is processed.
        for event in in_hand:
            await pipeline.submit(event)
        while not link.events.empty():
            await pipeline.submit(link.events.get_nowait())

    stack.push_async_callback(flush_link_events)
    await stack.enter_async_context(link)
    link_task = start_task(link.wait(), "link")

    async def intake() -> None:
        while True:
            in_hand.append(await link.events.get())
            await pipeline.submit(in_hand[0])
            in_hand.clear()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            await pipeline.submit(pipeline.now())

    governor = Governor(
        capacity=config.inference.queue_size,
        base=SetPolicy(settings.tau_mbits, settings.min_conf_e4),
        # Windows held back in the pipeline (a device's analyses beyond its share) wait for
        # inference as much as those in the worker's queue.
        backlog=lambda: gateway.worker.backlog + pipeline.backlog,
        offloaded=lambda: pipeline.stats.offloaded_by_device,
        set_policy=link.set_policy,
        interval_s=backpressure_interval_s,
    )
    loops = [
        start_task(intake(), "intake"),
        start_task(ticker(), "ticker"),
        start_task(governor.run(), "backpressure"),
    ]
    if gateway.registry is not None:
        loops.append(start_task(_follow_registry(gateway, link), "paired devices"))
    loops.append(start_task(_watch_slots(gateway, link), "connection slots"))

    async def stop_loops() -> None:
        for task in (*loops, link_task):
            await stop_task(task, "gateway stopping: link intake", 1.0)

    stack.push_async_callback(stop_loops)
    gateway.watched += [link_task, *loops]


async def _watch_slots(
    gateway: Gateway,
    link: LinkManager,
    look_s: float = SLOTS_LOOK_S,
    clear_after_s: float = SLOTS_CLEAR_AFTER_S,
) -> None:
    """Raise the gateway event ``connection_slots_full`` while paired wearables wait for a
    connection slot, and clear it once none has for ``clear_after_s`` (`SlotsAlarm`), through
    the event log's outbox like every alert: a subscriber learns it without the journal. One
    the last run left raised is cleared the same way."""
    try:
        latest = await gateway.store.latest_gateway_event(SLOTS_KIND)
    except StoreError:
        latest = None  # the event log says why elsewhere; start as if nothing were raised
    alarm = SlotsAlarm(clear_after_s, raised=latest is not None and latest.state == "raised")
    pool = link.pool
    while True:
        outcome = alarm.step(pool.waiting, time.monotonic())
        if outcome is not None:
            calm = f"no paired device has waited for a connection slot for {clear_after_s:g} s"
            message = (pool.problem if outcome == "raised" else None) or calm
            event = gateway_event(SLOTS_KIND, "warning", message, time.time(), state=outcome,
                                  waiting=pool.waiting, slots=pool.budget.total)  # fmt: skip
            try:
                await gateway.store.append_event(event)
            except StoreError as exc:
                log.warning("connection-slot event not written to the event log",
                            state=outcome, error=str(exc))  # fmt: skip
            else:
                gateway.publisher.notify()
        await asyncio.sleep(look_s)


async def _resume_points(store: Store) -> dict[str, ResumePoint]:
    """Where each device's stream stopped, by device id, from the event log (the link weighs
    them against where each stood when paired: `registry.resume_point`)."""
    cursors = await store.cursors()
    return {d: ResumePoint(c.boot_id, c.next_seq, c.heard_at) for d, c in cursors.items()}


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file (inode, mtime, size); None when there is none. Blocks."""
    try:
        st = path.stat()
    except OSError:
        return None  # no file, or none this user may look at: loading it says which
    return st.st_ino, st.st_mtime_ns, st.st_size


async def _follow_registry(
    gateway: Gateway, link: LinkManager, interval_s: float = REGISTRY_POLL_S
) -> None:
    """Apply changes of the paired-device list to the running link (docs/pairing.md).

    `gatewayd pair` and `gatewayd devices remove | rename` write the list (atomically) beside a
    running gateway: within ``interval_s`` a device added is connected, one paired again has
    its link started again, one removed has its link stopped (the pipeline then clears its open
    alerts, reason ``unpaired``, and the publisher empties its retained topics), one renamed
    is let go under its old id and served under its new one; the others stay connected.
    """
    registry = gateway.registry
    assert registry is not None
    # None: the first look applies the file as it is then (a no-op when unchanged), so a
    # `gatewayd pair` between the start's load and that look is not missed.
    seen: tuple[int, int, int] | None = None
    while True:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(_file_signature, registry.path)
        if now == seen:
            continue
        seen = now
        try:
            devices = await asyncio.to_thread(registry.load)
        except RegistryError as exc:
            log.warning("paired devices not reloaded; the gateway goes on with its list",
                        error=str(exc))  # fmt: skip
            continue
        try:
            resume = await _resume_points(gateway.store)
        except StoreError as exc:  # the event log is unreadable: new devices start afresh
            log.warning("no resume points for the paired devices", error=str(exc))
            resume = {}
        change = await link.update_devices(devices, resume)
        gateway.devices = link.devices
        # Before the pipeline lets a removed device go: its last alerts (the clears) then no
        # longer make the publisher keep an open-alert set for it.
        gateway.publisher.set_paired(d.device_id for d in gateway.devices)
        for old_id in (*change.removed, *(old for old, _ in change.renamed)):
            gateway.worker.forget(old_id)
        if change:
            log.info("paired devices changed", added=change.added, paired_again=change.restarted,
                     removed=change.removed,
                     renamed=[f"{old} -> {new}" for old, new in change.renamed])  # fmt: skip


async def run_gateway(
    config: Config,
    *,
    stop: asyncio.Event,
    registry_devices: Sequence[PairedDevice] | None = None,
    ready: Callable[[], None] | None = None,
    watchdog: Callable[[], None] | None = None,
    status: Callable[[str], None] | None = None,
    stopping: Callable[[], None] | None = None,
    models_dir: Path | None = None,
    watchdog_interval_s: float = DEFAULT_WATCHDOG_INTERVAL_S,
    backpressure_interval_s: float = BACKPRESSURE_INTERVAL_S,
    timeouts: ShutdownTimeouts | None = None,
    observe: Callable[[Gateway], None] | None = None,
) -> int:
    """Run the gateway until ``stop`` is set or a part fails; return the exit code.

    ``ready`` is called once the store is open, the MQTT, BLE and pipeline loops run and an
    adapter answers (until then ``status`` says what it waits for); ``watchdog`` every
    ``watchdog_interval_s`` while the pipeline makes progress (or is idle); ``status`` with one
    human line now and then (systemd STATUS=); ``stopping`` once, when an orderly shutdown
    begins (systemd STOPPING=1). ``registry_devices`` replaces the paired-device list of the
    state directory; ``models_dir`` the installed models. ``observe`` is handed the running
    gateway once, just before ``ready``.
    Exit codes: 0 normal stop, 78 configuration error, 1 other.
    """
    tell = status or (lambda _line: None)
    failure: BaseException | None = None
    try:
        tell("opening the event log")
        async with build_gateway(
            config,
            devices=registry_devices,
            models_dir=models_dir,
            timeouts=timeouts,
            backpressure_interval_s=backpressure_interval_s,
        ) as gateway:
            service = _Service(gateway, status=tell, watchdog=watchdog)
            failure = await service.serve(
                stop, ready or (lambda: None), watchdog_interval_s, observe or (lambda _g: None)
            )
            (stopping or (lambda: None))()
            tell("stopping")
            log.info("stopping: link, pipeline, publisher, event log, in that order")
    except Exception as exc:  # noqa: BLE001 - every failure becomes an exit code, said once
        failure = exc
    return _exit_code(failure, tell)


def _exit_code(failure: BaseException | None, tell: Callable[[str], None]) -> int:
    """The exit code for how the gateway ended, said in the log and in STATUS=."""
    if failure is None:
        log.info("gateway stopped")
        tell("stopped")
        return EXIT_OK
    if isinstance(failure, ConfigError):
        log.error("configuration error", error=str(failure))
        tell(f"configuration error: {failure}")
        return EXIT_CONFIG
    if isinstance(failure, GatewayError):
        log.error("gateway failed", error=str(failure))
        tell(f"failed: {failure}")
        return EXIT_ERROR
    log.error("a gateway part failed", error=repr(failure), where=raised_at(failure))
    tell(f"failed: {failure!r}")
    return EXIT_ERROR


class _Service:
    """What only a service adds: READY=1 once an adapter answers, STATUS=, the watchdog."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        status: Callable[[str], None],
        watchdog: Callable[[], None] | None,
    ) -> None:
        assert gateway.link is not None
        self.gateway = gateway
        self.link = gateway.link
        self.status = status
        self.watchdog = watchdog
        #: Adapters whose scanner failed last, with doctor's explanation.
        self.adapter_problems: dict[str, Check] = {}
        #: Set once an adapter answers.
        self.adapter_answers = asyncio.Event()

    def describe(self) -> str:
        """The STATUS= line now."""
        gateway, config = self.gateway, self.gateway.config
        pipeline, publisher = gateway.pipeline, gateway.publisher
        if not self.adapter_answers.is_set():
            waiting = [
                f"{a}: {self.adapter_problems[a].message}" if a in self.adapter_problems else a
                for a in config.ble.adapters
            ]
            return f"waiting for adapter {'; '.join(waiting)}"
        connected = sum(1 for v in pipeline.views.values() if v.connected)
        line = (
            f"{connected}/{len(gateway.devices)} devices connected, mqtt"
            f" {'up' if publisher.connected else 'down'}, {pipeline.stats.windows}"
            f" windows, {pipeline.stats.alerts} alerts, model {gateway.model}"
        )
        if publisher.problem is not None:
            line += f"; {publisher.problem}"
        if (problem := gateway.store.problem) is not None:
            line += f"; event log: {problem.text}"
        for adapter, check in self.adapter_problems.items():
            line += f"; adapter {adapter} does not answer: {check.message}"
        if (bus_problem := self.link.bus.problem) is not None:
            line += f"; {bus_problem}"
        if (slot_problem := self.link.pool.problem) is not None:
            line += f"; {slot_problem}"
        return line

    async def watch_adapters(self) -> None:
        """Explain each scanner failure the way `gatewayd doctor` would, logged once per change
        of the explanation; the scanner retries on its own (backoff)."""
        adapters = self.link.adapters
        said: dict[str, str] = {}
        seen = -1
        while True:
            await adapters.wait_change(seen)
            seen = adapters.version
            for adapter, state in adapters.snapshot().items():
                if state.answers:
                    self.adapter_problems.pop(adapter, None)
                    if said.get(adapter, "answers") != "answers":
                        log.info("adapter answers", adapter=adapter)
                    said[adapter] = "answers"
                elif state.error is not None:
                    check = await diagnose_adapter(adapter, state.error)
                    self.adapter_problems[adapter] = check
                    if said.get(adapter) != check.message:
                        said[adapter] = check.message
                        event = (
                            f"adapter {adapter} does not answer: {check.message}"
                            if self.adapter_answers.is_set()
                            else f"waiting for adapter {adapter}: {check.message}"
                        )
                        log.warning(event, adapter=adapter, fix=check.fix)
            if adapters.answering():
                self.adapter_answers.set()
            self.status(self.describe())

    async def watch_store(self) -> None:
        """Say at once when the event log holds writes in memory, and when it is well again.

        The store itself writes the event_log_degraded alert and its clear (docs/store.md).
        """
        store = self.gateway.store
        version = store.problem_version
        while True:
            version = await store.wait_problem_change(version)
            if (problem := store.problem) is not None:
                log.error("event log degraded", problem=problem.text)
            else:
                log.info("event log writes again")
            self.status(self.describe())

    async def ping(self, interval_s: float) -> None:
        """WATCHDOG=1 every ``interval_s`` while the pipeline makes progress; STATUS= now and
        then."""
        pipeline = self.gateway.pipeline
        previous = -1
        last_status = 0.0
        while True:
            await asyncio.sleep(interval_s)
            handled = pipeline.stats.handled
            if self.watchdog is not None and should_ping_watchdog(
                previous, handled, pipeline.backlog
            ):
                self.watchdog()
            elif self.watchdog is not None:
                log.warning("pipeline stalled: watchdog not pinged", backlog=pipeline.backlog)
            previous = handled
            if time.monotonic() - last_status >= STATUS_INTERVAL_S:
                last_status = time.monotonic()
                self.status(self.describe())

    async def serve(
        self,
        stop: asyncio.Event,
        ready: Callable[[], None],
        watchdog_interval_s: float,
        observe: Callable[[Gateway], None],
    ) -> BaseException | None:
        """READY=1 once an adapter answers, then run until ``stop`` or a part fails; return
        the failure, if one ended it."""
        gateway, config = self.gateway, self.gateway.config
        helpers = [
            start_task(self.watch_adapters(), "adapters"),
            start_task(self.ping(watchdog_interval_s), "watchdog"),
            start_task(self.watch_store(), "store-watch"),
        ]
        failed = asyncio.ensure_future(gateway.failure())
        stopped = asyncio.ensure_future(stop.wait())
        answered = asyncio.ensure_future(self.adapter_answers.wait())
        try:
            observe(gateway)
            self.status(self.describe())
            # READY=1 once an adapter answers; a stop request or a failure may come first.
            await asyncio.wait({failed, stopped, answered}, return_when=asyncio.FIRST_COMPLETED)
            if answered.done() and not stopped.done() and not failed.done():
                log.info("gateway running", gateway_id=config.gateway.id,
                         devices=len(gateway.devices), model=gateway.model,
                         mqtt=f"{config.mqtt.host}:{config.mqtt.port}",
                         store=str(config.store.path),
                         adapters=self.link.adapters.answering())  # fmt: skip
                if not gateway.devices:
                    log.warning("no paired devices yet; the gateway connects each one paired"
                                " from now on", fix="gatewayd pair --all")  # fmt: skip
                settle_heap()
                ready()
                self.status(self.describe())
                await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            return failed.result() if failed.done() else None
        finally:
            for waiter in (failed, stopped, answered):
                waiter.cancel()
            for task in helpers:
                await stop_task(task, "gateway stopping", 1.0)
