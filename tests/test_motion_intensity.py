"""The wearable's motion intensity: its arithmetic, the wire's flags, the gateway's mapping and
the held-out choice of the rules' motion floor."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.eval import choose_motion_floor, wire_motion_cg
from gatewayd.mapping import observation_for_frame
from gatewayd.protocol.messages import (
    MessageFlags,
    SampleFormat,
    Summary,
    Window,
    decode_message,
    encode_message,
    motion_flags,
)
from gatewayd.signals.offload import motion_cg
from tests.test_eval import table

L = 64  # LSB per g, as an Empatica E4


def test_a_still_wrist_is_zero_in_any_orientation() -> None:
    for gravity in ([0, 0, L], [L, 0, 0], [37, -37, 26], [-32768, 32767, 0]):
        assert motion_cg(np.tile(gravity, (256, 1)), L) == 0
    assert motion_cg(np.zeros((0, 3), dtype=np.int16), L) == 0


def test_a_square_wave_on_one_axis_is_its_amplitude() -> None:
    # +-a about a mean of 1 g: the RMS of the deviation is a, whatever the mean.
    for a, expected in ((32, 50), (64, 100), (16, 25), (1, 2)):  # 1/64 g = 1.5625 cg -> 2
        x = np.tile([[L + a, 0, 0], [L - a, 0, 0]], (128, 1))
        assert motion_cg(x, L) == expected
    # Equal on three axes: sqrt(3) times as much.
    x = np.tile([[32, 32, 32], [-32, -32, -32]], (128, 1))
    assert motion_cg(x, L) == round(50 * math.sqrt(3))


def test_motion_saturates_at_255_and_checks_its_input() -> None:
    x = np.tile([[32767, 0, 0], [-32768, 0, 0]], (128, 1))
    assert motion_cg(x, 1) == 255
    with pytest.raises(ValueError, match="shape"):
        motion_cg(np.zeros((10, 2), dtype=np.int16), L)
    with pytest.raises(ValueError, match="lsb_per_g"):
        motion_cg(np.zeros((10, 3), dtype=np.int16), 0)


def test_motion_agrees_with_floating_point_within_rounding() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 600))
        lsb = int(rng.integers(1, 2000))
        x = rng.integers(-32768, 32768, size=(n, 3))
        exact = 100 * np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean()) / lsb
        got = motion_cg(x, lsb)
        assert got == min(255, int(np.floor(exact + 0.5))) or abs(got - exact) <= 0.5 + 1e-6


def _summary(flags: MessageFlags) -> Summary:
    return Summary(7, 1000, flags, 1, 40, 9000, 3000, 15000, 80, 90)


def test_the_wire_carries_motion_in_the_flags_and_an_older_sender_none() -> None:
    s = decode_message(encode_message(_summary(MessageFlags.CLOCK_SYNCED | motion_flags(62))))
    assert isinstance(s, Summary)
    assert s.motion_g == 0.62
    assert s.flags & MessageFlags.CLOCK_SYNCED
    assert decode_message(encode_message(_summary(motion_flags(0)))).motion_g == 0.0  # type: ignore[union-attr]
    # Bits 8-15 without MOTION_REPORTED are reserved: not a motion.
    old = decode_message(encode_message(_summary(MessageFlags(0x3E00))))
    assert old.motion_g is None  # type: ignore[union-attr]
    assert _summary(MessageFlags.NONE).motion_g is None
    with pytest.raises(ValueError, match=r"0\.\.255"):
        motion_flags(256)


def test_the_gateway_maps_motion_and_computes_it_for_an_older_wearables_window() -> None:
    s = _summary(motion_flags(80))
    assert observation_for_frame("w", s, 1.0, window_id=None).motion_g == 0.8
    assert (
        observation_for_frame(
            "w", replace(s, flags=MessageFlags.NONE), 1.0, window_id=None
        ).motion_g
        is None
    )
    acc = np.tile([[L + 32, 0, 0], [L - 32, 0, 0]], (128, 1)).astype(np.int16)
    bvp = np.zeros(512, dtype=np.int16)
    old = Window(
        replace(s, flags=MessageFlags.OFFLOAD_ENTROPY), SampleFormat.INT16, 64, 32, L, bvp, acc
    )
    assert observation_for_frame("w", old, 1.0, window_id=None).motion_g == 0.5
    # A wearable that reports it is believed over the samples.
    new = replace(old, summary=replace(s, flags=MessageFlags.OFFLOAD_ENTROPY | motion_flags(80)))
    assert observation_for_frame("w", new, 1.0, window_id=None).motion_g == 0.8


def test_the_motion_floor_is_the_lowest_precise_enough_chosen_held_out() -> None:
    rest, light, vig = (
        int(g) for g in (ActivityGroup.REST, ActivityGroup.LIGHT, ActivityGroup.VIGOROUS)
    )
    tables = []
    for k, subject in enumerate("abcd"):
        # rest at 5 cg, light at 20..39, vigorous at 40..99; subject d's vigorous moves less.
        truth = np.array([rest] * 20 + [light] * 20 + [vig] * 60)
        motion = np.concatenate([np.full(20, 5), np.arange(20, 40), np.arange(40, 100)])
        if subject == "d":
            motion[40:] -= 15  # 25..84: some of its vigorous below the others' floor
        flags = np.array([int(motion_flags(int(m))) for m in motion], dtype=np.int64)
        flags[-1] = 0  # an older wearable's window: left out
        t = table(subject, k, n=100)
        tables.append(replace(t, truth=truth, flags=flags, source="synthetic"))
    np.testing.assert_array_equal(wire_motion_cg(tables[0].flags)[:3], [5, 5, 5])
    assert wire_motion_cg(tables[0].flags)[-1] == -1
    floor = choose_motion_floor(tables)
    assert floor.windows == 4 * 99
    # On a, b and c's windows (d's too) 90 % precision needs the floor above most light windows.
    assert floor.chosen_cg is not None
    assert 20 < floor.chosen_cg <= 40
    assert sum(floor.per_subject.values()) == 4
    assert floor.raised_rest == 0
    assert 0.8 < floor.precision <= 1.0
    assert 0 < floor.vigorous_recall < 1.0  # d's slowest vigorous windows are not raised
    # The gateway (table()) reported every window unknown: every vigorous one was reported
    # lower, and the floor gives back those it raises; no window was reported right.
    assert floor.reported_lower == 4 * 59
    assert floor.rescued == round(floor.vigorous_recall * floor.reported_lower)
    assert floor.overridden == 0
    doc = floor.to_json()
    assert doc["chosen_cg"] == floor.chosen_cg
    assert choose_motion_floor([]).chosen_cg is None
