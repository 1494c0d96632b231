"""The model input: one window of BVP and ACC -> (15, 256) float32, keeping physical ACC scale.

THE transform between a window and the models: training, the gateway's inference worker and the
emulated wearable all call `preprocess_window`, so there is no train/serve skew. Every step works
inside one window (zero-phase filters run over that window's samples only), so an offloaded
window is processed exactly like the same window cut from a recording. `preprocess_batch` is the
same transform over N windows in one vectorised pass (the gateway's inference worker), equal to
`preprocess_window` of each bit for bit.

Channels at 32 Hz (`MODEL_RATE_HZ`; 8 s = 256 samples; `MODEL_CHANNEL_NAMES`). 32 Hz resolves
the pulse and its second harmonic up to 240 bpm and is the accelerometer's own rate, and it
halves the model's cost against 64 Hz:

0. ``bvp``: band-passed 0.5-4 Hz and z-scored. PPG units differ between every device (raw ADC
   counts, the E4's own scale), so only its shape carries over; zeros when the set has no PPG.
1-3. ``acc_x/y/z``: acceleration in g, each axis minus its window mean (gravity and the way the
   device sits on the wrist differ between devices; movement does not) and low-passed at 5 Hz
   (the wrist's movements and the step cadence; it also evens out sources sampled from 10 Hz
   to 100 Hz). Not z-scored: how hard the wrist moves is what tells rest from running.
4. ``acc_mag``: |a| in g minus its window mean, low-passed likewise: orientation-free.
5. ``motion``: the window's motion intensity, a constant channel: log2(1 + s / 10 mg) / 8, where
   s is the spread of the 3-axis ACC in g (root of the summed per-axis variances): about 0.1 at
   rest, 0.55 walking, 0.8 running.
6. ``ppg``: 1 when the window has a PPG channel, 0 when the set has none, so a model can tell
   "no PPG" from "a flat PPG" and training can mask it rather than learn from zeros.
7-14. ``axes_e*`` / ``mag_e*`` (v3): the ACC's spectral energy in four bands (0.25-1, 1-2, 2-3,
   3-5 Hz: `gatewayd.signals.acc_features.ACC_BANDS_HZ`), of the three axes together and of
   |a|, from channels 1-4: log10(energy in g^2 + 1e-10), scaled by (value + 10) / 10 (0 for no
   motion, about 0.9 running), constant channels. Where the wrist's energy sits in frequency is
   what tells walking from running across people (a feature baseline on these bands alone
   beats a network that has to find them in 48 subjects' windows).

Version 2 is channels 0-6 of version 3 (models made for it still run: `channels_for`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import signal

from gatewayd.signals.acc_features import (
    ACC_BANDS_HZ,
    band_log_energies,
    power_per_column,
    rfft_frequencies,
)
from gatewayd.signals.filters import SosFilter, bandpass, filtfilt_odd, resample_to, zscore
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, WINDOW_S

__all__ = [
    "ACC_LOWPASS_HZ",
    "MODEL_CHANNELS",
    "MODEL_CHANNEL_NAMES",
    "MODEL_RATE_HZ",
    "MODEL_WINDOW_LEN",
    "PREPROCESSING_ID",
    "PREPROCESSING_V2",
    "V2_CHANNELS",
    "PreprocessedBatch",
    "motion_intensity_g",
    "motion_level",
    "preprocess_batch",
    "preprocess_window",
]

#: The model's input channels, in order.
MODEL_CHANNEL_NAMES: Final = (
    "bvp", "acc_x", "acc_y", "acc_z", "acc_mag", "motion", "ppg",
    *(f"{signal}_e{lo:g}_{hi:g}hz" for signal in ("axes", "mag") for lo, hi in ACC_BANDS_HZ),
)  # fmt: skip
MODEL_CHANNELS: Final = len(MODEL_CHANNEL_NAMES)
#: The common rate of every channel, and the samples per channel of one window.
MODEL_RATE_HZ: Final = 32
MODEL_WINDOW_LEN: Final = round(WINDOW_S * MODEL_RATE_HZ)
#: What a model card names as its preprocessing; a model made for another one is refused.
PREPROCESSING_ID: Final = "gatewayd.signals.preprocess_window/v3"
#: The previous version: the first `V2_CHANNELS` channels of this one.
PREPROCESSING_V2: Final = "gatewayd.signals.preprocess_window/v2"
V2_CHANNELS: Final = 7
#: The band channels: log10(energy + ENERGY_FLOOR) mapped by (value + _BAND_OFFSET) / _BAND_SCALE.
_BAND_OFFSET: Final = 10.0
_BAND_SCALE: Final = 10.0
#: Low-pass of the ACC channels, Hz, and its Butterworth order.
ACC_LOWPASS_HZ: Final = 5.0
_ACC_LOWPASS_ORDER: Final = 4
#: The motion channel: log2(1 + spread / _MOTION_UNIT_G) / _MOTION_SCALE.
_MOTION_UNIT_G: Final = 0.01
_MOTION_SCALE: Final = 8.0
_PAD_PERIODS: Final = 2.0


@functools.lru_cache(maxsize=8)
def _lowpass_filter(rate_hz: int) -> SosFilter:
    """The ACC low-pass at ``rate_hz`` and its initial conditions, designed once per rate."""
    return SosFilter.of(
        signal.butter(_ACC_LOWPASS_ORDER, ACC_LOWPASS_HZ, btype="lowpass", fs=rate_hz, output="sos")
    )


def _lowpass(x: npt.NDArray[np.float64], rate_hz: int, axis: int) -> npt.NDArray[np.float64]:
    """Zero-phase low-pass along ``axis``, using only the samples of ``x`` itself."""
    padlen = min(x.shape[axis] - 1, math.ceil(_PAD_PERIODS * rate_hz / ACC_LOWPASS_HZ))
    return filtfilt_odd(_lowpass_filter(rate_hz), x, padlen, axis)


def motion_intensity_g(acc_g: npt.ArrayLike) -> float:
    """Spread of a window's 3-axis ACC in g: the root of the summed per-axis variances."""
    a = np.asarray(acc_g, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 2:
        raise ValueError(f"acc must have shape (n >= 2, 3), got {a.shape}")
    return float(np.sqrt(np.sum(np.var(a, axis=0))))


def motion_level(spread_g: float) -> float:
    """The ``motion`` channel's value for a spread in g (0 still, ~0.8 running)."""
    return math.log2(1.0 + max(0.0, spread_g) / _MOTION_UNIT_G) / _MOTION_SCALE


def _float(x: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an integer or float array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


@dataclass(frozen=True, eq=False)
class PreprocessedBatch:
    """The model inputs of a batch of windows, and the band-passed BVP they were made from."""

    #: float32 (N, 15, 256): each window's `preprocess_window`.
    x: npt.NDArray[np.float32]
    #: float64 (N, 256): the BVP resampled to `MODEL_RATE_HZ` and band-passed
    #: (`gatewayd.signals.filters.bandpass`), before z-scoring; zeros where a window has none.
    bvp: npt.NDArray[np.float64]


def _as_batch_values(value: float | npt.ArrayLike, n: int, name: str) -> npt.NDArray[Any]:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return np.full(n, arr.item())
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    return arr


def preprocess_batch(
    bvp: npt.ArrayLike,
    acc: npt.ArrayLike,
    bvp_rate_hz: int = BVP_RATE_HZ,
    acc_rate_hz: int = ACC_RATE_HZ,
    *,
    acc_lsb_per_g: float | npt.ArrayLike = 64.0,
    has_bvp: bool | npt.ArrayLike = True,
    channels: int = MODEL_CHANNELS,
) -> PreprocessedBatch:
    """`preprocess_window` of N windows at once: BVP (N, n), ACC (N, m, 3) -> (N, 15, 256).

    One vectorised pass: every filter runs along the time axis of the whole batch, and each
    window's input equals its `preprocess_window` bit for bit (tests/test_preprocess.py).
    ``acc_lsb_per_g`` and ``has_bvp`` are one value for all windows or one per window.
    ``channels`` = `V2_CHANNELS` returns only the first seven channels (a v2 model's input)
    and skips computing the band energies.
    """
    if channels not in (V2_CHANNELS, MODEL_CHANNELS):
        raise ValueError(f"channels must be {V2_CHANNELS} or {MODEL_CHANNELS}, got {channels}")
    b = _float(bvp, "bvp")
    if b.ndim == 3 and b.shape[2] == 1:
        b = b[:, :, 0]
    if b.ndim != 2:
        raise ValueError(f"bvp must have shape (n,) or (n, 1) per window, got {b.shape[1:]}")
    a = _float(acc, "acc")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"acc must have shape (m, 3) per window, got {a.shape[1:]}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{b.shape[0]} BVP windows but {a.shape[0]} ACC windows")
    count = b.shape[0]
    lsb = _as_batch_values(acc_lsb_per_g, count, "acc_lsb_per_g").astype(np.float64)
    has = _as_batch_values(has_bvp, count, "has_bvp").astype(bool)
    if not (np.isfinite(lsb).all() and (lsb > 0).all()):
        raise ValueError(f"acc_lsb_per_g must be positive, got {acc_lsb_per_g!r}")
    # Same duration on both sensors, compared exactly in integers: n / bvp_rate == m / acc_rate.
    if b.shape[1] * acc_rate_hz != a.shape[1] * bvp_rate_hz:
        raise ValueError(
            f"bvp has {b.shape[1]} samples at {bvp_rate_hz} Hz but acc has {a.shape[1]} at "
            f"{acc_rate_hz} Hz: they must cover the same duration"
        )
    n = b.shape[1] * MODEL_RATE_HZ // bvp_rate_hz
    if n * bvp_rate_hz != b.shape[1] * MODEL_RATE_HZ or n < 8:
        raise ValueError(
            f"window of {b.shape[1]} samples at {bvp_rate_hz} Hz is not a whole number "
            f"of samples at the model rate {MODEL_RATE_HZ} Hz"
        )
    if not (np.isfinite(b).all() and np.isfinite(a).all()):
        raise ValueError("window contains NaN or infinite samples")
    out = np.zeros((count, channels, n), dtype=np.float64)
    filtered = np.zeros((count, n), dtype=np.float64)
    rows = np.flatnonzero(has)
    if rows.size:
        with_bvp = b if rows.size == count else b[rows]
        bp = bandpass(resample_to(with_bvp, bvp_rate_hz, MODEL_RATE_HZ, axis=1), MODEL_RATE_HZ,
                      axis=1)  # fmt: skip
        filtered[rows] = bp
        out[rows, 0] = zscore(bp, axis=1)
    acc_g = a / lsb[:, None, None]
    # motion_intensity_g of each window, along the batch's time axis.
    spreads = np.sqrt(np.sum(np.var(acc_g, axis=1), axis=1))
    up = resample_to(acc_g, acc_rate_hz, MODEL_RATE_HZ, axis=1)
    if up.shape[1] != n:
        raise ValueError(f"acc resampled to {up.shape[1]} samples, expected {n}")
    magnitude = np.sqrt(np.sum(up * up, axis=2))
    dynamic = np.empty((count, n, 4), dtype=np.float64)
    dynamic[:, :, :3] = up - up.mean(axis=1, keepdims=True)
    dynamic[:, :, 3] = magnitude - magnitude.mean(axis=1, keepdims=True)
    out[:, 1:5] = _lowpass(dynamic, MODEL_RATE_HZ, axis=1).transpose(0, 2, 1)
    out[:, 5] = np.array([motion_level(float(s)) for s in spreads])[:, None]
    out[:, 6] = has[:, None]
    if channels == V2_CHANNELS:
        return PreprocessedBatch(np.ascontiguousarray(out, dtype=np.float32), filtered)
    out[:, V2_CHANNELS:] = _band_channels(out[:, 1:5])[:, :, None]
    return PreprocessedBatch(np.ascontiguousarray(out, dtype=np.float32), filtered)


def _band_channels(acc: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Channels 7-14 of each window from its channels 1-4 (N, 4, n): (N, 8)."""
    # One FFT of the four channels; the axes' power is their sum, as `power_spectra` gives it.
    power = power_per_column(acc.transpose(0, 2, 1))
    freqs = rfft_frequencies(acc.shape[2], MODEL_RATE_HZ)
    by_signal = np.stack([power[:, :, :3].sum(axis=-1), power[:, :, 3]], axis=1)  # (N, 2, F)
    bands = band_log_energies(freqs, by_signal).reshape(acc.shape[0], -1)  # axes', then |a|'s
    out: npt.NDArray[np.float64] = (bands + _BAND_OFFSET) / _BAND_SCALE
    return out


def preprocess_window(
    bvp: npt.ArrayLike,
    acc: npt.ArrayLike,
    bvp_rate_hz: int = BVP_RATE_HZ,
    acc_rate_hz: int = ACC_RATE_HZ,
    *,
    acc_lsb_per_g: float = 64.0,
    has_bvp: bool = True,
) -> npt.NDArray[np.float32]:
    """One window of BVP (n,) and ACC (m, 3) in 1/``acc_lsb_per_g`` g -> (15, 256) float32."""
    b = _float(bvp, "bvp")
    if b.ndim == 2 and b.shape[1] == 1:
        b = b[:, 0]
    if b.ndim != 1:
        raise ValueError(f"bvp must have shape (n,) or (n, 1), got {b.shape}")
    a = _float(acc, "acc")
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"acc must have shape (m, 3), got {a.shape}")
    if not (math.isfinite(acc_lsb_per_g) and acc_lsb_per_g > 0):
        raise ValueError(f"acc_lsb_per_g must be positive, got {acc_lsb_per_g!r}")
    batch = preprocess_batch(
        b[None], a[None], bvp_rate_hz, acc_rate_hz, acc_lsb_per_g=acc_lsb_per_g, has_bvp=has_bvp
    )
    x: npt.NDArray[np.float32] = batch.x[0]
    return x
