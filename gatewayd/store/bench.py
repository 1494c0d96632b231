"""Store throughput: ``python -m gatewayd.store.bench [--events N] [--tasks C] [--dir D]``.

Appends N events (each with its outbox row) from C concurrent tasks, for each combination of
synchronous = NORMAL/FULL and group commit on (max_batch 256) / off (max_batch 1), on a fresh
file each time, and prints events/s and append latency percentiles. For docs/store.md and
`gatewayd bench`; never used by tests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gatewayd.store.records import NewEvent
from gatewayd.store.store import Store, StoreOptions


async def _run(
    path: Path, options: StoreOptions, events: int, tasks: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    per_task = events // tasks

    async with Store.open(path, options=options) as store:

        async def worker(i: int) -> None:
            for n in range(per_task):
                event = NewEvent("bench", "info", "firing", {"n": n, "hr": 72.5}, f"w{i}")
                t0 = time.perf_counter()
                await store.append_event(event)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(tasks)))
        elapsed = time.perf_counter() - start
    return per_task * tasks / elapsed, latencies


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else 0.0


async def _main(args: argparse.Namespace) -> None:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gatewayd-bench-"))
    print(f"{args.events} events, {args.tasks} concurrent tasks, files in {base}")
    print(f"{'synchronous':<12}{'max_batch':>10}{'events/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for sync in ("NORMAL", "FULL"):
        for batch in (256, 1):
            path = base / f"bench-{sync}-{batch}.db"
            await asyncio.to_thread(_remove, path)
            options = StoreOptions(synchronous=sync, max_batch=batch)
            rate, lat = await _run(path, options, args.events, args.tasks)
            print(f"{sync:<12}{batch:>10}{rate:>12,.0f}{_pct(lat, 50):>9.2f}{_pct(lat, 99):>9.2f}")


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where to put the files (default: a tmpdir)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
