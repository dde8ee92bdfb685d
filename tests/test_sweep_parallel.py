"""Several sweep workers on one Optuna study: two workers on SQLite (a worker process and
the test process) finish a study of K trials with none lost or duplicated; the train step
with ``sweep_workers = 2`` on a real PostgreSQL (a ``lab sweep worker`` beside it) does
the same and records the best trial's lineage in the registry without the storage's
password; a worker on "another machine" (its own hostname) killed with ``kill -9``
mid-trial has its trial failed once its heartbeat is stale and retried by the surviving
worker, from its checkpoint; the rules by which workers asking at the same moment take
places, on a real study.

Every worker waits at its first epoch until all are there (a barrier through files), so
each trains at least one trial whatever the machine's load: the assertions hold on any
interleaving. The PostgreSQL tests skip, naming ``apt-get install postgresql``, where the
server is not installed (tests/_postgres.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from lab import steps
from lab.config import load_config
from lab.errors import LabError
from lab.registry import Registry
from lab.training.sweep import default_sweep_storage, run_sweep
from lab.training.sweep_storage import open_storage, redact_url
from plugins.fraud.simulator import simulate
from tests._postgres import postgres_fixture
from tests.conftest import REPO, tiny_fraud_data, write_pyproject

FEATURES = ["TX_AMOUNT", "NB_TX_7DAY", "RISK_7DAY", "TX_DURING_NIGHT"]
SWEEP = dict(n_trials=4, seed=11, max_epochs=3)
PASSWORD = "s3cret-pw"  # trust authentication ignores it; it must never be written down

postgres = postgres_fixture(scope="module")

# Every worker's first epoch waits until all workers got there (files in ``sync``), so each
# trains at least one trial; "stall" then hangs in epoch 1 of its first trial (epoch 0's
# checkpoint written) until the test kills it. Used by the worker processes (WORKER) and,
# through exec, by the test process as a worker itself (``barrier``).
BARRIER = """
class Barrier(pl.Callback):
    def __init__(self, sync, workers, stall=False):
        self.sync, self.workers, self.stall, self.first = Path(sync), int(workers), stall, True

    def on_train_epoch_start(self, trainer, pl_module):
        if self.first and trainer.current_epoch == 0:
            self.first = False
            (self.sync / f"{os.getpid()}.ready").write_text("")
            deadline = time.monotonic() + 90
            while len(list(self.sync.glob("*.ready"))) < self.workers and time.monotonic() < deadline:
                time.sleep(0.05)
        elif self.stall and trainer.current_epoch == 1:
            (self.sync / "stalled").write_text(str(os.getpid()))
            time.sleep(600)
"""
WORKER = """
import json, os, sys, time
from pathlib import Path
import numpy as np
import pytorch_lightning as pl
from lab.training.sweep import run_sweep
from plugins.lightning_tabular.flavor import LightningMLP
""" + BARRIER + f"""
storage, workdir, arrays, sync, workers, mode = sys.argv[1:7]
d = np.load(arrays)
result = run_sweep(LightningMLP(), d["tx"], d["ty"], d["vx"], d["vy"], {FEATURES!r}, storage=storage,
                   study_name="parallel", workdir=Path(workdir), callbacks=[Barrier(sync, workers, mode == "stall")],
                   heartbeat_s=1, grace_s=3, poll_s=0.2, **{SWEEP!r})
print(json.dumps({{"best": result.best_number, "storage": result.storage}}))
"""


def barrier(sync: Path, workers: int):
    """The test process's own ``Barrier`` (the class in BARRIER)."""
    import pytorch_lightning as pl  # the test process trains too

    namespace = {"pl": pl, "os": os, "time": time, "Path": Path}
    exec(BARRIER, namespace)  # one definition for the worker processes and this one
    return namespace["Barrier"](sync, workers)


def sweep_here(tmp: Path, storage: str, *, workers: int):
    """The test process as one more worker on the study ``start_worker``'s processes share."""
    from plugins.lightning_tabular.flavor import LightningMLP

    (tmp / "sync").mkdir(exist_ok=True)
    return run_sweep(LightningMLP(), *tiny_fraud_data(1800), FEATURES, storage=storage, study_name="parallel",
                     workdir=tmp / "sweep", callbacks=[barrier(tmp / "sync", workers)], heartbeat_s=1, grace_s=3,
                     poll_s=0.2, **SWEEP)


def can_rename_host() -> bool:
    """Whether ``unshare -u`` may give a process its own hostname (root, or user namespaces)."""
    try:
        return subprocess.run(["unshare", "-u", "hostname", "sweep-node-2"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_worker(tmp: Path, storage: str, *, workers: int, mode: str = "run", host: str | None = None):
    arrays = tmp / "data.npz"
    if not arrays.exists():
        tx, ty, vx, vy = tiny_fraud_data(1800)
        np.savez(arrays, tx=tx, ty=ty, vx=vx, vy=vy)
    (tmp / "sync").mkdir(exist_ok=True)
    argv = [sys.executable, "-c", WORKER, storage, str(tmp / "sweep"), str(arrays), str(tmp / "sync"),
            str(workers), mode]
    if host:  # its own UTS namespace: the other workers cannot judge its pid, only its heartbeat
        argv = ["unshare", "-u", "sh", "-c", f'hostname {host} && exec "$0" "$@"', *argv]
    log = open(tmp / f"worker-{len(list(tmp.glob('worker-*.log')))}.log", "w")  # noqa: SIM115
    return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), Path(log.name)


def wait_all(procs, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for proc, log in procs:
        try:
            assert proc.wait(max(1.0, deadline - time.monotonic())) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def trials_of(storage: str, name: str = "parallel"):
    return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)


def check_every_params_set_once(trials, n_trials: int) -> dict[int, object]:
    """K COMPLETE trials with distinct numbers and keys; nothing left RUNNING or WAITING; no
    params set finished (COMPLETE or PRUNED) twice; every interrupted trial's params
    finished once, by a retry linked to it. Returns the trials by number."""
    S = optuna.trial.TrialState
    by_number = {t.number: t for t in trials}
    complete = [t for t in trials if t.state == S.COMPLETE]
    assert len(complete) == n_trials
    assert len({t.user_attrs["lab:key"] for t in complete}) == n_trials
    assert not [t.number for t in trials if t.state in (S.RUNNING, S.WAITING)]
    finished = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
    keys = [t.user_attrs["lab:key"] for t in finished]
    assert len(keys) == len(set(keys)), "a params set finished twice"
    for t in trials:
        if t.state == S.FAIL and "lab:skip" not in t.user_attrs:
            assert "lab:error" not in t.user_attrs, t.user_attrs["lab:error"]
            (done,) = [f for f in finished if f.user_attrs["lab:key"] == t.user_attrs["lab:key"]]
            chain, n = [], done.number
            while (n := by_number[n].user_attrs.get("lab:retry_of")) is not None:
                chain.append(n)
            assert t.number in chain, f"trial {t.number} was not retried by {done.number}"
    return by_number


def workers_of(trials) -> set[tuple[str, int]]:
    S = optuna.trial.TrialState
    return {(t.user_attrs["lab:owner"]["host"], t.user_attrs["lab:owner"]["pid"]) for t in trials
            if t.state in (S.COMPLETE, S.PRUNED)}


def test_two_workers_on_sqlite_finish_one_study_without_losing_or_repeating_a_trial(tmp_path):
    storage = default_sweep_storage(tmp_path)
    other = start_worker(tmp_path, storage, workers=2)
    here = sweep_here(tmp_path, storage, workers=2)
    wait_all([other])
    trials = trials_of(storage)
    check_every_params_set_once(trials, SWEEP["n_trials"])
    host = socket.gethostname()
    assert workers_of(trials) == {(host, other[0].pid), (host, os.getpid())}  # both trained
    # Both workers answer the same best trial, from the shared study.
    assert json.loads(other[1].read_text().strip().splitlines()[-1])["best"] == here.best_number
    assert [t["number"] for t in here.trials] == sorted(t.number for t in trials if "lab:skip" not in t.user_attrs)
    assert _journal_mode(tmp_path / "optuna.db") == "wal"


def _journal_mode(path: Path) -> str:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


# -- the train step with two workers on PostgreSQL --------------------------------------------

WINDOW = dict(train_start="2018-04-15", delta_train=7, delta_delay=7, delta_test=7)
PROBE = '''
import os, time
from pathlib import Path
import pytorch_lightning as pl
from lab import hookimpl

HERE = Path(__file__).parent


class Barrier(pl.Callback):
    """Each process's first epoch waits until two processes got there."""
    first = True

    def on_train_epoch_start(self, trainer, pl_module):
        if self.first:
            self.first = False
            (HERE / "sync").mkdir(exist_ok=True)
            (HERE / "sync" / f"{os.getpid()}.ready").write_text("")
            deadline = time.monotonic() + 90
            while len(list((HERE / "sync").glob("*.ready"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)


@hookimpl
def lab_sweep_storage(config, study_name):
    return (HERE / "sweep_url").read_text().strip()


@hookimpl
def lab_trainer_callbacks(config, run_dir):
    return [Barrier()]
'''


def test_the_train_step_with_two_workers_on_postgresql_records_the_best_trials_lineage(postgres, tmp_path):
    root = tmp_path / "lab"
    write_pyproject(root, f"""
        model_name = "fraud"
        plugins = ["sweep_probe"]

        [tool.lab.fraud]
        exact = false

        [tool.lab.train]
        train_start = "{WINDOW['train_start']}"
        n_trials = 3
        sweep_workers = 2

        [tool.lab.validation]
        enabled = false
    """)
    (root / "sweep_probe.py").write_text(PROBE)
    url = postgres.new_database("train_sweeps").replace("postgres@", f"postgres:{PASSWORD}@")
    (root / "sweep_url").write_text(url)
    simulate(n_customers=60, n_terminals=120, nb_days=30, seed=3).write_parquet(root / "tx.parquet")
    with Registry.open(load_config(root).registry_path) as reg:
        run_dir = root / "runs" / reg.start_run(kind="pipeline")
    steps.features(root, run_dir, source_path="tx.parquet", **WINDOW)

    info = steps.train(root, run_dir, n_trials=3, max_epochs=2, seed=5, **WINDOW)

    study = f"fraud-{run_dir.name}"
    trials = trials_of(url, study)
    check_every_params_set_once(trials, 3)
    assert len(workers_of(trials)) == 2  # the train step and the `lab sweep worker` it started
    assert (run_dir / "train" / "worker-1.log").read_text().count("is complete") == 1
    assert not (run_dir / "train" / "sweep_data.npz").exists()  # removed with the sweep
    safe_url = redact_url(url)
    assert PASSWORD not in safe_url and safe_url.startswith("postgresql://postgres@127.0.0.1:")
    with Registry.open(load_config(root).registry_path) as reg:
        run = reg.get_run(info["run_id"])
        recorded = reg.list_trials(info["run_id"])
    params = run["params"]
    assert params["sweep_study"] == study and params["sweep_storage"] == safe_url
    assert params["best_trial"] == info["best_trial"] and params["sweep_worker_exits"] == [0]
    best = next(t for t in trials if t.number == info["best_trial"])
    assert params["best_trial_attempts"][-1]["number"] == best.number
    assert {k: params[f"best_{k}"] for k in info["params"]} == best.user_attrs["lab:params"]
    # Every trial either worker trained is in the registry, with the study's final state.
    shown = {t.number: t.state.name for t in trials if "lab:skip" not in t.user_attrs}
    assert {t["number"]: t["state"] for t in recorded} == shown
    assert info["sweep"]["storage"] == safe_url
    for text in (json.dumps(run), (root / "data/candidate.json").read_text(),
                 (run_dir / "train" / "sweep.json").read_text()):
        assert PASSWORD not in text


# -- a worker killed mid-trial ---------------------------------------------------------------

def test_a_worker_killed_mid_trial_on_another_host_is_retried_once_its_heartbeat_is_stale(postgres, tmp_path):
    other_host = can_rename_host()  # without it the killed worker is judged by its pid, at once
    url = postgres.new_database("killed_sweep")
    victim, log = start_worker(tmp_path, url, workers=2, mode="stall", host="sweep-node-2" if other_host else None)
    killed = {}

    def kill_when_stalled() -> None:
        deadline = time.monotonic() + 120
        while not (tmp_path / "sync" / "stalled").exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if victim.poll() is None:
            killed["at"] = dt.datetime.now()
            os.kill(victim.pid, signal.SIGKILL)
        victim.wait()

    killer = threading.Thread(target=kill_when_stalled)
    killer.start()
    try:
        here = sweep_here(tmp_path, url, workers=2)  # the survivor
    finally:
        killer.join()
    assert "at" in killed, f"the victim never reached epoch 1 of its first trial:\n{log.read_text()[-3000:]}"

    trials = trials_of(url)
    check_every_params_set_once(trials, SWEEP["n_trials"])
    (failed,) = [t for t in trials if t.state.name == "FAIL" and "lab:skip" not in t.user_attrs]
    assert failed.user_attrs["lab:owner"]["host"] == ("sweep-node-2" if other_host else socket.gethostname())
    (retry,) = [t for t in trials if t.user_attrs.get("lab:retry_of") == failed.number]
    assert retry.params == failed.params and retry.user_attrs["lab:key"] == failed.user_attrs["lab:key"]
    assert retry.state.name in ("COMPLETE", "PRUNED")
    assert retry.user_attrs["lab:owner"]["pid"] == os.getpid()
    if other_host:  # failed once its last heartbeat (at most 1 s before the kill) was 3 s old
        assert (retry.datetime_start - killed["at"]).total_seconds() >= 2
    # The retry resumed from the killed attempt's epoch-0 checkpoint, and is in the lineage
    # when it is the best trial.
    fit = json.loads((tmp_path / "sweep" / "trials" / retry.user_attrs["lab:key"] / "fit.json").read_text())
    assert fit["resumed_from"] == "epoch=0.ckpt"
    if here.best_number == retry.number:
        assert [a["number"] for a in here.lineage["attempts"]] == [failed.number, retry.number]
        assert here.lineage["attempts"][0]["worker"].startswith("sweep-node-2:" if other_host else "")


def test_bad_storages_are_named(tmp_path):
    with pytest.raises(LabError, match="unknown scheme 'redis'"):
        open_storage("redis://127.0.0.1:6379/0")
    with pytest.raises(LabError, match="names no file"):
        open_storage("sqlite:///:memory:")
    with pytest.raises(LabError, match="grace_s .2. must be longer than heartbeat_s .2."):
        open_storage(default_sweep_storage(tmp_path), heartbeat_s=2, grace_s=2)
    with pytest.raises(LabError, match=r"cannot open the sweep storage postgresql://optuna@127.0.0.1:9/x: .*"
                                       r"check that the database server is running"):
        open_storage(f"postgresql://optuna:{PASSWORD}@127.0.0.1:9/x")
    assert redact_url(f"postgresql://optuna:{PASSWORD}@db.example:5432/sweeps") == \
        "postgresql://optuna@db.example:5432/sweeps"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


# -- the rules two workers asking at the same moment follow (a real study, no training) ------

@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize(), as the sweep does
def test_places_are_taken_in_trial_number_order_and_retries_keep_theirs(tmp_path):
    from lab.training.sweep_study import (KEY, RETRY_OF, SKIP, pending_retries, requeue_interrupted,
                                          sampler_position, step_aside_reason)

    S = optuna.trial.TrialState
    study = optuna.create_study(study_name="race", storage=open_storage(default_sweep_storage(tmp_path)),
                                direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(0.0, 1.0)}

    def asked(key=None):
        trial = study.ask(lr)
        if key:
            trial.set_user_attr(KEY, key)
        return trial

    def skip(trial, reason):
        trial.set_user_attr(SKIP, reason)
        study.tell(trial, state=S.FAIL)

    first = asked("a")
    study.tell(first, 0.5)
    one, two = asked("b"), asked("c")  # two workers asked at once, one place left of 2
    trials = study.get_trials(deepcopy=False)
    assert step_aside_reason(trials, one.number, "b", False, 2, 3) is None
    assert step_aside_reason(trials, two.number, "c", False, 2, 3) == "surplus"
    assert step_aside_reason(trials, two.number, "b", False, 9, 3) == "duplicate"  # drew one's params
    assert sampler_position(trials, two.number) == 2  # a different seed from one's (1)
    skip(two, "surplus")

    study.tell(one, state=S.FAIL)  # one's worker died: its params keep their place until retried
    late = asked("d")  # asked between the death and the retry
    trials = study.get_trials(deepcopy=False)
    assert list(pending_retries(trials, 3)) == ["b"]
    assert step_aside_reason(trials, late.number, "d", False, 2, 3) == "surplus"
    skip(late, "surplus")

    # Two workers enqueue the retry at once: the first copy trains, the second steps aside.
    trials = study.get_trials(deepcopy=False)
    assert requeue_interrupted(study, trials, 3) == requeue_interrupted(study, trials, 3) == [one.number]
    copy1, copy2 = asked(), asked()
    assert copy1.params == copy2.params == one.params and copy1.user_attrs[RETRY_OF] == one.number
    trials = study.get_trials(deepcopy=False)
    assert step_aside_reason(trials, copy1.number, "b", True, 2, 3) is None
    assert step_aside_reason(trials, copy2.number, "b", True, 2, 3) == "duplicate"
    assert pending_retries(trials, 3) == {}

    # An attempt that raised is not retried; params interrupted more than max_retries times are given up.
    copy1.set_user_attr("lab:error", "ValueError: bad")
    study.tell(copy1, state=S.FAIL)
    skip(copy2, "duplicate")
    assert pending_retries(study.get_trials(deepcopy=False), 3) == {}
    again = asked("e")
    study.tell(again, state=S.FAIL)
    assert list(pending_retries(study.get_trials(deepcopy=False), 0)) == []
    assert list(pending_retries(study.get_trials(deepcopy=False), 1)) == ["e"]
