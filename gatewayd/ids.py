"""Event ids: UUIDv7 (RFC 9562 §5.7), time-ordered and monotonic within a process.

An event id is the key subscribers use to drop duplicates (delivery is at least once), and the
store's primary key for events. UUIDv7 puts the Unix time in milliseconds in the top 48 bits, so
ids sort by creation time as strings, as bytes and as integers.

Monotonicity uses RFC 9562 §6.2 method 1 ("fixed bit-length dedicated counter"): the 12-bit
``rand_a`` field is a counter, seeded with 11 random bits (top bit 0, so a millisecond has at
least 2048 increments before it rolls over) whenever the millisecond changes, and incremented
for every further id in the same millisecond. When it overflows, or when the clock steps
backwards, the generator borrows the next millisecond instead of going back: ids never decrease.
The remaining 62 bits (``rand_b``) are random, so ids from two gateways do not collide.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Final

__all__ = ["EventIdGenerator", "new_event_id", "uuid7_time_ms"]

_MAX_MS: Final = (1 << 48) - 1
_COUNTER_MAX: Final = (1 << 12) - 1
_SEED_MASK: Final = (1 << 11) - 1
_RAND_B_MASK: Final = (1 << 62) - 1
_VERSION: Final = 0x7
_VARIANT: Final = 0b10


class EventIdGenerator:
    """UUIDv7 generator with explicit state: deterministic given the clock and random inputs.

    Thread-safe: the store's writer thread and the event loop may both draw ids.
    """

    __slots__ = ("_counter", "_last_ms", "_lock")

    def __init__(self) -> None:
        self._last_ms = -1
        self._counter = 0
        self._lock = threading.Lock()

    def next(self, now_ms: int | None = None, rand: Callable[[int], bytes] = os.urandom) -> str:
        """The next id, greater than every id this generator returned before."""
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        if not 0 <= now_ms <= _MAX_MS:
            raise ValueError(f"now_ms {now_ms} does not fit UUIDv7's 48-bit timestamp")
        random = int.from_bytes(rand(10), "big")
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                self._counter = random & _SEED_MASK
            elif self._counter < _COUNTER_MAX:
                # Same millisecond, or the clock stepped back: count on from the last id.
                self._counter += 1
            else:
                # 4096 ids in one millisecond: borrow the next one rather than repeat a value.
                if self._last_ms >= _MAX_MS:
                    raise ValueError("UUIDv7 timestamp space exhausted")
                self._last_ms += 1
                self._counter = random & _SEED_MASK
            ms, counter = self._last_ms, self._counter
        rand_b = (random >> 16) & _RAND_B_MASK
        value = (ms << 80) | (_VERSION << 76) | (counter << 64) | (_VARIANT << 62) | rand_b
        return str(uuid.UUID(int=value))


_DEFAULT: Final = EventIdGenerator()


def new_event_id(now_ms: int | None = None, rand: Callable[[int], bytes] = os.urandom) -> str:
    """A new UUIDv7 string from the process-wide generator (monotonic within the process)."""
    return _DEFAULT.next(now_ms, rand)


def uuid7_time_ms(event_id: str) -> int:
    """The Unix time in milliseconds embedded in a UUIDv7 string; ValueError if it is not one."""
    value = uuid.UUID(event_id)
    if value.version != _VERSION:
        raise ValueError(f"{event_id} is not a UUIDv7")
    return value.int >> 80
