"""lab.sqlite, the one SQLite layer: connections, write transactions that wait and then
fail clearly, named migrations per owner applied once, and integrity checks; all on real
files in tmp_path."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from lab import sqlite as db
from lab.errors import ConfigError, LabError, NotFound
from tests._helpers import run_at_once


def create(table: str):
    return lambda conn: conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, note TEXT)")


# -- connections -------------------------------------------------------------------------------


def test_connect_creates_folders_and_sets_wal_foreign_keys_and_dict_rows(tmp_path):
    path = tmp_path / "deep" / "er" / "x.db"
    conn = db.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == {"journal_mode": "wal"}
        assert conn.execute("PRAGMA foreign_keys").fetchone()["foreign_keys"] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()["synchronous"] == 1  # NORMAL
        assert conn.isolation_level is None  # no implicit transactions
    finally:
        conn.close()
    with sqlite3.connect(path) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_opening_without_create_never_makes_a_file(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(NotFound, match="no SQLite file"):
        db.connect(path, create=False)
    with pytest.raises(NotFound):
        db.connect(path, readonly=True)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_readonly_connection_refuses_writes(tmp_path):
    path = tmp_path / "x.db"
    conn = db.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    ro = db.connect(path, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only|attempt to write"):
            ro.execute("INSERT INTO t VALUES (1)")
    finally:
        ro.close()


def test_a_file_that_is_not_sqlite_is_a_lab_error_naming_it(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are not the pages you are looking for" * 200)
    with pytest.raises(LabError, match=r"notes\.db is not a usable SQLite database.*move it aside"):
        db.connect(path)


# -- transactions ------------------------------------------------------------------------------


def test_a_failed_write_leaves_nothing_and_a_read_is_one_snapshot(tmp_path):
    path = tmp_path / "x.db"
    conn, other = db.connect(path), db.connect(path)
    try:
        conn.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(RuntimeError):
            with db.write_transaction(conn):
                conn.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("boom")
        assert conn.execute("SELECT count(*) AS n FROM t").fetchone()["n"] == 0
        with db.read_transaction(conn):
            before = conn.execute("SELECT count(*) AS n FROM t").fetchone()["n"]
            with db.write_transaction(other):
                other.execute("INSERT INTO t VALUES (2)")
            assert conn.execute("SELECT count(*) AS n FROM t").fetchone()["n"] == before == 0
        assert conn.execute("SELECT count(*) AS n FROM t").fetchone()["n"] == 1
    finally:
        conn.close()
        other.close()


def test_a_writer_waits_out_a_lock_then_gives_up_with_an_error_naming_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "x.db"
    conn = db.connect(path, busy_timeout_s=0.05)
    conn.execute("CREATE TABLE t (x INTEGER)")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, blocker.rollback).start()
        with db.write_transaction(conn):  # retried past the 50 ms busy timeout
            conn.execute("INSERT INTO t VALUES (1)")

        monkeypatch.setattr(db, "LOCK_RETRY_S", 0.3)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(LabError, match=r"could not write to the ledger: .*x\.db stayed locked by another "
                                           r"writer for 0s; stop the other lab process"):
            with db.write_transaction(conn, doing="write to the ledger"):
                conn.execute("INSERT INTO t VALUES (2)")
        assert time.monotonic() - started < 3
        blocker.rollback()
        assert not conn.in_transaction
        assert [r["x"] for r in conn.execute("SELECT x FROM t")] == [1]
    finally:
        blocker.close()
        conn.close()


def test_run_script_keeps_everything_in_the_callers_transaction(tmp_path):
    conn = db.connect(tmp_path / "x.db")
    try:
        with pytest.raises(RuntimeError):
            with db.write_transaction(conn):
                db.run_script(conn, """
                    CREATE TABLE t (x INTEGER);
                    CREATE TRIGGER t_no_delete BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'append-only'); END;
                """)
                raise RuntimeError("boom")
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
        with db.write_transaction(conn):
            db.run_script(conn, "CREATE TABLE t (x INTEGER); CREATE TRIGGER t_no_delete BEFORE DELETE ON t "
                                "BEGIN SELECT RAISE(ABORT, 'append-only'); END; INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM t")
    finally:
        conn.close()


# -- migrations --------------------------------------------------------------------------------


def test_migrations_apply_once_in_order_per_owner(tmp_path):
    path = tmp_path / "x.db"
    calls = []

    def step(name):
        def apply(conn):
            calls.append(name)
            conn.execute(f"CREATE TABLE {name} (x)")
        return db.Migration(f"0001_{name}", apply)

    conn = db.connect(path)
    try:
        assert db.migrate(conn, "alpha", [step("a1"), db.Migration("0002_a2", create("a2"))]) == ["0001_a1", "0002_a2"]
        # another owner in the same file may reuse a name: names are per owner
        assert db.migrate(conn, "beta", [step("b1")]) == ["0001_b1"]
        assert db.migrate(conn, "alpha", [step("a1"), db.Migration("0002_a2", create("a2"))]) == []
        assert calls == ["a1", "b1"]
        rows = db.applied_migrations(conn)
        assert [(r["owner"], r["name"]) for r in rows] == [("alpha", "0001_a1"), ("alpha", "0002_a2"),
                                                          ("beta", "0001_b1")]
        assert all(r["applied_at"].endswith("+00:00") for r in rows)
        assert [r["name"] for r in db.applied_migrations(conn, "beta")] == ["0001_b1"]
    finally:
        conn.close()
    conn = db.connect(path)  # a later open, a new migration at the end
    try:
        assert db.migrate(conn, "alpha", [db.Migration("0001_a1", create("never")),
                                          db.Migration("0002_a2", create("never")),
                                          db.Migration("0003_a3", create("a3"))]) == ["0003_a3"]
    finally:
        conn.close()


def test_an_up_to_date_file_migrates_without_taking_the_write_lock(tmp_path):
    path = tmp_path / "x.db"
    steps = [db.Migration("0001_t", create("t"))]
    conn = db.connect(path)
    db.migrate(conn, "alpha", steps)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert db.migrate(conn, "alpha", steps) == []
        assert time.monotonic() - started < 1
    finally:
        blocker.rollback()
        blocker.close()
        conn.close()


def test_a_failing_migration_leaves_no_trace_and_later_ones_wait(tmp_path):
    def half_then_fail(conn):
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    conn = db.connect(tmp_path / "x.db")
    try:
        with pytest.raises(RuntimeError, match="boom"):
            db.migrate(conn, "alpha", [db.Migration("0001_t", create("t")), db.Migration("0002_fails", half_then_fail),
                                       db.Migration("0003_later", create("later"))])
        tables = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"t", "lab_migrations"}
        assert [r["name"] for r in db.applied_migrations(conn)] == ["0001_t"]
        assert db.migrate(conn, "alpha", [db.Migration("0001_t", create("t")),
                                          db.Migration("0003_later", create("later"))]) == ["0003_later"]
    finally:
        conn.close()


def test_a_migration_that_commits_on_its_own_is_refused(tmp_path):
    conn = db.connect(tmp_path / "x.db")
    try:
        with pytest.raises(LabError, match="executescript commits.*run_script"):
            db.migrate(conn, "alpha", [db.Migration("0001_t", lambda c: c.executescript("CREATE TABLE t (x);"))])
        assert db.applied_migrations(conn) == []
    finally:
        conn.close()


def test_migration_lists_are_checked(tmp_path):
    conn = db.connect(tmp_path / "x.db")
    try:
        with pytest.raises(ConfigError, match="listed twice"):
            db.migrate(conn, "alpha", [db.Migration("0001_t", create("t")), db.Migration("0001_t", create("u"))])
        with pytest.raises(ConfigError, match="lab.sqlite.Migration"):
            db.migrate(conn, "alpha", [("0001_t", create("t"))])
        with pytest.raises(ConfigError, match="owner"):
            db.migrate(conn, "", [])
    finally:
        conn.close()


def test_records_of_the_old_runner_are_adopted_once_not_applied_again(tmp_path):
    path = tmp_path / "x.db"
    with sqlite3.connect(path) as old:  # what registry.db's runner left before this layer
        old.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        old.execute("INSERT INTO migrations VALUES ('0007_old', '2026-01-02T00:00:00+00:00')")
        old.execute("CREATE TABLE t (x)")
    conn = db.connect(path)
    try:
        steps = [db.Migration("0001_t", create("t"), legacy_name="0007_old"),
                 db.Migration("0002_u", create("u"), legacy_name="0008_never_shipped")]
        assert db.migrate(conn, "alpha", steps) == ["0002_u"]
        assert [(r["name"], r["applied_at"]) for r in db.applied_migrations(conn)][0] == (
            "0001_t", "2026-01-02T00:00:00+00:00")
        assert db.migrate(conn, "alpha", steps) == []
    finally:
        conn.close()


def _open_and_migrate(path, start, errors):
    from lab import sqlite as layer

    def seed(conn):
        conn.execute("CREATE TABLE counter (n INTEGER)")  # no IF NOT EXISTS: a second run would fail
        conn.execute("INSERT INTO counter VALUES (1)")

    def bump(conn):
        conn.execute("UPDATE counter SET n = n + 1")

    try:
        start.wait(30)
        conn = layer.connect(path)
        try:
            layer.migrate(conn, "alpha", [layer.Migration("0001_seed", seed), layer.Migration("0002_bump", bump)])
        finally:
            conn.close()
    except BaseException as exc:  # reported to the parent, which asserts there are none
        errors.put(repr(exc))


def test_processes_opening_a_new_file_at_once_apply_each_migration_once(tmp_path):
    path = tmp_path / "new.db"
    problems, exitcodes = run_at_once(_open_and_migrate, 4, path)
    assert problems == [] and exitcodes == [0] * 4
    conn = db.connect(path)
    try:
        assert conn.execute("SELECT n FROM counter").fetchall() == [{"n": 2}]
        assert [r["name"] for r in db.applied_migrations(conn)] == ["0001_seed", "0002_bump"]
    finally:
        conn.close()


# -- integrity ---------------------------------------------------------------------------------


def test_integrity_check_finds_dangling_references_and_damaged_pages(tmp_path):
    path = tmp_path / "x.db"
    conn = db.connect(path)
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id), note TEXT)")
    conn.execute("CREATE INDEX child_note ON child (note)")
    conn.execute("INSERT INTO parent VALUES (1)")
    conn.execute("INSERT INTO child VALUES (1, 1, 'fine')")
    assert db.integrity_check(conn) == []
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        conn.execute("INSERT INTO child VALUES (2, 99, 'orphan')")
    conn.execute("PRAGMA foreign_keys=OFF")  # what a careless tool might do
    conn.execute("INSERT INTO child VALUES (2, 99, 'orphan')")
    assert db.integrity_check(conn) == ["child row 2 refers to a row of parent that does not exist"]
    conn.execute("DELETE FROM child WHERE id = 2")
    with db.write_transaction(conn):
        db.insert_many(conn, "child", [{"id": i, "parent_id": 1, "note": f"note {i:05d}" * 20}
                                       for i in range(3, 2000)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()

    raw = bytearray(path.read_bytes())
    page = 4096
    raw[page * 10: page * 12] = b"\xff" * (2 * page)  # two pages of the tables or the index
    path.write_bytes(bytes(raw))
    conn = db.connect(path)
    try:
        assert db.integrity_check(conn) != []
    finally:
        conn.close()
