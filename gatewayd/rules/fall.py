"""Fall detection: an impact above ``impact_g``, then ``min_duration_s`` of stillness.

The accelerometer of each window is cut into blocks of ``block_s``; windows overlap (8 s every
2 s), so only samples newer than those already seen are used. A block is *still* when the
spread of the acceleration (the root of the summed per-axis variances, which also sees
rotation, unlike the spread of |a|) is at most ``still_max_std_g`` (and it holds no impact),
and *moving* when it is at least ``moving_min_std_g``; in between is neither (the band).

idle --impact--> impact --(settle_s ignored, then min_duration_s of still blocks)--> raised
impact --any non-still block, or a gap in ACC coverage > max_gap_s--> idle
raised --moving block--> idle (cleared, reason "movement")
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from gatewayd.activity import group_name
from gatewayd.rules.alerts import EvidenceSample
from gatewayd.rules.config import FallConfig
from gatewayd.rules.inputs import Observation
from gatewayd.rules.track import Outcome, TrackState, bounded, clear, in_cooldown, raise_

__all__ = ["AccBlock", "FallEvent", "FallState", "acc_blocks", "acc_end", "step_fall"]

Phase = Literal["idle", "impact", "raised"]


@dataclass(frozen=True, slots=True)
class AccBlock:
    """A stretch of accelerometer signal reduced to what the fall rule needs."""

    t_start: float
    t_end: float
    peak_g: float | None
    peak_t: float
    std_g: float | None
    #: Set when the block comes from a precomputed ``acc_still`` summary instead of samples.
    still_flag: bool | None = None


@dataclass(frozen=True, slots=True)
class FallState:
    """The fall rule's state for one device."""

    track: TrackState = field(default_factory=TrackState)
    phase: Phase = "idle"
    #: End of the newest accelerometer sample already used.
    covered_until: float | None = None
    impact_t: float | None = None
    impact_g: float | None = None
    still_from: float | None = None
    still_max_std_g: float = 0.0


def acc_end(obs: Observation) -> float:
    """When the observation's last accelerometer sample was taken (``acc_end``, else ``t``)."""
    return obs.t if obs.acc_end is None else obs.acc_end


def acc_blocks(obs: Observation, after: float | None, block_s: float) -> list[AccBlock]:
    """The new part of an observation's accelerometer data, as blocks, oldest first."""
    if obs.acc is not None and obs.acc.ndim == 2 and obs.acc.shape[0] and obs.acc_rate_hz > 0:
        return _sample_blocks(obs, after, block_s)
    if obs.acc_peak_g is None and obs.acc_still is None:
        return []
    end = acc_end(obs)
    start = end - obs.window_s
    if after is not None:
        start = max(start, after)
    if start >= end:
        return []
    return [AccBlock(start, end, obs.acc_peak_g, end, None, obs.acc_still)]


def _sample_blocks(obs: Observation, after: float | None, block_s: float) -> list[AccBlock]:
    assert obs.acc is not None
    rate = obs.acc_rate_hz
    acc = obs.acc.astype(np.float64)
    magnitude = np.sqrt(np.sum(np.square(acc), axis=1))
    n = magnitude.shape[0]
    times = acc_end(obs) - (n - 1 - np.arange(n)) / rate
    # Half a sample period of slack absorbs float noise in overlapping windows' timestamps.
    first = 0 if after is None else int(np.searchsorted(times, after + 0.5 / rate, side="left"))
    size = max(1, round(rate * block_s))
    starts = list(range(first, n, size))
    if len(starts) > 1 and n - starts[-1] < size / 2:
        starts.pop()  # a short tail joins the block before it
    blocks = []
    for i, begin in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        chunk = magnitude[begin:end]
        top = int(np.argmax(chunk))
        blocks.append(
            AccBlock(
                t_start=float(times[begin]) - 1 / rate,
                t_end=float(times[end - 1]),
                peak_g=float(chunk[top]),
                peak_t=float(times[begin + top]),
                std_g=float(np.sqrt(np.sum(np.var(acc[begin:end], axis=0)))),
            )
        )
    return blocks


def _is_impact(block: AccBlock, config: FallConfig) -> bool:
    return block.peak_g is not None and block.peak_g > config.impact_g


def _is_still(block: AccBlock, config: FallConfig) -> bool:
    if _is_impact(block, config):
        return False
    if block.std_g is None:
        return block.still_flag is True
    return block.std_g <= config.still_max_std_g


def _is_moving(block: AccBlock, config: FallConfig) -> bool:
    if _is_impact(block, config):
        return True
    if block.std_g is None:
        return block.still_flag is False
    return block.std_g >= config.moving_min_std_g


@dataclass(frozen=True, slots=True)
class FallEvent:
    """A raise or clear of the fall alert, with the state just before the clear (or at raise)."""

    outcome: Literal["raised", "cleared"]
    t: float
    before: FallState


def step_fall(
    state: FallState, obs: Observation, config: FallConfig, max_evidence: int
) -> tuple[FallState, list[FallEvent]]:
    """Feed one window's accelerometer data to the fall rule (off-wrist windows are skipped)."""
    if obs.off_wrist:
        # A device lying on a table is still, and one dropped on it sees an impact: neither is
        # a fall. The ACC is marked seen so it is not used later.
        return _forget_pending(replace(state, covered_until=acc_end(obs))), []
    blocks = acc_blocks(obs, state.covered_until, config.block_s)
    events: list[FallEvent] = []
    sample_of = _Sampler(obs)
    for block in blocks:
        before = state
        state, outcome = _step_block(state, block, config, sample_of, max_evidence)
        if outcome == "raised":
            events.append(FallEvent("raised", block.t_end, state))
        elif outcome == "cleared":
            events.append(FallEvent("cleared", block.t_end, before))
    return state, events


@dataclass(frozen=True, slots=True)
class _Sampler:
    obs: Observation

    def __call__(self, t: float, value: float) -> EvidenceSample:
        return EvidenceSample(
            seq=self.obs.seq,
            t=t,
            value=round(value, 4),
            window_id=self.obs.window_id,
            model_id=self.obs.model_id,
            activity=group_name(self.obs.activity),
        )


def _forget_pending(state: FallState) -> FallState:
    if state.phase != "impact":
        return state
    return replace(state, phase="idle", impact_t=None, impact_g=None, still_from=None,
                   track=replace(state.track, samples=()))  # fmt: skip


def _step_block(
    state: FallState,
    block: AccBlock,
    config: FallConfig,
    sample_of: _Sampler,
    max_evidence: int,
) -> tuple[FallState, Outcome]:
    previous_end = state.covered_until
    state = replace(state, covered_until=block.t_end)
    if state.phase == "raised":
        if _is_moving(block, config):
            idle = FallState(track=clear(state.track, block.t_end), covered_until=block.t_end)
            return idle, "cleared"
        return state, None
    gap = block.t_start - previous_end if previous_end is not None else 0.0
    if state.phase == "impact" and gap > config.max_gap_s:
        state = _forget_pending(state)  # no evidence of what happened in between
    if _is_impact(block, config):
        assert block.peak_g is not None
        sample = sample_of(block.peak_t, block.peak_g)
        samples = state.track.samples if state.phase == "impact" else ()
        track = replace(state.track, samples=bounded(samples, sample, max_evidence))
        return replace(
            state,
            track=track,
            phase="impact",
            impact_t=block.peak_t,
            impact_g=block.peak_g,
            still_from=None,
            still_max_std_g=0.0,
        ), None
    if state.phase != "impact":
        return state, None
    return _after_impact(state, block, config, sample_of, max_evidence)


def _after_impact(
    state: FallState,
    block: AccBlock,
    config: FallConfig,
    sample_of: _Sampler,
    max_evidence: int,
) -> tuple[FallState, Outcome]:
    assert state.impact_t is not None
    if block.t_start < state.impact_t + config.settle_s:
        return state, None  # the body is still settling (bounces, rolling)
    if not _is_still(block, config):
        return _forget_pending(state), None  # impact without stillness: not a fall
    still_from = block.t_start if state.still_from is None else state.still_from
    std = block.std_g if block.std_g is not None else 0.0
    sample = sample_of(block.t_end, std)
    state = replace(
        state,
        still_from=still_from,
        still_max_std_g=max(state.still_max_std_g, std),
        track=replace(state.track, samples=bounded(state.track.samples, sample, max_evidence)),
    )
    if block.t_end - still_from >= config.min_duration_s and not in_cooldown(
        state.track, block.t_end, config.cooldown_s
    ):
        return replace(state, phase="raised", track=raise_(state.track, block.t_end)), "raised"
    return state, None
