"""Figure 4 of `gatewayd bench paper`: robustness by activity, measured end to end.

Every recording is replayed once, from its first window, by a wearable of its own: the real
processes of `gatewayd bench scale` (gatewayd.bench.scale): `gatewayd emulate` (the emulated
BlueZ and one virtual wearable per recording, `--stamps` noting when each window's first
notification goes out), `gatewayd run` pointed at it with the shipped policy, a private
mosquitto, and a subscriber here that keeps every telemetry payload. The recordings are given to
the emulator one `--dataset PATH` each, in order, with as many wearables as recordings: the
emulator replays them in that order, one per wearable (`gatewayd.emulator.runner
.load_recordings`, `build_fleet`), so wearable ``i`` (device id `scale.device_id(i)`) replays
recording ``i`` and a telemetry's ``seq`` is the recording's window index (no ``--loop``). The
mapping is checked, not assumed: the same wearable core is replayed here in-process
(`gatewayd.eval.replay`, the wearable's model, no gateway), and on every published window its
offload decision, and on the windows kept local its activity, must be what the gateway published
(`MappingCheck`).

Per window the published answer (activity group, heart rate, offloaded) is joined with the
recording (the dataset's own label, its group, the reference heart rate) and the latency (first
notification sent -> telemetry received, as `bench scale` measures it). The in-process replay
gives the local-only answers beside them (the wearable's own on every window). Per activity
label and per group: windows, group accuracy and HR MAE (edge-assisted: what the gateway
published; local only), latency p50/p95, the share offloaded, and the wearable's energy per window
(`paper_energy.WindowCosts`: local only, and as the published decisions cost it). The run is
I/O and processes (`run_end_to_end`); the tables and figures are pure arithmetic.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiomqtt
import numpy as np

from gatewayd.activity import GROUP_NAMES, ActivityGroup, group_of
from gatewayd.bench.paper_common import markdown_table
from gatewayd.bench.paper_energy import GROUPS, WindowCosts
from gatewayd.bench.scale import (
    PROCESS_LIMIT_S,
    OffloadMix,
    Received,
    device_id,
    drain,
    matched,
    percentile,
    point_notes,
    poll,
    run_folder,
    start_processes,
    stop_process,
    subscribe,
    write_config,
)
from gatewayd.datasets.recording import Recording
from gatewayd.emulator.virtual import parse_stamps
from gatewayd.eval import WindowTable
from gatewayd.signals.windows import STEP_S, WINDOW_S

__all__ = [
    "ActivityRow",
    "EndToEnd",
    "Figure4",
    "MappingCheck",
    "PublishedWindow",
    "end_to_end_available",
    "figure4",
    "format_figure4",
    "join_windows",
    "plot_figure4",
    "run_end_to_end",
]

_MJ: Final = 1e3
_UNKNOWN: Final = int(ActivityGroup.UNKNOWN)
#: The emulator's status line: "wearables N (C connected, F finished), ...".
_STATUS = re.compile(r"\((\d+) connected, (\d+) finished\)")
#: After the last window: how long to wait for the stamped windows, then for resends.
DRAIN_LIMIT_S: Final = 30.0
RESEND_LIMIT_S: Final = 10.0


def end_to_end_available() -> str | None:
    """Why the end-to-end run cannot run here (no dbus-daemon for the emulator), or None."""
    if shutil.which("dbus-daemon") is None:
        return "the emulator needs dbus-daemon (Debian's dbus package)"
    return None


# --- the run -------------------------------------------------------------------------------------


@dataclass
class EndToEnd:
    """What one end-to-end run saw: every telemetry payload by (device id, seq), the latency of
    every stamped window (ms, None: sent and never published), and the run's facts."""

    payloads: dict[tuple[str, int], dict[str, Any]]
    latency_ms: dict[tuple[str, int], float | None]
    broker: str
    speed: float
    wall_s: float
    notes: list[str] = field(default_factory=list)


def _finished(text: str) -> int:
    """How many wearables the emulator's last status line says have finished."""
    found = _STATUS.findall(text)
    return int(found[-1][1]) if found else 0


async def _until_finished(
    emulator: asyncio.subprocess.Process,
    gateway: asyncio.subprocess.Process,
    directory: Path,
    n: int,
    *,
    limit_s: float,
    tick: Callable[[], None],
) -> None:
    """Until the emulator says every wearable has made its last window (its status line, every
    5 s); RuntimeError if a process exits or after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        if gateway.returncode is not None or emulator.returncode is not None:
            raise RuntimeError(
                f"a process exited early (gateway {gateway.returncode}, emulator"
                f" {emulator.returncode}); see {directory}"
            )
        tick()
        text = await asyncio.to_thread((directory / "emulator.txt").read_text, "utf-8")
        if _finished(text) >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the wearables had not finished after {limit_s:.0f} s; see {directory}"
            )
        await asyncio.sleep(1.0)


async def run_end_to_end(
    paths: Sequence[Path],
    windows: Sequence[int],
    *,
    speed: float = 1.0,
    models_dir: Path | None = None,
    tick: Callable[[int, int], None] = lambda _got, _total: None,
) -> EndToEnd:
    """Replay ``paths`` (one recording each, of ``windows[i]`` windows) once, one wearable
    each, through the emulator, BLE and the gateway into a subscriber; ``tick(published,
    total)`` as windows arrive. RuntimeError when a process fails (its logs are kept)."""
    from gatewayd.bench.pipeline import bench_broker  # noqa: PLC0415

    n = len(paths)
    total = sum(windows)
    received = Received.keep_payloads()
    sessions = [a for p in paths for a in ("--dataset", str(p))]
    sessions += ["--speed", f"{speed:g}", "--seed", "1"]
    # Every window out, with the stagger's phase and the processes' start.
    limit_s = (max(windows, default=0) * STEP_S + WINDOW_S + STEP_S) / speed + 2 * PROCESS_LIMIT_S
    t0 = time.monotonic()
    async with run_folder("gatewayd-fig4-") as folder, bench_broker(None, None) as broker:
        directory = folder.path
        stamps = directory / "stamps.txt"
        config = await asyncio.to_thread(
            write_config, directory, n, OffloadMix("default", None), (broker.host, broker.port)
        )
        ready = asyncio.Event()
        subscriber = asyncio.create_task(
            subscribe(broker.host, broker.port, received, ready, f"gatewayd-fig4-{os.getpid()}")
        )
        try:
            # Subscribed before anything runs: every window counts, the first ones too.
            await asyncio.wait_for(ready.wait(), PROCESS_LIMIT_S)
            emulator, gateway, _ = await start_processes(
                n, config, directory, sessions, models_dir=models_dir
            )
            try:
                await _until_finished(
                    emulator, gateway, directory, n, limit_s=limit_s,
                    tick=lambda: tick(len(received.telemetry), total),
                )  # fmt: skip
                await drain(stamps, received, n, (0, 2**63), DRAIN_LIMIT_S)
                # Windows missed while a link was down go out as resends (unstamped). Those
                # made before the gateway first connected are not owed to it (the bench's list
                # records no numbering at pairing, docs/protocol.md §4) and never come: at 10x,
                # a gateway slow to start misses them.
                await poll(lambda: len(received.telemetry) >= total, RESEND_LIMIT_S)
                tick(len(received.telemetry), total)
            finally:
                gateway_code = await stop_process(gateway)
                emulator_code = await stop_process(emulator)
        finally:
            subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await subscriber
        text = await asyncio.to_thread(stamps.read_text, "ascii")
        latency = {
            (device, seq): ms for device, seq, ms, _ in matched(parse_stamps(text), received, n)
        }
        notes = point_notes(n, n, True, gateway_code, emulator_code)
        folder.keep = bool(notes)
        if folder.keep:
            notes.append(f"logs kept in {directory}")
        payloads = received.payloads if received.payloads is not None else {}
        return EndToEnd(
            payloads=dict(payloads),
            latency_ms=latency,
            broker=f"{broker.kind} {broker.host}:{broker.port}",
            speed=speed,
            wall_s=time.monotonic() - t0,
            notes=notes,
        )


# --- the join ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedWindow:
    """One window of one recording: the truth, what the gateway published, local only."""

    recording: int
    source: str
    #: The dataset's own label (None: unlabelled) and the window's group code (255: unknown).
    label: str | None
    group: int
    ref_hr: float
    published: bool
    activity: int
    hr_bpm: float
    offloaded: bool
    latency_ms: float
    local_activity: int
    local_hr: float
    local_offloaded: bool


def _code(name: object) -> int:
    return GROUP_NAMES.index(name) if name in GROUP_NAMES else _UNKNOWN


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def join_windows(
    recordings: Sequence[Recording], tables: Sequence[WindowTable], run: EndToEnd
) -> list[PublishedWindow]:
    """Every window of every recording (wearable ``i`` replayed recording ``i``, seq = window
    index) with what was published for it and its local-only answer."""
    rows = []
    for i, (recording, table) in enumerate(zip(recordings, tables, strict=True)):
        device = device_id(i)
        for w in range(len(table)):
            body = run.payloads.get((device, w))
            latency = run.latency_ms.get((device, w))
            rows.append(
                PublishedWindow(
                    recording=i,
                    source=recording.source,
                    label=recording.label_for_window(w),
                    group=int(table.truth[w]),
                    ref_hr=float(table.ref_hr[w]),
                    published=body is not None,
                    activity=_code(body.get("activity")) if body else _UNKNOWN,
                    hr_bpm=_float(body.get("hr_bpm")) if body else math.nan,
                    offloaded=bool(body.get("offloaded")) if body else False,
                    latency_ms=math.nan if latency is None else latency,
                    local_activity=int(table.local_activity[w]),
                    local_hr=float(table.local_hr[w]),
                    local_offloaded=bool(table.offloaded[w]),
                )
            )
    return rows


@dataclass(frozen=True)
class MappingCheck:
    """Whether each device replayed the recording it was given: on the published windows, the
    gateway's offload flag against the in-process wearable's decision, and on those kept local
    the published activity against the wearable's own."""

    published: int
    offload_agrees: int
    local: int
    activity_agrees: int

    @classmethod
    def of(cls, rows: Iterable[PublishedWindow]) -> MappingCheck:
        """Count the agreements."""
        published = [r for r in rows if r.published]
        local = [r for r in published if not r.offloaded]
        return cls(
            published=len(published),
            offload_agrees=sum(r.offloaded == r.local_offloaded for r in published),
            local=len(local),
            activity_agrees=sum(r.activity == r.local_activity for r in local),
        )

    @property
    def holds(self) -> bool:
        """Every published window agrees."""
        return self.offload_agrees == self.published and self.activity_agrees == self.local

    def to_json(self) -> dict[str, Any]:
        """The counts."""
        return {
            "published_windows": self.published,
            "offload_decision_agrees": self.offload_agrees,
            "local_windows": self.local,
            "local_activity_agrees": self.activity_agrees,
            "holds": self.holds,
        }


# --- the figures ---------------------------------------------------------------------------------


def _nan_none(value: float, digits: int = 4) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


@dataclass(frozen=True)
class ActivityRow:
    """One activity (a dataset's label, or a group): the figures of its windows."""

    name: str
    group: str
    windows: int
    published: int
    offloaded: int
    #: Published windows with a known group; right by the gateway / by the wearable alone.
    scored: int
    correct: int
    local_correct: int
    #: Published windows with a reference where the gateway and the wearable gave a heart rate.
    hr_windows: int
    hr_mae: float
    local_hr_mae: float
    #: Stamped and published windows: notify -> publish, ms (all; kept local; offloaded).
    latency_windows: int
    latency: dict[str, float]
    #: Wearable energy per published window, J: every window local, and as decided.
    local_only_j: float
    edge_j: float

    @classmethod
    def of(
        cls, name: str, group: str, rows: Sequence[PublishedWindow], costs: WindowCosts
    ) -> ActivityRow:
        """The figures of ``rows``."""
        published = [r for r in rows if r.published]
        scored = [r for r in published if r.group != _UNKNOWN]
        hr = [
            r
            for r in published
            if not (math.isnan(r.ref_hr) or math.isnan(r.hr_bpm) or math.isnan(r.local_hr))
        ]
        timed = [r for r in published if not math.isnan(r.latency_ms)]
        off = sum(r.offloaded for r in published)
        n = len(published)

        def pct(values: Sequence[float], q: float) -> float:
            return percentile(values, q)

        local_ms = [r.latency_ms for r in timed if not r.offloaded]
        off_ms = [r.latency_ms for r in timed if r.offloaded]
        all_ms = [r.latency_ms for r in timed]
        return cls(
            name=name,
            group=group,
            windows=len(rows),
            published=n,
            offloaded=off,
            scored=len(scored),
            correct=sum(r.activity == r.group for r in scored),
            local_correct=sum(r.local_activity == r.group for r in scored),
            hr_windows=len(hr),
            hr_mae=float(np.mean([abs(r.hr_bpm - r.ref_hr) for r in hr])) if hr else math.nan,
            local_hr_mae=float(np.mean([abs(r.local_hr - r.ref_hr) for r in hr]))
            if hr
            else math.nan,
            latency_windows=len(timed),
            latency={
                "p50": pct(all_ms, 50),
                "p95": pct(all_ms, 95),
                "local_p50": pct(local_ms, 50),
                "offloaded_p50": pct(off_ms, 50),
            },
            local_only_j=costs.local_j if n else math.nan,
            edge_j=((n - off) * costs.local_j + off * costs.offloaded_j) / n if n else math.nan,
        )

    @property
    def accuracy(self) -> float:
        """Group accuracy of what the gateway published."""
        return _share(self.correct, self.scored)

    @property
    def local_accuracy(self) -> float:
        """Group accuracy of the wearable alone."""
        return _share(self.local_correct, self.scored)

    @property
    def offload_ratio(self) -> float:
        """Share of the published windows that were offloaded."""
        return _share(self.offloaded, self.published)

    def to_json(self) -> dict[str, Any]:
        """The row as JSON (NaN: null; energy in mJ per window)."""
        return {
            "name": self.name,
            "group": self.group,
            "windows": self.windows,
            "published": self.published,
            "offloaded": self.offloaded,
            "offload_ratio": _nan_none(self.offload_ratio),
            "activity_windows": self.scored,
            "accuracy": {
                "edge_assisted": _nan_none(self.accuracy),
                "local_only": _nan_none(self.local_accuracy),
            },
            "hr_windows": self.hr_windows,
            "hr_mae_bpm": {
                "edge_assisted": _nan_none(self.hr_mae, 3),
                "local_only": _nan_none(self.local_hr_mae, 3),
            },
            "latency_windows": self.latency_windows,
            "latency_ms": {k: _nan_none(v, 2) for k, v in self.latency.items()},
            "energy_mj_per_window": {
                "local_only": _nan_none(_MJ * self.local_only_j),
                "edge_assisted": _nan_none(_MJ * self.edge_j),
            },
        }


@dataclass(frozen=True)
class Figure4:
    """Figure 4: the rows per dataset label and per group, all windows, and how it was run."""

    labels: list[ActivityRow]
    groups: list[ActivityRow]
    total: ActivityRow
    mapping: MappingCheck
    costs: WindowCosts
    model_id: str
    sessions: dict[str, Any]
    run: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """fig4.json."""
        return {
            "artefact": "fig4",
            "model_id": self.model_id,
            "sessions": self.sessions,
            "run": self.run,
            "mapping_check": self.mapping.to_json(),
            "costs": self.costs.to_json(),
            "labels": [r.to_json() for r in self.labels],
            "groups": [r.to_json() for r in self.groups],
            "all": self.total.to_json(),
        }


def _label_key(row: PublishedWindow) -> tuple[str, str]:
    return row.source, row.label if row.label is not None else "(unlabelled)"


def figure4(
    rows: Sequence[PublishedWindow],
    costs: WindowCosts,
    *,
    model_id: str,
    sessions: dict[str, Any],
    run: dict[str, Any],
) -> Figure4:
    """Group the windows by the dataset's label (in order of appearance) and by group."""
    by_label: dict[tuple[str, str], list[PublishedWindow]] = {}
    for r in rows:
        by_label.setdefault(_label_key(r), []).append(r)
    labels = [
        ActivityRow.of(f"{source}: {label}", group_of(source, label).name.lower(), members, costs)
        for (source, label), members in by_label.items()
    ]
    groups = [
        ActivityRow.of(name, name, members, costs)
        for name in GROUPS
        if (members := [r for r in rows if r.group == (_code(name))])
    ]
    return Figure4(
        labels=labels,
        groups=groups,
        total=ActivityRow.of("all", "-", list(rows), costs),
        mapping=MappingCheck.of(rows),
        costs=costs,
        model_id=model_id,
        sessions=sessions,
        run=run,
    )


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f} %"


def _num(value: float, spec: str = ".2f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


_HEAD: Final = (
    "windows", "published", "offloaded", "accuracy local only", "accuracy edge-assisted",
    "HR MAE local only, bpm", "HR MAE edge-assisted, bpm", "latency p50, ms", "p95, ms",
    "p50 kept local / offloaded, ms", "energy local only, mJ", "energy edge-assisted, mJ",
)  # fmt: skip


def _cells(r: ActivityRow) -> list[str]:
    lat = r.latency
    return [
        str(r.windows), str(r.published), _pct(r.offload_ratio), _pct(r.local_accuracy),
        _pct(r.accuracy), _num(r.local_hr_mae), _num(r.hr_mae), _num(lat["p50"], ".1f"),
        _num(lat["p95"], ".1f"),
        f"{_num(lat['local_p50'], '.1f')} / {_num(lat['offloaded_p50'], '.1f')}",
        _num(_MJ * r.local_only_j, ".3f"), _num(_MJ * r.edge_j, ".3f"),
    ]  # fmt: skip


def format_figure4(fig: Figure4) -> str:
    """fig4.md."""
    s, run, m = fig.sessions, fig.run, fig.mapping
    check = (
        "holds on every published window"
        if m.holds
        else f"WARNING: does not hold ({m.offload_agrees} of {m.published} offload decisions,"
        f" {m.activity_agrees} of {m.local} local activities agree)"
    )
    lines = [
        "## Figure 4: robustness by activity, end to end",
        "",
        f"Sessions: {s['describe']}. {run['describe']}",
        "",
        "Edge-assisted is what the gateway published (its full model's answer on the windows the"
        " wearable offloaded, the wearable's on the rest); local only is the wearable's own"
        " answer on every window (the same wearable core replayed in-process). Accuracy: the"
        " share of the published windows with a known activity group whose group is right. HR"
        " MAE: over the published windows with a reference where both gave a heart rate."
        " Latency: first notification of the window sent -> its telemetry received by a"
        " subscriber, as `gatewayd bench scale` measures it (windows made before the gateway"
        " connected arrive as resends, unstamped, and have none). Energy: the wearable's per"
        f" window from the energy model, `{fig.model_id}` ({fig.costs.macs / 1e6:.2f} M MACs):"
        f" local {_MJ * fig.costs.local_j:.3f} mJ, offloaded {_MJ * fig.costs.offloaded_j:.3f}"
        " mJ (docs/energy.md).",
        "",
        f"Device -> recording mapping check: {check} ({m.published} published windows,"
        f" {m.local} kept local).",
        "",
        "### By the dataset's activity label",
        "",
        *markdown_table(
            ("activity (set: label)", "group", *_HEAD),
            [[r.name, r.group, *_cells(r)] for r in [*fig.labels, fig.total]],
        ),
        "",
        "### By activity group",
        "",
        *markdown_table(("group", *_HEAD), [[r.name, *_cells(r)] for r in fig.groups]),
        "",
    ]
    lines += [f"Note: {note}" for note in run.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def _local_accuracy_pct(r: ActivityRow) -> float:
    return 100 * r.local_accuracy


def _accuracy_pct(r: ActivityRow) -> float:
    return 100 * r.accuracy


def _local_hr_mae(r: ActivityRow) -> float:
    return r.local_hr_mae


def _hr_mae(r: ActivityRow) -> float:
    return r.hr_mae


def _p50(r: ActivityRow) -> float:
    return r.latency["p50"]


def _p95(r: ActivityRow) -> float:
    return r.latency["p95"]


def _local_mj(r: ActivityRow) -> float:
    return _MJ * r.local_only_j


def _edge_mj(r: ActivityRow) -> float:
    return _MJ * r.edge_j


def plot_figure4(fig: Figure4, path: Path, *, label: str) -> Path:
    """fig4.png: per activity label, grouped bars (local only beside edge-assisted) of the
    group accuracy, the HR MAE and the wearable energy, and the latency p50/p95. Needs
    matplotlib."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = fig.labels
    names = [f"{r.name}\n{_pct(r.offload_ratio)} off." for r in rows]
    x = np.arange(len(rows))
    width = 0.38
    figure = Figure(figsize=(max(10.0, 0.9 * len(rows) + 4), 9))
    axes = figure.subplots(2, 2, sharex=True).ravel()
    panels: list[tuple[str, Callable[[ActivityRow], float], Callable[[ActivityRow], float],
                       tuple[str, str]]] = [
        ("activity group accuracy, %", _local_accuracy_pct, _accuracy_pct,
         ("local only", "edge-assisted")),
        ("HR MAE, bpm", _local_hr_mae, _hr_mae, ("local only", "edge-assisted")),
        ("notify -> publish latency, ms", _p50, _p95, ("p50", "p95")),
        ("wearable energy per window, mJ (model)", _local_mj, _edge_mj,
         ("local only", "edge-assisted")),
    ]  # fmt: skip
    for ax, (ylabel, left, right, legend) in zip(axes, panels, strict=True):
        ax.bar(x - width / 2, [left(r) for r in rows], width, label=legend[0], color="C0")
        ax.bar(x + width / 2, [right(r) for r in rows], width, label=legend[1], color="C1")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[2:]:
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    figure.suptitle(
        f"gatewayd bench paper: Figure 4, robustness by activity, end to end ({label})",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
