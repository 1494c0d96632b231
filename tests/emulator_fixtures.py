"""Shared pytest fixtures for tests that drive real bleak (in-process or a subprocess) against
the emulated BlueZ (docs/emulator.md).

Use them from a test module with ``pytest_plugins = ["tests.emulator_fixtures"]``; helpers may
be imported from here as well (the PYTEST_DONT_REWRITE in this docstring stops pytest warning
that the module was imported before it became a plugin; it has no asserts to rewrite). Everything
is function-scoped: each test gets its own dbus-daemon, FakeBluez, bluetoothctl shim and event
loop, and the bleak BlueZ manager of that loop is closed before the daemon stops, so nothing
outlives the test.

- ``bluetoothctl_shim``: a directory holding a ``bluetoothctl`` that answers bleak's version
  probe; put first on PATH (in this process, via monkeypatch).
- ``private_bus``: an :class:`EmulatorEnv` for a running private bus; this process's
  DBUS_SYSTEM_BUS_ADDRESS points at it. ``env.environ()`` is the environment for a subprocess.
- ``fake_bluez``: a running :class:`FakeBluez` on that bus (fast advertisement reports, fixed
  RSSI seed), no adapters yet.
- :func:`run_command`: run a subprocess without blocking the loop the emulator lives in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from bleak.backends.bluezdbus import manager as bluez_manager

from gatewayd.emulator import (
    DBUS_SYSTEM_BUS_ADDRESS,
    FakeBluez,
    PrivateBus,
    install_bluetoothctl_shim,
)
from gatewayd.emulator.wearable import WearableCore
from gatewayd.protocol.control import decode_info

__all__ = [
    "EmulatorEnv",
    "Finished",
    "bluetoothctl_shim",
    "fake_bluez",
    "needs_dbus_daemon",
    "paired_as_by_gatewayd_pair",
    "private_bus",
    "release_bleak_manager",
    "run_command",
    "run_gatewayd",
]


def paired_as_by_gatewayd_pair(core: WearableCore) -> dict[str, Any]:
    """The `PairedDevice` fields `gatewayd pair` records from a wearable's info: when, and where
    its numbering stands (every window from there on is owed to the gateway, however late it
    first connects on a loaded machine)."""
    info = decode_info(core.info())
    return {
        "paired_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "paired_boot_id": info.boot_id,
        "paired_next_seq": info.next_seq,
    }


#: Mark (or ``pytestmark =``) for tests that need the emulator's dbus-daemon.
needs_dbus_daemon = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed (apt-get install dbus)"
)

#: Seconds a subprocess may run before it is killed and the test fails.
COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class EmulatorEnv:
    """Where the private bus is, and the shim directory bleak's version probe needs."""

    address: str
    shim_dir: Path

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A full environment for a subprocess that runs bleak against the emulator."""
        env = dict(os.environ if base is None else base)
        env[DBUS_SYSTEM_BUS_ADDRESS] = self.address
        env["PATH"] = f"{self.shim_dir}{os.pathsep}{env.get('PATH', '')}"
        return env


@dataclass(frozen=True, slots=True)
class Finished:
    """A subprocess that ran to its end."""

    returncode: int
    stdout: str
    stderr: str


async def release_bleak_manager() -> None:
    """Close the bleak BlueZ manager of this loop (bleak never does it itself)."""
    manager = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
    if manager is None or manager._bus is None:
        return
    manager._bus.disconnect()
    with contextlib.suppress(Exception):
        await manager._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    if manager._bus_watcher_task is not None:  # it resets the manager's state, then ends
        await manager._bus_watcher_task


@pytest.fixture
def bluetoothctl_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """bleak's version probe finds the emulated bluetoothd's version (docs/emulator.md)."""
    shim_dir = tmp_path / "emulator-bin"
    install_bluetoothctl_shim(shim_dir)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return shim_dir


@pytest_asyncio.fixture
async def private_bus(
    monkeypatch: pytest.MonkeyPatch, bluetoothctl_shim: Path
) -> AsyncIterator[EmulatorEnv]:
    """A private dbus-daemon; this process's bleak (and subprocesses given environ()) use it."""
    async with PrivateBus() as address:
        monkeypatch.setenv(DBUS_SYSTEM_BUS_ADDRESS, address)
        try:
            yield EmulatorEnv(address, bluetoothctl_shim)
        finally:
            await release_bleak_manager()


@pytest_asyncio.fixture
async def fake_bluez(private_bus: EmulatorEnv) -> AsyncIterator[FakeBluez]:
    """A fake bluetoothd on the private bus; add adapters and devices in the test."""
    async with FakeBluez(private_bus.address, report_interval=0.05, seed=7) as emulator:
        yield emulator
        await release_bleak_manager()


async def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = COMMAND_TIMEOUT_S,
) -> Finished:
    """Run ``argv`` to completion without blocking the loop; kill it (and fail) on timeout."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(
            f"{' '.join(argv)} did not finish within {timeout_s:g} s\n"
            f"stdout:\n{out.decode(errors='replace')}\nstderr:\n{err.decode(errors='replace')}"
        )
    returncode = process.returncode
    if returncode is None:  # communicate() returns only once the process has exited
        pytest.fail(f"{' '.join(argv)}: no exit status")
    return Finished(returncode, out.decode(), err.decode())


async def run_gatewayd(
    *args: str, env: EmulatorEnv, timeout_s: float = COMMAND_TIMEOUT_S
) -> Finished:
    """Run ``python -m gatewayd ARGS`` against the emulator in a subprocess."""
    return await run_command(
        [sys.executable, "-m", "gatewayd", *args], env=env.environ(), timeout_s=timeout_s
    )
