"""Windowing, filters, preprocessing and the offload policy (gatewayd.signals)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.signals import (
    ACC_RATE_HZ,
    BVP_RATE_HZ,
    MODEL_CHANNELS,
    MODEL_RATE_HZ,
    MODEL_WINDOW_LEN,
    STEP_S,
    WINDOW_S,
    OffloadReason,
    bandpass,
    bandpass_sos,
    confidence_e4,
    decide_offload,
    preprocess_window,
    resample_to,
    should_offload,
    sliding_windows,
    window_count,
    window_length,
    window_start_samples,
    window_start_times,
    zscore,
)

FS = 64


def tone_amplitude(y: npt.NDArray[np.float64], freq_hz: float, rate_hz: float) -> float:
    """Least-squares amplitude of a sinusoid of ``freq_hz`` in ``y``."""
    t = np.arange(y.shape[0]) / rate_hz
    basis = np.column_stack([np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t)])
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(coef[0], coef[1]))


# --- windows ---------------------------------------------------------------------------------


def test_constants_describe_the_model_input() -> None:
    assert (WINDOW_S, STEP_S) == (8.0, 2.0)
    assert (BVP_RATE_HZ, ACC_RATE_HZ, MODEL_RATE_HZ) == (64, 32, 64)
    assert window_length(MODEL_RATE_HZ) == MODEL_WINDOW_LEN == 512
    assert window_length(ACC_RATE_HZ) == 256
    assert MODEL_CHANNELS == 4


def test_sliding_windows_shape_and_values_1d() -> None:
    x = np.arange(20 * FS, dtype=np.int16)
    w = sliding_windows(x, FS)
    # (20 s - 8 s) / 2 s + 1 = 7 windows
    assert w.shape == (7, 512)
    assert w.dtype == np.int16
    for i in range(7):
        np.testing.assert_array_equal(w[i], x[i * 128 : i * 128 + 512])
    assert window_count(x.shape[0], FS) == 7


def test_sliding_windows_multichannel() -> None:
    x = np.arange(21 * 32 * 3).reshape(21 * 32, 3)
    w = sliding_windows(x, 32, window_s=8.0, step_s=2.0)
    # 21 s: windows start at 0, 2, ..., 12 s; the one at 14 s would end at 22 s and is dropped.
    assert w.shape == (7, 256, 3)
    np.testing.assert_array_equal(w[3], x[3 * 64 : 3 * 64 + 256])
    np.testing.assert_array_equal(w[-1, -1], x[6 * 64 + 255])


def test_sliding_windows_is_a_read_only_view() -> None:
    x = np.arange(16 * FS, dtype=np.float64)
    w = sliding_windows(x, FS)
    assert not w.flags.writeable
    assert np.shares_memory(w, x)
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1.0


def test_sliding_windows_shorter_than_one_window() -> None:
    w = sliding_windows(np.zeros((100, 3)), FS)
    assert w.shape == (0, 512, 3)
    assert not w.flags.writeable
    assert window_count(100, FS) == 0
    assert window_count(512, FS) == 1
    assert window_count(512 + 127, FS) == 1
    assert window_count(512 + 128, FS) == 2


@given(n=st.integers(0, 4000), rate=st.sampled_from([4, 25, 32, 64, 125]))
def test_window_count_matches_the_view(n: int, rate: int) -> None:
    w = sliding_windows(np.zeros(n, dtype=np.int8), rate)
    assert w.shape[0] == window_count(n, rate)
    starts = window_start_samples(n, rate)
    assert starts.shape == (w.shape[0],)
    if starts.size:
        assert starts[-1] + window_length(rate) <= n


def test_window_start_times() -> None:
    t = window_start_times(20 * FS, FS, t0_s=100.0)
    np.testing.assert_array_equal(t, 100.0 + 2.0 * np.arange(7))


@pytest.mark.parametrize(
    ("rate", "window_s", "step_s", "what"),
    [
        (64, 8.01, 2.0, "window"),
        (64, 8.0, 0.01, "step"),
        (125, 8.0, 2.004, "step"),
        (64, 0.0, 2.0, "window"),
        (64, 8.0, -2.0, "step"),
        (0, 8.0, 2.0, "window"),
    ],
)
def test_sliding_windows_rejects_fractional_sample_counts(
    rate: int, window_s: float, step_s: float, what: str
) -> None:
    with pytest.raises(ValueError, match=what):
        sliding_windows(np.zeros(2000), rate, window_s=window_s, step_s=step_s)


def test_window_of_tenth_second_at_640_hz_is_whole() -> None:
    # 0.1 * 640 = 64.00000000000001 in binary floating point.
    assert window_length(640, 0.1) == 64


# --- band-pass -------------------------------------------------------------------------------


def test_bandpass_keeps_pulse_and_removes_drift_and_high_tone() -> None:
    t = np.arange(512) / FS
    pulse = np.sin(2 * np.pi * 1.5 * t)
    drift = 100.0 * np.sin(2 * np.pi * 0.05 * t + 0.3) + 50.0
    high = np.sin(2 * np.pi * 10.0 * t)
    y = bandpass(pulse + drift + high, FS)
    assert tone_amplitude(y, 1.5, FS) == pytest.approx(1.0, abs=0.05)
    assert tone_amplitude(bandpass(high, FS), 10.0, FS) < 0.01
    # A drift of amplitude 100 leaves less than 0.05 % of itself behind.
    assert np.sqrt(np.mean(bandpass(drift, FS) ** 2)) < 0.05
    # What is left besides the pulse is small, even at the window edges.
    assert np.sqrt(np.mean((y - pulse) ** 2)) < 0.2


def test_bandpass_is_zero_phase() -> None:
    t = np.arange(512) / FS
    pulse = np.sin(2 * np.pi * 1.5 * t)
    y = bandpass(pulse, FS)
    # Zero phase: the filtered tone lines up with the input in the middle of the window.
    np.testing.assert_allclose(y[128:384], pulse[128:384], atol=0.02)


def test_bandpass_filters_each_column_independently_and_accepts_ints() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-1000, 1000, size=(512, 3), dtype=np.int16)
    y = bandpass(x, FS)
    assert y.dtype == np.float64
    assert y.shape == x.shape
    for c in range(3):
        np.testing.assert_allclose(y[:, c], bandpass(x[:, c], FS), rtol=0, atol=1e-9)


def test_bandpass_uses_only_the_samples_it_is_given() -> None:
    rng = np.random.default_rng(2)
    recording = rng.normal(size=2048)
    alone = bandpass(recording[:512].copy(), FS)
    recording[512:] = 0.0  # what follows the window must not matter
    np.testing.assert_array_equal(bandpass(recording[:512], FS), alone)


def test_bandpass_sos_is_cached_and_read_only() -> None:
    a = bandpass_sos(64.0, 0.5, 4.0, 4)
    assert a is bandpass_sos(64.0, 0.5, 4.0, 4)
    assert a.shape == (4, 6)
    assert not a.flags.writeable


@pytest.mark.parametrize(("low", "high"), [(0.0, 4.0), (4.0, 0.5), (0.5, 32.0), (-1.0, 4.0)])
def test_bandpass_rejects_bad_bands(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="band-pass"):
        bandpass(np.zeros(512), FS, low_hz=low, high_hz=high)


# --- z-score ---------------------------------------------------------------------------------


def test_zscore_per_channel() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(loc=[5.0, -3.0, 100.0], scale=[1.0, 10.0, 0.5], size=(512, 3))
    z = zscore(x)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-12)


def test_zscore_constant_channel_is_zero_not_nan() -> None:
    x = np.column_stack([np.full(512, 0.1), np.arange(512.0), np.zeros(512)])
    z = zscore(x)
    assert np.all(np.isfinite(z))
    np.testing.assert_array_equal(z[:, 0], 0.0)
    np.testing.assert_array_equal(z[:, 2], 0.0)
    assert z[:, 1].std() == pytest.approx(1.0)


def test_zscore_other_axis_and_ints() -> None:
    x = np.array([[1, 2, 3], [4, 4, 4]], dtype=np.int8)
    z = zscore(x, axis=1)
    np.testing.assert_allclose(z[0], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
    np.testing.assert_array_equal(z[1], 0.0)


# --- resampling ------------------------------------------------------------------------------


def test_resample_up_preserves_a_band_limited_signal() -> None:
    def f(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 64.0 + 10.0 * np.sin(2 * np.pi * 1.7 * t + 0.4) + 3.0 * np.sin(2 * np.pi * 3.1 * t)

    x = f(np.arange(256) / 32)
    y = resample_to(x, 32, 64)
    assert y.shape == (512,)
    np.testing.assert_allclose(y[32:-32], f(np.arange(512) / 64)[32:-32], atol=0.05)


def test_resample_keeps_a_constant_exactly() -> None:
    # The polyphase branches' DC gains differ slightly; the mean is taken out first.
    y = resample_to(np.full((256, 3), 64, dtype=np.int8), 32, 64)
    assert y.shape == (512, 3)
    np.testing.assert_array_equal(y, 64.0)


def test_resample_same_rate_is_a_copy_and_down_works() -> None:
    x = np.arange(512, dtype=np.float64)
    y = resample_to(x, 64, 64)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(x, y)
    assert resample_to(np.zeros(512), 64, 32).shape == (256,)
    assert resample_to(np.zeros(1000), 125, 64).shape == (512,)


@pytest.mark.parametrize(("src", "dst"), [(64, 32.5), (0, 64), (64.2, 64), (-32, 64)])
def test_resample_rejects_non_integer_rates(src: float, dst: float) -> None:
    with pytest.raises(ValueError, match="whole number of Hz"):
        resample_to(np.zeros(64), src, dst)


# --- preprocess_window -----------------------------------------------------------------------


def synthetic_window(seed: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int8]]:
    rng = np.random.default_rng(seed)
    t64 = np.arange(512) / 64
    t32 = np.arange(256) / 32
    bvp = 300 * np.sin(2 * np.pi * 1.3 * t64) + 40 * t64 + rng.normal(0, 20, 512)
    acc = np.column_stack(
        [64 + 10 * np.sin(2 * np.pi * 1.8 * t32 + k) + rng.normal(0, 2, 256) for k in range(3)]
    )
    return bvp.astype(np.int16), np.clip(acc, -128, 127).astype(np.int8)


def test_preprocess_window_shape_dtype_layout() -> None:
    bvp, acc = synthetic_window(0)
    y = preprocess_window(bvp, acc)
    assert y.shape == (MODEL_CHANNELS, MODEL_WINDOW_LEN)
    assert y.dtype == np.float32
    assert y.flags.c_contiguous
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=1), 1.0, atol=1e-5)
    # Channel 0 is the band-passed, z-scored BVP.
    expected_bvp = zscore(bandpass(bvp, 64))
    np.testing.assert_allclose(y[0], expected_bvp.astype(np.float32), atol=1e-6)


def test_preprocess_window_is_deterministic_and_dtype_agnostic() -> None:
    bvp, acc = synthetic_window(1)
    a = preprocess_window(bvp, acc)
    b = preprocess_window(bvp.copy(), acc.copy())
    np.testing.assert_array_equal(a, b)
    # The same values as floats, or BVP as (n, 1) the way PPG-DaLiA stores it, give the same bits.
    c = preprocess_window(bvp.astype(np.float32).reshape(-1, 1), acc.astype(np.float64))
    np.testing.assert_array_equal(a, c)


def test_preprocess_window_constant_inputs_are_zeros() -> None:
    y = preprocess_window(np.full(512, 1234, np.int16), np.full((256, 3), 64, np.int8))
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, 0.0)
    y = preprocess_window(np.zeros(512), np.full((256, 3), 0.1))
    np.testing.assert_array_equal(y, 0.0)


def test_preprocess_window_other_rates() -> None:
    # TROIKA-like: 125 Hz for both sensors, resampled to the model's 64 Hz.
    rng = np.random.default_rng(4)
    y = preprocess_window(rng.normal(size=1000), rng.normal(size=(1000, 3)), 125, 125, 64)
    assert y.shape == (4, 512)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize(
    ("bvp_shape", "acc_shape", "match"),
    [
        ((512,), (255, 3), "same duration"),
        ((512,), (256, 2), "acc must have shape"),
        ((512, 2), (256, 3), "bvp must have shape"),
    ],
)
def test_preprocess_window_rejects_bad_shapes(
    bvp_shape: tuple[int, ...], acc_shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        preprocess_window(np.zeros(bvp_shape), np.zeros(acc_shape))


# --- offload policy --------------------------------------------------------------------------

E, L, N = OffloadReason.ENTROPY, OffloadReason.LOW_CONFIDENCE, OffloadReason.NONE


@pytest.mark.parametrize(
    ("h_mbits", "conf_e4", "tau_mbits", "min_conf_e4", "expected"),
    [
        (3000, 9000, 3500, 6000, N),
        (3501, 9000, 3500, 6000, E),
        (3500, 9000, 3500, 6000, N),  # equal to tau is not above it
        (3000, 5999, 3500, 6000, L),
        (3000, 6000, 3500, 6000, N),  # equal to the minimum is confident enough
        (4000, 1000, 3500, 6000, E | L),
        (0, 0, 0, 0, N),
        (65535, 10000, 65535, 10000, N),
        (1, 10000, 0, 10000, E),
        (0, 9999, 0, 10000, L),
    ],
)
def test_decide_offload_table(
    h_mbits: int, conf_e4: int, tau_mbits: int, min_conf_e4: int, expected: OffloadReason
) -> None:
    reason = decide_offload(h_mbits, conf_e4, tau_mbits, min_conf_e4)
    assert reason == expected
    assert bool(reason) == (expected != N)


def test_offload_reason_values_are_the_header_flag_bits() -> None:
    assert int(OffloadReason.ENTROPY) == 1
    assert int(OffloadReason.LOW_CONFIDENCE) == 2
    assert int(E | L) == 3


@pytest.mark.parametrize("bad", [-1, 65536])
def test_decide_offload_rejects_values_outside_u16(bad: int) -> None:
    with pytest.raises(ValueError, match="u16"):
        decide_offload(bad, 0, 0, 0)
    with pytest.raises(ValueError, match="u16"):
        decide_offload(0, 0, 0, bad)


def test_confidence_e4_rounding() -> None:
    assert confidence_e4(0.0) == 0
    assert confidence_e4(1.0) == 10000
    assert confidence_e4(0.12345) == 1235  # half rounds up
    assert confidence_e4(0.12344) == 1234
    assert confidence_e4(-0.3) == 0
    assert confidence_e4(1.7) == 10000
    with pytest.raises(ValueError, match="finite"):
        confidence_e4(float("nan"))


def test_should_offload_rounds_like_the_wire() -> None:
    # 3.5004 bits is 3500 mbits on the wire: not above tau = 3.5 bits.
    assert should_offload(3.5004, 0.9, 3.5, 0.6) == N
    assert should_offload(3.5006, 0.9, 3.5, 0.6) == E
    # 0.59996 rounds to 6000 e-4: not below 0.6.
    assert should_offload(1.0, 0.59996, 3.5, 0.6) == N
    assert should_offload(1.0, 0.59994, 3.5, 0.6) == L
    assert should_offload(4.9, 0.1, 3.5, 0.6) == E | L


@given(
    h=st.floats(0.0, 5.0),
    conf=st.floats(0.0, 1.0),
    tau=st.floats(0.0, 5.0),
    min_conf=st.floats(0.0, 1.0),
)
def test_should_offload_agrees_with_floats_away_from_rounding(
    h: float, conf: float, tau: float, min_conf: float
) -> None:
    reason = should_offload(h, conf, tau, min_conf)
    if abs(h - tau) > 1e-3:
        assert bool(reason & E) == (h > tau)
    if abs(conf - min_conf) > 1e-4:
        assert bool(reason & L) == (conf < min_conf)
