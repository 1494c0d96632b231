"""`Lanes`: FIFO per key, served round-robin (pure)."""

from __future__ import annotations

import pytest

from gatewayd.lanes import Lanes


def filled() -> Lanes[str, int]:
    lanes: Lanes[str, int] = Lanes()
    for key, item in (("a", 1), ("a", 2), ("b", 3), ("c", 4), ("c", 5), ("a", 6)):
        lanes.append(key, item)
    return lanes


def test_popleft_serves_each_key_in_turn_and_each_keys_items_in_order() -> None:
    lanes = filled()
    assert [lanes.popleft() for _ in range(len(lanes))] == [
        ("a", 1), ("b", 3), ("c", 4), ("a", 2), ("c", 5), ("a", 6),
    ]  # fmt: skip
    assert not lanes


def test_heads_are_each_keys_oldest_in_turn_order() -> None:
    lanes = filled()
    assert list(lanes.heads(10)) == [("a", 1), ("b", 3), ("c", 4)]
    assert list(lanes.heads(2)) == [("a", 1), ("b", 3)]
    lanes.popleft()
    assert list(lanes.heads(10)) == [("b", 3), ("c", 4), ("a", 2)]


def test_pop_out_of_turn_sends_that_key_to_the_back_and_keeps_the_others_places() -> None:
    lanes = filled()
    assert lanes.pop("c") == 4
    assert list(lanes.heads(10)) == [("a", 1), ("b", 3), ("c", 5)]
    assert lanes.pop("b") == 3  # its last: the key is gone
    assert list(lanes.heads(10)) == [("a", 1), ("c", 5)]
    assert lanes.count("b") == 0
    assert lanes.pop("a") == 1  # the key whose turn it was
    assert list(lanes.heads(10)) == [("c", 5), ("a", 2)]
    assert len(lanes) == 3
    with pytest.raises(KeyError):
        lanes.pop("b")
