"""`gatewayd bench soak`'s artefacts: ``soak.json``, ``soak.md`` and ``soak.png`` (RSS and outbox
depth over time, the faults marked).

`rss_slope_mb_per_h` is pure: the growth of the gateway's resident set within each process's
life over the second half of the soak (a SIGKILLed gateway's successor starts small again, so
a slope across restarts would measure the restarts, not a leak).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from gatewayd.bench.soak import RSS_WARMUP_S, SoakResult
from gatewayd.bench.soak import Sample as SoakSample

__all__ = ["format_soak", "rss_slope_mb_per_h", "soak_json", "write_artefacts"]

#: Colours of the fault markers on the plot, by kind.
FAULT_COLOURS: Final = {
    "link_drop": "tab:blue",
    "broker_restart": "tab:orange",
    "corrupt": "tab:green",
    "gateway_kill": "tab:red",
}


def rss_slope_mb_per_h(
    samples: Sequence[SoakSample], warmup_s: float = RSS_WARMUP_S
) -> float | None:
    """RSS growth (MB/hour) within each gateway process over the second half of the samples.

    The pooled within-process least-squares slope: each process's samples are centred on its
    own means, so restarts do not count. Samples in the first ``warmup_s`` of a process are left
    out. None when fewer than three samples remain or they span no time.
    """
    if not samples:
        return None
    half = (samples[0].t_s + samples[-1].t_s) / 2
    first_seen: dict[int, float] = {}
    for s in samples:
        if s.pid is not None:
            first_seen.setdefault(s.pid, s.t_s)
    groups: dict[int, list[tuple[float, float]]] = {}
    for s in samples:
        if s.pid is None or s.rss_mb is None or s.t_s < half:
            continue
        if s.t_s - first_seen[s.pid] < warmup_s:
            continue
        groups.setdefault(s.pid, []).append((s.t_s, s.rss_mb))
    num = den = 0.0
    n = 0
    for points in groups.values():
        t_mean = sum(t for t, _ in points) / len(points)
        r_mean = sum(r for _, r in points) / len(points)
        num += sum((t - t_mean) * (r - r_mean) for t, r in points)
        den += sum((t - t_mean) ** 2 for t, _ in points)
        n += len(points)
    if n < 3 or den <= 0:
        return None
    return num / den * 3600.0


def soak_json(result: SoakResult) -> dict[str, Any]:
    """The whole record as plain data."""
    options = asdict(result.options)
    options["out"] = str(result.options.out)
    options["models_dir"] = (
        None if result.options.models_dir is None else str(result.options.models_dir)
    )
    rss = [s.rss_mb for s in result.samples if s.rss_mb is not None]
    depth = [s.outbox for s in result.samples if s.outbox is not None]
    slope = rss_slope_mb_per_h(result.samples)
    return {
        "options": options,
        "duration_s": round(result.ended_at - result.started_at, 1),
        "work_dir": str(result.work_dir),
        "ok": result.account.ok,
        "account": result.account.to_dict(),
        "produced": result.produced,
        "gateway_runs": result.gateway_runs,
        "decode_errors_logged": result.decode_errors_logged,
        "corrupted_fragments": result.corrupted_fragments,
        "faults": [
            {
                "kind": f.kind,
                "device_id": f.device_id,
                "at_s": round(f.start - result.started_at, 1),
                "duration_s": round(f.end - f.start, 1),
                "note": f.note,
            }
            for f in result.faults
        ],
        "planned": [asdict(p) for p in result.plan],
        "rss": {
            "first_mb": rss[0] if rss else None,
            "last_mb": rss[-1] if rss else None,
            "max_mb": max(rss, default=None),
            "slope_second_half_mb_per_h": None if slope is None else round(slope, 2),
        },
        "outbox": {"max": max(depth, default=None), "last": depth[-1] if depth else None},
        "samples": [asdict(s) for s in result.samples],
        "notes": result.notes,
    }


def format_soak(result: SoakResult) -> str:
    """The Markdown summary (also what the command prints)."""
    a = result.account
    data = soak_json(result)
    lines = [
        f"# gatewayd bench soak: {'OK' if a.ok else 'FAILED'}",
        "",
        f"{result.options.minutes:g} min, {result.options.devices} wearables at"
        f" {result.options.speed:g}x real time, seed {result.options.seed},"
        f" {data['duration_s']:g} s wall; {result.gateway_runs} gateway process(es).",
        "",
        "| device | produced (owed) | stored | lost with reason | unexplained |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for d in a.devices:
        causes = ", ".join(f"{k} {v}" for k, v in d.lost_by_cause.items())
        lines.append(
            f"| {d.device_id} | {d.owed} | {d.stored} | {d.lost_with_reason}"
            f"{f' ({causes})' if causes else ''} | {d.unexplained} |"
        )
    lines += [
        f"| **all** | **{a.owed}** | **{a.stored}** | **{a.lost_with_reason}** |"
        f" **{a.unexplained}** |",
        "",
        "| events (alerts and technical) | count |",
        "| --- | ---: |",
        f"| in the event log's outbox | {a.alerts.stored} |",
        f"| delivered to the subscriber | {a.alerts.delivered} |",
        f"| not delivered | {len(a.alerts.undelivered)} |",
        f"| received but not in the log | {len(a.alerts.not_in_log)} |",
        "",
        "| telemetry (QoS 0, best effort) | count |",
        "| --- | ---: |",
        f"| windows stored | {a.telemetry.expected} |",
        f"| telemetry delivered | {a.telemetry.delivered} |",
        f"| missing, window received during a fault (+-settle) | {a.telemetry.missing_in_fault} |",
        f"| missing, outside any fault | {a.telemetry.missing_outside_fault} |",
        f"| drops the gateway counted and logged | {a.telemetry.recorded_drops} |",
        "",
        f"Faults: {len(result.faults)} ("
        + ", ".join(f"{k} {sum(f.kind == k for f in result.faults)}" for k in FAULT_COLOURS)
        + f"); corrupted fragments sent {result.corrupted_fragments}, malformed-input records"
        f" in the gateway's log {result.decode_errors_logged}.",
        "",
    ]
    rss = data["rss"]
    if rss["first_mb"] is not None:
        slope = rss["slope_second_half_mb_per_h"]
        lines.append(
            f"Gateway RSS: first {rss['first_mb']:.1f} MB, last {rss['last_mb']:.1f} MB,"
            f" max {rss['max_mb']:.1f} MB; slope over the second half (within each process)"
            f" {'n/a' if slope is None else f'{slope:+.2f} MB/h'}."
            f" Outbox depth: max {data['outbox']['max']}, last {data['outbox']['last']}."
        )
    lines += [f"Note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def _plot(result: SoakResult, path: Path) -> None:
    """RSS and outbox depth against minutes, a vertical line per fault (blocking)."""
    import matplotlib  # noqa: PLC0415 - optional (the bench extra), imported when used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_rss, ax_box) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    pids = list(dict.fromkeys(s.pid for s in result.samples if s.pid is not None))
    for i, pid in enumerate(pids):
        points = [(s.t_s / 60, s.rss_mb) for s in result.samples if s.pid == pid]
        ax_rss.plot(*zip(*points, strict=True), color="black", lw=1,
                    label="gateway RSS" if i == 0 else None)  # fmt: skip
    boxes = [(s.t_s / 60, s.outbox) for s in result.samples if s.outbox is not None]
    if boxes:
        ax_box.step(*zip(*boxes, strict=True), where="post", color="purple", lw=1)
    seen: set[str] = set()
    for f in result.faults:
        x0, x1 = ((t - result.started_at) / 60 for t in (f.start, f.end))
        colour = FAULT_COLOURS.get(f.kind, "grey")
        for ax in (ax_rss, ax_box):
            ax.axvline(x0, color=colour, ls="--", lw=0.8,
                       label=f.kind if ax is ax_rss and f.kind not in seen else None)  # fmt: skip
            if f.end - f.start >= 1.0:  # an outage, a gateway down: shaded while it lasts
                ax.axvspan(x0, x1, color=colour, alpha=0.12, lw=0)
        seen.add(f.kind)
    ax_rss.set_ylabel("RSS (MB)")
    ax_box.set_ylabel("outbox depth (rows)")
    ax_box.set_xlabel("minutes")
    ax_rss.legend(loc="lower right", fontsize="small")
    ax_rss.set_title(
        f"gatewayd bench soak: {result.options.minutes:g} min, seed {result.options.seed}"
        " (synthetic sessions)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_artefacts(result: SoakResult, out: Path) -> list[Path]:
    """Write soak.json, soak.md and soak.png into ``out`` (blocking); the paths written.

    The PNG is left out, with a note in the Markdown, when matplotlib is not installed.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "soak.json", out / "soak.md"]
    try:
        _plot(result, out / "soak.png")
        paths.append(out / "soak.png")
    except ImportError:
        result.notes.append("no plot: matplotlib is not installed (pip install 'gatewayd[bench]')")
    paths[0].write_text(json.dumps(soak_json(result), indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(format_soak(result), encoding="utf-8")
    return paths
