"""`RuleEngine`: per-device rule state around the pure functions of gatewayd.rules.evaluate."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from gatewayd.rules.alerts import AlertKind, AlertTransition
from gatewayd.rules.config import RulesConfig
from gatewayd.rules.evaluate import DeviceState, observe, on_link, on_removed, on_tick
from gatewayd.rules.inputs import LinkStatus, Observation, RuleInput, Tick
from gatewayd.rules.restore import AlertRecord, RestoreResult, restore_alerts

__all__ = ["RuleEngine"]


class RuleEngine:
    """Holds one `DeviceState` per device; every method is deterministic and does no I/O.

    Not thread-safe: feed it from one task (the pipeline's), in arrival order.
    """

    def __init__(self, config: RulesConfig | None = None) -> None:
        self.config = config if config is not None else RulesConfig()
        self._devices: dict[str, DeviceState] = {}

    def _state(self, device_id: str) -> DeviceState:
        return self._devices.get(device_id) or DeviceState(device_id)

    def observe(self, obs: Observation) -> list[AlertTransition]:
        """Evaluate one window of one device."""
        state, out = observe(self.config, self._state(obs.device_id), obs)
        self._devices[obs.device_id] = state
        return out

    def link(self, status: LinkStatus) -> list[AlertTransition]:
        """Record a link going up or down."""
        state, out = on_link(self.config, self._state(status.device_id), status)
        self._devices[status.device_id] = state
        return out

    def tick(self, t: float, mono: float | None = None) -> list[AlertTransition]:
        """Let time-based rules fire for every known device (in device id order).

        ``t`` is the wall clock (labels), ``mono`` the monotonic clock (None: ``t``).
        """
        out: list[AlertTransition] = []
        for device_id in sorted(self._devices):
            state, transitions = on_tick(self.config, self._devices[device_id], t, mono)
            self._devices[device_id] = state
            out.extend(transitions)
        return out

    def feed(self, item: RuleInput) -> list[AlertTransition]:
        """Dispatch any input to `observe`, `link` or `tick`."""
        if isinstance(item, Observation):
            return self.observe(item)
        if isinstance(item, LinkStatus):
            return self.link(item)
        assert isinstance(item, Tick)
        return self.tick(item.t, item.mono)

    def restore(
        self,
        open_alerts: Iterable[AlertRecord],
        *,
        t: float,
        mono: float | None = None,
        paired: Collection[str] | None = None,
    ) -> RestoreResult:
        """Take over the alerts open at the last shutdown (gatewayd.rules.restore).

        Call it once at start, before any input: ``t`` is the wall clock now, ``mono`` the
        monotonic clock the inputs will carry (None: ``t``), ``paired`` the device ids on the
        paired list (None: every device counts as paired). Returns what was restored, what was
        skipped and why, and the clears of alerts whose rule is now disabled or whose device
        is no longer paired (to be written like any transition).
        """
        states, result = restore_alerts(
            self.config,
            self._devices,
            open_alerts,
            t=t,
            mono=t if mono is None else mono,
            paired=paired,
        )
        self._devices = states
        return result

    @property
    def devices(self) -> Mapping[str, DeviceState]:
        """The current state of every device seen (read-only view)."""
        return dict(self._devices)

    def active(self, device_id: str) -> tuple[AlertKind, ...]:
        """The kinds of alert currently raised on a device."""
        state = self._devices.get(device_id)
        return () if state is None else state.active_kinds()

    def remove(self, device_id: str, t: float, mono: float | None = None) -> list[AlertTransition]:
        """A device taken off the paired list: clear its raised alerts (reason ``unpaired``)
        and drop its state. ``t`` is the wall clock, ``mono`` the monotonic clock (None: ``t``)."""
        state = self._devices.pop(device_id, None)
        return [] if state is None else on_removed(self.config, state, t, mono)
