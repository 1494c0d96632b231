"""What the rules produce: alert transitions (raised / cleared) with their evidence."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

from gatewayd.rules.config import Severity

__all__ = [
    "CATEGORY",
    "AlertKind",
    "AlertState",
    "AlertTransition",
    "Category",
    "Evidence",
    "EvidenceSample",
]

Category = Literal["physiological", "technical"]
AlertState = Literal["raised", "cleared"]
Scalar = float | int | str | bool | None


class AlertKind(StrEnum):
    """Every kind of alert; the value is also the rule's [rules.<kind>] section name."""

    TACHYCARDIA = "tachycardia"
    BRADYCARDIA = "bradycardia"
    HIGH_HR_AT_REST = "high_hr_at_rest"
    ABRUPT_CHANGE = "abrupt_change"
    FALL = "fall"
    POOR_SIGNAL = "poor_signal"
    OFF_WRIST = "off_wrist"
    DEVICE_SILENT = "device_silent"
    DISCONNECTED = "disconnected"
    LOW_BATTERY = "low_battery"


#: No data, not worn and link problems are technical, never physiological.
CATEGORY: Final[dict[AlertKind, Category]] = {
    AlertKind.TACHYCARDIA: "physiological",
    AlertKind.BRADYCARDIA: "physiological",
    AlertKind.HIGH_HR_AT_REST: "physiological",
    AlertKind.ABRUPT_CHANGE: "physiological",
    AlertKind.FALL: "physiological",
    AlertKind.POOR_SIGNAL: "technical",
    AlertKind.OFF_WRIST: "technical",
    AlertKind.DEVICE_SILENT: "technical",
    AlertKind.DISCONNECTED: "technical",
    AlertKind.LOW_BATTERY: "technical",
}
PHYSIOLOGICAL: Final = tuple(k for k, c in CATEGORY.items() if c == "physiological")


@dataclass(frozen=True, slots=True)
class EvidenceSample:
    """One window that contributed to a transition, with the value the rule looked at."""

    seq: int
    t: float
    value: float
    window_id: str | None = None
    model_id: str | None = None
    hr_source: str | None = None
    #: The group the rules used for this window: "rest", "light", "vigorous" or "unknown".
    activity: str | None = None

    def to_dict(self) -> dict[str, Scalar]:
        """JSON-ready form."""
        out: dict[str, Scalar] = {"seq": self.seq, "t": self.t, "value": self.value}
        for key in ("window_id", "model_id", "hr_source", "activity"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a transition happened: the windows, the thresholds used and a few named facts."""

    samples: tuple[EvidenceSample, ...] = ()
    thresholds: tuple[tuple[str, float], ...] = ()
    facts: tuple[tuple[str, Scalar], ...] = ()

    @property
    def seqs(self) -> tuple[int, ...]:
        """Sequence numbers of the evidence windows, oldest first."""
        return tuple(s.seq for s in self.samples)

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The distinct model ids behind the evidence values, sorted."""
        return tuple(sorted({s.model_id for s in self.samples if s.model_id is not None}))

    def fact(self, name: str) -> Scalar:
        """A named fact, or None."""
        return dict(self.facts).get(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``evidence`` object of the MQTT alert payload)."""
        out: dict[str, Any] = {
            "windows": [s.to_dict() for s in self.samples],
            "seqs": list(self.seqs),
            "model_ids": list(self.model_ids),
            "thresholds": dict(self.thresholds),
        }
        if self.samples:
            values = [s.value for s in self.samples]
            out.update(
                first_t=self.samples[0].t,
                last_t=self.samples[-1].t,
                min=min(values),
                max=max(values),
            )
        out.update(self.facts)
        return out


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert of one kind on one device was raised or cleared.

    ``episode`` numbers the raises of this kind on this device (1, 2, ...): a clear carries
    the episode it ends. ``reason`` says why: "threshold" for a raise; for a clear, "recovered",
    "movement", "reconnected", "data", "charging", or "off_wrist" / "no_data" when a physiological
    alert is withdrawn because its data stopped being trustworthy (not because it got better),
    "disabled" for an alert restored at a restart whose rule is now off, or "unpaired" when
    its device was taken off the paired list (or renamed). ``t`` and
    ``raised_at`` are wall-clock labels (the rules time everything on the monotonic clock).
    """

    device_id: str
    kind: AlertKind
    category: Category
    severity: Severity
    state: AlertState
    t: float
    episode: int
    raised_at: float
    reason: str
    evidence: Evidence

    def to_payload(self) -> dict[str, Any]:
        """JSON-ready dict for the MQTT ``devices/<id>/alerts`` topic (docs/rules.md)."""
        return {
            "device_id": self.device_id,
            "kind": self.kind.value,
            "category": self.category,
            "severity": self.severity,
            "state": self.state,
            "t": self.t,
            "episode": self.episode,
            "raised_at": self.raised_at,
            "reason": self.reason,
            "evidence": self.evidence.to_dict(),
        }
