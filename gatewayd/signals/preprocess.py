"""The model input: one window of BVP and ACC -> float32 (7, 256), keeping the ACC's physical scale.

THE transform between a window and the models: training, the gateway's inference worker and the
emulated wearable all call `preprocess_window`, so there is no train/serve skew. Every step works
inside one window (zero-phase filters run over that window's samples only), so an offloaded
window is processed exactly like the same window cut from a recording.

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
"""

from __future__ import annotations

import functools
import math
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import signal

from gatewayd.signals.filters import bandpass, resample_to, zscore
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, WINDOW_S

__all__ = [
    "ACC_LOWPASS_HZ",
    "MODEL_CHANNELS",
    "MODEL_CHANNEL_NAMES",
    "MODEL_RATE_HZ",
    "MODEL_WINDOW_LEN",
    "PREPROCESSING_ID",
    "motion_intensity_g",
    "motion_level",
    "preprocess_window",
]

#: The model's input channels, in order.
MODEL_CHANNEL_NAMES: Final = ("bvp", "acc_x", "acc_y", "acc_z", "acc_mag", "motion", "ppg")
MODEL_CHANNELS: Final = len(MODEL_CHANNEL_NAMES)
#: The common rate of every channel, and the samples per channel of one window.
MODEL_RATE_HZ: Final = 32
MODEL_WINDOW_LEN: Final = round(WINDOW_S * MODEL_RATE_HZ)
#: What a model card names as its preprocessing; a model made for another one is refused.
PREPROCESSING_ID: Final = "gatewayd.signals.preprocess_window/v2"
#: Low-pass of the ACC channels, Hz, and its Butterworth order.
ACC_LOWPASS_HZ: Final = 5.0
_ACC_LOWPASS_ORDER: Final = 4
#: The motion channel: log2(1 + spread / _MOTION_UNIT_G) / _MOTION_SCALE.
_MOTION_UNIT_G: Final = 0.01
_MOTION_SCALE: Final = 8.0
_PAD_PERIODS: Final = 2.0


@functools.lru_cache(maxsize=8)
def _lowpass_sos(rate_hz: int) -> npt.NDArray[np.float64]:
    sos = np.asarray(
        signal.butter(
            _ACC_LOWPASS_ORDER, ACC_LOWPASS_HZ, btype="lowpass", fs=rate_hz, output="sos"
        ),
        dtype=np.float64,
    )
    sos.flags.writeable = False
    return sos


def _lowpass(x: npt.NDArray[np.float64], rate_hz: int) -> npt.NDArray[np.float64]:
    """Zero-phase low-pass along axis 0, using only the samples of ``x`` itself."""
    padlen = min(x.shape[0] - 1, math.ceil(_PAD_PERIODS * rate_hz / ACC_LOWPASS_HZ))
    out = signal.sosfiltfilt(_lowpass_sos(rate_hz).copy(), x, axis=0, padtype="odd", padlen=padlen)
    return np.asarray(out, dtype=np.float64)


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


def preprocess_window(
    bvp: npt.ArrayLike,
    acc: npt.ArrayLike,
    bvp_rate_hz: int = BVP_RATE_HZ,
    acc_rate_hz: int = ACC_RATE_HZ,
    *,
    acc_lsb_per_g: float = 64.0,
    has_bvp: bool = True,
) -> npt.NDArray[np.float32]:
    """Turn one window of BVP (n,) and ACC (m, 3) in 1/``acc_lsb_per_g`` g into (7, 256) float32."""
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
    # Same duration on both sensors, compared exactly in integers: n / bvp_rate == m / acc_rate.
    if b.shape[0] * acc_rate_hz != a.shape[0] * bvp_rate_hz:
        raise ValueError(
            f"bvp has {b.shape[0]} samples at {bvp_rate_hz} Hz but acc has {a.shape[0]} at "
            f"{acc_rate_hz} Hz: they must cover the same duration"
        )
    n = b.shape[0] * MODEL_RATE_HZ // bvp_rate_hz
    if n * bvp_rate_hz != b.shape[0] * MODEL_RATE_HZ or n < 8:
        raise ValueError(
            f"window of {b.shape[0]} samples at {bvp_rate_hz} Hz is not a whole number "
            f"of samples at the model rate {MODEL_RATE_HZ} Hz"
        )
    if not (np.isfinite(b).all() and np.isfinite(a).all()):
        raise ValueError("window contains NaN or infinite samples")
    out = np.zeros((MODEL_CHANNELS, n), dtype=np.float64)
    if has_bvp:
        out[0] = zscore(bandpass(resample_to(b, bvp_rate_hz, MODEL_RATE_HZ), MODEL_RATE_HZ))
    acc_g = a / float(acc_lsb_per_g)
    spread = motion_intensity_g(acc_g)
    up = resample_to(acc_g, acc_rate_hz, MODEL_RATE_HZ)
    if up.shape[0] != n:
        raise ValueError(f"acc resampled to {up.shape[0]} samples, expected {n}")
    magnitude = np.sqrt(np.sum(up * up, axis=1))
    dynamic = np.empty((n, 4), dtype=np.float64)
    dynamic[:, :3] = up - up.mean(axis=0)
    dynamic[:, 3] = magnitude - magnitude.mean()
    out[1:5] = _lowpass(dynamic, MODEL_RATE_HZ).T
    out[5] = motion_level(spread)
    out[6] = 1.0 if has_bvp else 0.0
    return np.ascontiguousarray(out, dtype=np.float32)
