"""``DuckDBOfflineStore``: source tables and point-in-time retrieval in one DuckDB file.

Each call opens the file, does its work and closes it again, so several processes can
take turns (DuckDB lets one process write, or several read). Reads open it read-only.

How retrieval works (see ``lab.features.views`` for the rule). Every timestamp becomes
integer epoch microseconds (naive timestamps are taken as UTC), so every bound is exact.
For a windowed view, the source is grouped per (entity, event time) and turned into
running totals per entity (count and sum of each aggregated column, accumulated in
event-time order). The total over a window ``(lo, hi]`` is then
``running(hi) - running(lo)``, where ``running(b)`` is the last running total at an
event time ``<= b``: one DuckDB ASOF join per distinct bound. A latest-value view is one
ASOF join at ``t - label_delay``, then the ttl bound on the matched row. Integer columns
sum exactly; float sums keep their whole 2^-20 steps exact (see ``_sum_parts``), so a
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

from lab.errors import LabError, NotFound
from lab.features.digest import canonical_digest
from lab.features.stores import OfflineStore
from lab.features.views import FeatureView

_META = "_lab_sources"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ROW = "__lab_row"
_US = dt.timedelta(microseconds=1)


def _q(name: str) -> str:
    """Quote an identifier (names are checked elsewhere; this guards the odd quote)."""
    return '"' + name.replace('"', '""') + '"'


def _us(delta: dt.timedelta) -> int:
    return delta // _US


def _as_arrow(data, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_arrow"):  # a polars DataFrame
        return data.to_arrow()
    raise LabError(f"{what} must be a pyarrow.Table (or a polars DataFrame), got {type(data).__name__}")


class DuckDBOfflineStore(OfflineStore):
    """The built-in offline store: one DuckDB file at ``path`` (created on first write)."""

    lock_wait_s = 10.0  # how long to wait for another process that holds the file

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
                con.execute(f"DROP TABLE IF EXISTS {_q(staging)}")
                con.execute(f"CREATE TABLE {_q(staging)} AS SELECT * FROM __lab_incoming")
                stored = con.sql(f"SELECT * FROM {_q(staging)}").to_arrow_table()
                digest = canonical_digest(stored)
                con.execute(f"DROP TABLE IF EXISTS {_q(name)}")
                con.execute(f"ALTER TABLE {_q(staging)} RENAME TO {_q(name)}")
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
            return canonical_digest(con.sql(f"SELECT * FROM {_q(name)}").to_arrow_table())

    def sources(self) -> dict[str, int]:
        """Every source table with its row count."""
        if not self.path.exists():
            return {}
        with self._connect() as con:
            names = sorted(t for t in self._tables(con) if not t.startswith("_lab_"))
            return {n: con.execute(f"SELECT count(*) FROM {_q(n)}").fetchall()[0][0] for n in names}

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
                select = ", ".join(_q(c) for c in columns)
            return con.sql(f"SELECT {select} FROM {_q(name)}").to_arrow_table()

    # -- point-in-time retrieval ---------------------------------------------------

    def get_historical_features(
        self, entity_rows: pa.Table, views: Sequence[FeatureView], timestamp_column: str
    ) -> pa.Table:
        """Every view's features as of each entity row's time; see the module docstring."""
        entity_rows = _as_arrow(entity_rows, "entity_rows")
        views = list(views)
        _check_entity_rows(entity_rows, views, timestamp_column)
        keys = sorted({v.entity for v in views})
        probes = pa.table(
            [pa.array(np.arange(entity_rows.num_rows, dtype=np.int64))]
            + [entity_rows.column(k) for k in keys]
            + [entity_rows.column(timestamp_column)],
            names=[_ROW, *keys, "__lab_t"],
        )
        ts_type = entity_rows.schema.field(timestamp_column).type
        t_expr = "epoch_us(CAST(__lab_t AS TIMESTAMP))" if pa.types.is_date(ts_type) else "epoch_us(__lab_t)"
        out = entity_rows
        with self._connect() as con:
            types = {view.name: self._check_view(con, view) for view in views}
            con.register("__lab_entity_rows", probes)
            try:
                con.execute(
                    f"CREATE TEMP TABLE __lab_probes AS SELECT {_ROW}, "
                    + "".join(f"{_q(k)}, " for k in keys)
                    + f"{t_expr} AS t FROM __lab_entity_rows"
                )
                t_max = con.execute("SELECT max(t) FROM __lab_probes").fetchall()[0][0]
                for view in views:
                    try:
                        if view.aggregations:
                            con.execute(_running_totals_sql(view, t_max, types[view.name]))
                            result = con.sql(_window_sql(view, types[view.name])).to_arrow_table()
                        else:
                            con.execute(_latest_rows_sql(view, t_max))
                            result = con.sql(_latest_sql(view)).to_arrow_table()
                    except duckdb.Error as exc:
                        raise LabError(f"feature view {view.name!r}: retrieval failed: {exc}") from None
                    if result.num_rows != entity_rows.num_rows:  # pragma: no cover - a bug, not input
                        raise LabError(f"feature view {view.name!r}: got {result.num_rows} rows for "
                                       f"{entity_rows.num_rows} entity rows")
                    for name in view.feature_names:
                        out = out.append_column(name, result.column(name))
            finally:
                con.unregister("__lab_entity_rows")
        return out

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
            numeric = col_type in _NUMERIC or col_type.startswith("DECIMAL")
            if agg.function != "count" and not numeric:
                raise LabError(
                    f"feature view {view.name!r}: {agg.function} of {agg.column!r} needs a numeric "
                    f"column, but it is {col_type}"
                )
        return have


_NUMERIC = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "BOOLEAN"}


def _check_entity_rows(entity_rows: pa.Table, views: list[FeatureView], ts: str) -> None:
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


def _lower_offset_us(view: FeatureView, window: dt.timedelta) -> int:
    """How far below ``t - delay`` a window starts (exclusive), with the ttl bound applied.

    A window wider than the ttl is cut at the ttl, inclusive: ``e >= t-d-ttl`` is
    ``e > t-d-ttl-1µs``.
    """
    return _us(window) if window <= view.ttl else _us(view.ttl) + 1


_GRID = 1 << 20  # float sums: a whole number of 2^-20 steps (exact) plus a small remainder


def _sum_parts(column: str, col_type: str) -> dict[str, str]:
    """How one event's values enter the running totals, by part name.

    Integers and booleans sum exactly as HUGEINT (``s``). A float ``x`` is split into
    ``floor(x * 2^20)`` (``h``, summed exactly as HUGEINT) and the remainder below 2^-20
    (``l``, summed as DOUBLE): the difference of two running totals is then as accurate
    as a direct sum, where a plain running DOUBLE sum would carry the rounding error of
    the whole history into every window. A column only counted (a string) has no parts.
    """
    c = _q(column)
    if col_type == "BOOLEAN":
        return {"s": f"sum({c}::INTEGER)"}
    if col_type in _NUMERIC and col_type not in ("FLOAT", "DOUBLE"):
        return {"s": f"sum({c})"}
    if col_type in ("FLOAT", "DOUBLE") or col_type.startswith("DECIMAL"):
        grid = f"floor({c}::DOUBLE * {_GRID}.0)"
        return {"h": f"sum(CAST({grid} AS HUGEINT))", "l": f"sum({c}::DOUBLE - {grid} / {_GRID}.0)"}
    return {}


def _sum_expr(parts: dict[str, str], i: int, j: int) -> str:
    """A window's sum of column ``i``: running totals at bound 0 minus at bound ``j``."""
    def diff(part: str) -> str:
        return f"(coalesce(r0.{part}{i}, 0) - coalesce(r{j}.{part}{i}, 0))"
    if "s" in parts:
        return f"CAST({diff('s')} AS DOUBLE)"
    if "h" in parts:
        return f"(CAST({diff('h')} AS DOUBLE) / {_GRID}.0 + {diff('l')})"
    return "NULL::DOUBLE"


def _running_totals_sql(view: FeatureView, t_max: int | None, types: dict[str, str]) -> str:
    """Per (entity, event time): running count and sum parts of every aggregated column."""
    delay = _us(view.label_delay)
    per_event, running = [], []
    for i, c in enumerate(sorted({a.column for a in view.aggregations})):
        per_event.append(f"count({_q(c)}) AS n{i}")
        running.append(f"sum(n{i}) OVER w AS n{i}")
        for part, expr in _sum_parts(c, types[c]).items():
            per_event.append(f"{expr} AS {part}{i}")
            running.append(f"sum({part}{i}) OVER w AS {part}{i}")
    # Rows after the latest entity time can never be visible; earlier rows all count,
    # so the running totals (and their float rounding) do not depend on the entity rows.
    hi = "" if t_max is None else f" AND epoch_us({_q(view.timestamp)}) <= {t_max - delay}"
    return (
        f"CREATE OR REPLACE TEMP TABLE __lab_running AS SELECT k, e, {', '.join(running)} FROM ("
        f"SELECT {_q(view.entity)} AS k, epoch_us({_q(view.timestamp)}) AS e, {', '.join(per_event)} "
        f"FROM {_q(view.source)} WHERE {_q(view.entity)} IS NOT NULL "
        f"AND {_q(view.timestamp)} IS NOT NULL{hi} GROUP BY 1, 2) "
        "WINDOW w AS (PARTITION BY k ORDER BY e ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )


def _window_sql(view: FeatureView, types: dict[str, str]) -> str:
    """Each probe's window totals: running total at the upper bound minus at the lower."""
    delay = _us(view.label_delay)
    col_id = {c: i for i, c in enumerate(sorted({a.column for a in view.aggregations}))}
    offsets = sorted({_lower_offset_us(view, a.window) for a in view.aggregations})
    bound_id = {o: j + 1 for j, o in enumerate(offsets)}
    bounds = [f"t - {delay} AS b0"] + [f"t - {delay + o} AS b{bound_id[o]}" for o in offsets]
    joins = "".join(
        f" ASOF LEFT JOIN __lab_running r{j} ON p.k = r{j}.k AND p.b{j} >= r{j}.e"
        for j in range(len(offsets) + 1)
    )
    features = []
    for a in view.aggregations:
        i, j = col_id[a.column], bound_id[_lower_offset_us(view, a.window)]
        n = f"(coalesce(r0.n{i}, 0) - coalesce(r{j}.n{i}, 0))"
        s = _sum_expr(_sum_parts(a.column, types[a.column]), i, j)
        if a.function == "count":
            expr = f"CAST({n} AS BIGINT)"
        elif a.function == "sum":
            expr = s
        else:
            fill = "NULL" if a.fill is None else repr(float(a.fill))
            expr = f"CASE WHEN {n} > 0 THEN {s} / {n} ELSE CAST({fill} AS DOUBLE) END"
        features.append(f"{expr} AS {_q(a.name)}")
    return (
        f"SELECT p.{_ROW}, {', '.join(features)} FROM "
        f"(SELECT {_ROW}, {_q(view.entity)} AS k, {', '.join(bounds)} FROM __lab_probes) p"
        f"{joins} ORDER BY p.{_ROW}"
    )


def _latest_rows_sql(view: FeatureView, t_max: int | None) -> str:
    """One source row per (entity, event time); of two with one time, the one written last.

    A temp table, not a subquery: DuckDB 2.0.1 returns extra rows from an ASOF join whose
    right side is a subquery with a window function (QUALIFY).
    """
    cols = ", ".join(_q(f) for f in view.features)
    hi = "" if t_max is None else f" AND epoch_us({_q(view.timestamp)}) <= {t_max - _us(view.label_delay)}"
    return (
        f"CREATE OR REPLACE TEMP TABLE __lab_latest AS "
        f"SELECT {_q(view.entity)} AS k, epoch_us({_q(view.timestamp)}) AS e, {cols} "
        f"FROM {_q(view.source)} WHERE {_q(view.entity)} IS NOT NULL AND {_q(view.timestamp)} IS NOT NULL{hi} "
        "QUALIFY row_number() OVER (PARTITION BY k, e ORDER BY rowid DESC) = 1"
    )


def _latest_sql(view: FeatureView) -> str:
    """Each probe's newest visible row (ASOF at ``t - delay``), kept if within the ttl."""
    delay, ttl = _us(view.label_delay), _us(view.ttl)
    picked = ", ".join(
        f"CASE WHEN p.b - s.e <= {ttl} THEN s.{_q(f)} END AS {_q(f)}" for f in view.features
    )
    return (
        f"SELECT p.{_ROW}, {picked} FROM "
        f"(SELECT {_ROW}, {_q(view.entity)} AS k, t - {delay} AS b FROM __lab_probes) p "
        f"ASOF LEFT JOIN __lab_latest s ON p.k = s.k AND p.b >= s.e ORDER BY p.{_ROW}"
    )
