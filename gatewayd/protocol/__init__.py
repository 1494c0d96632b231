"""The wearable <-> gateway wire protocol (docs/protocol.md): pure codecs, no I/O, no clock.

Every decoder here raises :class:`gatewayd.errors.DecodeError` for malformed input and nothing
else. Times are passed in by the caller (``now`` in seconds, any monotonic origin).
"""

from gatewayd.protocol.control import (
    DeviceInfo,
    Resend,
    SetPolicy,
    SetPruning,
    SetRestLimit,
    TimeSync,
    decode_control,
    decode_info,
    encode_control,
    encode_info,
)
from gatewayd.protocol.fragments import FrameDecoder, Reassembler, fragment
from gatewayd.protocol.heart_rate import HeartRateMeasurement, parse_heart_rate_measurement
from gatewayd.protocol.messages import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_VERSION,
    Message,
    MessageFlags,
    MessageType,
    SampleFormat,
    Summary,
    Window,
    decode_message,
    encode_message,
)
from gatewayd.protocol.sequencing import Delivered, Duplicate, Gap, Sequencer

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PROTOCOL_VERSION",
    "Delivered",
    "DeviceInfo",
    "Duplicate",
    "FrameDecoder",
    "Gap",
    "HeartRateMeasurement",
    "Message",
    "MessageFlags",
    "MessageType",
    "Reassembler",
    "Resend",
    "SampleFormat",
    "Sequencer",
    "SetPolicy",
    "SetPruning",
    "SetRestLimit",
    "Summary",
    "TimeSync",
    "Window",
    "decode_control",
    "decode_info",
    "decode_message",
    "encode_control",
    "encode_info",
    "encode_message",
    "fragment",
    "parse_heart_rate_measurement",
]
