"""Control writes (gateway -> wearable) and the info characteristic (docs/protocol.md §6)."""

from __future__ import annotations

import re
import struct
from dataclasses import astuple, dataclass
from enum import IntEnum
from typing import Final

from gatewayd.errors import DecodeError
from gatewayd.protocol.messages import (
    MAX_CONFIDENCE_E4,
    MAX_HR_CBPM,
    PROTOCOL_VERSION,
    SampleFormat,
)

MAX_CONTROL_SIZE: Final = 20
MAX_RESEND: Final = 256
MAX_MODEL_ID: Final = 32
_MODEL_ID_RE: Final = re.compile(rb"[A-Za-z0-9._-]*")


class Opcode(IntEnum):
    """Control command opcodes."""

    TIME_SYNC = 0x01
    SET_POLICY = 0x02
    SET_PRUNING = 0x03
    RESEND = 0x04
    SET_REST_LIMIT = 0x05


@dataclass(frozen=True, slots=True)
class TimeSync:
    """Set the device clock to ``unix_ms``."""

    unix_ms: int


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """Set the offload thresholds: entropy tau (milli-bits) and minimum confidence (1/10000)."""

    tau_mbits: int
    min_conf_e4: int


@dataclass(frozen=True, slots=True)
class SetPruning:
    """Ask the wearable to run its local model at this pruning level."""

    pruning_pct: int


@dataclass(frozen=True, slots=True)
class Resend:
    """Ask for messages ``first_seq`` .. ``first_seq + count - 1`` again."""

    first_seq: int
    count: int


@dataclass(frozen=True, slots=True)
class SetRestLimit:
    """Set the resting limit of the offload confidence (1/100 bpm, 0 turns the check off).

    A window the local model calls rest at a heart rate above it gets an offload confidence of
    0 (`gatewayd.signals.offload.offload_confidence_e4`): the gateway sends its own tachycardia
    limit at rest, so that the windows it would alert on at rest are the ones it sees raw.
    """

    rest_limit_cbpm: int


ControlCommand = TimeSync | SetPolicy | SetPruning | Resend | SetRestLimit

# opcode -> (argument layout, command class)
_LAYOUTS: Final[dict[Opcode, tuple[struct.Struct, type[ControlCommand]]]] = {
    Opcode.TIME_SYNC: (struct.Struct("<Q"), TimeSync),
    Opcode.SET_POLICY: (struct.Struct("<HH"), SetPolicy),
    Opcode.SET_PRUNING: (struct.Struct("<B"), SetPruning),
    Opcode.RESEND: (struct.Struct("<IH"), Resend),
    Opcode.SET_REST_LIMIT: (struct.Struct("<H"), SetRestLimit),
}
_OPCODES: Final[dict[type[ControlCommand], Opcode]] = {cls: op for op, (_, cls) in _LAYOUTS.items()}


def _command_problem(cmd: ControlCommand) -> str | None:
    """What makes a command invalid, or None."""
    match cmd:
        case SetPolicy(_, min_conf) if min_conf > MAX_CONFIDENCE_E4:
            return f"min_conf_e4 {min_conf} is above 10000"
        case SetPruning(pct) if pct > 100:
            return f"pruning_pct {pct} is above 100"
        case Resend(_, count) if not 1 <= count <= MAX_RESEND:
            return f"resend count {count} is not 1-{MAX_RESEND}"
        case SetRestLimit(limit) if limit > MAX_HR_CBPM:
            return f"rest_limit_cbpm {limit} is above {MAX_HR_CBPM}"
        case _:
            return None


def encode_control(cmd: ControlCommand) -> bytes:
    """Encode one command for the control characteristic."""
    opcode = _OPCODES[type(cmd)]
    layout, _ = _LAYOUTS[opcode]
    problem = _command_problem(cmd)
    if problem is not None:
        raise ValueError(f"cannot encode {type(cmd).__name__}: {problem}")
    try:
        args = layout.pack(*astuple(cmd))
    except struct.error as exc:
        raise ValueError(f"cannot encode {cmd!r}: {exc}") from exc
    return bytes((PROTOCOL_VERSION, opcode)) + args


def decode_control(data: bytes | bytearray | memoryview) -> ControlCommand:
    """Decode one control write, as the wearable does; DecodeError for anything it rejects."""
    buf = bytes(data)
    if len(buf) < 2:
        raise DecodeError("too_short", f"control write of {len(buf)} bytes")
    version, op = buf[0], buf[1]
    if version != PROTOCOL_VERSION:
        raise DecodeError("unsupported_version", f"control version {version}")
    try:
        opcode = Opcode(op)
    except ValueError:
        raise DecodeError("unknown_opcode", f"control opcode {op:#04x}") from None
    layout, cls = _LAYOUTS[opcode]
    if len(buf) != 2 + layout.size:
        raise DecodeError(
            "bad_length", f"{opcode.name} of {len(buf)} bytes; it has {2 + layout.size}"
        )
    cmd = cls(*layout.unpack_from(buf, 2))
    problem = _command_problem(cmd)
    if problem is not None:
        raise DecodeError("bad_field", problem)
    return cmd


_INFO: Final = struct.Struct("<BBBBIBBBBHHHIB")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The info characteristic: what a wearable is and how it is set up."""

    fw_major: int
    fw_minor: int
    fw_patch: int
    boot_id: int
    pruning_pct: int
    bvp_rate_hz: int
    acc_rate_hz: int
    sample_format: SampleFormat
    acc_lsb_per_g: int
    tau_mbits: int
    min_conf_e4: int
    #: The seq the device's next message will get: a reconnecting gateway learns what it missed.
    next_seq: int
    model_id: str
    protocol_version: int = PROTOCOL_VERSION

    @property
    def firmware_version(self) -> str:
        """Firmware version as major.minor.patch."""
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"


def encode_info(info: DeviceInfo) -> bytes:
    """Encode the info characteristic value."""
    model = info.model_id.encode("ascii", errors="replace")
    if len(model) > MAX_MODEL_ID or not _MODEL_ID_RE.fullmatch(model):
        raise ValueError(f"model id {info.model_id!r} is not 0-32 characters of [A-Za-z0-9._-]")
    try:
        head = _INFO.pack(
            info.protocol_version,
            info.fw_major,
            info.fw_minor,
            info.fw_patch,
            info.boot_id,
            info.pruning_pct,
            info.bvp_rate_hz,
            info.acc_rate_hz,
            info.sample_format,
            info.acc_lsb_per_g,
            info.tau_mbits,
            info.min_conf_e4,
            info.next_seq,
            len(model),
        )
    except struct.error as exc:
        raise ValueError(f"cannot encode {info!r}: {exc}") from exc
    return head + model


def decode_info(data: bytes | bytearray | memoryview) -> DeviceInfo:
    """Decode the info characteristic value; DecodeError if malformed."""
    buf = bytes(data)
    if len(buf) < _INFO.size:
        raise DecodeError("too_short", f"info of {len(buf)} bytes; it has at least {_INFO.size}")
    (version, major, minor, patch, boot_id, pruning, bvp_rate, acc_rate, fmt, acc_lsb, tau,
     min_conf, next_seq, model_len) = _INFO.unpack_from(buf)  # fmt: skip
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            "unsupported_version",
            f"device speaks protocol version {version}; this gateway understands "
            f"{PROTOCOL_VERSION}",
        )
    if len(buf) != _INFO.size + model_len:
        raise DecodeError("bad_length", f"info of {len(buf)} bytes; model_id_len is {model_len}")
    model = buf[_INFO.size :]
    if model_len > MAX_MODEL_ID or not _MODEL_ID_RE.fullmatch(model):
        raise DecodeError("bad_field", f"model id {model!r} is not 0-32 of [A-Za-z0-9._-]")
    if fmt not in (SampleFormat.INT16, SampleFormat.INT8):
        raise DecodeError("bad_field", f"sample_format {fmt} is not 1 or 2")
    if pruning > 100 or min_conf > MAX_CONFIDENCE_E4:
        raise DecodeError("bad_field", f"pruning_pct {pruning} or min_conf_e4 {min_conf}")
    if bvp_rate == 0 or acc_rate == 0 or acc_lsb == 0:
        raise DecodeError("bad_field", "a sample rate or acc_lsb_per_g is zero")
    return DeviceInfo(
        major, minor, patch, boot_id, pruning, bvp_rate, acc_rate, SampleFormat(fmt), acc_lsb,
        tau, min_conf, next_seq, model.decode("ascii"), version,
    )  # fmt: skip
