"""gatewayd: an edge gateway for wearable health monitoring."""

__version__ = "0.1.0.dev0"
