"""Point-in-time training sets: one row per transaction, features as of its own time.

The feature views and the request-time half come from plugins, so ``training_set``
takes them as arguments (views, ``request_features``, ``feature_columns``) and stays
free of any demo specifics beyond its column-name defaults. The CLI finds them through
the plugin manager (``lab.features.commands``).
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
    source: str = "transactions",
    id_column: str = "TRANSACTION_ID",
    time_column: str = "TX_DATETIME",
    label: str = "TX_FRAUD",
) -> tuple[pa.Table, str]:
    """The training rows for transactions dated ``start`` through ``end`` (inclusive days).

    Entity rows are the ``source`` rows whose ``time_column`` falls on those days (wall
    clock in the column's zone); each gets ``request_features`` and every view's features
    as of its own time. Columns: ``id_column``, ``time_column``, each view's entity,
    ``feature_columns``, ``label``; rows sorted by ``id_column``. Returns the table and
    its ``lab.features.digest.table_digest``.
    """
    if not (isinstance(start, dt.date) and isinstance(end, dt.date)):
        raise LabError(f"start and end must be dates, got {start!r} and {end!r}")
    if isinstance(start, dt.datetime) or isinstance(end, dt.datetime):
        start, end = _as_date(start), _as_date(end)
    if start > end:
        raise LabError(f"the training window starts ({start}) after it ends ({end}); swap them")
    entities = list(dict.fromkeys(v.entity for v in views))
    raw = pl.from_arrow(offline.read_source(source))
    missing = [c for c in (id_column, time_column, label, *entities) if c not in raw.columns]
    if missing:
        raise LabError(f"source {source!r} lacks column(s) {', '.join(missing)}; it has {', '.join(raw.columns)}")
    rows = raw.filter(pl.col(time_column).dt.date().is_between(start, end)).sort(id_column)
    if rows.height == 0:
        span = raw.select(pl.col(time_column).min().alias("lo"), pl.col(time_column).max().alias("hi")).row(0)
        raise LabError(f"no {source} between {start} and {end}; the source covers {span[0]} .. {span[1]}")
    rows = request_features(rows)
    with_features = offline.get_historical_features(rows.to_arrow(), views, time_column)
    columns = [id_column, time_column, *entities, *feature_columns, label]
    absent = [c for c in columns if c not in with_features.column_names]
    if absent:
        raise LabError(
            f"the training set has no column(s) {', '.join(absent)}: is the plugin defining them loaded? "
            f"Views given: {', '.join(v.name for v in views) or 'none'}"
        )
    table = with_features.select(columns)
    return table, table_digest(table)


def _as_date(value) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value
