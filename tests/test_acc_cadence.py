"""The wrist's rhythm in an ACC window (`acc_cadence`) and a heart rate that coincides with it."""

from __future__ import annotations

import numpy as np
import pytest

from gatewayd.signals.acc_features import (
    CADENCE_HALFWIDTH_BPM,
    CADENCE_MIN_AMPLITUDE_G,
    acc_cadence,
    near_cadence,
)

RATE = 32
T = np.arange(8 * RATE) / RATE


def swing(per_minute: float, amplitude_g: float, lsb: float = 64.0) -> np.ndarray:
    """An arm swinging at ``per_minute`` on x, a smaller second harmonic on y, gravity on z."""
    f = per_minute / 60.0
    x = amplitude_g * np.sin(2 * np.pi * f * T)
    y = 0.3 * amplitude_g * np.sin(2 * np.pi * 2 * f * T + 0.4)
    z = np.ones_like(T)
    return np.round(np.stack([x, y, z], axis=1) * lsb)


@pytest.mark.parametrize("per_minute", [52.0, 80.0, 150.0, 172.5])
def test_the_strongest_rhythm_is_found_within_two_bpm(per_minute: float) -> None:
    cadence = acc_cadence(swing(per_minute, 0.5), RATE)
    assert cadence is not None
    assert cadence == pytest.approx(per_minute, abs=2.0)


def test_units_follow_the_lsb() -> None:
    # The same movement at 1024 LSB/g gives the same rhythm.
    assert acc_cadence(swing(90.0, 0.5, 1024.0), RATE, acc_lsb_per_g=1024.0) == pytest.approx(
        acc_cadence(swing(90.0, 0.5), RATE), abs=0.01
    )


def test_a_still_wrist_has_no_rhythm() -> None:
    rng = np.random.default_rng(0)
    still = np.round(rng.normal(0.0, 0.3, (8 * RATE, 3)) + np.array([0, 0, 64]))  # noise, LSB
    assert acc_cadence(still, RATE) is None
    assert acc_cadence(swing(90.0, CADENCE_MIN_AMPLITUDE_G / 2), RATE) is None
    assert acc_cadence(swing(90.0, CADENCE_MIN_AMPLITUDE_G * 4), RATE) is not None


def test_a_rate_that_cannot_see_the_band_gives_none() -> None:
    slow = swing(90.0, 0.5)[::4]  # 8 Hz: 240 per minute is its Nyquist, 220 fits; 4 Hz does not
    assert acc_cadence(slow, 8) is not None
    assert acc_cadence(swing(90.0, 0.5)[::8], 4) is None


@pytest.mark.parametrize(
    ("acc", "rate"), [(np.zeros((8, 3)), RATE), (np.zeros((256, 2)), RATE), (np.zeros((256, 3)), 0)]
)
def test_bad_input_is_refused(acc: np.ndarray, rate: float) -> None:
    with pytest.raises(ValueError, match="acc"):
        acc_cadence(acc, rate)


def test_near_cadence_is_half_once_or_twice_within_the_halfwidth() -> None:
    h = CADENCE_HALFWIDTH_BPM
    for k in (0.5, 1.0, 2.0):
        assert near_cadence(80.0 * k + h, 80.0)
        assert not near_cadence(80.0 * k + h + 0.5, 80.0)
        assert not near_cadence(80.0 * k - h - 0.5, 80.0)
    assert not near_cadence(120.0, 80.0)  # 1.5x: neither the swing nor the steps
    assert not near_cadence(None, 80.0)
    assert not near_cadence(80.0, None)
    assert not near_cadence(float("nan"), 80.0)
