"""Accelerometer window features and the linear activity baseline that reads them.

The model-free reference for the activity head: a handful of statistics of one 8 s ACC window
(`acc_features`) and a multinomial logistic regression over them (`LinearActivityBaseline`),
fitted by training/ with scikit-learn and shipped as plain numbers in JSON, so the gateway
scores it with numpy alone. Pure: numpy arrays in, numpy arrays out; no I/O, no clock.

Every feature is computed from the ACC in g, each axis minus its window mean and low-passed at
5 Hz (`ACC_FEATURES_LOWPASS_HZ`, like the model input's ACC channels), plus the motion spread
of the raw window. Window means (gravity, the way the device sits) are left out on purpose:
one of the sets (BasicMotions) has gravity removed by its sensor, so a mean would name the
device rather than the activity; and the 5 Hz low-pass keeps sets sampled at 10 Hz and at
100 Hz comparable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ACC_BANDS_HZ",
    "ACC_FEATURES_ID",
    "ACC_FEATURES_LOWPASS_HZ",
    "ACC_FEATURE_NAMES",
    "BASELINE_FORMAT",
    "CADENCE_HALFWIDTH_BPM",
    "CADENCE_MIN_AMPLITUDE_G",
    "CADENCE_MULTIPLES",
    "ENERGY_FLOOR",
    "LinearActivityBaseline",
    "acc_cadence",
    "acc_features",
    "acc_features_batch",
    "band_log_energies",
    "near_cadence",
    "power_per_column",
    "power_spectra",
    "rfft_frequencies",
]

#: Names the feature set; a baseline fitted on another one is refused.
ACC_FEATURES_ID: Final = "gatewayd.signals.acc_features/v1"
#: The JSON format of a shipped linear baseline.
BASELINE_FORMAT: Final = "gatewayd-activity-baseline/1"
#: Upper edge of the pass band of the feature signals, Hz, and the width of the cosine roll-off.
ACC_FEATURES_LOWPASS_HZ: Final = 5.0
_ROLLOFF_HZ: Final = 1.0
#: Spectral bands of the band-energy features, Hz (half-open [low, high)).
ACC_BANDS_HZ: Final = ((0.25, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 5.0))
_PERCENTILES: Final = (5.0, 25.0, 75.0, 95.0)
_AXES: Final = ("x", "y", "z")
#: Floors under logarithms, in the features' units (g, g^2, g/s): far below sensor noise.
_STD_FLOOR_G: Final = 1e-4
ENERGY_FLOOR: Final = 1e-10
_BAND_LOWS: Final = np.array([lo for lo, _ in ACC_BANDS_HZ])
_BAND_HIGHS: Final = np.array([hi for _, hi in ACC_BANDS_HZ])
_JERK_FLOOR: Final = 1e-4
#: The motion spread's scale, as the model input's ``motion`` channel: log2(1 + s / 10 mg).
_MOTION_UNIT_G: Final = 0.01
#: `acc_cadence`: the band searched (the heart-rate tracker's, bpm), the zero-padded FFT length
#: (32 Hz / 1024 = 1.9 bpm between bins), and the amplitude below which the wrist does not move
#: rhythmically (the tracker's ``template_full``: 1/64 g).
_CADENCE_MIN_BPM: Final = 40.0
_CADENCE_MAX_BPM: Final = 220.0
_CADENCE_FFT: Final = 1024
CADENCE_MIN_AMPLITUDE_G: Final = 1.0 / 64.0
#: `near_cadence`: a heart rate this close to half, once or twice the cadence coincides with it.
CADENCE_HALFWIDTH_BPM: Final = 6.0
CADENCE_MULTIPLES: Final = (0.5, 1.0, 2.0)


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for axis in (*_AXES, "mag"):
        names.append(f"{axis}_log_std")
        names.extend(f"{axis}_p{int(p):02d}" for p in _PERCENTILES)
    names.append("log_spread")
    for signal in ("axes", "mag"):
        names.extend(f"{signal}_log_energy_{lo:g}_{hi:g}hz" for lo, hi in ACC_BANDS_HZ)
    names.extend(("dominant_hz", "dominant_share", "log_jerk", "corr_xy", "corr_xz", "corr_yz"))
    return tuple(names)


#: The features `acc_features` returns, in order.
ACC_FEATURE_NAMES: Final = _names()


def _lowpass(x: npt.NDArray[np.float64], rate_hz: float) -> npt.NDArray[np.float64]:
    """Zero-phase FFT low-pass along axis 0 with a cosine roll-off and mirrored ends."""
    n = x.shape[0]
    pad = min(n - 1, max(1, round(rate_hz)))
    # Mirroring the ends keeps the circular FFT from joining the last sample to the first.
    padded = np.concatenate([x[pad:0:-1], x, x[-2 : -pad - 2 : -1]], axis=0)
    freqs = np.fft.rfftfreq(padded.shape[0], d=1.0 / rate_hz)
    hi = ACC_FEATURES_LOWPASS_HZ
    lo = hi - _ROLLOFF_HZ
    gain = np.clip((hi - freqs) / (hi - lo), 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    spectrum = np.fft.rfft(padded, axis=0) * gain[:, None]
    out = np.fft.irfft(spectrum, n=padded.shape[0], axis=0)[pad : pad + n]
    return np.asarray(out, dtype=np.float64)


def power_spectra(
    x: npt.NDArray[np.float64], rate_hz: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Hann-windowed power per frequency of windows (..., n, columns), summed over columns.

    Returns the frequencies (F,) and the power (..., F), normalised so that a band's sum is its
    share of the window's variance (g^2 for ACC in g).
    """
    power = np.asarray(power_per_column(x).sum(axis=-1), dtype=np.float64)
    return rfft_frequencies(x.shape[-2], float(rate_hz)), power


def power_per_column(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """`power_spectra` of each column of ``x`` (..., n, columns) apart: (..., F, columns)."""
    hann, scale = _hann(x.shape[-2])
    spec = np.abs(np.fft.rfft(x * hann, axis=-2)) ** 2
    spec *= scale
    return np.asarray(spec, dtype=np.float64)


@functools.lru_cache(maxsize=8)
def _hann(n: int) -> tuple[npt.NDArray[np.float64], float]:
    """The Hann window as a column (n, 1) and the power normalisation of `power_spectra`."""
    hann = np.hanning(n)[:, None]
    hann.flags.writeable = False
    return hann, 2.0 / (n * np.sum(hann**2))


@functools.lru_cache(maxsize=8)
def rfft_frequencies(n: int, rate_hz: float) -> npt.NDArray[np.float64]:
    """`numpy.fft.rfftfreq` of ``n`` samples at ``rate_hz``, made once and read-only."""
    freqs = np.asarray(np.fft.rfftfreq(n, d=1.0 / rate_hz), dtype=np.float64)
    freqs.flags.writeable = False
    return freqs


def band_log_energies(
    freqs: npt.NDArray[np.float64], power: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """log10 of the power in each of `ACC_BANDS_HZ` (plus a floor): (..., F) -> (..., bands).

    ``freqs`` ascend (as `power_spectra` returns them): a band is the run of bins in [lo, hi).
    """
    starts = np.searchsorted(freqs, _BAND_LOWS).tolist()
    stops = np.searchsorted(freqs, _BAND_HIGHS).tolist()
    # Each band copied out contiguous: numpy may sum a strided view in another order, and a
    # window's energies must not depend on the batch it came in (to the last bit).
    bands = [np.ascontiguousarray(power[..., a:b]) for a, b in zip(starts, stops, strict=True)]
    sums = [band.sum(axis=-1) for band in bands]
    return np.asarray(np.log10(np.stack(sums, axis=-1) + ENERGY_FLOOR), dtype=np.float64)


def acc_cadence(
    acc: npt.ArrayLike, acc_rate_hz: float = 32.0, *, acc_lsb_per_g: float = 64.0
) -> float | None:
    """The wrist's strongest rhythm in one ACC window (m, 3) in 1/lsb g, in cycles per minute.

    The frequency of the largest peak of the 3-axis power (each axis minus its mean, Hann
    window) between 40 and 220 per minute, the heart-rate tracker's band; None when that peak's
    amplitude is below `CADENCE_MIN_AMPLITUDE_G` (no rhythm to speak of) or the rate cannot see
    the band. A wrist-worn tracker that follows this rhythm (or its half or double: arm swing
    against steps) instead of the pulse is the error it cannot see in its own signal quality.
    """
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 16:
        raise ValueError(f"acc must have shape (m >= 16, 3), got {a.shape}")
    if not (math.isfinite(acc_lsb_per_g) and acc_lsb_per_g > 0):
        raise ValueError(f"acc_lsb_per_g must be positive, got {acc_lsb_per_g!r}")
    if not (math.isfinite(acc_rate_hz) and acc_rate_hz > 0) or not np.isfinite(a).all():
        raise ValueError("acc_rate_hz must be positive and acc finite")
    if acc_rate_hz * 60.0 / 2.0 < _CADENCE_MAX_BPM:
        return None
    n = a.shape[0]
    hann = np.hanning(n)
    centred = (a - a.mean(axis=0)) / float(acc_lsb_per_g)
    size = max(_CADENCE_FFT, n)
    power = (np.abs(np.fft.rfft(centred * hann[:, None], n=size, axis=0)) ** 2).sum(axis=1)
    per_minute = np.fft.rfftfreq(size, d=1.0 / acc_rate_hz) * 60.0
    band = np.flatnonzero((per_minute >= _CADENCE_MIN_BPM) & (per_minute <= _CADENCE_MAX_BPM))
    peak = int(band[np.argmax(power[band])])
    # A Hann window's coherent gain is half its length: amplitude of that sinusoid, in g.
    amplitude = 2.0 * math.sqrt(float(power[peak])) / float(hann.sum())
    if amplitude < CADENCE_MIN_AMPLITUDE_G:
        return None
    return float(per_minute[peak])


def near_cadence(
    bpm: float | None, cadence: float | None, halfwidth_bpm: float = CADENCE_HALFWIDTH_BPM
) -> bool:
    """Whether a heart rate lies within ``halfwidth_bpm`` of half, once or twice ``cadence``."""
    if bpm is None or cadence is None or not math.isfinite(bpm):
        return False
    return any(abs(bpm - k * cadence) <= halfwidth_bpm for k in CADENCE_MULTIPLES)


def _corr(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    sa, sb = float(a.std()), float(b.std())
    if sa < _STD_FLOOR_G or sb < _STD_FLOOR_G:
        return 0.0  # a still axis correlates with nothing
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def acc_features(
    acc: npt.ArrayLike, acc_rate_hz: float = 32.0, *, acc_lsb_per_g: float = 64.0
) -> npt.NDArray[np.float32]:
    """Return the `ACC_FEATURE_NAMES` features of one ACC window (m, 3) in 1/lsb g, float32."""
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 16:
        raise ValueError(f"acc must have shape (m >= 16, 3), got {a.shape}")
    if not (math.isfinite(acc_lsb_per_g) and acc_lsb_per_g > 0):
        raise ValueError(f"acc_lsb_per_g must be positive, got {acc_lsb_per_g!r}")
    if not (math.isfinite(acc_rate_hz) and acc_rate_hz > 2 * ACC_FEATURES_LOWPASS_HZ):
        raise ValueError(f"acc_rate_hz must be above {2 * ACC_FEATURES_LOWPASS_HZ} Hz")
    if not np.isfinite(a).all():
        raise ValueError("acc contains NaN or infinite samples")
    g = a / float(acc_lsb_per_g)
    spread = float(np.sqrt(np.sum(np.var(g, axis=0))))
    smooth = _lowpass(g, acc_rate_hz)
    dyn = smooth - smooth.mean(axis=0)
    mag = np.sqrt(np.sum(smooth * smooth, axis=1))
    mag = mag - mag.mean()
    out: list[float] = []
    for column in (*dyn.T, mag):
        out.append(math.log10(float(column.std()) + _STD_FLOOR_G))
        out.extend(float(v) for v in np.percentile(column, _PERCENTILES))
    out.append(math.log2(1.0 + spread / _MOTION_UNIT_G))
    freqs, axes_power = power_spectra(dyn, acc_rate_hz)
    _, mag_power = power_spectra(mag[:, None], acc_rate_hz)
    out.extend(float(v) for v in band_log_energies(freqs, axes_power))
    out.extend(float(v) for v in band_log_energies(freqs, mag_power))
    band = (freqs >= ACC_BANDS_HZ[0][0]) & (freqs < ACC_BANDS_HZ[-1][1])
    in_band = axes_power[band]
    total = float(in_band.sum())
    peak = int(np.argmax(in_band))
    out.append(float(freqs[band][peak]) if total > ENERGY_FLOOR else 0.0)
    out.append(float(in_band[peak]) / total if total > ENERGY_FLOOR else 0.0)
    jerk = float(np.mean(np.sqrt(np.sum(np.diff(smooth, axis=0) ** 2, axis=1)))) * acc_rate_hz
    out.append(math.log10(jerk + _JERK_FLOOR))
    out.extend(
        (_corr(dyn[:, 0], dyn[:, 1]), _corr(dyn[:, 0], dyn[:, 2]), _corr(dyn[:, 1], dyn[:, 2]))
    )
    return np.asarray(out, dtype=np.float32)


def acc_features_batch(
    acc: npt.ArrayLike, acc_rate_hz: float = 32.0, *, acc_lsb_per_g: float = 64.0
) -> npt.NDArray[np.float32]:
    """Return the features of N windows (N, m, 3) as (N, len(ACC_FEATURE_NAMES)) float32."""
    a = np.asarray(acc)
    if a.ndim != 3:
        raise ValueError(f"acc must have shape (N, m, 3), got {a.shape}")
    out = np.empty((a.shape[0], len(ACC_FEATURE_NAMES)), dtype=np.float32)
    for i in range(a.shape[0]):
        out[i] = acc_features(a[i], acc_rate_hz, acc_lsb_per_g=acc_lsb_per_g)
    return out


def _matrix(value: Any, rows: int, cols: int, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (rows, cols) or not np.isfinite(arr).all():
        raise ValueError(f"{what} must be {rows} x {cols} finite numbers, got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class LinearActivityBaseline:
    """Multinomial logistic regression on standardised ACC features: p = softmax(W z + b)."""

    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]
    intercept: npt.NDArray[np.float64]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearActivityBaseline:
        """Build the baseline from its parsed JSON; ValueError names what is wrong."""
        if data.get("format") != BASELINE_FORMAT:
            raise ValueError(f"not a {BASELINE_FORMAT} file (format {data.get('format')!r})")
        if data.get("features_id") != ACC_FEATURES_ID:
            raise ValueError(
                f"baseline was fitted on features {data.get('features_id')!r}, "
                f"this gateway computes {ACC_FEATURES_ID!r}"
            )
        names = tuple(str(n) for n in data["feature_names"])
        if names != ACC_FEATURE_NAMES:
            raise ValueError("baseline feature names differ from ACC_FEATURE_NAMES")
        classes = tuple(str(c) for c in data["classes"])
        n, k = len(names), len(classes)
        scale = _matrix([data["scale"]], 1, n, "scale")[0]
        if np.any(scale <= 0):
            raise ValueError("scale must be positive")
        return cls(
            classes=classes,
            feature_names=names,
            mean=_matrix([data["mean"]], 1, n, "mean")[0],
            scale=scale,
            coef=_matrix(data["coef"], k, n, "coef"),
            intercept=_matrix([data["intercept"]], 1, k, "intercept")[0],
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready parameters (the inverse of `from_dict`)."""
        return {
            "format": BASELINE_FORMAT,
            "features_id": ACC_FEATURES_ID,
            "classes": list(self.classes),
            "feature_names": list(self.feature_names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
        }

    def decision(self, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Return the logits (N, classes) of feature rows (N, features)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != len(self.feature_names):
            raise ValueError(f"features must be (N, {len(self.feature_names)}), got {f.shape}")
        z = (f - self.mean) / self.scale
        out: npt.NDArray[np.float64] = z @ self.coef.T + self.intercept
        return out

    def predict_proba(self, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Return class probabilities (N, classes) of feature rows (N, features)."""
        z = self.decision(features)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
        return out

    def predict(self, features: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Return the most probable class index of every row."""
        return np.asarray(np.argmax(self.decision(features), axis=1), dtype=np.int64)
