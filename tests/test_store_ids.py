"""UUIDv7 event ids (gatewayd.ids): layout, monotonicity, determinism given the inputs."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

import pytest

from gatewayd.ids import EventIdGenerator, new_event_id, uuid7_time_ms

T0 = 1_764_000_000_000  # 2025-11-24, in ms


def fixed(byte: int) -> Callable[[int], bytes]:
    return lambda n: bytes([byte]) * n


def counting_rand() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def test_layout_is_rfc9562_uuidv7() -> None:
    value = uuid.UUID(EventIdGenerator().next(T0, lambda n: b"\xff" * n))
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == T0
    # rand_a is seeded with 11 random bits: its top bit starts at 0.
    assert (value.int >> 64) & 0xFFF == 0x7FF
    assert value.int & ((1 << 62) - 1) == (1 << 62) - 1
    assert uuid7_time_ms(str(value)) == T0


def test_same_millisecond_ids_increase_via_the_counter() -> None:
    gen = EventIdGenerator()
    ids = [gen.next(T0, fixed(0)) for _ in range(100)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 100
    counters = [(uuid.UUID(i).int >> 64) & 0xFFF for i in ids]
    assert counters == list(range(100))


def test_a_new_millisecond_reseeds_the_counter() -> None:
    gen = EventIdGenerator()
    a = gen.next(T0, fixed(0x12))
    b = gen.next(T0 + 1, fixed(0x34))
    assert a < b
    assert (uuid.UUID(b).int >> 64) & 0xFFF == 0x434 & 0x7FF


def test_clock_stepping_back_does_not_go_back() -> None:
    gen = EventIdGenerator()
    a = gen.next(T0 + 10, fixed(0))
    b = gen.next(T0, fixed(0))
    assert b > a
    assert uuid7_time_ms(b) == T0 + 10


def test_counter_overflow_borrows_the_next_millisecond() -> None:
    gen = EventIdGenerator()
    ids = [gen.next(T0, fixed(0xFF)) for _ in range(2100)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert uuid7_time_ms(ids[0]) == T0
    assert uuid7_time_ms(ids[-1]) > T0


def test_deterministic_given_clock_and_randomness() -> None:
    a, b = EventIdGenerator(), EventIdGenerator()
    rand_a, rand_b = counting_rand(), counting_rand()
    times = [T0, T0, T0 + 5, T0 + 3, T0 + 6]
    assert [a.next(t, rand_a) for t in times] == [b.next(t, rand_b) for t in times]


def test_process_generator_is_monotonic_with_the_real_clock() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_rejects_timestamps_outside_48_bits() -> None:
    with pytest.raises(ValueError, match="48-bit"):
        EventIdGenerator().next(1 << 48)
    with pytest.raises(ValueError, match="48-bit"):
        EventIdGenerator().next(-1)


def test_uuid7_time_ms_rejects_other_versions() -> None:
    with pytest.raises(ValueError, match="not a UUIDv7"):
        uuid7_time_ms(str(uuid.uuid4()))
