"""Filters and the one preprocessing function shared by training, the gateway and the wearable.

`preprocess_window` is THE model input transform: training, the gateway's inference worker and
the emulated wearable all call it, so there is no train/serve skew. Every step works inside one
window: the zero-phase band-pass runs forwards and backwards over that window's samples only
(padded by odd reflection of the window itself), so a window's model input never depends on
samples of a later window, and a window offloaded alone is processed exactly like the same window
cut from a recording.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import signal

from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, MODEL_CHANNELS, MODEL_RATE_HZ

#: Pass band of the band-pass in Hz: 30-240 beats per minute, and the arm-motion cadences that
#: leak into PPG (walking, cycling, stairs) that the model must learn to separate from the pulse.
BANDPASS_LOW_HZ: Final = 0.5
BANDPASS_HIGH_HZ: Final = 4.0
#: Butterworth order of the analogue prototype (the band-pass has twice as many poles).
BANDPASS_ORDER: Final = 4
#: Below this standard deviation a channel counts as constant and z-scores to zeros.
ZSCORE_EPS: Final = 1e-8
#: Odd-reflection padding of the zero-phase filter: this many periods of the low cut-off, at most
#: the window itself minus one sample. Long enough that the edge transient of the 0.5 Hz
#: high-pass is mostly absorbed by the padding; see docs/signals.md.
_PAD_LOW_PERIODS: Final = 4.0


@functools.lru_cache(maxsize=32)
def bandpass_sos(
    rate_hz: float,
    low_hz: float = BANDPASS_LOW_HZ,
    high_hz: float = BANDPASS_HIGH_HZ,
    order: int = BANDPASS_ORDER,
) -> npt.NDArray[np.float64]:
    """Return (cached, read-only) second-order sections of a Butterworth band-pass."""
    nyquist = rate_hz / 2.0
    if not 0.0 < low_hz < high_hz < nyquist:
        raise ValueError(
            f"band-pass {low_hz!r}-{high_hz!r} Hz at {rate_hz!r} Hz: need "
            f"0 < low_hz < high_hz < Nyquist ({nyquist!r} Hz)"
        )
    if order < 1:
        raise ValueError(f"band-pass order must be >= 1, got {order}")
    sos = np.asarray(
        signal.butter(order, [low_hz, high_hz], btype="bandpass", fs=rate_hz, output="sos"),
        dtype=np.float64,
    )
    sos.flags.writeable = False
    return sos


def _as_float64(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"expected an integer or float array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def bandpass(
    x: npt.ArrayLike,
    rate_hz: float,
    low_hz: float = BANDPASS_LOW_HZ,
    high_hz: float = BANDPASS_HIGH_HZ,
    order: int = BANDPASS_ORDER,
) -> npt.NDArray[np.float64]:
    """Zero-phase Butterworth band-pass along axis 0, using only the samples of ``x`` itself."""
    data = _as_float64(x)
    if data.ndim < 1 or data.shape[0] < 2:
        raise ValueError("bandpass needs at least 2 samples along axis 0")
    sos = bandpass_sos(float(rate_hz), float(low_hz), float(high_hz), int(order))
    n = data.shape[0]
    padlen = min(n - 1, math.ceil(_PAD_LOW_PERIODS * rate_hz / low_hz))
    # scipy's Cython kernel wants a writable buffer; the cached coefficients are read-only.
    filtered = signal.sosfiltfilt(sos.copy(), data, axis=0, padtype="odd", padlen=padlen)
    return np.asarray(filtered, dtype=np.float64)


def zscore(x: npt.ArrayLike, axis: int = 0, eps: float = ZSCORE_EPS) -> npt.NDArray[np.float64]:
    """Subtract the mean and divide by the population std along ``axis``; constant -> zeros."""
    data = _as_float64(x)
    mean = data.mean(axis=axis, keepdims=True)
    centred = data - mean
    std = np.sqrt(np.mean(centred * centred, axis=axis, keepdims=True))
    varying = std > eps
    # Dividing by 1.0 where the channel is flat avoids a 0/0 warning; those entries become 0.
    scaled = centred / np.where(varying, std, 1.0)
    return np.where(varying, scaled, 0.0)


def _rate_ratio(from_hz: float, to_hz: float) -> tuple[int, int]:
    for name, rate in (("from_hz", from_hz), ("to_hz", to_hz)):
        if not (math.isfinite(rate) and rate > 0 and float(rate).is_integer()):
            raise ValueError(f"{name} must be a positive whole number of Hz, got {rate!r}")
    ratio = Fraction(int(to_hz), int(from_hz))
    return ratio.numerator, ratio.denominator


def resample_to(x: npt.ArrayLike, from_hz: float, to_hz: float) -> npt.NDArray[np.float64]:
    """Polyphase-resample along axis 0 from ``from_hz`` to ``to_hz`` (whole-number rates)."""
    data = _as_float64(x)
    up, down = _rate_ratio(from_hz, to_hz)
    if up == down:
        return data.copy()
    # The polyphase branches' DC gains differ by ~0.05 %, which turns a DC offset (gravity on an
    # accelerometer axis) into a Nyquist-rate ripple: take the mean out and put it back after.
    # padtype="line" extends each edge along its trend rather than with zeros, so a slow drift
    # does not droop at the window edges.
    mean: npt.NDArray[np.float64] = data.mean(axis=0, keepdims=True)
    out: Any = signal.resample_poly(data - mean, up, down, axis=0, padtype="line")
    return np.asarray(out, dtype=np.float64) + mean


def preprocess_window(
    bvp: npt.ArrayLike,
    acc: npt.ArrayLike,
    bvp_rate_hz: int = BVP_RATE_HZ,
    acc_rate_hz: int = ACC_RATE_HZ,
    model_rate_hz: int = MODEL_RATE_HZ,
) -> npt.NDArray[np.float32]:
    """Turn one window of BVP (n,) and ACC (m, 3) into the model input, float32 (4, len)."""
    bvp_arr = _as_float64(bvp)
    if bvp_arr.ndim == 2 and bvp_arr.shape[1] == 1:
        bvp_arr = bvp_arr[:, 0]
    if bvp_arr.ndim != 1:
        raise ValueError(f"bvp must have shape (n,) or (n, 1), got {bvp_arr.shape}")
    acc_arr = _as_float64(acc)
    if acc_arr.ndim != 2 or acc_arr.shape[1] != MODEL_CHANNELS - 1:
        raise ValueError(f"acc must have shape (m, 3), got {acc_arr.shape}")
    # Same duration on both sensors, compared exactly in integers: n / bvp_rate == m / acc_rate.
    if bvp_arr.shape[0] * acc_rate_hz != acc_arr.shape[0] * bvp_rate_hz:
        raise ValueError(
            f"bvp has {bvp_arr.shape[0]} samples at {bvp_rate_hz} Hz but acc has "
            f"{acc_arr.shape[0]} at {acc_rate_hz} Hz: they must cover the same duration"
        )
    channels = np.empty(
        (bvp_arr.shape[0] * model_rate_hz // bvp_rate_hz, MODEL_CHANNELS), dtype=np.float64
    )
    bvp_model = resample_to(bvp_arr, bvp_rate_hz, model_rate_hz)
    acc_model = resample_to(acc_arr, acc_rate_hz, model_rate_hz)
    if bvp_model.shape[0] != channels.shape[0] or acc_model.shape[0] != channels.shape[0]:
        raise ValueError(
            f"window of {bvp_arr.shape[0]} samples at {bvp_rate_hz} Hz is not a whole number "
            f"of samples at the model rate {model_rate_hz} Hz"
        )
    channels[:, 0] = bvp_model
    channels[:, 1:] = acc_model
    # One filter for all four channels: ACC is used as a motion reference in the band where
    # motion contaminates the pulse, and it loses gravity (orientation) before z-scoring.
    filtered = bandpass(channels, model_rate_hz)
    normalised = zscore(filtered, axis=0)
    return np.ascontiguousarray(normalised.T, dtype=np.float32)
