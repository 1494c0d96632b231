"""Logging: JSON lines, console on a terminal, journald fields, and the stdlib routed through."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gatewayd.logs import configure_logging, reset_logging, running_under_journald

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    reset_logging()


class FakeTerminal(io.StringIO):
    """A stream that says it is a TTY."""

    def isatty(self) -> bool:
        return True


class RecordingJournal:
    """Scripted stand-in for systemd.journal.send: keeps each entry's fields."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, MESSAGE: str, **fields: Any) -> None:  # noqa: N803 - journal's field name
        self.entries.append({"MESSAGE": MESSAGE, **fields})


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_for_structlog_and_stdlib() -> None:
    stream = io.StringIO()
    assert configure_logging("info", "json", stream, env={}) == "json"
    structlog.get_logger("gatewayd.link").info("connected", device="wrist-1", rssi=-61)
    structlog.get_logger("gatewayd.link").debug("not shown")
    logging.getLogger("bleak.backends.bluezdbus").warning("adapter %s is %s", "hci0", "off")
    logging.getLogger("aiomqtt").debug("not shown either")
    first, second = json_lines(stream)
    assert first["event"] == "connected"
    assert first["device"] == "wrist-1"
    assert first["rssi"] == -61
    assert first["level"] == "info"
    assert first["logger"] == "gatewayd.link"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", first["timestamp"])
    assert second["event"] == "adapter hci0 is off"
    assert second["level"] == "warning"
    assert second["logger"] == "bleak.backends.bluezdbus"
    assert "_record" not in second


def test_json_exception_is_one_line_with_the_traceback() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream, env={})
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        structlog.get_logger("gatewayd.store").exception("write failed", table="events")
        logging.getLogger("aiomqtt").exception("stdlib failure")
    ours, theirs = json_lines(stream)
    assert ours["level"] == "error"
    assert ours["table"] == "events"
    assert "ZeroDivisionError: division by zero" in ours["exception"]
    assert "ZeroDivisionError: division by zero" in theirs["exception"]


def test_auto_is_json_when_not_a_terminal() -> None:
    stream = io.StringIO()
    assert configure_logging("info", "auto", stream, env={}) == "json"
    structlog.get_logger().info("hello")
    assert json_lines(stream)[0]["event"] == "hello"


def test_auto_is_console_on_a_terminal() -> None:
    stream = FakeTerminal()
    assert configure_logging("info", "auto", stream, env={}) == "console"
    structlog.get_logger("gatewayd.app").info("ready", devices=3)
    logging.getLogger("bleak").warning("from the stdlib")
    raw = stream.getvalue()
    assert "\x1b[" in raw  # coloured on a terminal
    lines = ANSI.sub("", raw).splitlines()
    assert len(lines) == 2
    assert re.search(r"\[info\s*\] ready\s+\[gatewayd\.app\] devices=3$", lines[0])
    assert re.search(r"\[warning\s*\] from the stdlib\s+\[bleak\]$", lines[1])


def test_console_respects_no_color() -> None:
    stream = FakeTerminal()
    configure_logging("info", "console", stream, env={"NO_COLOR": "1"})
    structlog.get_logger().info("plain")
    assert "\x1b[" not in stream.getvalue()
    assert "plain" in stream.getvalue()


def test_journald_fields_through_an_injected_send() -> None:
    journal = RecordingJournal()
    stream = io.StringIO()
    assert configure_logging("info", "journald", stream, env={}, journal_send=journal) == "journald"
    structlog.get_logger("gatewayd.rules").warning("alert raised", device="wrist-1", hr=182)
    logging.getLogger("bleak").info("connected to %s", "AA:BB")
    logging.getLogger("bleak").debug("filtered out")
    assert stream.getvalue() == ""  # nothing goes to the stream
    alert, stdlib = journal.entries
    assert alert == {
        "MESSAGE": "alert raised device=wrist-1 hr=182",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "gatewayd",
        "GATEWAYD_DEVICE": "wrist-1",
        "GATEWAYD_HR": "182",
        "GATEWAYD_LOGGER": "gatewayd.rules",
    }
    assert stdlib["MESSAGE"] == "connected to AA:BB"
    assert stdlib["PRIORITY"] == "6"
    assert stdlib["GATEWAYD_LOGGER"] == "bleak"


def test_journald_exception_goes_into_the_message() -> None:
    journal = RecordingJournal()
    configure_logging("info", "journald", env={}, journal_send=journal)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("crashed", task="publisher")
    (entry,) = journal.entries
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"].startswith("crashed task=publisher\nTraceback")
    assert "RuntimeError: boom" in entry["MESSAGE"]
    assert entry["GATEWAYD_TASK"] == "publisher"


def test_auto_under_journald_uses_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "journal-stream").open("w", encoding="utf-8") as stream:
        st = Path(stream.name).stat()
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert running_under_journald(stream, env)
        assert not running_under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:1"})
        assert not running_under_journald(stream, {"JOURNAL_STREAM": "garbage"})
        assert not running_under_journald(io.StringIO(), env)  # no file descriptor
        journal = RecordingJournal()
        assert (
            configure_logging("info", "auto", stream, env=env, journal_send=journal) == "journald"
        )
        structlog.get_logger().info("to the journal")
    assert journal.entries[0]["MESSAGE"] == "to the journal"


def test_journald_without_systemd_python_falls_back_to_json_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes `import systemd.journal` raise ImportError.
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    stream = io.StringIO()
    assert configure_logging("info", "journald", stream, env={}) == "json"
    structlog.get_logger().info("still logged")
    warning, event = json_lines(stream)
    assert warning["level"] == "warning"
    assert "systemd-python" in warning["event"]
    assert event["event"] == "still logged"


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first, env={})
    configure_logging("info", "json", second, env={})
    structlog.get_logger().info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_reset_restores_the_root_level() -> None:
    before = logging.getLogger().level
    configure_logging("debug", "json", io.StringIO(), env={})
    assert logging.getLogger().level == logging.DEBUG
    reset_logging()
    assert logging.getLogger().level == before


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_invalid_level_or_format(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        configure_logging(level, fmt, io.StringIO(), env={})
