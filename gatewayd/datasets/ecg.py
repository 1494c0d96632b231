"""Reference heart rate from an ECG: R-peak detection and the per-window rate. Pure numpy/scipy.

`hr_from_rpeaks` is the one definition of a window's reference from R-peaks, used for the
annotated peaks of PhysioNet's wrist-ppg-exercise and for the peaks `detect_rpeaks` finds in
WESAD's chest ECG (a derived reference: no one checked those peaks by hand).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage, signal

from gatewayd.signals.windows import STEP_S, WINDOW_S

__all__ = ["MAX_RR_S", "MIN_RR_S", "detect_rpeaks", "hr_from_rpeaks"]

#: RR intervals outside this range (30-240 bpm) are annotation or detection errors.
MIN_RR_S: Final = 0.25
MAX_RR_S: Final = 2.0
#: Band of the QRS complex kept before detection, Hz.
_QRS_BAND_HZ: Final = (5.0, 20.0)
#: Pan-Tompkins moving-window integration, s.
_INTEGRATION_S: Final = 0.15
#: A peak must reach this share of the local (8 s) 90th percentile of the integrated energy.
_THRESHOLD: Final = 0.3
_PERCENTILE: Final = 90
_LOCAL_S: Final = 8.0
_ENVELOPE_HZ: Final = 50
#: The R-peak is the largest |ECG| within this distance of the energy peak, s.
_REFINE_S: Final = 0.08


def hr_from_rpeaks(
    beat_s: npt.ArrayLike,
    windows: int,
    *,
    min_rr: int = 2,
    max_deviation: float | None = None,
) -> npt.NDArray[np.float64]:
    """Reference heart rate per 8 s / 2 s window from R-peak times (seconds), NaN where unknown.

    Window ``i`` covers [2i, 2i + 8) s. Its RR intervals are those whose two R-peaks both lie in
    it; intervals outside [`MIN_RR_S`, `MAX_RR_S`] are dropped as errors; the reference is
    60 / (mean of the rest), NaN with fewer than ``min_rr`` of them. With ``max_deviation``
    (for detected, unchecked peaks) a window is NaN when any of its intervals differs from their
    median by more than that share: a missed or an extra beat.
    """
    out = np.full(windows, np.nan)
    beats = np.sort(np.asarray(beat_s, dtype=np.float64).reshape(-1))
    if beats.size < 2 or windows <= 0:
        return out
    rr = np.diff(beats)
    ok = (rr >= MIN_RR_S) & (rr <= MAX_RR_S)
    starts = np.arange(windows) * STEP_S
    # Interval j runs from beat j to beat j + 1; it is inside when beat j >= start and
    # beat j + 1 < start + 8 s, i.e. j in [first beat inside, last beat inside).
    first = np.searchsorted(beats, starts, side="left")
    last = np.searchsorted(beats, starts + WINDOW_S, side="left") - 1
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, rr, 0.0))])
    count = np.concatenate([[0], np.cumsum(ok)])
    has = last > first
    n = np.zeros(windows, dtype=np.int64)
    total = np.zeros(windows)
    n[has] = count[last[has]] - count[first[has]]
    total[has] = csum[last[has]] - csum[first[has]]
    good = n >= max(1, min_rr)
    out[good] = 60.0 * n[good] / total[good]
    if max_deviation is not None:
        for i in np.flatnonzero(good):
            inside = rr[first[i] : last[i]][ok[first[i] : last[i]]]
            if np.any(np.abs(inside / np.median(inside) - 1.0) > max_deviation):
                out[i] = np.nan
    return out


def detect_rpeaks(ecg: npt.ArrayLike, rate_hz: float) -> npt.NDArray[np.int64]:
    """R-peak sample indices in a single-lead ECG: band-pass, Pan-Tompkins energy, local threshold.

    The energy (squared derivative of the 5-20 Hz band, integrated over 150 ms) is searched for
    peaks at least `MIN_RR_S` apart that reach `_THRESHOLD` of its 8 s running 90th percentile;
    each is then moved to the largest |ECG| within 80 ms. Either polarity of R wave works.
    """
    x = np.asarray(ecg, dtype=np.float64).reshape(-1)
    if x.size < int(2 * rate_hz):
        return np.zeros(0, dtype=np.int64)
    sos = signal.butter(3, _QRS_BAND_HZ, btype="band", fs=rate_hz, output="sos")
    band = signal.sosfiltfilt(sos, x)
    energy = np.gradient(band) ** 2
    width = max(1, round(_INTEGRATION_S * rate_hz))
    energy = np.convolve(energy, np.ones(width) / width, mode="same")
    # The threshold follows the signal's level: computed on a 50 Hz envelope, then held.
    step = max(1, round(rate_hz / _ENVELOPE_HZ))
    coarse = ndimage.maximum_filter1d(energy, size=step)[::step]
    local = ndimage.percentile_filter(
        coarse, _PERCENTILE, size=max(3, round(_LOCAL_S * _ENVELOPE_HZ))
    )
    threshold = _THRESHOLD * np.repeat(local, step)[: energy.size]
    peaks, _ = signal.find_peaks(
        energy, height=threshold, distance=max(1, round(MIN_RR_S * rate_hz))
    )
    reach = max(1, round(_REFINE_S * rate_hz))
    refined = np.empty(peaks.size, dtype=np.int64)
    mag = np.abs(band)
    for k, p in enumerate(peaks):
        lo, hi = max(0, p - reach), min(x.size, p + reach + 1)
        refined[k] = lo + int(np.argmax(mag[lo:hi]))
    return np.unique(refined)
