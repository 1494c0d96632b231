"""`gatewayd doctor`: can this machine run the gateway? One line per check, with the fix.

Each check is a small pure function from facts to a :class:`Check` (name, status, message,
fix). The facts are gathered by thin I/O functions below them: the system D-Bus and BlueZ
(dbus-fast, as bleak reaches it), the BlueZ tools' ``--version``, the user database,
``dbus-send`` run as the service user, dbus-daemon's configuration (its connection limit per
user against the paired devices), the state directory, the broker (a real aiomqtt connection)
and the model files.

`run_doctor` runs every check for `gatewayd doctor`. `gatewayd run` says the same things:
`diagnose_adapter` explains an adapter that does not answer (instead of bleak's bare errno),
`broker_failure` a failed broker connection (instead of the bare errno), `check_model` on
`registry_facts` a configured model that cannot be used, and `state_dir_checks` runs before the
event log is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import ssl
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError
from pydantic import SecretStr

from gatewayd.config import (
    Config,
    MqttConfig,
    config_warnings,
    load_config,
    resolve_mqtt_password,
)
from gatewayd.errors import ConfigError, StoreError
from gatewayd.store.errors import SQLITE_CORRUPT, SQLITE_NOTADB
from gatewayd.store.lock import lock_holder
from gatewayd.store.open import log_bytes
from gatewayd.store.report import EventLogHealth, EventLogMissingError, EventLogReader

if TYPE_CHECKING:
    from gatewayd.inference.registry import ModelRegistry

__all__ = [
    "BLEAK_MIN_BLUEZ",
    "DEFAULT_TIMEOUT_S",
    "SERVICE_USER",
    "AdapterFacts",
    "BluezVersion",
    "BrokerFacts",
    "BusFacts",
    "BusLimitFacts",
    "Check",
    "ConfigFacts",
    "DirFacts",
    "EventLogFacts",
    "ModelFacts",
    "Status",
    "UserFacts",
    "broker_failure",
    "check_adapter",
    "check_bluez",
    "check_broker",
    "check_bus_connections",
    "check_config",
    "check_dbus_access",
    "check_event_log",
    "check_model",
    "check_service_user",
    "check_slots",
    "check_state_dir",
    "connections_per_user",
    "diagnose_adapter",
    "event_log_facts",
    "exit_code",
    "format_check",
    "parse_dbus_send",
    "parse_version",
    "registry_facts",
    "run_doctor",
    "state_dir_checks",
    "system_bus_address",
    "version_from_modalias",
]

Status = Literal["ok", "warn", "fail", "skip"]

#: The user the packaged unit runs as (systemd/gatewayd.service, User=).
SERVICE_USER: Final = "gatewayd"
#: The group Debian's BlueZ D-Bus policy lets talk to org.bluez (the unit's SupplementaryGroups=).
BLUETOOTH_GROUP: Final = "bluetooth"
#: bleak refuses older BlueZ (bleak/backends/bluezdbus/version.py).
BLEAK_MIN_BLUEZ: Final = (5, 55)
#: Seconds for each D-Bus exchange, tool and broker connection.
DEFAULT_TIMEOUT_S: Final = 5.0
#: Where dbus-fast (so bleak) looks for the system bus when $DBUS_SYSTEM_BUS_ADDRESS is unset.
DEFAULT_SYSTEM_BUS: Final = "unix:path=/var/run/dbus/system_bus_socket"
#: The system bus's configuration as dbus-daemon reads it, and its built-in
#: max_connections_per_user (bus/config-parser.c; system.conf leaves it commented out).
DBUS_SYSTEM_CONF: Final = Path("/usr/share/dbus-1/system.conf")
DBUS_CONNECTIONS_PER_USER: Final = 256
_PER_USER_LIMIT: Final = "max_connections_per_user"
#: Below this much free space the event log cannot go on (fail); MiB.
MIN_FREE_MIB: Final = 64
#: Where the packaged unit's MQTT password credential lives (LoadCredential=; docs/install.md).
CREDSTORE_PASSWORD: Final = Path("/etc/credstore/gatewayd.mqtt-password")

_BLUEZ: Final = "org.bluez"
_ADAPTER_IFACE: Final = "org.bluez.Adapter1"
_ACCESS_DENIED: Final = "org.freedesktop.DBus.Error.AccessDenied"
_SERVICE_UNKNOWN: Final = "org.freedesktop.DBus.Error.ServiceUnknown"
_VERSION_RE: Final = re.compile(r"(\d+)\.(\d+)")
_MODALIAS_RE: Final = re.compile(r"^usb:v1D6Bp0246d([0-9A-Fa-f]{4})$")
_BLUETOOTHD_PATHS: Final = (
    "/usr/libexec/bluetooth/bluetoothd",
    "/usr/lib/bluetooth/bluetoothd",
    "/usr/sbin/bluetoothd",
)
_EXAMPLE_CONFIG: Final = (
    "/usr/share/doc/gatewayd/gatewayd.example.toml (config/gatewayd.example.toml in a checkout)"
)


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result: ``fix`` says what to do when it is not ok."""

    name: str
    status: Status
    message: str
    fix: str = ""


def format_check(check: Check) -> str:
    """The one line `gatewayd doctor` prints for a check (with the fix, unless it is ok)."""
    line = f"{check.status.upper() if check.status == 'fail' else check.status:<5} "
    line += f"{check.name:<14} {check.message}"
    if check.fix and check.status in ("warn", "fail"):
        line += f" — fix: {check.fix}"
    return line


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed (warnings and skips included), 1 when a check failed."""
    return 1 if any(c.status == "fail" for c in checks) else 0


# --- facts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    """One org.bluez.Adapter1 object."""

    name: str
    address: str
    powered: bool
    modalias: str = ""


@dataclass(frozen=True, slots=True)
class BusFacts:
    """What the system D-Bus says about BlueZ, as ``user`` sees it."""

    address: str
    user: str
    #: Why the bus could not be reached; None once connected.
    bus_error: str | None = None
    #: Whether something owns org.bluez: bluetoothd runs.
    bluez_running: bool = False
    #: The D-Bus error name of GetManagedObjects when it failed (AccessDenied: permissions).
    objects_error: str | None = None
    objects_error_text: str = ""
    adapters: tuple[AdapterFacts, ...] = ()

    @property
    def usable(self) -> bool:
        """BlueZ answered: its adapters are known."""
        return self.bus_error is None and self.bluez_running and self.objects_error is None


@dataclass(frozen=True, slots=True)
class BluezVersion:
    """The BlueZ version, and what told it."""

    version: tuple[int, int]
    source: str

    @property
    def text(self) -> str:
        """``5.66``."""
        return f"{self.version[0]}.{self.version[1]}"


@dataclass(frozen=True, slots=True)
class UserFacts:
    """Who runs this check, and the service user from the user database."""

    current: str
    is_root: bool
    service_user: str
    service_exists: bool
    service_groups: tuple[str, ...] = ()
    bluetooth_group: bool = False


@dataclass(frozen=True, slots=True)
class ConfigFacts:
    """The config file: loaded (with its warnings) or the error."""

    path: Path
    config: Config | None
    error: str | None = None
    missing: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DirFacts:
    """A directory gatewayd writes to, as ``user`` sees it."""

    name: str
    path: Path
    user: str
    exists: bool
    #: Why a file could not be created there (or, while it does not exist, in its nearest
    #: existing parent, where gatewayd would create it); None: it could.
    write_error: str | None
    free_bytes: int | None
    #: What the event log takes already (the database and its -wal), bytes.
    store_bytes: int = 0


@dataclass(frozen=True, slots=True)
class EventLogFacts:
    """The event log file as a reader finds it."""

    path: Path
    exists: bool
    size_bytes: int = 0
    health: EventLogHealth | None = None
    #: Why it could not be read (corrupt, not a gatewayd log, no permission); None: it could.
    error: str | None = None
    #: The SQLite error code behind ``error`` (primary code), when there was one.
    code: int | None = None
    #: The process holding the log's lock (`gatewayd.store.lock.lock_holder`): a running gatewayd.
    writer_pid: int | None = None


@dataclass(frozen=True, slots=True)
class BrokerFacts:
    """One connection attempt to the broker with the configured TLS and credentials."""

    target: str
    username: str | None
    tls: bool
    timeout_s: float
    error: str | None = None
    #: "config", "refused", "unreachable", "timeout", "tls" or "other" when it failed.
    kind: str | None = None
    #: Where the password came from, when it is not the config's own source.
    password_note: str = ""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """The configured model in the models folder."""

    model_id: str
    directory: Path
    file: Path | None = None
    sha256: str | None = None
    #: Why the configured model cannot be used (missing, sha256 mismatch, does not load).
    problem: str | None = None
    #: Problems with the other files of the folder.
    others: tuple[str, ...] = ()


# --- pure checks -------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int] | None:
    """``(5, 66)`` from ``bluetoothctl: 5.66`` or ``5.66``; None without a version."""
    match = _VERSION_RE.search(text)
    return (int(match[1]), int(match[2])) if match else None


def version_from_modalias(modalias: str) -> tuple[int, int] | None:
    """The running bluetoothd's version from an adapter's Modalias (its default DeviceID).

    bluetoothd's main.conf default DeviceID is ``bluetooth:1d6b:0246:<version>``, shown as
    ``usb:v1D6Bp0246dMMmm`` (major, minor in hex); a configured DeviceID gives None.
    """
    match = _MODALIAS_RE.match(modalias)
    if match is None:
        return None
    value = int(match[1], 16)
    return value >> 8, value & 0xFF


def check_bluez(bus: BusFacts, version: BluezVersion | None) -> Check:
    """bluetoothd runs (owns org.bluez on the system bus) and is recent enough for bleak."""
    name = "bluez"
    if bus.bus_error is not None:
        return Check(
            name,
            "fail",
            f"cannot reach the system D-Bus at {bus.address}: {bus.bus_error}",
            "start it (sudo systemctl start dbus); in a container, mount the host's bus"
            " (-v /run/dbus:/run/dbus:ro)",
        )
    if not bus.bluez_running:
        return Check(
            name,
            "fail",
            f"bluetoothd is not running: nothing owns {_BLUEZ} on the system D-Bus ({bus.address})",
            "sudo apt install bluez && sudo systemctl enable --now bluetooth",
        )
    if version is None:
        modalias = next((v for a in bus.adapters if (v := version_from_modalias(a.modalias))), None)
        if modalias is not None:
            version = BluezVersion(modalias, "its adapters' Modalias")
    if version is None:
        return Check(
            name,
            "warn",
            "bluetoothd is running; its version is unknown (no bluetoothd or bluetoothctl to"
            " ask, and bleak assumes 5.55 or newer)",
            "sudo apt install bluez (bleak asks `bluetoothctl --version`)",
        )
    minimum = f"{BLEAK_MIN_BLUEZ[0]}.{BLEAK_MIN_BLUEZ[1]}"
    if version.version < BLEAK_MIN_BLUEZ:
        return Check(
            name,
            "fail",
            f"BlueZ {version.text} ({version.source}) is older than {minimum}, which bleak needs",
            "upgrade bluez (Debian 12 and Raspberry Pi OS bookworm have 5.66)",
        )
    return Check(name, "ok", f"BlueZ {version.text} ({version.source}), bluetoothd running")


def check_adapter(bus: BusFacts, adapter: str) -> Check:
    """The configured adapter exists and is powered."""
    name = f"adapter {adapter}"
    if not bus.usable:
        return Check(name, "skip", "not checked: BlueZ did not answer")
    found = {a.name: a for a in bus.adapters}
    if adapter not in found:
        others = sorted(found)
        if others:
            return Check(
                name,
                "fail",
                f"no adapter {adapter}; BlueZ has {', '.join(others)}",
                f'use it: [ble] adapters = ["{others[0]}"] in the config file',
            )
        return Check(
            name,
            "fail",
            f"no adapter {adapter}: BlueZ has no Bluetooth adapter at all",
            "plug one in; check `rfkill list` and `dmesg | grep -i bluetooth` (Raspberry Pi:"
            " sudo systemctl restart hciuart)",
        )
    facts = found[adapter]
    if not facts.powered:
        return Check(
            name,
            "fail",
            f"adapter {adapter} ({facts.address}) is powered off",
            f"sudo busctl set-property {_BLUEZ} /org/bluez/{adapter} {_ADAPTER_IFACE} Powered b"
            " true (or `bluetoothctl power on`); if rfkill blocks it: sudo rfkill unblock"
            " bluetooth",
        )
    return Check(name, "ok", f"{adapter} ({facts.address}) is powered")


def check_dbus_access(access: BusFacts, bluez: BusFacts, note: str = "") -> Check:
    """``access.user`` may talk to org.bluez (bleak needs GetManagedObjects and more)."""
    name = "dbus access"
    user = access.user
    if bluez.bus_error is not None or not bluez.bluez_running:
        return Check(name, "skip", "not checked: BlueZ is not on the bus")
    suffix = f" ({note})" if note else ""
    if access.bus_error is not None:
        return Check(
            name,
            "fail",
            f"user {user} cannot connect to the system D-Bus: {access.bus_error}{suffix}",
            f"check the mode of the bus socket ({access.address}); it must be open to {user}",
        )
    if access.objects_error == _ACCESS_DENIED:
        return Check(
            name,
            "fail",
            f"user {user} may not talk to {_BLUEZ} (AccessDenied){suffix}",
            f"sudo usermod -aG {BLUETOOTH_GROUP} {user}, then restart gatewayd (the packaged unit"
            f" adds the group itself); /usr/share/dbus-1/system.d/bluetooth.conf must allow it",
        )
    if access.objects_error is not None:
        return Check(
            name,
            "fail",
            f"{_BLUEZ} did not answer user {user}: {access.objects_error}"
            f" {access.objects_error_text}".rstrip()
            + suffix,
            "sudo systemctl restart bluetooth; journalctl -u bluetooth says more",
        )
    return Check(name, "ok", f"user {user} may talk to {_BLUEZ}{suffix}")


def check_service_user(users: UserFacts) -> Check:
    """The service user exists and is in group bluetooth."""
    name = "service user"
    user = users.service_user
    if not users.bluetooth_group:
        return Check(
            name,
            "warn",
            f"no group {BLUETOOTH_GROUP} (BlueZ's D-Bus policy lets it talk to {_BLUEZ})",
            "sudo apt install bluez, or install the .deb (both create the group)",
        )
    if not users.service_exists:
        return Check(
            name,
            "warn",
            f"no user {user}: the .deb creates it; without it gatewayd runs as whoever starts it"
            f" (now {users.current})",
            "install the .deb, or sudo systemd-sysusers systemd/gatewayd.sysusers.conf",
        )
    if BLUETOOTH_GROUP not in users.service_groups:
        return Check(
            name,
            "warn",
            f"user {user} is not in group {BLUETOOTH_GROUP}: the unit adds it"
            f" (SupplementaryGroups=), but `sudo -u {user} gatewayd pair` has no access",
            f"sudo usermod -aG {BLUETOOTH_GROUP} {user}",
        )
    return Check(name, "ok", f"user {user} is in group {BLUETOOTH_GROUP}")


def check_config(facts: ConfigFacts) -> Check:
    """The config file loads and validates (and its password file can be read)."""
    name = "config"
    if facts.config is None:
        fix = (
            f"create it from {_EXAMPLE_CONFIG}, or pass --config PATH"
            if facts.missing
            else f"edit {facts.path} (every key, with its default: {_EXAMPLE_CONFIG})"
        )
        return Check(name, "fail", facts.error or f"{facts.path}: not loaded", fix)
    config = facts.config
    adapters = ", ".join(config.ble.adapters)
    summary = (
        f"{facts.path}: gateway {config.gateway.id}, broker {config.mqtt.host}:{config.mqtt.port},"
        f" adapters {adapters}"
    )
    if facts.warnings:
        return Check(name, "warn", f"{summary}; {'; '.join(facts.warnings)}", f"edit {facts.path}")
    return Check(name, "ok", summary)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def check_state_dir(facts: DirFacts, max_size_mb: int, service_user: str = SERVICE_USER) -> Check:
    """gatewayd can write there, and the event log has room to grow."""
    name = facts.name
    if facts.write_error is not None:
        return Check(
            name,
            "fail",
            f"{facts.path} is not writable by {facts.user}: {facts.write_error}",
            f"sudo install -d -o {service_user} {facts.path} (the packaged unit's"
            " StateDirectory= does it for /var/lib/gatewayd), or set [gateway] state_dir",
        )
    free = facts.free_bytes
    if free is not None and free < MIN_FREE_MIB * 2**20:
        return Check(
            name,
            "fail",
            f"only {_size(free)} free on the file system of {facts.path}",
            "free some space, or lower [store] max_size_mb and retention_days",
        )
    room = max_size_mb * 10**6 - facts.store_bytes
    if free is not None and free < room:
        return Check(
            name,
            "warn",
            f"{facts.path}: {_size(free)} free, less than the event log may still take"
            f" ({_size(room)} to [store] max_size_mb = {max_size_mb})",
            "free some space, or lower [store] max_size_mb",
        )
    space = f", {_size(free)} free" if free is not None else ""
    if not facts.exists:
        return Check(name, "ok", f"{facts.path} does not exist yet; gatewayd creates it{space}")
    return Check(name, "ok", f"{facts.path} is writable by {facts.user}{space}")


def check_event_log(facts: EventLogFacts) -> Check:
    """The event log reads, SQLite finds it intact, and it is not degraded."""
    name, path = "event log", facts.path
    salvage = (
        f"gatewayd moves it aside and starts a fresh one at its next start or write; its"
        f" undelivered events are then not delivered. To look into it: sqlite3 {path} .recover"
    )
    if not facts.exists:
        return Check(name, "ok", f"none at {path} yet; gatewayd creates it at its first start")
    health = facts.health
    if health is None:
        if facts.code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return Check(name, "fail", f"{path}: {facts.error}", salvage)
        return Check(
            name,
            "warn",
            f"{path} could not be checked: {facts.error}",
            "run as root, or as the user gatewayd runs as (sudo -u gatewayd gatewayd doctor)",
        )
    if health.problem is not None:
        return Check(name, "fail", f"{path} is corrupt: quick_check says {health.problem}", salvage)
    waiting = f"{health.pending} event{'s' if health.pending != 1 else ''} not yet delivered"
    if health.degraded is not None:
        return Check(
            name,
            "warn",
            f"{path} says its writes were held in memory when last heard of: {health.degraded}",
            "see the fix in that message; gatewayd clears it once writes work",
        )
    writer = (
        "no running gatewayd holds it"
        if facts.writer_pid is None
        else f"held by a running gatewayd (pid {facts.writer_pid})"
    )
    return Check(
        name,
        "ok",
        f"{path}: {_size(facts.size_bytes)}, schema {health.schema_version}, intact"
        f" (quick_check), {waiting}; {writer}",
    )


def check_broker(facts: BrokerFacts) -> Check:
    """A real connection with the configured TLS and credentials."""
    name = "broker"
    who = f" as {facts.username}" if facts.username else ""
    how = f"{facts.target}{who}{' (TLS)' if facts.tls else ''}"
    note = f"; {facts.password_note}" if facts.password_note else ""
    if facts.error is None:
        return Check(name, "ok", f"connected to {how}{note}")
    fixes = {
        "config": "fix the file it names ([mqtt] password_file, [mqtt.tls] files)",
        "refused": "check [mqtt] username, the password (password_file, or"
        f" {CREDSTORE_PASSWORD} for the packaged unit) and the broker's ACL",
        "unreachable": "start the broker, or set [mqtt] host and port to where it listens",
        "timeout": "check [mqtt] host and port and any firewall between; TLS is usually port 8883",
        "tls": "check [mqtt.tls] ca_file (the CA that signed the broker's certificate) and that"
        " [mqtt] host is a name in that certificate",
    }
    fix = fixes.get(facts.kind or "", "check [mqtt] in the config file and the broker's log")
    return Check(name, "fail", f"cannot connect to {how}: {facts.error}{note}", fix)


def check_model(facts: ModelFacts) -> Check:
    """The configured model's file matches its card's sha256 and loads in ONNX Runtime."""
    name = "model"
    if facts.problem is not None:
        return Check(
            name,
            "fail",
            f"{facts.model_id}: {facts.problem}; gatewayd runs degraded (no gateway model)",
            "reinstall gatewayd (sudo apt install --reinstall gatewayd; in a checkout `git"
            " checkout gatewayd/models`), or set [inference] model to an installed one",
        )
    digest = f"sha256 {facts.sha256[:12]}…" if facts.sha256 else "sha256"
    where = facts.file.name if facts.file is not None else str(facts.directory)
    message = f"{facts.model_id}: {where} {digest} matches its card and loads in ONNX Runtime"
    if facts.others:
        return Check(
            name,
            "warn",
            f"{message}; {len(facts.others)} other file(s) refused: {facts.others[0]}",
            "reinstall gatewayd, or remove the stray files from the models folder",
        )
    return Check(name, "ok", message)


@dataclass(frozen=True, slots=True)
class BusLimitFacts:
    """dbus-daemon's connection limit per user on the system bus, and the devices paired."""

    #: max_connections_per_user, or None when the configuration was not found or not read.
    limit: int | None
    #: The file that set it, or dbus-daemon's default; or why it is unknown.
    source: str
    #: Paired devices, or None when the device list could not be read (``paired_error``).
    paired: int | None
    paired_error: str = ""


def check_bus_connections(facts: BusLimitFacts) -> Check:
    """Every paired device can be connected at once: bleak holds one system-bus connection per
    connected device (and one more), and dbus-daemon limits a user's (docs/running.md)."""
    from gatewayd.link.buslimit import RAISE_LIMIT_FIX  # noqa: PLC0415 - pulls in the link

    name = "dbus limit"
    if facts.paired is None:
        return Check(name, "skip", f"not checked: {facts.paired_error}")
    if facts.limit is None:
        return Check(name, "skip", f"not checked: {facts.source}")
    need = facts.paired + 1
    if need <= facts.limit:
        return Check(
            name,
            "ok",
            f"{facts.paired} paired devices need {need} system D-Bus connections of the service"
            f" user; {_PER_USER_LIMIT} is {facts.limit} ({facts.source})",
        )
    return Check(
        name,
        "warn",
        f"{facts.paired} paired devices, but the system D-Bus lets one user hold"
        f" {facts.limit} connections ({_PER_USER_LIMIT}, {facts.source}) and each connected"
        f" device holds one: at most {facts.limit - 1} can be connected at once",
        RAISE_LIMIT_FIX,
    )


def check_slots(facts: BusLimitFacts, adapters: int, slots_per_adapter: int) -> Check:
    """Every paired device can hold a connection slot at once: each adapter holds
    ``[ble] slots_per_adapter`` connections, and devices beyond them wait (docs/running.md)."""
    from gatewayd.link.manager import SLOTS_FIX  # noqa: PLC0415 - pulls in the link

    name = "slots"
    if facts.paired is None:
        return Check(name, "skip", f"not checked: {facts.paired_error}")
    slots = adapters * slots_per_adapter
    held_by = f"{adapters} adapter(s) x slots_per_adapter {slots_per_adapter}"
    if facts.paired <= slots:
        return Check(
            name, "ok", f"{facts.paired} paired devices, {slots} connection slots ({held_by})"
        )
    return Check(
        name,
        "warn",
        f"{facts.paired} paired devices but {slots} connection slots ({held_by}):"
        f" {facts.paired - slots} wait, whichever come last, until a connected one leaves",
        SLOTS_FIX,
    )


def parse_dbus_send(address: str, user: str, returncode: int, stderr: str) -> BusFacts:
    """BusFacts from ``dbus-send ... GetManagedObjects``: what ``user`` may do on the bus."""
    if returncode == 0:
        return BusFacts(address, user, bluez_running=True)
    text = stderr.strip()
    match = re.search(r"Error (org\.[A-Za-z0-9_.]+): ?(.*)", text)
    if match is not None:
        error = match[1]
        if error == _SERVICE_UNKNOWN:
            return BusFacts(address, user, bluez_running=False)
        return BusFacts(
            address, user, bluez_running=True, objects_error=error, objects_error_text=match[2]
        )
    return BusFacts(address, user, bus_error=text.splitlines()[-1] if text else "dbus-send failed")


# --- I/O: gathering the facts ------------------------------------------------------------------


def system_bus_address(env: Mapping[str, str] | None = None) -> str:
    """The system bus bleak uses: $DBUS_SYSTEM_BUS_ADDRESS, else dbus-fast's default."""
    env = os.environ if env is None else env
    return env.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS


def _current_user() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def probe_bus(address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> BusFacts:
    """Ask the system bus whether bluetoothd runs, and BlueZ for its adapters. Never raises."""
    user = await asyncio.to_thread(_current_user)  # a user database lookup may block
    bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
    try:
        async with asyncio.timeout(timeout_s):
            await bus.connect()
    except (OSError, EOFError, TimeoutError, DBusFastError) as exc:
        return BusFacts(address, user, bus_error=_error_text(exc))
    try:
        async with asyncio.timeout(timeout_s):
            owned = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=[_BLUEZ],
                )
            )
            if owned is None or owned.message_type is MessageType.ERROR or not owned.body[0]:
                return BusFacts(address, user)
            reply = await bus.call(
                Message(
                    destination=_BLUEZ,
                    path="/",
                    interface="org.freedesktop.DBus.ObjectManager",
                    member="GetManagedObjects",
                )
            )
    except (OSError, EOFError, TimeoutError, DBusFastError) as exc:
        return BusFacts(address, user, bus_error=_error_text(exc))
    finally:
        bus.disconnect()
    if reply is None or reply.message_type is MessageType.ERROR:
        error = (reply.error_name if reply is not None else None) or "no reply"
        text = str(reply.body[0]) if reply is not None and reply.body else ""
        return BusFacts(
            address, user, bluez_running=True, objects_error=error, objects_error_text=text
        )
    return BusFacts(address, user, bluez_running=True, adapters=_adapters(reply.body[0]))


def _adapters(objects: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> tuple[AdapterFacts, ...]:
    found: list[AdapterFacts] = []
    for path, interfaces in sorted(objects.items()):
        props = interfaces.get(_ADAPTER_IFACE)
        if props is None:
            continue

        def value(key: str, default: Any, props: Mapping[str, Any] = props) -> Any:
            variant = props.get(key)
            return default if variant is None else variant.value

        found.append(
            AdapterFacts(
                name=path.rsplit("/", 1)[-1],
                address=str(value("Address", "")),
                powered=bool(value("Powered", False)),
                modalias=str(value("Modalias", "")),
            )
        )
    return tuple(found)


async def _run_tool(
    argv: Sequence[str], *, timeout_s: float, **options: Any
) -> tuple[int, str, str] | None:
    """(exit code, stdout, stderr) of a short command; None if it cannot run or hangs."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **options,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return None
    returncode = process.returncode if process.returncode is not None else -1
    return returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _find_bluetoothd() -> str | None:
    # Debian keeps it in /usr/libexec/bluetooth, off PATH.
    return shutil.which("bluetoothd") or next(
        (p for p in _BLUETOOTHD_PATHS if os.access(p, os.X_OK)), None
    )


async def bluez_version(*, timeout_s: float = DEFAULT_TIMEOUT_S) -> BluezVersion | None:
    """The installed BlueZ's version: `bluetoothd --version`, else `bluetoothctl --version`."""
    bluetoothd = await asyncio.to_thread(_find_bluetoothd)
    candidates = [[bluetoothd, "--version"]] if bluetoothd else []
    candidates.append(["bluetoothctl", "--version"])
    for argv in candidates:
        result = await _run_tool(argv, timeout_s=timeout_s)
        if result is None or result[0] != 0:
            continue
        version = parse_version(result[1])
        if version is not None:
            return BluezVersion(version, f"{Path(argv[0]).name} --version")
    return None


def user_facts(service_user: str = SERVICE_USER) -> UserFacts:
    """The current user, and the service user and its groups from the user database."""
    try:
        bluetooth: grp.struct_group | None = grp.getgrnam(BLUETOOTH_GROUP)
    except KeyError:
        bluetooth = None
    try:
        entry = pwd.getpwnam(service_user)
    except KeyError:
        return UserFacts(
            _current_user(), os.geteuid() == 0, service_user, False, (), bluetooth is not None
        )
    groups = [g.gr_name for g in grp.getgrall() if service_user in g.gr_mem]
    with contextlib.suppress(KeyError):
        groups.insert(0, grp.getgrgid(entry.pw_gid).gr_name)
    return UserFacts(
        _current_user(),
        os.geteuid() == 0,
        service_user,
        True,
        tuple(dict.fromkeys(groups)),
        bluetooth is not None,
    )


def _as_user(user: str) -> tuple[str | None, pwd.struct_passwd, list[int]]:
    """dbus-send's path, the user's entry, and the groups the unit gives it."""
    entry = pwd.getpwnam(user)
    groups = [entry.pw_gid]
    with contextlib.suppress(KeyError):
        groups.append(grp.getgrnam(BLUETOOTH_GROUP).gr_gid)
    return shutil.which("dbus-send"), entry, groups


async def probe_access(
    users: UserFacts, bus: BusFacts, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[BusFacts, str]:
    """Who may talk to org.bluez: the service user when we can act as it, else ourselves.

    As root, `dbus-send` calls GetManagedObjects as the service user with the groups the unit
    gives it (its own and ``bluetooth``); otherwise this process's own probe stands in, and the
    note says so.
    """
    if not users.service_exists or users.current == users.service_user:
        return bus, ""
    if not users.is_root:
        return bus, f"checked as {users.current}; as root doctor checks user {users.service_user}"
    dbus_send, entry, groups = await asyncio.to_thread(_as_user, users.service_user)
    if dbus_send is None:
        return bus, f"checked as {users.current}: dbus-send (package dbus-bin) is not installed"
    result = await _run_tool(
        [dbus_send, "--system", "--print-reply", f"--dest={_BLUEZ}", "/",
         "org.freedesktop.DBus.ObjectManager.GetManagedObjects"],
        timeout_s=timeout_s,
        env={"PATH": os.defpath, "DBUS_SYSTEM_BUS_ADDRESS": bus.address, "LC_ALL": "C"},
        cwd="/",
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=groups,
    )  # fmt: skip
    if result is None:
        return bus, f"checked as {users.current}: dbus-send did not run as {users.service_user}"
    returncode, _out, err = result
    return parse_dbus_send(bus.address, users.service_user, returncode, err), ""


def _try_write(directory: Path) -> str | None:
    """Create and remove a file in ``directory``; the error, or None."""
    try:
        fd, name = tempfile.mkstemp(prefix=".gatewayd-doctor-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        Path(name).unlink()
    return None


def dir_facts(name: str, path: Path, store_path: Path | None = None) -> DirFacts:
    """Whether ``path`` (or, while it does not exist, its nearest parent) takes a new file."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        error: str | None = f"{existing} is not a directory"
    else:
        error = _try_write(existing)
    free: int | None
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = None
    used = 0 if store_path is None else log_bytes(store_path)
    return DirFacts(name, path, _current_user(), path.is_dir(), error, free, used)


def connections_per_user(conf: Path = DBUS_SYSTEM_CONF) -> tuple[int | None, str]:
    """max_connections_per_user as dbus-daemon reads ``conf``: the last ``<limit>`` in
    document order through its ``<include>`` and ``<includedir>`` (``*.conf``, by name), else
    the built-in default; and where it came from. (None, why) when ``conf`` is missing or
    unreadable. Blocking."""
    if not conf.is_file():
        return None, f"no {conf}: not dbus-daemon's system bus, or not on this machine"
    found: list[tuple[int, Path]] = []
    try:
        _read_limits(conf, found, set())
    except (OSError, ET.ParseError, ValueError) as exc:
        return None, f"cannot read the D-Bus configuration: {exc}"
    if not found:
        return DBUS_CONNECTIONS_PER_USER, "dbus-daemon's default"
    limit, source = found[-1]
    return limit, str(source)


def _read_limits(path: Path, found: list[tuple[int, Path]], seen: set[Path]) -> None:
    if path in seen:  # included twice (or a cycle): read once
        return
    seen.add(path)
    # A root-owned system configuration file, not untrusted input.
    root = ET.parse(path).getroot()  # noqa: S314
    for element in root:
        text = (element.text or "").strip()
        if element.tag == "limit" and element.get("name") == _PER_USER_LIMIT:
            found.append((int(text), path))
        elif element.tag == "include" and element.get("if_selinux_enabled") != "yes":
            target = path.parent / text
            if target.is_file() or element.get("ignore_missing") != "yes":
                _read_limits(target, found, seen)
        elif element.tag == "includedir" and (path.parent / text).is_dir():
            for child in sorted((path.parent / text).glob("*.conf")):
                _read_limits(child, found, seen)


def bus_limit_facts(config: Config, conf: Path = DBUS_SYSTEM_CONF) -> BusLimitFacts:
    """The system bus's connection limit per user and the paired devices' count. Blocking."""
    from gatewayd.link.registry import DeviceRegistry, RegistryError  # noqa: PLC0415

    limit, source = connections_per_user(conf)
    try:
        paired = len(DeviceRegistry.in_state_dir(config.gateway.state_dir).load())
    except RegistryError as exc:
        return BusLimitFacts(limit, source, None, f"the paired devices: {exc}")
    return BusLimitFacts(limit, source, paired)


def state_dir_checks(config: Config, service_user: str = SERVICE_USER) -> list[Check]:
    """The state directory, and the event log's directory when it is elsewhere. Blocking."""
    state_dir = Path(config.gateway.state_dir)
    store = Path(config.store.path)
    max_mb = config.store.max_size_mb
    inside = store.parent == state_dir
    checks = [
        check_state_dir(
            dir_facts("state dir", state_dir, store if inside else None), max_mb, service_user
        )
    ]
    if not inside:
        checks.append(
            check_state_dir(dir_facts("event log dir", store.parent, store), max_mb, service_user)
        )
    return checks


def event_log_facts(path: Path) -> EventLogFacts:
    """Open the event log read-only and check it (reads every page). Blocking."""
    if not path.exists():
        return EventLogFacts(path, exists=False)
    size = log_bytes(path)
    try:
        with EventLogReader.open(path) as reader:
            return EventLogFacts(path, True, size, reader.health(), writer_pid=lock_holder(path))
    except EventLogMissingError:
        return EventLogFacts(path, exists=False)
    except StoreError as exc:
        code = None if exc.code is None else exc.code & 0xFF
        return EventLogFacts(path, True, size, error=exc.message, code=code)


def config_facts(path: Path, env: Mapping[str, str]) -> ConfigFacts:
    """Load and validate the config file, and read its password file. Blocking."""
    try:
        config = load_config(path, env)
        resolve_mqtt_password(config.mqtt, env)
    except ConfigError as exc:
        return ConfigFacts(path, None, str(exc), missing=not path.exists())
    return ConfigFacts(path, config, warnings=config_warnings(config))


def _password(mqtt: MqttConfig, env: Mapping[str, str]) -> tuple[SecretStr | None, str]:
    """The password gatewayd would use, and a note when it came from the credential store.

    Outside the unit there is no $CREDENTIALS_DIRECTORY: the packaged unit's credential file
    (root only) is read instead when the config names a user but no password.
    """
    password = resolve_mqtt_password(mqtt, env)
    if password is not None or mqtt.username is None or not CREDSTORE_PASSWORD.exists():
        return password, ""
    try:
        text = CREDSTORE_PASSWORD.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        return None, f"cannot read {CREDSTORE_PASSWORD} ({exc.strerror}): run doctor as root"
    return SecretStr(text), f"password from {CREDSTORE_PASSWORD}"


def _broker_kind(exc: BaseException) -> str:
    from gatewayd.publish.backoff import MqttFailure, classify  # noqa: PLC0415 - with aiomqtt

    text = str(exc)
    if isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text.lower():
        return "tls"
    kind = classify(exc)
    return {
        MqttFailure.REFUSED: "refused",
        MqttFailure.UNREACHABLE: "unreachable",
        MqttFailure.TIMEOUT: "timeout",
    }.get(kind, "other")


def _broker_facts(mqtt: MqttConfig, timeout_s: float) -> BrokerFacts:
    """What a connection attempt to the configured broker is, before its outcome."""
    scheme = "mqtts" if mqtt.tls.enabled else "mqtt"
    return BrokerFacts(
        f"{scheme}://{mqtt.host}:{mqtt.port}", mqtt.username, mqtt.tls.enabled, timeout_s
    )


def broker_failure(mqtt: MqttConfig, error: BaseException) -> Check:
    """A failed connection attempt of the running gateway, as `gatewayd doctor` says it.

    The broker check's message and fix for ``error`` (what the publisher's attempt raised)
    instead of the bare errno; doctor's own attempt goes through the same `check_broker`.
    """
    text = str(error) or ("no answer in time" if isinstance(error, TimeoutError) else "")
    facts = replace(
        _broker_facts(mqtt, DEFAULT_TIMEOUT_S),
        error=text or type(error).__name__,
        kind=_broker_kind(error),
    )
    return check_broker(facts)


async def probe_broker(
    config: Config, env: Mapping[str, str], *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> BrokerFacts:
    """Connect once with the configured TLS and credentials, then disconnect. Never raises.

    The client id is the gateway's with ``-doctor`` appended: a running gatewayd keeps its
    connection (a broker drops the older of two clients with one id).
    """
    import aiomqtt  # noqa: PLC0415 - only doctor and the publisher need it

    from gatewayd.publish.client import tls_context  # noqa: PLC0415

    mqtt = config.mqtt
    facts = _broker_facts(mqtt, timeout_s)
    try:
        password, note = await asyncio.to_thread(_password, mqtt, env)
        context = await asyncio.to_thread(tls_context, mqtt.tls) if mqtt.tls.enabled else None
    except ConfigError as exc:
        return replace(facts, error=str(exc), kind="config")
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=f"{mqtt.effective_client_id(config.gateway.id)}-doctor",
        username=mqtt.username,
        password=password.get_secret_value() if password is not None else None,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        timeout=timeout_s,
        tls_context=context,
        tls_insecure=True if context is not None and mqtt.tls.insecure else None,
    )
    try:
        async with asyncio.timeout(timeout_s + 1), client:
            pass
    except TimeoutError:
        return replace(facts, error=f"no answer within {timeout_s:g} s", kind="timeout",
                        password_note=note)  # fmt: skip
    except (aiomqtt.MqttError, OSError) as exc:
        return replace(facts, error=_error_text(exc), kind=_broker_kind(exc),
                        password_note=note)  # fmt: skip
    return replace(facts, password_note=note)


def registry_facts(registry: ModelRegistry, model_id: str) -> ModelFacts:
    """The configured model among a folder's verified models, before it is loaded. Blocking.

    Its file and sha256 when its card verified; else the problem, and when a card for it exists
    but its file does not match (sha256, missing file), that mismatch rather than "no model".
    """
    from gatewayd.inference.cards import ModelCardError, read_card, verify  # noqa: PLC0415

    directory = registry.directory
    try:
        installed = registry.get(model_id)
    except ModelCardError as exc:
        problem = str(exc)
        for card_file in sorted(directory.glob("*.onnx.json")):
            try:
                card = read_card(card_file)
            except ModelCardError:
                continue
            if card.model_id == model_id:
                try:
                    verify(card, card_file.parent / card.file)
                except ModelCardError as mismatch:
                    problem = str(mismatch)
                break
        others = tuple(str(e) for e in registry.errors if str(e) != problem)
        return ModelFacts(model_id, directory, problem=problem, others=others)
    others = tuple(str(e) for e in registry.errors)
    return ModelFacts(model_id, directory, installed.path, installed.card.sha256, None, others)


def model_facts(model_id: str, models_dir: Path | None) -> ModelFacts:
    """Verify the configured model against its card and load it in ONNX Runtime. Blocking."""
    # Imported here: onnxruntime is heavy and only this check needs it.
    from gatewayd.inference.registry import ModelRegistry  # noqa: PLC0415
    from gatewayd.inference.session import InferenceError, ModelSession  # noqa: PLC0415

    registry = ModelRegistry.discover(models_dir)
    facts = registry_facts(registry, model_id)
    if facts.problem is not None:
        return facts
    installed = registry.get(model_id)
    try:
        ModelSession(installed.card, installed.path)
    except InferenceError as exc:
        return replace(facts, problem=str(exc))
    return facts


# --- the whole doctor, and what `gatewayd run` asks ---------------------------------------------


async def run_doctor(
    config_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    models_dir: Path | None = None,
    service_user: str = SERVICE_USER,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Check]:
    """Every check, in a fixed order: config, BlueZ, adapters, D-Bus access, user, D-Bus
    connection limit, slots, state, event log, broker, model. Checks that need a valid config are
    skipped without one."""
    env = os.environ if env is None else env
    config_result = await asyncio.to_thread(config_facts, config_path, env)
    config = config_result.config
    bus, version, users = await asyncio.gather(
        probe_bus(system_bus_address(env), timeout_s=timeout_s),
        bluez_version(timeout_s=timeout_s),
        asyncio.to_thread(user_facts, service_user),
    )
    access, note = await probe_access(users, bus, timeout_s=timeout_s)
    checks = [check_config(config_result), check_bluez(bus, version)]
    if config is not None:
        checks += [check_adapter(bus, adapter) for adapter in config.ble.adapters]
    else:
        checks.append(Check("adapters", "skip", "not checked: no valid config file"))
    checks += [check_dbus_access(access, bus, note), check_service_user(users)]
    if config is None:
        checks += [
            Check(name, "skip", "not checked: no valid config file")
            for name in ("dbus limit", "slots", "state dir", "event log", "broker", "model")
        ]
        return checks
    limits, state, event_log, broker, model = await asyncio.gather(
        asyncio.to_thread(bus_limit_facts, config),
        asyncio.to_thread(state_dir_checks, config, service_user),
        asyncio.to_thread(event_log_facts, Path(config.store.path)),
        probe_broker(config, env, timeout_s=timeout_s),
        asyncio.to_thread(model_facts, config.inference.model, models_dir),
    )
    checks.append(check_bus_connections(limits))
    checks.append(check_slots(limits, len(config.ble.adapters), config.ble.slots_per_adapter))
    return [
        *checks,
        *state,
        check_event_log(event_log),
        check_broker(broker),
        check_model(model),
    ]


async def diagnose_adapter(
    adapter: str,
    error: BaseException,
    env: Mapping[str, str] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Check:
    """Why ``adapter``'s scanner failed, as `gatewayd doctor` would say it (a failed check).

    BlueZ on the bus, permission to talk to it, the adapter there and powered: the first of
    these that fails; when they all pass, the scanner's own error.
    """
    bus = await probe_bus(system_bus_address(env), timeout_s=timeout_s)
    for check in (check_bluez(bus, None), check_dbus_access(bus, bus), check_adapter(bus, adapter)):
        if check.status == "fail":
            return check
    return Check(
        f"adapter {adapter}",
        "fail",
        f"the scanner on {adapter} failed: {_error_text(error)}",
        "journalctl -u bluetooth says more; sudo systemctl restart bluetooth",
    )
