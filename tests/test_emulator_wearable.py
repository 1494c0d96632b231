"""The virtual wearable's firmware logic (pure) and the emulator's command line."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.config import OffloadConfig
from gatewayd.datasets.synthetic import generate_recording, write_synthetic_dataset
from gatewayd.emulator.faults import FaultPlan, parse_faults
from gatewayd.emulator.virtual import (
    FleetSetup,
    load_wearable_model,
    pick_wearable_model,
    replay_starts,
)
from gatewayd.emulator.wearable import (
    LocalActivity,
    SharedLocalModel,
    WearableCore,
    WearableSpec,
    bvp_gain,
    quantise,
)
from gatewayd.errors import DecodeError, EmulatorError
from gatewayd.inference import ModelRegistry, ModelSession
from gatewayd.inference.analysis import model_input, predict
from gatewayd.inference.groups import group_prediction
from gatewayd.protocol.control import (
    Resend,
    SetPolicy,
    SetPruning,
    SetRestLimit,
    TimeSync,
    decode_info,
    encode_control,
)
from gatewayd.protocol.messages import (
    MessageFlags,
    SampleFormat,
    Summary,
    Window,
    decode_message,
    summary_of,
)
from gatewayd.signals.entropy import entropy_milli_bits, window_entropy_bits
from gatewayd.signals.offload import (
    DEFAULT_MIN_CONF_E4,
    DEFAULT_REST_LIMIT_CBPM,
    DEFAULT_TAU_MBITS,
    IMPACT_THRESHOLD_MILLI_G,
    MOTION_HOLD_MS,
    OffloadReason,
    confidence_e4,
    decide_offload,
    fall_impact_index,
    offload_confidence_e4,
)

RECORDING = generate_recording(7, 1.0, seed=7)
#: Walking, then a fall at 16 s (impact 3.1 g) and lying still: the case that needs MOTION.
FALL_AT_S = 16.0
WALKING_FALL = generate_recording(
    2, 1.5, seed=5, events=[("fall", FALL_AT_S, 3600.0)], activities=[(7, 600.0)]
)


def core(**overrides: object) -> WearableCore:
    fields: dict[str, object] = {
        "address": "C0:FF:EE:00:00:01", "name": "w", "recording": RECORDING, "boot_id": 99
    }  # fmt: skip
    fields.update(overrides)
    return WearableCore(WearableSpec(**fields), keep_sent=True)  # type: ignore[arg-type]


def test_windows_come_every_two_simulated_seconds_after_the_first_eight() -> None:
    c = core()
    assert c.produce(7.99) == []
    first = c.produce(8.0)
    assert [seq for seq, _ in first] == [0]
    assert [seq for seq, _ in c.produce(12.0)] == [1, 2]
    rest = c.produce(1e9)
    assert len(first) + 2 + len(rest) == c.windows_total == RECORDING.window_count()
    assert c.finished
    assert c.next_window_due_s() is None


def test_a_replay_starts_at_its_window_and_wraps_once_unless_it_loops() -> None:
    total = RECORDING.window_count()
    start = total - 3
    once = core(start_window=start, tau_mbits=0, min_conf_e4=0)  # every window raw
    sent = once.produce(1e9)
    assert len(sent) == total
    assert once.finished
    assert [once.recording_window(i) for i in range(5)] == [start, start + 1, start + 2, 0, 1]
    for seq, raw in sent:
        m = decode_message(raw)
        assert isinstance(m, Window)
        bvp, acc = once.wire_samples(once.recording_window(seq))
        assert np.array_equal(m.bvp, bvp)
        assert np.array_equal(m.acc, acc)
    looping = core(start_window=start, loop=True)
    assert len(looping.produce(10.0 * total)) > 2 * total
    assert not looping.finished
    assert looping.next_window_due_s() is not None


def test_a_worn_wearable_has_tracked_the_windows_before_its_start() -> None:
    # Started at window 10 having followed windows 0-9: its first window is window 10 of a
    # wearable that replayed from the start (the tracker's heart rate and quality included).
    plain = [summary_of(decode_message(raw)) for _, raw in core().produce(1e9)]
    worn = [summary_of(decode_message(raw)) for _, raw in core(start_window=10, worn_windows=10)
            .produce(1e9)]  # fmt: skip
    cold = [summary_of(decode_message(raw)) for _, raw in core(start_window=10).produce(1e9)]

    def estimate(s: Summary) -> tuple[int, int, int]:
        return s.hr_cbpm, s.signal_quality, s.entropy_mbits

    assert [estimate(s) for s in worn[:5]] == [estimate(s) for s in plain[10:15]]
    assert [estimate(s) for s in cold[:5]] != [estimate(s) for s in plain[10:15]]
    assert cold[0].entropy_mbits == plain[10].entropy_mbits  # the same samples, untracked


def test_replay_starts_spread_the_wearables_sharing_a_recording() -> None:
    windows = [100, 40, 7]
    starts = replay_starts(30, windows, seed=1)
    assert starts == replay_starts(30, windows, seed=1)
    assert starts != replay_starts(30, windows, seed=2)
    for r, w in enumerate(windows):
        mine = sorted(starts[r::3])  # wearable i replays recording i % 3
        assert all(0 <= s < w for s in mine)
        # Ten wearables on recording r: evenly spaced around it (its length over ten apart).
        gaps = [b - a for a, b in zip(mine, [*mine[1:], mine[0] + w], strict=True)]
        assert max(gaps) - min(gaps) <= 1
    # A fleet no larger than its recordings: one wearable each, from a seeded point.
    assert len(replay_starts(2, windows, seed=1)) == 2
    assert replay_starts(3, [0, 5, 5], seed=1)[0] == 0  # a recording without windows


def test_offload_decision_matches_the_firmware_policy_and_raw_samples_travel() -> None:
    # A threshold inside this recording's entropy range (3.80-3.97 bits): some windows each way.
    c = core(tau_mbits=3880, min_conf_e4=5000)
    for seq, raw in c.produce(1e9):
        m = decode_message(raw)
        s = summary_of(m)
        assert s.seq == seq
        confidence = offload_confidence_e4(
            s.activity_conf_e4, s.signal_quality, s.hr_cbpm, s.activity
        )
        reason = decide_offload(s.entropy_mbits, confidence, 3880, 5000)
        assert int(s.offload_reason) == int(reason)  # no impact here: MOTION never set
        assert isinstance(m, Window) == bool(reason)
        if isinstance(m, Window):
            assert s.entropy_mbits == entropy_milli_bits(window_entropy_bits(m.bvp))
            assert m.bvp.shape == (512,)
            assert m.acc.shape == (256, 3)
    assert c.counters.windows > 0
    assert c.counters.summaries > 0


def test_control_writes_change_policy_clock_and_pruning() -> None:
    c = core(tau_mbits=0, min_conf_e4=0)  # everything offloaded by entropy
    c.handle_control(encode_control(SetPolicy(65535, 0)), 0.0)  # nothing offloaded
    c.handle_control(encode_control(SetPruning(60)), 0.0)
    c.handle_control(encode_control(TimeSync(1_800_000_000_000)), 4.0)
    (_, raw), *_ = c.produce(8.0)
    s = decode_message(raw)
    assert isinstance(s, Summary)
    assert s.pruning_pct == 60
    assert s.flags & MessageFlags.CLOCK_SYNCED
    assert s.t_ms == 1_800_000_000_000 - 4000  # window 0 started at simulated 0 s
    info = decode_info(c.info())
    assert (info.tau_mbits, info.min_conf_e4, info.pruning_pct) == (65535, 0, 60)
    assert info.next_seq == 1
    assert info.boot_id == 99
    with pytest.raises(DecodeError):
        c.handle_control(b"\x01\x09", 0.0)


def test_resend_comes_from_a_bounded_ring_flagged_resent() -> None:
    c = core(ring_slots=4)
    sent = c.produce(1e9)
    last = sent[-1][0]
    again = c.handle_control(encode_control(Resend(last - 5, 6)), 0.0)
    assert [seq for seq, _ in again] == [last - 3, last - 2, last - 1, last]
    assert c.counters.resend_missing == 2
    for seq, raw in again:
        m = decode_message(raw)
        assert summary_of(m).flags & MessageFlags.RESENT
        assert c.sent is not None
        original = c.sent[seq]
        assert summary_of(m).entropy_mbits == summary_of(original).entropy_mbits


def test_clock_skew_and_drift_until_sync() -> None:
    c = core(boot_unix_ms=-3_600_000 + 10**12, clock_drift_ms_per_s=2.0)
    assert c.device_ms(10.0) == 10**12 - 3_600_000 + 10_000 + 20
    c.handle_control(encode_control(TimeSync(2 * 10**12)), 10.0)
    assert c.device_ms(10.0) == 2 * 10**12
    assert c.device_ms(20.0) == 2 * 10**12 + 10_000 + 20


def test_battery_drains() -> None:
    c = core(battery_start_pct=50.0, battery_drain_pct_per_h=10.0)
    assert c.battery_pct(0) == 50
    assert c.battery_pct(3600) == 40
    assert c.battery_pct(10 * 3600) == 0


def test_quantisation_saturates_and_gain_is_a_power_of_two() -> None:
    g = bvp_gain(RECORDING)
    assert g == 2.0 ** round(np.log2(g))
    q = quantise(np.array([1e9, -1e9, 1.4]), 1.0, SampleFormat.INT8)
    assert q.tolist() == [127, -128, 1]


def test_fault_spec_parsing() -> None:
    plan = parse_faults("drop=5s, corrupt=1%, truncate=0.002, duplicate=0.01, connect_fail=2,"
                        "skew=-1500ms, drift=2, flood=1, flood_rate=50")  # fmt: skip
    assert plan == FaultPlan(5.0, 0.01, 0.002, 0.01, 2, -1.5, 2.0, 1, 50.0)
    assert parse_faults("") == FaultPlan()
    assert parse_faults("impostor=2,hang=1m") == FaultPlan(impostor=2, hang_after_s=60.0)
    assert parse_faults("old_firmware=1") == FaultPlan(old_firmware=1)
    for bad, match in [("drop=soon", "duration"), ("corrupt=2", "between 0 and 1"),
                       ("bogus=1", "unknown fault"), ("corrupt", "name=value"),
                       ("connect_fail=x", "whole number"), ("impostor=yes", "whole number"),
                       ("old_firmware=0.5", "whole number"),
                       ("hang=later", "duration")]:  # fmt: skip
        with pytest.raises(EmulatorError, match=match):
            parse_faults(bad)


def test_fault_plan_mangles_at_the_asked_rates() -> None:
    plan = FaultPlan(corrupt=0.1, duplicate=0.1)
    rng = random.Random(1)
    frag = bytes(range(50))
    outs = [plan.mangle(frag, rng) for _ in range(10_000)]
    doubled = sum(len(o) == 2 for o in outs) / len(outs)
    changed = sum(o[0] != frag for o in outs) / len(outs)
    assert 0.08 < doubled < 0.12
    assert 0.08 < changed < 0.12
    assert FaultPlan().mangle(frag, rng) == [frag]


def test_emulate_synth_writes_dalia_layout(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gatewayd", "emulate", "synth", "--subjects", "2", "--minutes",
         "0.5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "S1" / "S1.pkl").is_file()
    assert (tmp_path / "S2" / "S2.pkl").is_file()
    assert "synthetic" in done.stdout


def test_emulate_prints_where_the_gateway_should_look(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gatewayd", "emulate", "--devices", "1", "--minutes", "0.2",
         "--duration", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "export DBUS_SYSTEM_BUS_ADDRESS='unix:path=" in done.stdout
    assert "(synthetic data)" in done.stdout


def test_emulate_replays_every_dataset_given_in_a_loop(tmp_path: Path) -> None:
    # Synthetic files in the PPG-DaLiA layout stand for two datasets; the line names what it
    # replays (`gatewayd bench scale` reads it).
    write_synthetic_dataset(tmp_path / "a", 1, 0.5, seed=1)
    write_synthetic_dataset(tmp_path / "b", 1, 0.5, seed=2)
    done = subprocess.run(
        [sys.executable, "-m", "gatewayd", "emulate", "--devices", "3", "--dataset",
         str(tmp_path / "a"), "--dataset", str(tmp_path / "b"), "--loop", "--duration", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "from 2 synthetic recordings, looped" in done.stdout
    assert "(synthetic data)" in done.stdout


def test_emulate_rejects_a_bad_fault_spec() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gatewayd", "emulate", "--faults", "explode=1", "--duration", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "unknown fault" in done.stderr


# ---- motion offload ---------------------------------------------------------------------------


def offloaded_after(c: WearableCore, t_s: float, flags: MessageFlags) -> float:
    """Seconds after ``t_s`` covered without a gap by WINDOWs having one of ``flags``."""
    assert c.sent is not None
    end = t_s
    for seq in sorted(c.sent):
        m = c.sent[seq]
        start = seq * 2.0  # window seq starts 2 s after the previous one
        if isinstance(m, Window) and m.summary.flags & flags and start <= end < start + 8.0:
            end = start + 8.0
    return end - t_s


def test_spec_defaults_are_the_offload_policy_defaults() -> None:
    spec = core().spec
    assert spec.impact_threshold_milli_g == IMPACT_THRESHOLD_MILLI_G == 3000
    assert spec.motion_hold_ms == MOTION_HOLD_MS == 16000
    config = OffloadConfig()
    assert (spec.tau_mbits, spec.min_conf_e4) == (DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4)
    assert (round(config.tau_bits * 1000), round(config.min_confidence * 10000)) == (
        DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4,
    )  # fmt: skip
    assert (FleetSetup().tau_mbits, FleetSetup().min_conf_e4) == (
        DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4,
    )  # fmt: skip


def test_a_fall_while_walking_is_offloaded_for_motion_from_the_impact_on() -> None:
    # No entropy or confidence offload (tau above any window, no floor): motion alone decides.
    c = core(recording=WALKING_FALL, tau_mbits=65535, min_conf_e4=0)
    c.produce(1e9)
    assert c.sent is not None
    # The impact at 16.0 s is a fall candidate in the windows where settle 2 s + still 2 s fit
    # after it (starting at 12, 14 and 16 s: seq 6-8; the one at 10 s holds it too late); the
    # windows starting up to 16 s after it (seq 16 starts at 32 s) are held.
    motion = [s for s, m in c.sent.items() if summary_of(m).flags & MessageFlags.OFFLOAD_MOTION]
    assert motion == list(range(6, 17))
    assert [s for s, m in c.sent.items() if isinstance(m, Window)] == motion
    # The fall rule needs 12 s after the impact (settle 2 s + stillness 10 s): MOTION gives 24.
    assert offloaded_after(c, FALL_AT_S, MessageFlags.OFFLOAD_MOTION) >= 16.0 + 8.0


def test_motion_flag_follows_the_fall_signature_of_the_samples_on_the_wire() -> None:
    c = core(recording=WALKING_FALL, motion_hold_ms=0)
    held = []
    for seq, raw in c.produce(1e9):
        m = decode_message(raw)
        s = summary_of(m)
        if isinstance(m, Window):
            candidate = fall_impact_index(m.acc, m.acc_lsb_per_g, m.acc_rate_hz) is not None
            assert candidate == bool(s.flags & MessageFlags.OFFLOAD_MOTION), seq
        if s.flags & MessageFlags.OFFLOAD_MOTION:
            held.append(seq)
    assert held == [6, 7, 8]  # hold 0: only the candidates (starting at most 4 s before 16 s)


def test_motion_threshold_is_a_spec_field() -> None:
    # 4 g: above any impact an E4 can record (each axis clips at 2 g, so |a| <= 3.47 g).
    c = core(recording=WALKING_FALL, impact_threshold_milli_g=4000)
    c.produce(1e9)
    assert c.sent is not None
    assert not any(summary_of(m).flags & MessageFlags.OFFLOAD_MOTION for m in c.sent.values())


def test_time_sync_does_not_move_the_motion_hold() -> None:
    plain = core(recording=WALKING_FALL)
    plain.produce(1e9)
    synced = core(recording=WALKING_FALL)
    synced.produce(20.0)  # the impact is behind us, the hold is running
    synced.handle_control(encode_control(TimeSync(1_000)), 20.0)  # the device clock jumps back
    synced.produce(1e9)
    assert plain.sent is not None
    assert synced.sent is not None
    motion = MessageFlags.OFFLOAD_MOTION
    assert [bool(summary_of(m).flags & motion) for m in synced.sent.values()] == [
        bool(summary_of(m).flags & motion) for m in plain.sent.values()
    ]


# ---- the local model -------------------------------------------------------------------------


def local_model() -> ModelSession:
    picked = pick_wearable_model(ModelRegistry.discover(), 40)
    if picked is None:
        pytest.skip("no wearable model pruned 40 % is installed in gatewayd/models")
    return ModelSession(picked.card, picked.path)


def test_the_shipped_wearable_model_is_picked_by_pruning_int8_first() -> None:
    registry = ModelRegistry.discover()
    for pct in (20, 40, 60, 80):
        picked = pick_wearable_model(registry, pct)
        if picked is None:
            continue
        assert (picked.card.role, picked.card.pruning_pct) == ("wearable", pct)
        same = [m for m in registry.for_role("wearable") if m.card.pruning_pct == pct]
        if any(m.card.quantization == "int8-static" for m in same):
            assert picked.card.quantization == "int8-static"
    assert pick_wearable_model(registry, 33) is None
    session, why = load_wearable_model(33)
    assert session is None
    assert why is not None
    assert "33 %" in why


def test_wearables_replaying_one_recording_share_the_local_models_verdicts() -> None:
    session = local_model()

    def spec(start: int) -> WearableSpec:
        return WearableSpec("C0:FF:EE:00:00:01", "w", RECORDING, boot_id=1, start_window=start)

    shared = SharedLocalModel(session, RECORDING, SampleFormat.INT16)
    own = [WearableCore(spec(s), local_model=session) for s in (0, 5)]
    sharing = [WearableCore(spec(s), local_model=shared) for s in (0, 5)]
    for alone, with_shared in zip(own, sharing, strict=True):
        # Byte for byte what a wearable running its own copy of the model sends.
        assert with_shared.produce(1e9) == alone.produce(1e9)
    # Two wearables, each over every window of the recording: the model ran once per window.
    assert shared.computed == RECORDING.window_count()


def test_a_local_model_puts_its_group_and_probability_on_the_wire() -> None:
    session = local_model()
    c = WearableCore(
        WearableSpec("C0:FF:EE:00:00:01", "w", RECORDING, boot_id=99, model_id=session.model_id),
        keep_sent=True,
        local_model=session,
    )
    info = decode_info(c.info())
    assert info.model_id == session.model_id
    groups = set()
    for seq, raw in c.produce(1e9):
        s = summary_of(decode_message(raw))
        # Recomputed from the same wire samples: the model's group and its probability.
        bvp, acc = c.wire_samples(seq)
        x = model_input(bvp, acc, bvp_rate_hz=64, acc_rate_hz=32, acc_lsb_per_g=64,
                        preprocessing=session.card.input.preprocessing)  # fmt: skip
        g = group_prediction(predict(session, x[None]).activity_probs,
                             session.card.outputs.activity_classes)  # fmt: skip
        assert s.activity == int(g.group[0])
        unknown = s.activity == int(ActivityGroup.UNKNOWN)
        p = float(g.group_probs[0].max()) if unknown else float(g.confidence[0])
        assert s.activity_conf_e4 == confidence_e4(p)
        # The offload decision is the firmware's on the summary's integers.
        conf = offload_confidence_e4(s.activity_conf_e4, s.signal_quality, s.hr_cbpm, s.activity)
        reason = decide_offload(s.entropy_mbits, conf, c.tau_mbits, c.min_conf_e4)
        assert int(s.offload_reason) == int(reason)
        groups.add(s.activity)
    assert groups <= {int(g) for g in ActivityGroup}


#: Sitting (synthetic activity 1) with a planted resting heart rate of 150 bpm.
RESTING_150 = generate_recording(1, 1.5, seed=11, events=[("tachycardia", 0.0, 3600.0, 150.0)],
                                 activities=[(1, 600.0)])  # fmt: skip


@pytest.mark.parametrize("group", [ActivityGroup.REST, ActivityGroup.LIGHT])
def test_a_wearable_sure_it_rests_at_150_bpm_sends_its_windows_raw(group: ActivityGroup) -> None:
    """A sure local model and a locked tracker keep a window local, unless the group is rest
    and the heart rate above the resting limit: then the window goes raw, for its confidence."""
    c = WearableCore(
        WearableSpec("C0:FF:EE:00:00:01", "w", RESTING_150, boot_id=99),
        keep_sent=True,
        local_model=lambda _index: LocalActivity(int(group), 9900),
    )
    locked = []
    for _seq, raw in c.produce(1e9):
        m = decode_message(raw)
        s = summary_of(m)
        if s.hr_cbpm > 13000 and s.signal_quality >= 60:  # the tracker is on the pulse
            locked.append((isinstance(m, Window), s.offload_reason))
    assert len(locked) >= 10
    if group == ActivityGroup.REST:
        assert all(raw and reason == OffloadReason.LOW_CONFIDENCE for raw, reason in locked)
    else:
        assert not any(raw for raw, _ in locked)


def _locked_raw(c: WearableCore) -> list[bool]:
    """For each window the tracker is locked on (150 bpm, good quality): was it sent raw?"""
    out = []
    for _seq, raw in c.produce(1e9):
        m = decode_message(raw)
        s = summary_of(m)
        if s.hr_cbpm > 13000 and s.signal_quality >= 60:
            out.append(isinstance(m, Window))
    assert len(out) >= 10
    return out


@pytest.mark.parametrize(("limit", "raw"), [(16000, False), (14000, True), (0, False)])
def test_the_gateways_resting_limit_decides_which_resting_windows_go_raw(
    limit: int, raw: bool
) -> None:
    """SET_REST_LIMIT moves the rest check: at a limit of 160 bpm rest at 150 bpm stays local,
    at 140 it goes raw, and 0 turns the check off."""
    c = WearableCore(
        WearableSpec("C0:FF:EE:00:00:01", "w", RESTING_150, boot_id=99),
        local_model=lambda _index: LocalActivity(int(ActivityGroup.REST), 9900),
    )
    c.handle_control(encode_control(SetRestLimit(limit)), 0.0)
    assert c.rest_limit_cbpm == limit
    assert set(_locked_raw(c)) == {raw}


def test_firmware_from_before_set_rest_limit_refuses_it_and_keeps_its_own() -> None:
    c = WearableCore(
        WearableSpec("C0:FF:EE:00:00:01", "w", RESTING_150, boot_id=99, knows_rest_limit=False),
        local_model=lambda _index: LocalActivity(int(ActivityGroup.REST), 9900),
    )
    with pytest.raises(DecodeError) as err:
        c.handle_control(encode_control(SetRestLimit(16000)), 0.0)
    assert err.value.reason == "unknown_opcode"
    assert c.rest_limit_cbpm == DEFAULT_REST_LIMIT_CBPM
    assert all(_locked_raw(c))


def test_without_a_local_model_activity_stays_unknown_and_the_confidence_is_the_trackers() -> None:
    c = core()
    assert c.local_model is None
    for _, raw in c.produce(1e9):
        s = summary_of(decode_message(raw))
        assert s.activity == 255
        # The tracker's confidence in 1/10000 and its quality in 1/100 agree to the percent.
        assert abs(s.activity_conf_e4 - 100 * s.signal_quality) <= 50
