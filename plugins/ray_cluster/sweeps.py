"""Sweep workers as Ray tasks: ``lab sweep worker``'s function (``tasks.sweep_worker``) on a
running sweep, so its trials spread over the cluster.

A train step writes ``train/sweep.json`` (``lab.steps.sweep_workers``) and works on the
study itself; Ray workers join the same study through its shared storage (the lab's
``lab_sweep_storage``: SQLite in WAL mode on one machine, PostgreSQL across machines) and
leave once it holds its ``n_trials`` COMPLETE trials. The train step then saves and
registers the best trial whoever trained it, as with local workers: trials are saved in the
run folder, which every node must see.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lab.atomic import atomic_write_text
from lab.errors import LabError
from lab.steps.sweep_workers import MANIFEST

from plugins.ray_cluster import cluster, tasks
from plugins.ray_cluster.settings import RaySettings, worker_resources

RECORD = "ray_workers.json"
"""Written beside ``sweep.json`` once the Ray workers a stage started have ended: each one's
node, pid, status and the trials it finished."""
_POLL_S = 1.0


def start_sweep_workers(ray: Any, settings: RaySettings, root: Path, workdir: Path, count: int) -> list[Any]:
    """Submit ``count`` sweep workers on ``workdir``'s sweep; returns their ObjectRefs, each
    resolving to ``tasks.sweep_worker``'s dict. Each asks for ``worker_resources`` (the
    GPUs of the sweep's device settings unless ``worker_num_gpus`` says otherwise)."""
    manifest = json.loads((Path(workdir) / MANIFEST).read_text())
    resources = worker_resources(settings, manifest.get("devices"))
    cluster.check_fits(ray, resources, "a sweep worker")
    remote = ray.remote(tasks.sweep_worker)
    env = cluster.task_environment(settings)
    return [remote.options(**cluster.task_options(resources, f"lab sweep worker {i + 1} {manifest['study']}"))
            .remote(str(Path(root).resolve()), str(Path(workdir).resolve()), env) for i in range(count)]


def collect(ray: Any, refs: list[Any], *, timeout_s: float) -> list[dict[str, Any]]:
    """Each worker's dict, waiting up to ``timeout_s`` for them all; the ones still running
    then are cancelled (their trials fail and are retried by the study). A worker that
    failed or was cancelled is reported as such."""
    from ray import exceptions as rex

    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    for ref in pending:
        ray.cancel(ref, force=False)
    results = []
    for ref in refs:
        try:
            results.append(ray.get(ref, timeout=max(timeout_s, 30.0)))
        except rex.TaskCancelledError:
            results.append({"status": "cancelled"})
        except rex.GetTimeoutError:
            ray.cancel(ref, force=True)
            results.append({"status": "killed"})
        except rex.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            cause = getattr(exc, "cause", None)
            status = "cancelled" if isinstance(cause, rex.TaskCancelledError) else "failed"
            results.append({"status": status, "error": first})
    return results


class SweepWatch:
    """While a stage runs: start ``sweep_workers`` Ray workers once the stage writes a sweep
    manifest under its run folder, and when the stage ends collect them into ``RECORD``."""

    def __init__(self, settings: RaySettings, root: Path, run_dir: Path, *, log: Any = print,
                 finish_wait_s: float = 60.0):
        self.settings = settings
        self.root = Path(root)
        self.run_dir = Path(run_dir)
        self.log = log
        self.finish_wait_s = finish_wait_s
        self.started = time.time()
        self.workdir: Path | None = None
        self.refs: list[Any] = []
        self._next = 0.0

    def _manifest(self) -> Path | None:
        """A manifest this stage wrote (not one left by an earlier attempt), whose data is there."""
        for path in sorted(self.run_dir.glob(f"*/{MANIFEST}")):
            try:
                fresh = path.stat().st_mtime >= self.started - 1.0
                data = json.loads(path.read_text()).get("data")
            except (OSError, ValueError):
                continue  # being written: next poll
            if fresh and data and (path.parent / data).is_file():
                return path.parent
        return None

    def poll(self, ray: Any) -> None:
        if self.settings.sweep_workers <= 0 or self.workdir is not None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + _POLL_S
        workdir = self._manifest()
        if workdir is None:
            return
        self.workdir = workdir
        try:
            self.refs = start_sweep_workers(ray, self.settings, self.root, workdir, self.settings.sweep_workers)
        except LabError as exc:  # e.g. no node has a worker's GPUs: the stage sweeps on without them
            self.log(f"    ray: no sweep workers started: {exc}")
            atomic_write_text(workdir / RECORD, json.dumps([{"status": "not started", "error": str(exc)}], indent=2))
            return
        self.log(f"    ray: {len(self.refs)} sweep worker(s) joining the sweep in {workdir}")

    def cancel(self, ray: Any) -> None:
        for ref in self.refs:
            ray.cancel(ref, force=False)

    def finish(self, ray: Any, *, stage_finished: bool) -> list[dict[str, Any]]:
        """Collect the workers into ``RECORD``: after a finished stage they leave on their own
        (its study is complete), waited for up to ``finish_wait_s``; after a failed or
        stopped one they are cancelled at once (their running trials fail, to be retried)."""
        if not self.refs or self.workdir is None:
            return []
        if not stage_finished:
            self.cancel(ray)
        results = collect(ray, self.refs, timeout_s=self.finish_wait_s if stage_finished else 30.0)
        atomic_write_text(self.workdir / RECORD, json.dumps(results, indent=2, sort_keys=True))
        trials = sorted(n for r in results for n in r.get("trials", []))
        self.log(f"    ray: sweep workers ended ({', '.join(r['status'] for r in results)}); they finished "
                 f"trials {trials or 'none'}")
        return results
