"""Message codec: round trips, every decoding rule, and the wire sizes the spec states."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given

from gatewayd.activity import ActivityGroup
from gatewayd.errors import DecodeError
from gatewayd.protocol.messages import (
    OFFLOAD_MASK,
    MessageFlags,
    SampleFormat,
    Summary,
    Window,
    decode_message,
    encode_message,
)
from tests.strategies import messages


def make_summary(**overrides: int) -> Summary:
    fields = {
        "seq": 7,
        "t_ms": 1_700_000_000_000,
        "flags": MessageFlags.CLOCK_SYNCED,
        "activity": 1,
        "pruning_pct": 40,
        "activity_conf_e4": 9100,
        "entropy_mbits": 3412,
        "hr_cbpm": 7250,
        "signal_quality": 88,
        "battery_pct": 76,
        "window_ms": 8000,
    }
    fields.update(overrides)
    return Summary(**fields)  # type: ignore[arg-type]


def make_window(fmt: SampleFormat = SampleFormat.INT16) -> Window:
    rng = np.random.default_rng(1)
    hi = 1000 if fmt is SampleFormat.INT16 else 100
    return Window(
        summary=make_summary(flags=MessageFlags.OFFLOAD_ENTROPY),
        sample_format=fmt,
        bvp_rate_hz=64,
        acc_rate_hz=32,
        acc_lsb_per_g=64,
        bvp=rng.integers(-hi, hi, 512).astype(fmt.dtype),
        acc=rng.integers(-hi, hi, (256, 3)).astype(fmt.dtype),
    )


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_summary_layout_is_the_spec() -> None:
    raw = encode_message(make_summary())
    assert len(raw) == 32
    assert raw[:16] == struct.pack("<BBHIQ", 1, 1, 0x04, 7, 1_700_000_000_000)
    assert raw[16:28] == struct.pack("<BBHHHBBH", 1, 40, 9100, 3412, 7250, 88, 76, 8000)
    assert raw[28:] == struct.pack("<I", zlib.crc32(raw[:28]))


def test_default_window_is_2604_bytes_and_round_trips() -> None:
    w = make_window()
    raw = encode_message(w)
    assert len(raw) == 2604
    back = decode_message(raw)
    assert isinstance(back, Window)
    assert back == w
    assert back.bvp.dtype == np.dtype("<i2")
    assert back.acc.shape == (256, 3)
    assert not back.bvp.flags.writeable


def test_int8_window_round_trips() -> None:
    w = make_window(SampleFormat.INT8)
    raw = encode_message(w)
    assert len(raw) == 40 + 512 + 768 + 4
    assert decode_message(raw) == w


@given(messages())
def test_any_message_round_trips(msg: Summary | Window) -> None:
    raw = encode_message(msg)
    back = decode_message(raw)
    assert back == msg
    assert encode_message(back) == raw


def test_convenience_properties() -> None:
    s = make_summary(battery_pct=255, hr_cbpm=0, activity=255)
    assert s.battery is None
    assert s.hr_bpm is None
    assert s.activity_name == "unknown"
    s = make_summary()
    assert s.hr_bpm == 72.5
    assert s.entropy_bits == pytest.approx(3.412)
    assert s.activity_confidence == pytest.approx(0.91)
    assert s.activity_name == "light"
    names = [make_summary(activity=int(g)).activity_name for g in ActivityGroup]
    assert names == ["rest", "light", "vigorous", "unknown"]


@pytest.mark.parametrize("activity", [3, 8, 9, 254])
def test_activity_byte_is_a_group_code(activity: int) -> None:
    # 0-2 and 255 are the groups; 3-8 were PPG-DaLiA ids before the in-place v1 change.
    raw = encode_message(make_summary(activity=0))
    with pytest.raises(DecodeError) as err:
        decode_message(with_crc(raw[:16] + bytes([activity]) + raw[17:-4]))
    assert err.value.reason == "bad_field"
    assert "not an activity group" in err.value.detail
    with pytest.raises(ValueError, match="not an activity group"):
        encode_message(make_summary(activity=activity))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw[:20], "too_short"),
        (lambda raw: raw + bytes(4100), "too_long"),
        (lambda raw: with_crc(bytes([2]) + raw[1:-4]), "unsupported_version"),
        (lambda raw: with_crc(raw[:1] + bytes([9]) + raw[2:-4]), "unknown_type"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 0x01]), "bad_crc"),
        (lambda raw: raw[:10] + bytes([raw[10] ^ 0x80]) + raw[11:], "bad_crc"),
        (lambda raw: with_crc(raw[:-4] + b"\0"), "bad_length"),
        (lambda raw: with_crc(raw[:16] + bytes([9]) + raw[17:-4]), "bad_field"),
        (lambda raw: with_crc(raw[:17] + bytes([101]) + raw[18:-4]), "bad_field"),
        (lambda raw: with_crc(raw[:18] + struct.pack("<H", 10001) + raw[20:-4]), "bad_field"),
        (lambda raw: with_crc(raw[:22] + struct.pack("<H", 30001) + raw[24:-4]), "bad_field"),
        (lambda raw: with_crc(raw[:24] + bytes([101]) + raw[25:-4]), "bad_field"),
        (lambda raw: with_crc(raw[:25] + bytes([200]) + raw[26:-4]), "bad_field"),
        (lambda raw: with_crc(raw[:26] + struct.pack("<H", 0) + raw[28:-4]), "bad_field"),
    ],
)
def test_summary_decoding_rules(mutate: object, reason: str) -> None:
    raw = encode_message(make_summary())
    with pytest.raises(DecodeError) as err:
        decode_message(mutate(raw))  # type: ignore[operator]
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (28, b"\x03", "bad_field"),  # sample format
        (31, b"\x01", "bad_field"),  # reserved
        (38, b"\x01\x00", "bad_field"),  # reserved
        (29, b"\x00", "bad_field"),  # zero BVP rate
        (32, struct.pack("<H", 511), "bad_field"),  # n_bvp does not match the rate
        (34, struct.pack("<H", 255), "bad_field"),  # n_acc does not match the rate
        (36, b"\x00\x00", "bad_field"),  # acc_lsb_per_g zero
        (29, b"\x20", "bad_field"),  # 32 Hz BVP but 512 samples
    ],
)
def test_window_decoding_rules(offset: int, value: bytes, reason: str) -> None:
    raw = encode_message(make_window())[:-4]
    mutated = with_crc(raw[:offset] + value + raw[offset + len(value) :])
    with pytest.raises(DecodeError) as err:
        decode_message(mutated)
    assert err.value.reason == reason


def test_window_with_missing_samples_is_bad_length() -> None:
    raw = encode_message(make_window())[:-4]
    with pytest.raises(DecodeError) as err:
        decode_message(with_crc(raw[:-2]))
    assert err.value.reason == "bad_length"


def test_window_without_block_is_bad_length() -> None:
    raw = encode_message(make_summary())[:-4]
    with pytest.raises(DecodeError) as err:
        decode_message(with_crc(raw[:1] + b"\x02" + raw[2:]))
    assert err.value.reason == "bad_length"


def test_reserved_flag_bits_are_kept() -> None:
    s = make_summary(flags=MessageFlags(0x8000 | 0x80 | 0x01))
    assert decode_message(encode_message(s)).flags == 0x8081


def test_offload_motion_is_bit_6_and_an_offload_reason() -> None:
    assert MessageFlags.OFFLOAD_MOTION == 0x40
    assert MessageFlags.OFFLOAD_MOTION in OFFLOAD_MASK
    flags = MessageFlags.OFFLOAD_MOTION | MessageFlags.CLOCK_SYNCED
    s = make_summary(flags=flags)
    assert s.offload_reason == MessageFlags.OFFLOAD_MOTION
    assert decode_message(encode_message(s)).flags == flags
    # A WINDOW sent for motion alone decodes like any other (an older gateway, for which bit 6
    # was reserved, kept it as it came and decoded the same bytes the same way).
    window = make_window()
    window = replace(window, summary=replace(window.summary, flags=MessageFlags.OFFLOAD_MOTION))
    raw = encode_message(window)
    assert raw[2:4] == b"\x40\x00"
    decoded = decode_message(raw)
    assert isinstance(decoded, Window)
    assert decoded == window


def test_encoder_refuses_what_the_decoder_rejects() -> None:
    with pytest.raises(ValueError, match="battery_pct"):
        encode_message(make_summary(battery_pct=101))
    w = make_window(SampleFormat.INT8)
    big = Window(w.summary, w.sample_format, 64, 32, 64, np.full(512, 300, dtype=np.int16), w.acc)
    with pytest.raises(ValueError, match="do not fit INT8"):
        encode_message(big)
    short = Window(w.summary, w.sample_format, 64, 32, 64, w.bvp[:100], w.acc)
    with pytest.raises(ValueError, match="shape"):
        encode_message(short)
