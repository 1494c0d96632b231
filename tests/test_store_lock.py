"""One writer per event log: a second Store, in this process or another, is refused with who holds
the log; the holder carries on; a SIGKILLed holder leaves no stale lock; a lock file that cannot
be made does not stop the store."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gatewayd.store import SCHEMA_VERSION, EventLogInUseError, Store, StoreError, WindowRecord
from gatewayd.store.lock import EventLogLock, lock_holder, lock_path

pytestmark = pytest.mark.asyncio


async def test_a_second_store_on_the_same_log_is_refused_and_the_first_carries_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path) as first:
        await first.record_window(WindowRecord("w1", time.time(), hr_bpm=60.0))
        with pytest.raises(EventLogInUseError) as info:
            async with Store.open(path):
                pytest.fail("a second writer opened the log")
        message = str(info.value)
        assert f"pid {os.getpid()}" in message
        assert "systemctl stop gatewayd" in message
        assert str(lock_path(path)) in message
        await first.record_window(WindowRecord("w1", time.time(), hr_bpm=61.0))
        assert [w.hr_bpm for w in await first.windows()] == [60.0, 61.0]
    # Closed: the lock is free again.
    async with Store.open(path) as again:
        assert len(await again.windows()) == 2


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from gatewayd.store import Store

    async def main():
        async with Store.open(sys.argv[1]):
            print("ready", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_a_gatewayd_in_another_process_is_named_and_a_sigkill_frees_the_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(path), stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(30):  # its log lines come first
            while (line := await holder.stdout.readline()) != b"ready\n":
                assert line, "the holder exited before it was ready"
        assert await asyncio.to_thread(lock_holder, path) == holder.pid
        with pytest.raises(
            EventLogInUseError, match=rf"in use by another process \(pid {holder.pid}\)"
        ):
            async with Store.open(path):
                pytest.fail("opened a log another process writes")
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    # The kernel dropped the dead holder's lock: no stale lock file to clean up by hand.
    assert await asyncio.to_thread(lock_holder, path) is None
    async with Store.open(path) as store:
        await store.record_window(WindowRecord("w1", 1.0))
        assert len(await store.windows()) == 1


async def test_a_lock_file_that_cannot_be_made_does_not_stop_the_store(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    lock_path(path).mkdir()  # a directory where the lock file should be: it cannot be opened
    assert not (await asyncio.to_thread(EventLogLock.acquire, path)).held
    async with Store.open(path) as store:
        await store.record_window(WindowRecord("w1", time.time(), hr_bpm=60.0))
        assert len(await store.windows()) == 1


async def test_a_refused_open_lets_go_of_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path):
        pass
    await asyncio.to_thread(set_version, path, SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer gatewayd"):
        async with Store.open(path):
            pytest.fail("opened a file of a newer schema")
    # Refused after the lock was taken; the lock went with it (it raises if still held).
    lock = await asyncio.to_thread(EventLogLock.acquire, path)
    assert lock.held
    lock.release()


def set_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
