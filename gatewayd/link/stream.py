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
    DEFAULT_JUMP_SLACK,
    DEFAULT_MAX_RATE_HZ,
    SEQ_MODULUS,
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

from .events import (
    DeviceRestarted,
    DeviceUntrusted,
    FrameReceived,
    LinkEvent,
    MessagesLost,
    ResumePoint,
    SequenceJump,
)

#: How long ago a resume point without ``heard_at`` is assumed to have been written (seconds).
UNKNOWN_RESUME_AGE_S = 86_400.0


def hardware_profile(info: DeviceInfo) -> str:
    """What identifies a wearable's hardware model: its sensors' rates, scale and sample format.

    Firmware version, model id (the local ML model), policy and pruning may change legitimately
    (an update, backpressure); the sensors do not.
    """
    return (
        f"bvp{info.bvp_rate_hz}-acc{info.acc_rate_hz}-lsb{info.acc_lsb_per_g}"
        f"-{info.sample_format.name.lower()}"
    )


@dataclass
class StreamStats:
    """Counters for one device since the gateway started."""

    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    resend_requests: int = 0
    #: Control writes the device answered with an ATT error (docs/protocol.md §6.1).
    rejected_commands: int = 0
    jumps: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Asked:
    """A RESEND sent at ``sent_at``: seqs ``first`` .. ``first + count - 1``."""

    first: int
    count: int
    sent_at: float

    def covers(self, first: int, count: int) -> bool:
        """Whether ``first`` .. ``first + count - 1`` lies within this request."""
        start = seq_distance(self.first, first)
        return start >= 0 and start + count <= self.count


class DeviceStream:
    """Reassembly, decoding, ordering and gap recovery for one wearable."""

    def __init__(
        self,
        device_id: str,
        *,
        gap_timeout_s: float = 5.0,
        resend_interval_s: float = 1.0,
        fragment_timeout_s: float = 5.0,
        resume: ResumePoint | None = None,
        profile: str | None = None,
        max_rate_hz: float = DEFAULT_MAX_RATE_HZ,
        jump_slack: int = DEFAULT_JUMP_SLACK,
    ) -> None:
        """``resume``: where a previous run stopped (asked from the ring at the first info).

        ``profile``: the :func:`hardware_profile` recorded at pairing; without one the first info
        seen sets it.
        """
        self.device_id = device_id
        self.resend_interval_s = resend_interval_s
        self.stats = StreamStats()
        self.resume = resume
        self.profile = profile
        #: Set (and kept) when the device is not the one that was paired: nothing more is
        #: delivered from it by this stream.
        self.untrusted: DeviceUntrusted | None = None
        self._fragment_timeout_s = fragment_timeout_s
        self._decoder = FrameDecoder(Reassembler(timeout_s=fragment_timeout_s))
        self._sequencer = Sequencer(
            gap_timeout_s=gap_timeout_s, max_rate_hz=max_rate_hz, jump_slack=jump_slack
        )
        self._max_rate_hz = max_rate_hz
        self._jump_slack = jump_slack
        self._boot_id: int | None = None
        #: RESENDs sent within the last interval: a gap inside one of them is being answered.
        self._asked: list[_Asked] = []
        self._last_error: DecodeError | None = None
        self._wants_info = False

    @property
    def wants_info(self) -> bool:
        """Malformed input was seen: the link should read the info characteristic, whose
        ``next_seq`` reveals a message lost at the end of the stream."""
        return self._wants_info

    def reject(self, error: DecodeError) -> int:
        """Count malformed input the link decoded itself (info, a strap's measurement); return
        how many of this kind so far."""
        self.stats.rejected[error.reason] += 1
        self._last_error = error
        return self.stats.rejected[error.reason]

    def take_error(self) -> tuple[DecodeError, int] | None:
        """The last malformed input not yet reported, with the running count of its kind, once."""
        error, self._last_error = self._last_error, None
        return None if error is None else (error, self.stats.rejected[error.reason])

    def command_rejected(self) -> None:
        """The device refused a control command (the link goes on; docs/protocol.md §6.1)."""
        self.stats.rejected_commands += 1

    @property
    def expected_seq(self) -> int | None:
        """The next sequence number to deliver, once known."""
        return self._sequencer.expected

    @property
    def decoder(self) -> FrameDecoder:
        """The reassembler and decoder (for their counters)."""
        return self._decoder

    @property
    def boot_id(self) -> int | None:
        """The boot id of the numbering being delivered, once known."""
        return self._boot_id

    def on_info(self, info: DeviceInfo, now: float, wall: float | None = None) -> list[LinkEvent]:
        """The info characteristic, read at connect or on request (``wall``: Unix seconds).

        A changed boot id means the numbering starts again; ``next_seq`` shows what exists. It is
        unexpected, and the device untrusted, when the hardware profile differs from the paired
        one, or when the boot id changed but ``next_seq`` is beyond what a device that restarted
        its numbering at 0 could have produced since it was last heard from. At the first info
        a resume point of the same boot opens the gap since it, to be asked from the ring.
        """
        self._wants_info = False
        if self.untrusted is not None:
            return [self.untrusted]
        profile = hardware_profile(info)
        if self.profile is None:
            self.profile = profile
        elif profile != self.profile:
            return self._distrust(
                f"hardware profile {profile} is not the paired device's {self.profile}"
            )
        events: list[LinkEvent] = []
        if self._boot_id is None:
            events.extend(self._start(info, now, wall))
        elif info.boot_id != self._boot_id:
            bound = self._sequencer.bound(now)
            if bound is not None and info.next_seq > bound:
                return self._distrust(
                    f"boot id changed ({self._boot_id:#x} -> {info.boot_id:#x}) but next_seq "
                    f"{info.next_seq} continues instead of restarting (at most {bound} possible)"
                )
            self._sequencer.reset()
            self._asked.clear()
            events.append(DeviceRestarted(self.device_id, None))
            self._sequencer.announce(info.next_seq, now)
        else:
            announced = self._sequencer.announce(info.next_seq, now)
            events.extend(self._translate(announced, now if wall is None else wall))
        self._boot_id = info.boot_id
        # A request sent just before a link drop was probably lost with it: ask again at once.
        self._asked.clear()
        return events

    def _distrust(self, detail: str) -> list[LinkEvent]:
        self.untrusted = DeviceUntrusted(self.device_id, "identity_changed", detail)
        return [self.untrusted]

    def _start(self, info: DeviceInfo, now: float, wall: float | None) -> list[LinkEvent]:
        """The first info of this stream: start fresh, or where ``resume`` says."""
        resume = self.resume
        if resume is None:
            self._sequencer.announce(info.next_seq, now)
            return []
        age = UNKNOWN_RESUME_AGE_S
        if resume.heard_at is not None and wall is not None:
            age = max(0.0, wall - resume.heard_at)
        heard_at = now - age
        bound = plausible_advance(age, self._max_rate_hz, self._jump_slack)
        if resume.boot_id != info.boot_id:
            if info.next_seq > bound:
                return self._distrust(
                    f"boot id changed ({resume.boot_id:#x} -> {info.boot_id:#x}) while the gateway"
                    f" was down but next_seq {info.next_seq} is more than {bound} messages"
                )
            self._sequencer.announce(info.next_seq, now)
            return [DeviceRestarted(self.device_id, None)]
        d = seq_distance(resume.next_seq, info.next_seq)
        if d > bound:
            self.stats.jumps += 1
            self._sequencer.start_at(info.next_seq, now)
            return [SequenceJump(self.device_id, resume.next_seq, info.next_seq, bound)]
        events: list[LinkEvent] = []
        first = resume.next_seq
        if d > MAX_RESEND:
            # Older than the largest RESEND: no wearable ring holds it any more.
            lost = d - MAX_RESEND
            self.stats.lost += lost
            events.append(MessagesLost(self.device_id, first, lost, "resume"))
            first = (first + lost) % SEQ_MODULUS
        if d <= 0:
            first = info.next_seq
        self._sequencer.start_at(first, heard_at)
        self._sequencer.announce(info.next_seq, now)
        return events

    def on_disconnected(self) -> None:
        """Half-received messages die with the connection; ordering state survives it."""
        self._decoder = FrameDecoder(Reassembler(timeout_s=self._fragment_timeout_s))

    def on_fragment(self, data: bytes | bytearray, now: float, wall: float) -> list[LinkEvent]:
        """One notification. Malformed input is counted (`take_error` says why), never raised."""
        try:
            message = self._decoder.feed(data, now)
        except DecodeError as exc:
            self.reject(exc)
            self._wants_info = True
            return []
        if message is None or self.untrusted is not None:
            return []
        return self._translate(self._sequencer.push(message, now), wall)

    def tick(self, now: float, wall: float) -> list[LinkEvent]:
        """Time passes: expire stale fragments and give up gaps that were not filled."""
        self._decoder.reassembler.expire(now)
        return self._translate(self._sequencer.expire(now), wall)

    def resend_requests(self, now: float) -> list[Resend]:
        """RESEND commands to send now: new gaps at once, open ones again every interval.

        A gap that lies within a range asked for less than an interval ago is not asked again:
        its answer is on the way. (A resent answer arrives oldest first, so each message of it
        moves the start of what is still missing; asking anew for every such remainder made the
        wearable queue the same messages over and over.) Asking stops when the sequencer gives
        the gap up (its timeout) or it is filled.
        """
        self._asked = [a for a in self._asked if now - a.sent_at < self.resend_interval_s]
        out: list[Resend] = []
        for first, count in self._sequencer.missing():
            # The wearable keeps a bounded ring: ask for the newest MAX_RESEND of a long gap.
            ask = min(count, MAX_RESEND)
            start = (first + count - ask) % SEQ_MODULUS
            if any(a.covers(start, ask) for a in self._asked):
                continue
            self._asked.append(_Asked(start, ask, now))
            out.append(Resend(start, ask))
            self.stats.resend_requests += 1
        return out

    def _translate(self, events: list[SequenceEvent], wall: float) -> list[LinkEvent]:
        out: list[LinkEvent] = []
        for e in events:
            match e:
                case Delivered(message):
                    self.stats.delivered += 1
                    out.append(FrameReceived(self.device_id, message, wall, self._boot_id))
                case Gap(first, count):
                    self.stats.lost += count
                    out.append(MessagesLost(self.device_id, first, count))
                case Duplicate():
                    self.stats.duplicates += 1
                case Restart(_, seq):
                    self._asked.clear()
                    out.append(DeviceRestarted(self.device_id, seq))
                case Jump(expected, seq, bound):
                    self._asked.clear()
                    self.stats.jumps += 1
                    out.append(SequenceJump(self.device_id, expected, seq, bound))
        return out
