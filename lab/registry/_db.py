"""Helpers for the registry's columns: times in the stored format, JSON text, numbers
and required values checked before anything is written. The connection, transactions
and migrations are ``lab.sqlite``'s."""

from __future__ import annotations

import datetime as dt
import math
import numbers
from typing import Any

from lab.errors import ConfigError, LabError
from lab.sqlite import dumps, loads, utc_now

__all__ = ["as_float", "dumps", "from_real", "loads", "require_dict", "require_text", "to_utc_iso", "utc_now"]


def to_utc_iso(when: str | dt.datetime | dt.date) -> str:
    """A moment in the stored format. A naive datetime is read as UTC; a bare date
    (a ``date`` or ``"YYYY-MM-DD"``) means the end of that day, so "what was live on
    day X" sees every change made that day."""
    if isinstance(when, str):
        text = when.strip()
        try:
            if len(text) == 10:
                when = dt.date.fromisoformat(text)
            else:
                when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise LabError(
                f"cannot read {when!r} as a date or time; use ISO 8601, e.g. "
                "2026-11-29 or 2026-11-29T14:00:00+00:00"
            ) from None
    if isinstance(when, dt.date) and not isinstance(when, dt.datetime):
        when = dt.datetime.combine(when, dt.time.max, tzinfo=dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def as_float(value: Any, what: str) -> float:
    """A metric value as float (numpy scalars too); bools and non-numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LabError(f"{what} must be a number, got {value!r}")
    return float(value)


def require_dict(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a dict, got {type(value).__name__}")
    return value


def require_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    return value


def from_real(value: float | None) -> float:
    # SQLite stores NaN as NULL; give it back as NaN.
    return math.nan if value is None else value
