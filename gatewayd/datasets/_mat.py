"""MAT-file helpers shared by the TROIKA and BAMI readers: every failure is a `DatasetError`."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import io as sio

from gatewayd.datasets.recording import DatasetError

__all__ = ["loadmat", "numeric"]

# Everything scipy.io.loadmat raises on a file that is not a (complete) MAT file.
_MAT_ERRORS: Final = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    EOFError,
    NotImplementedError,
    struct.error,
    zlib.error,
    sio.matlab.MatReadError,
    OverflowError,
    MemoryError,
)


def loadmat(path: Path) -> dict[str, Any]:
    """Read a MAT file (v4-v7) into a dict, or raise `DatasetError` naming it."""
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with warnings.catch_warnings():
            # A malformed header warns before it fails; the failure is what we report.
            warnings.simplefilter("ignore")
            mat: dict[str, Any] = sio.loadmat(str(path))
    except NotImplementedError as exc:
        raise DatasetError(
            path, f"MATLAB v7.3 (HDF5) files are not supported; save with -v7 ({exc})"
        ) from exc
    except _MAT_ERRORS as exc:
        raise DatasetError(
            path, f"not a readable MAT file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    return mat


def numeric(mat: dict[str, Any], names: tuple[str, ...], path: Path) -> npt.NDArray[np.float64]:
    """Return the first of ``names`` found in ``mat`` as float64, or raise naming the file."""
    for name in names:
        if name in mat:
            value = mat[name]
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                raise DatasetError(path, f"{name} is not a numeric array")
            return value.astype(np.float64)
    found = sorted(k for k in mat if not k.startswith("__"))
    raise DatasetError(path, f"missing variable {names[0]} (has: {', '.join(found) or 'none'})")
