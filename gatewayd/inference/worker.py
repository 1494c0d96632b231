"""`InferenceWorker`: offloaded windows of every device, batched, analysed in a worker thread.

The pipeline hands each offloaded window to `InferenceWorker.analyse` as it arrives, so windows
of several devices are batched together: a batch is whatever is queued when the worker is free
(up to ``max_batch``). It never waits for more: while one batch runs in the thread, the windows
arriving meanwhile queue up for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from gatewayd.config import InferenceConfig
from gatewayd.inference.analysis import HrFusion, WindowAnalysis, analyse_windows
from gatewayd.inference.session import ModelSession
from gatewayd.lifecycle import BackgroundPart
from gatewayd.protocol.messages import Window
from gatewayd.signals.heart_rate import HrState

__all__ = ["InferenceWorker", "WorkerStats"]

log = structlog.get_logger("gatewayd.inference")

#: How long leaving the worker waits for the batch in the thread to finish.
STOP_TIMEOUT_S: Final = 5.0


@dataclass(slots=True)
class _Job:
    device_id: str
    window: Window
    future: asyncio.Future[WindowAnalysis | None]


@dataclass(slots=True)
class WorkerStats:
    """Batches run, windows analysed, and how often the queue was full."""

    batches: int = 0
    windows: int = 0
    largest_batch: int = 0
    full_waits: int = 0
    model_failures: int = 0


class InferenceWorker(BackgroundPart):
    """Batches offloaded windows across devices and analyses them in a worker thread.

    The analysis itself is `gatewayd.inference.analysis.analyse_windows` (the same code
    `gatewayd eval` scores): the full model when there is a `ModelSession` (activity, and a heart
    rate fused with the wearable's own estimate, `InferenceConfig.heart_rate`), the wearable's
    estimate alone without one (degraded mode), and the gateway's own tracker (one state per
    device) for windows that arrive without a heart rate. Batches run one at a time in a thread
    (ONNX Runtime and scipy block), so windows of one device are analysed in arrival order.

    ``async with InferenceWorker(...) as worker`` runs the batching loop until the block ends;
    windows still queued then are answered ``None`` (the pipeline keeps the wearable's values).
    """

    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(self, session: ModelSession | None, config: InferenceConfig) -> None:
        super().__init__("inference")
        self.session = session
        self.fusion = HrFusion.of(config)
        self.max_batch = config.max_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(config.queue_size)
        self._states: dict[str, HrState] = {}
        #: Windows waiting for room in the queue (later ones queue behind them).
        self._blocked = 0
        self.stats = WorkerStats()

    async def _after_stop(self) -> None:
        # Windows still queued are answered None: the pipeline keeps the wearable's values.
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_result(None)

    @property
    def model_id(self) -> str | None:
        """The model in use, or None in degraded mode."""
        return None if self.session is None else self.session.model_id

    @property
    def backlog(self) -> int:
        """Windows waiting for a batch."""
        return self._queue.qsize()

    def forget(self, device_id: str) -> None:
        """Drop a device's heart-rate tracker state (it was taken off the paired list), so a
        device paired later under the same id starts afresh. A batch under way in the worker
        thread may put one back: a tracker state, which the next windows correct."""
        self._states.pop(device_id, None)

    def analyse(self, device_id: str, window: Window) -> Awaitable[WindowAnalysis | None]:
        """Queue one window and return its analysis (awaitable).

        While the queue has room and no earlier window waits for it, the window is queued now
        and the awaitable is its bare future (no task per window); otherwise the awaitable
        first waits for room, behind the windows already waiting."""
        future: asyncio.Future[WindowAnalysis | None] = asyncio.get_running_loop().create_future()
        job = _Job(device_id, window, future)
        if self._blocked == 0 and not self._queue.full():
            self._queue.put_nowait(job)
            return future
        return self._put_when_room(job)

    async def _put_when_room(self, job: _Job) -> WindowAnalysis | None:
        self._blocked += 1
        try:
            if self._queue.full():
                self.stats.full_waits += 1
                if self.stats.full_waits == 1 or self.stats.full_waits % 100 == 0:
                    log.warning(
                        "inference queue full: offloaded windows wait",
                        queue_size=self._queue.maxsize,
                        waits=self.stats.full_waits,
                    )
            await self._queue.put(job)
        finally:
            self._blocked -= 1
        return await job.future

    async def run(self) -> None:
        """Take batches off the queue and analyse them, until cancelled."""
        while True:
            batch = [await self._queue.get()]
            # What is queued now, no more: waiting for a fuller batch would only add latency.
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                # Blocking (ONNX Runtime, scipy): in a thread, never on the event loop.
                results = await asyncio.to_thread(self._run_batch, batch)
            except BaseException:
                for job in batch:
                    job.future.cancel()
                raise
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
            self.stats.batches += 1
            self.stats.windows += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

    def _run_batch(self, batch: Sequence[_Job]) -> list[WindowAnalysis | None]:
        """Analyse one batch. Runs in a worker thread (one batch at a time)."""
        windows = [(job.device_id, job.window) for job in batch]
        answer = analyse_windows(windows, self._states, self.session, self.fusion)
        if answer.model_error is not None and self.session is not None:
            self.stats.model_failures += 1
            log.error("model failed on a batch; using the signal estimate",
                      model_id=self.session.model_id, error=answer.model_error)  # fmt: skip
        self._states.update(answer.states)
        return answer.analyses
