"""Event-triggered offload end to end: a wearable's fall reaches the gateway's fall rule.

The emulated firmware (WearableCore) produces every message of a walking session with a planted
fall; the bytes go through the pure path the pipeline uses (decode_message ->
observation_for_frame -> RuleEngine), without BLE. Only offloaded windows carry raw ACC, so the
fall rule fires only when the windows around the impact are offloaded: the MOTION reason makes
sure they are, on the fall signature (an impact, settling, then no movement), and not on every
impact, so real running sessions are not offloaded for motion (docs/protocol.md §5).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gatewayd.datasets.recording import Recording
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator.wearable import WearableCore, WearableSpec
from gatewayd.pipeline import observation_for_frame
from gatewayd.protocol.messages import MessageFlags, SampleFormat, decode_message, summary_of
from gatewayd.rules.alerts import AlertKind
from gatewayd.rules.config import FallConfig, RulesConfig
from gatewayd.rules.engine import RuleEngine

FALL_AT_S = 16.0
SEEDS = range(1, 9)
#: Simulated time 0 on the gateway's clock.
T0 = 1_767_225_600.0
TROIKA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "troika"
#: Entropy and confidence never offload (tau above any window, no confidence floor): only the
#: MOTION reason can send the raw windows the fall rule needs.
ONLY_MOTION = {"tau_mbits": 65535, "min_conf_e4": 0}


@functools.cache
def walking_fall(seed: int) -> Recording:
    """1.5 minutes of walking with a fall at 16 s, then lying still for the rest of it."""
    return generate_recording(
        2, 1.5, seed=seed, events=[("fall", FALL_AT_S, 3600.0)], activities=[(7, 600.0)]
    )


def peak_g(recording: Recording) -> float:
    return float(np.max(np.linalg.norm(recording.acc, axis=1)) / 64)


def replay(
    recording: Recording, impact_g: float = 3.0, **spec: Any
) -> tuple[list[float], list[int]]:
    """Simulated times at which the fall rule raised, for a wearable and rule on ``impact_g``,
    and the seqs of the messages offloaded for motion."""
    core = WearableCore(
        WearableSpec(
            address="C0:FF:EE:00:00:05",
            name="w",
            recording=recording,
            boot_id=5,
            impact_threshold_milli_g=spec.pop("impact_threshold_milli_g", round(impact_g * 1000)),
            **spec,
        )
    )
    engine = RuleEngine(RulesConfig(fall=FallConfig(impact_g=impact_g)))
    raised = []
    motion = []
    while (due := core.next_window_due_s()) is not None:
        for seq, raw in core.produce(due):
            message = decode_message(raw)
            if summary_of(message).flags & MessageFlags.OFFLOAD_MOTION:
                motion.append(seq)
            obs = observation_for_frame("w", message, T0 + due, window_id=str(seq))
            for transition in engine.observe(obs):
                if transition.kind is AlertKind.FALL and transition.state == "raised":
                    raised.append(transition.t - T0)
    return raised, motion


def fall_alerts(seed: int, impact_g: float = 3.0, **spec: Any) -> list[float]:
    """Simulated times at which the fall rule raised on the walking fall of ``seed``."""
    return replay(walking_fall(seed), impact_g, **spec)[0]


def test_the_fall_reaches_the_rule_through_motion_offload() -> None:
    assert len(fall_alerts(5, **ONLY_MOTION)) == 1
    # Without it (a threshold no sample reaches) nothing is sent raw and no fall is raised.
    assert fall_alerts(5, impact_threshold_milli_g=65535, **ONLY_MOTION) == []


def test_an_int8_wearable_raises_the_fall_too() -> None:
    # int8 saturates every axis at 2 g: the impact reads 3.4-3.5 g, still above 3 g.
    alerts = fall_alerts(5, sample_format=SampleFormat.INT8, **ONLY_MOTION)
    assert len(alerts) == 1
    assert FALL_AT_S + 12.0 <= alerts[0] <= FALL_AT_S + 16.0


def test_walking_without_a_fall_is_never_offloaded_for_motion() -> None:
    walking = generate_recording(2, 1.5, seed=5, activities=[(7, 600.0)])
    assert replay(walking, **ONLY_MOTION) == ([], [])


@pytest.mark.needs_data
def test_real_running_is_not_offloaded_for_motion_and_raises_no_fall() -> None:
    # TROIKA: treadmill running at 6-15 km/h, where most windows hold a 3 g step impact; the
    # impact-only trigger offloaded 65 % of these windows (docs/signals.md §5.1).
    if not TROIKA.is_dir():
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    from gatewayd.datasets import find_recordings, load

    sources = find_recordings(TROIKA)
    if not sources:
        pytest.skip(f"no TROIKA recordings in {TROIKA}")
    for source in sources:
        assert replay(load(source), **ONLY_MOTION) == ([], []), source.name


@pytest.mark.parametrize("seed", SEEDS)
def test_with_the_defaults_every_walking_fall_is_raised_once(seed: int) -> None:
    # The synthetic E4 clips each axis at 2 g (int8, 64 LSB/g); a planted impact saturates all
    # three, so its peak |a| is 3.4-3.5 g, above the 3 g of the wearable and the rule.
    assert peak_g(walking_fall(seed)) > 3.0
    alerts = fall_alerts(seed)
    assert len(alerts) == 1
    # Settle 2 s + stillness 10 s, then the window that shows it has to arrive.
    assert FALL_AT_S + 12.0 <= alerts[0] <= FALL_AT_S + 16.0
