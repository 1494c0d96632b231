"""Fall detection: an impact above ``impact_g``, then ``min_duration_s`` of stillness.

The accelerometer of each window is cut into blocks of ``block_s``; windows overlap (8 s every
2 s), so only samples newer than those already seen are used. A block is *still* when the
spread of the acceleration (the root of the summed per-axis variances, which also sees
rotation, unlike the spread of |a|) is at most ``still_max_std_g`` (and it holds no impact),
and *moving* when it is at least ``moving_min_std_g``; in between is neither (the band).

idle --impact--> impact --(settle_s ignored, then min_duration_s of still blocks)--> raised
impact --any non-still block, or a gap in ACC coverage > max_gap_s--> idle
raised --moving block--> idle (cleared, reason "movement")

The rule runs on the samples' clock (``acc_end``: the wearable's, once synced, else the
gateway's wall clock at arrival), so that windows arriving in a burst still cover the seconds
they measured. That clock can jump (the gateway's wall clock stepped by NTP, or the wearable
re-synced to it at a reconnect); `bridge_clock` detects a jump against the monotonic clock and
moves the rule's state onto the new clock, so a jump neither fakes seconds of stillness nor
hides the samples that follow it:

- backwards: a newer message (``seq`` ahead) whose samples end before the previous message's
  did. No continuous clock does that (messages arrive in ``seq`` order).
- forwards: the next message (``seq`` exactly one ahead: nothing lost in between) whose samples'
  clock advanced more than ``window_s`` beyond the monotonic clock's advance. A burst of late
  windows advances the samples' clock at most one message interval (less than a window, since
  windows overlap) beyond the monotonic clock per message, so it is not taken for a jump.
  A smaller forward jump goes unnoticed: it can stretch a stillness by less than a window, as
  before. A forward step across lost messages is a hole in the data, not bridged.

The jump is taken to be the samples' advance minus the monotonic advance; the state's
sample-clock times (coverage, impact, stillness) move by it. A backward jump smaller than the
time since the device's previous message is not seen (the samples' clock still moved forward).
The cooldown runs on the monotonic clock, as every rule's does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from gatewayd.activity import group_name
from gatewayd.rules.alerts import EvidenceSample
from gatewayd.rules.config import FallConfig
from gatewayd.rules.inputs import Observation
from gatewayd.rules.track import Outcome, TrackState, bounded, clear, in_cooldown, raise_

__all__ = [
    "AccBlock",
    "FallEvent",
    "FallState",
    "acc_blocks",
    "acc_end",
    "bridge_clock",
    "step_fall",
]

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
    #: The previous observation's ``acc_end``, monotonic time and ``seq`` (`bridge_clock`).
    last_acc_end: float | None = None
    last_mono: float | None = None
    last_seq: int | None = None


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
    acc = np.asarray(obs.acc, dtype=np.float64)  # no copy when it already is
    n = acc.shape[0]
    times = acc_end(obs) - _ages(n, rate)
    # Half a sample period of slack absorbs float noise in overlapping windows' timestamps.
    first = 0 if after is None else int(np.searchsorted(times, after + 0.5 / rate, side="left"))
    if first >= n:
        return []
    size = max(1, round(rate * block_s))
    count = -(-(n - first) // size)  # blocks starting at first, first + size, ... before n
    if count > 1 and n - (first + (count - 1) * size) < size / 2:
        count -= 1  # a short tail joins the block before it
    # Blocks of ``size`` samples, then (unless it has ``size`` too) the last one, up to n.
    whole = count if n - (first + (count - 1) * size) == size else count - 1
    cut = first + whole * size
    parts = (acc[first:cut].reshape(whole, size, acc.shape[1]), acc[None, cut:n])
    stats = [s for part in parts if len(part) and part.shape[1] for s in block_stats(part)]
    period = 1 / rate
    blocks = []
    for i, (top, peak, std) in enumerate(stats):
        begin = first + i * size
        end = n if i == count - 1 else begin + size
        blocks.append(
            AccBlock(
                t_start=float(times[begin]) - period,
                t_end=float(times[end - 1]),
                peak_g=peak,
                peak_t=float(times[begin + top]),
                std_g=std,
            )
        )
    return blocks


@functools.lru_cache(maxsize=16)
def _ages(n: int, rate: float) -> npt.NDArray[np.float64]:
    """How long before the last of ``n`` samples at ``rate`` each was taken, s (read-only; the
    same few shapes come in every window)."""
    ages = (n - 1 - np.arange(n)) / rate
    ages.flags.writeable = False
    return ages


def block_stats(blocks: npt.NDArray[np.float64]) -> list[tuple[int, float, float]]:
    """For each of ``blocks`` (shape: blocks, samples, axes): where in it |a| peaks, the peak,
    and the spread (the root of the summed per-axis variances, computed as `np.var` does, so
    to the last bit as one block at a time would be)."""
    add = np.add.reduce  # np.sum without its wrapper
    magnitude = np.sqrt(add(np.square(blocks), axis=2))
    top = magnitude.argmax(axis=1).tolist()
    peak = [row[i] for row, i in zip(magnitude.tolist(), top, strict=True)]
    samples = blocks.shape[1]
    deviation = blocks - add(blocks, axis=1, keepdims=True) / samples
    np.multiply(deviation, deviation, out=deviation)
    std = np.sqrt(add(add(deviation, axis=1) / samples, axis=1)).tolist()
    return list(zip(top, peak, std, strict=True))


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


def _seq_ahead(seq: int, previous: int) -> bool:
    """True if ``seq`` is a later message than ``previous`` (RFC 1982, 32-bit)."""
    return 0 < (seq - previous) % 2**32 < 2**31


def bridge_clock(state: FallState, obs: Observation, mono: float) -> FallState:
    """Follow the samples' clock across a jump (module docstring); record this observation."""
    end = acc_end(obs)
    prev_end, prev_mono, prev_seq = state.last_acc_end, state.last_mono, state.last_seq
    state = replace(state, last_acc_end=end, last_mono=mono, last_seq=obs.seq)
    if prev_end is None or prev_mono is None or prev_seq is None:
        return state
    advance, elapsed = end - prev_end, max(0.0, mono - prev_mono)
    backwards = advance < 0 and _seq_ahead(obs.seq, prev_seq)
    forwards = advance - elapsed > obs.window_s and (obs.seq - prev_seq) % 2**32 == 1
    if not (backwards or forwards):
        return state
    return _shifted(state, advance - elapsed)


def _shifted(state: FallState, jump: float) -> FallState:
    def move(x: float | None) -> float | None:
        return None if x is None else x + jump

    return replace(
        state,
        covered_until=move(state.covered_until),
        impact_t=move(state.impact_t),
        still_from=move(state.still_from),
    )


def step_fall(
    state: FallState, obs: Observation, config: FallConfig, max_evidence: int, mono: float
) -> tuple[FallState, list[FallEvent]]:
    """Feed one window's accelerometer data to the fall rule (off-wrist windows are skipped).

    ``mono`` is the observation's monotonic time: the cooldown runs on it, and it shows jumps
    of the samples' clock (`bridge_clock`).
    """
    state = bridge_clock(state, obs, mono)
    if obs.off_wrist:
        # A device lying on a table is still, and one dropped on it sees an impact: neither is
        # a fall. The ACC is marked seen so it is not used later.
        return _forget_pending(replace(state, covered_until=acc_end(obs))), []
    blocks = acc_blocks(obs, state.covered_until, config.block_s)
    events: list[FallEvent] = []
    sample_of = _Sampler(obs)
    for block in blocks:
        before = state
        state, outcome = _step_block(state, block, config, sample_of, max_evidence, mono=mono)
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
    *,
    mono: float,
) -> tuple[FallState, Outcome]:
    previous_end = state.covered_until
    state = replace(state, covered_until=block.t_end)
    if state.phase == "raised":
        if _is_moving(block, config):
            idle = FallState(
                track=clear(state.track, mono),
                covered_until=block.t_end,
                last_acc_end=state.last_acc_end,
                last_mono=state.last_mono,
                last_seq=state.last_seq,
            )
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
    return _after_impact(state, block, config, sample_of, max_evidence, mono=mono)


def _after_impact(
    state: FallState,
    block: AccBlock,
    config: FallConfig,
    sample_of: _Sampler,
    max_evidence: int,
    *,
    mono: float,
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
        state.track, mono, config.cooldown_s
    ):
        track = raise_(state.track, mono, block.t_end)
        return replace(state, phase="raised", track=track), "raised"
    return state, None
