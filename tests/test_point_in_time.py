"""Point-in-time retrieval: the contract suite on the DuckDB store, time zones, and the
online-equals-offline check (materialize at T, compare with a retrieval at T, and what
serving uses at times past the ttl or before T with the retrieval at those times)."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pyarrow as pa
import pytest

from lab.features.materialize import AS_OF_COLUMN, entity_rows_at, materialize
from lab.serving.scoring import FeatureAssembler
from lab.testing.point_in_time import DAY, HOUR, PointInTimeContract, entity_rows, latest, source, windowed
from lab.testing.events import EVENT_VIEWS, SOURCE, random_events
from lab.testing.stores import SECOND, T0
from plugins.duckdb_offline import DuckDBOfflineStore
from plugins.sqlite_online import SQLiteOnlineStore


@pytest.fixture
def offline(tmp_path):
    return DuckDBOfflineStore(tmp_path / "offline.duckdb")


class TestDuckDBPointInTime(PointInTimeContract):
    @pytest.fixture
    def store(self, offline):
        return offline


class TestDuckDBPointInTimeSQLJoin(PointInTimeContract):
    """The same contract with every latest-value view sent to DuckDB's ASOF join."""

    @pytest.fixture
    def store(self, offline):
        offline.in_memory_join_cells = 0
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
    events = random_events(n_users=60, n_items=30, nb_days=50, seed=11)
    as_of = dt.datetime(2018, 5, 9, 13, 20, 0)  # on the 10-minute grid: rows sit on bounds
    assert_online_equals_offline(tmp_path, offline, events, SOURCE, "EVENT_TIME", EVENT_VIEWS, as_of)


def assert_online_equals_offline(tmp_path, offline, events: pl.DataFrame, source_name: str, time_column: str,
                                 views, as_of: dt.datetime) -> None:
    """Materialize ``views`` over ``events`` at ``as_of``; for 15 sampled entities of each
    view the online row, and what serving uses, equal the offline retrieval at ``as_of``.
    Past the ttl both give the view's defaults (the retrieval over the rows known at T)."""
    offline.write_source(source_name, events.to_arrow())
    online = SQLiteOnlineStore(tmp_path / "online.db")
    written = materialize(offline, online, views, as_of)
    rng = random.Random(5)
    for view in views:
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
        assert served_rows(online, view, keys, as_of) == expected
        # Past the ttl: the online values summarize the rows known at T (e + delay <= T);
        # the retrieval at t over exactly those rows sees none of them and gives the
        # view's defaults, and serving must use the same.
        known = DuckDBOfflineStore(tmp_path / f"known-{view.name}.duckdb")
        known.write_source(source_name, events.filter(pl.col(time_column) + view.label_delay <= as_of).to_arrow())
        for past in (view.ttl + SECOND, view.ttl + 40 * DAY):
            at = as_of + past
            probes = pa.table({view.entity: keys, "T": pa.array([at] * len(keys), pa.timestamp("us"))})
            offline_at = known.get_historical_features(probes, [view], "T").select(view.feature_names).to_pylist()
            assert offline_at == [view.defaults] * len(keys)
            assert served_rows(online, view, keys, at) == offline_at
    online.close()


def served_rows(online, view, keys, when) -> list[dict]:
    """The values serving uses for each key at ``when``: the rows the assembler hands the
    feature plugin, with an unusable row (None) replaced by the view's defaults."""
    seen: dict = {}
    assembler = FeatureAssembler(online, [view], lambda request, rows: seen.update(rows) or {}, [])
    out = []
    for key in keys:
        assembled = assembler.assemble({view.entity: key}, when)
        row = seen[view.name]
        assert assembled.defaults[view.name] == (row is None)
        out.append(view.defaults if row is None else row)
    return out


def test_serving_a_latest_value_follows_the_ttl_edges_of_the_offline_join(tmp_path, offline):
    """A latest-value view materialized at T with a row known exactly at T: at T + ttl the
    row is still visible offline and served online; a second later neither uses it, and
    serving flags the defaults as stale. A second before T the row is not known yet:
    offline gives null, and serving gives the defaults too, flagged as from the future."""
    view = latest(delay=HOUR, ttl=HOUR)
    as_of = T0
    offline.write_source("ev", source((1, as_of - HOUR, 5.0), (2, as_of - HOUR - SECOND, 6.0)))
    online = SQLiteOnlineStore(tmp_path / "online.db")
    materialize(offline, online, [view], as_of)
    assert online.read(view, [1, 2]) == [{"X": 5.0}, {"X": 6.0}]
    assembler = FeatureAssembler(online, [view], lambda request, rows: {}, [])
    times = {as_of + HOUR: True, as_of + HOUR + SECOND: False, as_of - SECOND: False}
    for at, visible in times.items():
        offline_at = offline.get_historical_features(entity_rows((1, at)), [view], "T").select(["X"]).to_pylist()
        assert offline_at == [{"X": 5.0 if visible else None}]
        assert served_rows(online, view, [1], at) == offline_at
    for at in times:
        fresh = assembler.assemble({"K": 1}, at).freshness[view.name]
        assert (fresh.stale, fresh.future) == (at > as_of + HOUR, at < as_of)
    assert assembler.counts() == {"stale": 1, "future": 1}
    online.close()
