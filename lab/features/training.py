"""Point-in-time training sets: one row per transaction, features as of its own time.

The feature views and the request-time half (``request_features``, ``FEATURE_COLUMNS``)
live in plugins. ``training_set`` takes the views as an argument; the request-time half
may be given too, and when it is not, it is found through the plugin manager: the loaded
plugin that exports both names (the built-in ``plugins.fraud_features``).
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


def request_half(pm=None) -> tuple[Callable[[pl.DataFrame], pl.DataFrame], list[str]]:
    """``(request_features, FEATURE_COLUMNS)`` from the first loaded plugin exporting both.

    ``pm`` defaults to a plugin manager with the built-ins and entry points.
    """
    if pm is None:
        from lab.plugins import make_plugin_manager

        pm = make_plugin_manager()
    for _name, plugin in pm.list_name_plugin():
        if hasattr(plugin, "request_features") and hasattr(plugin, "FEATURE_COLUMNS"):
            return plugin.request_features, list(plugin.FEATURE_COLUMNS)
    raise LabError("no loaded plugin exports request_features and FEATURE_COLUMNS; "
                   "load plugins.fraud_features (it is built in) or a plugin of your own")


def training_set(
    offline: OfflineStore,
    views: Sequence[FeatureView],
    start: dt.date,
    end: dt.date,
    *,
    request_features: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    feature_columns: Sequence[str] | None = None,
    pm=None,
    source: str = "transactions",
    id_column: str = "TRANSACTION_ID",
    time_column: str = "TX_DATETIME",
    label: str = "TX_FRAUD",
    carry: Sequence[str] = ("TX_TIME_DAYS",),
) -> tuple[pa.Table, str]:
    """The training rows for transactions dated ``start`` through ``end`` (inclusive days).

    Entity rows are the ``source`` rows whose ``time_column`` falls on those days (wall
    clock in the column's zone); each gets ``request_features`` and every view's features
    as of its own time. Columns: ``id_column``, ``time_column``, each view's entity,
    ``feature_columns``, ``label``, then the ``carry`` columns copied from the source
    (``TX_TIME_DAYS``: the evaluation protocol counts days with it); rows sorted by
    ``id_column``. Without ``request_features`` and ``feature_columns``, both come from
    ``request_half(pm)``. Returns the table and its ``lab.features.digest.table_digest``.
    """
    if request_features is None or feature_columns is None:
        found_features, found_columns = request_half(pm)
        request_features = request_features or found_features
        feature_columns = feature_columns if feature_columns is not None else found_columns
    if not (isinstance(start, dt.date) and isinstance(end, dt.date)):
        raise LabError(f"start and end must be dates, got {start!r} and {end!r}")
    if isinstance(start, dt.datetime) or isinstance(end, dt.datetime):
        start, end = _as_date(start), _as_date(end)
    if start > end:
        raise LabError(f"the training window starts ({start}) after it ends ({end}); swap them")
    entities = list(dict.fromkeys(v.entity for v in views))
    raw = pl.from_arrow(offline.read_source(source))
    missing = [c for c in (id_column, time_column, label, *entities, *carry) if c not in raw.columns]
    if missing:
        raise LabError(f"source {source!r} lacks column(s) {', '.join(missing)}; it has {', '.join(raw.columns)}")
    rows = raw.filter(pl.col(time_column).dt.date().is_between(start, end)).sort(id_column)
    if rows.height == 0:
        span = raw.select(pl.col(time_column).min().alias("lo"), pl.col(time_column).max().alias("hi")).row(0)
        raise LabError(f"no {source} between {start} and {end}; the source covers {span[0]} .. {span[1]}")
    rows = request_features(rows)
    with_features = offline.get_historical_features(rows.to_arrow(), views, time_column)
    columns = [id_column, time_column, *entities, *feature_columns, label, *carry]
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
