"""Filters and the one preprocessing function shared by training, the gateway and the wearable.

`preprocess_window` is THE model input transform: training, the gateway's inference worker and
the emulated wearable all call it, so there is no train/serve skew. Every step works inside one
window: the zero-phase band-pass runs forwards and backwards over that window's samples only
(padded by odd reflection of the window itself), so a window's model input never depends on
samples of a later window, and a window offloaded alone is processed exactly like the same window
cut from a recording.

The filter designs (second-order sections, their steady-state initial conditions, the polyphase
FIR) are computed once per rate and cached; `bandpass` and `resample_to` give
`scipy.signal.sosfiltfilt` and `scipy.signal.resample_poly`'s output bit for bit, and work along
any axis, so a batch of windows (N, T, C) is filtered in one call along axis 1.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import signal

from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, MODEL_CHANNELS, MODEL_RATE_HZ

# scipy's own compiled kernels, called with designs computed once per rate (below): the public
# sosfiltfilt recomputes sosfilt_zi and resample_poly reruns firwin on every call, which cost
# more than the filtering itself on an 8 s window. The public functions stand in if a scipy
# release moves the kernels; tests/test_filters_cached.py holds both paths to scipy's output.
try:
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover - depends on the scipy release
    _sosfilt_kernel = None
try:
    from scipy.signal._upfirdn import _UpFIRDn
except ImportError:  # pragma: no cover - depends on the scipy release
    _UpFIRDn = None

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


@dataclass(frozen=True, eq=False)
class SosFilter:
    """Second-order sections and their steady-state initial conditions, both read-only.

    ``zi`` is ``scipy.signal.sosfilt_zi(sos)``, computed once: `filtfilt_odd` scales it by the
    first sample of each pass, as `scipy.signal.sosfiltfilt` does.
    """

    sos: npt.NDArray[np.float64]
    zi: npt.NDArray[np.float64]

    @classmethod
    def of(cls, sos: npt.ArrayLike) -> SosFilter:
        """The filter of ``sos`` (n_sections, 6), with its ``zi`` computed now."""
        s = np.array(sos, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != 6:
            raise ValueError(f"sos must have shape (n_sections, 6), got {s.shape}")
        zi = np.asarray(signal.sosfilt_zi(s), dtype=np.float64)
        s.flags.writeable = False
        zi.flags.writeable = False
        return cls(s, zi)


def _sosfilt_rows(
    f: SosFilter, rows: npt.NDArray[np.float64], first: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Filter each row of ``rows`` (M, T; C-contiguous, overwritten) from steady state at ``first``.

    ``zi * first`` per row, exactly as `scipy.signal.sosfiltfilt` scales its initial conditions.
    """
    zi = f.zi[None, :, :] * first[:, None, None]  # (M, n_sections, 2)
    if _sosfilt_kernel is None:  # pragma: no cover - depends on the scipy release
        out, _ = signal.sosfilt(f.sos, rows, axis=-1, zi=np.transpose(zi, (1, 0, 2)))
        return np.asarray(out, dtype=np.float64)
    # The kernel filters in place and wants writable, C-contiguous float64 buffers.
    _sosfilt_kernel(f.sos.copy(), rows, np.ascontiguousarray(zi))
    return rows


def filtfilt_odd(
    f: SosFilter, x: npt.NDArray[np.float64], padlen: int, axis: int = 0
) -> npt.NDArray[np.float64]:
    """``scipy.signal.sosfiltfilt(f.sos, x, axis, padtype="odd", padlen=padlen)``, bit for bit.

    Forward-backward filtering of float64 ``x`` along ``axis`` (every other axis is a batch of
    independent signals), padded by odd reflection of ``padlen`` samples at each end, without
    recomputing ``sosfilt_zi``.
    """
    if x.dtype != np.float64:
        raise TypeError(f"filtfilt_odd wants float64, got {x.dtype}")
    last = axis in (-1, x.ndim - 1)
    moved = x if last else np.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    if not 0 <= padlen < n:
        raise ValueError(f"padlen must be in [0, {n}) for {n} samples, got {padlen}")
    rows = moved.reshape(-1, n)
    # scipy.signal's odd_ext, term for term, into one C-contiguous buffer the kernel overwrites.
    ext = np.empty((rows.shape[0], n + 2 * padlen), dtype=np.float64)
    ext[:, padlen : padlen + n] = rows
    if padlen > 0:
        ext[:, :padlen] = 2 * rows[:, :1] - rows[:, padlen:0:-1]
        ext[:, padlen + n :] = 2 * rows[:, -1:] - rows[:, -2 : -(padlen + 2) : -1]
    forward = _sosfilt_rows(f, ext, ext[:, 0].copy())
    backward = np.ascontiguousarray(forward[:, ::-1])
    y = _sosfilt_rows(f, backward, backward[:, 0].copy())[:, ::-1]
    if padlen > 0:
        y = y[:, padlen:-padlen]
    y = y.reshape(moved.shape)
    return y if last else np.moveaxis(y, -1, axis)


@functools.lru_cache(maxsize=32)
def _bandpass_filter(rate_hz: float, low_hz: float, high_hz: float, order: int) -> SosFilter:
    return SosFilter.of(bandpass_sos(rate_hz, low_hz, high_hz, order))


def bandpass_padlen(n: int, rate_hz: float, low_hz: float = BANDPASS_LOW_HZ) -> int:
    """Odd-reflection padding of `bandpass` for a window of ``n`` samples."""
    return min(n - 1, math.ceil(_PAD_LOW_PERIODS * rate_hz / low_hz))


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
    *,
    axis: int = 0,
) -> npt.NDArray[np.float64]:
    """Zero-phase Butterworth band-pass along ``axis``, using only the samples of ``x`` itself.

    Every other axis is a batch of independent signals: the band-pass of an (N, T, C) batch
    along axis 1 equals that of each (T, C) window along axis 0, bit for bit.
    """
    data = _as_float64(x)
    if data.ndim < 1 or data.shape[axis] < 2:
        raise ValueError(f"bandpass needs at least 2 samples along axis {axis}")
    f = _bandpass_filter(float(rate_hz), float(low_hz), float(high_hz), int(order))
    padlen = bandpass_padlen(data.shape[axis], rate_hz, low_hz)
    return filtfilt_odd(f, data, padlen, axis)


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


@functools.lru_cache(maxsize=32)
def _rate_ratio(from_hz: float, to_hz: float) -> tuple[int, int]:
    for name, rate in (("from_hz", from_hz), ("to_hz", to_hz)):
        if not (math.isfinite(rate) and rate > 0 and float(rate).is_integer()):
            raise ValueError(f"{name} must be a positive whole number of Hz, got {rate!r}")
    ratio = Fraction(int(to_hz), int(from_hz))
    return ratio.numerator, ratio.denominator


@dataclass(frozen=True, eq=False)
class _Polyphase:
    """`scipy.signal.resample_poly`'s FIR (kaiser 5.0), padded for ``n_in`` samples."""

    up: int
    down: int
    h: npt.NDArray[np.float64]
    keep: slice
    #: scipy's prepared filter (None: `scipy.signal.upfirdn` is called instead).
    prepared: Any


@functools.lru_cache(maxsize=64)
def _polyphase(up: int, down: int, n_in: int) -> _Polyphase:
    """The design `scipy.signal.resample_poly(x, up, down)` makes for ``n_in`` float64 samples."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = np.asarray(signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)))
    h = h.astype(np.float64) * up
    n_out = -(-n_in * up // down)
    n_pre_pad = down - half_len % down
    n_pre_remove = (half_len + n_pre_pad) // down
    n_post_pad = 0

    def output_len(len_h: int) -> int:
        return ((n_in - 1) * up + len_h - 1) // down + 1

    while output_len(h.shape[0] + n_pre_pad + n_post_pad) < n_out + n_pre_remove:
        n_post_pad += 1
    h = np.concatenate((np.zeros(n_pre_pad), h, np.zeros(n_post_pad)))
    h.flags.writeable = False
    prepared = None if _UpFIRDn is None else _UpFIRDn(h, np.dtype(np.float64), up, down)
    return _Polyphase(up, down, h, slice(n_pre_remove, n_pre_remove + n_out), prepared)


def _resample_poly_line(
    x: npt.NDArray[np.float64], up: int, down: int, axis: int
) -> npt.NDArray[np.float64]:
    """``scipy.signal.resample_poly(x, up, down, axis, padtype="line")``, bit for bit."""
    p = _polyphase(up, down, x.shape[axis])
    if p.prepared is None:  # pragma: no cover - depends on the scipy release
        y = signal.upfirdn(p.h, x, up, down, axis=axis, mode="line")
    else:
        y = p.prepared.apply_filter(x, axis, "line")
    keep = [slice(None)] * x.ndim
    keep[axis] = p.keep
    return np.asarray(y[tuple(keep)], dtype=np.float64)


def resample_to(
    x: npt.ArrayLike, from_hz: float, to_hz: float, *, axis: int = 0
) -> npt.NDArray[np.float64]:
    """Polyphase-resample along ``axis`` from ``from_hz`` to ``to_hz`` (whole-number rates).

    Every other axis is a batch of independent signals, as in `bandpass`.
    """
    data = _as_float64(x)
    up, down = _rate_ratio(from_hz, to_hz)
    if up == down:
        return data.copy()
    # The polyphase branches' DC gains differ by ~0.05 %, which turns a DC offset (gravity on an
    # accelerometer axis) into a Nyquist-rate ripple: take the mean out and put it back after.
    # padtype="line" extends each edge along its trend rather than with zeros, so a slow drift
    # does not droop at the window edges.
    mean: npt.NDArray[np.float64] = data.mean(axis=axis, keepdims=True)
    return _resample_poly_line(data - mean, up, down, axis) + mean


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
