"""Figure 5 of `gatewayd bench paper`: the wearable's energy, local-only against edge-assisted.

Each session is replayed once through the emulator's wearable core (`WearableCore`): either with
the shipped pruned model on every window, as `gatewayd emulate` runs it (`replay_session`), or,
given a training run's out-of-fold answers, as `gatewayd eval offload --oof` replays it
(`paper_accuracy.replay_held_out`, read here by `session_from_table`). What the core's offload
rule reads per window does not depend on the policy: the window entropy, the confidence (the
model's group probability times the tracker's quality, `offload_confidence_e4`, from the
SUMMARY's own fields) and the fall trigger (the MOTION flag). So every point of the sweep of
tau and the minimum confidence applies the core's own rule (`decide_offload`) to those values:
the decisions the core takes at that policy (a test replays the core at several policies and
checks they are the same). The energy of each decision comes from `gatewayd.energy`: a local
window (inference, SUMMARY), an offloaded one as built (inference, WINDOW: the confidence rule
needs the model's answer) and, beside it, a wearable that checks the entropy and the fall
trigger first and skips its model for the windows they send (`infer=False`).

With the held-out replays, each point also carries the accuracy cost of its decisions (the very
decisions it prices), scored by `paper_accuracy.HeldOutScorer`; with the shipped models it
carries none (they are in-sample on the real sets, docs/paper.md). Pure arithmetic apart from
`replay_session`, which runs the core (and its model) but does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gatewayd.activity import GROUP_NAMES, ActivityGroup
from gatewayd.bench.paper_accuracy import AccuracyPoint, Scorer
from gatewayd.bench.paper_common import markdown_table
from gatewayd.datasets.recording import Recording
from gatewayd.emulator.wearable import LocalActivity, WearableCore, WearableSpec
from gatewayd.energy import (
    Burst,
    EnergyModel,
    battery_hours,
    local_window,
    message_burst,
    offloaded_window,
    window_message_bytes,
)
from gatewayd.eval import SWEEP_TAUS, WindowTable
from gatewayd.inference.session import ModelSession
from gatewayd.protocol.messages import (
    SUMMARY_SIZE,
    MessageFlags,
    SampleFormat,
    Window,
    decode_message,
)
from gatewayd.signals.offload import (
    DEFAULT_MIN_CONF_E4,
    DEFAULT_TAU_MBITS,
    OffloadReason,
    decide_offload,
    offload_confidence_e4,
)

__all__ = [
    "GROUPS",
    "SWEEP_CONFS",
    "SWEEP_TAUS",
    "EnergyPoint",
    "SessionWindows",
    "WindowCosts",
    "decisions",
    "energy_point",
    "format_energy",
    "plot_energy",
    "replay_session",
    "session_from_table",
    "sweep_energy",
]

#: Minimum confidences swept (1/10000): every tenth and the default; the entropy thresholds are
#: `gatewayd.eval.SWEEP_TAUS` (65535 switches the entropy reason off), as `gatewayd eval offload
#: --sweep` sweeps them.
SWEEP_CONFS: Final = tuple(sorted({*range(0, 10001, 1000), DEFAULT_MIN_CONF_E4}))
#: Activity groups reported separately, in this order ("unknown": unlabelled or mixed windows).
GROUPS: Final = (*GROUP_NAMES, "unknown")
_MJ: Final = 1e3


@dataclass(frozen=True, eq=False)
class SessionWindows:
    """One replayed session: per window, what the core's offload rule reads, and its label."""

    name: str
    source: str
    entropy_mbits: npt.NDArray[np.int64]
    confidence_e4: npt.NDArray[np.int64]
    motion: npt.NDArray[np.bool_]
    #: The window's activity group from the recording's labels (255: unknown).
    group: npt.NDArray[np.int64]
    #: What the core itself decided at the replay's policy (``tau_mbits``, ``min_conf_e4``).
    offloaded: npt.NDArray[np.bool_]
    tau_mbits: int
    min_conf_e4: int
    #: Encoded sizes: a SUMMARY, and a WINDOW of the session's sample format.
    summary_bytes: int
    window_bytes: int

    def __len__(self) -> int:
        """Return the number of windows."""
        return int(self.entropy_mbits.shape[0])


def replay_session(
    recording: Recording,
    local_model: ModelSession | Callable[[int], LocalActivity] | None,
    *,
    tau_mbits: int = DEFAULT_TAU_MBITS,
    min_conf_e4: int = DEFAULT_MIN_CONF_E4,
    sample_format: SampleFormat = SampleFormat.INT16,
) -> SessionWindows:
    """Replay a recording once through the wearable core; its messages, as the gateway
    decodes them, give each window's entropy, confidence and fall trigger."""
    spec = WearableSpec(
        address="C0:FF:EE:00:00:05",
        name=recording.name,
        recording=recording,
        boot_id=0,
        sample_format=sample_format,
        tau_mbits=tau_mbits,
        min_conf_e4=min_conf_e4,
    )
    core = WearableCore(spec, local_model=local_model)
    encoded = [raw for _, raw in core.produce(math.inf)]
    messages = [decode_message(raw) for raw in encoded]
    summaries = [m.summary if isinstance(m, Window) else m for m in messages]
    windows = [len(raw) for raw, m in zip(encoded, messages, strict=True) if isinstance(m, Window)]
    kept = [len(raw) for raw, m in zip(encoded, messages, strict=True) if not isinstance(m, Window)]
    sample_bytes = np.dtype(sample_format.dtype).itemsize
    n = len(messages)
    return SessionWindows(
        name=recording.name,
        source=recording.source,
        entropy_mbits=np.array([s.entropy_mbits for s in summaries], dtype=np.int64),
        confidence_e4=np.array(
            [
                offload_confidence_e4(s.activity_conf_e4, s.signal_quality, s.hr_cbpm, s.activity)
                for s in summaries
            ],
            dtype=np.int64,
        ),
        motion=np.array(
            [bool(s.flags & MessageFlags.OFFLOAD_MOTION) for s in summaries], dtype=np.bool_
        ),
        group=np.array([int(recording.group_for_window(i)) for i in range(n)], dtype=np.int64),
        offloaded=np.array([isinstance(m, Window) for m in messages], dtype=np.bool_),
        tau_mbits=tau_mbits,
        min_conf_e4=min_conf_e4,
        summary_bytes=max(kept) if kept else SUMMARY_SIZE,
        window_bytes=max(windows) if windows else window_message_bytes(sample_bytes),
    )


def session_from_table(
    table: WindowTable, *, tau_mbits: int, min_conf_e4: int, sample_format: SampleFormat
) -> SessionWindows:
    """What the offload rule reads per window, from a `gatewayd.eval.replay` of a recording at
    the policy (``tau_mbits``, ``min_conf_e4``) it was replayed with; its labels as the window's
    group. The message sizes are the protocol's for the replay's ``sample_format``."""
    return SessionWindows(
        name=table.name,
        source=table.source,
        entropy_mbits=table.entropy_mbits.astype(np.int64),
        confidence_e4=table.confidence_e4(),
        motion=(table.flags & int(MessageFlags.OFFLOAD_MOTION)) != 0,
        group=table.truth.astype(np.int64),
        offloaded=table.offloaded.copy(),
        tau_mbits=tau_mbits,
        min_conf_e4=min_conf_e4,
        summary_bytes=SUMMARY_SIZE,
        window_bytes=window_message_bytes(np.dtype(sample_format.dtype).itemsize),
    )


def decisions(windows: SessionWindows, tau_mbits: int, min_conf_e4: int) -> npt.NDArray[np.int64]:
    """The core's offload reasons (`OffloadReason` bits, 0: kept local) per window at a policy."""
    return np.array(
        [
            int(decide_offload(int(e), int(c), tau_mbits, min_conf_e4, motion=bool(m)))
            for e, c, m in zip(
                windows.entropy_mbits, windows.confidence_e4, windows.motion, strict=True
            )
        ],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class WindowCosts:
    """What one window costs the wearable in each case, J, and the messages on the link."""

    #: Local only: inference, a SUMMARY.
    local_j: float
    #: Offloaded as built: inference (the confidence rule needs it), a WINDOW.
    offloaded_j: float
    #: Offloaded without running the model (a wearable that checks entropy and the fall
    #: trigger first): a WINDOW.
    offloaded_skip_j: float
    summary: Burst
    window: Burst
    summary_bytes: int
    window_bytes: int
    macs: int
    int8: bool
    period_s: float

    @classmethod
    def of(
        cls,
        macs: int,
        *,
        int8: bool,
        summary_bytes: int,
        window_bytes: int,
        model: EnergyModel | None = None,
    ) -> WindowCosts:
        """The costs of the wearable's model at these message sizes (`gatewayd.energy`)."""
        base = replace(
            model or EnergyModel(), summary_bytes=summary_bytes, window_bytes=window_bytes
        )
        return cls(
            local_j=local_window(macs, int8=int8, model=base).total_j,
            offloaded_j=offloaded_window(macs, int8=int8, model=base).total_j,
            offloaded_skip_j=offloaded_window(macs, int8=int8, infer=False, model=base).total_j,
            summary=message_burst(summary_bytes, base.link.mtu, base.radio),
            window=message_burst(window_bytes, base.link.mtu, base.radio),
            summary_bytes=summary_bytes,
            window_bytes=window_bytes,
            macs=macs,
            int8=int8,
            period_s=base.period_s,
        )

    def to_json(self) -> dict[str, Any]:
        """The costs in mJ and the bursts."""
        return {
            "macs": self.macs,
            "int8": self.int8,
            "period_s": self.period_s,
            "local_mj": _MJ * self.local_j,
            "offloaded_mj": _MJ * self.offloaded_j,
            "offloaded_model_skipped_mj": _MJ * self.offloaded_skip_j,
            "summary": {
                "bytes": self.summary_bytes,
                "notifications": self.summary.notifications,
                "ll_packets": self.summary.ll_packets,
                "air_bytes": self.summary.air_bytes,
            },
            "window": {
                "bytes": self.window_bytes,
                "notifications": self.window.notifications,
                "ll_packets": self.window.ll_packets,
                "air_bytes": self.window.air_bytes,
            },
        }


@dataclass(frozen=True)
class EnergyPoint:
    """One policy over some windows: how many were offloaded and what they cost."""

    tau_mbits: int
    min_conf_e4: int
    windows: int
    offloaded: int
    #: Offloaded windows by reason (a window may have several).
    entropy: int
    confidence: int
    motion: int
    #: Offloaded for the entropy or the fall trigger (their model run could be skipped).
    skippable: int
    #: Mean energy per window, J: local only, as built, and skipping the model where it can.
    local_only_j: float
    as_built_j: float
    model_skipped_j: float
    #: The accuracy cost of these decisions (held-out replays only), else None.
    accuracy: AccuracyPoint | None = None

    @property
    def offload_ratio(self) -> float:
        """Share of windows offloaded (NaN: no window)."""
        return self.offloaded / self.windows if self.windows else math.nan

    def saved(self, mean_j: float) -> float:
        """Energy saved against local only, as a share (negative: it costs more)."""
        return 1.0 - mean_j / self.local_only_j if self.windows else math.nan

    def to_json(self, period_s: float) -> dict[str, Any]:
        """The point as JSON; energies in mJ per window, battery hours on the energy model's
        CR2032 at that mean power."""
        doc: dict[str, Any] = {
            "tau_mbits": self.tau_mbits,
            "min_conf_e4": self.min_conf_e4,
            "windows": self.windows,
            "offloaded": self.offloaded,
            "offload_ratio": _none(self.offload_ratio),
            "reasons": {
                "entropy": self.entropy,
                "confidence": self.confidence,
                "motion": self.motion,
            },
            "skippable": self.skippable,
        }
        for key, mean in (
            ("local_only", self.local_only_j),
            ("as_built", self.as_built_j),
            ("model_skipped", self.model_skipped_j),
        ):
            doc[key] = {
                "mj_per_window": _none(_MJ * mean),
                "saved_vs_local_only": _none(self.saved(mean)),
                "battery_h": _none(battery_hours(mean / period_s) if mean > 0 else math.nan),
            }
        if self.accuracy is not None:
            doc["accuracy"] = self.accuracy.to_json()
        return doc


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def energy_point(
    reasons: npt.NDArray[np.int64], costs: WindowCosts, tau_mbits: int, min_conf_e4: int
) -> EnergyPoint:
    """Count the reasons of some windows at a policy and price them."""
    n = int(reasons.shape[0])
    off = reasons != 0
    entropy = (reasons & int(OffloadReason.ENTROPY)) != 0
    motion = (reasons & int(OffloadReason.MOTION)) != 0
    confidence = (reasons & int(OffloadReason.LOW_CONFIDENCE)) != 0
    skippable = int((entropy | motion).sum())
    k = int(off.sum())
    kept = n - k
    mean = (lambda total: total / n) if n else (lambda total: math.nan)
    return EnergyPoint(
        tau_mbits=tau_mbits,
        min_conf_e4=min_conf_e4,
        windows=n,
        offloaded=k,
        entropy=int(entropy.sum()),
        confidence=int(confidence.sum()),
        motion=int(motion.sum()),
        skippable=skippable,
        local_only_j=costs.local_j,
        as_built_j=mean(kept * costs.local_j + k * costs.offloaded_j),
        model_skipped_j=mean(
            kept * costs.local_j
            + (k - skippable) * costs.offloaded_j
            + skippable * costs.offloaded_skip_j
        ),
    )


@dataclass(frozen=True)
class SweepResult:
    """Every point of the sweep, pooled and per activity group."""

    pooled: list[EnergyPoint]
    groups: dict[str, list[EnergyPoint]]
    #: At the replay's own policy, the swept rule took exactly the core's decisions.
    core_agrees: bool

    @property
    def has_accuracy(self) -> bool:
        """Whether the points carry an accuracy cost."""
        return any(p.accuracy is not None for p in self.pooled)


def sweep_energy(
    sessions: Sequence[SessionWindows],
    costs: WindowCosts,
    *,
    taus: Sequence[int] = SWEEP_TAUS,
    confs: Sequence[int] = SWEEP_CONFS,
    score: Scorer | None = None,
) -> SweepResult:
    """Apply the core's rule at every (tau, min_conf) to every window; price each point, and,
    given ``score`` (the sessions' windows in the same order), score the same decisions."""
    group = np.concatenate([s.group for s in sessions]) if sessions else np.empty(0, np.int64)
    masks = {name: group == _code(name) for name in GROUPS}
    pooled: list[EnergyPoint] = []
    groups: dict[str, list[EnergyPoint]] = {name: [] for name in GROUPS if masks[name].any()}
    for tau in taus:
        for conf in confs:
            reasons = (
                np.concatenate([decisions(s, tau, conf) for s in sessions])
                if sessions
                else np.empty(0, np.int64)
            )
            pooled.append(_scored(energy_point(reasons, costs, tau, conf), score, reasons, None))
            for name, points in groups.items():
                point = energy_point(reasons[masks[name]], costs, tau, conf)
                points.append(_scored(point, score, reasons, masks[name]))
    agrees = all(
        np.array_equal(decisions(s, s.tau_mbits, s.min_conf_e4) != 0, s.offloaded) for s in sessions
    )
    return SweepResult(pooled=pooled, groups=groups, core_agrees=agrees)


def _scored(
    point: EnergyPoint,
    score: Scorer | None,
    reasons: npt.NDArray[np.int64],
    keep: npt.NDArray[np.bool_] | None,
) -> EnergyPoint:
    """The point with the accuracy of its own decisions (``reasons``, on the ``keep`` windows)."""
    if score is None:
        return point
    accuracy = score(reasons != 0, keep)
    if (accuracy.windows, accuracy.offloaded) != (point.windows, point.offloaded):
        raise ValueError("the accuracy was scored on other windows or decisions than the energy")
    return replace(point, accuracy=accuracy)


def _code(name: str) -> int:
    return GROUP_NAMES.index(name) if name in GROUP_NAMES else int(ActivityGroup.UNKNOWN)


def at(points: Sequence[EnergyPoint], tau_mbits: int, min_conf_e4: int) -> EnergyPoint | None:
    """The point of a policy, if swept."""
    return next(
        (p for p in points if (p.tau_mbits, p.min_conf_e4) == (tau_mbits, min_conf_e4)), None
    )


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f} %"


def _signed(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, "+" + spec)


def _point_cells(p: EnergyPoint, *, accuracy: bool = False) -> list[str]:
    tau = "off" if p.tau_mbits >= 65535 else f"{p.tau_mbits / 1000:.2f}"
    cells = [
        tau, f"{p.min_conf_e4 / 10000:g}", _pct(p.offload_ratio),
        f"{_MJ * p.local_only_j:.3f}", f"{_MJ * p.as_built_j:.3f}",
        _pct(p.saved(p.as_built_j)), f"{_MJ * p.model_skipped_j:.3f}",
        _pct(p.saved(p.model_skipped_j)),
    ]  # fmt: skip
    if accuracy:
        a = p.accuracy
        if a is None:
            cells += ["-"] * len(ACCURACY_HEAD)
        else:
            cells += [
                _pct(a.bad_window_recall),
                _pct(a.reported_activity_accuracy),
                _signed(100 * a.activity_accuracy_change, ".1f"),
                "-" if math.isnan(a.reported_hr_mae_bpm) else f"{a.reported_hr_mae_bpm:.2f}",
                _signed(a.hr_mae_change_bpm, ".2f"),
            ]
    return cells


POINT_HEAD: Final = (
    "tau (bits)", "min confidence", "offloaded", "local only mJ", "edge-assisted mJ",
    "saved", "edge-assisted, model skipped mJ", "saved (model skipped)",
)  # fmt: skip
#: The accuracy columns of a point (held-out replays only).
ACCURACY_HEAD: Final = (
    "bad-window recall", "activity accuracy reported", "vs local only, points",
    "HR MAE reported, bpm", "vs local only, bpm",
)  # fmt: skip


def _local_only_line(result: SweepResult) -> list[str]:
    """The accuracy section's opening: what is scored and the local-only figures."""
    first = next((p.accuracy for p in result.pooled if p.accuracy is not None), None)
    if first is None:
        return []
    return [
        "**Accuracy cost, held out.** At each point: what the gateway reports (the wearable's"
        " answer on the windows kept local, the gateway's on the windows offloaded) against"
        " local only (every window answered by the wearable), from the out-of-fold answers, on"
        " the very decisions the energy prices. Activity: the share of the"
        f" {first.activity_windows} windows with a known group whose group is right; local"
        f" only {_pct(first.local_activity_accuracy)}. Heart rate: the MAE over the"
        f" {first.hr_windows} windows with a reference where the wearable and the gateway both"
        " answered; local only"
        f" {'-' if math.isnan(first.local_hr_mae_bpm) else f'{first.local_hr_mae_bpm:.2f}'}"
        " bpm. Bad-window recall: the share of the bad local windows (the wearable's heart"
        " rate more than 10 bpm off the reference or none, or its group wrong;"
        f" {first.bad} of the {first.scored} windows with a reference or a label) that are"
        " offloaded. Windows without a reference or a label are not scored.",
        "",
    ]


def format_energy(
    result: SweepResult,
    costs: WindowCosts,
    *,
    model_id: str,
    sessions_line: str,
    decisions_line: str,
    accuracy_line: str = "",
) -> str:
    """Figure 5's Markdown: the costs, two cross-sections of the sweep, the groups.

    ``decisions_line`` says what drove the decisions; ``accuracy_line``, when the points carry
    no accuracy, why not.
    """
    dt, dc = DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4
    acc = result.has_accuracy
    head = (*POINT_HEAD, *ACCURACY_HEAD) if acc else POINT_HEAD
    lines = [
        "## Figure 5: energy, local-only against edge-assisted",
        "",
        sessions_line,
        "",
        f"The wearable's model: `{model_id}` ({costs.macs / 1e6:.2f} M MACs,"
        f" {'int8' if costs.int8 else 'fp32'}). {decisions_line} Energy per window from the"
        " energy model (gatewayd/energy.py, docs/energy.md: nRF52840, BLE 1M, a 2 s window"
        f" step): local {_MJ * costs.local_j:.3f} mJ (a SUMMARY, {costs.summary_bytes} bytes,"
        f" {costs.summary.notifications} notification), offloaded {_MJ * costs.offloaded_j:.3f}"
        f" mJ (a WINDOW, {costs.window_bytes} bytes, {costs.window.notifications} notifications,"
        f" {costs.window.ll_packets} LL packets, the model still run), offloaded with the model"
        f" skipped {_MJ * costs.offloaded_skip_j:.3f} mJ. *Edge-assisted* is the protocol as"
        " built; *model skipped* is a wearable that checks the entropy and the fall trigger"
        " first and runs its model only when they do not offload (the confidence rule needs it)."
        " *Saved* is against local only; negative: it costs more.",
        "",
        "The decisions at each point are the wearable core's"
        + (
            " (checked: at the replay's own policy they equal the core's)."
            if result.core_agrees
            else " (WARNING: at the replay's own policy they differ from the core's)."
        )
        + (f" {accuracy_line}" if accuracy_line and not acc else ""),
        "",
        *_local_only_line(result),
        f"### Minimum confidence swept at the default tau ({dt / 1000:.2f} bits)",
        "",
        *markdown_table(
            head, [_point_cells(p, accuracy=acc) for p in result.pooled if p.tau_mbits == dt]
        ),
        "",
        f"### Tau swept at the default minimum confidence ({dc / 10000:g})",
        "",
        *markdown_table(
            head, [_point_cells(p, accuracy=acc) for p in result.pooled if p.min_conf_e4 == dc]
        ),
        "",
        f"### Per activity group, at the default policy (tau {dt / 1000:.2f} bits, min"
        f" confidence {dc / 10000:g})",
        "",
    ]
    rows = []
    for name, points in result.groups.items():
        p = at(points, dt, dc)
        if p is None:
            continue
        rows.append([name, str(p.windows), *_point_cells(p, accuracy=acc)[2:]])
    lines += markdown_table(("group", "windows", *head[2:]), rows)
    lines += [
        "",
        "Every point (JSON: `points`, and `groups` per activity group) is in fig5_energy.json.",
        "",
    ]
    return "\n".join(lines)


def _tau_name(tau: int) -> str:
    return "off" if tau >= 65535 else f"{tau / 1000:.2f}"


def _curves(points: Sequence[EnergyPoint]) -> list[tuple[int, list[EnergyPoint]]]:
    """Per tau, its points with windows, by offload ratio."""
    taus = sorted({p.tau_mbits for p in points})
    return [
        (
            tau,
            sorted(
                (p for p in points if p.tau_mbits == tau and p.windows),
                key=lambda p: (p.offload_ratio, p.min_conf_e4),
            ),
        )
        for tau in taus
    ]


def plot_energy(result: SweepResult, costs: WindowCosts, path: Path, *, label: str) -> Path:
    """fig5_energy.png: energy per window against the offload ratio over the sweep, and per
    activity group at the default policy; with an accuracy cost, two more panels: activity
    accuracy and bad-window recall, and HR MAE, against the offload ratio. Needs matplotlib."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    acc = result.has_accuracy
    fig = Figure(figsize=(13, 9.6 if acc else 4.8))
    axes = fig.subplots(2 if acc else 1, 2, gridspec_kw={"width_ratios": [3, 2]}, squeeze=False)
    ax, ax_groups = axes[0]
    default = at(result.pooled, DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4)
    for k, (tau, points) in enumerate(_curves(result.pooled)):
        x = [p.offload_ratio for p in points]
        colour = f"C{k % 10}"
        ax.plot(x, [_MJ * p.as_built_j for p in points], "o-", color=colour, markersize=3,
                label=f"tau {_tau_name(tau)}")  # fmt: skip
        ax.plot(x, [_MJ * p.model_skipped_j for p in points], "^:", color=colour, markersize=3)
    ax.axhline(_MJ * costs.local_j, color="black", linewidth=1.2, label="local only")
    if default is not None and default.windows:
        ax.plot([default.offload_ratio], [_MJ * default.as_built_j], "k*", markersize=12,
                label="default policy")  # fmt: skip
    ax.set_xlabel("offload ratio (share of windows sent raw)")
    ax.set_ylabel("wearable energy per window, mJ (model)")
    ax.set_title(
        "Sweep of tau x min confidence: solid = edge-assisted as built,"
        " dotted = model skipped for entropy / fall offloads",
        fontsize=8,
    )
    ax.legend(fontsize=6, ncol=2)
    names = list(result.groups)
    width = 0.25
    bars = (("local only", "local_only_j"), ("edge-assisted", "as_built_j"),
            ("model skipped", "model_skipped_j"))  # fmt: skip
    for j, (title, attr) in enumerate(bars):
        values = []
        for name in names:
            p = at(result.groups[name], DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4)
            values.append(math.nan if p is None else _MJ * getattr(p, attr))
        ax_groups.bar([i + (j - 1) * width for i in range(len(names))], values, width,
                      label=title, color=f"C{j}")  # fmt: skip
    ratios = [at(result.groups[n], DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4) for n in names]
    ax_groups.set_xticks(
        range(len(names)),
        [
            f"{n}\n{_pct(p.offload_ratio) if p else '-'} offloaded"
            for n, p in zip(names, ratios, strict=True)
        ],
        fontsize=8,
    )
    ax_groups.set_ylabel("mJ per window (model)")
    ax_groups.set_title("Per activity group, default policy", fontsize=8)
    ax_groups.legend(fontsize=7)
    if acc:
        _plot_accuracy(axes[1][0], axes[1][1], result, costs)
    title = f"gatewayd bench paper: Figure 5, wearable energy ({label})"
    if acc:
        title += "; accuracy cost held out (out-of-fold answers)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _plot_accuracy(ax_act: Any, ax_hr: Any, result: SweepResult, costs: WindowCosts) -> None:
    """The accuracy panels: activity accuracy reported (solid) and bad-window recall (dotted),
    and the HR MAE reported, against the offload ratio; the as-built energy saved on top."""
    first = next(p.accuracy for p in result.pooled if p.accuracy is not None)
    default = at(result.pooled, DEFAULT_TAU_MBITS, DEFAULT_MIN_CONF_E4)
    for k, (tau, points) in enumerate(_curves(result.pooled)):
        scored = [(p.offload_ratio, p.accuracy) for p in points if p.accuracy is not None]
        x = [r for r, _ in scored]
        colour = f"C{k % 10}"
        ax_act.plot(x, [100 * a.reported_activity_accuracy for _, a in scored], "o-",
                    color=colour, markersize=3, label=f"tau {_tau_name(tau)}")  # fmt: skip
        ax_act.plot(x, [100 * a.bad_window_recall for _, a in scored], ":", color=colour,
                    linewidth=1)  # fmt: skip
        ax_hr.plot(x, [a.reported_hr_mae_bpm for _, a in scored], "o-", color=colour,
                   markersize=3, label=f"tau {_tau_name(tau)}")  # fmt: skip
    ax_act.axhline(100 * first.local_activity_accuracy, color="black", linewidth=1.2,
                   label="local only")  # fmt: skip
    ax_hr.axhline(first.local_hr_mae_bpm, color="black", linewidth=1.2, label="local only")
    if default is not None and default.accuracy is not None and default.windows:
        a = default.accuracy
        ax_act.plot([default.offload_ratio], [100 * a.reported_activity_accuracy], "k*",
                    markersize=12, label="default policy")  # fmt: skip
        ax_act.plot([default.offload_ratio], [100 * a.bad_window_recall], "k*", markersize=8)
        ax_hr.plot([default.offload_ratio], [a.reported_hr_mae_bpm], "k*", markersize=12,
                   label="default policy")  # fmt: skip
    ax_act.set_ylabel("%, held out")
    ax_act.set_title(
        f"Activity group accuracy of what the gateway reports (solid; {first.activity_windows}"
        " labelled windows) and bad-window recall (dotted)",
        fontsize=8,
    )
    ax_hr.set_ylabel("HR MAE of what the gateway reports, bpm, held out")
    ax_hr.set_title(f"Heart rate ({first.hr_windows} windows with a reference)", fontsize=8)
    extra = costs.offloaded_j - costs.local_j
    for panel, where in ((ax_act, "center right"), (ax_hr, "best")):
        panel.set_xlabel("offload ratio (share of windows sent raw)")
        panel.set_xlim(-0.02, 1.02)
        panel.grid(alpha=0.3)
        panel.legend(fontsize=6, ncol=2, loc=where)
        if extra > 0:
            top = panel.secondary_xaxis(
                "top",
                functions=(
                    lambda r: -100 * r * extra / costs.local_j,
                    lambda s: -s * costs.local_j / (100 * extra),
                ),
            )
            top.set_xlabel("energy saved as built vs local only, % (negative: costs more)",
                           fontsize=7)  # fmt: skip
            top.tick_params(labelsize=7)
