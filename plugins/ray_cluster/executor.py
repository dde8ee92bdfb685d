"""``RayExecutor``: a stage's notebook as a Ray task (``lab_stage_executor``).

``execute`` submits ``tasks.run_stage`` with the stage's resources and waits for it. What
the runner sees is what the local papermill executor gives it: ``StageFailed`` with the
error's last line for a failing cell or a missing notebook (so retries work), the same
executed notebook at the same path. While it waits it also starts Ray sweep workers when the
stage writes a sweep manifest (``[tool.lab.ray] sweep_workers``), and it stops the task on
SIGTERM or Ctrl+C (``_Stop``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from lab.pipeline.stage import StageExecutor, StageFailed

from plugins.ray_cluster import cluster, tasks
from plugins.ray_cluster.settings import RaySettings, stage_resources
from plugins.ray_cluster.sweeps import SweepWatch

_WAIT_S = 0.25


class _Stop:
    """While a stage's task runs in the main thread: SIGTERM is noted (the wait loop then
    cancels the task) and handed on to the handler that was there once the task has stopped:
    ``lab run``'s relay marks the run preempted and passes SIGTERM to the runner's child
    processes, which with ``address = "local"`` are Ray's own, so it must not run before the
    stage had its chance to checkpoint. A second SIGTERM is handed on at once. With the
    default handler there, the signal is delivered again once the task has stopped, so the
    process still ends by it. SIG_IGN stays ignored."""

    def __init__(self) -> None:
        self.sigterm_at: float | None = None
        self.redeliver = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self._previous == signal.SIG_IGN:
            return
        if self.sigterm_at is None:
            self.sigterm_at = time.monotonic()
            if not callable(self._previous):  # SIG_DFL (or a handler not set from Python)
                self.redeliver = True
        elif callable(self._previous):
            self._previous(signum, frame)

    def __exit__(self, *exc: Any) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        if self.sigterm_at is not None and callable(self._previous):
            self._previous(signal.SIGTERM, None)
        if self.redeliver:
            os.kill(os.getpid(), signal.SIGTERM)


class RayExecutor(StageExecutor):
    """Runs each stage's notebook as a Ray task on the cluster of ``[tool.lab.ray]``.

    One machine or several: the worker runs papermill on its node, so the lab folder (the
    notebook, the run folder, the data) must be at the same path there; on one machine it
    is. The task asks for the stage's resources (``settings.stage_resources``)."""

    def __init__(self, settings: RaySettings, root: Path, *, log: Any = print):
        self.settings = settings
        self.root = Path(root)
        self.log = log
        self._stage: Any = None  # the lab.pipeline.Stage running, set by lab_execute_stage
        self._remote: Any = None
        self.last_outcome: dict[str, Any] = {}
        """The last task's report: status, node, pid, the resources Ray assigned."""

    @contextlib.contextmanager
    def ray_stage_scope(self, stage: Any) -> Iterator[None]:
        """The stage ``execute`` is about to run (its name picks its resources)."""
        self._stage = stage
        try:
            yield
        finally:
            self._stage = None

    def execute(self, notebook: Path, output_notebook: Path, params: dict[str, Any], cwd: Path) -> None:
        name = self._stage.name if self._stage is not None else Path(notebook).stem
        resources = stage_resources(self.settings, name, params)
        ray = cluster.connect(self.settings)
        cluster.check_fits(ray, resources, f"stage {name!r}")
        if self._remote is None:
            self._remote = ray.remote(tasks.run_stage)
        ref = self._remote.options(**cluster.task_options(resources, f"lab stage {name}")).remote(
            str(Path(notebook).resolve()), str(Path(output_notebook).resolve()), dict(params), str(Path(cwd).resolve()),
            cluster.task_environment(self.settings), self.settings.kernel, self.settings.grace_s)
        run_dir = params.get("run_dir")
        watch = SweepWatch(self.settings, self.root, Path(run_dir), log=self.log) if run_dir else None
        outcome: dict[str, Any] = {}
        with _Stop() as stop:
            try:
                outcome = self._wait(ray, ref, stop, watch, Path(notebook), Path(output_notebook))
            finally:
                if watch is not None:
                    watch.finish(ray, stage_finished=outcome.get("status") == "finished")
        self.last_outcome = outcome
        if outcome.get("status") != "finished":
            raise StageFailed(Path(notebook).stem, outcome.get("summary") or "the Ray task failed",
                              outcome.get("notebook"))

    def _wait(self, ray: Any, ref: Any, stop: _Stop, watch: SweepWatch | None, notebook: Path,
              output: Path) -> dict:
        """The task's outcome once it ended; cancels it on SIGTERM (``stop``), and on Ctrl+C or
        anything else that leaves this loop early."""
        cancelled_at: float | None = None
        try:
            while True:
                done, _ = ray.wait([ref], timeout=_WAIT_S)
                if done:
                    break
                if watch is not None:
                    watch.poll(ray)
                if stop.sigterm_at is not None and cancelled_at is None:
                    cancelled_at = time.monotonic()
                    ray.cancel(ref, force=False)  # the worker passes SIGTERM on to the kernel
                    if watch is not None:
                        watch.cancel(ray)
                elif cancelled_at is not None and time.monotonic() - cancelled_at > self.settings.grace_s + 5:
                    ray.cancel(ref, force=True)
        except BaseException as exc:
            if cancelled_at is None:
                self._cancel(ray, ref, watch, "Ctrl+C" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__)
            else:  # Ctrl+C while a SIGTERM's cancel runs: no more grace
                ray.cancel(ref, force=True)
            raise
        return self._outcome(ray, ref, notebook, output, stop)

    def _cancel(self, ray: Any, ref: Any, watch: SweepWatch | None, why: str) -> None:
        """Cancel the task (its kernel gets SIGTERM and ``grace_s`` to stop) and wait for it to
        end; a second Ctrl+C, or the grace period passing, kills its worker."""
        self.log(f"    {why}: cancelling the stage's Ray task (its kernel has {self.settings.grace_s:g} s to stop)")
        ray.cancel(ref, force=False)
        if watch is not None:
            watch.cancel(ray)
        try:
            ready, _ = ray.wait([ref], timeout=self.settings.grace_s + 5)
            if not ready:
                ray.cancel(ref, force=True)
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)

    @staticmethod
    def _outcome(ray: Any, ref: Any, notebook: Path, output: Path, stop: _Stop) -> dict:
        """The finished task's dict; Ray's failures turned into what the local executor raises."""
        from ray import exceptions as rex

        stem = Path(notebook).stem
        cancelled = {"status": "failed", "notebook": str(output) if Path(output).exists() else None,
                     "summary": "stopped by SIGTERM" if stop.sigterm_at is not None else "its Ray task was cancelled"}
        try:
            return ray.get(ref)
        except rex.TaskCancelledError:
            return cancelled
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, rex.TaskCancelledError):
                return cancelled
            if isinstance(cause, BaseException):
                raise cause from None  # what papermill raised in the worker, as the local executor raises it
            raise
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.RaySystemError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StageFailed(stem, f"the Ray worker running the stage died ({type(exc).__name__}: {first})",
                              None) from None
