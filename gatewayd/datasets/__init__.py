"""datasets: PPG-DaLiA, Empatica E4 and TROIKA readers and a synthetic generator.

Every reader returns a `Recording` at the wearable's rates (BVP 64 Hz, ACC 32 Hz in 1/64 g) and
raises `DatasetError` (naming the file) for a missing, truncated or malformed file. Shared by
the BLE emulator, training and evaluation; see docs/datasets.md.
"""

from gatewayd.datasets.dalia import default_cache_dir, load_dalia
from gatewayd.datasets.discover import RecordingKind, RecordingSource, find_recordings, load
from gatewayd.datasets.e4 import load_e4
from gatewayd.datasets.recording import (
    ACTIVITY_NAMES,
    ACTIVITY_RATE_HZ,
    PHASE_NAMES,
    DatasetError,
    HrRefKind,
    Recording,
    Source,
)
from gatewayd.datasets.synthetic import (
    Event,
    generate_recording,
    generate_subject,
    write_subject,
    write_synthetic_dataset,
)
from gatewayd.datasets.troika import load_troika

__all__ = [
    "ACTIVITY_NAMES",
    "ACTIVITY_RATE_HZ",
    "PHASE_NAMES",
    "DatasetError",
    "Event",
    "HrRefKind",
    "Recording",
    "RecordingKind",
    "RecordingSource",
    "Source",
    "default_cache_dir",
    "find_recordings",
    "generate_recording",
    "generate_subject",
    "load",
    "load_dalia",
    "load_e4",
    "load_troika",
    "write_subject",
    "write_synthetic_dataset",
]
