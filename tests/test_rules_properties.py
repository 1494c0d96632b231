"""Properties of the rules over arbitrary input sequences (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.activity import ActivityGroup, group_name
from gatewayd.rules import (
    CATEGORY,
    AlertKind,
    AlertTransition,
    LinkStatus,
    Observation,
    RuleEngine,
    RulesConfig,
    Tick,
)

#: Short durations and cooldowns so that random sequences raise and clear often.
FAST = RulesConfig.model_validate(
    {
        "tachycardia": {"min_duration_s": 4.0, "cooldown_s": 10.0},
        "bradycardia": {"min_duration_s": 4.0, "cooldown_s": 10.0},
        "high_hr_at_rest": {"min_duration_s": 8.0, "cooldown_s": 10.0},
        "abrupt_change": {"cooldown_s": 6.0},
        "poor_signal": {"min_duration_s": 4.0, "cooldown_s": 10.0},
        "off_wrist": {"min_duration_s": 2.0, "cooldown_s": 5.0},
        "device_silent": {"min_duration_s": 10.0, "cooldown_s": 5.0},
        "disconnected": {"min_duration_s": 6.0, "cooldown_s": 5.0},
        "low_battery": {"cooldown_s": 20.0},
        "hr": {"stale_s": 20.0},
    }
)


@dataclass(frozen=True)
class Step:
    dt: float
    item: str  # "obs", "up", "down", "tick"
    device: str
    hr: float | None
    confidence: float
    activity: int | None
    activity_confidence: float
    quality: int | None
    off_wrist: bool
    battery: int | None
    peak: float | None
    still: bool | None


steps = st.builds(
    Step,
    dt=st.sampled_from([0.0, 2.0, 2.0, 2.0, 2.0, 5.0, 15.0, 40.0]),
    item=st.sampled_from(["obs"] * 12 + ["up", "down", "tick", "tick"]),
    device=st.sampled_from(["a", "a", "a", "b"]),
    hr=st.one_of(st.none(), st.floats(25, 220), st.sampled_from([35.0, 70.0, 120.0, 170.0])),
    confidence=st.sampled_from([0.1, 0.9, 1.0]),
    # The group codes, plus 7 (an old PPG-DaLiA id, not a group) and None: both unknown.
    activity=st.sampled_from([None, 0, 1, 2, 7, 255]),
    activity_confidence=st.sampled_from([0.2, 0.9]),
    quality=st.one_of(st.none(), st.integers(0, 100)),
    off_wrist=st.sampled_from([False] * 6 + [True]),
    battery=st.one_of(st.none(), st.integers(0, 30)),
    peak=st.sampled_from([None, 1.0, 5.0]),
    still=st.sampled_from([None, True, True, False]),
)


def play(sequence: list[Step]) -> list[tuple[Step | None, AlertTransition]]:
    """Run a sequence; each transition with the step that produced it."""
    engine = RuleEngine(FAST)
    t = 0.0
    seqs = {"a": 0, "b": 0}
    out: list[tuple[Step | None, AlertTransition]] = []
    for step in sequence:
        t += step.dt
        if step.item == "obs":
            seqs[step.device] += 1
            item: Observation | LinkStatus | Tick = Observation(
                step.device,
                seq=seqs[step.device],
                t=t,
                hr_bpm=step.hr,
                hr_confidence=step.confidence,
                activity=step.activity,
                activity_confidence=step.activity_confidence,
                signal_quality=step.quality,
                off_wrist=step.off_wrist,
                battery=step.battery,
                acc_peak_g=step.peak,
                acc_still=step.still,
                model_id="m",
            )
        elif step.item == "tick":
            item = Tick(t)
        else:
            item = LinkStatus(step.device, t, connected=step.item == "up")
        out.extend((step, tr) for tr in engine.feed(item))
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(steps, max_size=120))
def test_no_physiological_alert_is_raised_from_an_off_wrist_window(sequence: list[Step]) -> None:
    for step, tr in play(sequence):
        if tr.state == "raised" and tr.category == "physiological":
            assert step is not None
            assert step.item == "obs", "physiological alerts are raised only by windows"
            assert not step.off_wrist


@settings(max_examples=150, deadline=None)
@given(st.lists(steps, max_size=120))
def test_raises_and_clears_alternate_and_respect_the_cooldown(sequence: list[Step]) -> None:
    last: dict[tuple[str, AlertKind], AlertTransition] = {}
    for _, tr in play(sequence):
        assert tr.category == CATEGORY[tr.kind]
        key = (tr.device_id, tr.kind)
        previous = last.get(key)
        if tr.state == "raised":
            assert previous is None or previous.state == "cleared"
            assert tr.episode == (1 if previous is None else previous.episode + 1)
            if previous is not None:
                cooldown = getattr(FAST, tr.kind.value).cooldown_s
                assert tr.t - previous.t >= cooldown
        else:
            assert previous is not None
            assert previous.state == "raised"
            assert tr.episode == previous.episode
            assert tr.raised_at == previous.t
            assert tr.t >= previous.t
        last[key] = tr


@settings(max_examples=100, deadline=None)
@given(st.lists(steps, max_size=120))
def test_heart_rate_alerts_rest_on_trustworthy_windows_only(sequence: list[Step]) -> None:
    hr_kinds = {AlertKind.TACHYCARDIA, AlertKind.BRADYCARDIA, AlertKind.HIGH_HR_AT_REST}
    for step, tr in play(sequence):
        if tr.state == "raised" and tr.kind in hr_kinds:
            assert step is not None
            assert step.confidence >= FAST.hr.min_confidence
            assert step.quality is None or step.quality >= FAST.hr.min_signal_quality
            assert tr.evidence.samples
            assert tr.evidence.model_ids == ("m",)


@settings(max_examples=100, deadline=None)
@given(st.lists(steps, max_size=120))
def test_only_a_trusted_rest_window_raises_high_hr_at_rest(sequence: list[Step]) -> None:
    for step, tr in play(sequence):
        if tr.state == "raised" and tr.kind is AlertKind.HIGH_HR_AT_REST:
            assert step is not None
            assert step.activity == ActivityGroup.REST
            assert step.activity_confidence >= FAST.activities.min_confidence
            assert {s.activity for s in tr.evidence.samples} == {"rest"}


@settings(max_examples=100, deadline=None)
@given(st.lists(steps, max_size=120))
def test_heart_rate_limits_are_those_of_the_group_the_rules_used(sequence: list[Step]) -> None:
    for step, tr in play(sequence):
        if tr.state == "raised" and tr.kind in (AlertKind.TACHYCARDIA, AlertKind.BRADYCARDIA):
            assert step is not None
            trusted = (
                step.activity in (0, 1, 2)
                and step.activity_confidence >= FAST.activities.min_confidence
            )
            name = group_name(step.activity) if trusted else "unknown"
            assert tr.evidence.fact("activity") == name
            limit = dict(tr.evidence.thresholds)["limit_bpm"]
            if tr.kind is AlertKind.BRADYCARDIA:
                assert limit == FAST.bradycardia.limit(name)
            else:
                # The current group's limit, or a higher one while recovering from a bout.
                source = tr.evidence.fact("limit_activity")
                assert limit == FAST.tachycardia.limit(source)  # type: ignore[arg-type]
                assert limit >= FAST.tachycardia.limit(name)
