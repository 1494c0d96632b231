"""gatewayd.bench.procstat: reading other processes' CPU and memory from /proc (Linux)."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.bench.procstat import (
    ProcSampler,
    Usage,
    descendants,
    read_proc,
    thread_cpu,
    total,
    usage_between,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def test_read_proc_of_this_process() -> None:
    sample = read_proc(os.getpid())
    assert sample is not None
    assert sample.pid == os.getpid()
    assert sample.rss_bytes > 0
    assert sample.peak_rss_bytes >= sample.rss_bytes
    assert sample.threads >= 1
    assert sample.cpu_s > 0


def test_a_process_that_is_gone_reads_as_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_proc(child.pid) is None
    assert descendants(child.pid) == []


def test_usage_of_a_busy_child_and_its_descendants() -> None:
    # A child that burns CPU and starts a grandchild: both found, CPU counted.
    code = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print(g.pid, flush=True)\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('done', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        first = read_proc(child.pid)
        grandchild = int(child.stdout.readline())
        assert child.stdout.readline().strip() == "done"
        last = read_proc(child.pid)
        assert first is not None
        assert last is not None
        usage = usage_between(first, last)
        assert usage.cpu_s > 0
        assert usage.cores > 0
        assert grandchild in descendants(child.pid)
        assert thread_cpu(child.pid)["main"] > 0
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, 9)
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


def test_samples_of_different_processes_do_not_mix() -> None:
    me = read_proc(os.getpid())
    parent = read_proc(os.getppid())
    assert me is not None
    assert parent is not None
    with pytest.raises(ValueError, match="different processes"):
        usage_between(me, parent)


def test_total_adds_cpu_and_memory() -> None:
    both = total([Usage(1.0, 10.0, 100, 200), Usage(2.0, 9.0, 50, 60)])
    assert both == Usage(3.0, 10.0, 150, 260)
    assert both.cores == pytest.approx(0.3)
    assert math.isnan(Usage(0.0, 0.0, 0, 0).cores)


@pytest.mark.asyncio
async def test_sampler_keeps_a_series_per_name() -> None:
    async with ProcSampler({"me": os.getpid()}, interval_s=0.05) as sampler:
        start = sampler.mark()
        await asyncio.sleep(0.3)
    samples = sampler.samples("me")
    assert len(samples) >= 3
    assert [s.t for s in samples] == sorted(s.t for s in samples)
    usage = sampler.usage("me", since=start)
    assert usage.wall_s > 0
    assert usage.rss_bytes > 0
    assert sampler.max_rss_bytes("me") >= usage.rss_bytes
    assert sampler.last("me") == samples[-1]
    assert sampler.names == ["me"]
