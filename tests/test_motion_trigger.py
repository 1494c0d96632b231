"""The wearable's motion offload: the fall signature (an impact, settling, then no movement).

gatewayd.signals.offload decides it in exact integers, as firmware_stub/ does; the cases below
mirror test_motion() and test_fall() in firmware_stub/test/test_gwfw.c, and
tests/test_firmware_stub.py checks Python against C on the vectors in firmware_stub/vectors/.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.protocol.messages import OFFLOAD_MASK, MessageFlags, SampleFormat
from gatewayd.rules.config import FallConfig
from gatewayd.signals import STEP_S, WINDOW_S, OffloadReason, decide_offload
from gatewayd.signals.offload import (
    IMPACT_THRESHOLD_MILLI_G,
    MOTION_HOLD_MS,
    FallTrigger,
    fall_impact_index,
    last_impact_index,
    motion_offload,
)

E, L, M, N = (
    OffloadReason.ENTROPY,
    OffloadReason.LOW_CONFIDENCE,
    OffloadReason.MOTION,
    OffloadReason.NONE,
)
REPO = Path(__file__).resolve().parent.parent
TROIKA = REPO.parent / "shared" / "data" / "troika"


def triples(*rows: tuple[int, int, int]) -> npt.NDArray[np.int16]:
    return np.array(rows, dtype=np.int16).reshape(-1, 3)


def rest(n: int, noise: int = 1, gravity: int = 64) -> npt.NDArray[np.int16]:
    """n samples at rest, (0, 0, gravity), with x alternating +-noise (as fill_rest in C)."""
    acc = np.zeros((n, 3), dtype=np.int16)
    acc[:, 0] = np.where(np.arange(n) % 2, -noise, noise)
    acc[:, 2] = gravity
    return acc


# ---- the defaults are the fall rule's -------------------------------------------------------


def test_motion_is_header_bit_6() -> None:
    assert int(M) == int(MessageFlags.OFFLOAD_MOTION) == 1 << 6
    assert int(E | L | M) == int(OFFLOAD_MASK)


def test_the_defaults_are_the_fall_rule_and_fit_the_windows() -> None:
    rule, trigger = FallConfig(), FallTrigger()
    assert trigger.impact_milli_g == IMPACT_THRESHOLD_MILLI_G == round(rule.impact_g * 1000)
    assert trigger.settle_ms == round(rule.settle_s * 1000)
    assert trigger.block_ms == round(rule.block_s * 1000)
    assert trigger.moving_milli_g == round(rule.moving_min_std_g * 1000)
    # The rule needs settle + 10 s of stillness after the impact; the hold covers it.
    assert (rule.settle_s + rule.min_duration_s) * 1000 <= MOTION_HOLD_MS
    # Windows start every 2 s, so every impact lies less than 2 s into some window; it decides
    # there only if settle + still fit in the rest of it.
    assert trigger.settle_ms + trigger.still_ms <= (WINDOW_S - STEP_S) * 1000


@pytest.mark.parametrize(
    "field", ["impact_milli_g", "settle_ms", "still_ms", "block_ms", "moving_milli_g"]
)
@pytest.mark.parametrize("bad", [-1, 65536])
def test_trigger_fields_must_fit_a_u16(field: str, bad: int) -> None:
    with pytest.raises(ValueError, match=field):
        FallTrigger(**{field: bad})


def test_blocks_must_not_be_empty_and_rates_fit_a_u8() -> None:
    with pytest.raises(ValueError, match="block_ms"):
        FallTrigger(block_ms=0)
    for rate in (0, 256):
        with pytest.raises(ValueError, match="rate_hz"):
            fall_impact_index(rest(32), 64, rate)


# ---- impacts --------------------------------------------------------------------------------


def test_last_impact_index_matches_the_c_unit_test() -> None:
    quiet = triples((0, 0, 64), (1, -2, 63), (0, 1, 65))
    impact = triples((0, 0, 64), (192, 0, 0), (110, 110, 110), (0, 0, 64))
    big = triples((-32768, -32768, -32768))
    assert last_impact_index(quiet, 64) is None
    assert last_impact_index(impact, 64, 3000) == 1  # exactly 3 g is an impact; 2976 mg is not
    assert last_impact_index(impact, 64, 2976) == 2
    assert last_impact_index(impact, 64, 2977) == 1
    assert last_impact_index(impact, 64, 3001) is None
    assert last_impact_index(triples((111, 111, 111), (0, 0, 64)), 64) == 0
    assert last_impact_index(big, 65535, 65535) is None
    assert last_impact_index(big, 1, 65535) == 0
    assert last_impact_index(quiet, 64, 0) == 2
    with pytest.raises(ValueError, match="u16"):
        last_impact_index(quiet, 64, 65536)


def test_samples_must_be_int16_triples() -> None:
    with pytest.raises(ValueError, match="lsb_per_g"):
        last_impact_index(triples((0, 0, 64)), 0)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        last_impact_index(np.zeros(6, dtype=np.int16), 64)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        fall_impact_index(np.zeros((2, 3)), 64, 32)  # floats are not wire samples
    with pytest.raises(ValueError, match="int16"):
        fall_impact_index(np.array([[40000, 0, 0]]), 64, 32)
    assert last_impact_index(np.zeros((0, 3), dtype=np.int16), 64) is None
    assert fall_impact_index(np.zeros((0, 3), dtype=np.int8), 64, 32) is None


@given(
    acc=st.lists(st.tuples(*[st.integers(-32768, 32767)] * 3), min_size=1, max_size=40).map(
        lambda rows: triples(*rows)
    ),
    lsb=st.integers(1, 65535),
    threshold=st.integers(0, 65535),
)
def test_last_impact_agrees_with_exact_arithmetic(
    acc: npt.NDArray[np.int16], lsb: int, threshold: int
) -> None:
    per_sample = [
        math.isqrt(1_000_000 * sum(int(v) ** 2 for v in row)) // lsb for row in acc.tolist()
    ]
    hits = [i for i, mg in enumerate(per_sample) if mg >= threshold]
    assert last_impact_index(acc, lsb, threshold) == (hits[-1] if hits else None)


# ---- the fall signature: the same cases as test_fall() in test_gwfw.c ------------------------
# At 4 Hz an 8 s window is 32 samples; with the defaults the settle time is 8 samples, a block 4,
# and 2 blocks are needed: an impact at index k needs k + 8 + 8 <= 32.


def test_a_still_window_after_an_impact_is_a_candidate() -> None:
    w = rest(32)
    assert fall_impact_index(w, 64, 4) is None  # no impact
    w[2] = (192, 0, 0)  # exactly 3 g
    assert fall_impact_index(w, 64, 4) == 2
    w[6] = (-100, 90, 30)  # inside the settle time: not looked at
    assert fall_impact_index(w, 64, 4) == 2
    w[31] = (100, 0, 0)  # after the last whole block: not looked at
    assert fall_impact_index(w, 64, 4) == 2


def test_any_moving_block_after_settling_rules_it_out() -> None:
    w = rest(32)
    w[2] = (192, 0, 0)
    w[29] = (100, 0, 0)  # in the last whole block (26..29)
    assert fall_impact_index(w, 64, 4) is None
    w[29] = (1, 0, 64)
    w[10] = (0, 0, 160)  # in the first block after settling (10..13)
    assert fall_impact_index(w, 64, 4) is None


def test_the_newest_impact_decides_and_needs_room() -> None:
    w = rest(32)
    w[16] = (0, 0, -192)
    assert fall_impact_index(w, 64, 4) == 16
    w[17] = (0, 0, -192)
    assert fall_impact_index(w, 64, 4) is None  # 25..28 is one block: too late
    assert last_impact_index(w, 64) == 17
    w[17] = (1, 0, 64)
    w[31] = (0, 0, 192)  # at the very end: no room, not even for settling
    assert fall_impact_index(w, 64, 4) is None
    assert fall_impact_index(w, 64, 4, FallTrigger(still_ms=0)) is None
    w[31] = (1, 0, 64)
    w[24] = (0, 0, 192)
    assert fall_impact_index(w, 64, 4, FallTrigger(still_ms=0)) == 24
    assert fall_impact_index(w, 64, 4, FallTrigger(still_ms=2001)) is None  # 3 blocks
    w = rest(32)
    w[12] = (0, 0, 192)
    assert fall_impact_index(w, 64, 4, FallTrigger(still_ms=2001)) == 12  # 20..31


def test_the_moving_bound_is_exact() -> None:
    # 1000 LSB/g: x alternating +-150 LSB is a spread of exactly 150 mg, which moves.
    w = rest(32, noise=150, gravity=1000)
    w[0] = (3000, 0, 0)
    assert fall_impact_index(w, 1000, 4) is None
    w = rest(32, noise=149, gravity=1000)
    w[0] = (3000, 0, 0)
    assert fall_impact_index(w, 1000, 4) == 0
    assert fall_impact_index(w, 1000, 4, FallTrigger(moving_milli_g=149)) is None
    w = rest(32, noise=0)
    w[0] = (192, 0, 0)
    assert fall_impact_index(w, 64, 4, FallTrigger(moving_milli_g=0)) is None  # all blocks move


@pytest.mark.parametrize(
    ("amplitude", "moving_milli_g", "expected"),
    [
        (30000, 60000, None),  # equal: 10**6 V = (n M L)**2 = 5.625e19 > 2**64, moves
        (29999, 60000, 0),
        (3816, 60000, 0),  # still; compared modulo 2**64 it would move
        (20000, 30000, None),  # moves; modulo 2**64 it would not
    ],
)
def test_the_comparison_is_exact_beyond_64_bits(
    amplitude: int, moving_milli_g: int, expected: int | None
) -> None:
    # 250 Hz, 500 LSB/g: one block of 250 samples one sample after the impact.
    w = np.zeros((251, 3), dtype=np.int16)
    w[0] = (32767, 32767, 0)  # the only sample at or above 65535 mg = 32767.5 LSB
    w[1:, 0] = np.where(np.arange(1, 251) % 2, amplitude, -amplitude)
    trigger = FallTrigger(
        impact_milli_g=65535, settle_ms=4, still_ms=1000, moving_milli_g=moving_milli_g
    )
    assert fall_impact_index(w, 500, 250, trigger) == expected


# ---- properties -----------------------------------------------------------------------------


def reference_fall_impact(
    acc: npt.NDArray[np.int16], lsb: int, rate: int, t: FallTrigger
) -> int | None:
    """The definition, in times and mean-centred variances (Fractions), not in sums."""
    rows = [tuple(int(v) for v in row) for row in acc.tolist()]
    impacts = [
        i
        for i, (x, y, z) in enumerate(rows)
        if Fraction(1000) ** 2 * (x * x + y * y + z * z) >= Fraction(t.impact_milli_g * lsb) ** 2
    ]
    if not impacts:
        return None
    k = impacts[-1]
    # The first sample at or after the end of the settle time, on sample times i / rate.
    first = next(
        (i for i in range(k, len(rows) + 1) if Fraction(i - k, rate) * 1000 >= t.settle_ms),
        len(rows) + 1,
    )
    size = math.ceil(Fraction(t.block_ms * rate, 1000))
    blocks = [rows[b : b + size] for b in range(first, len(rows) - size + 1, size)]
    if first > len(rows) or len(blocks) < math.ceil(Fraction(t.still_ms, t.block_ms)):
        return None
    bound = Fraction(t.moving_milli_g * lsb, 1000) ** 2  # in LSB**2
    for block in blocks:
        spread2 = Fraction(0)
        for axis in range(3):
            values = [row[axis] for row in block]
            mean = Fraction(sum(values), len(values))
            spread2 += sum((Fraction(v) - mean) ** 2 for v in values) / Fraction(len(values))
        if spread2 >= bound:
            return None
    return k


@st.composite
def windows(draw: st.DrawFn) -> tuple[npt.NDArray[np.int16], int, int, FallTrigger]:
    """A window at rest with noise of some size and a few spikes; rates and params small enough
    that settle time and blocks fall inside it."""
    n = draw(st.integers(0, 120))
    rate = draw(st.integers(1, 25))
    lsb = draw(st.sampled_from([1, 16, 64, 1000, 65535]))
    noise = draw(st.sampled_from([0, 1, 2, 5, 9, 10, 11, 40, 3000]))
    acc = np.zeros((n, 3), dtype=np.int64)
    acc[:, 2] = lsb if lsb < 32768 else 0
    seed = draw(st.integers(0, 2**32 - 1))
    acc += np.random.default_rng(seed).integers(-noise, noise + 1, size=(n, 3))
    for _ in range(draw(st.integers(0, 3))):
        if n:
            acc[draw(st.integers(0, n - 1))] = draw(st.tuples(*[st.integers(-32768, 32767)] * 3))
    trigger = FallTrigger(
        impact_milli_g=draw(st.integers(0, 5000)),
        settle_ms=draw(st.integers(0, 3000)),
        still_ms=draw(st.integers(0, 3000)),
        block_ms=draw(st.integers(1, 1500)),
        moving_milli_g=draw(st.integers(0, 400)),
    )
    return np.clip(acc, -32768, 32767).astype(np.int16), lsb, rate, trigger


@given(case=windows())
def test_fall_impact_agrees_with_the_definition(
    case: tuple[npt.NDArray[np.int16], int, int, FallTrigger],
) -> None:
    acc, lsb, rate, trigger = case
    k = fall_impact_index(acc, lsb, rate, trigger)
    assert k == reference_fall_impact(acc, lsb, rate, trigger)
    assert k is None or k == last_impact_index(acc, lsb, trigger.impact_milli_g)


@given(case=windows(), pad=st.integers(1, 40))
def test_quiet_samples_before_the_impact_only_shift_it(
    case: tuple[npt.NDArray[np.int16], int, int, FallTrigger], pad: int
) -> None:
    acc, lsb, rate, trigger = case
    k = fall_impact_index(acc, lsb, rate, trigger)
    quiet = np.zeros((pad, 3), dtype=np.int16)  # 0 g: no impact unless the threshold is 0
    shifted = fall_impact_index(np.concatenate([quiet, acc]), lsb, rate, trigger)
    if trigger.impact_milli_g > 0:
        assert shifted == (None if k is None else k + pad)


@given(case=windows(), more=st.integers(1, 400))
def test_a_higher_moving_bound_only_adds_candidates(
    case: tuple[npt.NDArray[np.int16], int, int, FallTrigger], more: int
) -> None:
    acc, lsb, rate, trigger = case
    looser = FallTrigger(
        impact_milli_g=trigger.impact_milli_g,
        settle_ms=trigger.settle_ms,
        still_ms=trigger.still_ms,
        block_ms=trigger.block_ms,
        moving_milli_g=min(65535, trigger.moving_milli_g + more),
    )
    k = fall_impact_index(acc, lsb, rate, trigger)
    if k is not None:
        assert fall_impact_index(acc, lsb, rate, looser) == k


# ---- the hold and the offload reason ---------------------------------------------------------


@pytest.mark.parametrize(
    ("start_ms", "fall_ms", "hold_ms", "expected"),
    [
        (26_000, 10_000, 16_000, True),  # starts exactly hold_ms after the impact: still held
        (26_001, 10_000, 16_000, False),
        (8_000, 10_000, 16_000, True),  # the candidate window itself starts before its impact
        (8_000, None, 16_000, False),  # no fall yet
        (10_000, 10_000, 0, True),
        (10_001, 10_000, 0, False),
    ],
)
def test_motion_offload_holds_after_the_fall(
    start_ms: int, fall_ms: int | None, hold_ms: int, expected: bool
) -> None:
    assert motion_offload(start_ms, fall_ms, hold_ms=hold_ms) is expected
    if hold_ms == MOTION_HOLD_MS:
        assert motion_offload(start_ms, fall_ms) is expected


def test_decide_offload_motion_defaults_to_off_and_stands_alone() -> None:
    assert decide_offload(3000, 9000, 3500, 6000) == N
    assert decide_offload(3000, 9000, 3500, 6000, motion=False) == N
    assert decide_offload(3000, 9000, 3500, 6000, motion=True) == M
    assert decide_offload(4000, 1000, 3500, 6000, motion=True) == E | L | M


@given(
    h=st.integers(0, 65535),
    conf=st.integers(0, 65535),
    tau=st.integers(0, 65535),
    min_conf=st.integers(0, 65535),
)
def test_motion_only_adds_its_own_reason(h: int, conf: int, tau: int, min_conf: int) -> None:
    without = decide_offload(h, conf, tau, min_conf)
    with_motion = decide_offload(h, conf, tau, min_conf, motion=True)
    assert not without & M
    assert with_motion == without | M
    assert with_motion  # a motion event always offloads


# ---- real running: impacts at every other step, never a fall ---------------------------------


@pytest.mark.needs_data
def test_troika_running_never_looks_like_a_fall() -> None:
    if not TROIKA.is_dir():
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    from gatewayd.datasets import find_recordings, load
    from gatewayd.emulator.wearable import quantise

    sources = find_recordings(TROIKA)
    if not sources:
        pytest.skip(f"no TROIKA recordings in {TROIKA}")
    count = with_impact = 0
    for source in sources:
        recording = load(source)
        acc = quantise(recording.acc, 1.0, SampleFormat.INT16).reshape(-1, 3)
        for i in range(recording.window_count()):
            window = acc[i * 64 : i * 64 + 256]  # 8 s every 2 s at 32 Hz, 64 LSB/g
            count += 1
            with_impact += last_impact_index(window, 64) is not None
            assert fall_impact_index(window, 64, 32) is None, (recording.name, i)
    # The recordings do exercise the trigger: most windows hold a 3 g impact (running steps),
    # which the impact-only trigger offloaded.
    assert with_impact > count / 2
