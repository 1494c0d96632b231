"""CPU and memory of other processes, from Linux's /proc: what the scale and soak benches sample.

A benchmark that runs the gateway, the emulator and the broker as separate processes measures
each from outside, by pid, with no cooperation from the process measured:

- :func:`read_proc` reads one process's cumulative CPU (user + system, every thread, from
  ``/proc/<pid>/stat``), its resident set (``VmRSS``) and its peak (``VmHWM``) from
  ``/proc/<pid>/status``, and its thread count; None when the process is gone.
- :func:`descendants` lists a process's children, grandchildren, ... (``/proc/<pid>/task/*/
  children``): e.g. the dbus-daemon the emulator starts.
- :func:`thread_cpu` gives CPU seconds by thread name (``comm``), to say which thread of a
  process the time went to.
- :func:`usage_between` turns two samples into a :class:`Usage`: CPU seconds, wall seconds,
  cores (CPU / wall: 1.0 is one core busy all the time), RSS at the end and the peak.
- :class:`ProcSampler` is an async context manager that samples a set of named pids every
  ``interval_s`` in a worker thread (reading /proc blocks, briefly) and keeps the series, so a
  caller can ask for the usage of each over any span (``mark()`` / ``usage(name, since=mark)``),
  the RSS curve, or the last sample.

CPU counters are in clock ticks (``SC_CLK_TCK``, 100 Hz on Linux): a span shorter than a few
seconds has a resolution of ~10 ms per process. Linux only; on other systems every read gives
None. Nothing here asserts a figure: benches report them (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gatewayd.lifecycle import BackgroundPart

__all__ = [
    "CLOCK_TICKS",
    "ProcSample",
    "ProcSampler",
    "Usage",
    "descendants",
    "read_proc",
    "task_cpu_s",
    "thread_cpu",
    "total",
    "usage_between",
]

#: Clock ticks per second of the CPU counters in /proc/<pid>/stat.
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC: Final = Path("/proc")
#: /proc/<pid>/stat fields after the ")" closing the command name (proc(5) numbers minus 3).
_UTIME: Final = 11
_STIME: Final = 12
_THREADS: Final = 17


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process at one instant."""

    pid: int
    #: time.monotonic() when read (CLOCK_MONOTONIC: the same clock in every process).
    t: float
    #: User + system CPU seconds of every thread so far (ticks / CLOCK_TICKS).
    cpu_s: float
    rss_bytes: int
    #: Peak resident set so far (VmHWM).
    peak_rss_bytes: int
    threads: int


def _stat_fields(path: Path) -> list[str]:
    # The command name may hold spaces and parentheses: split after the last ")".
    return path.read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()


def read_proc(pid: int) -> ProcSample | None:
    """CPU, RSS and threads of ``pid`` now, or None when it is gone (or not Linux). Blocks."""
    base = _PROC / str(pid)
    try:
        fields = _stat_fields(base / "stat")
        status = (base / "status").read_text(encoding="ascii", errors="replace")
    except (OSError, IndexError):
        return None
    t = time.monotonic()
    kb = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            kb[key] = int(value.split()[0])
    try:
        cpu = (int(fields[_UTIME]) + int(fields[_STIME])) / CLOCK_TICKS
        threads = int(fields[_THREADS])
    except (IndexError, ValueError):
        return None
    # A zombie has no memory lines: 0.
    return ProcSample(pid, t, cpu, kb.get("VmRSS", 0) * 1024, kb.get("VmHWM", 0) * 1024, threads)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first, then theirs), [] if none. Blocks."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop(0)
        try:
            tasks = list((_PROC / str(parent) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                text = (task / "children").read_text(encoding="ascii")
            except OSError:
                continue
            for child in text.split():
                if int(child) not in out:
                    out.append(int(child))
                    todo.append(int(child))
    return out


def task_cpu_s(pid: int, tid: int) -> float | None:
    """CPU seconds so far of thread ``tid`` of ``pid``, or None when it is gone. Blocks."""
    try:
        fields = _stat_fields(_PROC / str(pid) / "task" / str(tid) / "stat")
        return (int(fields[_UTIME]) + int(fields[_STIME])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of ``pid``'s threads, summed by thread name (comm). Blocks.

    Threads that end before the read are not counted (their time stays in the process total).
    CPython 3.11 does not give its threads' names to the kernel, so Python threads share the
    program's name (native libraries may name theirs); the main thread is reported as ``main``.
    """
    out: dict[str, float] = {}
    base = _PROC / str(pid) / "task"
    try:
        tasks = sorted(base.iterdir(), key=lambda p: int(p.name))
    except OSError:
        return out
    for task in tasks:
        seconds = task_cpu_s(pid, int(task.name))
        try:
            name = (task / "comm").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if seconds is None:
            continue
        if task.name == str(pid):
            name = "main"
        out[name] = out.get(name, 0.0) + seconds
    return out


@dataclass(frozen=True, slots=True)
class Usage:
    """What a process used between two samples."""

    cpu_s: float
    wall_s: float
    rss_bytes: int
    peak_rss_bytes: int

    @property
    def cores(self) -> float:
        """Mean cores busy: CPU seconds per wall second (NaN over an empty span)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def rss_mb(self) -> float:
        """Resident set at the end, MiB."""
        return self.rss_bytes / 2**20

    @property
    def peak_rss_mb(self) -> float:
        """Peak resident set up to the end, MiB."""
        return self.peak_rss_bytes / 2**20

    def to_json(self) -> dict[str, float]:
        """The figures, rounded for a report."""
        return {
            "cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "cores": round(self.cores, 4),
            "rss_mb": round(self.rss_mb, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def usage_between(start: ProcSample, end: ProcSample) -> Usage:
    """The usage of one process from ``start`` to ``end`` (samples of the same pid)."""
    if start.pid != end.pid:
        raise ValueError(f"samples of different processes: {start.pid} and {end.pid}")
    return Usage(end.cpu_s - start.cpu_s, end.t - start.t, end.rss_bytes, end.peak_rss_bytes)


@dataclass
class _Series:
    pid: int
    samples: list[ProcSample] = field(default_factory=list)


class ProcSampler(BackgroundPart):
    """Samples named processes every ``interval_s`` until the block ends (async context manager).

    ``async with ProcSampler({"gateway": pid}) as s: m = s.mark(); ...; s.usage("gateway", m)``.
    Names may be added while it runs (`watch`). A process that exits keeps its last sample.
    """

    def __init__(self, pids: Mapping[str, int] | None = None, *, interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        super().__init__("procstat-sampler")
        self.interval_s = interval_s
        self._series: dict[str, _Series] = {}
        for name, pid in (pids or {}).items():
            self.watch(name, pid)

    def watch(self, name: str, pid: int) -> None:
        """Sample ``pid`` under ``name`` from the next tick on (replacing an earlier pid)."""
        self._series[name] = _Series(pid)

    @property
    def names(self) -> list[str]:
        """The names sampled, in the order they were added."""
        return list(self._series)

    async def sample_now(self) -> None:
        """Take one sample of every process now (in a worker thread)."""
        pids = [(name, s.pid) for name, s in self._series.items()]
        samples = await asyncio.to_thread(lambda: [(n, read_proc(p)) for n, p in pids])
        for name, sample in samples:
            series = self._series.get(name)
            if sample is not None and series is not None and series.pid == sample.pid:
                series.samples.append(sample)

    def mark(self) -> float:
        """A point in time (time.monotonic) to measure usage from."""
        return time.monotonic()

    def samples(self, name: str) -> list[ProcSample]:
        """Every sample of ``name`` so far."""
        return list(self._series[name].samples)

    def last(self, name: str) -> ProcSample | None:
        """The newest sample of ``name``, if any."""
        samples = self._series[name].samples
        return samples[-1] if samples else None

    def usage(self, name: str, since: float | None = None, until: float | None = None) -> Usage:
        """Usage of ``name`` between the first sample at or after ``since`` and the last at or
        before ``until`` (both optional); zeros when fewer than two samples fall in the span."""
        chosen = [
            s
            for s in self._series[name].samples
            if (since is None or s.t >= since) and (until is None or s.t <= until)
        ]
        if len(chosen) < 2:
            last = chosen[-1] if chosen else None
            rss = last.rss_bytes if last else 0
            return Usage(0.0, 0.0, rss, last.peak_rss_bytes if last else 0)
        return usage_between(chosen[0], chosen[-1])

    def max_rss_bytes(self, name: str, since: float | None = None) -> int:
        """The largest RSS sampled for ``name`` (since ``since``), 0 when none."""
        return max(
            (s.rss_bytes for s in self._series[name].samples if since is None or s.t >= since),
            default=0,
        )

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled."""
        while True:
            await self.sample_now()
            await asyncio.sleep(self.interval_s)

    async def _after_stop(self) -> None:
        # One last sample: the span a caller measures ends when the block does.
        await self.sample_now()


def total(usages: Iterable[Usage]) -> Usage:
    """Several processes' usage over the same span, added (wall: the longest)."""
    items = list(usages)
    return Usage(
        sum(u.cpu_s for u in items),
        max((u.wall_s for u in items), default=0.0),
        sum(u.rss_bytes for u in items),
        sum(u.peak_rss_bytes for u in items),
    )
