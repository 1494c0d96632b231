"""What goes into the store and what comes out: small frozen dataclasses, no I/O.

Times named ``*_at`` / ``*_seen`` are wall-clock Unix seconds (floats, as the link layer's
``received_at``); ``t_ms`` is the wearable's own clock in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from gatewayd.protocol.messages import Message, Window, summary_of

__all__ = [
    "GATEWAY",
    "SEVERITIES",
    "DeviceCursor",
    "EventQuery",
    "LoggedEvent",
    "NewEvent",
    "OutboxItem",
    "ProblemCause",
    "RawSamples",
    "RetentionResult",
    "StoreProblem",
    "StoreRecovery",
    "StoreStats",
    "StoredEvent",
    "StoredWindow",
    "WindowRecord",
    "gateway_event",
    "window_record_from_message",
]

WindowKind = Literal["summary", "window"]
#: What degraded mode is about (StoreProblem.cause).
ProblemCause = Literal["disk_full", "locked", "read_only", "cannot_open", "corrupt", "io_error"]
#: Severities from least to most severe (rules.config.Severity); a minimum means "S or worse".
SEVERITIES: Final = ("info", "warning", "critical")
#: The device filter (and the DEVICE column of `gatewayd events`) for gateway-level events.
GATEWAY: Final = "gateway"


@dataclass(frozen=True, slots=True)
class DeviceCursor:
    """Where a device's stream resumes: its current boot and the next sequence number expected,
    and when the device was last heard from (Unix seconds; None when not known)."""

    boot_id: int
    next_seq: int
    heard_at: float | None = None


@dataclass(frozen=True, slots=True)
class RawSamples:
    """The raw samples of an offloaded window, as little-endian integer bytes."""

    sample_format: str
    bvp_rate_hz: int
    acc_rate_hz: int
    acc_lsb_per_g: int
    bvp: bytes
    acc: bytes


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """One observation window of one device, as the gateway understood it."""

    device_id: str
    received_at: float
    kind: WindowKind = "summary"
    seq: int | None = None
    t_ms: int | None = None
    hr_bpm: float | None = None
    #: Who estimated hr_bpm: "wearable", "gateway-model", "gateway-signal", "strap", ...
    hr_source: str | None = None
    activity: str | None = None
    activity_conf: float | None = None
    entropy_bits: float | None = None
    signal_quality: int | None = None
    battery: int | None = None
    offloaded: bool = False
    model_id: str | None = None
    #: The gateway model's full output (class probabilities, ...), JSON-serialisable.
    result: Mapping[str, Any] | None = None
    #: Stored only when the store keeps raw windows (store.keep_raw_windows).
    raw: RawSamples | None = None


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """A window row read back (raw samples are not loaded)."""

    id: int
    device_id: str
    received_at: float
    kind: str
    seq: int | None
    t_ms: int | None
    hr_bpm: float | None
    hr_source: str | None
    activity: str | None
    activity_conf: float | None
    entropy_bits: float | None
    signal_quality: int | None
    battery: int | None
    offloaded: bool
    model_id: str | None
    result: Mapping[str, Any] | None
    has_raw: bool
    #: Fields the store could not hold as given, stored NULL: {field: "value: why"}.
    invalid: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event (an alert, a state change) to append; id and created_at default to now."""

    kind: str
    severity: str
    state: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    #: None for gateway-level events ("store recovered", "gateway degraded").
    device_id: str | None = None
    t_ms: int | None = None
    id: str | None = None
    created_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored."""

    id: str
    device_id: str | None
    kind: str
    severity: str
    state: str
    created_at: float
    t_ms: int | None
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A pending publication: which event, and how often it was tried.

    The publisher derives the topic from the event's device. ``outbox_id`` is the row's place
    in the outbox, None while the event is held in memory (degraded mode, not yet written).
    """

    outbox_id: int | None
    attempts: int
    event: StoredEvent

    @property
    def event_id(self) -> str:
        """The event's id (the subscribers' de-duplication key)."""
        return self.event.id

    @property
    def device_id(self) -> str | None:
        """The event's device, or None for gateway-level events."""
        return self.event.device_id


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events to read; None / empty means no filter on that field."""

    #: A device id, or GATEWAY for the gateway's own events (device_id NULL).
    device: str | None = None
    since: float | None = None
    kinds: tuple[str, ...] = ()
    #: The least severe severity read (one of SEVERITIES).
    min_severity: str | None = None
    #: The newest this many matching events (still returned oldest first).
    limit: int | None = None
    #: Only events appended after the one at this position (`LoggedEvent.position`).
    after: int | None = None


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event with its delivery state from the outbox."""

    event: StoredEvent
    #: False only for an event without an outbox row (not written by gatewayd's Store).
    in_outbox: bool
    attempts: int
    #: When the broker acknowledged it (None: pending).
    published_at: float | None
    #: Where it was appended in the log (SQLite's rowid): later events have larger positions.
    position: int = 0

    @property
    def published(self) -> bool:
        """The broker acknowledged it (PUBACK)."""
        return self.published_at is not None


@dataclass(frozen=True, slots=True)
class StoreProblem:
    """Why the store is degraded: writes are held in memory and retried (docs/store.md).

    ``message`` says what is wrong and the fix; ``text`` adds what is held and lost.
    """

    cause: ProblemCause
    #: Wall-clock Unix seconds when the store became degraded.
    since: float
    message: str
    #: Operations (windows, events, outbox updates) held in memory, in order, not yet written.
    held: int
    #: Windows dropped because the memory bound was reached (never events).
    dropped_windows: int

    @property
    def text(self) -> str:
        """One line for STATUS= and the log."""
        dropped = (
            f"; {self.dropped_windows} windows dropped (memory bound)"
            if self.dropped_windows
            else ""
        )
        return f"{self.message}; {self.held} operations held in memory{dropped}"


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one retention pass deleted, and whether the size limit could be met."""

    windows: int = 0
    raw_windows: int = 0
    events: int = 0
    freed_pages: int = 0
    size_bytes: int = 0
    #: True when the store is still over max_size_mb because only undeliverable-yet (pending)
    #: events are left; they are never deleted.
    over_size: bool = False


@dataclass(frozen=True, slots=True)
class StoreRecovery:
    """The store file was unusable at start and was moved aside; a fresh one was created.

    The caller must raise an alert with ``message``: events in the old file that were not yet
    published are not delivered from the fresh store.
    """

    path: Path
    moved_to: tuple[Path, ...]
    reason: str

    @property
    def message(self) -> str:
        """One sentence for the alert and the log."""
        first = self.moved_to[0] if self.moved_to else None
        extra = " (with its -wal/-shm)" if len(self.moved_to) > 1 else ""
        return (
            f"event log {self.path} was corrupt ({self.reason}): moved it to {first}{extra} and"
            " started a fresh one; alerts not yet published from it will not be delivered"
            f" (salvage: sqlite3 {first} .recover)"
        )


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts, sizes and writer counters, for `gatewayd status` and the bench."""

    path: Path
    schema_version: int
    file_bytes: int
    wal_bytes: int
    live_bytes: int
    devices: int
    windows: int
    raw_windows: int
    events: int
    outbox_pending: int
    oldest_pending_at: float | None
    batches: int
    items: int
    largest_batch: int
    failed_items: int
    backpressure_waits: int
    last_retention: RetentionResult | None
    recovery: StoreRecovery | None
    #: Values stored NULL because SQLite cannot hold them (see WindowRecord checks).
    invalid_values: int = 0
    #: Operations held in memory now (degraded mode), and windows dropped since open.
    held: int = 0
    dropped_windows: int = 0
    #: Times the file was found deleted or replaced and a fresh one started.
    reopened: int = 0


def gateway_event(
    kind: str, severity: str, message: str, t: float, *, state: str = "raised", **facts: Any
) -> NewEvent:
    """A gateway-level technical event (no device), shaped as gatewayd.pipeline's.

    The payload is ``{kind, category: "technical", t, reason: message, evidence: facts}``;
    ``created_at`` is ``t``.
    """
    return NewEvent(
        kind=kind,
        severity=severity,
        state=state,
        payload={
            "kind": kind,
            "category": "technical",
            "t": t,
            "reason": message,
            "evidence": dict(facts),
        },
        t_ms=round(t * 1000),
        created_at=t,
    )


def window_record_from_message(
    device_id: str,
    message: Message,
    received_at: float,
    *,
    keep_raw: bool = False,
) -> WindowRecord:
    """A WindowRecord with what the wearable said; the gateway adds its own results on top.

    Use ``dataclasses.replace`` to add hr_bpm/activity/model_id/result from the full model.
    """
    s = summary_of(message)
    raw: RawSamples | None = None
    if keep_raw and isinstance(message, Window):
        dtype = message.sample_format.dtype
        raw = RawSamples(
            sample_format=message.sample_format.name.lower(),
            bvp_rate_hz=message.bvp_rate_hz,
            acc_rate_hz=message.acc_rate_hz,
            acc_lsb_per_g=message.acc_lsb_per_g,
            bvp=message.bvp.astype(dtype, copy=False).tobytes(),
            acc=message.acc.astype(dtype, copy=False).tobytes(),
        )
    return WindowRecord(
        device_id=device_id,
        received_at=received_at,
        kind="window" if isinstance(message, Window) else "summary",
        seq=s.seq,
        t_ms=s.t_ms,
        hr_bpm=s.hr_bpm,
        hr_source="wearable" if s.hr_bpm is not None else None,
        activity=s.activity_name,
        activity_conf=s.activity_confidence,
        entropy_bits=s.entropy_bits,
        signal_quality=None if s.signal_quality == 255 else s.signal_quality,
        battery=s.battery,
        offloaded=bool(s.offload_reason),
        raw=raw,
    )
