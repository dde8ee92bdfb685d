"""The SQLite online store: the contract suite, the hook, version checks, and readers in
other processes seeing the old or the new materialization, never a mix."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from lab.config import load_config
from lab.errors import LabError
from lab.features.stores import OnlineStore, RowTimes, ViewState
from lab.plugins import make_plugin_manager
from lab.testing.stores import SECOND, SPEND, T0, OnlineStoreContract, spend_rows
from plugins.sqlite_online import SQLiteOnlineStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestSQLiteOnlineStore(OnlineStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        s = SQLiteOnlineStore(tmp_path / "online.db")
        yield s
        s.close()


class _OnlyTheAbstractMethods(OnlineStore):
    """A store implementing only what the contract requires (by delegation), so the suite
    also checks ``OnlineStore.read_with_watermark``, the default other stores inherit."""

    def __init__(self, path):
        self.inner = SQLiteOnlineStore(path)

    def write(self, view, rows, watermark, *, upsert=False):
        return self.inner.write(view, rows, watermark, upsert=upsert)

    def read(self, view, keys):
        return self.inner.read(view, keys)

    def watermark(self, view):
        return self.inner.watermark(view)

    def row_times(self, view, keys):
        return self.inner.row_times(view, keys)

    def state(self, view):
        return self.inner.state(view)

    def close(self):
        self.inner.close()


class TestTheDefaultReadWithWatermark(OnlineStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        s = _OnlyTheAbstractMethods(tmp_path / "online.db")
        yield s
        s.close()


@pytest.fixture
def online(tmp_path):
    s = SQLiteOnlineStore(tmp_path / "online.db")
    yield s
    s.close()


def test_hook_gives_the_sqlite_store_at_the_configured_path(tmp_path):
    config = load_config(tmp_path)
    store = make_plugin_manager(entry_points=False).hook.lab_online_store(config=config)
    assert isinstance(store, SQLiteOnlineStore)
    assert store.path == tmp_path / "data" / "online.db"


def test_file_is_wal_sqlite_with_typed_columns_and_a_watermark_row(online):
    online.write(SPEND, spend_rows([1, 2]), T0)
    con = sqlite3.connect(online.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = {r[1]: r[2] for r in con.execute(f"PRAGMA table_info(view_spend__{SPEND.version})")}
        assert columns == {"USER_ID": "INTEGER", "NB_1D": "INTEGER", "AVG_1D": "REAL",
                           "__lab_event_time": "TEXT", "__lab_written_at": "TEXT"}
        version, watermark, rows = con.execute(
            "SELECT version, watermark, rows FROM watermarks WHERE view = 'spend'").fetchone()
        assert (version, watermark, rows) == (SPEND.version, T0.isoformat(), 2)
    finally:
        con.close()


def test_a_new_store_records_its_migrations_and_is_sound(online):
    from lab import sqlite as layer

    online.write(SPEND, spend_rows([1]), T0)
    conn = layer.connect(online.path)
    try:
        assert [(m["owner"], m["name"]) for m in layer.applied_migrations(conn)] == [("online_store", "0001_watermarks"),
                                                                                ("online_store", "0002_versions")]
        assert layer.integrity_check(conn) == []
    finally:
        conn.close()


def test_a_store_from_before_recorded_migrations_is_read_and_then_recorded(tmp_path):
    """A file written before the schema was a named migration: it reads as it did, and
    opening it records the migration without touching the rows."""
    from lab import sqlite as layer

    path = tmp_path / "online.db"
    with sqlite3.connect(path) as old:
        old.executescript(f"""
            CREATE TABLE watermarks (view TEXT PRIMARY KEY, version TEXT NOT NULL, watermark TEXT NOT NULL,
                entity TEXT NOT NULL, key_type TEXT NOT NULL, features TEXT NOT NULL, rows INTEGER NOT NULL,
                written_at TEXT NOT NULL);
            CREATE TABLE view_spend ("USER_ID" INTEGER PRIMARY KEY, "NB_1D" INTEGER, "AVG_1D" REAL);
            INSERT INTO view_spend VALUES (4, 2, 3.5);
            INSERT INTO watermarks VALUES ('spend', '{SPEND.version}', '{T0.isoformat()}', 'USER_ID', 'INTEGER',
                '["NB_1D", "AVG_1D"]', 1, '2024-03-10T12:00:00+00:00');
        """)
    store = SQLiteOnlineStore(path)
    try:
        assert store.read(SPEND, [4, 5]) == [{"NB_1D": 2, "AVG_1D": 3.5}, None]
        assert store.watermark(SPEND) == T0
        written = dt.datetime(2024, 3, 10, 12, tzinfo=dt.timezone.utc)
        assert store.row_times(SPEND, [4]) == [RowTimes(None, written)]  # no event time was kept then
        assert store.state(SPEND) == ViewState(SPEND.version, T0, 1, None, written)
    finally:
        store.close()
    conn = layer.connect(path)
    try:
        assert [m["name"] for m in layer.applied_migrations(conn, "online_store")] == ["0001_watermarks",
                                                                                      "0002_versions"]
    finally:
        conn.close()


def test_keys_given_as_text_or_numpy_find_integer_keys(online):
    import numpy as np

    online.write(SPEND, spend_rows([7, 8]), T0)
    assert online.read(SPEND, ["7", np.int64(8), 7.5, "x"]) == [
        {"NB_1D": 1, "AVG_1D": 1.5}, {"NB_1D": 2, "AVG_1D": 3.0}, None, None]


def test_aware_watermark_round_trips(online):
    aware = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    online.write(SPEND, spend_rows([1]), aware)
    assert online.watermark(SPEND) == aware and online.watermark(SPEND).tzinfo is not None


def test_a_changed_view_definition_is_not_read_from_old_rows(online):
    online.write(SPEND, spend_rows([1]), T0)
    changed = dataclasses.replace(SPEND, ttl=dt.timedelta(days=3))
    with pytest.raises(LabError, match="materialize"):
        online.read(changed, [1])


def test_unsupported_feature_type_is_refused_and_nothing_written(online):
    rows = spend_rows([1]).set_column(2, "AVG_1D", pa.array([[1.0]], pa.list_(pa.float64())))
    with pytest.raises(LabError, match="AVG_1D"):
        online.write(SPEND, rows, T0)
    assert online.watermark(SPEND) is None


def test_threads_share_one_store(online):
    from concurrent.futures import ThreadPoolExecutor

    online.write(SPEND, spend_rows(list(range(100))), T0)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: online.read(SPEND, [k])[0]["NB_1D"], range(100)))
    assert results == [k + 1 for k in range(100)]


READER = textwrap.dedent("""
    import sys
    from lab.testing.stores import SPEND
    from plugins.sqlite_online import SQLiteOnlineStore
    store = SQLiteOnlineStore(sys.argv[1])
    keys = list(range(3000))
    seen = set()
    for _ in range(int(sys.argv[2])):
        rows = store.read(SPEND, keys)
        counts = {r["NB_1D"] for r in rows if r is not None}
        present = sum(r is not None for r in rows)
        # one generation per read, and a whole one: generation g has 1000 + 1000 * (g % 2) keys
        assert len(counts) == 1, counts
        (g,) = counts
        assert present == 1000 + 1000 * (g % 2), (g, present)
        seen.add(g)
    print(len(seen))
""")


def test_readers_in_another_process_never_see_a_mix(online):
    """Keys read in several SELECT batches still come from one committed write."""
    def generation(g):
        keys = list(range(1000 + 1000 * (g % 2)))
        return spend_rows(keys, counts=[g] * len(keys), means=[float(g)] * len(keys))

    online.write(SPEND, generation(0), T0)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(online.path), "150"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    g = 0
    while reader.poll() is None:
        g += 1
        online.write(SPEND, generation(g), T0 + dt.timedelta(seconds=g))
    out, err = reader.communicate()
    assert reader.returncode == 0, err
    assert g > 2 and int(out) >= 2  # the reader really saw the data change under it


@pytest.mark.parametrize("days", [-1, 0, 31])
def test_assembler_check_finds_a_redefined_view_whatever_the_samples_age(online, days):
    """Stale or back-dated values are not used, but the row is still read, so the
    start-up check reports a view redefined since it was materialized at any time."""
    from lab.serving.scoring import FeatureAssembler

    online.write(SPEND, spend_rows([1]), T0)
    changed = dataclasses.replace(SPEND, ttl=dt.timedelta(days=3))
    assembler = FeatureAssembler(online, [changed], lambda request, rows: {}, [])
    problems = assembler.check({"USER_ID": 1}, T0 + dt.timedelta(days=days))
    assert len(problems) == 1 and "materialize" in problems[0]
    assert assembler.counts() == {"stale": 0, "future": 0}


# -- the per-request read path: a cached version, one consistent store call per view ----------


def test_a_views_version_is_computed_once_not_on_every_online_read(online, monkeypatch):
    """Hashing the definition on every read cost 11 % of /predict: reads and assembly
    use the version computed once per view object."""
    from lab.features.views import FeatureView
    from lab.serving.scoring import FeatureAssembler

    view = dataclasses.replace(SPEND)  # its own object, so no earlier test computed its version
    online.write(view, spend_rows([1, 2]), T0)
    version = view.version
    calls = []
    definition = FeatureView.definition
    monkeypatch.setattr(FeatureView, "definition", lambda self: calls.append(self.name) or definition(self))
    assembler = FeatureAssembler(online, [view], lambda request, rows: {"NB": rows["spend"]["NB_1D"]}, ["NB"])
    for _ in range(3):
        assert online.read(view, [1]) == [{"NB_1D": 1, "AVG_1D": 1.5}]
        assert online.read_with_watermark(view, 2) == ({"NB_1D": 2, "AVG_1D": 3.0}, T0)
        assert assembler.assemble({"USER_ID": 2}, T0 + SECOND).features == {"NB": 2.0}
    assert calls == [] and view.version == version
    # a changed definition is a new object with its own version: nothing stale is cached
    assert dataclasses.replace(view, ttl=dt.timedelta(days=3)).version != version


def test_read_with_watermark_pairs_each_row_with_its_own_materialization(online):
    """Rows and watermark come from one snapshot: while another process rewrites the view
    again and again, every row read carries the watermark it was written with."""
    online.write(SPEND, spend_rows([1], counts=[0]), T0)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(online.path), "60"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    while writer.poll() is None:
        row, watermark = online.read_with_watermark(SPEND, 1)
        # generation g is written with NB_1D == g as of T0 + g seconds
        assert watermark == T0 + row["NB_1D"] * SECOND, (row, watermark)
        seen.add(row["NB_1D"])
    assert writer.returncode == 0, writer.communicate()[1]
    assert len(seen) >= 3  # the reader really saw the view change under it


WRITER = textwrap.dedent("""
    import datetime as dt, sys
    from lab.testing.stores import SPEND, T0, spend_rows
    from plugins.sqlite_online import SQLiteOnlineStore
    store = SQLiteOnlineStore(sys.argv[1])
    for g in range(1, int(sys.argv[2]) + 1):
        store.write(SPEND, spend_rows([1], counts=[g]), T0 + dt.timedelta(seconds=g))
""")


def test_read_with_watermark_checks_the_version_and_never_creates_the_file(tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.db")
    try:
        assert store.read_with_watermark(SPEND, 1) == (None, None)
        assert not store.path.exists()
        store.write(SPEND, spend_rows([1]), T0)
        assert store.read_with_watermark(SPEND, "1") == ({"NB_1D": 1, "AVG_1D": 1.5}, T0)  # text finds INTEGER
        assert store.read_with_watermark(SPEND, 1.5) == (None, T0)
        assert store.read_with_watermark(SPEND, None) == (None, T0)
        from lab.testing.stores import PROFILE
        assert store.read_with_watermark(PROFILE, "oslo") == (None, None)  # another view, never materialized
        with pytest.raises(LabError, match="materialize"):
            store.read_with_watermark(dataclasses.replace(SPEND, ttl=dt.timedelta(days=3)), 1)
    finally:
        store.close()


def test_assembling_a_request_costs_one_query_for_all_its_views(online):
    """The per-request path: one SQL statement for every view (each view's row and
    watermark together), none for a watermark on its own."""
    from lab.serving.scoring import FeatureAssembler
    from lab.testing.stores import PROFILE

    online.write(SPEND, spend_rows([1]), T0)
    online.write(PROFILE, pa.table({"CITY": ["oslo"], "NAME": ["Oslo"]}), T0)
    assembler = FeatureAssembler(
        online, [SPEND, PROFILE],
        lambda request, rows: {"NB": rows["spend"]["NB_1D"], "OSLO": rows["profile"] is not None}, ["NB", "OSLO"])
    request = {"USER_ID": 1, "CITY": "oslo"}
    assembler.assemble(request, T0 + SECOND)  # opens this thread's connection
    statements = []
    online._con().set_trace_callback(statements.append)
    assembled = assembler.assemble(request, T0 + SECOND)
    assert assembled.features == {"NB": 1.0, "OSLO": 1.0}
    assert {name: f.age_seconds for name, f in assembled.freshness.items()} == {"spend": 1.0, "profile": 1.0}
    assert len(statements) == 1, statements
