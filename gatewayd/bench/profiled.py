"""`python -m gatewayd.bench.profiled DUMP ARGS...`: `gatewayd ARGS`, profiled on request.

cProfile is off at start (start-up and imports are not what a scale bench asks about); SIGUSR1
turns it on, SIGUSR2 turns it off and writes the statistics to DUMP (pstats format).
`gatewayd bench scale` sends them at the start and the end of its measured interval. cProfile
sees the thread that enabled it, the main thread: the event loop (decode, pipeline, rules,
MQTT, store glue), not the inference executor or SQLite's threads.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from pathlib import Path
from types import FrameType


def main(argv: list[str]) -> int:
    """Run the gatewayd command line ``argv[1:]``; profile between SIGUSR1 and SIGUSR2."""
    if not argv:
        print("usage: python -m gatewayd.bench.profiled DUMP ARGS...", file=sys.stderr)
        return 64
    dump = Path(argv[0])
    profiler = cProfile.Profile()

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(dump)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from gatewayd.cli import main as gatewayd_main  # noqa: PLC0415 - after the handlers

    return gatewayd_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
