"""Synthetic wearable sessions in the exact PPG-DaLiA pickle layout, with planted events.

A new user runs everything (emulator, training, evaluation) on these without downloading
anything. They are deterministic for a given (seed, subject id) and marked synthetic: the pickle
carries an extra top-level key ``gatewayd_synthetic`` that real PPG-DaLiA files do not have, and
the reader turns it into ``Recording.source == "synthetic"``.

What is modelled (docs/datasets.md has the details):

- a schedule of PPG-DaLiA activities with transient gaps; each activity has its own heart-rate
  target and the heart rate follows it with a first-order lag (faster up than down), plus slow
  fluctuations and respiratory sinus arrhythmia;
- the pulse: a phase integrated from the instantaneous heart rate drives a systolic wave, a
  dicrotic notch and a diastolic wave whose delays are in seconds (so in a faster heart they take
  a larger part of the beat); respiration modulates its amplitude and wanders its baseline;
- the wrist accelerometer (1/64 g, E4 range +-2 g, integers): gravity in an activity-specific
  orientation plus activity-specific motion (step cadence and arm swing when walking or on
  stairs, pedalling and road vibration when cycling, near-stillness when sitting or driving);
- motion artefacts in the PPG proportional to the accelerometer's motion, and sensor noise;
- the chest signals at 700 Hz (ECG from the same beat phase, with R-peaks), EDA, temperatures.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage, signal

from gatewayd.datasets.dalia import SYNTHETIC_KEY, recording_from_tree
from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, Recording
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, STEP_S, WINDOW_S, window_count

__all__ = [
    "CHEST_RATE_HZ",
    "GENERATOR_VERSION",
    "Event",
    "EventKind",
    "generate_recording",
    "generate_subject",
    "parse_event",
    "write_subject",
    "write_synthetic_dataset",
]

#: RespiBAN chest signals' rate in PPG-DaLiA.
CHEST_RATE_HZ: Final = 700
#: Wrist EDA and TEMP rate in PPG-DaLiA (Empatica E4).
WRIST_SLOW_RATE_HZ: Final = 4
#: Bumped whenever the same seed starts producing different data.
GENERATOR_VERSION: Final = 1
#: Pickle protocol of written files (Python 3.4+; real PPG-DaLiA files are Python 2 pickles).
PICKLE_PROTOCOL: Final = 4

EventKind = Literal["tachycardia", "fall", "off_wrist"]

# Activity ids (PPG-DaLiA).
_TRANSIENT, _SITTING, _STAIRS, _SOCCER, _CYCLING, _DRIVING, _LUNCH, _WALKING, _WORKING = range(9)
_ACTIVITIES: Final = (_SITTING, _STAIRS, _SOCCER, _CYCLING, _DRIVING, _LUNCH, _WALKING, _WORKING)
# E4 accelerometer: 1/64 g per count, 8-bit signed range.
_ACC_COUNTS_PER_G: Final = 64
_ACC_MIN, _ACC_MAX = -128, 127
_PTT_S: Final = 0.22  # pulse transit time, chest R-peak to wrist pulse foot
_CHUNK: Final = 1 << 20
_FALL_STILL_S: Final = 60.0
#: Peak acceleration of a planted fall's impact, g (wrist impacts of falls: roughly 3-10 g).
_IMPACT_G: Final = 8.0
_EVENT_RAMP_S: Final = 10.0


@dataclass(frozen=True)
class Event:
    """A planted scenario: tachycardia at rest, a fall, or the wearable taken off the wrist."""

    kind: EventKind
    start_s: float
    duration_s: float
    bpm: float | None = None

    @property
    def end_s(self) -> float:
        """Return when the event ends (for a fall: the end of the stillness after it)."""
        return self.start_s + self.duration_s

    def as_dict(self) -> dict[str, Any]:
        """Return the event as a JSON-like dict (stored in the pickle and the metadata)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "start_s": self.start_s,
            "duration_s": self.duration_s,
        }
        if self.bpm is not None:
            out["bpm"] = self.bpm
        return out


def parse_event(spec: Event | Sequence[Any]) -> Event:
    """Turn ``("tachycardia", start_s, dur_s, bpm)``, ``("fall", t_s[, still_s])`` or
    ``("off_wrist", start_s, dur_s)`` into an `Event`."""
    if isinstance(spec, Event):
        event = spec
    else:
        kind, *args = spec
        nums = [float(a) for a in args]
        if kind == "tachycardia" and len(nums) == 3:
            event = Event("tachycardia", nums[0], nums[1], nums[2])
        elif kind == "fall" and len(nums) in (1, 2):
            event = Event("fall", nums[0], nums[1] if len(nums) == 2 else _FALL_STILL_S)
        elif kind == "off_wrist" and len(nums) == 2:
            event = Event("off_wrist", nums[0], nums[1])
        else:
            raise ValueError(
                f"bad event {tuple(spec)!r}: use ('tachycardia', start_s, dur_s, bpm), "
                "('fall', t_s[, still_s]) or ('off_wrist', start_s, dur_s)"
            )
    if not (math.isfinite(event.start_s) and event.start_s >= 0 and event.duration_s > 0):
        raise ValueError(f"event {event} needs start_s >= 0 and duration_s > 0")
    if event.bpm is not None and not 30 <= event.bpm <= 240:
        raise ValueError(f"event {event}: bpm must be within 30-240")
    return event


# --- timelines ---------------------------------------------------------------------------------


def _schedule(
    rng: np.random.Generator, total_s: float, activities: Sequence[tuple[int, float]] | None
) -> list[tuple[int, float, float]]:
    """Return (activity, start_s, duration_s) entries covering ``[0, total_s)``."""
    entries: list[tuple[int, float]] = []
    if activities is not None:
        for act, dur in activities:
            if not 0 <= int(act) < 9 or dur <= 0:
                raise ValueError(f"bad schedule entry ({act}, {dur}): activity 0-8, duration > 0")
            entries.append((int(act), float(dur)))
    else:
        # Start sitting, so every session has clean resting windows; then DaLiA-like activities
        # of one to five minutes separated by short transients (walking between places).
        entries.append((_SITTING, min(max(60.0, 0.3 * total_s), 600.0)))
        previous = _SITTING
        while sum(d for _, d in entries) < total_s:
            entries.append((_TRANSIENT, float(rng.uniform(8.0, 30.0))))
            choices = [a for a in _ACTIVITIES if a != previous]
            previous = int(rng.choice(choices))
            entries.append((previous, float(rng.uniform(60.0, 300.0))))
    out: list[tuple[int, float, float]] = []
    start = 0.0
    for act, dur in entries:
        if start >= total_s:
            break
        out.append((act, start, min(dur, total_s - start)))
        start += dur
    if start < total_s:  # a given schedule shorter than the session: hold the last activity
        act, s0, dur = out[-1]
        out[-1] = (act, s0, total_s - s0)
    return out


def _hr_target(rng: np.random.Generator, act: int, rest: float, previous: float) -> float:
    ranges = {
        _SITTING: (rest, rest + 4),
        _DRIVING: (rest + 3, rest + 10),
        _WORKING: (rest + 2, rest + 8),
        _LUNCH: (rest + 8, rest + 15),
        _SOCCER: (90, 105),
        _WALKING: (90, 110),
        _STAIRS: (110, 140),
        _CYCLING: (100, 130),
        _TRANSIENT: (max(previous - 5, rest + 8), max(previous, rest + 20)),
    }
    low, high = ranges[act]
    return float(rng.uniform(low, high))


def _lag(target: npt.NDArray[np.float64], rate_hz: float) -> npt.NDArray[np.float64]:
    """First-order lag, 20 s time constant up and 35 s down (recovery is slower)."""
    up = 1.0 - math.exp(-1.0 / (20.0 * rate_hz))
    down = 1.0 - math.exp(-1.0 / (35.0 * rate_hz))
    out = np.empty_like(target)
    y = float(target[0])
    for i, x in enumerate(target.tolist()):
        y += (x - y) * (up if x > y else down)
        out[i] = y
    return out


def _ramp(t: npt.NDArray[np.float64], start: float, end: float) -> npt.NDArray[np.float64]:
    """0 outside ``[start, end]``, 1 inside, raised-cosine edges of `_EVENT_RAMP_S`."""
    edge = min(_EVENT_RAMP_S, (end - start) / 2)
    rise = np.clip((t - start) / edge, 0.0, 1.0)
    fall = np.clip((end - t) / edge, 0.0, 1.0)
    return np.asarray(0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall)), dtype=np.float64)


def _smooth_noise(
    rng: np.random.Generator, n: int, rate_hz: float, cutoff_hz: float
) -> npt.NDArray[np.float64]:
    """Unit-variance Gaussian noise low-passed below ``cutoff_hz``."""
    sos = signal.butter(2, cutoff_hz, fs=rate_hz, output="sos")
    x = np.asarray(signal.sosfiltfilt(sos, rng.standard_normal(n + 64)), dtype=np.float64)[32:-32]
    std = float(x.std())
    return x / std if std > 0 else x


def _wrap(d: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Wrap a phase difference (cycles) into [-0.5, 0.5)."""
    return np.asarray((d + 0.5) % 1.0 - 0.5, dtype=np.float64)


def _agauss(
    d: npt.NDArray[np.float64], left: float | npt.NDArray[np.float64], right: Any
) -> npt.NDArray[np.float64]:
    sigma = np.where(d < 0, left, right)
    return np.asarray(np.exp(-0.5 * (d / sigma) ** 2), dtype=np.float64)


def _pulse(phase: npt.NDArray[np.float64], hr: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """PPG pulse at beat phase ``phase`` (cycles since the pulse foot) for heart rate ``hr``.

    Delays and widths are in seconds, converted to phase with the instantaneous rate, so the
    systolic peak, the dicrotic notch and the diastolic wave follow the heart rate like a real
    pulse does (left-ventricular ejection shortens less than the beat).
    """
    beats_per_s = hr / 60.0
    frac = phase % 1.0
    t_sys = 0.13 * beats_per_s
    t_notch = (0.30 - 0.0012 * (hr - 60.0)) * beats_per_s
    t_dia = t_notch + 0.06 * beats_per_s
    systolic = _agauss(_wrap(frac - t_sys), 0.05 * beats_per_s, 0.10 * beats_per_s)
    diastolic = 0.35 * _agauss(_wrap(frac - t_dia), 0.05 * beats_per_s, 0.11 * beats_per_s)
    notch = 0.12 * np.exp(-0.5 * (_wrap(frac - t_notch) / (0.02 * beats_per_s)) ** 2)
    return systolic + diastolic - notch


# --- accelerometer -----------------------------------------------------------------------------


def _gravity_for(rng: np.random.Generator, act: int) -> npt.NDArray[np.float64]:
    means = {
        _SITTING: (0.1, -0.3, 0.95),  # forearm on a table or a lap
        _WORKING: (0.0, -0.2, 0.98),
        _LUNCH: (0.2, -0.4, 0.9),
        _DRIVING: (0.5, -0.2, 0.8),  # hand on the wheel
        _CYCLING: (0.3, 0.1, 0.9),  # hand on the handlebar
        _SOCCER: (0.2, 0.0, 0.95),
        _WALKING: (-0.95, 0.2, 0.2),  # arm hanging
        _STAIRS: (-0.9, 0.3, 0.25),
        _TRANSIENT: (-0.8, 0.2, 0.5),
    }
    g = np.asarray(means[act], dtype=np.float64) + rng.normal(0.0, 0.1, 3)
    return np.asarray(g / np.linalg.norm(g), dtype=np.float64)


def _cadence_phase(
    rng: np.random.Generator, n: int, rate_hz: float, freq_hz: float
) -> npt.NDArray[np.float64]:
    """Phase (radians) of a cadence that wanders by a few percent."""
    freq = freq_hz * (1.0 + 0.03 * _smooth_noise(rng, n, rate_hz, 0.05))
    return np.asarray(2 * np.pi * np.cumsum(freq) / rate_hz, dtype=np.float64)


def _motion(rng: np.random.Generator, act: int, n: int, rate_hz: float) -> npt.NDArray[np.float64]:
    """Activity-specific wrist motion without gravity, in g, shape (n, 3)."""
    t = np.arange(n) / rate_hz
    out = np.zeros((n, 3))
    tremor = 0.004 * np.column_stack([_smooth_noise(rng, n, rate_hz, 3.0) for _ in range(3)])
    if act in (_WALKING, _STAIRS, _TRANSIENT):
        cadence = {_WALKING: (1.7, 2.0), _STAIRS: (1.4, 1.7), _TRANSIENT: (1.5, 1.8)}[act]
        scale = {_WALKING: 1.0, _STAIRS: 1.2, _TRANSIENT: 0.6}[act]
        step = _cadence_phase(rng, n, rate_hz, float(rng.uniform(*cadence)))
        swing = step / 2  # the arm swings once per stride (two steps)
        out[:, 0] = 0.12 * np.sin(step) + 0.06 * np.sin(2 * step + 0.4)
        out[:, 1] = 0.30 * np.sin(swing) + 0.05 * np.sin(step + 1.0)
        out[:, 2] = 0.20 * np.sin(swing + 0.8) + 0.10 * np.sin(step + 0.3)
        if act == _STAIRS:
            out[:, 0] += 0.10 * np.sin(step + 2.0)
        out *= scale
    elif act == _CYCLING:
        pedal = _cadence_phase(rng, n, rate_hz, float(rng.uniform(1.0, 1.5)))
        out[:, 0] = 0.05 * np.sin(pedal)
        out[:, 1] = 0.08 * np.sin(pedal + 0.5)
        road = np.column_stack([_smooth_noise(rng, n, rate_hz, 8.0) for _ in range(3)])
        out += 0.04 * road
    elif act == _SOCCER:
        bursts = (_smooth_noise(rng, n, rate_hz, 0.3) > 0.3).astype(np.float64)
        bursts = ndimage.uniform_filter1d(bursts, int(rate_hz // 2))
        twist = _cadence_phase(rng, n, rate_hz, float(rng.uniform(2.5, 4.0)))
        hits = np.column_stack([_smooth_noise(rng, n, rate_hz, 6.0) for _ in range(3)])
        out[:, 1] = 0.4 * np.sin(twist)
        out += 0.25 * hits
        out *= bursts[:, None]
    elif act == _LUNCH:
        # Hand to mouth every 15-30 s: a 2 s excursion.
        period = float(rng.uniform(15.0, 30.0))
        bump = np.exp(-0.5 * ((t % period - 1.0) / 0.5) ** 2)
        out[:, 0] = -0.5 * bump
        out[:, 2] = -0.3 * bump
        out += 0.01 * np.column_stack([_smooth_noise(rng, n, rate_hz, 4.0) for _ in range(3)])
    elif act == _DRIVING:
        out += 0.02 * np.column_stack([_smooth_noise(rng, n, rate_hz, 10.0) for _ in range(3)])
        out[:, 0] += 0.08 * _smooth_noise(rng, n, rate_hz, 0.1)
    elif act == _WORKING:
        out += 0.02 * np.column_stack([_smooth_noise(rng, n, rate_hz, 6.0) for _ in range(3)])
        moves = (_smooth_noise(rng, n, rate_hz, 0.05) > 1.5).astype(np.float64)
        out[:, 2] += 0.1 * ndimage.uniform_filter1d(moves, int(rate_hz))
    return out + tremor


# --- the generator -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Timeline:
    total_s: float
    activity4: npt.NDArray[np.int8]
    hr4: npt.NDArray[np.float64]
    resp4: npt.NDArray[np.float64]  # breaths per second
    schedule: list[tuple[int, float, float]]


def _timeline(
    rng: np.random.Generator,
    total_s: float,
    activities: Sequence[tuple[int, float]] | None,
    events: Sequence[Event],
) -> _Timeline:
    rate = ACTIVITY_RATE_HZ
    n = round(total_s * rate)
    t = np.arange(n) / rate
    schedule = _schedule(rng, total_s, activities)
    rest = float(rng.uniform(60.0, 72.0))
    activity = np.zeros(n, dtype=np.int8)
    target = np.zeros(n)
    previous = rest
    for act, start, dur in schedule:
        sl = slice(round(start * rate), round((start + dur) * rate))
        activity[sl] = act
        previous = _hr_target(rng, act, rest, previous)
        target[sl] = previous
    for event in events:
        sl = slice(round(event.start_s * rate), round((event.start_s + event.duration_s) * rate))
        if event.kind == "tachycardia":
            activity[sl] = _SITTING
        elif event.kind == "fall":
            activity[slice(max(0, round((event.start_s - 1.0) * rate)), sl.stop)] = _TRANSIENT
    hr = _lag(target, rate)
    # Slow fluctuations (a few bpm) and a 0.1 Hz (Mayer wave) component.
    hr += 1.5 * _smooth_noise(rng, n, rate, 0.02)
    hr += 0.8 * np.sin(2 * np.pi * 0.1 * t + rng.uniform(0, 2 * np.pi))
    resp = np.clip(0.25 + 0.004 * (hr - rest) + 0.02 * _smooth_noise(rng, n, rate, 0.02), 0.15, 0.6)
    # Respiratory sinus arrhythmia: strong at rest, fading as the heart speeds up.
    resp_phase = 2 * np.pi * np.cumsum(resp) / rate
    hr += np.clip(1.0 - (hr - rest) / 40.0, 0.2, 1.0) * 1.5 * np.sin(resp_phase)
    for event in events:
        if event.kind == "tachycardia" and event.bpm is not None:
            w = _ramp(t, event.start_s, event.start_s + event.duration_s)
            hr = hr * (1 - w) + event.bpm * w
    return _Timeline(total_s, activity, np.clip(hr, 35.0, 220.0), resp, schedule)


@dataclass(frozen=True)
class _Beats:
    """Heartbeat phase (counts beats, 0 at the first sample) and rate on a 64 Hz grid."""

    t: npt.NDArray[np.float64]  # from -1 s to total + 1 s
    phase: npt.NDArray[np.float64]
    hr: npt.NDArray[np.float64]

    def phase_at(self, t: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        return np.asarray(np.interp(t, self.t, self.phase), dtype=np.float64)

    def hr_at(self, t: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        return np.asarray(np.interp(t, self.t, self.hr), dtype=np.float64)


def _beats(tl: _Timeline, rate_hz: int) -> _Beats:
    t4 = np.arange(tl.hr4.shape[0]) / ACTIVITY_RATE_HZ
    t = np.arange(-rate_hz, round((tl.total_s + 1.0) * rate_hz)) / rate_hz
    hr = np.interp(t, t4, tl.hr4)
    # Integrating the instantaneous rate gives the phase: beat k happens where it crosses k.
    phase = np.cumsum(hr / 60.0) / rate_hz
    return _Beats(t, phase - float(np.interp(0.0, t, phase)), hr)


def _samples(seconds: float, rate_hz: int, n: int) -> int:
    return min(n, max(0, round(seconds * rate_hz)))


def _wrist_motion(
    rng: np.random.Generator, tl: _Timeline, events: Sequence[Event]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Return gravity (n, 3) and motion (n, 3) in g at 32 Hz, and where the wrist is still."""
    n = round(tl.total_s * ACC_RATE_HZ)
    t4_index = np.minimum(np.arange(n) * ACTIVITY_RATE_HZ // ACC_RATE_HZ, tl.activity4.shape[0] - 1)
    act32 = tl.activity4[t4_index]
    gravity = np.zeros((n, 3))
    for act, start, dur in tl.schedule:
        gravity[_samples(start, ACC_RATE_HZ, n) : _samples(start + dur, ACC_RATE_HZ, n)] = (
            _gravity_for(rng, act)
        )
    motion = np.zeros((n, 3))
    for act in np.unique(act32).tolist():
        # Half-second cross-fades between activities.
        mask = ndimage.uniform_filter1d((act32 == act).astype(np.float64), ACC_RATE_HZ // 2)
        motion += mask[:, None] * _motion(rng, int(act), n, ACC_RATE_HZ)
    still = np.zeros(n, dtype=bool)
    for event in events:
        a = _samples(event.start_s, ACC_RATE_HZ, n)
        b = _samples(event.end_s, ACC_RATE_HZ, n)
        if event.kind == "tachycardia":
            gravity[a:b] = _gravity_for(rng, _SITTING)
            motion[a:b] = _motion(rng, _SITTING, b - a, ACC_RATE_HZ)
        elif event.kind == "off_wrist":
            gravity[a:b] = (0.0, 0.0, 1.0)  # lying on a table, face up
            motion[a:b] = 0.0
            still[a:b] = True
    gravity = ndimage.uniform_filter1d(gravity, ACC_RATE_HZ, axis=0)
    for event in events:
        if event.kind == "fall":
            _plant_fall(rng, event, gravity, motion, still)
    return gravity, motion, still


def _plant_fall(
    rng: np.random.Generator,
    event: Event,
    gravity: npt.NDArray[np.float64],
    motion: npt.NDArray[np.float64],
    still: npt.NDArray[np.bool_],
) -> None:
    """About 0.5 s of free fall, an impact of several g, then lying still.

    The impact (8 g, decaying in a few tens of ms) comes in on all three axes at once, as a
    body hitting the floor does; stored at the E4's 1/64 g in 8 bits, every axis saturates at
    about 2 g, so the recorded peak |a| is 3.2-3.5 g whatever the direction: above a 3 g fall
    threshold, as a real E4 records a hard fall.
    """
    n = gravity.shape[0]
    a = _samples(event.start_s, ACC_RATE_HZ, n)
    b = _samples(event.end_s, ACC_RATE_HZ, n)
    free = max(0, a - ACC_RATE_HZ // 2)
    lying = np.array([0.1, 0.95, -0.3])
    gravity[free:a] *= 0.1
    gravity[a:b] = lying / np.linalg.norm(lying)
    motion[free:b] = 0.0
    tau = np.arange(min(b - a, ACC_RATE_HZ // 2)) / ACC_RATE_HZ
    direction = rng.choice([-1.0, 1.0], 3) * rng.uniform(0.7, 1.0, 3)
    impact = _IMPACT_G * np.exp(-tau / 0.06) * np.cos(2 * np.pi * 6.0 * tau)
    motion[a : a + tau.shape[0]] = impact[:, None] * (direction / np.linalg.norm(direction))
    still[a + tau.shape[0] : b] = True


def _wrist_bvp(
    rng: np.random.Generator,
    tl: _Timeline,
    beats: _Beats,
    motion: npt.NDArray[np.float64],
    events: Sequence[Event],
) -> npt.NDArray[np.float64]:
    """BVP at 64 Hz: pulse, respiration, motion artefacts and noise."""
    n = round(tl.total_s * BVP_RATE_HZ)
    t = np.arange(n) / BVP_RATE_HZ
    # The wrist pulse lags the chest R-peak by the pulse transit time.
    ppg_phase = beats.phase_at(t - _PTT_S)
    resp_phase = 2 * np.pi * np.cumsum(tl.resp4) / ACTIVITY_RATE_HZ
    resp = np.interp(t, np.arange(tl.resp4.shape[0]) / ACTIVITY_RATE_HZ, resp_phase)
    amplitude = float(rng.uniform(30.0, 60.0)) * (1.0 + 0.15 * np.sin(resp))
    amplitude *= 1.0 + 0.1 * _smooth_noise(rng, n, BVP_RATE_HZ, 0.01)
    pulse = amplitude * _pulse(ppg_phase, beats.hr_at(t))
    wander = amplitude * (
        0.25 * np.sin(resp + rng.uniform(0, 2 * np.pi))
        + 0.3 * _smooth_noise(rng, n, BVP_RATE_HZ, 0.03)
    )
    t32 = np.arange(motion.shape[0]) / ACC_RATE_HZ
    dyn = np.column_stack([np.interp(t, t32, motion[:, k]) for k in range(3)])
    gain = float(rng.uniform(3.0, 6.0)) * _ACC_COUNTS_PER_G
    weights = rng.normal(0.0, 1.0, 3)
    artefact = gain * (dyn @ (weights / np.linalg.norm(weights)))
    artefact += 0.5 * gain * np.sum(dyn**2, axis=1)  # the sensor presses harder: harmonics
    bvp = pulse + wander + artefact + rng.normal(0.0, 0.8, n)
    bvp -= float(np.mean(pulse + wander))
    for event in events:
        if event.kind == "off_wrist":
            a = _samples(event.start_s, BVP_RATE_HZ, n)
            b = _samples(event.end_s, BVP_RATE_HZ, n)
            bvp[a:b] = rng.normal(0.0, 0.5, b - a)  # ambient light only
    return np.round(bvp, 2)


def _labels(beats: _Beats, total_s: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The ECG heart rate per 8 s window (2 s shift) and the R-peak sample indices at 700 Hz."""
    windows = window_count(round(total_s * BVP_RATE_HZ), BVP_RATE_HZ)
    starts = np.arange(windows) * STEP_S
    # Beats per minute in the window: what an R-peak-based reference measures.
    label = (beats.phase_at(starts + WINDOW_S) - beats.phase_at(starts)) * (60.0 / WINDOW_S)
    first = math.ceil(float(np.interp(0.0, beats.t, beats.phase)))
    last = math.floor(float(np.interp(total_s, beats.t, beats.phase)))
    beat_times = np.interp(np.arange(first, last + 1), beats.phase, beats.t)
    n700 = round(total_s * CHEST_RATE_HZ)
    rpeaks = np.clip(np.round(beat_times * CHEST_RATE_HZ), 0, n700 - 1).astype(np.int64)
    return label, rpeaks


def generate_subject(
    subject_id: int,
    minutes: float,
    seed: int,
    *,
    events: Sequence[Event | Sequence[Any]] = (),
    activities: Sequence[tuple[int, float]] | None = None,
) -> dict[str, Any]:
    """Generate one subject in the PPG-DaLiA pickle layout (see the module docstring).

    ``events`` plants scenarios (see `parse_event`); ``activities`` fixes the schedule as
    ``(activity_id, seconds)`` pairs instead of drawing it from the seed.
    """
    if subject_id < 0 or seed < 0:
        raise ValueError("subject_id and seed must be >= 0")
    total_s = round(minutes * 60.0 * ACTIVITY_RATE_HZ) / ACTIVITY_RATE_HZ
    if total_s < WINDOW_S:
        raise ValueError(f"minutes={minutes!r} is shorter than one {WINDOW_S:g} s window")
    parsed = [parse_event(e) for e in events]
    for event in parsed:
        if event.start_s >= total_s:
            raise ValueError(f"event {event} starts after the session ends ({total_s:g} s)")
    rng = np.random.default_rng([seed, subject_id, GENERATOR_VERSION])
    tl = _timeline(rng, total_s, activities, parsed)
    beats = _beats(tl, BVP_RATE_HZ)

    gravity, motion, still = _wrist_motion(rng, tl, parsed)
    noise = rng.normal(0.0, 0.4, motion.shape)
    noise[still] *= 0.5
    acc = np.clip(np.round((gravity + motion) * _ACC_COUNTS_PER_G + noise), _ACC_MIN, _ACC_MAX)
    bvp = _wrist_bvp(rng, tl, beats, motion, parsed)
    label, rpeaks = _labels(beats, total_s)
    n4 = tl.activity4.shape[0]
    eda = np.clip(
        float(rng.uniform(0.3, 3.0)) * (1 + 0.3 * _smooth_noise(rng, n4, WRIST_SLOW_RATE_HZ, 0.005))
        + 0.2 * np.maximum(_smooth_noise(rng, n4, WRIST_SLOW_RATE_HZ, 0.2), 0.0),
        0.01,
        None,
    )
    temp = float(rng.uniform(31.5, 34.0)) + 0.4 * _smooth_noise(rng, n4, WRIST_SLOW_RATE_HZ, 0.002)
    chest = _chest(rng, tl=tl, beats=beats, motion=motion, eda=eda, temp=temp)

    return {
        "rpeaks": rpeaks,
        "signal": {
            "chest": chest,
            "wrist": {
                "ACC": acc,
                "BVP": bvp.reshape(-1, 1),
                "EDA": eda.reshape(-1, 1),
                "TEMP": np.round(temp, 2).reshape(-1, 1),
            },
        },
        "label": label,
        "activity": tl.activity4.astype(np.float64).reshape(-1, 1),
        "questionnaire": {
            "WEIGHT": round(float(rng.uniform(55.0, 95.0)), 1),
            "Gender": " m" if rng.random() < 0.5 else " f",
            "AGE": int(rng.integers(20, 60)),
            "HEIGHT": round(float(rng.uniform(155.0, 195.0)), 1),
            "SKIN": int(rng.integers(1, 7)),
            "SPORT": int(rng.integers(1, 7)),
        },
        "subject": f"S{subject_id}",
        SYNTHETIC_KEY: {
            "generator": "gatewayd.datasets.synthetic",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "subject_id": subject_id,
            "minutes": minutes,
            "events": [e.as_dict() for e in parsed],
            "schedule": [[act, start, dur] for act, start, dur in tl.schedule],
            "note": "synthetic data from a model, not a measurement",
        },
    }


def _chest(
    rng: np.random.Generator,
    *,
    tl: _Timeline,
    beats: _Beats,
    motion: npt.NDArray[np.float64],
    eda: npt.NDArray[np.float64],
    temp: npt.NDArray[np.float64],
) -> dict[str, npt.NDArray[np.float64]]:
    """RespiBAN signals at 700 Hz, computed in chunks to bound memory on long sessions."""
    n = round(tl.total_s * CHEST_RATE_HZ)
    out = {
        "ACC": np.empty((n, 3)),
        "ECG": np.empty((n, 1)),
        "EMG": np.empty((n, 1)),
        "EDA": np.empty((n, 1)),
        "Temp": np.empty((n, 1)),
        "Resp": np.empty((n, 1)),
    }
    t4 = np.arange(tl.activity4.shape[0]) / ACTIVITY_RATE_HZ
    t32 = np.arange(motion.shape[0]) / ACC_RATE_HZ
    resp_phase = 2 * np.pi * np.cumsum(tl.resp4) / ACTIVITY_RATE_HZ
    upright = np.array([0.95, 0.05, -0.3])
    chest_temp = float(rng.uniform(33.5, 35.0))
    ecg_gain = float(rng.uniform(0.8, 1.5))
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        t = np.arange(a, b) / CHEST_RATE_HZ
        rr = 60.0 / beats.hr_at(t)
        d = _wrap(beats.phase_at(t)) * rr  # seconds from the nearest R-peak
        ecg = (
            0.12 * np.exp(-0.5 * ((d + 0.16) / 0.025) ** 2)
            - 0.10 * np.exp(-0.5 * ((d + 0.03) / 0.01) ** 2)
            + 1.20 * np.exp(-0.5 * (d / 0.012) ** 2)
            - 0.25 * np.exp(-0.5 * ((d - 0.03) / 0.012) ** 2)
            + 0.30 * np.exp(-0.5 * ((d - 0.25 * np.sqrt(rr)) / 0.05) ** 2)
        )
        resp = np.sin(np.interp(t, t4, resp_phase))
        out["ECG"][a:b, 0] = ecg_gain * ecg + 0.05 * resp + rng.normal(0.0, 0.01, b - a)
        out["Resp"][a:b, 0] = 2.0 * resp + rng.normal(0.0, 0.02, b - a)
        trunk = np.column_stack([np.interp(t, t32, motion[:, k]) for k in range(3)])
        out["ACC"][a:b] = upright + 0.3 * trunk + rng.normal(0.0, 0.005, (b - a, 3))
        out["EMG"][a:b, 0] = rng.normal(0.0, 0.003, b - a) * (1 + 5 * np.abs(trunk[:, 0]))
        out["EDA"][a:b, 0] = 1.5 * np.interp(t, t4, eda)
        out["Temp"][a:b, 0] = chest_temp + 0.5 * (np.interp(t, t4, temp) - temp.mean())
    return out


def generate_recording(
    subject_id: int,
    minutes: float,
    seed: int,
    *,
    events: Sequence[Event | Sequence[Any]] = (),
    activities: Sequence[tuple[int, float]] | None = None,
) -> Recording:
    """Generate one subject straight into a `Recording` (no file; source "synthetic")."""
    tree = generate_subject(subject_id, minutes, seed, events=events, activities=activities)
    return recording_from_tree(tree, name=tree["subject"])


def _write_atomic(path: Path, tree: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            pickle.dump(tree, out, protocol=PICKLE_PROTOCOL)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_subject(
    path: str | os.PathLike[str],
    subject_id: int,
    minutes: float,
    seed: int,
    *,
    events: Sequence[Event | Sequence[Any]] = (),
    activities: Sequence[tuple[int, float]] | None = None,
) -> Path:
    """Generate one subject and write it as a PPG-DaLiA ``SX.pkl`` at ``path``."""
    out = Path(path)
    tree = generate_subject(subject_id, minutes, seed, events=events, activities=activities)
    _write_atomic(out, tree)
    return out


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str], subjects: int, minutes: float, seed: int
) -> list[Path]:
    """Write ``S1/S1.pkl`` ... ``SN/SN.pkl`` (the PPG_FieldStudy layout); return the paths."""
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    root = Path(out_dir)
    return [
        write_subject(root / f"S{i}" / f"S{i}.pkl", i, minutes, seed)
        for i in range(1, subjects + 1)
    ]
