"""Per-device ordering: exactly once, in seq order, with every loss reported (docs/protocol.md §4).

Sequence numbers are u32 and wrap; comparisons use serial-number arithmetic (RFC 1982).

A number far ahead of the expected one is not a loss of billions: a device produces at most
``max_rate_hz`` messages a second, so since it was last heard from (or since the start point was
set) at most ``elapsed * max_rate_hz + jump_slack`` messages can be missing
(:func:`plausible_advance`). Anything beyond that is a :class:`Jump`: the sequencer resyncs at
the new number and reports no loss for the numbers it skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from gatewayd.protocol.messages import Message

SEQ_MODULUS: Final = 1 << 32
_HALF: Final = 1 << 31
#: A wearable sends one message per 2 s window step; twice that is the most it may produce.
DEFAULT_MAX_RATE_HZ: Final = 1.0
#: Messages a device may legitimately be ahead beyond ``elapsed * max_rate_hz``: its resend ring
#: (at most 256, the largest RESEND) and bursts, with a wide margin.
DEFAULT_JUMP_SLACK: Final = 1024


def seq_distance(a: int, b: int) -> int:
    """Signed distance from ``a`` to ``b`` on the u32 circle: positive when b is ahead of a."""
    d = (b - a) % SEQ_MODULUS
    return d - SEQ_MODULUS if d >= _HALF else d


def plausible_advance(elapsed_s: float, max_rate_hz: float, slack: int) -> int:
    """The most messages a device can have produced in ``elapsed_s`` seconds, plus ``slack``."""
    return math.ceil(max(0.0, elapsed_s) * max_rate_hz) + slack


@dataclass(frozen=True, slots=True)
class Delivered:
    """The next message, in order."""

    message: Message


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``first`` .. ``first + count - 1`` (mod 2**32) were given up as lost."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A message already delivered (or already buffered) came again and was dropped."""

    seq: int


@dataclass(frozen=True, slots=True)
class Restart:
    """The device's numbering jumped far backwards (it rebooted): ordering starts again at seq."""

    previous_expected: int
    seq: int


@dataclass(frozen=True, slots=True)
class Jump:
    """The numbering jumped further ahead than the device could have produced: resynced at ``seq``.

    The numbers skipped are not reported lost (they never existed as far as anyone can tell);
    ``bound`` is the most that was plausible when it happened.
    """

    expected: int
    seq: int
    bound: int


SequenceEvent = Delivered | Gap | Duplicate | Restart | Jump


class Sequencer:
    """Turns messages in arrival order into events in sequence order.

    A message ahead of the expected one is held (at most ``max_buffered``) while the gap before it
    may still be filled by a resend; after ``gap_timeout_s``, or when the buffer is full, the gap is
    declared lost with a :class:`Gap` event and delivery goes on. A message more than
    ``max_behind`` behind is taken as a device restart rather than a duplicate. A message (or an
    announced ``next_seq``) further ahead than :func:`plausible_advance` allows since the device
    was last heard from is a :class:`Jump`.
    """

    def __init__(
        self,
        *,
        start: int | None = None,
        max_buffered: int = 64,
        gap_timeout_s: float = 5.0,
        max_behind: int = 4096,
        max_rate_hz: float = DEFAULT_MAX_RATE_HZ,
        jump_slack: int = DEFAULT_JUMP_SLACK,
    ) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.max_buffered = max_buffered
        self.gap_timeout_s = gap_timeout_s
        self.max_behind = max_behind
        #: The next seq to deliver; None until the first message (or ``start``) sets it.
        self.expected: int | None = start
        # seq -> (message, arrival time); every key is ahead of `expected`.
        self._held: dict[int, tuple[Message, float]] = {}
        # Messages before `_horizon` exist (the device said so); since when we know it.
        self._horizon: int | None = None
        self._horizon_since = 0.0
        self.max_rate_hz = max_rate_hz
        self.jump_slack = jump_slack
        # When the device was last heard from (a message or an announce); None: no bound yet.
        self._heard_at: float | None = None

    @property
    def held(self) -> int:
        """Messages waiting behind a gap."""
        return len(self._held)

    def reset(self) -> None:
        """Forget the numbering (new connection to a rebooted device). Held messages are lost."""
        self.expected = None
        self._held.clear()
        self._horizon = None
        self._heard_at = None

    def start_at(self, seq: int, heard_at: float | None) -> None:
        """Expect ``seq`` next, as of ``heard_at`` (a resume point; None: no jump bound yet)."""
        self.reset()
        self.expected = seq
        self._heard_at = heard_at

    def bound(self, now: float) -> int | None:
        """How far ahead of the expected number the device may plausibly be now (None: unknown)."""
        if self._heard_at is None:
            return None
        return plausible_advance(now - self._heard_at, self.max_rate_hz, self.jump_slack)

    def announce(self, next_seq: int, now: float) -> list[SequenceEvent]:
        """The device says its next message will be ``next_seq``: all before it exist.

        Messages between the expected one and ``next_seq`` that never arrived are then missing,
        even when no later message has come to show the gap. Before the first message it sets
        the start: what came before the gateway listened is not owed to it, all after it is.
        An implausible ``next_seq`` is a :class:`Jump` (the held messages are delivered first).
        """
        if self.expected is None:
            self.expected = next_seq
            self._heard_at = now
            return []
        d = seq_distance(self.expected, next_seq)
        bound = self.bound(now)
        self._heard_at = now
        if d <= 0:
            return []
        if bound is not None and d > bound:
            return self._jump(next_seq, bound)
        if self._horizon is None or seq_distance(self._horizon, next_seq) > 0:
            self._horizon = next_seq
            self._horizon_since = now
        return []

    def _jump(self, seq: int, bound: int) -> list[SequenceEvent]:
        """Deliver what is held (reporting holes between them), then resync at ``seq``."""
        events: list[SequenceEvent] = []
        while self._held:
            events.extend(self._give_up_first_gap())
        assert self.expected is not None
        events.append(Jump(self.expected, seq, bound))
        self.expected = seq
        self._horizon = None
        return events

    def _open_horizon(self) -> int:
        """How many announced messages lie beyond everything held (0 when none)."""
        if self._horizon is None or self.expected is None:
            return 0
        last = self.expected
        if self._held:
            last = (self._held_in_order()[-1] + 1) % SEQ_MODULUS
        return max(0, seq_distance(last, self._horizon))

    def missing(self) -> list[tuple[int, int]]:
        """The open gaps as (first seq, count), oldest first: what to ask the device to resend."""
        if self.expected is None:
            return []
        gaps: list[tuple[int, int]] = []
        cursor = self.expected
        for seq in self._held_in_order():
            d = seq_distance(cursor, seq)
            if d > 0:
                gaps.append((cursor, d))
            cursor = (seq + 1) % SEQ_MODULUS
        if tail := self._open_horizon():
            gaps.append((cursor, tail))
        return gaps

    def push(self, message: Message, now: float) -> list[SequenceEvent]:
        """Accept one message; return what can be delivered or reported now."""
        seq = message.seq
        if self.expected is None:
            self.expected = seq
        d = seq_distance(self.expected, seq)
        bound = self.bound(now)
        self._heard_at = now
        if bound is not None and d > bound:
            return [*self._jump(seq, bound), *self._deliver(message)]
        if d < -self.max_behind:
            restart = Restart(self.expected, seq)
            self._held.clear()
            self.expected = seq
            return [restart, *self._deliver(message)]
        if d < 0 or seq in self._held:
            return [Duplicate(seq)]
        if d == 0:
            return self._deliver(message)
        self._held[seq] = (message, now)
        if len(self._held) > self.max_buffered:
            return self._give_up_first_gap()
        return self.expire(now)

    def expire(self, now: float) -> list[SequenceEvent]:
        """Give up gaps older than the timeout; return the events that follows."""
        events: list[SequenceEvent] = []
        while self._held and now - min(t for _, t in self._held.values()) >= self.gap_timeout_s:
            events.extend(self._give_up_first_gap())
        if (
            not self._held
            and (tail := self._open_horizon())
            and now - self._horizon_since >= self.gap_timeout_s
        ):
            assert self.expected is not None
            assert self._horizon is not None
            events.append(Gap(self.expected, tail))
            self.expected = self._horizon
            self._horizon = None
        return events

    def _held_in_order(self) -> list[int]:
        assert self.expected is not None
        base = self.expected
        return sorted(self._held, key=lambda s: seq_distance(base, s))

    def _give_up_first_gap(self) -> list[SequenceEvent]:
        assert self.expected is not None
        first_held = self._held_in_order()[0]
        gap = Gap(self.expected, seq_distance(self.expected, first_held))
        message, _ = self._held.pop(first_held)
        self.expected = first_held
        return [gap, *self._deliver(message)]

    def _deliver(self, message: Message) -> list[SequenceEvent]:
        events: list[SequenceEvent] = [Delivered(message)]
        nxt = (message.seq + 1) % SEQ_MODULUS
        while nxt in self._held:
            events.append(Delivered(self._held.pop(nxt)[0]))
            nxt = (nxt + 1) % SEQ_MODULUS
        self.expected = nxt
        if self._horizon is not None and seq_distance(nxt, self._horizon) <= 0:
            self._horizon = None
        return events
