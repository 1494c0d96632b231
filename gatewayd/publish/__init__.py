"""publish: the MQTT side (docs/mqtt.md).

`Publisher` (client.py) runs the aiomqtt connection loop; payloads.py holds the JSON payload
models, topics.py the topic tree and Home Assistant discovery, backoff.py the reconnect delays.
"""

from gatewayd.publish.client import OutboxItem, OutboxSource, Publisher, PublisherStats
from gatewayd.publish.payloads import Alert, DeviceState, GatewayAlert, Status, Telemetry
from gatewayd.publish.topics import TopicError, Topics

__all__ = [
    "Alert",
    "DeviceState",
    "GatewayAlert",
    "OutboxItem",
    "OutboxSource",
    "Publisher",
    "PublisherStats",
    "Status",
    "Telemetry",
    "TopicError",
    "Topics",
]
