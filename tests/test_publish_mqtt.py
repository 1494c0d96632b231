"""The Publisher against a real mosquitto on an ephemeral port (tests/mqtt_fixtures.py).

No timing assertions: every wait is "until this happens", with a generous timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from gatewayd.config import MqttConfig, TlsConfig
from gatewayd.ids import EventIdGenerator
from gatewayd.mapping import data_lost_event, gateway_event
from gatewayd.publish import DeviceState, OutboxItem, Publisher, Telemetry, Topics
from gatewayd.publish.cleanup import clear_retained
from gatewayd.publish.client import STATE_INFLIGHT, mqtt_client, read_retained
from gatewayd.publish.outbox import StoreOutbox
from gatewayd.publish.payloads import Alert, GatewayAlert
from gatewayd.store.store import Store
from tests.mqtt_fixtures import Broker, make_password_file, make_tls_files, needs_mosquitto

pytest_plugins = ["tests.mqtt_fixtures"]
pytestmark = [needs_mosquitto, pytest.mark.asyncio]

GW = "room-12"
WAIT_S = 20.0
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for a counter the publisher updates (it has no event for these)."""
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - polling a test probe, not production code
            await asyncio.sleep(0.05)


class FakeOutbox:
    """A scripted in-memory outbox with the store's shape."""

    def __init__(self) -> None:
        self.items: list[OutboxItem] = []
        self.marked: list[str] = []
        self.attempts: list[str] = []
        self.on_mark: Callable[[Sequence[str]], None] | None = None
        self._ms = 1_767_323_045_000
        self._ids = EventIdGenerator()

    def append(
        self, device_id: str, n: int, kind: str = "tachycardia", state: str = "raised"
    ) -> OutboxItem:
        self._ms += 1
        alert = Alert(
            event_id=self._ids.next(self._ms, lambda size: n.to_bytes(size, "big")),
            device_id=device_id,
            gateway_id=GW,
            kind=kind,
            category="physiological",
            severity="warning",
            state=state,  # type: ignore[arg-type]
            t=T0,
            evidence={"n": n},
        )
        item = OutboxItem(alert.event_id, device_id, alert.to_json())
        self.items.append(item)
        return item

    async def pending(self, limit: int) -> list[OutboxItem]:
        done = set(self.marked)
        return [i for i in self.items if i.event_id not in done][:limit]

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        if self.on_mark is not None:
            self.on_mark(event_ids)
        self.marked.extend(event_ids)

    async def record_attempt(self, event_ids: Sequence[str]) -> None:
        self.attempts.extend(event_ids)


class Subscriber:
    """Collects every message on some filters into a list."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            async with self._changed:
                self._changed.notify_all()

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [
            json.loads(bytes(m.payload))  # type: ignore[arg-type]
            for m in self.messages
            if m.topic.value == topic and m.payload
        ]

    async def wait(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {self.topics()}") from None

    def topics(self) -> list[str]:
        return [m.topic.value for m in self.messages]


@contextlib.asynccontextmanager
async def subscribe(
    broker: Broker, *filters: str, **client_kwargs: Any
) -> AsyncIterator[Subscriber]:
    async with aiomqtt.Client(broker.host, broker.port, **client_kwargs) as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)
        sub = Subscriber(client)
        task = asyncio.create_task(sub.run())
        try:
            yield sub
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@contextlib.asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run())
    try:
        async with asyncio.timeout(WAIT_S):
            await publisher.wait_connected()
        yield task
    finally:
        publisher.stop()
        async with asyncio.timeout(WAIT_S):
            await task


def make_publisher(
    port: int, outbox: FakeOutbox, *, paired: Sequence[str] | None = None, **mqtt: Any
) -> Publisher:
    config = MqttConfig.model_validate({"host": "127.0.0.1", "port": port, **mqtt})
    return Publisher(
        config,
        GW,
        outbox,
        env={},
        rescan_interval_s=1.0,
        backoff=lambda kind, n: 0.2,
        paired=paired,
    )


async def retained(broker: Broker, *filters: str, username: str | None = None) -> dict[str, bytes]:
    """What the broker retains under ``filters``, as a fresh subscriber gets it."""
    marker = f"test/marker/{uuid.uuid4()}"
    password = None if username is None else "s3cret"
    async with (
        aiomqtt.Client(broker.host, broker.port, username=username, password=password) as client,
        asyncio.timeout(WAIT_S),
    ):

        async def publish_marker() -> bytes:
            await client.publish(marker, b"end", qos=1)
            return b"end"

        return await read_retained(client, filters, marker=marker, publish_marker=publish_marker)


def state(device_id: str, hr: float) -> DeviceState:
    return DeviceState(
        device_id=device_id, gateway_id=GW, connected=True, t=T0, hr_bpm=hr, battery_pct=80
    )


class Proxy:
    """A TCP relay whose connections can be cut without a DISCONNECT (for the last will)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for src, dst, pipe in ((reader, up_writer, self._pipe), (up_reader, writer, self._down)):
            task = asyncio.create_task(pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def _down(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Broker to client."""
        await self._pipe(src, dst)

    def cut(self) -> None:
        """Reset every relayed connection (RST both ways): an unclean drop."""
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.transport.abort()


async def test_status_online_retained_and_last_will_on_unclean_drop(
    mosquitto_broker: Broker,
) -> None:
    status = Topics("gatewayd", GW).status
    async with Proxy(mosquitto_broker.port) as proxy:
        publisher = make_publisher(proxy.port, FakeOutbox())
        # Subscribing after the publish: retained.
        async with running(publisher), subscribe(mosquitto_broker, status) as sub:
            await sub.wait(lambda: len(sub.on(status)) >= 1, "retained online")
            assert sub.messages[0].retain
            assert sub.on(status)[0]["state"] == "online"
            proxy.cut()
            await sub.wait(
                lambda: any(s["state"] == "offline" for s in sub.on(status)), "last will"
            )
            will = next(s for s in sub.on(status) if s["state"] == "offline")
            assert will == {
                "schema_version": 1,
                "state": "offline",
                "gateway_id": GW,
                "reason": "connection_lost",
            }
            # ... and back online by itself.
            await sub.wait(lambda: sub.on(status)[-1]["state"] == "online", "reconnect")
            assert publisher.stats.connects >= 2
    # Graceful stop (leaving `running`) publishes a retained offline/shutdown.
    async with subscribe(mosquitto_broker, status) as sub:
        await sub.wait(lambda: len(sub.on(status)) >= 1, "retained offline")
        assert sub.on(status)[-1]["reason"] == "shutdown"
        assert sub.messages[-1].retain


async def test_alerts_in_order_and_marked_after_delivery(mosquitto_broker: Broker) -> None:
    outbox = FakeOutbox()
    publisher = make_publisher(mosquitto_broker.port, outbox)
    alerts = f"gatewayd/{GW}/devices/+/alerts"
    async with subscribe(mosquitto_broker, alerts) as sub:
        received_ids = lambda: [json.loads(bytes(m.payload))["event_id"] for m in sub.messages]  # type: ignore[arg-type]  # noqa: E731
        # PUBACK comes before mark_published, and the broker forwards before it acknowledges
        # (mosquitto handles the PUBLISH, queues it to subscribers, then sends PUBACK), so an
        # item marked published has been delivered (or is on its way) to our subscriber.
        before = [outbox.append("w1", n) for n in range(5)]
        async with running(publisher):
            for n in range(5, 10):
                outbox.append("w2" if n % 2 else "w1", n)
                publisher.notify()
            await sub.wait(lambda: len(sub.messages) >= 10, "ten alerts")
        assert received_ids() == [i.event_id for i in outbox.items]
        assert outbox.marked == [i.event_id for i in outbox.items]
        assert outbox.attempts == outbox.marked, "one attempt each, counted before the publish"
        assert before[0].event_id == outbox.marked[0]
        assert all(m.qos == 1 and not m.retain for m in sub.messages)
        assert publisher.stats.alerts_published == 10


async def test_a_graceful_stop_sends_the_alerts_still_pending(mosquitto_broker: Broker) -> None:
    """The pipeline drains before the publisher stops: the alerts of its last windows and of
    the links' closing are in the outbox then, and go out before status offline."""
    outbox = FakeOutbox()
    publisher = make_publisher(mosquitto_broker.port, outbox)
    status = f"gatewayd/{GW}/status"
    alerts = f"gatewayd/{GW}/devices/w1/alerts"
    async with subscribe(mosquitto_broker, status, alerts) as sub:
        async with running(publisher):
            await sub.wait(lambda: bool(sub.on(status)), "status online")
            # Written as the stop begins, as the closing links' events are.
            for n in range(5):
                outbox.append("w1", n, kind="disconnected")
            publisher.notify()
            publisher.stop()
        await sub.wait(lambda: sub.on(status)[-1]["state"] == "offline", "status offline")
    assert [a["event_id"] for a in sub.on(alerts)] == [i.event_id for i in outbox.items]
    assert outbox.marked == [i.event_id for i in outbox.items], "each marked after its PUBACK"
    assert sub.topics()[-1] == status, "the alerts before status offline"


async def test_a_gateway_event_is_published_once_on_the_gateway_alert_topic(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    # The real chain: SQLite event log -> StoreOutbox -> Publisher -> mosquitto -> subscriber.
    topics = Topics("gatewayd", GW)
    async with Store.open(tmp_path / "events.db") as store:
        config = MqttConfig.model_validate({"host": "127.0.0.1", "port": mosquitto_broker.port})
        publisher = Publisher(config, GW, StoreOutbox(store, GW), env={}, rescan_interval_s=0.2)
        async with subscribe(mosquitto_broker, f"gatewayd/{GW}/#") as sub:
            # The log stores no topic: the publisher derives it from the event (no device:
            # <base>/alerts).
            gateway_id = await store.append_event(
                gateway_event("model_missing", "warning", "no model installed", T0.timestamp(),
                              model="mnv2-1d-w1.0"),
            )  # fmt: skip
            async with running(publisher):
                await sub.wait(lambda: bool(sub.on(topics.gateway_alerts)), "the gateway alert")
                # Outbox order: once a later device alert arrives, a duplicate of the gateway
                # alert (had there been one) would have arrived before it.
                device_id = await store.append_event(data_lost_event("w1", 1, 2, T0.timestamp()))
                publisher.notify()
                await sub.wait(lambda: bool(sub.on(topics.alerts("w1"))), "the device alert")
                # The broker forwards before it acknowledges: rows are marked a moment later.
                await until(lambda: publisher.stats.alerts_published >= 2)
                assert await store.pending_outbox() == []
        assert publisher.stats.alerts_published == 2
    (message,) = [m for m in sub.messages if m.topic.value == topics.gateway_alerts]
    assert (message.qos, message.retain) == (1, False)
    alert = GatewayAlert.model_validate_json(bytes(message.payload))  # type: ignore[arg-type]
    assert (alert.event_id, alert.gateway_id, alert.kind, alert.category) == (
        gateway_id, GW, "model_missing", "technical",
    )  # fmt: skip
    assert (alert.message, alert.details, alert.t) == (
        "no model installed", {"model": "mnv2-1d-w1.0"}, T0,
    )  # fmt: skip
    assert [a["event_id"] for a in sub.on(topics.alerts("w1"))] == [device_id]
    assert f"{topics.base}/gateway/alerts" not in sub.topics()
    # The outbox counts publish attempts: one each here (no connection dropped).
    assert await asyncio.to_thread(_attempts, tmp_path / "events.db") == {
        gateway_id: 1,
        device_id: 1,
    }


def _attempts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT event_id, attempts FROM outbox").fetchall())
    finally:
        conn.close()


async def test_broker_outage_backlog_delivered_in_order(tmp_path: Path) -> None:
    # Persistence keeps the subscriber's session (clean_session=False, QoS 1) across the
    # restart, so alerts the publisher sends before the subscriber is back are queued for it.
    broker = Broker(tmp_path, persistence=True)
    await broker.start()
    try:
        outbox = FakeOutbox()
        publisher = make_publisher(broker.port, outbox)
        sub_args = {"identifier": "test-sub", "clean_session": False}
        alerts = f"gatewayd/{GW}/devices/+/alerts"
        received: list[dict[str, Any]] = []
        async with running(publisher):
            async with subscribe(broker, alerts, **sub_args) as sub:
                for n in range(3):
                    outbox.append("w1", n)
                publisher.notify()
                await sub.wait(lambda: len(sub.messages) >= 3, "alerts before the outage")
                received += [json.loads(bytes(m.payload)) for m in sub.messages]  # type: ignore[arg-type]
            await broker.stop()
            marked_at_stop = len(outbox.marked)
            for n in range(3, 13):
                outbox.append("w1" if n % 3 else "w2", n)
                publisher.notify()
            # Give the publisher a chance to (wrongly) mark something while the broker is down.
            await asyncio.sleep(0.5)
            assert len(outbox.marked) == marked_at_stop == 3
            assert not publisher.connected
            await broker.start()
            async with subscribe(broker, **sub_args) as sub:  # no re-subscribe: the session

                def unique_ids() -> int:
                    # Count distinct alerts: a duplicate (at least once) must not end the wait.
                    after = [json.loads(bytes(m.payload))["event_id"] for m in sub.messages]  # type: ignore[arg-type]
                    return len({r["event_id"] for r in received} | set(after))

                await sub.wait(lambda: unique_ids() >= 13, "the backlog after restart")
                received += [json.loads(bytes(m.payload)) for m in sub.messages]  # type: ignore[arg-type]
        for device in ("w1", "w2"):
            got = [r["event_id"] for r in received if r["device_id"] == device]
            sent = [i.event_id for i in outbox.items if i.device_id == device]
            # At least once: a duplicate of the alert in flight at the outage is allowed.
            assert list(dict.fromkeys(got)) == sent
        assert sorted(set(outbox.marked)) == sorted(i.event_id for i in outbox.items)
    finally:
        await broker.stop()


async def test_retained_state_and_discovery_republished_after_restart(
    mosquitto_broker: Broker,
) -> None:
    publisher = make_publisher(mosquitto_broker.port, FakeOutbox(), homeassistant_discovery=True)
    topics = publisher.topics
    async with running(publisher):
        publisher.update_state(state("w1", 61))
        publisher.update_state(state("w2", 72))
        publisher.publish_telemetry(Telemetry(device_id="w1", seq=1, t=T0, hr_bpm=61))
        async with subscribe(mosquitto_broker, topics.telemetry("w1")) as sub:
            publisher.publish_telemetry(Telemetry(device_id="w1", seq=2, t=T0, hr_bpm=62))
            await sub.wait(
                lambda: any(t["seq"] == 2 for t in sub.on(topics.telemetry("w1"))), "telemetry"
            )
            assert sub.messages[-1].qos == 0
        # The broker has no persistence: a restart forgets every retained message.
        await mosquitto_broker.stop()
        publisher.update_state(state("w1", 65))  # a change during the outage
        await mosquitto_broker.start()
        await until(
            lambda: not (publisher.stats.connects < 2 or publisher.stats.states_published < 4)
        )
        async with subscribe(
            mosquitto_broker, f"gatewayd/{GW}/#", "homeassistant/+/room-12/#"
        ) as sub:
            await sub.wait(
                lambda: bool(sub.on(topics.state("w1")) and sub.on(topics.state("w2"))),
                "retained states",
            )
            assert all(m.retain for m in sub.messages)
            assert sub.on(topics.state("w1"))[-1]["hr_bpm"] == 65
            assert sub.on(topics.status)[-1]["state"] == "online"
            # Discovery of w2 goes out just before its state: every config is in by now.
            discovery = list(await retained(mosquitto_broker, "homeassistant/+/room-12/#"))
            assert "homeassistant/sensor/room-12/w1_heart_rate/config" in discovery
            assert "homeassistant/binary_sensor/room-12/w2_connected/config" in discovery
            assert "homeassistant/binary_sensor/room-12/status/config" in discovery


# --- Home Assistant: problem sensors, the event entity, removing devices ---------------------

PREFIX = "homeassistant"


def _render(template: str, payload: bytes) -> str:
    """A value template rendered as HA does for an MQTT entity (``value_json``: the payload)."""
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 (HA's template language) not installed")
    return str(jinja2.Environment().from_string(template).render(value_json=json.loads(payload)))


async def _problem_state(broker: Broker, device_id: str, kind: str) -> str:
    """The state HA would show for a problem binary_sensor, read from retained messages only."""
    config_topic = f"{PREFIX}/binary_sensor/{GW}/{device_id}_problem_{kind}/config"
    configs = await retained(broker, config_topic)
    if config_topic not in configs:
        return "no entity"
    config = json.loads(configs[config_topic])
    state = await retained(broker, config["state_topic"])
    if config["state_topic"] not in state:
        return "unknown"
    return _render(config["value_template"], state[config["state_topic"]])


async def _until_problem(broker: Broker, device_id: str, kind: str, expected: str) -> None:
    """Wait until the retained state of a problem sensor reads ``expected``."""
    async with asyncio.timeout(WAIT_S):
        while await _problem_state(broker, device_id, kind) != expected:  # noqa: ASYNC110 - polls the broker
            await asyncio.sleep(0.05)


async def test_open_alert_state_is_retained_after_raise_and_clear(
    mosquitto_broker: Broker,
) -> None:
    outbox = FakeOutbox()
    publisher = make_publisher(
        mosquitto_broker.port, outbox, paired=["w1"], homeassistant_discovery=True
    )
    topics = publisher.topics
    async with running(publisher):
        publisher.update_state(state("w1", 70))
        outbox.append("w1", 1, kind="fall", state="raised")
        outbox.append("w1", 2, kind="low_battery", state="raised")
        publisher.notify()
        # A subscriber that comes later (HA after a restart) sees the truth, retained. The
        # sets follow the alerts in order: once low_battery is on, fall is too.
        await _until_problem(mosquitto_broker, "w1", "low_battery", "ON")
        assert await _problem_state(mosquitto_broker, "w1", "fall") == "ON"
        assert await _problem_state(mosquitto_broker, "w1", "tachycardia") == "OFF"
        outbox.append("w1", 3, kind="fall", state="cleared")
        publisher.notify()
        await _until_problem(mosquitto_broker, "w1", "fall", "OFF")
        assert await _problem_state(mosquitto_broker, "w1", "low_battery") == "ON"
    sets = await retained(mosquitto_broker, topics.open_alerts("w1"))
    assert json.loads(sets[topics.open_alerts("w1")])["kinds"] == ["low_battery"]
    # A restarted gateway takes the set from the broker: the open alert is not forgotten
    # (its first state does not publish an empty set over it).
    again = make_publisher(
        mosquitto_broker.port, FakeOutbox(), paired=["w1"], homeassistant_discovery=True
    )
    async with running(again):
        again.update_state(state("w1", 71))
        await until(lambda: again.stats.states_published >= 1)
        assert await _problem_state(mosquitto_broker, "w1", "low_battery") == "ON"
    assert again.stats.open_alerts_published >= 1  # re-published on connect, unchanged
    assert await _problem_state(mosquitto_broker, "w1", "low_battery") == "ON"


async def test_event_entity_receives_the_alert_kind(mosquitto_broker: Broker) -> None:
    outbox = FakeOutbox()
    publisher = make_publisher(mosquitto_broker.port, outbox, homeassistant_discovery=True)
    async with running(publisher):
        publisher.update_state(state("w1", 70))
        await until(lambda: publisher.stats.states_published >= 1)
        config_topic = f"{PREFIX}/event/{GW}/w1_alert/config"
        config = json.loads((await retained(mosquitto_broker, config_topic))[config_topic])
        # Subscribe where HA's event entity does, then raise and clear an alert.
        async with subscribe(mosquitto_broker, config["state_topic"]) as sub:
            raised = outbox.append("w1", 1, kind="fall", state="raised")
            outbox.append("w1", 2, kind="fall", state="cleared")
            publisher.notify()
            await sub.wait(lambda: len(sub.messages) >= 2, "the raise and the clear")
        events = [_render(config["value_template"], bytes(m.payload)) for m in sub.messages]  # type: ignore[arg-type]
        fired = json.loads(events[0])
        assert fired["event_type"] == "fall"
        assert fired["event_type"] in config["event_types"]
        assert fired["event_id"] == raised.event_id
        assert events[1] == ""  # a clear fires nothing (HA ignores an empty rendering)


async def test_removed_device_leaves_no_retained_config(mosquitto_broker: Broker) -> None:
    topics = Topics("gatewayd", GW)
    everything = (f"{PREFIX}/#", f"gatewayd/{GW}/#")
    first = make_publisher(
        mosquitto_broker.port, FakeOutbox(), paired=["w1", "w2"], homeassistant_discovery=True
    )
    async with running(first):
        first.update_state(state("w1", 61))
        first.update_state(state("w2", 62))
        await until(lambda: first.stats.open_alerts_published >= 2)
    # A config an older gatewayd published for an entity kind that no longer exists.
    obsolete = f"{PREFIX}/sensor/{GW}/w1_last_alert/config"
    async with aiomqtt.Client(mosquitto_broker.host, mosquitto_broker.port) as client:
        await client.publish(
            obsolete, b'{"device": {"identifiers": ["gatewayd_room-12_w1"]}}', qos=1, retain=True
        )
    before = await retained(mosquitto_broker, *everything)
    assert any("/w2_" in t for t in before)
    assert {topics.state("w2"), topics.open_alerts("w2"), obsolete} <= set(before)
    # w2 was removed while the gateway was stopped: the next connect clears what it left.
    second = make_publisher(
        mosquitto_broker.port, FakeOutbox(), paired=["w1"], homeassistant_discovery=True
    )
    async with running(second):
        pass
    after = await retained(mosquitto_broker, *everything)
    assert not [t for t in after if "w2" in t]
    assert obsolete not in after
    assert set(after) == set(before) - {t for t in before if "w2" in t} - {obsolete}
    assert second.stats.topics_cleared == len(before) - len(after)
    # A tool removes w1 at once (the gateway need not run), then the demo's whole-gateway
    # clean-up: nothing of this gateway is left under the discovery prefix or its root.
    config = MqttConfig.model_validate({"host": "127.0.0.1", "port": mosquitto_broker.port})
    cleared = await clear_retained(config, GW, device_ids=["w1"], env={})
    assert topics.state("w1") in cleared
    after_w1 = await retained(mosquitto_broker, *everything)
    assert not [t for t in after_w1 if "w1" in t]
    assert f"{PREFIX}/binary_sensor/{GW}/status/config" in after_w1
    await clear_retained(config, GW, env={})
    assert await retained(mosquitto_broker, *everything) == {}


async def test_a_device_let_go_while_running_leaves_nothing_retained(
    mosquitto_broker: Broker,
) -> None:
    everything = (f"{PREFIX}/#", f"gatewayd/{GW}/#")
    outbox = FakeOutbox()
    publisher = make_publisher(
        mosquitto_broker.port, outbox, paired=["w1", "w2"], homeassistant_discovery=True
    )
    async with running(publisher):
        publisher.update_state(state("w1", 61))
        publisher.update_state(state("w2", 62))
        outbox.append("w2", 1, kind="fall", state="raised")
        publisher.notify()
        await _until_problem(mosquitto_broker, "w2", "fall", "ON")
        # w2 taken off the list: the paired list first, then its last alert, then let go.
        publisher.set_paired(["w1"])
        outbox.append("w2", 2, kind="fall", state="cleared")
        publisher.notify()
        cleared = publisher.stats.topics_cleared
        publisher.forget("w2")
        await until(lambda: publisher.stats.alerts_published == 2)
        await until(lambda: publisher.stats.topics_cleared > cleared)
        after = await retained(mosquitto_broker, *everything)
    assert not [t for t in after if "w2" in t], "its state, open set and configs emptied"
    assert {t for t in after if "/w1" in t or "w1_" in t}, "w1 untouched"
    # Removed while the gateway was down: the clear written at the restart is delivered after
    # the connect's sweep, and must not put an open-alert set back for a device not paired.
    outbox = FakeOutbox()
    again = make_publisher(mosquitto_broker.port, outbox, paired=["w1", "w2"])
    async with running(again):  # w2 served again, then the gateway stops
        again.update_state(state("w2", 62))
        again.notify()
        await until(lambda: again.stats.open_alerts_published >= 1)
    restarted = make_publisher(
        mosquitto_broker.port, outbox, paired=["w1"], homeassistant_discovery=True
    )
    outbox.append("w2", 3, kind="fall", state="cleared")
    async with running(restarted):
        restarted.notify()
        await until(lambda: restarted.stats.alerts_published == 1)
    assert not [t for t in await retained(mosquitto_broker, *everything) if "w2" in t]


async def test_discovery_off_clears_configs_left_from_when_it_was_on(
    mosquitto_broker: Broker,
) -> None:
    on = make_publisher(mosquitto_broker.port, FakeOutbox(), homeassistant_discovery=True)
    async with running(on):
        on.update_state(state("w1", 61))
        await until(lambda: on.stats.states_published >= 1)
    assert await retained(mosquitto_broker, f"{PREFIX}/#")
    off = make_publisher(mosquitto_broker.port, FakeOutbox())
    async with running(off):
        pass
    assert await retained(mosquitto_broker, f"{PREFIX}/#") == {}
    # The device's retained state stays: only paired-list removals clear device topics.
    assert Topics("gatewayd", GW).state("w1") in await retained(
        mosquitto_broker, f"gatewayd/{GW}/#"
    )


async def test_a_write_only_gateway_still_announces_without_the_read_back(tmp_path: Path) -> None:
    # An ACL that lets the gateway write its topics but read nothing: the read-back cannot
    # see its marker, gives up after the operation timeout, and the gateway carries on.
    passwd = make_password_file(tmp_path, {"gw": "s3cret", "ha": "s3cret"})
    if passwd is None:
        pytest.skip("mosquitto_passwd not installed")
    acl = tmp_path / "acl"
    acl.write_text(
        "user gw\ntopic write gatewayd/#\ntopic write homeassistant/#\n"
        "user ha\ntopic read #\ntopic write test/#\n"
    )
    broker = Broker(tmp_path, password_file=passwd)
    with broker.config_file.open("a") as config:
        config.write(f"acl_file {acl}\n")
    await broker.start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret\n")
        config = MqttConfig.model_validate(
            {"host": "127.0.0.1", "port": broker.port, "homeassistant_discovery": True,
             "username": "gw", "password_file": secret}
        )  # fmt: skip
        publisher = Publisher(config, GW, FakeOutbox(), env={}, operation_timeout_s=1.0)
        topics = publisher.topics
        async with running(publisher):
            publisher.update_state(state("w1", 70))
            await until(lambda: publisher.stats.open_alerts_published >= 1)
            seen = await retained(broker, "gatewayd/#", f"{PREFIX}/#", username="ha")
        assert json.loads(seen[topics.status])["state"] == "online"
        assert {topics.state("w1"), topics.open_alerts("w1")} <= set(seen)
        assert f"{PREFIX}/event/{GW}/w1_alert/config" in seen
        assert publisher.stats.topics_cleared == 0
    finally:
        await broker.stop()


@pytest_asyncio.fixture
async def auth_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    passwd = make_password_file(tmp_path, {"gw": "s3cret"})
    if passwd is None:
        pytest.skip("mosquitto_passwd not installed")
    broker = Broker(tmp_path, password_file=passwd)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def test_username_and_password_file(auth_broker: Broker, tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    publisher = make_publisher(auth_broker.port, FakeOutbox(), username="gw", password_file=secret)
    async with running(publisher):
        assert publisher.stats.connects == 1
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    refused = make_publisher(auth_broker.port, FakeOutbox(), username="gw", password_file=wrong)
    task = asyncio.create_task(refused.run())
    try:
        await until(lambda: refused.stats.connection_failures >= 1)
        assert not refused.connected
        assert (
            "authori" in (refused.stats.last_error or "").lower()
            or "password" in (refused.stats.last_error or "").lower()
        )
    finally:
        refused.stop()
        async with asyncio.timeout(WAIT_S):
            await task


# paho leaks the socket of a failed TLS handshake (a local in its reconnect(), never closed);
# collect it here so the ResourceWarning is attributed to, and ignored in, this test only.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_tls(tmp_path: Path) -> None:
    # openssl runs in a thread: it is slow-ish and blocking.
    files = await asyncio.to_thread(make_tls_files, tmp_path)
    if files is None:
        pytest.skip("openssl not installed")
    broker = Broker(tmp_path, tls=files)
    await broker.start()
    try:
        publisher = make_publisher(
            broker.port,
            FakeOutbox(),
            tls=TlsConfig(enabled=True, ca_file=files.ca_file),
        )
        async with running(publisher):
            assert publisher.connected
        # Without our CA the broker's certificate is not trusted: never connects.
        untrusted = make_publisher(broker.port, FakeOutbox(), tls=TlsConfig(enabled=True))
        task = asyncio.create_task(untrusted.run())
        try:
            await until(lambda: untrusted.stats.connection_failures >= 1)
            assert "certificate" in (untrusted.stats.last_error or "").lower()
        finally:
            untrusted.stop()
            async with asyncio.timeout(WAIT_S):
                await task
            gc.collect()
    finally:
        await broker.stop()


async def test_the_broker_connection_sends_at_once_tcp_nodelay(mosquitto_broker: Broker) -> None:
    config = MqttConfig.model_validate({"host": "127.0.0.1", "port": mosquitto_broker.port})
    client = mqtt_client(config, "nodelay-probe", None, None, timeout_s=WAIT_S)
    async with client:
        sock = client._client.socket()  # paho's socket: aiomqtt has no accessor
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    # The control: a plain aiomqtt client has Nagle on, so the assertion above can fail.
    async with aiomqtt.Client(mosquitto_broker.host, mosquitto_broker.port) as plain:
        sock = plain._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


class GatedOutbox(FakeOutbox):
    """An outbox whose reads wait for ``gate``: a store busy writing windows."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()

    async def pending(self, limit: int) -> list[OutboxItem]:
        self.reading.set()
        await self.gate.wait()
        return await super().pending(limit)


async def test_a_due_alert_goes_out_before_queued_telemetry(mosquitto_broker: Broker) -> None:
    outbox = GatedOutbox()
    publisher = make_publisher(mosquitto_broker.port, outbox)
    async with subscribe(mosquitto_broker, f"gatewayd/{GW}/devices/#") as sub:
        # Connected and idle, with the telemetry of three devices flowing.
        outbox.gate.set()
        async with running(publisher):
            for n in range(3):
                publisher.publish_telemetry(Telemetry(device_id=f"w{n}", seq=0, t=T0))
            await sub.wait(lambda: len(sub.messages) >= 3, "the first telemetry")
            # An alert is due (appended, notified) while its read of the outbox is slow; the
            # pipeline goes on queueing telemetry behind it.
            outbox.gate.clear()
            outbox.reading.clear()
            alert = outbox.append("w1", 1)
            publisher.notify()
            for n in range(3):  # device by device: served round-robin all the same
                for seq in range(1, 41):
                    publisher.publish_telemetry(Telemetry(device_id=f"w{n}", seq=seq, t=T0))
            await outbox.reading.wait()
            # Give the queued telemetry every chance to overtake (none may): then let it read.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await sub.wait(lambda: len(sub.messages) > 3, "telemetry (must not come)")
            outbox.gate.set()
            await sub.wait(lambda: len(sub.messages) >= 3 + 1 + 120, "the alert and telemetry")
        topics = sub.topics()[3:]
        assert topics[0] == f"gatewayd/{GW}/devices/w1/alerts", topics[:5]
        assert sub.on(f"gatewayd/{GW}/devices/w1/alerts")[0]["event_id"] == alert.event_id
        # Each device's telemetry in order.
        # Then the alert's open-alert set (retained) and the telemetry, round-robin.
        telemetry = [t.split("/")[3] for t in topics if t.endswith("/telemetry")]
        assert len(telemetry) == 120
        assert telemetry[:6] == ["w0", "w1", "w2"] * 2
        for device in ("w0", "w1", "w2"):
            seqs = [m["seq"] for m in sub.on(f"gatewayd/{GW}/devices/{device}/telemetry")]
            assert seqs == list(range(41)), device


class PubackHold(Proxy):
    """A relay that can hold back the broker's PUBACKs to the client (and release them)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.holding = False
        self.held: list[tuple[asyncio.StreamWriter, bytes]] = []

    def release(self) -> None:
        self.holding = False
        for writer, packet in self.held:
            writer.write(packet)
        self.held.clear()

    async def _down(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                header = await src.readexactly(1)
                length, shift, raw = 0, 0, b""
                while True:  # MQTT's variable-length "remaining length"
                    byte = await src.readexactly(1)
                    raw += byte
                    length |= (byte[0] & 0x7F) << shift
                    shift += 7
                    if not byte[0] & 0x80:
                        break
                packet = header + raw + await src.readexactly(length)
                if self.holding and header[0] >> 4 == 4:  # PUBACK
                    self.held.append((dst, packet))
                else:
                    dst.write(packet)
        dst.close()


async def test_telemetry_does_not_wait_for_a_states_puback(mosquitto_broker: Broker) -> None:
    hold = PubackHold(mosquitto_broker.port)
    async with hold:
        publisher = make_publisher(hold.port, FakeOutbox())
        device = f"gatewayd/{GW}/devices/w1"
        async with subscribe(mosquitto_broker, f"{device}/#") as sub, running(publisher):
            hold.holding = True
            publisher.update_state(state("w1", 70))
            for seq in range(3):
                publisher.publish_telemetry(Telemetry(device_id="w1", seq=seq, t=T0))
            # The state went out and the telemetry behind it too, its PUBACK still held back.
            await sub.wait(lambda: len(sub.on(f"{device}/telemetry")) == 3, "the telemetry")
            assert sub.on(f"{device}/state")[0]["hr_bpm"] == 70
            assert publisher.stats.states_published == 0, "acknowledged: the test proves nothing"
            hold.release()
            await until(lambda: publisher.stats.states_published == 1)


async def test_a_telemetry_burst_is_written_in_order_and_counted_when_the_connection_fails(
    mosquitto_broker: Broker,
) -> None:
    publisher = make_publisher(mosquitto_broker.port, FakeOutbox())
    device = f"gatewayd/{GW}/devices/w1"
    burst = [Telemetry(device_id="w1", seq=seq, t=T0) for seq in range(5)]
    config = MqttConfig.model_validate({"host": "127.0.0.1", "port": mosquitto_broker.port})
    async with subscribe(mosquitto_broker, f"{device}/telemetry") as sub:
        async with mqtt_client(config, "burst-probe", None, None, timeout_s=WAIT_S) as client:
            await publisher._send_telemetry(client, burst)
            await sub.wait(lambda: len(sub.messages) == 5, "the burst")
            assert [m["seq"] for m in sub.on(f"{device}/telemetry")] == list(range(5))
            stats = publisher.stats
            assert (stats.telemetry_published, stats.telemetry_dropped) == (5, 0)
        # A connection whose writes fail: none of the burst is written, each is counted dropped.
        async with mqtt_client(config, "burst-cut", None, None, timeout_s=1.0) as client:
            sock = client._client.socket()  # paho's socket: aiomqtt has no accessor
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_WR)
            with pytest.raises(aiomqtt.MqttError):
                await publisher._send_telemetry(client, burst)
    assert (stats.telemetry_published, stats.telemetry_dropped) == (5, 5)


async def test_states_awaiting_their_puback_log_no_warning(
    mosquitto_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # The publisher keeps up to STATE_INFLIGHT states unacknowledged on purpose; aiomqtt's own
    # warning ("There are 11 pending publish calls.") would fire for each one past ten.
    hold = PubackHold(mosquitto_broker.port)
    async with hold:
        publisher = make_publisher(hold.port, FakeOutbox())
        async with running(publisher):
            hold.holding = True
            with caplog.at_level("WARNING", logger="mqtt"):
                for k in range(STATE_INFLIGHT):
                    publisher.update_state(state(f"w{k}", 70))
                await until(lambda: len(hold.held) >= STATE_INFLIGHT)
            hold.release()
            await until(lambda: publisher.stats.states_published == STATE_INFLIGHT)
    pending = [r for r in caplog.records if "pending publish calls" in r.getMessage()]
    assert not pending, pending[0].getMessage()
