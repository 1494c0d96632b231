"""`gatewayd events` and the log columns of `gatewayd devices list`, on a real store file.

The stores are written by gatewayd's own Store (as the daemon writes them) and read through
`cli.main`, which opens the file read-only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewayd import cli
from gatewayd.errors import EXIT_UNAVAILABLE
from gatewayd.link.registry import DeviceRegistry
from gatewayd.mapping import gateway_event
from gatewayd.store import NewEvent, Store, StoredEvent, WindowRecord, report
from gatewayd.store.report import event_message, parse_since

#: "Now" for the events the fixtures write: reset by `world` when it builds them, so relative
#: filters (--since 6m) see the same ages however long the suite ran before this test.
NOW = time.time()
W1 = "C0:FF:EE:00:00:01"
W2 = "C0:FF:EE:00:00:02"


pytestmark = pytest.mark.usefixtures("cli_environment")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "room-12"\nstate_dir = "{tmp_path / "state"}"\n'
        '[logging]\nlevel = "warning"\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "gatewayd.db"


def alert(
    kind: str, state: str, device: str, at: float, severity: str = "warning", **evidence: object
) -> NewEvent:
    category = "physiological" if kind in {"tachycardia", "fall"} else "technical"
    payload = {
        "device_id": device,
        "kind": kind,
        "category": category,
        "t": at,
        "episode": 1,
        "raised_at": at,
        "reason": "threshold" if state == "raised" else "recovered",
        "evidence": evidence,
    }
    return NewEvent(kind, severity, state, payload, device_id=device, created_at=at)


async def build_store(path: Path) -> dict[str, str]:
    """bed-1: five windows, tachycardia raised (published), a fall raised and cleared, lost data.
    old-strap (not paired): one window two hours ago, disconnected raised. One gateway event."""
    ids: dict[str, str] = {}
    async with Store.open(path) as store:
        await store.record_window(WindowRecord("old-strap", NOW - 7300, seq=1, hr_bpm=64.0))
        ids["disconnected"] = await store.append_event(
            alert("disconnected", "raised", "old-strap", NOW - 7200, since=NOW - 7230, for_s=30),
        )
        missing = gateway_event(
            "model_missing", "warning", "no model installed", NOW - 900, model="m"
        )
        ids["model_missing"] = await store.append_event(
            dataclasses.replace(missing, created_at=NOW - 900),
        )
        for i in range(5):
            await store.record_window(
                WindowRecord(
                    "bed-1",
                    NOW - 600 + i * 8,
                    seq=i,
                    hr_bpm=150.0 + i,
                    hr_source="wearable",
                    activity="sitting",
                    battery=81,
                )
            )
        windows = [{"seq": i, "t": NOW - 600 + i * 8, "value": 150 + i} for i in range(5)]
        ids["tachycardia"] = await store.append_event(
            alert("tachycardia", "raised", "bed-1", NOW - 560, windows=windows, min=150, max=154),
        )
        ids["fall"] = await store.append_event(
            alert("fall", "raised", "bed-1", NOW - 300, severity="critical", impact_g=3.1),
        )
        ids["fall_cleared"] = await store.append_event(
            alert("fall", "cleared", "bed-1", NOW - 240, severity="critical"),
        )
        ids["data_lost"] = await store.append_event(
            NewEvent(
                "data_lost",
                "warning",
                "raised",
                {
                    "category": "technical",
                    "reason": "messages_lost",
                    "evidence": {"first": 40, "count": 3},
                },
                device_id="bed-1",
                created_at=NOW - 120,
            ),
        )
        await store.mark_published([ids["tachycardia"]], at=NOW - 559)
    return ids


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config whose event log holds build_store's events, and a registry with bed-1 and bed-2."""
    global NOW  # noqa: PLW0603 - the ages of the events are relative to when they are written
    NOW = time.time()
    config = write_config(tmp_path)
    ids = asyncio.run(build_store(db_path(tmp_path)))
    registry = DeviceRegistry.in_state_dir(tmp_path / "state")
    registry.add(W1, "wearable", "wearable-01", "bed-1")
    registry.add(W2, "wearable", "wearable-02", "bed-2")
    return config, ids


def gatewayd(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what setting up printed (the Store logs to stdout by default)
    code = cli.main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> list[list[str]]:
    """Rows of a table, split on the column gaps (cells hold single spaces at most)."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]


def local(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- --since -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds_back"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 7 * 86400),
        ("1w", 7 * 86400),
        ("1.5h", 5400),
        (" 3 D ", 3 * 86400),
        ("0m", 0),
    ],
)
def test_since_accepts_durations_back_from_now(text: str, seconds_back: float) -> None:
    assert parse_since(text, 1_000_000.0) == 1_000_000.0 - seconds_back


def test_since_accepts_iso_dates_and_times() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert (
        parse_since("2026-11-25T08:00:00Z", 0) == datetime(2026, 11, 25, 8, tzinfo=UTC).timestamp()
    )
    assert (
        parse_since("2026-11-25T08:00+02:00", 0)
        == datetime(2026, 11, 25, 6, tzinfo=UTC).timestamp()
    )
    # Without an offset: the given zone (the local one by default).
    assert (
        parse_since("2026-11-25T08:00", 0, plus2)
        == datetime(2026, 11, 25, 6, tzinfo=UTC).timestamp()
    )
    assert parse_since("2026-11-25", 0, UTC) == datetime(2026, 11, 25, tzinfo=UTC).timestamp()
    assert parse_since("2026-11-25 08:30", 0) == datetime(2026, 11, 25, 8, 30).timestamp()
    assert parse_since("2026-11-25", 0) == datetime(2026, 11, 25).timestamp()


@pytest.mark.parametrize("text", ["", "yesterday", "15", "m15", "-2h", "2x", "2026-13-01", "1e3s"])
def test_since_rejects_anything_else_saying_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a duration like 15m, 2h or 7d, or an ISO-8601"):
        parse_since(text, 0)


def test_a_bad_since_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = gatewayd(capsys, write_config(tmp_path), "events", "--since", "soon")
    assert (code, out) == (64, "")
    assert "argument --since: expected a duration like 15m" in err
    assert not (tmp_path / "state").exists()


# --- the message column --------------------------------------------------------------------------


def test_event_message_summarises_reason_and_evidence() -> None:
    def event(payload: dict[str, object]) -> StoredEvent:
        return StoredEvent("x" * 36, "w1", "k", "warning", "raised", 0.0, None, payload)

    windows = [{"seq": 1}, {"seq": 2}, {"seq": 3}]
    assert (
        event_message(
            event(
                {"reason": "threshold", "evidence": {"windows": windows, "min": 151.26, "max": 160}}
            )
        )
        == "threshold, 151.3-160 over 3 windows"
    )
    assert event_message(event({"reason": "threshold", "evidence": {"for_s": 61.2}})) == (
        "threshold, for 61 s"
    )
    assert event_message(
        event({"reason": "messages_lost", "evidence": {"first": 4, "count": 2}})
    ) == ("messages_lost, 2 from seq 4")
    assert event_message(event({})) == "-"
    assert event_message(event({"reason": "r", "evidence": "not a mapping"})) == "r"
    # Values equal once rounded are said once; a fall says its impact and the stillness after.
    same = {"windows": windows, "min": 150.0, "max": 150.04}
    assert event_message(event({"reason": "threshold", "evidence": same})) == (
        "threshold, 150 over 3 windows"
    )
    fall = {"windows": windows, "min": 0.0086, "max": 3.105, "impact_g": 3.105, "still_for_s": 11.0}
    assert event_message(event({"reason": "threshold", "evidence": fall})) == (
        "threshold, impact 3.1 g, then still 11 s"
    )


# --- gatewayd events -----------------------------------------------------------------------------


def test_events_table_lists_everything_oldest_first(
    world: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    code, out, err = gatewayd(capsys, config, "events")
    assert (code, err) == (0, "")
    rows = table(out)
    assert rows[0] == [
        "TIME",
        "DEVICE",
        "KIND",
        "STATE",
        "SEVERITY",
        "CATEGORY",
        "MESSAGE",
        "PUBLISHED",
    ]
    assert rows[1:] == [
        [
            local(NOW - 7200),
            "old-strap",
            "disconnected",
            "raised",
            "warning",
            "technical",
            "threshold, for 30 s",
            "pending",
        ],
        [
            local(NOW - 900),
            "gateway",
            "model_missing",
            "raised",
            "warning",
            "technical",
            "no model installed",
            "pending",
        ],
        [
            local(NOW - 560),
            "bed-1",
            "tachycardia",
            "raised",
            "warning",
            "physiological",
            "threshold, 150-154 over 5 windows",
            "yes",
        ],
        [
            local(NOW - 300),
            "bed-1",
            "fall",
            "raised",
            "critical",
            "physiological",
            "threshold, impact 3.1 g",
            "pending",
        ],
        [
            local(NOW - 240),
            "bed-1",
            "fall",
            "cleared",
            "critical",
            "physiological",
            "recovered",
            "pending",
        ],
        [
            local(NOW - 120),
            "bed-1",
            "data_lost",
            "raised",
            "warning",
            "technical",
            "messages_lost, 3 from seq 40",
            "pending",
        ],
    ]


@pytest.mark.parametrize(
    ("argv", "kinds"),
    [
        (["--device", "bed-1"], ["tachycardia", "fall", "fall", "data_lost"]),
        (["--device", "gateway"], ["model_missing"]),
        (["--device", "nobody"], []),
        (["--kind", "fall"], ["fall", "fall"]),
        (["--kind", "fall", "--kind", "disconnected"], ["disconnected", "fall", "fall"]),
        (["--severity", "critical"], ["fall", "fall"]),
        (
            ["--severity", "WARNING"],
            ["disconnected", "model_missing", "tachycardia", "fall", "fall", "data_lost"],
        ),
        (["--since", "1h"], ["model_missing", "tachycardia", "fall", "fall", "data_lost"]),
        (["--since", "6m"], ["fall", "fall", "data_lost"]),
        (
            ["--device", "bed-1", "--severity", "warning", "--since", "10m"],
            ["tachycardia", "fall", "fall", "data_lost"],
        ),
        (["--limit", "2"], ["fall", "data_lost"]),
    ],
)
def test_events_filters(
    argv: list[str],
    kinds: list[str],
    world: tuple[Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _ = world
    code, out, _ = gatewayd(capsys, config, "events", *argv)
    assert code == 0
    if kinds:
        assert [row[2] for row in table(out)[1:]] == kinds
    else:
        assert out.startswith("No events match these filters in the event log")
    code, out, _ = gatewayd(capsys, config, "events", *argv, "--json")
    assert code == 0
    assert [e["kind"] for e in json.loads(out)] == kinds


def test_events_since_an_iso_time(
    world: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    since = datetime.fromtimestamp(NOW - 400, UTC).isoformat().replace("+00:00", "Z")
    code, out, _ = gatewayd(capsys, config, "events", "--since", since, "--json")
    assert code == 0
    assert [e["kind"] for e in json.loads(out)] == ["fall", "fall", "data_lost"]


def test_events_limit_says_when_older_events_match(
    world: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    code, _, err = gatewayd(capsys, config, "events", "--limit", "3")
    assert code == 0
    assert err == (
        "gatewayd events: showing the newest 3; older events match too (--limit N or --since"
        " WHEN)\n"
    )
    assert gatewayd(capsys, config, "events", "--limit", "6")[2] == ""
    assert gatewayd(capsys, config, "events", "--limit", "0")[0] == 64


def test_events_json_has_the_whole_event(
    world: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids = world
    code, out, _ = gatewayd(capsys, config, "events", "--json", "--kind", "tachycardia")
    assert code == 0
    (event,) = json.loads(out)
    assert event["id"] == ids["tachycardia"]
    assert event["device_id"] == "bed-1"
    assert (event["kind"], event["state"], event["severity"], event["category"]) == (
        "tachycardia",
        "raised",
        "warning",
        "physiological",
    )
    assert event["created_at"] == pytest.approx(NOW - 560)
    assert event["time"] == datetime.fromtimestamp(NOW - 560, UTC).isoformat(
        timespec="milliseconds"
    )
    assert event["evidence"]["min"] == 150
    assert [w["seq"] for w in event["evidence"]["windows"]] == [0, 1, 2, 3, 4]
    assert event["payload"]["episode"] == 1
    assert event["message"] == "threshold, 150-154 over 5 windows"
    assert event["published"] is True
    assert event["published_at"] == datetime.fromtimestamp(NOW - 559, UTC).isoformat(
        timespec="milliseconds"
    )
    assert event["topic"] == "gatewayd/room-12/devices/bed-1/alerts"
    code, out, _ = gatewayd(capsys, config, "events", "--json", "--device", "gateway")
    (gateway,) = json.loads(out)
    assert gateway["id"] == ids["model_missing"]
    assert gateway["device_id"] is None
    assert gateway["published"] is False
    assert gateway["published_at"] is None
    assert gateway["evidence"] == {"model": "m"}


def test_an_empty_event_log_is_a_friendly_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)

    async def empty() -> None:
        async with Store.open(db_path(tmp_path)) as store:
            await store.flush()

    asyncio.run(empty())
    code, out, err = gatewayd(capsys, config, "events")
    assert (code, err) == (0, "")
    assert out == f"No events yet in the event log {db_path(tmp_path)}.\n"
    assert gatewayd(capsys, config, "events", "--json")[:2] == (0, "[]\n")


def test_no_event_log_exits_69_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    for argv in (["events"], ["events", "--json", "--since", "2h"]):
        code, out, err = gatewayd(capsys, config, *argv)
        assert (code, out) == (EXIT_UNAVAILABLE, "")
        assert err == (
            f"gatewayd events: no event log at {db_path(tmp_path)} yet: the gateway has not run"
            " with this config\n"
        )
    assert not (tmp_path / "state").exists()
    # The directory exists, the file does not: still nothing is created.
    (tmp_path / "state").mkdir()
    assert gatewayd(capsys, config, "events")[0] == EXIT_UNAVAILABLE
    assert names(tmp_path / "state") == []


def test_an_empty_file_is_no_event_log_and_stays_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    db_path(tmp_path).parent.mkdir()
    db_path(tmp_path).touch()
    code, _, err = gatewayd(capsys, config, "events")
    assert code == EXIT_UNAVAILABLE
    assert "is empty: the gateway has not run with this config" in err
    assert db_path(tmp_path).stat().st_size == 0


@pytest.mark.parametrize(
    "content",
    [b"this is not a database\n" * 300, b"SQLite format 3\x00" + b"\xff" * 8000],
    ids=["not-sqlite", "garbage-after-header"],
)
def test_a_corrupt_file_is_reported_and_left_alone(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    db_path(tmp_path).parent.mkdir()
    db_path(tmp_path).write_bytes(content)
    code, out, err = gatewayd(capsys, config, "events")
    assert (code, out) == (1, "")
    assert err.startswith(
        f"gatewayd: error: store {db_path(tmp_path)}: cannot read the event log: the file is"
        " corrupt or not a gatewayd event log ("
    )
    assert "It was not modified; `gatewayd run` moves a corrupt log aside" in err
    assert err.count("\n") == 1
    assert db_path(tmp_path).read_bytes() == content
    assert names(tmp_path / "state") == ["gatewayd.db"]  # nothing moved aside


def test_corrupt_pages_in_a_real_log_are_reported_and_left_alone(
    world: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    path = db_path(tmp_path)
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # every page after the first
    path.write_bytes(bytes(data))
    before = sha(path)
    code, _, err = gatewayd(capsys, config, "events")
    assert code == 1
    assert (
        "the file is corrupt or not a gatewayd event log (database disk image is malformed)" in err
    )
    assert sha(path) == before
    assert not list(tmp_path.glob("state/*.corrupt-*"))


def test_a_newer_schema_is_refused_untouched(
    world: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    path = db_path(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = sha(path)
    code, _, err = gatewayd(capsys, config, "events")
    assert code == 1
    assert "was written by a newer gatewayd (schema version 99" in err
    assert sha(path) == before


def test_the_log_is_opened_read_only_and_never_migrated(
    world: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    path = db_path(tmp_path)
    # An older schema (no windows yet): a writer would migrate it; the reader must not.
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE raw_windows")
    conn.execute("DROP TABLE windows")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = sha(path)
    assert gatewayd(capsys, config, "events")[0] == 0
    code, out, _ = gatewayd(capsys, config, "devices", "list", "--json")
    assert code == 0
    assert {d["id"]: d["log"]["windows"] for d in json.loads(out) if d["log"]} == {
        "bed-1": 0,
        "old-strap": 0,
    }
    assert sha(path) == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    conn.close()


@pytest.mark.asyncio
async def test_events_reads_while_the_gateway_has_the_log_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    async with Store.open(db_path(tmp_path)) as store:
        event_id = await store.append_event(alert("low_battery", "raised", "bed-1", NOW))
        # The command blocks (sqlite3, print): it runs in a thread, as in its own process.
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, ["--config", str(config), "events", "--json"])
        out, _ = capsys.readouterr()
        assert code == 0
        assert [e["id"] for e in json.loads(out)] == [event_id]
        # The daemon keeps writing while and after the reader has been there.
        assert await store.append_event(alert("fall", "raised", "bed-1", NOW))
        assert await store.mark_published([event_id]) == 1
        code = await asyncio.to_thread(cli.main, ["--config", str(config), "events", "--json"])
        out, _ = capsys.readouterr()
        assert [e["published"] for e in json.loads(out)] == [True, False]


# --- gatewayd devices list -----------------------------------------------------------------------


def test_devices_list_merges_the_registry_and_the_log(
    world: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    code, out, err = gatewayd(capsys, config, "devices", "list")
    assert (code, err) == (0, "")
    rows = table(out)
    assert rows[0] == [
        "ID",
        "ADDRESS",
        "KIND",
        "PAIRED",
        "LAST SEEN",
        "LINK",
        "BATTERY",
        "HR",
        "ACTIVITY",
        "WINDOWS",
        "OPEN ALERTS",
    ]
    bed1, bed2, strap = rows[1:]
    assert bed1[:4] == ["bed-1", W1, "wearable", "yes"]
    assert bed1[4].startswith(local(NOW - 568))
    # The fall was cleared and data_lost is no alert: only the tachycardia is open.
    assert bed1[5:] == ["connected", "81%", "154", "sitting", "5", "tachycardia"]
    assert bed2 == ["bed-2", W2, "wearable", "yes", "never", "-", "-", "-", "-", "0", "-"]
    assert strap[:4] == ["old-strap", "-", "-", "not paired"]
    assert strap[4] == f"{local(NOW - 7300)} (2 h ago)"  # its last window
    assert strap[5:] == ["disconnected", "-", "64", "-", "1", "disconnected"]


def test_devices_list_json_merges_the_registry_and_the_log(
    world: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    code, out, _ = gatewayd(capsys, config, "devices", "list", "--json")
    assert code == 0
    bed1, bed2, strap = json.loads(out)
    assert {k: bed1[k] for k in ("id", "address", "kind", "name", "paired")} == {
        "id": "bed-1",
        "address": W1,
        "kind": "wearable",
        "name": "wearable-01",
        "paired": True,
    }
    assert bed1["paired_at"]
    assert (bed1["renamed_from"], strap["renamed_from"]) == ([], [])
    log = bed1["log"]
    assert (log["link"], log["windows"], log["open_alerts"]) == ("connected", 5, ["tachycardia"])
    assert log["last_window"]["seq"] == 4
    assert log["last_window"]["hr_bpm"] == 154.0
    assert log["last_window"]["battery"] == 81
    assert log["last_seen"] == datetime.fromtimestamp(NOW - 568, UTC).isoformat(
        timespec="milliseconds"
    )
    assert (bed2["paired"], bed2["log"]) == (True, None)
    assert (strap["id"], strap["paired"], strap["paired_at"], strap["address"]) == (
        "old-strap",
        False,
        None,
        None,
    )
    assert strap["log"]["open_alerts"] == ["disconnected"]
    assert strap["log"]["link"] == "disconnected"


def test_devices_list_names_the_id_a_renamed_device_goes_by_now(
    world: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    DeviceRegistry.in_state_dir(config.parent / "state").rename("bed-1", "room-12-bed-1")
    code, out, _ = gatewayd(capsys, config, "devices", "list")
    assert code == 0
    rows = {row[0]: row for row in table(out)[1:]}
    assert rows["room-12-bed-1"][3:5] == ["yes", "never"]  # nothing logged under the new id yet
    assert rows["bed-1"][1:4] == ["-", "-", "renamed: room-12-bed-1"]
    assert rows["old-strap"][3] == "not paired"
    code, out, _ = gatewayd(capsys, config, "devices", "list", "--json")
    listed = {d["id"]: d for d in json.loads(out)}
    assert (listed["bed-1"]["renamed_to"], listed["bed-1"]["paired"]) == ("room-12-bed-1", False)
    assert listed["room-12-bed-1"]["renamed_from"] == ["bed-1"]
    assert listed["old-strap"]["renamed_to"] is None


def test_devices_list_without_a_log_is_the_registry_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    DeviceRegistry.in_state_dir(tmp_path / "state").add(W1, "wearable", "wearable-01", "bed-1")
    code, out, err = gatewayd(capsys, config, "devices", "list")
    assert (code, err) == (0, "")
    assert table(out)[0] == ["ID", "ADDRESS", "KIND", "NAME", "PAIRED AT"]
    assert table(out)[1][:4] == ["bed-1", W1, "wearable", "wearable-01"]
    registry = DeviceRegistry.in_state_dir(tmp_path / "state")
    registry.rename("bed-1", "room-12-bed-1")
    code, out, _ = gatewayd(capsys, config, "devices", "list", "--json")
    ((device),) = json.loads(out)
    assert (device["id"], device["paired"], device["log"]) == ("room-12-bed-1", True, None)
    assert device["renamed_from"] == ["bed-1"]
    assert names(tmp_path / "state") == ["devices.json"]  # no log was created


def test_devices_list_with_a_corrupt_log_still_lists_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    DeviceRegistry.in_state_dir(tmp_path / "state").add(W1, "wearable", "wearable-01", "bed-1")
    db_path(tmp_path).write_bytes(b"garbage" * 1000)
    code, out, err = gatewayd(capsys, config, "devices", "list")
    assert code == 1
    assert table(out)[1][:2] == ["bed-1", W1]
    assert err.startswith("gatewayd devices list: warning: store ")
    assert err.endswith("; showing the paired devices only\n")
    assert db_path(tmp_path).read_bytes() == b"garbage" * 1000


def test_devices_list_shows_log_devices_when_none_are_paired(
    world: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = world
    registry = DeviceRegistry.in_state_dir(tmp_path / "state")
    registry.remove("bed-1")
    registry.remove("bed-2")
    code, out, _ = gatewayd(capsys, config, "devices", "list")
    assert code == 0
    assert [(r[0], r[3]) for r in table(out)[1:]] == [
        ("bed-1", "not paired"),
        ("old-strap", "not paired"),
    ]


# --- a user who may not create the WAL index -----------------------------------------------------


def refuse_plain_read_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make `mode=ro` fail as for a user who cannot create gatewayd.db-shm (CANTINIT)."""
    real = report._connect
    uris: list[str] = []

    def connect(uri: str) -> sqlite3.Connection:
        uris.append(uri)
        if "immutable" not in uri:
            exc = sqlite3.OperationalError("attempt to write a readonly database")
            exc.sqlite_errorcode = 1544  # type: ignore[attr-defined]  # SQLITE_READONLY_CANTINIT
            raise exc
        return real(uri)

    monkeypatch.setattr(report, "_connect", connect)
    return uris


def test_without_the_wal_index_an_idle_log_is_read_as_immutable(
    world: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _ = world
    uris = refuse_plain_read_only(monkeypatch)
    code, out, _ = gatewayd(capsys, config, "events", "--json")
    assert code == 0
    assert len(json.loads(out)) == 6
    assert [u.rsplit("?", 1)[1] for u in uris] == ["mode=ro", "mode=ro&immutable=1"]


def test_without_the_wal_index_a_log_in_use_is_refused_with_advice(
    world: tuple[Path, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _ = world
    Path(f"{db_path(tmp_path)}-wal").touch()  # someone has the log open
    uris = refuse_plain_read_only(monkeypatch)
    code, _, err = gatewayd(capsys, config, "events")
    assert code == 1
    assert "run as the user gatewayd runs as (e.g. `sudo -u gatewayd gatewayd events`)" in err
    assert len(uris) == 1
