"""The per-device protocol state machine: fragments in, ordered events and resend requests out.

Pure: no bleak, no asyncio, no clock. The connection task (link/connection.py) feeds it the
notifications and the time, sends the RESEND commands it asks for, and forwards its events.
It outlives connections, so a gap opened by a link drop is recovered from the wearable's ring
after the reconnect.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gatewayd.errors import DecodeError
from gatewayd.protocol.control import MAX_RESEND, DeviceInfo, Resend
from gatewayd.protocol.fragments import FrameDecoder, Reassembler
from gatewayd.protocol.sequencing import (
    SEQ_MODULUS,
    Delivered,
    Duplicate,
    Gap,
    Restart,
    SequenceEvent,
    Sequencer,
)

from .events import DeviceRestarted, FrameReceived, LinkEvent, MessagesLost


@dataclass
class StreamStats:
    """Counters for one device since the gateway started."""

    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    resend_requests: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass
class _Request:
    first: int
    count: int
    last_sent: float
    tries: int


class DeviceStream:
    """Reassembly, decoding, ordering and gap recovery for one wearable."""

    def __init__(
        self,
        device_id: str,
        *,
        gap_timeout_s: float = 5.0,
        resend_interval_s: float = 1.0,
        fragment_timeout_s: float = 5.0,
    ) -> None:
        self.device_id = device_id
        self.resend_interval_s = resend_interval_s
        self.stats = StreamStats()
        self._fragment_timeout_s = fragment_timeout_s
        self._decoder = FrameDecoder(Reassembler(timeout_s=fragment_timeout_s))
        self._sequencer = Sequencer(gap_timeout_s=gap_timeout_s)
        self._boot_id: int | None = None
        self._requests: dict[int, _Request] = {}
        self.last_error: DecodeError | None = None
        #: Set on malformed input: the link should read the info characteristic, whose
        #: ``next_seq`` reveals a message lost at the end of the stream.
        self.wants_info = False

    @property
    def expected_seq(self) -> int | None:
        """The next sequence number to deliver, once known."""
        return self._sequencer.expected

    @property
    def decoder(self) -> FrameDecoder:
        """The reassembler and decoder (for their counters)."""
        return self._decoder

    def on_info(self, info: DeviceInfo, now: float) -> list[LinkEvent]:
        """The info characteristic, read at connect or on request.

        A changed boot id means the numbering starts again; ``next_seq`` shows what exists.
        """
        self.wants_info = False
        events: list[LinkEvent] = []
        if self._boot_id is not None and info.boot_id != self._boot_id:
            self._sequencer.reset()
            self._requests.clear()
            events.append(DeviceRestarted(self.device_id, None))
        self._boot_id = info.boot_id
        self._sequencer.announce(info.next_seq, now)
        # A request sent just before a link drop was probably lost with it: ask again at once.
        for req in self._requests.values():
            req.last_sent = float("-inf")
        return events

    def on_disconnected(self) -> None:
        """Half-received messages die with the connection; ordering state survives it."""
        self._decoder = FrameDecoder(Reassembler(timeout_s=self._fragment_timeout_s))

    def on_fragment(self, data: bytes | bytearray, now: float, wall: float) -> list[LinkEvent]:
        """One notification. Malformed input is counted (``last_error`` says why), never raised."""
        try:
            message = self._decoder.feed(data, now)
        except DecodeError as exc:
            self.stats.rejected[exc.reason] += 1
            self.last_error = exc
            self.wants_info = True
            return []
        if message is None:
            return []
        return self._translate(self._sequencer.push(message, now), wall)

    def tick(self, now: float, wall: float) -> list[LinkEvent]:
        """Time passes: expire stale fragments and give up gaps that were not filled."""
        self._decoder.reassembler.expire(now)
        return self._translate(self._sequencer.expire(now), wall)

    def resend_requests(self, now: float) -> list[Resend]:
        """RESEND commands to send now: new gaps at once, open ones again every interval.

        Asking stops when the sequencer gives the gap up (its timeout) or it is filled.
        """
        out: list[Resend] = []
        open_gaps = self._sequencer.missing()
        still_open = {first for first, _ in open_gaps}
        self._requests = {k: v for k, v in self._requests.items() if k in still_open}
        for first, count in open_gaps:
            req = self._requests.get(first)
            if req is None or req.count != count:
                req = _Request(first, count, last_sent=float("-inf"), tries=0)
                self._requests[first] = req
            if now - req.last_sent < self.resend_interval_s:
                continue
            req.tries += 1
            req.last_sent = now
            # The wearable keeps a bounded ring: ask for the newest MAX_RESEND of a long gap.
            ask = min(count, MAX_RESEND)
            start = (first + count - ask) % SEQ_MODULUS
            out.append(Resend(start, ask))
            self.stats.resend_requests += 1
        return out

    def _translate(self, events: list[SequenceEvent], wall: float) -> list[LinkEvent]:
        out: list[LinkEvent] = []
        for e in events:
            match e:
                case Delivered(message):
                    self.stats.delivered += 1
                    out.append(FrameReceived(self.device_id, message, wall))
                case Gap(first, count):
                    self.stats.lost += count
                    out.append(MessagesLost(self.device_id, first, count))
                case Duplicate():
                    self.stats.duplicates += 1
                case Restart(_, seq):
                    self._requests.clear()
                    out.append(DeviceRestarted(self.device_id, seq))
        return out
