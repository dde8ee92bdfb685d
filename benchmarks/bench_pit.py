"""Point-in-time retrieval throughput: ``get_historical_features`` against a hand-written
DuckDB ASOF join on the same file, same data, same run.

    .venv/bin/python benchmarks/bench_pit.py [--source-rows 500000] [--entity-rows 50000]

The baseline is what a user would write by hand for a latest-value feature: one ASOF
LEFT JOIN on the entity and time, rows kept in input order, fetched as Arrow. The store
does the same join plus its checks, the ttl bound and the tie rule. Both results are
compared before timing. For scale, two windowed views of the demo's shape
(``lab.testing.events.EVENT_VIEWS``: 12 features, one with a label delay, 4 ASOF joins
each over running totals) are timed too. Figures are medians of --repeats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from lab.features.views import FeatureView  # noqa: E402
from lab.testing.events import EVENT_VIEWS, SOURCE, random_events  # noqa: E402
from plugins.duckdb_offline import DuckDBOfflineStore  # noqa: E402

LATEST = FeatureView(name="last_amount", entity="USER_ID", source=SOURCE,
                     timestamp="EVENT_TIME", features=("AMOUNT",), ttl=dt.timedelta(days=3650))


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def hand_written_asof(path: Path, entity_rows: pa.Table) -> pa.Table:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = entity_rows.append_column("__row", pa.array(np.arange(entity_rows.num_rows)))
        con.register("entity_rows", rows)
        return con.sql(
            "SELECT e.USER_ID, e.T, s.AMOUNT FROM entity_rows e "
            f"ASOF LEFT JOIN {SOURCE} s ON e.USER_ID = s.USER_ID AND e.T >= s.EVENT_TIME "
            "ORDER BY e.__row"
        ).to_arrow_table()
    finally:
        con.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-rows", type=int, default=500_000)
    parser.add_argument("--entity-rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    days = 120
    users = max(1, round(args.source_rows / (days * 1.0)))
    events = random_events(n_users=users, n_items=users * 2, nb_days=days, events_per_day=1.0, grid_s=1, seed=0)
    rng = np.random.default_rng(1)
    times = events["EVENT_TIME"].to_numpy()
    entity_rows = pa.table({
        "USER_ID": pa.array(rng.integers(0, users, args.entity_rows), pa.int64()),
        "ITEM_ID": pa.array(rng.integers(0, users * 2, args.entity_rows), pa.int64()),
        "T": pa.array(rng.choice(times, args.entity_rows) + np.timedelta64(1, "s"), pa.timestamp("us")),
    })
    with tempfile.TemporaryDirectory() as folder:
        store = DuckDBOfflineStore(Path(folder) / "bench.duckdb")
        store.write_source(SOURCE, events.to_arrow())
        ours = store.get_historical_features(entity_rows, [LATEST], "T").column("AMOUNT")
        theirs = hand_written_asof(store.path, entity_rows).column("AMOUNT")
        assert ours.equals(theirs), "store and hand-written ASOF disagree"

        n = entity_rows.num_rows
        t_store, _ = median_seconds(lambda: store.get_historical_features(entity_rows, [LATEST], "T"), args.repeats)
        t_hand, _ = median_seconds(lambda: hand_written_asof(store.path, entity_rows), args.repeats)
        t_windows, _ = median_seconds(lambda: store.get_historical_features(entity_rows, EVENT_VIEWS, "T"), args.repeats)

    print(f"source rows {events.height:,}, entity rows {n:,}, median of {args.repeats}, duckdb {duckdb.__version__}")
    print(f"latest value, get_historical_features : {n / t_store:>12,.0f} rows/s  ({t_store * 1000:7.1f} ms)")
    print(f"latest value, hand-written ASOF join   : {n / t_hand:>12,.0f} rows/s  ({t_hand * 1000:7.1f} ms)")
    print(f"ratio store / hand-written (throughput): {t_hand / t_store:.2f}")
    print(f"two views, 12 windowed features        : {n / t_windows:>12,.0f} rows/s  ({t_windows * 1000:7.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
