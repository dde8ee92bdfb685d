"""``Scheduler``: the loop behind ``lab queue run``. One per queue (a file lock says so).

Each pass (every ``poll_s``): reap the jobs whose process ended and decide where each
goes (``lab.queue.model.outcome``); SIGKILL the process group of a job still alive
``grace_s`` after its SIGTERM; SIGTERM the running jobs someone cancelled; ask the policy
(``lab.queue.policy.plan``) which jobs start and which are preempted, and do it. Every
``sample_s`` it samples the devices' utilization and records which held devices sit idle.

A job runs as its own session and process group (``start_new_session``), with its output
appended to ``<runs_dir>/queue/<id>.log``, its devices in ``CUDA_VISIBLE_DEVICES`` and
``LAB_QUEUE_DEVICES``. On SIGTERM or SIGINT the scheduler stops its jobs the same way it
preempts them and hands them back to the queue, then exits; after a crash, the next
scheduler stops the jobs its predecessor left running and requeues them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from lab.errors import LabError
from lab.events import emit
from lab.queue import devices as devs
from lab.queue.model import (
    ACTIVE, CANCEL, CANCELLED, CPU, FAILED, FINISHED, GPU, JOB_CANCELLED, JOB_FAILED, JOB_FINISHED, JOB_PREEMPTED,
    JOB_STARTED, PREEMPT, QUEUED, SHUTDOWN, STOPPING, Device, Job, describe_status, outcome,
)
from lab.queue.policy import Holding, Plan, Waiting, plan
from lab.queue.store import JobStore, queue_path, scheduler_lock
from lab.sqlite import utc_now

PLAN_EVERY_S = 5.0
"""The longest a scheduler goes without planning when nothing changed (a safety net)."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Set to a CPU job's slot count (unless the job sets them), so a job uses what it holds."""


@dataclass
class _Process:
    """A job's process the scheduler started and waits for."""

    job_id: int
    name: str
    proc: subprocess.Popen
    log: IO[bytes]
    devices: tuple[str, ...]
    attempt: int
    stop_sent: float | None = None  # time.monotonic() of the SIGTERM
    killed: bool = False
    cpu_s: float | None = None  # the group's CPU seconds at the last sample
    cpu_at: float | None = None
    idle_since: dict[str, str] = field(default_factory=dict)


def job_environment(job: Job, chosen: tuple[str, ...], by_id: dict[str, Device], attempt: int,
                    base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a job's attempt runs with: the scheduler's, the job's own
    variables, then what the queue gives it (its devices above all)."""
    env = dict(os.environ if base is None else base)
    env.update(job.env)
    gpus = [by_id[d] for d in chosen if by_id[d].kind == GPU]
    # An index names the GPU nvidia-smi lists under it only in PCI bus order.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(d.cuda or "" for d in gpus)  # "": a CPU job sees no GPU
    env["LAB_QUEUE_JOB"] = str(job.id)
    env["LAB_QUEUE_ATTEMPT"] = str(attempt)
    env["LAB_QUEUE_DEVICES"] = ",".join(chosen)
    env["LAB_QUEUE_PRIORITY"] = str(job.priority)
    cpus = sum(1 for d in chosen if by_id[d].kind == CPU)
    if cpus:
        for name in THREAD_VARIABLES:
            if name not in job.env:
                env[name] = str(cpus)
    return env


class Scheduler:
    """Runs the queue of the lab ``config`` on its devices; ``pm`` receives the events."""

    def __init__(self, config, pm, *, out: TextIO | None = None, store: JobStore | None = None):
        self.config = config
        self.settings = config.queue
        self.pm = pm
        self.out = out if out is not None else sys.stderr
        self.store = store or JobStore.for_lab(config)
        self.devices, self.source = devs.discover(self.settings)
        self.by_id = {d.id: d for d in self.devices}
        self.smi = devs.nvidia_smi() if any(d.kind == GPU for d in self.devices) else None
        self.log_dir = config.runs_path / "queue"
        self.procs: dict[int, _Process] = {}
        self.last_plan = Plan()
        self._next_sample = 0.0
        self._smi_warned = False
        self._dirty = True  # this process changed something since the last plan
        self._seen_version: int | None = None
        self._next_plan = 0.0

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until_empty: bool = False) -> dict[str, Any]:
        """Schedule until ``stop`` is set (then hand the running jobs back and return), or
        with ``until_empty`` until nothing runs and nothing queued can start. Returns a
        summary: jobs started, and each state's count at the end."""
        with scheduler_lock(queue_path(self.config), self.store):
            self.store.scheduler_started(self.devices, self.source)
            self._say(f"scheduling on {', '.join(d.id for d in self.devices) or 'no device'} "
                      f"(GPUs: {self.source}); queue {self.store.path}")
            self._recover()
            started = 0
            try:
                while not stop.is_set():
                    started += self.tick()
                    if until_empty and not self.procs and not self.last_plan.start:
                        break
                    stop.wait(self.settings.poll_s)
            finally:
                self.shutdown()
                self.store.scheduler_stopped()
        counts: dict[str, int] = {}
        for job in self.store.jobs():
            counts[job.state] = counts.get(job.state, 0) + 1
        return {"started": started, "states": counts, "waiting": dict(self.last_plan.reasons)}

    def tick(self) -> int:
        """One pass; returns how many jobs it started."""
        self._reap()
        self._enforce_grace()
        version = self.store.data_version()
        started = 0
        # plan only when something changed: another process wrote (a submit, a cancel), this one
        # started, stopped or reaped a job; and at least every PLAN_EVERY_S
        if self._dirty or version != self._seen_version or time.monotonic() >= self._next_plan:
            self._dirty, self._seen_version = False, version
            self._next_plan = time.monotonic() + PLAN_EVERY_S
            self._cancels()
            started = self._schedule()
        if time.monotonic() >= self._next_sample:
            self._next_sample = time.monotonic() + self.settings.sample_s
            self.sample()
        return started

    def shutdown(self) -> None:
        """Stop every running job (SIGTERM, SIGKILL after the grace period) and hand it
        back to the queue; returns once all have ended."""
        for process in list(self.procs.values()):
            if process.stop_sent is None:
                self._stop(process.job_id, SHUTDOWN)
        if self.procs:
            self._say(f"stopping: handing {len(self.procs)} job(s) back to the queue")
        while self.procs:
            self._reap()
            self._enforce_grace()
            if self.procs:
                time.sleep(min(self.settings.poll_s, 0.1))

    # -- jobs ------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        print(f"{utc_now()[:19]} lab queue: {text}", file=self.out, flush=True)

    def _recover(self) -> None:
        """Jobs a previous scheduler left running (it crashed): stop what is still alive
        (it is not this process's child, so its exit status is lost) and requeue them."""
        for job in self.store.jobs(ACTIVE):
            alive = devs.same_process(job.pid, job.pid_start)
            if alive:
                self._say(f"job {job.id} was left running by a scheduler that stopped; stopping it (pid {job.pid})")
                _signal(job.pid, signal.SIGTERM, group=self.settings.term_group)
                deadline = time.monotonic() + self.settings.grace_s
                while devs.same_process(job.pid, job.pid_start) and time.monotonic() < deadline:
                    time.sleep(0.05)
                _signal(job.pid, signal.SIGKILL, group=True)
            state = CANCELLED if job.cancel_requested else QUEUED
            self.store.ended(job.id, state, exit_code=None, event="requeued" if state == QUEUED else "cancelled",
                             reason=("its scheduler stopped while it ran; back in the queue" if state == QUEUED
                                     else "cancelled while its scheduler was down"))

    def _schedule(self) -> int:
        queued = self.store.jobs([QUEUED])
        active = self.store.jobs(ACTIVE)
        waiting = [Waiting(j.id, j.priority, j.request) for j in queued]
        running = [Holding(j.id, j.priority, j.devices, j.started_at or "", j.state == STOPPING) for j in active]
        self.last_plan = plan(self.devices, waiting, running, preempt=self.settings.preempt)
        for victim, for_job in self.last_plan.preempt:
            self._say(f"preempting job {victim} for job {for_job}")
            self._stop(victim, PREEMPT, for_job)
        started = sum(self._start(job_id, chosen) for job_id, chosen in self.last_plan.start)
        self.store.set_reasons(self.last_plan.reasons)
        return started

    def _start(self, job_id: int, chosen: tuple[str, ...]) -> bool:
        self._dirty = True
        job = self.store.claim(job_id, chosen)
        if job is None:  # cancelled since the plan was made
            return False
        log_path = Path(job.log) if job.log else self.log_dir / f"{job.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        log.write(f"--- lab queue: job {job.id} attempt {job.attempts} on {','.join(chosen)} at {utc_now()}\n"
                  .encode())
        log.flush()
        env = job_environment(job, chosen, self.by_id, job.attempts)
        try:
            proc = subprocess.Popen(list(job.argv), cwd=job.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            log.close()
            reason = (f"could not start {job.argv[0]!r} in {job.cwd}: {exc.strerror or exc}; fix the command or "
                      "its folder and submit it again")
            self.store.ended(job.id, FAILED, exit_code=None, reason=reason, event="failed")
            self._say(f"job {job.id} failed to start: {reason}")
            emit(self.pm, JOB_FAILED, job=job.id, job_name=job.name, exit_code=None, reason=reason,
                 attempts=job.attempts)
            return False
        self.store.started(job.id, proc.pid, devs.process_start(proc.pid), chosen, job.attempts)
        self.procs[job.id] = _Process(job.id, job.name, proc, log, chosen, job.attempts)
        self._say(f"job {job.id} ({job.name}) started on {','.join(chosen)}, attempt {job.attempts}, pid {proc.pid}")
        emit(self.pm, JOB_STARTED, job=job.id, job_name=job.name, devices=list(chosen), attempt=job.attempts,
             priority=job.priority, pid=proc.pid)
        return True

    def _stop(self, job_id: int, reason: str, for_job: int | None = None) -> None:
        process = self.procs.get(job_id)
        if process is None or process.stop_sent is not None:
            return
        _signal(process.proc.pid, signal.SIGTERM, group=self.settings.term_group)
        process.stop_sent = time.monotonic()
        self.store.stopping(job_id, reason, for_job)
        self._dirty = True

    def _enforce_grace(self) -> None:
        now = time.monotonic()
        for process in self.procs.values():
            overdue = process.stop_sent is not None and now - process.stop_sent >= self.settings.grace_s
            if overdue and not process.killed:
                _signal(process.proc.pid, signal.SIGKILL, group=True)
                process.killed = True
                self.store.note(process.job_id, "killed", after_s=self.settings.grace_s)
                self._say(f"job {process.job_id} outlived the {self.settings.grace_s:g} s grace period: SIGKILL")

    def _cancels(self) -> None:
        for job in self.store.cancel_requested():
            if job.id in self.procs:
                self._say(f"cancelling job {job.id}")
                self._stop(job.id, CANCEL)

    def _reap(self) -> None:
        for job_id, process in list(self.procs.items()):
            code = process.proc.poll()
            if code is None:
                continue
            # whatever the job left behind in its process group goes with it
            _signal(process.proc.pid, signal.SIGKILL, group=True)
            process.log.close()
            del self.procs[job_id]
            self._dirty = True
            job = self.store.job(job_id)
            stop_reason = job.stop_reason
            result = outcome(code, stop_reason, job.cancel_requested, job.requeues, self.settings.max_requeues)
            back = {PREEMPT: "preempted", SHUTDOWN: "handed_back"}.get(stop_reason, "requeued")
            job = self.store.ended(job_id, result.state, exit_code=code, reason=result.reason,
                                   event=back if result.state == QUEUED else result.state,
                                   preempted=result.preempted, requeued=result.requeued, stop_reason=stop_reason,
                                   for_job=job.stopped_for)
            self._say(f"job {job_id} ({job.name}) {describe_status(code)}: {result.state}"
                      + (f" ({result.reason})" if result.reason else ""))
            payload: dict[str, Any] = {"job": job_id, "job_name": job.name, "exit_code": code,
                                       "attempts": job.attempts, "run_seconds": round(job.run_seconds, 3)}
            if result.state == QUEUED:
                cause = {PREEMPT: "priority", SHUTDOWN: "shutdown"}.get(stop_reason, "external")
                payload.update(by=job.stopped_for if cause == "priority" else None, cause=cause)
            elif result.reason:
                payload["reason"] = result.reason
            # where the job went names the event (each name spelled out for docs/hooks.md's check)
            emit(self.pm, {QUEUED: JOB_PREEMPTED, FINISHED: JOB_FINISHED, FAILED: JOB_FAILED,
                           CANCELLED: JOB_CANCELLED}[result.state], **payload)

    # -- utilization -------------------------------------------------------------------------

    def sample(self) -> list[dict[str, Any]]:
        """Sample every device now and record it (``lab queue devices`` reads it): GPU
        utilization and processes from nvidia-smi, a CPU job's CPU time per slot it holds;
        a held device below ``idle_util_pct`` (a GPU without utilization, as MIG: with no
        process of its job) is idle since the first such sample."""
        now_iso, now = utc_now(), time.monotonic()
        gpu_samples: dict[str, devs.GpuSample] = {}
        if self.smi:
            try:
                gpu_samples = devs.sample_gpus(self.smi)
            except LabError as exc:
                if not self._smi_warned:
                    self._say(f"cannot sample GPUs: {exc}")
                    self._smi_warned = True
        holder = {d: p for p in self.procs.values() for d in p.devices}
        members, cpu = devs.group_members(p.proc.pid for p in self.procs.values())
        cpu_pct: dict[int, float | None] = {}
        for process in self.procs.values():
            seconds = cpu.get(process.proc.pid, 0.0)
            slots = sum(1 for d in process.devices if self.by_id[d].kind == CPU)
            pct = None
            if process.cpu_at is not None and slots and now > process.cpu_at:
                pct = max(100.0 * (seconds - (process.cpu_s or 0.0)) / (now - process.cpu_at) / slots, 0.0)
            process.cpu_s, process.cpu_at = seconds, now
            cpu_pct[process.job_id] = pct
        rows = []
        for device in self.devices:
            process = holder.get(device.id)
            util = memory = on_device = None
            if device.kind == GPU:
                gpu = devs.sample_of(device, gpu_samples)
                if gpu is not None:
                    util, memory = gpu.utilization_pct, gpu.memory_used_mb
                    if process is not None:
                        on_device = bool(gpu.pids & members.get(process.proc.pid, set()))
            elif process is not None:
                util = cpu_pct.get(process.job_id)
            idle = process is not None and (
                (util is not None and util < self.settings.idle_util_pct) or (util is None and on_device is False))
            since = None
            if idle:
                since = process.idle_since.setdefault(device.id, now_iso)
            elif process is not None:
                process.idle_since.pop(device.id, None)
            rows.append({"id": device.id, "job_id": process.job_id if process else None, "utilization_pct": util,
                         "memory_used_mb": memory, "job_on_device": on_device, "idle_since": since})
        self.store.save_samples(rows)
        return rows


def _signal(pid: int | None, sig: int, *, group: bool) -> None:
    """Send ``sig`` to process ``pid`` (a job's leader), or to its whole process group;
    a process already gone is not an error."""
    if not pid:
        return
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
