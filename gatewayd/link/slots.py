"""Connection-slot budget across adapters: a controller holds only a few LE connections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal


class SlotBudget:
    """How many connections each adapter may hold, and how many it holds now (pure)."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        if not limits:
            raise ValueError("at least one adapter is needed")
        for name, limit in limits.items():
            if limit < 1:
                raise ValueError(f"adapter {name}: slot limit {limit} must be at least 1")
        self._limits = dict(limits)
        self._used = dict.fromkeys(limits, 0)

    @property
    def adapters(self) -> tuple[str, ...]:
        """Adapter names, in configuration order."""
        return tuple(self._limits)

    @property
    def total(self) -> int:
        """Slots on every adapter together."""
        return sum(self._limits.values())

    def total_free(self) -> int:
        """Free slots on every adapter together."""
        return sum(self.free(a) for a in self._limits)

    def used(self, adapter: str) -> int:
        """Connections held on ``adapter``."""
        return self._used[adapter]

    def free(self, adapter: str) -> int:
        """Free slots on ``adapter``."""
        return self._limits[adapter] - self._used[adapter]

    def choose(self, candidates: Mapping[str, int] | Iterable[str]) -> str | None:
        """The adapter to connect through, or None when every candidate is full.

        ``candidates`` maps adapter -> RSSI (dBm) of the device as that adapter sees it, or is a
        plain iterable of adapters. Prefer the adapter with the most free slots, then the
        strongest signal, then configuration order: load spreads and links stay robust.
        """
        rssi = dict(candidates) if isinstance(candidates, Mapping) else dict.fromkeys(candidates, 0)
        usable = [a for a in self._limits if a in rssi and self.free(a) > 0]
        if not usable:
            return None
        return max(usable, key=lambda a: (self.free(a), rssi[a], -self.adapters.index(a)))

    def take(self, adapter: str) -> None:
        """Hold one slot on ``adapter``."""
        if self.free(adapter) <= 0:
            raise RuntimeError(f"adapter {adapter} has no free slot")
        self._used[adapter] += 1

    def release(self, adapter: str) -> None:
        """Give one slot on ``adapter`` back."""
        if self._used[adapter] <= 0:
            raise RuntimeError(f"adapter {adapter} holds no slot to release")
        self._used[adapter] -= 1


@dataclass
class SlotsAlarm:
    """When the gateway raises and clears its ``connection_slots_full`` event (pure: the caller
    passes the clock and the count of devices waiting for a slot at each look).

    Raised at the first look that finds a device waiting; cleared once none has waited for
    ``clear_after_s``, so that wearables taking turns at a full adapter do not raise and clear
    it at every turn. ``raised`` starts True when the last run left it raised.
    """

    clear_after_s: float
    raised: bool = False
    #: Since when no device has waited, while raised.
    calm_since: float | None = None

    def step(self, waiting: int, now: float) -> Literal["raised", "cleared"] | None:
        """The transition this look makes, if any."""
        if waiting:
            self.calm_since = None
            if self.raised:
                return None
            self.raised = True
            return "raised"
        if not self.raised:
            return None
        if self.calm_since is None:
            self.calm_since = now
        if now - self.calm_since < self.clear_after_s:
            return None
        self.raised, self.calm_since = False, None
        return "cleared"
