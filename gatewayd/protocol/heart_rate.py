"""The Bluetooth SIG Heart Rate Measurement (0x2A37), as straps and watches send it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gatewayd.errors import DecodeError

_HR_UINT16: Final = 0x01
_CONTACT_DETECTED: Final = 0x02
_CONTACT_SUPPORTED: Final = 0x04
_ENERGY_PRESENT: Final = 0x08
_RR_PRESENT: Final = 0x10
RR_UNITS_PER_S: Final = 1024


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """One Heart Rate Measurement notification."""

    hr_bpm: int
    #: None when the sensor does not support contact detection.
    sensor_contact: bool | None
    #: Cumulative energy expended in kJ, when the device sends it.
    energy_kj: int | None
    #: RR intervals in units of 1/1024 s, oldest first.
    rr_1024: tuple[int, ...]

    @property
    def rr_intervals_s(self) -> tuple[float, ...]:
        """RR intervals in seconds."""
        return tuple(rr / RR_UNITS_PER_S for rr in self.rr_1024)


def parse_heart_rate_measurement(data: bytes | bytearray | memoryview) -> HeartRateMeasurement:
    """Parse a 0x2A37 value; DecodeError for a truncated or inconsistent one."""
    buf = bytes(data)
    if len(buf) < 2:
        raise DecodeError("too_short", f"heart rate measurement of {len(buf)} bytes")
    flags = buf[0]
    pos = 1
    hr_size = 2 if flags & _HR_UINT16 else 1
    if len(buf) < pos + hr_size:
        raise DecodeError("too_short", "heart rate measurement ends inside the heart rate")
    hr = int.from_bytes(buf[pos : pos + hr_size], "little")
    pos += hr_size
    contact = bool(flags & _CONTACT_DETECTED) if flags & _CONTACT_SUPPORTED else None
    energy: int | None = None
    if flags & _ENERGY_PRESENT:
        if len(buf) < pos + 2:
            raise DecodeError("too_short", "heart rate measurement ends inside energy expended")
        energy = int.from_bytes(buf[pos : pos + 2], "little")
        pos += 2
    rest = buf[pos:]
    if not flags & _RR_PRESENT:
        if rest:
            raise DecodeError("bad_length", f"{len(rest)} trailing bytes without RR intervals")
        return HeartRateMeasurement(hr, contact, energy, ())
    if len(rest) % 2:
        raise DecodeError("bad_length", f"RR intervals take {len(rest)} bytes, an odd number")
    rr = tuple(int.from_bytes(rest[i : i + 2], "little") for i in range(0, len(rest), 2))
    return HeartRateMeasurement(hr, contact, energy, rr)


def encode_heart_rate_measurement(m: HeartRateMeasurement) -> bytes:
    """Encode a 0x2A37 value (for the emulator and tests); uint8 HR when it fits."""
    flags = 0
    out = bytearray()
    if m.hr_bpm > 0xFF:
        flags |= _HR_UINT16
        out += m.hr_bpm.to_bytes(2, "little")
    else:
        out.append(m.hr_bpm)
    if m.sensor_contact is not None:
        flags |= _CONTACT_SUPPORTED | (_CONTACT_DETECTED if m.sensor_contact else 0)
    if m.energy_kj is not None:
        flags |= _ENERGY_PRESENT
        out += m.energy_kj.to_bytes(2, "little")
    if m.rr_1024:
        flags |= _RR_PRESENT
        for rr in m.rr_1024:
            out += rr.to_bytes(2, "little")
    return bytes([flags]) + bytes(out)
