"""The fall rule's accelerometer blocks: the vectorised statistics equal the per-block ones."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from gatewayd.rules.fall import AccBlock, acc_blocks
from gatewayd.rules.inputs import Observation


def reference_blocks(
    acc: npt.NDArray[np.floating], end: float, rate: float, after: float | None, block_s: float
) -> list[tuple[float, float, float, float, float]]:
    """The blocks as the rule first computed them, one block at a time (the reference)."""
    acc = acc.astype(np.float64)
    magnitude = np.sqrt(np.sum(np.square(acc), axis=1))
    n = magnitude.shape[0]
    times = end - (n - 1 - np.arange(n)) / rate
    first = 0 if after is None else int(np.searchsorted(times, after + 0.5 / rate, side="left"))
    size = max(1, round(rate * block_s))
    starts = list(range(first, n, size))
    if len(starts) > 1 and n - starts[-1] < size / 2:
        starts.pop()
    blocks = []
    for i, begin in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else n
        chunk = magnitude[begin:stop]
        top = int(np.argmax(chunk))
        blocks.append(
            (
                float(times[begin]) - 1 / rate,
                float(times[stop - 1]),
                float(chunk[top]),
                float(times[begin + top]),
                float(np.sqrt(np.sum(np.var(acc[begin:stop], axis=0)))),
            )
        )
    return blocks


def as_tuple(block: AccBlock) -> tuple[float, float, float, float, float]:
    assert block.peak_g is not None
    assert block.std_g is not None
    assert block.still_flag is None
    return (block.t_start, block.t_end, block.peak_g, block.peak_t, block.std_g)


@pytest.mark.parametrize("rate", [32.0, 25.0, 50.0, 10.0, 7.3])
@pytest.mark.parametrize("block_s", [1.0, 0.7, 0.25, 3.0, 8.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vectorised_block_statistics_equal_the_per_block_ones_exactly(
    rate: float, block_s: float, dtype: type[np.floating]
) -> None:
    rng = np.random.default_rng(round(rate * 100 + block_s * 10))
    compared = 0
    for _ in range(40):
        n = int(rng.integers(1, int(rate * 9)))
        scale = float(rng.choice([1e-3, 0.05, 1.0, 4.0]))
        acc = (np.array([0.0, 0.0, 1.0]) + rng.normal(0.0, scale, (n, 3))).astype(dtype)
        if rng.random() < 0.3:
            acc[rng.integers(0, n)] = [3.0, -2.0, 1.0]  # an impact
        end = 1.7e9 + float(rng.uniform(0, 1000))
        window_s = n / rate
        for after in (None, end - 2.0, end - window_s - 1, end - float(rng.uniform(0, window_s)),
                      end, end + 1.0):  # fmt: skip
            obs = Observation("d", 1, end, acc=acc, acc_rate_hz=rate, acc_end=end)
            got = [as_tuple(b) for b in acc_blocks(obs, after, block_s)]
            assert got == reference_blocks(acc, end, rate, after, block_s)
            compared += len(got)
    assert compared > 0


def test_the_input_is_not_modified() -> None:
    rng = np.random.default_rng(3)
    acc = rng.normal(0.0, 0.1, (256, 3))
    kept = acc.copy()
    obs = Observation("d", 1, 100.0, acc=acc, acc_rate_hz=32.0, acc_end=100.0)
    blocks = acc_blocks(obs, 98.0, 1.0)
    assert [b.t_end for b in blocks] == [99.0, 100.0]
    np.testing.assert_array_equal(acc, kept)
