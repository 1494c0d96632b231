"""Rule timing runs on the monotonic clock; the wall clock only labels (NTP jumps)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.rules import (
    AlertKind,
    AlertTransition,
    LinkStatus,
    Observation,
    RuleEngine,
    RuleInput,
    RulesConfig,
    Tick,
)
from tests.test_rules import LIGHT, REST, acc_window
from tests.test_rules_properties import FAST, Step, steps

DEV = "w1"
WALL0 = 1_700_000_000.0
JUMP = 7200.0


def window(mono: float, wall: float, hr: float = 70.0, **kw: Any) -> Observation:
    fields: dict[str, Any] = {
        "activity": REST,
        "activity_confidence": 0.9,
        "hr_confidence": 0.9,
        "signal_quality": 90,
        "battery": 80,
        "model_id": "m",
    }
    fields.update(kw)
    return Observation(DEV, seq=int(mono // 2), t=wall, mono=mono, hr_bpm=hr, **fields)


def feed(engine: RuleEngine, items: list[RuleInput]) -> list[AlertTransition]:
    out: list[AlertTransition] = []
    for item in items:
        out.extend(engine.feed(item))
    return out


def shape(transitions: list[AlertTransition]) -> list[tuple[str, str, int, str]]:
    return [(tr.kind.value, tr.state, tr.episode, tr.reason) for tr in transitions]


# --- durations on the monotonic clock -------------------------------------------------------------


def test_durations_fire_by_mono_while_the_wall_clock_stands_still() -> None:
    engine = RuleEngine()
    items: list[RuleInput] = [LinkStatus(DEV, WALL0, True, mono=0.0)]
    items += [window(m, WALL0, hr=120.0) for m in np.arange(0.0, 40.0, 2.0)]
    out = feed(engine, items)
    assert shape(out) == [("tachycardia", "raised", 1, "threshold")]
    assert out[0].t == WALL0  # the label is the wall clock, whatever it says
    # Silence for 60 s of monotonic time; the wall clock does not move.
    out = feed(engine, [Tick(WALL0, mono=m) for m in (60.0, 90.0, 100.0)])
    assert [(tr.kind.value, tr.state) for tr in out] == [
        ("device_silent", "raised"),
        ("tachycardia", "cleared"),
    ]
    assert out[0].evidence.fact("for_s") == 62.0  # since the last window, mono 38


def test_a_forward_wall_jump_fires_no_duration() -> None:
    engine = RuleEngine()
    items: list[RuleInput] = [LinkStatus(DEV, WALL0, True, mono=0.0)]
    items += [window(m, WALL0 + m, hr=120.0) for m in (0.0, 2.0, 4.0)]  # tachycardia pending
    assert feed(engine, items) == []
    # NTP steps the wall clock two hours forward between two windows 2 s apart.
    jumped = [window(m, WALL0 + JUMP + m, hr=120.0) for m in (6.0, 8.0)]
    assert feed(engine, [*jumped, Tick(WALL0 + JUMP + 9.0, mono=9.0)]) == []
    # The run still needs its 30 s of monotonic time: it raises at mono 30, labelled in the
    # new wall clock, with evidence from both sides of the jump.
    out = feed(engine, [window(m, WALL0 + JUMP + m, hr=120.0) for m in np.arange(10.0, 32.0, 2)])
    assert shape(out) == [("tachycardia", "raised", 1, "threshold")]
    assert out[0].t == WALL0 + JUMP + 30.0
    assert out[0].evidence.samples[0].t == WALL0


def test_a_wall_jump_clears_nothing_and_ends_no_cooldown() -> None:
    engine = RuleEngine(RulesConfig.model_validate({"abrupt_change": {"enabled": False}}))
    items: list[RuleInput] = [window(m, WALL0 + m, hr=120.0) for m in np.arange(0.0, 32.0, 2)]
    assert shape(feed(engine, items)) == [("tachycardia", "raised", 1, "threshold")]
    # Raised; the wall clock jumps back two hours: no staleness, nothing cleared.
    back = [window(m, WALL0 - JUMP + m, hr=120.0) for m in (32.0, 34.0)]
    assert feed(engine, [*back, Tick(WALL0 - JUMP + 35.0, mono=35.0)]) == []
    out = feed(engine, [window(36.0, WALL0 - JUMP + 36.0, hr=70.0)])
    assert shape(out) == [("tachycardia", "cleared", 1, "recovered")]
    assert (out[0].t, out[0].raised_at) == (WALL0 - JUMP + 36.0, WALL0 + 30.0)
    # The 300 s cooldown runs on mono: two hours forward on the wall clock do not end it.
    again: list[RuleInput] = [
        window(m, WALL0 + JUMP + m, hr=120.0) for m in np.arange(38.0, 336.0, 2)
    ]
    assert feed(engine, again) == []
    out = feed(engine, [window(336.0, WALL0 + JUMP + 336.0, hr=120.0)])
    assert shape(out) == [("tachycardia", "raised", 2, "threshold")]


def test_a_late_input_is_evaluated_at_the_newest_mono_and_its_label_moves_alike() -> None:
    engine = RuleEngine()
    feed(engine, [window(m, WALL0 + m) for m in (0.0, 2.0, 4.0)])
    feed(engine, [window(3.0, WALL0 + 3.0)])
    state = engine.devices[DEV]
    assert (state.last_t, state.last_obs_t, state.last_obs_wall) == (4.0, 4.0, WALL0 + 4.0)


# --- the fall rule: the samples' clock across a jump ----------------------------------------------


def fall_stream(jump_at: float, jump: float) -> list[Observation]:
    """Raw-ACC windows every 2 s (mono); an impact at 20 s; the samples' clock (acc_end) is the
    wall clock, which moves by ``jump`` from ``jump_at`` on (an unsynced wearable)."""
    out = []
    for m in (float(x) for x in np.arange(8.0, 60.0, 2.0)):
        shift = jump if m >= jump_at else 0.0
        acc = acc_window(m, impact_at=20.0)
        out.append(
            Observation(
                DEV, seq=int(m // 2), t=WALL0 + m + shift, mono=m, hr_bpm=80.0,
                activity=LIGHT, acc=acc, acc_end=WALL0 + m + shift,
            )
        )  # fmt: skip
    return out


def test_a_fall_is_seen_through_a_wall_jump_in_either_direction() -> None:
    reference = feed(RuleEngine(), [*fall_stream(0.0, 0.0)])
    assert shape(reference) == [("fall", "raised", 1, "threshold")]
    for jump in (JUMP, -JUMP, 10.0, -5.0):
        # The jump falls in the stillness after the impact (raised at ~32 s).
        out = feed(RuleEngine(), [*fall_stream(26.0, jump)])
        assert shape(out) == shape(reference), jump
        assert abs(out[0].t - (reference[0].t + jump)) < 1e-6
        assert out[0].evidence.fact("still_for_s") == reference[0].evidence.fact("still_for_s")


def test_a_forward_step_across_lost_messages_is_a_hole_not_a_jump() -> None:
    # Messages 13-17 lost: the samples' clock steps 12 s (more than a window beyond the 2 s
    # mono advanced: the rest arrive late, in a burst). Stillness is not assumed across it.
    stream = fall_stream(0.0, 0.0)
    late = [replace(o, mono=o.clock - 10.0) for o in stream if o.seq >= 18]
    holed = [o for o in stream if o.seq < 13] + late
    assert [tr for tr in feed(RuleEngine(), [*holed]) if tr.kind is AlertKind.FALL] == []


# --- property: a jump changes labels only ---------------------------------------------------------


def play(sequence: list[Step], jump_at: int, jump: float) -> list[tuple[int, AlertTransition]]:
    engine = RuleEngine(FAST)
    mono = 0.0
    seqs = {"a": 0, "b": 0}
    out: list[tuple[int, AlertTransition]] = []
    for i, step in enumerate(sequence):
        mono += step.dt
        wall = WALL0 + mono + (jump if i >= jump_at else 0.0)
        item: RuleInput
        if step.item == "obs":
            seqs[step.device] += 1
            item = Observation(
                step.device, seq=seqs[step.device], t=wall, mono=mono, hr_bpm=step.hr,
                hr_confidence=step.confidence, activity=step.activity,
                activity_confidence=step.activity_confidence, signal_quality=step.quality,
                off_wrist=step.off_wrist, battery=step.battery, acc_peak_g=step.peak,
                acc_still=step.still, model_id="m",
            )  # fmt: skip
        elif step.item == "tick":
            item = Tick(wall, mono=mono)
        else:
            item = LinkStatus(step.device, wall, step.item == "up", mono=mono)
        out.extend((i, tr) for tr in engine.feed(item))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(steps, max_size=120),
    st.integers(0, 120),
    st.sampled_from([JUMP, -JUMP]),
)
def test_a_wall_jump_fires_and_clears_exactly_what_it_would_without(
    sequence: list[Step], jump_at: int, jump: float
) -> None:
    reference = play(sequence, len(sequence), 0.0)
    jumped = play(sequence, jump_at, jump)

    def key(item: tuple[int, AlertTransition]) -> tuple[Any, ...]:
        i, tr = item
        return (i, tr.device_id, tr.kind, tr.state, tr.episode, tr.reason, tr.evidence.seqs)

    assert [key(x) for x in jumped] == [key(x) for x in reference]
    for (i, tr), (_, ref) in zip(jumped, reference, strict=True):
        # Labels: the wall clock of the input that produced the transition.
        assert abs(tr.t - (ref.t + (jump if i >= jump_at else 0.0))) < 1e-6
