"""`gatewayd bench paper`: the paper's experiments reproduced on our system (docs/paper.md).

This slice runs Table 1 (`paper_table1`), Figure 5 (`paper_energy`) and Figure 6
(`paper_loss`); Figures 3 and 4 are not built yet (`NOT_RUN`), and every report says so. Each
artefact is written to the output folder as JSON, a Markdown table and a PNG as soon as it is
done; paper.json and paper.md index them. Blocks (models are timed, sessions replayed).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from gatewayd.bench.models import bench_environment, bench_one
from gatewayd.bench.paper_energy import (
    SessionWindows,
    WindowCosts,
    format_energy,
    plot_energy,
    replay_session,
    sweep_energy,
)
from gatewayd.bench.paper_loss import (
    TINY_TRAINING_ARGS,
    LossFigure,
    format_losses,
    plot_losses,
    read_run,
    tiny_training_run,
    training_available,
)
from gatewayd.bench.paper_table1 import format_table1, plot_table1, table1
from gatewayd.datasets import DatasetError, Recording, find_recordings, generate_recording, load
from gatewayd.emulator.virtual import pick_wearable_model
from gatewayd.inference import InstalledModel, ModelRegistry, ModelSession

__all__ = [
    "NOT_RUN",
    "PaperOptions",
    "PaperReport",
    "Progress",
    "check_options",
    "run_paper",
]

#: The paper's experiments this command does not run yet, and what they are.
NOT_RUN: Final = {
    "fig3": "Figure 3, lightweight networks compared (1D SqueezeNet, ShuffleNetV2 and"
    " EfficientNet-Lite0 beside MobileNetV2-1D): not built yet",
    "fig4": "Figure 4, robustness by activity (accuracy, HR MAE, end-to-end latency and energy"
    " per activity group, real sessions through the emulator, BLE and the gateway): not built"
    " yet",
}
#: The wearable's model in Figure 5: the emulated wearable's default pruning (int8 first).
WEARABLE_PRUNING: Final = 40
#: Synthetic sessions when no --data is given: (subjects, minutes each); seed.
SYNTHETIC_SESSIONS: Final = (8, 15.0)
QUICK_SYNTHETIC_SESSIONS: Final = (3, 5.0)
SYNTHETIC_SEED: Final = 1
#: Timed runs per model (batch 1) and the throughput batch, as `bench models` measures.
RUNS, QUICK_RUNS = 200, 20
BATCH, QUICK_BATCH = 32, 8


@dataclass(frozen=True)
class PaperOptions:
    """What to run and where to write."""

    out: Path = Path("bench-results/paper")
    data: tuple[Path, ...] = ()
    quick: bool = False
    models_dir: Path | None = None
    #: A gatewayd-train --out folder (its history.json and cv.json) for Figure 6.
    run: Path | None = None


class Progress:
    """A progress bar on stderr when it is a terminal; else one line per new stage."""

    def __init__(self, total: int, stream: IO[str] | None = None, *, bar: bool | None = None):
        self.total = max(1, total)
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        self.bar = (
            bar
            if bar is not None
            else self.stream.isatty() and not os.environ.get("GATEWAYD_NO_PROGRESS")
        )
        self._stage = ""

    def step(self, stage: str, detail: str = "") -> None:
        """Count one unit of work done in ``stage``."""
        self.done = min(self.total, self.done + 1)
        if self.bar:
            filled = round(24 * self.done / self.total)
            text = f"{stage}: {detail}" if detail else stage
            self.stream.write(
                f"\r\x1b[Kgatewayd bench paper [{'#' * filled}{'.' * (24 - filled)}]"
                f" {self.done}/{self.total} {text[:60]}"
            )
            if self.done == self.total:
                self.stream.write("\n")
        elif stage != self._stage:
            self.stream.write(f"gatewayd bench paper: {stage} ({self.done}/{self.total})\n")
        self._stage = stage
        self.stream.flush()

    def say(self, text: str) -> None:
        """A line that stays (after clearing the bar)."""
        self.stream.write(("\r\x1b[K" if self.bar else "") + f"gatewayd bench paper: {text}\n")
        self.stream.flush()


@dataclass
class PaperReport:
    """What was produced: each artefact's JSON, the files written, and what was not run."""

    options: PaperOptions
    environment: dict[str, str]
    sessions: dict[str, Any] = field(default_factory=dict)
    artefacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=lambda: dict(NOT_RUN))

    def to_json(self) -> dict[str, Any]:
        """The index (paper.json)."""
        return {
            "command": "gatewayd bench paper",
            "quick": self.options.quick,
            "data": [str(d) for d in self.options.data],
            "run": None if self.options.run is None else str(self.options.run),
            "environment": self.environment,
            "sessions": self.sessions,
            "artefacts": {k: self.files.get(k, []) for k in self.artefacts},
            "not_run": self.not_run,
        }

    def index_markdown(self) -> str:
        """paper.md: what was run, every table, and what was not run."""
        lines = [
            "# gatewayd bench paper",
            "",
            "The paper's experiments on our system (docs/paper.md)"
            + (" -- a --quick run" if self.options.quick else "")
            + ".",
            "",
        ]
        for key in self.artefacts:
            lines += [self.markdown.get(key, ""), ""]
        lines += ["## Not run", ""]
        lines += [f"- {text}" for text in self.not_run.values()]
        return "\n".join(lines).rstrip() + "\n"


def check_options(options: PaperOptions) -> None:
    """Check --data and --run before any work: ValueError naming the problem. Blocks (lists
    folders, reads nothing big)."""
    for path in options.data:
        try:
            sources = find_recordings(path)
        except DatasetError as exc:
            raise ValueError(f"--data {path}: {exc.message}") from None
        if not sources:
            raise ValueError(f"--data {path}: no recordings found")
    if options.run is not None and not (options.run / "history.json").is_file():
        raise ValueError(f"--run {options.run}: no history.json (a gatewayd-train --out folder)")


def _table_models(registry: ModelRegistry) -> list[InstalledModel]:
    """The wearable's family: the shipped models of the wearable models' architecture and
    width (the unpruned ones included), or every model when no wearable model is installed."""
    wearable = {
        (m.card.architecture, m.card.width_multiplier) for m in registry.for_role("wearable")
    }
    models = registry.all()
    return [
        m
        for m in models
        if not wearable or (m.card.architecture, m.card.width_multiplier) in wearable
    ]


def _sessions(options: PaperOptions) -> tuple[list[Recording], dict[str, Any]]:
    if not options.data:
        subjects, minutes = QUICK_SYNTHETIC_SESSIONS if options.quick else SYNTHETIC_SESSIONS
        recordings = [
            generate_recording(i, minutes, SYNTHETIC_SEED) for i in range(1, subjects + 1)
        ]
        return recordings, {
            "kind": "synthetic",
            "describe": f"synthetic sessions (gatewayd.datasets.synthetic, a model of wrist PPG"
            f" and motion, not a measurement): {subjects} subjects x {minutes:g} min, seed"
            f" {SYNTHETIC_SEED}",
            "label": "synthetic sessions",
            "datasets": [],
            "sources": ["synthetic"],
            "recordings": len(recordings),
        }
    recordings = [load(s) for path in options.data for s in find_recordings(path)]
    sources = sorted({r.source for r in recordings})
    kind = "synthetic" if sources == ["synthetic"] else "real"
    where = ", ".join(str(d) for d in options.data)
    return recordings, {
        "kind": kind,
        "describe": f"{kind} recordings from {where}: {len(recordings)} ({', '.join(sources)})",
        "label": f"{kind} sessions: {', '.join(sources)}",
        "datasets": [str(d) for d in options.data],
        "sources": sources,
        "recordings": len(recordings),
    }


def _in_sample(recordings: Sequence[Recording], model: InstalledModel) -> int:
    """How many measured recordings are of subjects the model was trained on (its card)."""
    ids = model.card.training.subject_ids
    return sum(
        1 for r in recordings if r.source != "synthetic" and r.subject in ids.get(r.source, [])
    )


@dataclass(frozen=True)
class _Artefact:
    key: str
    doc: dict[str, Any]
    markdown: str
    plot: Callable[[Path], Path]


def _write(report: PaperReport, artefact: _Artefact, progress: Progress) -> None:
    out = report.options.out
    out.mkdir(parents=True, exist_ok=True)
    key = artefact.key
    paths = [out / f"{key}.json", out / f"{key}.md"]
    paths[0].write_text(json.dumps(artefact.doc, indent=1) + "\n", encoding="utf-8")
    paths[1].write_text(artefact.markdown, encoding="utf-8")
    paths.append(artefact.plot(out / f"{key}.png"))
    report.artefacts[key] = artefact.doc
    report.markdown[key] = artefact.markdown
    report.files[key] = [str(p) for p in paths]
    for p in paths:
        progress.say(f"wrote {p}")


def _table1(report: PaperReport, models: Sequence[InstalledModel], progress: Progress) -> None:
    runs, batch = (QUICK_RUNS, QUICK_BATCH) if report.options.quick else (RUNS, BATCH)
    benches = []
    for model in models:
        progress.step("Table 1", model.model_id)
        benches.append((bench_one(model, runs, batch), model.card.quantization))
    if benches:
        t1 = table1(benches, runs=runs, environment=report.environment)
        plot = functools.partial(plot_table1, t1)
        _write(report, _Artefact("table1", t1.to_json(), format_table1(t1), plot), progress)
    else:
        report.not_run["table1"] = "Table 1: no models installed"
    progress.step("Table 1", "written")


def _figure5(
    report: PaperReport,
    wearable: InstalledModel | None,
    recordings: Sequence[Recording],
    progress: Progress,
) -> None:
    if wearable is None:
        report.not_run["fig5"] = f"Figure 5: no wearable model pruned {WEARABLE_PRUNING} %"
        for _ in recordings:
            progress.step("Figure 5", "no wearable model")
        progress.step("Figure 5", "not run")
        return
    session = ModelSession(wearable.card, wearable.path, threads=1)
    replayed: list[SessionWindows] = []
    for recording in recordings:
        progress.step("Figure 5", recording.name)
        replayed.append(replay_session(recording, session))
    costs = WindowCosts.of(
        wearable.card.macs,
        int8=wearable.card.quantization != "none",
        summary_bytes=max(s.summary_bytes for s in replayed),
        window_bytes=max(s.window_bytes for s in replayed),
    )
    result = sweep_energy(replayed, costs)
    sessions = report.sessions
    in_sample = _in_sample(recordings, wearable)
    line = f"Sessions: {sessions['describe']}, {sum(len(s) for s in replayed)} windows."
    if in_sample:
        line += (
            f" {in_sample} of {len(recordings)} recordings are of subjects"
            f" `{wearable.model_id}` was trained on: its confidence there, and so the offload"
            " ratio, is in-sample (likely lower than on a new wearer)."
        )
    doc = {
        "artefact": "fig5",
        "model_id": wearable.model_id,
        "sessions": sessions,
        "in_sample_recordings": in_sample,
        "costs": costs.to_json(),
        "core_agrees": result.core_agrees,
        "accuracy": None,
        "accuracy_note": "not computed: see docs/paper.md (in-sample models)",
        "points": [p.to_json(costs.period_s) for p in result.pooled],
        "groups": {
            name: [p.to_json(costs.period_s) for p in points]
            for name, points in result.groups.items()
        },
    }
    markdown = format_energy(result, costs, model_id=wearable.model_id, sessions_line=line)
    plot = functools.partial(plot_energy, result, costs, label=str(sessions["label"]))
    _write(report, _Artefact("fig5_energy", doc, markdown, plot), progress)
    progress.step("Figure 5", "written")


def _figure6(report: PaperReport, train: bool, progress: Progress) -> None:
    options = report.options
    figure: LossFigure | None = None
    progress.step("Figure 6", "tiny training run" if train else "loss curves")
    if options.run is not None:
        figure = read_run(options.run)
    elif train:
        run_dir = options.out / "train-run"
        try:
            tiny_training_run(run_dir, options.out / "train-run.log")
            origin = "--quick: tiny training run " + " ".join(TINY_TRAINING_ARGS)
            figure = read_run(run_dir, origin=origin)
        except (RuntimeError, ValueError) as exc:
            report.not_run["fig6"] = f"Figure 6: {exc}"
    else:
        why = training_available() if options.quick else None
        report.not_run["fig6"] = (
            "Figure 6 needs --run RUN (a gatewayd-train --out folder: its history.json)"
            + (f"; --quick cannot train here: {why}" if why else "")
        )
    if figure is not None:
        plot = functools.partial(plot_losses, figure)
        _write(report, _Artefact("fig6_loss", figure.to_json(), format_losses(figure), plot),
               progress)  # fmt: skip
    progress.step("Figure 6", "written")


def run_paper(options: PaperOptions, stream: IO[str] | None = None) -> PaperReport:
    """Run this slice's experiments and write their artefacts; ImportError without matplotlib.

    Call `check_options` first. The artefacts not produced are in ``not_run`` with the reason.
    """
    import matplotlib  # noqa: F401, PLC0415 - fail before any work without the bench extra

    registry = ModelRegistry.discover(options.models_dir)
    table_models = _table_models(registry)
    recordings, sessions = _sessions(options)
    train = options.run is None and options.quick and training_available() is None
    progress = Progress(len(table_models) + len(recordings) + 4, stream)
    report = PaperReport(options=options, environment=bench_environment(), sessions=sessions)
    _table1(report, table_models, progress)
    _figure5(report, pick_wearable_model(registry, WEARABLE_PRUNING), recordings, progress)
    _figure6(report, train, progress)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper.json").write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    (out / "paper.md").write_text(report.index_markdown(), encoding="utf-8")
    progress.say(f"wrote {out / 'paper.json'} and {out / 'paper.md'}")
    for text in report.not_run.values():
        progress.say(f"not run: {text}")
    return report
