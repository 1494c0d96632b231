"""`gatewayd store export` and `gatewayd store vacuum` on real event logs written by gatewayd's
own Store, through `cli.main`."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gatewayd import cli
from gatewayd.config import StoreConfig
from gatewayd.store import NewEvent, RawSamples, Store, WindowRecord
from gatewayd.store.export import EXPORT_COLUMNS
from tests import disk

NOW = time.time()


pytestmark = pytest.mark.usefixtures("cli_environment")


def write_config(tmp_path: Path, state: Path | None = None) -> Path:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "room-12"\nstate_dir = "{state or tmp_path / "state"}"\n'
        '[logging]\nlevel = "warning"\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


def gatewayd(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what setting up printed (the Store logs to stdout by default)
    code = cli.main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: (device, seconds before now, record fields) of the windows `build_log` writes.
WINDOWS = [
    ("bed-1", 7200.0, {"seq": 1, "hr_bpm": 64.5, "hr_source": "wearable", "activity": "rest"}),
    ("bed-2", 600.0, {"seq": 7, "t_ms": 123456, "battery": 80, "signal_quality": 3}),
    (
        "bed-1",
        590.0,
        {
            "seq": 2,
            "kind": "window",
            "hr_bpm": 131.0,
            "hr_source": "fused",
            "activity": "vigorous",
            "activity_conf": 0.91,
            "entropy_bits": 3.6,
            "offloaded": True,
            "model_id": "mnv2-1d-w1.0",
            "result": {"groups": {"rest": 0.01, "light": 0.08, "vigorous": 0.91}},
        },
    ),
    ("bed-1", 30.0, {"seq": 3, "hr_bpm": 72.0, "hr_source": "wearable"}),
]


async def build_log(path: Path) -> None:
    async with Store.open(path) as store:
        for device, ago, fields in WINDOWS:
            await store.record_window(WindowRecord(device, NOW - ago, **fields))  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    global NOW  # noqa: PLW0603 - the windows' ages are relative to when they are written
    NOW = time.time()
    asyncio.run(build_log(tmp_path / "state" / "gatewayd.db"))
    return write_config(tmp_path)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


# --- export --------------------------------------------------------------------------------------


def test_export_writes_every_window_as_csv_oldest_first(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = gatewayd(capsys, config, "store", "export")
    assert code == 0, err
    assert "4 window(s)" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [(r["device_id"], r["seq"]) for r in rows] == [
        ("bed-1", "1"),
        ("bed-2", "7"),
        ("bed-1", "2"),
        ("bed-1", "3"),
    ]
    first, second, offloaded, _ = rows
    assert first["time"] == iso(NOW - 7200)
    assert float(first["received_at"]) == pytest.approx(NOW - 7200, abs=1e-3)
    assert (first["hr_bpm"], first["hr_source"], first["activity"]) == ("64.5", "wearable", "rest")
    # Missing values are empty cells; booleans 0/1.
    assert (second["hr_bpm"], second["activity"], second["offloaded"]) == ("", "", "0")
    assert (second["t_ms"], second["battery"], second["signal_quality"]) == ("123456", "80", "3")
    assert offloaded["kind"] == "window"
    assert (offloaded["offloaded"], offloaded["model_id"]) == ("1", "mnv2-1d-w1.0")
    assert float(offloaded["activity_conf"]) == pytest.approx(0.91)


def test_export_filters_by_device_and_time_and_writes_json_lines(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = gatewayd(
        capsys, config, "store", "export", "--device", "bed-1", "--since", "1h",
        "--until", iso(NOW - 60).replace("+00:00", "Z"), "--format", "jsonl",
    )  # fmt: skip
    assert code == 0, err
    (line,) = out.splitlines()  # bed-1 in the last hour, but not the last minute
    row = json.loads(line)
    assert (row["device_id"], row["seq"], row["offloaded"]) == ("bed-1", 2, True)
    assert row["result"] == {"groups": {"rest": 0.01, "light": 0.08, "vigorous": 0.91}}
    assert row["invalid"] is None


def test_export_to_a_file_beside_a_running_gateway(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out" / "windows.csv"
    target.parent.mkdir()

    async def export_while_open() -> tuple[int, str, str]:
        async with Store.open(tmp_path / "state" / "gatewayd.db") as store:
            await store.record_window(WindowRecord("bed-3", time.time(), seq=1, hr_bpm=99.0))
            result = await asyncio.to_thread(
                gatewayd, capsys, config, "store", "export", "--out", str(target)
            )
            await store.record_window(WindowRecord("bed-3", time.time(), seq=2))
            return result

    code, out, err = asyncio.run(export_while_open())
    assert code == 0, err
    assert out == ""
    assert f"5 window(s) to {target}" in err
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [r["device_id"] for r in rows][-1] == "bed-3"
    assert sorted(p.name for p in target.parent.iterdir()) == ["windows.csv"]  # no .partial


def test_an_export_that_cannot_be_written_says_why_and_leaves_nothing(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "windows.csv"
    code, _, err = gatewayd(capsys, config, "store", "export", "--out", str(missing))
    assert code == 1
    assert f"cannot write {missing}: No such file or directory" in err
    with disk.small_tmpfs(tmp_path / "small", "1m") as mount:
        disk.take_every_free_block(mount / "filler")
        target = mount / "windows.csv"
        code, _, err = gatewayd(capsys, config, "store", "export", "--out", str(target))
        assert code == 1
        assert f"cannot write {target}: No space left on device" in err
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]  # no half file


def test_an_empty_interval_and_a_missing_log_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    code, _, err = gatewayd(capsys, config, "store", "export", "--since", "1h", "--until", "2h")
    assert code == 64
    assert "--until must be later than --since" in err
    code, _, err = gatewayd(capsys, config, "store", "export")
    assert code == 69
    assert "no event log" in err
    code, _, err = gatewayd(capsys, config, "store", "vacuum")
    assert code == 69
    assert f"no event log at {tmp_path / 'state' / 'gatewayd.db'}: nothing to vacuum" in err
    assert not (tmp_path / "state").exists()  # it created nothing


# --- vacuum --------------------------------------------------------------------------------------


async def fill_then_delete(path: Path) -> str:
    """1,000 offloaded windows with raw samples and a pending alert; then delete most windows
    behind the store's back, as retention would, leaving free pages in the file."""
    raw = RawSamples("int16le", 64, 32, 4096, b"\1\2" * 512, b"\3\4" * 768)
    async with Store.open(path, StoreConfig(keep_raw_windows=True)) as store:
        for i in range(1000):
            await store.record_window(
                WindowRecord("bed-1", NOW + i, "window", seq=i, hr_bpm=70.0, raw=raw)
            )
        event_id = await store.append_event(
            NewEvent("tachycardia", "warning", "raised", {"x": 1}, device_id="bed-1")
        )
    await asyncio.to_thread(delete_windows, path, "seq >= 100")
    return event_id


def delete_windows(path: Path, where: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"DELETE FROM windows WHERE {where}")
    conn.close()


def test_vacuum_shrinks_the_log_and_keeps_everything_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state" / "gatewayd.db"
    config = write_config(tmp_path)
    event_id = asyncio.run(fill_then_delete(path))
    before = path.stat().st_size
    code, out, err = gatewayd(capsys, config, "store", "vacuum")
    assert code == 0, err
    after = path.stat().st_size
    assert after < before / 3, (before, after)
    assert "MB of live data" in out
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT count(*) FROM windows").fetchone() == (100,)
    assert conn.execute("SELECT count(*) FROM raw_windows").fetchone() == (100,)
    assert conn.execute("SELECT event_id FROM outbox WHERE done_at IS NULL").fetchall() == [
        (event_id,)
    ]
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # still INCREMENTAL
    conn.close()

    async def reopen() -> int:  # and the gateway opens it as before
        async with Store.open(path) as store:
            return len(await store.pending_outbox())

    assert asyncio.run(reopen()) == 1


def test_vacuum_is_refused_while_a_gateway_has_the_log_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state" / "gatewayd.db"
    config = write_config(tmp_path)
    asyncio.run(fill_then_delete(path))

    async def vacuum_while_open() -> tuple[int, str, str, str, str]:
        async with Store.open(path) as store:
            await store.flush()
            before = await asyncio.to_thread(sha, path)
            code, out, err = await asyncio.to_thread(gatewayd, capsys, config, "store", "vacuum")
            after = await asyncio.to_thread(sha, path)
            await store.record_window(WindowRecord("bed-1", time.time(), seq=5000))
            return code, out, err, before, after

    code, _, err, before, after = asyncio.run(vacuum_while_open())
    assert code == 1
    assert "cannot vacuum it: the event log is in use by another process" in err
    assert "systemctl stop gatewayd" in err
    assert before == after


def test_vacuum_without_room_for_the_copy_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with disk.small_tmpfs(tmp_path / "small", "16m") as mount:
        path = mount / "gatewayd.db"
        config = write_config(tmp_path, state=mount)
        asyncio.run(fill_then_delete(path))
        disk.take_every_free_block(mount / "filler")
        before = sha(path)
        code, _, err = gatewayd(capsys, config, "store", "vacuum")
        assert code == 1
        assert "not enough free space to vacuum" in err
        assert sha(path) == before
        (mount / "filler").unlink()
        code, _, err = gatewayd(capsys, config, "store", "vacuum")
        assert code == 0, err
