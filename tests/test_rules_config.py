"""The [rules] config: defaults, validation messages, and its part of the example config."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gatewayd.activity import ActivityGroup
from gatewayd.rules import RulesConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "gatewayd.example.toml"


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf key of a model, dotted."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def example_keys() -> set[str]:
    """Keys set in the example file, dotted, relative to [rules]."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))

    def walk(node: dict[str, Any], prefix: str) -> set[str]:
        keys: set[str] = set()
        for key, value in node.items():
            if isinstance(value, dict):
                keys |= walk(value, f"{prefix}{key}.")
            else:
                keys.add(f"{prefix}{key}")
        return keys

    return walk(data["rules"], "")


def test_empty_section_gives_the_documented_defaults() -> None:
    config = RulesConfig.model_validate({})
    assert config.tachycardia.rest_bpm == 100
    # light and vigorous: docs/rules.md, "Limits on real exercise".
    assert config.tachycardia.light_bpm == 120
    assert config.tachycardia.vigorous_bpm == 185
    assert config.tachycardia.unknown_bpm == 130
    assert config.tachycardia.recovery_s == 300
    assert config.tachycardia.recovery_ratio == 2
    assert config.bradycardia.rest_bpm == 40
    assert config.high_hr_at_rest.min_duration_s == 600
    assert config.abrupt_change.delta_bpm == 30
    assert config.abrupt_change.within_s == 10
    assert config.poor_signal.threshold == 30
    assert config.poor_signal.min_duration_s == 60
    assert config.device_silent.min_duration_s == 60
    assert config.disconnected.min_duration_s == 30
    assert (config.low_battery.threshold_pct, config.low_battery.hysteresis_pct) == (15, 5)
    assert (config.fall.impact_g, config.fall.min_duration_s) == (3.0, 10.0)
    assert config.fall.severity == "critical"


def test_every_key_is_in_the_example_and_the_example_is_the_defaults() -> None:
    assert example_keys() == model_keys(RulesConfig)
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert RulesConfig.model_validate(data["rules"]) == RulesConfig()


def test_every_key_in_the_example_has_a_comment_above_it() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            assert lines[i - 1].startswith("#"), f"line {i + 1} ({line}) has no comment above it"


def test_config_is_frozen() -> None:
    config = RulesConfig()
    with pytest.raises(ValidationError):
        config.tachycardia.rest_bpm = 1  # type: ignore[misc]


def errors(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        RulesConfig.model_validate(data)
    return str(info.value)


def test_unknown_keys_are_errors_naming_the_key() -> None:
    message = errors({"tachycardia": {"rest_bmp": 90}})
    assert "tachycardia.rest_bmp" in message
    assert "Extra inputs are not permitted" in message


def test_strings_for_numbers_are_errors() -> None:
    assert "tachycardia.rest_bpm" in errors({"tachycardia": {"rest_bpm": "100"}})


def test_severity_is_checked_and_case_insensitive() -> None:
    config = RulesConfig.model_validate({"fall": {"severity": "WARNING"}})
    assert config.fall.severity == "warning"
    assert "fall.severity" in errors({"fall": {"severity": "urgent"}})


@pytest.mark.parametrize("key", ["rest", "light", "vigorous"])
def test_the_old_activity_name_lists_are_refused_saying_what_replaced_them(key: str) -> None:
    message = errors({"activities": {key: ["sitting"], "min_confidence": 0.5}})
    assert f"'{key}' (lists of activity names) were replaced by fixed activity groups" in message
    assert "only min_confidence remains" in message
    assert "Extra inputs" not in message


def test_min_confidence_is_the_only_activities_key() -> None:
    assert model_keys(RulesConfig) & {f"activities.{k}" for k in ("rest", "light", "vigorous")} == (
        set()
    )
    assert "activities.min_confidence" in model_keys(RulesConfig)
    assert "activities.min_confidence" in errors({"activities": {"min_confidence": 1.5}})


def test_bradycardia_limits_stay_below_tachycardia_limits() -> None:
    message = errors({"bradycardia": {"rest_bpm": 110.0}})
    assert "rules.bradycardia.rest_bpm (110) must be below rules.tachycardia.rest_bpm (100)" in (
        message
    )


def test_fall_band_and_battery_band_are_checked() -> None:
    assert "moving_min_std_g" in errors({"fall": {"moving_min_std_g": 0.01}})
    assert "hysteresis_pct" in errors({"low_battery": {"threshold_pct": 90, "hysteresis_pct": 20}})


def test_activity_groups_and_the_confidence_gate() -> None:
    activities = RulesConfig().activities
    assert activities.min_confidence == 0.5
    assert activities.group_of(0, 0.9) is ActivityGroup.REST
    assert activities.group_of(1, 0.9) is ActivityGroup.LIGHT
    assert activities.group_of(2, 0.5) is ActivityGroup.VIGOROUS
    assert activities.class_of(2, 0.9) == "vigorous"
    assert activities.class_of(1, 0.49) == "unknown"
    assert activities.class_of(255, 1.0) == "unknown"
    assert activities.class_of(None, 1.0) == "unknown"
    assert activities.class_of(7, 1.0) == "unknown"  # an old PPG-DaLiA id is no group
