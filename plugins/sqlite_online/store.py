"""``SQLiteOnlineStore``: the latest feature values per entity, in one SQLite file (WAL).

One table per view version (``view_<name>__<version>``): the entity key as PRIMARY KEY,
one typed column per feature (integers INTEGER, floats REAL, strings TEXT, times ISO-8601
TEXT), and per row the event time of the newest source row behind it and the time it was
written (``__lab_event_time``, ``__lab_written_at``, ISO-8601 TEXT). A ``watermarks``
table records, per view and version, the time it was materialized as of, the key type,
the row count, the newest event time, the last write and the definition. ``write``
replaces (or upserts into) a version's table and moves its watermark in one
``BEGIN IMMEDIATE`` transaction; readers in WAL mode keep reading the previous snapshot
until it commits, so they see the old or the new rows, never a mix, and are never
blocked by the writer. Versions live side by side: materializing a changed definition
leaves the previous version readable by a model that still uses it.

Only ``write`` creates the file. Reading a store that does not exist (never
materialized, or deleted) creates nothing: every view reads as never materialized, and
a file written later is picked up by the next read.

Connections, transactions and the schema's named migrations (owner ``online_store``)
go through ``lab.sqlite``, like every SQLite file of the lab. A file made before the
migrations were recorded already has their tables and is recorded as migrated on open.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from lab.errors import LabError, NotFound
from lab.features.stores import EVENT_TIME, OnlineStore, RowTimes, ViewState, checked_rows, normalize_key
from lab.features.views import FeatureView
from lab.sqlite import Migration, connect, migrate, read_transaction, write_transaction

_BATCH = 500  # keys per SELECT: well under SQLite's bound-variable limit

OWNER = "online_store"


def _watermarks(conn: sqlite3.Connection) -> None:
    """Per view: the time it was materialized as of, the view version it was computed
    with, its entity column and key type, feature names, row count and write time. (IF NOT
    EXISTS: files from before this migration was recorded already have the table.)"""
    conn.execute("""
        CREATE TABLE IF NOT EXISTS watermarks (
            view TEXT PRIMARY KEY,
            version TEXT NOT NULL,
            watermark TEXT NOT NULL,
            entity TEXT NOT NULL,
            key_type TEXT NOT NULL,
            features TEXT NOT NULL,
            rows INTEGER NOT NULL,
            written_at TEXT NOT NULL
        )
    """)


def _versions(conn: sqlite3.Connection) -> None:
    """Keep each view version apart: watermarks keyed by (view, version), with the newest
    event time and the definition; each view table renamed to ``view_<name>__<version>``
    and given the per-row event and write times (null for rows written before)."""
    old = [tuple(r.values()) if isinstance(r, dict) else tuple(r)
           for r in conn.execute("SELECT view, version, written_at FROM watermarks").fetchall()]
    conn.execute("ALTER TABLE watermarks RENAME TO watermarks_0001")
    conn.execute("""
        CREATE TABLE watermarks (
            view TEXT NOT NULL,
            version TEXT NOT NULL,
            watermark TEXT NOT NULL,
            entity TEXT NOT NULL,
            key_type TEXT NOT NULL,
            features TEXT NOT NULL,
            rows INTEGER NOT NULL,
            written_at TEXT NOT NULL,
            newest_event TEXT,
            definition TEXT,
            PRIMARY KEY (view, version)
        )
    """)
    conn.execute("INSERT INTO watermarks (view, version, watermark, entity, key_type, features, rows, written_at) "
                 "SELECT view, version, watermark, entity, key_type, features, rows, written_at FROM watermarks_0001")
    conn.execute("DROP TABLE watermarks_0001")
    for name, version, written_at in old:
        table = _q(f"view_{name}")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (f"view_{name}",)).fetchone() is None:
            continue
        conn.execute(f"ALTER TABLE {table} RENAME TO {_q(_table_name(name, version))}")
        for column in (_EVENT, _WRITTEN):
            conn.execute(f"ALTER TABLE {_q(_table_name(name, version))} ADD COLUMN {_q(column)} TEXT")
        conn.execute(f"UPDATE {_q(_table_name(name, version))} SET {_q(_WRITTEN)} = ?", (written_at,))


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_watermarks", _watermarks),
    Migration("0002_versions", _versions),
)

_EVENT = EVENT_TIME
_WRITTEN = "__lab_written_at"


def _table_name(view_name: str, version: str) -> str:
    return f"view_{view_name}__{version}"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_type(name: str, t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "INTEGER"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "REAL"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_temporal(t):
        return "TEXT"
    raise LabError(f"column {name!r} has type {t}, which the SQLite online store cannot hold; "
                   "use numbers, strings or times")


def _cells(column) -> list:
    """A column's values as SQLite stores them (only times need converting)."""
    values = column.to_pylist()
    return list(map(_to_cell, values)) if pa.types.is_temporal(column.type) else values


def _iso_text(times) -> pa.ChunkedArray:
    """Timestamps as Arrow's ISO text in microseconds (``...Z`` when UTC). Arrow formats a
    UTC column ~10x faster as naive times with the ``Z`` appended than through its time
    zone, with the same text; other zones take the general path."""
    if times.type.tz == "UTC":
        naive = pc.cast(pc.cast(times, pa.timestamp("us", tz=times.type.tz)), pa.timestamp("us"))
        return pc.binary_join_element_wise(pc.cast(naive, pa.string()), "Z", "")
    return pc.cast(pc.cast(times, pa.timestamp("us", tz=times.type.tz)), pa.string())


def _to_cell(value):
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    return value


class SQLiteOnlineStore(OnlineStore):
    """The built-in online store at ``path`` (created, with its folder, by the first ``write``).

    Safe to share between threads (each thread gets its own connection) and processes.
    """

    busy_timeout_ms = 10_000

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._queries: dict[tuple, tuple[str, tuple[str, ...]]] = {}  # by (view, version[, keys])
        self._marks: dict[str, dt.datetime] = {}  # watermark text -> parsed, for the hot path
        self._last_views: tuple[list, tuple] = ([], ("", ()))  # read_views_with_watermark's last views and query

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"

    def _con(self, create: bool = False) -> sqlite3.Connection | None:
        """This thread's connection; None when the file does not exist and not ``create``.
        A new connection brings the file's schema up to date (a read when it already is)."""
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                # create=False never creates the file: a reader must not leave an empty
                # store behind that later looks materialized-but-empty.
                # synchronous=FULL: a materialization is rare and must survive a power cut.
                con = connect(self.path, create=create, busy_timeout_s=self.busy_timeout_ms / 1000,
                              synchronous="FULL", dict_rows=False)  # tuples: the read path is hot
            except NotFound:
                return None
            try:
                migrate(con, OWNER, MIGRATIONS)
            except BaseException:
                con.close()
                raise
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    # -- writing -------------------------------------------------------------------

    def write(self, view: FeatureView, rows: pa.Table, watermark: dt.datetime, *, upsert: bool = False) -> int:
        """Replace ``view``'s rows (or, with ``upsert``, the rows of the keys given) and its
        watermark in one transaction; return the number of rows written."""
        rows = checked_rows(view, rows, watermark)
        columns = [view.entity, *view.feature_names]
        if upsert and pc.count_distinct(rows.column(view.entity)).as_py() != rows.num_rows:
            raise LabError(f"rows for view {view.name!r} repeat an entity key; give one row per key. "
                           "The previous rows are kept.")
        types = {c: _sqlite_type(c, rows.schema.field(c).type) for c in columns}
        written_at = dt.datetime.now(dt.timezone.utc).isoformat()
        newest = None
        if EVENT_TIME in rows.column_names:
            events = rows.column(EVENT_TIME)
            newest = pc.max(events).as_py()
            # ISO text made by Arrow ("2024-03-10 12:00:00.000000", "...Z" when aware): one
            # format per column, so SQL's max() is the latest; fromisoformat reads it back.
            event_cells = _iso_text(events).to_pylist()
        else:
            event_cells = itertools.repeat(None)
        data = list(zip(*(_cells(rows.column(c)) for c in columns), event_cells, itertools.repeat(written_at)))
        name = _table_name(view.name, view.version)
        table = _q(name)
        ddl = "".join(f", {_q(c)} {types[c]}" for c in columns[1:])
        ddl = f"{_q(view.entity)} {types[view.entity]} PRIMARY KEY{ddl}, {_q(_EVENT)} TEXT, {_q(_WRITTEN)} TEXT"
        placeholders = ", ".join("?" for _ in range(len(columns) + 2))
        con = self._con(create=True)
        try:
            with write_transaction(con, doing=f"write view {view.name!r} to the online store",
                                   retry_s=self.busy_timeout_ms / 1000):
                count = len(data)
                if upsert:
                    before = con.execute("SELECT key_type FROM watermarks WHERE view = ? AND version = ?",
                                         (view.name, view.version)).fetchone()
                    if before is not None and before[0] != types[view.entity]:
                        raise LabError(f"view {view.name!r} is stored with {before[0]} keys, but these rows have "
                                       f"{types[view.entity]} keys; materialize it whole (not incrementally)")
                    if before is None:
                        con.execute(f"DROP TABLE IF EXISTS {table}")
                    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ddl})")
                    con.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({placeholders})", data)
                    count, newest = con.execute(f"SELECT count(*), max({_q(_EVENT)}) FROM {table}").fetchone()
                    newest = _parse(newest)
                else:
                    con.execute(f"DROP TABLE IF EXISTS {table}")
                    con.execute(f"CREATE TABLE {table} ({ddl})")
                    con.executemany(f"INSERT INTO {table} VALUES ({placeholders})", data)
                con.execute(
                    "INSERT OR REPLACE INTO watermarks (view, version, watermark, entity, key_type, features, rows, "
                    "written_at, newest_event, definition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (view.name, view.version, watermark.isoformat(), view.entity, types[view.entity],
                     json.dumps(view.feature_names), count, written_at, _to_cell(newest),
                     json.dumps(view.definition(), sort_keys=True)),
                )
        except sqlite3.IntegrityError as exc:
            raise LabError(f"rows for view {view.name!r} repeat an entity key ({exc}); "
                           "give one row per key. The previous rows are kept.") from None
        return len(data)

    # -- reading -------------------------------------------------------------------

    def _state(self, con: sqlite3.Connection | None, view: FeatureView) -> tuple | None:
        """``(watermark, key_type)`` of this view version; None when never materialized;
        raises when another version of the view was."""
        if con is None:
            return None
        try:
            found = con.execute("SELECT watermark, key_type FROM watermarks WHERE view = ? AND version = ?",
                                (view.name, view.version)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a file no write has reached yet
                return None
            raise
        if found is None:
            self._refuse_other_version(con, view)
        return found

    def _refuse_other_version(self, con: sqlite3.Connection, view: FeatureView) -> None:
        """Raise when the store holds another version of ``view`` but not this one."""
        try:
            other = con.execute("SELECT version, watermark FROM watermarks WHERE view = ? AND version != ? "
                                "ORDER BY written_at DESC LIMIT 1", (view.name, view.version)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return
            raise
        if other is not None:
            raise _redefined(view, other[0], other[1])

    def read(self, view: FeatureView, keys: Sequence) -> list[dict | None]:
        """Each key's features (a dict by feature name), in order; None for an unknown key.

        A view never materialized gives all None. A view whose definition changed since
        it was materialized raises: its stored values would silently be the old ones.
        """
        keys = list(keys)
        found = self._select(view, keys, [view.entity, *view.feature_names])
        if found is None:
            return [None] * len(keys)
        wanted, rows = found
        names = view.feature_names
        by_key = {row[0]: dict(zip(names, row[1:])) for row in rows}
        return [dict(by_key[k]) if k in by_key else None for k in wanted]

    def row_times(self, view: FeatureView, keys: Sequence) -> list[RowTimes | None]:
        """Each key's event time (of the newest source row behind it) and write time."""
        keys = list(keys)
        found = self._select(view, keys, [view.entity, _EVENT, _WRITTEN])
        if found is None:
            return [None] * len(keys)
        wanted, rows = found
        by_key = {row[0]: RowTimes(_parse(row[1]), _parse(row[2])) for row in rows}
        return [by_key.get(k) for k in wanted]

    def _select(self, view: FeatureView, keys: list, columns: list[str]) -> tuple[list, list] | None:
        """``(normalized keys, rows of ``columns`` for them)`` from one snapshot; None when
        this version was never materialized."""
        con = self._con()
        if con is None:  # no store file: nothing was ever materialized
            return None
        # One read transaction over all batches: one snapshot even if a write commits.
        with read_transaction(con) if len(keys) > _BATCH else contextlib.nullcontext():
            state = self._state(con, view)
            if state is None:
                return None
            key_type = state[1]
            wanted = [normalize_key(k, key_type) for k in keys]
            selected = ", ".join(_q(c) for c in columns)
            table = _q(_table_name(view.name, view.version))
            rows: list = []
            distinct = list(dict.fromkeys(k for k in wanted if k is not None))
            for i in range(0, len(distinct), _BATCH):
                batch = distinct[i: i + _BATCH]
                sql = (f"SELECT {selected} FROM {table} WHERE {_q(view.entity)} IN "
                       f"({', '.join('?' for _ in batch)})")
                rows.extend(con.execute(sql, batch))
        return wanted, rows

    def read_with_watermark(self, view: FeatureView, key) -> tuple[dict | None, dt.datetime | None]:
        """``(row, watermark)`` for one key in one query, so from one snapshot: the row is
        always the one written together with that watermark, even while a materialization
        commits. (None, None) when the view was never materialized; raises like ``read``
        when the view was redefined since."""
        con = self._con()
        if con is None:
            return None, None
        sql, names = self._point_query(view)
        if type(key) is int:  # the common case, without the general conversions
            keys = (view.name, key, str(key))
        else:
            keys = (view.name, normalize_key(key, "INTEGER"), normalize_key(key, "TEXT"))
        try:
            found = con.execute(sql, keys).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # no write reached the file, or not this version
                self._refuse_other_version(con, view)
                return None, None
            raise
        if found is None:
            self._refuse_other_version(con, view)
            return None, None
        watermark = found[0]
        mark = self._marks.get(watermark)
        if mark is None:
            mark = self._marks[watermark] = dt.datetime.fromisoformat(watermark)
            if len(self._marks) > 256:  # a long-lived server sees one per materialization
                self._marks.clear()
                self._marks[watermark] = mark
        return (dict(zip(names, found[2:])) if found[1] else None), mark

    def read_views_with_watermark(self, pairs: Sequence[tuple[FeatureView, Any]]) -> list[tuple[dict | None, dt.datetime | None]]:
        """``read_with_watermark(view, key)`` for each ``(view, key)`` pair, in order, in
        one query: the server reads every view a request needs with one statement (one
        snapshot, one trip through SQLite) instead of one per view. When some view has no
        watermark row (never materialized, or another version) or a table is missing,
        the one statement cannot say which, and each pair is read on its own, with
        ``read_with_watermark``'s answers and errors."""
        if len(pairs) < 2:
            return [self.read_with_watermark(view, key) for view, key in pairs]
        con = self._con()
        if con is None:
            return [(None, None)] * len(pairs)
        views = [view for view, _ in pairs]
        last = self._last_views  # the server asks for the same view objects every time
        if len(last[0]) == len(views) and all(a is b for a, b in zip(last[0], views)):
            sql, widths = last[1]
        else:
            query = self._views_query(tuple(views))
            self._last_views = (views, query)
            sql, widths = query
        bound: list = []
        for view, key in pairs:
            if type(key) is int:
                bound += (view.name, key, str(key))
            else:
                bound += (view.name, normalize_key(key, "INTEGER"), normalize_key(key, "TEXT"))
        try:
            found = con.execute(sql, bound).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            found = None
        if found is None:
            return [self.read_with_watermark(view, key) for view, key in pairs]
        out: list = []
        at = 0
        marks = self._marks
        for names, width in widths:
            watermark = found[at]
            mark = marks.get(watermark)
            if mark is None:
                mark = marks[watermark] = dt.datetime.fromisoformat(watermark)
                if len(marks) > 256:
                    marks.clear()
                    marks[watermark] = mark
            out.append(((dict(zip(names, found[at + 2:at + width])) if found[at + 1] else None), mark))
            at += width
        return out

    def _views_query(self, views: tuple[FeatureView, ...]) -> tuple[str, tuple[tuple[tuple[str, ...], int], ...]]:
        """``_point_query`` of several views as one statement: each view's watermark row
        and the entity's row side by side in one result row (``?3i+1`` the view's name,
        ``?3i+2`` and ``?3i+3`` its key as an integer and as text), and per view its
        feature names and the number of columns it takes."""
        cache_key = tuple((view.name, view.version) for view in views)
        query = self._queries.get(cache_key)
        if query is None:
            selected, joins, where, widths = [], [], [], []
            for i, view in enumerate(views):
                names = tuple(view.feature_names)
                entity = _q(view.entity)
                selected.append(f"w{i}.watermark, v{i}.{entity} IS NOT NULL"
                                + "".join(f", v{i}.{_q(n)}" for n in names))
                joins.append(f"{'' if i == 0 else 'JOIN '}watermarks AS w{i}"
                             f" LEFT JOIN {_q(_table_name(view.name, view.version))} AS v{i}"
                             f" ON v{i}.{entity} = (CASE w{i}.key_type WHEN 'INTEGER' THEN ?{3 * i + 2}"
                             f" ELSE ?{3 * i + 3} END)")
                where.append(f"w{i}.view = ?{3 * i + 1} AND w{i}.version = '{view.version}'")
                widths.append((names, len(names) + 2))
            sql = f"SELECT {', '.join(selected)} FROM {' '.join(joins)} WHERE {' AND '.join(where)}"
            if len(self._queries) > 512:
                self._queries.clear()
            query = self._queries[cache_key] = (sql, tuple(widths))
        return query

    def read_many_with_watermark(self, view: FeatureView, keys: Sequence) -> tuple[list, dt.datetime | None]:
        """``([row or None per key], watermark)`` in one query, so from one snapshot: what
        ``read_with_watermark`` gives for each key, for the server scoring several
        requests together. Raises like it."""
        keys = list(keys)
        con = self._con()
        if con is None or not keys:
            return [None] * len(keys), None
        sql, names = self._many_query(view, len(keys))
        bound: list = []
        for key in keys:
            if type(key) is int:
                bound += (key, str(key))
            else:
                bound += (normalize_key(key, "INTEGER"), normalize_key(key, "TEXT"))
        bound.append(view.name)
        try:
            found = con.execute(sql, bound).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                self._refuse_other_version(con, view)
                return [None] * len(keys), None
            raise
        if not found:
            self._refuse_other_version(con, view)
            return [None] * len(keys), None
        watermark = found[0][0]
        mark = self._marks.get(watermark)
        if mark is None:
            mark = self._marks[watermark] = dt.datetime.fromisoformat(watermark)
        rows: list = [None] * len(keys)
        for row in found:
            if row[2]:
                rows[row[1]] = dict(zip(names, row[3:]))
        return rows, mark

    def _many_query(self, view: FeatureView, n: int) -> tuple[str, tuple[str, ...]]:
        """``_point_query`` for ``n`` keys at once: the keys as a VALUES list (their index,
        the key as an integer and as text), each joined to the view's row."""
        cache_key = (view.name, view.version, n)
        query = self._queries.get(cache_key)
        if query is None:
            names = tuple(view.feature_names)
            entity = _q(view.entity)
            values = ", ".join(f"({i}, ?, ?)" for i in range(n))
            sql = (f"SELECT w.watermark, k.column1, v.{entity} IS NOT NULL"
                   + "".join(f", v.{_q(c)}" for c in names)
                   + f" FROM (VALUES {values}) AS k JOIN watermarks AS w"
                   f" LEFT JOIN {_q(_table_name(view.name, view.version))} AS v"
                   f" ON v.{entity} = (CASE w.key_type WHEN 'INTEGER' THEN k.column2 ELSE k.column3 END)"
                   f" WHERE w.view = ? AND w.version = '{view.version}'")
            if len(self._queries) > 512:  # one per view and batch size; bounded all the same
                self._queries.clear()
            query = self._queries[cache_key] = (sql, names)
        return query

    def _point_query(self, view: FeatureView) -> tuple[str, tuple[str, ...]]:
        """The one-key query of ``view`` (its watermark row joined with the entity's row)
        and its feature names, built once per view definition."""
        cache_key = (view.name, view.version)
        query = self._queries.get(cache_key)
        if query is None:
            names = tuple(view.feature_names)
            entity = _q(view.entity)
            # The key is bound both as an integer and as text; the stored key type picks
            # one in the same statement, so a view rewritten with another key type is read
            # consistently too. The view's PRIMARY KEY index serves the lookup. The version
            # is a hex digest, safe to write into the statement.
            sql = (f"SELECT w.watermark, v.{entity} IS NOT NULL"
                   + "".join(f", v.{_q(n)}" for n in names)
                   + f" FROM watermarks AS w LEFT JOIN {_q(_table_name(view.name, view.version))} AS v"
                   f" ON v.{entity} = (CASE w.key_type WHEN 'INTEGER' THEN ?2 ELSE ?3 END)"
                   f" WHERE w.view = ?1 AND w.version = '{view.version}'")
            query = self._queries[cache_key] = (sql, names)
        return query

    def watermark(self, view: FeatureView) -> dt.datetime | None:
        """The ``as_of`` time of this view version's last materialization, or None."""
        state = self._state(self._con(), view)
        return None if state is None else dt.datetime.fromisoformat(state[0])

    def state(self, view: FeatureView) -> ViewState | None:
        """This view version's watermark, row count, newest event time and last write."""
        con = self._con()
        if con is None:
            return None
        try:
            found = con.execute("SELECT watermark, rows, newest_event, written_at FROM watermarks "
                                "WHERE view = ? AND version = ?", (view.name, view.version)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        if found is None:
            return None
        return ViewState(view.version, dt.datetime.fromisoformat(found[0]), found[1], _parse(found[2]),
                         dt.datetime.fromisoformat(found[3]))

    def materialized(self) -> dict[str, dict]:
        """Every materialized view version, by ``name@version``: view, version, watermark,
        entity, row count, newest event time, write time and definition (a dict, or None
        for versions written before definitions were kept)."""
        con = self._con()
        if con is None:
            return {}
        try:
            rows = con.execute(
                "SELECT view, version, watermark, entity, rows, newest_event, written_at, definition "
                "FROM watermarks ORDER BY view, written_at"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise
        return {f"{r[0]}@{r[1]}": {"view": r[0], "version": r[1], "watermark": r[2], "entity": r[3], "rows": r[4],
                                   "newest_event": r[5], "written_at": r[6],
                                   "definition": json.loads(r[7]) if r[7] else None}
                for r in rows}

    def definitions(self, view_name: str) -> dict[str, dict]:
        """The definition of every stored version of ``view_name`` (those written before
        definitions were kept are left out)."""
        con = self._con()
        if con is None:
            return {}
        try:
            rows = con.execute("SELECT version, definition FROM watermarks WHERE view = ? AND definition IS NOT NULL",
                               (view_name,)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise
        return {version: json.loads(text) for version, text in rows}

    def drop_version(self, view_name: str, version: str) -> bool:
        """Delete one stored view version (its rows and watermark); False when absent."""
        con = self._con()
        if con is None:
            return False
        with write_transaction(con, doing=f"drop view {view_name!r} version {version}",
                               retry_s=self.busy_timeout_ms / 1000):
            gone = con.execute("DELETE FROM watermarks WHERE view = ? AND version = ?", (view_name, version)).rowcount
            con.execute(f"DROP TABLE IF EXISTS {_q(_table_name(view_name, version))}")
        return bool(gone)

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()


def _redefined(view: FeatureView, version: str, watermark: str) -> LabError:
    return LabError(
        f"the online store holds view {view.name!r} version {version} (as of {watermark}), "
        f"but the definition is now version {view.version}; run `lab features materialize`"
    )


def _parse(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)

