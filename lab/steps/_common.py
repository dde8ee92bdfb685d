"""What every step shares: the products' paths, the model spec, the split window."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from lab.errors import ConfigError, LabError
from lab.modelspec import ModelSpec, SplitWindow
from lab.pipeline.context import StageContext
from lab.plugins import model_spec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

TRAINSET = "data/trainset.parquet"
CANDIDATE = "data/candidate"
CANDIDATE_JSON = "data/candidate.json"
EVALUATION = "data/evaluation.json"
REGISTERED = "data/registered.json"
MATERIALIZED = "data/materialized.json"
SCORES = "data/scores.parquet"
DRIFT_JSON = "data/drift.json"
DRIFT_HTML = "data/drift.html"


def spec_of(ctx: "StageContext", model: str | None) -> ModelSpec:
    return model_spec(ctx.pm, ctx.config, model)


def views_of(ctx: "StageContext", spec: ModelSpec) -> list:
    """The spec's feature views, in its order; a name no plugin defines is an error."""
    missing = [name for name in spec.views if name not in ctx.views]
    if missing:
        raise ConfigError(f"model {spec.name!r} reads feature view(s) {', '.join(missing)}, which no loaded "
                          f"plugin defines; defined: {', '.join(sorted(ctx.views)) or 'none'}")
    return [ctx.views[name] for name in spec.views]


def window(train_start: Any, delta_train: int, delta_delay: int, delta_test: int) -> SplitWindow:
    if train_start in (None, ""):
        raise ConfigError("no training window: set [tool.lab.train] train_start (e.g. \"2024-03-01\")")
    try:
        start = train_start if isinstance(train_start, dt.date) else dt.date.fromisoformat(str(train_start))
    except ValueError:
        raise ConfigError(f"[tool.lab.train] train_start {train_start!r} is not a date like 2024-03-01") from None
    for name, value, least in (("delta_train", delta_train, 1), ("delta_delay", delta_delay, 0),
                               ("delta_test", delta_test, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"[tool.lab.train] {name} must be a whole number of days >= {least}, got {value!r}")
    return SplitWindow(start, delta_train, delta_delay, delta_test)


def time_split(frame: "pl.DataFrame", win: SplitWindow, time_column: str) -> tuple["pl.DataFrame", "pl.DataFrame"]:
    """Train on ``[train_start, +delta_train days)``, test on the ``delta_test`` days after the delay."""
    import polars as pl  # the steps load data libraries only in the step that runs

    day = pl.col(time_column).dt.date()
    train_end = win.train_start + dt.timedelta(days=win.delta_train)
    test_start = train_end + dt.timedelta(days=win.delta_delay)
    test_end = test_start + dt.timedelta(days=win.delta_test)
    train = frame.filter((day >= win.train_start) & (day < train_end))
    test = frame.filter((day >= test_start) & (day < test_end))
    for name, part, lo, hi in (("training", train, win.train_start, train_end), ("test", test, test_start, test_end)):
        if part.height == 0:
            raise LabError(f"no rows in the {name} days {lo} .. {hi - dt.timedelta(days=1)}; "
                           "move [tool.lab.train] train_start into the data's date range")
    return train, test


def split(spec: ModelSpec, frame: "pl.DataFrame", win: SplitWindow) -> tuple["pl.DataFrame", "pl.DataFrame"]:
    """The spec's own split, or the default split by event time."""
    if spec.split is not None:
        return spec.split(frame, win)
    return time_split(frame, win, spec.time_column)


def xy(frame: "pl.DataFrame", columns: list[str], label: str) -> tuple["np.ndarray", "np.ndarray"]:
    import numpy as np  # the steps load data libraries only in the step that runs

    x = frame.select(columns).to_numpy().astype(np.float32)
    y = frame[label].to_numpy().astype(np.float32)
    return x, y
