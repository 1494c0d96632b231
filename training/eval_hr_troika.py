"""Evaluate the signal-processing heart-rate estimator on TROIKA recordings, with an ablation.

    .venv/bin/python -m training.eval_hr_troika [--data DIR] [--ppg mean|1|2] [--timing]
        [--sensitivity N]

Prints one Markdown table: MAE (bpm) against the ECG reference ``BPM0`` per recording and the
mean over recordings, for four configurations (spectral peak only; motion suppression only;
tracking only; both). ``--timing`` adds the time per window of the full estimator;
``--sensitivity N`` re-runs the full estimator with every tuning parameter of `HrConfig`
scaled by a random factor in [0.7, 1.3] (N draws, fixed seed), to show how much the result
depends on the defaults chosen on these same recordings. The numbers in docs/signals.md come
from this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from gatewayd.datasets import Recording, load_troika
from gatewayd.datasets.troika import TROIKA_RATE_HZ, is_troika_data
from gatewayd.signals import BVP_RATE_HZ, resample_to
from gatewayd.signals.heart_rate import HrConfig, estimate_hr, estimate_recording

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "troika"

#: The ablation: (label, config).
CONFIGS: tuple[tuple[str, HrConfig], ...] = (
    ("spectral peak only", HrConfig(motion_suppression=False, tracking=False)),
    ("motion suppression only", HrConfig(motion_suppression=True, tracking=False)),
    ("tracking only", HrConfig(motion_suppression=False, tracking=True)),
    ("motion suppression + tracking", HrConfig()),
)


#: The search band is physiology, not a tuning knob: left out of the sensitivity run.
_NOT_TUNED = frozenset({"min_bpm", "max_bpm"})


@dataclass(frozen=True)
class Score:
    """Errors of one configuration on one recording."""

    mae: float
    windows: int
    #: Windows with a reference but no estimate (bpm None); not in the MAE.
    missing: int


def load_recordings(folder: Path, ppg: str = "mean") -> list[Recording]:
    """Load every DATA_*.mat recording with a reference in ``folder``, sorted by name.

    ``ppg`` is "mean" (the reader's BVP: the mean of the two PPG sensors) or "1" / "2" for one
    sensor only, as on a wearable with a single PPG.
    """
    paths = sorted(p for p in folder.glob("*.mat") if is_troika_data(p))
    recordings = []
    for path in paths:
        recording = load_troika(path)
        if recording.hr_ref_bpm is None:
            continue
        if ppg != "mean":
            sig = loadmat(str(path))["sig"]
            row = int(ppg) if sig.shape[0] == 6 else int(ppg) - 1  # row 0 is ECG when present
            bvp = resample_to(sig[row], TROIKA_RATE_HZ, BVP_RATE_HZ).astype(np.float32)
            recording = dataclasses.replace(recording, bvp=bvp[: recording.bvp.shape[0]])
        recordings.append(recording)
    return recordings


def score(recording: Recording, config: HrConfig) -> Score:
    """Run the estimator over a recording and compare it with the reference."""
    bvp, acc = recording.windows()
    estimates = estimate_recording(zip(bvp, acc, strict=True), config=config)
    ref = recording.hr_ref_bpm
    assert ref is not None
    errors: list[float] = []
    missing = 0
    for est, truth in zip(estimates, ref, strict=False):
        if np.isnan(truth):
            continue
        if est.bpm is None:
            missing += 1
        else:
            errors.append(abs(est.bpm - float(truth)))
    mae = float(np.mean(errors)) if errors else float("nan")
    return Score(mae, len(errors) + missing, missing)


def error_by_confidence(
    recordings: Sequence[Recording], edges: Sequence[float] = (0.0, 0.2, 0.5, 0.8, 1.0)
) -> list[tuple[float, float, int, float, float]]:
    """Per confidence band of the full estimator: (lo, hi, windows, MAE, share of errors > 10)."""
    errors: list[float] = []
    confidences: list[float] = []
    for recording in recordings:
        bvp, acc = recording.windows()
        assert recording.hr_ref_bpm is not None
        estimates = estimate_recording(zip(bvp, acc, strict=True))
        for est, truth in zip(estimates, recording.hr_ref_bpm, strict=False):
            if est.bpm is not None and not np.isnan(truth):
                errors.append(abs(est.bpm - float(truth)))
                confidences.append(est.confidence)
    err = np.asarray(errors)
    conf = np.asarray(confidences)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        inside = (conf >= lo) & ((conf < hi) if hi < edges[-1] else (conf <= hi))
        if inside.any():
            rows.append(
                (
                    lo,
                    hi,
                    int(inside.sum()),
                    float(err[inside].mean()),
                    float((err[inside] > 10).mean()),
                )
            )
    return rows


def microseconds_per_window(recording: Recording, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of the full estimator's time per window, in µs."""
    bvp, acc = recording.windows()
    runs = []
    for _ in range(repeats):
        state = None
        start = time.perf_counter()
        for b, a in zip(bvp, acc, strict=True):
            state = estimate_hr(b, a, state=state).state
        runs.append((time.perf_counter() - start) / len(bvp) * 1e6)
    return statistics.median(runs)


def sensitivity(recordings: Sequence[Recording], draws: int, seed: int = 0) -> list[float]:
    """Mean MAE over ``recordings`` for ``draws`` random perturbations of the defaults."""
    rng = np.random.default_rng(seed)
    base = HrConfig()
    numeric = [
        f.name
        for f in dataclasses.fields(base)
        if isinstance(getattr(base, f.name), int | float)
        and not isinstance(getattr(base, f.name), bool)
        and f.name not in _NOT_TUNED
    ]
    means = []
    for _ in range(draws):
        changes: dict[str, float | int] = {}
        for name in numeric:
            value = getattr(base, name)
            scaled = value * rng.uniform(0.7, 1.3)
            changes[name] = max(1, round(scaled)) if isinstance(value, int) else scaled
        config = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        means.append(statistics.fmean(score(r, config).mae for r in recordings))
    return means


def main(argv: Sequence[str] | None = None) -> int:
    """Print the MAE table (and optionally the timing) for the recordings in ``--data``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--timing", action="store_true", help="also time the full estimator")
    parser.add_argument("--sensitivity", type=int, default=0, metavar="N")
    parser.add_argument("--ppg", choices=("mean", "1", "2"), default="mean")
    args = parser.parse_args(argv)
    recordings = load_recordings(args.data, args.ppg)
    if not recordings:
        print(f"no TROIKA recordings with a reference in {args.data}", file=sys.stderr)
        return 1
    names = [r.name for r in recordings]
    print("| configuration | " + " | ".join(names) + " | mean |")
    print("| --- |" + " ---: |" * (len(names) + 1))
    for label, config in CONFIGS:
        scores = [score(r, config) for r in recordings]
        cells = [f"{s.mae:.2f}" + (f" ({s.missing} none)" if s.missing else "") for s in scores]
        mean = statistics.fmean(s.mae for s in scores)
        print(f"| {label} | " + " | ".join(cells) + f" | **{mean:.2f}** |")
    print("\n| confidence (full estimator) | windows | MAE (bpm) | errors > 10 bpm |")
    print("| --- | ---: | ---: | ---: |")
    for lo, hi, count, mae, large in error_by_confidence(recordings):
        print(f"| {lo:.1f}-{hi:.1f} | {count} | {mae:.2f} | {100 * large:.1f} % |")
    if args.timing:
        us = microseconds_per_window(recordings[0])
        print(f"\nfull estimator: {us:.0f} µs per window ({recordings[0].name}, median of 5 runs)")
    if args.sensitivity:
        means = sorted(sensitivity(recordings, args.sensitivity))
        print(
            f"\nsensitivity, {len(means)} random +-30 % perturbations of the tuning parameters: "
            f"mean MAE median {statistics.median(means):.2f}, best {means[0]:.2f}, "
            f"worst {means[-1]:.2f} bpm"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
