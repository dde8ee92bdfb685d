"""Point-in-time retrieval on local Spark beside DuckDB: same data, same views, same run.

    .venv/bin/python benchmarks/bench_spark_pit.py [--rows 1000000 10000000] [--entity-rows 100000]
                                                  [--repeats 3] [--master local[2]]

For each source size: random events of the demo's shape (``lab.testing.events``: users
acting on items, amounts, 0/1 labels on a 10-minute grid over 180 days; about 20 events
per user and 100 per item), written to both stores; a fixed number of entity rows (drawn
from the events, times shifted by up to a day); the demo's two windowed views
(``EVENT_VIEWS``: 12 features, one view with a 7-day label delay) and one latest-value
view. Each repeat times DuckDB then Spark on the same entity rows (interleaved, so a
noisy neighbour hits both); figures are medians. The first Spark call of each size is a
warm-up, reported apart (JIT, the first Python worker, Parquet footers), as is the JVM's
start. The two results are compared (integers equal, floats within 1e-12 relative)
before anything is printed as a ratio.

Local Spark on one machine is expected to be slower than DuckDB: the point of the Spark
store is the cluster it can run on, not one machine; the ratio says what moving costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from lab.features.views import FeatureView  # noqa: E402
from lab.testing.events import EVENT_VIEWS, SOURCE  # noqa: E402
from plugins.duckdb_offline import DuckDBOfflineStore  # noqa: E402
from plugins.spark_offline.session import spark_session, stop_session  # noqa: E402
from plugins.spark_offline.settings import SparkSettings  # noqa: E402
from plugins.spark_offline.store import SparkOfflineStore  # noqa: E402

LATEST = FeatureView(name="last_amount", entity="USER_ID", source=SOURCE, timestamp="EVENT_TIME",
                     features=("AMOUNT",), ttl=dt.timedelta(days=30))
VIEWS = [*EVENT_VIEWS, LATEST]
DAYS = 180
START = dt.datetime(2018, 4, 1)


def events(rows: int, seed: int = 0) -> pa.Table:
    """``rows`` events sorted by time: about 20 per user, 100 per item, over ``DAYS`` days."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, DAYS * 86_400 // 600, rows)) * 600
    start_us = int(START.replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    return pa.table({
        "EVENT_ID": pa.array(np.arange(rows, dtype=np.int64)),
        "EVENT_TIME": pa.array(start_us + seconds * 1_000_000, pa.int64()).view(pa.timestamp("us")),
        "USER_ID": pa.array(rng.integers(0, max(1, rows // 20), rows)),
        "ITEM_ID": pa.array(rng.integers(0, max(1, rows // 100), rows)),
        "AMOUNT": pa.array(np.round(rng.gamma(2.0, 30.0, rows), 2)),
        "LABEL": pa.array((rng.random(rows) < 0.1).astype(np.int64)),
    })


def entity_rows(source: pa.Table, n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, source.num_rows, n)
    shift = rng.integers(0, 86_400, n) * 1_000_000
    t = source.column("EVENT_TIME").combine_chunks().view(pa.int64()).to_numpy()[pick] + shift
    return pa.table({"USER_ID": source.column("USER_ID").take(pick), "ITEM_ID": source.column("ITEM_ID").take(pick),
                     "T": pa.array(t, pa.int64()).view(pa.timestamp("us"))})


def same(a: pa.Table, b: pa.Table) -> float:
    """The largest relative float difference; raises when integers or nulls differ."""
    worst = 0.0
    for name in b.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(y.type):
            if x.is_null().to_pylist() != y.is_null().to_pylist():
                raise AssertionError(f"{name}: nulls differ")
            u, v = x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False)
            ok = ~np.isnan(v)
            rel = np.abs(u[ok] - v[ok]) / np.maximum(np.abs(v[ok]), 1e-300)
            worst = max(worst, float(rel.max()) if rel.size else 0.0)
            if worst > 1e-12:
                raise AssertionError(f"{name}: relative difference {worst}")
        elif not x.equals(y):
            raise AssertionError(f"{name}: values differ")
    return worst


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="source sizes (event rows)")
    p.add_argument("--entity-rows", type=int, default=100_000, help="entity rows per retrieval (fixed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="6g", help="spark.driver.memory (local mode: the executors too)")
    args = p.parse_args()
    settings = SparkSettings.from_table({"master": args.master, "conf": {
        "spark.driver.memory": args.driver_memory, "spark.sql.shuffle.partitions": 8}})
    jvm, _ = timed(lambda: spark_session(settings).range(1).count())
    print(f"JVM and SparkSession start (with one trivial job): {jvm:.1f} s ({args.master})", flush=True)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rows in args.rows:
                source = events(rows)
                probes = entity_rows(source, args.entity_rows)
                duck = DuckDBOfflineStore(Path(tmp) / f"duck{rows}.duckdb")
                spark = SparkOfflineStore(Path(tmp) / f"spark{rows}", settings)
                w_duck, _ = timed(lambda: duck.write_source(SOURCE, source))
                w_spark, _ = timed(lambda: spark.write_source(SOURCE, source))
                warm, first = timed(lambda: spark.get_historical_features(probes, VIEWS, "T"))
                times = {"duckdb": [], "spark": []}
                for _ in range(args.repeats):
                    d, want = timed(lambda: duck.get_historical_features(probes, VIEWS, "T"))
                    s, got = timed(lambda: spark.get_historical_features(probes, VIEWS, "T"))
                    times["duckdb"].append(d)
                    times["spark"].append(s)
                worst = same(got, want)
                med = {k: statistics.median(v) for k, v in times.items()}
                row = {"event_rows": rows, "entity_rows": args.entity_rows, "views": len(VIEWS),
                       "features": sum(len(v.feature_names) for v in VIEWS), "repeats": args.repeats,
                       "write_s": {"duckdb": round(w_duck, 2), "spark_parquet": round(w_spark, 2)},
                       "spark_first_call_s": round(warm, 2),
                       "median_s": {k: round(v, 2) for k, v in med.items()},
                       "all_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
                       "spark_over_duckdb": round(med["spark"] / med["duckdb"], 1),
                       "max_rel_float_diff": worst}
                results.append(row)
                print(f"{rows:>11,} event rows, {args.entity_rows:,} entity rows: DuckDB {med['duckdb']:.2f} s, "
                      f"Spark {med['spark']:.2f} s (first call {warm:.1f} s): Spark/DuckDB = "
                      f"{med['spark'] / med['duckdb']:.1f}x; results equal (floats within {worst:.1e})", flush=True)
                del source, first, got, want
    finally:
        stop_session()
    print(json.dumps({"jvm_start_s": round(jvm, 1), "master": args.master, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
