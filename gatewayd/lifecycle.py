"""What every long-lived part of the gateway shares: entered once, background task stopped bounded.

The store, the publisher, the inference worker, the pipeline and the link are async context
managers: entering starts the part, leaving stops it, in a bounded time. A part runs once;
entering it again (nested, or after it stopped) raises `ReentryError`, as aiomqtt's client does:
build a new one instead.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Final, Self

import structlog

__all__ = [
    "LOOP_SWITCH_INTERVAL_S",
    "BackgroundPart",
    "EnterOnce",
    "ReentryError",
    "favour_the_loop",
    "raised_at",
    "settle_heap",
    "start_task",
    "stop_task",
]

log = structlog.get_logger("gatewayd")


class ReentryError(RuntimeError):
    """A part was entered a second time."""


class EnterOnce:
    """Guards a part's ``__aenter__``: the first call passes, every later one raises."""

    __slots__ = ("_entered", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._entered = False

    def __call__(self) -> None:
        if self._entered:
            raise ReentryError(f"{self._what} runs once: it was already entered; build a new one")
        self._entered = True


#: How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
LOOP_SWITCH_INTERVAL_S: Final = 0.0005


def favour_the_loop() -> None:
    """Let the event loop take the GIL back within 0.5 ms instead of Python's 5 ms.

    The inference worker runs in a thread, and between ONNX Runtime's calls (which release the
    GIL) it runs Python and numpy that hold it. At the default switch interval every wake-up of
    the event loop (each BLE notification, each store commit) waits up to 5 ms for the GIL
    while the worker is busy, so one busy worker caps the loop at about 200 wake-ups a second
    whatever the CPU: with hundreds of wearables offloading, notifications queue for seconds.
    Process-wide; costs the worker a few more thread switches."""
    sys.setswitchinterval(LOOP_SWITCH_INTERVAL_S)


def settle_heap() -> int:
    """Once everything long-lived is built (models, config, devices): collect, then move every
    object alive now to the collector's permanent generation (`gc.freeze`), so that a full
    collection no longer walks them. With hundreds of devices a full collection of the whole
    heap stops the event loop for 100 ms and more; after this it walks only what was made
    since. Objects frozen here are still freed by reference counting; only a cycle among them
    would outlive its use. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def start_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A background task whose failure is logged as it happens (not only when awaited)."""
    task = asyncio.create_task(coro, name=name)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.error("background task failed", task=name, error=repr(exc), where=raised_at(exc))

    task.add_done_callback(report)
    return task


async def stop_task(task: asyncio.Task[None] | None, reason: str, timeout_s: float) -> bool:
    """Cancel ``task`` and wait at most ``timeout_s`` for it; True if it ended in time.

    A task that does not end in time is left cancelled (its coroutine may still be stuck in a
    call that ignores cancellation, such as a thread) and logged; shutdown goes on without it.
    """
    if task is None or task.done():
        return True
    task.cancel(reason)
    # asyncio.wait neither raises the task's outcome nor swallows our own cancellation.
    await asyncio.wait({task}, timeout=timeout_s)
    if task.done():
        return True
    log.warning("task did not stop in time; abandoned", task=task.get_name(), timeout_s=timeout_s)
    return False


def raised_at(exc: BaseException) -> str:
    """``file:line`` of the frame that raised ``exc``.

    For logs on the event loop: a rendered traceback reads source files (blocking I/O).
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "unknown" if tb is None else f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


class BackgroundPart:
    """A part that runs ``run()`` as one background task while it is entered.

    Subclasses call ``super().__init__(name)`` and define ``run``; ``_wind_down`` runs first on
    leaving (a pipeline drains there), then the task is cancelled (at most ``stop_timeout_s``),
    then ``_after_stop`` (answer what is still waiting).
    """

    stop_timeout_s: float = 5.0

    def __init__(self, name: str) -> None:
        self._part_name = name
        self._enter = EnterOnce(name)
        #: The running loop while entered (its end means the part failed or stopped).
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """The part's loop."""
        raise NotImplementedError

    async def _wind_down(self) -> None:
        """Before the task is cancelled."""

    async def _after_stop(self) -> None:
        """After the task ended (or was abandoned)."""

    async def __aenter__(self) -> Self:
        self._enter()
        self.task = start_task(self.run(), self._part_name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.task is not None and not self.task.done():
            await self._wind_down()
        await stop_task(self.task, f"{self._part_name} stopping", self.stop_timeout_s)
        await self._after_stop()
