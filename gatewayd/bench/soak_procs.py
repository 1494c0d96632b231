"""The processes `gatewayd bench soak` runs and breaks: a mosquitto it can stop and start again
on the same port, `gatewayd run` as a subprocess it can SIGKILL and start again, and a
subscriber that records every message delivered. Each is an async context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiomqtt

from gatewayd.demo.broker import (
    BrokerUnavailableError,
    find_mosquitto,
    free_port,
    wait_until_listening,
)
from gatewayd.errors import GatewayError
from gatewayd.lifecycle import BackgroundPart

__all__ = [
    "Delivered",
    "GatewayProcess",
    "RestartableMosquitto",
    "Subscriber",
    "stop_process",
]

#: Seconds a process may take to start or stop (a loaded 2-core box).
PROCESS_LIMIT_S: Final = 60.0
#: How long the subscriber waits before connecting again after losing the broker.
RECONNECT_S: Final = 0.2
#: The gateway's log lines are appended to its log file this many at a time.
LOG_BATCH: Final = 100
#: The subscriber's MQTT client logs here: losing the broker is the point of the soak, so its
#: connection errors are not printed.
_SUBSCRIBER_LOG: Final = logging.getLogger("gatewayd.bench.soak.subscriber")
_SUBSCRIBER_LOG.addHandler(logging.NullHandler())
_SUBSCRIBER_LOG.propagate = False


async def stop_process(
    process: asyncio.subprocess.Process, signum: signal.Signals, limit_s: float
) -> int:
    """Send ``signum`` (if it still runs), wait at most ``limit_s``, then SIGKILL; the exit code."""
    if process.returncode is None:
        process.send_signal(signum)
    try:
        async with asyncio.timeout(limit_s):
            return await process.wait()
    except TimeoutError:
        process.kill()
        return await process.wait()


class RestartableMosquitto:
    """A private mosquitto on 127.0.0.1 and a port fixed at construction, with persistence on:
    stopped (SIGTERM, it saves its sessions and queued messages) and started again on the same
    port, a subscriber's persistent session survives the restart, as in a real deployment."""

    def __init__(self, directory: Path, executable: str | None = None) -> None:
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self._executable = executable
        self._process: asyncio.subprocess.Process | None = None
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        """Whether the process is up."""
        return self._process is not None and self._process.returncode is None

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            # As root, stay root: otherwise mosquitto cannot write its persistence file here.
            *(["user root"] if os.geteuid() == 0 else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_timestamp true",
        ]
        self.config_file.write_text("\n".join(conf) + "\n", encoding="utf-8")

    async def start(self) -> None:
        """Start mosquitto and wait until its port accepts connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        executable = self._executable or await asyncio.to_thread(find_mosquitto)
        if executable is None:
            raise BrokerUnavailableError("mosquitto is not installed (apt-get install mosquitto)")
        self._executable = executable
        await asyncio.to_thread(self._write_config)
        log_fd = await asyncio.to_thread(
            os.open, self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        try:
            self._process = await asyncio.create_subprocess_exec(
                executable, "-c", str(self.config_file),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            os.close(log_fd)
        try:
            await wait_until_listening(self.host, self.port, self._process, PROCESS_LIMIT_S)
        except (TimeoutError, ChildProcessError) as exc:
            await self.stop()
            raise BrokerUnavailableError(f"mosquitto did not start on port {self.port}") from exc

    async def stop(self) -> None:
        """SIGTERM (it saves its state), SIGKILL after the limit; wait for the exit."""
        process, self._process = self._process, None
        if process is not None:
            await stop_process(process, signal.SIGTERM, PROCESS_LIMIT_S)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _append(path: Path, lines: list[str]) -> None:
    """Append lines to a file (blocking)."""
    with path.open("a", encoding="utf-8") as sink:
        sink.writelines(line + "\n" for line in lines)


@dataclass
class _RunLog:
    """What one gateway process logged that the soak counts."""

    decode_errors: int = 0
    telemetry_dropped: int = 0


class GatewayProcess:
    """`python -m gatewayd run --config F --log-format json` against the emulator; its JSON log
    lines (stderr) are appended to ``log_file`` and the ones the soak counts are counted.

    Async context manager: started on entry (returns once it logged "gateway running"), killed
    at the end of the block if still running.
    """

    def __init__(
        self, config: Path, env: Mapping[str, str], log_file: Path, args: Sequence[str] = ()
    ) -> None:
        self.config = config
        self.env = dict(env)
        self.log_file = log_file
        self.args = list(args)
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._running = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.run_log = _RunLog()
        self._tail: list[str] = []

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        p = self.process
        return p.pid if p is not None and p.returncode is None else None

    async def __aenter__(self) -> Self:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd", "run", "--config", str(self.config),
            "--log-format", "json", *self.args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=self.env, limit=1 << 20,
        )  # fmt: skip
        self.started_at = time.time()
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(PROCESS_LIMIT_S):
                running = asyncio.create_task(self._running.wait())
                await asyncio.wait({running, self._reader}, return_when=asyncio.FIRST_COMPLETED)
                running.cancel()
        except TimeoutError:
            pass
        if not self._running.is_set():
            await self.kill()
            tail = "\n".join(self._tail[-30:])
            raise GatewayError(f"gatewayd run did not start within {PROCESS_LIMIT_S:g} s:\n{tail}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()

    async def _read(self) -> None:
        assert self.process is not None
        stderr = self.process.stderr
        assert stderr is not None
        pending: list[str] = []
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            pending.append(text)
            self._tail = [*self._tail[-59:], text]
            with contextlib.suppress(ValueError):
                record = json.loads(text)
                if isinstance(record, dict):
                    self._count(record)
            if len(pending) >= LOG_BATCH:
                await asyncio.to_thread(_append, self.log_file, pending)
                pending = []
        await asyncio.to_thread(_append, self.log_file, pending)

    def _count(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "gateway running":
            self._running.set()
        elif event == "malformed input from device":
            self.run_log.decode_errors += 1
        elif event == "telemetry queue full; dropping the oldest window":
            total = int(record.get("dropped_total", 0))
            self.run_log.telemetry_dropped = max(self.run_log.telemetry_dropped, total)
        elif event == "telemetry dropped while disconnected":
            total = int(record.get("total", 0))
            self.run_log.telemetry_dropped = max(self.run_log.telemetry_dropped, total)

    async def _stop(self, signum: signal.Signals) -> int:
        if self.process is None:
            return 0
        code = await stop_process(self.process, signum, PROCESS_LIMIT_S)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> int:
        """SIGKILL (no shutdown code runs); the exit code."""
        return await self._stop(signal.SIGKILL)

    async def terminate(self) -> int:
        """SIGTERM, as systemd stops it (SIGKILL after the limit); the exit code."""
        return await self._stop(signal.SIGTERM)


@dataclass
class Delivered:
    """Everything the subscriber received."""

    #: Event ids received on any alerts topic (device or gateway), duplicates kept.
    event_ids: list[str] = field(default_factory=list)
    #: (device id, seq, unix time received) of each telemetry message.
    telemetry: list[tuple[str, int, float]] = field(default_factory=list)
    #: (unix time, state) of each status message.
    status: list[tuple[float, str]] = field(default_factory=list)
    connects: int = 0


class Subscriber(BackgroundPart):
    """Subscribes (QoS 1, persistent session) to a gateway's whole topic tree and records what
    arrives, reconnecting whenever the broker goes away."""

    def __init__(self, host: str, port: int, topic_root: str, gateway_id: str) -> None:
        super().__init__("soak-subscriber")
        self.host = host
        self.port = port
        self.base = f"{topic_root}/{gateway_id}"
        self.delivered = Delivered()
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Receive until cancelled."""
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier="gatewayd-soak-subscriber",
                    clean_session=False, protocol=aiomqtt.ProtocolVersion.V311,
                    logger=_SUBSCRIBER_LOG,
                ) as client:  # fmt: skip
                    await client.subscribe(f"{self.base}/#", qos=1)
                    self.delivered.connects += 1
                    self.subscribed.set()
                    async for message in client.messages:
                        self.record(str(message.topic), message.payload, time.time())
            except aiomqtt.MqttError:
                await asyncio.sleep(RECONNECT_S)

    def record(self, topic: str, payload: Any, t: float) -> None:
        """File one message under its kind (a body that is not a JSON object is ignored)."""
        if not isinstance(payload, bytes | bytearray) or not payload:
            return
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        parts = topic.removeprefix(self.base + "/").split("/")
        if parts[-1] == "alerts" and "event_id" in body:
            self.delivered.event_ids.append(str(body["event_id"]))
        elif parts[-1] == "telemetry" and len(parts) == 3 and "seq" in body:
            self.delivered.telemetry.append((parts[1], int(body["seq"]), t))
        elif parts == ["status"]:
            self.delivered.status.append((t, str(body.get("state"))))
