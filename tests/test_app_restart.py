"""`gatewayd run` SIGKILLed again and again while its wearables go on: what it missed is asked
back from the wearables' rings, the rest is recorded as lost, and open alerts are not raised twice.

Real parts: the gateway as a subprocess (its bleak against the emulated BlueZ of this process on a
private D-Bus), virtual wearables here, a private mosquitto, the SQLite event log read read-only.
Both sides are counted: every window a wearable produced is either in the event log or counted by
a `data_lost` event, and some came back from a ring after a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gatewayd.emulator import FakeBluez
from gatewayd.emulator.virtual import running
from tests.emulator_fixtures import EmulatorEnv
from tests.mqtt_fixtures import MOSQUITTO, Broker
from tests.test_app_durability import gatewayd_run, pair, read_only, write_config_file
from tests.test_app_emulated import build

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed"),
]

#: Simulated minutes of each recording, and how much faster than real time they play: 60 s of
#: wall time, of which three kill cycles use about 30 on an idle machine. On a loaded one each
#: gateway start takes longer while the wearables go on, and a recording that ends before the
#: last downtime is over leaves the test nothing to count.
MINUTES = 24.0
SPEED = 24.0
KILLS = 3
#: Windows a wearable must produce while the gateway is down: more than its ring holds (64).
DOWNTIME_WINDOWS = 90


def counts(db: Path) -> dict[str, Any]:
    """Windows stored per device, seqs per device, data_lost counts by cause, alert sequence."""
    conn = read_only(db)
    try:
        seqs: dict[str, list[int]] = {}
        for device, seq in conn.execute("SELECT device_id, seq FROM windows ORDER BY id"):
            seqs.setdefault(device, []).append(seq)
        lost: dict[str, dict[str, int]] = {}
        alerts: dict[tuple[str, str], list[str]] = {}
        for device, kind, state, payload in conn.execute(
            "SELECT device_id, kind, state, payload FROM events WHERE device_id IS NOT NULL"
            " ORDER BY rowid"
        ):
            if kind == "data_lost":
                evidence = json.loads(payload)["evidence"]
                by_cause = lost.setdefault(device, {})
                by_cause[evidence["cause"]] = by_cause.get(evidence["cause"], 0) + evidence["count"]
            elif kind not in ("device_fault", "device_untrusted", "sequence_jump"):
                alerts.setdefault((device, kind), []).append(state)
        return {"seqs": seqs, "lost": lost, "alerts": alerts}
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_restarts_recover_from_the_rings_and_count_the_rest_as_lost(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config_file, tmp_path, port=mosquitto_broker.port)
    db = tmp_path / "state" / "gatewayd.db"
    no_models = str(tmp_path / "no-models")
    fleet, devices = await build(fake_bluez, MINUTES, periodic=True)
    await asyncio.to_thread(pair, tmp_path / "state", devices)
    virtuals = {d.device_id: w for d, (_, w) in zip(devices, fleet.wearables, strict=True)}
    cores = {d: w.core for d, w in virtuals.items()}
    resent_before = {d: c.counters.resent for d, c in cores.items()}

    async def stored_at_least(n: int) -> bool:
        if not db.exists():
            return False
        seqs = (await asyncio.to_thread(counts, db))["seqs"]
        return all(len(seqs.get(d, [])) >= n for d in cores)

    async with running(fleet, SPEED):
        for kill in range(KILLS):
            async with gatewayd_run(config, private_bus, "--models-dir", no_models) as gw:
                await gw.wait_logged("gateway running")
                await gw.wait_until(lambda n=kill: stored_at_least(10 * (n + 1)), 60,
                                    "windows of every device")  # fmt: skip
                await gw.kill()
            # Down while the wearables go on: more than their rings hold.
            target = {d: c.produced + DOWNTIME_WINDOWS for d, c in cores.items()}
            async with asyncio.timeout(60):
                while any(c.produced < target[d] for d, c in cores.items()):
                    ended = [d for d, c in cores.items() if c.finished and c.produced < target[d]]
                    assert not ended, f"kill {kill}: recordings of {ended} ended; raise MINUTES"
                    await asyncio.sleep(0.1)

        # What a wearable produced before the first gateway read its info (next_seq) was never
        # owed to the gateway (docs/protocol.md §4): everything from there on is.
        owed_from = {d: w.info_next_seqs[0] for d, w in virtuals.items()}

        async def accounted() -> bool:
            if not all(c.finished for c in cores.values()):
                return False
            seen = await asyncio.to_thread(counts, db)
            return all(
                len(seen["seqs"].get(d, [])) + sum(seen["lost"].get(d, {}).values())
                >= c.produced - owed_from[d]
                for d, c in cores.items()
            )

        async with gatewayd_run(config, private_bus, "--models-dir", no_models) as last:
            await last.wait_logged("gateway running")
            await last.wait_until(accounted, 120, "every window stored or counted lost")
            assert await last.terminate() == 0, last.stderr()

    seen = await asyncio.to_thread(counts, db)
    for device, core in cores.items():
        seqs = seen["seqs"][device]
        lost = seen["lost"].get(device, {})
        owed = core.produced - owed_from[device]
        resent = core.counters.resent - resent_before[device]
        assert len(seqs) == len(set(seqs)), f"{device}: a window stored twice"
        assert min(seqs) >= owed_from[device], (device, min(seqs), owed_from[device])
        # Both sides counted: each window the wearable produced since the first gateway read
        # its info is stored or reported lost, exactly once (neither vanished nor counted twice).
        assert len(seqs) + sum(lost.values()) == owed, (device, len(seqs), lost, owed)
        # The rings were asked: windows produced while the gateway was down came back...
        assert resent >= KILLS * 32, (device, resent)
        # ... and what they no longer held is recorded as lost: the part older than the largest
        # RESEND (256) at once (cause "resume"), the part asked for but no longer in the ring
        # when its gap timed out (cause "gap"; the gateway cannot know how much a ring holds:
        # at least 64, docs/protocol.md §4). Nothing was lost for another cause.
        assert set(lost) <= {"resume", "gap"}, lost
        assert sum(lost.values()) >= KILLS * (DOWNTIME_WINDOWS - core.spec.ring_slots), lost
    # Open alerts survived the restarts: an alert is never raised twice without a clear between.
    raised = 0
    for (device, kind), states in seen["alerts"].items():
        raised += states.count("raised")
        for before, after in itertools.pairwise(states):
            assert (before, after) != ("raised", "raised"), (device, kind, states)
    assert raised > 0, "no alert was raised: the test proves nothing about restored alerts"
