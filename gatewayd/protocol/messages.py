"""SUMMARY and WINDOW messages (docs/protocol.md §2): bytes in, frozen dataclasses out."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

import numpy as np
from numpy.typing import NDArray

from gatewayd.activity import ActivityGroup, group_name
from gatewayd.errors import DecodeError

PROTOCOL_VERSION: Final = 1
#: Largest message: 255 fragments of the smallest MTU's 16-byte chunk (docs/protocol.md §2.4).
MAX_MESSAGE_SIZE: Final = 4080
#: The ``activity`` byte of a window whose group the wearable does not know.
UNKNOWN_ACTIVITY: Final = int(ActivityGroup.UNKNOWN)
UNKNOWN_PERCENT: Final = 255
MAX_HR_CBPM: Final = 30000
MAX_CONFIDENCE_E4: Final = 10000
MAX_WINDOW_MS: Final = 60000

_ACTIVITY_CODES: Final = frozenset(int(g) for g in ActivityGroup)

_HEADER: Final = struct.Struct("<BBHIQ")
_SUMMARY: Final = struct.Struct("<BBHHHBBH")
_WINDOW: Final = struct.Struct("<BBBBHHHH")
_CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = _HEADER.size
SUMMARY_SIZE: Final = HEADER_SIZE + _SUMMARY.size + _CRC.size
WINDOW_HEADER_END: Final = HEADER_SIZE + _SUMMARY.size + _WINDOW.size
assert (HEADER_SIZE, SUMMARY_SIZE, WINDOW_HEADER_END) == (16, 32, 40)


class MessageType(IntEnum):
    """The message ``type`` byte."""

    SUMMARY = 1
    WINDOW = 2


class MessageFlags(IntFlag):
    """The header's ``flags`` field. Bits 8-15 are ``motion_cg`` when MOTION_REPORTED is set,
    else reserved; reserved bits are kept as they came.

    Clear a bit in int arithmetic (``MessageFlags(int(f) & ~int(X))``): ``~X`` of a member
    keeps only the named bits 0-7, so ``f & ~X`` would drop ``motion_cg``.
    """

    NONE = 0
    OFFLOAD_ENTROPY = 1 << 0
    OFFLOAD_CONFIDENCE = 1 << 1
    CLOCK_SYNCED = 1 << 2
    RESENT = 1 << 3
    CHARGING = 1 << 4
    OFF_WRIST = 1 << 5
    #: A fall signature: the window holds an impact followed by stillness, or starts within the
    #: hold time after such an impact (a v1 addition: bit 6 was reserved, so an older gateway
    #: keeps it as it came and still gets the WINDOW). See docs/signals.md.
    OFFLOAD_MOTION = 1 << 6
    #: Bits 8-15 carry ``motion_cg``, how hard the wrist moved over the window (a v1 addition:
    #: bits 7-15 were reserved, so an older sender leaves this clear and its motion is unknown).
    MOTION_REPORTED = 1 << 7


OFFLOAD_MASK: Final = (
    MessageFlags.OFFLOAD_ENTROPY | MessageFlags.OFFLOAD_CONFIDENCE | MessageFlags.OFFLOAD_MOTION
)


#: Where ``motion_cg`` sits in ``flags`` (bits 8-15, meaningful with MOTION_REPORTED).
MOTION_SHIFT: Final = 8


def motion_flags(motion_cg: int) -> MessageFlags:
    """The ``flags`` bits that report a window's motion (`gatewayd.signals.offload.motion_cg`)."""
    if not 0 <= motion_cg <= 0xFF:
        raise ValueError(f"motion_cg must be 0..255, got {motion_cg}")
    return MessageFlags.MOTION_REPORTED | MessageFlags(motion_cg << MOTION_SHIFT)


class SampleFormat(IntEnum):
    """How raw samples are stored in a WINDOW message."""

    INT16 = 1
    INT8 = 2

    @property
    def dtype(self) -> np.dtype[np.signedinteger]:
        """The little-endian numpy dtype of one sample."""
        return np.dtype("<i2") if self is SampleFormat.INT16 else np.dtype("i1")


@dataclass(frozen=True, slots=True)
class Summary:
    """What a wearable says about one window (docs/protocol.md §2.2), in wire units."""

    seq: int
    t_ms: int
    flags: MessageFlags
    #: An `ActivityGroup` code: 0 rest, 1 light, 2 vigorous, 255 unknown.
    activity: int
    pruning_pct: int
    activity_conf_e4: int
    entropy_mbits: int
    hr_cbpm: int
    signal_quality: int
    battery_pct: int
    window_ms: int = 8000

    @property
    def offload_reason(self) -> MessageFlags:
        """The offload bits of ``flags`` (empty when the wearable did not offload)."""
        return self.flags & OFFLOAD_MASK

    @property
    def motion_g(self) -> float | None:
        """How hard the wrist moved (RMS about the window's mean, g), or None if not reported."""
        if not self.flags & MessageFlags.MOTION_REPORTED:
            return None
        return ((int(self.flags) >> MOTION_SHIFT) & 0xFF) / 100

    @property
    def activity_confidence(self) -> float:
        """The local model's probability of the ``activity`` group, in [0, 1]."""
        return self.activity_conf_e4 / MAX_CONFIDENCE_E4

    @property
    def entropy_bits(self) -> float:
        """Window entropy H(X) in bits."""
        return self.entropy_mbits / 1000

    @property
    def hr_bpm(self) -> float | None:
        """The wearable's heart-rate estimate in bpm, or None when it had none."""
        return self.hr_cbpm / 100 if self.hr_cbpm else None

    @property
    def battery(self) -> int | None:
        """Battery percent, or None when unknown."""
        return None if self.battery_pct == UNKNOWN_PERCENT else self.battery_pct

    @property
    def activity_name(self) -> str:
        """The activity group's name: "rest", "light", "vigorous" or "unknown"."""
        return group_name(self.activity)


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """A WINDOW message: the summary plus the raw samples (docs/protocol.md §2.3).

    ``bvp`` has shape (n_bvp,), ``acc`` has shape (n_acc, 3); both are read-only integer arrays
    of the sample format's dtype.
    """

    summary: Summary
    sample_format: SampleFormat
    bvp_rate_hz: int
    acc_rate_hz: int
    acc_lsb_per_g: int
    bvp: NDArray[np.signedinteger]
    acc: NDArray[np.signedinteger]

    @property
    def seq(self) -> int:
        """The message sequence number."""
        return self.summary.seq

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return (
            self.summary == other.summary
            and self.sample_format == other.sample_format
            and self.bvp_rate_hz == other.bvp_rate_hz
            and self.acc_rate_hz == other.acc_rate_hz
            and self.acc_lsb_per_g == other.acc_lsb_per_g
            and np.array_equal(self.bvp, other.bvp)
            and np.array_equal(self.acc, other.acc)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays: equal but not hashable


Message = Summary | Window


def message_seq(message: Message) -> int:
    """The sequence number of either kind of message."""
    return message.seq


def summary_of(message: Message) -> Summary:
    """The summary part of either kind of message."""
    return message.summary if isinstance(message, Window) else message


def _check(ok: bool, detail: str) -> None:
    if not ok:
        raise DecodeError("bad_field", detail)


def _check_summary(s: Summary) -> None:
    _check(0 <= s.seq <= 0xFFFFFFFF, f"seq {s.seq} is not a u32")
    _check(0 <= s.t_ms <= 0xFFFFFFFFFFFFFFFF, f"t_ms {s.t_ms} is not a u64")
    _check(0 <= int(s.flags) <= 0xFFFF, f"flags {int(s.flags):#x} is not a u16")
    _check(
        s.activity in _ACTIVITY_CODES,
        f"activity {s.activity} is not an activity group (0 rest, 1 light, 2 vigorous,"
        " 255 unknown)",
    )
    _check(0 <= s.pruning_pct <= 100, f"pruning_pct {s.pruning_pct} is not 0-100")
    _check(
        0 <= s.activity_conf_e4 <= MAX_CONFIDENCE_E4,
        f"activity_conf_e4 {s.activity_conf_e4} is not 0-10000",
    )
    _check(0 <= s.entropy_mbits <= 0xFFFF, f"entropy_mbits {s.entropy_mbits} is not a u16")
    _check(0 <= s.hr_cbpm <= MAX_HR_CBPM, f"hr_cbpm {s.hr_cbpm} is not 0-30000")
    for name, value in (("signal_quality", s.signal_quality), ("battery_pct", s.battery_pct)):
        _check(0 <= value <= 100 or value == UNKNOWN_PERCENT, f"{name} {value} is not 0-100 or 255")
    _check(1 <= s.window_ms <= MAX_WINDOW_MS, f"window_ms {s.window_ms} is not 1-60000")


def _expected_count(rate_hz: int, window_ms: int, what: str) -> int:
    samples, rest = divmod(rate_hz * window_ms, 1000)
    _check(rest == 0, f"{what} rate {rate_hz} Hz does not give whole samples in {window_ms} ms")
    return samples


def encode_message(message: Message) -> bytes:
    """Encode a message, CRC included; ValueError names a field the decoder would reject."""
    try:
        return _encode(message)
    except DecodeError as exc:
        raise ValueError(f"cannot encode: {exc.detail}") from exc


def _encode(message: Message) -> bytes:
    s = summary_of(message)
    _check_summary(s)
    kind = MessageType.WINDOW if isinstance(message, Window) else MessageType.SUMMARY
    parts = [
        _HEADER.pack(PROTOCOL_VERSION, kind, int(s.flags), s.seq, s.t_ms),
        _SUMMARY.pack(
            s.activity,
            s.pruning_pct,
            s.activity_conf_e4,
            s.entropy_mbits,
            s.hr_cbpm,
            s.signal_quality,
            s.battery_pct,
            s.window_ms,
        ),
    ]
    if isinstance(message, Window):
        parts.extend(_encode_window_block(message))
    body = b"".join(parts)
    if len(body) + _CRC.size > MAX_MESSAGE_SIZE:
        raise DecodeError("too_long", f"message of {len(body) + 4} bytes exceeds 4080")
    return body + _CRC.pack(zlib.crc32(body))


def _encode_window_block(w: Window) -> list[bytes]:
    _check(1 <= w.bvp_rate_hz <= 255, f"bvp_rate_hz {w.bvp_rate_hz} is not 1-255")
    _check(1 <= w.acc_rate_hz <= 255, f"acc_rate_hz {w.acc_rate_hz} is not 1-255")
    _check(1 <= w.acc_lsb_per_g <= 0xFFFF, f"acc_lsb_per_g {w.acc_lsb_per_g} is not 1-65535")
    n_bvp = _expected_count(w.bvp_rate_hz, w.summary.window_ms, "BVP")
    n_acc = _expected_count(w.acc_rate_hz, w.summary.window_ms, "ACC")
    _check(w.bvp.shape == (n_bvp,), f"bvp has shape {w.bvp.shape}, expected ({n_bvp},)")
    _check(w.acc.shape == (n_acc, 3), f"acc has shape {w.acc.shape}, expected ({n_acc}, 3)")
    dtype = w.sample_format.dtype
    info = np.iinfo(dtype)
    for name, arr in (("bvp", w.bvp), ("acc", w.acc)):
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise DecodeError("bad_field", f"{name} samples do not fit {w.sample_format.name}")
    return [
        _WINDOW.pack(
            w.sample_format, w.bvp_rate_hz, w.acc_rate_hz, 0, n_bvp, n_acc, w.acc_lsb_per_g, 0
        ),
        w.bvp.astype(dtype, copy=False).tobytes(),
        w.acc.astype(dtype, copy=False).tobytes(),
    ]


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode one whole message (docs/protocol.md §2.5); DecodeError is the only exception."""
    buf = bytes(data)
    if len(buf) < SUMMARY_SIZE:
        raise DecodeError("too_short", f"{len(buf)} bytes; a message has at least {SUMMARY_SIZE}")
    if len(buf) > MAX_MESSAGE_SIZE:
        raise DecodeError("too_long", f"{len(buf)} bytes; a message has at most {MAX_MESSAGE_SIZE}")
    version, kind, flags, seq, t_ms = _HEADER.unpack_from(buf, 0)
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            "unsupported_version",
            f"protocol version {version}; this gateway understands {PROTOCOL_VERSION}",
        )
    if kind not in (MessageType.SUMMARY, MessageType.WINDOW):
        raise DecodeError("unknown_type", f"message type {kind}; known types are 1 and 2")
    (crc,) = _CRC.unpack_from(buf, len(buf) - _CRC.size)
    actual = zlib.crc32(memoryview(buf)[: -_CRC.size])
    if crc != actual:
        raise DecodeError("bad_crc", f"CRC {crc:#010x} does not match the content ({actual:#010x})")
    fields = _SUMMARY.unpack_from(buf, HEADER_SIZE)
    summary = Summary(seq, t_ms, MessageFlags(flags), *fields)
    if kind == MessageType.SUMMARY:
        if len(buf) != SUMMARY_SIZE:
            raise DecodeError("bad_length", f"SUMMARY of {len(buf)} bytes; it has {SUMMARY_SIZE}")
        _check_summary(summary)
        return summary
    return _decode_window(buf, summary)


def _decode_window(buf: bytes, summary: Summary) -> Window:
    body_end = len(buf) - _CRC.size
    if body_end < WINDOW_HEADER_END:
        raise DecodeError("bad_length", f"WINDOW of {len(buf)} bytes has no window block")
    fmt, bvp_rate, acc_rate, reserved1, n_bvp, n_acc, acc_lsb, reserved2 = _WINDOW.unpack_from(
        buf, HEADER_SIZE + _SUMMARY.size
    )
    _check_summary(summary)
    _check(fmt in (SampleFormat.INT16, SampleFormat.INT8), f"sample_format {fmt} is not 1 or 2")
    _check(reserved1 == 0 and reserved2 == 0, "reserved bytes of the window block are not zero")
    _check(bvp_rate > 0 and acc_rate > 0, "a sample rate is zero")
    _check(acc_lsb > 0, "acc_lsb_per_g is zero")
    _check(
        n_bvp == _expected_count(bvp_rate, summary.window_ms, "BVP"),
        f"n_bvp {n_bvp} does not match {bvp_rate} Hz over {summary.window_ms} ms",
    )
    _check(
        n_acc == _expected_count(acc_rate, summary.window_ms, "ACC"),
        f"n_acc {n_acc} does not match {acc_rate} Hz over {summary.window_ms} ms",
    )
    sample_format = SampleFormat(fmt)
    dtype = sample_format.dtype
    expected = WINDOW_HEADER_END + (n_bvp + 3 * n_acc) * dtype.itemsize
    if body_end != expected:
        raise DecodeError(
            "bad_length", f"WINDOW of {len(buf)} bytes; its counts need {expected + _CRC.size}"
        )
    bvp = np.frombuffer(buf, dtype=dtype, count=n_bvp, offset=WINDOW_HEADER_END)
    acc = np.frombuffer(
        buf, dtype=dtype, count=3 * n_acc, offset=WINDOW_HEADER_END + n_bvp * dtype.itemsize
    ).reshape(n_acc, 3)
    return Window(summary, sample_format, bvp_rate, acc_rate, acc_lsb, bvp, acc)
