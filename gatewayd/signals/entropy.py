"""Window entropy H(X), the signal the offload policy thresholds.

The integer path (`window_entropy_bits`, `entropy_histogram`) is the one on the wire and in the
firmware: `firmware_stub/src/entropy.c` implements the same steps, in the same order, from the
specification in docs/signals.md, and the two must agree bin for bin. Keep them in lock step:

1. ``S = sum(x)``, ``Q = sum(x*x)``, ``V = n*Q - S*S`` in exact int64 (``V / n**2`` is the
   population variance); ``V == 0`` means a constant window and ``H = 0``.
2. For each sample ``d = (double)(n*x_i - S)``, ``z = d / sqrt((double)V)``,
   ``k = floor((z + 4.0) * 4.0)`` clamped to ``[0, 31]``: 32 bins of width sigma/4 over
   [-4 sigma, +4 sigma], outliers in the edge bins.
3. ``H = -sum_k p_k * log2(p_k)`` over the non-empty bins in increasing ``k``, ``p_k = c_k / n``.

numpy's elementwise float64 operations are IEEE-754 correctly rounded, exactly like C's, and each
operation here is a separate ufunc call, so nothing is fused or reassociated.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

#: Number of equal-width histogram bins.
ENTROPY_BINS: Final = 32
#: The bins cover [-ENTROPY_RANGE_SIGMA, +ENTROPY_RANGE_SIGMA] standard deviations.
ENTROPY_RANGE_SIGMA: Final = 4.0
#: Upper bound of H in bits: log2(ENTROPY_BINS).
ENTROPY_MAX_BITS: Final = 5.0
#: Largest value of the u16 ``entropy_mbits`` wire field.
ENTROPY_MBITS_MAX: Final = 65535
#: The integer path needs ``n * max|x_i| <= 2**31`` so that n*Q and S*S fit in int64 (both are at
#: most (n * max|x_i|)**2 <= 2**62). Every int16 window shorter than 65536 samples qualifies.
ENTROPY_MAX_MAGNITUDE: Final = 2**31

# (z + 4.0) * (B / 8.0): B / 8.0 is 4.0 exactly for B = 32.
_BINS_PER_SIGMA: Final = ENTROPY_BINS / (2.0 * ENTROPY_RANGE_SIGMA)


def _integer_samples(samples: npt.ArrayLike) -> npt.NDArray[np.int64]:
    arr = np.asarray(samples)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"entropy needs a 1-D window of samples, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"the integer entropy path needs integer samples (int8/int16/int32), got {arr.dtype}; "
            "use window_entropy_bits_float for float data"
        )
    n = arr.shape[0]
    if n < 2:
        raise ValueError(f"entropy needs at least 2 samples, got {n}")
    # Python ints: no wrap-around while checking, whatever the input dtype.
    magnitude = max(int(arr.max()), -int(arr.min()))
    if n * magnitude > ENTROPY_MAX_MAGNITUDE:
        raise ValueError(
            f"n * max|x| = {n * magnitude} exceeds 2**31: the window is too long or its samples "
            "too large for the exact int64 arithmetic the firmware uses"
        )
    return arr.astype(np.int64)


def _bin_indices(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64] | None:
    """Bin index of every sample, or None for a constant window."""
    n = values.shape[0]
    total = int(values.sum(dtype=np.int64))
    sum_sq = int((values * values).sum(dtype=np.int64))
    # Python ints are exact; the bound checked in _integer_samples keeps these inside int64,
    # as they are in the firmware.
    var_n2 = n * sum_sq - total * total
    if var_n2 == 0:
        return None
    d = (np.int64(n) * values - np.int64(total)).astype(np.float64)
    sd_n = math.sqrt(float(var_n2))
    z = d / sd_n
    t = z + ENTROPY_RANGE_SIGMA
    t = t * _BINS_PER_SIGMA
    k = np.floor(t)
    k = np.clip(k, 0.0, float(ENTROPY_BINS - 1))
    return k.astype(np.int64)


def entropy_bin_indices(samples: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Return each sample's bin 0..31 (all 16 for a constant window), to compare with C."""
    values = _integer_samples(samples)
    k = _bin_indices(values)
    if k is None:
        return np.full(values.shape[0], ENTROPY_BINS // 2, dtype=np.int64)
    return k


def entropy_histogram(samples: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Return the 32 bin counts of an integer window (all samples in bin 16 if constant)."""
    values = _integer_samples(samples)
    k = _bin_indices(values)
    if k is None:
        # A constant window has every z = 0 (0/0 taken as 0): the middle bin, H = 0.
        counts = np.zeros(ENTROPY_BINS, dtype=np.int64)
        counts[ENTROPY_BINS // 2] = values.shape[0]
        return counts
    return np.bincount(k, minlength=ENTROPY_BINS).astype(np.int64)


def histogram_entropy_bits(counts: npt.ArrayLike) -> float:
    """Return -sum p log2 p over the non-empty bins of ``counts``, summed in bin order."""
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError("counts must be a 1-D integer array")
    cs = [int(c) for c in arr]
    if any(c < 0 for c in cs):
        raise ValueError("counts must be non-negative")
    n = sum(cs)
    if n == 0:
        raise ValueError("counts are all zero")
    h = 0.0
    # A plain loop in increasing bin order: the firmware sums in this order, and floating-point
    # addition is not associative.
    for c in cs:
        if c > 0:
            p = c / n
            h -= p * math.log2(p)
    return h


def window_entropy_bits(samples: npt.ArrayLike) -> float:
    """Return H(X) in bits (0..5) of an integer BVP window: the wire and firmware value."""
    values = _integer_samples(samples)
    k = _bin_indices(values)
    if k is None:
        return 0.0
    return histogram_entropy_bits(np.bincount(k, minlength=ENTROPY_BINS))


def window_entropy_bits_float(x: npt.ArrayLike) -> float:
    """Return H(X) in bits of a float window (same bins, float mean/std), for offline analysis."""
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"entropy needs a 1-D window of at least 2 samples, got {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"expected a numeric array, got dtype {arr.dtype}")
    data = arr.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise ValueError("window contains NaN or infinite samples")
    centred = data - data.mean()
    std = math.sqrt(float(np.mean(centred * centred)))
    if std == 0.0:
        return 0.0
    z = centred / std
    k = np.clip(
        np.floor((z + ENTROPY_RANGE_SIGMA) * _BINS_PER_SIGMA), 0.0, float(ENTROPY_BINS - 1)
    ).astype(np.int64)
    return histogram_entropy_bits(np.bincount(k, minlength=ENTROPY_BINS))


def entropy_milli_bits(h: float) -> int:
    """Return H in milli-bits as on the wire: floor(h * 1000 + 0.5) clamped to 0..65535."""
    if not math.isfinite(h):
        raise ValueError(f"entropy must be finite, got {h!r}")
    return min(max(math.floor(h * 1000.0 + 0.5), 0), ENTROPY_MBITS_MAX)
