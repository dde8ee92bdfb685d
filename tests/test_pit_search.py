"""The in-memory latest-value join (``plugins.duckdb_offline.asof``) on the inputs its
integer keys are built from: text and mixed-width keys, unsigned keys past int64, times
spread too far for one int64 key, sub-microsecond and zoned entity times. Each case is
held to the brute-force oracle and to DuckDB's ASOF join over the same file."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pyarrow as pa
import pytest

from lab.features.views import FeatureView
from lab.testing.reference import reference_features
from plugins.duckdb_offline import DuckDBOfflineStore
from plugins.duckdb_offline.asof import epoch_us

UTC = dt.timezone.utc


def view(ttl=dt.timedelta(days=3), delay=dt.timedelta(0)) -> FeatureView:
    return FeatureView(name="v", entity="k", source="ev", timestamp="ts", features=("x", "s"), ttl=ttl,
                       label_delay=delay)


def both_paths(tmp_path, source: pa.Table, probes: pa.Table, fv: FeatureView) -> pa.Table:
    """The search path's result, after checking it equals the SQL join's and the oracle's."""
    store = DuckDBOfflineStore(tmp_path / "offline.duckdb")
    store.write_source("ev", source)
    searched = store.get_historical_features(probes, [fv], "t")
    store.in_memory_join_cells = 0
    joined = store.get_historical_features(probes, [fv], "t")
    assert searched.equals(joined)
    want = reference_features({"ev": source}, probes, [fv], "t")
    assert searched.select(list(fv.features)).to_pylist() == want
    return searched


def random_rows(rng: random.Random, keys: list, n: int, t0: dt.datetime, spread_s: int) -> pa.Table:
    ks = [rng.choice(keys) for _ in range(n)]
    ts = [t0 + dt.timedelta(seconds=rng.randrange(spread_s)) for _ in range(n)]
    return pa.table({"k": ks, "ts": pa.array(ts, pa.timestamp("us")),
                     "x": pa.array([rng.choice([None, rng.random()]) for _ in range(n)], pa.float64()),
                     "s": pa.array([rng.choice([None, "a", "b", "c"]) for _ in range(n)], pa.string())})


def probe_rows(rng: random.Random, keys: list, n: int, t0: dt.datetime, spread_s: int, unit="us", tz=None):
    ts = [t0 + dt.timedelta(seconds=rng.randrange(-10, spread_s + 10)) for _ in range(n)]
    return pa.table({"k": [rng.choice(keys) for _ in range(n)], "t": pa.array(ts, pa.timestamp(unit, tz))})


def test_text_keys_with_ties_and_unknown_entities(tmp_path):
    rng = random.Random(1)
    t0 = dt.datetime(2024, 5, 1)
    source = random_rows(rng, ["a", "b", "ab", "", "é"], 300, t0, 40)  # 300 rows in 40 s: many ties
    probes = probe_rows(rng, ["a", "b", "ab", "", "é", "zz", None], 200, t0, 40)
    got = both_paths(tmp_path, source, probes, view(ttl=dt.timedelta(seconds=7), delay=dt.timedelta(seconds=2)))
    assert got.column("x").null_count < got.num_rows  # some rows found a value


def test_entity_rows_with_a_narrower_integer_key(tmp_path):
    rng = random.Random(2)
    t0 = dt.datetime(2024, 5, 1)
    source = random_rows(rng, [1, 2, 3, 2**40], 200, t0, 100)
    probes = probe_rows(rng, [1, 2, 3, 7], 100, t0, 100).cast(pa.schema([("k", pa.int32()), ("t", pa.timestamp("us"))]))
    both_paths(tmp_path, source, probes, view(ttl=dt.timedelta(seconds=30)))


def test_unsigned_keys_past_int64_fall_back_to_the_sql_join(tmp_path):
    big = 2**63 + 5
    t0 = dt.datetime(2024, 5, 1)
    source = pa.table({"k": pa.array([big, 1, big], pa.uint64()),
                       "ts": pa.array([t0, t0, t0 + dt.timedelta(seconds=1)], pa.timestamp("us")),
                       "x": [1.0, 2.0, 3.0], "s": ["p", "q", "r"]})
    probes = pa.table({"k": pa.array([big, 1, 2], pa.uint64()),
                       "t": pa.array([t0 + dt.timedelta(seconds=5)] * 3, pa.timestamp("us"))})
    got = both_paths(tmp_path, source, probes, view())
    assert got.column("x").to_pylist() == [3.0, 2.0, None]


def test_times_spread_over_millennia_use_ranked_keys(tmp_path):
    """Twenty entities with rows from year 1 to 9999: ``codes * span`` would pass 2^62
    microseconds, so the join ranks the times instead."""
    rng = random.Random(3)
    keys = list(range(20))
    times = [dt.datetime(1, 1, 2), dt.datetime(1970, 1, 1), dt.datetime(5000, 6, 1), dt.datetime(9999, 12, 30)]
    rows = [(k, t + dt.timedelta(seconds=rng.randrange(3))) for k in keys for t in times]
    source = pa.table({"k": [k for k, _ in rows], "ts": pa.array([t for _, t in rows], pa.timestamp("us")),
                       "x": [rng.random() for _ in rows], "s": [str(i) for i in range(len(rows))]})
    probes = pa.table({"k": [rng.choice(keys + [99]) for _ in range(60)],
                       "t": pa.array([rng.choice(times) + dt.timedelta(seconds=rng.randrange(-1, 5)) for _ in range(60)],
                                     pa.timestamp("us"))})
    got = both_paths(tmp_path, source, probes, view(ttl=dt.timedelta(seconds=2)))
    assert 0 < got.column("x").null_count < got.num_rows


def test_nanosecond_and_zoned_entity_times_round_down_to_the_microsecond(tmp_path):
    t0 = dt.datetime(2024, 5, 1)
    source = pa.table({"k": [1, 1], "ts": pa.array([t0, t0 + dt.timedelta(microseconds=1)], pa.timestamp("us")),
                       "x": [1.0, 2.0], "s": ["a", "b"]})
    base = (t0.replace(tzinfo=UTC) - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1) * 1000
    ns = [base + 999, base + 1000, base + 1999]  # 0.999 µs after t0 is still t0
    for tz in (None, "UTC", "Europe/Paris"):
        probes = pa.table({"k": [1, 1, 1], "t": pa.array(ns, pa.timestamp("ns", tz))})
        store = DuckDBOfflineStore(tmp_path / f"o{tz}.duckdb".replace("/", "_"))
        store.write_source("ev", source)
        assert store.get_historical_features(probes, [view()], "t").column("x").to_pylist() == [1.0, 2.0, 2.0]


def test_epoch_us_rounds_down_before_1970_like_duckdb():
    ns = pa.array([-1500, -1000, -1, 0, 1500], pa.timestamp("ns"))
    assert epoch_us(ns).tolist() == [-2, -1, -1, 0, 1]
    assert epoch_us(pa.array([-1, 1], pa.date32())).tolist() == [-86_400_000_000, 86_400_000_000]
    assert epoch_us(pa.chunked_array([pa.array([1, 2], pa.timestamp("s"))])).tolist() == [1_000_000, 2_000_000]
    assert epoch_us(pa.array(np.array([7], dtype=np.int64), pa.timestamp("ms"))).tolist() == [7000]


def test_rows_deleted_by_hand_leave_rowid_gaps_and_the_sql_join_answers(tmp_path):
    import duckdb

    t0 = dt.datetime(2024, 5, 1)
    rng = random.Random(5)
    store = DuckDBOfflineStore(tmp_path / "offline.duckdb")
    store.write_source("ev", random_rows(rng, [1, 2, 3], 60, t0, 30))
    con = duckdb.connect(str(store.path))
    con.execute("DELETE FROM ev WHERE rowid % 3 = 0")
    left = con.sql("SELECT * FROM ev").to_arrow_table()
    con.close()
    probes = probe_rows(rng, [1, 2, 3], 40, t0, 30)
    fv = view(ttl=dt.timedelta(seconds=10))
    got = store.get_historical_features(probes, [fv], "t")
    assert got.select(["x", "s"]).to_pylist() == reference_features({"ev": left}, probes, [fv], "t")


class _Generic(DuckDBOfflineStore):
    """The same store without ``latest_rows``: materialization's generic path."""

    def latest_rows(self, view, as_of):
        return None


@pytest.mark.parametrize("zone", [None, "UTC"])
def test_latest_rows_equal_the_generic_materialization_rows(tmp_path, zone):
    from lab.features.materialize import view_rows_at

    rng = random.Random(6)
    t0 = dt.datetime(2024, 5, 1)
    source = random_rows(rng, [1, 2, 3, 4, 5, 6], 200, t0, 60)
    times = source.column("ts").to_pylist()
    times[:5] = [None] * 5
    source = source.set_column(1, "ts", pa.array(times, pa.timestamp("us", zone)))
    source = pa.concat_tables([source, pa.table({"k": [9, None], "ts": pa.array([None, t0], pa.timestamp("us", zone)),
                                                 "x": [1.0, 2.0], "s": ["only a null time", "no key"]})])
    fast, generic = DuckDBOfflineStore(tmp_path / "a.duckdb"), _Generic(tmp_path / "b.duckdb")
    fast.write_source("ev", source)
    generic.write_source("ev", source)
    for fv in (view(ttl=dt.timedelta(seconds=9), delay=dt.timedelta(seconds=3)), view(ttl=dt.timedelta(days=1))):
        for as_of in (t0 - dt.timedelta(seconds=1), t0 + dt.timedelta(seconds=20),
                      (t0 + dt.timedelta(seconds=70)).replace(tzinfo=UTC)):
            got = fast.latest_rows(fv, as_of)
            assert got is not None
            want = view_rows_at(generic, fv, as_of)
            order = [("k", "ascending")]
            assert got.sort_by(order).equals(want.sort_by(order)), (fv, as_of)
            assert 9 in got.column("k").to_pylist()


def test_numeric_columns_without_nulls_keep_their_types(tmp_path):
    """Numeric features without nulls are read and gathered through numpy: the widths
    (int8 to uint64, float32) come out as DuckDB's Arrow export gives them."""
    rng = random.Random(7)
    t0 = dt.datetime(2024, 5, 1)
    n = 120
    source = pa.table({"k": [rng.choice([1, 2, 3]) for _ in range(n)],
                       "ts": pa.array([t0 + dt.timedelta(seconds=rng.randrange(40)) for _ in range(n)], pa.timestamp("us")),
                       "a": pa.array([rng.randrange(-100, 100) for _ in range(n)], pa.int8()),
                       "b": pa.array([rng.randrange(0, 2**40) for _ in range(n)], pa.uint64()),
                       "c": pa.array([rng.random() for _ in range(n)], pa.float32()),
                       "d": pa.array([rng.randrange(-2**31, 2**31) for _ in range(n)], pa.int32())})
    probes = probe_rows(rng, [1, 2, 3, 4], 50, t0, 40)
    fv = FeatureView(name="v", entity="k", source="ev", timestamp="ts", features=("a", "b", "c", "d"),
                     ttl=dt.timedelta(seconds=8))
    searched = both_paths(tmp_path, source, probes, fv)
    assert [searched.schema.field(f).type for f in "abcd"] == [pa.int8(), pa.uint64(), pa.float32(), pa.int32()]
    assert 0 < searched.column("a").null_count < searched.num_rows
