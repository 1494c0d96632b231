"""The supervisor: every long-running part of the gateway in one TaskGroup, stopped in order.

`run_gateway` opens the store, discovers the model (none installed is a degraded mode, not a
failure), and runs the publisher, the link, the inference worker, the pipeline, the rules ticker
and the watchdog in one TaskGroup until the shutdown Event is set: by SIGTERM or SIGINT (the
handlers only set the Event; a second SIGINT forces a quick exit), by the caller's ``stop``
Event, or by a part failing.

READY=1 waits for an adapter that answers (its scanner started): until then STATUS= says which
adapter it waits for and why, in `gatewayd doctor`'s words (gatewayd.doctor.diagnose_adapter),
logged once per change. It waits as long as it takes; under the packaged unit systemd's
TimeoutStartSec= ends the wait (docs/running.md). A broker that cannot be reached does not hold
READY=1 back (alerts wait in the outbox): the publisher logs why, in doctor's words
(gatewayd.doctor.broker_failure), once per change of cause, and STATUS= names it.

Shutdown is ordered and bounded (docs/running.md): stop link intake, drain the pipeline queue,
flush the store, stop the publisher (status "offline"), give it a grace period, then cancel
whatever is left with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import structlog

from gatewayd.config import Config
from gatewayd.doctor import (
    Check,
    broker_failure,
    check_model,
    diagnose_adapter,
    registry_facts,
)
from gatewayd.errors import EXIT_CONFIG, ConfigError, GatewayError
from gatewayd.inference.registry import ModelRegistry
from gatewayd.inference.session import InferenceError, ModelSession
from gatewayd.link.connection import LinkSettings
from gatewayd.link.events import LinkEvent
from gatewayd.link.manager import LinkManager
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from gatewayd.pipeline import (
    BackpressureConfig,
    BackpressureState,
    InferenceWorker,
    Pipeline,
    StoreOutbox,
    Tick,
    gateway_event,
    plan_backpressure,
    throttled_policy,
)
from gatewayd.protocol.control import SetPolicy
from gatewayd.publish.client import Publisher
from gatewayd.publish.topics import Topics
from gatewayd.rules.engine import RuleEngine
from gatewayd.store.store import Store

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "GatewayParts",
    "ShutdownTimeouts",
    "run_gateway",
    "should_ping_watchdog",
]

log = structlog.get_logger("gatewayd.app")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_INTERRUPTED: Final = 130
TICK_S: Final = 1.0
STATUS_INTERVAL_S: Final = 10.0
DEFAULT_WATCHDOG_INTERVAL_S: Final = 5.0
#: How often the backpressure governor looks at the inference queue.
BACKPRESSURE_INTERVAL_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class ShutdownTimeouts:
    """Bounds of each shutdown step, seconds."""

    drain_s: float = 10.0
    publisher_s: float = 10.0
    cancel_s: float = 5.0


@dataclass(frozen=True, slots=True)
class GatewayParts:
    """The running parts, for an observer such as the demo's live view (read them, don't drive)."""

    pipeline: Pipeline
    worker: InferenceWorker
    publisher: Publisher
    link: LinkManager
    model: str


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


def _link_settings(config: Config) -> LinkSettings:
    return LinkSettings(
        connect_timeout_s=config.ble.connect_timeout_s,
        tau_mbits=round(config.offload.tau_bits * 1000),
        min_conf_e4=round(config.offload.min_confidence * 10_000),
    )


async def _first_set(*events: asyncio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def run_gateway(
    config: Config,
    *,
    registry_devices: Sequence[PairedDevice] | None = None,
    ready: Callable[[], None] | None = None,
    watchdog: Callable[[], None] | None = None,
    status: Callable[[str], None] | None = None,
    stopping: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    models_dir: Path | None = None,
    handle_signals: bool | None = None,
    watchdog_interval_s: float = DEFAULT_WATCHDOG_INTERVAL_S,
    backpressure_interval_s: float = BACKPRESSURE_INTERVAL_S,
    timeouts: ShutdownTimeouts | None = None,
    observe: Callable[[GatewayParts], None] | None = None,
) -> int:
    """Run the gateway until ``stop`` is set or a signal arrives; return the exit code.

    ``ready`` is called once the store is open, the MQTT, BLE and pipeline loops run and an
    adapter answers (until then ``status`` says what it waits for);
    ``watchdog`` every ``watchdog_interval_s`` while the pipeline makes progress (or is idle);
    ``status`` with one human line now and then (systemd STATUS=); ``stopping`` once, when an
    orderly shutdown begins (systemd STOPPING=1). ``registry_devices``
    replaces the paired-device list of the state directory (the publisher clears the retained
    topics of this gateway's other devices on connect); ``models_dir`` the installed
    models. Signal handlers are installed when ``handle_signals`` (default: no ``stop`` given).
    ``observe`` is handed the running parts once, just before ``ready``;
    ``backpressure_interval_s`` is how often the governor looks at the inference queue.
    Exit codes: 0 normal stop, 78 configuration error, 130 forced by a second SIGINT, 1 other.
    """
    if handle_signals is None:
        handle_signals = stop is None
    stop = stop if stop is not None else asyncio.Event()
    tell = status or (lambda _line: None)
    try:
        return await _run(
            config,
            registry_devices=registry_devices,
            ready=ready or (lambda: None),
            watchdog=watchdog,
            status=tell,
            stopping=stopping or (lambda: None),
            stop=stop,
            models_dir=models_dir,
            handle_signals=handle_signals,
            watchdog_interval_s=watchdog_interval_s,
            backpressure_interval_s=backpressure_interval_s,
            timeouts=timeouts or ShutdownTimeouts(),
            observe=observe or (lambda _parts: None),
        )
    except ConfigError as exc:
        log.error("configuration error", error=str(exc))  # noqa: TRY400 - advice, no traceback
        tell(f"configuration error: {exc}")
        return EXIT_CONFIG
    except GatewayError as exc:
        log.error("gateway failed", error=str(exc))  # noqa: TRY400 - advice, no traceback
        tell(f"failed: {exc}")
        return EXIT_ERROR


async def _run(  # noqa: PLR0912, PLR0915 - one story: open, start, wait, stop in order
    config: Config,
    *,
    registry_devices: Sequence[PairedDevice] | None,
    ready: Callable[[], None],
    watchdog: Callable[[], None] | None,
    status: Callable[[str], None],
    stopping: Callable[[], None],
    stop: asyncio.Event,
    models_dir: Path | None,
    handle_signals: bool,
    watchdog_interval_s: float,
    backpressure_interval_s: float,
    timeouts: ShutdownTimeouts,
    observe: Callable[[GatewayParts], None],
) -> int:
    gateway_id = config.gateway.id
    topics = Topics(config.mqtt.topic_root, gateway_id)
    if registry_devices is None:
        registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
        # A small JSON file, but a file read all the same: off the loop.
        registry_devices = await asyncio.to_thread(registry.load)
    devices = list(registry_devices)
    if not devices:
        log.warning("no paired devices: nothing will connect (pair with `gatewayd pair`)")
    status("opening the event log")
    forced = False
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def on_signal(signum: int) -> None:
        nonlocal forced
        if stop.is_set() and signum == signal.SIGINT and not forced:
            forced = True
            log.warning("second SIGINT: forcing exit")
            if main is not None:
                main.cancel("forced exit (second SIGINT)")
            return
        log.info("shutdown requested", signal=signal.Signals(signum).name)
        stop.set()

    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
    try:
        async with Store.open(config.store.path, config.store) as store:
            now = time.time()
            if store.recovery is not None:
                log.critical("event log recovered", message=store.recovery.message)
                await store.append_event(
                    gateway_event("store_recovered", "critical", store.recovery.message, now,
                                  moved_to=[str(p) for p in store.recovery.moved_to]),
                    topic=topics.gateway_alerts,
                )  # fmt: skip
            session, problem = await _load_model(config, models_dir)
            if problem is not None:
                # `gatewayd doctor`'s model line and fix (docs/running.md, "Degraded modes").
                log.warning(problem.message, model=config.inference.model, fix=problem.fix,
                            degraded="heart rate from the signal estimator on offloaded"
                            " windows, no gateway activity")  # fmt: skip
                await store.append_event(
                    gateway_event("model_missing", "warning", problem.message, now,
                                  model=config.inference.model),
                    topic=topics.gateway_alerts,
                )  # fmt: skip
            elif session is not None:
                log.info("gateway model loaded", model_id=session.model_id)
            # The paired list it started with: a removed device's retained topics and
            # discovery configs are cleared on connect (docs/mqtt.md).
            publisher = Publisher(
                config.mqtt,
                gateway_id,
                StoreOutbox(store, gateway_id),
                paired=[d.device_id for d in devices],
                explain=lambda error: _explain_broker(config, error),
            )
            settings = _link_settings(config)
            link = LinkManager(
                config.ble.adapters,
                config.ble.slots_per_adapter,
                devices,
                settings,
                queue_size=config.inference.queue_size * 16,
            )
            worker = InferenceWorker(session, config.inference)
            pipeline = Pipeline(
                gateway_id=gateway_id,
                topics=topics,
                engine=RuleEngine(config.rules),
                store=store,
                publisher=publisher,
                analyse=worker.analyse,
                keep_raw=config.store.keep_raw_windows,
            )
            model_text = session.model_id if session is not None else "no model (degraded)"
            # Adapters whose scanner failed last, with doctor's explanation; set once one answers.
            adapter_problems: dict[str, Check] = {}
            adapter_answers = asyncio.Event()

            def describe() -> str:
                if not adapter_answers.is_set():
                    waiting = [
                        f"{a}: {adapter_problems[a].message}" if a in adapter_problems else a
                        for a in config.ble.adapters
                    ]
                    return f"waiting for adapter {'; '.join(waiting)}"
                connected = sum(1 for v in pipeline.views.values() if v.connected)
                line = (
                    f"{connected}/{len(devices)} devices connected, mqtt"
                    f" {'up' if publisher.connected else 'down'}, {pipeline.stats.windows}"
                    f" windows, {pipeline.stats.alerts} alerts, model {model_text}"
                )
                if publisher.problem is not None:
                    line += f"; {publisher.problem}"
                for adapter, check in adapter_problems.items():
                    line += f"; adapter {adapter} does not answer: {check.message}"
                return line

            async def adapter_watch() -> None:
                # Explains each scanner failure the way `gatewayd doctor` would, logged once per
                # change of the explanation; the scanner retries on its own (backoff).
                said: dict[str, str] = {}
                seen = -1
                while True:
                    await link.adapters.wait_change(seen)
                    seen = link.adapters.version
                    for adapter, state in link.adapters.snapshot().items():
                        if state.answers:
                            adapter_problems.pop(adapter, None)
                            if said.get(adapter, "answers") != "answers":
                                log.info("adapter answers", adapter=adapter)
                            said[adapter] = "answers"
                        elif state.error is not None:
                            check = await diagnose_adapter(adapter, state.error)
                            adapter_problems[adapter] = check
                            if said.get(adapter) != check.message:
                                said[adapter] = check.message
                                event = (
                                    f"adapter {adapter} does not answer: {check.message}"
                                    if adapter_answers.is_set()
                                    else f"waiting for adapter {adapter}: {check.message}"
                                )
                                log.warning(event, adapter=adapter, fix=check.fix)
                    if link.adapters.answering():
                        adapter_answers.set()
                    status(describe())

            # The event taken off the link queue but not yet accepted by the pipeline: shutdown
            # submits it again, so cancelling intake mid-submit loses nothing.
            in_hand: list[LinkEvent] = []

            async def intake() -> None:
                while True:
                    in_hand.append(await link.events.get())
                    await pipeline.submit(in_hand[0])
                    in_hand.clear()

            async def ticker() -> None:
                while True:
                    await asyncio.sleep(TICK_S)
                    await pipeline.submit(Tick(time.time()))

            async def pinger() -> None:
                previous = -1
                last_status = 0.0
                while True:
                    await asyncio.sleep(watchdog_interval_s)
                    handled = pipeline.stats.handled
                    if watchdog is not None and should_ping_watchdog(
                        previous, handled, pipeline.backlog
                    ):
                        watchdog()
                    elif watchdog is not None:
                        log.warning("pipeline stalled: watchdog not pinged",
                                    backlog=pipeline.backlog)  # fmt: skip
                    previous = handled
                    if time.monotonic() - last_status >= STATUS_INTERVAL_S:
                        last_status = time.monotonic()
                        status(describe())

            pressure = BackpressureConfig()

            async def governor() -> None:
                state = BackpressureState()
                last: dict[str, int] = {}
                while True:
                    await asyncio.sleep(backpressure_interval_s)
                    counts = dict(pipeline.stats.offloaded_by_device)
                    delta = {d: n - last.get(d, 0) for d, n in counts.items()}
                    last = counts
                    state, changes = plan_backpressure(
                        state,
                        pressure,
                        backlog=worker.backlog,
                        capacity=config.inference.queue_size,
                        offloads=delta,
                    )
                    for device_id, level in changes.items():
                        tau, conf = throttled_policy(
                            settings.tau_mbits, settings.min_conf_e4, level, pressure
                        )
                        link.set_policy(device_id, SetPolicy(tau, conf))
                        log.info("backpressure: offload policy changed", device=device_id,
                                 level=level, tau_mbits=tau, min_conf_e4=conf,
                                 inference_backlog=worker.backlog)  # fmt: skip

            async with asyncio.TaskGroup() as tg:
                t_publisher = tg.create_task(publisher.run(), name="publisher")
                t_pipeline = tg.create_task(pipeline.run(), name="pipeline")
                t_worker = tg.create_task(worker.run(), name="inference")
                t_link = tg.create_task(link.run(), name="link")
                t_intake = tg.create_task(intake(), name="intake")
                t_ticker = tg.create_task(ticker(), name="ticker")
                t_pinger = tg.create_task(pinger(), name="watchdog")
                t_governor = tg.create_task(governor(), name="backpressure")
                t_adapters = tg.create_task(adapter_watch(), name="adapters")
                await asyncio.sleep(0)  # let every loop start
                observe(GatewayParts(pipeline, worker, publisher, link, model_text))
                status(describe())
                # READY=1 once an adapter answers; a stop request may come first.
                await _first_set(adapter_answers, stop)
                if not stop.is_set():
                    log.info("gateway running", gateway_id=gateway_id, devices=len(devices),
                             model=model_text, mqtt=f"{config.mqtt.host}:{config.mqtt.port}",
                             store=str(config.store.path),
                             adapters=link.adapters.answering())  # fmt: skip
                    ready()
                    status(describe())
                await stop.wait()

                # --- ordered, bounded shutdown -----------------------------------------------
                stopping()
                status("stopping: link")
                log.info("stopping: link intake")
                intake_tasks = (t_link, t_intake, t_ticker, t_governor, t_adapters)
                for task in intake_tasks:
                    task.cancel("gateway stopping: link intake")
                await asyncio.gather(*intake_tasks, return_exceptions=True)
                # Frames already received are processed, not dropped.
                for event in in_hand:
                    await pipeline.submit(event)
                while not link.events.empty():
                    await pipeline.submit(link.events.get_nowait())
                status("stopping: draining the pipeline")
                try:
                    async with asyncio.timeout(timeouts.drain_s):
                        await pipeline.drain()
                except TimeoutError:
                    log.warning("pipeline not drained in time", backlog=pipeline.backlog,
                                timeout_s=timeouts.drain_s)  # fmt: skip
                t_pipeline.cancel("gateway stopping")
                t_worker.cancel("gateway stopping")
                status("stopping: flushing the event log")
                await store.flush()
                status("stopping: MQTT")
                publisher.stop()
                try:
                    async with asyncio.timeout(timeouts.publisher_s):
                        await asyncio.shield(t_publisher)
                except TimeoutError:
                    log.warning("publisher did not stop in time; cancelling",
                                timeout_s=timeouts.publisher_s)  # fmt: skip
                for task in (t_publisher, t_pinger):
                    task.cancel("gateway stopping: grace period over")
            log.info("gateway stopped", windows=pipeline.stats.windows,
                     alerts=pipeline.stats.alerts)  # fmt: skip
            status("stopped")
    except asyncio.CancelledError:
        if forced:
            if main is not None:
                main.uncancel()
            log.warning("forced exit")
            return EXIT_INTERRUPTED
        raise
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        config_errors = [e for e in leaves if isinstance(e, ConfigError)]
        if config_errors:
            raise config_errors[0] from group
        gateway_errors = [e for e in leaves if isinstance(e, GatewayError)]
        if gateway_errors and len(gateway_errors) == len(leaves):
            raise gateway_errors[0] from group
        log.exception("a gateway task failed", errors=[repr(e) for e in leaves])
        return EXIT_ERROR
    finally:
        for handled in installed:
            loop.remove_signal_handler(handled)
    return EXIT_OK
