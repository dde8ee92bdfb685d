"""The DuckDB offline store: the contract suite, the hook, atomic replacement under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import pyarrow as pa
import pytest

from lab.config import load_config
from lab.errors import LabError, NotFound
from lab.features.digest import canonical_digest, table_digest
from lab.plugins import make_plugin_manager
from lab.testing.stores import OfflineStoreContract, events
from plugins.duckdb_offline import DuckDBOfflineStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestDuckDBOfflineStore(OfflineStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return DuckDBOfflineStore(tmp_path / "offline.duckdb")


def test_hook_gives_the_duckdb_store_at_the_configured_path(tmp_path):
    config = load_config(tmp_path)
    store = make_plugin_manager(entry_points=False).hook.lab_offline_store(config=config)
    assert isinstance(store, DuckDBOfflineStore)
    assert store.path == tmp_path / "data" / "offline.duckdb"
    assert not store.path.exists()  # nothing is created until something is written


def test_the_file_is_a_real_duckdb_database_with_a_digest_table(tmp_path):
    store = DuckDBOfflineStore(tmp_path / "o.duckdb")
    digest = store.write_source("events", events())
    con = duckdb.connect(str(store.path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == events().num_rows
        assert con.execute("SELECT digest FROM _lab_sources WHERE name = 'events'").fetchone()[0] == digest
    finally:
        con.close()


def test_digest_is_the_canonical_digest_of_the_stored_rows(tmp_path):
    store = DuckDBOfflineStore(tmp_path / "o.duckdb")
    digest = store.write_source("events", events(7))
    assert digest == canonical_digest(store.read_source("events"))
    assert digest != table_digest(store.read_source("events").slice(1))


def test_duplicate_column_names_are_refused(tmp_path):
    store = DuckDBOfflineStore(tmp_path / "o.duckdb")
    with pytest.raises(LabError, match="distinct"):
        store.write_source("events", pa.table([pa.array([1]), pa.array([2])], names=["A", "A"]))


def test_reading_before_anything_was_written_says_so(tmp_path):
    with pytest.raises(NotFound, match="write a source table first"):
        DuckDBOfflineStore(tmp_path / "o.duckdb").read_source("events")


def test_failed_write_keeps_the_old_table(tmp_path):
    store = DuckDBOfflineStore(tmp_path / "o.duckdb")
    digest = store.write_source("events", events(4))
    # DuckDB cannot read an Arrow dense union: the write fails inside the transaction.
    bad = pa.table({"U": pa.UnionArray.from_dense(pa.array([0], pa.int8()), pa.array([0], pa.int32()),
                                                  [pa.array([1])])})
    with pytest.raises(LabError, match="old table is kept"):
        store.write_source("events", bad)
    assert store.source_digest("events") == digest
    assert store.read_source("events").num_rows == 4


WRITER = textwrap.dedent("""
    import sys, pyarrow as pa
    from plugins.duckdb_offline import DuckDBOfflineStore
    store = DuckDBOfflineStore(sys.argv[1])
    n = 0
    while True:
        size = 20_000 if n % 2 else 60_000
        store.write_source("events", pa.table({"A": pa.array(range(size)), "B": pa.array([n] * size)}))
        n += 1
        if n == 2:
            print("writing", flush=True)
""")


def test_kill_during_writes_leaves_one_whole_table_and_its_digest(tmp_path):
    path = tmp_path / "o.duckdb"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.37)  # somewhere inside a later write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = DuckDBOfflineStore(path)
    table = store.read_source("events")
    generations = set(table.column("B").to_pylist())
    assert len(generations) == 1
    (n,) = generations
    assert table.num_rows == (20_000 if n % 2 else 60_000)
    assert store.source_digest("events") == canonical_digest(table)


def test_table_digest_ignores_layout_but_not_content():
    import numpy as np

    base = pa.table({"S": ["ab", None, "c", "dé"], "I": pa.array([1, None, 3, 4], pa.int64())})
    sliced = pa.concat_tables([pa.table({"S": ["zz", "ab", None], "I": [9, 1, None]}).slice(1),
                               base.slice(2)])
    assert table_digest(sliced) == table_digest(base)
    # same valid values, different bytes hidden under the null slot
    validity = pa.py_buffer(np.packbits([1, 0, 1, 1], bitorder="little").tobytes())
    hidden = pa.Array.from_buffers(pa.int64(), 4, [validity, pa.py_buffer(np.array([1, 777, 3, 4]).tobytes())])
    assert table_digest(base.set_column(1, "I", hidden)) == table_digest(base)
    assert table_digest(base.set_column(1, "I", pa.array([1, None, 3, 5]))) != table_digest(base)
    assert table_digest(base.rename_columns(["S", "J"])) != table_digest(base)
    assert table_digest(base.set_column(1, "I", base.column("I").cast(pa.int32()))) != table_digest(base)
