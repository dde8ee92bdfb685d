"""Argument checks shared by the statistics modules; each error names the argument."""

from __future__ import annotations

import math

from lab.errors import ConfigError

ALTERNATIVES = ("two-sided", "larger", "smaller")


def check_probability(name: str, value: float) -> float:
    """A value strictly inside (0, 1): alpha, power, a baseline rate."""
    value = check_finite(name, value)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be in (0, 1), got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    """A finite value > 0: a standard deviation, an MDE, daily traffic, a ratio."""
    value = check_finite(name, value)
    if value <= 0.0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return value


def check_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return value


def check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"alternative must be one of {', '.join(ALTERNATIVES)}; got {alternative!r}")
    return alternative


def check_count(name: str, value: float, *, minimum: int = 1) -> int:
    """A whole number of units (a numpy integer is fine; 2.5 users is not)."""
    number = check_finite(name, value)
    if number != int(number) or number < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(number)
