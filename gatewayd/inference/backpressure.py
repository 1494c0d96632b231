"""Backpressure: fewer offloads from the busiest wearables while the inference queue stays full.

`plan_backpressure` (pure) decides which wearable to throttle or relax at each periodic check;
`throttled_policy` (pure) what its offload policy becomes; `Governor` runs the checks against
the running worker and link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from gatewayd.protocol.control import SetPolicy

__all__ = [
    "BackpressureConfig",
    "BackpressureState",
    "Governor",
    "plan_backpressure",
    "throttled_policy",
]

log = structlog.get_logger("gatewayd.inference")


@dataclass(frozen=True, slots=True)
class BackpressureConfig:
    """When the inference queue counts as saturated or relaxed, and how far policies move."""

    #: Queue fill (backlog / capacity) at or above which a check counts as saturated.
    high_fraction: float = 0.75
    #: Queue fill at or below which a check counts as relaxed.
    low_fraction: float = 0.25
    #: Consecutive saturated checks before one device is throttled one level more.
    saturated_checks: int = 2
    #: Consecutive relaxed checks before one device is relaxed one level.
    relaxed_checks: int = 3
    max_level: int = 4
    #: Per level: entropy threshold up by this much, minimum confidence down by this much.
    tau_step_mbits: int = 500
    conf_step_e4: int = 1000


@dataclass(frozen=True, slots=True)
class BackpressureState:
    """Throttle level per device (absent = 0) and the current saturated/relaxed streaks."""

    levels: Mapping[str, int] = field(default_factory=dict)
    saturated: int = 0
    relaxed: int = 0


def plan_backpressure(
    state: BackpressureState,
    cfg: BackpressureConfig,
    *,
    backlog: int,
    capacity: int,
    offloads: Mapping[str, int],
) -> tuple[BackpressureState, dict[str, int]]:
    """One periodic check: the new state and the devices whose throttle level changes.

    ``offloads`` are the windows each device offloaded since the last check. While saturated,
    the busiest device that can still be throttled goes one level up (one device per streak);
    while relaxed, the most throttled device goes one level down.
    """
    fill = backlog / capacity if capacity > 0 else 0.0
    levels = dict(state.levels)
    if fill >= cfg.high_fraction:
        saturated = state.saturated + 1
        if saturated < cfg.saturated_checks:
            return BackpressureState(levels, saturated, 0), {}
        candidates = [
            (n, device)
            for device, n in offloads.items()
            if n > 0 and levels.get(device, 0) < cfg.max_level
        ]
        if not candidates:
            return BackpressureState(levels, saturated, 0), {}
        _, busiest = max(candidates, key=lambda c: (c[0], c[1]))
        levels[busiest] = levels.get(busiest, 0) + 1
        return BackpressureState(levels, 0, 0), {busiest: levels[busiest]}
    if fill <= cfg.low_fraction and levels:
        relaxed = state.relaxed + 1
        if relaxed < cfg.relaxed_checks:
            return BackpressureState(levels, 0, relaxed), {}
        _, device = max((level, d) for d, level in levels.items())
        levels[device] -= 1
        if levels[device] == 0:
            del levels[device]
        return BackpressureState(levels, 0, 0), {device: levels.get(device, 0)}
    return BackpressureState(levels, 0, 0), {}


def throttled_policy(
    base_tau_mbits: int, base_min_conf_e4: int, level: int, cfg: BackpressureConfig
) -> tuple[int, int]:
    """(tau_mbits, min_conf_e4) at a throttle level: offload only harder windows."""
    tau = min(65_535, base_tau_mbits + level * cfg.tau_step_mbits)
    conf = max(0, base_min_conf_e4 - level * cfg.conf_step_e4)
    return tau, conf


class Governor:
    """Looks at the inference queue every ``interval_s`` and moves wearables' offload policies.

    ``backlog`` is the worker's queue length now, ``offloaded`` the offloaded windows per device
    so far (the increments since the last check are what counts), ``set_policy`` sends a
    device its new policy (the link keeps it for reconnects too).
    """

    def __init__(
        self,
        *,
        capacity: int,
        base: SetPolicy,
        backlog: Callable[[], int],
        offloaded: Callable[[], Mapping[str, int]],
        set_policy: Callable[[str, SetPolicy], object],
        interval_s: float,
        config: BackpressureConfig | None = None,
    ) -> None:
        self.config = config or BackpressureConfig()
        self.state = BackpressureState()
        self._capacity = capacity
        self._base = base
        self._backlog = backlog
        self._offloaded = offloaded
        self._set_policy = set_policy
        self._interval_s = interval_s
        self._last: dict[str, int] = {}

    def check(self) -> dict[str, int]:
        """One check now: apply and return the throttle levels that changed."""
        counts = dict(self._offloaded())
        delta = {d: n - self._last.get(d, 0) for d, n in counts.items()}
        self._last = counts
        backlog = self._backlog()
        self.state, changes = plan_backpressure(
            self.state, self.config, backlog=backlog, capacity=self._capacity, offloads=delta
        )
        for device_id, level in changes.items():
            tau, conf = throttled_policy(
                self._base.tau_mbits, self._base.min_conf_e4, level, self.config
            )
            self._set_policy(device_id, SetPolicy(tau, conf))
            log.info("backpressure: offload policy changed", device=device_id, level=level,
                     tau_mbits=tau, min_conf_e4=conf, inference_backlog=backlog)  # fmt: skip
        return changes

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            self.check()
