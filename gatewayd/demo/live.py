"""`gatewayd demo`: emulated wearables -> the real gateway -> an MQTT broker -> a subscriber.

Everything is the production code path: a private D-Bus with the emulated BlueZ that unmodified
bleak talks to, `gatewayd.app.run_gateway` with the shipped model, an SQLite event log in a
state directory, and a real broker (`gatewayd.demo.broker`). The scripted scenario
(`gatewayd.demo.scenario`) plants a tachycardia at rest, a fall and a disconnection; the view
is built from what a subscriber receives over MQTT.

Order: broker, bus and emulated BlueZ; the gateway (until READY); the subscriber; then the
replay starts (demo time 0). With ``duration_s`` the recordings are that long: when the replay
ends the demo waits (bounded) until every window and every alert has reached the subscriber,
then stops the gateway in its normal ordered way and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import aiomqtt
import structlog

from gatewayd.app import Gateway, run_gateway
from gatewayd.config import Config, load_config
from gatewayd.datasets.recording import Recording
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator.bluez import FakeBluez, install_bluetoothctl_shim
from gatewayd.emulator.bus import DBUS_SYSTEM_BUS_ADDRESS, PrivateBus
from gatewayd.emulator.virtual import (
    Fleet,
    FleetSetup,
    build_fleet,
    load_wearable_model,
    run_fleet,
)
from gatewayd.errors import GatewayError
from gatewayd.link.registry import DeviceRegistry
from gatewayd.publish.cleanup import clear_retained
from gatewayd.signals.windows import STEP_S, WINDOW_S

from .broker import BrokerChoice, choose_broker, mosquitto_sub_line
from .scenario import DEMO_RULES, SCENARIO, Scenario, away_changes, check_expectations
from .view import DISCOVERY_PREFIX, DemoState, Gauges, render

__all__ = ["DemoOptions", "DemoResult", "run_demo", "write_summary"]

log = structlog.get_logger("gatewayd.demo")

GATEWAY_ID: Final = "demo"
#: Replay length when the demo runs until interrupted.
OPEN_ENDED_S: Final = 3600.0
#: After the replay, how long to wait for the last windows and alerts to reach the subscriber.
DRAIN_S: Final = 45.0
READY_S: Final = 60.0
REFRESH_S: Final = 1.0
PROGRESS_S: Final = 5.0
ALERTS_FILTER: Final = f"gatewayd/{GATEWAY_ID}/devices/+/alerts"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `gatewayd demo` was asked for."""

    headless: bool = False
    duration_s: float | None = None
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    state_dir: Path | None = None
    scenario: Scenario = SCENARIO
    models_dir: Path | None = None
    #: Where the gateway's log goes when the live view owns the terminal (shown in the header).
    log_path: Path | None = None


@dataclass
class DemoResult:
    """What happened, for the JSON summary and the tests."""

    summary: dict[str, Any]
    state: DemoState
    config: Config
    produced: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every expectation due was met and nothing was lost."""
        return bool(self.summary["ok"])


def demo_config_text(broker: BrokerChoice) -> str:
    """The gateway's configuration for the demo, as TOML, written into its state dir: "."
    there is that folder (a relative path in a config file is relative to the file's folder)."""
    return (
        f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "."\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nkeepalive_s = 10\n'
        "homeassistant_discovery = true\n"
        f"{DEMO_RULES}"
    )


def recordings_for(scenario: Scenario, seconds: float) -> list[Recording]:
    """The residents' synthetic recordings, ``seconds`` long (whole windows)."""
    minutes = max(seconds, WINDOW_S + STEP_S) / 60.0
    return [
        generate_recording(
            r.subject,
            minutes,
            seed=r.seed,
            events=r.events,
            activities=[(r.activity, seconds + 60.0)],
        )
        for r in scenario.residents
    ]


@contextlib.contextmanager
def _bleak_environment(bus_address: str, shim_dir: Path) -> Any:
    """Point this process's bleak at the private bus (and its version probe at the shim)."""
    saved = {k: os.environ.get(k) for k in (DBUS_SYSTEM_BUS_ADDRESS, "PATH")}
    os.environ[DBUS_SYSTEM_BUS_ADDRESS] = bus_address
    os.environ["PATH"] = f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _subscribe(
    broker: BrokerChoice, state: DemoState, clock: Callable[[], float], ready: asyncio.Event
) -> None:
    """Receive the gateway's whole tree at QoS 1, reconnecting if the connection drops."""
    while True:
        try:
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                identifier=f"gatewayd-demo-viewer-{os.getpid()}",
                # A clean session: nothing is left queued on the broker after the demo. The
                # subscription is made before the replay starts and the broker stays up.
                clean_session=True,
                protocol=aiomqtt.ProtocolVersion.V311,
            ) as client:
                await client.subscribe(f"gatewayd/{GATEWAY_ID}/#", qos=1)
                await client.subscribe(f"{DISCOVERY_PREFIX}/+/{GATEWAY_ID}/+/config", qos=1)
                ready.set()
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes | bytearray):
                        state.on_message(str(message.topic), bytes(payload), clock())
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def _scenario_script(scenario: Scenario, fleet: Fleet, t0: float) -> None:
    """Move wearables out of range and back as the scenario says."""
    devices = {r.device_id: fleet.wearables[i][0] for i, r in enumerate(scenario.residents)}
    loop = asyncio.get_running_loop()
    for at_s, device_id, in_range in away_changes(scenario.residents):
        await asyncio.sleep(max(0.0, t0 + at_s - loop.time()))
        log.info("demo: range change", device=device_id, in_range=in_range, t_s=at_s)
        await devices[device_id].set_in_range(in_range)


def _complete(state: DemoState, produced: dict[str, int]) -> bool:
    return all(len(state.row(device_id).seqs) >= count for device_id, count in produced.items())


@contextlib.asynccontextmanager
async def _stop_on_signals(stop: asyncio.Event) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def run_demo(options: DemoOptions, out: TextIO) -> DemoResult:
    """Run the demo; the caller prints the result (JSON when headless)."""
    if await asyncio.to_thread(shutil.which, "dbus-daemon") is None:
        raise GatewayError(
            "the demo emulates BlueZ on a private D-Bus and needs dbus-daemon:"
            " sudo apt-get install dbus (make demo installs it when run as root)"
        )
    scenario = options.scenario
    seconds = options.duration_s if options.duration_s is not None else OPEN_ENDED_S
    recordings = await asyncio.to_thread(recordings_for, scenario, seconds)
    stop = asyncio.Event()
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="gatewayd-demo-"))
    try:
        state_dir = options.state_dir or tmp / "state"
        shim_dir = tmp / "bin"
        await asyncio.to_thread(install_bluetoothctl_shim, shim_dir)
        async with (
            _stop_on_signals(stop),
            choose_broker(options.mqtt_host, options.mqtt_port) as broker,
            PrivateBus() as bus_address,
            FakeBluez(bus_address) as fake,
        ):
            with _bleak_environment(bus_address, shim_dir):
                config_path = state_dir / "gatewayd-demo.toml"
                await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
                await asyncio.to_thread(config_path.write_text, demo_config_text(broker), "utf-8")
                config = await asyncio.to_thread(load_config, config_path, {})
                return await _run(options, scenario=scenario, recordings=recordings,
                                  config=config, broker=broker, fake=fake, stop=stop,
                                  out=out)  # fmt: skip
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)


async def _run(  # noqa: PLR0915 - one story, told in order
    options: DemoOptions,
    *,
    scenario: Scenario,
    recordings: list[Recording],
    config: Config,
    broker: BrokerChoice,
    fake: FakeBluez,
    stop: asyncio.Event,
    out: TextIO,
) -> DemoResult:
    # The wearables run the shipped pruned model (40 %), as a fleet would; without one their
    # activity is unknown and the gateway's model answers it on offloaded windows.
    local_model, _ = await asyncio.to_thread(load_wearable_model, 40, options.models_dir)
    setup = FleetSetup(devices=len(scenario.residents), speed=1.0, seed=1, local_model=local_model)
    fleet = await build_fleet(fake, recordings, setup)
    # Paired as `gatewayd pair` would, in the demo's state directory, so that `gatewayd
    # --config <state dir>/gatewayd-demo.toml devices list` (or events) works on it afterwards.
    registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
    paired = [
        await asyncio.to_thread(
            registry.add, device.address, "wearable", wearable.core.spec.name, r.device_id
        )
        for r, (device, wearable) in zip(scenario.residents, fleet.wearables, strict=True)
    ]
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    state = DemoState()
    parts: list[Gateway] = []
    ready = asyncio.Event()
    gateway_stop = asyncio.Event()
    gateway = asyncio.create_task(
        run_gateway(
            config,
            registry_devices=paired,
            ready=ready.set,
            stop=gateway_stop,
            models_dir=options.models_dir,
            observe=parts.append,
        ),
        name="gateway",
    )
    subscribed = asyncio.Event()
    subscriber = asyncio.create_task(_subscribe(broker, state, clock, subscribed))
    header = _header(scenario, broker, config, options.log_path)
    console = sys.stderr if options.headless else out
    console.write("\n".join(header) + "\n\nstarting: emulated BlueZ, gateway, subscriber ...\n")
    console.flush()
    tasks: list[asyncio.Task[Any]] = [gateway, subscriber]
    produced: dict[str, int] = {}
    replay_done = False
    replayed_s = 0.0
    try:
        await _until(ready, gateway, READY_S, "the gateway to start")
        await _until(subscribed, subscriber, READY_S, "the demo's MQTT subscriber")
        t0 = loop.time()
        replay = asyncio.create_task(run_fleet(fleet, setup.speed), name="replay")
        script = asyncio.create_task(_scenario_script(scenario, fleet, t0), name="scenario")
        tasks += [replay, script]
        finished = asyncio.create_task(_all_done(fleet))
        tasks.append(finished)
        interactive = not options.headless and out.isatty()
        last_line = -10.0
        while not stop.is_set() and not finished.done() and not gateway.done():
            if interactive:
                out.write("\x1b[H\x1b[2J" + render(state, _gauges(parts, config), elapsed_s=clock(),
                          header=header, stories=_stories(scenario)) + "\n")  # fmt: skip
                out.flush()
            elif clock() - last_line >= PROGRESS_S:
                # Headless: progress on stderr, the JSON summary alone on stdout.
                last_line = clock()
                console.write(progress_line(state, clock()) + "\n")
                console.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_S)
        replay_done = finished.done()
        replayed_s = clock()
        produced = {
            r.device_id: fleet.wearables[i][1].core.produced
            for i, r in enumerate(scenario.residents)
        }
        if replay_done and not gateway.done():
            # Every window produced must reach the subscriber; give the link, the pipeline and
            # the broker a bounded time (a reconnecting device resends what it missed).
            deadline = loop.time() + DRAIN_S
            while not _complete(state, produced) and loop.time() < deadline:
                if stop.is_set():
                    break
                await asyncio.sleep(0.2)
        elapsed = clock()
    finally:
        gateway_stop.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(30):
                await asyncio.shield(gateway)
        await _settle(state)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if broker.kind in {"local", "given"}:
            await _clear_retained(config)
    exit_code = 1 if gateway.cancelled() or gateway.exception() is not None else gateway.result()
    summary = _summary(
        scenario, state, produced=produced, config=config, broker=broker, elapsed_s=elapsed,
        replayed_s=replayed_s, replay_done=replay_done, gateway_exit=exit_code,
        interrupted=stop.is_set(), model=parts[0].model if parts else None,
    )  # fmt: skip
    return DemoResult(summary, state, config, produced)


async def _clear_retained(config: Config) -> None:
    """Leave nothing retained on a broker the demo shares with others: status, device states,
    open-alert sets and Home Assistant configs (HA then removes the demo's devices)."""
    try:
        cleared = await clear_retained(config.mqtt, GATEWAY_ID, env={})
    except (aiomqtt.MqttError, TimeoutError, GatewayError) as exc:
        log.warning("demo: could not clear its retained topics", error=str(exc))
    else:
        log.info("demo: cleared its retained topics", count=len(cleared))


async def _until(event: asyncio.Event, task: asyncio.Task[Any], limit_s: float, what: str) -> None:
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({waiter, task}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if event.is_set():
        return
    if task.done():
        problem = (
            "it stopped" if task.cancelled() or task.exception() is None else repr(task.exception())
        )
        raise GatewayError(f"the demo could not start {what}: {problem} (see the log above)")
    raise GatewayError(f"the demo timed out after {limit_s:.0f} s waiting for {what}")


async def _all_done(fleet: Fleet) -> None:
    for _, wearable in fleet.wearables:
        await wearable.done.wait()


async def _settle(state: DemoState, quiet_s: float = 1.0, limit_s: float = 10.0) -> None:
    """Wait until no message has arrived for ``quiet_s`` (the last alerts after shutdown)."""
    deadline = time.monotonic() + limit_s
    seen = -1
    while state.messages != seen and time.monotonic() < deadline:
        seen = state.messages
        await asyncio.sleep(quiet_s)


def _gauges(parts: list[Gateway], config: Config) -> Gauges:
    if not parts:
        return Gauges(inference_capacity=config.inference.queue_size)
    p = parts[0]
    return Gauges(
        pipeline_backlog=p.pipeline.backlog,
        inference_backlog=p.worker.backlog,
        inference_capacity=config.inference.queue_size,
        mqtt_connected=p.publisher.connected,
        model=p.model,
    )


def _stories(scenario: Scenario) -> dict[str, str]:
    return {r.device_id: r.story for r in scenario.residents}


def _header(
    scenario: Scenario, broker: BrokerChoice, config: Config, log_path: Path | None
) -> list[str]:
    lines = [
        "gatewayd demo — emulated wearables replaying SYNTHETIC recordings, at real time",
        f"broker: {broker.host}:{broker.port} ({broker.note})",
        f"watch the alerts: {mosquitto_sub_line(broker, ALERTS_FILTER)}",
        f"event log: {config.store.path}   (Ctrl-C stops)",
        *([f"gateway log: {log_path}"] if log_path is not None else []),
        "demo rules: tachycardia after 10 s above the limit, disconnection after 15 s"
        " (defaults 30 s and 30 s)",
    ]
    lines += [f"  {r.device_id}: {r.story}" for r in scenario.residents]
    return lines


def progress_line(state: DemoState, elapsed_s: float) -> str:
    # Every alert raised so far, in the order first raised: still open, or cleared since.
    raised = sorted(state.first_raised.items(), key=lambda item: item[1])
    names = [(f"{kind}@{device}", kind in state.devices[device].open_alerts)
             for (device, kind), _ in raised if device in state.devices]  # fmt: skip
    open_ = [name for name, is_open in names if is_open]
    cleared = [name for name, is_open in names if not is_open]
    return (
        f"t={elapsed_s:5.1f}s windows {state.windows} (offloaded {state.offloaded})"
        f" alerts open: {', '.join(open_) or 'none'}"
        + (f"; cleared: {', '.join(cleared)}" if cleared else "")
    )


def _summary(
    scenario: Scenario,
    state: DemoState,
    *,
    produced: dict[str, int],
    config: Config,
    broker: BrokerChoice,
    elapsed_s: float,
    replayed_s: float,
    replay_done: bool,
    gateway_exit: int,
    interrupted: bool,
    model: str | None,
) -> dict[str, Any]:
    # An alert is due only if the replay lasted past its deadline: after the replay no new
    # windows arrive, so no new physiological alert can be raised.
    expectations = check_expectations(scenario.expectations, state.first_raised, replayed_s)
    devices = {}
    lost = 0
    for r in scenario.residents:
        row = state.row(r.device_id)
        missing = max(0, produced.get(r.device_id, 0) - len(row.seqs))
        lost += missing
        devices[r.device_id] = {
            "story": r.story,
            "windows_produced": produced.get(r.device_id),
            "telemetry_received": len(row.seqs),
            "offloaded": row.offloaded,
            "last_hr_bpm": row.hr_bpm,
            "last_activity": row.activity,
            "alerts_open": sorted(row.open_alerts),
        }
    duplicates = sum(1 for n in state.deliveries.values() if n > 1)
    ok = (
        gateway_exit == 0
        and not expectations["missed"]
        and (lost == 0 or not replay_done)
        and not state.malformed
    )
    return {
        "ok": ok,
        "data": "synthetic",
        "elapsed_s": round(elapsed_s, 1),
        "replayed_s": round(replayed_s, 1),
        "replay_finished": replay_done,
        "interrupted": interrupted,
        "gateway_exit": gateway_exit,
        "model": model,
        "broker": {"host": broker.host, "port": broker.port, "kind": broker.kind},
        "event_log": str(config.store.path),
        "windows": state.windows,
        "offloaded": state.offloaded,
        "offload_ratio": round(state.offloaded / state.windows, 3) if state.windows else None,
        "windows_lost": lost,
        "alerts": [
            {
                "t_s": round(a.t_s, 1),
                "device_id": a.device_id,
                "kind": a.kind,
                "state": a.state,
                "severity": a.severity,
                "event_id": a.event_id,
            }
            for a in state.alerts
        ],
        "gateway_alerts": [
            {"t_s": round(a.t_s, 1), "kind": a.kind, "state": a.state, "severity": a.severity}
            for a in state.gateway_alerts
        ],
        "duplicate_deliveries": duplicates,
        "ha_discovery_configs": len(state.discovery),
        "expectations": expectations,
        "devices": devices,
    }


def write_summary(summary: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """Print the summary as one indented JSON object."""
    json.dump(summary, out, indent=2)
    out.write("\n")
