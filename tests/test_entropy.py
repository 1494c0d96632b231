"""Window entropy H(X): the integer path the firmware mirrors, against an exact reference."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gatewayd.signals import (
    ENTROPY_BINS,
    ENTROPY_RANGE_SIGMA,
    decide_offload,
    entropy_bin_indices,
    entropy_histogram,
    entropy_milli_bits,
    histogram_entropy_bits,
    window_entropy_bits,
    window_entropy_bits_float,
)

REPO = Path(__file__).resolve().parent.parent
TROIKA = REPO.parent / "shared" / "data" / "troika"
GOLDEN = REPO / "firmware_stub" / "vectors" / "golden.txt"

# --- an exact reference, written differently -------------------------------------------------
#
# The bin of a sample is floor(4 z) + 16 with z = d / sqrt(V) (d = n x_i - S, V = n Q - S^2).
# Here it is decided in exact integer arithmetic: for d >= 0, floor(4 d / sqrt(V)) is the
# largest m with m^2 <= 16 d^2 / V, i.e. isqrt(floor(16 d^2 / V)); for d < 0 it is minus the
# ceiling of that square root. The double path can only differ where 4 z lies within rounding
# error of a bin edge, which the reference detects with 50-digit decimals.

EDGE_TOLERANCE = 1e-12


def reference_bins(samples: list[int]) -> tuple[list[int], list[bool]]:
    """Exact bin of every sample, and whether it lies within EDGE_TOLERANCE of an inner edge."""
    n = len(samples)
    s = sum(samples)
    q = sum(v * v for v in samples)
    var_n2 = n * q - s * s
    if var_n2 == 0:
        return [ENTROPY_BINS // 2] * n, [False] * n
    bins: list[int] = []
    near: list[bool] = []
    for v in samples:
        d = n * v - s
        r = Fraction(16 * d * d, var_n2)  # (4 z)^2, exactly
        root = math.isqrt(math.floor(r))  # floor(sqrt(r))
        # floor(-y) = -ceil(y); ceil(sqrt(r)) is root only when r is a perfect square.
        ceil_root = root if root * root == r else root + 1
        m = root if d >= 0 else -ceil_root
        bins.append(min(max(m + 16, 0), ENTROPY_BINS - 1))
        with localcontext() as ctx:
            ctx.prec = 50
            four_z = Decimal(4 * d) / Decimal(var_n2).sqrt()
            edge = four_z.to_integral_value()
            # Only the edges between two different (clamped) bins matter: 4z in -15..15.
            near.append(abs(four_z - edge) < Decimal(EDGE_TOLERANCE) and -15 <= edge <= 15)
    return bins, near


def reference_entropy(counts: list[int]) -> float:
    """H = log2(n) - sum(c log2 c) / n, summed with fsum: a different formula and order."""
    n = sum(counts)
    return math.log2(n) - math.fsum(c * math.log2(c) for c in counts if c > 0) / n


def assert_matches_reference(samples: npt.NDArray[np.integer]) -> None:
    values = [int(v) for v in samples]
    exact, near = reference_bins(values)
    got = entropy_bin_indices(samples)
    for i, (k_got, k_exact, is_near) in enumerate(zip(got, exact, near, strict=True)):
        if not is_near:
            assert k_got == k_exact, f"sample {i} = {values[i]}: bin {k_got}, exact {k_exact}"
        else:
            assert abs(int(k_got) - k_exact) <= 1
    counts = entropy_histogram(samples)
    np.testing.assert_array_equal(counts, np.bincount(got, minlength=ENTROPY_BINS))
    if not any(near):
        np.testing.assert_array_equal(counts, np.bincount(exact, minlength=ENTROPY_BINS))
    h = window_entropy_bits(samples)
    assert h == pytest.approx(reference_entropy([int(c) for c in counts]), abs=1e-12)


int_windows = st.one_of(
    hnp.arrays(np.int16, st.integers(2, 600)),
    hnp.arrays(np.int8, st.integers(2, 600)),
    hnp.arrays(np.int32, st.integers(2, 300), elements=st.integers(-(10**6), 10**6)),
    # few distinct values: many ties and z exactly on bin edges
    hnp.arrays(np.int16, st.integers(2, 600), elements=st.integers(-3, 3)),
)


# --- fixed cases -----------------------------------------------------------------------------


def test_constants() -> None:
    assert ENTROPY_BINS == 32
    assert ENTROPY_RANGE_SIGMA == 4.0


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_constant_window_is_zero(dtype: type[np.integer]) -> None:
    x = np.full(512, 17, dtype=dtype)
    assert window_entropy_bits(x) == 0.0
    counts = entropy_histogram(x)
    assert counts[16] == 512
    assert counts.sum() == 512
    assert window_entropy_bits_float(x.astype(np.float64)) == 0.0


def test_uniform_histogram_is_exactly_five_bits() -> None:
    assert histogram_entropy_bits(np.full(32, 16)) == 5.0
    assert histogram_entropy_bits(np.full(32, 1)) == 5.0
    assert histogram_entropy_bits(np.array([512] + [0] * 31)) == 0.0
    assert histogram_entropy_bits(np.array([0] * 16 + [3] * 16)) == 4.0


@given(int_windows)
def test_no_window_reaches_five_bits(x: npt.NDArray[np.integer]) -> None:
    # Equal counts in all 32 bins would put half the samples in bins 0-7 (z < -2) and 24-31
    # (z >= 2). Chebyshev's inequality allows at most a quarter at |z| >= 2, so 5 bits is an
    # upper bound, never a value. Checked on the exact bins.
    exact, _ = reference_bins([int(v) for v in x])
    tails = sum(1 for k in exact if k < 8 or k >= 24)
    assert 4 * tails <= x.shape[0]
    assert window_entropy_bits(x) < 5.0


@pytest.mark.parametrize(("a", "b"), [(0, 1), (-300, 1200), (-32768, 32767), (5, 6)])
def test_two_value_signal_is_one_bit(a: int, b: int) -> None:
    alternating = np.array([a, b] * 256, dtype=np.int32)
    assert window_entropy_bits(alternating) == 1.0
    blocks = np.array([a] * 100 + [b] * 100, dtype=np.int32)
    assert window_entropy_bits(blocks) == 1.0
    # z = -1 and +1 exactly: bins 12 and 20
    counts = entropy_histogram(blocks)
    assert counts[12] == counts[20] == 100


def test_four_equally_likely_levels_are_two_bits() -> None:
    assert window_entropy_bits(np.array([0, 1, 2, 3] * 128, dtype=np.int16)) == 2.0


def test_worked_examples_in_docs() -> None:
    # docs/signals.md quotes these two; the firmware's tests can use them too.
    ramp = np.arange(512, dtype=np.int16)
    assert entropy_histogram(ramp).tolist() == [0] * 9 + [34] + [37] * 12 + [34] + [0] * 9
    assert window_entropy_bits(ramp) == pytest.approx(3.806748500890084, abs=1e-15)
    assert entropy_milli_bits(window_entropy_bits(ramp)) == 3807
    spike = np.zeros(512, dtype=np.int16)
    spike[100] = 1000
    counts = entropy_histogram(spike)
    assert counts[15] == 511
    assert counts[31] == 1
    expected = -(511 / 512) * math.log2(511 / 512) - (1 / 512) * math.log2(1 / 512)
    assert window_entropy_bits(spike) == pytest.approx(expected, abs=1e-15)


def test_outliers_go_to_the_edge_bins() -> None:
    x = np.zeros(1000, dtype=np.int16)
    x[0] = -10000
    x[1] = 10000
    k = entropy_bin_indices(x)
    assert k[0] == 0
    assert k[1] == ENTROPY_BINS - 1


def test_input_validation() -> None:
    with pytest.raises(TypeError, match="integer samples"):
        window_entropy_bits(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        window_entropy_bits(np.array([1], dtype=np.int16))
    with pytest.raises(ValueError, match="1-D"):
        window_entropy_bits(np.zeros((4, 4), dtype=np.int16))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        window_entropy_bits(np.array([2**31 - 1, 0], dtype=np.int64))
    # (n, 1), the PPG-DaLiA layout, is accepted
    assert window_entropy_bits(np.array([[0], [1]], dtype=np.int16)) == 1.0


def test_entropy_milli_bits_rounding() -> None:
    assert entropy_milli_bits(0.0) == 0
    assert entropy_milli_bits(5.0) == 5000
    assert entropy_milli_bits(3.8064999) == 3806
    assert entropy_milli_bits(3.8065) == 3807  # half rounds up
    assert entropy_milli_bits(1.0005) == 1001
    assert entropy_milli_bits(-0.1) == 0
    assert entropy_milli_bits(1e9) == 65535
    with pytest.raises(ValueError, match="finite"):
        entropy_milli_bits(float("inf"))


# --- properties ------------------------------------------------------------------------------


@given(int_windows)
def test_bounds_and_counts(x: npt.NDArray[np.integer]) -> None:
    h = window_entropy_bits(x)
    assert 0.0 <= h < 5.0
    counts = entropy_histogram(x)
    assert counts.dtype == np.int64
    assert counts.shape == (ENTROPY_BINS,)
    assert counts.sum() == x.shape[0]
    assert h == histogram_entropy_bits(counts)
    assert 0 <= entropy_milli_bits(h) <= 5000


@given(int_windows)
def test_matches_exact_reference(x: npt.NDArray[np.integer]) -> None:
    assert_matches_reference(x)


@given(
    hnp.arrays(np.int16, st.integers(2, 600)),
    st.integers(-(2**20), 2**20),
)
def test_offset_invariance_is_exact(x: npt.NDArray[np.int16], b: int) -> None:
    # d and V do not change at all under an integer offset.
    shifted = x.astype(np.int64) + b
    np.testing.assert_array_equal(entropy_bin_indices(shifted), entropy_bin_indices(x))
    assert window_entropy_bits(shifted) == window_entropy_bits(x)


@given(hnp.arrays(np.int16, st.integers(2, 600)), st.integers(0, 5), st.integers(-1000, 1000))
def test_power_of_two_scaling_is_exact(x: npt.NDArray[np.int16], e: int, b: int) -> None:
    # d and sqrt(V) scale by the same power of two, so every double operation is exact scaling.
    scaled = x.astype(np.int64) * (2**e) + b
    np.testing.assert_array_equal(entropy_bin_indices(scaled), entropy_bin_indices(x))
    assert window_entropy_bits(scaled) == window_entropy_bits(x)


@given(
    hnp.arrays(np.int16, st.integers(2, 400), elements=st.integers(-2000, 2000)),
    st.integers(1, 300),
    st.integers(-(10**5), 10**5),
)
def test_any_positive_scaling_keeps_the_bins(x: npt.NDArray[np.int16], a: int, b: int) -> None:
    # The exact z is invariant under x -> a x + b; the doubles can only round differently at a
    # bin edge, so compare wherever the reference says no sample is near one.
    _, near = reference_bins([int(v) for v in x])
    assume(not any(near))
    transformed = x.astype(np.int64) * a + b
    np.testing.assert_array_equal(entropy_bin_indices(transformed), entropy_bin_indices(x))
    assert window_entropy_bits(transformed) == window_entropy_bits(x)


@pytest.mark.parametrize("seed", range(5))
def test_float_path_agrees_on_ordinary_windows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 64
    x = 800 * np.sin(2 * np.pi * 1.2 * t) + rng.normal(0, 100, 512)
    xi = np.round(x).astype(np.int16)
    assert window_entropy_bits_float(xi.astype(np.float64)) == pytest.approx(
        window_entropy_bits(xi), abs=0.02
    )
    # float input is invariant to offset and scale up to rounding at bin edges
    assert window_entropy_bits_float(x * 0.001 - 5.0) == pytest.approx(
        window_entropy_bits_float(x), abs=0.02
    )


def test_float_path_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="NaN"):
        window_entropy_bits_float(np.array([0.0, np.nan, 1.0]))


# --- real data and the C side ----------------------------------------------------------------


@pytest.mark.needs_data
def test_troika_windows_match_reference() -> None:
    path = TROIKA / "DATA_01_TYPE01.mat"
    if not path.exists():
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    from scipy.io import loadmat

    from gatewayd.signals import sliding_windows

    ppg = loadmat(str(path))["sig"][1]  # PPG channel 1, 125 Hz, in steps of 0.5
    samples = np.round(ppg * 2).astype(np.int16)
    windows = sliding_windows(samples, 125)
    hs = []
    for w in windows[::10]:
        assert_matches_reference(w)
        hs.append(window_entropy_bits(w))
    assert 2.0 < min(hs) <= max(hs) < 4.8


def _golden_window_vectors() -> list[tuple[str, bytes, float, list[int]]]:
    vectors: list[tuple[str, bytes, float, list[int]]] = []
    name, message, entropy, policy = "", b"", None, None
    for raw in GOLDEN.read_text().splitlines():
        key, _, rest = raw.strip().partition(" ")
        if key == "vector":
            name, message, entropy, policy = rest, b"", None, None
        elif key == "message":
            message = bytes.fromhex(rest)
        elif key == "entropy":
            entropy = float(rest)
        elif key == "policy":
            policy = [int(v, 0) for v in rest.split()]
        elif key == "end" and entropy is not None and len(message) > 40 and message[1] == 2:
            vectors.append((name, message, entropy, policy or []))
    return vectors


def test_firmware_golden_entropy_matches() -> None:
    if not GOLDEN.exists():
        pytest.skip(f"no firmware golden vectors at {GOLDEN} yet")
    vectors = _golden_window_vectors()
    if not vectors:
        pytest.skip("the golden vectors contain no WINDOW message with an entropy line")
    for name, message, c_entropy, policy in vectors:
        # docs/protocol.md §2.3: sample_format at 28, n_bvp at 32, BVP from 40, little-endian
        dtype = np.dtype("<i2") if message[28] == 1 else np.dtype("i1")
        n_bvp = int.from_bytes(message[32:34], "little")
        bvp = np.frombuffer(message, dtype=dtype, count=n_bvp, offset=40)
        h = window_entropy_bits(bvp)
        assert h == pytest.approx(c_entropy, abs=1e-9), name
        wire_mbits = int.from_bytes(message[20:22], "little")
        assert entropy_milli_bits(h) == wire_mbits, name
        if len(policy) == 3:
            tau, min_conf, reason = policy
            conf = int.from_bytes(message[18:20], "little")
            assert int(decide_offload(wire_mbits, conf, tau, min_conf)) == reason, name
