"""Control commands, the info characteristic and the standard Heart Rate Measurement."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.errors import DecodeError
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
from gatewayd.protocol.heart_rate import (
    HeartRateMeasurement,
    encode_heart_rate_measurement,
    parse_heart_rate_measurement,
)
from gatewayd.protocol.messages import SampleFormat

INFO = DeviceInfo(
    1, 2, 3, 0xDEADBEEF, 40, 64, 32, SampleFormat.INT16, 64, 4000, 6000, 0x01020304, "mnv2-p40"
)


@pytest.mark.parametrize(
    ("cmd", "raw"),
    [
        (TimeSync(0x0102030405060708), bytes.fromhex("01 01 0807060504030201")),
        (SetPolicy(4000, 6000), bytes.fromhex("01 02 a00f 7017")),
        (SetPruning(60), bytes.fromhex("01 03 3c")),
        (Resend(0xFFFFFFFE, 3), bytes.fromhex("01 04 feffffff 0300")),
        (SetRestLimit(12000), bytes.fromhex("01 05 e02e")),
        (SetRestLimit(0), bytes.fromhex("01 05 0000")),
    ],
)
def test_control_layouts(cmd: object, raw: bytes) -> None:
    assert encode_control(cmd) == raw  # type: ignore[arg-type]
    assert decode_control(raw) == cmd
    assert len(raw) <= 20


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x01", "too_short"),
        (b"\x02\x01" + bytes(8), "unsupported_version"),
        (b"\x01\x09", "unknown_opcode"),
        (b"\x01\x01" + bytes(7), "bad_length"),
        (b"\x01\x03\x3c\x00", "bad_length"),
        (b"\x01\x02\xa0\x0f\x11\x27", "bad_field"),  # min_conf 10001
        (b"\x01\x03\x65", "bad_field"),  # pruning 101
        (b"\x01\x04\x00\x00\x00\x00\x00\x00", "bad_field"),  # resend 0
        (b"\x01\x04\x00\x00\x00\x00\x01\x01", "bad_field"),  # resend 257
        (b"\x01\x05\x10", "bad_length"),
        (b"\x01\x05\x31\x75", "bad_field"),  # rest limit 30001: above any heart rate sent
    ],
)
def test_control_rejections(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_control(raw)
    assert err.value.reason == reason


def test_control_encoder_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resend count"):
        encode_control(Resend(0, 0))
    with pytest.raises(ValueError, match="cannot encode"):
        encode_control(TimeSync(-1))
    with pytest.raises(ValueError, match="rest_limit_cbpm 30001"):
        encode_control(SetRestLimit(30001))


def test_info_round_trip_and_layout() -> None:
    raw = encode_info(INFO)
    assert raw[:4] == bytes([1, 1, 2, 3])
    assert raw[4:8] == (0xDEADBEEF).to_bytes(4, "little")
    assert raw[18:22] == (0x01020304).to_bytes(4, "little")
    assert raw[22] == 8
    assert raw[23:] == b"mnv2-p40"
    assert decode_info(raw) == INFO
    assert INFO.firmware_version == "1.2.3"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r[:10], "too_short"),
        (lambda r: b"\x02" + r[1:], "unsupported_version"),
        (lambda r: r + b"x", "bad_length"),
        (lambda r: r[:23] + b"mnv2 p40", "bad_field"),
        (lambda r: r[:11] + b"\x05" + r[12:], "bad_field"),
        (lambda r: r[:8] + b"\x65" + r[9:], "bad_field"),
        (lambda r: r[:9] + b"\x00" + r[10:], "bad_field"),
    ],
)
def test_info_rejections(mutate: object, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_info(mutate(encode_info(INFO)))  # type: ignore[operator]
    assert err.value.reason == reason


# Heart Rate Measurement, after the Bluetooth SIG Heart Rate Service 1.0 examples.
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (bytes([0x00, 72]), HeartRateMeasurement(72, None, None, ())),
        (bytes([0x06, 64]), HeartRateMeasurement(64, True, None, ())),
        (bytes([0x04, 64]), HeartRateMeasurement(64, False, None, ())),
        (bytes([0x01, 0x2C, 0x01]), HeartRateMeasurement(300, None, None, ())),
        (bytes([0x08, 80, 0x10, 0x27]), HeartRateMeasurement(80, None, 10000, ())),
        (
            bytes([0x10, 75, 0x00, 0x04, 0x20, 0x03]),
            HeartRateMeasurement(75, None, None, (1024, 800)),
        ),
        (
            bytes([0x1F, 0x4B, 0x00, 0x05, 0x00, 0x00, 0x04]),
            HeartRateMeasurement(75, True, 5, (1024,)),
        ),
    ],
)
def test_heart_rate_measurement(raw: bytes, expected: HeartRateMeasurement) -> None:
    m = parse_heart_rate_measurement(raw)
    assert m == expected
    assert parse_heart_rate_measurement(encode_heart_rate_measurement(m)) == m


def test_rr_intervals_in_seconds() -> None:
    m = parse_heart_rate_measurement(bytes([0x10, 75, 0x00, 0x04, 0x00, 0x02]))
    assert m.rr_intervals_s == (1.0, 0.5)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "too_short"),
        (b"\x00", "too_short"),
        (b"\x01\x48", "too_short"),
        (b"\x08\x48\x01", "too_short"),
        (b"\x10\x48\x01", "bad_length"),
        (b"\x00\x48\x01", "bad_length"),
    ],
)
def test_heart_rate_measurement_rejections(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        parse_heart_rate_measurement(raw)
    assert err.value.reason == reason


@given(st.binary(max_size=40))
def test_heart_rate_parser_only_raises_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_heart_rate_measurement(raw)


@given(st.binary(max_size=60))
def test_control_and_info_decoders_only_raise_decode_error(raw: bytes) -> None:
    for decode in (decode_control, decode_info):
        with contextlib.suppress(DecodeError):
            decode(raw)
