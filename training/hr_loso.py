"""Compare heart-rate tracker configurations on the real recordings, chosen subject by subject.

    .venv/bin/python -m training.hr_loso [--data DIR] [--candidate NAME=JSON ...] [--recordings]

Runs the signal-processing tracker (`gatewayd.signals.heart_rate`, the wearable's) over every
recording with an ECG reference in TROIKA, BAMI and PhysioNet wrist-ppg-exercise under
``DIR`` (default ../shared/data), once per candidate configuration (``NAME=JSON``: HrConfig
fields; default: the gait's third harmonic off, at 3 bpm and at 6 bpm). It prints, per
candidate and dataset, the mean over recordings of the MAE (bpm) and the share of windows more
than 10 bpm off; the windows at confidence >= 0.6 (the rules' gate) and how many of those are
more than 10 bpm off; then a leave-one-subject-out selection: for each of the 24 subjects, the
candidate with the best objective on the other 23 is scored on it. The objective is the mean
over the three datasets of log(mean over the dataset's subjects of the subject's MAE), so that
PhysioNet's large errors do not drown TROIKA's small ones (docs/signals.md, "How the parameters
were chosen"). ``--recordings`` adds one row per recording.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from gatewayd.datasets import RecordingSource, find_recordings, load
from gatewayd.signals.heart_rate import HrConfig, estimate_recording

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATASETS = ("troika", "bami", "wrist-ppg-exercise")
DEFAULT_CANDIDATES = (
    'gait-off={"gait_harmonic_tolerance_bpm": 0}',
    'gait-3={"gait_harmonic_tolerance_bpm": 3}',
    'gait-6={"gait_harmonic_tolerance_bpm": 6}',
)
#: The rules' confidence gate (docs/rules.md): below it a heart rate raises nothing.
GATE = 0.6
BAD_BPM = 10.0


@dataclass(frozen=True)
class Scored:
    """One recording under one candidate."""

    dataset: str
    subject: str
    recording: str
    error: npt.NDArray[np.float64]  # |estimate - reference| on windows with both
    confidence: npt.NDArray[np.float64]

    @property
    def mae(self) -> float:
        return float(self.error.mean())


def _candidate(text: str) -> tuple[str, HrConfig]:
    name, _, fields = text.partition("=")
    if not name or not fields:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        return name, HrConfig(**json.loads(fields))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from exc


def _score(job: tuple[str, HrConfig, str, RecordingSource]) -> tuple[str, Scored]:
    name, config, dataset, source = job
    rec = load(source)
    bvp, acc = rec.windows()
    estimates = estimate_recording(zip(bvp, acc, strict=True), config=config)
    ref = np.array([rec.hr_for_window(i) or math.nan for i in range(len(estimates))])
    bpm = np.array([math.nan if e.bpm is None else e.bpm for e in estimates])
    ok = ~np.isnan(ref) & ~np.isnan(bpm)
    conf = np.array([e.confidence for e in estimates])[ok]
    subject = f"{dataset}:{rec.subject}"
    return name, Scored(dataset, subject, rec.name, np.abs(bpm[ok] - ref[ok]), conf)


def _recordings(data: Path) -> list[tuple[str, RecordingSource]]:
    return [(d, source) for d in DATASETS for source in find_recordings(data / d)]


def _subject_mae(scored: Sequence[Scored], subject: str) -> float:
    return float(np.mean([s.mae for s in scored if s.subject == subject]))


def _objective(scored: Sequence[Scored], subjects: Sequence[str]) -> float:
    terms = []
    for dataset in DATASETS:
        mine = [s for s in subjects if s.startswith(dataset + ":")]
        terms.append(math.log(float(np.mean([_subject_mae(scored, s) for s in mine]))))
    return float(np.mean(terms))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--candidate", action="append", type=_candidate, metavar="NAME=JSON")
    p.add_argument("--recordings", action="store_true", help="one row per recording too")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    candidates = dict(args.candidate or [_candidate(c) for c in DEFAULT_CANDIDATES])
    found = _recordings(args.data)
    if not found:
        print(f"no recordings under {args.data}", file=sys.stderr)
        return 2
    jobs = [(n, c, d, source) for n, c in candidates.items() for d, source in found]
    results: dict[str, list[Scored]] = {n: [] for n in candidates}
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, scored in tqdm(pool.map(_score, jobs), total=len(jobs), unit="recording"):
            results[name].append(scored)
    # Recordings without a reference (none here, but a folder may hold them) score nothing.
    results = {n: [s for s in r if s.error.size] for n, r in results.items()}

    print("| candidate | dataset | MAE | > 10 bpm | at confidence >= 0.6 | of those > 10 bpm |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, scored in results.items():
        for dataset in DATASETS:
            mine = [s for s in scored if s.dataset == dataset]
            err = np.concatenate([s.error for s in mine])
            conf = np.concatenate([s.confidence for s in mine])
            sure = conf >= GATE
            bad_sure = int((err[sure] > BAD_BPM).sum())
            share = 100 * bad_sure / max(1, int(sure.sum()))
            print(
                f"| {name} | {dataset} | {np.mean([s.mae for s in mine]):.2f}"
                f" | {100 * np.mean([(s.error > BAD_BPM).mean() for s in mine]):.1f} %"
                f" | {100 * sure.mean():.1f} % | {bad_sure} ({share:.2f} %) |"
            )
    if args.recordings:
        print("\n| recording | " + " | ".join(results) + " |")
        print("| --- |" + " ---: |" * len(results))
        for i, first in enumerate(next(iter(results.values()))):
            row = " | ".join(f"{r[i].mae:.2f}" for r in results.values())
            print(f"| {first.recording} | {row} |")

    subjects = sorted({s.subject for s in next(iter(results.values()))})
    chosen: dict[str, str] = {}
    for held in subjects:
        train = [s for s in subjects if s != held]
        chosen[held] = min(results, key=lambda n: _objective(results[n], train))
    best = min(results, key=lambda n: _objective(results[n], subjects))
    print(
        f"\nbest on all {len(subjects)} subjects: {best}; chosen per held-out subject:",
        ", ".join(f"{n} {k}" for n, k in Counter(chosen.values()).most_common()),
    )
    for held, name in chosen.items():
        if name != best:
            print(f"  {held} held out: {name}")
    held_out = [s for n, scored in results.items() for s in scored if chosen[s.subject] == n]
    maes = {d: np.mean([s.mae for s in held_out if s.dataset == d]) for d in DATASETS}
    print(
        "held-out MAE (mean over recordings):", ", ".join(f"{d} {m:.2f}" for d, m in maes.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
