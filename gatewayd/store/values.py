"""What SQLite can hold: the checks a record passes before it is queued (pure, no I/O).

SQLite's INTEGER is a signed 64-bit integer (Python's sqlite3 raises OverflowError beyond it,
which would fail the whole batch); a REAL may be NaN (stored as NULL, so a NOT NULL column
refuses the row) or infinite (meaningless for a time or a heart rate); JSON has no NaN; text
must be encodable as UTF-8 (a lone surrogate is not). A value that fails is stored as NULL (text:
with the bad characters escaped) and named in the row's ``invalid`` column: the rest of the
record is kept. docs/store.md, "Values SQLite cannot hold".
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["INT64_MAX", "INT64_MIN", "Checked", "dumps"]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_SHOWN: Final = 60


#: What `json.dumps` would build on every call with these arguments (it keeps no state).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=True)


def dumps(value: Mapping[str, Any] | None) -> str | None:
    """Compact, sorted JSON; raises ValueError for NaN/inf and TypeError for non-JSON values."""
    if value is None:
        return None
    return _ENCODER.encode(value)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (for JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


class Checked:
    """Collects, field by field, what could not be stored as given."""

    __slots__ = ("problems",)

    def __init__(self) -> None:
        #: {field: "value: why"}, in the order found.
        self.problems: dict[str, str] = {}

    def note(self, field: str, value: object, why: str) -> None:
        """Record one field that is stored otherwise than given."""
        self.problems[field] = f"{_shown(value)}: {why}"

    def integer(self, field: str, value: object) -> int | None:
        """An int SQLite can hold, or None (noted)."""
        if value is None:
            return None
        try:
            number = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            self.note(field, value, "not an integer")
            return None
        if not INT64_MIN <= number <= INT64_MAX:
            self.note(field, value, "outside SQLite's signed 64-bit integer range")
            return None
        return int(number)

    def real(self, field: str, value: object) -> float | None:
        """A finite float, or None (noted)."""
        if value is None:
            return None
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            self.note(field, value, "not a number")
            return None
        if not math.isfinite(number):
            self.note(field, value, "not a finite number")
            return None
        return number

    def text(self, field: str, value: object) -> str | None:
        """UTF-8-encodable text (bad characters escaped, noted), or None."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.note(field, value, "not text; stored as its repr")
            return repr(value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.note(field, value, "not valid Unicode; stored with the bad characters escaped")
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value

    def json(self, field: str, value: Mapping[str, Any] | None) -> str | None:
        """JSON text: non-finite numbers become null, other non-JSON values their repr."""
        if value is None:
            return None
        try:
            return dumps(value)
        except ValueError:
            self.note(field, "NaN/inf", "not JSON; those numbers stored as null")
            value = _finite(value)
        except TypeError:
            pass
        try:
            return dumps(value)
        except (TypeError, ValueError):
            self.note(field, value, "not JSON; values that are not stored as their repr")
            return json.dumps(_finite(value), separators=(",", ":"), sort_keys=True, default=repr)

    @property
    def invalid(self) -> str | None:
        """The ``invalid`` column: the problems as JSON, or None."""
        return dumps(self.problems) if self.problems else None
