"""Point-in-time retrieval: the contract suite on the DuckDB store, time zones, and the
online-equals-offline check (materialize at T, compare with a retrieval at T)."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest

from lab.features.materialize import AS_OF_COLUMN, entity_rows_at, materialize
from lab.testing.point_in_time import PointInTimeContract, entity_rows, source, windowed
from lab.testing.stores import SECOND, T0
from lab.testing.transactions import random_transactions
from plugins.duckdb_offline import DuckDBOfflineStore
from plugins.fraud_features import VIEWS
from plugins.sqlite_online import SQLiteOnlineStore


@pytest.fixture
def offline(tmp_path):
    return DuckDBOfflineStore(tmp_path / "offline.duckdb")


class TestDuckDBPointInTime(PointInTimeContract):
    @pytest.fixture
    def store(self, offline):
        return offline


def test_aware_entity_times_are_compared_in_utc_with_naive_source_times(offline):
    offline.write_source("ev", source((1, T0, 1.0), (1, T0 + SECOND, 10.0)))
    paris = dt.timezone(dt.timedelta(hours=1))
    aware = pa.table({"K": [1, 1], "T": pa.array([T0.replace(tzinfo=dt.timezone.utc).astimezone(paris),
                                                  (T0 + SECOND).replace(tzinfo=dt.timezone.utc)],
                                                 pa.timestamp("us", tz="Europe/Paris"))})
    got = offline.get_historical_features(aware, [windowed()], "T").column("N").to_pylist()
    assert got == [1, 2]


def test_date_entity_times_mean_midnight(offline):
    offline.write_source("ev", source((1, T0.replace(hour=0), 1.0), (1, T0.replace(hour=0) + SECOND, 2.0)))
    rows = pa.table({"K": [1], "D": pa.array([T0.date()], pa.date32())})
    assert offline.get_historical_features(rows, [windowed()], "D").column("N").to_pylist() == [1]


def test_empty_entity_rows_give_empty_typed_columns(offline):
    offline.write_source("ev", source((1, T0, 1.0)))
    out = offline.get_historical_features(entity_rows((1, T0)).slice(0, 0), [windowed()], "T")
    assert out.num_rows == 0
    assert out.schema.field("N").type == pa.int64() and out.schema.field("M").type == pa.float64()


def test_online_values_equal_offline_point_in_time_values(tmp_path, offline):
    """Materialize at T; for sampled entities the online row equals the retrieval at T."""
    tx = random_transactions(n_customers=60, n_terminals=30, nb_days=50, seed=11)
    offline.write_source("transactions", tx.to_arrow())
    online = SQLiteOnlineStore(tmp_path / "online.db")
    as_of = dt.datetime(2018, 5, 9, 13, 20, 0)  # on the 10-minute grid: rows sit on bounds
    written = materialize(offline, online, VIEWS, as_of)
    rng = random.Random(5)
    for view in VIEWS:
        everyone = entity_rows_at(offline, view, as_of)
        assert written[view.name] == everyone.num_rows
        sample = everyone.take(sorted(rng.sample(range(everyone.num_rows), 15)))
        # a fresh retrieval over just the sample, at T
        offline_rows = offline.get_historical_features(sample, [view], AS_OF_COLUMN)
        expected = offline_rows.select(view.feature_names).to_pylist()
        keys = sample.column(view.entity).to_pylist()
        assert online.read(view, keys) == expected
        assert online.watermark(view) == as_of
        assert any(row[view.feature_names[0]] > 0 for row in expected)  # not all empty windows
    online.close()
