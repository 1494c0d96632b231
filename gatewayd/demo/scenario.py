"""The demo's scripted scenario: who wears what, what happens when, and what must follow (pure).

Four residents wear emulated wearables that replay *synthetic* recordings (no data to download):

- ``resident-a`` sits with a heart rate of 150 bpm (tachycardia at rest, planted from the start);
- ``resident-b`` walks and falls at 16 s, then lies still;
- ``resident-c`` sits and walks out of radio range from 8 s to 38 s (a disconnection);
- ``resident-d`` cycles, and nothing happens to them: the baseline.

Times are seconds of wall-clock since the demo started (the replay runs at real time). The demo
shortens two minimum durations so that every alert fires within the first minute; they are
printed with the demo and listed in :data:`DEMO_RULES`. Everything else is the shipped defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEMO_RULES",
    "SCENARIO",
    "Expectation",
    "Resident",
    "Scenario",
    "away_changes",
    "check_expectations",
]

#: The synthetic recordings' labels (PPG-DaLiA's ids, what the generator writes; rest, light and
#: vigorous in gatewayd.activity's groups). They shape the synthetic signals only: the emulated
#: wearables send activity "unknown", so the rules apply their unknown limits.
_SITTING: Final = 1
_CYCLING: Final = 4
_WALKING: Final = 7


@dataclass(frozen=True, slots=True)
class Resident:
    """One emulated wearable: its recording and what happens to it."""

    device_id: str
    #: Synthetic subject id and seed for `gatewayd.datasets.synthetic.generate_recording`.
    subject: int
    seed: int
    #: The synthetic recording's activity label (a PPG-DaLiA id) for the whole session.
    activity: int
    #: Planted events, as generate_recording takes them.
    events: tuple[tuple[object, ...], ...] = ()
    #: (start_s, duration_s) during which the wearable is out of radio range.
    away: tuple[float, float] | None = None
    story: str = ""


@dataclass(frozen=True, slots=True)
class Expectation:
    """An alert the scenario must raise: ``kind`` on ``device_id``, published by ``due_s``."""

    device_id: str
    kind: str
    due_s: float


@dataclass(frozen=True, slots=True)
class Scenario:
    """Residents and the alerts their stories must raise."""

    residents: tuple[Resident, ...]
    expectations: tuple[Expectation, ...]

    def resident(self, device_id: str) -> Resident:
        """The resident wearing ``device_id``."""
        for r in self.residents:
            if r.device_id == device_id:
                return r
        raise KeyError(device_id)


SCENARIO: Final = Scenario(
    residents=(
        Resident(
            "resident-a",
            subject=1,
            seed=11,
            activity=_SITTING,
            events=(("tachycardia", 0.0, 3600.0, 150.0),),
            story="sits with a heart rate of 150 bpm: tachycardia at rest",
        ),
        Resident(
            "resident-b",
            subject=2,
            seed=3,
            activity=_WALKING,
            events=(("fall", 16.0, 3600.0),),
            story="walks, falls at 16 s and lies still",
        ),
        Resident(
            "resident-c",
            subject=3,
            seed=5,
            activity=_SITTING,
            away=(8.0, 30.0),
            story="sits; out of radio range from 8 s to 38 s",
        ),
        Resident(
            "resident-d",
            subject=4,
            seed=7,
            activity=_CYCLING,
            story="cycles; nothing happens (the baseline)",
        ),
    ),
    # Deadlines are generous upper bounds on a loaded 2-core machine, not targets: the fall
    # needs 12 s of stillness after the impact, the disconnection 15 s without a link, the
    # tachycardia the wearable's tracker to lock on (about 20 s) and then 10 s above the limit.
    expectations=(
        Expectation("resident-b", "fall", due_s=55.0),
        Expectation("resident-c", "disconnected", due_s=55.0),
        Expectation("resident-a", "tachycardia", due_s=58.0),
    ),
)

#: Rule settings the demo changes from the defaults, as TOML, so alerts come within a minute.
DEMO_RULES: Final = """\
[rules.tachycardia]
min_duration_s = 10.0
[rules.disconnected]
min_duration_s = 15.0
"""


def check_expectations(
    expectations: Iterable[Expectation],
    raised: Mapping[tuple[str, str], float],
    elapsed_s: float,
) -> dict[str, list[str]]:
    """Sort expectations into met / missed / not yet due.

    ``raised`` maps (device_id, kind) to the demo time at which the subscriber first received
    that alert raised. An expectation not met whose ``due_s`` is after ``elapsed_s`` is not due.
    """
    out: dict[str, list[str]] = {"met": [], "missed": [], "not_due": []}
    for e in expectations:
        name = f"{e.kind}@{e.device_id}"
        if (e.device_id, e.kind) in raised:
            out["met"].append(name)
        elif e.due_s > elapsed_s:
            out["not_due"].append(name)
        else:
            out["missed"].append(name)
    return out


def away_changes(residents: Sequence[Resident]) -> list[tuple[float, str, bool]]:
    """(time_s, device_id, in_range) for every range change of the scenario, in time order."""
    changes: list[tuple[float, str, bool]] = []
    for r in residents:
        if r.away is not None:
            start, duration = r.away
            changes += [(start, r.device_id, False), (start + duration, r.device_id, True)]
    return sorted(changes)
