"""Clear what a gateway retains on the broker, from outside the running gateway.

`clear_retained` connects with its own client id, reads back the retained topics of one gateway
(or of some of its devices) and empties them: discovery configs under the gateway's node id
(so Home Assistant removes those entities, and a device left without entities), device states
and open-alert sets, and, for the whole gateway, its status. For tools: `gatewayd demo` calls
it on a broker it shares with others, and a command that removes a device can call it to clear
that device's topics at once rather than at the gateway's next connect (docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection, Mapping

import aiomqtt

from gatewayd.config import MqttConfig, resolve_mqtt_password
from gatewayd.publish.client import mqtt_client, read_retained, tls_context
from gatewayd.publish.topics import GATEWAY, Topics, check_device_id, config_filter, config_owner

__all__ = ["clear_retained"]


async def clear_retained(
    mqtt: MqttConfig,
    gateway_id: str,
    *,
    device_ids: Collection[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Empty the retained topics of a gateway (``device_ids`` None) or of some of its devices.

    Returns the topics cleared, sorted. Raises aiomqtt.MqttError when the broker cannot be
    reached or drops the connection, TimeoutError after ``timeout_s``, ConfigError when the
    password or TLS files cannot be read.
    """
    topics = Topics(mqtt.topic_root, gateway_id)
    devices = None if device_ids is None else sorted({check_device_id(d) for d in device_ids})
    if devices == []:
        return []
    configs = config_filter(topics, mqtt.discovery_prefix)
    if devices is None:
        filters = [configs, f"{topics.base}/#"]
        # The marker (`read_retained`): a topic cleared anyway; its empty message comes back
        # after every retained message the subscription brought.
        marker = topics.status
    else:
        filters = [configs, *(f"{topics.base}/devices/{d}/+" for d in devices)]
        marker = topics.state(devices[0])
    password = await asyncio.to_thread(resolve_mqtt_password, mqtt, env)
    context = await asyncio.to_thread(tls_context, mqtt.tls) if mqtt.tls.enabled else None
    async with (
        asyncio.timeout(timeout_s),
        mqtt_client(
            mqtt,
            f"{mqtt.effective_client_id(gateway_id)}-clear-{os.getpid()}",
            password,
            context,
            timeout_s=timeout_s,
        ) as client,
    ):

        async def clear_marker() -> bytes:
            await client.publish(marker, b"", qos=1, retain=True)
            return b""

        found = await read_retained(client, filters, marker=marker, publish_marker=clear_marker)
        stale = sorted(
            topic
            for topic, payload in found.items()
            if topic != marker and _wanted(topics, topic, payload, configs, devices)
        )
        for topic in stale:
            await client.publish(topic, b"", qos=1, retain=True)
    return sorted({*stale, marker})


def _wanted(
    topics: Topics, topic: str, payload: bytes, configs: str, devices: list[str] | None
) -> bool:
    """Whether a retained topic found under the filters is one to clear."""
    if not aiomqtt.Topic(topic).matches(configs):
        return True  # under <base>/# or <base>/devices/<id>/+: the gateway's own topics
    owner = config_owner(topics, payload)
    if owner is None:
        return False
    return devices is None or (owner != GATEWAY and owner in devices)
