"""The MQTT broker `gatewayd demo` publishes to: given, local, private mosquitto, or in-process.

`choose_broker` takes the first that works: the host and port the user gave (``--mqtt-host`` /
``--mqtt-port``, used as they are); a broker already answering on 127.0.0.1:1883; a private
``mosquitto`` started on an ephemeral loopback port; an amqtt broker inside this process (the
optional ``demo`` extra). The last two live only as long as the ``async with`` around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import shlex
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import aiomqtt

from gatewayd.errors import GatewayError

if TYPE_CHECKING:
    from amqtt.broker import Broker as _AmqttBroker

__all__ = [
    "LOCAL_BROKER",
    "BrokerChoice",
    "BrokerKind",
    "BrokerUnavailableError",
    "InProcessBroker",
    "PrivateMosquitto",
    "choose_broker",
    "find_mosquitto",
    "free_port",
    "in_process_available",
    "local_broker_reachable",
    "mosquitto_sub_line",
    "wait_until_listening",
]

log = logging.getLogger(__name__)

#: Where a broker the user already runs is looked for.
LOCAL_BROKER: Final = ("127.0.0.1", 1883)
LOOPBACK: Final = "127.0.0.1"
#: Generous: a loaded 2-core machine may take a while to start a process.
START_TIMEOUT_S: Final = 10.0
#: SIGTERM, then SIGKILL after this long.
STOP_TIMEOUT_S: Final = 5.0
#: How much of mosquitto's log goes into the error when it does not start.
LOG_TAIL_LINES: Final = 20
#: Debian installs mosquitto in /usr/sbin, which is not on an ordinary user's PATH.
_SBIN_DIRS: Final = ("/usr/sbin", "/usr/local/sbin")
_AMQTT_LOGGERS: Final = ("amqtt", "transitions")

BrokerKind = Literal["given", "local", "private-mosquitto", "in-process"]

_HOW_TO_GET_A_BROKER: Final = (
    "install one: `sudo apt-get install mosquitto` (the demo starts a private one), or"
    " `pip install 'gatewayd[demo]'` (an in-process broker); or point the demo at a broker"
    " you run with --mqtt-host HOST --mqtt-port PORT"
)


class BrokerUnavailableError(GatewayError):
    """No MQTT broker could be found or started for the demo; the message says how to get one."""


@dataclass(frozen=True)
class BrokerChoice:
    """The broker the demo uses, what kind it is, and a sentence to show the user about it."""

    host: str
    port: int
    kind: BrokerKind
    note: str


# --- probing ------------------------------------------------------------------------------------


async def local_broker_reachable(
    host: str = LOCAL_BROKER[0], port: int = LOCAL_BROKER[1], timeout_s: float = 1.0
) -> bool:
    """Whether an MQTT broker answers an anonymous CONNECT at host:port within timeout_s.

    A CONNACK is required, not just an open port. The probe has a random client id, a clean
    session, no last will and publishes nothing, so it leaves no trace on the broker.
    """
    identifier = f"gatewayd-probe-{uuid.uuid4().hex[:12]}"
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiomqtt.Client(
                host, port, identifier=identifier, clean_session=True, timeout=timeout_s
            ),
        ):
            return True
    except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
        log.debug("no MQTT broker at %s:%d: %s", host, port, exc)
        return False


def find_mosquitto() -> str | None:
    """The mosquitto executable on PATH or in /usr/sbin, or None. Blocking: stats files."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])
    return shutil.which("mosquitto", path=search)


def in_process_available() -> bool:
    """Whether amqtt (the `demo` extra) is installed. Blocking: searches sys.path."""
    return importlib.util.find_spec("amqtt") is not None


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on host that was free a moment ago (the kernel's ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until_listening(
    host: str, port: int, process: asyncio.subprocess.Process | None, timeout_s: float
) -> None:
    """Return once host:port accepts a TCP connection; raise if process exits or time runs out."""
    async with asyncio.timeout(timeout_s):
        while process is None or process.returncode is None:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
    raise ChildProcessError(f"exited with status {process.returncode}")


# --- brokers started for the demo ----------------------------------------------------------------


class _StartedBroker:
    """What both brokers the demo may start share: 127.0.0.1, a port once started, and an async
    context manager (start on entry, stop on exit) that refuses re-entry."""

    def __init__(self) -> None:
        self.host = LOOPBACK
        self._port: int | None = None
        self._entered = False

    @property
    def port(self) -> int:
        """The port the broker listens on (only once started)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    async def start(self) -> None:
        """Start the broker and wait until its port accepts connections."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop the broker."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"{type(self).__name__} is not reentrant; create a new one")
        self._entered = True
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


# --- private mosquitto ----------------------------------------------------------------------------


class PrivateMosquitto(_StartedBroker):
    """A mosquitto process of our own on 127.0.0.1 and an ephemeral port, for one demo run.

    Anonymous, no persistence, a config and a log in a temporary directory removed on stop.
    An async context manager that refuses re-entry; ``host`` and ``port`` are valid inside it.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self._executable = executable
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._directory: Path | None = None
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        """Whether the process is up."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Write a config, start mosquitto and wait (bounded) until its port accepts connections.

        Raises BrokerUnavailableError, with the tail of mosquitto's log, if it exits or does
        not listen within the start timeout.
        """
        if self._process is not None:
            raise RuntimeError("PrivateMosquitto is already started")
        executable = self._executable or await asyncio.to_thread(find_mosquitto)
        if executable is None:
            raise BrokerUnavailableError(f"mosquitto is not installed; {_HOW_TO_GET_A_BROKER}")
        # Temporary directory, port probe, config and log files: all blocking, so in a thread.
        directory, port, log_fd = await asyncio.to_thread(self._prepare, self.host)
        self._directory, self._port = directory, port
        try:
            self._process = await asyncio.create_subprocess_exec(
                executable,
                "-c",
                str(directory / "mosquitto.conf"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
            )
        except OSError as exc:
            await self._cleanup()
            raise BrokerUnavailableError(f"cannot run {executable}: {exc}") from exc
        finally:
            os.close(log_fd)
        try:
            await wait_until_listening(self.host, port, self._process, self._start_timeout_s)
        except (TimeoutError, ChildProcessError) as exc:
            reason = (
                f"did not listen on {self.host}:{port} within {self._start_timeout_s:g} s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            tail = await asyncio.to_thread(self._log_tail)
            await self.stop()
            raise BrokerUnavailableError(
                f"mosquitto {reason}; its log ends with:\n{tail or '(nothing)'}"
            ) from exc
        log.info("started a private mosquitto on %s:%d", self.host, port)

    async def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL after the stop timeout) and remove its files."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self._stop_timeout_s):
                    await process.wait()
            except TimeoutError:
                log.warning("mosquitto ignored SIGTERM for %g s; killing it", self._stop_timeout_s)
                process.kill()
                await process.wait()
        await self._cleanup()

    @staticmethod
    def _prepare(host: str) -> tuple[Path, int, int]:
        """Create the directory, config and log file; return them and a free port (blocking)."""
        directory = Path(tempfile.mkdtemp(prefix="gatewayd-demo-mosquitto-"))
        port = free_port(host)
        lines = [
            f"listener {port} {host}",
            "allow_anonymous true",
            "persistence false",
            # To stderr, which is our log file: mosquitto may drop root privileges after reading
            # the config, and then could not open a file in our private directory itself.
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        (directory / "mosquitto.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        log_fd = os.open(directory / "mosquitto.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return directory, port, log_fd

    def _log_tail(self) -> str:
        """The last lines mosquitto logged (blocking read)."""
        if self._directory is None:
            return ""
        try:
            text = (self._directory / "mosquitto.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    async def _cleanup(self) -> None:
        directory, self._directory = self._directory, None
        if directory is not None:
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)


# --- in-process broker (amqtt, optional) ----------------------------------------------------------


class InProcessBroker(_StartedBroker):
    """An amqtt broker in this event loop on 127.0.0.1 and an ephemeral port; the last resort.

    Needs the optional ``demo`` extra (amqtt), imported only when started. Anonymous, no $SYS
    topics, amqtt's INFO chatter silenced. Known amqtt 0.12.1 deviation (docs/decisions.md): a
    client that connects is sent, at QoS 0, retained messages matching *other* clients' topic
    filters, so subscribers should check ``message.topic.matches(...)``.
    An async context manager that refuses re-entry; ``host`` and ``port`` are valid inside it.
    """

    def __init__(self, *, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        super().__init__()
        self._stop_timeout_s = stop_timeout_s
        self._broker: _AmqttBroker | None = None
        self._quieted: list[logging.Logger] = []

    async def start(self) -> None:
        """Import amqtt, start its broker and wait until the port accepts connections."""
        if self._broker is not None:
            raise RuntimeError("InProcessBroker is already started")
        try:
            # Importing amqtt reads some 60 modules from disk: blocking, so in a thread.
            amqtt_broker: Any = await asyncio.to_thread(importlib.import_module, "amqtt.broker")
        except ImportError as exc:
            raise BrokerUnavailableError(
                f"the in-process broker needs amqtt: {exc}; {_HOW_TO_GET_A_BROKER}"
            ) from exc
        self._port = await asyncio.to_thread(free_port, self.host)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self._port}"}},
            # Only anonymous auth: amqtt's default set adds packet/event loggers and $SYS topics.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._quiet_amqtt_logging()
        try:
            broker: _AmqttBroker = amqtt_broker.Broker(config)
            await broker.start()
        except Exception as exc:
            self._restore_logging()
            raise BrokerUnavailableError(
                f"the in-process MQTT broker (amqtt) did not start on {self.host}:{self._port}:"
                f" {exc}"
            ) from exc
        self._broker = broker
        log.info("started an in-process MQTT broker (amqtt) on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Shut the broker down (bounded by the stop timeout) and close its listener."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await broker.shutdown()
        except TimeoutError:
            log.warning(
                "the in-process MQTT broker did not shut down within %g s", self._stop_timeout_s
            )
        finally:
            self._restore_logging()

    def _quiet_amqtt_logging(self) -> None:
        """WARNING and above only from amqtt, unless the user configured its loggers."""
        for name in _AMQTT_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
                self._quieted.append(logger)

    def _restore_logging(self) -> None:
        for logger in self._quieted:
            logger.setLevel(logging.NOTSET)
        self._quieted.clear()


# --- choice ---------------------------------------------------------------------------------------


@asynccontextmanager
async def choose_broker(
    host: str | None,
    port: int | None,
    *,
    local: tuple[str, int] | None = LOCAL_BROKER,
    find_mosquitto: Callable[[], str | None] = find_mosquitto,
    in_process_available: Callable[[], bool] = in_process_available,
) -> AsyncIterator[BrokerChoice]:
    """Yield the broker for the demo, starting one if needed and stopping it on exit.

    Order: the given host/port (either alone defaults the other to 127.0.0.1 / 1883) as is;
    a broker answering at ``local`` (None: never use a shared broker unless given, as the
    benchmark's flood belongs on no one else's broker); a private mosquitto; an in-process
    amqtt broker. The two callables are blocking look-ups (run in a thread), injectable for
    tests. Raises BrokerUnavailableError saying how to get a broker when none of them works.
    """
    if host is not None or port is not None:
        host, port = host or LOOPBACK, port or LOCAL_BROKER[1]
        yield BrokerChoice(host, port, "given", f"using the MQTT broker at {host}:{port}")
        return
    if local is not None and await local_broker_reachable(*local):
        yield BrokerChoice(
            *local, "local", f"using the MQTT broker already running at {local[0]}:{local[1]}"
        )
        return
    nothing_local = "" if local is None else f"no broker at {local[0]}:{local[1]}; "
    executable = await asyncio.to_thread(find_mosquitto)
    if executable is not None:
        async with PrivateMosquitto(executable) as mosquitto:
            yield BrokerChoice(
                mosquitto.host,
                mosquitto.port,
                "private-mosquitto",
                f"{nothing_local}started a private mosquitto on"
                f" {mosquitto.host}:{mosquitto.port} (stopped at the end)",
            )
        return
    if await asyncio.to_thread(in_process_available):
        async with InProcessBroker() as broker:
            yield BrokerChoice(
                broker.host,
                broker.port,
                "in-process",
                f"{nothing_local}no mosquitto installed; started an"
                f" in-process broker (amqtt) on {broker.host}:{broker.port}",
            )
        return
    none_local = "" if local is None else f"none answers at {local[0]}:{local[1]}, "
    raise BrokerUnavailableError(
        f"an MQTT broker is needed: {none_local}mosquitto is not installed and neither is"
        f" amqtt; {_HOW_TO_GET_A_BROKER}"
    )


def mosquitto_sub_line(choice: BrokerChoice, topic_filter: str) -> str:
    """The shell command that shows what the demo publishes, ready to paste."""
    host, topic = shlex.quote(choice.host), shlex.quote(topic_filter)
    if not topic.startswith("'"):
        topic = f"'{topic}'"  # quote every filter alike, so a pasted + or # is never expanded
    return f"mosquitto_sub -h {host} -p {choice.port} -t {topic} -v"
