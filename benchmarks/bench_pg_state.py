"""Shared-state write rates: the registry and the prediction ledger on PostgreSQL beside
SQLite, same machine, same code, interleaved rounds.

    .venv/bin/python benchmarks/bench_pg_state.py [--rounds 5] [--ops 100] [--records 20000] [--durable 1000]

Backends:

- ``sqlite``: lab's default files (WAL, ``synchronous=NORMAL``: a commit is not fsynced;
  a killed process loses nothing, a power cut may lose the last commits);
- ``pg``: a local PostgreSQL 15 with its defaults (``fsync = on``, ``synchronous_commit =
  on``: every commit waits for its WAL flush), over TCP on 127.0.0.1;
- ``pg-async``: the same database with ``synchronous_commit = off`` (commits are not
  waited for: the durability SQLite's NORMAL gives).

Workloads, each a rate per second (median over rounds; each round runs the backends in a
rotated order, so drift in the machine's load falls on all of them):

- ``registry``: ``register_model`` then ``promote`` of the new version, one op = both
  writes (two write transactions, the history row included);
- ``ledger``: ``append`` of ``--records`` predictions then ``flush`` (the server's
  default: batched commits off the request path);
- ``ledger_durable``: ``append_durably`` from 16 concurrent appenders (``ledger_sync =
  true``: each answered only once committed; waiting records share a commit).

The PostgreSQL server is started as the tests start one (``tests/_postgres.py``), then
fsync is switched back on (the tests run it off).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.registry import Registry  # noqa: E402
from lab.serving.ledger import Ledger  # noqa: E402
from lab.testing.ledger import record  # noqa: E402


def registry_rate(target, root: Path, ops: int) -> float:
    with Registry.open(target, project_root=root) as registry:
        started = time.perf_counter()
        for _ in range(ops):
            version = registry.register_model("bench", run_id=None, flavor="sklearn", artifact_path="runs/m",
                                              metrics={"auc": 0.8}, lineage={})
            registry.promote("bench", version.version, reason="bench")
        return ops / (time.perf_counter() - started)


def ledger_rate(target, records: int) -> float:
    # A queue that holds the whole round: the rate is the writer's, not the drops'.
    with Ledger.open(target, queue_size=records + 1) as ledger:
        started = time.perf_counter()
        for i in range(records):
            ledger.append(record(i))
        assert ledger.flush(120)
        took = time.perf_counter() - started
        assert ledger.stats()["written"] == records, ledger.stats()
    return records / took


def durable_rate(target, records: int, appenders: int = 16) -> float:
    async def appender(ledger, n: int) -> None:
        for i in range(n):
            assert await ledger.append_durably(record(i))

    with Ledger.open(target, sync=True) as ledger:
        started = time.perf_counter()
        asyncio.run(_gather(appender, ledger, records // appenders, appenders))
        return (records // appenders * appenders) / (time.perf_counter() - started)


async def _gather(appender, ledger, n: int, appenders: int) -> None:
    await asyncio.gather(*(appender(ledger, n) for _ in range(appenders)))


def with_fsync(server) -> None:
    """Restart the test server with PostgreSQL's default ``fsync = on`` (the tests start
    it with ``fsync=off``, on the command line, which ``ALTER SYSTEM`` cannot override)."""
    import subprocess

    from tests._postgres import _as_owner, postgres_bin

    data = server.folder / "data"
    options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.folder}"
    subprocess.run(_as_owner([str(postgres_bin() / "pg_ctl"), "-D", str(data), "-l", str(server.folder / "server.log"),
                              "-w", "-t", "60", "-m", "fast", "-o", options, "restart"]),
                   check=True, stdout=subprocess.DEVNULL, cwd=server.folder)
    server.pid = int((data / "postmaster.pid").read_text().split()[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=100, help="register+promote ops per round")
    parser.add_argument("--records", type=int, default=20_000, help="ledger appends per round")
    parser.add_argument("--durable", type=int, default=1_000, help="durable ledger appends per round")
    args = parser.parse_args(argv)

    import psycopg2

    from tests._postgres import start_postgres

    server = start_postgres()
    work = Path(tempfile.mkdtemp(prefix="bench-pg-state-"))
    try:
        with_fsync(server)
        admin = psycopg2.connect(server.url())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SHOW fsync")
            fsync = cur.fetchone()[0]
        backends = ["sqlite", "pg", "pg-async"]
        results: dict[tuple[str, str], list[float]] = {}
        for round_no in range(args.rounds):
            order = backends[round_no % 3:] + backends[:round_no % 3]
            for backend in order:
                if backend == "sqlite":
                    folder = work / f"r{round_no}"
                    folder.mkdir()
                    registry, ledger = folder / "registry.db", folder / "ledger.db"
                    durable = folder / "durable.db"
                else:
                    name = f"{backend.replace('-', '_')}_{round_no}"
                    registry = ledger = server.new_database(name)
                    durable = server.new_database(name + "_d")
                    if backend == "pg-async":
                        with admin.cursor() as cur:
                            for db in (name, name + "_d"):
                                cur.execute(f'ALTER DATABASE "{db}" SET synchronous_commit = off')
                    folder = work
                results.setdefault((backend, "registry"), []).append(registry_rate(registry, folder, args.ops))
                results.setdefault((backend, "ledger"), []).append(ledger_rate(ledger, args.records))
                results.setdefault((backend, "ledger_durable"), []).append(durable_rate(durable, args.durable))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        admin.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"PostgreSQL fsync = {fsync}; {args.rounds} interleaved rounds; medians, per second\n")
    print(f"{'workload':<16} {'sqlite':>10} {'pg':>10} {'pg-async':>10} {'pg/sqlite':>10} {'pg-async/sqlite':>16}")
    for workload, unit in (("registry", "ops"), ("ledger", "rows"), ("ledger_durable", "rows")):
        med = {b: statistics.median(results[(b, workload)]) for b in backends}
        print(f"{workload:<16} {med['sqlite']:>10,.0f} {med['pg']:>10,.0f} {med['pg-async']:>10,.0f} "
              f"{med['pg'] / med['sqlite']:>10.2f} {med['pg-async'] / med['sqlite']:>16.2f}   ({unit}/s)")


if __name__ == "__main__":
    main()
