"""Logging: JSON lines, console on a terminal, journald fields, and the stdlib routed through.

journald entries go to a datagram socket the test binds, in journald's native protocol (encoded
in plain Python by gatewayd.systemd), and are decoded here as journald would.
"""

from __future__ import annotations

import array
import fcntl
import io
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gatewayd.logs import configure_logging, reset_logging, running_under_journald
from gatewayd.systemd import journal_entry, journal_field_name

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    reset_logging()


class FakeTerminal(io.StringIO):
    """A stream that says it is a TTY."""

    def isatty(self) -> bool:
        return True


class JournalReceiver:
    """The receiving end of journald's native socket: a datagram socket bound by the test.

    Entries arrive as datagrams, or as a memfd passed with SCM_RIGHTS when too big for one.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(5.0)
        self.memfds = 0
        self.seals: list[int] = []

    def entries(self, count: int) -> list[dict[str, str]]:
        """The next ``count`` entries, decoded; fails if they do not come."""
        found = []
        for _ in range(count):
            data, ancillary, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            for level, kind, cdata in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = array.array("i", cdata[:4])[0]
                    self.memfds += 1
                    self.seals.append(fcntl.fcntl(fd, fcntl.F_GET_SEALS))
                    # From offset 0, as journald maps it (the sender's writes moved the offset).
                    data = os.pread(fd, os.fstat(fd).st_size, 0)
                    os.close(fd)
            found.append(parse_entry(data))
        return found

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[JournalReceiver]:
    receiver = JournalReceiver(tmp_path / "journal")
    yield receiver
    receiver.close()


F_SEAL_ALL = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def parse_entry(data: bytes) -> dict[str, str]:
    """Decode one native-protocol entry (the reverse of journal_entry), as journald does."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(data):
        newline = data.index(b"\n", at)
        line = data[at:newline]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            at = newline + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, newline + 1)
            start = newline + 1 + 8
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n"
            at = start + size + 1
        fields[key.decode("ascii")] = value.decode("utf-8")
    return fields


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


def test_journald_fields_on_a_real_socket(journal: JournalReceiver) -> None:
    stream = io.StringIO()
    fmt = configure_logging("info", "journald", stream, env={}, journal_socket=journal.path)
    assert fmt == "journald"
    structlog.get_logger("gatewayd.rules").warning(
        "alert raised", device="wrist-1", event_id="0192b7c4-a1", hr=182
    )
    logging.getLogger("bleak").info("connected to %s", "AA:BB")
    logging.getLogger("bleak").debug("filtered out")
    assert stream.getvalue() == ""  # nothing goes to the stream
    alert, stdlib = journal.entries(2)
    assert alert == {
        "MESSAGE": "alert raised device=wrist-1 event_id=0192b7c4-a1 hr=182",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "gatewayd",
        "DEVICE": "wrist-1",
        "EVENT_ID": "0192b7c4-a1",
        "GATEWAYD_HR": "182",
        "GATEWAYD_LOGGER": "gatewayd.rules",
    }
    assert stdlib["MESSAGE"] == "connected to AA:BB"
    assert stdlib["PRIORITY"] == "6"
    assert stdlib["GATEWAYD_LOGGER"] == "bleak"


def test_journald_exception_goes_into_the_message(journal: JournalReceiver) -> None:
    configure_logging("info", "journald", env={}, journal_socket=journal.path)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("crashed", task="publisher")
    (entry,) = journal.entries(1)
    assert entry["PRIORITY"] == "3"
    # A value with newlines travels in the binary-safe form and comes back whole.
    assert entry["MESSAGE"].startswith("crashed task=publisher\nTraceback")
    assert "RuntimeError: boom" in entry["MESSAGE"]
    assert entry["GATEWAYD_TASK"] == "publisher"


def test_an_entry_too_big_for_a_datagram_goes_as_a_sealed_memfd(journal: JournalReceiver) -> None:
    configure_logging("info", "journald", env={}, journal_socket=journal.path)
    # Bigger than the send buffer JournalSocket gets (net.core.wmem_max, doubled): no datagram
    # can carry it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
        limit = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    big = "x" * (limit + 1024)
    structlog.get_logger().info("big", blob=big)
    (entry,) = journal.entries(1)
    assert len(entry["GATEWAYD_BLOB"]) == len(big)
    assert entry["GATEWAYD_BLOB"] == big
    assert journal.memfds == 1
    assert journal.seals == [F_SEAL_ALL]


def test_auto_under_journald_uses_the_journal(tmp_path: Path, journal: JournalReceiver) -> None:
    with (tmp_path / "journal-stream").open("w", encoding="utf-8") as stream:
        st = Path(stream.name).stat()
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert running_under_journald(stream, env)
        assert not running_under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:1"})
        assert not running_under_journald(stream, {"JOURNAL_STREAM": "garbage"})
        assert not running_under_journald(io.StringIO(), env)  # no file descriptor
        fmt = configure_logging("info", "auto", stream, env=env, journal_socket=journal.path)
        assert fmt == "journald"
        structlog.get_logger().info("to the journal")
    assert journal.entries(1)[0]["MESSAGE"] == "to the journal"


def test_journald_without_a_journal_socket_falls_back_to_json_with_one_warning(
    tmp_path: Path,
) -> None:
    stream = io.StringIO()
    missing = str(tmp_path / "no-journal")
    assert configure_logging("info", "journald", stream, env={}, journal_socket=missing) == "json"
    structlog.get_logger().info("still logged")
    warning, event = json_lines(stream)
    assert warning["level"] == "warning"
    assert warning["event"] == (
        f"journald logging: no journal socket at {missing}; writing JSON lines instead"
    )
    assert event["event"] == "still logged"


def test_an_entry_journald_cannot_take_goes_to_the_stream(tmp_path: Path) -> None:
    receiver = JournalReceiver(tmp_path / "journal")
    stream = io.StringIO()
    configure_logging("info", "journald", stream, env={}, journal_socket=receiver.path)
    receiver.close()  # journald restarting: the socket is gone
    Path(receiver.path).unlink()
    structlog.get_logger().warning("while journald restarts", device="wrist-1")
    assert stream.getvalue() == "<4>while journald restarts device=wrist-1\n"


# --- the native protocol, as pure code ---------------------------------------------------------


def test_native_protocol_encoding() -> None:
    assert journal_entry({"MESSAGE": "hello", "PRIORITY": "6"}) == b"MESSAGE=hello\nPRIORITY=6\n"
    # A newline in the value: the name, a newline, the length (64-bit little-endian), the value.
    assert journal_entry({"MESSAGE": "a\nb"}) == (b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n")
    assert journal_entry({"DEVICE": "wrist-ü"}) == "DEVICE=wrist-ü\n".encode()
    assert (
        journal_entry({"BLOB": b"\x00\n\xff"}) == b"BLOB\n" + struct.pack("<Q", 3) + b"\x00\n\xff\n"
    )
    for bad in ("_PID", "lower", "9LIVES", "", "A" * 65, "WITH SPACE"):
        with pytest.raises(ValueError, match="not a journal field name"):
            journal_entry({bad: "x"})


def test_field_names_are_made_valid() -> None:
    assert journal_field_name("event-id") == "EVENT_ID"
    assert journal_field_name("_private") == "PRIVATE"
    assert journal_field_name("2x") == "X2X"
    assert journal_field_name("gateway" * 20) == ("GATEWAY" * 20)[:64]


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
