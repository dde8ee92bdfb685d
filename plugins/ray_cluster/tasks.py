"""What runs inside a Ray worker: a stage's notebook through papermill, and a sweep worker.

Ray ships these functions by reference, so every node imports this module: lab (and the
lab's plugins) must be installed on each node, and the lab folder must be at the same path
(a shared file system) so the notebook, its run folder and the data it reads are there.
Nothing here imports Ray; results are plain dicts, so they pickle whatever failed.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping

_POLL_S = 0.2
_KILL_WAIT_S = 10.0


def _children(pid: int) -> set[int]:
    """The direct child processes of ``pid`` (Linux ``/proc``; elsewhere none are found,
    and a cancelled stage's kernel is then ended with its worker, not signalled first)."""
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.update(int(child) for child in fh.read().split())
    except OSError:
        pass
    return found


def _signal(pids: set[int], signum: int) -> None:
    """``signum`` to each process, to its whole group when it leads one (a Jupyter kernel
    runs in a session of its own, with whatever it started)."""
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # it ended meanwhile


class _Environment:
    """The task's variables set in this worker for the task's length, then put back (a Ray
    worker runs one task at a time and is reused)."""

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> "_Environment":
        for key, value in self.env.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def __exit__(self, *exc: Any) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _missing_on_node(*paths: str) -> str | None:
    """A failure summary when this node does not see one of ``paths``, naming the fix."""
    for path in paths:
        if not Path(path).exists():
            return (f"notebook not found: {path} does not exist on Ray node {socket.gethostname()}; stages on Ray "
                    "need the lab folder at the same path on every node (a shared file system)")
    return None


def _assigned() -> dict[str, float]:
    """What Ray gave this task (``{"CPU": 1.0, "GPU": 1.0}``); {} outside a Ray worker."""
    try:
        import ray  # this runs in a Ray worker

        return {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}
    except Exception:  # noqa: BLE001 - only a report
        return {}


def _papermill(notebook: str, output: str, params: dict, cwd: str, kernel: str, outcome: dict,
               done: threading.Event) -> None:
    """``PapermillExecutor``'s call and error mapping, into ``outcome``; ``done`` set at the end."""
    try:
        import papermill  # the stage's worker only
        from papermill.exceptions import PapermillExecutionError

        Path(output).parent.mkdir(parents=True, exist_ok=True)
    except BaseException as exc:  # noqa: BLE001 - handed to the driver
        outcome.update(status="error", error=exc)
        done.set()
        return
    try:
        papermill.execute_notebook(notebook, output, parameters=params, cwd=cwd, kernel_name=kernel,
                                   progress_bar=False, log_output=False,
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])
        outcome.update(status="finished")
    except PapermillExecutionError as exc:
        outcome.update(status="failed", summary=f"{exc.ename}: {exc.evalue}", notebook=output)
    except FileNotFoundError as exc:
        outcome.update(status="failed", summary=f"notebook not found: {exc}", notebook=None)
    except BaseException as exc:  # noqa: BLE001 - handed to the driver, which raises it as the local executor would
        outcome.update(status="error", error=exc)
    finally:
        done.set()


def run_stage(notebook: str, output: str, params: dict, cwd: str, env: Mapping[str, str], kernel: str,
              grace_s: float) -> dict[str, Any]:
    """Run a stage's notebook in this Ray worker as the local executor runs it in ``lab run``
    (papermill, the same parameters and kernel, ``cwd``, the executed copy at ``output``).

    Returns ``{"status": "finished" | "failed", "summary", "notebook", "node", "pid",
    "resources"}`` (``resources``: what Ray assigned); an error other than a failing cell
    is re-raised (Ray hands it to the driver). ``env``
    (``LAB_*``: the code record, progress file, preemption marker) is set for the kernel,
    and ``LAB_RUN_PID`` is this worker: the kernel ends if the worker dies (a forced
    cancel, the driver gone). A cancel (``ray.cancel``, a KeyboardInterrupt here) sends the
    kernel SIGTERM, as ``lab run`` does to a local kernel: a training checkpoints and
    stops; after ``grace_s`` it is killed."""
    where = {"node": socket.gethostname(), "pid": os.getpid(), "resources": _assigned()}
    missing = _missing_on_node(notebook, cwd)
    if missing:
        return {"status": "failed", "summary": missing, "notebook": None, **where}
    outcome: dict[str, Any] = {}
    with _Environment({**env, "LAB_RUN_PID": str(os.getpid())}):
        before = _children(os.getpid())
        # An Event, not Thread.join: on Python 3.11 a join interrupted by KeyboardInterrupt
        # leaves is_alive() False while the thread runs on.
        done = threading.Event()
        threading.Thread(target=_papermill, args=(notebook, output, params, cwd, kernel, outcome, done),
                         name="lab-stage-papermill", daemon=True).start()
        try:
            while not done.wait(_POLL_S):
                pass
        except KeyboardInterrupt:  # ray.cancel(force=False): stop the kernel as a preemption would
            kernels = _children(os.getpid()) - before
            _signal(kernels, signal.SIGTERM)
            if not done.wait(grace_s):
                _signal(kernels, signal.SIGKILL)
                done.wait(_KILL_WAIT_S)
            raise
    if outcome.get("status") == "error":
        raise outcome["error"]
    return {**outcome, **where}


def sweep_worker(root: str, workdir: str, env: Mapping[str, str]) -> dict[str, Any]:
    """``lab sweep worker``'s work in a Ray worker: join the sweep of ``workdir/sweep.json``
    with the lab at ``root`` (its config and plugins, so ``lab_sweep_storage`` answers the
    study's storage) until its study is complete.

    Returns ``{"status": "complete", "trials": [numbers this worker finished], "best_trial",
    "study", "node", "pid", "seconds"}``, or ``{"status": "not joined", "error"}`` when the
    sweep cannot be joined (it has finished, another storage answers)."""
    from lab.config import load_config
    from lab.errors import LabError
    from lab.plugins import get_plugin_manager
    from lab.steps.sweep_workers import join_sweep

    started = time.monotonic()
    where = {"node": socket.gethostname(), "pid": os.getpid(), "workdir": workdir}
    missing = _missing_on_node(workdir)
    if missing:
        return {"status": "not joined", "error": missing.replace("notebook not found: ", ""), **where}
    finished: list[dict] = []
    with _Environment(env):
        config = load_config(root)
        try:
            result = join_sweep(config, get_plugin_manager(config), Path(workdir), on_trial=finished.append)
        except LabError as exc:
            return {"status": "not joined", "error": str(exc), **where}
    return {"status": "complete", "trials": sorted(t["number"] for t in finished), "best_trial": result.best_number,
            "study": result.study, "seconds": round(time.monotonic() - started, 2), **where}
