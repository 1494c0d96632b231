"""Run the gateway's coroutine under SIGTERM/SIGINT, and never hang on the way out.

The first SIGTERM or SIGINT sets the stop Event (an orderly, bounded shutdown: gatewayd.app);
a second SIGINT cancels the coroutine at once (exit 130). After the coroutine returns, tasks
still running (a call into a hung bluetoothd, say) are cancelled and given ``leftover_s`` to
end; what does not end is abandoned and logged, so the process exits within its bound.
`asyncio.run` would wait for them forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import structlog

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "cancelled_by_sigterm", "run_until_signalled"]

log = structlog.get_logger("gatewayd.app")

T = TypeVar("T")

EXIT_INTERRUPTED: Final = 130
#: Exit code of a command stopped by SIGTERM after its cleanup (128 + 15).
EXIT_TERMINATED: Final = 143
#: How long tasks left over after the gateway returned may take to end.
LEFTOVER_S: Final = 2.0


def run_until_signalled(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, int]],
    *,
    leftover_s: float = LEFTOVER_S,
) -> int:
    """Run ``main(stop)`` in a new event loop with signal handlers that set ``stop``."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_supervise(main, leftover_s))
    finally:
        with contextlib.suppress(RuntimeError):
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), leftover_s))
        loop.close()


async def cancelled_by_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` in a task that SIGTERM cancels, as asyncio.run lets SIGINT do: its
    ``finally`` blocks and context managers run (a bench stops its child processes) instead of
    the process dying where it stands. The caller sees CancelledError."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        installed = True
    try:
        return await task
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)


async def _supervise(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, int]], leftover_s: float
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.create_task(main(stop), name="gateway")
    forced = False

    def on_signal(signum: int) -> None:
        nonlocal forced
        if stop.is_set() and signum == signal.SIGINT and not forced:
            forced = True
            log.warning("second SIGINT: forcing exit")
            task.cancel("forced exit (second SIGINT)")
            return
        log.info("shutdown requested", signal=signal.Signals(signum).name)
        stop.set()

    installed: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    try:
        code = EXIT_INTERRUPTED
        try:
            code = await task
        except asyncio.CancelledError:
            if not forced:
                raise
            log.warning("forced exit")
        await _cancel_leftovers(leftover_s)
        return code
    finally:
        for handled in installed:
            loop.remove_signal_handler(handled)


async def _cancel_leftovers(timeout_s: float) -> None:
    """Cancel every other task; wait at most ``timeout_s``; log what is abandoned."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    if not others:
        return
    for task in others:
        task.cancel("gatewayd exiting")
    _done, pending = await asyncio.wait(others, timeout=timeout_s)
    if pending:
        log.warning("tasks abandoned at exit", count=len(pending),
                    tasks=sorted(t.get_name() for t in pending))  # fmt: skip
