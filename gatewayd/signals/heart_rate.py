"""Heart rate by signal processing: the wearable's local estimate and the gateway's fallback.

One window of BVP (PPG) and ACC in, one `HrEstimate` out, with the tracker's state passed
explicitly from window to window, so the estimate of window ``k`` depends only on windows
``0..k`` (causal) and the function is pure: no I/O, no clock, no logging. The steps (see
docs/signals.md, "Heart rate by signal processing"):

1. band-pass the BVP 0.5-4 Hz inside the window (`gatewayd.signals.filters.bandpass`);
2. Hann-windowed power spectrum, zero-padded so that bins are 1/64 Hz (0.9375 bpm) apart, on
   the same grid for BVP and ACC;
3. motion-artefact suppression: the dominant peaks of the ACC spectrum (and the second harmonic
   of the strongest) are attenuated in the BVP spectrum, in proportion to how much the wrist
   moves;
4. tracking: the spectrum is averaged with the previous windows' (exponentially), and the peak
   is searched near the previous estimate with a bounded change per step; after a run of
   low-confidence windows the tracker is lost and re-acquires from the whole range;
5. confidence in [0, 1] from the fraction of spectral power at the reported heart rate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from gatewayd.signals.filters import bandpass
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ

__all__ = [
    "HR_BINS_PER_HZ",
    "HrConfig",
    "HrEstimate",
    "HrState",
    "HrTracker",
    "estimate_hr",
    "estimate_recording",
]

#: Spectral bins per Hz: every spectrum is zero-padded to a bin spacing of 1/64 Hz (0.9375 bpm),
#: the same grid for BVP and ACC whatever their sample rates.
HR_BINS_PER_HZ: Final = 64

# A band-passed window whose standard deviation is below this fraction of its largest absolute
# sample is flat (off-wrist, a constant, a disconnected sensor): no heart rate in it.
_FLAT_RELATIVE: Final = 1e-9
_TINY: Final = 1e-300


@dataclass(frozen=True)
class HrConfig:
    """Parameters of the estimator; the defaults are the ones evaluated in docs/signals.md."""

    #: Attenuate BVP spectral peaks that coincide with the dominant ACC frequencies.
    motion_suppression: bool = True
    #: Track across windows; when False every window is estimated on its own.
    tracking: bool = True
    #: Heart rates searched, in bpm (inside the 0.5-4 Hz band-pass, 30-240 bpm).
    min_bpm: float = 40.0
    max_bpm: float = 220.0
    #: Half-width in bpm of "the peak" when measuring its share of the power (about one
    #: resolution cell of an 8 s window, 7.5 bpm).
    peak_halfwidth_bpm: float = 6.0
    #: Weight of the second harmonic when choosing a peak from the whole range, so that a
    #: strong harmonic (2 x HR) is not taken for the heart rate.
    harmonic_weight: float = 0.5
    #: Motion intensity (RMS of the detrended 3-axis ACC in 1/64 g) below which ACC is not used
    #: (at rest the wrist ACC picks up the pulse itself), and at which it is used in full.
    motion_floor: float = 15.0
    motion_full: float = 40.0
    #: ACC peaks used: the strongest few, each at least this fraction of the strongest.
    motion_peaks: int = 3
    motion_peak_min: float = 0.1
    #: Gaussian half-width in bpm of the attenuation around an ACC peak.
    motion_width_bpm: float = 4.0
    #: Attenuation at the centre of an ACC peak at full motion: power / (1 + this).
    motion_attenuation: float = 30.0
    #: Weight of the previous windows in the averaged, normalised spectrum.
    spectrum_memory: float = 0.5
    #: Search radius around the previous estimate; it grows by ``search_growth_bpm`` per
    #: low-confidence window, up to ``search_max_bpm``.
    search_radius_bpm: float = 15.0
    search_growth_bpm: float = 5.0
    search_max_bpm: float = 30.0
    #: Width in bpm of the Gaussian preference for peaks near the previous estimate; it and the
    #: maximum step widen by ``widen_per_miss`` per low-confidence window.
    prior_width_bpm: float = 8.0
    widen_per_miss: float = 0.5
    #: Largest change of the estimate in one step (2 s) while tracking confidently.
    max_step_bpm: float = 6.0
    #: A peak holding less than this fraction of the band's power is a low-confidence window:
    #: the estimate is held, not moved.
    min_peak_fraction: float = 0.2
    #: After this many low-confidence windows in a row the tracker is lost and re-acquires.
    lost_after: int = 10
    #: Re-acquisition: the whole-range peak is accepted after this many consecutive windows
    #: agreeing within ``reacquire_tolerance_bpm``, or at once if it holds this fraction.
    reacquire_windows: int = 3
    reacquire_tolerance_bpm: float = 6.0
    reacquire_fraction: float = 0.6
    #: Peak fractions mapped to confidence 0 and 1 (white noise: median 0.21; a clean
    #: sinusoid: 0.84).
    confidence_floor: float = 0.2
    confidence_full: float = 0.7

    def __post_init__(self) -> None:
        """Reject parameters the algorithm cannot work with."""
        if not 0.0 < self.min_bpm < self.max_bpm:
            raise ValueError(f"need 0 < min_bpm < max_bpm, got {self.min_bpm}, {self.max_bpm}")
        if not 0.0 <= self.spectrum_memory < 1.0:
            raise ValueError(f"spectrum_memory must be in [0, 1), got {self.spectrum_memory}")
        if self.motion_full <= self.motion_floor:
            raise ValueError("motion_full must be greater than motion_floor")
        if self.confidence_full <= self.confidence_floor:
            raise ValueError("confidence_full must be greater than confidence_floor")
        if self.lost_after < 1 or self.reacquire_windows < 1 or self.motion_peaks < 0:
            raise ValueError("lost_after and reacquire_windows must be >= 1, motion_peaks >= 0")


@dataclass(frozen=True)
class HrState:
    """What the tracker carries from one window to the next (immutable).

    ``bpm`` is the tracked heart rate (None until acquired); ``misses`` counts consecutive
    low-confidence windows; ``spectrum`` is the averaged, normalised, motion-suppressed
    spectrum on the search grid (empty before the first usable window); ``candidate_bpm`` and
    ``candidate_count`` are the re-acquisition candidate and how many windows agreed on it;
    ``windows`` counts the windows seen. A state made by hand, e.g. ``HrState(bpm=72.0)``, starts
    the tracker at a known heart rate.
    """

    bpm: float | None = None
    misses: int = 0
    spectrum: tuple[float, ...] = field(default=(), repr=False)
    candidate_bpm: float | None = None
    candidate_count: int = 0
    windows: int = 0


@dataclass(frozen=True)
class HrEstimate:
    """One window's heart rate (None when there is none), its confidence and the new state.

    ``confidence`` (0..1) is the share of spectral power at the reported rate, rescaled; it is
    the window's signal quality and, until a model exists, the local confidence. ``quality`` is
    the same as an integer 0..100. ``motion`` is the ACC intensity (RMS, 1/64 g) of the window.
    """

    bpm: float | None
    confidence: float
    quality: int
    state: HrState
    motion: float = 0.0


_DEFAULT_CONFIG: Final = HrConfig()


@dataclass(frozen=True)
class _Grid:
    """The zero-padded FFT of one window length and rate, restricted to the search band."""

    nfft: int
    taper: npt.NDArray[np.float64]
    bins: npt.NDArray[np.intp]
    bpm: npt.NDArray[np.float64]
    #: False when the rate's Nyquist frequency cuts the band short.
    complete: bool


@functools.lru_cache(maxsize=32)
def _grid(n: int, rate_hz: int, min_bpm: float, max_bpm: float) -> _Grid:
    # Bins 1/(64 k) Hz apart with the smallest k whose FFT holds the whole window: k is set by
    # the duration alone, so BVP and ACC windows of the same duration share the grid.
    per_hz = HR_BINS_PER_HZ * max(1, math.ceil(n / (HR_BINS_PER_HZ * rate_hz)))
    nfft = per_hz * rate_hz
    lo = math.ceil(min_bpm / 60.0 * per_hz)
    hi = math.floor(max_bpm / 60.0 * per_hz)
    top = min(hi, nfft // 2 - 1)
    bins = np.arange(lo, top + 1, dtype=np.intp)
    bpm = (bins * (60.0 / per_hz)).astype(np.float64)
    taper = np.hanning(n)
    for arr in (taper, bins, bpm):
        arr.flags.writeable = False
    return _Grid(nfft, taper, bins, bpm, complete=top == hi and bins.size >= 3)


def _band_power(x: npt.NDArray[np.float64], grid: _Grid) -> npt.NDArray[np.float64]:
    """Hann-windowed, zero-padded power spectrum of ``x`` (along axis 0) in the search band."""
    taper = grid.taper if x.ndim == 1 else grid.taper[:, None]
    spectrum = np.fft.rfft(x * taper, grid.nfft, axis=0)[grid.bins]
    return np.asarray(spectrum.real * spectrum.real + spectrum.imag * spectrum.imag)


def _check_rate(name: str, rate: int) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {rate!r}")
    return int(rate)


def _as_float(x: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an integer or float array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _local_maxima(s: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    # Interior bins at least as high as the left neighbour and higher than the right one.
    inner = (s[1:-1] >= s[:-2]) & (s[1:-1] > s[2:])
    return np.flatnonzero(inner) + 1


def _detrend(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Remove each column's least-squares line: gravity and slow changes of orientation."""
    n = x.shape[0]
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    centred = x - x.mean(axis=0)
    slope = (t @ centred) / (t @ t)
    return np.asarray(centred - np.outer(t, slope))


def _motion_gain(
    acc: npt.NDArray[np.float64] | None, acc_rate_hz: int, bvp_grid: _Grid, cfg: HrConfig
) -> tuple[npt.NDArray[np.float64] | None, float]:
    """Return the gain to apply to the BVP band power (None: none) and the motion intensity."""
    if acc is None or not np.isfinite(acc).all():
        return None, 0.0
    detrended = _detrend(acc)
    motion = float(np.sqrt(np.sum(np.mean(detrended * detrended, axis=0))))
    weight = (motion - cfg.motion_floor) / (cfg.motion_full - cfg.motion_floor)
    weight = min(1.0, max(0.0, weight))
    if not cfg.motion_suppression or weight == 0.0 or cfg.motion_peaks == 0:
        return None, motion
    grid = _grid(acc.shape[0], acc_rate_hz, cfg.min_bpm, cfg.max_bpm)
    if not grid.complete or grid.bins.shape != bvp_grid.bins.shape:
        return None, motion  # the ACC rate cannot see the whole band: do not guess
    power = _band_power(detrended, grid).sum(axis=1)
    strongest = float(power.max())
    if not strongest > _TINY:
        return None, motion
    power /= strongest
    maxima = _local_maxima(power)
    maxima = maxima[power[maxima] >= cfg.motion_peak_min]
    if maxima.size == 0:
        return None, motion
    top = maxima[np.argsort(power[maxima])[::-1][: cfg.motion_peaks]]
    # The strongest motion frequency's second harmonic too: arm swing -> step cadence.
    centres = np.append(grid.bpm[top], 2.0 * grid.bpm[top[0]])
    distance = (grid.bpm[:, None] - centres[None, :]) / cfg.motion_width_bpm
    mask = np.exp(-0.5 * distance * distance).max(axis=1)
    return 1.0 / (1.0 + cfg.motion_attenuation * weight * mask), motion


def _fraction(
    spectrum: npt.NDArray[np.float64], grid: _Grid, centre_bpm: float, cfg: HrConfig
) -> float:
    """Share of the band's power within ``peak_halfwidth_bpm`` of ``centre_bpm``."""
    total = float(spectrum.sum())
    if not total > _TINY:
        return 0.0
    near = np.abs(grid.bpm - centre_bpm) <= cfg.peak_halfwidth_bpm
    return float(spectrum[near].sum()) / total


def _refine(spectrum: npt.NDArray[np.float64], grid: _Grid, i: int) -> float:
    """Return the heart rate of bin ``i`` refined by parabolic interpolation of the peak."""
    bpm = float(grid.bpm[i])
    if 0 < i < spectrum.shape[0] - 1:
        left, centre, right = spectrum[i - 1], spectrum[i], spectrum[i + 1]
        curvature = left - 2.0 * centre + right
        if curvature < 0.0:
            shift = min(0.5, max(-0.5, float(0.5 * (left - right) / curvature)))
            bpm += shift * float(grid.bpm[1] - grid.bpm[0])
    return bpm


def _strongest(spectrum: npt.NDArray[np.float64], grid: _Grid, cfg: HrConfig) -> int | None:
    """Bin of the best peak in the whole band, crediting each peak with its 2nd harmonic.

    Only local maxima count: power falling away from a band edge is the tail of something
    outside the band (baseline drift, high-frequency noise), not a heart rate. None if no peak.
    """
    maxima = _local_maxima(spectrum)
    if maxima.size == 0:
        return None
    harmonic = np.interp(2.0 * grid.bpm[maxima], grid.bpm, spectrum, right=0.0)
    return int(maxima[np.argmax(spectrum[maxima] + cfg.harmonic_weight * harmonic)])


def _confidence(fraction: float, cfg: HrConfig) -> float:
    scaled = (fraction - cfg.confidence_floor) / (cfg.confidence_full - cfg.confidence_floor)
    return min(1.0, max(0.0, scaled))


def _estimate(
    bpm: float | None, fraction: float, state: HrState, motion: float, cfg: HrConfig
) -> HrEstimate:
    confidence = 0.0 if bpm is None else _confidence(fraction, cfg)
    return HrEstimate(bpm, confidence, round(100.0 * confidence), state, motion)


def _track(
    spectrum: npt.NDArray[np.float64], grid: _Grid, state: HrState, cfg: HrConfig
) -> HrState:
    """Return the next state: where the tracked heart rate goes given this window's spectrum."""
    windows = state.windows + 1
    prev = state.bpm
    if prev is None:
        # Acquisition: the whole band, locked only on a peak that stands out at all.
        i = _strongest(spectrum, grid, cfg)
        if i is not None and _fraction(spectrum, grid, grid.bpm[i], cfg) >= cfg.min_peak_fraction:
            return HrState(bpm=_refine(spectrum, grid, i), windows=windows)
        return replace(state, misses=state.misses + 1, windows=windows)
    if state.misses >= cfg.lost_after:
        # Lost: re-acquire from the whole band once a peak is very clear, or persistent.
        i = _strongest(spectrum, grid, cfg)
        found = None if i is None else float(grid.bpm[i])
        fraction = 0.0 if found is None else _fraction(spectrum, grid, found, cfg)
        count = 0
        if fraction >= cfg.min_peak_fraction:
            agrees = (
                found is not None
                and state.candidate_bpm is not None
                and abs(found - state.candidate_bpm) <= cfg.reacquire_tolerance_bpm
            )
            count = state.candidate_count + 1 if agrees else 1
        if i is not None and (fraction >= cfg.reacquire_fraction or count >= cfg.reacquire_windows):
            return HrState(bpm=_refine(spectrum, grid, i), windows=windows)
        return replace(
            state,
            misses=state.misses + 1,
            candidate_bpm=found,
            candidate_count=count,
            windows=windows,
        )
    # Tracking: the peak near the previous estimate, preferring the nearest of similar height.
    widen = 1.0 + cfg.widen_per_miss * state.misses
    radius = min(cfg.search_radius_bpm + cfg.search_growth_bpm * state.misses, cfg.search_max_bpm)
    maxima = _local_maxima(spectrum)
    near = maxima[np.abs(grid.bpm[maxima] - prev) <= radius]
    if near.size:
        distance = (grid.bpm[near] - prev) / (cfg.prior_width_bpm * widen)
        i = int(near[np.argmax(spectrum[near] * np.exp(-0.5 * distance * distance))])
        if _fraction(spectrum, grid, float(grid.bpm[i]), cfg) >= cfg.min_peak_fraction:
            step = cfg.max_step_bpm * widen
            change = min(step, max(-step, _refine(spectrum, grid, i) - prev))
            return replace(state, bpm=prev + change, misses=0, windows=windows)
    # Low confidence: hold the estimate rather than follow a peak that may be an artefact.
    return replace(state, misses=state.misses + 1, windows=windows)


def _bvp_spectrum(
    x: npt.NDArray[np.float64], rate_hz: int, grid: _Grid, gain: npt.NDArray[np.float64] | None
) -> npt.NDArray[np.float64] | None:
    """Band-passed, motion-suppressed band power scaled to a peak of 1; None without a signal."""
    if not np.isfinite(x).all():
        return None
    filtered = bandpass(x, rate_hz)
    # Flat (off-wrist, constant, disconnected): what is left is rounding noise of the level.
    if float(np.std(filtered)) <= _FLAT_RELATIVE * float(np.max(np.abs(x))):
        return None
    power = _band_power(filtered, grid)
    if gain is not None:
        power *= gain
    peak = float(power.max())
    if not (math.isfinite(peak) and peak > _TINY):
        return None
    return power / peak


def _inputs(
    bvp: npt.ArrayLike, acc: npt.ArrayLike | None, bvp_rate_hz: int, acc_rate_hz: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None, int, int]:
    """Check shapes, dtypes and rates; return float64 BVP (n,), ACC (m, 3) or None, rates."""
    bvp_rate = _check_rate("bvp_rate_hz", bvp_rate_hz)
    acc_rate = _check_rate("acc_rate_hz", acc_rate_hz)
    x = _as_float(bvp, "bvp")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1 or x.shape[0] < 4:
        raise ValueError(f"bvp must have shape (n,) or (n, 1) with n >= 4, got {x.shape}")
    if acc is None:
        return x, None, bvp_rate, acc_rate
    a = _as_float(acc, "acc")
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 4:
        raise ValueError(f"acc must have shape (m, 3) with m >= 4, got {a.shape}")
    # Same duration on both sensors, compared exactly in integers.
    if x.shape[0] * acc_rate != a.shape[0] * bvp_rate:
        raise ValueError(
            f"bvp has {x.shape[0]} samples at {bvp_rate} Hz but acc has {a.shape[0]} at "
            f"{acc_rate} Hz: they must cover the same duration"
        )
    return x, a, bvp_rate, acc_rate


def estimate_hr(
    bvp: npt.ArrayLike,
    acc: npt.ArrayLike | None,
    *,
    bvp_rate_hz: int = BVP_RATE_HZ,
    acc_rate_hz: int = ACC_RATE_HZ,
    state: HrState | None = None,
    config: HrConfig | None = None,
) -> HrEstimate:
    """Estimate one window's heart rate from BVP (n,) and ACC (m, 3) or None, given the state."""
    cfg = _DEFAULT_CONFIG if config is None else config
    prior = HrState() if state is None else state
    x, a, bvp_rate, acc_rate = _inputs(bvp, acc, bvp_rate_hz, acc_rate_hz)
    grid = _grid(x.shape[0], bvp_rate, cfg.min_bpm, cfg.max_bpm)
    if not grid.complete:
        raise ValueError(
            f"bvp at {bvp_rate} Hz cannot resolve {cfg.max_bpm} bpm: the rate must exceed "
            f"{2.0 * cfg.max_bpm / 60.0} Hz"
        )
    gain, motion = _motion_gain(a, acc_rate, grid, cfg)
    spectrum = _bvp_spectrum(x, bvp_rate, grid, gain)
    if not cfg.tracking:
        alone = HrState(windows=prior.windows + 1)
        i = None if spectrum is None else _strongest(spectrum, grid, cfg)
        if spectrum is None or i is None:
            return _estimate(None, 0.0, alone, motion, cfg)
        fraction = _fraction(spectrum, grid, float(grid.bpm[i]), cfg)
        return _estimate(_refine(spectrum, grid, i), fraction, alone, motion, cfg)
    if spectrum is None:
        # No signal: a miss for the tracker, which keeps its estimate and its spectrum.
        missing = replace(prior, misses=prior.misses + 1, windows=prior.windows + 1)
        return _estimate(None, 0.0, missing, motion, cfg)
    if len(prior.spectrum) == spectrum.shape[0]:
        memory = cfg.spectrum_memory
        spectrum = (1.0 - memory) * spectrum + memory * np.asarray(prior.spectrum)
    nxt = replace(_track(spectrum, grid, prior, cfg), spectrum=tuple(spectrum.tolist()))
    fraction = 0.0 if nxt.bpm is None else _fraction(spectrum, grid, nxt.bpm, cfg)
    return _estimate(nxt.bpm, fraction, nxt, motion, cfg)


class HrTracker:
    """Convenience wrapper that holds the `HrState` between windows of one wearer."""

    def __init__(
        self,
        *,
        bvp_rate_hz: int = BVP_RATE_HZ,
        acc_rate_hz: int = ACC_RATE_HZ,
        config: HrConfig | None = None,
        state: HrState | None = None,
    ) -> None:
        """Start from ``state`` (default: nothing known yet)."""
        self.bvp_rate_hz = bvp_rate_hz
        self.acc_rate_hz = acc_rate_hz
        self.config = _DEFAULT_CONFIG if config is None else config
        self._state = HrState() if state is None else state

    @property
    def state(self) -> HrState:
        """Return the current state (immutable; pass it to `estimate_hr` to continue)."""
        return self._state

    def update(self, bvp: npt.ArrayLike, acc: npt.ArrayLike | None) -> HrEstimate:
        """Estimate the next window's heart rate and keep the new state."""
        estimate = estimate_hr(
            bvp,
            acc,
            bvp_rate_hz=self.bvp_rate_hz,
            acc_rate_hz=self.acc_rate_hz,
            state=self._state,
            config=self.config,
        )
        self._state = estimate.state
        return estimate

    def reset(self, state: HrState | None = None) -> None:
        """Forget everything (a new wearer, or the wearable was re-attached)."""
        self._state = HrState() if state is None else state


def estimate_recording(
    windows: Iterable[tuple[npt.ArrayLike, npt.ArrayLike | None]],
    *,
    bvp_rate_hz: int = BVP_RATE_HZ,
    acc_rate_hz: int = ACC_RATE_HZ,
    config: HrConfig | None = None,
    state: HrState | None = None,
) -> list[HrEstimate]:
    """Estimate consecutive (bvp, acc) windows in order, carrying the state from one to the next."""
    tracker = HrTracker(
        bvp_rate_hz=bvp_rate_hz, acc_rate_hz=acc_rate_hz, config=config, state=state
    )
    return [tracker.update(bvp, acc) for bvp, acc in windows]
