"""``lab migrate --to postgresql://...``: a lab's SQLite state copied into PostgreSQL.

What moves: the registry file (``registry.db``: runs, metrics, data sets, trials, model
versions, aliases and their events, shadows, approvals, evidence, events, drift, stage
records, and the experiment store's flags, audit and allocations, which live in the same
file) and the prediction ledger (``data/ledger.db``). What stays: model files and runs
on disk (the registry names them by path under the lab's root), the online store, the
offline store, stream and LLM files.

How, so that nothing is half-copied or silently changed:

1. The target's schema is made by the PostgreSQL stores themselves (each store's named
   migrations, applied when it opens), so the copy lands in the tables the servers use.
2. One transaction copies every table: refused when any target table already holds a
   row (migrate into a new, empty database; a second ``lab migrate`` to the same one is
   refused, never doubled), or when a SQLite table or column with rows has no
   PostgreSQL counterpart (``--force`` leaves such tables behind, listed). Rows keep
   their ids; each identity sequence is moved past the highest id.
3. Before the commit, each table is read back inside the transaction and compared with
   its source: the row count and an order-independent digest (the sum, modulo 2**256, of
   a SHA-256 per row over its values normalized by the target column's type: JSON
   re-encoded with sorted keys, booleans as 0/1, times as UTC instants). The same
   function runs over the SQLite rows and the PostgreSQL rows; any difference rolls
   the whole copy back.

Then it prints what to put in ``[tool.lab]``. The password of the URL is never printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from lab import postgres as pg
from lab.errors import LabError

_SKIP = {"lab_migrations", "migrations", "sqlite_sequence", "sqlite_stat1"}
_MODULUS = 2 ** 256
_PAGE = 1000


@dataclass
class TableCopy:
    """One table's copy: rows and digest of the source; those read back from the target."""

    store: str
    table: str
    rows: int
    digest: str
    copied_rows: int = -1
    copied_digest: str = ""

    @property
    def verified(self) -> bool:
        return self.rows == self.copied_rows and self.digest == self.copied_digest


@dataclass
class MigrationReport:
    target: str  # the URL, password masked
    tables: list[TableCopy] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)  # "store:table (N rows)"


# -- digests ---------------------------------------------------------------------------


def _instant(value: Any) -> str | None:
    if value is None:
        return None
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def _normalizer(pg_type: str, sqlite_type: str):
    """How one column's value is written into the digest, by the target column's type;
    ``sqlite_type`` tells whether a JSON column's source value is JSON text."""
    if pg_type in ("json", "jsonb"):
        text_source = sqlite_type.upper() == "TEXT"

        def norm(v: Any, source: bool) -> Any:
            if v is None:
                return None
            if source and text_source:
                v = json.loads(v)
            return json.dumps(v, sort_keys=True)
        return norm
    if pg_type == "boolean":
        return lambda v, source: None if v is None else int(bool(v))
    if pg_type.startswith("timestamp"):
        return lambda v, source: _instant(v)
    if pg_type in ("smallint", "integer", "bigint"):
        return lambda v, source: None if v is None else int(v)
    if pg_type in ("double precision", "real", "numeric"):
        return lambda v, source: None if v is None else repr(float(v))
    if pg_type == "bytea":
        return lambda v, source: None if v is None else bytes(v).hex()
    return lambda v, source: None if v is None else str(v)


def table_digest(rows: Iterable[tuple], normalizers: list, *, source: bool) -> tuple[int, str]:
    """(count, digest) of ``rows``: order-independent, the sum of a SHA-256 per row."""
    total, count = 0, 0
    for row in rows:
        values = [norm(v, source) for norm, v in zip(normalizers, row)]
        data = json.dumps(values, separators=(",", ":"), allow_nan=True).encode()
        total = (total + int.from_bytes(hashlib.sha256(data).digest(), "big")) % _MODULUS
        count += 1
    return count, f"{total:064x}"


# -- the copy ----------------------------------------------------------------------------


def _sqlite_tables(conn: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    """table -> [(column, declared type)] of a SQLite file, internal tables left out."""
    out = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        if name in _SKIP or name.startswith("sqlite_"):
            continue
        out[name] = [(r[1], r[2] or "") for r in conn.execute(f'PRAGMA table_info("{name}")')]
    return out


def _pg_tables(cur) -> dict[str, dict[str, str]]:
    """table -> {column: data type} in the target's current schema."""
    cur.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")
    out: dict[str, dict[str, str]] = {}
    for table, column, kind in cur.fetchall():
        out.setdefault(table, {})[column] = kind
    return out


def _dependency_order(cur, tables: list[str]) -> list[str]:
    """``tables`` with every table after those its foreign keys point at."""
    cur.execute("""SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c
                   WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace""")
    needs: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in cur.fetchall():
        child, parent = child.strip('"'), parent.strip('"')
        if child in needs and parent in needs and child != parent:
            needs[child].add(parent)
    ordered: list[str] = []
    while needs:
        ready = sorted(t for t, parents in needs.items() if not parents - set(ordered))
        if not ready:  # a cycle: keep the rest as they are
            ready = sorted(needs)
        for t in ready:
            ordered.append(t)
            del needs[t]
    return ordered


def _converter(pg_type: str, sqlite_type: str):
    """A SQLite value as the target column takes it."""
    if pg_type in ("json", "jsonb") and sqlite_type.upper() != "TEXT":
        return lambda v: None if v is None else json.dumps(v)
    if pg_type == "boolean":
        return lambda v: None if v is None else bool(v)
    return None


def _rows(conn: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple]:
    quoted = ", ".join(f'"{c}"' for c in columns)
    cursor = conn.execute(f'SELECT {quoted} FROM "{table}"')
    while batch := cursor.fetchmany(_PAGE):
        yield from batch


def _sources(config) -> list[tuple[str, Path]]:
    """(store, SQLite file) of the lab: the registry (with the experiment store), the ledger."""
    out = []
    for store, path in (("registry", config.registry_path), ("ledger", config.ledger_path)):
        if isinstance(path, str) or str(path).startswith(("postgresql:", "postgres:")):
            raise LabError(f"the lab's {store} is already on PostgreSQL ({pg.mask_url(str(path))}); "
                           f"`lab migrate` copies SQLite files: remove `{store} = ...` from [tool.lab] to migrate "
                           "from the files")
        if Path(path).exists():
            out.append((store, Path(path)))
    if not out:
        raise LabError(f"nothing to migrate: no registry at {config.registry_path} and no ledger at "
                       f"{config.ledger_path}; run `lab run` first, or check --root")
    return out


def _prepare_schema(url: str, config) -> None:
    """Make the target's tables by opening each PostgreSQL store (their own migrations)."""
    from lab.experiments.store import ExperimentStore
    from lab.registry import Registry
    from lab.serving._pg_ledger import open_database

    with Registry.open(url, project_root=config.root):
        pass
    with ExperimentStore.open(url):
        pass
    open_database(url)


def migrate_to_postgres(config, url: str, *, force: bool = False) -> MigrationReport:
    """Copy the lab's SQLite registry and ledger into the empty PostgreSQL database at
    ``url`` in one transaction, verified table by table (module docstring)."""
    if not (isinstance(url, str) and url.startswith(("postgresql://", "postgres://"))):
        raise LabError(f"--to must be a postgresql:// URL (postgresql://USER@HOST:PORT/DATABASE), got {url!r}")
    sources = _sources(config)
    _prepare_schema(url, config)
    report = MigrationReport(target=pg.mask_url(url))
    conn = pg.connect(url, application_name="lab migrate")
    files: dict[str, sqlite3.Connection] = {}
    try:
        with conn.raw.cursor() as cur:
            cur.execute("BEGIN")  # one transaction: every table, or none
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [pg.lock_key("lab migrate")])
            target = _pg_tables(cur)
            plan = []  # (store, file conn, table, [(column, sqlite type, pg type)])
            for store, path in sources:
                files[store] = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                for table, columns in _sqlite_tables(files[store]).items():
                    count = files[store].execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                    have = target.get(table)
                    missing = [c for c, _ in columns if have is not None and c not in have]
                    if have is None or missing:
                        what = f"{store}:{table} ({count} rows)" + (f", columns {missing}" if missing else "")
                        if count and not force:
                            where = (f"has no table {table!r}" if have is None
                                     else f"lacks columns {', '.join(missing)} of table {table!r}")
                            raise LabError(f"the PostgreSQL schema {where}, which holds {count} row(s) in {path}; "
                                           "upgrade lab so its PostgreSQL stores have it, or pass --force to "
                                           "leave that table behind")
                        if count:
                            report.left_behind.append(what)
                        continue
                    plan.append((store, files[store], table, [(c, t, have[c]) for c, t in columns]))
            for table in sorted({p[2] for p in plan}):
                cur.execute(f'SELECT count(*) FROM "{table}"')
                held = cur.fetchone()[0]
                if held:
                    raise LabError(f"{report.target} is not empty: table {table!r} holds {held} row(s); "
                                   "`lab migrate` copies into a new, empty database only (createdb NAME, then "
                                   "--to postgresql://.../NAME)")
            from psycopg2.extras import execute_values

            order = _dependency_order(cur, [p[2] for p in plan])
            plan.sort(key=lambda p: order.index(p[2]))
            for store, source, table, columns in plan:
                names = [c for c, _, _ in columns]
                converters = [_converter(p, s) for _, s, p in columns]
                normalizers = [_normalizer(p, s) for _, s, p in columns]
                count, digest = table_digest(_rows(source, table, names), normalizers, source=True)
                copy = TableCopy(store, table, count, digest)
                sql = f'INSERT INTO "{table}" ({", ".join(chr(34) + n + chr(34) for n in names)}) VALUES %s'
                page: list[tuple] = []
                for row in _rows(source, table, names):
                    page.append(tuple(v if f is None else f(v) for f, v in zip(converters, row)))
                    if len(page) >= _PAGE:
                        execute_values(cur, sql, page, page_size=_PAGE)
                        page = []
                if page:
                    execute_values(cur, sql, page, page_size=_PAGE)
                for name in names:  # identity and serial columns continue after the copied ids
                    cur.execute("SELECT pg_get_serial_sequence(%s, %s)", [f'"{table}"', name])
                    sequence = cur.fetchone()[0]
                    if sequence:
                        cur.execute(f'SELECT setval(%s, GREATEST(COALESCE(MAX("{name}"), 0), 1), '
                                    f'MAX("{name}") IS NOT NULL) FROM "{table}"', [sequence])
                quoted = ", ".join(f'"{n}"' for n in names)
                cur.execute(f'SELECT {quoted} FROM "{table}"')
                copy.copied_rows, copy.copied_digest = table_digest(iter(cur.fetchall()), normalizers, source=False)
                report.tables.append(copy)
            bad = [t for t in report.tables if not t.verified]
            if bad:
                raise LabError("the copy did not verify (rolled back, nothing written): " + "; ".join(
                    f"{t.table}: {t.rows} rows {t.digest[:12]} in SQLite, {t.copied_rows} rows "
                    f"{t.copied_digest[:12]} in PostgreSQL" for t in bad))
            cur.execute("COMMIT")
    finally:
        conn.close()  # an open transaction ends with the connection: rolled back
        for source in files.values():
            source.close()
    return report


# -- the command -------------------------------------------------------------------------


def migrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, metavar="URL",
                   help="the empty PostgreSQL database to copy into: postgresql://USER@HOST:PORT/DATABASE "
                        "(a password is better in PGPASSWORD or ~/.pgpass than in the URL)")
    p.add_argument("--force", action="store_true",
                   help="copy even when a SQLite table with rows has no PostgreSQL counterpart (it is left "
                        "behind, listed); a non-empty target is refused all the same")


def migrate_run(args: argparse.Namespace, ctx) -> int:
    report = migrate_to_postgres(ctx.config, args.to, force=args.force)
    for t in report.tables:
        print(f"{t.store:<9} {t.table:<24} {t.rows:>9} rows  digest {t.digest[:16]}  verified")
    for what in report.left_behind:
        print(f"left behind (no PostgreSQL table): {what}")
    print(f"\ncopied {sum(t.rows for t in report.tables)} rows in {len(report.tables)} tables to {report.target}; "
          "now put in pyproject.toml:\n")
    print("[tool.lab]")
    print(f'registry = "{report.target}"')
    print(f'ledger = "{report.target}"')
    print("\n(the URL as you gave it, with the password in PGPASSWORD or ~/.pgpass; the SQLite files are "
          "left as they were)")
    return 0
