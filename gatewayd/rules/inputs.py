"""What the rules read: one `Observation` per window, link status changes, and clock ticks.

Time is always passed in; nothing here reads a clock. Every input carries two times:

- ``t``: the gateway's wall clock (Unix seconds) at arrival. It only *labels*: the ``t`` and
  ``raised_at`` of alert transitions, evidence timestamps, the ``since`` of a silence.
- ``mono``: a monotonic clock (seconds, any origin, e.g. ``time.monotonic()``). Every duration,
  cooldown, staleness, history window and activity bout is measured on it, so a wall clock that
  jumps (NTP syncing a Pi without a real-time clock) neither fires nor clears anything.

``mono=None`` means "the same as ``t``" (callers that only have one clock, e.g. replays of
recordings, where both are the recording's time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["HrSource", "LinkStatus", "Observation", "RuleInput", "Tick"]

HrSource = Literal["model", "signal", "strap"]


@dataclass(frozen=True, slots=True, eq=False)
class Observation:
    """What is known about one window of one device.

    ``t`` is the end of the window (wall clock, a label); ``mono`` the same moment on the
    monotonic clock the rules time by. ``acc``, when present, is the window's raw accelerometer in
    g, shape (n, 3), at ``acc_rate_hz``; without it, ``acc_peak_g`` and ``acc_still`` can carry
    a summary computed elsewhere (either may be None: unknown). ``acc_end`` is when the last
    accelerometer sample was taken, on the clock that timed the samples (the wearable's, once
    synced); None means ``t``. The fall rule times samples by it, so windows that arrive in a
    burst (a link that stalled, a loaded emulator) still cover the seconds they were taken in.
    """

    device_id: str
    seq: int
    t: float
    hr_bpm: float | None = None
    hr_source: HrSource = "model"
    #: Confidence of ``hr_bpm`` in [0, 1]; straps without a confidence pass 1.0.
    hr_confidence: float = 1.0
    #: The activity group's code (`gatewayd.activity.ActivityGroup`: 0 rest, 1 light,
    #: 2 vigorous); None (or 255) when unknown.
    activity: int | None = None
    #: Probability of ``activity`` in [0, 1]; below rules.activities.min_confidence it is unknown.
    activity_confidence: float = 1.0
    #: 0-100; None when the device does not report it.
    signal_quality: int | None = None
    off_wrist: bool = False
    battery: int | None = None
    charging: bool = False
    model_id: str | None = None
    #: A stable id of the window in the event log, if it has one; evidence names it.
    window_id: str | None = None
    acc: NDArray[np.floating] | None = None
    acc_rate_hz: float = 32.0
    window_s: float = 8.0
    acc_peak_g: float | None = None
    acc_still: bool | None = None
    acc_end: float | None = None
    #: How hard the wrist moved over the window (RMS about the window's mean, g): the
    #: wearable's ``motion_cg``, or computed from ``acc``; None when unknown.
    motion_g: float | None = None
    #: Monotonic arrival time; None means ``t`` (see the module docstring).
    mono: float | None = None

    @property
    def clock(self) -> float:
        """The monotonic time the rules measure durations on (``mono``, else ``t``)."""
        return self.t if self.mono is None else self.mono


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The BLE link of a device came up (``connected``) or went down at ``t`` (``mono``)."""

    device_id: str
    t: float
    connected: bool
    mono: float | None = None

    @property
    def clock(self) -> float:
        """The monotonic time the rules measure durations on (``mono``, else ``t``)."""
        return self.t if self.mono is None else self.mono


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: lets time-based rules (silence, disconnection, staleness) fire."""

    t: float
    mono: float | None = None

    @property
    def clock(self) -> float:
        """The monotonic time the rules measure durations on (``mono``, else ``t``)."""
        return self.t if self.mono is None else self.mono


RuleInput = Observation | LinkStatus | Tick
