"""The [rules] section: every alert rule's thresholds, durations, hysteresis and cooldown.

Every key has a default, so an empty (or absent) [rules] section gives the documented rules.
The [rules] part of config/gatewayd.example.toml documents every key; a test keeps the two in
step. The models are frozen and strict like the rest of gatewayd.config; this module imports
nothing from it, so gatewayd.config can import `RulesConfig` without a cycle.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gatewayd.activity import ActivityGroup

__all__ = [
    "AbruptChangeConfig",
    "ActivitiesConfig",
    "BradycardiaConfig",
    "DeviceSilentConfig",
    "DisconnectedConfig",
    "FallConfig",
    "HighHrAtRestConfig",
    "HrInputConfig",
    "LowBatteryConfig",
    "OffWristConfig",
    "PoorSignalConfig",
    "RuleBase",
    "RulesConfig",
    "Severity",
    "TachycardiaConfig",
]

Severity = Literal["info", "warning", "critical"]
#: An activity group's name; the heart-rate limits are keyed by it (``rest_bpm``, ...).
ActivityClass = Literal["rest", "light", "vigorous", "unknown"]
_ACTIVITY_CLASSES: Final[tuple[ActivityClass, ...]] = ("rest", "light", "vigorous")
_CLASS_NAMES: Final[dict[ActivityGroup, ActivityClass]] = {
    ActivityGroup.REST: "rest",
    ActivityGroup.LIGHT: "light",
    ActivityGroup.VIGOROUS: "vigorous",
    ActivityGroup.UNKNOWN: "unknown",
}
_KNOWN_CODES: Final = frozenset(int(g) for g in ActivityGroup if g is not ActivityGroup.UNKNOWN)
#: Keys of [rules.activities] before the activity groups; a file that still has them is refused.
_REMOVED_KEYS: Final = ("rest", "light", "vigorous")


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


SeverityField = Annotated[Severity, BeforeValidator(_lower)]
Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
Bpm = Annotated[float, Field(ge=0, le=300, allow_inf_nan=False)]


class _Section(BaseModel):
    # strict: TOML already has types, so "100" for a number is a mistake worth reporting.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class RuleBase(_Section):
    """What every rule has: an on/off switch, a severity, a minimum duration and a cooldown."""

    enabled: bool = True
    severity: SeverityField = "warning"
    min_duration_s: Seconds = 0.0
    cooldown_s: Seconds = 0.0


# --- inputs ------------------------------------------------------------------------------------


class ActivitiesConfig(_Section):
    """[rules.activities]: how sure the activity group must be for the rules to use it.

    The groups themselves are fixed (`gatewayd.activity.ActivityGroup`): the wearable's SUMMARY
    and the gateway's model both report one, so there is nothing to map here any more.
    """

    min_confidence: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False)
    #: A window whose wrist motion (the wearable's ``motion_cg``, RMS g about the window's
    #: mean) reaches this counts as vigorous for the tachycardia limit and the rest rule,
    #: whatever group was reported: it can only raise a limit, never lower one. 0 turns it off.
    #: Chosen held out on labelled real windows (`gatewayd eval activity`, docs/rules.md).
    vigorous_motion_g: float = Field(default=0.55, ge=0, le=2.55, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_name_lists(cls, data: Any) -> Any:
        # The lists of PPG-DaLiA names went away with the groups: say what replaced them,
        # not just "unknown key", so an upgraded gateway's error explains the old file.
        if isinstance(data, dict):
            old = [key for key in _REMOVED_KEYS if key in data]
            if old:
                keys = " and ".join(repr(key) for key in old)
                raise ValueError(
                    f"{keys} (lists of activity names) were replaced by fixed activity groups:"
                    " the wearable and the model now report rest, light, vigorous or unknown"
                    " themselves, so there is nothing to map. Delete these keys; only"
                    " min_confidence remains here (docs/rules.md)"
                )
        return data

    def group_of(self, activity: int | None, confidence: float) -> ActivityGroup:
        """The group the rules use: UNKNOWN if absent, not a group code, or below min_confidence."""
        if activity is None or activity not in _KNOWN_CODES:
            return ActivityGroup.UNKNOWN
        if confidence < self.min_confidence:
            return ActivityGroup.UNKNOWN
        return ActivityGroup(activity)

    def limit_group(
        self, activity: int | None, confidence: float, motion_g: float | None
    ) -> ActivityGroup:
        """`group_of`, raised to VIGOROUS when the wrist moved at least ``vigorous_motion_g``."""
        group = self.group_of(activity, confidence)
        floor = self.vigorous_motion_g
        if floor > 0 and motion_g is not None and motion_g >= floor:
            return ActivityGroup.VIGOROUS
        return group

    def class_of(self, activity: int | None, confidence: float) -> ActivityClass:
        """The name of `group_of`: "rest", "light", "vigorous" or "unknown"."""
        name: ActivityClass = _CLASS_NAMES[self.group_of(activity, confidence)]
        return name


class HrInputConfig(_Section):
    """[rules.hr]: which heart-rate estimates are good enough for physiological rules."""

    min_confidence: float = Field(default=0.6, ge=0, le=1, allow_inf_nan=False)
    min_signal_quality: int = Field(default=30, ge=0, le=100)
    plausible_min_bpm: Bpm = 20.0
    plausible_max_bpm: Bpm = 250.0
    max_gap_s: Seconds = 10.0
    stale_s: Seconds = 60.0

    @model_validator(mode="after")
    def _check_range(self) -> HrInputConfig:
        if self.plausible_min_bpm >= self.plausible_max_bpm:
            raise ValueError("rules.hr.plausible_min_bpm must be below rules.hr.plausible_max_bpm")
        return self


# --- physiological rules -----------------------------------------------------------------------


class _ActivityLimits(RuleBase):
    rest_bpm: Bpm
    light_bpm: Bpm
    vigorous_bpm: Bpm
    unknown_bpm: Bpm
    hysteresis_bpm: Bpm

    def limit(self, cls: ActivityClass) -> float:
        """The limit that applies during an activity class."""
        limit: float = getattr(self, f"{cls}_bpm")
        return limit


class TachycardiaConfig(_ActivityLimits):
    """[rules.tachycardia]: heart rate above an activity-dependent limit."""

    # docs/rules.md: reference heart rate per group on TROIKA, BAMI and PhysioNet.
    rest_bpm: Bpm = 100.0
    light_bpm: Bpm = 120.0
    vigorous_bpm: Bpm = 185.0
    unknown_bpm: Bpm = 130.0
    hysteresis_bpm: Bpm = 10.0
    #: After a bout of a group with a higher limit, that limit keeps applying for
    #: ``recovery_ratio`` times as long as the bout lasted, at most ``recovery_s``: the heart
    #: rate takes minutes to come down.
    recovery_s: Seconds = 300.0
    recovery_ratio: float = Field(default=2.0, ge=0, le=10, allow_inf_nan=False)
    min_duration_s: Seconds = 30.0
    cooldown_s: Seconds = 300.0


class BradycardiaConfig(_ActivityLimits):
    """[rules.bradycardia]: heart rate below an activity-dependent limit."""

    rest_bpm: Bpm = 40.0
    light_bpm: Bpm = 45.0
    vigorous_bpm: Bpm = 50.0
    unknown_bpm: Bpm = 40.0
    hysteresis_bpm: Bpm = 5.0
    min_duration_s: Seconds = 30.0
    cooldown_s: Seconds = 300.0


class HighHrAtRestConfig(RuleBase):
    """[rules.high_hr_at_rest]: heart rate above a threshold for long while resting."""

    threshold_bpm: Bpm = 100.0
    hysteresis_bpm: Bpm = 10.0
    min_duration_s: Seconds = 600.0
    cooldown_s: Seconds = 1800.0


class AbruptChangeConfig(RuleBase):
    """[rules.abrupt_change]: heart rate jumps within seconds while the activity stays the same."""

    delta_bpm: Bpm = 30.0
    within_s: float = Field(default=10.0, gt=0, le=600, allow_inf_nan=False)
    #: How many trusted readings in a row make a level: the change is measured between the
    #: newest this many and as many in a row before them, and only when the two do not
    #: overlap, so one wrong window (up and back down) is no change. 1: the newest reading
    #: against any one earlier reading.
    confirm_readings: int = Field(default=2, ge=1, le=5)
    hysteresis_bpm: Bpm = 10.0
    min_duration_s: Seconds = 0.0
    cooldown_s: Seconds = 120.0


class FallConfig(RuleBase):
    """[rules.fall]: an accelerometer impact followed by stillness."""

    severity: SeverityField = "critical"
    impact_g: float = Field(default=3.0, gt=1, le=64, allow_inf_nan=False)
    settle_s: Seconds = 2.0
    still_max_std_g: float = Field(default=0.05, gt=0, le=4, allow_inf_nan=False)
    moving_min_std_g: float = Field(default=0.15, gt=0, le=4, allow_inf_nan=False)
    block_s: float = Field(default=1.0, gt=0, le=8, allow_inf_nan=False)
    max_gap_s: Seconds = 2.5
    #: Seconds of stillness after settling that make a fall.
    min_duration_s: Seconds = 10.0
    cooldown_s: Seconds = 60.0

    @model_validator(mode="after")
    def _check_band(self) -> FallConfig:
        if self.moving_min_std_g <= self.still_max_std_g:
            raise ValueError(
                "rules.fall.moving_min_std_g must be above rules.fall.still_max_std_g"
                " (the gap between them is the hysteresis band)"
            )
        return self


# --- technical rules ---------------------------------------------------------------------------


class PoorSignalConfig(RuleBase):
    """[rules.poor_signal]: the wearable's signal quality stays low."""

    severity: SeverityField = "info"
    threshold: int = Field(default=30, ge=0, le=100)
    hysteresis: int = Field(default=10, ge=0, le=100)
    min_duration_s: Seconds = 60.0
    cooldown_s: Seconds = 300.0


class OffWristConfig(RuleBase):
    """[rules.off_wrist]: the wearable says it is not worn."""

    severity: SeverityField = "info"
    min_duration_s: Seconds = 10.0
    cooldown_s: Seconds = 60.0


class DeviceSilentConfig(RuleBase):
    """[rules.device_silent]: connected, but no window arrives."""

    min_duration_s: Seconds = 60.0
    cooldown_s: Seconds = 60.0


class DisconnectedConfig(RuleBase):
    """[rules.disconnected]: the BLE link stays down."""

    min_duration_s: Seconds = 30.0
    cooldown_s: Seconds = 60.0


class LowBatteryConfig(RuleBase):
    """[rules.low_battery]: battery below a threshold (and not charging)."""

    threshold_pct: int = Field(default=15, ge=0, le=100)
    hysteresis_pct: int = Field(default=5, ge=0, le=100)
    cooldown_s: Seconds = 3600.0

    @model_validator(mode="after")
    def _check_band(self) -> LowBatteryConfig:
        if self.threshold_pct + self.hysteresis_pct > 100:
            raise ValueError(
                "rules.low_battery.threshold_pct + rules.low_battery.hysteresis_pct must be at"
                " most 100"
            )
        return self


class RulesConfig(_Section):
    """[rules]: alert rules (docs/rules.md)."""

    max_evidence: int = Field(default=16, ge=2, le=1000)
    activities: ActivitiesConfig = Field(default_factory=ActivitiesConfig)
    hr: HrInputConfig = Field(default_factory=HrInputConfig)
    tachycardia: TachycardiaConfig = Field(default_factory=TachycardiaConfig)
    bradycardia: BradycardiaConfig = Field(default_factory=BradycardiaConfig)
    high_hr_at_rest: HighHrAtRestConfig = Field(default_factory=HighHrAtRestConfig)
    abrupt_change: AbruptChangeConfig = Field(default_factory=AbruptChangeConfig)
    fall: FallConfig = Field(default_factory=FallConfig)
    poor_signal: PoorSignalConfig = Field(default_factory=PoorSignalConfig)
    off_wrist: OffWristConfig = Field(default_factory=OffWristConfig)
    device_silent: DeviceSilentConfig = Field(default_factory=DeviceSilentConfig)
    disconnected: DisconnectedConfig = Field(default_factory=DisconnectedConfig)
    low_battery: LowBatteryConfig = Field(default_factory=LowBatteryConfig)

    @model_validator(mode="after")
    def _check_limits(self) -> RulesConfig:
        classes: tuple[ActivityClass, ...] = (*_ACTIVITY_CLASSES, "unknown")
        for cls in classes:
            brady = self.bradycardia.limit(cls)
            tachy = self.tachycardia.limit(cls)
            if brady >= tachy:
                raise ValueError(
                    f"rules.bradycardia.{cls}_bpm ({brady:g}) must be below"
                    f" rules.tachycardia.{cls}_bpm ({tachy:g})"
                )
        return self
