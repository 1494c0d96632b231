"""The emulator staggers its wearables by default (lock-step on request) and can stamp sends."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.virtual import (
    FleetSetup,
    SendStamps,
    build_fleet,
    format_stamps,
    parse_stamps,
    stagger_phases,
)
from tests.emulator_fixtures import needs_dbus_daemon, release_bleak_manager

pytest_plugins = ["tests.emulator_fixtures"]

RECORDINGS = [generate_recording(1, 0.5, seed=1)]


@pytest_asyncio.fixture
async def fake(fake_bluez: FakeBluez) -> AsyncIterator[FakeBluez]:
    yield fake_bluez
    await release_bleak_manager()


def test_phases_are_seeded_spread_over_the_hop() -> None:
    phases = stagger_phases(50, seed=3)
    assert phases == stagger_phases(50, seed=3)
    assert phases != stagger_phases(50, seed=4)
    assert all(0.0 <= p < 2.0 for p in phases)
    assert len(set(phases)) == 50
    # Both halves of the hop are used: not bunched at one instant.
    assert any(p < 1.0 for p in phases)
    assert any(p >= 1.0 for p in phases)


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_fleet_is_staggered_by_default(fake: FakeBluez) -> None:
    staggered = await build_fleet(fake, RECORDINGS, FleetSetup(devices=4, seed=2, decoy=False))
    assert [w.phase_s for _, w in staggered.wearables] == stagger_phases(4, seed=2)


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_fleet_in_lock_step_on_request(fake: FakeBluez) -> None:
    lockstep = await build_fleet(
        fake, RECORDINGS, FleetSetup(devices=4, seed=2, decoy=False, stagger=False)
    )
    assert [w.phase_s for _, w in lockstep.wearables] == [0.0] * 4


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_fleet_shares_one_stamp_log(fake: FakeBluez) -> None:
    stamps = SendStamps()
    fleet = await build_fleet(fake, RECORDINGS, FleetSetup(devices=2, decoy=False, stamps=stamps))
    assert all(w.stamps is stamps for _, w in fleet.wearables)


def test_stamps_round_trip_through_the_file_format() -> None:
    stamps = SendStamps()
    stamps.record("C0:FF:EE:00:00:01", 0)
    stamps.record("C0:FF:EE:00:00:02", 7)
    rows = stamps.take()
    assert [(a, s) for a, s, _ in rows] == [("C0:FF:EE:00:00:01", 0), ("C0:FF:EE:00:00:02", 7)]
    assert rows[0][2] <= rows[1][2]
    assert stamps.take() == []
    text = format_stamps(rows)
    assert parse_stamps(text) == rows
    # A writer killed mid-line leaves a torn last line: skipped.
    assert parse_stamps(text + "C0:FF:EE:00:00:03 12") == rows


async def _emulate(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """`gatewayd emulate ARGS`, stopped with SIGTERM once it is up."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "emulate", "--devices", "2", "--minutes", "0.2", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            first = await process.stdout.readline()
            while b"export PATH" not in await process.stdout.readline():
                pass
            process.send_signal(signal.SIGTERM)
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, first.decode() + out.decode(), err.decode()


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_emulate_says_how_it_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps.txt"
    code, out, err = await _emulate(tmp_path, "--stamps", str(stamps))
    assert code == 0, err
    assert "2 staggered wearables" in out
    assert "wearables 2 (0 connected" in out  # the final status line
    # Nobody listened, so nothing was sent: an empty stamps file.
    assert stamps.read_text(encoding="ascii") == ""
    code, out, err = await _emulate(tmp_path, "--lockstep")
    assert code == 0, err
    assert "2 lock-step wearables" in out
