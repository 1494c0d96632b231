"""The emulator's BVP gain per sample format, on the real recordings (and a flat BVP)."""

from __future__ import annotations

import numpy as np
import pytest

from gatewayd.datasets import Recording, find_recordings, flat_bvp, load
from gatewayd.emulator.wearable import bvp_gain, quantise
from gatewayd.protocol.messages import SampleFormat
from tests.test_datasets_bami import shared


def saturated_share(rec: Recording, fmt: SampleFormat) -> float:
    q = quantise(rec.bvp, bvp_gain(rec, fmt), fmt)
    info = np.iinfo(fmt.dtype)
    return float(np.mean((q == info.max) | (q == info.min)))


@pytest.mark.needs_data
@pytest.mark.parametrize("folder", ["troika", "bami", "wrist-ppg-exercise"])
def test_real_bvp_rarely_saturates_in_either_format(folder: str) -> None:
    path = shared(folder)
    if not path.is_dir():
        pytest.skip(f"{folder} recordings not found at {path}")
    for source in find_recordings(path)[:3]:
        rec = load(source)
        for fmt in SampleFormat:
            # At most 0.5 % (measured: none); the int16 gain used to be applied to int8 too,
            # which clipped 37-45 % of the samples.
            assert saturated_share(rec, fmt) < 0.005, (rec.name, fmt)
        # And int8 keeps a usable resolution: the pulse spans several LSB.
        q8 = quantise(rec.bvp, bvp_gain(rec, SampleFormat.INT8), SampleFormat.INT8)
        assert float(np.std(q8)) > 4


def test_flat_bvp_stays_flat_and_gains_are_powers_of_two() -> None:
    acc = np.zeros((20 * 32, 3), dtype=np.float32)
    rec = Recording("r", "sp-sw-har", "s", flat_bvp(acc.shape[0]), acc, has_bvp=False)
    for fmt in SampleFormat:
        assert bvp_gain(rec, fmt) == 1.0
        assert not quantise(rec.bvp, bvp_gain(rec, fmt), fmt).any()
    t = np.arange(20 * 64) / 64
    pulse = Recording("p", "troika", "s", (300 * np.sin(t)).astype(np.float32), acc)
    g16, g8 = bvp_gain(pulse, SampleFormat.INT16), bvp_gain(pulse, SampleFormat.INT8)
    assert np.log2(g16).is_integer()
    assert np.log2(g8).is_integer()
    assert 300 * g8 <= 64 < 2 * 300 * g8  # the int8 target: half of full scale
    assert 300 * g16 <= 8192 < 2 * 300 * g16
