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


def _latest_view(ttl_days: int = 10):
    import datetime as dt

    from lab.features.views import FeatureView
    return FeatureView(name="last", entity="k", source="src", timestamp="e", features=("v",),
                       ttl=dt.timedelta(days=ttl_days))


def _probe_rows(keys, times):
    return pa.table({"k": pa.array(keys, pa.int64()), "t": pa.array(times, pa.timestamp("us"))})


def test_unique_keys_skip_the_tie_break_with_the_same_values(tmp_path, monkeypatch):
    """A source without two rows per (entity, time) takes the plain ASOF join; its values
    equal those of the tie-breaking join, in the input row order."""
    import numpy as np

    rng = np.random.default_rng(3)
    n = 3000
    keys = rng.integers(0, 50, n)
    secs = rng.permutation(10 * n)[:n]  # distinct times: (k, e) unique
    src = pa.table({"k": pa.array(keys, pa.int64()),
                    "e": pa.array(secs * 1_000_000, pa.timestamp("us")),
                    "v": pa.array(rng.standard_normal(n))})
    store = DuckDBOfflineStore(tmp_path / "offline.duckdb")
    store.write_source("src", src)
    view = _latest_view()
    probes = _probe_rows(rng.integers(0, 60, 2000), rng.integers(0, 10 * n, 2000) * 1_000_000)
    with store._connect() as con:
        assert store._unique_keys(con, view)
    fast = store.get_historical_features(probes, [view], "t")
    monkeypatch.setattr(DuckDBOfflineStore, "_unique_keys", lambda self, con, view: False)
    slow = store.get_historical_features(probes, [view], "t")
    assert fast.equals(slow)
    assert fast.select(["k", "t"]).equals(probes)
    assert fast.column("v").null_count < 2000  # most probes found a row


def test_a_rewrite_that_adds_a_tie_is_seen_despite_the_remembered_check(tmp_path):
    """The uniqueness check is remembered per source version: writing the source again
    with two rows at one (entity, time) brings the tie-break back (the row written last wins)."""
    store = DuckDBOfflineStore(tmp_path / "offline.duckdb")
    view = _latest_view()
    probes = _probe_rows([1], [5_000_000])
    store.write_source("src", pa.table({"k": pa.array([1], pa.int64()),
                                        "e": pa.array([1_000_000], pa.timestamp("us")), "v": [1.0]}))
    assert store.get_historical_features(probes, [view], "t").column("v").to_pylist() == [1.0]
    store.write_source("src", pa.table({"k": pa.array([1, 1, 1], pa.int64()),
                                        "e": pa.array([1_000_000, 2_000_000, 2_000_000], pa.timestamp("us")),
                                        "v": [1.0, 2.0, 3.0]}))
    for _ in range(3):
        assert store.get_historical_features(probes, [view], "t").column("v").to_pylist() == [3.0]
    with store._connect() as con:
        assert not store._unique_keys(con, view)
