"""What a lab declares about a model it trains and serves: ``ModelSpec``.

A domain plugin (a demo lab, a lab made by ``lab init``) returns its specs from the
``lab_model_specs`` hook. Everything domain-specific that the platform's generic steps
(training set, train, evaluate, gate, register, batch score, drift) and the model server
need is read from here, so neither names a field of any particular lab:

- the task and label, and the offline source holding one row per labelled event;
- the feature views the model reads, by name, and its input columns in order;
- the request schema: fields with types and bounds, the event id, the event time, the
  entity keys looked up in the online store, and one valid example;
- the request-time transform, written once and applied to a frame of events (training,
  batch scoring: ``request_frame``) and to one request (serving: ``request_row``).

This module imports nothing heavy: polars appears in type hints only.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from lab.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

TASKS = ("classification", "regression")
FIELD_TYPES = ("int", "float", "str", "bool", "datetime")
KEY_TYPES = ("int", "str")
DEFAULT_METRIC = {"classification": "average_precision", "regression": "rmse"}


@dataclass(frozen=True)
class RequestField:
    """One field of a request body. ``ge``/``le`` bound numbers (inclusive);
    ``max_length`` bounds strings. Every field is required; unknown fields are refused."""

    name: str
    type: str
    description: str = ""
    ge: float | None = None
    le: float | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"request field name {self.name!r} must be a Python identifier")
        if self.type not in FIELD_TYPES:
            raise ConfigError(f"request field {self.name!r} has type {self.type!r}; use one of {', '.join(FIELD_TYPES)}")
        numeric = self.type in ("int", "float")
        if (self.ge is not None or self.le is not None) and not numeric:
            raise ConfigError(f"request field {self.name!r}: ge/le bound numbers, not {self.type}")
        for bound in (self.ge, self.le):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                      or not math.isfinite(bound)):
                raise ConfigError(f"request field {self.name!r}: bound {bound!r} must be a finite number")
        if self.ge is not None and self.le is not None and self.ge > self.le:
            raise ConfigError(f"request field {self.name!r}: ge {self.ge} is above le {self.le}")
        if self.max_length is not None and self.type != "str":
            raise ConfigError(f"request field {self.name!r}: max_length applies to str fields only")


@dataclass(frozen=True)
class RequestSchema:
    """The body of one scoring request.

    ``id`` names the field that identifies the event (logged with every prediction),
    ``timestamp`` the event time (request-time features and freshness read it), and
    ``entities`` the fields that are entity keys of feature views. ``example`` is one
    valid request: the server warms up with it and documents it.
    """

    fields: tuple[RequestField, ...]
    id: str
    timestamp: str
    entities: tuple[str, ...]
    example: Mapping[str, Any]
    title: str = "Request"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "entities", tuple(self.entities))
        by_name = {}
        for f in self.fields:
            if f.name in by_name:
                raise ConfigError(f"request field {f.name!r} is declared twice")
            by_name[f.name] = f
        for role, name, types in (("id", self.id, KEY_TYPES), ("timestamp", self.timestamp, ("datetime",)),
                                  *(("entity", e, KEY_TYPES) for e in self.entities)):
            if name not in by_name:
                raise ConfigError(f"the request's {role} field {name!r} is not one of its fields "
                                  f"({', '.join(by_name) or 'none'})")
            if by_name[name].type not in types:
                raise ConfigError(f"the request's {role} field {name!r} must be of type "
                                  f"{' or '.join(types)}, not {by_name[name].type}")
        missing = [n for n in by_name if n not in self.example]
        extra = [n for n in self.example if n not in by_name]
        if missing or extra:
            raise ConfigError(f"the request example must hold exactly the fields; missing {missing}, unknown {extra}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> RequestField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def example_request(self) -> dict[str, Any]:
        """The example with its timestamp as a ``datetime`` (as a decoded request holds it)."""
        out = dict(self.example)
        when = out[self.timestamp]
        if isinstance(when, str):
            out[self.timestamp] = dt.datetime.fromisoformat(when)
        return out


RequestFrame = Callable[["pl.DataFrame"], "pl.DataFrame"]
"""``frame(events) -> events`` plus the request-time feature columns (training, batch scoring)."""

RequestRow = Callable[[Mapping[str, Any], Mapping[str, "dict | None"]], Mapping[str, Any]]
"""``row(request, rows_by_view) -> {feature: value}``: the model inputs for one request, from
the online rows of each view the model reads (None for an entity the store does not know)."""

Split = Callable[["pl.DataFrame", "SplitWindow"], "tuple[pl.DataFrame, pl.DataFrame]"]
"""``split(frame, window) -> (train, test)``; the default splits by the event time."""

ExtraMetrics = Callable[["pl.DataFrame", Any], "dict[str, float]"]
"""``metrics(frame, scores) -> {name: value}``: metrics beyond the task's standard ones."""


@dataclass(frozen=True)
class SplitWindow:
    """Train on ``delta_train`` days from ``train_start``, skip ``delta_delay`` days (labels
    arrive late), test on the next ``delta_test`` days: ``[tool.lab.train]``."""

    train_start: dt.date
    delta_train: int
    delta_delay: int
    delta_test: int

    @property
    def end(self) -> dt.date:
        """The last day (inclusive) the window needs data for."""
        return self.train_start + dt.timedelta(days=self.delta_train + self.delta_delay + self.delta_test - 1)


STORE_OUTAGE = ("fallback_prediction", "feature_defaults")
"""``ModelSpec.on_store_outage``: the whole-prediction fallback, or a score on the views' defaults."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the platform needs to know about one model of a lab.

    ``features`` are the model's inputs in order: request-time columns made by
    ``request_frame``/``request_row`` and feature-view columns. ``source`` is the offline
    source whose rows are the labelled events (it holds ``request.id``,
    ``request.timestamp``, the entity keys and ``label``). ``metric`` is the gate's and the
    sweep's objective (default: average precision for classification, RMSE for
    regression). ``carry`` names source columns copied into training sets for ``split``
    and ``metrics``.

    ``fallback`` is the score the server answers, flagged ``fallback: true`` with the
    reason, when it cannot score a request in time or at all (a store or the model timed
    out, failed, or its circuit is open): a constant the lab declares, for example a
    classification model's base rate. None (the default) declares no fallback: such a
    request is answered 503. A fallback is never an implicit zero.

    ``on_store_outage`` says what a request gets when the online store fails, is slower
    than ``[tool.lab.serve] store_timeout_ms`` or its circuit is open:
    ``"fallback_prediction"`` (the default) the whole-prediction ``fallback`` above;
    ``"feature_defaults"`` the model's own score on each view's declared defaults (what
    the feature plugin gives an unknown entity, ``FeatureView.defaults``), flagged
    ``fallback_reason: "store_unavailable"`` with every view in ``defaults``.
    """

    name: str
    task: str
    label: str
    source: str
    features: tuple[str, ...]
    views: tuple[str, ...]
    request: RequestSchema
    request_frame: RequestFrame
    request_row: RequestRow
    flavor: str = "lightning_mlp"
    metric: str | None = None
    carry: tuple[str, ...] = ()
    split: Split | None = None
    metrics: ExtraMetrics | None = None
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    fallback: float | None = None
    on_store_outage: str = "fallback_prediction"

    def __post_init__(self) -> None:
        for name in ("features", "views", "carry"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a model spec needs a name, got {self.name!r}")
        if self.task not in TASKS:
            raise ConfigError(f"model {self.name!r}: task {self.task!r} is not one of {', '.join(TASKS)}")
        if not self.features:
            raise ConfigError(f"model {self.name!r} declares no features")
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"model {self.name!r} lists a feature twice")
        if self.metric is None:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.task])
        if self.fallback is not None:
            value = self.fallback
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"model {self.name!r}: fallback must be a finite number (the score answered, "
                                  f"flagged, when the model cannot score in time) or None for no fallback, "
                                  f"got {value!r}")
            object.__setattr__(self, "fallback", float(value))
        if self.on_store_outage not in STORE_OUTAGE:
            raise ConfigError(f"model {self.name!r}: on_store_outage must be one of {', '.join(STORE_OUTAGE)}, "
                              f"got {self.on_store_outage!r}")
        for fn in ("request_frame", "request_row"):
            if not callable(getattr(self, fn)):
                raise ConfigError(f"model {self.name!r}: {fn} must be callable")

    @property
    def id_column(self) -> str:
        return self.request.id

    @property
    def time_column(self) -> str:
        return self.request.timestamp
