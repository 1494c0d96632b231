"""gatewayd.signals.preprocess: the model input keeps the accelerometer's physical scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal

from gatewayd.signals.filters import bandpass, resample_to, zscore
from gatewayd.signals.preprocess import (
    MODEL_CHANNEL_NAMES,
    MODEL_CHANNELS,
    MODEL_RATE_HZ,
    MODEL_WINDOW_LEN,
    V2_CHANNELS,
    motion_intensity_g,
    motion_level,
    preprocess_batch,
    preprocess_window,
)

BVP_N, ACC_N = 512, 256
T_BVP = np.arange(BVP_N) / 64.0
T_ACC = np.arange(ACC_N) / 32.0
ACC_CH = slice(1, 5)


def _pulse(bpm: float = 72.0) -> np.ndarray:
    return np.sin(2 * np.pi * bpm / 60.0 * T_BVP) + 0.3 * np.sin(4 * np.pi * bpm / 60.0 * T_BVP)


def _acc(amplitude_g: float = 0.5, hz: float = 2.0, lsb_per_g: float = 64.0) -> np.ndarray:
    """Gravity on z plus a sinusoidal swing on x, in counts of 1/lsb_per_g g."""
    g = np.zeros((ACC_N, 3))
    g[:, 0] = amplitude_g * np.sin(2 * np.pi * hz * T_ACC)
    g[:, 2] = 1.0
    return g * lsb_per_g


def test_shape_dtype_and_channel_names() -> None:
    x = preprocess_window(_pulse(), _acc())
    assert x.shape == (MODEL_CHANNELS, MODEL_WINDOW_LEN) == (15, 256)
    assert x.dtype == np.float32
    assert MODEL_CHANNEL_NAMES[0] == "bvp"
    assert MODEL_CHANNEL_NAMES[6] == "ppg"
    assert MODEL_CHANNEL_NAMES[7:] == (
        *(f"axes_e{b}hz" for b in ("0.25_1", "1_2", "2_3", "3_5")),
        *(f"mag_e{b}hz" for b in ("0.25_1", "1_2", "2_3", "3_5")),
    )
    assert x.flags.c_contiguous


def test_band_channels_say_where_the_motion_sits_in_frequency() -> None:
    # Arm swing at 1.5 Hz (walking) and at 2.5 Hz (running): the axes' energy is in the 1-2 Hz
    # and the 2-3 Hz band (channels 8 and 9); a still wrist has none in any band.
    walking = preprocess_window(_pulse(), _acc(0.3, 1.5))[7:11, 0]
    running = preprocess_window(_pulse(), _acc(0.3, 2.5))[7:11, 0]
    assert int(np.argmax(walking)) == 1
    assert int(np.argmax(running)) == 2
    still = preprocess_window(_pulse(), _acc(0.0))[7:, 0]
    assert float(still.max()) < 0.05
    # Constant channels, the same in every sample.
    x = preprocess_window(_pulse(), _acc(0.3, 2.5))
    assert np.all(x[7:] == x[7:, :1])


def test_acc_keeps_its_scale_in_g() -> None:
    # A 0.5 g swing at 2 Hz (well inside the 5 Hz low-pass) comes out as about 0.5 g, not as a
    # z-score of 1.4: how hard the wrist moves survives.
    x = preprocess_window(_pulse(), _acc(0.5))
    core = x[1, 32:-32]  # away from the zero-phase filter's edges
    assert 0.45 < float(np.max(np.abs(core))) < 0.55
    y = preprocess_window(_pulse(), _acc(0.05))
    ratio = np.max(np.abs(x[1, 32:-32])) / np.max(np.abs(y[1, 32:-32]))
    assert ratio == pytest.approx(10.0, rel=1e-3)


def test_acc_units_follow_lsb_per_g() -> None:
    a = preprocess_window(_pulse(), _acc(lsb_per_g=64.0), acc_lsb_per_g=64.0)
    b = preprocess_window(_pulse(), _acc(lsb_per_g=1000.0), acc_lsb_per_g=1000.0)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_gravity_and_orientation_offsets_leave_the_axes_unchanged() -> None:
    tilted = _acc()
    tilted[:, 1] += 0.3 * 64  # the device sits at another angle on this wrist
    a = preprocess_window(_pulse(), _acc())
    b = preprocess_window(_pulse(), tilted)
    np.testing.assert_allclose(a[1:4], b[1:4], atol=1e-5)


def test_bvp_is_scale_free_and_masked_without_ppg() -> None:
    a = preprocess_window(_pulse(), _acc())
    b = preprocess_window(1000.0 + 37.0 * _pulse(), _acc())
    np.testing.assert_allclose(a[0], b[0], atol=1e-4)
    assert np.all(a[6] == 1.0)
    none = preprocess_window(np.zeros(BVP_N), _acc(), has_bvp=False)
    assert np.all(none[0] == 0.0)
    assert np.all(none[6] == 0.0)
    np.testing.assert_array_equal(none[ACC_CH], a[ACC_CH])


def test_motion_channel_is_constant_and_grows_with_motion() -> None:
    still = preprocess_window(_pulse(), _acc(0.0))
    walk = preprocess_window(_pulse(), _acc(0.2))
    run = preprocess_window(_pulse(), _acc(1.0))
    for x in (still, walk, run):
        assert np.ptp(x[5]) == 0.0
    assert still[5, 0] == 0.0 < walk[5, 0] < run[5, 0] < 1.0
    assert motion_intensity_g(_acc(0.2) / 64.0) == pytest.approx(0.2 / np.sqrt(2), rel=1e-2)
    assert motion_level(0.0) == 0.0
    assert motion_level(-1.0) == 0.0


@pytest.mark.parametrize(
    ("bvp", "acc", "message"),
    [
        (np.zeros(BVP_N), np.zeros((ACC_N - 1, 3)), "same duration"),
        (np.zeros(BVP_N), np.zeros((ACC_N, 2)), "shape"),
        (np.zeros((BVP_N, 2)), np.zeros((ACC_N, 3)), "shape"),
        (np.full(BVP_N, np.nan), np.zeros((ACC_N, 3)), "NaN"),
    ],
)
def test_bad_windows_are_refused_with_a_reason(
    bvp: np.ndarray, acc: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess_window(bvp, acc)


def test_non_numeric_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        preprocess_window(np.array(["a"] * BVP_N), _acc())
    with pytest.raises(ValueError, match="acc_lsb_per_g"):
        preprocess_window(_pulse(), _acc(), acc_lsb_per_g=0.0)


# --- bit for bit: the scipy reference, and the batch ---------------------------------------------


def _reference(
    bvp: np.ndarray, acc: np.ndarray, bvp_rate: int, acc_rate: int, lsb: float, has_bvp: bool
) -> np.ndarray:
    """The model input v3 written with scipy's public sosfiltfilt and resample_poly."""

    def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
        g = math.gcd(src, dst)
        if src == dst:
            return x.copy()
        mean = x.mean(axis=0, keepdims=True)
        y = signal.resample_poly(x - mean, dst // g, src // g, axis=0, padtype="line")
        return np.asarray(y) + mean

    def filtfilt(sos: np.ndarray, x: np.ndarray, pad: float) -> np.ndarray:
        padlen = min(x.shape[0] - 1, math.ceil(pad))
        return np.asarray(signal.sosfiltfilt(sos, x, axis=0, padtype="odd", padlen=padlen))

    rate = MODEL_RATE_HZ
    n = bvp.shape[0] * rate // bvp_rate
    out = np.zeros((MODEL_CHANNELS, n))
    if has_bvp:
        band = signal.butter(4, [0.5, 4.0], btype="bandpass", fs=rate, output="sos")
        filtered = filtfilt(band, resample(bvp.astype(np.float64), bvp_rate, rate), 4 * rate / 0.5)
        out[0] = zscore(filtered)
    acc_g = acc.astype(np.float64) / lsb
    spread = motion_intensity_g(acc_g)
    up = resample(acc_g, acc_rate, rate)
    magnitude = np.sqrt(np.sum(up * up, axis=1))
    dynamic = np.empty((n, 4))
    dynamic[:, :3] = up - up.mean(axis=0)
    dynamic[:, 3] = magnitude - magnitude.mean()
    low = signal.butter(4, 5.0, btype="lowpass", fs=rate, output="sos")
    out[1:5] = filtfilt(low, dynamic, 2 * rate / 5.0).T
    out[5] = motion_level(spread)
    out[6] = 1.0 if has_bvp else 0.0
    # v3: log band energies of the low-passed ACC, axes together and |a|, Hann-windowed.
    hann = np.hanning(n)[:, None]
    freqs = np.fft.rfftfreq(n, d=1.0 / rate)
    for k, columns in enumerate((out[1:4].T, out[4:5].T)):
        power = np.abs(np.fft.rfft(columns * hann, axis=0)) ** 2 * 2.0 / (n * np.sum(hann**2))
        power = power.sum(axis=1)
        for j, (lo, hi) in enumerate(((0.25, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 5.0))):
            energy = power[(freqs >= lo) & (freqs < hi)].sum()
            out[7 + 4 * k + j] = (np.log10(energy + 1e-10) + 10.0) / 10.0
    return np.ascontiguousarray(out, dtype=np.float32)


#: (BVP rate, ACC rate): the E4, a 32 Hz PPG, TROIKA, BAMI, a 10 Hz accelerometer, a 256 Hz set.
RATE_PAIRS = [(64, 32), (32, 32), (125, 125), (50, 50), (64, 10), (256, 32), (100, 50)]


def _random_batch(bvp_rate: int, acc_rate: int, count: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    bvp = rng.normal(0.0, 300.0, (count, 8 * bvp_rate)).round()
    acc = rng.normal(0.0, 40.0, (count, 8 * acc_rate, 3)).round() + np.array([0.0, 10.0, 64.0])
    lsb = rng.choice([64.0, 1000.0, 4096.0], count)
    has = rng.random(count) < 0.7
    has[0] = True
    return bvp, acc, lsb, has


@pytest.mark.parametrize(("bvp_rate", "acc_rate"), RATE_PAIRS)
def test_preprocess_window_is_the_scipy_reference_bit_for_bit(bvp_rate: int, acc_rate: int) -> None:
    bvp, acc, lsb, has = _random_batch(bvp_rate, acc_rate, 6, seed=bvp_rate + acc_rate)
    for b, a, s, h in zip(bvp, acc, lsb, has, strict=True):
        got = preprocess_window(b, a, bvp_rate, acc_rate, acc_lsb_per_g=s, has_bvp=bool(h))
        assert np.array_equal(got, _reference(b, a, bvp_rate, acc_rate, s, bool(h)))


@pytest.mark.parametrize(("bvp_rate", "acc_rate"), RATE_PAIRS)
def test_preprocess_batch_is_each_windows_preprocess_window(bvp_rate: int, acc_rate: int) -> None:
    bvp, acc, lsb, has = _random_batch(bvp_rate, acc_rate, 7, seed=bvp_rate * acc_rate)
    batch = preprocess_batch(bvp, acc, bvp_rate, acc_rate, acc_lsb_per_g=lsb, has_bvp=has)
    assert batch.x.shape == (7, MODEL_CHANNELS, MODEL_WINDOW_LEN)
    assert batch.x.dtype == np.float32
    assert batch.x.flags.c_contiguous
    for i in range(7):
        one = preprocess_window(
            bvp[i], acc[i], bvp_rate, acc_rate, acc_lsb_per_g=lsb[i], has_bvp=bool(has[i])
        )
        assert np.array_equal(batch.x[i], one)
        # The band-passed BVP it keeps is filters.bandpass of the resampled BVP, before z-scoring.
        if has[i]:
            resampled = resample_to(bvp[i], bvp_rate, MODEL_RATE_HZ)
            assert np.array_equal(batch.bvp[i], bandpass(resampled, MODEL_RATE_HZ))
        else:
            assert not batch.bvp[i].any()
    # One value for all windows is the same as that value per window.
    same = preprocess_batch(bvp, acc, bvp_rate, acc_rate, acc_lsb_per_g=64.0, has_bvp=True)
    each = preprocess_batch(
        bvp, acc, bvp_rate, acc_rate, acc_lsb_per_g=np.full(7, 64.0), has_bvp=np.ones(7, bool)
    )
    assert np.array_equal(same.x, each.x)
    # A v2 model's input: the first seven channels, the same bits, contiguous.
    v2 = preprocess_batch(
        bvp, acc, bvp_rate, acc_rate, acc_lsb_per_g=lsb, has_bvp=has, channels=V2_CHANNELS
    )
    assert v2.x.shape == (7, V2_CHANNELS, MODEL_WINDOW_LEN)
    assert v2.x.flags.c_contiguous
    assert np.array_equal(v2.x, batch.x[:, :V2_CHANNELS])
    assert np.array_equal(v2.bvp, batch.bvp)


def test_preprocess_batch_refuses_what_preprocess_window_refuses() -> None:
    bvp = np.stack([_pulse(), _pulse()])
    acc = np.stack([_acc(), _acc()])
    with pytest.raises(ValueError, match="2 BVP windows but 1 ACC"):
        preprocess_batch(bvp, acc[:1])
    with pytest.raises(ValueError, match="acc_lsb_per_g must be a scalar or have shape"):
        preprocess_batch(bvp, acc, acc_lsb_per_g=np.ones(3))
    with pytest.raises(ValueError, match="acc_lsb_per_g must be positive"):
        preprocess_batch(bvp, acc, acc_lsb_per_g=np.array([64.0, -1.0]))
    with pytest.raises(ValueError, match="same duration"):
        preprocess_batch(bvp, acc[:, :-1])
    broken = bvp.copy()
    broken[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        preprocess_batch(broken, acc)
    with pytest.raises(ValueError, match="shape"):
        preprocess_batch(bvp[0], acc)
    with pytest.raises(ValueError, match="channels must be 7 or 15"):
        preprocess_batch(bvp, acc, channels=8)
