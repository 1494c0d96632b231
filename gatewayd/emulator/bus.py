"""A private D-Bus daemon for the BLE emulator: a system-bus look-alike in a temporary directory.

bleak's BlueZ backend reaches BlueZ through dbus-fast on the *system* bus, and dbus-fast reads
the system bus address from ``DBUS_SYSTEM_BUS_ADDRESS``. :class:`PrivateBus` starts a
``dbus-daemon`` listening on a unix socket in its own temporary directory, with a policy that lets
any local process own ``org.bluez`` and talk to anyone, and yields that address. The emulator
(:mod:`gatewayd.emulator.bluez`) owns ``org.bluez`` on it; the gateway is pointed at it by setting
``DBUS_SYSTEM_BUS_ADDRESS`` before bleak opens its first connection. See docs/emulator.md.

The bus has the system bus's connection limits (:class:`BusLimits`, dbus-daemon's built-in
defaults, which the Debian and Raspberry Pi OS system.conf leave as they are): 256 connections
per user, 2048 in all. bleak opens one D-Bus connection per connected device, so tests meet the
ceiling a real gateway meets (docs/running.md); ``BusLimits.for_connections_per_user`` raises it
for benches that emulate more devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final
from xml.sax.saxutils import escape

from gatewayd.errors import EmulatorError

__all__ = [
    "DBUS_SYSTEM_BUS_ADDRESS",
    "SYSTEM_BUS_COMPLETED_CONNECTIONS",
    "SYSTEM_BUS_CONNECTIONS_PER_USER",
    "BusLimits",
    "EmulatorError",
    "PrivateBus",
    "bus_config",
]

_LOG = logging.getLogger(__name__)

#: The variable dbus-fast (and libdbus) read to find the system bus.
DBUS_SYSTEM_BUS_ADDRESS: Final = "DBUS_SYSTEM_BUS_ADDRESS"

#: How long dbus-daemon may take to print its address, and to exit after SIGTERM.
_START_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 5.0
_PR_SET_PDEATHSIG: Final = 1
#: What dbus-daemon logs once it has read its configuration again (after SIGHUP).
_RELOADED: Final = "Reloaded configuration"
_RELOAD_POLL_S: Final = 0.05
#: dbus-daemon's built-in max_connections_per_user and max_completed_connections
#: (bus/config-parser.c), which the system bus keeps: system.conf only lists them, commented out.
SYSTEM_BUS_CONNECTIONS_PER_USER: Final = 256
SYSTEM_BUS_COMPLETED_CONNECTIONS: Final = 2048


@dataclass(frozen=True, slots=True)
class BusLimits:
    """The connection limits written into the private bus's configuration.

    The defaults are the system bus's. A connection past ``connections_per_user`` (all of a
    user's authenticated connections) or ``completed_connections`` (everyone's) is refused: the
    daemon logs "The maximum number of active connections for UID N has been reached" and
    closes it, which bleak reports as an EOFError or a closed socket from its connect.
    """

    connections_per_user: int = SYSTEM_BUS_CONNECTIONS_PER_USER
    completed_connections: int = SYSTEM_BUS_COMPLETED_CONNECTIONS

    def __post_init__(self) -> None:
        if self.connections_per_user < 1 or self.completed_connections < 1:
            raise ValueError(f"bus connection limits must be at least 1: {self}")

    @classmethod
    def for_connections_per_user(cls, n: int) -> BusLimits:
        """``n`` connections per user, the total raised with it when ``n`` is above the system
        bus's (every connection on this bus is one user's)."""
        return cls(n, max(SYSTEM_BUS_COMPLETED_CONNECTIONS, n))


def bus_config(socket_path: Path, limits: BusLimits | None = None) -> str:
    """Return a dbus-daemon configuration for a private, permissive system-like bus.

    ``<type>system</type>``, EXTERNAL authentication and the connection ``limits`` (default:
    the system bus's) as on a real system bus; unlike the real one, anybody may own any name
    (``org.bluez`` in particular) and send to anybody, because the bus only ever carries the
    emulator and the process under test. No service activation, no syslog, no fork, no pid
    file: the daemon is a child we start and stop.
    """
    limits = limits or BusLimits()
    listen = escape(f"unix:path={socket_path}")
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>{listen}</listen>
  <limit name="max_connections_per_user">{limits.connections_per_user}</limit>
  <limit name="max_completed_connections">{limits.completed_connections}</limit>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


def _death_signal_setter() -> Callable[[], None] | None:
    """Return a pre-exec hook that makes the kernel SIGTERM the child when we die (Linux).

    libc's ``prctl`` is looked up here, in the parent: only the bare call runs in the child,
    between fork and exec, where loading libraries is unsafe in a threaded process.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return set_death_signal


class PrivateBus:
    """A private dbus-daemon as an async context manager that yields the bus address.

    ``async with PrivateBus() as address:`` starts ``dbus-daemon --nofork --print-address`` with
    :func:`bus_config` in a fresh temporary directory, waits until it prints its address (it does
    so once the socket listens), and on exit stops it (SIGTERM, then SIGKILL after a grace period)
    and removes the directory, also when the body raised. ``PrivateBus(address)`` joins an
    existing bus instead and starts nothing (``limits`` are then the existing bus's business).
    An instance is entered at most once.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        limits: BusLimits | None = None,
        dbus_daemon: str = "dbus-daemon",
        start_timeout: float = _START_TIMEOUT_S,
    ) -> None:
        self._joined = address
        self.limits = limits or BusLimits()
        self._dbus_daemon = dbus_daemon
        self._start_timeout = start_timeout
        self._address: str | None = None
        self._dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._entered = False

    @property
    def address(self) -> str:
        """The D-Bus address to put in ``DBUS_SYSTEM_BUS_ADDRESS``."""
        if self._address is None:
            raise EmulatorError("the private bus is not running; use it as 'async with'")
        return self._address

    @property
    def pid(self) -> int | None:
        """The dbus-daemon's process id, or None when joined to an existing bus or stopped."""
        return None if self._proc is None else self._proc.pid

    @property
    def directory(self) -> Path | None:
        """The temporary directory holding the socket, the config and the daemon's log."""
        return self._dir

    def environ(self) -> dict[str, str]:
        """Return the environment variables that point a client process at this bus."""
        return {DBUS_SYSTEM_BUS_ADDRESS: self.address}

    async def __aenter__(self) -> str:
        if self._entered:
            raise EmulatorError("a PrivateBus can be entered only once; create a new one")
        self._entered = True
        if self._joined is not None:
            self._address = self._joined
            return self._address
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self.address

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        # Small filesystem work goes off the loop so a blocking-call detector stays quiet.
        daemon = await asyncio.to_thread(shutil.which, self._dbus_daemon)
        if daemon is None:
            raise EmulatorError(
                f"{self._dbus_daemon!r} not found on PATH; install the 'dbus' package "
                "(apt-get install dbus) to run the BLE emulator"
            )
        self._dir, config, log = await asyncio.to_thread(self._prepare_directory)
        log_file = await asyncio.to_thread(log.open, "wb")
        with log_file:  # the child keeps its own descriptor
            self._proc = await asyncio.create_subprocess_exec(
                daemon,
                f"--config-file={config}",
                "--nofork",
                "--nopidfile",
                "--nosyslog",
                "--print-address=1",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                # Its own session so a Ctrl-C meant for us does not kill the bus under our feet;
                # the death signal covers us dying without a chance to stop it.
                start_new_session=True,
                preexec_fn=_death_signal_setter(),
            )
        assert self._proc.stdout is not None
        try:
            async with asyncio.timeout(self._start_timeout):
                line = await self._proc.stdout.readline()
        except TimeoutError:
            raise EmulatorError(
                f"dbus-daemon did not print its address within {self._start_timeout} s; see {log}"
            ) from None
        address = line.decode(errors="replace").strip()
        if not address:
            detail = await asyncio.to_thread(log.read_text, errors="replace")
            raise EmulatorError(f"dbus-daemon exited before it was ready: {detail.strip()}")
        self._address = address
        _LOG.debug("private D-Bus daemon %d listening at %s", self._proc.pid, address)

    async def reload(self, limits: BusLimits) -> None:
        """Give the running daemon new ``limits``, as an administrator raises them on a real bus.

        The configuration file is rewritten and the daemon sent SIGHUP (what ``systemctl reload
        dbus`` asks for by D-Bus, which a bus at its connection limit may refuse us); returns
        once the daemon logged that it read it again. Connections it holds are kept.
        """
        proc, directory = self._proc, self._dir
        if proc is None or directory is None or proc.returncode is not None:
            raise EmulatorError("only a private bus this PrivateBus started can be reloaded")
        log = directory / "dbus-daemon.log"
        before = (await asyncio.to_thread(log.read_text, errors="replace")).count(_RELOADED)
        config = bus_config(directory / "system_bus_socket", limits)
        await asyncio.to_thread((directory / "bus.conf").write_text, config)
        proc.send_signal(signal.SIGHUP)
        try:
            async with asyncio.timeout(self._start_timeout):
                while True:  # the daemon says so only in its log
                    text = await asyncio.to_thread(log.read_text, errors="replace")
                    if text.count(_RELOADED) > before:
                        break
                    await asyncio.sleep(_RELOAD_POLL_S)
        except TimeoutError:
            raise EmulatorError(
                f"dbus-daemon did not reload its configuration within {self._start_timeout} s;"
                f" see {log}"
            ) from None
        self.limits = limits

    def _prepare_directory(self) -> tuple[Path, Path, Path]:
        directory = Path(tempfile.mkdtemp(prefix="gatewayd-bus-"))
        config = directory / "bus.conf"
        config.write_text(bus_config(directory / "system_bus_socket", self.limits))
        return directory, config, directory / "dbus-daemon.log"

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        self._address = None
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    async with asyncio.timeout(_STOP_TIMEOUT_S):
                        await proc.wait()
                except TimeoutError:
                    _LOG.warning("dbus-daemon %d ignored SIGTERM; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            if proc.stdout is not None:
                # Drain to EOF so the pipe transport closes now rather than at GC time.
                await proc.stdout.read()
        directory, self._dir = self._dir, None
        if directory is not None:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    def __repr__(self) -> str:
        return f"PrivateBus(address={self._address!r}, pid={self.pid})"
