"""``[tool.lab.fraud]``: the fraud lab's own settings (the simulator's parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from lab.config import build_section


@dataclass(frozen=True)
class FraudSettings:
    exact: bool = True  # reproduce the published dataset row for row
    n_customers: int = 5000
    n_terminals: int = 10000
    nb_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0  # a customer uses terminals closer than this
    seed: int = 0


def fraud_settings(config) -> FraudSettings:
    """The lab's ``[tool.lab.fraud]`` table with defaults; a misspelt key is a ConfigError."""
    return build_section(FraudSettings, config.section("fraud") or {}, "tool.lab.fraud")
