"""Feature views: one definition that feeds both the offline and the online path.

A ``FeatureView`` names an entity (the join key), a source table with an event-time
column, and either windowed aggregations or plain latest-value features.

Visibility rule (point-in-time correctness), for a query at time ``t``:
  a source row with event time ``e`` is visible when ``e + label_delay <= t`` and
  ``t - (e + label_delay) <= ttl`` (both ends inclusive, as Feast does).
A windowed aggregation of width ``w`` at time ``t`` covers the visible rows with
``t - label_delay - w < e <= t - label_delay``: the window ``(t-d-w, t-d]``.

Freshness objective (``freshness``, optional): the largest acceptable age of a view's
values when they are served, the age being the request's time minus the view's
watermark (the time it was materialized as of). A request that finds them older (or
never materialized) is a *breach*: counted, logged in the ledger with its age, and
announced by an event. The objective does not change what is computed, so it is not
part of the definition's version.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field

from lab.errors import ConfigError

AGG_FUNCTIONS = ("count", "sum", "mean")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"{kind} name {name!r} must be a SQL identifier (letters, digits, _)")


@dataclass(frozen=True)
class Aggregation:
    """``function`` of ``column`` over a trailing ``window``, output as ``name``.

    ``fill`` replaces a value that has no rows in its window (a mean over nothing).
    """

    name: str
    column: str
    function: str
    window: dt.timedelta
    fill: float | None = None

    def __post_init__(self) -> None:
        _check_name("aggregation", self.name)
        if self.function not in AGG_FUNCTIONS:
            raise ConfigError(
                f"aggregation {self.name!r}: function {self.function!r} is not one of {AGG_FUNCTIONS}"
            )
        if self.window <= dt.timedelta(0):
            raise ConfigError(f"aggregation {self.name!r}: window must be positive")


@dataclass(frozen=True)
class FeatureView:
    """A named group of features about one entity, computed from one source table.

    Exactly one of ``aggregations`` (windowed) and ``features`` (latest value of a
    column, as of the query time) is non-empty.
    """

    name: str
    entity: str
    source: str
    timestamp: str
    aggregations: tuple[Aggregation, ...] = ()
    features: tuple[str, ...] = ()
    ttl: dt.timedelta = dt.timedelta(days=30)
    label_delay: dt.timedelta = dt.timedelta(0)
    description: str = ""
    tags: dict = field(default_factory=dict, hash=False, compare=False)
    freshness: dt.timedelta | None = None  # the freshness objective: max age of served values

    @property
    def freshness_s(self) -> float | None:
        """The freshness objective in seconds, or None when the view declares none."""
        return None if self.freshness is None else self.freshness.total_seconds()

    def __post_init__(self) -> None:
        for kind, value in (("feature view", self.name), ("entity", self.entity),
                            ("source", self.source), ("timestamp", self.timestamp)):
            _check_name(kind, value)
        if bool(self.aggregations) == bool(self.features):
            raise ConfigError(
                f"feature view {self.name!r}: give either aggregations or features, not both or neither"
            )
        for f in self.features:
            _check_name("feature", f)
        if self.ttl <= dt.timedelta(0):
            raise ConfigError(f"feature view {self.name!r}: ttl must be positive")
        if self.label_delay < dt.timedelta(0):
            raise ConfigError(f"feature view {self.name!r}: label_delay cannot be negative")
        if self.freshness is not None and (not isinstance(self.freshness, dt.timedelta)
                                           or self.freshness <= dt.timedelta(0)):
            raise ConfigError(f"feature view {self.name!r}: freshness must be a positive timedelta "
                              f"(the largest acceptable age of served values), or None; got {self.freshness!r}")
        names = self.feature_names
        if len(set(names)) != len(names):
            raise ConfigError(f"feature view {self.name!r}: duplicate output names {names}")

    @property
    def feature_names(self) -> list[str]:
        if self.aggregations:
            return [a.name for a in self.aggregations]
        return list(self.features)

    @property
    def defaults(self) -> dict:
        """What the point-in-time join gives an entity with no visible rows: counts 0,
        sums 0.0, a mean its ``fill`` (or None), a latest-value feature None."""
        if not self.aggregations:
            return {f: None for f in self.features}
        empty = {"count": lambda a: 0, "sum": lambda a: 0.0, "mean": lambda a: a.fill}
        return {a.name: empty[a.function](a) for a in self.aggregations}

    def definition(self) -> dict:
        """A JSON-able description; its digest is the view's version. (The freshness
        objective is left out: it changes no value, so no version.)"""
        return {
            "name": self.name,
            "entity": self.entity,
            "source": self.source,
            "timestamp": self.timestamp,
            "aggregations": [
                {"name": a.name, "column": a.column, "function": a.function,
                 "window_s": a.window.total_seconds(), "fill": a.fill}
                for a in self.aggregations
            ],
            "features": list(self.features),
            "ttl_s": self.ttl.total_seconds(),
            "label_delay_s": self.label_delay.total_seconds(),
        }

    @classmethod
    def from_definition(cls, definition: dict, **extra) -> "FeatureView":
        """The view ``definition()`` describes (same version); ``extra`` sets what it
        leaves out (``freshness``, ``description``, ``tags``)."""
        try:
            aggregations = tuple(
                Aggregation(a["name"], a["column"], a["function"], dt.timedelta(seconds=a["window_s"]), a["fill"])
                for a in definition["aggregations"])
            return cls(name=definition["name"], entity=definition["entity"], source=definition["source"],
                       timestamp=definition["timestamp"], aggregations=aggregations,
                       features=tuple(definition["features"]), ttl=dt.timedelta(seconds=definition["ttl_s"]),
                       label_delay=dt.timedelta(seconds=definition["label_delay_s"]), **extra)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a feature view definition (missing or bad {exc}): {definition!r}") from None

    @functools.cached_property
    def version(self) -> str:
        """Content digest of the definition: changes whenever the definition does.

        Computed once per view object and kept: every field it covers is immutable (the
        view is frozen, its aggregations too), and a changed definition is a new object
        (``dataclasses.replace``). Online reads compare it on every request, and hashing
        the definition each time cost about a tenth of a prediction.
        """
        blob = json.dumps(self.definition(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
