"""`gatewayd bench soak`'s accounting: what the wearables produced against what the gateway
stored, reported lost and delivered (pure: no I/O, no clock).

Three records meet here: the emulator's (each wearable's seqs owed to the gateway: from the
``next_seq`` of the first info read, docs/protocol.md §4, to the last one produced), the event
log's (windows stored, ``data_lost`` events with their cause, every event in the outbox) and the
subscriber's (alert ids and telemetry seqs it received). Each owed window is exactly one of:
stored, lost with a reason (covered by a ``data_lost`` event), or unexplained. Every event in
the outbox must have reached the subscriber. Telemetry is QoS 0 and best effort (docs/mqtt.md):
a stored window whose telemetry never arrived is counted apart, as received during a fault
(a broker outage, a killed gateway, and the settling after them) or outside any.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gatewayd.protocol.sequencing import SEQ_MODULUS

__all__ = [
    "FAULT_KINDS",
    "AlertAccount",
    "DeviceAccount",
    "FaultSpan",
    "LostRange",
    "Owed",
    "SoakAccount",
    "StoredWindow",
    "TelemetryAccount",
    "account",
    "account_device",
]

#: The faults `gatewayd bench soak` schedules (gatewayd/bench/soak.py says what each does).
FAULT_KINDS: Final = ("link_drop", "broker_restart", "corrupt", "gateway_kill")
#: How many unexplained seqs a device's account lists by number (the count is always whole).
MAX_LISTED: Final = 50


@dataclass(frozen=True, slots=True)
class Owed:
    """What one wearable owes the gateway: seqs ``first`` .. ``end - 1`` (unwrapped)."""

    device_id: str
    first: int
    end: int

    @property
    def count(self) -> int:
        """How many windows."""
        return max(0, self.end - self.first)


@dataclass(frozen=True, slots=True)
class LostRange:
    """A ``data_lost`` event: ``count`` seqs from ``first`` (modulo the seq space), and why."""

    device_id: str
    first: int
    count: int
    cause: str

    def seqs(self) -> Iterable[int]:
        """The seqs it covers, as on the wire (modulo SEQ_MODULUS)."""
        return ((self.first + i) % SEQ_MODULUS for i in range(self.count))


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """A row of the windows table: which device, which seq, when received (unix seconds)."""

    device_id: str
    seq: int
    received_at: float


@dataclass(frozen=True, slots=True)
class FaultSpan:
    """A time span (unix seconds) in which best-effort telemetry may go missing."""

    kind: str
    start: float
    end: float

    def covers(self, t: float) -> bool:
        """Whether ``t`` lies within the span."""
        return self.start <= t <= self.end


@dataclass(frozen=True, slots=True)
class DeviceAccount:
    """One wearable's windows: owed = stored + lost_with_reason + unexplained."""

    device_id: str
    owed: int
    stored: int
    lost_with_reason: int
    unexplained: int
    lost_by_cause: dict[str, int]
    #: Windows reported lost that were stored all the same (a mislabel, not a loss).
    reported_lost_but_stored: int
    #: Windows stored more than once.
    stored_twice: int
    #: Stored seqs outside the owed range (not counted in ``stored``).
    stored_not_owed: int
    #: The first unexplained seqs (at most MAX_LISTED).
    unexplained_seqs: list[int]

    @property
    def adds_up(self) -> bool:
        """The three classes partition the owed windows."""
        return self.owed == self.stored + self.lost_with_reason + self.unexplained


@dataclass(frozen=True, slots=True)
class AlertAccount:
    """Events in the outbox against events received by the subscriber."""

    stored: int
    delivered: int
    undelivered: list[str]
    #: Received ids the event log does not hold (a phantom: should never happen).
    not_in_log: list[str]
    by_kind: dict[str, int]


@dataclass(frozen=True, slots=True)
class TelemetryAccount:
    """Stored windows against telemetry received (QoS 0: best effort, reported apart)."""

    expected: int
    delivered: int
    missing_in_fault: int
    missing_outside_fault: int
    #: Drops the gateway itself counted and logged (its telemetry queue overflowing).
    recorded_drops: int


@dataclass(frozen=True, slots=True)
class SoakAccount:
    """The whole verdict."""

    devices: list[DeviceAccount]
    alerts: AlertAccount
    telemetry: TelemetryAccount

    @property
    def owed(self) -> int:
        """Windows produced and owed to the gateway, all devices."""
        return sum(d.owed for d in self.devices)

    @property
    def stored(self) -> int:
        """Owed windows stored."""
        return sum(d.stored for d in self.devices)

    @property
    def lost_with_reason(self) -> int:
        """Owed windows not stored, covered by a data_lost event."""
        return sum(d.lost_with_reason for d in self.devices)

    @property
    def unexplained(self) -> int:
        """Owed windows neither stored nor reported lost."""
        return sum(d.unexplained for d in self.devices)

    @property
    def ok(self) -> bool:
        """No unexplained loss, every event delivered, and every account adds up."""
        return (
            self.unexplained == 0
            and not self.alerts.undelivered
            and all(d.adds_up for d in self.devices)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "ok": self.ok,
            "owed": self.owed,
            "stored": self.stored,
            "lost_with_reason": self.lost_with_reason,
            "unexplained": self.unexplained,
            "devices": [
                {
                    "device_id": d.device_id,
                    "owed": d.owed,
                    "stored": d.stored,
                    "lost_with_reason": d.lost_with_reason,
                    "unexplained": d.unexplained,
                    "lost_by_cause": d.lost_by_cause,
                    "reported_lost_but_stored": d.reported_lost_but_stored,
                    "stored_twice": d.stored_twice,
                    "stored_not_owed": d.stored_not_owed,
                    "unexplained_seqs": d.unexplained_seqs,
                }
                for d in self.devices
            ],
            "alerts": {
                "stored": self.alerts.stored,
                "delivered": self.alerts.delivered,
                "undelivered": self.alerts.undelivered,
                "not_in_log": self.alerts.not_in_log,
                "by_kind": self.alerts.by_kind,
            },
            "telemetry": {
                "expected": self.telemetry.expected,
                "delivered": self.telemetry.delivered,
                "missing_in_fault": self.telemetry.missing_in_fault,
                "missing_outside_fault": self.telemetry.missing_outside_fault,
                "recorded_drops": self.telemetry.recorded_drops,
            },
        }


def account_device(
    owed: Owed, stored_seqs: Sequence[int], lost: Sequence[LostRange]
) -> DeviceAccount:
    """Classify each owed seq of one device: stored, lost with a reason, or unexplained."""
    stored_count = Counter(s % SEQ_MODULUS for s in stored_seqs)
    cause_of: dict[int, str] = {}
    for r in lost:
        for seq in r.seqs():
            cause_of.setdefault(seq, r.cause)
    stored = lost_ok = 0
    by_cause: Counter[str] = Counter()
    unexplained: list[int] = []
    owed_wire: set[int] = set()
    for seq in range(owed.first, owed.end):
        wire = seq % SEQ_MODULUS
        owed_wire.add(wire)
        if stored_count[wire]:
            stored += 1
        elif wire in cause_of:
            lost_ok += 1
            by_cause[cause_of[wire]] += 1
        else:
            unexplained.append(seq)
    return DeviceAccount(
        device_id=owed.device_id,
        owed=owed.count,
        stored=stored,
        lost_with_reason=lost_ok,
        unexplained=len(unexplained),
        lost_by_cause=dict(sorted(by_cause.items())),
        reported_lost_but_stored=sum(1 for s in cause_of if stored_count[s]),
        stored_twice=sum(1 for n in stored_count.values() if n > 1),
        stored_not_owed=sum(1 for s in stored_count if s not in owed_wire),
        unexplained_seqs=unexplained[:MAX_LISTED],
    )


def account(
    owed: Sequence[Owed],
    stored: Sequence[StoredWindow],
    lost: Sequence[LostRange],
    outbox_events: Mapping[str, str],
    received_event_ids: Iterable[str],
    *,
    received_telemetry: Iterable[tuple[str, int]] = (),
    faults: Sequence[FaultSpan] = (),
    recorded_telemetry_drops: int = 0,
) -> SoakAccount:
    """The soak's verdict.

    ``outbox_events``: event id -> kind for every event the gateway put in its outbox;
    ``received_event_ids``: ids the subscriber received on any alerts topic (duplicates fine);
    ``received_telemetry``: (device id, seq) of each telemetry message received.
    """
    seqs: dict[str, list[int]] = {}
    for w in stored:
        seqs.setdefault(w.device_id, []).append(w.seq)
    ranges: dict[str, list[LostRange]] = {}
    for r in lost:
        ranges.setdefault(r.device_id, []).append(r)
    devices = [
        account_device(o, seqs.get(o.device_id, []), ranges.get(o.device_id, [])) for o in owed
    ]

    got = set(received_event_ids)
    alerts = AlertAccount(
        stored=len(outbox_events),
        delivered=sum(1 for i in outbox_events if i in got),
        undelivered=sorted(i for i in outbox_events if i not in got),
        not_in_log=sorted(got - set(outbox_events)),
        by_kind=dict(sorted(Counter(outbox_events.values()).items())),
    )

    telemetry_got = {(d, s % SEQ_MODULUS) for d, s in received_telemetry}
    owed_devices = {o.device_id for o in owed}
    expected = delivered = in_fault = outside = 0
    seen: set[tuple[str, int]] = set()
    for w in stored:
        key = (w.device_id, w.seq % SEQ_MODULUS)
        if w.device_id not in owed_devices or key in seen:
            continue
        seen.add(key)
        expected += 1
        if key in telemetry_got:
            delivered += 1
        elif any(f.covers(w.received_at) for f in faults):
            in_fault += 1
        else:
            outside += 1
    return SoakAccount(
        devices=devices,
        alerts=alerts,
        telemetry=TelemetryAccount(
            expected, delivered, in_fault, outside, recorded_telemetry_drops
        ),
    )
