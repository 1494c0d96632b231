"""`settle_heap`: what is alive at start-up leaves the collector's generations."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from gatewayd.lifecycle import LOOP_SWITCH_INTERVAL_S, favour_the_loop, settle_heap


class Node:
    def __init__(self) -> None:
        self.peer: Node | None = None


def test_settle_heap_freezes_what_is_alive_and_collects_what_is_not() -> None:
    kept = [Node() for _ in range(100)]
    lost = Node()
    lost.peer = Node()
    lost.peer.peer = lost  # a cycle nothing refers to: garbage for the collector only
    lost_ref = weakref.ref(lost)
    del lost
    try:
        assert settle_heap() > 0
        tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert not any(id(node) in tracked for node in kept)  # frozen: no longer walked
        assert lost_ref() is None  # collected before the freeze, not frozen with the rest
        made_after = [Node()]
        assert id(made_after) in {id(o) for o in gc.get_objects(0)}
    finally:
        gc.unfreeze()


def test_favour_the_loop_shortens_the_gils_switch_interval() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # Python's default (another test may have changed it)
        favour_the_loop()
        assert sys.getswitchinterval() == pytest.approx(LOOP_SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)
