"""Feature store speed beside its physical-limit anchors, in one interleaved run, on the
data of ``../shared/peers/gen_pit_data.py`` (seed 42, ttl 2 days, ids = rows / 10).

    .venv/bin/python benchmarks/bench_features_peers.py [--sizes 1000000[,10000000]]
        [--repeats 5] [--calls 1000] [--data-root /tmp/lab_peers_data] [--feast-python PY]

Three figures, each printed beside its anchor as a ratio (median of per-pair ratios; the
two sides of a pair run back to back, in alternating order, so load from other
processes hits both alike):

- **PIT retrieval**: ``DuckDBOfflineStore.get_historical_features`` (rows in input
  order, Arrow out) against ``duckdb_pit.pit_sql`` of the peers folder (one ASOF LEFT
  JOIN and a ttl CASE, Arrow out, no order asked for), both over the same table in the
  same DuckDB file, same process. The results are checked identical first (sorted by
  entity and time). 10M rows need ~10 GiB of memory and minutes: asked for by --sizes.
- **Materialize** (largest size up to 1M): ``lab.features.materialize.materialize`` into
  a fresh ``SQLiteOnlineStore`` against DuckDB latest-row-per-entity (QUALIFY
  row_number) + sqlite3 ``executemany`` into a fresh plain table (the Feast harness's
  anchor). Both read the same DuckDB table; the view's ttl is long enough that both
  hold every entity's latest row, and the values are checked equal.
- **Online read p50** for 1 and 100 random entities: the serving path
  (``read_with_watermark`` / ``read_many_with_watermark``) against a raw sqlite3
  ``SELECT ... WHERE entity_id IN (...)`` on the anchor table, both files warm.

With ``--feast-python`` (a venv with ``feast[duckdb]``) the peers' ``feast_pit.py`` and
``feast_online.py`` run at 1M too, each beside its own raw anchor (pandas in/out and Parquet
for PIT, the same DuckDB + sqlite3 anchors for materialize and reads); dividing the two
ratios gives Feast / ours, approximately (the anchors differ a little). For PIT the anchors
differ more (Feast's reads Parquet and converts pandas, ours runs on the stored table in
Arrow), so the absolute medians are printed too, for PIT and the online reads: each side
through its own interface (Feast: pandas in, ``to_df()`` out, ``get_online_features``;
ours: Arrow in and out, the serving read), Feast in its own process right after ours.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(PEERS))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import duckdb_pit  # noqa: E402  (the peers' anchor SQL)
from lab.features.materialize import materialize  # noqa: E402
from lab.features.views import FeatureView  # noqa: E402
from plugins.duckdb_offline import DuckDBOfflineStore  # noqa: E402
from plugins.sqlite_online import SQLiteOnlineStore  # noqa: E402

FEATURES = tuple(f"f{i}" for i in range(10))
SOURCE = "features"


def data_dir(root: Path, rows: int) -> Path:
    """The peers' data for ``rows`` entity and feature rows, generated once."""
    out = root / str(rows)
    if not (out / "meta.json").exists():
        print(f"generating {rows:,} rows into {out} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(PEERS / "gen_pit_data.py"), "--entity-rows", str(rows),
                        "--out-dir", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def view(ttl_s: int) -> FeatureView:
    return FeatureView(name="fv", entity="entity_id", source=SOURCE, timestamp="event_timestamp",
                       features=FEATURES, ttl=dt.timedelta(seconds=ttl_s))


def raw_pit(path: Path, entities: pa.Table, ttl_s: int) -> pa.Table:
    """The peers' ASOF join over the stored table (connection opened per call, like the store)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("entities", entities)
        sql = duckdb_pit.pit_sql("__x__", ttl_s).replace("read_parquet('__x__')", SOURCE)
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def ours_pit(store: DuckDBOfflineStore, entities: pa.Table, fv: FeatureView) -> pa.Table:
    return store.get_historical_features(entities, [fv], "event_timestamp")


def same_rows(a: pa.Table, b: pa.Table) -> None:
    keys = [("entity_id", "ascending"), ("event_timestamp", "ascending")]
    a, b = a.sort_by(keys), b.sort_by(keys)
    for c in ("entity_id", "event_timestamp", *FEATURES):
        if not a.column(c).equals(b.column(c)):
            raise SystemExit(f"PIT results differ in column {c}")


def pairs(fa, fb, repeats: int) -> tuple[list, list]:
    """``repeats`` timed pairs, the order alternating; returns the times of each side."""
    ta, tb = [], []
    for i in range(repeats):
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            fn, out = (fa, ta) if side == 0 else (fb, tb)
            gc.collect()
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ta, tb


def ratio_line(what: str, ours: list, anchor: list, unit: str = "s", goal: float | None = None) -> dict:
    r = [a / b for a, b in zip(ours, anchor)]
    med = statistics.median(r)
    scale = 1000 if unit == "ms" else 1
    goal_txt = "" if goal is None else f"  goal <= {goal}: {'met' if med <= goal else 'NOT met'}"
    print(f"{what:<38} ours {statistics.median(ours) * scale:9.3f} {unit}  anchor "
          f"{statistics.median(anchor) * scale:9.3f} {unit}  ratio {med:.2f} ({min(r):.2f}-{max(r):.2f}){goal_txt}")
    return {"what": what, "ours_median": statistics.median(ours), "anchor_median": statistics.median(anchor),
            "ratio_median": med, "ratio_min": min(r), "ratio_max": max(r)}


def bench_pit(folder: Path, data: Path, repeats: int) -> tuple[dict, DuckDBOfflineStore, int]:
    ttl_s = json.loads((data / "meta.json").read_text())["ttl_seconds"]
    store = DuckDBOfflineStore(folder / f"offline_{data.name}.duckdb")
    store.write_source(SOURCE, pq.read_table(data / "features.parquet"))
    entities = pq.read_table(data / "entities.parquet")
    fv = view(ttl_s)
    ours = ours_pit(store, entities, fv)
    if not ours.select(entities.column_names).equals(entities):
        raise SystemExit("get_historical_features did not keep the entity rows in order")
    same_rows(ours, raw_pit(store.path, entities, ttl_s))
    del ours
    to, ta = pairs(lambda: ours_pit(store, entities, fv), lambda: raw_pit(store.path, entities, ttl_s), repeats)
    return ratio_line(f"PIT {entities.num_rows:,} rows (identical)", to, ta, goal=1.1), store, ttl_s


def anchor_materialize(offline: Path, db: Path) -> None:
    if db.exists():
        db.unlink()
    con = duckdb.connect(str(offline), read_only=True)
    try:
        cols = ", ".join(FEATURES)
        rows = con.execute(f"SELECT entity_id, {cols} FROM {SOURCE} QUALIFY row_number() OVER "
                           "(PARTITION BY entity_id ORDER BY event_timestamp DESC) = 1").fetchall()
    finally:
        con.close()
    sc = sqlite3.connect(db)
    sc.execute(f"CREATE TABLE fv (entity_id INTEGER PRIMARY KEY, {', '.join(c + ' REAL' for c in FEATURES)})")
    with sc:
        sc.executemany(f"INSERT INTO fv VALUES ({', '.join(['?'] * 11)})", rows)
    sc.close()


def bench_materialize(folder: Path, store: DuckDBOfflineStore, repeats: int):
    fv = view(3650 * 86400)  # every entity's latest row stays within the ttl: the anchor's content
    as_of = max(pq_max(store), dt.datetime(2024, 2, 1, tzinfo=dt.timezone.utc))
    online_path = folder / "online.db"
    anchor_db = folder / "anchor.db"

    def ours():
        for p in folder.glob("online.db*"):
            p.unlink()
        online = SQLiteOnlineStore(online_path)
        materialize(store, online, [fv], as_of)
        online.close()

    to, ta = pairs(ours, lambda: anchor_materialize(store.path, anchor_db), repeats)
    online = SQLiteOnlineStore(online_path)
    sc = sqlite3.connect(anchor_db)
    ref = {r[0]: r[1:] for r in sc.execute("SELECT * FROM fv")}
    ids = sorted(ref)
    got = online.read(fv, ids[:2000])
    if any(tuple(g[c] for c in FEATURES) != ref[k] for k, g in zip(ids, got)):
        raise SystemExit("materialized values differ from the anchor's")
    return ratio_line(f"materialize {len(ids):,} entities", to, ta, goal=1.2), online, sc, fv, ids


def pq_max(store: DuckDBOfflineStore) -> dt.datetime:
    return pc.max(store.read_source(SOURCE, ["event_timestamp"]).column(0)).as_py()


def bench_online(online: SQLiteOnlineStore, sc: sqlite3.Connection, fv: FeatureView, ids: list,
                 calls: int) -> list[dict]:
    cols = ", ".join(FEATURES)
    rng = random.Random(7)
    out = []
    for b in (1, 100):
        batches = [rng.sample(ids, b) for _ in range(calls + 20)]
        if b == 1:
            def ours(batch):
                return online.read_with_watermark(fv, batch[0])
        else:
            def ours(batch):
                return online.read_many_with_watermark(fv, batch)

        def anchor(batch):
            q = f"SELECT entity_id, {cols} FROM fv WHERE entity_id IN ({','.join(['?'] * len(batch))})"
            rows = {r[0]: r for r in sc.execute(q, batch)}
            return [dict(zip(FEATURES, rows[i][1:])) if i in rows else None for i in batch]

        for batch in batches[:20]:  # warm both, check equal
            mine = ours(batch)
            rows = [mine[0]] if b == 1 else mine[0]
            if rows != anchor(batch):
                raise SystemExit(f"online read of {b} differs from the anchor's")
        to, ta = [], []
        for i, batch in enumerate(batches[20:]):  # per call, alternating which goes first
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                fn, times = (ours, to) if side == 0 else (anchor, ta)
                t0 = time.perf_counter()
                fn(batch)
                times.append(time.perf_counter() - t0)
        p50o, p50a = statistics.median(to), statistics.median(ta)
        # ratio of p50s over 10 blocks of calls: the spread of the ratio under load
        k = max(1, len(to) // 10)
        blocks_o = [statistics.median(to[j:j + k]) for j in range(0, len(to), k)]
        blocks_a = [statistics.median(ta[j:j + k]) for j in range(0, len(ta), k)]
        rec = ratio_line(f"online read p50, {b} entit{'y' if b == 1 else 'ies'}", blocks_o, blocks_a, "ms", goal=1.2)
        rec.update(p50_ours_ms=p50o * 1000, p50_anchor_ms=p50a * 1000, ratio_p50=p50o / p50a)
        out.append(rec)
    return out


def run_feast(python: str, data: Path, repeats: int, calls: int) -> dict:
    res = {}
    for script, extra in (("feast_pit.py", ["--repeat", str(repeats)]),
                          ("feast_online.py", ["--calls", str(calls), "--materialize-repeats", "1"])):
        proc = subprocess.run([python, str(PEERS / script), "--data-dir", str(data), *extra],
                              capture_output=True, text=True, cwd=PEERS)
        if proc.returncode:
            print(f"{script} failed: {proc.stderr[-2000:]}", file=sys.stderr)
            continue
        res[script] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000",
                        help="entity (= feature) rows, comma-separated; 10000000 needs ~10 GiB and minutes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "lab_peers_data")
    parser.add_argument("--feast-python", default=None, help="a python with feast[duckdb] installed")
    parser.add_argument("--json", type=Path, default=None, help="append the figures as one JSON line here")
    args = parser.parse_args()
    if args.feast_python and not shutil.which(args.feast_python):
        parser.error(f"--feast-python {args.feast_python}: no such executable (a python with feast[duckdb])")
    sizes = [int(s) for s in args.sizes.split(",")]
    if 10_000_000 not in sizes:
        print("(10M PIT skipped: pass --sizes 1000000,10000000 to run it)")
    print(f"duckdb {duckdb.__version__}, sqlite {sqlite3.sqlite_version}, load {os.getloadavg()[0]:.1f}")
    results: dict = {"sizes": sizes, "load_start": os.getloadavg()[0]}
    folder = Path(tempfile.mkdtemp(prefix="lab_featbench_"))
    try:
        small = None
        for n in sizes:
            rec, store, _ = bench_pit(folder, data_dir(args.data_root, n), args.repeats)
            results[f"pit_{n}"] = rec
            if n <= 1_000_000:
                small = store
            else:
                store.path.unlink()
        if small is not None:
            rec, online, sc, fv, ids = bench_materialize(folder, small, args.repeats)
            results["materialize"] = rec
            results["online"] = bench_online(online, sc, fv, ids, args.calls)
            online.close()
            sc.close()
        if args.feast_python:
            feast = run_feast(args.feast_python, data_dir(args.data_root, 1_000_000), args.repeats, args.calls)
            results["feast"] = feast
            pit = feast.get("feast_pit.py")
            if pit and "pit_1000000" in results:
                feast_ratio = pit.get("ratio_feast_over_duckdb_median_of_pairs")
                ours_ratio = results["pit_1000000"]["ratio_median"]
                ours_s, feast_s = results["pit_1000000"]["ours_median"], pit.get("feast_median_s")
                print(f"Feast PIT 1M / its raw ASOF (pandas in/out, Parquet): {feast_ratio}; ours / raw: "
                      f"{ours_ratio:.2f}; Feast / ours by ratios ~ {feast_ratio / ours_ratio:.1f}")
                print(f"Feast PIT 1M {feast_s:.3f} s, ours {ours_s:.3f} s (medians, each in its own "
                      f"interface): Feast / ours {feast_s / ours_s:.1f} (goal >= 3)")
            onl = feast.get("feast_online.py")
            if onl:
                print(f"Feast materialize / anchor: {onl.get('ratio_materialize_feast_over_anchor')}; "
                      "online p50 Feast / anchor: "
                      + ", ".join(f"{b}: {r.get('ratio_p50_feast_over_anchor')}" for b, r in onl["online"].items()))
                for rec in results.get("online", []):
                    b = "1" if "1 entity" in rec["what"] else "100"
                    feast_ratio = onl["online"].get(b, {}).get("ratio_p50_feast_over_anchor")
                    if feast_ratio:
                        feast_ms = onl["online"][b]["feast"]["p50_ms"]
                        print(f"online read p50, {b}: Feast / ours by ratios ~ {feast_ratio / rec['ratio_p50']:.1f}; "
                              f"Feast {feast_ms:.3f} ms, ours {rec['p50_ours_ms']:.3f} ms: Feast / ours "
                              f"{feast_ms / rec['p50_ours_ms']:.1f} (goal >= 15)")
        else:
            print("(Feast skipped: pass --feast-python PATH to a python with feast[duckdb])")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["load_end"] = os.getloadavg()[0]
    print(f"load at end {results['load_end']:.1f}")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(results, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
