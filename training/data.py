"""Recordings -> model-input windows, labels, ACC features and weights; subject-wise folds.

Every window goes through `gatewayd.signals.preprocess.preprocess_window` (the model input v3;
`gatewayd-train --input v2` keeps its first seven channels, the v2 input) applied to
`Recording.window(i)` with the recording's ``has_bvp``, the same call the gateway makes on an
offloaded window, so training and serving cannot drift apart. A set without PPG gets the
model's "no PPG" input (the BVP and ``ppg`` channels zero), never a BVP to learn from.
Labels per window: the activity group (0 rest, 1 light, 2 vigorous; -1 unknown, masked), the
reference heart rate (NaN where unknown or where the window has no PPG, masked), ``has_bvp``.

The preprocessed windows and the ACC features (`gatewayd.signals.acc_features`) of a recording
are cached as float32 ``.npy`` files keyed by `PREPROCESSING_ID` / `ACC_FEATURES_ID`, the
recording's name, sample counts, ``has_bvp`` and a digest of its samples.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from gatewayd.activity import GROUP_NAMES, ActivityGroup
from gatewayd.datasets import Recording, find_recordings, generate_recording, load
from gatewayd.datasets.dalia import default_cache_dir
from gatewayd.signals.acc_features import ACC_FEATURE_NAMES, ACC_FEATURES_ID, acc_features
from gatewayd.signals.preprocess import (
    MODEL_CHANNELS,
    MODEL_WINDOW_LEN,
    PREPROCESSING_ID,
    motion_intensity_g,
    preprocess_window,
)

log = logging.getLogger(__name__)

#: Bump when the cache layout changes; the preprocessing and features are keyed by their ids.
CACHE_VERSION: Final = 2
#: Activity label of a window without a known group: masked out of the activity loss.
NO_ACTIVITY: Final = -1
#: The channels of the model input that carry the PPG: the BVP and the PPG-present flag.
BVP_CHANNEL: Final = 0
PPG_FLAG_CHANNEL: Final = 6
#: How sources are balanced: a source's share of the draws is proportional to its window
#: count to this power (1: as the data come; 0: every source equal; 0.5: in between).
SOURCE_BALANCE_POWER: Final = 0.5
N_GROUPS: Final = len(GROUP_NAMES)


def show_progress() -> bool:
    """Return True when progress bars should be drawn (stderr is a terminal)."""
    return sys.stderr.isatty() and not os.environ.get("GATEWAYD_NO_PROGRESS")


def default_window_cache() -> Path:
    """Return ``$XDG_CACHE_HOME/gatewayd/windows`` (next to the dataset cache)."""
    return default_cache_dir().parent / "windows"


def preprocess_recording(rec: Recording) -> npt.NDArray[np.float32]:
    """Return every window of ``rec`` through preprocess_window, float32 (n, channels, 256)."""
    n = rec.window_count()
    out = np.empty((n, MODEL_CHANNELS, MODEL_WINDOW_LEN), dtype=np.float32)
    for i in range(n):
        bvp, acc = rec.window(i)
        out[i] = preprocess_window(bvp, acc, rec.bvp_rate_hz, rec.acc_rate_hz, has_bvp=rec.has_bvp)
    return out


def features_of_recording(rec: Recording) -> npt.NDArray[np.float32]:
    """Return the ACC features of every window, float32 (n, features + 1); last: spread in g."""
    n = rec.window_count()
    out = np.empty((n, len(ACC_FEATURE_NAMES) + 1), dtype=np.float32)
    for i in range(n):
        acc = rec.window(i)[1]
        out[i, :-1] = acc_features(acc, rec.acc_rate_hz)
        out[i, -1] = motion_intensity_g(np.asarray(acc, dtype=np.float64) / 64.0)
    return out


def cache_file(rec: Recording, cache_dir: Path, kind: str = "windows") -> Path:
    """Return the cache path of ``rec``'s ``kind`` ("windows" or "features")."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update((PREPROCESSING_ID if kind == "windows" else ACC_FEATURES_ID).encode())
    digest.update(b"bvp" if rec.has_bvp else b"nobvp")
    digest.update(np.ascontiguousarray(rec.bvp).tobytes())
    digest.update(np.ascontiguousarray(rec.acc).tobytes())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{rec.source}-{rec.name}")
    key = f"v{CACHE_VERSION}-{kind}-{safe}-{rec.bvp.shape[0]}-{rec.acc.shape[0]}"
    return cache_dir / f"{key}-{digest.hexdigest()}.npy"


def _cached(
    rec: Recording,
    cache_dir: Path | None,
    kind: str,
    shape: tuple[int, ...],
    compute: Callable[[Recording], npt.NDArray[np.float32]],
) -> npt.NDArray[np.float32]:
    if cache_dir is None:
        return compute(rec)
    path = cache_file(rec, cache_dir, kind)
    if path.is_file():
        cached = np.load(path)
        if cached.shape == shape:
            return np.asarray(cached, dtype=np.float32)
        log.warning("cache %s has shape %s; recomputing", path, cached.shape)
    x = compute(rec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, x)
    tmp.replace(path)
    return x


def windows_of(rec: Recording, cache_dir: Path | None) -> npt.NDArray[np.float32]:
    """Return the preprocessed windows of ``rec``, from the cache when present."""
    shape = (rec.window_count(), MODEL_CHANNELS, MODEL_WINDOW_LEN)
    return _cached(rec, cache_dir, "windows", shape, preprocess_recording)


def features_of(rec: Recording, cache_dir: Path | None) -> npt.NDArray[np.float32]:
    """Return the ACC features (and spread) of ``rec``'s windows, from the cache when present."""
    shape = (rec.window_count(), len(ACC_FEATURE_NAMES) + 1)
    return _cached(rec, cache_dir, "features", shape, features_of_recording)


@dataclass(frozen=True)
class WindowSet:
    """All windows: inputs, labels (-1 / NaN where unknown), ACC features and grouping keys."""

    x: npt.NDArray[np.float32]
    activity: npt.NDArray[np.int64]
    hr_bpm: npt.NDArray[np.float32]
    has_bvp: npt.NDArray[np.bool_]
    #: ACC features (N, len(ACC_FEATURE_NAMES)) and the motion spread in g (N,).
    features: npt.NDArray[np.float32]
    spread_g: npt.NDArray[np.float32]
    #: Index into ``subjects`` of every window's Recording.subject_key.
    subject: npt.NDArray[np.int64]
    subjects: tuple[str, ...]
    #: Index into ``sources`` of every window's Recording.source.
    source: npt.NDArray[np.int64]
    sources: tuple[str, ...]
    #: Recording names, with index ``recording`` per window, and the window's index in it.
    recordings: tuple[str, ...]
    recording: npt.NDArray[np.int64]
    window: npt.NDArray[np.int64]
    #: Human-readable names of the data used, e.g. "TROIKA: 4 subjects, 5 recordings".
    datasets: tuple[str, ...]
    synthetic: bool

    def __len__(self) -> int:
        """Return the number of windows."""
        return int(self.x.shape[0])

    def subset(self, idx: npt.NDArray[np.int64]) -> WindowSet:
        """Return the windows at ``idx`` (grouping tables unchanged)."""
        return replace(
            self,
            x=self.x[idx],
            activity=self.activity[idx],
            hr_bpm=self.hr_bpm[idx],
            has_bvp=self.has_bvp[idx],
            features=self.features[idx],
            spread_g=self.spread_g[idx],
            subject=self.subject[idx],
            source=self.source[idx],
            recording=self.recording[idx],
            window=self.window[idx],
        )

    def source_names(self) -> npt.NDArray[np.str_]:
        """Return every window's source name, (N,)."""
        return np.asarray(self.sources, dtype=np.str_)[self.source]

    def subject_ids(self, idx: npt.NDArray[np.int64] | None = None) -> dict[str, list[str]]:
        """Return the subject ids of each source, sorted: every subject's, or only those of the
        windows at ``idx``."""
        keys = (
            self.subjects
            if idx is None
            else [self.subjects[i] for i in np.unique(self.subject[idx])]
        )
        out: dict[str, list[str]] = {}
        for key in keys:
            source, subject = key.split(":", 1)
            out.setdefault(source, []).append(subject)
        return {k: sorted(v) for k, v in sorted(out.items())}


def labels_of(rec: Recording) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Return per-window group codes 0..2 (-1 unknown) and reference HR (NaN, also if no PPG)."""
    n = rec.window_count()
    activity = np.full(n, NO_ACTIVITY, dtype=np.int64)
    hr = np.full(n, np.nan, dtype=np.float32)
    for i in range(n):
        group = rec.group_for_window(i)
        if group != ActivityGroup.UNKNOWN:
            activity[i] = int(group)
        h = rec.hr_for_window(i)
        # Without a PPG channel there is nothing the HR head could read the rate from.
        if h is not None and rec.has_bvp:
            hr[i] = h
    return activity, hr


def build_window_set(
    recordings: Sequence[Recording], cache_dir: Path | None = None, *, stride: int = 1
) -> WindowSet:
    """Preprocess (or load from the cache) and label every ``stride``-th window of each recording.

    ``stride`` 1 keeps the 2 s step of `Recording.window`; 2 keeps a 4 s step.
    """
    if not recordings:
        raise ValueError("no recordings to train on")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    subjects = tuple(sorted({r.subject_key for r in recordings}))
    sources = tuple(sorted({r.source for r in recordings}))
    parts: dict[str, list[npt.NDArray[np.generic]]] = {
        k: [] for k in ("x", "act", "hr", "bvp", "feat", "subj", "src", "rec", "win")
    }
    bar = tqdm(recordings, desc="windows", disable=not show_progress(), leave=False)
    for k, rec in enumerate(bar):
        keep = np.arange(0, rec.window_count(), stride, dtype=np.int64)
        x = windows_of(rec, cache_dir)[keep]
        feats = features_of(rec, cache_dir)[keep]
        activity, hr = labels_of(rec)
        parts["x"].append(x)
        parts["act"].append(activity[keep])
        parts["hr"].append(hr[keep])
        parts["bvp"].append(np.full(len(keep), rec.has_bvp, dtype=np.bool_))
        parts["feat"].append(feats)
        parts["subj"].append(np.full(len(keep), subjects.index(rec.subject_key), np.int64))
        parts["src"].append(np.full(len(keep), sources.index(rec.source), np.int64))
        parts["rec"].append(np.full(len(keep), k, dtype=np.int64))
        parts["win"].append(keep)
    feats = np.concatenate(parts["feat"]).astype(np.float32)
    return WindowSet(
        x=np.concatenate(parts["x"]).astype(np.float32),
        activity=np.concatenate(parts["act"]).astype(np.int64),
        hr_bpm=np.concatenate(parts["hr"]).astype(np.float32),
        has_bvp=np.concatenate(parts["bvp"]).astype(np.bool_),
        features=np.ascontiguousarray(feats[:, :-1]),
        spread_g=np.ascontiguousarray(feats[:, -1]),
        subject=np.concatenate(parts["subj"]).astype(np.int64),
        subjects=subjects,
        source=np.concatenate(parts["src"]).astype(np.int64),
        sources=sources,
        recordings=tuple(r.name for r in recordings),
        recording=np.concatenate(parts["rec"]).astype(np.int64),
        window=np.concatenate(parts["win"]).astype(np.int64),
        datasets=describe(recordings),
        synthetic=any(r.source == "synthetic" for r in recordings),
    )


def sample_probabilities(
    ws: WindowSet, power: float = SOURCE_BALANCE_POWER
) -> npt.NDArray[np.float64]:
    """Return every window's probability of being drawn: sources balanced by ``power``.

    A source with n windows gets a share proportional to n ** power of all draws, spread evenly
    over its windows, so one big set does not decide everything and a small one is not
    repeated dozens of times per epoch.
    """
    counts = np.bincount(ws.source, minlength=len(ws.sources)).astype(np.float64)
    share = np.where(counts > 0, counts**power, 0.0)
    share /= share.sum()
    per_window = share / np.maximum(counts, 1.0)
    probs = per_window[ws.source]
    return np.asarray(probs / probs.sum(), dtype=np.float64)


def group_weights(
    activity: npt.NDArray[np.int64], probs: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Return per-group loss weights that even out the groups as they are drawn (mean 1)."""
    labelled = activity != NO_ACTIVITY
    mass = np.bincount(activity[labelled], weights=probs[labelled], minlength=N_GROUPS)
    present = mass > 0
    weights = np.zeros(N_GROUPS, dtype=np.float64)
    weights[present] = 1.0 / mass[present]
    # Normalised so the drawn labelled windows keep a mean weight of 1.
    weights /= float(np.sum(mass * weights) / mass.sum()) if mass.sum() > 0 else 1.0
    return weights


_SOURCE_NAMES: Final = {
    "dalia": "PPG-DaLiA",
    "wesad": "WESAD",
    "troika": "TROIKA",
    "bami": "BAMI",
    "wrist-ppg-exercise": "PhysioNet wrist PPG during exercise",
    "sp-sw-har": "smartwatch HAR (no PPG)",
    "basic-motions": "UEA BasicMotions (no PPG)",
    "e4": "Empatica E4 sessions",
    "synthetic": "synthetic (gatewayd.datasets.synthetic generator, not measured data)",
}


def describe(recordings: Iterable[Recording]) -> tuple[str, ...]:
    """Name every source used with its subject and recording counts."""
    by_source: dict[str, list[Recording]] = {}
    for rec in recordings:
        by_source.setdefault(rec.source, []).append(rec)
    return tuple(
        f"{_SOURCE_NAMES[src]}: {len({r.subject for r in recs})} subjects, {len(recs)} recordings"
        for src, recs in sorted(by_source.items())
    )


def load_recordings(paths: Iterable[str | os.PathLike[str]]) -> list[Recording]:
    """Load every recording found under each path (any format `find_recordings` knows)."""
    out: list[Recording] = []
    for path in paths:
        sources = find_recordings(path)
        if not sources:
            raise FileNotFoundError(f"{path}: no recordings found")
        bar = tqdm(sources, desc=f"loading {path}", disable=not show_progress(), leave=False)
        out.extend(load(s) for s in bar)
    return out


def synthetic_recordings(subjects: int, minutes: float, seed: int) -> list[Recording]:
    """Generate ``subjects`` synthetic subjects of ``minutes`` each (source "synthetic")."""
    return [generate_recording(i, minutes, seed) for i in range(1, subjects + 1)]


def subject_folds(subject_keys: Sequence[str], k: int, seed: int) -> list[tuple[str, ...]]:
    """Split subject keys into ``k`` held-out groups (``k == 0``: leave one subject out).

    Subjects are shuffled within each source and dealt round-robin, so every source spreads
    over the folds. A subject is in exactly one group, so no subject is ever on both sides.
    """
    keys = sorted(set(subject_keys))
    if k == 0 or k >= len(keys):
        if k > len(keys):
            log.warning("%d folds requested but only %d subjects: leaving one out", k, len(keys))
        return [(key,) for key in keys]
    if k < 2:
        raise ValueError(f"need at least 2 folds (or 0 for leave-one-subject-out), got {k}")
    # Simulation randomness, not a secret: which subjects share a fold.
    rng = random.Random(seed)  # noqa: S311
    by_source: dict[str, list[str]] = {}
    for key in keys:
        by_source.setdefault(key.split(":", 1)[0], []).append(key)
    folds: list[list[str]] = [[] for _ in range(k)]
    slot = 0
    for source in sorted(by_source):
        members = by_source[source]
        rng.shuffle(members)
        for key in members:
            folds[slot % k].append(key)
            slot += 1
    return [tuple(sorted(f)) for f in folds]


def split(ws: WindowSet, held_out: Sequence[str]) -> tuple[npt.NDArray[np.int64], ...]:
    """Return (train_idx, val_idx) for holding out the subjects ``held_out``."""
    held = np.array([ws.subjects.index(s) for s in held_out], dtype=np.int64)
    val_mask = np.isin(ws.subject, held)
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
