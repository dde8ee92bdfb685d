"""Materialization: compute entities' features as of one time and load them online.

Core code: it only calls the ``OfflineStore`` and ``OnlineStore`` interfaces, so any pair
of backends works. The online values are exactly the offline point-in-time values at
``as_of`` (the same ``get_historical_features`` call computes them), each row with the
event time of the newest source row behind it (``EVENT_TIME``).

Three ways to run it, per view (``materialize_views`` picks, ``lab features materialize``
calls it):

- **full** (``materialize``): every entity of the source, replacing the view version's
  rows. Used when the version was never materialized, when ``as_of`` is before its
  watermark, or when asked (``--full``).
- **incremental**: only the entities whose values can differ between the watermark ``W``
  and ``as_of``, upserted. With ``k = e + label_delay`` the time a source row becomes
  known, an entity's values change only when one of its rows enters visibility
  (``W < k <= as_of``), leaves a window of width ``w`` (``W - w < k <= as_of - w``) or
  passes the ttl (``W - ttl <= k < as_of - ttl``; both ends taken inclusive). Every other
  entity's stored values are already its values at ``as_of``, so the result equals a
  full materialization at ``as_of`` (tested). *Late arrivals* (rows loaded after ``W``
  with ``k <= W``) are caught when ``k > W - lookback``: the entering band starts at
  ``W - lookback``. Older late rows need a backfill.
- **backfill** (``backfill``): the entities with source rows whose event time falls in
  ``[start, end]``, recomputed as of the view's watermark (or a given ``as_of``) and
  upserted: repairs a window of late or corrected data.

Each view is written in one online transaction together with its watermark, so a crash
at any instant leaves every view at its old watermark with its old rows, or at the new
one with the new rows; the rerun then starts from whichever it finds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lab.errors import LabError
from lab.features.stores import EVENT_TIME, OfflineStore, OnlineStore
from lab.features.views import FeatureView

AS_OF_COLUMN = "__lab_as_of"


@dataclass(frozen=True)
class Materialized:
    """What one view's materialization did: ``mode`` is ``full``, ``incremental`` or
    ``backfill``; ``written`` the rows written; ``rows`` the rows the version holds now."""

    view: str
    mode: str
    written: int
    rows: int
    as_of: dt.datetime
    since: dt.datetime | None = None  # the watermark an incremental run started from


def _as_of_array(as_of: dt.datetime, n: int) -> pa.Array:
    """``as_of`` ``n`` times (naive stays naive; aware becomes UTC), without n Python objects."""
    kind = pa.timestamp("us") if as_of.tzinfo is None else pa.timestamp("us", tz="UTC")
    value = pa.scalar(as_of if as_of.tzinfo is None else as_of.astimezone(dt.timezone.utc), kind)
    return pa.array(np.full(n, value.value, dtype=np.int64)).view(kind)


def _scalar(when: dt.datetime, type_: pa.DataType) -> pa.Scalar:
    """``when`` as a scalar comparable with a timestamp column of ``type_`` (a naive time
    against an aware column is taken as UTC; an aware one against a naive column as its
    UTC wall clock)."""
    if getattr(type_, "tz", None) is None:
        if when.tzinfo is not None:
            when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return pa.scalar(when, pa.timestamp("us"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return pa.scalar(when, pa.timestamp("us", tz=type_.tz))


def _times(table: pa.Table, column: str) -> pa.ChunkedArray:
    times = table.column(column)
    if not pa.types.is_timestamp(times.type):
        raise LabError(f"the time column {column!r} must hold timestamps, not {times.type}")
    if times.type.unit != "us":
        times = pc.cast(times, pa.timestamp("us", tz=times.type.tz))
    return times


def _keys_table(view: FeatureView, keys: pa.Array, as_of: dt.datetime) -> pa.Table:
    keys = keys.drop_null()
    keys = keys.take(pc.sort_indices(keys))
    return pa.table({view.entity: keys, AS_OF_COLUMN: _as_of_array(as_of, len(keys))})


def entity_rows_at(offline: OfflineStore, view: FeatureView, as_of: dt.datetime) -> pa.Table:
    """Every distinct non-null entity of the view's source, each with time ``as_of``."""
    keys = pc.unique(offline.read_source(view.source, [view.entity]).column(0))
    return _keys_table(view, keys, as_of)


def _with_event_times(view: FeatureView, rows: pa.Table, source: pa.Table, as_of: dt.datetime) -> pa.Table:
    """``rows`` plus ``EVENT_TIME``: per entity the event time of the newest source row
    visible at ``as_of`` (known, within the ttl and, for a windowed view, the widest
    window), or null."""
    times = _times(source, view.timestamp)
    known = pc.add(times, pa.scalar(view.label_delay, pa.duration("us")))
    at = _scalar(as_of, times.type)
    visible = pc.and_(pc.less_equal(known, at),
                      pc.greater_equal(known, _scalar(as_of - view.ttl, times.type)))
    if view.aggregations:
        widest = max(a.window for a in view.aggregations)
        visible = pc.and_(visible, pc.greater(known, _scalar(as_of - widest, times.type)))
    seen = pa.table({"k": source.column(view.entity), "t": times}).filter(visible)
    newest = seen.group_by("k").aggregate([("t", "max")])
    # Look each row's key up in the newest times (rows keep their order).
    where = pc.index_in(rows.column(view.entity), value_set=newest.column("k"))
    event = pc.take(newest.column("t_max"), where) if newest.num_rows else pa.nulls(rows.num_rows, times.type)
    return rows.append_column(EVENT_TIME, event)


def _rows_for(offline: OfflineStore, view: FeatureView, keys: pa.Table, source: pa.Table,
              as_of: dt.datetime) -> pa.Table:
    rows = offline.get_historical_features(keys, [view], AS_OF_COLUMN).select([view.entity, *view.feature_names])
    return _with_event_times(view, rows, source, as_of)


def view_rows_at(offline: OfflineStore, view: FeatureView, as_of: dt.datetime) -> pa.Table:
    """The entity column, the view's features and ``EVENT_TIME`` for every entity, as of
    ``as_of``: the store's own ``latest_rows`` when it has it for this view, else computed
    here from the interface's reads."""
    if not view.aggregations:
        rows = offline.latest_rows(view, as_of)
        if rows is not None:
            return rows
    source = offline.read_source(view.source, [view.entity, view.timestamp])
    keys = _keys_table(view, pc.unique(source.column(view.entity)), as_of)
    return _rows_for(offline, view, keys, source, as_of)


def materialize(
    offline: OfflineStore, online: OnlineStore, views: Sequence[FeatureView], as_of: dt.datetime
) -> dict[str, int]:
    """Write each view's features as of ``as_of`` to the online store (a full
    materialization: every entity), with that watermark.

    Each view is written in one online transaction (old or new rows, never a mix).
    Returns the number of rows written per view name.
    """
    _check_time(as_of, "as_of")
    written = {}
    for view in views:
        written[view.name] = online.write(view, view_rows_at(offline, view, as_of), as_of)
    return written


def changed_entities(source: pa.Table, view: FeatureView, since: dt.datetime, as_of: dt.datetime,
                     lookback: dt.timedelta = dt.timedelta(0)) -> pa.Array:
    """The distinct entities of ``source`` whose values for ``view`` may differ between
    ``since`` and ``as_of`` (see the module's docstring), late rows within ``lookback``
    of ``since`` included."""
    times = _times(source, view.timestamp)
    known = pc.add(times, pa.scalar(view.label_delay, pa.duration("us")))

    def band(low: dt.datetime, high: dt.datetime, *, closed_low: bool = False):
        above = pc.greater_equal if closed_low else pc.greater
        return pc.and_(above(known, _scalar(low, times.type)), pc.less_equal(known, _scalar(high, times.type)))

    mask = band(since - lookback, as_of)  # rows entering visibility, late ones within lookback
    mask = pc.or_(mask, band(since - view.ttl, as_of - view.ttl, closed_low=True))  # passing the ttl
    for width in sorted({a.window for a in view.aggregations}):  # leaving a window
        mask = pc.or_(mask, band(since - width, as_of - width))
    return pc.unique(source.column(view.entity).filter(mask)).drop_null()


def materialize_view(offline: OfflineStore, online: OnlineStore, view: FeatureView, as_of: dt.datetime, *,
                     full: bool = False, lookback: dt.timedelta = dt.timedelta(0)) -> Materialized:
    """Bring one view version to ``as_of``: incrementally from its watermark when it has
    one at or before ``as_of`` (and not ``full``), else whole."""
    _check_time(as_of, "as_of")
    if lookback < dt.timedelta(0):
        raise LabError(f"lookback cannot be negative, got {lookback}")
    state = online.state(view)
    since = state.watermark if state is not None else None
    if full or since is None or _before(as_of, since):
        rows = view_rows_at(offline, view, as_of)
        written = online.write(view, rows, as_of)
        return Materialized(view.name, "full", written, written, as_of)
    source = offline.read_source(view.source, [view.entity, view.timestamp])
    keys = _keys_table(view, changed_entities(source, view, since, as_of, lookback), as_of)
    rows = _rows_for(offline, view, keys, source, as_of)
    written = online.write(view, rows, as_of, upsert=True)
    after = online.state(view)
    return Materialized(view.name, "incremental", written, after.rows if after else written, as_of, since)


def materialize_views(offline: OfflineStore, online: OnlineStore, views: Sequence[FeatureView],
                      as_of: dt.datetime, *, full: bool = False,
                      lookback: dt.timedelta = dt.timedelta(0)) -> list[Materialized]:
    """``materialize_view`` for each view, in order (each its own transaction)."""
    return [materialize_view(offline, online, view, as_of, full=full, lookback=lookback) for view in views]


def backfill(offline: OfflineStore, online: OnlineStore, view: FeatureView, start: dt.datetime,
             end: dt.datetime, as_of: dt.datetime | None = None) -> Materialized:
    """Recompute the entities with source rows whose event time is in ``[start, end]``,
    as of ``as_of`` (default: the view's watermark, which then stays), and upsert them."""
    _check_time(start, "start")
    _check_time(end, "end")
    if _before(end, start):
        raise LabError(f"the backfill window ends ({end}) before it starts ({start}); swap them")
    state = online.state(view)
    if state is None:
        raise LabError(f"view {view.name!r} (version {view.version}) was never materialized, so there is "
                       "nothing to backfill; run `lab features materialize` first")
    at = state.watermark if as_of is None else as_of
    source = offline.read_source(view.source, [view.entity, view.timestamp])
    times = _times(source, view.timestamp)
    inside = pc.and_(pc.greater_equal(times, _scalar(start, times.type)),
                     pc.less_equal(times, _scalar(end, times.type)))
    keys = _keys_table(view, pc.unique(source.column(view.entity).filter(inside)), at)
    rows = _rows_for(offline, view, keys, source, at)
    written = online.write(view, rows, at, upsert=True)
    after = online.state(view)
    return Materialized(view.name, "backfill", written, after.rows if after else written, at, state.watermark)


def _check_time(value, what: str) -> None:
    if not isinstance(value, dt.datetime):
        raise LabError(f"{what} must be a datetime, got {value!r}")


def _before(a: dt.datetime, b: dt.datetime) -> bool:
    if (a.tzinfo is None) != (b.tzinfo is None):  # compare wall clocks, as serving does
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return a < b


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
