"""The event log's outbox as the publisher reads it: stored events become MQTT alert payloads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from gatewayd.publish.build import alert_payload, gateway_alert_payload
from gatewayd.publish.client import OutboxItem as PublishItem
from gatewayd.publish.payloads import Alert, GatewayAlert
from gatewayd.store.records import StoredEvent

__all__ = ["StoreOutbox"]

log = structlog.get_logger("gatewayd.publish")


class _OutboxStore(Protocol):
    async def pending_outbox(self, limit: int = 100) -> Sequence[Any]: ...

    async def mark_published(self, event_ids: Sequence[str]) -> int: ...

    async def record_attempts(self, event_ids: Sequence[str]) -> None: ...


class StoreOutbox:
    """`gatewayd.publish.OutboxSource` over the store: stored events become MQTT payloads.

    A device event becomes an `Alert` (``devices/<device_id>/alerts``), a gateway-level event
    (no device) a `GatewayAlert` (``<base>/alerts``). An event that cannot be a payload is
    logged and marked done, so that it never blocks the alerts behind it.
    """

    def __init__(self, store: _OutboxStore, gateway_id: str) -> None:
        self._store = store
        self._gateway_id = gateway_id

    async def pending(self, limit: int) -> Sequence[PublishItem]:
        """Up to ``limit`` pending events, oldest first, as publishable items."""
        out: list[PublishItem] = []
        while not out:
            rows = await self._store.pending_outbox(limit)
            skipped: list[str] = []
            for row in rows:
                event: StoredEvent = row.event
                try:
                    payload: Alert | GatewayAlert = (
                        gateway_alert_payload(event, self._gateway_id)
                        if event.device_id is None
                        else alert_payload(event, self._gateway_id)
                    )
                except ValidationError as exc:
                    log.error("stored event cannot be published as an alert; skipped",  # noqa: TRY400
                              event_id=event.id, device=event.device_id,
                              error=str(exc))  # fmt: skip
                    skipped.append(event.id)
                    continue
                out.append(PublishItem(event.id, event.device_id, payload.to_json()))
            if skipped:
                await self._store.mark_published(skipped)
            if not skipped:
                break
        return out

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        """The broker acknowledged these events."""
        await self._store.mark_published(event_ids)

    async def record_attempt(self, event_ids: Sequence[str]) -> None:
        """One more publish attempt for these events (the outbox's ``attempts`` column)."""
        await self._store.record_attempts(event_ids)
