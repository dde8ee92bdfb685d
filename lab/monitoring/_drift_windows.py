"""The two usual current windows of a drift check, as polars frames of a model's inputs:
``ledger_window`` (live traffic, as the server logged it) and ``offline_window`` (the
spec's features over the offline store, as a training set computes them)."""

from __future__ import annotations

import datetime as dt
from typing import Sequence

import polars as pl

from lab.errors import LabError


def _day(value, what: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise LabError(f"{what} {value!r} is not a date; write it as YYYY-MM-DD") from None


def ledger_window(config, spec, start, end, *, version: int | None = None) -> pl.DataFrame:
    """Live traffic of ``spec``'s model from the prediction ledger (``config.ledger_path``):
    one row per logged prediction whose request time falls on the days ``start`` through
    ``end`` (inclusive, the request's wall clock; None: unbounded), with the model inputs
    the server used (``spec.features``, Float64) and ``score``. Fallback answers are left
    out. ``version``: only that model version's predictions. No prediction in the window
    is a ``LabError`` saying how to get some."""
    from lab.monitoring.skew import logged_predictions, select_days
    from lab.serving.ledger import read_predictions

    first, last = _day(start, "start"), _day(end, "end")
    if first and last and first > last:
        raise LabError(f"start {first} is after end {last}; swap them")
    rows = read_predictions(config.ledger_path, model_name=spec.name, model_version=version)
    logged = select_days(logged_predictions(spec, rows), spec, first, last)
    if logged.height == 0:
        which = f"{spec.name!r}" + (f" v{version}" if version is not None else "")
        raise LabError(f"the ledger {config.ledger_path} holds no prediction of model {which} with a request time "
                       f"on {first or '...'} .. {last or '...'}; serve it (`lab serve`) or widen the days")
    return pl.concat([logged.features, logged.meta.select("score")], how="horizontal")


def offline_window(offline_store, spec, start, end, *, views: Sequence | None = None,
                   batch_rows: int = 200_000) -> pl.DataFrame:
    """``spec``'s features for the events of its source dated ``start`` through ``end``
    (inclusive days, wall clock), as a training set computes them: the request-time
    transform, then every view's point-in-time values as of each event's own time.
    Columns: ``spec.features`` (Float64), one row per event in time order. ``views``: the
    spec's feature views (``StageContext.views``), needed when the spec reads any; the
    source is scanned ``batch_rows`` at a time."""
    first, last = _day(start, "start"), _day(end, "end")
    if first is None or last is None:
        raise LabError("offline_window needs both start and end days (YYYY-MM-DD)")
    if first > last:
        raise LabError(f"start {first} is after end {last}; swap them")
    views = list(views or [])
    named = {v.name for v in views}
    missing = [v for v in spec.views if v not in named]
    if missing:
        raise LabError(f"model {spec.name!r} reads feature view(s) {', '.join(missing)}: pass them as views=[...] "
                       f"(a stage's ctx.views, or the lab_feature_views hook's)")
    chosen = [v for v in views if v.name in set(spec.views)]
    parts = []
    for batch in offline_store.scan_source(spec.source, time_column=spec.time_column, start=first, end=last,
                                           batch_rows=batch_rows):
        if batch.num_rows == 0:
            continue
        frame = spec.request_frame(pl.from_arrow(batch))
        joined = (pl.from_arrow(offline_store.get_historical_features(frame.to_arrow(), chosen, spec.time_column))
                  if chosen else frame)
        absent = [n for n in spec.features if n not in joined.columns]
        if absent:
            raise LabError(f"the offline window makes no column(s) {', '.join(absent)}: neither the request-time "
                           f"transform nor a view ({', '.join(v.name for v in chosen) or 'none'}) makes them")
        parts.append(joined.select(pl.col(n).cast(pl.Float64, strict=False) for n in spec.features))
    if not parts:
        raise LabError(f"no {spec.source!r} events dated {first} .. {last} in the offline store; widen the days")
    return pl.concat(parts)

