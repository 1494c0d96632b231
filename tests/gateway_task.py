"""`gatewayd.app.run_gateway` as a background task for in-process tests, stopped through its Event.

Shared by the tests that run the whole gateway in the test's event loop against the emulator
(tests/test_app_emulated.py, tests/test_backpressure_emulated.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from gatewayd.app import run_gateway
from gatewayd.config import Config
from gatewayd.link.registry import PairedDevice

__all__ = ["Running", "gateway_task", "is_ready"]


@dataclass
class Running:
    """A gateway started in the background, with what it told systemd."""

    task: asyncio.Task[int]
    stop: asyncio.Event
    notes: list[str]


@contextlib.asynccontextmanager
async def gateway_task(
    config: Config, devices: Sequence[PairedDevice] | None, **options: Any
) -> AsyncIterator[Running]:
    """run_gateway(config, **options) as a task; stopped through its Event (and awaited) on exit.

    READY=1, WATCHDOG=1 and STATUS= lines are collected in ``notes``.
    """
    stop = asyncio.Event()
    notes: list[str] = []
    task = asyncio.create_task(
        run_gateway(
            config,
            registry_devices=devices,
            ready=lambda: notes.append("READY=1"),
            watchdog=lambda: notes.append("WATCHDOG=1"),
            status=lambda line: notes.append(f"STATUS={line}"),
            stop=stop,
            **options,
        )
    )
    try:
        yield Running(task, stop, notes)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(30):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()


async def is_ready(gw: Running) -> bool:
    """Whether the gateway said READY=1; fails the test if it exited before."""
    if gw.task.done():
        pytest.fail(f"gateway exited early with {gw.task.result()}")
    return "READY=1" in gw.notes
