"""GATT identifiers of the gatewayd wearable service and the standard services we use."""

from __future__ import annotations

from typing import Final


def _sig_uuid(short: int) -> str:
    """Expand a 16-bit Bluetooth SIG UUID to the 128-bit string form bleak reports."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


#: The custom service every gatewayd wearable advertises (docs/protocol.md §1). Fixed forever.
SERVICE_UUID: Final = "20a40001-a8a0-4c23-8e5f-58a9a94896c0"
#: Notify: message fragments, wearable -> gateway.
DATA_CHAR_UUID: Final = "20a40002-a8a0-4c23-8e5f-58a9a94896c0"
#: Write with response: commands, gateway -> wearable.
CONTROL_CHAR_UUID: Final = "20a40003-a8a0-4c23-8e5f-58a9a94896c0"
#: Read: protocol and firmware versions, boot id, model, rates.
INFO_CHAR_UUID: Final = "20a40004-a8a0-4c23-8e5f-58a9a94896c0"

BATTERY_SERVICE_UUID: Final = _sig_uuid(0x180F)
BATTERY_LEVEL_CHAR_UUID: Final = _sig_uuid(0x2A19)
HEART_RATE_SERVICE_UUID: Final = _sig_uuid(0x180D)
HEART_RATE_MEASUREMENT_CHAR_UUID: Final = _sig_uuid(0x2A37)

#: ATT's default MTU; a notification then carries MTU - 3 = 20 bytes.
DEFAULT_MTU: Final = 23
#: Largest ATT MTU BlueZ negotiates.
MAX_MTU: Final = 517
ATT_HEADER_SIZE: Final = 3
