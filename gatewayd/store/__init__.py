"""store: the durable event log (SQLite, WAL, one writer thread) and the MQTT outbox.

See docs/store.md for the schema, the durability guarantees, degraded mode, retention and
corruption handling.
"""

from gatewayd.store.errors import RecordRejectedError, StoreError, StoreReentryError
from gatewayd.store.lock import EventLogInUseError
from gatewayd.store.records import (
    GATEWAY,
    SEVERITIES,
    DeviceCursor,
    EventQuery,
    LoggedEvent,
    NewEvent,
    OutboxItem,
    RawSamples,
    RetentionResult,
    StoredEvent,
    StoredWindow,
    StoreProblem,
    StoreRecovery,
    StoreStats,
    WindowRecord,
    gateway_event,
    window_record_from_message,
)
from gatewayd.store.schema import SCHEMA_VERSION
from gatewayd.store.store import Store, StoreOptions

__all__ = [
    "GATEWAY",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "DeviceCursor",
    "EventLogInUseError",
    "EventQuery",
    "LoggedEvent",
    "NewEvent",
    "OutboxItem",
    "RawSamples",
    "RecordRejectedError",
    "RetentionResult",
    "Store",
    "StoreError",
    "StoreOptions",
    "StoreProblem",
    "StoreRecovery",
    "StoreReentryError",
    "StoreStats",
    "StoredEvent",
    "StoredWindow",
    "WindowRecord",
    "gateway_event",
    "window_record_from_message",
]
