"""Fragmentation and reassembly: any MTU, any order, duplicates, interleaving, and loss."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.errors import DecodeError
from gatewayd.protocol.fragments import FrameDecoder, Reassembler, chunk_size, fragment
from gatewayd.protocol.messages import Summary, Window, encode_message
from gatewayd.protocol.sequencing import Delivered, Gap, Sequencer
from tests.strategies import messages, mtus, u32


def test_chunk_sizes() -> None:
    assert chunk_size(23) == 16
    assert chunk_size(247) == 240
    with pytest.raises(ValueError, match="MTU"):
        chunk_size(22)
    with pytest.raises(ValueError, match="MTU"):
        chunk_size(518)


def test_default_window_fragment_counts() -> None:
    message = bytes(2604)
    assert len(fragment(message, 1, 247)) == 11
    assert len(fragment(message, 1, 23)) == 163
    assert all(len(f) <= 244 for f in fragment(message, 1, 247))


def test_too_long_or_too_many_fragments() -> None:
    with pytest.raises(ValueError, match="exceeds 4080"):
        fragment(bytes(4081), 0, 247)
    assert len(fragment(bytes(4080), 0, 23)) == 255


@given(msg=messages(), mtu=mtus, data=st.data())
def test_round_trip_any_fragmentation_and_order(
    msg: Summary | Window, mtu: int, data: st.DataObject
) -> None:
    raw = encode_message(msg)
    frags = fragment(raw, msg.seq, mtu)
    order = data.draw(st.permutations(frags))
    dupes = data.draw(st.lists(st.sampled_from(frags), max_size=5))
    decoder = FrameDecoder()
    out = [m for f in [*order, *dupes] if (m := decoder.feed(f, now=0.0)) is not None]
    assert out == [msg]
    assert decoder.reassembler.pending == 0
    assert decoder.reassembler.stats.duplicates + decoder.reassembler.stats.late_duplicates == len(
        dupes
    )


@settings(max_examples=60)
@given(
    first=u32,
    batch=st.lists(messages(seq=0), min_size=1, max_size=8),
    mtu=mtus,
    data=st.data(),
)
def test_interleaved_messages_each_arrive_once(
    first: int, batch: list[Summary | Window], mtu: int, data: st.DataObject
) -> None:
    # Up to 8 messages in flight at once (the reassembler's bound), fragments fully interleaved.
    msgs = [_with_seq(m, (first + i) % 2**32) for i, m in enumerate(batch)]
    frags = [f for m in msgs for f in fragment(encode_message(m), m.seq, mtu)]
    order = data.draw(st.permutations(frags))
    decoder = FrameDecoder()
    # Arrival order is scrambled; the sequencer, told where the stream starts, restores it.
    seq = Sequencer(start=first)
    delivered = []
    for f in order:
        m = decoder.feed(f, now=0.0)
        if m is not None:
            delivered += [e.message for e in seq.push(m, now=0.0) if isinstance(e, Delivered)]
    assert delivered == msgs


@settings(max_examples=60)
@given(
    n=st.integers(3, 30),
    lost=st.data(),
    mtu=st.sampled_from([23, 185, 247]),
)
def test_loss_leaves_a_detectable_gap(n: int, lost: st.DataObject, mtu: int) -> None:
    msgs = [_summary(i) for i in range(n)]
    dropped = lost.draw(st.sets(st.integers(1, n - 2), min_size=1, max_size=n - 2))
    decoder = FrameDecoder()
    seq = Sequencer(gap_timeout_s=5.0)
    events = []
    now = 0.0
    for m in msgs:
        frags = fragment(encode_message(m), m.seq, mtu)
        if m.seq in dropped:
            frags = frags[:-1]  # one fragment lost is the whole message lost
        for f in frags:
            now += 0.01
            got = decoder.feed(f, now)
            if got is not None:
                events += seq.push(got, now)
    events += seq.expire(now + 10.0)
    delivered = [e.message.seq for e in events if isinstance(e, Delivered)]
    gaps = {x for e in events if isinstance(e, Gap) for x in range(e.first, e.first + e.count)}
    assert delivered == [i for i in range(n) if i not in dropped]
    assert gaps == dropped
    decoder.reassembler.expire(now + 10.0)
    assert decoder.reassembler.pending == 0  # half-received messages do not linger


def test_partial_is_bounded_and_expires() -> None:
    r = Reassembler(max_partial=8, timeout_s=5.0)
    for tag in range(20):
        assert r.feed(fragment(bytes(100), tag, 23)[0], now=0.0) is None
    assert r.pending == 8
    assert r.stats.evicted == 12
    assert r.expire(5.01) == 8
    assert r.pending == 0


def test_late_duplicate_after_completion_is_dropped() -> None:
    r = Reassembler()
    frags = fragment(bytes(range(50)), 9, 23)
    results = [r.feed(f, 0.0) for f in frags]
    assert results[-1] == bytes(range(50))
    assert r.feed(frags[0], 0.1) is None
    assert r.pending == 0
    assert r.stats.late_duplicates == 1


@pytest.mark.parametrize(
    ("frag", "reason"),
    [
        (b"", "too_short"),
        (b"\x01\x00\x00\x01", "too_short"),
        (b"\x01\x00\x00\x00x", "bad_fragment"),
        (b"\x01\x00\x02\x02x", "bad_fragment"),
        (b"\x01\x00\x00\x01" + bytes(511), "too_long"),
    ],
)
def test_malformed_fragments(frag: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        Reassembler().feed(frag, 0.0)
    assert err.value.reason == reason


def test_inconsistent_fragments_discard_the_partial() -> None:
    r = Reassembler()
    r.feed(b"\x05\x00\x00\x03abc", 0.0)
    with pytest.raises(DecodeError) as err:
        r.feed(b"\x05\x00\x01\x04abc", 0.0)
    assert err.value.reason == "inconsistent_fragment"
    assert r.pending == 0
    r.feed(b"\x05\x00\x00\x03abc", 0.0)
    with pytest.raises(DecodeError) as err:
        r.feed(b"\x05\x00\x00\x03abd", 0.0)
    assert err.value.reason == "inconsistent_fragment"


def test_oversized_message_is_refused() -> None:
    r = Reassembler(max_message=100)
    r.feed(b"\x05\x00\x00\x03" + bytes(60), 0.0)
    with pytest.raises(DecodeError) as err:
        r.feed(b"\x05\x00\x01\x03" + bytes(60), 0.0)
    assert err.value.reason == "too_long"


def test_tag_mismatch_and_bad_crc_are_counted() -> None:
    raw = encode_message(_summary(5))
    decoder = FrameDecoder()
    (only,) = fragment(raw, 6, 247)
    with pytest.raises(DecodeError) as err:
        decoder.feed(only, 0.0)
    assert err.value.reason == "tag_mismatch"
    with pytest.raises(DecodeError) as err:
        decoder.feed(fragment(raw[:-1] + b"\0", 7, 247)[0], 0.0)
    assert err.value.reason == "bad_crc"
    assert decoder.rejected == {"tag_mismatch": 1, "bad_crc": 1}


def _summary(seq: int) -> Summary:
    return Summary(seq, 1000 * seq, 0, 1, 0, 9000, 3000, 7000, 90, 80)  # type: ignore[arg-type]


def _with_seq(m: Summary | Window, seq: int) -> Summary | Window:
    from dataclasses import replace

    if isinstance(m, Window):
        return replace(m, summary=replace(m.summary, seq=seq))
    return replace(m, seq=seq)


def test_a_corrupted_message_does_not_block_its_resend() -> None:
    raw = encode_message(_summary(5))
    decoder = FrameDecoder()
    *head, last = fragment(raw[:-1] + bytes([raw[-1] ^ 1]), 5, 23)
    assert [decoder.feed(f, 0.0) for f in head] == [None] * len(head)
    with pytest.raises(DecodeError, match="bad_crc"):
        decoder.feed(last, 0.0)
    good = [decoder.feed(f, 0.1) for f in fragment(raw, 5, 23)]
    assert good[-1] == _summary(5)
