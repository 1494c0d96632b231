"""WESAD (Schmidt et al., ICMI 2018): ``SX/SX.pkl`` -> `Recording`, read like PPG-DaLiA's.

WESAD is not in ../shared/data; this reader follows the set's readme and is tested on small
pickles written in its layout. A subject's pickle is the PPG-DaLiA family: a dict with
``signal -> wrist`` (the Empatica E4: ``BVP`` 64 Hz, ``ACC`` 32 Hz in 1/64 g, ``EDA``,
``TEMP`` 4 Hz), ``signal -> chest`` (RespiBAN at 700 Hz: ``ACC``, ``ECG``, ``EMG``, ``EDA``,
``Temp``, ``Resp``), ``label`` (one per chest sample, 700 Hz: 0 not defined / transient,
1 baseline, 2 stress, 3 amusement, 4 meditation, 5-7 to be ignored) and ``subject``. It has
no ``activity`` and no ``rpeaks``, which is how `gatewayd.datasets.dalia.looks_like_wesad`
tells it from PPG-DaLiA's (whose ``label`` is one heart rate per window).

- The pickle is read by the same restricted, streaming unpickler as PPG-DaLiA's, keeping only
  ``ECG`` of the chest signals; the result goes to the same kind of ``.npz`` cache
  (``wesad-<stem>-<hash>.npz``). A first load through `load_subject_pickle` reads the pickle
  twice (once as PPG-DaLiA, which finds WESAD's keys, then keeping the ECG); later loads read
  the cache.
- BVP and ACC are taken as they are (the wearable's own rates and units).
- labels at 4 Hz: the most common raw label of each 0.25 s (175 samples); 0 -> ``transient``,
  1-4 -> their names, 5-7 -> unlabelled.
- ``hr_ref_bpm`` is **derived**: R-peaks detected in the chest ECG by
  `gatewayd.datasets.ecg.detect_rpeaks`, then `hr_from_rpeaks` with the 25 % regularity gate
  (a window with a missed or extra beat gets NaN); ``hr_ref_kind`` is ``"ecg-derived"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from gatewayd.datasets.dalia import (
    WesadLayoutError,
    cache_path_for,
    load_dalia,
    looks_like_wesad,
    pickle_in,
    read_npz_cache,
    restricted_load,
    write_npz_cache,
)
from gatewayd.datasets.ecg import detect_rpeaks, hr_from_rpeaks
from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, NO_LABEL, DatasetError, Recording
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, window_count

__all__ = [
    "CHEST_RATE_HZ",
    "RR_MAX_DEVIATION",
    "WESAD_LABELS",
    "load_subject_pickle",
    "load_wesad",
    "wesad_labels_at_4hz",
]

_log = structlog.get_logger(__name__)

#: RespiBAN rate: WESAD's chest signals and ``label``.
CHEST_RATE_HZ: Final = 700
#: The conditions, index = raw WESAD label 0-4 = code in `Recording.labels`.
WESAD_LABELS: Final = ("transient", "baseline", "stress", "amusement", "meditation")
#: A window whose detected RR intervals stray further than this from their median gets no
#: reference (docs/datasets.md: on PhysioNet's annotated exercise ECG this answers 67 % of the
#: windows and leaves 2.6 % of those more than 5 bpm off).
RR_MAX_DEVIATION: Final = 0.25
#: Slack between the wrist and chest durations, s (the set's signals are synchronised).
_DURATION_SLACK_S: Final = 5.0
_CACHE_PREFIX: Final = "wesad"


def wesad_labels_at_4hz(raw: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Turn WESAD's 700 Hz labels into 4 Hz codes into `WESAD_LABELS` (-1: ignore/undefined)."""
    values = np.asarray(raw).reshape(-1)
    block = CHEST_RATE_HZ // ACTIVITY_RATE_HZ
    n = values.size // block
    blocks = values[: n * block].reshape(n, block)
    counts = np.stack([(blocks == v).sum(axis=1) for v in range(8)], axis=1)
    # The most common raw label per slot; a tie goes to the smaller label.
    mode = counts.argmax(axis=1)
    return np.where(mode < len(WESAD_LABELS), mode, NO_LABEL).astype(np.int8)


@dataclass(frozen=True)
class _Arrays:
    bvp: npt.NDArray[np.float32]
    acc: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int8]
    hr: npt.NDArray[np.float64]
    meta: dict[str, Any]


def _array(tree: dict[str, Any], dotted: str, path: Path) -> npt.NDArray[Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DatasetError(path, f"missing key {dotted}")
        node = node[part]
    if not isinstance(node, np.ndarray) or node.dtype.kind not in "biuf":
        raise DatasetError(path, f"{dotted} is not a numeric array")
    if not np.isfinite(node).all():
        raise DatasetError(path, f"{dotted} contains NaN or infinite values")
    return node


def _column(arr: npt.NDArray[Any], dotted: str, path: Path) -> npt.NDArray[Any]:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DatasetError(path, f"{dotted} has shape {arr.shape}, expected (n, 1) or (n,)")
    return arr


def _extract(tree: object, path: Path) -> _Arrays:
    if not isinstance(tree, dict):
        raise DatasetError(path, f"top level is {type(tree).__name__}, expected a dict")
    if not looks_like_wesad(tree):
        raise DatasetError(path, "not WESAD's layout (it has activity/rpeaks or a short label)")
    bvp = _column(_array(tree, "signal.wrist.BVP", path), "signal.wrist.BVP", path)
    acc = _array(tree, "signal.wrist.ACC", path)
    if acc.ndim != 2 or acc.shape[1] != 3:
        raise DatasetError(path, f"signal.wrist.ACC has shape {acc.shape}, expected (n, 3)")
    ecg = _column(_array(tree, "signal.chest.ECG", path), "signal.chest.ECG", path)
    label = _column(_array(tree, "label", path), "label", path)
    if label.shape[0] != ecg.shape[0]:
        raise DatasetError(
            path, f"label has {label.shape[0]} values but signal.chest.ECG {ecg.shape[0]}"
        )
    duration = ecg.shape[0] / CHEST_RATE_HZ
    for dotted, arr, rate in (
        ("signal.wrist.BVP", bvp, BVP_RATE_HZ),
        ("signal.wrist.ACC", acc, ACC_RATE_HZ),
    ):
        if abs(arr.shape[0] / rate - duration) > _DURATION_SLACK_S:
            raise DatasetError(
                path,
                f"{dotted} covers {arr.shape[0] / rate:.1f} s but the chest signals "
                f"{duration:.1f} s",
            )
    ticks = min(bvp.shape[0] // 2, acc.shape[0])
    bvp, acc = bvp[: 2 * ticks], acc[:ticks]
    windows = min(window_count(bvp.shape[0], BVP_RATE_HZ), window_count(ticks, ACC_RATE_HZ))
    peaks = detect_rpeaks(ecg, CHEST_RATE_HZ)
    hr = hr_from_rpeaks(peaks / CHEST_RATE_HZ, windows, max_deviation=RR_MAX_DEVIATION)
    subject = tree.get("subject")
    return _Arrays(
        bvp=bvp.astype(np.float32),
        acc=acc.astype(np.float32),
        labels=wesad_labels_at_4hz(label),
        hr=hr,
        meta={
            "subject": subject if isinstance(subject, str) else None,
            "rpeaks_detected": int(peaks.size),
        },
    )


_CACHED: Final = ("bvp", "acc", "labels", "hr")


def _write_cache(cache: Path, arrays: _Arrays) -> None:
    write_npz_cache(cache, {name: getattr(arrays, name) for name in _CACHED}, arrays.meta)


def _read_cache(cache: Path) -> _Arrays | None:
    read = read_npz_cache(cache, _CACHED)
    if read is None:
        return None
    npz, meta = read
    return _Arrays(bvp=npz["bvp"], acc=npz["acc"], labels=npz["labels"], hr=npz["hr"], meta=meta)


def _open_rb(path: Path) -> IO[bytes]:
    return path.open("rb", buffering=1 << 16)


def load_wesad(
    path: str | os.PathLike[str], *, cache_dir: Path | None = None, use_cache: bool = True
) -> Recording:
    """Load a WESAD ``SX.pkl`` (or ``SX/`` folder): wrist signals, labels, derived ECG HR."""
    pkl = pickle_in(Path(path))
    try:
        cache = cache_path_for(pkl, cache_dir, prefix=_CACHE_PREFIX) if use_cache else None
    except OSError as exc:
        raise DatasetError(pkl, f"cannot read: {exc.strerror or exc}") from exc
    arrays = _read_cache(cache) if cache is not None else None
    cached = arrays is not None
    if arrays is None:
        try:
            with _open_rb(pkl) as file:
                loaded = restricted_load(file, str(pkl), keep_chest=frozenset({"ECG"}))
        except OSError as exc:
            raise DatasetError(pkl, f"cannot read: {exc.strerror or exc}") from exc
        arrays = _extract(loaded.obj, pkl)
        del loaded
        if cache is not None:
            try:
                _write_cache(cache, arrays)
            except OSError as exc:
                _log.warning("cannot write dataset cache", cache=str(cache), error=str(exc))
    metadata: dict[str, Any] = {
        "file": str(pkl),
        "from_cache": cached,
        "rpeaks_detected": arrays.meta.get("rpeaks_detected"),
        "hr_ref": "derived: R-peaks detected in the chest ECG (700 Hz), 60 / mean RR per 8 s "
        f"window, NaN where an interval strays > {RR_MAX_DEVIATION:.0%} from the median",
        "labels": "most common 700 Hz label per 0.25 s; 0 transient, 1-4 conditions, 5-7 "
        "unlabelled",
        "citation": "P. Schmidt, A. Reiss, R. Duerichen, C. Marberger, K. Van Laerhoven, "
        "Introducing WESAD, a multimodal dataset for wearable stress and affect detection, "
        "ICMI 2018",
    }
    try:
        return Recording(
            name=pkl.stem,
            source="wesad",
            subject=str(arrays.meta.get("subject") or pkl.stem),
            bvp=arrays.bvp,
            acc=arrays.acc,
            hr_ref_bpm=arrays.hr,
            hr_ref_kind="ecg-derived",
            labels=arrays.labels,
            label_names=WESAD_LABELS,
            metadata=metadata,
        )
    except ValueError as exc:
        raise DatasetError(pkl, str(exc)) from exc


def load_subject_pickle(
    path: str | os.PathLike[str], *, cache_dir: Path | None = None, use_cache: bool = True
) -> Recording:
    """Load an ``SX.pkl`` of either layout: PPG-DaLiA (or synthetic) or WESAD, told by its keys."""
    pkl = pickle_in(Path(path))
    if use_cache:
        try:
            wesad_cache = cache_path_for(pkl, cache_dir, prefix=_CACHE_PREFIX)
        except OSError as exc:
            raise DatasetError(pkl, f"cannot read: {exc.strerror or exc}") from exc
        if wesad_cache.is_file():
            return load_wesad(pkl, cache_dir=cache_dir)
    try:
        return load_dalia(pkl, cache_dir=cache_dir, use_cache=use_cache)
    except WesadLayoutError:
        return load_wesad(pkl, cache_dir=cache_dir, use_cache=use_cache)
