"""Sequencer: in order, exactly once, gaps reported, wrap-around and restarts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gatewayd.protocol.messages import MessageFlags, Summary
from gatewayd.protocol.sequencing import (
    Delivered,
    Duplicate,
    Gap,
    Jump,
    Restart,
    SequenceEvent,
    Sequencer,
    plausible_advance,
    seq_distance,
)


def s(seq: int) -> Summary:
    return Summary(seq % 2**32, 0, MessageFlags.NONE, 1, 0, 9000, 3000, 7000, 90, 80)


def delivered(events: list[SequenceEvent]) -> list[int]:
    return [e.message.seq for e in events if isinstance(e, Delivered)]


def test_seq_distance_wraps() -> None:
    assert seq_distance(0xFFFFFFFF, 0) == 1
    assert seq_distance(0, 0xFFFFFFFF) == -1
    assert seq_distance(5, 5) == 0
    assert seq_distance(10, 3) == -7


def test_in_order_and_duplicates() -> None:
    q = Sequencer()
    assert delivered(q.push(s(10), 0.0)) == [10]
    assert delivered(q.push(s(11), 0.0)) == [11]
    assert q.push(s(10), 0.0) == [Duplicate(10)]
    assert q.expected == 12


def test_gap_is_filled_by_resend() -> None:
    q = Sequencer()
    q.push(s(1), 0.0)
    assert q.push(s(4), 0.1) == []
    assert q.push(s(5), 0.2) == []
    assert q.missing() == [(2, 2)]
    assert q.push(s(5), 0.2) == [Duplicate(5)]
    assert delivered(q.push(s(3), 1.0)) == []
    assert q.missing() == [(2, 1)]
    assert delivered(q.push(s(2), 1.5)) == [2, 3, 4, 5]
    assert q.missing() == []


def test_gap_times_out_into_a_gap_event() -> None:
    q = Sequencer(gap_timeout_s=5.0)
    q.push(s(1), 0.0)
    q.push(s(3), 1.0)
    q.push(s(6), 2.0)
    assert q.expire(5.9) == []
    events = q.expire(6.0)
    assert events == [Gap(2, 1), Delivered(s(3))]
    # the second gap was discovered at t=2.0 (when 6 arrived), so it times out at 7.0
    assert q.expire(6.9) == []
    assert q.expire(7.0) == [Gap(4, 2), Delivered(s(6))]


def test_full_buffer_gives_up_the_oldest_gap() -> None:
    q = Sequencer(max_buffered=3)
    q.push(s(0), 0.0)
    for n in (2, 3, 4):
        assert q.push(s(n), 0.0) == []
    events = q.push(s(6), 0.0)
    assert events == [Gap(1, 1), Delivered(s(2)), Delivered(s(3)), Delivered(s(4))]
    assert q.missing() == [(5, 1)]


def test_wrap_around() -> None:
    q = Sequencer()
    q.push(s(0xFFFFFFFE), 0.0)
    assert delivered(q.push(s(0), 0.0)) == []
    assert delivered(q.push(s(0xFFFFFFFF), 0.0)) == [0xFFFFFFFF, 0]
    assert q.expected == 1


def test_far_backwards_is_a_restart() -> None:
    q = Sequencer(max_behind=100)
    q.push(s(50_000), 0.0)
    events = q.push(s(0), 1.0)
    assert events == [Restart(50_001, 0), Delivered(s(0))]
    assert q.push(s(1), 1.0) == [Delivered(s(1))]


@given(
    start=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    data=st.data(),
)
def test_any_bounded_reordering_with_duplicates_delivers_exactly_once_in_order(
    start: int, n: int, data: st.DataObject
) -> None:
    seqs = [(start + i) % 2**32 for i in range(n)]
    arrivals = data.draw(st.permutations(seqs))
    arrivals += data.draw(st.lists(st.sampled_from(seqs), max_size=10))
    q = Sequencer(start=start, max_buffered=64)
    out: list[int] = []
    for x in arrivals:
        out += delivered(q.push(s(x), 0.0))
    assert out == seqs
    assert q.held == 0


def test_announced_tail_loss_is_requested_and_then_reported() -> None:
    q = Sequencer(gap_timeout_s=5.0)
    q.push(s(1), 0.0)
    q.push(s(2), 0.0)
    q.announce(5, now=1.0)  # the device has produced 3 and 4 too
    assert q.missing() == [(3, 2)]
    assert q.push(s(3), 2.0) == [Delivered(s(3))]
    assert q.missing() == [(4, 1)]
    assert q.expire(5.9) == []
    assert q.expire(6.0) == [Gap(4, 1)]
    assert q.expected == 5
    assert q.missing() == []


def test_announce_sets_the_start_and_is_ignored_when_not_ahead() -> None:
    q = Sequencer()
    q.announce(100, 0.0)
    assert q.missing() == []
    assert q.push(s(101), 0.0) == []  # 100 is owed: it was produced after we started listening
    assert q.missing() == [(100, 1)]
    q.push(s(100), 0.0)
    q.announce(101, 0.0)
    q.announce(50, 0.0)
    assert q.missing() == []


def test_announce_beyond_held_messages() -> None:
    q = Sequencer()
    q.push(s(0), 0.0)
    q.push(s(2), 0.0)
    q.announce(5, 0.0)
    assert q.missing() == [(1, 1), (3, 2)]
    assert [e.message.seq for e in q.push(s(1), 0.0) if isinstance(e, Delivered)] == [1, 2]
    for n in (3, 4):
        q.push(s(n), 0.0)
    assert q.missing() == []
    assert q.expected == 5


def test_one_number_far_ahead_is_a_jump_not_billions_lost() -> None:
    q = Sequencer(max_rate_hz=1.0, jump_slack=100)
    assert delivered(q.push(s(0), 0.0)) == [0]
    events = q.push(s(1000), 1.0)  # 1 s after: at most 1 + 100 messages can be missing
    assert events == [Jump(1, 1000, 101), Delivered(s(1000))]
    assert not any(isinstance(e, Gap) for e in events)
    assert q.expected == 1001
    assert delivered(q.push(s(1001), 1.5)) == [1001]  # resynced: numbering goes on from there
    # the case that was measured: 2**31 - 1000 ahead reports no loss at all
    far = (1001 + 2**31 - 1000) % 2**32
    assert [type(e) for e in q.push(s(far), 2.0)] == [Jump, Delivered]
    assert [e for e in q.expire(1000.0) if isinstance(e, Gap)] == []


def test_the_jump_bound_grows_with_the_time_since_the_device_was_heard() -> None:
    assert plausible_advance(0.0, 1.0, 64) == 64
    assert plausible_advance(3600.0, 0.5, 64) == 1800 + 64
    assert plausible_advance(-5.0, 1.0, 0) == 0
    q = Sequencer(max_rate_hz=0.5, jump_slack=10, gap_timeout_s=5.0)
    q.push(s(0), 0.0)
    # an hour without hearing from it: 1000 missing messages are plausible, a real gap
    events = q.push(s(1001), 3600.0)
    assert events == []
    assert q.missing() == [(1, 1000)]
    assert q.expire(3605.0)[0] == Gap(1, 1000)


def test_held_messages_are_delivered_before_a_jump_resyncs() -> None:
    q = Sequencer(max_rate_hz=1.0, jump_slack=50)
    q.push(s(0), 0.0)
    assert q.push(s(3), 0.0) == []  # held behind the gap 1..2
    events = q.push(s(10_000), 0.5)
    assert events == [Gap(1, 2), Delivered(s(3)), Jump(4, 10_000, 51), Delivered(s(10_000))]


def test_an_implausible_announce_is_a_jump_too() -> None:
    q = Sequencer(max_rate_hz=1.0, jump_slack=10)
    q.announce(5, 0.0)
    assert q.announce(2**31, 1.0) == [Jump(5, 2**31, 11)]
    assert q.expected == 2**31
    assert q.missing() == []
    assert q.announce(2**31 + 5, 2.0) == []  # plausible: 5 missing, asked for
    assert q.missing() == [(2**31, 5)]
