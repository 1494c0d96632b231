"""`gatewayd bench scale`: its figures' arithmetic, and a smoke run that writes every artefact.

The smoke run (emulator, gateway and mosquitto as processes, a few wearables for a few seconds)
checks that each file is written and well formed, never the figures: speed lives in the bench.
Another replays the real BAMI recordings (../shared/data/bami, or under $GATEWAYD_SHARED_DATA;
skipped without them) and checks only that the default policy offloads some windows and loses
none. `make bench` runs the `--quick` sweep.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gatewayd.bench.procstat import Usage, descendants
from gatewayd.bench.scale import (
    SLOTS,
    OffloadMix,
    PointResult,
    ScaleOptions,
    ScaleReport,
    Sessions,
    find_sessions,
    format_markdown,
    largest_within,
    offloaded_window_cost,
    parse_devices,
    parse_offload,
    percentile,
    run_notes,
    write_config,
)
from gatewayd.cli.common import EXIT_USAGE
from tests.mqtt_fixtures import MOSQUITTO

needs_dbus = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="no dbus-daemon")
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHARED_DATA = Path(
    os.environ.get("GATEWAYD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
BAMI = SHARED_DATA / "bami"


def point(devices: int, offload: str, p99: float, *, lost: int = 0, **kw: Any) -> PointResult:
    fields: dict[str, Any] = {
        "devices": devices, "offload": offload, "tau_bits": None, "seconds": 10.0,
        "connected": devices, "warmup_s": 1.0, "sent": 100, "received": 100 - lost,
        "offloaded": 0, "lost": lost,
        "latency_ms": {"p50": p99 / 2, "p95": p99, "p99": p99, "max": p99},
        "processes": {}, "gateway_threads": {},
    }  # fmt: skip
    fields.update(kw)
    return PointResult(**fields)


def test_offload_mixes_parse() -> None:
    assert parse_offload("default,all,tau=3.9") == [
        OffloadMix("default", None), OffloadMix("all", 0.0), OffloadMix("tau=3.9", 3.9)
    ]  # fmt: skip
    assert OffloadMix("default", None).config_lines() == ""
    assert "tau_bits = 0.0" in OffloadMix("all", 0.0).config_lines()
    for bad in ("sometimes", "tau=x", "tau=17", ""):
        with pytest.raises(ValueError, match="offload"):
            parse_offload(bad)


def test_device_counts_parse_sorted_without_repeats() -> None:
    assert parse_devices("50,10,50") == [10, 50]
    for bad in ("0", "ten", ""):
        with pytest.raises(ValueError, match="devices"):
            parse_devices(bad)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_largest_count_stops_at_the_first_point_over_budget_or_losing() -> None:
    points = [point(10, "d", 20.0), point(50, "d", 45.0), point(100, "d", 80.0)]
    assert largest_within(points, 50.0) == 50
    assert largest_within(points, 100.0) == 100
    assert largest_within([point(10, "d", 60.0)], 50.0) is None
    assert largest_within([point(10, "d", 5.0), point(50, "d", 5.0, lost=1)], 50.0) == 10
    # Not every device connected: not a pass.
    assert largest_within([point(10, "d", 5.0, connected=9)], 50.0) is None


def test_offloaded_window_cost_is_the_slope_between_mixes() -> None:
    def usage(cores: float) -> dict[str, Usage]:
        return {"gateway": Usage(cores * 10.0, 10.0, 1, 1)}

    light = point(100, "default", 10.0, offloaded=0, processes=usage(0.1))
    heavy = point(100, "all", 10.0, offloaded=500, processes=usage(0.2))
    # 50 more offloaded windows a second cost 0.1 core: 2 ms each.
    assert offloaded_window_cost([light, heavy]) == {100: pytest.approx(2.0)}
    assert offloaded_window_cost([light]) == {}


def test_sessions_say_whether_they_are_synthetic_or_real() -> None:
    synthetic = Sessions()
    assert synthetic.kind == "synthetic"
    assert synthetic.label() == "synthetic sessions"
    assert synthetic.describe().startswith("Sessions: synthetic")
    assert synthetic.to_json()["datasets"] == []
    real = Sessions(datasets=(Path("data/bami"),), recordings=16, sources=("bami",))
    assert real.kind == "real"
    assert real.label() == "real sessions: bami"
    assert real.describe().startswith("Sessions: real recordings (bami) from data/bami (16 found)")
    assert real.to_json() == {
        "kind": "real", "datasets": ["data/bami"], "recordings": 16, "sources": ["bami"],
        "replay": "looped, each wearable from its own window",
    }  # fmt: skip
    # Files the synthetic generator wrote are synthetic, whatever folder they come from.
    assert Sessions(datasets=(Path("s"),), recordings=1, sources=("synthetic",)).kind == "synthetic"
    report = ScaleReport(
        points=[point(5, "default", 10.0, offloaded=30, sources=("bami",))], broker="b",
        environment={}, model={}, largest={}, offloaded_window_ms={}, profile={}, sessions=real,
    )  # fmt: skip
    assert real.describe() in format_markdown(report)
    assert report.to_json()["sessions"]["kind"] == "real"
    assert report.to_json()["points"][0]["sources"] == ["bami"]


def test_a_dataset_must_hold_recordings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file or folder"):
        find_sessions([tmp_path / "absent"])
    with pytest.raises(ValueError, match="no recordings found"):
        find_sessions([tmp_path])
    assert find_sessions([]) == Sessions()


def test_fewer_adapters_leave_the_wearables_beyond_their_slots_waiting(tmp_path: Path) -> None:
    mix = OffloadMix("default", None)
    for folder in ("enough", "one"):
        (tmp_path / folder).mkdir()
    enough = write_config(tmp_path / "enough", 45, mix, ("127.0.0.1", 1883)).read_text()
    assert 'adapters = ["hci0", "hci1", "hci2"]' in enough
    assert f"slots_per_adapter = {SLOTS}" in enough
    one = write_config(tmp_path / "one", 45, mix, ("127.0.0.1", 1883), adapters=1).read_text()
    assert 'adapters = ["hci0"]\n' in one
    assert not any("waiting for a slot" in n for n in run_notes(ScaleOptions()))
    (note,) = [n for n in run_notes(ScaleOptions(adapters=1)) if "waiting for a slot" in n]
    assert f"at most {SLOTS} wearables connected" in note
    # Each point says how many were connected when it was measured, in the Markdown too.
    waited = point(45, "default", 10.0, connected=20, notes=["only 20 of 45 devices connected"])
    report = ScaleReport(
        points=[point(10, "default", 5.0), waited], broker="b", environment={}, model={},
        largest={}, offloaded_window_ms={}, profile={}, sessions=Sessions(),
    )  # fmt: skip
    listed = [line for line in format_markdown(report).splitlines() if line.startswith("- ")]
    assert "- 45 wearables, offload default: only 20 of 45 devices connected" in listed
    assert not [line for line in listed if line.startswith("- 10 wearables")]


def run_bench(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "bench", "scale", "--out", str(out), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def check_artefacts(out: Path, devices: list[int], mixes: list[str]) -> dict[str, Any]:
    """Every file is there and well formed; the JSON has a point per count and mix."""
    report = json.loads((out / "scale.json").read_text(encoding="utf-8"))
    assert sorted((p["devices"], p["offload"]) for p in report["points"]) == sorted(
        (n, m) for n in devices for m in mixes
    )
    for p in report["points"]:
        assert set(p["latency_ms"]) == {"p50", "p95", "p99", "max"}
        assert {"gateway", "emulator", "bench"} <= set(p["processes"])
        assert p["windows_sent"] >= p["windows_received"] >= 0
        assert p["lost"] == p["windows_sent"] - p["windows_received"]
        for usage in p["processes"].values():
            assert set(usage) == {"cpu_s", "wall_s", "cores", "rss_mb", "peak_rss_mb"}
    assert set(report["largest_devices"]) == {"p99<=50ms", "p99<=100ms"}
    assert report["model"].get("model_id") or report["model"].get("problem")
    assert {"by_own", "by_cumulative", "devices", "threads_cpu_s"} <= set(report["profile"])
    markdown = (out / "scale.md").read_text(encoding="utf-8")
    assert markdown.startswith("# gatewayd bench scale")
    assert "| devices | offload |" in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) == 1 + len(
        report["points"]
    )
    assert "Where the gateway's time goes" in markdown
    profile = (out / "profile.txt").read_text(encoding="utf-8")
    assert profile.startswith("## Where the gateway's time goes (")
    assert "FUNCTION (by own time)" in profile
    for name in ("latency.png", "cpu.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    return report


@needs_dbus
@needs_mosquitto
@needs_proc
def test_smoke_run_writes_every_artefact(tmp_path: Path) -> None:
    out = tmp_path / "scale"
    done = run_bench(
        out, "--devices", "3", "--offload", "all", "--seconds", "5", "--profile-seconds", "4",
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = check_artefacts(out, [3], ["all"])
    assert report["sessions"]["kind"] == "synthetic"
    assert report["points"][0]["sources"] == ["synthetic"]
    assert "wrote" in done.stderr
    assert "| devices | offload |" in done.stdout
    assert "Sessions: synthetic" in done.stdout


def holds_recordings(path: Path) -> bool:
    """Whether ``path`` holds recordings (a missing folder does not)."""
    try:
        return find_sessions([path]).recordings > 0
    except ValueError:
        return False


@needs_dbus
@needs_mosquitto
@needs_proc
def test_real_recordings_make_the_default_policy_offload(tmp_path: Path) -> None:
    if not holds_recordings(BAMI):
        pytest.skip(f"BAMI recordings not found at {BAMI} (set GATEWAYD_SHARED_DATA)")
    out = tmp_path / "scale"
    done = run_bench(
        out, "--devices", "4", "--offload", "default", "--seconds", "8", "--profile-seconds", "0",
        "--dataset", str(BAMI), "--emulator-nice", "5", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "scale.json").read_text(encoding="utf-8"))
    sessions = report["sessions"]
    assert (sessions["kind"], sessions["datasets"], sessions["sources"]) == (
        "real", [str(BAMI)], ["bami"]
    )  # fmt: skip
    (p,) = report["points"]
    assert (p["devices"], p["offload"], p["connected"]) == (4, "default", 4)
    # Synthetic sessions offload none of their windows under the shipped policy; real ones do.
    assert p["windows_received"] > 0
    assert p["offload_ratio"] > 0
    assert p["lost"] == 0
    assert any("the emulator ran at nice 5" in note for note in report["notes"])
    assert "Sessions: real recordings (bami)" in (out / "scale.md").read_text(encoding="utf-8")


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    done = run_bench(tmp_path, "--offload", "sometimes", timeout=60)
    assert done.returncode == EXIT_USAGE
    assert "offload 'sometimes'" in done.stderr
    assert not (tmp_path / "scale.json").exists()
    done = run_bench(tmp_path, "--dataset", str(tmp_path / "absent"), timeout=60)
    assert done.returncode == EXIT_USAGE
    assert "--dataset" in done.stderr
    assert "no such file or folder" in done.stderr


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@needs_dbus
@needs_mosquitto
@needs_proc
def test_sigterm_stops_the_bench_and_every_process_it_started(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "bench", "scale", "--out", str(tmp_path / "scale"),
         "--devices", "3", "--offload", "all", "--seconds", "120", "--profile-seconds", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert bench.stderr is not None
    lines = []
    try:
        for line in bench.stderr:  # until the point starts
            lines.append(line)
            if "measuring" in line:
                break
        started: list[int] = []
        for _ in range(600):  # the broker, the emulator (and its bus), the gateway
            started = descendants(bench.pid)
            if len(started) >= 4:
                break
            time.sleep(0.1)
        assert len(started) >= 4, lines
        bench.terminate()
        rest = bench.communicate(timeout=120)[1]
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 143, "".join(lines) + rest
    assert "stopped by SIGTERM" in rest
    assert not [pid for pid in started if alive(pid)]
    assert not (tmp_path / "scale" / "scale.json").exists()
