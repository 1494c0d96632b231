"""Recordings -> model-input windows and labels, cached per recording, and subject-wise folds.

Every window goes through `gatewayd.signals.preprocess_window` applied to `Recording.window(i)`,
the same call the gateway makes on an offloaded window, so training and serving cannot drift
apart. The preprocessed windows of a recording are cached as one float32 ``.npy`` keyed by the
recording's name, its sample counts and a digest of its samples, so a rerun loads in milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import Recording, find_recordings, generate_recording, load
from gatewayd.datasets.dalia import default_cache_dir
from gatewayd.signals import MODEL_CHANNELS, MODEL_WINDOW_LEN, preprocess_window

log = logging.getLogger(__name__)

#: Bump when preprocess_window changes, so stale caches are not reused.
CACHE_VERSION: Final = 1
#: Activity label of a window without one (TROIKA): masked out of the activity loss.
NO_ACTIVITY: Final = -1


def default_window_cache() -> Path:
    """Return ``$XDG_CACHE_HOME/gatewayd/windows`` (next to the dataset cache)."""
    return default_cache_dir().parent / "windows"


def preprocess_recording(rec: Recording) -> npt.NDArray[np.float32]:
    """Return every window of ``rec`` through preprocess_window, float32 (n, 4, 512)."""
    n = rec.window_count()
    out = np.empty((n, MODEL_CHANNELS, MODEL_WINDOW_LEN), dtype=np.float32)
    for i in range(n):
        out[i] = preprocess_window(*rec.window(i))
    return out


def cache_file(rec: Recording, cache_dir: Path) -> Path:
    """Return the cache path of ``rec``: name, sizes and a digest of the samples."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.ascontiguousarray(rec.bvp).tobytes())
    digest.update(np.ascontiguousarray(rec.acc).tobytes())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{rec.source}-{rec.name}")
    key = f"v{CACHE_VERSION}-{safe}-{rec.bvp.shape[0]}-{rec.acc.shape[0]}-{digest.hexdigest()}"
    return cache_dir / f"{key}.npy"


def windows_of(rec: Recording, cache_dir: Path | None) -> npt.NDArray[np.float32]:
    """Return the preprocessed windows of ``rec``, from the cache when present."""
    if cache_dir is None:
        return preprocess_recording(rec)
    path = cache_file(rec, cache_dir)
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (rec.window_count(), MODEL_CHANNELS, MODEL_WINDOW_LEN):
            return np.asarray(cached, dtype=np.float32)
        log.warning("cache %s has shape %s; recomputing", path, cached.shape)
    x = preprocess_recording(rec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, x)
    tmp.replace(path)
    return x


@dataclass(frozen=True)
class WindowSet:
    """All training windows: inputs, labels (-1 / NaN where unknown) and grouping keys."""

    x: npt.NDArray[np.float32]
    activity: npt.NDArray[np.int64]
    hr_bpm: npt.NDArray[np.float32]
    #: Index into ``subjects`` of every window's Recording.subject_key.
    subject: npt.NDArray[np.int64]
    subjects: tuple[str, ...]
    #: Recording names, with index ``recording`` per window.
    recordings: tuple[str, ...]
    recording: npt.NDArray[np.int64]
    #: Human-readable names of the data used, e.g. "TROIKA (4 subjects, 5 recordings)".
    datasets: tuple[str, ...]
    synthetic: bool

    def __len__(self) -> int:
        """Return the number of windows."""
        return int(self.x.shape[0])

    def subset(self, idx: npt.NDArray[np.int64]) -> WindowSet:
        """Return the windows at ``idx`` (grouping tables unchanged)."""
        return WindowSet(
            x=self.x[idx],
            activity=self.activity[idx],
            hr_bpm=self.hr_bpm[idx],
            subject=self.subject[idx],
            subjects=self.subjects,
            recordings=self.recordings,
            recording=self.recording[idx],
            datasets=self.datasets,
            synthetic=self.synthetic,
        )


def labels_of(rec: Recording) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Return per-window activity group codes (-1 if unknown) and reference HR (NaN if none)."""
    n = rec.window_count()
    activity = np.full(n, NO_ACTIVITY, dtype=np.int64)
    hr = np.full(n, np.nan, dtype=np.float32)
    for i in range(n):
        group = rec.group_for_window(i)
        if group is not ActivityGroup.UNKNOWN:
            activity[i] = int(group)
        h = rec.hr_for_window(i)
        if h is not None:
            hr[i] = h
    return activity, hr


def build_window_set(recordings: Sequence[Recording], cache_dir: Path | None = None) -> WindowSet:
    """Preprocess (or load from the cache) and label every window of ``recordings``."""
    if not recordings:
        raise ValueError("no recordings to train on")
    subjects = tuple(sorted({r.subject_key for r in recordings}))
    xs, acts, hrs, subj, recs = [], [], [], [], []
    for k, rec in enumerate(recordings):
        x = windows_of(rec, cache_dir)
        activity, hr = labels_of(rec)
        xs.append(x)
        acts.append(activity)
        hrs.append(hr)
        subj.append(np.full(len(x), subjects.index(rec.subject_key), dtype=np.int64))
        recs.append(np.full(len(x), k, dtype=np.int64))
    return WindowSet(
        x=np.concatenate(xs),
        activity=np.concatenate(acts),
        hr_bpm=np.concatenate(hrs),
        subject=np.concatenate(subj),
        subjects=subjects,
        recordings=tuple(r.name for r in recordings),
        recording=np.concatenate(recs),
        datasets=describe(recordings),
        synthetic=any(r.source == "synthetic" for r in recordings),
    )


_SOURCE_NAMES: Final = {
    "dalia": "PPG-DaLiA",
    "troika": "TROIKA",
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
    """Load every recording found under each path (PPG-DaLiA, TROIKA, E4 sessions)."""
    out: list[Recording] = []
    for path in paths:
        sources = find_recordings(path)
        if not sources:
            raise FileNotFoundError(f"{path}: no PPG-DaLiA, TROIKA or E4 recordings found")
        out.extend(load(s) for s in sources)
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
