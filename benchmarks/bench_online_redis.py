"""Online read latency of the Redis online store beside the SQLite one, each against its raw
client on the same keys, interleaved in one run.

    .venv/bin/python benchmarks/bench_online_redis.py [--entities 100000] [--calls 2000] [--rounds 5]

The rows have the shape of the peers' data (``../shared/peers/gen_pit_data.py``: an int64
``entity_id`` and ten float64 features f0..f9; its 1M-row set has 100,000 ids), seeded.
Both stores are written with the same rows (the write is timed once, for scale). Then,
for 1 and 100 random existing ids per call:

- ``redis store``: ``RedisOnlineStore.read_many_with_watermark`` (rows and watermark in
  one HMGET: the server's path), and ``read_with_watermark`` for one id;
- ``redis raw``: one redis-py HMGET of the same fields of the same hash, each packed
  row unpacked into a dict by one ``struct`` call (what a hand-written reader of that
  layout does, without the watermark and the null mask);
- ``sqlite store``: ``SQLiteOnlineStore.read_many_with_watermark``;
- ``sqlite raw``: sqlite3 ``SELECT ... WHERE entity_id IN (...)`` on the store's own
  table, rows turned into dicts.

The targets take turns call by call (the same ids for each in a turn, in a random order
each turn: a call right after another Redis call finds redis-server awake, one after a
SQLite call does not, and a fixed order biased the ratios by up to 1.7x), so a burst of
load on the shared machine hits them alike; each round times ``--calls``
calls per target after a warm-up, and the p50 per target is the median over rounds of
each round's p50.
Ratios are store / raw of the same backend, and Redis store / SQLite store. A
redis-server (``/usr/bin/redis-server``) is started on a free 127.0.0.1 port with no
persistence and stopped by its PID, unless ``--url`` names one (then ``--key-prefix``
keeps the benchmark's keys apart; they are deleted at the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import redis  # noqa: E402

from lab.features.views import FeatureView  # noqa: E402
from plugins.redis_online.store import RedisOnlineSettings, RedisOnlineStore  # noqa: E402
from plugins.sqlite_online.store import SQLiteOnlineStore  # noqa: E402

FEATURES = tuple(f"f{i}" for i in range(10))
VIEW = FeatureView(name="fv", entity="entity_id", source="features", timestamp="event_timestamp",
                   features=FEATURES, ttl=dt.timedelta(days=3650))
AS_OF = dt.datetime(2024, 1, 31)


def rows(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns = {"entity_id": pa.array(np.arange(n, dtype=np.int64))}
    columns.update({f: pa.array(rng.normal(size=n)) for f in FEATURES})
    return pa.table(columns)


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own session, so its own CPU share, like a service
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.02)
    client.close()
    return proc, url


def targets(redis_store: RedisOnlineStore, sqlite_store: SQLiteOnlineStore, url: str, db: Path):
    """name -> fn(keys), each returning the rows (dicts or None) for ``keys``."""
    client = redis.Redis.from_url(url)
    live = redis_store._live(VIEW)  # the same hash the store reads
    names = VIEW.feature_names
    n = len(names)
    unpack = struct.Struct(f"<{n}dqq{(n + 2 + 7) // 8}s").unpack_from  # the store's packed row (codec.py)

    def redis_raw(keys):
        return [None if v is None else dict(zip(names, unpack(v, 1)))
                for v in client.hmget(live, [str(k) for k in keys])]

    con = sqlite3.connect(db)
    table = f'"view_fv__{VIEW.version}"'
    columns = ", ".join(["entity_id", *names])

    def sqlite_raw(keys):
        found = con.execute(f"SELECT {columns} FROM {table} WHERE entity_id IN ({', '.join('?' * len(keys))})",
                            keys).fetchall()
        by_key = {r[0]: dict(zip(names, r[1:])) for r in found}
        return [by_key.get(k) for k in keys]

    def one(store):
        return lambda keys: [store.read_with_watermark(VIEW, keys[0])[0]]

    return {
        "redis store": lambda keys: redis_store.read_many_with_watermark(VIEW, keys)[0],
        "redis raw": redis_raw,
        "sqlite store": lambda keys: sqlite_store.read_many_with_watermark(VIEW, keys)[0],
        "sqlite raw": sqlite_raw,
        "redis store (read_with_watermark)": one(redis_store),
        "sqlite store (read_with_watermark)": one(sqlite_store),
    }, lambda: (client.close(), con.close())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per target, batch size and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--url", help="an existing Redis (default: start one)")
    ap.add_argument("--key-prefix", default="bench:online:")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_online_redis_"))
    proc = None
    url = args.url
    if url is None:
        proc, url = start_redis(work)
    try:
        data = rows(args.entities, args.seed)
        redis_store = RedisOnlineStore(RedisOnlineSettings(url=url, key_prefix=args.key_prefix))
        sqlite_store = SQLiteOnlineStore(work / "online.db")
        written = {}
        for name, store in (("redis", redis_store), ("sqlite", sqlite_store)):
            t0 = time.perf_counter()
            store.write(VIEW, data, AS_OF)
            written[name] = time.perf_counter() - t0
        fns, close = targets(redis_store, sqlite_store, url, work / "online.db")
        rng = np.random.default_rng(args.seed + 1)
        expected = data.slice(0, 3).to_pylist()
        for name, fn in fns.items():  # every target gives the same rows before anything is timed
            got = fn([2, 0, 1])
            assert got[0] == {f: expected[2][f] for f in FEATURES}, (name, got)
        results: dict = {}
        for batch in (1, 100):
            names = [n for n in fns if batch == 1 or "read_with_watermark" not in n]
            per_round: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
                keys = rng.integers(0, args.entities, size=(args.warmup + args.calls, batch)).tolist()
                times: dict[str, list[float]] = {n: [] for n in names}
                for i, k in enumerate(keys):  # every target in turn, in a new random order each time
                    for j in rng.permutation(len(names)):
                        name = names[j]
                        fn = fns[name]
                        t0 = time.perf_counter()
                        fn(k)
                        if i >= args.warmup:
                            times[name].append(time.perf_counter() - t0)
                for name in names:
                    per_round[name].append(statistics.median(times[name]) * 1e6)
            results[batch] = {n: statistics.median(v) for n, v in per_round.items()}
            results[batch]["_rounds"] = per_round
        close()
        memory = redis.Redis.from_url(url).memory_usage(redis_store._live(VIEW), samples=0)
        redis_store.drop_version(VIEW.name, VIEW.version)
        redis_store.close()
        sqlite_store.close()
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        work.rmdir()

    print(f"{args.entities:,} entities x {len(FEATURES)} float features; {args.rounds} rounds x {args.calls} calls "
          f"per target; p50 in microseconds (median of the rounds' p50s)")
    print(f"write: redis {written['redis']:.2f} s, sqlite {written['sqlite']:.2f} s; "
          f"redis hash {memory / args.entities:.0f} bytes per entity")
    for batch in (1, 100):
        r = results[batch]
        print(f"\n{batch} entit{'y' if batch == 1 else 'ies'} per call:")
        for name in [n for n in r if not n.startswith("_")]:
            print(f"  {name:<36} {r[name]:9.1f} us")
        rounds = r["_rounds"]
        redis_ratio = [s / w for s, w in zip(rounds["redis store"], rounds["redis raw"])]
        sqlite_ratio = [s / w for s, w in zip(rounds["sqlite store"], rounds["sqlite raw"])]
        print(f"  redis store / redis raw      {r['redis store'] / r['redis raw']:.2f}x "
              f"(per round {min(redis_ratio):.2f}-{max(redis_ratio):.2f})")
        print(f"  sqlite store / sqlite raw    {r['sqlite store'] / r['sqlite raw']:.2f}x "
              f"(per round {min(sqlite_ratio):.2f}-{max(sqlite_ratio):.2f})")
        print(f"  redis store / sqlite store   {r['redis store'] / r['sqlite store']:.2f}x")
    summary = {str(b): {n: round(v, 1) for n, v in results[b].items() if not n.startswith("_")} for b in results}
    print("\nJSON " + json.dumps({"entities": args.entities, "write_s": {k: round(v, 3) for k, v in written.items()},
                                  "redis_bytes_per_entity": round(memory / args.entities, 1), "p50_us": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
