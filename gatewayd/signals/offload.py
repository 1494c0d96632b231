"""The wearable's offload policy, mirrored in firmware_stub/: offload a window when it is hard.

A window is hard when its entropy is above tau or the local model is unsure. Both sides decide
on the wire's integers (entropy in milli-bits, confidence in 1/10000), never on floats, so the
gateway can recompute the wearable's decision from a message and get the same flags.

A window is also offloaded on a motion event: when it holds an impact (peak |a| at least the
threshold) or starts within the hold time after one, so the gateway's fall rule gets the raw
accelerometer of the impact and of the stillness after it. The time of the last impact is
state, kept by the caller (the firmware); the functions here are pure and in integers
(milli-g, milliseconds), so C and Python agree exactly.
"""

from __future__ import annotations

import enum
import math
from typing import Final

import numpy as np
import numpy.typing as npt

from gatewayd.signals.entropy import entropy_milli_bits

#: Confidence travels as u16 in units of 1/10000.
CONFIDENCE_SCALE: Final = 10000
_U16_MAX: Final = 65535
#: An impact: peak |a| >= 3 g, the gateway's fall rule default (rules.fall.impact_g).
IMPACT_THRESHOLD_MILLI_G: Final = 3000
#: Offload windows starting up to 16 s after an impact: the fall rule needs settle_s (2 s) plus
#: min_duration_s (10 s) of ACC after it; 16 s leave margin for its 1 s blocks.
MOTION_HOLD_MS: Final = 16000
#: 10**6 * |a|**2 of the largest int16 triple: what _squared_counts can give, scaled.
_MAX_SCALED_SQUARE: Final = 1_000_000 * 3 * 32768**2


class OffloadReason(enum.IntFlag):
    """Why a window is offloaded; the values are the OFFLOAD_* flag bits of the message header."""

    NONE = 0
    #: entropy_mbits > tau_mbits
    ENTROPY = 1
    #: confidence_e4 < min_confidence_e4
    LOW_CONFIDENCE = 2
    #: the window holds an impact, or starts within the hold time after one (motion_offload)
    MOTION = 1 << 6


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= _U16_MAX:
        raise ValueError(f"{name} must fit a u16 (0..65535), got {value}")


def decide_offload(
    entropy_milli_bits: int,
    confidence_e4: int,
    tau_milli_bits: int,
    min_confidence_e4: int,
    *,
    motion: bool = False,
) -> OffloadReason:
    """Return the offload reasons for one window in wire units; offload when non-zero.

    ``motion`` is the answer of `motion_offload` for this window; it only adds MOTION.
    """
    _check_u16("entropy_milli_bits", entropy_milli_bits)
    _check_u16("confidence_e4", confidence_e4)
    _check_u16("tau_milli_bits", tau_milli_bits)
    _check_u16("min_confidence_e4", min_confidence_e4)
    reason = OffloadReason.NONE
    if entropy_milli_bits > tau_milli_bits:
        reason |= OffloadReason.ENTROPY
    if confidence_e4 < min_confidence_e4:
        reason |= OffloadReason.LOW_CONFIDENCE
    if motion:
        reason |= OffloadReason.MOTION
    return reason


def _squared_counts(acc: npt.ArrayLike, lsb_per_g: int) -> npt.NDArray[np.int64]:
    if not 1 <= lsb_per_g <= _U16_MAX:
        raise ValueError(f"lsb_per_g must be 1..65535, got {lsb_per_g}")
    a = np.asarray(acc)
    if a.dtype.kind not in "iu" or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"acc must be integer samples of shape (n, 3), got {a.dtype} {a.shape}")
    wide = a.astype(np.int64)
    if wide.size and (int(wide.min()) < -32768 or int(wide.max()) > 32767):
        raise ValueError("acc samples must fit int16")
    return np.asarray(np.sum(wide * wide, axis=1), dtype=np.int64)


def acc_peak_milli_g(acc: npt.ArrayLike, lsb_per_g: int) -> int:
    """Peak |a| of int16 ACC samples (n, 3) in milli-g: floor(1000 * |a| / lsb_per_g), 0 if n = 0.

    Exact integer arithmetic (an integer square root, no float), as firmware_stub/ computes it.
    """
    q = _squared_counts(acc, lsb_per_g)
    if not q.size:
        return 0
    return math.isqrt(1_000_000 * int(q.max())) // lsb_per_g


def last_impact_index(
    acc: npt.ArrayLike, lsb_per_g: int, threshold_milli_g: int = IMPACT_THRESHOLD_MILLI_G
) -> int | None:
    """Index of the newest ACC sample whose |a| in milli-g is at least the threshold, or None.

    Decided on squares, exactly: floor(1000 |a| / L) >= T  <=>  10**6 * |a|**2 >= (T * L)**2.
    """
    _check_u16("threshold_milli_g", threshold_milli_g)
    q = _squared_counts(acc, lsb_per_g)
    bound = (threshold_milli_g * lsb_per_g) ** 2
    if bound > _MAX_SCALED_SQUARE:
        return None  # beyond any int16 sample (and beyond int64: compare in Python ints)
    hits = np.flatnonzero(1_000_000 * q >= bound)
    return int(hits[-1]) if hits.size else None


def motion_offload(
    peak_milli_g: int,
    window_start_ms: int,
    last_impact_ms: int | None,
    *,
    threshold_milli_g: int = IMPACT_THRESHOLD_MILLI_G,
    hold_ms: int = MOTION_HOLD_MS,
) -> bool:
    """Whether a window is offloaded for motion: it holds an impact, or starts within the hold.

    ``last_impact_ms`` is the time of the newest impact sample seen so far, this window's
    included, on the same monotonic millisecond clock as ``window_start_ms`` (None: no impact
    yet). A window starting exactly ``hold_ms`` after the impact is still held.
    """
    if peak_milli_g >= threshold_milli_g:
        return True
    return last_impact_ms is not None and window_start_ms <= last_impact_ms + hold_ms


def confidence_e4(confidence: float) -> int:
    """Return a confidence as 1/10000 units: floor(c * 10000 + 0.5) clamped to 0..10000."""
    if not math.isfinite(confidence):
        raise ValueError(f"confidence must be finite, got {confidence!r}")
    return min(max(math.floor(confidence * CONFIDENCE_SCALE + 0.5), 0), CONFIDENCE_SCALE)


def should_offload(
    entropy_bits: float, confidence: float, tau_bits: float, min_confidence: float
) -> OffloadReason:
    """Float convenience: round to wire units exactly as the wearable does, then decide."""
    return decide_offload(
        entropy_milli_bits(entropy_bits),
        confidence_e4(confidence),
        entropy_milli_bits(tau_bits),
        confidence_e4(min_confidence),
    )
