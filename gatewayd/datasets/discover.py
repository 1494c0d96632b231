"""Find every recording under a path and load one: the entry point the emulator and training use.

Recognised (file names as the datasets ship them):

- PPG-DaLiA ``SX.pkl`` (alone or in ``PPG_FieldStudy/SX/``) -> kind ``dalia`` (synthetic files
  written by `gatewayd.datasets.synthetic` have the same layout and load as source "synthetic");
- TROIKA ``DATA_XX_TYPEYY.mat`` / ``TEST_SXX_TYY.mat`` with their reference file when present;
- Empatica E4 session folders (BVP.csv + ACC.csv) and ``*_E4.zip`` (or any zip holding them).
  ``SX_E4.zip`` next to ``SX.pkl`` is the same session as the pickle: it is skipped, the
  pickle has the ECG reference.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gatewayd.datasets.dalia import load_dalia
from gatewayd.datasets.e4 import is_e4_folder, is_e4_zip, load_e4
from gatewayd.datasets.recording import DatasetError, Recording
from gatewayd.datasets.troika import find_troika_ref, is_troika_data, load_troika

__all__ = ["RecordingKind", "RecordingSource", "find_recordings", "load"]

RecordingKind = Literal["dalia", "e4", "troika"]
_DALIA = re.compile(r"^S\d+\.pkl$")
_E4_ZIP = re.compile(r"^(.+?)_E4\.zip$", re.IGNORECASE)


@dataclass(frozen=True)
class RecordingSource:
    """Where one recording lives and which reader loads it."""

    kind: RecordingKind
    path: Path
    ref_path: Path | None = None

    @property
    def name(self) -> str:
        """Return the recording's name (file stem or folder name)."""
        return self.path.name if self.path.is_dir() else self.path.stem


def _classify(path: Path) -> RecordingSource | None:
    if path.is_dir():
        return RecordingSource("e4", path) if is_e4_folder(path) else None
    if _DALIA.match(path.name):
        return RecordingSource("dalia", path)
    if is_troika_data(path):
        return RecordingSource("troika", path, find_troika_ref(path))
    if path.suffix.lower() == ".zip":
        match = _E4_ZIP.match(path.name)
        if match and (path.parent / f"{match.group(1)}.pkl").is_file():
            return None  # the pickle of the same session is listed instead
        if match or is_e4_zip(path):
            return RecordingSource("e4", path)
    return None


def find_recordings(path: str | os.PathLike[str]) -> list[RecordingSource]:
    """Return every recording under ``path`` (a file or a folder), sorted by path."""
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
    """Load the recording ``source`` points at (PPG-DaLiA through the cache)."""
    if source.kind == "dalia":
        return load_dalia(source.path, cache_dir=cache_dir)
    if source.kind == "troika":
        return load_troika(source.path, source.ref_path)
    return load_e4(source.path)
