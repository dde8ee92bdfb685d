"""The Spark offline store (plugins/spark_offline): the offline-store and point-in-time
contract suites (with the brute-force oracle), materialization through the core, batch
scoring through Spark, and the acceptance test: a fraud training set built by Spark
equals DuckDB's row for row.

One SparkSession (local[2], no UI, 2 shuffle partitions) serves the whole module; every
store gets its own warehouse folder. Skipped when pyspark is not installed (the `spark`
extra: pip install -c requirements.lock -e '.[spark]') or Java is missing.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pyspark", reason="the Spark offline store needs pyspark: pip install -c requirements.lock "
                                      "-e '.[spark]'")
if shutil.which("java") is None:  # pragma: no cover - the machine has Java 17
    pytest.skip("the Spark offline store needs Java 17+ on PATH", allow_module_level=True)

from lab.testing.point_in_time import PointInTimeContract  # noqa: E402
from lab.testing.stores import OfflineStoreContract  # noqa: E402
from plugins.spark_offline.session import spark_session, stop_session  # noqa: E402
from plugins.spark_offline.settings import SparkSettings  # noqa: E402
from plugins.spark_offline.store import SparkOfflineStore  # noqa: E402

SETTINGS = SparkSettings.from_table({"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": 2,
                                                                   "spark.ui.enabled": False}})


@pytest.fixture(scope="module")
def spark():
    session = spark_session(SETTINGS)
    yield session
    stop_session()


@pytest.fixture
def fresh_store(spark, tmp_path):
    """An empty Spark store in the test's own folder, on the module's session."""
    return SparkOfflineStore(tmp_path / "warehouse", SETTINGS)


class TestSparkOfflineStore(OfflineStoreContract):
    @pytest.fixture
    def store(self, fresh_store):
        return fresh_store


class TestSparkPointInTime(PointInTimeContract):
    @pytest.fixture
    def store(self, fresh_store):
        return fresh_store


# ---------------------------------------------------------------------------- the plugin


def test_the_hook_answers_only_for_labs_with_a_spark_table(tmp_path):
    from lab.config import load_config
    from lab.plugins import make_plugin_manager
    from plugins import spark_offline

    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(spark_offline)
    (tmp_path / "pyproject.toml").write_text("[tool.lab]\n")
    assert pm.hook.lab_offline_store(config=load_config(tmp_path)) is None
    (tmp_path / "pyproject.toml").write_text(
        '[tool.lab]\n[tool.lab.spark]\nmaster = "local[2]"\nwarehouse = "wh"\n'
        '[tool.lab.spark.conf]\nspark.sql.shuffle.partitions = 3\n"spark.executor.memory" = "1g"\n')
    store = pm.hook.lab_offline_store(config=load_config(tmp_path))
    assert isinstance(store, SparkOfflineStore) and store.layout.root == tmp_path / "wh"
    conf = store.settings.spark_conf()
    assert conf["spark.sql.shuffle.partitions"] == "3" and conf["spark.executor.memory"] == "1g"
    assert conf["spark.sql.session.timeZone"] == "UTC"


@pytest.mark.parametrize("table, fix", [({"mastr": "local"}, "known keys"), ({"master": " "}, "local"),
                                        ({"conf": {"spark.x": [1]}}, "string, number")])
def test_bad_spark_tables_are_config_errors_naming_the_fix(table, fix):
    from lab.errors import ConfigError

    with pytest.raises(ConfigError, match=fix):
        SparkSettings.from_table(table)


def test_a_second_master_in_one_process_is_refused(spark):
    from lab.errors import LabError

    with pytest.raises(LabError, match="one SparkContext per process"):
        spark_session(SparkSettings.from_table({"master": "local[1]"}))


def test_a_write_is_one_parquet_version_behind_an_atomic_pointer(fresh_store):
    import pyarrow.parquet as pq

    from lab.testing.stores import events

    fresh_store.write_source("events", events(6))
    first = fresh_store.layout.file("events")
    fresh_store.write_source("events", events(3))
    second = fresh_store.layout.file("events")
    assert first != second and pq.read_table(second).num_rows == 3
    assert fresh_store.read_source("events").num_rows == 3 and fresh_store.sources() == {"events": 3}
    fresh_store.write_source("events", events(2))
    assert not first.exists()  # the current version and the one before it are kept, no more


def test_bad_input_is_a_lab_error_naming_the_fix(fresh_store, tmp_path, capsys):
    """A key of another type than the source's, a hidden column name, and ``lab spark
    score`` in a lab without ``[tool.lab.spark]``: one line naming the fix, no traceback."""
    import pyarrow as pa

    from lab.cli import main
    from lab.errors import LabError
    from lab.testing.point_in_time import entity_rows, latest, source
    from lab.testing.stores import T0

    fresh_store.write_source("ev", source((1, T0, 1.0)))
    as_text = entity_rows((1, T0)).set_column(0, "K", pa.array(["1"]))
    with pytest.raises(LabError, match="cast the entity rows' column to int64"):
        fresh_store.get_historical_features(as_text, [latest()], "T")
    with pytest.raises(LabError, match="rename them"):
        fresh_store.write_source("other", pa.table({"__lab_row": [1]}))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "pyproject.toml").write_text("[tool.lab]\n")
    assert main(["--root", str(tmp_path / "plain"), "spark", "score", "--start", "2024-03-01"]) == 2
    assert "needs a [tool.lab.spark] table" in capsys.readouterr().err


# ------------------------------------------------ materialization through lab/features/materialize.py


def test_materialization_through_the_core_equals_the_duckdb_stores(tmp_path, fresh_store):
    """``materialize_views`` (full, then incremental) with the Spark store into SQLite gives
    the rows it gives with the DuckDB store, for a windowed and a latest-value view; the
    Spark store's ``latest_rows`` equals the generic path's."""
    import datetime as dt

    from lab.features.materialize import materialize_views, view_rows_at
    from lab.features.views import FeatureView
    from lab.testing.events import ITEM_LABEL_RATE, random_events
    from plugins.duckdb_offline import DuckDBOfflineStore
    from plugins.sqlite_online import SQLiteOnlineStore

    ev = random_events(n_users=15, n_items=8, nb_days=30, seed=5).to_arrow()
    last = FeatureView(name="last", entity="USER_ID", source="events", timestamp="EVENT_TIME",
                       features=("EVENT_ID", "AMOUNT"), ttl=dt.timedelta(days=2), label_delay=dt.timedelta(hours=1))
    views = [ITEM_LABEL_RATE, last]  # windows with a label delay, and latest values
    duck = DuckDBOfflineStore(tmp_path / "offline.duckdb")
    as_of, later = dt.datetime(2018, 4, 20, 12, 0), dt.datetime(2018, 4, 25, 8, 10)
    reads = {}
    for name, offline in (("spark", fresh_store), ("duckdb", duck)):
        offline.write_source("events", ev)
        online = SQLiteOnlineStore(tmp_path / f"{name}.db")
        modes = [m.mode for m in materialize_views(offline, online, views, as_of)]
        modes += [m.mode for m in materialize_views(offline, online, views, later)]
        assert modes == ["full"] * 2 + ["incremental"] * 2
        keys = {v.name: list(range(-1, 16)) if v.entity == "USER_ID" else list(range(-1, 9)) for v in views}
        reads[name] = {v.name: online.read(v, keys[v.name]) for v in views}
        online.close()
    assert reads["spark"] == reads["duckdb"]
    generic = view_rows_at(duck, last, later)
    assert fresh_store.latest_rows(last, later).to_pylist() == generic.to_pylist()


# ------------------------------------------------------------ batch scoring through Spark


def test_batch_scoring_through_spark_equals_the_model_on_duckdbs_features(boring_model, tiny_dataset, spark,
                                                                          tmp_path, capsys):
    """``score_window_spark`` (features in Spark, the registered model in ``mapInArrow``)
    writes one row per event of the window, by day, with the score the model gives on the
    DuckDB store's point-in-time features; a rerun of one day (``lab spark score``)
    replaces that day only; the core's ``lab score`` on the Spark store gives the same scores."""
    import datetime as dt
    import json

    import numpy as np
    import polars as pl

    from lab.config import load_config
    from lab.plugins import get_plugin_manager
    from lab.testing.boring import START
    from lab.testing.pytest_plugin import add_to_lab
    from plugins.duckdb_offline import DuckDBOfflineStore
    from plugins.spark_offline.scoring import score_window_spark

    root = boring_model.root
    duck = DuckDBOfflineStore(load_config(root).offline_store_path)  # the fixture's store, before Spark takes over
    add_to_lab(root, toml='[tool.lab.spark]\nmaster = "local[2]"\n')
    config = load_config(root)
    store = get_plugin_manager(config).hook.lab_offline_store(config=config)
    assert isinstance(store, SparkOfflineStore)
    store.write_source("events", tiny_dataset.frame.to_arrow())
    start, end = START.date() + dt.timedelta(days=10), START.date() + dt.timedelta(days=13)
    out = tmp_path / "predictions"
    spec, view = boring_model.spec, boring_model.view
    report = score_window_spark(store, root=root, spec=spec, views=[view], version=boring_model.version,
                                start=start, end=end, out_dir=out)

    window = tiny_dataset.frame.filter(pl.col("EVENT_TIME").dt.date().is_between(start, end))
    assert report["rows"] == window.height and len(report["partitions"]) == 4
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"date={start + dt.timedelta(days=i)}"
                                                                   for i in range(4)]
    features = pl.from_arrow(duck.get_historical_features(window.to_arrow(), [view], "EVENT_TIME"))
    want = boring_model.model.predict(features.select(spec.features).to_numpy().astype(np.float32))
    got = pl.read_parquet(out / "**" / "*.parquet", hive_partitioning=True).sort("EVENT_ID")
    assert got["EVENT_ID"].to_list() == window["EVENT_ID"].to_list()
    np.testing.assert_allclose(got["score"].to_numpy(), np.asarray(want, dtype=np.float64), rtol=1e-6, atol=1e-7)
    assert set(got["model_version"]) == {boring_model.version.version}
    assert got["date"].cast(pl.Date).to_list() == got["EVENT_TIME"].dt.date().to_list()

    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    # The command, in this process (its session is the module's): one day again.
    from lab.cli import main

    assert main(["--root", str(root), "spark", "score", "--model", f"boring@{boring_model.version.version}",
                 "--start", str(end), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["partitions"] == {str(end): window.filter(
        pl.col("EVENT_TIME").dt.date() == end).height}
    kept = [p for p in files if f"date={end}" not in str(p)]
    assert kept and all(p.exists() and p.stat().st_mtime_ns == files[p] for p in kept)
    assert pl.read_parquet(out / "**" / "*.parquet", hive_partitioning=True).height == window.height

    # The core's `lab score` (scan_source, then the store's retrieval per chunk) on the Spark store agrees.
    assert main(["--root", str(root), "score", "--model", f"boring@{boring_model.version.version}",
                 "--start", str(start), "--end", str(end), "--json"]) == 0
    core = pl.read_parquet(json.loads(capsys.readouterr().out)["output"] + "/**/*.parquet").sort("EVENT_ID")
    assert core["EVENT_ID"].to_list() == got["EVENT_ID"].to_list()
    np.testing.assert_allclose(core["score"].to_numpy(), got["score"].to_numpy(), rtol=1e-12)


# ---------------------------------------------------------------- the acceptance test


def test_the_fraud_training_set_built_by_spark_equals_duckdbs_row_for_row(tmp_path, fresh_store):
    """The fraud lab's training set (the simulator's transactions, both views, the
    request-time features) over a month, built on the Spark store and on the DuckDB
    store: the same rows in the same order, every integer, time and key equal, the
    floats equal within 1e-12 relative (the customer mean amounts add the same cents in
    another order)."""
    import datetime as dt

    import numpy as np
    import pyarrow as pa

    from lab.features.training import model_training_set
    from plugins.duckdb_offline import DuckDBOfflineStore
    from plugins.fraud import simulator
    from plugins.fraud.features import VIEWS
    from plugins.fraud.spec import fraud_spec

    tx = simulator.simulate(n_customers=80, n_terminals=150, nb_days=75, seed=3).to_arrow()
    duck = DuckDBOfflineStore(tmp_path / "offline.duckdb")
    assert fresh_store.write_source("transactions", tx) == duck.write_source("transactions", tx)
    spec = fraud_spec()
    start, end = dt.date(2018, 5, 15), dt.date(2018, 6, 14)
    spark_set, _ = model_training_set(fresh_store, VIEWS, spec, start, end)
    duck_set, _ = model_training_set(duck, VIEWS, spec, start, end)
    assert spark_set.schema == duck_set.schema
    assert spark_set.num_rows == duck_set.num_rows > 2000
    inexact = []
    for name in duck_set.column_names:
        a, b = spark_set.column(name), duck_set.column(name)
        if pa.types.is_floating(b.type):
            assert a.is_null().to_pylist() == b.is_null().to_pylist(), name
            x, y = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, equal_nan=True, err_msg=name)
            if not np.array_equal(x, y, equal_nan=True):
                inexact.append(name)
        else:
            assert a.to_pylist() == b.to_pylist(), name
    assert not [n for n in inexact if "AVG_AMOUNT" not in n]  # counts and fraud rates sum integers: exact
