"""Heart rate by signal processing: known synthetic rates, garbage, causality and TROIKA."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

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


@pytest.mark.parametrize("bpm", [45.0, 62.5, 78.0, 101.3, 134.0, 171.7, 205.0])
def test_sinusoid_with_harmonics_within_one_bpm(bpm: float) -> None:
    rng = np.random.default_rng(int(bpm * 10))
    t = np.arange(WINDOW_S * BVP_HZ) / BVP_HZ
    bvp = 300.0 * pulse(t, bpm) + rng.normal(0.0, 30.0, t.shape) + 2000.0  # offset: raw units
    est = estimate_hr(bvp, quiet_acc(WINDOW_S * ACC_HZ))
    assert est.bpm == pytest.approx(bpm, abs=1.0)
    assert est.confidence > 0.6
    assert_sane(est)


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
        assert est.motion > HrConfig().motion_full  # the motion was strong enough to count
        assert_sane(est)


def test_motion_suppression_alone_finds_the_pulse_without_a_prior() -> None:
    bvp, acc, truth = running(16)
    est = estimate_hr(bvp[: WINDOW_S * BVP_HZ], acc[: WINDOW_S * ACC_HZ])
    assert est.bpm == pytest.approx(truth[: WINDOW_S * BVP_HZ].mean(), abs=3.0)


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


@pytest.mark.parametrize(("name", "bvp"), garbage_windows(), ids=[c[0] for c in garbage_windows()])
def test_garbage_gives_no_rate_or_low_confidence(name: str, bvp: npt.NDArray[np.float64]) -> None:
    for acc in (quiet_acc(WINDOW_S * ACC_HZ), np.zeros((WINDOW_S * ACC_HZ, 3)), None):
        for state in (None, HrState(bpm=75.0)):
            est = estimate_hr(bvp, acc, state=state)
            assert_sane(est)
            assert est.bpm is None or est.confidence < 0.4, name


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_flat_windows_give_none(dtype: type[np.generic]) -> None:
    n = WINDOW_S * BVP_HZ
    for value in (0, 1, -5):
        est = estimate_hr(np.full(n, value, dtype=dtype), np.zeros((n // 2, 3), dtype=dtype))
        assert est.bpm is None
        assert est.confidence == 0.0
        assert est.quality == 0


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


def test_recovers_from_a_wrong_state() -> None:
    seconds = 60
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    bvp = pulse(t, 125.0) + np.random.default_rng(5).normal(0.0, 0.3, t.shape)
    cfg = HrConfig()
    estimates = estimate_recording(
        windows_of(bvp, quiet_acc(seconds * ACC_HZ)), state=HrState(bpm=60.0)
    )
    # Held (low confidence) while the search widens, then re-acquired from the whole band.
    assert all(e.confidence < 0.2 for e in estimates[: cfg.lost_after])
    recovered = estimates[cfg.lost_after + 1 :]
    assert recovered
    assert all(e.bpm == pytest.approx(125.0, abs=1.0) for e in recovered)
    assert all(e.confidence > 0.6 for e in recovered)


def test_bounded_change_per_step_while_tracking() -> None:
    seconds = 30
    t = np.arange(seconds * BVP_HZ) / BVP_HZ
    bvp = pulse(t, 100.0)
    cfg = HrConfig()
    estimates = estimate_recording(
        windows_of(bvp, quiet_acc(seconds * ACC_HZ)), state=HrState(bpm=88.0)
    )
    steps = np.diff([88.0, *[e.bpm for e in estimates[:3] if e.bpm is not None]])
    assert np.all(np.abs(steps) <= cfg.max_step_bpm + 1e-9)
    assert estimates[-1].bpm == pytest.approx(100.0, abs=1.0)


def test_without_tracking_each_window_stands_alone() -> None:
    bvp, acc, _ = running(30)
    windows = windows_of(bvp, acc)
    cfg = HrConfig(tracking=False)
    together = estimate_recording(windows, config=cfg)
    alone = [estimate_hr(b, a, config=cfg) for b, a in windows]
    assert [e.bpm for e in together] == [e.bpm for e in alone]


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


def test_other_rates_and_lengths() -> None:
    # TROIKA's native 125 Hz, a 12 s window, ACC at 25 Hz.
    t = np.arange(12 * 125) / 125
    ta = np.arange(12 * 25) / 25
    est = estimate_hr(pulse(t, 97.0), quiet_acc(ta.size), bvp_rate_hz=125, acc_rate_hz=25)
    assert est.bpm == pytest.approx(97.0, abs=1.0)


# --- real data -------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_troika_mean_mae_below_measured_bound() -> None:
    if not any(TROIKA.glob("DATA_*.mat")):
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    from gatewayd.datasets import load_troika
    from gatewayd.datasets.troika import is_troika_data

    maes = {}
    naive = {}
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
            errors = [
                abs(e.bpm - r)
                for e, r in zip(estimates, ref, strict=False)
                if e.bpm is not None and not np.isnan(r)
            ]
            assert len(errors) >= 0.95 * len(estimates)
            store[path.stem] = float(np.mean(errors))
    assert maes, f"no TROIKA recording with a REF file in {TROIKA}"
    mean = float(np.mean(list(maes.values())))
    # Measured 2.25 bpm on the five recordings (docs/signals.md); the bound leaves a margin.
    assert mean < 3.5, maes
    assert max(maes.values()) < 6.0, maes
    assert mean < 0.25 * float(np.mean(list(naive.values()))), (maes, naive)
