"""`gatewayd eval` and `gatewayd bench`: judge and time the models and the gateway."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gatewayd.bench.paper_common import EXPERIMENTS
from gatewayd.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    config_named,
    global_options,
    models_dir_option,
    positive_int,
    usage_error,
)
from gatewayd.cli.soak import add_soak_parser
from gatewayd.config import (
    load_config,
)
from gatewayd.errors import (
    EXIT_UNAVAILABLE,
    GatewayError,
)
from gatewayd.logs import configure_logging
from gatewayd.runner import EXIT_TERMINATED, cancelled_by_sigterm


def _eval_models(args: argparse.Namespace, *, want_model: bool) -> tuple[Any, Any, Any, str]:
    """(gateway model, wearable model, baseline, note) for `gatewayd eval`, from --models-dir.

    The gateway model: --model, else the daemon's default (`[inference] model`) when installed,
    else the least pruned gateway model. The wearable model: --wearable-model (``none`` for none),
    else the shipped one at --wearable-pruning (int8 first, as the emulator picks it).
    """
    from gatewayd.config import InferenceConfig  # noqa: PLC0415
    from gatewayd.emulator.virtual import pick_wearable_model  # noqa: PLC0415
    from gatewayd.inference import InstalledModel, ModelRegistry, ModelSession  # noqa: PLC0415
    from gatewayd.signals.acc_features import LinearActivityBaseline  # noqa: PLC0415

    registry = ModelRegistry.discover(args.models_dir)
    for error in registry.errors:
        print(f"gatewayd eval: warning: {error}", file=sys.stderr)
    gateway = None
    if want_model:
        chosen: InstalledModel | None
        if args.model is not None:
            chosen = registry.get(args.model)
        else:
            default = InferenceConfig().model
            ids = {m.model_id for m in registry.all()}
            gateway_models = registry.for_role("gateway")
            chosen = (
                registry.get(default)
                if default in ids
                else (gateway_models[0] if gateway_models else None)
            )
        if chosen is not None:
            gateway = ModelSession(chosen.card, chosen.path)
    wearable = None
    if args.wearable_model != "none":
        picked = (
            registry.get(args.wearable_model)
            if args.wearable_model is not None
            else pick_wearable_model(registry, args.wearable_pruning)
        )
        if picked is not None:
            wearable = ModelSession(picked.card, picked.path)
    baseline = None
    baseline_file = registry.directory / "activity-baseline.json"
    if baseline_file.is_file():
        try:
            baseline = LinearActivityBaseline.from_dict(
                json.loads(baseline_file.read_text(encoding="utf-8"))
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"gatewayd eval: warning: {baseline_file}: {exc}", file=sys.stderr)
    return gateway, wearable, baseline, str(registry.directory)


def _eval_tables(args: argparse.Namespace, setup: Any) -> list[Any] | None:
    """Replay every recording under the paths; None (after saying why) when there is none."""
    from gatewayd.datasets import FORMATS, find_recordings, load  # noqa: PLC0415
    from gatewayd.eval import replay  # noqa: PLC0415

    sources = [source for path in args.paths for source in find_recordings(path)]
    if not sources:
        print(
            f"gatewayd eval: error: no recordings found under {', '.join(map(str, args.paths))}"
            f" (recognised: {FORMATS}; see docs/datasets.md)",
            file=sys.stderr,
        )
        return None
    tables = []
    progress = sys.stderr.isatty()
    for k, source in enumerate(sources, 1):
        if progress:
            print(f"\rgatewayd eval: {k}/{len(sources)} recordings", end="", file=sys.stderr)
        tables.append(replay(load(source), setup))
    if progress:
        print(file=sys.stderr)
    if args.windows_csv is not None:
        _write_windows_csv(args.windows_csv, tables)
    return tables


def _write_windows_csv(path: Path, tables: list[Any]) -> None:
    """--windows-csv: one row per replayed window (`gatewayd.eval.window_rows`)."""
    import csv  # noqa: PLC0415

    from gatewayd.eval import WINDOW_COLUMNS, window_rows  # noqa: PLC0415

    try:
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=WINDOW_COLUMNS)
            writer.writeheader()
            writer.writerows(window_rows(tables))
    except OSError as exc:
        raise GatewayError(f"--windows-csv {path}: {exc.strerror or exc}") from exc
    print(f"gatewayd eval: wrote {path}", file=sys.stderr)


def _eval_setup(args: argparse.Namespace, gateway: Any, wearable: Any, baseline: Any) -> Any:
    from dataclasses import replace  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from gatewayd.config import InferenceConfig  # noqa: PLC0415
    from gatewayd.eval import OutOfFold, ReplaySetup, run_temperatures  # noqa: PLC0415
    from gatewayd.inference.analysis import HrFusion  # noqa: PLC0415

    defaults = InferenceConfig()
    oof = None
    if args.oof is not None:
        try:
            with np.load(args.oof, allow_pickle=False) as arrays:
                oof = OutOfFold.from_arrays({k: arrays[k] for k in arrays.files})
        except (OSError, ValueError) as exc:
            raise GatewayError(f"{args.oof}: not out-of-fold outputs: {exc}") from exc
        # The run's own temperatures (cv.json beside oof.npz): the cards of --models-dir may be
        # another run's, whose calibration does not fit these logits.
        cv_file = Path(args.oof).parent / "cv.json"
        if cv_file.is_file():
            try:
                cv = json.loads(cv_file.read_text(encoding="utf-8"))
                temperatures = run_temperatures(cv)
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                raise GatewayError(f"{cv_file}: not a training run's cv.json: {exc}") from exc
            trained_on = cv.get("preprocessing")
            oof = replace(
                oof,
                temperatures=temperatures,
                preprocessing=trained_on if isinstance(trained_on, str) else None,
            )
    from gatewayd.rules import RulesConfig  # noqa: PLC0415

    # The rules of a config file named with --config (or $GATEWAYD_CONFIG), else the defaults:
    # an installed /etc/gatewayd file is not read, so the figures do not depend on the machine.
    # A bad file is a ConfigError that says what is wrong.
    rules = load_config(args.config, os.environ).rules if config_named(args) else RulesConfig()
    return ReplaySetup(
        rules=rules,
        out_of_fold=oof,
        wearable_model=wearable,
        gateway_model=gateway,
        tau_mbits=args.tau_mbits,
        min_conf_e4=args.min_conf_e4,
        fusion=HrFusion.of(defaults),
        baseline=baseline,
    )


def _eval_ids(
    args: argparse.Namespace, gateway: Any, wearable: Any, setup: Any
) -> dict[str, str | None]:
    """The model ids a report names; with --oof, marked as the fold models' answers, and with
    the input those models were trained on when it is not the cards' (the figures are theirs)."""
    mark = ""
    if args.oof is not None:
        oof = setup.out_of_fold
        card_input = None if gateway is None else gateway.card.input.preprocessing
        other = oof.preprocessing not in (None, card_input)
        mark = f" (out-of-fold: {args.oof}" + (
            f"; models trained on input {oof.preprocessing})" if other else ")"
        )
        if other:
            print(
                f"gatewayd eval: note: the out-of-fold answers come from models trained on"
                f" input {oof.preprocessing}, not the cards' {card_input}: the figures are"
                " those models'",
                file=sys.stderr,
            )
    return {
        "model_id": None if gateway is None else gateway.model_id + mark,
        "wearable_model_id": None if wearable is None else wearable.model_id + mark,
    }


def cmd_eval_hr(args: argparse.Namespace) -> int:
    """Heart-rate MAE of the wearable, the full model and the gateway; exit 69 if no model."""
    # Imported here: evaluation pulls in onnxruntime, the emulator and every dataset reader.
    from gatewayd.eval import (  # noqa: PLC0415
        format_fusion_sweep,
        format_hr,
        plan_estimators,
        score_hr,
        sweep_fusion,
    )

    gateway, wearable, _, where = _eval_models(args, want_model=args.estimator != "signal")
    if gateway is None and args.estimator != "signal" and (args.estimator or not args.json):
        print(
            f"gatewayd eval: {'error' if args.estimator else 'note'}: no model is installed"
            f" in {where}, so the model estimator cannot run (models ship with"
            " training/, see docs/models.md; --models-dir looks elsewhere)",
            file=sys.stderr,
        )
    estimators, missing_model = plan_estimators(args.estimator, have_model=gateway is not None)
    if not estimators:
        return EXIT_UNAVAILABLE
    setup = _eval_setup(args, gateway, wearable, None)
    tables = _eval_tables(args, setup)
    if tables is None:
        return EXIT_ERROR
    report = score_hr(
        tables,
        estimators,
        **_eval_ids(args, gateway, wearable, setup),
    )
    fusion = sweep_fusion(tables) if args.sweep and gateway is not None else None
    if args.json:
        doc = report.to_json()
        if fusion is not None:
            doc["fusion_sweep"] = fusion.to_json()
        print(json.dumps(doc, indent=2))
    else:
        print(format_hr(report))
        if fusion is not None:
            print("\n" + format_fusion_sweep(fusion))
    if missing_model:
        # Asked for both, got one: the numbers are printed, and the exit status says so.
        print("gatewayd eval: error: only the signal estimator ran (no model)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def cmd_eval_activity(args: argparse.Namespace) -> int:
    """Activity accuracy of the full model, the wearable's, the gateway's and the baselines."""
    from gatewayd.eval import format_activity, score_activity  # noqa: PLC0415

    gateway, wearable, baseline, _ = _eval_models(args, want_model=True)
    setup = _eval_setup(args, gateway, wearable, baseline)
    tables = _eval_tables(args, setup)
    if tables is None:
        return EXIT_ERROR
    report = score_activity(
        tables,
        **_eval_ids(args, gateway, wearable, setup),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_activity(report, recordings=args.recordings))
    return EXIT_OK


def cmd_eval_offload(args: argparse.Namespace) -> int:
    """Offload ratio and bad-window recall of the wearable's policy; --sweep for the curve."""
    from gatewayd.eval import (  # noqa: PLC0415
        format_offload,
        plot_offload_sweep,
        score_offload,
        sweep_offload,
    )

    gateway, wearable, _, _ = _eval_models(args, want_model=True)
    setup = _eval_setup(args, gateway, wearable, None)
    tables = _eval_tables(args, setup)
    if tables is None:
        return EXIT_ERROR
    sweep = sweep_offload(tables, target_ratio=args.target_ratio) if args.sweep else None
    report = score_offload(
        tables,
        tau_mbits=args.tau_mbits,
        min_conf_e4=args.min_conf_e4,
        **_eval_ids(args, gateway, wearable, setup),
        sweep=sweep,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_offload(report, recordings=args.recordings))
    if sweep is not None and args.png is not None:
        try:
            plot_offload_sweep(sweep, args.png)
        except ImportError:
            print("gatewayd eval: error: --png needs matplotlib (the train extra)", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"gatewayd eval: wrote {args.png}", file=sys.stderr)
    return EXIT_OK


def cmd_bench_models(args: argparse.Namespace) -> int:
    """Size, cost, latency and accuracy of every shipped model beside the paper's Table 1."""
    # Imported here: benchmarking pulls in onnxruntime.
    from gatewayd.bench.models import bench_models, format_bench  # noqa: PLC0415
    from gatewayd.inference import ModelRegistry  # noqa: PLC0415

    registry = ModelRegistry.discover(args.models_dir)
    for error in registry.errors:
        print(f"gatewayd bench: warning: {error}", file=sys.stderr)
    if not registry.all():
        print(
            f"gatewayd bench models: no models installed in {registry.directory}: nothing to"
            " measure (models ship with training/, see docs/models.md)",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    report = bench_models(registry.all(), runs=args.runs, batch=args.batch)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_bench(report))
    return EXIT_OK


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    """The whole pipeline per window beside the bare model (docs/benchmarks.md), synthetic data."""
    # Imported here: benchmarking pulls in onnxruntime, the store, aiomqtt and the emulator.
    from gatewayd.bench.pipeline import (  # noqa: PLC0415
        bench_broker,
        bench_pipeline,
        find_model,
        format_pipeline_bench,
        format_repeated,
        repeated_ratios,
    )
    from gatewayd.config import default_config  # noqa: PLC0415

    # The config file when there is one (its inference, rules and store settings), else the
    # embedded defaults; never its [mqtt]: the benchmark publishes to --mqtt-host or a broker
    # of its own, not to the production broker.
    config = (
        load_config(args.config, os.environ)
        if config_named(args) or Path(args.config).is_file()
        else default_config()
    )
    # Errors only unless asked: a flood fills the inference queue on purpose, and its
    # warnings (and an INFO line per alert) would bury the report.
    configure_logging(args.log_level or "error", args.log_format or config.logging.format)
    if args.devices > args.windows:
        return usage_error(
            "bench pipeline", f"--devices {args.devices} exceeds --windows {args.windows}"
        )
    if args.max_batch is not None:
        inference = config.inference.model_copy(update={"max_batch": args.max_batch})
        config = config.model_copy(update={"inference": inference})
    model, problem = find_model(config, args.models_dir)
    if model is None:
        print(
            f"gatewayd bench pipeline: no gateway model to measure: {problem} (models ship with"
            " training/, see docs/models.md)",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE

    def progress(text: str) -> None:
        if not args.json:
            print(f"gatewayd bench pipeline: {text}", file=sys.stderr)

    async def run() -> list[Any]:
        reports = []
        async with bench_broker(args.mqtt_host, args.mqtt_port) as broker:
            progress(broker.note)
            for k in range(args.repeat):
                if args.repeat > 1:
                    progress(f"run {k + 1} of {args.repeat}")
                reports.append(
                    await bench_pipeline(
                        config,
                        model,
                        windows=args.windows,
                        devices=args.devices,
                        host=broker.host,
                        port=broker.port,
                        broker=f"{broker.kind} {broker.host}:{broker.port}",
                        progress=progress,
                    )
                )
        return reports

    reports = asyncio.run(run())
    if args.repeat == 1:
        doc: Any = reports[0].to_json()
        text = format_pipeline_bench(reports[0])
    else:
        doc = {"runs": [r.to_json() for r in reports], "ratio_cpu": repeated_ratios(reports)}
        text = format_repeated(reports)
    print(json.dumps(doc, indent=2) if args.json else text)
    return EXIT_OK


def cmd_bench_scale(args: argparse.Namespace) -> int:
    """Sweep real-time wearables x offload mixes: latency, CPU, RSS, loss; JSON, Markdown, PNG."""
    # Imported here: the bench pulls in aiomqtt, the emulator and (for plots) matplotlib.
    from dataclasses import replace  # noqa: PLC0415

    from gatewayd.bench.scale import (  # noqa: PLC0415
        QUICK,
        ScaleOptions,
        bench_scale,
        find_sessions,
        parse_devices,
        parse_offload,
        write_outputs,
    )

    base = QUICK if args.quick else ScaleOptions()
    try:
        options = replace(
            base,
            devices=tuple(parse_devices(args.devices)) if args.devices else base.devices,
            offload=tuple(parse_offload(args.offload)) if args.offload else base.offload,
            seconds=base.seconds if args.seconds is None else args.seconds,
            profile_seconds=(
                base.profile_seconds if args.profile_seconds is None else args.profile_seconds
            ),
            out=args.out,
            models_dir=args.models_dir,
            mqtt_host=args.mqtt_host,
            mqtt_port=args.mqtt_port,
            seed=args.seed,
            datasets=tuple(args.dataset or ()),
            emulator_nice=args.emulator_nice,
            adapters=args.adapters,
        )
        find_sessions(options.datasets)  # a --dataset without recordings stops here
    except ValueError as exc:
        return usage_error("bench scale", str(exc))
    configure_logging(args.log_level or "error", args.log_format or "auto")

    def say(text: str) -> None:
        print(f"gatewayd bench scale: {text}", file=sys.stderr, flush=True)

    try:
        report = asyncio.run(cancelled_by_sigterm(bench_scale(options, say=say)))
    except asyncio.CancelledError:
        say("stopped by SIGTERM; its processes are stopped, nothing written")
        return EXIT_TERMINATED
    try:
        written = write_outputs(report, options.out, sys.stdout)
    except ImportError:
        print("gatewayd bench scale: error: the plots need matplotlib (the bench extra)",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNAVAILABLE
    for path in written:
        say(f"wrote {path}")
    return EXIT_OK if report.points else EXIT_ERROR


def _experiments(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: not one of {', '.join(EXPERIMENTS)}"
        )
    return names


def cmd_bench_paper(args: argparse.Namespace) -> int:
    """The paper's experiments on our system (docs/paper.md): JSON, Markdown and PNG each."""
    # Imported here: the bench pulls in onnxruntime, the emulator and (for plots) matplotlib.
    from gatewayd.bench.paper import PaperOptions, check_options, run_paper  # noqa: PLC0415

    options = PaperOptions(
        out=args.out,
        data=tuple(args.data or ()),
        quick=args.quick,
        models_dir=args.models_dir,
        run=args.run,
        arch_runs=tuple(args.arch_run or ()),
        only=frozenset(args.only or ()),
    )
    try:
        check_options(options)
    except ValueError as exc:
        return usage_error("bench paper", str(exc))
    configure_logging(args.log_level or "error", args.log_format or "auto")
    try:
        report = run_paper(options)
    except ImportError:
        print("gatewayd bench paper: error: the plots need matplotlib (the bench extra)",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.index_markdown(), end="")
    return EXIT_OK if report.artefacts else EXIT_UNAVAILABLE


def _eval_common(p: argparse.ArgumentParser) -> None:
    from gatewayd.signals.offload import DEFAULT_MIN_CONF_E4, DEFAULT_TAU_MBITS  # noqa: PLC0415

    global_options(p, suppress=True)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="recordings or folders")
    p.add_argument("--model", metavar="ID", help="gateway model id (default: [inference] model)")
    p.add_argument(
        "--wearable-model",
        metavar="ID",
        help="the wearable's model id, or 'none' (default: the shipped one at --wearable-pruning)",
    )
    p.add_argument(
        "--wearable-pruning",
        type=int,
        default=40,
        metavar="PCT",
        help="pruning level of the wearable's model (40, as the emulated wearable)",
    )
    p.add_argument(
        "--tau-mbits",
        type=int,
        default=DEFAULT_TAU_MBITS,
        help=f"the wearables' entropy threshold (default {DEFAULT_TAU_MBITS})",
    )
    p.add_argument(
        "--min-conf-e4",
        type=int,
        default=DEFAULT_MIN_CONF_E4,
        help=f"the wearables' minimum confidence, 1/10000 (default {DEFAULT_MIN_CONF_E4})",
    )
    models_dir_option(p)
    p.add_argument(
        "--oof",
        type=Path,
        metavar="FILE",
        help="a training run's out-of-fold outputs (oof.npz): score the models' cards with the"
        " answers of fold models that never saw the subject, on the windows it covers",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/eval.md)")
    p.add_argument(
        "--windows-csv",
        type=Path,
        metavar="FILE",
        help="also write one CSV row per replayed window: the reference, what the wearable and"
        " the gateway said, the offload decision (docs/eval.md)",
    )


def add_eval_parser(evaluate: argparse.ArgumentParser) -> None:
    what = evaluate.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    hr = what.add_parser(
        "hr",
        help="heart-rate MAE per recording: the wearable, the full model, the gateway",
        description="Replays each recording through the emulated wearable and the gateway's"
        " per-window path (docs/eval.md) and reports the heart-rate MAE against the reference"
        " of the wearable's tracker (signal), the full model on every window (model) and what"
        " the gateway reports (gateway), on the same windows. Exit 69 when a model is asked for"
        " and none is installed (with `both`, after printing the signal results).",
    )
    _eval_common(hr)
    hr.set_defaults(func=cmd_eval_hr)
    hr.add_argument(
        "--estimator",
        choices=("signal", "model", "both"),
        default=None,
        help="what to evaluate (default: all three if a model is installed, else signal and"
        " gateway)",
    )
    hr.add_argument(
        "--sweep", action="store_true", help="also compare the HR fusion rules, held out"
    )
    activity = what.add_parser(
        "activity",
        help="activity accuracy: full model, wearable, gateway and baselines",
        description="Group (rest/light/vigorous) and rest-vs-moving accuracy on windows with a"
        " known activity group, for the full model, the wearable's pruned model, what the"
        " gateway reports, the majority, the ACC threshold and the shipped feature baseline.",
    )
    _eval_common(activity)
    activity.set_defaults(func=cmd_eval_activity)
    activity.add_argument("--recordings", action="store_true", help="also one row per recording")
    offload = what.add_parser(
        "offload",
        help="offload ratio and bad-window recall of the wearable's policy",
        description="The share of windows the wearable offloads and the share of bad local"
        " windows (its HR > 10 bpm off, or its group wrong) it offloads; --sweep gives the"
        " trade-off curve and the policy chosen leave-one-subject-out.",
    )
    _eval_common(offload)
    offload.set_defaults(func=cmd_eval_offload)
    offload.add_argument("--recordings", action="store_true", help="also one row per recording")
    offload.add_argument("--sweep", action="store_true", help="sweep tau and the confidence")
    offload.add_argument(
        "--target-ratio",
        type=float,
        default=0.35,
        help="offload ratio the sweep must stay under (0.35)",
    )
    offload.add_argument("--png", type=Path, metavar="FILE", help="with --sweep: write the curves")


def add_bench_parser(bench: argparse.ArgumentParser) -> None:
    what = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    models = what.add_parser(
        "models",
        help="size, MACs, latency and accuracy of the shipped models beside the paper",
        description="Size, params, MACs, ONNX Runtime latency (batch 1, one thread) and"
        " throughput of every shipped model, its card's held-out accuracy, and the paper's"
        " Table 1, as ratios to each side's unpruned model. Exit 69 with no models.",
    )
    global_options(models, suppress=True)
    models.set_defaults(func=cmd_bench_models)
    models.add_argument(
        "--runs", type=positive_int, default=200, help="timed runs per measurement (200)"
    )
    models.add_argument(
        "--batch", type=positive_int, default=32, help="batch size for throughput (32)"
    )
    models_dir_option(models)
    models.add_argument("--json", action="store_true", help="print one JSON object")
    pipeline = what.add_parser(
        "pipeline",
        help="the whole pipeline per window (decode to publish) beside the bare model",
        description="Per-window wall and CPU time of the whole pipeline (decode, inference,"
        " rules, SQLite log, MQTT publish) on synthetic offloaded windows, of the configured"
        " model alone (batch 1, one thread) and of each part alone, in one run; prints the"
        " ratio pipeline / model. Publishes to --mqtt-host, else a private mosquitto, else an"
        " in-process broker. Exit 69 with no model.",
    )
    global_options(pipeline, suppress=True)
    pipeline.set_defaults(func=cmd_bench_pipeline)
    pipeline.add_argument(
        "--windows", type=positive_int, default=2000, help="offloaded windows in all (2000)"
    )
    pipeline.add_argument(
        "--devices", type=positive_int, default=8, help="emulated wearables sharing them (8)"
    )
    pipeline.add_argument("--mqtt-host", metavar="H", help="publish to this broker")
    pipeline.add_argument("--mqtt-port", metavar="P", type=positive_int, help="its port (1883)")
    pipeline.add_argument(
        "--max-batch",
        type=positive_int,
        metavar="B",
        help="override [inference] max_batch for the pipeline (default: the config's)",
    )
    pipeline.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="measure N times in a row and print each run and the median of their ratios (1)",
    )
    models_dir_option(pipeline)
    pipeline.add_argument("--json", action="store_true", help="print one JSON object")
    scale = what.add_parser(
        "scale",
        help="how many real-time wearables one gateway serves: latency, CPU, RSS, loss",
        description="Runs the emulator (its own process, wearables staggered as real ones),"
        " the gateway (`gatewayd run`) and a broker, for each device count and offload mix;"
        " reports p50/p95/p99 notify->publish latency, windows/s, the CPU and RSS of the"
        " gateway beside the emulator's, the bus's and the broker's, and loss; finds the"
        " largest count at p99 <= 50 ms and <= 100 ms and profiles the gateway there."
        " Writes scale.json, scale.md, latency.png, cpu.png and profile.txt to --out.",
    )
    global_options(scale, suppress=True)
    scale.set_defaults(func=cmd_bench_scale)
    scale.add_argument(
        "--devices", metavar="N,N", help="device counts (10,50,100,300,500; --quick 5,20,50)"
    )
    scale.add_argument(
        "--offload",
        metavar="MIX,MIX",
        help="offload mixes: default (the shipped policy), all (tau 0: every window offloaded),"
        " tau=BITS (default,tau=3.9,all: tau 3.9 offloads about half the synthetic windows;"
        " --quick default,all)",
    )
    scale.add_argument(
        "--seconds", type=float, metavar="S", help="measured seconds per point (60; --quick 20)"
    )
    scale.add_argument(
        "--profile-seconds",
        type=float,
        metavar="S",
        help="seconds of the profiled run, 0 for none (30; --quick 15)",
    )
    scale.add_argument(
        "--out", type=Path, default=Path("bench-results/scale"), metavar="DIR",
        help="where to write the results (bench-results/scale)",
    )  # fmt: skip
    scale.add_argument(
        "--quick", action="store_true", help="a reduced sweep of a few minutes (make bench)"
    )
    scale.add_argument(
        "--dataset",
        type=Path,
        action="append",
        metavar="PATH",
        help="replay these real recordings (a file or folder of any set `gatewayd emulate"
        " --dataset` reads; repeatable) instead of synthetic sessions: dealt round-robin, each"
        " wearable looping from its own window of its recording",
    )
    scale.add_argument(
        "--seed", type=int, default=1, help="seed of the synthetic data, stagger and replay (1)"
    )
    scale.add_argument(
        "--emulator-nice",
        type=int,
        choices=range(20),
        default=0,
        metavar="N",
        help="run the emulator at niceness N (0-19; 0: the gateway's priority): real wearables"
        " compute on their own MCUs, not on the gateway's cores",
    )
    scale.add_argument(
        "--adapters",
        type=positive_int,
        metavar="K",
        help="emulate and configure K adapters of 20 slots (default: enough for every"
        " wearable); with fewer, the wearables beyond the slots advertise and wait for one",
    )
    scale.add_argument("--mqtt-host", metavar="H", help="publish to this broker")
    scale.add_argument("--mqtt-port", metavar="P", type=positive_int, help="its port (1883)")
    models_dir_option(scale)
    paper = what.add_parser(
        "paper",
        help="the paper's Table 1 and Figures 3 to 6 on our system (docs/paper.md)",
        description="Table 1 (the wearable's models pruned 0-80 %, fp32 and int8: size, MACs,"
        " latency here, modelled Cortex-M4F latency and energy, the cards' held-out accuracy,"
        " ratios beside the paper's), Figure 3 (1D SqueezeNet, ShuffleNetV2 and"
        " EfficientNet-Lite0 beside MobileNetV2-1D, from --arch-run folders: size, latency"
        " here, modelled energy per inference, held-out accuracy and HR MAE), Figure 4"
        " (robustness by activity: every session with PPG"
        " replayed once in real time through the emulator, BLE and the gateway; per activity"
        " label and group the accuracy and HR MAE of what the gateway published beside local"
        " only, the notify -> publish latency, the share offloaded and the wearable's"
        " energy; with --run's fold models, each session by the fold that held its subject"
        " out), Figure 5 (the wearable's energy, local-only against"
        " edge-assisted, over a sweep of tau and the minimum confidence, from the emulated"
        " wearable's decisions; with --run's oof.npz and real --data, held out, with the"
        " accuracy cost of each point) and Figure 6 (training loss curves of --run). Each is"
        " written to --out as JSON, Markdown and PNG; paper.json and paper.md index them and"
        " name what is not run and why. Exit 69 when nothing was"
        " produced.",
    )
    global_options(paper, suppress=True)
    paper.set_defaults(func=cmd_bench_paper)
    paper.add_argument(
        "--out", type=Path, default=Path("bench-results/paper"), metavar="DIR",
        help="where to write the results (bench-results/paper)",
    )  # fmt: skip
    paper.add_argument(
        "--data",
        type=Path,
        action="append",
        metavar="PATH",
        help="replay these recordings in Figures 4 and 5 (a file or folder of any set gatewayd"
        " reads; repeatable) instead of synthetic sessions",
    )
    paper.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a minute or two: fewer timed runs, 3 short synthetic sessions"
        " (Figure 4 replays them at 10x real time), and without --run a tiny training run of"
        " its own for Figure 6 (when PyTorch is here)",
    )
    paper.add_argument(
        "--run",
        type=Path,
        metavar="DIR",
        help="a gatewayd-train --out folder: Figure 6 from its history.json (and cv.json);"
        " with its oof.npz, Figure 5's decisions on the --data recordings it covers are held"
        " out and each point has its accuracy cost; with its fold models (--export-folds),"
        " Figure 4 replays each --data session by the models of the fold that held its"
        " subject out",
    )
    paper.add_argument(
        "--arch-run",
        type=Path,
        action="append",
        metavar="DIR",
        help="Figure 3: a gatewayd-train --arch NAME --cv-only --out folder (its cv.json and"
        " architecture.onnx), one per network; repeatable. --quick without it trains a tiny"
        " run of each network itself",
    )
    paper.add_argument(
        "--only",
        type=_experiments,
        metavar="LIST",
        help=f"run only these, comma-separated: {', '.join(EXPERIMENTS)} (default: all)",
    )
    models_dir_option(paper)
    paper.add_argument("--json", action="store_true", help="print paper.json instead of paper.md")
    add_soak_parser(what)
