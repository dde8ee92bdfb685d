"""``DuckDBOfflineStore``: source tables and point-in-time retrieval in one DuckDB file.

Each call opens the file, does its work and closes it again, so several processes can
take turns (DuckDB lets one process write, or several read). Reads open it read-only.

How retrieval works (see ``lab.features.views`` for the rule). Every timestamp becomes
integer epoch microseconds (naive timestamps are taken as UTC), so every bound is exact.
For a windowed view, the source is grouped per (entity, event time) and turned into
running totals per entity (count and sum of each aggregated column, accumulated in
event-time order). The total over a window ``(lo, hi]`` is then
``running(hi) - running(lo)``, where ``running(b)`` is the last running total at an
event time ``<= b``: one DuckDB ASOF join per distinct bound. A latest-value view takes
each entity row's newest source row at ``t - label_delay`` (ties: the row written last),
then the ttl bound: a binary search over the source sorted once (``asof``), or, for keys
it does not take and sources past ``in_memory_join_cells``, one DuckDB ASOF join. Integer columns
sum exactly; float sums keep their whole 2^-20 steps exact (see ``sql._sum_parts``), so a
window's sum matches a direct sum to the last bit or two, and the running totals start at
the first event, so two calls on the same source table give identical values.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lab.errors import LabError, NotFound
from lab.features.digest import canonical_digest
from lab.features.stores import EVENT_TIME, OfflineStore, check_entity_rows
from lab.features.views import FeatureView
from plugins.duckdb_offline.asof import MAX_CELLS, SortedSource, epoch_us, latest_values
from plugins.duckdb_offline.sql import (NUMERIC, ROW, latest_sql, q, running_totals_sql, special_sql, ties_sql,
                                        window_sql)

_META = "_lab_sources"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _as_arrow(data, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_arrow"):  # a polars DataFrame
        return data.to_arrow()
    raise LabError(f"{what} must be a pyarrow.Table (or a polars DataFrame), got {type(data).__name__}")


class DuckDBOfflineStore(OfflineStore):
    """The built-in offline store: one DuckDB file at ``path`` (created on first write)."""

    lock_wait_s = 10.0  # how long to wait for another process that holds the file
    # Latest-value views whose source holds at most this many cells (rows x (features + 2))
    # are joined in memory by ``asof.latest_values``; larger ones, by DuckDB's ASOF join,
    # which can spill to disk. 0 sends every view to the SQL join.
    in_memory_join_cells = MAX_CELLS

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"DuckDBOfflineStore({str(self.path)!r})"

    # -- connections ---------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise NotFound(f"offline store {self.path} does not exist yet; write a source table first")
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=not write)
                break
            except duckdb.IOException as exc:
                # Another process holds the file lock: wait for it rather than fail at once.
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise LabError(f"cannot open the offline store {self.path}: {exc}") from None
                time.sleep(0.05)
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()

    @staticmethod
    def _tables(con) -> set[str]:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
        return {r[0] for r in rows}

    def _require_source(self, con, name: str) -> None:
        tables = self._tables(con)
        if name not in tables:
            known = sorted(t for t in tables if not t.startswith("_lab_"))
            raise NotFound(
                f"no source table {name!r} in the offline store {self.path}; "
                f"sources there: {', '.join(known) or 'none'}"
            )

    @staticmethod
    def _columns(con, name: str) -> dict[str, str]:
        rows = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [name],
        ).fetchall()
        return dict(rows)

    # -- source tables -------------------------------------------------------------

    def write_source(self, name: str, data: pa.Table) -> str:
        """Replace source ``name`` with ``data`` in one transaction; return its digest.

        The digest is ``lab.features.digest.canonical_digest`` of the table as stored
        (rows sorted by every column, so row order and chunking do not matter).
        """
        if not _NAME.match(name or "") or name.startswith("_lab_"):
            raise LabError(f"source name {name!r} must be letters, digits and _ (not starting with _lab_)")
        data = _as_arrow(data, "source data")
        if data.num_columns == 0:
            raise LabError(f"source {name!r}: the table has no columns")
        names = data.column_names
        if "" in names or len(set(names)) != len(names):
            # DuckDB would quietly rename them (A, A_1): refuse instead.
            raise LabError(f"source {name!r}: column names must be non-empty and distinct, got {names}")
        staging = f"_lab_new_{name}"
        with self._connect(write=True) as con:
            try:
                con.register("__lab_incoming", data)
            except duckdb.Error as exc:
                raise LabError(f"cannot write source {name!r}; the old table is kept: {exc}") from None
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {_META} (name VARCHAR PRIMARY KEY, digest VARCHAR, "
                    "rows BIGINT, written_at TIMESTAMP)"
                )
                con.execute(f"DROP TABLE IF EXISTS {q(staging)}")
                con.execute(f"CREATE TABLE {q(staging)} AS SELECT * FROM __lab_incoming")
                stored = con.sql(f"SELECT * FROM {q(staging)}").to_arrow_table()
                digest = canonical_digest(stored)
                con.execute(f"DROP TABLE IF EXISTS {q(name)}")
                con.execute(f"ALTER TABLE {q(staging)} RENAME TO {q(name)}")
                con.execute(
                    f"INSERT OR REPLACE INTO {_META} VALUES (?, ?, ?, now()::TIMESTAMP)",
                    [name, digest, stored.num_rows],
                )
                con.execute("COMMIT")
            except duckdb.Error as exc:
                con.execute("ROLLBACK")
                raise LabError(f"cannot write source {name!r}; the old table is kept: {exc}") from None
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("__lab_incoming")
        return digest

    def source_digest(self, name: str) -> str:
        """The digest recorded when ``name`` was written (computed if written by hand)."""
        with self._connect() as con:
            self._require_source(con, name)
            if _META in self._tables(con):
                row = con.execute(f"SELECT digest FROM {_META} WHERE name = ?", [name]).fetchall()
                if row:
                    return row[0][0]
            return canonical_digest(con.sql(f"SELECT * FROM {q(name)}").to_arrow_table())

    def sources(self) -> dict[str, int]:
        """Every source table with its row count."""
        if not self.path.exists():
            return {}
        with self._connect() as con:
            names = sorted(t for t in self._tables(con) if not t.startswith("_lab_"))
            return {n: con.execute(f"SELECT count(*) FROM {q(n)}").fetchall()[0][0] for n in names}

    def read_source(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of ``name`` in the order they were written (or only ``columns``)."""
        with self._connect() as con:
            self._require_source(con, name)
            have = self._columns(con, name)
            if columns is None:
                select = "*"
            else:
                missing = [c for c in columns if c not in have]
                if missing:
                    raise LabError(
                        f"source {name!r} has no column(s) {', '.join(missing)}; it has {', '.join(have)}"
                    )
                select = ", ".join(q(c) for c in columns)
            return con.sql(f"SELECT {select} FROM {q(name)}").to_arrow_table()

    def scan_source(self, name: str, *, time_column: str, start: dt.date, end: dt.date,
                    columns: Sequence[str] | None = None, batch_rows: int = 50_000) -> Iterator[pa.Table]:
        """The rows dated ``start`` .. ``end`` in time order, streamed from one query in
        tables of at most ``batch_rows`` rows (the filter and the sort run in DuckDB)."""
        if batch_rows < 1:
            raise LabError(f"batch_rows must be at least 1, got {batch_rows!r}")
        with self._connect() as con:
            self._require_source(con, name)
            have = self._columns(con, name)
            wanted = list(have) if columns is None else list(columns)
            missing = [c for c in dict.fromkeys([*wanted, time_column]) if c not in have]
            if missing:
                raise LabError(f"source {name!r} has no column(s) {', '.join(missing)}; it has {', '.join(have)}")
            select = ", ".join(q(c) for c in wanted)
            reader = con.sql(
                f"SELECT {select} FROM {q(name)} WHERE CAST({q(time_column)} AS DATE) BETWEEN ? AND ? "
                f"ORDER BY {q(time_column)}, rowid", params=[start, end]).to_arrow_reader(batch_rows)
            for batch in reader:
                if batch.num_rows:
                    yield pa.Table.from_batches([batch])

    # -- point-in-time retrieval ---------------------------------------------------

    def get_historical_features(
        self, entity_rows: pa.Table, views: Sequence[FeatureView], timestamp_column: str
    ) -> pa.Table:
        """Every view's features as of each entity row's time; see the module docstring."""
        entity_rows = _as_arrow(entity_rows, "entity_rows")
        views = list(views)
        check_entity_rows(entity_rows, views, timestamp_column)
        keys = sorted({v.entity for v in views})
        t_us = epoch_us(entity_rows.column(timestamp_column))
        t_max = int(t_us.max()) if len(t_us) else None  # the windows' running totals stop there
        out = entity_rows
        registered = False
        with self._connect() as con:
            types = {view.name: self._check_view(con, view) for view in views}

            def probes() -> None:  # the SQL joins' probe table, made when one needs it
                nonlocal registered
                if registered:
                    return
                table = pa.table([pa.array(np.arange(entity_rows.num_rows, dtype=np.int64))]
                                 + [entity_rows.column(k) for k in keys] + [pa.array(t_us)],
                                 names=[ROW, *keys, "t"])
                con.register("__lab_entity_rows", table)
                registered = True
                con.execute("CREATE TEMP TABLE __lab_probes AS SELECT * FROM __lab_entity_rows")

            try:
                for view in views:
                    try:
                        if view.aggregations:
                            probes()
                            special = _special_columns(con, view, types[view.name])
                            con.execute(running_totals_sql(view, t_max, types[view.name], special))
                            result = con.sql(window_sql(view, types[view.name], special)).to_arrow_table()
                        else:
                            result = latest_values(con, view, types[view.name],
                                                   entity_rows.column(view.entity), t_us,
                                                   self.in_memory_join_cells)
                            if result is None:
                                probes()
                                unique = self._unique_keys(con, view)
                                result = con.sql(latest_sql(view, unique)).to_arrow_table()
                    except duckdb.Error as exc:
                        raise LabError(f"feature view {view.name!r}: retrieval failed: {exc}") from None
                    if result.num_rows != entity_rows.num_rows:  # pragma: no cover - a bug, not input
                        raise LabError(f"feature view {view.name!r}: got {result.num_rows} rows for "
                                       f"{entity_rows.num_rows} entity rows")
                    for name in view.feature_names:
                        out = out.append_column(name, result.column(name))
            finally:
                if registered:
                    con.unregister("__lab_entity_rows")
        return out

    def latest_rows(self, view: FeatureView, as_of: dt.datetime) -> pa.Table | None:
        """Every entity's latest-value features and event time at ``as_of`` from one sorted
        read of the source (``asof.SortedSource``); None where that path does not apply."""
        if view.aggregations:
            return None
        with self._connect() as con:
            have = self._check_view(con, view)
            zone = {"TIMESTAMP": None, "TIMESTAMP WITH TIME ZONE": "UTC"}
            if have[view.timestamp] not in zone:
                return None
            try:
                source = SortedSource.read(con, view, have, self.in_memory_join_cells)
                if source is None:
                    return None
                k, ts = q(view.entity), q(view.timestamp)
                timeless = con.sql(f"SELECT DISTINCT {k} FROM {q(view.source)} WHERE {k} IS NOT NULL AND {ts} IS NULL"
                                   ).to_arrow_table().column(0)
            except duckdb.Error as exc:
                raise LabError(f"feature view {view.name!r}: materialization read failed: {exc}") from None
        keys = source.entities
        extra = pc.filter(timeless, pc.invert(pc.is_in(timeless, value_set=keys))) if len(timeless) else timeless
        codes = np.concatenate([np.arange(len(keys), dtype=np.int64), np.full(len(extra), -1, dtype=np.int64)])
        at = epoch_us(pa.array([as_of], pa.timestamp("us", "UTC") if as_of.tzinfo else pa.timestamp("us")))
        picks, hits, times = source.lookup(codes, np.full(len(codes), at[0], dtype=np.int64), event_times=True)
        kind = pa.timestamp("us", zone[have[view.timestamp]])
        event = pa.array(times, mask=~hits).view(kind) if len(codes) else pa.array([], kind)
        entity = pa.concat_arrays([keys, extra.combine_chunks().cast(keys.type)]) if len(extra) else keys
        return pa.table([entity, *source.gather(picks, hits), event],
                        names=[view.entity, *view.features, EVENT_TIME])

    def _unique_keys(self, con, view: FeatureView) -> bool:
        """True when no two rows of the view's source share an entity and event time, so
        the latest-value join needs no tie-break key. Remembered per file, source
        (recorded digest and row count), entity and time column: one GROUP BY per source
        version and process."""
        recorded = None
        if _META in self._tables(con):
            found = con.execute(f"SELECT digest, rows FROM {_META} WHERE name = ?", [view.source]).fetchall()
            recorded = found[0] if found else None
        if recorded is not None:
            rows = con.execute(f"SELECT count(*) FROM {q(view.source)}").fetchall()[0][0]
            key = (str(self.path.resolve()), view.source, *recorded, rows, view.entity, view.timestamp)
            if rows == recorded[1] and key in _UNIQUE:
                return _UNIQUE[key]
        unique = not con.execute(ties_sql(view)).fetchall()[0][0]
        if recorded is not None and rows == recorded[1]:
            if len(_UNIQUE) > 256:
                _UNIQUE.clear()
            _UNIQUE[key] = unique
        return unique

    def _check_view(self, con, view: FeatureView) -> dict[str, str]:
        """Check the view against its source; return the source's column types."""
        self._require_source(con, view.source)
        have = self._columns(con, view.source)
        needed = [view.entity, view.timestamp, *{a.column for a in view.aggregations}, *view.features]
        missing = [c for c in needed if c not in have]
        if missing:
            raise LabError(
                f"feature view {view.name!r} needs column(s) {', '.join(missing)} in source "
                f"{view.source!r}, which has {', '.join(have)}"
            )
        ts_type = have[view.timestamp]
        if not (ts_type.startswith("TIMESTAMP") or ts_type == "DATE"):
            raise LabError(
                f"feature view {view.name!r}: timestamp column {view.timestamp!r} is {ts_type}, "
                "not a TIMESTAMP; convert it before writing the source"
            )
        for agg in view.aggregations:
            col_type = have[agg.column]
            numeric = col_type in NUMERIC or col_type.startswith("DECIMAL")
            if agg.function != "count" and not numeric:
                raise LabError(
                    f"feature view {view.name!r}: {agg.function} of {agg.column!r} needs a numeric "
                    f"column, but it is {col_type}"
                )
        return have


_UNIQUE: dict[tuple, bool] = {}  # see DuckDBOfflineStore._unique_keys


def _special_columns(con, view: FeatureView, types: dict[str, str]) -> frozenset[str]:
    """The view's summed float columns that hold NaN, infinities or magnitudes >= 2^64
    (one scan of those columns; most sources have none, and pay nothing more)."""
    floats = sorted({a.column for a in view.aggregations if a.function != "count"
                     and (types[a.column] in ("FLOAT", "DOUBLE") or types[a.column].startswith("DECIMAL"))})
    if not floats:
        return frozenset()
    found = con.execute(f"SELECT {', '.join(special_sql(c) for c in floats)} FROM {q(view.source)}").fetchall()[0]
    return frozenset(c for c, hit in zip(floats, found) if hit)


