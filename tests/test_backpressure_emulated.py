"""Backpressure end to end: a saturated inference queue throttles the wearables, then relaxes.

Real parts: emulated wearables on the emulated BlueZ over a private D-Bus, real
bleak, `gatewayd.app.run_gateway` in-process, a real ONNX Runtime session, SQLite in tmp_path
and a private mosquitto. What is observed is the wearables' own offload policy (the
`WearableCore` applies the gateway's SET_POLICY control writes).

How the queue is saturated, honestly: the installed gateway model is a real ONNX model that is
deliberately slow (a Loop of MatMul + Tanh before the heads, ~0.1 s a window on one thread),
the inference queue holds 4 windows and takes them one at a time, the wearables replay fast
and offload every window (entropy threshold 0: the synthetic windows carry ~3.7-4 bits, more
than the most throttled threshold of 2 bits, so throttling cannot relieve the queue and the
saturation lasts until the replay is over and the backlog drained; that keeps the test
deterministic). Then the load falls, and every wearable must be back at the configured policy.

The governor's period (`gatewayd.app.BACKPRESSURE_INTERVAL_S`, 2 s) is shortened to 0.5 s here
(`run_gateway(backpressure_interval_s=...)`):
with 2 s, two saturated checks per level up and three relaxed checks per level down make the
test several times longer. No timing assertions: every wait is for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from gatewayd.config import Config, load_config
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.virtual import Fleet, FleetSetup, build_fleet, running
from gatewayd.inference import read_card, sha256_of, write_card
from gatewayd.inference.backpressure import BackpressureConfig, throttled_policy
from gatewayd.link.registry import PairedDevice
from tests.emulator_fixtures import paired_as_by_gatewayd_pair, release_bleak_manager
from tests.gateway_task import gateway_task, is_ready
from tests.mqtt_fixtures import MOSQUITTO, Broker
from tests.test_inference import TinyModel, install_tiny_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed"),
]

GATEWAY_ID = "gw-pressure"
MODEL_ID = "slow-full"
#: MatMul (4 x 512 x 512) + Tanh iterations per window: ~0.1 s on one core of a 2020s CPU.
BURN_ITERATIONS = 8000
SPEED = 20.0
MINUTES = 0.75
#: The governor's period here (the daemon's is gatewayd.app.BACKPRESSURE_INTERVAL_S, 2 s).
INTERVAL_S = 0.5
TAU_MBITS = 0
MIN_CONF_E4 = 2000
#: Generous: a loaded 2-core box may run this several times slower.
DEADLINE_S = 60.0


def slow_model_bytes(tiny: TinyModel, iterations: int) -> bytes:
    """The tiny model's heads behind a Loop that burns CPU: x -> (MatMul, Tanh)^n -> heads."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "burn_w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "burn",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None),
        ],
    )
    loop = helper.make_node("Loop", ["trips", "", "x"], ["burnt"], body=body)
    return tiny.graph_bytes(
        "slow",
        ["N", 4, 512],
        front=[loop],
        front_inits=[
            numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips"),
            numpy_helper.from_array(w, "burn_w"),
        ],
        features="burnt",
    )


def install_slow_model(directory: Path) -> None:
    """The tiny test model and its card, the model file swapped for the slow one."""
    tiny = install_tiny_model(directory, MODEL_ID)
    model_file = directory / f"{MODEL_ID}.onnx"
    model_file.write_bytes(slow_model_bytes(tiny, BURN_ITERATIONS))
    card_file = directory / f"{MODEL_ID}.onnx.json"
    card = read_card(card_file)
    update = {"sha256": sha256_of(model_file), "size_bytes": model_file.stat().st_size}
    write_card(card.model_copy(update=update), card_file)


def write_config(tmp_path: Path, broker: Broker) -> Config:
    """Every window offloaded, a 4-window inference queue served one window at a time."""
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nkeepalive_s = 5\n'
        f"[offload]\ntau_bits = {TAU_MBITS / 1000}\nmin_confidence = {MIN_CONF_E4 / 10_000}\n"
        f'[inference]\nmodel = "{MODEL_ID}"\nqueue_size = 4\nmax_batch = 1\n'
        "threads = 1\n",
        encoding="utf-8",
    )
    return load_config(path, env={})


@pytest_asyncio.fixture
async def fake(fake_bluez: FakeBluez) -> AsyncIterator[FakeBluez]:
    """The shared fake bluetoothd, closing bleak's manager after the test."""
    yield fake_bluez
    await release_bleak_manager()


async def wait_for(
    condition: Callable[[], Awaitable[bool]], limit_s: float, what: str | Callable[[], str]
) -> None:
    """Poll ``condition`` every 0.1 s until it holds; fail naming ``what`` after ``limit_s``
    (a callable: what it says then)."""
    deadline = time.monotonic() + limit_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what if isinstance(what, str) else what()}")
        await asyncio.sleep(0.1)


def stored_windows(path: Path) -> int:
    """Windows in the event log (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM windows").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_a_saturated_inference_queue_throttles_wearables_until_the_load_falls(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    await asyncio.to_thread(install_slow_model, models)
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker)
    recordings = [generate_recording(i + 1, MINUTES, seed=i + 1) for i in range(2)]
    setup = FleetSetup(devices=2, speed=SPEED, tau_mbits=TAU_MBITS, min_conf_e4=MIN_CONF_E4)
    fleet: Fleet = await build_fleet(fake, recordings, setup)
    devices = [
        PairedDevice(
            f"wrist-{i}",
            device.address,
            "wearable",
            wearable.core.spec.name,
            **paired_as_by_gatewayd_pair(wearable.core),
        )
        for i, (device, wearable) in enumerate(fleet.wearables)
    ]
    cores = {d.device_id: w.core for d, (_, w) in zip(devices, fleet.wearables, strict=True)}
    base = (TAU_MBITS, MIN_CONF_E4)
    seen: dict[str, set[tuple[int, int]]] = {device_id: set() for device_id in cores}

    async def watch_policies() -> None:
        while True:
            for device_id, core in cores.items():
                seen[device_id].add((core.tau_mbits, core.min_conf_e4))
            await asyncio.sleep(0.05)

    async def throttled() -> bool:
        return any(policies - {base} for policies in seen.values())

    async def replayed() -> bool:
        return all(core.finished for core in cores.values())

    total = sum(core.windows_total for core in cores.values())

    stored = [0]  # the last count read, for the failure message

    async def drained() -> bool:
        stored[0] = await asyncio.to_thread(stored_windows, config.store.path)
        return stored[0] >= total

    async def relaxed() -> bool:
        return all((c.tau_mbits, c.min_conf_e4) == base for c in cores.values())

    watcher = asyncio.create_task(watch_policies())
    try:
        async with (
            gateway_task(
                config, devices, models_dir=models, backpressure_interval_s=INTERVAL_S
            ) as gw,
            running(fleet, SPEED),
        ):
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(throttled, DEADLINE_S, "a wearable to be throttled")
            await wait_for(replayed, DEADLINE_S, "the replay to end")
            await wait_for(
                drained, DEADLINE_S, lambda: f"every window stored ({stored[0]} of {total} are)"
            )
            await wait_for(relaxed, DEADLINE_S, "every wearable back at the configured policy")
        assert await gw.task == 0
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    assert any(n.startswith("STATUS=") and f"model {MODEL_ID}" in n for n in gw.notes)
    # Each policy a wearable ever had is the configured one or a throttle level of it.
    levels = {
        throttled_policy(*base, level, BackpressureConfig()): level
        for level in range(BackpressureConfig().max_level + 1)
    }
    for device_id, policies in seen.items():
        assert policies <= set(levels), f"{device_id}: unexpected policies {policies - set(levels)}"
    assert any(levels[p] >= 1 for policies in seen.values() for p in policies)
    # Every window was offloaded (throttling cannot relieve this queue), so the replay really
    # was the load; and the last word is the configured policy.
    for core in cores.values():
        assert core.counters.windows == core.windows_total
        assert (core.tau_mbits, core.min_conf_e4) == base
