"""`gatewayd bench pipeline`: the report's structure and invariants on a small run, no timing.

The run is real (the shipped model, SQLite, mosquitto); only the figures' shape and the counts
are checked: every window decoded, analysed, stored and published, the ratios as reported.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from pathlib import Path

import aiomqtt
import pytest

from gatewayd.bench.pipeline import (
    GATEWAY_ID,
    TOPIC_ROOT,
    Cost,
    PipelineBench,
    arrival,
    bench_pipeline,
    find_model,
    format_pipeline_bench,
    latency,
    split_windows,
)
from gatewayd.cli import main
from gatewayd.config import default_config
from gatewayd.errors import EXIT_UNAVAILABLE, EXIT_USAGE
from gatewayd.inference.registry import InstalledModel
from tests.mqtt_fixtures import Broker, needs_mosquitto

pytest_plugins = ["tests.mqtt_fixtures"]

PARTS = {"decode", "preprocess", "signal_hr", "rules", "store", "publish"}
ASIDES = {
    "preprocess_window",
    "signal_hr_every_window",
    "model_at_pipeline_batch",
    "worker_at_pipeline_batch",
}


# --- pure helpers -------------------------------------------------------------------------------


def test_latency_is_median_and_nearest_rank_p95_in_ms() -> None:
    got = latency([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert got.median_ms == pytest.approx(50.5)
    assert got.p95_ms == pytest.approx(95.0)
    one = latency([0.002])
    assert one.median_ms == one.p95_ms == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no times"):
        latency([])


def test_split_windows_shares_evenly_first_devices_get_more() -> None:
    assert split_windows(20, 2) == [10, 10]
    assert split_windows(7, 3) == [3, 2, 2]
    assert sum(split_windows(2000, 8)) == 2000
    with pytest.raises(ValueError, match="cannot share"):
        split_windows(2, 3)
    with pytest.raises(ValueError, match=">= 1"):
        split_windows(0, 1)


def test_cost_per_window_and_zero_windows() -> None:
    cost = Cost(windows=4, wall_s=0.008, cpu_s=0.004)
    assert cost.wall_ms == pytest.approx(2.0)
    assert cost.cpu_ms == pytest.approx(1.0)
    assert math.isnan(Cost(0, 1.0, 1.0).cpu_ms)


def test_a_window_arrives_at_its_end_one_step_after_the_one_before() -> None:
    # As live: 8 s windows every 2 s, so the rules take 2 s of new samples from each.
    assert [arrival(100.0, i) for i in range(3)] == [108.0, 110.0, 112.0]


# --- a real run ---------------------------------------------------------------------------------


def _model() -> InstalledModel:
    model, problem = find_model(default_config(), None)
    if model is None:
        pytest.skip(f"no gateway model installed: {problem}")
    return model


def check_report(doc: dict[str, object], windows: int, devices: int) -> None:
    """Invariants of one report (JSON form): every window went through, figures consistent."""
    assert "synthetic" in str(doc["data"])
    assert doc["windows"] == windows
    assert doc["devices"] == devices
    counts = doc["counts"]
    assert isinstance(counts, dict)
    for key in (
        "windows_decoded",
        "windows_offloaded",
        "windows_stored",
        "inference_windows",
        "telemetry_published",
    ):
        assert counts[key] == windows, key
    assert counts["telemetry_dropped"] == 0
    assert counts["alerts_published"] == counts["alerts"]
    for key in ("pipeline_errors", "decode_rejected", "messages_lost", "model_failures"):
        assert counts[key] == 0, key
    assert 1 <= counts["largest_batch"] <= 16
    assert counts["inference_batches"] >= math.ceil(windows / counts["largest_batch"])
    assert isinstance(doc["fragments"], int)
    assert doc["fragments"] >= windows

    model, pipeline, ratio = doc["model"], doc["pipeline"], doc["ratio"]
    assert isinstance(model, dict)
    assert isinstance(pipeline, dict)
    assert isinstance(ratio, dict)
    assert model["batch"] == 1
    costs = (model, pipeline, doc["model_batched"], *doc["parts"].values(), *doc["asides"].values())  # type: ignore[attr-defined]
    for cost in costs:
        assert cost["windows"] == windows
        assert cost["wall_s"] > 0
        assert cost["cpu_ms_per_window"] == pytest.approx(1e3 * cost["cpu_s"] / windows)
        assert cost["wall_ms_per_window"] == pytest.approx(1e3 * cost["wall_s"] / windows)
    assert 0 < model["median_ms"] <= model["p95_ms"]
    assert ratio["cpu"] == pytest.approx(pipeline["cpu_ms_per_window"] / model["cpu_ms_per_window"])
    assert ratio["wall"] == pytest.approx(
        pipeline["wall_ms_per_window"] / model["wall_ms_per_window"]
    )
    parts = doc["parts"]
    assert isinstance(parts, dict)
    assert set(parts) == PARTS
    # The asides are measured beside the parts and not counted in the pipeline's work.
    assert set(doc["asides"]) == ASIDES  # type: ignore[arg-type]
    # The gateway's tracker runs on windows without the wearable's HR: the synthetic wearable
    # sends its own on every window.
    assert 0 <= counts["signal_hr_windows"] <= windows
    assert counts["pipeline_mean_batch"] == max(
        1, round(counts["inference_windows"] / counts["inference_batches"])
    )
    env = doc["environment"]
    assert isinstance(env, dict)
    assert {"cpu", "simd", "onnxruntime", "threads", "pipeline_threads"} <= set(env)
    rest = doc["unattributed"]
    assert isinstance(rest, dict)
    explained = doc["model_batched"]["cpu_s"] + sum(p["cpu_s"] for p in parts.values())  # type: ignore[index]
    assert rest["cpu_s"] == pytest.approx(pipeline["cpu_s"] - explained)
    assert isinstance(doc["peak_rss_mb"], float)
    assert doc["peak_rss_mb"] > 0


async def _count_telemetry(host: str, port: int, seen: list[str], ready: asyncio.Event) -> None:
    async with aiomqtt.Client(host, port, identifier="bench-pipeline-test-sub") as client:
        await client.subscribe(f"{TOPIC_ROOT}/{GATEWAY_ID}/devices/+/telemetry", qos=0)
        ready.set()
        async for message in client.messages:
            seen.append(str(message.topic))


@pytest.mark.asyncio
async def test_every_window_goes_through_and_reaches_the_broker(
    mosquitto_broker: Broker,
) -> None:
    model = await asyncio.to_thread(_model)
    seen: list[str] = []
    ready = asyncio.Event()
    subscriber = asyncio.create_task(
        _count_telemetry(mosquitto_broker.host, mosquitto_broker.port, seen, ready)
    )
    try:
        await ready.wait()
        report: PipelineBench = await bench_pipeline(
            default_config(),
            model,
            windows=20,
            devices=2,
            host=mosquitto_broker.host,
            port=mosquitto_broker.port,
            broker="test mosquitto",
        )
        async with asyncio.timeout(10):
            while len(seen) < 20:  # noqa: ASYNC110 - QoS 0 arrives shortly after it is sent
                await asyncio.sleep(0.02)
    finally:
        subscriber.cancel()
        await asyncio.gather(subscriber, return_exceptions=True)
    doc = report.to_json()
    check_report(json.loads(json.dumps(doc)), windows=20, devices=2)
    assert report.model_id == model.model_id
    assert sorted(set(seen)) == [
        f"{TOPIC_ROOT}/{GATEWAY_ID}/devices/bench-w000/telemetry",
        f"{TOPIC_ROOT}/{GATEWAY_ID}/devices/bench-w001/telemetry",
    ]
    assert len(seen) == 20
    text = format_pipeline_bench(report)
    assert "whole pipeline" in text
    assert "synthetic" in text
    assert f"CPU {report.ratio_cpu:.2f}x" in text
    assert report.environment["simd"] in text
    assert f"onnxruntime {report.environment['onnxruntime']}" in text
    assert "preprocess_window, one window at a time" in text


@needs_mosquitto
def test_cli_json_with_its_own_private_mosquitto(capsys: pytest.CaptureFixture[str]) -> None:
    _model()
    argv = ["bench", "pipeline", "--windows", "6", "--devices", "3", "--max-batch", "4", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    check_report(doc, windows=6, devices=3)
    assert str(doc["broker"]).startswith("private-mosquitto 127.0.0.1:")
    assert doc["counts"]["largest_batch"] <= 4
    assert doc["model_batched"]["batch"] == 4
    assert err == ""


@needs_mosquitto
def test_cli_repeat_reports_every_run_and_the_median_of_their_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _model()
    argv = ["bench", "pipeline", "--windows", "6", "--devices", "3", "--max-batch", "4"]
    assert main([*argv, "--repeat", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["runs"]) == 3
    for run in doc["runs"]:
        check_report(run, windows=6, devices=3)
    ratios = [run["ratio"]["cpu"] for run in doc["runs"]]
    assert doc["ratio_cpu"]["runs"] == ratios
    assert doc["ratio_cpu"]["median"] == statistics.median(ratios)
    assert (doc["ratio_cpu"]["min"], doc["ratio_cpu"]["max"]) == (min(ratios), max(ratios))
    assert main([*argv, "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "## Run 1 of 2" in out
    assert "## Run 2 of 2" in out
    assert "each within its own run" in out
    assert "over 2 runs" in out


def test_cli_without_the_model_exits_69(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "pipeline", "--windows", "2", "--devices", "1", "--models-dir", str(tmp_path)]
    assert main(argv) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == ""
    assert "no gateway model to measure" in err


def test_cli_more_devices_than_windows_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "pipeline", "--windows", "2", "--devices", "3"]) == EXIT_USAGE
    assert "--devices 3 exceeds --windows 2" in capsys.readouterr().err
