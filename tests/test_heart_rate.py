"""Heart rate by signal processing: synthetic rates, motion, garbage, tracking and TROIKA.

Synthetic signals here are labelled synthetic: a PPG-like pulse with two harmonics, plus motion
artefacts that the accelerometer also sees. The real-data test at the end uses the TROIKA
recordings in ../shared/data/troika and is skipped without them.
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gatewayd.signals import (
    HrConfig,
    HrEstimate,
    HrState,
    HrTracker,
    estimate_hr,
    estimate_recording,
    sliding_windows,
)

REPO = Path(__file__).resolve().parent.parent
TROIKA = REPO.parent / "shared" / "data" / "troika"
BVP_HZ = 64
ACC_HZ = 32
WINDOW_S = 8

Window = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


def pulse(
    t: npt.NDArray[np.float64], bpm: float | npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """A PPG-like pulse: fundamental plus two harmonics (the phase integrates a varying rate)."""
    rate = np.broadcast_to(np.asarray(bpm, dtype=np.float64) / 60.0, t.shape)
    dt = t[1] - t[0]
    phase = 2 * np.pi * np.concatenate(([0.0], np.cumsum(rate[:-1]) * dt))
    return np.sin(phase) + 0.5 * np.sin(2 * phase + 0.8) + 0.2 * np.sin(3 * phase + 1.9)


def quiet_acc(n: int, seed: int = 0) -> npt.NDArray[np.float64]:
    """A still wrist: gravity on z (64 = 1 g) plus sensor noise, in 1/64 g."""
    rng = np.random.default_rng(seed)
    acc = rng.normal(0.0, 0.5, (n, 3))
    acc[:, 2] += 64.0
    return acc


def windows_of(bvp: npt.NDArray[np.float64], acc: npt.NDArray[np.float64]) -> list[Window]:
    b = sliding_windows(bvp, BVP_HZ)
    a = sliding_windows(acc, ACC_HZ)
    count = min(len(b), len(a))
    return [(b[i], a[i]) for i in range(count)]


def assert_sane(est: HrEstimate, cfg: HrConfig | None = None) -> None:
    cfg = cfg or HrConfig()
    assert 0.0 <= est.confidence <= 1.0
    assert math.isfinite(est.confidence)
    assert 0 <= est.quality <= 100
    assert est.quality == round(100 * est.confidence)
    if est.bpm is not None:
        assert math.isfinite(est.bpm)
        assert cfg.min_bpm - 1 <= est.bpm <= cfg.max_bpm + 1


# --- known heart rates -----------------------------------------------------------------------


#: Windows the tracker may take to lock onto a clean pulse far from its prior (80 +- 30 bpm):
#: each window multiplies the odds by at most exp(evidence_gain), e^3 = 20.
ACQUIRE_WINDOWS = 4


@pytest.mark.parametrize("bpm", [45.0, 62.5, 78.0, 101.3, 134.0, 171.7, 205.0])
def test_sinusoid_with_harmonics_acquired_within_a_few_windows(bpm: float) -> None:
    seconds = 20
    rng = np.random.default_rng(int(bpm * 10))
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    bvp = 300.0 * pulse(t, bpm) + rng.normal(0.0, 30.0, t.shape) + 2000.0  # offset: raw units
    estimates = estimate_recording(windows_of(bvp, quiet_acc(seconds * ACC_HZ)))
    for est in estimates:
        assert_sane(est)
        assert est.bpm is not None
        # Never confidently wrong while acquiring.
        assert est.bpm == pytest.approx(bpm, abs=1.0) or est.confidence < 0.45
    for est in estimates[ACQUIRE_WINDOWS:]:
        assert est.bpm == pytest.approx(bpm, abs=1.0)
        assert est.confidence > 0.6


def test_integer_inputs_match_float_inputs() -> None:
    t = np.arange(WINDOW_S * BVP_HZ) / BVP_HZ
    bvp = np.round(100.0 * pulse(t, 88.0)).astype(np.int16)
    acc = np.round(quiet_acc(WINDOW_S * ACC_HZ)).astype(np.int8)
    as_int = estimate_hr(bvp, acc)
    as_float = estimate_hr(bvp.astype(np.float64), acc.astype(np.float64))
    assert as_int == as_float
    assert as_int.bpm == pytest.approx(88.0, abs=1.0)
    # PPG-DaLiA's (n, 1) layout and no ACC at all are accepted too.
    assert estimate_hr(bvp[:, None], acc).bpm == as_int.bpm
    assert estimate_hr(bvp, None).bpm == pytest.approx(88.0, abs=1.0)


def test_tracks_a_changing_rate_over_a_recording() -> None:
    seconds = 120
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    truth = 70.0 + 50.0 * np.clip((t - 20.0) / 60.0, 0.0, 1.0)  # 70 -> 120 bpm in 60 s
    rng = np.random.default_rng(1)
    bvp = pulse(t, truth) + rng.normal(0.0, 0.3, t.shape)
    estimates = estimate_recording(windows_of(bvp, quiet_acc(seconds * ACC_HZ)))
    centres = [
        truth[i * 2 * BVP_HZ : i * 2 * BVP_HZ + WINDOW_S * BVP_HZ].mean()
        for i in range(len(estimates))
    ]
    errors = [abs(e.bpm - c) for e, c in zip(estimates, centres, strict=True) if e.bpm is not None]
    assert len(errors) == len(estimates)
    assert max(errors) < 3.0
    assert float(np.mean(errors)) < 1.0


# --- motion artefacts ------------------------------------------------------------------------


def running(
    seconds: int, seed: int = 2
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Running at a 160 steps/min cadence: a weak pulse rising 110 -> 140 bpm in strong motion.

    The wrist swings at half the cadence (80/min) and jolts at every step (160/min); both leak
    into the BVP at twice the pulse's amplitude. Returns (bvp, acc, true bpm at 64 Hz).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    truth = 110.0 + 30.0 * t / seconds
    cadence_hz = 160.0 / 60.0
    swing_hz = cadence_hz / 2.0

    def motion(tt: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.stack(
            [
                40.0 * np.sin(2 * np.pi * swing_hz * tt)
                + 30.0 * np.sin(2 * np.pi * cadence_hz * tt),
                25.0 * np.sin(2 * np.pi * cadence_hz * tt + 0.5),
                64.0 + 20.0 * np.sin(2 * np.pi * swing_hz * tt + 1.0),
            ],
            axis=1,
        )

    bvp = (
        pulse(t, truth)
        + 2.0 * np.sin(2 * np.pi * cadence_hz * t + 0.3)
        + 1.5 * np.sin(2 * np.pi * swing_hz * t + 1.2)
        + rng.normal(0.0, 0.2, t.shape)
    )
    ta = np.arange(seconds * ACC_HZ) / ACC_HZ
    acc = motion(ta) + rng.normal(0.0, 2.0, (ta.size, 3))
    return bvp, acc, truth


def test_tracker_follows_the_pulse_not_the_cadence() -> None:
    bvp, acc, truth = running(60)
    windows = windows_of(bvp, acc)
    centres = [
        truth[i * 2 * BVP_HZ : i * 2 * BVP_HZ + WINDOW_S * BVP_HZ].mean()
        for i in range(len(windows))
    ]
    # Without motion suppression or tracking the strongest peak is the motion: the test is hard.
    naive = estimate_hr(*windows[0], config=HrConfig(motion_suppression=False, tracking=False))
    assert naive.bpm is not None
    assert min(abs(naive.bpm - 80.0), abs(naive.bpm - 160.0)) < 2.0

    tracker = HrTracker(state=HrState(bpm=centres[0]))
    for (b, a), centre in zip(windows, centres, strict=True):
        est = tracker.update(b, a)
        assert est.bpm is not None
        assert est.bpm == pytest.approx(centre, abs=3.0)
        assert est.motion > HrConfig().mask_full  # the motion was strong enough to count
        assert_sane(est)


def test_motion_suppression_alone_finds_the_pulse_without_a_prior() -> None:
    bvp, acc, truth = running(16)
    est = estimate_hr(bvp[: WINDOW_S * BVP_HZ], acc[: WINDOW_S * ACC_HZ])
    assert est.bpm == pytest.approx(truth[: WINDOW_S * BVP_HZ].mean(), abs=3.0)


def jogging(seconds: int, seed: int = 3) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A slow jog (wrist-ppg-exercise s3_run's case, synthetic): pulse 111 bpm, steps 122/min.

    The arm swings at 61/min, the steps at 122/min; the BVP also picks up the swing's third
    harmonic (183/min) as strongly as the pulse, which the ACC shows only faintly (not among its
    strongest peaks). Returns (bvp, acc).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    swing_hz = 61.0 / 60.0
    step_hz = 2.0 * swing_hz
    bvp = (
        pulse(t, 111.0)
        + np.sin(2 * np.pi * swing_hz * t + 1.2)
        + np.sin(2 * np.pi * step_hz * t + 0.3)
        + np.sin(2 * np.pi * 3.0 * swing_hz * t + 0.7)
        + rng.normal(0.0, 0.2, t.shape)
    )
    ta = np.arange(seconds * ACC_HZ) / ACC_HZ
    acc = np.stack(
        [
            40.0 * np.sin(2 * np.pi * swing_hz * ta)
            + 3.0 * np.sin(2 * np.pi * 3.0 * swing_hz * ta),
            25.0 * np.sin(2 * np.pi * step_hz * ta + 0.5),
            64.0 + 20.0 * np.sin(2 * np.pi * swing_hz * ta + 1.0),
        ],
        axis=1,
    )
    return bvp, acc + rng.normal(0.0, 2.0, acc.shape)


def test_a_gaits_third_harmonic_does_not_capture_the_tracker() -> None:
    windows = windows_of(*jogging(120))
    # Without the gait's third harmonic the tracker ends on it, confidently: the test is hard.
    off = estimate_recording(windows, config=HrConfig(gait_harmonic_tolerance_bpm=0.0))
    assert off[-1].bpm == pytest.approx(183.0, abs=3.0)
    assert off[-1].confidence > 0.9
    on = estimate_recording(windows)
    assert all(e.bpm == pytest.approx(111.0, abs=5.0) for e in on[3:])
    assert on[-1].confidence > 0.6


def crossing(
    seconds: int, start_bpm: float, end_bpm: float, motion_bpm: float, seed: int = 6
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Synthetic: a pulse ramping ``start_bpm`` -> ``end_bpm`` through a steady motion frequency.

    The wrist moves at ``motion_bpm`` and at twice it (a swing and its harmonic, as arm swing
    and step cadence); both leak into the BVP at 1.5 and 1 times the pulse's amplitude, so the
    pulse's spectral peak merges with a stronger artefact while the two cross. The ramp holds
    still for the first and last 20 s. Returns (bvp, acc, true bpm at 64 Hz).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    ramp = np.clip((t - 20.0) / (seconds - 40.0), 0.0, 1.0)
    truth = start_bpm + (end_bpm - start_bpm) * ramp
    f = motion_bpm / 60.0
    bvp = (
        pulse(t, truth)
        + 1.5 * np.sin(2 * np.pi * f * t + 0.4)
        + 1.0 * np.sin(2 * np.pi * 2 * f * t + 1.1)
        + rng.normal(0.0, 0.2, t.shape)
    )
    ta = np.arange(seconds * ACC_HZ) / ACC_HZ
    acc = np.stack(
        [
            45.0 * np.sin(2 * np.pi * f * ta) + 25.0 * np.sin(2 * np.pi * 2 * f * ta + 0.3),
            20.0 * np.sin(2 * np.pi * 2 * f * ta + 0.9),
            64.0 + 15.0 * np.sin(2 * np.pi * f * ta + 1.7),
        ],
        axis=1,
    )
    return bvp, acc + rng.normal(0.0, 2.0, acc.shape), truth


@pytest.mark.parametrize(
    ("start_bpm", "end_bpm", "motion_bpm"),
    [
        (120.0, 180.0, 75.0),  # the pulse crosses the step cadence (2 x 75 = 150)
        (180.0, 120.0, 75.0),  # ... downwards
        (60.0, 100.0, 80.0),  # the pulse crosses the arm swing itself (80)
        (140.0, 190.0, 82.5),  # the pulse crosses twice the arm swing (165)
    ],
)
def test_pulse_crossing_a_motion_frequency_is_neither_frozen_nor_captured(
    start_bpm: float, end_bpm: float, motion_bpm: float
) -> None:
    seconds = 160
    bvp, acc, truth = crossing(seconds, start_bpm, end_bpm, motion_bpm)
    windows = windows_of(bvp, acc)
    centres = np.array(
        [
            truth[i * 2 * BVP_HZ : i * 2 * BVP_HZ + WINDOW_S * BVP_HZ].mean()
            for i in range(len(windows))
        ]
    )
    # Without the ACC the tracker is captured: the test is hard.
    blind = estimate_recording(
        windows, config=HrConfig(motion_suppression=False), state=HrState(bpm=centres[0])
    )
    blind_errors = np.abs(np.array([e.bpm for e in blind], dtype=float) - centres)
    assert blind_errors.max() > 10.0

    estimates = estimate_recording(windows, state=HrState(bpm=centres[0]))
    bpm = np.array([e.bpm for e in estimates], dtype=float)
    errors = np.abs(bpm - centres)
    motion = np.array([motion_bpm, 2 * motion_bpm])
    apart = np.abs(centres[:, None] - motion[None, :]).min(axis=1) > 10.0
    assert np.mean(errors) < 2.5
    # While merged with the artefact the window says nothing there: the tracker coasts (and
    # lags the 1 bpm-per-window ramp by a few bpm) instead of freezing or jumping to it.
    assert errors.max() < 10.0
    assert errors[apart].max() < 4.0  # once apart, on the pulse again
    assert errors[-5:].max() < 2.0  # not frozen at the crossing


# --- garbage, off-wrist ----------------------------------------------------------------------


def garbage_windows() -> list[tuple[str, npt.NDArray[np.float64]]]:
    n = WINDOW_S * BVP_HZ
    rng = np.random.default_rng(3)
    alternating = np.where(np.arange(n) % 2 == 0, -128.0, 127.0)
    spike = np.zeros(n)
    spike[100] = 1000.0
    step = np.where(np.arange(n) < n // 2, 0.0, 500.0)
    clipped = np.clip(rng.normal(0.0, 300.0, n), -127, 127)
    cases = [
        ("zeros", np.zeros(n)),
        ("constant", np.full(n, 1234.0)),
        ("constant negative", np.full(n, -7.0)),
        ("alternating", alternating),
        ("spike", spike),
        ("step", step),
        ("clipped noise", clipped),
        ("huge noise", rng.normal(0.0, 1e12, n)),
        ("tiny noise", rng.normal(0.0, 1e-12, n)),
    ]
    cases += [
        (f"white noise {seed}", np.random.default_rng(seed).normal(0, 50, n)) for seed in range(20)
    ]
    return cases


#: Largest confidence a garbage window may get from scratch. White noise's spectral peak holds
#: a median 21 % (99th percentile 38 %) of the band's power: no more concentrated than that, a
#: window is given no weight, so the confidence stays that of the prior (about 0.22).
GARBAGE_CONFIDENCE = 0.45


@pytest.mark.parametrize(("name", "bvp"), garbage_windows(), ids=[c[0] for c in garbage_windows()])
def test_garbage_gives_no_rate_or_low_confidence(name: str, bvp: npt.NDArray[np.float64]) -> None:
    for acc in (quiet_acc(WINDOW_S * ACC_HZ), np.zeros((WINDOW_S * ACC_HZ, 3)), None):
        est = estimate_hr(bvp, acc)
        assert_sane(est)
        assert est.bpm is None or est.confidence < GARBAGE_CONFIDENCE, name
        # A locked tracker is not dragged off by one garbage window: it holds its rate.
        held = estimate_hr(bvp, acc, state=HrState(bpm=75.0))
        assert_sane(held)
        assert held.bpm is None or held.bpm == pytest.approx(75.0, abs=5.0), name


def test_confidence_decays_over_a_run_of_garbage() -> None:
    seconds = 20
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    locked = estimate_recording(windows_of(pulse(t, 72.0), quiet_acc(seconds * ACC_HZ)))[-1]
    assert locked.confidence > 0.9
    rng = np.random.default_rng(7)
    state = locked.state
    confidences = []
    for i in range(15):
        est = estimate_hr(
            rng.normal(0.0, 50.0, WINDOW_S * BVP_HZ),
            quiet_acc(WINDOW_S * ACC_HZ, seed=i),
            state=state,
        )
        state = est.state
        confidences.append(est.confidence)
        assert est.bpm is not None
        # The held rate may wander, but not confidently.
        assert est.bpm == pytest.approx(72.0, abs=10.0) or est.confidence < 0.5
    assert confidences[0] < locked.confidence
    assert confidences[4] < confidences[0] - 0.2
    assert confidences[-1] < GARBAGE_CONFIDENCE


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_flat_windows_give_none(dtype: type[np.generic]) -> None:
    n = WINDOW_S * BVP_HZ
    for value in (0, 1, -5):
        est = estimate_hr(np.full(n, value, dtype=dtype), np.zeros((n // 2, 3), dtype=dtype))
        assert est.bpm is None
        assert est.confidence == 0.0
        assert est.quality == 0


def test_flat_stretch_inside_a_recording_gives_none_then_the_rate_again() -> None:
    seconds = 60
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    bvp = 200.0 * pulse(t, 90.0) + 1000.0
    off = (t >= 20.0) & (t < 40.0)
    bvp[off] = 1000.0  # off the wrist: the sensor reads a constant
    acc = quiet_acc(seconds * ACC_HZ)
    estimates = estimate_recording(windows_of(bvp, acc))
    starts = np.arange(len(estimates)) * 2.0
    flat = (starts >= 20.0) & (starts + WINDOW_S <= 40.0)
    clean = (starts + WINDOW_S <= 20.0) | (starts >= 40.0)
    for est, is_flat, is_clean in zip(estimates, flat, clean, strict=True):
        assert_sane(est)
        if is_flat:
            assert est.bpm is None
            assert est.confidence == 0.0
        if is_clean and est.state.windows > ACQUIRE_WINDOWS:
            assert est.bpm == pytest.approx(90.0, abs=1.0)
    misses = [e.state.misses for e, is_flat in zip(estimates, flat, strict=True) if is_flat]
    assert misses == sorted(misses)
    assert misses[-1] >= int(flat.sum())
    # The first clean window after the stretch is on the rate at once: the state kept it.
    first_back = int(np.flatnonzero(starts >= 40.0)[0])
    assert estimates[first_back].bpm == pytest.approx(90.0, abs=1.0)
    assert estimates[first_back].state.misses == 0


def test_non_finite_values_give_none_and_count_as_a_miss() -> None:
    t = np.arange(WINDOW_S * BVP_HZ) / BVP_HZ
    bvp = pulse(t, 90.0)
    acc = quiet_acc(WINDOW_S * ACC_HZ)
    locked = estimate_hr(bvp, acc).state
    assert locked.bpm == pytest.approx(90.0, abs=1.0)
    for bad in (np.nan, np.inf, -np.inf):
        broken = bvp.copy()
        broken[10] = bad
        est = estimate_hr(broken, acc, state=locked)
        assert est.bpm is None
        assert est.state.misses == locked.misses + 1
        assert est.state.bpm == locked.bpm  # the tracked rate survives a broken window
    # Broken ACC costs only the motion suppression, not the estimate.
    bad_acc = acc.copy()
    bad_acc[3, 1] = np.nan
    assert estimate_hr(bvp, bad_acc).bpm == pytest.approx(90.0, abs=1.0)


@settings(max_examples=60, deadline=None)
@given(
    bvp=hnp.arrays(np.int16, WINDOW_S * BVP_HZ, elements=st.integers(-32768, 32767)),
    acc=hnp.arrays(np.int8, (WINDOW_S * ACC_HZ, 3), elements=st.integers(-128, 127)),
    prior=st.one_of(st.none(), st.floats(40.0, 220.0)),
    misses=st.integers(0, 15),
)
def test_any_integer_window_is_handled(
    bvp: npt.NDArray[np.int16], acc: npt.NDArray[np.int8], prior: float | None, misses: int
) -> None:
    est = estimate_hr(bvp, acc, state=HrState(bpm=prior, misses=misses))
    assert_sane(est)


# --- tracking: causality, state, recovery ----------------------------------------------------


def test_causal_later_windows_do_not_change_earlier_estimates() -> None:
    bvp, acc, _ = running(40)
    windows = windows_of(bvp, acc)
    first = estimate_recording(windows)
    rng = np.random.default_rng(4)
    k = 7
    altered = windows[: k + 1] + [
        (rng.normal(0, 500, b.shape), rng.normal(0, 50, a.shape)) for b, a in windows[k + 1 :]
    ]
    second = estimate_recording(altered)
    assert second[: k + 1] == first[: k + 1]
    assert second[k + 1 :] != first[k + 1 :]


def test_tracker_recording_and_explicit_state_agree() -> None:
    bvp, acc, _ = running(30)
    windows = windows_of(bvp, acc)
    by_recording = estimate_recording(windows)
    tracker = HrTracker()
    by_tracker = [tracker.update(b, a) for b, a in windows]
    state = None
    by_state = []
    for b, a in windows:
        est = estimate_hr(b, a, state=state)
        by_state.append(est)
        state = est.state
    assert by_recording == by_tracker == by_state
    assert tracker.state == state
    assert state is not None
    assert state.windows == len(windows)
    tracker.reset()
    assert tracker.state == HrState()


def test_state_is_immutable() -> None:
    t = np.arange(WINDOW_S * BVP_HZ) / BVP_HZ
    state = estimate_hr(pulse(t, 70.0), None).state
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.bpm = 80.0  # type: ignore[misc]
    assert isinstance(state.spectrum, tuple)
    assert isinstance(state.belief, tuple)
    assert sum(state.belief) == pytest.approx(1.0)


#: Windows (2 s each) allowed to leave a wrong lock or follow a jump: "a few", not 20 s.
REACQUIRE_WINDOWS = 5


@pytest.mark.parametrize("wrong_bpm", [60.0, 190.0])
def test_recovers_from_a_wrong_lock(wrong_bpm: float) -> None:
    seconds = 40
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    bvp = pulse(t, 125.0) + np.random.default_rng(5).normal(0.0, 0.3, t.shape)
    estimates = estimate_recording(
        windows_of(bvp, quiet_acc(seconds * ACC_HZ)), state=HrState(bpm=wrong_bpm)
    )
    # A hand-made state is believed at first; every window that contradicts it costs it
    # confidence until the pulse wins.
    wrong = [e for e in estimates if e.bpm != pytest.approx(125.0, abs=1.0)]
    assert wrong
    assert all(e.bpm == pytest.approx(wrong_bpm, abs=1.0) for e in wrong)
    assert all(b.confidence < a.confidence for a, b in itertools.pairwise(wrong))
    for est in estimates:
        assert_sane(est)
    recovered = estimates[REACQUIRE_WINDOWS:]
    assert all(e.bpm == pytest.approx(125.0, abs=1.0) for e in recovered)
    assert all(e.confidence > 0.6 for e in recovered[1:])  # sure one window after the switch


def test_reacquires_after_a_real_jump() -> None:
    seconds = 80
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    truth = np.where(t < 40.0, 70.0, 115.0)
    bvp = pulse(t, truth) + np.random.default_rng(8).normal(0.0, 0.3, t.shape)
    estimates = estimate_recording(windows_of(bvp, quiet_acc(seconds * ACC_HZ)))
    starts = np.arange(len(estimates)) * 2.0
    before = [e for e, s in zip(estimates, starts, strict=True) if ACQUIRE_WINDOWS * 2 <= s <= 32.0]
    assert before
    assert all(e.bpm == pytest.approx(70.0, abs=1.0) for e in before)
    first_after = int(np.flatnonzero(starts >= 40.0)[0])  # the first window wholly after it
    after = estimates[first_after + REACQUIRE_WINDOWS :]
    assert after
    assert all(e.bpm == pytest.approx(115.0, abs=1.0) for e in after)
    assert all(e.confidence > 0.6 for e in after)


def test_without_tracking_each_window_stands_alone() -> None:
    bvp, acc, _ = running(30)
    windows = windows_of(bvp, acc)
    cfg = HrConfig(tracking=False)
    together = estimate_recording(windows, config=cfg)
    alone = [estimate_hr(b, a, config=cfg) for b, a in windows]
    assert [e.bpm for e in together] == [e.bpm for e in alone]


def test_pure_no_clock_no_io_no_mutation(monkeypatch: pytest.MonkeyPatch) -> None:
    bvp, acc, _ = running(24)
    windows = windows_of(bvp, acc)
    copies = [(b.copy(), a.copy()) for b, a in windows]
    first = estimate_recording(windows)

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the heart-rate estimator must not read a clock or do I/O")

    for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"):
        monkeypatch.setattr(time, name, forbidden)
    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(builtins, "print", forbidden)
    second = estimate_recording(windows)
    monkeypatch.undo()
    assert second == first  # deterministic: the same windows give the same estimates
    for (b, a), (b0, a0) in zip(windows, copies, strict=True):
        assert np.array_equal(b, b0)
        assert np.array_equal(a, a0)


# --- validation ------------------------------------------------------------------------------


def test_rejects_mismatched_or_malformed_inputs() -> None:
    n = WINDOW_S * BVP_HZ
    with pytest.raises(ValueError, match="same duration"):
        estimate_hr(np.zeros(n), np.zeros((n, 3)))
    with pytest.raises(ValueError, match="acc must have shape"):
        estimate_hr(np.zeros(n), np.zeros((n // 2, 2)))
    with pytest.raises(ValueError, match="bvp must have shape"):
        estimate_hr(np.zeros((n, 2)), None)
    with pytest.raises(TypeError, match="bvp"):
        estimate_hr(np.array(["a"] * n), None)
    with pytest.raises(ValueError, match="bvp_rate_hz"):
        estimate_hr(np.zeros(n), None, bvp_rate_hz=0)
    with pytest.raises(ValueError, match="cannot resolve"):
        estimate_hr(np.zeros(40), None, bvp_rate_hz=5)
    with pytest.raises(ValueError, match="min_bpm"):
        HrConfig(min_bpm=100.0, max_bpm=90.0)
    with pytest.raises(ValueError, match="jump_probability"):
        HrConfig(jump_probability=1.5)
    with pytest.raises(ValueError, match="step_sd_bpm"):
        HrConfig(step_sd_bpm=0.0)
    with pytest.raises(ValueError, match="wiener_memory"):
        HrConfig(wiener_memory=1.0)
    for tolerance in (-1.0, math.nan):
        with pytest.raises(ValueError, match="gait_harmonic_tolerance_bpm"):
            HrConfig(gait_harmonic_tolerance_bpm=tolerance)


def test_other_rates_and_lengths() -> None:
    # TROIKA's native 125 Hz, a 12 s window, ACC at 25 Hz.
    t = np.arange(12 * 125) / 125
    ta = np.arange(12 * 25) / 25
    est = estimate_hr(pulse(t, 97.0), quiet_acc(ta.size), bvp_rate_hz=125, acc_rate_hz=25)
    assert est.bpm == pytest.approx(97.0, abs=1.0)


def test_a_narrow_band_narrower_than_the_jump_kernel() -> None:
    # 60-100 bpm is 43 bins, fewer than the fast-change kernel's taps.
    cfg = HrConfig(min_bpm=60.0, max_bpm=100.0)
    seconds = 20
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    estimates = estimate_recording(
        windows_of(pulse(t, 84.0), quiet_acc(seconds * ACC_HZ)), config=cfg
    )
    assert len(estimates[-1].state.belief) == 43
    assert estimates[-1].bpm == pytest.approx(84.0, abs=1.0)
    assert_sane(estimates[-1], cfg)


# --- real data -------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_troika_mean_mae_below_measured_bound() -> None:
    if not any(TROIKA.glob("DATA_*.mat")):
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    from gatewayd.datasets import load_troika
    from gatewayd.datasets.troika import is_troika_data

    maes: dict[str, float] = {}
    naive: dict[str, float] = {}
    errors_all: list[float] = []
    confidences: list[float] = []
    for path in sorted(p for p in TROIKA.glob("*.mat") if is_troika_data(p)):
        recording = load_troika(path)
        ref = recording.hr_ref_bpm
        if ref is None:
            continue
        bvp, acc = recording.windows()
        for store, cfg in (
            (maes, HrConfig()),
            (naive, HrConfig(motion_suppression=False, tracking=False)),
        ):
            estimates = estimate_recording(zip(bvp, acc, strict=True), config=cfg)
            pairs = [(e, r) for e, r in zip(estimates, ref, strict=False) if not np.isnan(r)]
            assert all(e.bpm is not None for e, _ in pairs)  # real recordings: always a rate
            errors = [abs(float(e.bpm) - r) for e, r in pairs if e.bpm is not None]
            store[path.stem] = float(np.mean(errors))
            if store is maes:
                errors_all += errors
                confidences += [e.confidence for e, _ in pairs]
    assert maes, f"no TROIKA recording with a REF file in {TROIKA}"
    mean = float(np.mean(list(maes.values())))
    # docs/signals.md has the measured figures (about 2.1 bpm with these defaults, 2.25 for the
    # previous tracker); the bounds leave a margin and do not restate them.
    assert mean < 2.5, maes
    assert max(maes.values()) < 5.0, maes
    assert mean < 0.25 * float(np.mean(list(naive.values()))), (maes, naive)
    # The confidence means something: windows the rules trust (>= 0.6) are rarely 10 bpm off,
    # and less often than the others.
    err = np.asarray(errors_all)
    conf = np.asarray(confidences)
    trusted = conf >= 0.6
    assert trusted.mean() > 0.5
    assert (err[trusted] > 10.0).mean() < 0.02
    assert (err[trusted] > 10.0).mean() < (err[~trusted] > 10.0).mean()


@pytest.mark.needs_data
def test_a_jog_at_110_bpm_is_not_read_confidently_on_its_gaits_third_harmonic() -> None:
    # wrist-ppg-exercise s3_run: steps at 122/min, the ECG 99-116 bpm. Without the gait's third
    # harmonic the tracker sat on 183 bpm at up to 0.74 confidence (a false tachycardia).
    path = REPO.parent / "shared" / "data" / "wrist-ppg-exercise" / "s3_run.edf"
    if not path.exists():
        pytest.skip(f"wrist-ppg-exercise s3_run not found at {path}")
    pytest.importorskip("edfio", reason="reading EDF needs the datasets extra")
    from gatewayd.datasets import load_wrist_ppg

    recording = load_wrist_ppg(path)
    bvp, acc = recording.windows()
    ref = recording.hr_ref_bpm
    assert ref is not None
    for tolerance, trusted_wrong in ((0.0, True), (HrConfig().gait_harmonic_tolerance_bpm, False)):
        cfg = HrConfig(gait_harmonic_tolerance_bpm=tolerance)
        estimates = estimate_recording(zip(bvp, acc, strict=True), config=cfg)
        wrong = [
            e.confidence >= 0.6
            for e, r in zip(estimates, ref, strict=False)
            if not np.isnan(r) and e.bpm is not None and abs(e.bpm - r) > 10.0
        ]
        assert any(wrong) is trusted_wrong, tolerance


def test_an_already_band_passed_bvp_gives_the_same_estimate() -> None:
    from gatewayd.signals.filters import bandpass

    rng = np.random.default_rng(5)
    n = WINDOW_S * BVP_HZ
    t = np.arange(n * 3) / BVP_HZ
    bvp = 300.0 * pulse(t, 95.0) + rng.normal(0.0, 30.0, t.shape)
    acc = rng.normal(0.0, 8.0, (t.shape[0] // 2, 3)) + np.array([0.0, 0.0, 64.0])
    plain = HrState()
    shared = HrState()
    for k in range(3):
        b = bvp[k * n : (k + 1) * n]
        a = acc[k * n // 2 : (k + 1) * n // 2]
        one = estimate_hr(b, a, state=plain)
        two = estimate_hr(b, a, state=shared, bandpassed_bvp=bandpass(b, BVP_HZ))
        assert one == two  # bpm, confidence, quality, motion and the whole state
        plain, shared = one.state, two.state
    # A band-passed BVP is what the estimator uses: something else changes the answer.
    noise = bandpass(rng.normal(0.0, 300.0, n), BVP_HZ)
    other = estimate_hr(b, a, state=HrState(), bandpassed_bvp=noise)
    assert other.state.spectrum != estimate_hr(b, a, state=HrState()).state.spectrum
    with pytest.raises(ValueError, match="bandpassed_bvp must have the BVP's shape"):
        estimate_hr(b, a, bandpassed_bvp=np.zeros(n - 1))
