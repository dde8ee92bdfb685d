"""Optuna storages under several sweep workers: the storage's cost per trial and its errors;
and a real sweep's wall time with one worker process and with several.

    .venv/bin/python benchmarks/bench_sweep_storage.py [--workers 2] [--trials 60] [--epochs 5]
    .venv/bin/python benchmarks/bench_sweep_storage.py --sweep 8 [--workers 2] [--rows 20000]

Each worker process runs ``--trials`` trials on one shared study with no training in
between (the worst case for contention): ask, the lightning_mlp search space's seven
suggestions, three user attributes, one report and pruner check per epoch, tell, with the
heartbeat recorded once per trial where the storage has one. A figure is the wall time of
the whole study divided by its trials (ms per trial, all workers together), and the errors
the workers raised (a worker stops at its first). Storages: SQLite through Optuna's RDB
storage (rollback journal, as Optuna leaves it, and WAL, what ``lab.training.sweep`` sets),
Optuna's JournalStorage with a file backend, and PostgreSQL 15 when it is installed
(started on a free 127.0.0.1 port by ``tests/_postgres.py``, stopped by PID).

``--sweep K``: ``run_sweep`` of lightning_mlp (K COMPLETE trials, 5 epochs, ``--rows``
synthetic rows) on a SQLite study, first by one worker process, then by ``--workers``
processes at once; wall time from starting the processes to the last exit (imports
included), and how many trials each process finished.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _storage(kind: str, where: str):
    import optuna

    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(where))
    return optuna.storages.RDBStorage(where, heartbeat_interval=5, engine_kwargs={"connect_args": {"timeout": 60}}
                                      if where.startswith("sqlite") else {})


def _worker(kind: str, where: str, trials: int, epochs: int, out) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    try:
        storage = _storage(kind, where)
        study = optuna.load_study(study_name="bench", storage=storage)
        for _ in range(trials):
            trial = study.ask()
            trial.suggest_int("n_layers", 1, 3)
            trial.suggest_categorical("width", [16, 32, 64, 128])
            trial.suggest_float("dropout", 0.0, 0.4)
            trial.suggest_float("lr", 1e-4, 3e-2, log=True)
            trial.suggest_categorical("batch_size", [128, 256, 512, 1024])
            trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True)
            trial.suggest_categorical("pos_weight", [1.0, 3.0, 10.0])
            for key in ("lab:owner", "lab:key", "lab:params"):
                trial.set_user_attr(key, {"x": 1})
            if kind != "journal":
                storage.record_heartbeat(trial._trial_id)
            for epoch in range(epochs):
                trial.report(0.5 + 0.01 * epoch, step=epoch)
                trial.should_prune()
            study.tell(trial, 0.5)
        out.put(None)
    except Exception as exc:  # noqa: BLE001 - the figure is the error
        out.put(f"{type(exc).__name__}: {str(exc)[:120]}")


def measure(kind: str, where: str, workers: int, trials: int, epochs: int) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.create_study(study_name="bench", storage=_storage(kind, where), direction="maximize")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, where, trials, epochs, out)) for _ in range(workers)]
    began = time.perf_counter()
    for p in procs:
        p.start()
    errors = [e for e in (out.get() for _ in procs) if e]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - began
    study = optuna.load_study(study_name="bench", storage=_storage(kind, where))
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    return {"storage": kind, "completed": done, "ms_per_trial": 1000 * elapsed / max(done, 1),
            "distinct_numbers": len(set(numbers)) == len(numbers), "errors": errors}


SWEEP_WORKER = """
import json, sys
from pathlib import Path
import numpy as np
from lab.training.sweep import run_sweep
from plugins.lightning_tabular.flavor import LightningMLP
storage, workdir, arrays, trials = sys.argv[1:5]
d = np.load(arrays)
done = []
run_sweep(LightningMLP(), d["tx"], d["ty"], d["vx"], d["vy"], ["a", "b", "c", "d"], n_trials=int(trials),
          storage=storage, study_name="bench", seed=1, workdir=Path(workdir), max_epochs=5, on_trial=done.append)
print(json.dumps([r["state"] for r in done]))
"""


def sweep_wall(workers: int, trials: int, rows: int) -> tuple[float, list[list[str]]]:
    """Seconds for ``workers`` processes to finish one study of ``trials`` trials."""
    import subprocess

    import numpy as np

    from tests.conftest import tiny_fraud_data

    with tempfile.TemporaryDirectory() as tmp:
        arrays = Path(tmp) / "data.npz"
        tx, ty, vx, vy = tiny_fraud_data(rows)
        np.savez(arrays, tx=tx, ty=ty, vx=vx, vy=vy)
        argv = [sys.executable, "-c", SWEEP_WORKER, f"sqlite:///{tmp}/optuna.db", f"{tmp}/sweep", str(arrays),
                str(trials)]
        root = Path(__file__).resolve().parents[1]
        began = time.perf_counter()
        procs = [subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(workers)]
        outs = [p.communicate()[0] for p in procs]
        elapsed = time.perf_counter() - began
    import json

    return elapsed, [json.loads(o.strip().splitlines()[-1]) for o in outs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=60, help="trials per worker")
    parser.add_argument("--epochs", type=int, default=5, help="reports (and pruner checks) per trial")
    parser.add_argument("--sweep", type=int, default=0, help="K: time a real sweep of K trials instead")
    parser.add_argument("--rows", type=int, default=20000, help="rows of the real sweep's data")
    args = parser.parse_args(argv)
    if args.sweep:
        for n in (1, args.workers):
            elapsed, finished = sweep_wall(n, args.sweep, args.rows)
            per_worker = ", ".join(f"{w.count('COMPLETE')} complete + {w.count('PRUNED')} pruned" for w in finished)
            print(f"{n} worker(s): {elapsed:.1f} s for {args.sweep} COMPLETE trials ({args.rows} rows, 5 epochs); "
                  f"per worker: {per_worker}")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wal = Path(tmp) / "wal.db"
        with sqlite3.connect(wal) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent in the file
        cases = [("sqlite", f"sqlite:///{tmp}/rollback.db"), ("sqlite-wal", f"sqlite:///{wal}"),
                 ("journal", f"{tmp}/journal.log")]
        for kind, where in cases:
            rows.append(measure(kind, where, args.workers, args.trials, args.epochs))
        from tests._postgres import postgres_bin, start_postgres

        if postgres_bin() is not None:
            server = start_postgres()
            try:
                url = server.new_database("bench").replace("postgresql://", "postgresql+psycopg2://", 1)
                rows.append(measure("postgresql", url, args.workers, args.trials, args.epochs))
            finally:
                server.stop()
        else:
            print("postgresql: not installed (apt-get install postgresql); skipped")
    print(f"{args.workers} workers x {args.trials} trials, {args.epochs} reports each, no training")
    print(f"{'storage':<12} {'completed':>9} {'ms/trial':>9}  distinct  errors")
    for r in rows:
        print(f"{r['storage']:<12} {r['completed']:>9} {r['ms_per_trial']:>9.1f}  {str(r['distinct_numbers']):<8}  "
              f"{'; '.join(r['errors']) or '-'}")


if __name__ == "__main__":
    main()
