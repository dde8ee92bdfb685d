"""Simulated outcomes: an outcomes table to try ``lab experiment report`` before real data exists.

Units ``1, 2, 3, ...`` (the ones inside the experiment's layer share) get their arm from
the experiment's real sticky assignment, the same hash the server and the report use,
so the arms match the weights as real traffic would and the sample-ratio check passes.
Each unit's value is drawn for its arm: Bernoulli(rate) for a proportion metric, Normal(
mean, std) for a mean metric; its first exposure (``at``) falls in the ``days`` after the
experiment started, in unit order. One seed, one table: the draws depend on nothing
else (not on the clock), so a rerun writes the same rows.

The table has the columns ``lab.experiments.outcomes`` reads: ``unit_id``, ``value``,
``at``. It carries no ``variant`` column, as real outcomes need none: the report derives
each unit's arm from the same hash.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from lab.atomic import atomic_path
from lab.errors import ConfigError, LabError
from lab.experiments.assignment import Assigner
from lab.experiments.model import BUCKETS, parse_named_numbers
from lab.experiments.outcomes import analysed_experiment, as_naive_utc

MAX_UNITS = 10_000_000
RATES_FORMAT = "write it as control=0.10,treatment=0.11 (a rate, or a mean with --mean, for every variant)"


def parse_rates(text: str) -> dict[str, float]:
    """``"control=0.10,treatment=0.11"`` as a dict, in order."""
    return parse_named_numbers(text, f"--rates {text!r}", RATES_FORMAT)


def _check(experiment, rates: Mapping[str, float], units: Any, kind: str, std: Any, days: Any) -> None:
    names = [v.name for v in experiment.variants]
    if sorted(rates) != sorted(names):
        missing = [n for n in names if n not in rates]
        extra = [n for n in rates if n not in names]
        said = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                       f"unknown {', '.join(extra)}" if extra else ""]))
        raise ConfigError(f"--rates must give every variant of {experiment.kind} {experiment.name!r} "
                          f"({', '.join(names)}), once: {said}")
    if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or not 1 <= units <= MAX_UNITS:
        raise ConfigError(f"--units must be a whole number from 1 to {MAX_UNITS:,}, got {units!r}")
    for name, rate in rates.items():
        if not math.isfinite(rate):
            raise ConfigError(f"--rates: {name}={rate} is not a finite number")
        if kind == "proportion" and not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--rates: {name}={rate:g} is not a rate between 0 and 1; {experiment.name!r} has a "
                              "proportion metric (for a mean metric, create it with --metric-kind mean)")
    if kind == "mean" and (isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0
                           or not math.isfinite(std)):
        raise ConfigError(f"--std must be a number above 0, got {std!r}")
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days < math.inf:
        raise ConfigError(f"--days must be a number of days above 0, got {days!r}")


@dataclass(frozen=True)
class SimulatedOutcomes:
    """The simulated table (``frame``) and the arm each of its rows was assigned."""

    frame: Any
    arms: list[str]
    variants: tuple[str, ...]

    def summary(self) -> list[dict]:
        """Per variant, in the experiment's order: its units and their mean value (None without units)."""
        values = self.frame["value"].cast(float).to_numpy()
        arms = np.array(self.arms, dtype=object)
        rows = []
        for name in self.variants:
            mine = values[arms == name]
            rows.append({"variant": name, "units": int(mine.size), "mean": float(mine.mean()) if mine.size else None})
        return rows


def simulate_outcomes(experiment, audit: list[dict], *, units: int, rates: Mapping[str, float], seed: int = 0,
                      mean: bool | None = None, std: float = 1.0, days: float = 14.0) -> SimulatedOutcomes:
    """``units`` simulated units of ``experiment`` (see the module docstring): a polars
    frame of ``unit_id`` (Int64), ``value`` (Int64 0/1, or Float64 for a mean metric) and
    ``at`` (Datetime, naive UTC), with each row's arm.

    ``audit`` is the experiment's audit log (``ExperimentStore.audit(name)``): a stopped
    experiment is simulated with the layout it ran with, and ``at`` starts when it
    started. ``mean`` asks for a mean metric; None takes the experiment's metric kind.
    Raises ConfigError (naming the fix) for rates that miss a variant or are not rates,
    a mean asked of a proportion experiment, and LabError for a draft.
    """
    kind = experiment.metric_kind
    if mean and kind == "proportion":
        raise ConfigError(f"{experiment.kind} {experiment.name!r} has a proportion metric, so its outcomes are 0/1; "
                          "drop --mean, or create the experiment with --metric-kind mean")
    _check(experiment, rates, units, kind, std, days)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"--seed must be a whole number >= 0, got {seed!r}")
    analysed, _, _ = analysed_experiment(experiment, audit)  # a draft has no assignment yet: LabError

    assigner = Assigner([analysed])
    lo, hi = analysed.layer_share
    limit = 20 * units * BUCKETS // max(1, hi - lo) + 10_000  # far beyond what the hash needs
    ids: list[int] = []
    arms: list[str] = []
    unit = 0
    while len(ids) < units:
        unit += 1
        if unit > limit:  # pragma: no cover - a uniform hash never gets here
            raise LabError(f"found only {len(ids)} of {units} units inside {analysed.name!r}'s layer share")
        arm = assigner.variant(analysed.name, unit)
        if arm is not None:
            ids.append(unit)
            arms.append(arm)

    rng = np.random.default_rng(int(seed))
    level = np.array([rates[a] for a in arms], dtype=float)
    if kind == "proportion":
        value = pl.Series("value", (rng.random(units) < level).astype(np.int64))
    else:
        value = pl.Series("value", rng.normal(level, float(std)))
    started = next((r["at"] for r in audit if r["action"] == "start"), None)
    start = np.datetime64(as_naive_utc(started), "us") if started else np.datetime64("2026-01-01T00:00:00", "us")
    offsets = np.sort(rng.uniform(0.0, float(days) * 86_400e6, units)).astype("timedelta64[us]")
    frame = pl.DataFrame([pl.Series("unit_id", ids, dtype=pl.Int64), value, pl.Series("at", start + offsets)])
    return SimulatedOutcomes(frame, arms, tuple(v.name for v in analysed.variants))


def write_outcomes(frame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to ``path`` (``.parquet`` or ``.csv``) atomically; returns the path."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise ConfigError(f"--out {target} must end in .parquet or .csv, "
                          "the tables `lab experiment report --outcomes` reads")
    if target.is_dir():
        raise ConfigError(f"--out {target} is a folder; give a file name such as outcomes.parquet")
    with atomic_path(target) as tmp:
        if suffix == ".csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)
        tmp.chmod(0o644)
    return target
