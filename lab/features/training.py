"""Point-in-time training sets: one row per labelled event, features as of its own time.

The platform knows no lab's columns: the caller names the source, its id, time and label
columns, the request-time transform and the model's input columns. ``lab.steps`` and
``lab features training-set`` read all of them from the model's ``ModelSpec``.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Sequence

import polars as pl
import pyarrow as pa

from lab.errors import LabError
from lab.features.digest import table_digest
from lab.features.stores import OfflineStore
from lab.features.views import FeatureView


def training_set(
    offline: OfflineStore,
    views: Sequence[FeatureView],
    start: dt.date,
    end: dt.date,
    *,
    request_features: Callable[[pl.DataFrame], pl.DataFrame],
    feature_columns: Sequence[str],
    source: str,
    id_column: str,
    time_column: str,
    label: str,
    carry: Sequence[str] = (),
) -> tuple[pa.Table, str]:
    """The training rows for the events dated ``start`` through ``end`` (inclusive days).

    Entity rows are the ``source`` rows whose ``time_column`` falls on those days (wall
    clock in the column's zone); each gets ``request_features`` (the request-time
    transform: a frame in, the frame plus its columns out) and every view's features as of
    its own time. Columns: ``id_column``, ``time_column``, each view's entity,
    ``feature_columns``, ``label``, then the ``carry`` columns copied from the source (a
    spec's split or metrics may need them); rows sorted by ``id_column``. Returns the
    table and its ``lab.features.digest.table_digest``.
    """
    if not callable(request_features):
        raise LabError(f"request_features must be callable (a frame in, a frame out), got {request_features!r}")
    feature_columns, carry = list(feature_columns), list(carry)
    if not (isinstance(start, dt.date) and isinstance(end, dt.date)):
        raise LabError(f"start and end must be dates, got {start!r} and {end!r}")
    if isinstance(start, dt.datetime) or isinstance(end, dt.datetime):
        start, end = _as_date(start), _as_date(end)
    if start > end:
        raise LabError(f"the training window starts ({start}) after it ends ({end}); swap them")
    entities = list(dict.fromkeys(v.entity for v in views))
    raw = pl.from_arrow(offline.read_source(source))
    missing = [c for c in dict.fromkeys((id_column, time_column, label, *entities, *carry)) if c not in raw.columns]
    if missing:
        raise LabError(f"source {source!r} lacks column(s) {', '.join(missing)}; it has {', '.join(raw.columns)}")
    rows = raw.filter(pl.col(time_column).dt.date().is_between(start, end)).sort(id_column)
    if rows.height == 0:
        span = raw.select(pl.col(time_column).min().alias("lo"), pl.col(time_column).max().alias("hi")).row(0)
        raise LabError(f"no {source} rows between {start} and {end}; the source covers {span[0]} .. {span[1]}")
    rows = request_features(rows)
    with_features = offline.get_historical_features(rows.to_arrow(), views, time_column)
    columns = [id_column, time_column, *entities, *feature_columns, label, *carry]
    absent = [c for c in columns if c not in with_features.column_names]
    if absent:
        raise LabError(
            f"the training set has no column(s) {', '.join(absent)}: neither the request-time transform "
            f"nor a view makes them. Views given: {', '.join(v.name for v in views) or 'none'}"
        )
    table = with_features.select(columns)
    return table, table_digest(table)


def _as_date(value) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value


def model_training_set(offline: OfflineStore, views: Sequence[FeatureView], spec, start: dt.date,
                       end: dt.date) -> tuple[pa.Table, str]:
    """``training_set`` for a ``lab.modelspec.ModelSpec``: its source, columns, label, carry
    and request-time transform (the features step, batch scoring and the CLI share it)."""
    return training_set(offline, views, start, end, request_features=spec.request_frame,
                        feature_columns=list(spec.features), source=spec.source, id_column=spec.id_column,
                        time_column=spec.time_column, label=spec.label, carry=list(spec.carry))
