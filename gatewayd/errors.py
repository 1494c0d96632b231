"""The exception hierarchy: one root, a few subclasses, advice in the message.

Foreign errors (bleak, aiomqtt, sqlite3, onnxruntime, OSError) are translated at the boundary
with ``raise ... from exc`` so callers catch ``GatewayError`` and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

#: sysexits.h EX_CONFIG: the configuration is wrong; systemd units list it in
#: RestartPreventExitStatus so a broken file is not restarted in a loop.
EXIT_CONFIG: Final = 78
#: sysexits.h EX_USAGE.
EXIT_USAGE: Final = 64
#: sysexits.h EX_UNAVAILABLE: a feature that is not built yet, or a service we need is absent.
EXIT_UNAVAILABLE: Final = 69


class GatewayError(Exception):
    """Root of every error gatewayd raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable, not TOML, or fails validation."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


class DatasetError(GatewayError):
    """A recording file is missing, truncated, malformed or not in the expected layout.

    ``file`` is the path (or ``archive:member``) that was wrong; the message starts with its name.
    """

    def __init__(self, file: str | os.PathLike[str], message: str) -> None:
        self.file = os.fspath(file)
        self.message = message
        super().__init__(f"{Path(self.file).name}: {message}")


class DecodeError(GatewayError):
    """Bytes from a wearable could not be decoded.

    ``reason`` is a short stable identifier (for counters and logs); the message says more.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class EmulatorError(GatewayError):
    """The BLE emulator could not start, or was used the wrong way."""


class StoreError(GatewayError):
    """The event log could not be opened, read or written; the message says what to do.

    ``path`` is the database file; ``code`` the SQLite primary result code when there was one.
    """

    def __init__(self, path: str | Path, message: str, *, code: int | None = None) -> None:
        self.path = Path(path)
        self.message = message
        self.code = code
        super().__init__(f"store {self.path}: {message}")


class NotYetAvailableError(GatewayError):
    """A command or feature that a later milestone builds."""
