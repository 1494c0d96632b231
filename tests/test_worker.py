"""`InferenceWorker`'s batching: what is queued when it is free, never a wait for more."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gatewayd.config import InferenceConfig
from gatewayd.inference.worker import InferenceWorker
from gatewayd.protocol.messages import MessageFlags, SampleFormat, Summary, Window


def _window(seq: int) -> Window:
    """A window whose summary carries the wearable's heart rate: no tracker, no model."""
    summary = Summary(
        seq=seq, t_ms=2000 * seq, flags=MessageFlags.OFFLOAD_CONFIDENCE, activity=255,
        pruning_pct=40, activity_conf_e4=0, entropy_mbits=3900, hr_cbpm=7000,
        signal_quality=80, battery_pct=90,
    )  # fmt: skip
    bvp = np.zeros(512, dtype=np.int16)
    acc = np.zeros((256, 3), dtype=np.int16)
    return Window(summary, SampleFormat.INT16, 64, 32, 64, bvp, acc)


async def _until_taken(worker: InferenceWorker) -> None:
    """Yield to the loop until the worker has taken everything queued."""
    async with asyncio.timeout(5):
        while worker.backlog:  # noqa: ASYNC110 - the worker exposes no event for it
            await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_lone_window_runs_at_once_and_later_ones_make_the_next_batch() -> None:
    # A worker that waited for a fuller batch would put both in one.
    worker = InferenceWorker(None, InferenceConfig(max_batch=8))
    runner = asyncio.create_task(worker.run())
    try:
        first = asyncio.ensure_future(worker.analyse("a", _window(0)))
        await asyncio.sleep(0)  # the window is queued
        await _until_taken(worker)
        second = asyncio.ensure_future(worker.analyse("a", _window(1)))
        results = await asyncio.gather(first, second)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert [r.hr_bpm if r else None for r in results] == [70.0, 70.0]
    assert (worker.stats.batches, worker.stats.windows, worker.stats.largest_batch) == (2, 2, 1)


@pytest.mark.asyncio
async def test_what_is_queued_goes_in_one_batch_up_to_max_batch() -> None:
    worker = InferenceWorker(None, InferenceConfig(max_batch=4))
    jobs = [asyncio.ensure_future(worker.analyse("a", _window(seq))) for seq in range(10)]
    await asyncio.sleep(0)  # every job is queued before the worker starts
    runner = asyncio.create_task(worker.run())
    try:
        results = await asyncio.gather(*jobs)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert all(r is not None for r in results)
    assert (worker.stats.batches, worker.stats.largest_batch) == (3, 4)  # 4 + 4 + 2
