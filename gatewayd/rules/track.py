"""The state machine every threshold rule shares: minimum duration, hysteresis, cooldown.

A rule turns each input into a `Level`: RAISE (beyond the threshold), HOLD (inside the
hysteresis band), CLEAR (back beyond threshold minus band) or UNKNOWN (no trustworthy value).
`step` then decides:

- not raised: RAISE extends the current run (or starts one if the previous RAISE is more than
  ``max_gap_s`` old); when the run spans ``min_duration_s`` and the cooldown since the last clear
  has passed, the alert is raised. HOLD and CLEAR end the run; UNKNOWN neither extends nor ends it
  (durations only count between trustworthy values).
- raised: CLEAR clears it; RAISE and HOLD keep it; UNKNOWN keeps it (see `clear_if_stale`).

Every time here is monotonic (the inputs' ``mono``) except ``raised_at``, the wall-clock label
of the raise that a clear repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

from gatewayd.rules.alerts import EvidenceSample

__all__ = ["Level", "Outcome", "TrackState", "clear", "clear_if_stale", "in_cooldown", "step"]

Outcome = Literal["raised", "cleared"] | None


class Level(Enum):
    """How one input stands against a rule's thresholds."""

    RAISE = "raise"
    HOLD = "hold"
    CLEAR = "clear"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TrackState:
    """One rule's state for one device."""

    active: bool = False
    episode: int = 0
    run_start: float | None = None
    run_last: float | None = None
    #: Wall-clock label of the raise (a clear carries it); not used for timing.
    raised_at: float | None = None
    cleared_at: float | None = None
    #: The latest input with a known level while raised (for staleness).
    last_known_t: float | None = None
    #: Evidence of the current run (or of the raise, while raised); first sample kept.
    samples: tuple[EvidenceSample, ...] = ()


def in_cooldown(state: TrackState, t: float, cooldown_s: float) -> bool:
    """True while a re-raise is held back after the last clear."""
    return state.cleared_at is not None and t - state.cleared_at < cooldown_s


def bounded(
    samples: tuple[EvidenceSample, ...], sample: EvidenceSample, limit: int
) -> tuple[EvidenceSample, ...]:
    """Append, keeping the first sample and the most recent ones, at most ``limit`` in all."""
    if samples and samples[-1].seq == sample.seq and samples[-1].t == sample.t:
        return samples
    if len(samples) < limit:
        return (*samples, sample)
    return (samples[0], *samples[len(samples) - limit + 2 :], sample)


def step(
    state: TrackState,
    level: Level,
    t: float,
    sample: EvidenceSample | None,
    *,
    wall: float,
    min_duration_s: float,
    cooldown_s: float,
    max_gap_s: float,
    max_evidence: int,
) -> tuple[TrackState, Outcome]:
    """Advance one rule by one input at monotonic ``t`` (``wall`` labels a raise)."""
    if level is Level.UNKNOWN:
        return state, None
    if state.active:
        if level is Level.CLEAR:
            return clear(state, t), "cleared"
        return replace(state, last_known_t=t), None
    if level is not Level.RAISE:
        return reset_run(state), None
    fresh = state.run_start is None or state.run_last is None or t - state.run_last > max_gap_s
    run_start = t if fresh else state.run_start
    assert run_start is not None
    samples: tuple[EvidenceSample, ...] = () if fresh else state.samples
    if sample is not None:
        samples = bounded(samples, sample, max_evidence)
    state = replace(state, run_start=run_start, run_last=t, samples=samples)
    if t - run_start >= min_duration_s and not in_cooldown(state, t, cooldown_s):
        return raise_(state, t, wall), "raised"
    return state, None


def raise_(state: TrackState, t: float, wall: float) -> TrackState:
    """The raised state at monotonic ``t``, labelled ``wall``, keeping the run's evidence."""
    return replace(state, active=True, episode=state.episode + 1, raised_at=wall, last_known_t=t)


def clear(state: TrackState, t: float) -> TrackState:
    """The cleared state; the cooldown starts at ``t``."""
    return TrackState(episode=state.episode, cleared_at=t)


def reset_run(state: TrackState) -> TrackState:
    """Forget a pending (not raised) run, e.g. when its data became untrustworthy."""
    if state.active or state.run_start is None:
        return state
    return replace(state, run_start=None, run_last=None, samples=())


def clear_if_stale(state: TrackState, t: float, stale_s: float) -> tuple[TrackState, Outcome]:
    """Clear a raised alert whose last trustworthy input is more than ``stale_s`` old."""
    if state.active and state.last_known_t is not None and t - state.last_known_t > stale_s:
        return clear(state, t), "cleared"
    return state, None
