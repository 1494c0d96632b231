"""Sliding windows over sampled signals: 8 s windows with a 2 s step, as in PPG-DaLiA and TROIKA.

Windows are strided, read-only views: cutting a recording into windows copies nothing. Window
``i`` covers samples ``[i * step_len, i * step_len + window_len)``; a partial trailing window is
never produced. The sample counts are derived from seconds and a sample rate and must come out
as whole numbers, otherwise the windows of two signals at different rates would drift apart.
"""

from __future__ import annotations

import math
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

#: Window length in seconds (PPG-DaLiA and TROIKA label one heart rate per 8 s window).
WINDOW_S: Final = 8.0
#: Shift between consecutive windows in seconds.
STEP_S: Final = 2.0
#: Wrist BVP (PPG) sample rate of the wearable (Empatica E4).
BVP_RATE_HZ: Final = 64
#: Wrist accelerometer sample rate of the wearable (Empatica E4).
ACC_RATE_HZ: Final = 32
#: The common rate the model sees all four channels at (BVP + 3 ACC axes).
MODEL_RATE_HZ: Final = 64
#: Channels of a model input window, in this order: bvp, acc_x, acc_y, acc_z.
MODEL_CHANNELS: Final = 4
#: Samples per channel in a model input window (8 s at 64 Hz).
MODEL_WINDOW_LEN: Final = 512

_ScalarT = TypeVar("_ScalarT", bound=np.generic)

# Durations times rates are compared to whole numbers with this slack so that e.g. 0.1 s at
# 640 Hz (64.00000000000001 in binary floating point) is still accepted as 64 samples.
_WHOLE_TOLERANCE: Final = 1e-9


def samples_in(seconds: float, rate_hz: float, *, what: str = "duration") -> int:
    """Return ``seconds * rate_hz`` as a whole, positive sample count or raise ValueError."""
    if not (math.isfinite(seconds) and math.isfinite(rate_hz)) or seconds <= 0 or rate_hz <= 0:
        raise ValueError(
            f"{what} {seconds!r} s at {rate_hz!r} Hz: both must be finite and positive"
        )
    exact = seconds * rate_hz
    count = round(exact)
    if count < 1 or abs(exact - count) > _WHOLE_TOLERANCE * max(1.0, exact):
        raise ValueError(
            f"{what} {seconds!r} s at {rate_hz!r} Hz is {exact!r} samples, not a whole number; "
            f"choose a {what} that is a multiple of 1/{rate_hz!r} s"
        )
    return count


def window_length(rate_hz: float, window_s: float = WINDOW_S) -> int:
    """Return the number of samples in one window at ``rate_hz``."""
    return samples_in(window_s, rate_hz, what="window")


def window_count(
    n_samples: int, rate_hz: float, window_s: float = WINDOW_S, step_s: float = STEP_S
) -> int:
    """Return how many complete windows fit in ``n_samples`` samples."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    window_len = samples_in(window_s, rate_hz, what="window")
    step_len = samples_in(step_s, rate_hz, what="step")
    if n_samples < window_len:
        return 0
    return (n_samples - window_len) // step_len + 1


def window_start_samples(
    n_samples: int, rate_hz: float, window_s: float = WINDOW_S, step_s: float = STEP_S
) -> npt.NDArray[np.int64]:
    """Return the index of the first sample of every complete window."""
    step_len = samples_in(step_s, rate_hz, what="step")
    count = window_count(n_samples, rate_hz, window_s, step_s)
    return np.arange(count, dtype=np.int64) * step_len


def window_start_times(
    n_samples: int,
    rate_hz: float,
    window_s: float = WINDOW_S,
    step_s: float = STEP_S,
    t0_s: float = 0.0,
) -> npt.NDArray[np.float64]:
    """Return the start time in seconds of every complete window, counted from ``t0_s``."""
    starts = window_start_samples(n_samples, rate_hz, window_s, step_s)
    # Integer sample index / rate: no accumulated rounding however long the recording is.
    return t0_s + starts.astype(np.float64) / float(rate_hz)


def sliding_windows(
    x: npt.NDArray[_ScalarT],
    rate_hz: float,
    window_s: float = WINDOW_S,
    step_s: float = STEP_S,
) -> npt.NDArray[_ScalarT]:
    """Return a read-only view of shape ``(n_windows, window_len, *x.shape[1:])`` over axis 0."""
    arr = np.asarray(x)
    if arr.ndim < 1:
        raise ValueError("sliding_windows needs an array with at least one dimension")
    window_len = samples_in(window_s, rate_hz, what="window")
    step_len = samples_in(step_s, rate_hz, what="step")
    if arr.shape[0] < window_len:
        empty = np.empty((0, window_len, *arr.shape[1:]), dtype=arr.dtype)
        empty.flags.writeable = False
        return empty
    # sliding_window_view appends the window axis last: (n - w + 1, *rest, w).
    view = sliding_window_view(arr, window_len, axis=0, writeable=False)
    return np.moveaxis(view, -1, 1)[::step_len]
