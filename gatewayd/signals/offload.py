"""The wearable's offload policy, mirrored in firmware_stub/: offload a window when it is hard.

A window is hard when its entropy is above tau or the local model is unsure. Both sides decide
on the wire's integers (entropy in milli-bits, confidence in 1/10000), never on floats, so the
gateway can recompute the wearable's decision from a message and get the same flags.

A window is also offloaded on a motion event: the fall signature the gateway's fall rule looks
for, an impact followed by stillness (`fall_impact_index`), and the windows starting up to the
hold time after that impact (`motion_offload`), so the rule gets the raw accelerometer of the
impact and of the stillness after it. An impact alone (a running step, a clap) is not enough:
it must be followed, inside the same window, by settle time and then blocks that do not move.
The time of the last fall candidate is state, kept by the caller (the firmware); the functions
here are pure and in integers (milli-g, counts, milliseconds), so C and Python agree exactly.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from gatewayd.signals.entropy import entropy_milli_bits

#: Confidence travels as u16 in units of 1/10000.
CONFIDENCE_SCALE: Final = 10000
#: The default policy (docs/signals.md section 5), chosen leave-one-subject-out on real
#: recordings (docs/eval.md): entropy threshold in milli-bits (above the real windows: in effect
#: the confidence decides) and minimum offload confidence in 1/10000.
DEFAULT_TAU_MBITS: Final = 4050
DEFAULT_MIN_CONF_E4: Final = 3250
#: The resting limit, 1/100 bpm: a window the local model calls rest while its tracker reads a
#: heart rate above this contradicts itself, and its offload confidence is 0
#: (`offload_confidence_e4`). 100 bpm: the gateway's default tachycardia limit at rest
#: (rules.tachycardia.rest_bpm), the usual clinical bound of a resting heart rate. 0 turns the
#: check off. The wearable starts with this; the gateway sends its own limit at rest with
#: SET_REST_LIMIT at every connect (docs/protocol.md section 6.1).
DEFAULT_REST_LIMIT_CBPM: Final = 10000
#: The summary's ``activity`` for rest (`gatewayd.activity.ActivityGroup.REST`).
REST_ACTIVITY: Final = 0
#: The summary's signal_quality (0-100) when the wearable reports none.
UNKNOWN_QUALITY: Final = 255
_U16_MAX: Final = 65535
#: An impact: a sample with |a| >= 3 g, the gateway's fall rule default (rules.fall.impact_g).
IMPACT_THRESHOLD_MILLI_G: Final = 3000
#: Offload windows starting up to 16 s after a fall candidate's impact: the fall rule needs
#: settle_s (2 s) plus min_duration_s (10 s) of ACC after it; 16 s leave margin for its 1 s blocks.
MOTION_HOLD_MS: Final = 16000
#: 10**6 * |a|**2 of the largest int16 triple: what _squared_counts can give, scaled.
_MAX_SCALED_SQUARE: Final = 1_000_000 * 3 * 32768**2
_U8_MAX: Final = 255
#: The largest ``motion_cg`` (a u8 on the wire): 2.55 g RMS and above.
MOTION_CG_MAX: Final = 255


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= _U16_MAX:
        raise ValueError(f"{name} must fit a u16 (0..65535), got {value}")


@dataclass(frozen=True, slots=True)
class FallTrigger:
    """The wearable's fall signature in wire integers: an impact, settling, then no movement.

    The defaults are the gateway's fall rule (rules.fall): impact_g, settle_s, block_s and
    moving_min_std_g. The wearable only rules out continued motion (spread below the rule's
    *moving* bound); whether the stillness is still enough (0.05 g) and long enough (10 s) is the
    rule's decision on the offloaded windows.
    """

    #: An impact is a sample with floor(1000 |a| / lsb_per_g) >= this (milli-g).
    impact_milli_g: int = IMPACT_THRESHOLD_MILLI_G
    #: Samples this long after the impact are not looked at (bounces, rolling).
    settle_ms: int = 2000
    #: Whole blocks covering at least this long must follow the settle time inside the window.
    still_ms: int = 2000
    #: Length of the blocks whose spread is tested.
    block_ms: int = 1000
    #: A block moves when its spread, sqrt of the summed per-axis variances, reaches this.
    moving_milli_g: int = 150

    def __post_init__(self) -> None:
        """Check that every field fits the firmware's u16 and that blocks are not empty."""
        for name in ("impact_milli_g", "settle_ms", "still_ms", "block_ms", "moving_milli_g"):
            _check_u16(name, getattr(self, name))
        if self.block_ms < 1:
            raise ValueError("block_ms must be at least 1")


class OffloadReason(enum.IntFlag):
    """Why a window is offloaded; the values are the OFFLOAD_* flag bits of the message header."""

    NONE = 0
    #: entropy_mbits > tau_mbits
    ENTROPY = 1
    #: confidence_e4 < min_confidence_e4
    LOW_CONFIDENCE = 2
    #: a fall candidate: an impact then no movement, and the hold time after it (motion_offload)
    MOTION = 1 << 6


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


def _wide_acc(acc: npt.ArrayLike, lsb_per_g: int) -> npt.NDArray[np.int64]:
    """The samples as int64, after checking the scale, shape, dtype and int16 range."""
    if not 1 <= lsb_per_g <= _U16_MAX:
        raise ValueError(f"lsb_per_g must be 1..65535, got {lsb_per_g}")
    a = np.asarray(acc)
    if a.dtype.kind not in "iu" or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"acc must be integer samples of shape (n, 3), got {a.dtype} {a.shape}")
    wide = a.astype(np.int64)
    if wide.size and (int(wide.min()) < -32768 or int(wide.max()) > 32767):
        raise ValueError("acc samples must fit int16")
    return wide


def _squared_counts(acc: npt.ArrayLike, lsb_per_g: int) -> npt.NDArray[np.int64]:
    wide = _wide_acc(acc, lsb_per_g)
    return np.asarray(np.sum(wide * wide, axis=1), dtype=np.int64)


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


def _samples_in(ms: int, rate_hz: int) -> int:
    # Round up: a stretch of ms milliseconds is covered by this many whole samples.
    return -(-ms * rate_hz // 1000)


def _scaled_spread(block: npt.NDArray[np.int64]) -> int:
    # V = sum over axes of n * sum(x**2) - sum(x)**2 = n**2 * (population variance), exact.
    n = int(block.shape[0])
    sums = [int(v) for v in block.sum(axis=0)]
    squares = [int(v) for v in (block * block).sum(axis=0)]
    return sum(n * q - s * s for s, q in zip(sums, squares, strict=True))


def _block_moves(block: npt.NDArray[np.int64], lsb_per_g: int, moving_milli_g: int) -> bool:
    # spread >= M/1000 g  <=>  1000 sqrt(V) / (n L) >= M  <=>  10**6 V >= (n M L)**2.
    n = int(block.shape[0])
    v = _scaled_spread(block)
    bound = n * moving_milli_g * lsb_per_g
    return 1_000_000 * v >= bound * bound


def fall_impact_index(
    acc: npt.ArrayLike, lsb_per_g: int, rate_hz: int, trigger: FallTrigger | None = None
) -> int | None:
    """Index of the impact that makes a window a fall candidate, or None if it is not one.

    The newest impact sample k (`last_impact_index`) must be followed inside the window by the
    settle time and then whole blocks covering at least ``still_ms``, and none of the whole
    blocks after the settle time may move (see `FallTrigger`). Exact integers, as firmware_stub/.
    """
    if trigger is None:
        trigger = FallTrigger()
    if not 1 <= rate_hz <= _U8_MAX:
        raise ValueError(f"rate_hz must be 1..255 (a u8 on the wire), got {rate_hz}")
    k = last_impact_index(acc, lsb_per_g, trigger.impact_milli_g)
    if k is None:
        return None
    wide = np.asarray(acc).astype(np.int64)  # _squared_counts has checked shape and range
    first = k + _samples_in(trigger.settle_ms, rate_hz)
    size = _samples_in(trigger.block_ms, rate_hz)
    if first > wide.shape[0]:
        return None
    blocks = (wide.shape[0] - first) // size
    if blocks < -(-trigger.still_ms // trigger.block_ms):
        return None
    for j in range(blocks):
        block = wide[first + j * size : first + (j + 1) * size]
        if _block_moves(block, lsb_per_g, trigger.moving_milli_g):
            return None
    return k


def motion_cg(acc: npt.ArrayLike, lsb_per_g: int) -> int:
    """How hard the wrist moves over a window, in 1/100 g, 0..255 (the wire's ``motion_cg``).

    The RMS over the window's n samples of the 3-axis deviation from the window's mean,
    sqrt(sum over axes of the population variance), rounded: with
    V = sum over axes (n * sum(x**2) - sum(x)**2) and q = isqrt(10**4 * V), the value is
    (2q + nL) // (2nL), saturated at 255 (2.55 g). Exact integers, as firmware_stub/'s
    gwfw_motion_cg; 0 for an empty window. Gravity is the mean, so a still wrist is 0 whatever
    its orientation.
    """
    wide = _wide_acc(acc, lsb_per_g)
    n = int(wide.shape[0])
    if n == 0:
        return 0
    q = math.isqrt(10_000 * _scaled_spread(wide))
    return min(MOTION_CG_MAX, (2 * q + n * lsb_per_g) // (2 * n * lsb_per_g))


def motion_offload(
    window_start_ms: int, fall_impact_ms: int | None, *, hold_ms: int = MOTION_HOLD_MS
) -> bool:
    """Whether a window is offloaded for motion: it starts at most hold_ms after a fall's impact.

    ``fall_impact_ms`` is the time of the impact of the newest fall candidate seen so far, this
    window's included (None: none yet), on the same monotonic millisecond clock as
    ``window_start_ms``: the caller sets it to window_start_ms + k * 1000 // rate_hz when
    `fall_impact_index` returns k. A candidate window starts before its impact, so it is always
    offloaded; a window starting exactly ``hold_ms`` after the impact still is.
    """
    return fall_impact_ms is not None and window_start_ms <= fall_impact_ms + hold_ms


def offload_confidence_e4(
    activity_conf_e4: int,
    signal_quality: int,
    hr_cbpm: int,
    activity: int,
    *,
    rest_limit_cbpm: int = DEFAULT_REST_LIMIT_CBPM,
) -> int:
    """The confidence the offload rule compares with min_conf_e4, from four summary fields.

    The product of the local model's group probability (``activity_conf_e4``, 0..10000) and
    the heart-rate tracker's signal quality (0..100, as a probability), rounded half up: both
    estimate the probability of being right, and a window is good only when both answers are.
    The quality only counts when the wearable sends a heart rate (``hr_cbpm`` > 0) and reports
    a quality (not 255): a window with no pulse at all (no PPG, off the wrist) is not offloaded
    for its heart rate, which the gateway could not find either.

    0 when the two answers contradict each other: the group (``activity``) is rest and the
    heart rate is above ``rest_limit_cbpm`` (when that is not 0). One of them is wrong, or the
    wearer has a resting tachycardia; either way the gateway should see the window.
    """
    _check_u16("activity_conf_e4", activity_conf_e4)
    _check_u16("hr_cbpm", hr_cbpm)
    _check_u16("rest_limit_cbpm", rest_limit_cbpm)
    if not 0 <= signal_quality <= _U8_MAX:
        raise ValueError(f"signal_quality must fit a u8 (0..255), got {signal_quality}")
    if not 0 <= activity <= _U8_MAX:
        raise ValueError(f"activity must fit a u8 (0..255), got {activity}")
    if activity == REST_ACTIVITY and rest_limit_cbpm and hr_cbpm > rest_limit_cbpm:
        return 0
    if hr_cbpm == 0 or signal_quality == UNKNOWN_QUALITY:
        return activity_conf_e4
    return (activity_conf_e4 * min(signal_quality, 100) + 50) // 100


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
