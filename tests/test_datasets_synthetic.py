"""gatewayd.datasets.synthetic: layout, determinism, physiology that holds up, planted events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import signal

from gatewayd.datasets import DALIA_ACTIVITY_NAMES, Recording, load_dalia
from gatewayd.datasets.synthetic import (
    CHEST_RATE_HZ,
    Event,
    _pulse,
    generate_recording,
    generate_subject,
    parse_event,
    write_subject,
)

SITTING, STAIRS, CYCLING, DRIVING, WALKING = 1, 2, 4, 5, 7
SCHEDULE = [(SITTING, 150), (0, 10), (WALKING, 90), (STAIRS, 70), (CYCLING, 90), (DRIVING, 60)]
SCHEDULE_S = sum(s for _, s in SCHEDULE)
EVENTS = [("tachycardia", 120.0, 120.0, 150.0), ("fall", 330.0, 60.0), ("off_wrist", 480.0, 60.0)]


@pytest.fixture(scope="module")
def tree() -> dict[str, Any]:
    return generate_subject(3, SCHEDULE_S / 60, seed=5, activities=SCHEDULE)


@pytest.fixture(scope="module")
def rec() -> Recording:
    return generate_recording(3, SCHEDULE_S / 60, seed=5, activities=SCHEDULE)


@pytest.fixture(scope="module")
def eventful() -> Recording:
    return generate_recording(4, 10.0, seed=9, events=EVENTS, activities=[(SITTING, 600)])


def windows_of(rec: Recording, activity: int, settle_s: float = 0.0) -> list[int]:
    """Windows entirely inside one activity, ``settle_s`` after it began."""
    assert rec.labels is not None
    out = []
    for i in range(rec.window_count()):
        start = i * 8
        span = rec.labels[start : start + 32]
        before = rec.labels[max(0, start - int(settle_s * 4)) : start]
        if np.all(span == activity) and np.all(before == activity) and start >= settle_s * 4:
            out.append(i)
    return out


def spectral_hr(bvp: npt.NDArray[np.float32]) -> float:
    """The simplest estimator: the band-passed spectrum's peak between 40 and 210 bpm."""
    sos = signal.butter(4, [0.5, 4.0], btype="bandpass", fs=64, output="sos")
    x = signal.sosfiltfilt(sos, bvp.astype(np.float64)) * np.hanning(bvp.shape[0])
    freqs = np.fft.rfftfreq(8192, 1 / 64)
    power = np.abs(np.fft.rfft(x, 8192))
    band = (freqs > 40 / 60) & (freqs < 210 / 60)
    return float(freqs[band][np.argmax(power[band])] * 60)


def in_seconds(rec: Recording, start_s: float, end_s: float) -> tuple[Any, Any]:
    return (
        rec.bvp[int(start_s * 64) : int(end_s * 64)],
        rec.acc[int(start_s * 32) : int(end_s * 32)],
    )


# --- layout ------------------------------------------------------------------------------------


def test_layout_is_ppg_dalia(tree: dict[str, Any]) -> None:
    seconds = SCHEDULE_S
    wrist, chest = tree["signal"]["wrist"], tree["signal"]["chest"]
    assert set(tree) == {
        "rpeaks",
        "signal",
        "label",
        "activity",
        "questionnaire",
        "subject",
        "gatewayd_synthetic",
    }
    assert wrist["BVP"].shape == (seconds * 64, 1)
    assert wrist["ACC"].shape == (seconds * 32, 3)
    assert wrist["EDA"].shape == wrist["TEMP"].shape == (seconds * 4, 1)
    assert set(chest) == {"ACC", "ECG", "EMG", "EDA", "Temp", "Resp"}
    assert chest["ACC"].shape == (seconds * CHEST_RATE_HZ, 3)
    assert all(chest[k].shape == (seconds * CHEST_RATE_HZ, 1) for k in chest if k != "ACC")
    assert tree["activity"].shape == (seconds * 4, 1)
    assert tree["label"].shape == ((seconds - 8) // 2 + 1,)
    assert tree["subject"] == "S3"
    assert set(tree["questionnaire"]) == {"WEIGHT", "Gender", "AGE", "HEIGHT", "SKIN", "SPORT"}
    # E4 accelerometer: whole counts of 1/64 g within the sensor's 8-bit range.
    acc = wrist["ACC"]
    assert np.array_equal(acc, np.round(acc))
    assert acc.min() >= -128
    assert acc.max() <= 127
    assert tree["gatewayd_synthetic"]["note"].startswith("synthetic")


def test_rpeaks_sit_on_the_ecg_r_waves(tree: dict[str, Any]) -> None:
    rpeaks = tree["rpeaks"]
    ecg = tree["signal"]["chest"]["ECG"][:, 0]
    assert np.all(np.diff(rpeaks) > 0)
    rr = np.diff(rpeaks) / CHEST_RATE_HZ
    assert 60 / rr.max() > 45
    assert 60 / rr.min() < 160
    # The R wave is the largest deflection: every R-peak is a local maximum well above the rest.
    assert np.median(ecg[rpeaks]) > 5 * np.median(np.abs(ecg))
    # The beat count matches the labels: mean label x duration / 60 ~ number of beats.
    assert len(rpeaks) == pytest.approx(np.mean(tree["label"]) * SCHEDULE_S / 60, rel=0.03)


def test_generation_is_deterministic(tree: dict[str, Any]) -> None:
    again = generate_subject(3, SCHEDULE_S / 60, seed=5, activities=SCHEDULE)

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, np.ndarray):
            return bool(np.array_equal(a, b))
        return bool(a == b)

    assert same(tree, again)
    other_seed = generate_subject(3, SCHEDULE_S / 60, seed=6, activities=SCHEDULE)
    other_subject = generate_subject(4, SCHEDULE_S / 60, seed=5, activities=SCHEDULE)
    for other in (other_seed, other_subject):
        bvp = other["signal"]["wrist"]["BVP"]
        assert not np.array_equal(bvp, tree["signal"]["wrist"]["BVP"])


def test_default_schedule_starts_sitting_and_varies() -> None:
    data = generate_subject(1, 12.0, seed=2)
    schedule = data["gatewayd_synthetic"]["schedule"]
    assert schedule[0][0] == SITTING
    assert sum(d for _, _, d in schedule) == pytest.approx(12 * 60)
    assert len({a for a, _, _ in schedule}) >= 4


# --- physiology --------------------------------------------------------------------------------


def test_hr_is_recoverable_from_clean_sitting_windows(rec: Recording) -> None:
    sitting = windows_of(rec, SITTING)
    assert len(sitting) >= 50
    errors = []
    for i in sitting:
        truth = rec.hr_for_window(i)
        assert truth is not None
        errors.append(spectral_hr(rec.window(i)[0]) - truth)
    err = np.abs(np.array(errors))
    assert np.median(err) < 1.5
    assert np.mean(err < 3.0) >= 0.9


@pytest.mark.parametrize(
    ("activity", "low", "high"),
    [(SITTING, 55, 82), (WALKING, 85, 118), (STAIRS, 100, 148), (CYCLING, 95, 140)],
)
def test_each_activity_has_its_own_heart_rate(
    rec: Recording, activity: int, low: float, high: float
) -> None:
    settled = windows_of(rec, activity, settle_s=50.0)
    assert settled
    hr = [rec.hr_for_window(i) for i in settled]
    assert all(h is not None and low <= h <= high for h in hr), hr


def test_hr_changes_smoothly(rec: Recording) -> None:
    assert rec.hr_ref_bpm is not None
    assert np.max(np.abs(np.diff(rec.hr_ref_bpm))) < 6.0  # bpm per 2 s step


def test_accelerometer_follows_the_activity(rec: Recording) -> None:
    _, acc = rec.windows()

    def stats(activity: int) -> tuple[float, float, float]:
        a = acc[windows_of(rec, activity)].astype(np.float64)
        dyn = a - a.mean(axis=1, keepdims=True)
        freqs = np.fft.rfftfreq(a.shape[1], 1 / 32)
        power = (np.abs(np.fft.rfft(dyn, axis=1)) ** 2).sum(axis=(0, 2))
        band = (freqs > 0.3) & (freqs < 6)
        gravity = float(np.linalg.norm(a.mean(axis=1), axis=1).mean())
        return float(dyn.std(axis=1).mean()), float(freqs[band][np.argmax(power[band])]), gravity

    sit_std, _, sit_g = stats(SITTING)
    walk_std, walk_peak, walk_g = stats(WALKING)
    _, cycle_peak, _ = stats(CYCLING)
    assert sit_std < 1.5  # near-still
    assert walk_std > 6 * sit_std
    assert 0.7 <= walk_peak <= 2.2  # arm swing / steps
    assert 0.9 <= cycle_peak <= 1.6  # pedalling
    assert sit_g == pytest.approx(64, abs=4)  # gravity, 1 g = 64 counts
    assert walk_g == pytest.approx(64, abs=6)


def test_motion_artefacts_follow_the_accelerometer(rec: Recording) -> None:
    bvp, acc = rec.windows()
    ids = windows_of(rec, SITTING) + windows_of(rec, WALKING) + windows_of(rec, STAIRS)
    bvp_std = bvp[ids].std(axis=1)
    acc_std = acc[ids].std(axis=1).mean(axis=1)
    assert np.corrcoef(bvp_std, acc_std)[0, 1] > 0.6
    walking = bvp[windows_of(rec, WALKING)].std(axis=1).mean()
    sitting = bvp[windows_of(rec, SITTING)].std(axis=1).mean()
    assert walking > 1.5 * sitting


def test_pulse_has_a_dicrotic_notch_that_follows_the_heart_rate() -> None:
    phase = np.linspace(0, 1, 1000, endpoint=False)

    def notch(hr: float) -> float:
        y = _pulse(phase, np.full_like(phase, hr))
        peak = int(np.argmax(y))
        d = np.diff(y[peak:])
        # The first local minimum after the systolic peak, followed by a rise: the notch.
        rising = np.nonzero((d[:-1] < 0) & (d[1:] >= 0))[0]
        assert rising.size, f"no dicrotic notch at {hr} bpm"
        return float(phase[peak + rising[0] + 1])

    notches = [notch(hr) for hr in (60.0, 90.0, 120.0)]
    # Fixed-ish times in seconds take a growing fraction of a faster beat.
    assert notches[0] < notches[1] < notches[2]
    assert notches[0] == pytest.approx(0.30 * 60 / 60, abs=0.03)


# --- planted events ----------------------------------------------------------------------------


def test_tachycardia_at_rest(eventful: Recording) -> None:
    assert eventful.labels is not None
    # Settled part of the event: HR near 150 while the activity says sitting and the wrist is still.
    for i in range(int(150 / 2), int(230 / 2) - 4):
        assert eventful.label_for_window(i) == DALIA_ACTIVITY_NAMES[SITTING]
        hr = eventful.hr_for_window(i)
        assert hr is not None
        assert hr > 140
    before = eventful.hr_for_window(20)
    assert before is not None
    assert before < 85
    _, acc = in_seconds(eventful, 150, 230)
    assert float(acc.std(axis=0).max()) < 2.0
    # And it is visible in the PPG: the spectral HR of a clean window inside the event.
    assert spectral_hr(eventful.window(90)[0]) == pytest.approx(150, abs=5)


def test_fall_is_an_impact_then_stillness(eventful: Recording) -> None:
    t = 330.0
    _, around = in_seconds(eventful, t - 2, t + 2)
    magnitude = np.linalg.norm(around.astype(np.float64), axis=1)
    assert magnitude.max() > 2.5 * 64  # several g, saturating the E4's +-2 g axes
    _, free_fall = in_seconds(eventful, t - 0.4, t)
    assert np.linalg.norm(free_fall.astype(np.float64), axis=1).max() < 0.3 * 64
    _, after = in_seconds(eventful, t + 2, t + 60)
    assert float(after.std(axis=0).max()) < 1.0  # lying still
    _, before = in_seconds(eventful, t - 30, t - 5)
    g_before = before.mean(axis=0) / np.linalg.norm(before.mean(axis=0))
    g_after = after.mean(axis=0) / np.linalg.norm(after.mean(axis=0))
    assert np.degrees(np.arccos(np.clip(g_before @ g_after, -1, 1))) > 45  # new orientation
    assert eventful.label_for_window(int(t / 2) + 5) == "transient"  # not "sitting" any more


def test_off_wrist_is_a_flat_ppg_on_a_still_device(eventful: Recording) -> None:
    bvp, acc = in_seconds(eventful, 482, 538)
    worn, _ = in_seconds(eventful, 430, 470)
    assert float(bvp.std()) < 1.0
    assert float(worn.std()) > 10.0
    assert float(acc.std(axis=0).max()) < 1.0
    np.testing.assert_allclose(acc.mean(axis=0), [0, 0, 64], atol=2)
    # The person's heart keeps beating: the reference is still there.
    assert eventful.hr_for_window(255) is not None


def test_events_and_the_synthetic_mark_survive_the_pickle(tmp_path: Path) -> None:
    path = write_subject(tmp_path / "S8.pkl", 8, 4.0, seed=1, events=EVENTS[:1])
    rec = load_dalia(path, use_cache=False)
    assert rec.source == "synthetic"
    assert rec.hr_ref_kind == "synthetic-truth"
    meta = rec.metadata["synthetic"]
    assert meta["events"] == [
        {"kind": "tachycardia", "start_s": 120.0, "duration_s": 120.0, "bpm": 150.0}
    ]
    assert meta["seed"] == 1
    assert "ground truth" in rec.metadata["hr_ref"]


# --- input validation --------------------------------------------------------------------------


def test_parse_event() -> None:
    assert parse_event(("fall", 10)) == Event("fall", 10.0, 60.0)
    assert parse_event(("fall", 10, 5)).end_s == 15.0
    assert parse_event(("off_wrist", 1, 2)) == Event("off_wrist", 1.0, 2.0)
    assert parse_event(Event("tachycardia", 0, 1, 120)).bpm == 120
    for bad in [
        ("tachycardia", 1, 2),
        ("sneeze", 1),
        ("fall",),
        ("off_wrist", -1, 2),
        ("off_wrist", 1, 0),
        ("tachycardia", 1, 2, 400),
    ]:
        with pytest.raises(ValueError, match="event"):
            parse_event(bad)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="shorter than one"):
        generate_subject(1, 0.1, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        generate_subject(1, 1, seed=-1)
    with pytest.raises(ValueError, match="starts after the session ends"):
        generate_subject(1, 1, seed=0, events=[("fall", 61)])
    with pytest.raises(ValueError, match="bad schedule entry"):
        generate_subject(1, 1, seed=0, activities=[(12, 60)])
