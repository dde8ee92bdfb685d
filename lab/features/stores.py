"""The store contracts. Backends implement these; ``lab.testing`` checks them.

Tables move between stores as ``pyarrow.Table`` (polars and pandas convert for free).
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from lab.errors import LabError
from lab.features.views import FeatureView

if TYPE_CHECKING:  # pyarrow types the contract; only a store's own code needs the library
    import pyarrow as pa


_CONSISTENT_READ_TRIES = 5


class OfflineStore(abc.ABC):
    """Historical source tables and point-in-time retrieval over them.

    Contract: a store owns one file or database; it is used from one process at a time
    for writing (readers may be several). Every method that writes is atomic: after a
    crash the store holds either the old or the new table, never a mix.
    """

    @abc.abstractmethod
    def write_source(self, name: str, data: pa.Table) -> str:
        """Replace source table ``name`` with ``data``. Returns its content digest."""

    @abc.abstractmethod
    def source_digest(self, name: str) -> str:
        """Content digest of a source table. Raises ``NotFound`` when it does not exist."""

    @abc.abstractmethod
    def read_source(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Read a whole source table (or some columns)."""

    @abc.abstractmethod
    def get_historical_features(
        self, entity_rows: pa.Table, views: Sequence[FeatureView], timestamp_column: str
    ) -> pa.Table:
        """Point-in-time join: ``entity_rows`` plus every view's features as of each row's time.

        ``entity_rows`` must hold each view's entity column and ``timestamp_column``.
        The result keeps the input's rows, order and columns, and appends
        ``view.feature_names`` for every view. A value is computed only from source rows
        visible at that row's time (see ``lab.features.views``); with none, it is the
        aggregation's ``fill`` (counts and sums: 0) or null.
        """

    def latest_rows(self, view: FeatureView, as_of: dt.datetime) -> pa.Table | None:
        """Optional, for speed: every distinct non-null entity of a latest-value view's
        source with its features at ``as_of`` and ``EVENT_TIME`` (the event time of the
        row read, as ``timestamp[us]``, UTC where the source column is zoned; null where
        none), in one pass. ``None`` (this default) leaves materialization to the generic
        path, which computes the same table from ``read_source`` and
        ``get_historical_features``; a store that answers must answer the same (the
        materialization tests compare them)."""
        return None

    def scan_source(self, name: str, *, time_column: str, start: dt.date, end: dt.date,
                    columns: Sequence[str] | None = None, batch_rows: int = 50_000) -> Iterator[pa.Table]:
        """The rows of ``name`` whose ``time_column`` falls on the days ``start`` through
        ``end`` (inclusive, wall clock), ordered by that column, as tables of at most
        ``batch_rows`` rows: batch scoring reads a window this way, so its memory is
        bounded by ``batch_rows``, not by the window.

        This default reads the whole table and slices it; a store that can filter and
        stream (a SQL ``WHERE`` and a cursor) should override it.
        """
        import pyarrow.compute as pc  # only for the default, which a store may override

        if batch_rows < 1:
            raise LabError(f"batch_rows must be at least 1, got {batch_rows!r}")
        wanted = None if columns is None else list(dict.fromkeys([*columns, time_column]))
        table = self.read_source(name, wanted)
        days = pc.cast(table.column(time_column), "date32")  # the wall-clock day in the column's zone
        keep = pc.and_(pc.greater_equal(days, start), pc.less_equal(days, end))
        table = table.filter(keep).sort_by(time_column)
        if columns is not None:
            table = table.select(list(columns))
        for offset in range(0, table.num_rows, batch_rows):
            yield table.slice(offset, batch_rows)

    def close(self) -> None:  # noqa: B027 - optional
        """Release the connection."""


EVENT_TIME = "__lab_event_time"
"""Optional column of the rows given to ``OnlineStore.write``: for each entity, the event
time of the newest source row behind its values (null when none is visible). The store
keeps it per row, with the time the row was written; ``read`` never returns it."""


@dataclass(frozen=True)
class RowTimes:
    """When one stored row's values were true and when they were written."""

    event_time: dt.datetime | None  # the newest source event behind the values (None: none)
    written_at: dt.datetime  # when the store wrote the row (aware, UTC)


@dataclass(frozen=True)
class ViewState:
    """What an online store holds of one view version."""

    version: str
    watermark: dt.datetime  # the time the rows were materialized as of
    rows: int
    newest_event_time: dt.datetime | None  # the newest ``EVENT_TIME`` among the rows held
    written_at: dt.datetime  # the last write (aware, UTC)


class OnlineStore(abc.ABC):
    """Latest feature values per entity key, for serving.

    Contract:

    - Rows are kept per view *version* (``FeatureView.version``): writing a changed
      definition leaves the earlier version's rows and watermark as they were, readable
      by a ``FeatureView`` of that definition. Reading a version never written, while
      another version of the same view was, raises ``LabError`` naming
      ``lab features materialize`` (its rows would silently be another definition's).
    - ``write`` changes a version's rows and watermark in one transaction, so a reader
      sees the old or the new materialization, never a mix; a crash leaves the old one.
    - Each row keeps its ``EVENT_TIME`` (if given) and the time it was written
      (``row_times``); ``state`` summarizes a version.
    - Readers in other processes may read while a writer writes.
    """

    @abc.abstractmethod
    def write(self, view: FeatureView, rows: pa.Table, watermark: dt.datetime, *, upsert: bool = False) -> int:
        """Store ``rows`` (the entity column, ``view.feature_names`` and optionally
        ``EVENT_TIME``) as of ``watermark``, with the watermark, in one transaction.

        ``upsert`` False replaces all the version's rows; True replaces only the rows of
        the keys given and keeps the others (incremental materialization). A key given
        twice is refused (``LabError``) and nothing changes. Returns the rows written.
        """

    @abc.abstractmethod
    def read(self, view: FeatureView, keys: Sequence) -> list[dict | None]:
        """The stored features for each key, in order; None for an unknown key."""

    @abc.abstractmethod
    def watermark(self, view: FeatureView) -> dt.datetime | None:
        """The time this view version was last materialized as of, or None if never."""

    @abc.abstractmethod
    def row_times(self, view: FeatureView, keys: Sequence) -> list[RowTimes | None]:
        """Each key's ``RowTimes``, in order; None for an unknown key. Raises like ``read``."""

    @abc.abstractmethod
    def state(self, view: FeatureView) -> ViewState | None:
        """The ``ViewState`` of this view version, or None if this version was never
        materialized (whether or not another version of the view was; never raises for that)."""

    def definitions(self, view_name: str) -> dict[str, dict]:
        """Optional: the ``FeatureView.definition()`` of every version of ``view_name`` the
        store holds, by version. Serving uses it to read the version a model was trained
        on (``pin_views``), and ``lab features materialize --all-versions`` to keep those
        fresh. This default knows none."""
        return {}

    def read_views_with_watermark(self, pairs: Sequence[tuple[FeatureView, Any]]) -> list[tuple[dict | None, dt.datetime | None]]:
        """``read_with_watermark(view, key)`` for each ``(view, key)`` pair, in order: what
        the model server asks once per request for all the views it reads. This default
        reads the pairs one by one; a store that can read them in one trip (one query,
        one round trip) should override it, with the same answers and errors."""
        return [self.read_with_watermark(view, key) for view, key in pairs]

    def read_with_watermark(self, view: FeatureView, key) -> tuple[dict | None, dt.datetime | None]:
        """``(row, watermark)`` for one entity ``key``: what ``read(view, [key])[0]`` and
        ``watermark(view)`` give, from one materialization. The model server calls this
        once per view per request, so it is the store's hot path.

        The row is never paired with another materialization's watermark. This default
        calls ``watermark``, ``read`` and ``watermark`` again, and reads again if the
        watermark moved in between (a write committed); a store that can read both in
        one snapshot (one query, one transaction) should override it with that. Errors
        are those of ``read`` (for example, a view redefined since it was materialized).
        """
        for _ in range(_CONSISTENT_READ_TRIES):
            before = self.watermark(view)
            row = self.read(view, [key])[0]
            after = self.watermark(view)
            if before == after:
                return row, after
        raise LabError(f"feature view {view.name!r} was rematerialized {_CONSISTENT_READ_TRIES} times while "
                       "one row was read; retry, and materialize less often than rows are read")

    def close(self) -> None:  # noqa: B027 - optional
        """Release the connection."""


def pin_views(views: Sequence[FeatureView], pins: dict | None, store: OnlineStore) -> list[FeatureView]:
    """The views a model version reads: where ``pins`` (its lineage's ``feature_views``,
    view name -> version) names another version of a view than its current definition,
    and the store holds that version's definition, that version (with the current view's
    freshness objective, description and tags); otherwise the current view. So a model
    trained before a view was redefined keeps reading the values it was trained on."""
    if not pins:
        return list(views)
    out = []
    for view in views:
        pinned = pins.get(view.name)
        definition = store.definitions(view.name).get(pinned) if pinned and pinned != view.version else None
        if definition is None:
            out.append(view)
            continue
        old = FeatureView.from_definition(definition, freshness=view.freshness, description=view.description,
                                          tags=view.tags)
        out.append(old if old.version == pinned else view)
    return out


def checked_rows(view: FeatureView, rows, watermark: dt.datetime):
    """``rows`` for ``OnlineStore.write`` of ``view`` as a ``pyarrow.Table`` (a polars
    frame is converted), checked the same way by every store: ``LabError`` naming the fix
    for a watermark that is not a datetime, a missing entity or feature column, a null
    key, or an ``EVENT_TIME`` column that does not hold timestamps."""
    import pyarrow as pa  # the stores' own dependency; the core does not load it

    if hasattr(rows, "to_arrow") and not isinstance(rows, pa.Table):
        rows = rows.to_arrow()
    if not isinstance(rows, pa.Table):
        raise LabError(f"rows must be a pyarrow.Table, got {type(rows).__name__}")
    if not isinstance(watermark, dt.datetime):
        raise LabError(f"watermark must be a datetime, got {watermark!r}")
    missing = [c for c in (view.entity, *view.feature_names) if c not in rows.column_names]
    if missing:
        raise LabError(f"rows for view {view.name!r} lack column(s) {', '.join(missing)}; "
                       f"they have {', '.join(rows.column_names)}")
    if rows.column(view.entity).null_count:
        raise LabError(f"rows for view {view.name!r} have a null {view.entity}; every row needs a key")
    if EVENT_TIME in rows.column_names and not pa.types.is_timestamp(rows.column(EVENT_TIME).type):
        raise LabError(f"column {EVENT_TIME} of view {view.name!r} must hold timestamps, "
                       f"not {rows.column(EVENT_TIME).type}")
    return rows


def normalize_key(key, key_type: str):
    """A request's entity key as an online store holds keys of ``key_type`` (``INTEGER``
    or ``TEXT``): ``"42"`` or ``numpy.int64(42)`` finds the integer key 42; None when it
    cannot be a key of that type (so: an unknown entity)."""
    if key is None:
        return None
    if key_type == "INTEGER":
        if isinstance(key, str):
            try:
                return int(key.strip())
            except ValueError:
                return None
        try:
            as_int = int(key)
        except (TypeError, ValueError, OverflowError):
            return None
        return as_int if as_int == key else None  # 3.5 is no integer key
    return key if isinstance(key, str) else str(key)


def check_entity_rows(entity_rows: "pa.Table", views: Sequence[FeatureView], ts: str) -> None:
    """What every offline store checks before a point-in-time join, each failure a
    ``LabError`` naming the column and the fix: ``ts`` is present, a timestamp or date, and
    never null; no view is given twice; each view's entity column is present; no feature
    would overwrite an entity-row column or another view's feature."""
    import pyarrow as pa

    have = entity_rows.column_names
    if ts not in have:
        raise LabError(f"entity rows have no timestamp column {ts!r}; they have {', '.join(have)}")
    ts_type = entity_rows.schema.field(ts).type
    if not (pa.types.is_timestamp(ts_type) or pa.types.is_date(ts_type)):
        raise LabError(f"entity rows' {ts!r} is {ts_type}, not a timestamp; convert it first")
    if entity_rows.column(ts).null_count:
        raise LabError(f"entity rows' {ts!r} has {entity_rows.column(ts).null_count} null(s); "
                       "every entity row needs a time")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise LabError(f"a feature view is given twice: {names}")
    seen = set(have)
    for view in views:
        if view.entity not in have:
            raise LabError(f"feature view {view.name!r} joins on {view.entity!r}, which the entity "
                           f"rows lack; they have {', '.join(have)}")
        clash = seen.intersection(view.feature_names)
        if clash:
            raise LabError(f"feature view {view.name!r} would overwrite column(s) {', '.join(sorted(clash))}; "
                           "drop them from the entity rows or rename the features")
        seen.update(view.feature_names)
