"""Alert rules: data (the [rules] config) evaluated by pure code (docs/rules.md).

Inputs are `Observation` (one per window), `LinkStatus` and `Tick`; outputs are
`AlertTransition` (raised / cleared, with evidence). `RuleEngine` keeps the per-device state;
gatewayd.rules.evaluate holds the pure (state, input) -> (state, transitions) functions, and
gatewayd.rules.restore takes over the alerts open at the last shutdown. Durations run on the
inputs' monotonic ``mono``; their wall-clock ``t`` only labels.
"""

from gatewayd.rules.alerts import (
    CATEGORY,
    AlertKind,
    AlertState,
    AlertTransition,
    Category,
    Evidence,
    EvidenceSample,
)
from gatewayd.rules.config import RulesConfig, Severity
from gatewayd.rules.engine import RuleEngine
from gatewayd.rules.evaluate import DeviceState, observe, on_link, on_tick
from gatewayd.rules.inputs import HrSource, LinkStatus, Observation, RuleInput, Tick
from gatewayd.rules.restore import AlertRecord, OpenAlert, Restored, RestoreResult, Skipped

__all__ = [
    "CATEGORY",
    "AlertKind",
    "AlertRecord",
    "AlertState",
    "AlertTransition",
    "Category",
    "DeviceState",
    "Evidence",
    "EvidenceSample",
    "HrSource",
    "LinkStatus",
    "Observation",
    "OpenAlert",
    "RestoreResult",
    "Restored",
    "RuleEngine",
    "RuleInput",
    "RulesConfig",
    "Severity",
    "Skipped",
    "Tick",
    "observe",
    "on_link",
    "on_tick",
]
