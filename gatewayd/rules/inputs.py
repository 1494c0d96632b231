"""What the rules read: one `Observation` per window, link status changes, and clock ticks.

Time is always passed in (seconds, the gateway's wall clock at arrival); nothing here reads a
clock. Durations are measured between the ``t`` of the inputs themselves.
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

    ``t`` is the end of the window. ``acc``, when present, is the window's raw accelerometer in
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


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The BLE link of a device came up (``connected``) or went down at ``t``."""

    device_id: str
    t: float
    connected: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: lets time-based rules (silence, disconnection, staleness) fire."""

    t: float


RuleInput = Observation | LinkStatus | Tick
