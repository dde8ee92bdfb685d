"""Materialization: compute every entity's features as of one time and load them online.

Core code: it only calls the ``OfflineStore`` and ``OnlineStore`` interfaces, so any pair
of backends works. The online values are exactly the offline point-in-time values at
``as_of`` (the same ``get_historical_features`` call computes them).
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from lab.errors import LabError
from lab.features.stores import OfflineStore, OnlineStore
from lab.features.views import FeatureView

AS_OF_COLUMN = "__lab_as_of"


def _as_of_array(as_of: dt.datetime, n: int) -> pa.Array:
    if as_of.tzinfo is None:
        return pa.array([as_of] * n, type=pa.timestamp("us"))
    return pa.array([as_of.astimezone(dt.timezone.utc)] * n, type=pa.timestamp("us", tz="UTC"))


def entity_rows_at(offline: OfflineStore, view: FeatureView, as_of: dt.datetime) -> pa.Table:
    """Every distinct non-null entity of the view's source, each with time ``as_of``."""
    keys = pc.unique(offline.read_source(view.source, [view.entity]).column(0)).drop_null()
    keys = keys.take(pc.sort_indices(keys))
    return pa.table({view.entity: keys, AS_OF_COLUMN: _as_of_array(as_of, len(keys))})


def view_rows_at(offline: OfflineStore, view: FeatureView, as_of: dt.datetime) -> pa.Table:
    """The entity column and the view's features for every entity, as of ``as_of``."""
    rows = offline.get_historical_features(entity_rows_at(offline, view, as_of), [view], AS_OF_COLUMN)
    return rows.select([view.entity, *view.feature_names])


def materialize(
    offline: OfflineStore, online: OnlineStore, views: Sequence[FeatureView], as_of: dt.datetime
) -> dict[str, int]:
    """Write each view's features as of ``as_of`` to the online store, with that watermark.

    Each view is written in one online transaction (old or new rows, never a mix).
    Returns the number of rows written per view name.
    """
    if not isinstance(as_of, dt.datetime):
        raise LabError(f"as_of must be a datetime, got {as_of!r}")
    written = {}
    for view in views:
        written[view.name] = online.write(view, view_rows_at(offline, view, as_of), as_of)
    return written


def latest_event_time(offline: OfflineStore, views: Sequence[FeatureView]) -> dt.datetime:
    """The latest event time in the views' sources: the default ``as_of`` for a replay."""
    latest = None
    for view in views:
        column = offline.read_source(view.source, [view.timestamp]).column(0)
        value = pc.max(column).as_py()
        if value is not None and (latest is None or value > latest):
            latest = value
    if latest is None:
        raise LabError("the views' sources hold no events; load the transactions first")
    return latest
