"""The filters' designs computed once per rate give scipy's output bit for bit.

`gatewayd.signals.filters` runs scipy's kernels with cached designs (sosfilt_zi, the polyphase
FIR) instead of `scipy.signal.sosfiltfilt` / `resample_poly`, which recompute them on every
call. Here both are held to those public functions, with ``np.array_equal``, on random windows
at every rate the code uses: the model rates (32 Hz v2, 64 Hz v1), the wearables' and the
datasets' BVP and ACC rates; and the batched form (a batch axis before the time axis) to the
same windows one at a time.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import signal

from gatewayd.signals import preprocess
from gatewayd.signals.acc_features import (
    ACC_BANDS_HZ,
    ENERGY_FLOOR,
    band_log_energies,
    power_spectra,
)
from gatewayd.signals.filters import (
    SosFilter,
    bandpass,
    bandpass_padlen,
    bandpass_sos,
    filtfilt_odd,
    resample_to,
)

#: The model rates (v2, v1), the E4's BVP and ACC, TROIKA, BAMI, HAR and the ECG-derived sets.
FILTER_RATES = (32, 64, 125, 50, 256)
#: (from, to): every source rate to each model rate.
RESAMPLINGS = [
    (src, dst) for src in (64, 32, 125, 50, 10, 100, 256) for dst in (32, 64) if src != dst
]


def _windows(rate_hz: int, shape: tuple[int, ...], seed: int) -> npt.NDArray[np.float64]:
    """Random 8 s windows at ``rate_hz``: noise around an offset, with a drift."""
    rng = np.random.default_rng(seed)
    n = 8 * rate_hz
    drift = np.linspace(0.0, rng.normal(0.0, 50.0), n).reshape((1, n) + (1,) * (len(shape) - 1))
    return rng.normal(300.0, 80.0, (shape[0], n, *shape[1:])) + drift


def _scipy_bandpass(x: npt.NDArray[np.float64], rate_hz: int, axis: int) -> npt.NDArray[np.float64]:
    padlen = bandpass_padlen(x.shape[axis], rate_hz)
    sos = bandpass_sos(float(rate_hz)).copy()
    return np.asarray(signal.sosfiltfilt(sos, x, axis=axis, padtype="odd", padlen=padlen))


@pytest.mark.parametrize("rate_hz", FILTER_RATES)
@pytest.mark.parametrize("channels", [(), (4,)])
def test_bandpass_is_scipys_sosfiltfilt_bit_for_bit(
    rate_hz: int, channels: tuple[int, ...]
) -> None:
    batch = _windows(rate_hz, (5, *channels), seed=rate_hz)
    for window in batch:
        assert np.array_equal(bandpass(window, rate_hz), _scipy_bandpass(window, rate_hz, 0))
    # The batch along its time axis equals each window alone.
    together = bandpass(batch, rate_hz, axis=1)
    assert together.shape == batch.shape
    for i, window in enumerate(batch):
        assert np.array_equal(together[i], bandpass(window, rate_hz))


@pytest.mark.parametrize(("src", "dst"), RESAMPLINGS)
@pytest.mark.parametrize("channels", [(), (3,)])
def test_resample_to_is_scipys_resample_poly_bit_for_bit(
    src: int, dst: int, channels: tuple[int, ...]
) -> None:
    batch = _windows(src, (3, *channels), seed=src * 1000 + dst)
    up, down = dst // math.gcd(src, dst), src // math.gcd(src, dst)
    for window in batch:
        mean = window.mean(axis=0, keepdims=True)
        expected = signal.resample_poly(window - mean, up, down, axis=0, padtype="line") + mean
        assert np.array_equal(resample_to(window, src, dst), expected)
    together = resample_to(batch, src, dst, axis=1)
    for i, window in enumerate(batch):
        assert np.array_equal(together[i], resample_to(window, src, dst))


@pytest.mark.parametrize("padlen", [0, 1, 7, 255])
def test_filtfilt_odd_matches_sosfiltfilt_for_any_padding_and_axis(padlen: int) -> None:
    sos = signal.butter(3, 3.0, btype="lowpass", fs=32, output="sos")
    f = SosFilter.of(sos)
    x = _windows(32, (2, 3), seed=padlen)  # (2, 256, 3)
    for axis in (0, 1, 2, -1):
        if padlen >= x.shape[axis]:
            with pytest.raises(ValueError, match="padlen"):
                filtfilt_odd(f, x, padlen, axis)
            continue
        expected = signal.sosfiltfilt(sos, x, axis=axis, padtype="odd", padlen=padlen)
        assert np.array_equal(filtfilt_odd(f, x, padlen, axis), expected)


def test_sos_filter_is_read_only_and_checks_its_input() -> None:
    f = SosFilter.of(bandpass_sos(32.0))
    assert not f.sos.flags.writeable
    assert not f.zi.flags.writeable
    assert np.array_equal(f.zi, signal.sosfilt_zi(bandpass_sos(32.0)))
    with pytest.raises(ValueError, match="n_sections, 6"):
        SosFilter.of(np.zeros((2, 5)))
    with pytest.raises(TypeError, match="float64"):
        filtfilt_odd(f, np.zeros(64, dtype=np.float32), 8)


def test_the_inputs_are_not_modified() -> None:
    x = _windows(64, (2, 4), seed=9)
    before = x.copy()
    bandpass(x, 64, axis=1)
    resample_to(x, 64, 32, axis=1)
    preprocess.preprocess_batch(x[:, :, 0], x[:, ::2, :3], 64, 32)
    assert np.array_equal(x, before)


@pytest.mark.parametrize(("n", "rate"), [(256, 32.0), (200, 25.0), (512, 64.0), (80, 10.0)])
def test_band_energies_sum_the_bins_of_each_band(n: int, rate: float) -> None:
    """The bins in [lo, hi) of each band, as boolean masks pick them; batch axes kept, and each
    window's energies the same to the last bit whatever batch it is in."""
    rng = np.random.default_rng(n)
    freqs, power = power_spectra(rng.normal(size=(2, 3, n, 3)), rate)
    assert power.shape == (2, 3, n // 2 + 1)
    energies = band_log_energies(freqs, power)
    expected = [power[..., (freqs >= lo) & (freqs < hi)].sum(axis=-1) for lo, hi in ACC_BANDS_HZ]
    np.testing.assert_allclose(
        energies, np.log10(np.stack(expected, axis=-1) + ENERGY_FLOOR), rtol=1e-13
    )
    for i, j in np.ndindex(2, 3):
        assert np.array_equal(energies[i, j], band_log_energies(freqs, power[i, j].copy()))
