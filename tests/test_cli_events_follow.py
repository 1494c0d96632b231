"""`gatewayd events --follow`, run as a user runs it (its own process), beside a Store that
appends events the way the daemon does; the log is replaced under it as corruption recovery or
a restored backup would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gatewayd.store import NewEvent, Store
from tests.test_cli_events import write_config

pytestmark = pytest.mark.asyncio

#: Long enough for several of the command's one-second polls on a loaded machine.
WAIT_S = 20.0


def event(kind: str, device: str, n: int) -> NewEvent:
    payload = {"kind": kind, "category": "technical", "reason": f"reason {n}", "evidence": {}}
    return NewEvent(kind, "warning", "raised", payload, device_id=device, created_at=time.time())


async def follow(config: Path, *extra: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAYD_CONFIG", "STATE_DIRECTORY")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "--config", str(config), "events", "--follow", *extra,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


async def line_with(proc: asyncio.subprocess.Process, text: str) -> str:
    """The next line of the command's output that contains ``text``."""
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT_S):
        while line := (await proc.stdout.readline()).decode():
            if text in line:
                return line
    raise AssertionError(f"the command ended before printing {text!r}")


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_new_events_are_printed_as_they_are_appended_and_only_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    path = tmp_path / "state" / "gatewayd.db"
    async with Store.open(path) as store:
        await store.append_event(event("low_battery", "bed-1", 1))
        proc = await follow(config)
        try:
            first = await line_with(proc, "low_battery")  # what was there: the table
            assert "reason 1" in first
            for n, kind in enumerate(("link_lost", "poor_signal", "device_fault"), start=2):
                await store.append_event(event(kind, f"bed-{n}", n))
                line = await line_with(proc, kind)
                assert f"bed-{n}" in line
                assert f"reason {n}" in line
        finally:
            code, rest, _ = await stop(proc)
    assert code == 130  # interrupted, as every command is by Ctrl-C
    for kind in ("low_battery", "link_lost", "poor_signal", "device_fault"):
        assert kind not in rest  # each printed once, above


async def test_json_lines_filters_and_a_replaced_log_are_followed(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    path = tmp_path / "state" / "gatewayd.db"
    async with Store.open(path) as store:
        await store.append_event(event("low_battery", "bed-1", 1))
    proc = await follow(config, "--json", "--device", "bed-2")
    try:
        async with Store.open(path) as store:
            await store.append_event(event("link_lost", "bed-1", 2))  # another device: not shown
            await store.append_event(event("poor_signal", "bed-2", 3))
            shown = json.loads(await line_with(proc, "poor_signal"))
        assert (shown["device_id"], shown["kind"], shown["message"]) == (
            "bed-2",
            "poor_signal",
            "reason 3",
        )
        assert shown["topic"] == "gatewayd/room-12/devices/bed-2/alerts"
        # The file moved aside (as the store does with a corrupt one) and a fresh one started:
        # the command follows the new file from its start.
        await asyncio.to_thread(path.rename, path.with_name("gatewayd.db.corrupt-test"))
        for suffix in ("-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
        async with Store.open(path) as store:
            await store.append_event(event("device_fault", "bed-2", 4))
            again = json.loads(await line_with(proc, "device_fault"))
        assert again["message"] == "reason 4"
    finally:
        code, rest, err = await stop(proc)
    assert code == 130
    assert "link_lost" not in rest
    assert "was replaced; following the new file" in err
