"""Per-key FIFO lanes served round-robin: one key's backlog never delays another key (pure).

The link's event queue, the pipeline's intake and the publisher's telemetry queue hold the items
of many devices. In one FIFO a device that floods puts its whole backlog ahead of every other
device; in `Lanes` each key (device) has its own FIFO and `popleft` takes the oldest item of each
key in turn, so an item waits behind at most one item of every other key with a backlog, and
each key's items still come out in the order they went in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from itertools import islice
from typing import Generic, TypeVar

__all__ = ["Lanes"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Lanes(Generic[K, T]):
    """FIFO per key; `popleft` serves the keys with items in turn (round-robin)."""

    def __init__(self) -> None:
        self._lanes: dict[K, deque[T]] = {}
        #: Keys with items, in the order they are served next.
        self._turn: deque[K] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """Every item, lane by lane (not in service order)."""
        for lane in self._lanes.values():
            yield from lane

    def append(self, key: K, item: T) -> int:
        """Queue ``item`` at the end of ``key``'s lane; return the lane's new length."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
            self._turn.append(key)
        lane.append(item)
        self._size += 1
        return len(lane)

    def lane(self, key: K) -> deque[T] | None:
        """``key``'s items, oldest first (None if it has none); do not empty it from outside."""
        return self._lanes.get(key)

    def count(self, key: K) -> int:
        """How many items ``key`` has waiting."""
        lane = self._lanes.get(key)
        return 0 if lane is None else len(lane)

    def keys(self) -> int:
        """How many keys have items waiting."""
        return len(self._lanes)

    def next_key(self) -> K:
        """The key `popleft` serves next; IndexError when empty."""
        return self._turn[0]

    def popleft(self) -> tuple[K, T]:
        """The oldest item of the key whose turn it is (IndexError when empty); the key goes to
        the back of the turn if it has more."""
        key = self._turn.popleft()
        lane = self._lanes[key]
        item = lane.popleft()
        if lane:
            self._turn.append(key)
        else:
            del self._lanes[key]
        self._size -= 1
        return key, item

    def heads(self, limit: int) -> Iterator[tuple[K, T]]:
        """The oldest item of each of the first ``limit`` keys in the order `popleft` serves
        them (do not change the lanes while iterating)."""
        for key in islice(self._turn, limit):
            yield key, self._lanes[key][0]

    def pop(self, key: K) -> T:
        """``key``'s oldest item, out of turn (KeyError if it has none): ``key`` goes to the back
        of the turn if it has more, as after `popleft`; the other keys keep their places."""
        lane = self._lanes[key]
        item = lane.popleft()
        if self._turn[0] == key:
            self._turn.popleft()
        else:
            self._turn.remove(key)
        if lane:
            self._turn.append(key)
        else:
            del self._lanes[key]
        self._size -= 1
        return item

    def drop_oldest(self, key: K) -> T:
        """Remove and return ``key``'s oldest item (KeyError if it has none)."""
        lane = self._lanes[key]
        item = lane.popleft()
        if not lane:
            del self._lanes[key]
            self._turn.remove(key)
        self._size -= 1
        return item

    def longest(self) -> K:
        """The key with the most items waiting (the first served of equals); ValueError if empty."""
        return max(self._turn, key=lambda k: len(self._lanes[k]))
