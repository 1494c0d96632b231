"""Fragmentation to an ATT MTU and bounded reassembly (docs/protocol.md §3).

The reassembler is per device. It never holds more than ``max_partial`` unfinished messages of at
most ``max_message`` bytes each, so whatever a device sends, memory stays bounded.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final

from gatewayd.errors import DecodeError
from gatewayd.protocol.gatt import ATT_HEADER_SIZE, DEFAULT_MTU, MAX_MTU
from gatewayd.protocol.messages import MAX_MESSAGE_SIZE, Message, decode_message

_FRAGMENT_HEADER: Final = struct.Struct("<HBB")
FRAGMENT_HEADER_SIZE: Final = _FRAGMENT_HEADER.size
MAX_FRAGMENTS: Final = 255
#: The largest chunk a fragment can carry (MTU 517).
MAX_CHUNK: Final = MAX_MTU - ATT_HEADER_SIZE - FRAGMENT_HEADER_SIZE


def chunk_size(mtu: int) -> int:
    """Message bytes per fragment at this ATT MTU."""
    if not DEFAULT_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU {mtu} is outside {DEFAULT_MTU}..{MAX_MTU}")
    return mtu - ATT_HEADER_SIZE - FRAGMENT_HEADER_SIZE


def fragment(message: bytes, seq: int, mtu: int) -> list[bytes]:
    """Cut an encoded message into notification payloads for this MTU."""
    size = chunk_size(mtu)
    if not message:
        raise ValueError("cannot fragment an empty message")
    if len(message) > MAX_MESSAGE_SIZE:
        raise ValueError(f"a message of {len(message)} bytes exceeds {MAX_MESSAGE_SIZE}")
    count = -(-len(message) // size)
    if count > MAX_FRAGMENTS:
        raise ValueError(f"{len(message)} bytes need {count} fragments at MTU {mtu}; max is 255")
    tag = seq & 0xFFFF
    return [
        _FRAGMENT_HEADER.pack(tag, index, count) + message[index * size : (index + 1) * size]
        for index in range(count)
    ]


@dataclass
class ReassemblyStats:
    """Counters a link reports; every dropped fragment lands in exactly one of them."""

    fragments: int = 0
    messages: int = 0
    duplicates: int = 0
    late_duplicates: int = 0
    evicted: int = 0
    expired: int = 0
    rejected: int = 0


@dataclass
class _Partial:
    count: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects fragments of one device's messages, in any order, interleaved and duplicated."""

    def __init__(
        self,
        *,
        max_partial: int = 8,
        timeout_s: float = 5.0,
        max_message: int = MAX_MESSAGE_SIZE,
        recent: int = 64,
    ) -> None:
        self.max_partial = max_partial
        self.timeout_s = timeout_s
        self.max_message = max_message
        self.stats = ReassemblyStats()
        self._partials: OrderedDict[int, _Partial] = OrderedDict()
        self._recent: deque[int] = deque(maxlen=recent)

    @property
    def pending(self) -> int:
        """Unfinished messages held now."""
        return len(self._partials)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of unfinished messages held now."""
        return sum(p.size for p in self._partials.values())

    def forget(self, tag: int) -> None:
        """Do not treat ``tag`` as complete: its message failed to decode, a resend may follow."""
        if tag in self._recent:
            self._recent.remove(tag)

    def reset(self) -> None:
        """Forget every unfinished message (on disconnect)."""
        self._partials.clear()
        self._recent.clear()

    def expire(self, now: float) -> int:
        """Drop unfinished messages older than the timeout; return how many were dropped."""
        stale = [tag for tag, p in self._partials.items() if now - p.started > self.timeout_s]
        for tag in stale:
            del self._partials[tag]
        self.stats.expired += len(stale)
        return len(stale)

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> bytes | None:
        """Add one fragment; return the whole message when this fragment completes it."""
        self.stats.fragments += 1
        self.expire(now)
        try:
            return self._feed(bytes(data), now)
        except DecodeError:
            self.stats.rejected += 1
            raise

    def _feed(self, frag: bytes, now: float) -> bytes | None:
        if len(frag) <= FRAGMENT_HEADER_SIZE:
            raise DecodeError(
                "too_short", f"fragment of {len(frag)} bytes; it needs a 4-byte header and data"
            )
        if len(frag) - FRAGMENT_HEADER_SIZE > MAX_CHUNK:
            raise DecodeError("too_long", f"fragment of {len(frag)} bytes exceeds MTU {MAX_MTU}")
        tag, index, count = _FRAGMENT_HEADER.unpack_from(frag)
        if count == 0 or index >= count:
            raise DecodeError("bad_fragment", f"fragment index {index} of count {count}")
        chunk = frag[FRAGMENT_HEADER_SIZE:]
        partial = self._partials.get(tag)
        if partial is None:
            if tag in self._recent:
                self.stats.late_duplicates += 1
                return None
            partial = self._start(tag, count, now)
        elif partial.count != count:
            del self._partials[tag]
            raise DecodeError(
                "inconsistent_fragment",
                f"tag {tag:#06x}: count {count} disagrees with earlier {partial.count}",
            )
        previous = partial.chunks.get(index)
        if previous is not None:
            if previous != chunk:
                del self._partials[tag]
                raise DecodeError(
                    "inconsistent_fragment", f"tag {tag:#06x}: two different copies of {index}"
                )
            self.stats.duplicates += 1
            return None
        if partial.size + len(chunk) > self.max_message:
            del self._partials[tag]
            raise DecodeError(
                "too_long", f"tag {tag:#06x}: message exceeds {self.max_message} bytes"
            )
        partial.chunks[index] = chunk
        partial.size += len(chunk)
        if len(partial.chunks) < partial.count:
            return None
        del self._partials[tag]
        self._recent.append(tag)
        self.stats.messages += 1
        return b"".join(partial.chunks[i] for i in range(partial.count))

    def _start(self, tag: int, count: int, now: float) -> _Partial:
        if len(self._partials) >= self.max_partial:
            self._partials.popitem(last=False)
            self.stats.evicted += 1
        partial = _Partial(count=count, started=now)
        self._partials[tag] = partial
        return partial


class FrameDecoder:
    """Fragments in, decoded messages out: a Reassembler followed by decode_message."""

    def __init__(self, reassembler: Reassembler | None = None) -> None:
        self.reassembler = reassembler if reassembler is not None else Reassembler()
        #: Rejections by DecodeError reason, fragments and whole messages alike.
        self.rejected: Counter[str] = Counter()

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> Message | None:
        """Add one fragment; return the decoded message it completes, if any."""
        try:
            raw = self.reassembler.feed(data, now)
        except DecodeError as exc:
            self.rejected[exc.reason] += 1
            raise
        if raw is None:
            return None
        (tag,) = struct.unpack_from("<H", data)
        try:
            message = decode_message(raw)
            _check_tag(tag, message)
        except DecodeError as exc:
            # A corrupted message must not block its retransmission as a "late duplicate".
            self.reassembler.forget(tag)
            self.rejected[exc.reason] += 1
            raise
        return message


def _check_tag(tag: int, message: Message) -> None:
    if message.seq & 0xFFFF != tag:
        raise DecodeError(
            "tag_mismatch", f"fragment tag {tag:#06x} but message seq {message.seq:#010x}"
        )
