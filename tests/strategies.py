"""Hypothesis strategies for protocol messages, shared by the property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from gatewayd.protocol.messages import (
    MAX_MESSAGE_SIZE,
    WINDOW_HEADER_END,
    MessageFlags,
    SampleFormat,
    Summary,
    Window,
)

u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def summaries(draw: st.DrawFn, seq: int | None = None, window_ms: int | None = None) -> Summary:
    """Any valid summary."""
    return Summary(
        seq=draw(u32) if seq is None else seq,
        t_ms=draw(st.integers(0, 2**64 - 1)),
        flags=MessageFlags(draw(st.integers(0, 0xFFFF))),
        activity=draw(st.sampled_from([0, 1, 2, 255])),
        pruning_pct=draw(st.integers(0, 100)),
        activity_conf_e4=draw(st.integers(0, 10000)),
        entropy_mbits=draw(st.integers(0, 0xFFFF)),
        hr_cbpm=draw(st.integers(0, 30000)),
        signal_quality=draw(st.sampled_from([*range(101), 255])),
        battery_pct=draw(st.sampled_from([*range(101), 255])),
        window_ms=draw(st.integers(1, 60000)) if window_ms is None else window_ms,
    )


@st.composite
def windows(draw: st.DrawFn, seq: int | None = None) -> Window:
    """Any valid window that fits in one message."""
    fmt = draw(st.sampled_from(SampleFormat))
    window_s = draw(st.sampled_from([1, 2, 4, 8]))
    size = fmt.dtype.itemsize
    budget = (MAX_MESSAGE_SIZE - WINDOW_HEADER_END - 4) // size  # samples that fit
    acc_rate = draw(st.integers(1, min(255, (budget // 4) // window_s)))
    bvp_rate = draw(st.integers(1, min(255, (budget - 3 * acc_rate * window_s) // window_s)))
    info = np.iinfo(fmt.dtype)
    n_bvp, n_acc = bvp_rate * window_s, acc_rate * window_s
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bvp = rng.integers(info.min, info.max, size=n_bvp, endpoint=True).astype(fmt.dtype)
    acc = rng.integers(info.min, info.max, size=(n_acc, 3), endpoint=True).astype(fmt.dtype)
    return Window(
        summary=draw(summaries(seq=seq, window_ms=window_s * 1000)),
        sample_format=fmt,
        bvp_rate_hz=bvp_rate,
        acc_rate_hz=acc_rate,
        acc_lsb_per_g=draw(st.integers(1, 0xFFFF)),
        bvp=bvp,
        acc=acc,
    )


def messages(seq: int | None = None) -> st.SearchStrategy[Summary | Window]:
    """A summary or a window."""
    return st.one_of(summaries(seq=seq), windows(seq=seq))


mtus = st.integers(23, 517)
