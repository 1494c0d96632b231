"""Paired devices: the allowlist the link connects to, kept as a small JSON file in the state dir.

Only devices in this list are ever connected. Device ids are stable aliases chosen at pairing
(never MAC addresses), so MQTT topics and the event log survive a wearable being replaced.
The file is rewritten atomically (temporary file, fsync, rename), so a crash leaves either the
old list or the new one. Fields added later have defaults, so older files still load.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from gatewayd.errors import GatewayError

from .events import ResumePoint

REGISTRY_FILE: Final = "devices.json"
#: Former ids kept per device (`PairedDevice.renamed_from`).
RENAMES_KEPT: Final = 8
_FORMAT_VERSION: Final = 1
_ALIAS_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ADDRESS_RE: Final = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")

DeviceKind = Literal["wearable", "heart_rate"]


class RegistryError(GatewayError):
    """The paired-device list is unreadable, or a change to it is not allowed."""


@dataclass(frozen=True, slots=True)
class PairedDevice:
    """One device the gateway may connect to."""

    device_id: str
    address: str
    kind: DeviceKind
    name: str = ""
    paired_at: str = ""
    #: Accept it without a BlueZ bond (a heart-rate strap that cannot bond): the user opted in.
    allow_unbonded: bool = False
    #: The wearable's hardware profile when it was paired (gatewayd.link.stream.hardware_profile).
    profile: str = ""
    #: Why the gateway stopped trusting it (empty: trusted); pairing it again clears this.
    untrusted: str = ""
    #: A wearable's numbering when it was paired (its info's boot id and next seq): every
    #: message from there on is owed to the gateway, delivered or recorded as lost.
    paired_boot_id: int | None = None
    paired_next_seq: int | None = None
    #: The ids it had before (`DeviceRegistry.rename`), oldest first: the event log keeps where
    #: its stream stopped by id, so a gateway started after a rename resumes from the latest of
    #: those points (`LinkManager`) rather than leave unasked what it made meanwhile.
    renamed_from: tuple[str, ...] = ()

    def paired_point(self) -> ResumePoint | None:
        """Where the wearable's numbering stood at pairing, heard at ``paired_at``; None when
        not recorded (a strap, a list written by hand or by an older version)."""
        if self.paired_boot_id is None or self.paired_next_seq is None:
            return None
        try:
            at = datetime.fromisoformat(self.paired_at).timestamp()
        except ValueError:
            return None
        return ResumePoint(self.paired_boot_id, self.paired_next_seq, at)


def resume_point(device: PairedDevice, logged: ResumePoint | None) -> ResumePoint | None:
    """Where the link starts with ``device``: where the event log says its stream stopped, or
    where its numbering stood when it was paired, whichever was heard last (a device paired
    again owes nothing from before the new pairing); None: from what it sends next.
    """
    paired = device.paired_point()
    if paired is None or logged is None:
        return logged or paired
    assert paired.heard_at is not None
    return paired if logged.heard_at is None or paired.heard_at > logged.heard_at else logged


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid device id, else raise RegistryError saying why."""
    if not _ALIAS_RE.fullmatch(alias):
        raise RegistryError(
            f"device id {alias!r} must be 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit (it becomes part of MQTT topics)"
        )
    return alias


def normalise_address(address: str) -> str:
    """Upper-case colon-separated MAC, as BlueZ writes it; RegistryError if malformed."""
    addr = address.strip().upper().replace("-", ":")
    if not _ADDRESS_RE.fullmatch(addr):
        raise RegistryError(f"{address!r} is not a Bluetooth address like AA:BB:CC:DD:EE:FF")
    return addr


def default_alias(name: str, address: str) -> str:
    """A readable default id: the advertised name slugged, plus the address's last two bytes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "device"
    return f"{slug}-{address.replace(':', '')[-4:].lower()}"


def _entry(entry: dict[str, object]) -> PairedDevice:
    """One entry of the file (TypeError for a field of the wrong shape)."""
    device = PairedDevice(**entry)  # type: ignore[arg-type]
    former = device.renamed_from
    if not isinstance(former, list | tuple) or not all(isinstance(i, str) for i in former):
        raise TypeError(f"renamed_from must be a list of device ids, got {former!r}")
    return replace(device, renamed_from=tuple(former))


class DeviceRegistry:
    """The paired-device list in ``<state_dir>/devices.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> DeviceRegistry:
        """The registry file of a state directory."""
        return cls(state_dir / REGISTRY_FILE)

    def load(self) -> list[PairedDevice]:
        """Every paired device; an absent file is an empty list."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RegistryError(f"{self.path}: cannot read the paired devices: {exc}") from exc
        try:
            doc = json.loads(text)
            if doc.get("version") != _FORMAT_VERSION:
                raise RegistryError(f"{self.path}: unknown format version {doc.get('version')!r}")
            devices = [_entry(entry) for entry in doc["devices"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RegistryError(
                f"{self.path}: not a paired-device list ({exc}); fix or remove it and pair again"
            ) from exc
        try:
            for d in devices:
                check_alias(d.device_id)
                normalise_address(d.address)
                for former in d.renamed_from:
                    check_alias(former)
        except RegistryError as exc:
            raise RegistryError(f"{self.path}: {exc}") from exc
        return devices

    def get(self, device_id: str) -> PairedDevice:
        """The device with this id; RegistryError if there is none."""
        for d in self.load():
            if d.device_id == device_id:
                return d
        raise RegistryError(f"no paired device {device_id!r} (see `gatewayd devices list`)")

    def add(
        self,
        address: str,
        kind: DeviceKind,
        name: str = "",
        alias: str | None = None,
        *,
        allow_unbonded: bool = False,
        profile: str = "",
        numbering: tuple[int, int] | None = None,
    ) -> PairedDevice:
        """Pair a device; pairing a known address again keeps its id unless an alias is given.

        Pairing again also trusts it again (clears ``untrusted``) and records ``profile`` and
        ``numbering`` (a wearable's boot id and next seq, read at pairing).
        """
        addr = normalise_address(address)
        devices = self.load()
        existing = next((d for d in devices if d.address == addr), None)
        device_id = check_alias(
            alias or (existing.device_id if existing else default_alias(name, addr))
        )
        clash = next((d for d in devices if d.device_id == device_id and d.address != addr), None)
        if clash is not None:
            raise RegistryError(f"device id {device_id!r} is already used by {clash.address}")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        boot_id, next_seq = numbering if numbering is not None else (None, None)
        device = PairedDevice(
            device_id, addr, kind, name, now, allow_unbonded=allow_unbonded, profile=profile,
            paired_boot_id=boot_id, paired_next_seq=next_seq,
        )  # fmt: skip
        self._save([d for d in devices if d.address != addr] + [device])
        return device

    def rename(self, device_id: str, new_id: str) -> PairedDevice:
        """Give a device a new id."""
        check_alias(new_id)
        devices = self.load()
        if any(d.device_id == new_id for d in devices):
            raise RegistryError(f"device id {new_id!r} is already used")
        old = self.get(device_id)
        # The same pairing: what it owes from there on stays owed. The event log's point
        # (where its stream stopped) is under the old id, which it keeps (`renamed_from`).
        former = (*(i for i in old.renamed_from if i != new_id), device_id)[-RENAMES_KEPT:]
        new = replace(old, device_id=new_id, renamed_from=former)
        self._save([new if d.device_id == device_id else d for d in devices])
        return new

    def mark_untrusted(self, device_id: str, why: str) -> PairedDevice:
        """Record that the gateway no longer trusts the device (until it is paired again)."""
        devices = self.load()
        old = self.get(device_id)
        new = replace(old, untrusted=why or "untrusted")
        self._save([new if d.device_id == device_id else d for d in devices])
        return new

    def remove(self, device_id: str) -> PairedDevice:
        """Forget a device: the gateway will not connect to it again."""
        old = self.get(device_id)
        self._save([d for d in self.load() if d.device_id != device_id])
        return old

    def _save(self, devices: list[PairedDevice]) -> None:
        doc = {"version": _FORMAT_VERSION, "devices": [asdict(d) for d in devices]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".devices.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(doc, f, indent=2)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                Path(tmp).replace(self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise RegistryError(f"{self.path}: cannot save the paired devices: {exc}") from exc
