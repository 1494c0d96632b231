"""The offload confidence: the activity's probability times the heart rate's, in wire integers."""

from __future__ import annotations

import pytest

from gatewayd.signals.offload import (
    UNKNOWN_QUALITY,
    OffloadReason,
    decide_offload,
    offload_confidence_e4,
)


@pytest.mark.parametrize(
    ("activity_conf_e4", "quality", "hr_cbpm", "expected"),
    [
        (9000, 92, 7250, 8280),  # 0.9 x 0.92
        (9000, 41, 7250, 3690),  # 0.9 x 0.41: the heart rate is unsure
        (9999, 33, 7250, 3300),  # 3299.67, rounded half up
        (1, 50, 7250, 1),  # half up
        (1, 49, 7250, 0),
        (65535, 100, 7250, 65535),  # the largest u16, unchanged
        (9000, 0, 0, 9000),  # no heart rate (no pulse): its quality is left out
        (9000, UNKNOWN_QUALITY, 7250, 9000),  # no quality reported: left out
        (10000, 100, 1, 10000),
        (10000, 150, 1, 10000),  # a quality above 100 counts as 100
        (0, 100, 30000, 0),
    ],
)
def test_offload_confidence_is_the_product_of_both_answers(
    activity_conf_e4: int, quality: int, hr_cbpm: int, expected: int
) -> None:
    assert offload_confidence_e4(activity_conf_e4, quality, hr_cbpm) == expected


@pytest.mark.parametrize(
    ("activity_conf_e4", "quality", "hr_cbpm"),
    [(-1, 50, 100), (65536, 50, 100), (5000, 256, 100), (5000, -1, 100), (5000, 50, 65536)],
)
def test_offload_confidence_rejects_what_the_wire_cannot_carry(
    activity_conf_e4: int, quality: int, hr_cbpm: int
) -> None:
    with pytest.raises(ValueError, match="must fit"):
        offload_confidence_e4(activity_conf_e4, quality, hr_cbpm)


def test_an_unsure_heart_rate_alone_offloads_a_window() -> None:
    confidence = offload_confidence_e4(9500, 41, 14210)
    assert decide_offload(3412, confidence, 4000, 5000) == OffloadReason.LOW_CONFIDENCE
    assert decide_offload(3412, offload_confidence_e4(9500, 0, 0), 4000, 5000) == 0
