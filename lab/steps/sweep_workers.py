"""Several workers on one sweep (docs/training.md, Parallel sweeps).

The train step writes what a worker needs into its ``train/`` folder: ``sweep.json`` (the
study, its storage without password, the flavor, task, metric, seed, trials, epochs,
device settings and feature names) and ``sweep_data.npz`` (the arrays it sweeps on),
then works on the study itself. Other workers join the same study:

- on this machine: ``[tool.lab.train] sweep_workers = N`` makes the train step start
  N-1 ``lab sweep worker`` processes beside itself, which end with it;
- on any machine that sees the run folder (a shared file system) and runs the same lab
  (so ``lab_sweep_storage`` answers the same PostgreSQL URL): ``lab sweep worker [RUN]
  [--processes N]``.

A worker leaves once the study holds its ``n_trials`` COMPLETE trials; the train step
then registers the best one. The data file is removed when the train step finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from lab.atomic import atomic_path, atomic_write_text
from lab.errors import ConfigError, LabError

MANIFEST = "sweep.json"
DATA = "sweep_data.npz"
PARENT_ENV = "LAB_SWEEP_PARENT_PID"
"""Set for workers a process starts: they exit when that process is no longer their parent."""
# Set by `lab run` for a stage's kernel, not for a worker it starts: a worker is no stage
# kernel (lab.pipeline.context's watchdog would end it), and its SIGTERM (the train step
# stopping it) is no preemption of the stage (lab.training.preemption's marker file).
_STAGE_ONLY_ENV = ("LAB_RUN_PID", "LAB_PREEMPTION_MARKER")


def write_manifest(workdir: Path, *, study: str, storage: str, flavor: str, task: str, metric: str, seed: int,
                   n_trials: int, max_epochs: int, features: Sequence[str], devices: Mapping[str, Any] | None,
                   arrays: Sequence[Any]) -> Path:
    """Write ``sweep.json`` and ``sweep_data.npz`` (train x, y, valid x, y) into ``workdir``,
    atomically; ``storage`` must already be without its password."""
    import numpy as np  # the step has loaded it already

    with atomic_path(workdir / DATA) as tmp, open(tmp, "wb") as out:  # a file object: savez adds no suffix
        np.savez(out, train_x=arrays[0], train_y=arrays[1], valid_x=arrays[2], valid_y=arrays[3])
    manifest = {"study": study, "storage": storage, "flavor": flavor, "task": task, "metric": metric,
                "seed": seed, "n_trials": n_trials, "max_epochs": max_epochs, "features": list(features),
                "devices": dict(devices) if devices is not None else None, "data": DATA}
    atomic_write_text(workdir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return workdir / MANIFEST


def find_workdir(runs_path: Path, target: str | None) -> Path:
    """The train folder holding ``sweep.json``: ``target`` as that folder, a run folder, or a
    run id under ``runs_path``; without ``target``, the newest one under ``runs_path``."""
    if target is None:
        found = sorted(Path(runs_path).glob(f"*/train/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise LabError(f"no sweep to join: no run under {runs_path} has a train/{MANIFEST}; start one with "
                           "`lab run train` (or name the run folder)")
        return found[-1].parent
    for candidate in (Path(target), Path(target) / "train", Path(runs_path) / target / "train"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise LabError(f"{target}: no {MANIFEST} there, in its train/ folder, or in {runs_path}/{target}/train; name "
                   "a run folder whose train stage has started")


def join_sweep(config: Any, pm: Any, workdir: Path, *, on_trial: Any = None, on_join: Any = None) -> Any:
    """Work on the sweep described by ``workdir/sweep.json`` until its study is complete;
    returns the ``SweepResult``. The storage URL comes from this lab's
    ``lab_sweep_storage``: it must be the one the sweep runs on. ``on_join(manifest)`` is
    called once the sweep is found joinable, before the first trial."""
    import numpy as np  # numpy and the sweep load only in a worker

    from lab.plugins import model_flavor
    from lab.training.sweep import run_sweep
    from lab.training.sweep_storage import redact_url

    manifest = json.loads((workdir / MANIFEST).read_text())
    storage = pm.hook.lab_sweep_storage(config=config, study_name=manifest["study"])
    if redact_url(storage) != manifest["storage"]:
        raise LabError(f"this lab's lab_sweep_storage answers {redact_url(storage)}, but study "
                       f"{manifest['study']!r} runs on {manifest['storage']}: run the worker with the same "
                       "configuration (e.g. the same plugin and environment variables) as the train step")
    data_path = workdir / manifest["data"]
    if not data_path.is_file():
        raise LabError(f"the sweep in {workdir} has finished (its data file {manifest['data']} was removed); "
                       "nothing to join")
    with np.load(data_path) as data:
        arrays = [data[k] for k in ("train_x", "train_y", "valid_x", "valid_y")]
    callbacks = [cb for batch in pm.hook.lab_trainer_callbacks(config=config, run_dir=str(workdir))
                 for cb in (batch or [])]
    if on_join:
        on_join(manifest)
    return run_sweep(model_flavor(pm, manifest["flavor"]), *arrays, manifest["features"],
                     n_trials=manifest["n_trials"], storage=storage, study_name=manifest["study"],
                     seed=manifest["seed"], workdir=workdir, max_epochs=manifest["max_epochs"],
                     callbacks=callbacks, task=manifest["task"], metric=manifest["metric"],
                     devices=manifest.get("devices"), on_trial=on_trial)


def start_workers(root: Path, workdir: Path, count: int, *, log_dir: Path | None = None) -> list[subprocess.Popen]:
    """Start ``count`` ``lab sweep worker`` processes on ``workdir``'s sweep; each writes
    ``worker-<pid>.log`` into ``log_dir`` (default ``workdir``) and exits if this process
    dies. Stop them with ``stop_workers``."""
    procs = []
    env = {k: v for k, v in os.environ.items() if k not in _STAGE_ONLY_ENV}
    env[PARENT_ENV] = str(os.getpid())
    log_dir = Path(log_dir or workdir)
    for _ in range(count):
        log = open(log_dir / f"worker-{len(procs) + 1}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lab.cli", "--root", str(root), "sweep", "worker", str(workdir)],
                cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        finally:
            log.close()
    return procs


def stop_workers(procs: Sequence[subprocess.Popen], *, wait_s: float = 60.0, term_s: float = 30.0) -> list[int]:
    """Wait up to ``wait_s`` for the workers to leave on their own (they do once the study
    is complete), then SIGTERM the rest (a trial checkpoints and fails, to be retried) and
    SIGKILL them after ``term_s``; returns their exit statuses."""
    deadline = time.monotonic() + wait_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(term_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return [proc.returncode for proc in procs]


def _exit_with_parent() -> None:
    """A worker started by another process (``PARENT_ENV``) exits when that process dies:
    its trial is then failed and retried like any killed worker's."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return
    parent_pid = int(parent)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(137)

    threading.Thread(target=watch, name="lab-sweep-parent-watchdog", daemon=True).start()


# -- lab sweep worker ---------------------------------------------------------------------

def worker_args(p) -> None:
    p.add_argument("run", nargs="?", help="the run folder, its train/ folder, or a run id (default: the newest "
                                          "run with a sweep)")
    p.add_argument("--processes", type=int, default=1,
                   help="worker processes to run on this machine (default 1)")


def worker_run(args, ctx) -> int:
    """``lab sweep worker``: join a train step's sweep until its study is complete."""
    import socket

    if args.processes < 1:
        raise ConfigError(f"--processes must be 1 or more, got {args.processes}")
    workdir = find_workdir(ctx.config.runs_path, args.run)
    if args.processes > 1:
        procs = start_workers(ctx.config.root, workdir, args.processes)
        print(f"{args.processes} workers on {workdir} (logs: {workdir}/worker-*.log)")
        try:
            statuses = [proc.wait() for proc in procs]
        except KeyboardInterrupt:
            statuses = stop_workers(procs, wait_s=0)
            raise
        print(f"workers ended with exit statuses {statuses}")
        return max(statuses, key=abs)
    _exit_with_parent()
    me = f"{socket.gethostname()}:{os.getpid()}"

    def joined(manifest: dict) -> None:
        print(f"worker {me} joins study {manifest['study']!r} on {manifest['storage']} ({manifest['n_trials']} "
              "trials)", flush=True)

    finished: list[dict] = []
    result = join_sweep(ctx.config, ctx.pm, workdir, on_trial=finished.append, on_join=joined)
    mine = sorted(r["number"] for r in finished)
    print(f"study {result.study!r} is complete: best trial {result.best_number} "
          f"({result.metric} {result.best_value:.4f}); this worker finished trials {mine or 'none'}", flush=True)
    return 0
