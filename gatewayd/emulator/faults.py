"""Fault plans for the emulator: what `--faults` asks for, parsed once into a frozen value (pure).

Grammar: comma-separated ``name=value`` items, e.g.
``drop=5s,corrupt=0.01,truncate=0.002,duplicate=0.01,connect_fail=2,skew=1500ms,drift=2,flood=1,
impostor=1,hang=60s``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, fields
from typing import Final

from gatewayd.errors import EmulatorError
from gatewayd.protocol.fragments import FRAGMENT_HEADER_SIZE

_DURATION_RE: Final = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m)?$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Faults a virtual wearable injects. Probabilities are per fragment."""

    #: Drop the link every this many (real) seconds, with +-25 % jitter; 0 = never.
    drop_every_s: float = 0.0
    #: Probability that a fragment has one byte flipped.
    corrupt: float = 0.0
    #: Probability that a fragment is cut short.
    truncate: float = 0.0
    #: Probability that a fragment is sent twice.
    duplicate: float = 0.0
    #: The first N connection attempts of each device fail with org.bluez.Error.InProgress.
    connect_fail: int = 0
    #: The device clock starts this far off (seconds) until a TIME_SYNC.
    skew_s: float = 0.0
    #: The device clock drifts this many ms per second, before and after sync.
    drift_ms_per_s: float = 0.0
    #: Number of devices (the first ones) that also flood the link with junk fragments.
    flood: int = 0
    #: Junk fragments per second from a flooding device.
    flood_rate: float = 200.0
    #: Number of devices (the first wearables) that are impostors: BlueZ holds a bond with their
    #: address (from an earlier pairing) but the device advertising it lacks the bond's keys.
    impostor: int = 0
    #: bluetoothd stops answering D-Bus method calls this many (real) seconds after the start;
    #: 0 = never.
    hang_after_s: float = 0.0
    #: Number of devices (the first wearables) whose firmware predates SET_REST_LIMIT: they
    #: reject it as an unknown opcode and keep their own resting limit.
    old_firmware: int = 0

    def mangle(self, fragment: bytes, rng: random.Random) -> list[bytes]:
        """What goes on the air for one fragment: possibly corrupted, truncated or doubled."""
        out = fragment
        if self.corrupt and rng.random() < self.corrupt:
            out = _flip_bit(out, 0, rng)
        if self.truncate and len(out) > 1 and rng.random() < self.truncate:
            out = out[: rng.randrange(1, len(out))]
        if self.duplicate and rng.random() < self.duplicate:
            return [out, out]
        return [out]


def flip_payload_byte(fragment: bytes, rng: random.Random) -> bytes:
    """``fragment`` with one bit flipped past its header (in the message bytes, which the
    message's CRC covers), or in the header when the fragment carries no message bytes."""
    return _flip_bit(
        fragment, FRAGMENT_HEADER_SIZE if len(fragment) > FRAGMENT_HEADER_SIZE else 0, rng
    )


def _flip_bit(data: bytes, start: int, rng: random.Random) -> bytes:
    """``data`` with one random bit flipped at or after byte ``start``."""
    i = rng.randrange(start, len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


@dataclass(slots=True)
class CorruptTrigger:
    """Corruption asked for from outside, on a schedule (`gatewayd bench soak`): the next
    ``armed`` data fragments a wearable sends each get one bit flipped. Mutable, and shared by
    reference from a frozen :class:`ScheduledFaultPlan`."""

    armed: int = 0
    #: Fragments corrupted so far.
    applied: int = 0

    def arm(self, fragments: int = 1) -> None:
        """Corrupt the next ``fragments`` fragments."""
        self.armed += fragments


@dataclass(frozen=True, slots=True)
class ScheduledFaultPlan(FaultPlan):
    """A :class:`FaultPlan` whose wearable also corrupts fragments when its trigger is armed."""

    trigger: CorruptTrigger = field(default_factory=CorruptTrigger)

    def mangle(self, fragment: bytes, rng: random.Random) -> list[bytes]:
        """As :meth:`FaultPlan.mangle`, after flipping a bit if the trigger is armed."""
        if self.trigger.armed > 0 and fragment:
            self.trigger.armed -= 1
            self.trigger.applied += 1
            fragment = flip_payload_byte(fragment, rng)
        return FaultPlan.mangle(self, fragment, rng)


def _duration(name: str, text: str) -> float:
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None:
        raise EmulatorError(f"--faults {name}={text}: expected a duration like 5s or 500ms")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _probability(name: str, text: str) -> float:
    try:
        p = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise EmulatorError(
            f"--faults {name}={text}: expected a probability like 0.01 or 1%"
        ) from None
    if not 0.0 <= p <= 1.0:
        raise EmulatorError(f"--faults {name}={text}: a probability is between 0 and 1")
    return p


def _count(name: str, text: str) -> int:
    if not text.isdigit():
        raise EmulatorError(f"--faults {name}={text}: expected a whole number")
    return int(text)


def parse_faults(spec: str) -> FaultPlan:
    """Parse a `--faults` string; EmulatorError names the item that is wrong."""
    values: dict[str, float | int] = {}
    known = {f.name for f in fields(FaultPlan)}
    aliases = {
        "drop": "drop_every_s",
        "skew": "skew_s",
        "drift": "drift_ms_per_s",
        "hang": "hang_after_s",
    }
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, text = item.partition("=")
        if not sep:
            raise EmulatorError(f"--faults {item}: expected name=value")
        key = aliases.get(name, name)
        if key not in known:
            raise EmulatorError(
                f"--faults {name}: unknown fault; known: drop, corrupt, truncate, duplicate, "
                "connect_fail, skew, drift, flood, flood_rate, impostor, hang, old_firmware"
            )
        if key in {"drop_every_s", "skew_s", "hang_after_s"}:
            values[key] = _duration(name, text)
        elif key in {"corrupt", "truncate", "duplicate"}:
            values[key] = _probability(name, text)
        elif key in {"connect_fail", "flood", "impostor", "old_firmware"}:
            values[key] = _count(name, text)
        else:
            try:
                values[key] = float(text)
            except ValueError:
                raise EmulatorError(f"--faults {name}={text}: expected a number") from None
    return FaultPlan(**values)  # type: ignore[arg-type]
