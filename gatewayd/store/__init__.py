"""store: the durable event log (SQLite, WAL, one writer thread) and the MQTT outbox.

See docs/store.md for the schema, the durability guarantees, retention and corruption handling.
"""

from gatewayd.store.errors import StoreError
from gatewayd.store.records import (
    DeviceRecord,
    NewEvent,
    OutboxItem,
    RawSamples,
    RetentionResult,
    StoredEvent,
    StoredWindow,
    StoreRecovery,
    StoreStats,
    WindowRecord,
    window_record_from_message,
)
from gatewayd.store.schema import SCHEMA_VERSION
from gatewayd.store.store import Store, StoreOptions

__all__ = [
    "SCHEMA_VERSION",
    "DeviceRecord",
    "NewEvent",
    "OutboxItem",
    "RawSamples",
    "RetentionResult",
    "Store",
    "StoreError",
    "StoreOptions",
    "StoreRecovery",
    "StoreStats",
    "StoredEvent",
    "StoredWindow",
    "WindowRecord",
    "window_record_from_message",
]
