"""Heart rate by signal processing: the wearable's local estimate and the gateway's fallback.

One window of BVP (PPG) and ACC in, one `HrEstimate` out, with the tracker's state passed
explicitly from window to window, so the estimate of window ``k`` depends only on windows
``0..k`` (causal) and the function is pure: no I/O, no clock, no logging. The steps (see
docs/signals.md, "Heart rate by signal processing"):

1. band-pass the BVP 0.5-4 Hz inside the window (`gatewayd.signals.filters.bandpass`);
2. Hann-windowed power spectrum, zero-padded so that bins are 1/64 Hz (0.9375 bpm) apart, on
   the same grid for BVP and ACC;
3. motion: a Wiener gain (the running average of the cleaned PPG spectra against this window's
   ACC spectra) times an attenuation of the strongest ACC peaks; where the gain is low the
   spectrum says nothing about the heart rate, so the evidence there is set to a neutral level
   instead of zero;
4. tracking: a forward filter (a hidden Markov model over the heart-rate bins): the belief is
   spread by a random walk, a rarer fast change and a small chance of a reset anywhere, then
   multiplied by the window's evidence; the estimate is the belief's mode (refined by the local
   mean);
5. confidence in [0, 1]: the belief's mass near the estimate, calibrated so that it predicts
   how often the estimate is within 10 bpm of the truth.
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

    #: Use the ACC to discount motion artefacts (Wiener gain and ACC-peak attenuation).
    motion_suppression: bool = True
    #: Track across windows; when False every window is estimated on its own.
    tracking: bool = True
    #: Heart rates searched, in bpm (inside the 0.5-4 Hz band-pass, 30-240 bpm).
    min_bpm: float = 40.0
    max_bpm: float = 220.0
    #: ACC intensity (RMS of the detrended 3-axis ACC in 1/64 g) below which the wrist counts as
    #: still. Reported for callers (`gatewayd.eval` uses it as its still/moving threshold); the
    #: tracker's own ramp is ``mask_floor``..``mask_full``.
    motion_floor: float = 15.0
    #: ACC-peak attenuation: ramps in from ``mask_floor`` to ``mask_full`` (ACC intensity, 1/64 g).
    mask_floor: float = 8.0
    mask_full: float = 25.0
    #: ACC peaks attenuated: the strongest few local maxima of the ACC power spectrum, each at
    #: least this fraction of the strongest, and the strongest one's second harmonic.
    motion_peaks: int = 3
    motion_peak_min: float = 0.1
    #: A periodic gait: when two of those peaks are a frequency f and its double (2f within
    #: this many bpm), the third harmonic 3f is attenuated too (the arm swing's, which lands
    #: in the heart-rate band while running). 0 turns it off.
    gait_harmonic_tolerance_bpm: float = 3.0
    #: Gaussian half-width in bpm of the attenuation around an ACC peak.
    motion_width_bpm: float = 4.0
    #: Attenuation at the centre of an ACC peak at full motion: power / (1 + this).
    motion_attenuation: float = 30.0
    #: Weight of the past in the Wiener gain's signal estimate (running average of the cleaned,
    #: normalised PPG magnitude spectra), and the weight of the ACC noise template against it.
    wiener_memory: float = 0.8
    wiener_strength: float = 1.5
    #: The ACC template counts in full once the strongest ACC component reaches
    #: ``template_full`` (amplitude, 1/64 g) and not at all below ``template_floor``: a still
    #: wrist's spectrum is sensor noise, which says nothing about where motion is.
    template_floor: float = 0.25
    template_full: float = 1.0
    #: Evidence given to a heart rate where the motion gain has removed the spectrum (0: "not
    #: here", 1: "as likely as the best peak"): a masked rate is neither chosen nor excluded.
    masked_evidence: float = 0.6
    #: Sharpness of the evidence: likelihood = exp(gain * (evidence - 1)), evidence in [0, 1].
    evidence_gain: float = 3.0
    #: A window whose evidence is no more concentrated than white noise's carries none: the
    #: share of the evidence within ``peak_halfwidth_bpm`` of its maximum is mapped from
    #: ``quality_floor`` (white noise's median) to ``quality_full`` (its 99th percentile) onto a
    #: weight 0..1 of the window's likelihood.
    peak_halfwidth_bpm: float = 6.0
    quality_floor: float = 0.2
    quality_full: float = 0.4
    #: Random walk of the heart rate per 2 s step (standard deviation, bpm).
    step_sd_bpm: float = 5.0
    #: Probability per step of a faster change (standard deviation ``jump_sd_bpm``).
    jump_probability: float = 0.02
    jump_sd_bpm: float = 15.0
    #: Probability per step that the rate is anywhere in the band: how a wrong lock is left.
    reset_probability: float = 1e-5
    #: The belief before any window: a Gaussian around ``prior_bpm`` (0 width: uniform).
    prior_bpm: float = 80.0
    prior_sd_bpm: float = 30.0
    #: Width of the belief given to a state started at a known rate, e.g. ``HrState(bpm=72.0)``.
    start_sd_bpm: float = 3.0
    #: The estimate is the belief's mean within this many bpm of its mode.
    estimate_halfwidth_bpm: float = 5.0
    #: The belief's mass within this many bpm of the estimate is the raw confidence.
    confidence_halfwidth_bpm: float = 10.0

    def __post_init__(self) -> None:
        """Reject parameters the algorithm cannot work with."""
        if not 0.0 < self.min_bpm < self.max_bpm:
            raise ValueError(f"need 0 < min_bpm < max_bpm, got {self.min_bpm}, {self.max_bpm}")
        if not 0.0 <= self.wiener_memory < 1.0:
            raise ValueError(f"wiener_memory must be in [0, 1), got {self.wiener_memory}")
        for ramp in ("mask", "template", "quality"):
            if getattr(self, f"{ramp}_full") <= getattr(self, f"{ramp}_floor"):
                raise ValueError(f"{ramp}_full must be greater than {ramp}_floor")
        for name in ("motion_peaks", "gait_harmonic_tolerance_bpm"):
            if not getattr(self, name) >= 0:  # NaN too
                raise ValueError(f"{name} must be >= 0")
        for name in ("jump_probability", "reset_probability", "masked_evidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.jump_probability + self.reset_probability > 1.0:
            raise ValueError("jump_probability + reset_probability must be <= 1")
        for name in ("step_sd_bpm", "jump_sd_bpm", "start_sd_bpm", "evidence_gain"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")
        if self.prior_sd_bpm < 0.0:
            raise ValueError("prior_sd_bpm must be >= 0 (0: a uniform prior)")


@dataclass(frozen=True)
class HrState:
    """What the tracker carries from one window to the next (immutable).

    ``bpm`` is the last estimate (None before the first usable window); ``misses`` counts
    consecutive windows without a usable signal; ``spectrum`` is the Wiener gain's signal
    estimate and ``belief`` the probability of each heart-rate bin (both empty until the first
    usable window); ``windows`` counts the windows seen. A state made by hand, e.g.
    ``HrState(bpm=72.0)``, starts the tracker at a known heart rate.
    """

    bpm: float | None = None
    misses: int = 0
    spectrum: tuple[float, ...] = field(default=(), repr=False)
    belief: tuple[float, ...] = field(default=(), repr=False)
    windows: int = 0


@dataclass(frozen=True)
class HrEstimate:
    """One window's heart rate (None when there is none), its confidence and the new state.

    ``confidence`` (0..1) estimates the probability that ``bpm`` is within 10 bpm of the true
    heart rate (docs/signals.md shows how well it does); it is the local confidence the
    wearable offloads on and the weight the gateway fuses with. ``quality`` is the same as an
    integer 0..100. ``motion`` is the ACC intensity (RMS, 1/64 g) of the window.
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


@functools.lru_cache(maxsize=32)
def _kernel(sd_bins: float) -> npt.NDArray[np.float64]:
    """A normalised Gaussian kernel of standard deviation ``sd_bins`` bins, cut at 3 sd."""
    half = max(1, math.ceil(3.0 * sd_bins))
    offsets = np.arange(-half, half + 1, dtype=np.float64) / sd_bins
    kernel = np.exp(-0.5 * offsets * offsets)
    kernel /= kernel.sum()
    kernel.flags.writeable = False
    return kernel


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


@dataclass(frozen=True)
class _Motion:
    """What the ACC says about one window."""

    #: RMS of the detrended ACC vector (1/64 g).
    intensity: float
    #: Per-axis magnitude spectra, each scaled to a peak of 1, averaged (None: no usable ACC).
    template: npt.NDArray[np.float64] | None
    #: Attenuation of the strongest ACC peaks, per bin (None: none).
    peaks: npt.NDArray[np.float64] | None


def _motion(
    acc: npt.NDArray[np.float64] | None, acc_rate_hz: int, bvp_grid: _Grid, cfg: HrConfig
) -> _Motion:
    """Measure the window's motion and, when suppression is on, its spectral fingerprint."""
    if acc is None or not np.isfinite(acc).all():
        return _Motion(0.0, None, None)
    detrended = _detrend(acc)
    intensity = float(np.sqrt(np.sum(np.mean(detrended * detrended, axis=0))))
    if not cfg.motion_suppression:
        return _Motion(intensity, None, None)
    grid = _grid(acc.shape[0], acc_rate_hz, cfg.min_bpm, cfg.max_bpm)
    if not grid.complete or grid.bins.shape != bvp_grid.bins.shape:
        return _Motion(intensity, None, None)  # the ACC rate cannot see the whole band
    power = _band_power(detrended, grid)
    total = power.sum(axis=1)
    peaks = _peak_attenuation(total, grid, intensity, cfg)
    # Amplitude of the strongest sinusoidal ACC component (a Hann window's coherent gain is
    # half its length) decides whether the wrist moves at all.
    amplitude = 2.0 * math.sqrt(float(total.max())) / float(grid.taper.sum())
    weight = (amplitude - cfg.template_floor) / (cfg.template_full - cfg.template_floor)
    weight = min(1.0, max(0.0, weight))
    if weight == 0.0:
        return _Motion(intensity, None, peaks)
    magnitude = np.sqrt(power)
    axis_peak = magnitude.max(axis=0)
    # A silent axis (all zeros) adds nothing; the others are scaled alike, as in WFPV (Temko,
    # IEEE TBME 2017), so the template says where the wrist moves, not how hard.
    scaled = magnitude / np.where(axis_peak > _TINY, axis_peak, 1.0)
    return _Motion(intensity, weight * scaled.sum(axis=1) / 3.0, peaks)


def _peak_attenuation(
    power: npt.NDArray[np.float64], grid: _Grid, intensity: float, cfg: HrConfig
) -> npt.NDArray[np.float64] | None:
    """Gain attenuating the strongest ACC peaks, the strongest one's 2nd harmonic, a gait's 3rd."""
    weight = (intensity - cfg.mask_floor) / (cfg.mask_full - cfg.mask_floor)
    weight = min(1.0, max(0.0, weight))
    strongest = float(power.max())
    if weight == 0.0 or cfg.motion_peaks == 0 or not strongest > _TINY:
        return None
    scaled = power / strongest
    maxima = _local_maxima(scaled)
    maxima = maxima[scaled[maxima] >= cfg.motion_peak_min]
    if maxima.size == 0:
        return None
    top = maxima[np.argsort(scaled[maxima])[::-1][: cfg.motion_peaks]]
    # The strongest motion frequency's second harmonic too: arm swing -> step cadence.
    freqs = grid.bpm[top]
    centres = np.append(freqs, 2.0 * freqs[0])
    if cfg.gait_harmonic_tolerance_bpm > 0.0:
        # Two peaks at f and 2f are a periodic gait (arm swing and steps), whose third
        # harmonic the ACC may not show strongly enough to be among the peaks but the PPG does.
        double = np.abs(freqs[None, :] - 2.0 * freqs[:, None]) <= cfg.gait_harmonic_tolerance_bpm
        centres = np.append(centres, 3.0 * freqs[double.any(axis=1)])
    distance = (grid.bpm[:, None] - centres[None, :]) / cfg.motion_width_bpm
    mask = np.exp(-0.5 * distance * distance).max(axis=1)
    return np.asarray(1.0 / (1.0 + cfg.motion_attenuation * weight * mask))


def _bvp_power(
    x: npt.NDArray[np.float64],
    rate_hz: int,
    grid: _Grid,
    filtered: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64] | None:
    """Band-passed band power scaled to a peak of 1; None without a usable signal.

    ``filtered``, when given, is ``bandpass(x, rate_hz)`` already computed by the caller.
    """
    if not np.isfinite(x).all():
        return None
    if filtered is None:
        filtered = bandpass(x, rate_hz)
    # Flat (off-wrist, constant, disconnected): what is left is rounding noise of the level.
    if float(np.std(filtered)) <= _FLAT_RELATIVE * float(np.max(np.abs(x))):
        return None
    power = _band_power(filtered, grid)
    peak = float(power.max())
    if not (math.isfinite(peak) and peak > _TINY):
        return None
    return power / peak


def _flatten_tails(s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Level the monotonic runs into the band's edges: tails of something outside the band."""
    out = s.copy()
    n = out.shape[0]
    left = 0
    while left + 1 < n and out[left + 1] < out[left]:
        left += 1
    out[:left] = out[left]
    right = n - 1
    while right > 0 and out[right - 1] < out[right]:
        right -= 1
    out[right + 1 :] = out[right]
    return out


def _likelihood(
    power: npt.NDArray[np.float64],
    motion: _Motion,
    previous: npt.NDArray[np.float64] | None,
    grid: _Grid,
    cfg: HrConfig,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return the window's likelihood per bin (max 1) and the Wiener signal estimate to keep."""
    magnitude = np.sqrt(power)  # peak 1, as ``power``
    gain = np.ones_like(power)
    cleaned = magnitude
    if motion.template is not None:
        if previous is not None:
            mixed = cfg.wiener_memory * previous + (1.0 - cfg.wiener_memory) * magnitude
            mixed /= float(mixed.max())
        else:
            mixed = magnitude
        wiener = mixed / (mixed + cfg.wiener_strength * motion.template + 1e-12)
        gain = wiener * wiener  # the gain is on magnitudes; the evidence is power
        cleaned = magnitude * wiener
        cleaned /= max(float(cleaned.max()), _TINY)
    signal = cleaned
    if previous is not None:
        signal = cfg.wiener_memory * previous + (1.0 - cfg.wiener_memory) * cleaned
    if motion.peaks is not None:
        gain = gain * motion.peaks
    evidence = power * gain
    evidence = _flatten_tails(evidence / max(float(evidence.max()), _TINY))
    evidence /= max(float(evidence.max()), _TINY)
    mode = float(grid.bpm[int(np.argmax(evidence))])
    share = float(evidence[np.abs(grid.bpm - mode) <= cfg.peak_halfwidth_bpm].sum())
    share /= max(float(evidence.sum()), _TINY)
    weight = (share - cfg.quality_floor) / (cfg.quality_full - cfg.quality_floor)
    weight = min(1.0, max(0.0, weight))
    if motion.template is not None or motion.peaks is not None:
        # Where motion took the spectrum away, the window neither supports nor excludes a rate.
        evidence = gain * evidence + (1.0 - gain) * cfg.masked_evidence
    likelihood = (1.0 - weight) + weight * np.exp(cfg.evidence_gain * (evidence - 1.0))
    return likelihood, signal


def _prior(state: HrState, grid: _Grid, cfg: HrConfig) -> npt.NDArray[np.float64]:
    """The belief carried in: the state's, a Gaussian at a hand-made state's rate, or the prior."""
    if len(state.belief) == grid.bpm.shape[0]:
        return np.asarray(state.belief, dtype=np.float64)
    if state.bpm is not None:
        centre, width = state.bpm, cfg.start_sd_bpm
    elif cfg.prior_sd_bpm > 0.0:
        centre, width = cfg.prior_bpm, cfg.prior_sd_bpm
    else:
        return np.full(grid.bpm.shape[0], 1.0 / grid.bpm.shape[0])
    distance = (grid.bpm - centre) / width
    belief = np.exp(-0.5 * distance * distance)
    total = float(belief.sum())
    if not total > _TINY:  # a hand-made rate far outside the band
        return np.full(grid.bpm.shape[0], 1.0 / grid.bpm.shape[0])
    return np.asarray(belief / total)


def _spread(
    belief: npt.NDArray[np.float64], sd_bpm: float, step_bpm: float
) -> npt.NDArray[np.float64]:
    """Convolve the belief with a Gaussian (mass leaving the band is lost) and renormalise."""
    kernel = _kernel(sd_bpm / step_bpm)
    # The centred slice of the full convolution: np.convolve's "same" would return the kernel's
    # length when a narrow band (a custom min_bpm / max_bpm) has fewer bins than the kernel.
    start = (kernel.shape[0] - 1) // 2
    spread = np.convolve(belief, kernel)[start : start + belief.shape[0]]
    total = float(spread.sum())
    return spread / total if total > _TINY else np.full_like(belief, 1.0 / belief.shape[0])


def _predict(
    belief: npt.NDArray[np.float64], grid: _Grid, cfg: HrConfig
) -> npt.NDArray[np.float64]:
    """One 2 s step of the heart-rate dynamics: random walk, rarer fast change, rare reset."""
    step = float(grid.bpm[1] - grid.bpm[0])
    walk = _spread(belief, cfg.step_sd_bpm, step)
    if cfg.jump_probability > 0.0:
        jump = _spread(belief, cfg.jump_sd_bpm, step)
        walk = (1.0 - cfg.jump_probability) * walk + cfg.jump_probability * jump
    reset = cfg.reset_probability
    return np.asarray((1.0 - reset) * walk + reset / belief.shape[0])


def _read(belief: npt.NDArray[np.float64], grid: _Grid, cfg: HrConfig) -> tuple[float, float]:
    """Return the estimate (local mean around the mode) and the raw confidence (mass near it)."""
    mode = float(grid.bpm[int(np.argmax(belief))])
    near = np.abs(grid.bpm - mode) <= cfg.estimate_halfwidth_bpm
    weights = belief[near]
    bpm = float((grid.bpm[near] * weights).sum() / weights.sum())
    mass = float(belief[np.abs(grid.bpm - bpm) <= cfg.confidence_halfwidth_bpm].sum())
    return bpm, min(1.0, max(0.0, mass))


def _estimate(bpm: float | None, confidence: float, state: HrState, motion: float) -> HrEstimate:
    return HrEstimate(bpm, confidence, round(100.0 * confidence), state, motion)


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
    bandpassed_bvp: npt.ArrayLike | None = None,
) -> HrEstimate:
    """Estimate one window's heart rate from BVP (n,) and ACC (m, 3) or None, given the state.

    ``bandpassed_bvp``, when given, must be ``gatewayd.signals.filters.bandpass(bvp,
    bvp_rate_hz)`` (as the model input computes it when its rate is the BVP's): step 1 is then
    skipped and the estimate is the same as without it.
    """
    cfg = _DEFAULT_CONFIG if config is None else config
    prior = HrState() if state is None else state
    x, a, bvp_rate, acc_rate = _inputs(bvp, acc, bvp_rate_hz, acc_rate_hz)
    filtered = None
    if bandpassed_bvp is not None:
        filtered = _as_float(bandpassed_bvp, "bandpassed_bvp")
        if filtered.shape != x.shape:
            raise ValueError(
                f"bandpassed_bvp must have the BVP's shape {x.shape}, got {filtered.shape}"
            )
    grid = _grid(x.shape[0], bvp_rate, cfg.min_bpm, cfg.max_bpm)
    if not grid.complete:
        raise ValueError(
            f"bvp at {bvp_rate} Hz cannot resolve {cfg.max_bpm} bpm: the rate must exceed "
            f"{2.0 * cfg.max_bpm / 60.0} Hz"
        )
    motion = _motion(a, acc_rate, grid, cfg)
    power = _bvp_power(x, bvp_rate, grid, filtered)
    windows = prior.windows + 1
    if not cfg.tracking:
        alone = HrState(windows=windows)
        if power is None:
            return _estimate(None, 0.0, alone, motion.intensity)
        likelihood, _ = _likelihood(power, motion, None, grid, cfg)
        belief = _prior(HrState(), grid, cfg) * likelihood
        bpm, confidence = _read(belief / belief.sum(), grid, cfg)
        return _estimate(bpm, confidence, alone, motion.intensity)
    belief = _predict(_prior(prior, grid, cfg), grid, cfg)
    if power is None:
        # No signal: the belief only spreads; the Wiener estimate and the last rate are kept.
        missing = replace(
            prior, misses=prior.misses + 1, belief=tuple(belief.tolist()), windows=windows
        )
        return _estimate(None, 0.0, missing, motion.intensity)
    previous = np.asarray(prior.spectrum) if len(prior.spectrum) == power.shape[0] else None
    likelihood, signal = _likelihood(power, motion, previous, grid, cfg)
    posterior = belief * likelihood
    posterior /= float(posterior.sum())
    bpm, confidence = _read(posterior, grid, cfg)
    nxt = HrState(
        bpm=bpm,
        misses=0,
        spectrum=tuple(signal.tolist()),
        belief=tuple(posterior.tolist()),
        windows=windows,
    )
    return _estimate(bpm, confidence, nxt, motion.intensity)


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
