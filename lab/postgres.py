"""The PostgreSQL twin of ``lab.sqlite``: one layer for every store lab keeps in a shared
PostgreSQL database (the registry, the experiment store, the prediction ledger), so a
team outgrows one machine by changing a path into a ``postgresql://`` URL.

API (for every PostgreSQL backend; the ledger builds on it too)::

    from lab import postgres as pg

    pg.is_url(target)            # True for postgresql://..., postgres://... (and the
                                 # 'postgresql:/...' a pathlib.Path makes of one)
    pg.normalize_url(target)     # the URL as a str, '//' restored
    pg.mask_url(url)             # the URL with any password as '***': the only form logged,
                                 # put in messages or stored (lineage, registry.path)
    db = pg.Database.open_migrated(url, owner, migrations, what="ledger", lock="ledger")
    with db.write() as conn:     # BEGIN; pg_advisory_xact_lock(<lock>); ...; COMMIT
        pg.insert(conn, "t", {...})          # -> the new row's id (its identity column)
        conn.execute("UPDATE t SET a = ? WHERE id = ?", [1, 2])
    with db.read() as conn:      # one REPEATABLE READ snapshot
        rows = db.rows("SELECT * FROM t WHERE a = ?", [1])   # dicts
    db.migrations(); db.close()

- **Connections** (``connect``): psycopg2, imported lazily (a missing driver is a
  ``LabError`` naming ``pip install 'lab[postgres]'``), autocommit with explicit
  transactions, rows as dicts. ``Connection.execute(sql, params)`` takes lab's SQLite SQL
  (``translate``): ``?`` placeholders become ``%s``, ``INSERT OR IGNORE`` becomes ``ON
  CONFLICT DO NOTHING``, and DDL is mapped (``INTEGER PRIMARY KEY`` -> an identity
  column, ``INTEGER`` -> ``BIGINT``, ``REAL`` -> ``DOUBLE PRECISION``, ``TEXT`` -> ``TEXT
  COLLATE "C"`` so strings sort byte-wise as in SQLite, ``lab.sqlite.append_only``'s
  triggers -> plpgsql triggers). So the SQLite migrations and queries run unchanged; a
  statement that must differ is written per backend (``Connection.backend`` is
  ``"postgresql"``). A table without an integer key gets a hidden ``rowid`` identity
  column (for ``ORDER BY rowid``), left out of the rows a query returns.
- **Transactions** (``write_transaction``, ``read_transaction``). The equivalent of
  SQLite's ``BEGIN IMMEDIATE``: a writer takes a transaction-level advisory lock named by
  its store (``lock``) before it reads, so "1 + the highest version" allocation never
  collides; the wait is bounded by ``LOCK_TIMEOUT_S`` and then a ``LabError``. Readers
  take no lock and see one snapshot.
- **Named migrations per owner** (``migrate``): the ``lab.sqlite.Migration`` objects of the
  same owners (``registry``, ``experiments``, ...) recorded in a ``lab_migrations`` table,
  each applied in its own transaction under the advisory lock ``lab_migrations``, so two
  processes opening a new database at once are safe.
- **Append-only tables** (``append_only``): triggers refusing UPDATE, DELETE and TRUNCATE.

A password in a URL is used to connect and nowhere else: ``Database.path`` and every
message carry ``mask_url(url)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import urllib.parse
from typing import Any, Iterable, Iterator, Sequence

from lab.errors import ConfigError, LabError
from lab.sqlite import MIGRATIONS_TABLE, Migration, _check_migrations, utc_now

__all__ = [
    "INSTALL_HINT", "LOCK_TIMEOUT_S", "Connection", "Database", "append_only", "applied_migrations", "connect",
    "insert", "insert_many", "is_url", "lock_key", "mask_url", "migrate", "normalize_url", "read_transaction",
    "translate", "write_transaction",
]

INSTALL_HINT = "pip install 'lab[postgres]'"

LOCK_TIMEOUT_S = 30.0
"""How long a writer waits for another writer's advisory lock (or any row lock) before it
gives up with a LabError; the twin of ``lab.sqlite.LOCK_RETRY_S``."""

CONNECT_TIMEOUT_S = 10
"""How long connecting may take before the server counts as unreachable, in seconds."""

_SCHEMES = ("postgresql://", "postgres://")
_COLLAPSED = re.compile(r"^(postgresql|postgres):/(?!/)")


# -- URLs ---------------------------------------------------------------------------------


def is_url(target: Any) -> bool:
    """Whether ``target`` (a str or path) names a PostgreSQL database rather than a file:
    ``postgresql://...`` or ``postgres://...``, also in the collapsed ``postgresql:/...``
    form ``pathlib.Path`` turns a URL into."""
    if target is None:
        return False
    text = str(target)
    return text.startswith(_SCHEMES) or bool(_COLLAPSED.match(text))


def normalize_url(target: Any) -> str:
    """The URL as a ``postgresql://`` string (a collapsed ``postgresql:/`` repaired)."""
    text = str(target)
    if _COLLAPSED.match(text):
        text = _COLLAPSED.sub(lambda m: m.group(1) + "://", text, count=1)
    if not text.startswith(_SCHEMES):
        raise ConfigError(f"{mask_url(text)!r} is not a PostgreSQL URL; write postgresql://USER@HOST:PORT/DATABASE")
    parts = urllib.parse.urlsplit(text)
    if not parts.path.strip("/"):
        raise ConfigError(f"{mask_url(text)} names no database; write postgresql://USER@HOST:PORT/DATABASE")
    return text


def mask_url(url: Any) -> str:
    """``url`` with its password (if any, also a ``password=`` query option) replaced by
    ``***``: what may be logged, shown or stored."""
    text = str(url)
    text = re.sub(r"^([a-z]+:/{1,2}[^:@/]*):[^@/]*@", r"\1:***@", text)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", text)


def lock_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of a store's write lock named ``name``."""
    digest = hashlib.blake2b(f"lab:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _driver():
    try:
        import psycopg2
        import psycopg2.extras  # noqa: F401  (execute_batch)
    except ImportError:
        raise LabError(f"a postgresql:// store needs the psycopg2 driver: {INSTALL_HINT}") from None
    return psycopg2


# -- SQL translation ----------------------------------------------------------------------

_TOKENS = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|\$\$.*?\$\$|\?|%)""", re.S)

_TRIGGER = re.compile(
    r"^\s*CREATE TRIGGER IF NOT EXISTS (\w+) BEFORE (UPDATE|DELETE) ON (\w+)\s+"
    r"BEGIN SELECT RAISE\(ABORT, '([^']*)'\); END;?\s*$", re.S | re.I)

_REFUSE_FUNCTION = """CREATE OR REPLACE FUNCTION lab_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$"""


def append_only(table: str) -> str:
    """PostgreSQL statements for triggers refusing UPDATE, DELETE and TRUNCATE on
    ``table`` (the twin of ``lab.sqlite.append_only``), run by ``Connection.execute``."""
    out = [_REFUSE_FUNCTION]
    for verb, each in (("UPDATE", "ROW"), ("DELETE", "ROW"), ("TRUNCATE", "STATEMENT")):
        name = f"{table}_no_{verb.lower()}"
        out.append(f'DROP TRIGGER IF EXISTS {name} ON "{table}"')
        out.append(f'CREATE TRIGGER {name} BEFORE {verb} ON "{table}" FOR EACH {each} '
                   "EXECUTE FUNCTION lab_refuse_change()")
    return ";\n".join(out) + ";"


def _ddl(sql: str) -> str:
    """SQLite column types -> PostgreSQL ones, in a CREATE TABLE or ALTER TABLE."""
    def types(text: str) -> str:
        text = re.sub(r"\bINTEGER\s+PRIMARY\s+KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", text)
        text = re.sub(r"\bINTEGER\b", "BIGINT", text)
        text = re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)
        return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', text)

    # Types only outside quoted names and literals.
    pieces = re.split(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")""", sql)
    sql = "".join(p if i % 2 else types(p) for i, p in enumerate(pieces))
    if re.match(r"\s*CREATE TABLE", sql, re.I) and "IDENTITY PRIMARY KEY" not in sql:
        # SQLite's implicit rowid: insertion order for ORDER BY rowid.
        end = sql.rstrip().rstrip(";").rstrip()
        if end.endswith(")"):
            sql = end[:-1].rstrip() + ', "rowid" BIGINT GENERATED ALWAYS AS IDENTITY)'
    return sql


def translate(sql: str) -> str:
    """lab's SQLite SQL as PostgreSQL (psycopg2 ``%s`` parameters): see the module
    docstring for what is mapped. Text inside quotes is left alone (``%`` doubled)."""
    trigger = _TRIGGER.match(sql)
    if trigger:
        name, verb, table, _ = trigger.groups()
        if verb.upper() == "UPDATE":
            return append_only(table).replace("%", "%%")
        return "SELECT 1"  # DELETE and TRUNCATE come with the UPDATE trigger's statements
    stripped = sql.lstrip()
    head = stripped[:16].upper()
    if head.startswith(("CREATE TABLE", "ALTER TABLE")):
        sql = _ddl(sql)
    ignore = re.match(r"\s*INSERT\s+OR\s+IGNORE\s+INTO\b", sql, re.I)
    if ignore:
        sql = "INSERT INTO" + sql[ignore.end():].rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"

    def token(m: re.Match) -> str:
        text = m.group(0)
        if text == "?":
            return "%s"
        return text.replace("%", "%%")

    return _TOKENS.sub(token, sql)


# -- connections --------------------------------------------------------------------------


class Cursor:
    """A psycopg2 cursor answering like a ``sqlite3.Cursor`` does for lab: ``fetchone``,
    ``fetchall``, iteration, ``lastrowid`` (the identity value the last INSERT drew) and
    ``row_factory`` (None: tuples; else dicts, the default)."""

    def __init__(self, connection: "Connection", dict_rows: bool = True):
        self._connection = connection
        self._cursor = connection.raw.cursor()
        self.row_factory: Any = True if dict_rows else None
        self._inserted = False
        self._select_star = False

    def _convert(self, row):
        if row is None:
            return None
        names = [d[0] for d in self._cursor.description]
        hide = self._select_star and "rowid" in names  # SQLite's SELECT * never shows rowid
        if not self.row_factory:
            return tuple(v for n, v in zip(names, row) if not (hide and n == "rowid")) if hide else row
        return {n: v for n, v in zip(names, row) if not (hide and n == "rowid")}

    def execute(self, sql: str, params: Any = ()) -> "Cursor":
        self._select_star = bool(re.match(r"\s*SELECT\s+\*", sql, re.I))
        self._inserted = bool(re.match(r"\s*INSERT\b", sql, re.I))
        self._connection._run(self._cursor.execute, sql, translate(sql), tuple(params or ()))
        return self

    def executemany(self, sql: str, seq: Iterable[Sequence]) -> "Cursor":
        psycopg2 = _driver()
        self._select_star, self._inserted = False, False
        rows = [tuple(r) for r in seq]
        self._connection._run(lambda q, _: psycopg2.extras.execute_batch(self._cursor, q, rows, page_size=500),
                              sql, translate(sql), ())
        return self

    def fetchone(self):
        return self._convert(self._cursor.fetchone()) if self._cursor.description else None

    def fetchall(self) -> list:
        return [self._convert(r) for r in self._cursor.fetchall()] if self._cursor.description else []

    def __iter__(self):
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self):
        return self._cursor.description

    @property
    def lastrowid(self) -> int | None:
        """The value the last INSERT drew from an identity column in this session (None
        when it drew none)."""
        if not self._inserted:
            return None
        probe = self._connection.raw.cursor()
        try:
            probe.execute("SELECT lastval()")  # every lab table has an identity column (id or rowid)
            return probe.fetchone()[0]
        finally:
            probe.close()


class Connection:
    """One psycopg2 connection (autocommit; transactions are explicit) with the
    ``sqlite3.Connection`` surface lab's stores use: ``execute``, ``executemany``,
    ``cursor``, ``in_transaction``, ``close``. SQL is ``translate``d; errors become
    ``LabError`` when the server is unreachable, and keep psycopg2's class otherwise
    (``psycopg2.errors.RestrictViolation`` for a write to an append-only table)."""

    backend = "postgresql"

    def __init__(self, raw: Any, url: str):
        self.raw = raw
        self.url = url
        self.masked = mask_url(url)
        self.row_factory: Any = True

    def cursor(self) -> Cursor:
        return Cursor(self, dict_rows=bool(self.row_factory))

    def execute(self, sql: str, params: Any = ()) -> Cursor:
        return self.cursor().execute(sql, params)

    def executemany(self, sql: str, seq: Iterable[Sequence]) -> Cursor:
        return self.cursor().executemany(sql, seq)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != 0  # 0: idle

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def close(self) -> None:
        if not self.raw.closed:
            self.raw.close()

    def rollback(self) -> None:
        """End the open transaction, undoing it (psycopg2's ``rollback()`` does nothing in
        autocommit mode, so the statement is sent)."""
        with self.raw.cursor() as cur:
            cur.execute("ROLLBACK")

    def _run(self, call, original: str, sql: str, params: tuple) -> None:
        psycopg2 = _driver()
        try:
            call(sql, params)
        except psycopg2.errors.LockNotAvailable:
            raise LabError(f"{self.masked} stayed locked by another writer for {LOCK_TIMEOUT_S:.0f}s; stop "
                           "the other lab process (or wait for it to finish) and try again") from None
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if self.raw.closed:
                raise LabError(f"lost the connection to {self.masked}: {_clean(exc, self.url)}; check that the "
                               "server runs, then retry") from None
            raise


def _clean(exc: BaseException, url: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = urllib.parse.urlsplit(url).password
    return text.replace(password, "***") if password else text


def connect(url: str, *, application_name: str = "lab") -> Connection:
    """A connection to the database at ``url`` (``postgresql://USER[:PASSWORD]@HOST:PORT/DB``,
    libpq's query options allowed), ready for lab: autocommit, ``lock_timeout`` of
    ``LOCK_TIMEOUT_S``, UTC. An unreachable server or a refused login is a ``LabError``
    naming the masked URL."""
    psycopg2 = _driver()
    url = normalize_url(url)
    try:
        raw = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name=application_name)
    except psycopg2.Error as exc:
        raise LabError(f"cannot connect to {mask_url(url)}: {_clean(exc, url)}; check that the server runs, "
                       "the database exists and the user may log in") from None
    raw.autocommit = True
    with raw.cursor() as cur:
        cur.execute("SET lock_timeout = %s", [f"{int(LOCK_TIMEOUT_S * 1000)}ms"])
        cur.execute("SET TIME ZONE 'UTC'")
    return Connection(raw, url)


# -- transactions -------------------------------------------------------------------------


@contextlib.contextmanager
def write_transaction(conn: Connection, *, lock: str | None, doing: str = "write") -> Iterator[Connection]:
    """One write transaction: ``BEGIN``, then (when ``lock`` names one) the store's
    transaction-level advisory lock, so writers of one store run one at a time like
    SQLite's ``BEGIN IMMEDIATE``; commit on success, roll back on any exception. A
    writer waiting longer than ``LOCK_TIMEOUT_S`` gets a ``LabError`` naming ``doing``."""
    if conn.in_transaction:
        raise LabError(f"cannot {doing} inside another transaction on the same connection; finish that one first")
    conn.execute("BEGIN")
    try:
        if lock is not None:
            try:
                conn.execute("SELECT pg_advisory_xact_lock(?)", [lock_key(lock)])
            except LabError as exc:
                raise LabError(f"could not {doing}: {exc}") from None
        yield conn
    except BaseException:
        if not conn.closed and conn.in_transaction:
            conn.rollback()
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def read_transaction(conn: Connection) -> Iterator[Connection]:
    """One consistent snapshot across several queries (REPEATABLE READ, read only).
    Inside a write transaction on the same connection it is that transaction."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield conn
    finally:
        if not conn.closed and conn.in_transaction:
            conn.rollback()  # nothing was written: ending it is all a read needs


# -- small statement helpers --------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def insert(conn: Any, table: str, row: dict[str, Any]) -> int | None:
    """Insert one row; returns the value its identity column drew (its ``id``), or None.
    Works on either backend (``lab.sqlite.insert`` calls the same SQL)."""
    columns = ", ".join(_q(c) for c in row)
    marks = ", ".join("?" for _ in row)
    return conn.execute(f"INSERT INTO {_q(table)} ({columns}) VALUES ({marks})", list(row.values())).lastrowid


def insert_many(conn: Any, table: str, rows: Iterable[dict[str, Any]]) -> int:
    """Insert rows sharing the first row's columns; returns how many."""
    rows = list(rows)
    if not rows:
        return 0
    names = list(rows[0])
    columns = ", ".join(_q(c) for c in names)
    marks = ", ".join("?" for _ in names)
    conn.executemany(f"INSERT INTO {_q(table)} ({columns}) VALUES ({marks})", [[r[c] for c in names] for r in rows])
    return len(rows)


# -- migrations ---------------------------------------------------------------------------

_MIGRATIONS_LOCK = "lab_migrations"


def _recorded(conn: Connection, owner: str) -> set[str] | None:
    if conn.execute("SELECT to_regclass(?) AS t", [MIGRATIONS_TABLE]).fetchone()["t"] is None:
        return None
    return {r["name"] for r in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE} WHERE owner = ?", [owner])}


def migrate(conn: Connection, owner: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply every migration of ``owner`` not yet recorded in this database, in order,
    each in its own transaction with its ``lab_migrations`` row (under the advisory lock
    ``lab_migrations``); returns the names applied now (``[]`` when up to date, which
    takes no lock). The ``Migration.apply`` functions are the SQLite ones: they get a
    ``Connection`` and their SQL is translated. ``legacy_name`` has no meaning here."""
    _check_migrations(owner, migrations)
    recorded = _recorded(conn, owner)
    if recorded is not None and all(m.name in recorded for m in migrations):
        return []
    with write_transaction(conn, lock=_MIGRATIONS_LOCK, doing=f"prepare the migrations of {owner}"):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (seq BIGINT GENERATED ALWAYS AS IDENTITY, "
                     "owner TEXT NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (owner, name))")
    applied: list[str] = []
    for m in migrations:
        with write_transaction(conn, lock=_MIGRATIONS_LOCK, doing=f"apply migration {owner}/{m.name}"):
            if conn.execute(f"SELECT 1 AS x FROM {MIGRATIONS_TABLE} WHERE owner = ? AND name = ?",
                            [owner, m.name]).fetchone():
                continue  # another process applied it while we waited
            m.apply(conn)
            conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (owner, name, applied_at) VALUES (?, ?, ?)",
                         [owner, m.name, utc_now()])
            applied.append(m.name)
    return applied


def applied_migrations(conn: Connection, owner: str | None = None) -> list[dict]:
    """The recorded migrations (``owner``, ``name``, ``applied_at``), oldest first."""
    if conn.execute("SELECT to_regclass(?) AS t", [MIGRATIONS_TABLE]).fetchone()["t"] is None:
        return []
    where, params = ("WHERE owner = ?", [owner]) if owner is not None else ("", [])
    return conn.execute(f"SELECT owner, name, applied_at FROM {MIGRATIONS_TABLE} {where} ORDER BY seq",
                        params).fetchall()


# -- a connection shared between threads ----------------------------------------------------


class Database:
    """One ``Connection`` with a lock, safe to share between threads: the PostgreSQL twin
    of ``lab.sqlite.Database`` (the same ``write``/``read``/``rows``/``one``/``migrate``
    surface, so a store's code runs on either). ``path`` is the masked URL (for
    messages); ``lock`` names the advisory lock its writes take (default: ``what``)."""

    backend = "postgresql"

    def __init__(self, conn: Connection, what: str = "database", lock: str | None = None):
        self.conn = conn
        self.url = conn.url
        self.path = conn.masked
        self.what = what
        self.lock = what if lock is None else lock
        self._lock = threading.RLock()

    @classmethod
    def open(cls, url: str, *, what: str = "database", lock: str | None = None) -> "Database":
        return cls(connect(url, application_name=f"lab {what}"), what, lock)

    @classmethod
    def open_migrated(cls, url: str, owner: str, migrations: Sequence[Migration], *, what: str = "database",
                      lock: str | None = None) -> "Database":
        """``open`` then apply ``owner``'s pending ``migrations``; closed again if that fails."""
        database = cls.open(url, what=what, lock=lock)
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
        """Not SQLite: always ``"postgresql"``."""
        return "postgresql"

    @contextlib.contextmanager
    def write(self, doing: str | None = None) -> Iterator[Connection]:
        with self._lock, write_transaction(self.conn, lock=self.lock, doing=doing or f"write to the {self.what}"):
            yield self.conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
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
        """``[]`` when the server answers: PostgreSQL checks constraints and foreign keys on
        every write (page-level checks are ``amcheck``'s job, outside lab)."""
        with self._lock:
            self.conn.execute("SELECT 1 AS x").fetchone()
        return []


def open_migrated(target: Any, owner: str, migrations: Sequence[Migration], *, what: str, lock: str | None = None):
    """The store's database at ``target``: ``Database`` (PostgreSQL) for a URL, else
    ``lab.sqlite.Database`` for the file (created if missing, resolved to an absolute
    path). How ``Registry.open`` and ``ExperimentStore.open`` choose their backend."""
    if is_url(target):
        return Database.open_migrated(normalize_url(target), owner, migrations, what=what, lock=lock)
    from pathlib import Path

    from lab.sqlite import Database as SqliteDatabase

    return SqliteDatabase.open_migrated(Path(target).resolve(), owner, migrations, what=what)
