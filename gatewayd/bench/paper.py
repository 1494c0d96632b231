"""`gatewayd bench paper`: the paper's experiments reproduced on our system (docs/paper.md).

It runs Table 1 (`paper_table1`), Figure 3 (`paper_fig3`: the networks of --arch-run folders,
or with --quick tiny runs of its own), Figure 4 (`paper_activity`: every session replayed
once through the emulator, BLE and the gateway, as real processes; with a --run folder's fold
models, `paper_folds`, each session by the fold that held its subject out), Figure 5
(`paper_energy`; with a --run folder's oof.npz, held out and with its accuracy cost,
`paper_accuracy`) and
Figure 6 (`paper_loss`); what it could not produce is in the report's ``not_run``. Each
artefact is written to the output folder as JSON, a Markdown table and a PNG as soon as it is
done; paper.json and paper.md index them. Blocks (models are timed, sessions replayed; Figure 4
runs in real time: as long as the longest session, or a tenth of it with --quick).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from gatewayd.bench.models import bench_environment, bench_one
from gatewayd.bench.paper_accuracy import (
    ALL_OFFLOADED,
    DEFINITIONS,
    OOF_FILE,
    HeldOutScorer,
    check_out_of_fold,
    held_out_setup,
    load_out_of_fold,
    replay_held_out,
)
from gatewayd.bench.paper_activity import (
    EndToEnd,
    PublishedWindow,
    end_to_end_available,
    figure4,
    format_figure4,
    join_windows,
    plot_figure4,
    run_end_to_end,
)
from gatewayd.bench.paper_common import EXPERIMENTS
from gatewayd.bench.paper_energy import (
    SessionWindows,
    SweepResult,
    WindowCosts,
    format_energy,
    plot_energy,
    replay_session,
    session_from_table,
    sweep_energy,
)
from gatewayd.bench.paper_fig3 import (
    TINY_ARCH_ARGS,
    figure3,
    format_figure3,
    plot_figure3,
    read_arch_run,
    time_onnx,
)
from gatewayd.bench.paper_folds import (
    FOLDS_INDEX,
    ModelGroup,
    fold_groups,
    gateway_model,
    seen_in_training,
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
from gatewayd.config import InferenceConfig
from gatewayd.datasets import (
    DatasetError,
    Recording,
    RecordingSource,
    find_recordings,
    generate_recording,
    load,
    require_recordings,
)
from gatewayd.datasets.synthetic import write_synthetic_dataset
from gatewayd.emulator.virtual import pick_wearable_model
from gatewayd.energy import window_message_bytes
from gatewayd.eval import OutOfFold, ReplaySetup, WindowTable, replay
from gatewayd.inference import InstalledModel, ModelRegistry, ModelSession
from gatewayd.inference.analysis import HrFusion
from gatewayd.protocol.messages import SUMMARY_SIZE, SampleFormat
from gatewayd.signals.offload import DEFAULT_MIN_CONF_E4, DEFAULT_TAU_MBITS

__all__ = [
    "PaperOptions",
    "PaperReport",
    "Progress",
    "check_options",
    "run_paper",
]

#: The wearable's model in Figure 5: the emulated wearable's default pruning (int8 first).
WEARABLE_PRUNING: Final = 40
#: Synthetic sessions when no --data is given: (subjects, minutes each); seed.
SYNTHETIC_SESSIONS: Final = (8, 15.0)
QUICK_SYNTHETIC_SESSIONS: Final = (3, 5.0)
SYNTHETIC_SEED: Final = 1
#: Figure 4 replays the sessions in real time; --quick (synthetic sessions) ten times faster.
FIG4_SPEED, QUICK_FIG4_SPEED = 1.0, 10.0
#: Progress steps of Figure 4's end-to-end run (one per twentieth of the windows published).
FIG4_TICKS: Final = 20
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
    #: A gatewayd-train --out folder: its history.json and cv.json for Figure 6, its oof.npz
    #: (when there) for Figure 5's held-out decisions and accuracy cost.
    run: Path | None = None
    #: Figure 3: gatewayd-train --arch NAME --cv-only --out folders, one per network.
    arch_runs: tuple[Path, ...] = ()
    #: Run only these experiments (`EXPERIMENTS` keys); empty: all of them.
    only: frozenset[str] = frozenset()

    def wants(self, key: str) -> bool:
        """Whether ``key`` (an `EXPERIMENTS` key) is to run."""
        return not self.only or key in self.only


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
    not_run: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The index (paper.json)."""
        return {
            "command": "gatewayd bench paper",
            "quick": self.options.quick,
            "data": [str(d) for d in self.options.data],
            "run": None if self.options.run is None else str(self.options.run),
            "arch_runs": [str(r) for r in self.options.arch_runs],
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
            require_recordings(path)
        except DatasetError as exc:
            raise ValueError(f"--data {path}: {exc.message}") from None
    if options.run is not None and not (options.run / "history.json").is_file():
        raise ValueError(f"--run {options.run}: no history.json (a gatewayd-train --out folder)")
    if options.run is not None and (options.run / OOF_FILE).is_file():
        try:
            check_out_of_fold(options.run / OOF_FILE)
        except ValueError as exc:
            raise ValueError(f"--run {options.run}: {exc}") from None
    _check_arch_runs(options)


def _check_arch_runs(options: PaperOptions) -> None:
    seen: dict[str, Path] = {}
    for run in options.arch_runs:
        try:
            arch = read_arch_run(run).arch
        except ValueError as exc:
            raise ValueError(f"--arch-run {run}: {exc}") from None
        if arch in seen:
            raise ValueError(f"--arch-run {run}: {arch} again (also {seen[arch]})")
        seen[arch] = run


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


def _synthetic_sessions(options: PaperOptions) -> tuple[int, float]:
    """(subjects, minutes) of the synthetic sessions (without --data)."""
    return QUICK_SYNTHETIC_SESSIONS if options.quick else SYNTHETIC_SESSIONS


def _sessions(
    options: PaperOptions,
) -> tuple[list[Recording], list[RecordingSource | None], dict[str, Any]]:
    """The sessions, where each was read from (None: made here) and their description."""
    if not options.data:
        subjects, minutes = _synthetic_sessions(options)
        recordings = [
            generate_recording(i, minutes, SYNTHETIC_SEED) for i in range(1, subjects + 1)
        ]
        return (
            recordings,
            [None] * len(recordings),
            {
                "kind": "synthetic",
                "describe": f"synthetic sessions (gatewayd.datasets.synthetic, a model of wrist PPG"
                f" and motion, not a measurement): {subjects} subjects x {minutes:g} min, seed"
                f" {SYNTHETIC_SEED}",
                "label": "synthetic sessions",
                "datasets": [],
                "sources": ["synthetic"],
                "recordings": len(recordings),
            },
        )
    found = [s for path in options.data for s in find_recordings(path)]
    recordings = [load(s) for s in found]
    sources = sorted({r.source for r in recordings})
    kind = "synthetic" if sources == ["synthetic"] else "real"
    where = ", ".join(str(d) for d in options.data)
    return (
        recordings,
        list(found),
        {
            "kind": kind,
            "describe": f"{kind} recordings from {where}: {len(recordings)} ({', '.join(sources)})",
            "label": f"{kind} sessions: {', '.join(sources)}",
            "datasets": [str(d) for d in options.data],
            "sources": sources,
            "recordings": len(recordings),
        },
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


def _figure4(
    report: PaperReport,
    registry: ModelRegistry,
    recordings: Sequence[Recording],
    found: Sequence[RecordingSource | None],
    progress: Progress,
) -> None:
    """Figure 4: the sessions with PPG replayed end to end (`paper_activity`).

    With ``--run`` whose folder has fold models (`paper_folds`), each real session is replayed
    by the models of the fold that held its subject out, one end-to-end run per fold, all at
    once; otherwise every session by the installed models.
    """
    wearable = pick_wearable_model(registry, WEARABLE_PRUNING)
    chosen = [(r, s) for r, s in zip(recordings, found, strict=True) if r.has_bvp]
    why = end_to_end_available()
    if wearable is None:
        why = f"no wearable model pruned {WEARABLE_PRUNING} %"
    elif not chosen:
        why = "no session has PPG"
    if why is not None:
        report.not_run["fig4"] = f"Figure 4: {why}"
        for _ in range(len(chosen) + FIG4_TICKS + 1):
            progress.step("Figure 4", "not run")
        return
    assert wearable is not None
    options = report.options
    groups, held = _figure4_groups(report, registry, wearable, chosen)
    for recording in held.left_out:
        progress.step("Figure 4", f"{recording.name}: no fold held its subject out")
    speed = QUICK_FIG4_SPEED if options.quick and not options.data else FIG4_SPEED
    tables: list[list[WindowTable]] = []
    for group in groups:
        session = ModelSession(group.wearable.card, group.wearable.path, threads=1)
        setup = ReplaySetup(wearable_model=session, gateway_model=None, model_every_window=False)
        tables.append([])
        for recording, _ in group.sessions:
            progress.step("Figure 4", f"{recording.name}, local only ({group.name})")
            tables[-1].append(replay(recording, setup))
    ticks = 0
    got = [0] * len(groups)
    total = sum(len(t) for part in tables for t in part)

    def tick(k: int, published: int) -> None:
        nonlocal ticks
        got[k] = published
        while ticks < FIG4_TICKS and sum(got) * FIG4_TICKS >= (ticks + 1) * total:
            ticks += 1
            progress.step("Figure 4", f"{sum(got)}/{total} windows published")

    with tempfile.TemporaryDirectory(prefix="gatewayd-fig4-sessions-") as tmp:
        if any(s is None for _, s in chosen):
            # The synthetic sessions, written as the emulator reads them (the same data).
            subjects, minutes = _synthetic_sessions(options)
            paths = [write_synthetic_dataset(tmp, subjects, minutes, SYNTHETIC_SEED)]
        else:
            paths = [[s.path for _, s in g.sessions if s is not None] for g in groups]
        progress.say(
            f"Figure 4: {sum(map(len, paths))} sessions, {total} windows, replayed end to end"
            f" at {speed:g}x real time"
            + (f" by the fold models of {options.run} ({len(groups)} runs at once)"
               if held.folds else "")
        )  # fmt: skip

        async def run_all() -> list[EndToEnd]:
            return list(
                await asyncio.gather(
                    *(
                        run_end_to_end(
                            paths[k],
                            [len(t) for t in tables[k]],
                            speed=speed,
                            models_dir=group.models_dir,
                            tick=functools.partial(_tick_of, tick, k),
                        )
                        for k, group in enumerate(groups)
                    )
                )
            )

        try:
            runs: list[EndToEnd] | None = asyncio.run(run_all())
        except (RuntimeError, TimeoutError, OSError) as exc:
            report.not_run["fig4"] = f"Figure 4: the end-to-end run failed: {exc}"
            runs = None
    for _ in range(ticks, FIG4_TICKS):
        progress.step("Figure 4", "replayed")
    if runs is not None:
        _write_figure4(report, cost_model=wearable, groups=groups, tables=tables, runs=runs,
                       held=held, progress=progress)  # fmt: skip
    progress.step("Figure 4", "written")


def _tick_of(tick: Callable[[int, int], None], k: int, published: int, _total: int) -> None:
    tick(k, published)


@dataclass(frozen=True)
class _Fig4Held:
    """How Figure 4's sessions were split among models: by fold (held out), or not."""

    #: The fold models' index, when every session was replayed by its fold's models.
    folds: Path | None = None
    #: Sessions left out: no fold held their subject out.
    left_out: tuple[Recording, ...] = ()
    #: Why the fold models were not used, when --run was given.
    why_not: str | None = None


def _figure4_groups(
    report: PaperReport,
    registry: ModelRegistry,
    wearable: InstalledModel,
    chosen: Sequence[tuple[Recording, RecordingSource | None]],
) -> tuple[list[ModelGroup[RecordingSource | None]], _Fig4Held]:
    """The end-to-end runs Figure 4 makes: one per fold of --run's fold models, or one."""
    run = report.options.run
    shipped = [
        ModelGroup("shipped", report.options.models_dir, wearable, gateway_model(registry),
                   tuple(chosen))
    ]  # fmt: skip
    if run is None:
        return shipped, _Fig4Held()
    if any(s is None for _, s in chosen):
        return shipped, _Fig4Held(why_not="synthetic sessions are not any fold's subjects")
    plan = fold_groups(run, chosen, WEARABLE_PRUNING)
    if isinstance(plan, str):
        return shipped, _Fig4Held(why_not=plan)
    groups, unheld = plan
    if not groups:
        return shipped, _Fig4Held(why_not=f"no fold of {run} held out any of these subjects")
    return groups, _Fig4Held(folds=run / FOLDS_INDEX, left_out=tuple(unheld))


def _write_figure4(
    report: PaperReport,
    *,
    cost_model: InstalledModel,
    groups: Sequence[ModelGroup[RecordingSource | None]],
    tables: Sequence[Sequence[WindowTable]],
    runs: Sequence[EndToEnd],
    held: _Fig4Held,
    progress: Progress,
) -> None:
    rows: list[PublishedWindow] = []
    recordings: list[Recording] = []
    for group, part, run in zip(groups, tables, runs, strict=True):
        mine = [r for r, _ in group.sessions]
        rows += [
            dataclasses.replace(row, recording=row.recording + len(recordings))
            for row in join_windows(mine, part, run)
        ]
        recordings += mine
    costs = WindowCosts.of(
        cost_model.card.macs,
        int8=cost_model.card.quantization != "none",
        summary_bytes=SUMMARY_SIZE,
        window_bytes=window_message_bytes(np.dtype(SampleFormat.INT16.dtype).itemsize),
    )
    sessions = dict(report.sessions)
    sources = sorted({r.source for r in recordings})
    speed = runs[0].speed
    wall = max(run.wall_s for run in runs)
    brokers = sorted({run.broker.split(" ")[0] for run in runs})
    describe = (
        f"Replayed end to end: {len(recordings)} wearables, one per session with PPG, each"
        " replaying its recording once from its first window (`gatewayd emulate --dataset ..."
        f" --speed {speed:g}`, no `--loop`), over the emulated BlueZ into `gatewayd run`"
        f" (the shipped offload policy), published to a {', '.join(brokers)} broker on an"
        f" ephemeral port; {wall:.0f} s of wall time at {speed:g}x real time on"
        f" {report.environment.get('cpu', '?')} ({report.environment.get('cpus', '?')} CPUs)."
    )
    replayed_or_not = len(recordings) + len(held.left_out)
    skipped = int(report.sessions.get("recordings", replayed_or_not)) - replayed_or_not
    if skipped:
        describe += f" Left out: {skipped} sessions without PPG."
    if held.folds is not None:
        describe += (
            f" **Held out**: each session was replayed by the models of the cross-validation"
            f" fold that held its subject out ({held.folds}), one emulator, gateway and broker"
            f" per fold, the {len(groups)} runs at once; energy is modelled with the installed"
            f" wearable model `{cost_model.model_id}`."
        )
        if held.left_out:
            describe += f" Left out: {len(held.left_out)} sessions no fold held out."
    elif held.why_not is not None:
        describe += f" The fold models of --run were not used: {held.why_not}."
    in_sample: dict[str, int] = {}
    for group in groups:
        mine = [r for r, _ in group.sessions]
        for m in (group.wearable, group.gateway):
            if m is not None:
                in_sample[m.model_id] = in_sample.get(m.model_id, 0) + seen_in_training(mine, m)
    if any(in_sample.values()):
        describe += (
            " **In-sample**: "
            + "; ".join(
                f"{k} of the {len(recordings)} sessions are of subjects `{model_id}` was trained on"
                for model_id, k in in_sample.items()
            )
            + " (the cards): the accuracy and HR there flatter both models."
        )
    notes = [note for run in runs for note in run.notes]
    fig = figure4(
        rows,
        costs,
        model_id=groups[0].wearable.model_id,
        sessions={**sessions, "replayed": len(recordings), "replayed_sources": sources},
        run={
            "describe": describe,
            "speed": speed,
            "wall_s": round(wall, 1),
            "broker": "; ".join(run.broker for run in runs),
            "wearables": len(recordings),
            "left_out_without_ppg": skipped,
            "held_out_by_fold": None if held.folds is None else str(held.folds),
            "runs": [
                {"models": g.name, "sessions": len(g.sessions), "wall_s": round(r.wall_s, 1)}
                for g, r in zip(groups, runs, strict=True)
            ],
            "left_out_no_fold": [r.name for r in held.left_out],
            "in_sample_sessions": in_sample,
            "notes": notes,
        },
    )
    label = str(report.sessions["label"])
    if held.folds is not None:
        label += "; held out: each by the fold models that never saw its subject"
    elif any(in_sample.values()):
        label += "; in-sample models"
    plot = functools.partial(plot_figure4, fig, label=label)
    _write(report, _Artefact("fig4", fig.to_json(), format_figure4(fig), plot), progress)


#: Why Figure 5 may have no accuracy cost (followed by this run's reason).
NO_ACCURACY: Final = (
    "Figure 5's accuracy cost needs --run RUN whose folder has oof.npz (a training run's"
    " out-of-fold answers, docs/eval.md) and measured recordings (--data) it covers: the shipped"
    " models were trained on the real sets' subjects, so their answers there are in-sample"
)


@dataclass(frozen=True)
class _HeldOut:
    """What Figure 5's held-out replay needs."""

    path: Path
    oof: OutOfFold
    #: The cards the answers are read with (classes, calibration, pruning level): the run's own
    #: (RUN/models) when it exported them, else those of --models-dir, as `gatewayd eval` does.
    cards_from: Path
    wearable: InstalledModel
    gateway: InstalledModel | None
    covered: tuple[Recording, ...]
    synthetic: int
    not_covered: int


def _out_of_fold(options: PaperOptions, recordings: Sequence[Recording]) -> OutOfFold | str:
    """The --run folder's out-of-fold answers, or why Figure 5 cannot use them."""
    path = None if options.run is None else options.run / OOF_FILE
    if path is None:
        return "no --run was given"
    if not path.is_file():
        return f"--run {options.run} has no {OOF_FILE}"
    if all(r.source == "synthetic" for r in recordings):
        # Out-of-fold answers are found by recording name; the bench's synthetic sessions are
        # not the training run's (another seed), whatever their names.
        return "the sessions are synthetic (give the real sets with --data)"
    try:
        return load_out_of_fold(path)
    except ValueError as exc:
        return str(exc)


def _held_out_plan(
    options: PaperOptions,
    registry: ModelRegistry,
    wearable: InstalledModel,
    recordings: Sequence[Recording],
) -> _HeldOut | str:
    """What the held-out replay needs, or why it cannot run."""
    oof = _out_of_fold(options, recordings)
    if isinstance(oof, str):
        return oof
    path = Path(options.run or ".") / OOF_FILE
    level = wearable.card.pruning_pct
    cards = registry
    if (path.parent / "models").is_dir():
        run_cards = ModelRegistry.discover(path.parent / "models")
        if pick_wearable_model(run_cards, level) is not None:
            cards = run_cards
    wearable = pick_wearable_model(cards, level) or wearable
    gateway = gateway_model(cards)
    for model in (wearable, gateway):
        if model is not None and model.card.pruning_pct not in oof.logits:
            return (
                f"{path} has no answers of a model pruned {model.card.pruning_pct} % (for"
                f" {model.model_id}); it has {sorted(oof.logits)}"
            )
    measured = [r for r in recordings if r.source != "synthetic"]
    covered = tuple(r for r in measured if oof.covered(r.name, r.window_count()).any())
    if not covered:
        return f"{path} covers none of the {len(measured)} measured recordings"
    return _HeldOut(
        path=path,
        oof=oof,
        cards_from=cards.directory,
        wearable=wearable,
        gateway=gateway,
        covered=covered,
        synthetic=len(recordings) - len(measured),
        not_covered=len(measured) - len(covered),
    )


def _figure5(
    report: PaperReport,
    registry: ModelRegistry,
    recordings: Sequence[Recording],
    progress: Progress,
) -> None:
    wearable = pick_wearable_model(registry, WEARABLE_PRUNING)
    if wearable is None:
        report.not_run["fig5"] = f"Figure 5: no wearable model pruned {WEARABLE_PRUNING} %"
        for _ in recordings:
            progress.step("Figure 5", "no wearable model")
        progress.step("Figure 5", "not run")
        return
    plan = _held_out_plan(report.options, registry, wearable, recordings)
    if isinstance(plan, _HeldOut):
        _figure5_held_out(report, wearable, plan, recordings, progress)
    else:
        _figure5_shipped(report, wearable, recordings, plan, progress)
    progress.step("Figure 5", "written")


def _figure5_shipped(
    report: PaperReport,
    wearable: InstalledModel,
    recordings: Sequence[Recording],
    why: str,
    progress: Progress,
) -> None:
    """Figure 5 from the shipped wearable model's own decisions; no accuracy cost."""
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
    in_sample = seen_in_training(recordings, wearable)
    line = f"Sessions: {sessions['describe']}, {sum(len(s) for s in replayed)} windows."
    if in_sample:
        line += (
            f" {in_sample} of {len(recordings)} recordings are of subjects"
            f" `{wearable.model_id}` was trained on: its confidence there, and so the offload"
            " ratio, is in-sample (likely lower than on a new wearer)."
        )
    note = f"{NO_ACCURACY}; here {why}"
    report.not_run["fig5_accuracy"] = f"{note}."
    doc = {
        "artefact": "fig5",
        "model_id": wearable.model_id,
        "decisions": "shipped_model",
        "decisions_describe": "each session replayed once through WearableCore with the shipped"
        f" wearable model `{wearable.model_id}` on every window",
        "sessions": sessions,
        "in_sample_recordings": in_sample,
        "costs": costs.to_json(),
        "core_agrees": result.core_agrees,
        "out_of_fold": None,
        "accuracy": None,
        "accuracy_note": f"not computed: {note}",
    }
    decisions = (
        "Decisions: the shipped model on every window, as the emulated wearable runs it"
        " (WearableCore)."
    )
    accuracy_line = f"**No accuracy cost per point**: {note}."
    _write_figure5(report, wearable=wearable, result=result, costs=costs, doc=doc,
                   sessions_line=line, decisions_line=decisions, accuracy_line=accuracy_line,
                   progress=progress)  # fmt: skip


def _figure5_held_out(
    report: PaperReport,
    wearable: InstalledModel,
    plan: _HeldOut,
    recordings: Sequence[Recording],
    progress: Progress,
) -> None:
    """Figure 5 from held-out decisions (`gatewayd eval offload --oof`'s replay), each point
    with the accuracy cost of those same decisions."""
    gateway = plan.gateway
    setup = held_out_setup(
        plan.oof,
        ModelSession(plan.wearable.card, plan.wearable.path, threads=1),
        None if gateway is None else ModelSession(gateway.card, gateway.path, threads=1),
        HrFusion.of(InferenceConfig()),
    )
    covered = {id(r) for r in plan.covered}
    tables: list[WindowTable] = []
    for recording in recordings:
        progress.step("Figure 5", recording.name)
        if id(recording) in covered:
            tables.append(replay_held_out(recording, setup))
    tau, conf = ALL_OFFLOADED
    # eval's replay encodes int16 wire samples (WearableSpec's default).
    sessions_windows = [
        session_from_table(t, tau_mbits=tau, min_conf_e4=conf, sample_format=SampleFormat.INT16)
        for t in tables
    ]
    costs = WindowCosts.of(
        wearable.card.macs,
        int8=wearable.card.quantization != "none",
        summary_bytes=max(s.summary_bytes for s in sessions_windows),
        window_bytes=max(s.window_bytes for s in sessions_windows),
    )
    result = sweep_energy(sessions_windows, costs, score=HeldOutScorer(tables))
    windows = sum(len(t) for t in tables)
    sessions = report.sessions
    left_out = []
    if plan.not_covered:
        left_out.append(f"{plan.not_covered} measured recordings it does not cover")
    if plan.synthetic:
        left_out.append(f"{plan.synthetic} synthetic sessions")
    gateway_id = None if gateway is None else gateway.model_id
    line = (
        f"Sessions: {sessions['describe']}. **Held out**: the decisions and the accuracy are"
        f" from the out-of-fold answers of `{plan.path}` (each window answered by the fold model"
        f" that never saw its subject), on the {len(tables)} recordings and {windows} windows"
        " they cover (the training run's window stride)"
        + (f"; left out: {', '.join(left_out)}" if left_out else "")
        + "."
    )
    decisions = (
        "Decisions: the wearable core with the out-of-fold answers of the model pruned"
        f" {plan.wearable.card.pruning_pct} % (read with `{plan.wearable.model_id}`'s card) in"
        " place of its model's, the gateway's per-window path with those of the full model"
        + (f" (`{gateway_id}`'s card)" if gateway_id else " (no gateway model: degraded)")
        + f", cards from `{plan.cards_from}`; replayed as `gatewayd eval offload --oof` replays"
        " them (gatewayd.eval.replay). The energy is that of the wearable's model above."
    )
    default = next(
        (p for p in result.pooled if (p.tau_mbits, p.min_conf_e4) == _DEFAULT_POLICY), None
    )
    first = result.pooled[0].accuracy if result.pooled else None
    doc = {
        "artefact": "fig5",
        "model_id": wearable.model_id,
        "decisions": "held_out",
        "decisions_describe": "gatewayd.eval.replay with the out-of-fold answers (every window"
        " offloaded, so the gateway answers each); each point applies the core's rule to what"
        " the wearable computed, and scores those decisions",
        "sessions": sessions,
        "in_sample_recordings": None,
        "costs": costs.to_json(),
        "core_agrees": result.core_agrees,
        "out_of_fold": {
            "file": str(plan.path),
            "cards_from": str(plan.cards_from),
            "wearable_model_id": plan.wearable.model_id,
            "wearable_pruning_pct": plan.wearable.card.pruning_pct,
            "gateway_model_id": gateway_id,
            "recordings": len(tables),
            "windows": windows,
            "left_out": {"measured_not_covered": plan.not_covered, "synthetic": plan.synthetic},
        },
        "accuracy": {
            "definitions": DEFINITIONS,
            "local_only": None
            if first is None
            else {
                "activity_accuracy": first.to_json()["activity_accuracy"]["local_only"],
                "activity_windows": first.activity_windows,
                "hr_mae_bpm": first.to_json()["hr_mae_bpm"]["local_only"],
                "hr_windows": first.hr_windows,
                "bad": first.bad,
                "scored": first.scored,
            },
            "default_policy": None
            if default is None or default.accuracy is None
            else default.accuracy.to_json(),
        },
        "accuracy_note": None,
    }
    _write_figure5(report, wearable=wearable, result=result, costs=costs, doc=doc,
                   sessions_line=line, decisions_line=decisions, accuracy_line="",
                   progress=progress)  # fmt: skip


_DEFAULT_POLICY: Final = (DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4)


def _write_figure5(
    report: PaperReport,
    *,
    wearable: InstalledModel,
    result: SweepResult,
    costs: WindowCosts,
    doc: dict[str, Any],
    sessions_line: str,
    decisions_line: str,
    accuracy_line: str,
    progress: Progress,
) -> None:
    doc["points"] = [p.to_json(costs.period_s) for p in result.pooled]
    doc["groups"] = {
        name: [p.to_json(costs.period_s) for p in points] for name, points in result.groups.items()
    }
    markdown = format_energy(
        result,
        costs,
        model_id=wearable.model_id,
        sessions_line=sessions_line,
        decisions_line=decisions_line,
        accuracy_line=accuracy_line,
    )
    label = str(report.sessions["label"])
    plot = functools.partial(plot_energy, result, costs, label=label)
    _write(report, _Artefact("fig5_energy", doc, markdown, plot), progress)


#: Figure 3's networks, in the order --quick trains them (the method's first).
FIG3_ARCHS: Final = ("mobilenetv2", "squeezenet", "shufflenetv2", "efficientnet-lite0")


def _figure3(report: PaperReport, train: bool, progress: Progress) -> None:
    options = report.options
    runs_dirs = list(options.arch_runs)
    origin = "--arch-run"
    if not runs_dirs and train:
        origin = "--quick: tiny training runs " + " ".join(TINY_ARCH_ARGS)
        for arch in FIG3_ARCHS:
            progress.step("Figure 3", f"tiny training run: {arch}")
            run_dir = options.out / "arch-runs" / arch
            try:
                tiny_training_run(run_dir, options.out / "arch-runs" / f"{arch}.log",
                                  (*TINY_ARCH_ARGS, "--arch", arch))  # fmt: skip
            except RuntimeError as exc:
                report.not_run["fig3"] = f"Figure 3: {arch}: {exc}"
                return
            runs_dirs.append(run_dir)
    if not runs_dirs:
        why = training_available() if options.quick else None
        report.not_run["fig3"] = (
            "Figure 3 needs --arch-run DIR for each network (gatewayd-train --arch NAME"
            " --cv-only --out DIR; docs/paper.md)"
            + (f"; --quick cannot train here: {why}" if why else "")
        )
        return
    runs = [read_arch_run(d) for d in runs_dirs]
    timed = QUICK_RUNS if options.quick else RUNS
    latencies = []
    for run in runs:
        progress.step("Figure 3", f"timing {run.arch}")
        latencies.append(time_onnx(run.onnx, timed))
    fig = figure3(runs, latencies, timed_runs=timed, environment=report.environment,
                  origin=origin)  # fmt: skip
    plot = functools.partial(plot_figure3, fig)
    _write(report, _Artefact("fig3", fig.to_json(), format_figure3(fig), plot), progress)


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
    recordings, found, sessions = _sessions(options)
    train = options.run is None and options.quick and training_available() is None
    with_ppg = sum(r.has_bvp for r in recordings)
    steps = {
        "table1": len(table_models) + 1,
        "fig3": len(options.arch_runs) or (len(FIG3_ARCHS) * 2 if train else 0),
        "fig4": len(recordings) + FIG4_TICKS + 1,
        "fig5": with_ppg + 1,
        "fig6": 2,
    }
    progress = Progress(sum(n for k, n in steps.items() if options.wants(k)), stream)
    report = PaperReport(options=options, environment=bench_environment(), sessions=sessions)
    experiments: dict[str, Callable[[], None]] = {
        "table1": lambda: _table1(report, table_models, progress),
        "fig3": lambda: _figure3(report, train, progress),
        "fig4": lambda: _figure4(report, registry, recordings, found, progress),
        "fig5": lambda: _figure5(report, registry, recordings, progress),
        "fig6": lambda: _figure6(report, train, progress),
    }
    for key, experiment in experiments.items():
        if options.wants(key):
            experiment()
        else:
            report.not_run[key] = f"{EXPERIMENTS[key]}: not asked for (--only)"
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper.json").write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    (out / "paper.md").write_text(report.index_markdown(), encoding="utf-8")
    progress.say(f"wrote {out / 'paper.json'} and {out / 'paper.md'}")
    for text in report.not_run.values():
        progress.say(f"not run: {text}")
    return report
