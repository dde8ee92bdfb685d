"""One SQLite layer for every SQLite file lab keeps: the registry (``registry.db``, which
the experiment store shares), the prediction ledger and the built-in online store.

It owns four things, so that no store gets them subtly different:

- **Connections** (``connect``): WAL, a busy timeout, foreign keys on,
  ``synchronous=NORMAL`` (durable across process crashes in WAL), no implicit
  transactions (``isolation_level=None``) and rows as dicts.
- **Transactions** (``write_transaction``, ``read_transaction``). A writer takes the
  lock first with ``BEGIN IMMEDIATE``: a deferred ``BEGIN`` that reads and then writes
  cannot upgrade its lock while another connection writes, and SQLite answers
  "database is locked" at once, whatever the busy timeout. After the busy timeout a
  writer retries with backoff, for ``LOCK_RETRY_S`` in all, then raises a ``LabError``
  that names the file and the fix.
- **Named migrations per owner** (``Migration``, ``migrate``). Each package declares its
  own list in its own module (the registry, the experiment store, the ledger, the
  online store); several owners may share one file. Each migration runs once, in
  order, in its own write transaction together with the row in ``lab_migrations``
  that records it, so a crash mid-migration leaves the file as it was and the next
  open runs it again, and two processes opening a new file at once are safe (the
  second waits for the lock, then finds the migration recorded).
- **Integrity checks** (``integrity_check``): ``PRAGMA integrity_check`` and
  ``foreign_key_check`` as a list of problems.

``Database`` bundles one connection with a lock for stores that share it between
threads (the registry, the experiment store).

Only the standard library is used: this module is imported on the CLI's start-up path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from lab.errors import ConfigError, LabError, NotFound

__all__ = [
    "BUSY_TIMEOUT_S", "LOCK_RETRY_S", "MIGRATIONS_TABLE", "Database", "Migration", "applied_migrations",
    "connect", "dumps", "insert", "insert_many", "integrity_check", "loads", "migrate", "read_transaction",
    "run_script", "utc_now", "write_transaction",
]

BUSY_TIMEOUT_S = 5.0
"""How long one statement waits inside SQLite for another connection's lock."""

LOCK_RETRY_S = 30.0
"""How long, in all, a writer keeps retrying a locked file before it gives up with a LabError."""

MIGRATIONS_TABLE = "lab_migrations"
"""The one table, in every file, recording which owner's migrations were applied."""

LEGACY_MIGRATIONS_TABLE = "migrations"
"""Where registry.db recorded its migrations before this layer: ``(name, applied_at)``."""

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds; stored strings sort by time."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def dumps(value: Any, what: str) -> str:
    """JSON text for a JSON column (keys sorted); a value JSON cannot hold is a LabError
    naming ``what``."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise LabError(f"{what} must be JSON-serializable (str, number, bool, list, dict): {exc}") from None


def loads(text: str | None, default: Any = None) -> Any:
    """A JSON column's value; ``default`` for NULL."""
    return default if text is None else json.loads(text)


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {column[0]: value for column, value in zip(cursor.description, row)}


# -- connections -------------------------------------------------------------------------


def connect(
    path: str | os.PathLike,
    *,
    create: bool = True,
    readonly: bool = False,
    busy_timeout_s: float | None = None,
    synchronous: str = "NORMAL",
    dict_rows: bool = True,
) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path``, ready for lab's use.

    ``create`` (default) makes the file and its folders when missing; with
    ``create=False`` or ``readonly=True`` a missing file is ``NotFound`` and nothing is
    created. A writable connection switches the file to WAL. Foreign keys are on,
    ``synchronous`` is NORMAL unless given, transactions are explicit
    (``write_transaction``/``read_transaction``) and rows are dicts unless
    ``dict_rows=False`` (plain tuples, for hot paths). The connection may be used from
    any thread, one at a time (``Database`` adds the lock).
    """
    path = Path(path)
    if synchronous.upper() not in _SYNCHRONOUS:
        raise ConfigError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
    timeout = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
    if readonly or not create:
        if not path.exists():
            raise NotFound(f"no SQLite file at {path}")
        # A URI with mode=ro/rw never creates the file.
        mode = "ro" if readonly else "rw"
        target, uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode={mode}", True
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        target, uri = str(path), False
    try:
        conn = sqlite3.connect(target, uri=uri, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError as exc:
        raise LabError(f"cannot open {path}: {exc}; check that the folder exists and is writable") from None
    try:
        if not readonly:
            # Switching to WAL needs a moment of exclusive access: retried like a write.
            _retry(conn, lambda: conn.execute("PRAGMA journal_mode=WAL"), "switch to WAL mode", path)
        else:
            conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LabError(f"{path} is not a usable SQLite database ({exc}); move it aside, or point the "
                       "lab at another file") from None
    except BaseException:
        conn.close()
        raise
    if dict_rows:
        conn.row_factory = _dict_row
    return conn


def _path_of(conn: sqlite3.Connection) -> str:
    cursor = conn.cursor()
    cursor.row_factory = None
    try:
        row = cursor.execute("PRAGMA database_list").fetchone()
    except sqlite3.Error:
        return "the database"
    return (row[2] if row else "") or "the database"


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "locked" in text or "busy" in text


def _retry(conn: sqlite3.Connection, action: Callable[[], Any], doing: str, path: Any = None,
           retry_s: float | None = None) -> Any:
    """``action()``, retried with backoff while the file is locked by another connection."""
    limit = LOCK_RETRY_S if retry_s is None else retry_s
    deadline = time.monotonic() + limit
    pause = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if time.monotonic() >= deadline:
                where = path if path is not None else _path_of(conn)
                raise LabError(
                    f"could not {doing}: {where} stayed locked by another writer for {limit:.0f}s; "
                    "stop the other lab process (or wait for it to finish) and try again"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


# -- transactions ------------------------------------------------------------------------


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection, *, doing: str = "write", retry_s: float | None = None
                      ) -> Iterator[sqlite3.Connection]:
    """One write transaction: ``BEGIN IMMEDIATE`` (retried while another connection holds
    the lock), commit on success, roll back on any exception. ``doing`` names the write
    in the error a lock timeout raises ("could not <doing>: ...")."""
    if conn.in_transaction:
        raise LabError(f"cannot {doing} inside another transaction on the same connection; "
                       "finish that one first")
    _retry(conn, lambda: conn.execute("BEGIN IMMEDIATE"), doing, retry_s=retry_s)
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        _retry(conn, lambda: conn.execute("COMMIT"), doing, retry_s=retry_s)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One consistent snapshot across several queries. Inside a write transaction on the
    same connection it is that transaction (the same snapshot, its own writes seen)."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


# -- small statement helpers --------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    """Insert one row (column -> value); returns its rowid (the INTEGER PRIMARY KEY)."""
    columns = ", ".join(_q(c) for c in row)
    marks = ", ".join("?" for _ in row)
    return conn.execute(f"INSERT INTO {_q(table)} ({columns}) VALUES ({marks})", list(row.values())).lastrowid


def insert_many(conn: sqlite3.Connection, table: str, rows: Iterable[dict[str, Any]]) -> int:
    """Insert rows that share their columns (those of the first row); returns how many."""
    rows = list(rows)
    if not rows:
        return 0
    names = list(rows[0])
    columns = ", ".join(_q(c) for c in names)
    marks = ", ".join("?" for _ in names)
    conn.executemany(f"INSERT INTO {_q(table)} ({columns}) VALUES ({marks})", [[r[c] for c in names] for r in rows])
    return len(rows)


def append_only(table: str) -> str:
    """SQL for triggers that refuse UPDATE and DELETE on ``table``: a history table must keep
    answering "what was true on day X" (alias events, audit logs, allocations)."""
    return "".join(
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;\n"
        for verb in ("UPDATE", "DELETE")
    )


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run several ``;``-separated statements inside the current transaction.

    Use it in migrations instead of ``Connection.executescript``, which commits any open
    transaction first and would split a migration from the row that records it.
    """
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):  # a trigger's body holds ';' of its own
            if statement.strip(" \t\r\n;"):
                conn.execute(statement)
            statement = ""
    if statement.strip(" \t\r\n;"):
        raise ConfigError(f"incomplete SQL statement at the end of a script: {statement.strip()[:80]!r}")


# -- migrations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One named step of an owner's schema. ``apply(conn)`` runs inside the write
    transaction that also records it; it must not commit (no ``executescript``: use
    ``run_script``). Never edit, rename or reorder a migration that has shipped: files in
    the wild have recorded it by name. Add a new one at the end instead.

    ``legacy_name``: the name the step was recorded under in registry.db's
    ``migrations`` table before this layer; a file holding that record counts it as
    applied (the record is copied into ``lab_migrations`` once).
    """

    name: str
    apply: Callable[[sqlite3.Connection], None]
    legacy_name: str | None = None


def _check_migrations(owner: str, migrations: Sequence[Migration]) -> None:
    if not isinstance(owner, str) or not owner.strip():
        raise ConfigError(f"a migration owner must be a non-empty name, got {owner!r}")
    seen: set[str] = set()
    for m in migrations:
        if not isinstance(m, Migration):
            raise ConfigError(f"migrations of {owner!r} must be lab.sqlite.Migration objects, got {m!r}")
        if m.name in seen:
            raise ConfigError(f"migration {m.name!r} of {owner!r} is listed twice; give each step its own name")
        seen.add(m.name)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone() is not None


def _recorded(conn: sqlite3.Connection, owner: str) -> set[str] | None:
    """The names recorded for ``owner``; None when the file has no migrations table yet."""
    with read_transaction(conn):
        if not _has_table(conn, MIGRATIONS_TABLE):
            return None
        cursor = conn.cursor()
        cursor.row_factory = None
        return {r[0] for r in cursor.execute(f"SELECT name FROM {MIGRATIONS_TABLE} WHERE owner = ?", [owner])}


def migrate(conn: sqlite3.Connection, owner: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply every migration of ``owner`` not yet recorded in this file, in order; returns
    the names applied now (``[]`` when the file is up to date, which takes no write lock).

    A migration that raises is rolled back with its record, so the file stays as it was
    before it and the later ones are not tried; the exception propagates.
    """
    _check_migrations(owner, migrations)
    recorded = _recorded(conn, owner)
    if recorded is not None and all(m.name in recorded for m in migrations):
        return []
    try:
        with write_transaction(conn, doing=f"prepare the migrations of {owner}"):
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (owner TEXT NOT NULL, name TEXT NOT NULL, "
                "applied_at TEXT NOT NULL, PRIMARY KEY (owner, name))"
            )
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise LabError(f"{_path_of(conn)} needs migrations of {owner} but is open read-only; open it "
                           "once with write access (any lab command that writes to it)") from None
        raise
    legacy = _has_table(conn, LEGACY_MIGRATIONS_TABLE)
    applied: list[str] = []
    for m in migrations:
        with write_transaction(conn, doing=f"apply migration {owner}/{m.name}"):
            # Checked inside the write lock: another process may have just applied it.
            if conn.execute(f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE owner = ? AND name = ?",
                            [owner, m.name]).fetchone():
                continue
            old = None
            if legacy and m.legacy_name:
                old = conn.execute(f"SELECT applied_at FROM {LEGACY_MIGRATIONS_TABLE} WHERE name = ?",
                                   [m.legacy_name]).fetchone()
            if old is not None:
                applied_at = old["applied_at"] if isinstance(old, dict) else old[0]
            else:
                m.apply(conn)
                if not conn.in_transaction:
                    raise LabError(f"migration {owner}/{m.name} ended its transaction (executescript "
                                   "commits); run its statements with lab.sqlite.run_script")
                applied_at = utc_now()
                applied.append(m.name)
            conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (owner, name, applied_at) VALUES (?, ?, ?)",
                         [owner, m.name, applied_at])
    return applied


def applied_migrations(conn: sqlite3.Connection, owner: str | None = None) -> list[dict]:
    """The recorded migrations (``owner``, ``name``, ``applied_at``), oldest first;
    one owner's only if given."""
    with read_transaction(conn):
        if not _has_table(conn, MIGRATIONS_TABLE):
            return []
        where, params = ("WHERE owner = ?", [owner]) if owner is not None else ("", [])
        cursor = conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(
            f"SELECT owner, name, applied_at FROM {MIGRATIONS_TABLE} {where} ORDER BY rowid", params
        ).fetchall()
    return [{"owner": o, "name": n, "applied_at": a} for o, n, a in rows]


# -- integrity ----------------------------------------------------------------------------


def integrity_check(conn: sqlite3.Connection) -> list[str]:
    """What is wrong with the file, one line per problem; ``[]`` when it is sound.

    ``PRAGMA integrity_check`` (pages, indexes, constraints) and ``PRAGMA
    foreign_key_check`` (rows that refer to a row that does not exist).
    """
    cursor = conn.cursor()
    cursor.row_factory = None
    try:
        problems = [r[0] for r in cursor.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        for table, rowid, parent, _ in cursor.execute("PRAGMA foreign_key_check").fetchall():
            problems.append(f"{table} row {rowid} refers to a row of {parent} that does not exist")
    except sqlite3.DatabaseError as exc:  # damaged beyond what the checks can walk
        return [f"the file cannot be checked: {exc}"]
    return problems


# -- a connection shared between threads ---------------------------------------------------


class Database:
    """One connection (``connect``) with a lock, safe to share between threads.

    ``write()`` and ``read()`` are the ways in: each is one transaction, so a caller never
    sees half of another writer's change and never leaves half of its own. ``rows`` and
    ``one`` query inside them.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, what: str = "database"):
        self.conn = conn
        self.path = path
        self.what = what
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | os.PathLike, *, what: str = "database", create: bool = True,
             readonly: bool = False) -> "Database":
        """Connect to ``path`` (see ``connect``); ``what`` names the store in lock errors
        ("could not write to the registry: ...")."""
        path = Path(path)
        return cls(connect(path, create=create, readonly=readonly), path, what)

    @classmethod
    def open_migrated(cls, path: str | os.PathLike, owner: str, migrations: Sequence[Migration], *,
                      what: str = "database", create: bool = True) -> "Database":
        """``open`` then apply ``owner``'s pending ``migrations``; closed again if that fails."""
        database = cls.open(path, what=what, create=create)
        try:
            database.migrate(owner, migrations)
        except BaseException:
            database.close()
            raise
        return database

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return self.conn.execute("PRAGMA journal_mode").fetchone()["journal_mode"]

    @contextlib.contextmanager
    def write(self, doing: str | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction (see ``write_transaction``) holding this object's lock."""
        with self._lock, write_transaction(self.conn, doing=doing or f"write to the {self.what}"):
            yield self.conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one snapshot (nested in ``write()``: that transaction)."""
        with self._lock, read_transaction(self.conn):
            yield self.conn

    def rows(self, sql: str, params: Any = ()) -> list[dict]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Any = ()) -> dict | None:
        with self._lock:
            return self.conn.execute(sql, params).fetchone()

    def migrate(self, owner: str, migrations: Sequence[Migration]) -> list[str]:
        with self._lock:
            return migrate(self.conn, owner, migrations)

    def migrations(self, owner: str | None = None) -> list[dict]:
        with self._lock:
            return applied_migrations(self.conn, owner)

    def integrity_check(self) -> list[str]:
        with self._lock:
            return integrity_check(self.conn)
