"""gatewayd.signals.preprocess: the model input keeps the accelerometer's physical scale."""

from __future__ import annotations

import numpy as np
import pytest

from gatewayd.signals.preprocess import (
    MODEL_CHANNEL_NAMES,
    MODEL_CHANNELS,
    MODEL_WINDOW_LEN,
    motion_intensity_g,
    motion_level,
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
    assert x.shape == (MODEL_CHANNELS, MODEL_WINDOW_LEN) == (7, 256)
    assert x.dtype == np.float32
    assert MODEL_CHANNEL_NAMES[0] == "bvp"
    assert MODEL_CHANNEL_NAMES[-1] == "ppg"
    assert x.flags.c_contiguous


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
