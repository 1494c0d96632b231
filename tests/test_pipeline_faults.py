"""Faults contained per device: the gateway as `gatewayd run` builds it (build_gateway, without
the link), a real SQLite event log and a real mosquitto. One wearable sends values at the edge of
what its wire fields can hold; the other keeps being served, and the first gets a clear
per-device technical event instead of taking the gateway down."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gatewayd.app import build_gateway
from gatewayd.config import Config, load_config
from gatewayd.link.events import FrameReceived, LinkUp
from gatewayd.protocol.messages import MessageFlags, Summary
from tests.mqtt_fixtures import Broker

pytest_plugins = ["tests.mqtt_fixtures"]

T0 = 1_790_000_000.0


def write_config(tmp_path: Path, port: int) -> Config:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "gw-faults"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n',
        encoding="utf-8",
    )
    return load_config(path, env={})


def summary(seq: int, t: float, **fields: Any) -> Summary:
    values: dict[str, Any] = {
        "seq": seq,
        "t_ms": int(t * 1000),
        "flags": MessageFlags.CLOCK_SYNCED,
        "activity": 0,
        "pruning_pct": 40,
        "activity_conf_e4": 9000,
        "entropy_mbits": 2500,
        "hr_cbpm": 7200,
        "signal_quality": 90,
        "battery_pct": 80,
    }
    values.update(fields)
    return Summary(**values)


#: Every field of a SUMMARY at the largest value its wire type holds (an unset, all-0xFF
#: wearable), beside a clock at 2^63 (what made SQLite raise "int too large").
EXTREMES: list[dict[str, Any]] = [
    {"t_ms": 2**64 - 1},
    {"t_ms": 2**63},
    {"hr_cbpm": 0xFFFF, "battery_pct": 0xFF, "signal_quality": 0xFF, "activity": 0xFF,
     "activity_conf_e4": 0xFFFF, "entropy_mbits": 0xFFFF, "pruning_pct": 0xFF},
    {"t_ms": 0},
]  # fmt: skip


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_extreme_values_from_one_wearable_are_its_problem_only(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker.port)
    received: list[tuple[str, dict[str, Any]]] = []
    fault_seen = asyncio.Event()
    async with aiomqtt.Client(mosquitto_broker.host, mosquitto_broker.port) as sub:
        await sub.subscribe("gatewayd/gw-faults/devices/+/alerts", qos=1)

        async def collect() -> None:
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                received.append((str(message.topic), json.loads(message.payload)))
                if received[-1][1]["kind"] == "device_fault":
                    fault_seen.set()

        collector = asyncio.create_task(collect())
        async with build_gateway(
            config, devices=[], models_dir=tmp_path / "no-models", with_link=False
        ) as gateway:
            pipeline = gateway.pipeline
            for device in ("bad", "good"):
                await pipeline.submit(LinkUp(device, "hci0", None, 247))
            for seq, fields in enumerate(EXTREMES):
                t = T0 + 8 * seq
                await pipeline.submit(FrameReceived("bad", summary(seq, t, **fields), t + 8))
                await pipeline.submit(FrameReceived("good", summary(seq, t), t + 8))
            await pipeline.drain()
            async with asyncio.timeout(20):
                await fault_seen.wait()
            stats = pipeline.stats
        collector.cancel()

    # Every window of both devices was processed and stored; none was an unhandled error.
    assert stats.windows == 2 * len(EXTREMES)
    stored = await asyncio.to_thread(
        rows, config.store.path, "SELECT device_id, seq, t_ms FROM windows ORDER BY id"
    )
    assert [(d, s) for d, s, _ in stored if d == "good"] == [("good", i) for i in range(4)]
    assert [(d, s) for d, s, _ in stored if d == "bad"] == [("bad", i) for i in range(4)]
    bad_clocks = [t for d, _, t in stored if d == "bad"]
    # The unbelievable clocks are stored as unknown, not as a value no column can hold.
    assert bad_clocks[0] is None
    assert bad_clocks[1] is None
    # The fault is the bad device's, said once per kind, on its own alert topic.
    faults = [(topic, p) for topic, p in received if p["kind"] == "device_fault"]
    assert faults
    assert {topic for topic, _ in faults} == {"gatewayd/gw-faults/devices/bad/alerts"}
    clock = [p for _, p in faults if p["evidence"].get("fault") == "clock"]
    assert len(clock) == 1
    assert "clock" in clock[0]["evidence"]["reason"]
    assert not any(topic.endswith("/good/alerts") for topic, _ in received)
