"""The MQTT publisher: one aiomqtt connection, reconnected forever, fed by the outbox.

Alerts are durable: they come from the store's outbox (`OutboxSource`), are published at QoS 1
one at a time in outbox order (so in order per device), and are marked published only after
the broker's PUBACK. Device alerts go to ``devices/<device_id>/alerts``, gateway-level ones
(no device) to ``<base>/alerts``. Anything not acknowledged when a connection drops is
published again on the next connection: delivery is at least once, subscribers drop
duplicates by ``event_id``.

State and telemetry are best effort and live in memory: the latest `DeviceState` per device
(re-published, retained, on every connect) and a bounded telemetry queue, one FIFO per device
served round-robin, whose overflow drops the oldest window of the device with the most queued,
counted and logged. The alert kinds open on each device (`OpenAlerts`, retained) follow the
alerts as they are delivered.

Alerts go first: while an alert is due (`notify` called and the alert loop has not yet sent
everything the outbox holds) no state or telemetry is written to the connection. States, open
sets and discovery configs are QoS 1 but sent without waiting for their PUBACK in line (the
acknowledgements are awaited beside, at most `STATE_INFLIGHT` at a time), so telemetry never
waits behind a state's round trip.

On every connect the publisher reads back what the broker retains for this gateway (its
discovery configs, device states and open-alert sets), then clears what should not be there:
the topics of a device no longer paired, configs of entity kinds this version does not
publish, every config when discovery is off (`stale_topics`). The open-alert sets it reads
seed its own after a restart.

``async with Publisher(...) as publisher`` reads the password and TLS files (a ConfigError
there is raised at once, before the gateway says it is ready) and runs the connection loop;
leaving publishes status offline within the grace period and stops.

Sessions are clean (``clean_session=True``): the outbox, not the broker or paho's in-memory
queue, is the durable copy, and a new aiomqtt client is built per connection anyway. See
docs/mqtt.md for the whole contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, NoReturn, Protocol, Self

import aiomqtt
import paho.mqtt.client as mqtt
import structlog
from pydantic import SecretStr

from gatewayd import __version__
from gatewayd.config import MqttConfig, TlsConfig, resolve_mqtt_password
from gatewayd.errors import ConfigError
from gatewayd.lanes import Lanes
from gatewayd.lifecycle import EnterOnce, start_task, stop_task
from gatewayd.publish.backoff import MqttFailure, backoff_delay, classify
from gatewayd.publish.payloads import DeviceState, OpenAlerts, Status, Telemetry
from gatewayd.publish.topics import (
    ALERT_KINDS,
    RETAINED_CHANNELS,
    DiscoveryMessage,
    TopicError,
    Topics,
    config_filter,
    device_discovery_topics,
    discovery_messages,
    gateway_discovery_message,
    stale_topics,
)

__all__ = [
    "OutboxItem",
    "OutboxSource",
    "Publisher",
    "PublisherStats",
    "load_credentials",
    "mqtt_client",
    "read_retained",
    "tls_context",
]

log = structlog.get_logger("gatewayd.publish")

#: Default seconds between outbox re-scans when nobody calls `Publisher.notify`.
RESCAN_INTERVAL_S: Final = 5.0
#: Default safety timeout for the connect handshake and each acknowledged publish.
OPERATION_TIMEOUT_S: Final = 10.0
#: Default bound of the in-memory telemetry queue (windows, all devices together).
TELEMETRY_QUEUE_SIZE: Final = 1024
#: Default bound on the time a graceful stop spends finishing in-flight work.
STOP_GRACE_S: Final = 5.0
#: Leaving the publisher waits this long after the grace period for status "offline".
STATUS_GRACE_S: Final = 2.0
OUTBOX_BATCH: Final = 100
#: States, open-alert sets and discovery configs sent and not yet acknowledged, at most. Below
#: paho's window of 20 unacknowledged QoS 1 messages, so an alert always fits in it at once.
STATE_INFLIGHT: Final = 16
#: Set on the broker connection: each publish leaves at once. Without it Nagle's algorithm holds
#: telemetry back behind a QoS 1 publish until its PUBACK (or the broker's delayed ACK) arrives.
SOCKET_OPTIONS: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
#: Telemetry messages queued to the connection in one go (at most), one socket write
#: registration and one awaited publish for them all; checked against a due alert before each.
TELEMETRY_BURST: Final = 32


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One durable message waiting in the store's outbox."""

    event_id: str
    #: The device it is about; None for a gateway-level alert (topic ``<base>/alerts``).
    device_id: str | None
    #: The JSON payload, already serialised (an `Alert` for channel "alerts", a `GatewayAlert`
    #: when there is no device).
    payload: bytes
    #: The device topic it goes to; "alerts" (QoS 1, not retained) unless the store says else.
    channel: str = "alerts"


class OutboxSource(Protocol):
    """The store's outbox, as the publisher sees it."""

    async def pending(self, limit: int) -> Sequence[OutboxItem]:
        """Up to ``limit`` unpublished items, oldest first (append order)."""
        ...

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        """Record that the broker acknowledged these items; they are not returned again."""
        ...

    async def record_attempt(self, event_ids: Sequence[str]) -> None:
        """Count one publish attempt for these items (an item sent again after a drop has 2+)."""
        ...


@dataclass(slots=True)
class PublisherStats:
    """Counters for logs, STATUS= lines and `gatewayd bench`."""

    connects: int = 0
    connection_failures: int = 0
    alerts_published: int = 0
    alerts_rejected: int = 0
    states_published: int = 0
    telemetry_published: int = 0
    telemetry_dropped: int = 0
    open_alerts_published: int = 0
    #: Retained topics emptied on connect (a removed device, an obsolete config).
    topics_cleared: int = 0
    last_error: str | None = field(default=None)


Backoff = Callable[[MqttFailure, int], float]
#: Why a connection attempt failed, in the user's terms: (message, fix); see `Publisher`.
Explain = Callable[[BaseException], tuple[str, str]]


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """An SSLContext for [mqtt.tls]. Reads files: call it from a thread, not the event loop."""
    where = tls.ca_file or tls.cert_file or "mqtt.tls"
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except FileNotFoundError as exc:
        raise ConfigError(exc.filename or where, "mqtt.tls: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            where, f"mqtt.tls: cannot load the CA, certificate or key: {exc}"
        ) from exc
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def load_credentials(
    mqtt: MqttConfig, env: Mapping[str, str] | None = None
) -> tuple[SecretStr | None, ssl.SSLContext | None]:
    """The broker password and TLS context [mqtt] names; ConfigError if a file cannot be used.

    What `gatewayd check-config` checks and what the publisher loads before the gateway is
    ready: the same function, so the two cannot disagree. Reads files (call it off the loop).
    """
    password = resolve_mqtt_password(mqtt, env)
    return password, tls_context(mqtt.tls) if mqtt.tls.enabled else None


async def read_retained(
    client: aiomqtt.Client,
    filters: Sequence[str],
    *,
    marker: str,
    publish_marker: Callable[[], Awaitable[bytes]],
) -> dict[str, bytes]:
    """What the broker retains under ``filters``: topic -> payload (non-empty, retained only).

    Subscribes to ``filters`` and then ``marker`` in one SUBSCRIBE, calls ``publish_marker``
    (which publishes to ``marker`` and returns the payload it sent) and reads until that payload
    comes back on ``marker``. A broker sends a subscription's retained messages before it
    handles the client's next packet, and forwards one client's messages in order, so by then
    every retained message is in. Unsubscribes before returning; bound the wait with a timeout.
    """
    await client.subscribe([(f, 1) for f in (*filters, marker)])
    found: dict[str, bytes] = {}
    try:
        sent = await publish_marker()
        async for message in client.messages:
            payload = bytes(message.payload)
            if message.topic.matches(marker) and payload == sent:
                break
            # Retained only: a running gateway's live messages are not what the broker keeps.
            # Matching only: amqtt also sends retained messages of others' subscriptions.
            if message.retain and payload and any(message.topic.matches(f) for f in filters):
                found[message.topic.value] = payload
    finally:
        await client.unsubscribe([*filters, marker])
    return found


def mqtt_client(
    mqtt: MqttConfig,
    identifier: str,
    password: SecretStr | None,
    context: ssl.SSLContext | None,
    *,
    timeout_s: float,
    will: aiomqtt.Will | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client for [mqtt]: MQTT 3.1.1, clean session, its auth and TLS, TCP_NODELAY.

    ``password`` from `resolve_mqtt_password`, ``context`` from `tls_context` (both read files:
    call them in a thread); ``timeout_s`` bounds the CONNACK wait, each acknowledgement and
    the DISCONNECT.
    """
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=identifier,
        username=mqtt.username,
        password=password.get_secret_value() if password is not None else None,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        keepalive=mqtt.keepalive_s,
        timeout=timeout_s,
        will=will,
        tls_context=context,
        tls_insecure=True if context is not None and mqtt.tls.insecure else None,
        socket_options=SOCKET_OPTIONS,
    )
    # aiomqtt warns from 11 QoS 1 publishes awaiting their PUBACK; the publisher keeps up to
    # STATE_INFLIGHT states and one alert so on purpose, and would log a warning per publish.
    client.pending_calls_threshold = STATE_INFLIGHT + 1
    return client


def _queue_qos0(client: aiomqtt.Client, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
    """Queue a QoS 0 publish on ``client``'s connection without awaiting its write."""
    # aiomqtt has no call that queues a publish without awaiting it: its paho client does.
    info = client._client.publish(topic, payload, qos=0)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, "Could not publish telemetry")
    return info


def _cork(client: aiomqtt.Client, on: bool) -> bool:
    """Hold (``on``) or release the connection's partial TCP segments (Linux's TCP_CORK): a
    telemetry burst leaves in as few segments as it fills, not one per message, which saves a
    pass through the network stack per message here and in the broker. False where there is no
    TCP_CORK or no socket."""
    cork = getattr(socket, "TCP_CORK", None)
    setsockopt = getattr(client._client.socket(), "setsockopt", None)  # none on a websocket
    if cork is None or setsockopt is None:
        return False
    try:
        setsockopt(socket.IPPROTO_TCP, cork, 1 if on else 0)
    except OSError:
        return False
    return True


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a session when a graceful stop finished."""


class Publisher:
    """Publishes status, device state, telemetry and outbox alerts; reconnects forever.

    Run `run` as a task; call `stop` for a graceful stop (status "offline", retained, then a
    clean disconnect). `notify` after appending to the outbox, `update_state` and
    `publish_telemetry` from the pipeline; none of the three blocks or raises on a broker
    outage.

    ``paired`` is the ids of the devices the gateway serves (its paired list): retained topics
    and discovery configs of any other device of this gateway are cleared on connect. None
    (the default) clears no device, since a device not seen yet cannot be told from a removed
    one.

    A failed connection attempt is logged at WARNING once per change of cause (then at DEBUG
    while it repeats) and kept in `problem`. ``explain`` turns the attempt's error into that
    cause and its fix (`gatewayd run` passes `gatewayd doctor`'s words,
    gatewayd.doctor.broker_failure); without it the cause is "cannot connect to the MQTT
    broker" and the error.
    """

    def __init__(
        self,
        mqtt: MqttConfig,
        gateway_id: str,
        outbox: OutboxSource,
        *,
        env: Mapping[str, str] | None = None,
        rescan_interval_s: float = RESCAN_INTERVAL_S,
        operation_timeout_s: float = OPERATION_TIMEOUT_S,
        telemetry_queue_size: int = TELEMETRY_QUEUE_SIZE,
        stop_grace_s: float = STOP_GRACE_S,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] | None = None,
        paired: Iterable[str] | None = None,
        explain: Explain | None = None,
    ) -> None:
        self._mqtt = mqtt
        self._explain = explain
        #: Why the last connection attempt failed (None while connected or not tried yet).
        self._problem: str | None = None
        self._paired = frozenset(paired) if paired is not None else None
        self._topics = Topics(mqtt.topic_root, gateway_id)
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._env = env
        self._rescan_s = rescan_interval_s
        self._op_timeout_s = operation_timeout_s
        self._stop_grace_s = stop_grace_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._backoff: Backoff = backoff or (
            lambda kind, attempt: backoff_delay(kind, attempt, rng=self._rng)
        )
        self._clock = clock or (lambda: datetime.now(UTC))
        self._outbox_wake = asyncio.Event()
        self._stream_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._states: dict[str, DeviceState] = {}
        self._dirty_states: dict[str, None] = {}  # insertion-ordered set
        #: Telemetry by device, served round-robin.
        self._telemetry: Lanes[str, Telemetry] = Lanes()
        #: Set while no alert is due: the stream loop writes only then (alerts go first).
        self._alerts_sent = asyncio.Event()
        self._inflight = asyncio.Semaphore(STATE_INFLIGHT)
        self._telemetry_max = telemetry_queue_size
        self._dropping = False
        #: Device id -> the (model, firmware) its discovery configs were published with.
        self._discovered: dict[str, tuple[str | None, str | None]] = {}
        self._open: dict[str, OpenAlerts] = {}
        self._dirty_open: dict[str, None] = {}
        #: Devices let go (`forget`) whose retained topics are still to be emptied.
        self._forgotten: dict[str, None] = {}
        self._enter = EnterOnce("Publisher")
        self.task: asyncio.Task[None] | None = None
        self.stats = PublisherStats()

    @property
    def topics(self) -> Topics:
        """The topic tree this publisher writes to."""
        return self._topics

    @property
    def connected(self) -> bool:
        """Whether a broker connection is up and announced (status online published)."""
        return self._connected.is_set()

    @property
    def problem(self) -> str | None:
        """Why the broker is not connected, when an attempt failed: the cause logged last."""
        return None if self.connected else self._problem

    async def wait_connected(self) -> None:
        """Return once a connection is up and announced."""
        await self._connected.wait()

    def notify(self) -> None:
        """Tell the publisher the outbox has new items (cheap; call after every append)."""
        self._outbox_wake.set()
        # Stopping: the alert loop may have returned already, and nothing may wait for it.
        if not self._stopping.is_set():
            self._alerts_sent.clear()

    def stop(self) -> None:
        """Ask `run` to finish in-flight work, publish status offline and return."""
        self._stopping.set()
        self._outbox_wake.set()
        self._stream_wake.set()

    def set_paired(self, paired: Iterable[str]) -> None:
        """The gateway's paired list changed: whose retained topics the next connect keeps."""
        self._paired = frozenset(paired)

    def forget(self, device_id: str) -> None:
        """A device taken off the paired list (after its last alert went to the outbox): drop its
        state and open-alert set, and empty its retained topics (state, open alerts, discovery
        configs: Home Assistant removes its entities) now if connected, else on connect.

        Its telemetry still queued is sent; its alerts are delivered (the outbox holds them) but
        no longer change an open-alert set, since a device off the paired list has none.
        """
        for held in (self._states, self._dirty_states, self._open, self._dirty_open,
                     self._discovered):  # fmt: skip
            held.pop(device_id, None)
        self._forgotten[device_id] = None
        self._stream_wake.set()

    def update_state(self, state: DeviceState) -> None:
        """Set a device's latest state; published retained now if connected, else on connect."""
        self._topics.state(state.device_id)  # reject a bad alias here, at the caller
        self._states[state.device_id] = state
        self._dirty_states[state.device_id] = None
        self._stream_wake.set()

    def publish_telemetry(self, telemetry: Telemetry) -> bool:
        """Queue one window's telemetry (QoS 0). Returns False if the queue overflowed.

        On overflow the oldest window of the device with the most queued is dropped: recent
        telemetry is worth more, and a device that floods does not push out the others'.
        """
        self._topics.telemetry(telemetry.device_id)
        dropped = len(self._telemetry) >= self._telemetry_max
        if dropped:
            victim = self._telemetry.longest()
            self._telemetry.drop_oldest(victim)
            self.stats.telemetry_dropped += 1
            (log.debug if self._dropping else log.warning)(
                "telemetry queue full; dropping the oldest window of the busiest device",
                device=victim,
                queue_size=self._telemetry_max,
                dropped_total=self.stats.telemetry_dropped,
                connected=self.connected,
            )
            self._dropping = True
        self._telemetry.append(telemetry.device_id, telemetry)
        self._stream_wake.set()
        return not dropped

    # --- the connection loop ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._enter()
        credentials = await self._credentials()
        self.task = start_task(self._run(*credentials), "publisher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Publish status offline and stop: bounded by the grace period plus the op timeout."""
        self.stop()
        task = self.task
        if task is None or task.done():
            return
        # The grace period for the loops, then a little for status "offline".
        bound = self._stop_grace_s + min(self._op_timeout_s, STATUS_GRACE_S)
        await asyncio.wait({task}, timeout=bound)
        if not task.done():
            log.warning("publisher did not stop in time; cancelling", timeout_s=bound)
        await stop_task(task, "publisher stopping: grace period over", 1.0)

    async def _credentials(self) -> tuple[SecretStr | None, ssl.SSLContext | None]:
        """The password and TLS context; ConfigError if their files cannot be read."""
        # Reads files (blocking): keep it off the event loop.
        return await asyncio.to_thread(load_credentials, self._mqtt, self._env)

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff until `stop`; raises only ConfigError.

        Raises ConfigError if the password or TLS files cannot be read. The same loop as
        ``async with`` runs, for a caller that owns the task.
        """
        self._enter()
        await self._run(*await self._credentials())

    async def _run(self, password: SecretStr | None, context: ssl.SSLContext | None) -> None:
        try:
            await self._loop(password, context)
        finally:
            self._connected.clear()

    async def _loop(self, password: SecretStr | None, context: ssl.SSLContext | None) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._session(password, context)
            except _Stop:
                return
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                error: BaseException = exc
            except BaseExceptionGroup as group:
                # From the session's TaskGroup: a dropped connection, or a real bug to re-raise.
                matched, rest = group.split((aiomqtt.MqttError, TimeoutError, OSError))
                if rest is not None or matched is None:
                    raise
                error = _first_leaf(matched)
            was_connected = self._connected.is_set()
            self._connected.clear()
            kind = classify(error, was_connected=was_connected)
            failures = 1 if was_connected else failures + 1
            self.stats.connection_failures += 1
            cause = error.__cause__
            self.stats.last_error = (str(error) or type(error).__name__) + (
                f" ({cause})" if cause is not None else ""
            )
            delay = self._backoff(kind, failures)
            if was_connected:
                problem, fix = "MQTT connection lost", ""
            elif self._explain is not None:
                problem, fix = self._explain(error)
            else:
                problem, fix = "cannot connect to the MQTT broker", ""
            # Said once per change of cause; the retries of the same cause at DEBUG.
            changed = problem != self._problem
            self._problem = problem
            (log.warning if changed else log.debug)(
                f"{problem}; alerts are kept in the outbox and sent when it is back",
                host=self._mqtt.host,
                port=self._mqtt.port,
                error=self.stats.last_error,
                kind=kind.value,
                attempt=failures,
                retry_in_s=round(delay, 2),
                **({"fix": fix} if fix else {}),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    def _client(self, password: SecretStr | None, context: ssl.SSLContext | None) -> aiomqtt.Client:
        will = Status(state="offline", gateway_id=self._gateway_id, reason="connection_lost")
        return mqtt_client(
            self._mqtt,
            self._mqtt.effective_client_id(self._gateway_id),
            password,
            context,
            # The safety timeout of the CONNACK wait, of each PUBACK and of the DISCONNECT.
            timeout_s=self._op_timeout_s,
            will=aiomqtt.Will(self._topics.status, will.to_json(), qos=1, retain=True),
        )

    async def _session(
        self, password: SecretStr | None, context: ssl.SSLContext | None
    ) -> NoReturn:
        """One connection, from connect to drop (raises) or graceful stop (raises _Stop)."""
        client = self._client(password, context)
        async with client:
            self.stats.connects += 1
            # Unknown until the alert loop has read the outbox: the backlog goes first.
            self._alerts_sent.clear()
            self._inflight = asyncio.Semaphore(STATE_INFLIGHT)
            try:
                await self._announce(client)
                self._connected.set()
                self._problem = None
                log.info(
                    "connected to the MQTT broker",
                    host=self._mqtt.host,
                    port=self._mqtt.port,
                    status_topic=self._topics.status,
                )
                async with asyncio.TaskGroup() as tg:
                    watch = tg.create_task(self._watch(client), name="mqtt-watch")
                    work = [
                        tg.create_task(self._alert_loop(client), name="mqtt-alerts"),
                        tg.create_task(self._stream_loop(client), name="mqtt-stream"),
                    ]
                    await self._stopping.wait()
                    # Graceful stop: let the loops finish the item in hand, then stop them.
                    await asyncio.wait(work, timeout=self._stop_grace_s)
                    for task in (*work, watch):
                        task.cancel()
                await self._publish_status(client, "offline", "shutdown")
            except asyncio.CancelledError:
                # Cancelled rather than stopped: a clean DISCONNECT suppresses the last will,
                # so say "offline" ourselves, briefly, before aiomqtt disconnects.
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    await self._publish_status(client, "offline", "shutdown", limit_s=1.0)
                raise
        log.info("disconnected from the MQTT broker (stop)")
        raise _Stop

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Raise MqttError as soon as the connection drops (we subscribe to nothing).

        aiomqtt's message iterator is its public signal for a lost connection; without it a
        publish waiting for its PUBACK would only notice at its timeout.
        """
        async for _ in client.messages:
            pass

    async def _publish_status(
        self, client: aiomqtt.Client, state: str, reason: str, *, limit_s: float | None = None
    ) -> bytes:
        """Publish status (retained, QoS 1); return the payload sent."""
        status = Status.model_validate(
            {
                "state": state,
                "gateway_id": self._gateway_id,
                "reason": reason,
                "t": self._clock(),
                "version": __version__,
            }
        )
        payload = status.to_json()
        await client.publish(
            self._topics.status,
            payload,
            qos=1,
            retain=True,
            timeout=limit_s or self._op_timeout_s,
        )
        return payload

    async def _announce(self, client: aiomqtt.Client) -> None:
        """On every (re)connect: status online, the retained-topic sweep, HA discovery, then
        every known device state and open-alert set (published by the stream loop)."""
        retained = await self._read_retained(client)
        self._discovered.clear()
        if retained is not None:
            configs, device_topics = retained
            await self._clear_stale(client, configs, device_topics)
            self._seed_open_alerts(device_topics)
        if self._mqtt.homeassistant_discovery:
            message = gateway_discovery_message(
                self._topics, prefix=self._mqtt.discovery_prefix, sw_version=__version__
            )
            await client.publish(message.topic, message.payload, qos=1, retain=True)
        for device_id in list(self._states):
            self._dirty_states[device_id] = None
        for device_id in list(self._open):
            self._dirty_open[device_id] = None
        if self._dropping and self.stats.telemetry_dropped:
            log.info("telemetry dropped while disconnected", total=self.stats.telemetry_dropped)
        self._dropping = False
        self._stream_wake.set()

    async def _read_retained(
        self, client: aiomqtt.Client
    ) -> tuple[dict[str, bytes], dict[str, bytes]] | None:
        """Publish status online and return what the broker retains for this gateway.

        ``(configs, device_topics)``: discovery configs under our node id, and retained device
        topics (state, open_alerts), topic -> payload; our own status publish is the marker.
        Returns None, after a warning, if it does not come back in time: nothing is cleared.
        """
        config_topics = config_filter(self._topics, self._mqtt.discovery_prefix)
        try:
            async with asyncio.timeout(self._op_timeout_s):
                found = await read_retained(
                    client,
                    [config_topics, *self._topics.retained_filters()],
                    marker=self._topics.status,
                    publish_marker=lambda: self._publish_status(client, "online", "connected"),
                )
        except TimeoutError:
            log.warning(
                "could not read back the retained topics of this gateway; nothing cleared",
                timeout_s=self._op_timeout_s,
            )
            # The marker may not have gone out: say online all the same.
            await self._publish_status(client, "online", "connected")
            return None
        configs = {t: p for t, p in found.items() if aiomqtt.Topic(t).matches(config_topics)}
        device_topics = {t: p for t, p in found.items() if t not in configs}
        return configs, device_topics

    async def _clear_stale(
        self, client: aiomqtt.Client, configs: dict[str, bytes], device_topics: dict[str, bytes]
    ) -> None:
        stale = stale_topics(
            self._topics,
            configs=configs,
            device_topics=device_topics,
            prefix=self._mqtt.discovery_prefix,
            discovery=self._mqtt.homeassistant_discovery,
            paired=self._paired,
        )
        for topic in stale:
            await client.publish(topic, b"", qos=1, retain=True, timeout=self._op_timeout_s)
            configs.pop(topic, None)
            device_topics.pop(topic, None)
        if stale:
            self.stats.topics_cleared += len(stale)
            log.info(
                "cleared retained topics of removed devices or obsolete entities",
                count=len(stale),
                topics=stale if len(stale) <= 20 else [*stale[:20], "..."],
            )

    def _seed_open_alerts(self, device_topics: Mapping[str, bytes]) -> None:
        """Take the broker's open-alert sets for devices this process has no set for yet."""
        for topic, payload in device_topics.items():
            parsed = self._topics.parse_device_topic(topic)
            if parsed is None or parsed[1] != "open_alerts" or parsed[0] in self._open:
                continue
            try:
                seeded = OpenAlerts.model_validate_json(payload)
            except ValueError:
                continue  # not ours to trust: the device's next state publishes a fresh set
            if seeded.device_id == parsed[0] and seeded.gateway_id == self._gateway_id:
                self._open[parsed[0]] = seeded

    def _note_alert(self, item: OutboxItem) -> bool:
        """Follow a delivered alert in the device's open-alert set (rule kinds only).

        Returns whether the set was touched (it is then dirty).
        """
        if item.device_id is None or item.channel != "alerts":
            return False
        if self._paired is not None and item.device_id not in self._paired:
            return False  # taken off the paired list: its retained set is emptied, not kept
        try:
            body = json.loads(item.payload)
        except ValueError:
            return False
        kind = body.get("kind") if isinstance(body, dict) else None
        state = body.get("state") if isinstance(body, dict) else None
        if kind not in ALERT_KINDS or state not in ("raised", "cleared"):
            return False
        current = self._open.get(item.device_id)
        kinds = set(current.kinds) if current is not None else set()
        if state == "raised":
            kinds.add(kind)
        else:
            kinds.discard(kind)
        self._set_open(item.device_id, kinds)
        return True

    def _set_open(self, device_id: str, kinds: Iterable[str]) -> None:
        self._open[device_id] = OpenAlerts(
            device_id=device_id,
            gateway_id=self._gateway_id,
            kinds=tuple(sorted(kinds)),
            t=self._clock(),
        )
        self._dirty_open[device_id] = None
        self._stream_wake.set()

    def _discover(self, state: DeviceState) -> list[DiscoveryMessage]:
        """A device's discovery configs to publish: once per connection, and again when its
        model or firmware changes (they are in the HA device block)."""
        device = (state.model, state.firmware)
        if (
            not self._mqtt.homeassistant_discovery
            or self._discovered.get(state.device_id) == device
        ):
            return []
        self._discovered[state.device_id] = device
        return list(
            discovery_messages(
                self._topics,
                state.device_id,
                prefix=self._mqtt.discovery_prefix,
                model=state.model,
                sw_version=state.firmware,
                origin_version=__version__,
            )
        )

    async def _wait(self, event: asyncio.Event, wait_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await event.wait()

    def _outbox_topic(self, item: OutboxItem) -> str:
        """Where an outbox item goes: its device's channel, or the gateway's alert topic.

        Derived from the item, never from the topic string stored with the outbox row, so a
        changed topic root or layout applies to rows written before the change.
        """
        if item.device_id is not None:
            return self._topics.device(item.device_id, item.channel)
        if item.channel != "alerts":
            raise TopicError(f"a gateway-level outbox item must be an alert, not {item.channel!r}")
        return self._topics.gateway_alerts

    async def _alert_loop(self, client: aiomqtt.Client) -> None:
        """Publish the outbox in order, one QoS 1 message at a time, marking each after PUBACK.

        One at a time keeps per-device order across reconnects: a pipelined batch could have
        a later alert acknowledged and an earlier one lost with the connection. A graceful stop
        comes after the pipeline has drained, so the loop then sends what is still pending
        (the alerts of the last windows and of the links' closing) and returns once the outbox
        is empty; the stop's grace period bounds it, and what it leaves goes at the next start.
        """
        while True:
            self._outbox_wake.clear()  # before reading, so a notify() during the read counts
            items = await self._outbox.pending(OUTBOX_BATCH)
            if not items and self._stopping.is_set():
                break
            for item in items:
                try:
                    topic = self._outbox_topic(item)
                except TopicError as exc:
                    # It can never be published; holding it would block every later alert.
                    self.stats.alerts_rejected += 1
                    log.error(  # noqa: TRY400 - an expected, explained condition: no traceback
                        "outbox item has no valid topic; dropped",
                        event_id=item.event_id,
                        error=str(exc),
                    )
                    await self._outbox.mark_published([item.event_id])
                    continue
                await self._outbox.record_attempt([item.event_id])
                await client.publish(
                    topic,
                    item.payload,
                    qos=1,
                    retain=item.channel == "state",
                    timeout=self._op_timeout_s,
                )
                # Only now, after the PUBACK: a crash before this line means a duplicate, which
                # subscribers drop by event_id, never a loss.
                await self._outbox.mark_published([item.event_id])
                self.stats.alerts_published += 1
                # The device's open-alert set follows its alert at once, from this task: a
                # stop after the alert cannot leave the retained set behind it.
                if self._note_alert(item):
                    await self._publish_open_alerts(client)
            if len(items) < OUTBOX_BATCH:
                if not self._outbox_wake.is_set():
                    self._alerts_sent.set()  # nothing due: the stream loop may write
                if not self._stopping.is_set():
                    await self._wait(self._outbox_wake, self._rescan_s)
        self._alerts_sent.set()

    async def _stream_loop(self, client: aiomqtt.Client) -> None:
        """Send dirty device states and open-alert sets (retained, QoS 1, PUBACKs awaited
        beside), then drain the queued telemetry (QoS 0), round-robin over devices; before
        each write, wait until no alert is due."""
        async with asyncio.TaskGroup() as acks:
            while True:
                self._stream_wake.clear()
                await self._alerts_sent.wait()
                await self._clear_forgotten(client, acks)
                await self._send_open_alerts(client, acks)
                while self._dirty_states:
                    device_id = next(iter(self._dirty_states))
                    state = self._states[device_id]
                    for message in self._discover(state):
                        await self._send(client, acks, message.topic, message.payload)
                    self._dirty_states.pop(device_id, None)  # a newer state dirties it again
                    await self._send(
                        client, acks, self._topics.state(device_id), state.to_json(), "states"
                    )
                    if device_id not in self._open:
                        # A device with no alert yet: its problem sensors read "off", not unknown.
                        self._set_open(device_id, ())
                    await self._send_open_alerts(client, acks)
                    await self._alerts_sent.wait()
                while self._telemetry and not self._dirty_states and not self._dirty_open:
                    await self._alerts_sent.wait()
                    burst = min(TELEMETRY_BURST, len(self._telemetry))
                    await self._send_telemetry(
                        client, [self._telemetry.popleft()[1] for _ in range(burst)]
                    )
                idle = not (
                    self._dirty_states or self._dirty_open or self._telemetry or self._forgotten
                )
                if self._stopping.is_set() and idle:
                    return
                if idle:
                    await self._wait(self._stream_wake, None)

    async def _clear_forgotten(self, client: aiomqtt.Client, acks: asyncio.TaskGroup) -> None:
        """Empty the retained topics of each device let go (`forget`): an empty retained
        message deletes what the broker keeps, and costs nothing where it keeps nothing."""
        while self._forgotten:
            device_id = next(iter(self._forgotten))
            cleared = [self._topics.device(device_id, c) for c in RETAINED_CHANNELS]
            if self._mqtt.homeassistant_discovery:
                cleared += sorted(device_discovery_topics(
                    self._topics, device_id, prefix=self._mqtt.discovery_prefix
                ))  # fmt: skip
            for topic in cleared:
                await self._send(client, acks, topic, b"")
            self._forgotten.pop(device_id, None)
            self.stats.topics_cleared += len(cleared)
            log.info("cleared the retained topics of a device taken off the paired list",
                     device=device_id, count=len(cleared))  # fmt: skip

    async def _send_telemetry(self, client: aiomqtt.Client, burst: Sequence[Telemetry]) -> None:
        """Write ``burst`` (QoS 0) in one go: all but the last are queued in paho at once, the
        last through aiomqtt, whose return (paho writes in order) means all were written; so
        one socket write registration and one awaited publish cover the whole burst. Those
        not written when the connection goes are counted as dropped."""
        queued: list[mqtt.MQTTMessageInfo] = []
        corked = len(burst) > 1 and _cork(client, True)
        try:
            for telemetry in burst[:-1]:
                topic = self._topics.telemetry(telemetry.device_id)
                queued.append(_queue_qos0(client, topic, telemetry.to_json()))
            last = burst[-1]
            await client.publish(
                self._topics.telemetry(last.device_id),
                last.to_json(),
                qos=0,
                timeout=self._op_timeout_s,
            )
        except BaseException:
            written = sum(1 for info in queued if info.is_published())
            self.stats.telemetry_published += written
            # In hand when the connection went.
            self.stats.telemetry_dropped += len(burst) - written
            raise
        finally:
            if corked:
                _cork(client, False)
        self.stats.telemetry_published += len(burst)

    async def _send(
        self,
        client: aiomqtt.Client,
        acks: asyncio.TaskGroup,
        topic: str,
        payload: bytes,
        counted: str | None = None,
    ) -> None:
        """Publish retained at QoS 1 now, and await its PUBACK in ``acks``, not here (waits
        only while `STATE_INFLIGHT` are unacknowledged). A connection lost before the PUBACK
        fails the session; the next connection sends every state and open set again."""
        await self._inflight.acquire()
        sent = client.publish(topic, payload, qos=1, retain=True, timeout=self._op_timeout_s)
        acks.create_task(self._acknowledged(sent, counted))
        # Let the task hand the PUBLISH to paho now, before anything this loop writes next.
        await asyncio.sleep(0)

    async def _acknowledged(self, sent: Awaitable[None], counted: str | None) -> None:
        try:
            await sent
        finally:
            self._inflight.release()
        if counted == "states":
            self.stats.states_published += 1
        elif counted == "open_alerts":
            self.stats.open_alerts_published += 1

    async def _send_open_alerts(self, client: aiomqtt.Client, acks: asyncio.TaskGroup) -> None:
        while self._dirty_open:
            device_id = next(iter(self._dirty_open))
            self._dirty_open.pop(device_id)
            payload = self._open[device_id].to_json()
            await self._send(client, acks, self._topics.open_alerts(device_id), payload,
                             "open_alerts")  # fmt: skip

    async def _publish_open_alerts(self, client: aiomqtt.Client) -> None:
        """The alert loop's: each dirty open-alert set, awaiting its PUBACK."""
        while self._dirty_open:
            device_id = next(iter(self._dirty_open))
            current = self._open[device_id]
            await client.publish(
                self._topics.open_alerts(device_id),
                current.to_json(),
                qos=1,
                retain=True,
                timeout=self._op_timeout_s,
            )
            if self._open[device_id] is current:
                self._dirty_open.pop(device_id, None)
            self.stats.open_alerts_published += 1
