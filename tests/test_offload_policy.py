"""The offload confidence: the activity's probability times the heart rate's, in wire integers,
and 0 where the two answers contradict each other (rest above the resting limit)."""

from __future__ import annotations

import pytest

from gatewayd.activity import ActivityGroup
from gatewayd.signals.offload import (
    DEFAULT_REST_LIMIT_CBPM,
    UNKNOWN_QUALITY,
    OffloadReason,
    decide_offload,
    offload_confidence_e4,
)

REST, LIGHT, VIGOROUS, UNKNOWN = (int(g) for g in ActivityGroup)


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
    for group in (LIGHT, VIGOROUS, UNKNOWN):
        assert offload_confidence_e4(activity_conf_e4, quality, hr_cbpm, group) == expected
    if hr_cbpm <= DEFAULT_REST_LIMIT_CBPM:
        assert offload_confidence_e4(activity_conf_e4, quality, hr_cbpm, REST) == expected


def test_rest_above_the_resting_limit_has_no_confidence() -> None:
    """Rest and a heart rate above 100 bpm contradict each other: the window is offloaded
    whatever either answer's own probability, unless the check is off (limit 0)."""
    assert DEFAULT_REST_LIMIT_CBPM == 10000
    assert offload_confidence_e4(9900, 95, 10001, REST) == 0
    assert offload_confidence_e4(9900, 95, 10000, REST) == 9405  # at the limit: not above
    assert offload_confidence_e4(9900, UNKNOWN_QUALITY, 12000, REST) == 0
    assert offload_confidence_e4(9900, 95, 12000, LIGHT) == 9405
    assert offload_confidence_e4(9900, 95, 12000, REST, rest_limit_cbpm=0) == 9405
    assert offload_confidence_e4(9900, 95, 12000, REST, rest_limit_cbpm=13000) == 9405
    assert decide_offload(3412, offload_confidence_e4(9900, 95, 11000, REST), 4050, 4000) == (
        OffloadReason.LOW_CONFIDENCE
    )


@pytest.mark.parametrize(
    ("activity_conf_e4", "quality", "hr_cbpm"),
    [(-1, 50, 100), (65536, 50, 100), (5000, 256, 100), (5000, -1, 100), (5000, 50, 65536)],
)
def test_offload_confidence_rejects_what_the_wire_cannot_carry(
    activity_conf_e4: int, quality: int, hr_cbpm: int
) -> None:
    with pytest.raises(ValueError, match="must fit"):
        offload_confidence_e4(activity_conf_e4, quality, hr_cbpm, LIGHT)


@pytest.mark.parametrize(("activity", "limit"), [(-1, 10000), (256, 10000), (0, 65536), (0, -1)])
def test_offload_confidence_rejects_a_group_or_limit_the_wire_cannot_carry(
    activity: int, limit: int
) -> None:
    with pytest.raises(ValueError, match="must fit"):
        offload_confidence_e4(5000, 50, 100, activity, rest_limit_cbpm=limit)


def test_an_unsure_heart_rate_alone_offloads_a_window() -> None:
    confidence = offload_confidence_e4(9500, 41, 14210, VIGOROUS)
    assert decide_offload(3412, confidence, 4000, 5000) == OffloadReason.LOW_CONFIDENCE
    assert decide_offload(3412, offload_confidence_e4(9500, 0, 0, VIGOROUS), 4000, 5000) == 0
