"""`gatewayd bench soak`: the verifier's accounting on hand-built records (pure), the schedule,
the RSS slope, and one short soak end to end (real mosquitto, emulated BlueZ, `gatewayd run` as
a subprocess SIGKILLed and restarted) whose artefacts must be written and add up.

No figure is asserted: speed and memory are reported by the bench, never tested.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import pytest

from gatewayd.bench.soak import SLOTS_PER_ADAPTER, SoakOptions, _config_text, plan_faults
from gatewayd.bench.soak import Sample as SoakSample
from gatewayd.bench.soak_report import rss_slope_mb_per_h
from gatewayd.bench.soak_verify import (
    FAULT_KINDS,
    FaultSpan,
    LostRange,
    Owed,
    StoredWindow,
    account,
)
from gatewayd.cli.common import Parser
from gatewayd.cli.soak import add_soak_parser, cmd_bench_soak
from gatewayd.emulator.faults import CorruptTrigger, FaultPlan, ScheduledFaultPlan
from gatewayd.errors import EXIT_USAGE
from gatewayd.protocol.fragments import FRAGMENT_HEADER_SIZE
from gatewayd.protocol.sequencing import SEQ_MODULUS
from tests.mqtt_fixtures import MOSQUITTO


def _stored(device: str, seqs: range | list[int], t: float = 100.0) -> list[StoredWindow]:
    return [StoredWindow(device, s, t) for s in seqs]


# --- the verifier ---------------------------------------------------------------------------------


def test_every_window_stored_and_every_event_delivered_is_ok() -> None:
    verdict = account(
        [Owed("a", 5, 15)], _stored("a", range(5, 15)), [], {"e1": "tachycardia"}, ["e1", "e1"]
    )
    assert verdict.ok
    assert (verdict.owed, verdict.stored, verdict.lost_with_reason, verdict.unexplained) == (
        10, 10, 0, 0,
    )  # fmt: skip
    assert verdict.alerts.delivered == 1


def test_a_loss_covered_by_a_data_lost_event_is_explained_with_its_cause() -> None:
    stored = _stored("a", [*range(4), *range(7, 10)])
    lost = [LostRange("a", 4, 3, "resume")]
    verdict = account([Owed("a", 0, 10)], stored, lost, {}, [])
    device = verdict.devices[0]
    assert verdict.ok
    assert (device.stored, device.lost_with_reason, device.unexplained) == (7, 3, 0)
    assert device.lost_by_cause == {"resume": 3}


def test_a_window_neither_stored_nor_reported_lost_is_unexplained_and_fails() -> None:
    stored = _stored("a", [0, 1, 2, 4, 5])
    lost = [LostRange("a", 5, 1, "gap")]  # reported lost, yet stored: a mislabel, not a loss
    verdict = account([Owed("a", 0, 7), Owed("b", 0, 2)], stored, lost, {}, [])
    a, b = verdict.devices
    assert not verdict.ok
    assert a.unexplained_seqs == [3, 6]
    assert a.reported_lost_but_stored == 1
    assert b.unexplained == 2, "a device that stored nothing owes everything"
    assert verdict.unexplained == 4
    assert all(d.adds_up for d in verdict.devices)
    assert verdict.owed == verdict.stored + verdict.lost_with_reason + verdict.unexplained


def test_an_event_in_the_log_that_never_arrived_fails_and_a_phantom_is_reported() -> None:
    verdict = account(
        [Owed("a", 0, 1)], _stored("a", [0]), [], {"e1": "tachycardia", "e2": "data_lost"},
        ["e1", "ghost"],
    )  # fmt: skip
    assert not verdict.ok
    assert verdict.alerts.undelivered == ["e2"]
    assert verdict.alerts.not_in_log == ["ghost"]
    assert verdict.alerts.by_kind == {"data_lost": 1, "tachycardia": 1}


def test_missing_telemetry_is_counted_apart_by_whether_a_fault_covers_it() -> None:
    stored = [StoredWindow("a", 0, 10.0), StoredWindow("a", 1, 50.0), StoredWindow("a", 2, 90.0)]
    verdict = account(
        [Owed("a", 0, 3)], stored, [], {}, [],
        received_telemetry=[("a", 0)], faults=[FaultSpan("broker_restart", 40.0, 60.0)],
    )  # fmt: skip
    t = verdict.telemetry
    assert (t.expected, t.delivered, t.missing_in_fault, t.missing_outside_fault) == (3, 1, 1, 1)
    assert verdict.ok, "telemetry is best effort: it does not decide the verdict"


def test_seqs_wrap_around_the_sequence_space() -> None:
    first = SEQ_MODULUS - 2
    stored = _stored("a", [SEQ_MODULUS - 2, 0])
    lost = [LostRange("a", SEQ_MODULUS - 1, 1, "gap")]
    verdict = account([Owed("a", first, first + 4)], stored, lost, {}, [])
    assert (verdict.stored, verdict.lost_with_reason, verdict.unexplained) == (2, 1, 1)
    assert verdict.devices[0].unexplained_seqs == [SEQ_MODULUS + 1]


# --- the schedule, the corruption fault, the RSS slope ----------------------------------------


def test_the_schedule_is_seeded_and_brings_every_kind_round() -> None:
    options = SoakOptions(minutes=5, devices=3, seed=7, fault_interval_s=20, warmup_s=10)
    plan = plan_faults(options, 300.0)
    assert plan == plan_faults(options, 300.0)
    assert plan != plan_faults(SoakOptions(minutes=5, devices=3, seed=8, fault_interval_s=20,
                                           warmup_s=10), 300.0)  # fmt: skip
    assert {p.kind for p in plan[: len(FAULT_KINDS)]} == set(FAULT_KINDS)
    assert all(10.0 <= p.at_s < 290.0 and 0 <= p.device < 3 for p in plan)


def test_an_armed_trigger_flips_one_bit_in_the_message_bytes_of_the_next_fragment_only() -> None:
    plan = ScheduledFaultPlan(trigger=CorruptTrigger())
    rng = random.Random(3)
    fragment = bytes(range(40))
    assert plan.mangle(fragment, rng) == [fragment]
    plan.trigger.arm()
    (bad,) = plan.mangle(fragment, rng)
    diff = [i for i in range(len(fragment)) if bad[i] != fragment[i]]
    assert len(diff) == 1
    assert diff[0] >= FRAGMENT_HEADER_SIZE
    assert bin(bad[diff[0]] ^ fragment[diff[0]]).count("1") == 1
    assert plan.mangle(fragment, rng) == [fragment]
    assert plan.trigger.applied == 1
    assert isinstance(plan, FaultPlan)


def _samples(points: list[tuple[float, float, int]]) -> list[SoakSample]:
    return [SoakSample(t, rss, pid, 0) for t, rss, pid in points]


def test_rss_slope_sees_growth_within_a_process_but_not_a_restart() -> None:
    growing = _samples([(t, 100.0 + t / 60.0, 1) for t in range(0, 600, 5)])  # 1 MB/min
    slope = rss_slope_mb_per_h(growing, warmup_s=0.0)
    assert slope == pytest.approx(60.0)
    # Flat within each process; each restarted process starts lower: no growth.
    sawtooth = _samples(
        [(t, 120.0, 1) for t in range(0, 300, 5)] + [(t, 90.0, 2) for t in range(300, 600, 5)]
    )
    assert rss_slope_mb_per_h(sawtooth, warmup_s=0.0) == pytest.approx(0.0)
    assert rss_slope_mb_per_h([], warmup_s=0.0) is None


# --- the command ---------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="gatewayd bench")
    add_soak_parser(parser.add_subparsers(dest="bench_command"))
    return parser.parse_args(argv)


def test_an_unknown_fault_kind_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["soak", "--faults", "link_drop,meteor"])
    assert cmd_bench_soak(args) == EXIT_USAGE
    assert "meteor" in capsys.readouterr().err


needs_soak_parts = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None or MOSQUITTO is None,
    reason="the soak needs dbus-daemon and mosquitto (apt-get install dbus mosquitto)",
)


def _soak(out: Path, *options: str) -> None:
    """Run `gatewayd bench soak` with every fault kind in the rotation; check what it wrote."""
    code = cmd_bench_soak(_parse(["soak", "--seed", "1", "--out", str(out), *options]))
    data = json.loads((out / "soak.json").read_text(encoding="utf-8"))
    summary = (out / "soak.md").read_text(encoding="utf-8")
    assert code == (0 if data["ok"] else 1)
    assert summary.startswith("# gatewayd bench soak:")
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    done = {f["kind"] for f in data["faults"] if not f["note"]}
    assert done == set(FAULT_KINDS), data["faults"]
    assert data["gateway_runs"] == 1 + sum(f["kind"] == "gateway_kill" for f in data["faults"])
    assert data["corrupted_fragments"] >= 1
    acc = data["account"]
    assert acc["owed"] > 0
    assert acc["owed"] == acc["stored"] + acc["lost_with_reason"] + acc["unexplained"]
    for device in acc["devices"]:
        assert device["owed"] == (
            device["stored"] + device["lost_with_reason"] + device["unexplained"]
        )
    assert acc["alerts"]["delivered"] + len(acc["alerts"]["undelivered"]) == acc["alerts"]["stored"]
    tel = acc["telemetry"]
    assert tel["expected"] == (
        tel["delivered"] + tel["missing_in_fault"] + tel["missing_outside_fault"]
    )
    samples = data["samples"]
    assert len(samples) >= 10
    assert any(s["rss_mb"] for s in samples)
    assert 1 < len({s["pid"] for s in samples if s["pid"]}) <= data["gateway_runs"]
    # What the run must show: nothing lost without a reason, every event delivered.
    assert acc["unexplained"] == 0, acc["devices"]
    assert not acc["alerts"]["undelivered"]
    assert code == 0


@pytest.mark.slow  # 75 s of soak: `make bench` runs it (with a 4-minute soak of its own)
@needs_soak_parts
def test_a_short_soak_with_every_fault_writes_artefacts_that_add_up(tmp_path: Path) -> None:
    """75 s at 8x real time, no model (less CPU), a fault every ~10 s."""
    _soak(
        tmp_path / "soak",
        "--minutes", "1.25", "--devices", "3", "--speed", "8", "--fault-interval-s", "10",
        "--warmup-s", "12", "--sample-every-s", "2", "--broker-outage-s", "5", "--no-model",
    )  # fmt: skip


def test_the_gateway_has_a_connection_slot_for_every_wearable(tmp_path: Path) -> None:
    """With more wearables than one adapter's slots, some would never connect: their windows
    would all be unexplained loss, and the faults aimed at them would hit no one."""
    from gatewayd.config import load_config

    devices = 2 * SLOTS_PER_ADAPTER + 1
    path = tmp_path / "gatewayd.toml"
    path.write_text(_config_text(1883, devices), encoding="utf-8")
    ble = load_config(path).ble
    assert len(ble.adapters) * ble.slots_per_adapter >= devices
    assert ble.adapters == ("hci0", "hci1", "hci2")


def test_the_gateway_finds_the_paired_wearables_whatever_the_out_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make bench` passes a relative --out: the gateway's state dir must still be the one the
    soak paired the wearables in (work/state), not a path resolved twice."""
    from gatewayd.config import load_config

    monkeypatch.chdir(tmp_path)
    work = Path("bench-results") / "soak" / "run-x"
    work.mkdir(parents=True)
    (work / "gatewayd.toml").write_text(_config_text(1883, 1), encoding="utf-8")
    state_dir = load_config(work / "gatewayd.toml").gateway.state_dir
    assert state_dir == (tmp_path / work / "state").resolve()
