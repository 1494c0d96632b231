"""sd_notify without systemd-python: READY=1, STATUS=, WATCHDOG=1, STOPPING=1 on a real socket.

The test binds the AF_UNIX datagram socket systemd would (a path, or an abstract name) and reads
what arrives, with the sender's credentials (SO_PASSCRED), as systemd does to check
``NotifyAccess=main``. The end-to-end tests run the real `gatewayd run` in a subprocess against
the emulated BlueZ and a private mosquitto (tests/test_app_durability.py's helpers), with
``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` in its environment. No timing assertions: every wait
is for a message, with a generous deadline.

The watchdog's promise is that a stalled event loop stops the pings. The subprocess test stalls
the real loop from outside without a hook in gatewayd: its stderr is a one-page pipe the test
fills and stops reading, as a log reader that stalls would (journald included), so the next log
line blocks the event loop in write(2) while every other thread runs on. /proc/<pid>/syscall
shows the main thread waiting there. SIGSTOP would stop every thread at once and so prove
nothing about where the pings come from.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import platform
import socket
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.app import run_gateway
from gatewayd.config import load_config
from gatewayd.emulator import FakeBluez
from gatewayd.systemd import notifier, notify_address, watchdog_interval_s
from tests.emulator_fixtures import EmulatorEnv, needs_dbus_daemon
from tests.mqtt_fixtures import MOSQUITTO, Broker, free_port
from tests.test_app_durability import (
    PROCESS_LIMIT_S,
    GatewayProcess,
    gatewayd_run,
    write_config_file,
)

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

#: The watchdog timeout given to the gateway: it pings every half of it (0.1 s).
WATCHDOG_USEC = 200_000
#: struct ucred: pid, uid, gid.
UCRED = struct.Struct("3i")
ADAPTER = "00:1A:7D:DA:71:00"


class NotifySocket:
    """The receiving end of sd_notify: a bound datagram socket that knows who sent what."""

    def __init__(self, address: str) -> None:
        #: What goes into $NOTIFY_SOCKET (a path, or @name for an abstract socket).
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.setblocking(False)
        #: (sender pid, message), in arrival order.
        self.received: list[tuple[int, str]] = []

    def drain(self) -> list[tuple[int, str]]:
        """Read every datagram waiting now (never blocks); return the new ones."""
        new: list[tuple[int, str]] = []
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                break
            pid = next(
                (
                    UCRED.unpack(cdata[: UCRED.size])[0]
                    for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                ),
                -1,
            )
            new.append((pid, data.decode()))
        self.received.extend(new)
        return new

    def messages(self) -> list[str]:
        """Every message so far, in order."""
        self.drain()
        return [message for _pid, message in self.received]

    async def wait_for(
        self, predicate: str, count: int = 1, limit_s: float = PROCESS_LIMIT_S
    ) -> None:
        """Wait until ``predicate`` arrived ``count`` times; fail after ``limit_s``."""
        deadline = time.monotonic() + limit_s
        while self.messages().count(predicate) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{predicate!r} x{count} did not arrive; got {self.messages()}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def notify_socket(address: str) -> Iterator[NotifySocket]:
    receiver = NotifySocket(address)
    try:
        yield receiver
    finally:
        receiver.close()


def abstract_name() -> str:
    return f"@gatewayd-test-{uuid.uuid4().hex}"


# --- the notifier on its own ---------------------------------------------------------------------


def test_notify_socket_values_map_to_unix_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify/42") == (
        "\0/org/freedesktop/systemd1/notify/42"
    )
    for not_unix in ("", "@", "relative/path", "vsock:2:1234"):
        assert notify_address(not_unix) is None, not_unix


def test_the_watchdog_belongs_to_the_process_systemd_named() -> None:
    env = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "4242"}
    assert watchdog_interval_s(env, pid=4242) == 10.0
    assert watchdog_interval_s(env, pid=4243) is None  # a child that inherited the variables
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_a_message_reaches_a_path_or_abstract_socket_from_this_process(
    kind: str, tmp_path: Path
) -> None:
    address = str(tmp_path / "notify") if kind == "path" else abstract_name()
    with notify_socket(address) as receiver:
        notify = notifier({"NOTIFY_SOCKET": address})
        notify("READY=1")
        notify("STATUS=two words\nand a line")
        assert receiver.drain() == [
            (os.getpid(), "READY=1"),
            (os.getpid(), "STATUS=two words\nand a line"),
        ]


def test_a_vanished_socket_is_not_the_gateways_failure(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with notify_socket(address):
        notify = notifier({"NOTIFY_SOCKET": address})
    Path(address).unlink()
    notify("WATCHDOG=1")  # systemd went away: the message is dropped, nothing raises
    assert not Path(address).exists()


# --- the gateway in this process: pings come from the event loop ---------------------------------


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_a_stalled_event_loop_sends_no_watchdog_ping(
    private_bus: EmulatorEnv, fake_bluez: FakeBluez, tmp_path: Path
) -> None:
    """While the loop is blocked nothing pings; a pinger on a thread would keep systemd fooled."""
    await fake_bluez.add_adapter("hci0", ADAPTER, slots=5)
    path = tmp_path / "gatewayd.toml"
    await asyncio.to_thread(
        path.write_text,
        f'[gateway]\nid = "gw-notify"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n',
        encoding="utf-8",
    )
    config = await asyncio.to_thread(load_config, path, env={})
    stop = asyncio.Event()
    with notify_socket(abstract_name()) as receiver:
        notify = notifier({"NOTIFY_SOCKET": receiver.env_value})
        task = asyncio.create_task(
            run_gateway(
                config,
                registry_devices=[],
                ready=lambda: notify("READY=1"),
                watchdog=lambda: notify("WATCHDOG=1"),
                status=lambda line: notify(f"STATUS={line}"),
                stopping=lambda: notify("STOPPING=1"),
                stop=stop,
                models_dir=tmp_path / "no-models",
                watchdog_interval_s=0.02,
            )
        )
        try:
            await receiver.wait_for("READY=1")
            await receiver.wait_for("WATCHDOG=1", count=3)
            receiver.drain()
            time.sleep(1.0)  # noqa: ASYNC251 - the deliberate stall: nothing on this loop runs
            assert "WATCHDOG=1" not in [m for _pid, m in receiver.drain()]
            pings = receiver.messages().count("WATCHDOG=1")
            await receiver.wait_for("WATCHDOG=1", count=pings + 3)  # the loop runs again
        finally:
            stop.set()
            async with asyncio.timeout(30):
                code = await task
        assert code == 0
        messages = receiver.messages()
    assert messages.count("READY=1") == 1
    assert messages.count("STOPPING=1") == 1
    assert messages[-1] == "STATUS=stopped"


# --- the real `gatewayd run` ---------------------------------------------------------------------


needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")


@pytest.mark.parametrize("kind", ["path", "abstract"])
@needs_dbus_daemon
@needs_mosquitto
@pytest.mark.asyncio
async def test_gatewayd_run_says_ready_pings_the_watchdog_and_says_stopping_on_sigterm(
    kind: str,
    private_bus: EmulatorEnv,
    fake_bluez: FakeBluez,
    mosquitto_broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await fake_bluez.add_adapter("hci0", ADAPTER, slots=5)
    config = await asyncio.to_thread(write_config_file, tmp_path, port=mosquitto_broker.port)
    address = str(tmp_path / "notify") if kind == "path" else abstract_name()
    with notify_socket(address) as receiver:
        # The subprocess inherits this process's environment (EmulatorEnv.environ).
        monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        async with gatewayd_run(config, private_bus) as gw:
            await receiver.wait_for("READY=1")
            # READY=1 comes after the store, the model, the publisher, the link and the
            # pipeline are up: the supervisor logs "gateway running" just before it (read from
            # the gateway's stderr, so it may reach us after the notify socket's READY=1).
            await gw.wait_until(lambda: _said(gw, "gateway running"), 10, "the READY log")
            ready_at = receiver.messages().index("READY=1")
            await receiver.wait_for("WATCHDOG=1", count=3)
            assert await gw.terminate() == 0, gw.stderr()
            pid = gw.process.pid
        await receiver.wait_for("STOPPING=1")
        messages = receiver.messages()
        senders = {sender for sender, _message in receiver.received}
    assert senders == {pid}, "every message comes from the main process (NotifyAccess=main)"
    assert messages.count("READY=1") == 1
    assert messages[0] == "STATUS=opening the event log"
    assert messages.index("STOPPING=1") > ready_at
    assert "WATCHDOG=1" in messages[ready_at:]
    assert any(m.startswith("STATUS=0/0 devices connected, mqtt") for m in messages), messages
    assert messages[-1] == "STATUS=stopped"


#: write(2) as /proc/<pid>/syscall numbers it, per machine.
WRITE_SYSCALL = {"x86_64": 1, "aarch64": 64, "riscv64": 64}
#: fcntl's F_SETPIPE_SZ (Linux; in the fcntl module from Python 3.10).
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: The smallest pipe Linux makes: one page.
PIPE_SIZE = 4096


class StderrPipe:
    """The gateway's stderr: a one-page pipe the test reads, or stops reading."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        fcntl.fcntl(self.write_fd, F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(self.read_fd, False)
        self.data = bytearray()
        self._loop = asyncio.get_running_loop()

    def resume(self) -> None:
        """Read whatever the gateway writes, as it comes."""
        self._loop.add_reader(self.read_fd, self._read)

    def pause(self) -> None:
        """Stop reading: the gateway's next writes fill the pipe, then block."""
        self._loop.remove_reader(self.read_fd)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.data += os.read(self.read_fd, 1 << 16)

    def fill(self) -> None:
        """Fill the pipe to the brim, as unread log lines would.

        Through a second, non-blocking open file description of the pipe (/proc/self/fd): the
        gateway's own stderr stays blocking, as it is under systemd.
        """
        fd = os.open(f"/proc/self/fd/{self.write_fd}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(fd, b"\n")
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records read so far."""
        found = []
        for line in self.data.decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    def close(self) -> None:
        self.pause()
        os.close(self.read_fd)
        os.close(self.write_fd)


def blocked_writing_stderr(pid: int) -> bool:
    """Whether the main thread of ``pid`` (its event loop) waits in write(2) on fd 2."""
    fields = Path(f"/proc/{pid}/syscall").read_text(encoding="ascii").split()
    # "running", or the syscall number and its arguments in hex.
    return (
        len(fields) > 1
        and fields[0] == str(WRITE_SYSCALL[platform.machine()])
        and int(fields[1], 16) == 2
    )


async def wait_until_blocked(pid: int, receiver: NotifySocket) -> None:
    deadline = time.monotonic() + PROCESS_LIMIT_S
    while not await asyncio.to_thread(blocked_writing_stderr, pid):
        if time.monotonic() > deadline:
            pytest.fail(f"gatewayd's event loop never blocked on stderr; {receiver.messages()}")
        await asyncio.sleep(0.05)


@needs_dbus_daemon
@needs_mosquitto
@pytest.mark.skipif(
    platform.machine() not in WRITE_SYSCALL or not Path("/proc/self/syscall").exists(),
    reason="reads the syscall a thread waits in from /proc/<pid>/syscall (Linux)",
)
@pytest.mark.asyncio
async def test_gatewayd_run_stops_pinging_while_its_event_loop_is_blocked(
    private_bus: EmulatorEnv,
    fake_bluez: FakeBluez,
    mosquitto_broker: Broker,
    tmp_path: Path,
) -> None:
    """A real `gatewayd run` whose loop blocks writing a log line: no WATCHDOG=1 until it runs.

    The stall: stderr is full and unread, and stopping the broker makes the publisher log
    "MQTT connection lost" from the event loop, which then waits in write(2) on fd 2. Ten ping
    intervals pass without a ping; once the test reads stderr again the pings resume.
    """
    await fake_bluez.add_adapter("hci0", ADAPTER, slots=5)
    config = await asyncio.to_thread(write_config_file, tmp_path, port=mosquitto_broker.port)
    stderr = StderrPipe()
    with notify_socket(abstract_name()) as receiver:
        env = private_bus.environ() | {
            "NOTIFY_SOCKET": receiver.env_value,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
        }
        env.pop("WATCHDOG_PID", None)
        stderr.resume()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd", "run", "--config", str(config),
            "--log-format", "json",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr.write_fd,
            env=env,
        )  # fmt: skip
        try:
            await receiver.wait_for("READY=1")
            await receiver.wait_for("WATCHDOG=1", count=3)

            stderr.pause()
            await asyncio.to_thread(stderr.fill)
            await mosquitto_broker.stop()  # the publisher logs the lost connection
            await wait_until_blocked(process.pid, receiver)
            receiver.drain()  # every ping sent before the loop blocked
            await asyncio.sleep(10 * WATCHDOG_USEC / 2e6)
            assert await asyncio.to_thread(blocked_writing_stderr, process.pid)
            assert "WATCHDOG=1" not in [m for _pid, m in receiver.drain()]

            stderr.resume()  # the loop runs again
            pings = receiver.messages().count("WATCHDOG=1")
            await receiver.wait_for("WATCHDOG=1", count=pings + 3)
            process.terminate()
            async with asyncio.timeout(PROCESS_LIMIT_S):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            stderr.close()
        messages = receiver.messages()
    events = [r.get("event", "") for r in stderr.records()]
    assert any(e.startswith("MQTT connection lost") for e in events), events
    assert messages.count("READY=1") == 1
    assert "STOPPING=1" in messages
    assert messages[-1] == "STATUS=stopped"


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_gatewayd_run_with_a_bad_config_exits_78_without_ready(
    private_bus: EmulatorEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = await asyncio.to_thread(
        write_config_file, tmp_path, port=free_port(), extra="[nonsense]\nkey = 1\n"
    )
    with notify_socket(str(tmp_path / "notify")) as receiver:
        monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
        async with gatewayd_run(config, private_bus) as gw:
            assert await gw.wait() == 78
        assert "READY=1" not in receiver.messages()
    assert any("nonsense" in line for line in gw.lines), gw.stderr()


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_gatewayd_run_is_not_ready_until_an_adapter_answers_and_says_why(
    private_bus: EmulatorEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No BlueZ, then a powered-off adapter, then a powered one: READY=1 only at the end.

    Each cause is one log line in `gatewayd doctor`'s words (not bleak's errno) and the STATUS=
    line, said again only when the cause changes, while the scanner keeps retrying.
    """
    config = await asyncio.to_thread(write_config_file, tmp_path, port=free_port())
    with notify_socket(str(tmp_path / "notify")) as receiver:
        monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
        async with gatewayd_run(config, private_bus, "--log-level", "debug") as gw:
            no_bluez = "STATUS=waiting for adapter hci0: bluetoothd is not running: nothing owns"
            await wait_for_prefix(receiver, no_bluez)
            await gw.wait_until(lambda: _scanner_failures(gw, 3), PROCESS_LIMIT_S, "3 failures")
            said = gw.logged_prefix("waiting for adapter hci0:")
            assert len(said) == 1, "said once, however often the scanner retries"
            assert said[0]["level"] == "warning"
            assert said[0]["event"].startswith(
                "waiting for adapter hci0: bluetoothd is not running: nothing owns org.bluez"
            )
            assert said[0]["fix"] == (
                "sudo apt install bluez && sudo systemctl enable --now bluetooth"
            )
            # bleak's own error only at DEBUG (the scanner's retries), never as the message.
            link_warnings = [
                r for r in gw.records if r["logger"] == "gatewayd.link" and r["level"] == "warning"
            ]
            assert not link_warnings, link_warnings

            async with FakeBluez(private_bus.address, report_interval=0.05) as fake:
                adapter = await fake.add_adapter("hci0", ADAPTER, powered=False)
                off = f"STATUS=waiting for adapter hci0: adapter hci0 ({ADAPTER}) is powered off"
                await wait_for_prefix(receiver, off)
                assert "READY=1" not in receiver.messages()

                # The STATUS= line can arrive before the log line is read from stderr.
                async def said_twice() -> bool:
                    return len(gw.logged_prefix("waiting for adapter hci0:")) >= 2

                await gw.wait_until(said_twice, 10, "the second cause's log line")
                assert len(gw.logged_prefix("waiting for adapter hci0:")) == 2
                await adapter.set_powered(True)
                await receiver.wait_for("READY=1")
                # READY=1 can arrive before the log lines are read from the gateway's stderr.
                await gw.wait_until(lambda: _said(gw, "gateway running"), 10, "the READY log")
                assert gw.logged("adapter answers"), gw.stderr()
                assert gw.logged("gateway running")[0]["adapters"] == ["hci0"]
                assert await gw.terminate() == 0, gw.stderr()
        messages = receiver.messages()
    assert messages.count("READY=1") == 1
    assert messages.index("READY=1") > messages.index(
        next(m for m in messages if m.startswith(off))
    )
    assert "STOPPING=1" in messages
    assert messages[-1] == "STATUS=stopped"


@needs_dbus_daemon
@pytest.mark.asyncio
async def test_gatewayd_run_stopped_while_waiting_for_an_adapter_stops_cleanly(
    private_bus: EmulatorEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = await asyncio.to_thread(write_config_file, tmp_path, port=free_port())
    with notify_socket(str(tmp_path / "notify")) as receiver:
        monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
        async with gatewayd_run(config, private_bus) as gw:
            await wait_for_prefix(receiver, "STATUS=waiting for adapter hci0: ")
            assert await gw.terminate() == 0, gw.stderr()
        messages = receiver.messages()
    assert "READY=1" not in messages
    assert "STOPPING=1" in messages
    assert messages[-1] == "STATUS=stopped"


async def wait_for_prefix(receiver: NotifySocket, prefix: str) -> None:
    """Wait until a message starting with ``prefix`` arrived; fail after the process limit."""
    deadline = time.monotonic() + PROCESS_LIMIT_S
    while not any(m.startswith(prefix) for m in receiver.messages()):
        if time.monotonic() > deadline:
            pytest.fail(f"no {prefix!r}; got {receiver.messages()}")
        await asyncio.sleep(0.05)


async def _said(gw: GatewayProcess, event: str) -> bool:
    return bool(gw.logged(event))


async def _scanner_failures(gw: GatewayProcess, count: int) -> bool:
    return len(gw.logged("scanner failed")) >= count
