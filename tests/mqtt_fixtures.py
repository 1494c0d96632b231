"""A private mosquitto per test, on an ephemeral 127.0.0.1 port (never 1883).

Use from a test module with ``pytest_plugins = ["tests.mqtt_fixtures"]`` (PYTEST_DONT_REWRITE:
no asserts here). ``mosquitto_broker`` is a stopped-then-started :class:`Broker` with a config
generated in tmp_path; ``await broker.stop()`` / ``await broker.start()`` restart it on the SAME
port within a test, and the fixture kills it at teardown, so no process outlives the test.
Builders: ``Broker(tmp_path, password_file=..., tls=...)`` for auth and TLS variants.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from gatewayd.bench.soak_procs import stop_process
from gatewayd.demo.broker import free_port, wait_until_listening

__all__ = [
    "MOSQUITTO",
    "Broker",
    "BrokerTls",
    "free_port",
    "make_password_file",
    "make_tls_files",
    "mosquitto_broker",
    "needs_mosquitto",
]

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)"
)
#: Generous: a loaded 2-core machine may take a while to start a process.
START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class BrokerTls:
    """Files for a TLS listener and for a client that trusts it."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class Broker:
    """One mosquitto process with a generated config; restartable on the same port."""

    def __init__(
        self,
        directory: Path,
        *,
        password_file: Path | None = None,
        tls: BrokerTls | None = None,
        persistence: bool = False,
    ) -> None:
        assert MOSQUITTO is not None
        self.directory = directory
        self.port = free_port()
        self.host = "127.0.0.1"
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        lines = [
            "per_listener_settings false",
            # Running as root in CI: stay root, or mosquitto cannot read files in tmp_path.
            "user root",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if password_file else 'true'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {directory}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
        ]
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if tls is not None:
            lines += [
                f"cafile {tls.ca_file}",
                f"certfile {tls.cert_file}",
                f"keyfile {tls.key_file}",
            ]
        self.config_file.write_text("\n".join(lines) + "\n")
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        """Whether the process is up."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start mosquitto and wait until its port accepts connections."""
        assert MOSQUITTO is not None
        assert not self.running, "broker already running"
        log = self.log_file.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                MOSQUITTO, "-c", str(self.config_file), stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        try:
            await wait_until_listening(self.host, self.port, self._process, START_TIMEOUT_S)
        except ChildProcessError:
            raise RuntimeError(f"mosquitto exited: {self.log_text()}") from None

    async def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL) and wait for it to exit."""
        process, self._process = self._process, None
        if process is not None:
            await stop_process(process, signal.SIGTERM, START_TIMEOUT_S)

    def log_text(self) -> str:
        """What mosquitto logged so far (for failure messages)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def make_password_file(directory: Path, users: dict[str, str]) -> Path | None:
    """A mosquitto password file via mosquitto_passwd, or None if the tool is missing."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        return None
    path = directory / "passwd"
    path.touch()
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, timeout=30)
    return path


def make_tls_files(directory: Path) -> BrokerTls | None:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost (openssl CLI).

    Returns None when openssl is not installed.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run = [
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", ca_key, "-out", ca_cert, "-days", "2", "-subj", "/CN=test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
         "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for argv in run:
        subprocess.run([str(a) for a in argv], check=True, capture_output=True, timeout=60)
    return BrokerTls(ca_file=ca_cert, cert_file=cert, key_file=key)


@pytest_asyncio.fixture
async def mosquitto_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A running anonymous mosquitto on an ephemeral port; stopped at teardown."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    broker = Broker(tmp_path)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest_asyncio.fixture
async def durable_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A mosquitto that keeps its sessions and queued messages across `Broker.restart`/stop-start.

    A test's subscriber with a persistent session then loses nothing published between the
    broker's restart and its reconnect (a fresh broker would drop it, and the test would blame
    the gateway).
    """
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    directory = tmp_path / "broker"
    await asyncio.to_thread(directory.mkdir)
    broker = await asyncio.to_thread(Broker, directory, persistence=True)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
