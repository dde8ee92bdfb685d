"""What the queue schedules: devices, what a job asks for, and the job record.

A **device** is one thing a job holds whole while it runs: a GPU, a MIG instance, or a
CPU slot (one core's worth of work). A job asks for a number of devices of one kind
(``--gpus N``, ``--cpus N``), optionally GPUs with at least so much memory, or for named
devices (``--devices gpu:0,gpu:1``); it starts only with all of them at once (gang
allocation) and gets them through ``CUDA_VISIBLE_DEVICES`` and ``LAB_QUEUE_DEVICES``.

Only the standard library is used: the queue's commands stay fast to start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lab.errors import ConfigError, LabError

PREEMPTED_EXIT_STATUS = 75
"""A job's exit status meaning "preempted, checkpointed": EX_TEMPFAIL of sysexits.h, the
status lab's training ends with after a SIGTERM made it checkpoint. A job ending with it
goes back to the queue and resumes later."""

REQUEUE_STATUSES = frozenset({PREEMPTED_EXIT_STATUS, -15, 128 + 15})
"""Exit statuses that mean "stopped by SIGTERM, run me again": the preempted status, a
process ended by SIGTERM itself (-15 from ``subprocess``), or a shell reporting it (143)."""

KILLED_STATUSES = frozenset({-9, 128 + 9})
"""SIGKILL, as ``subprocess`` and a shell report it: what a job that outlived the grace period gets."""

GPU, CPU = "gpu", "cpu"
KINDS = (GPU, CPU)

QUEUED, RUNNING, STOPPING = "queued", "running", "stopping"
FINISHED, FAILED, CANCELLED = "finished", "failed", "cancelled"
STATES = (QUEUED, RUNNING, STOPPING, FINISHED, FAILED, CANCELLED)
ACTIVE = (RUNNING, STOPPING)
ENDED = (FINISHED, FAILED, CANCELLED)

# why a running job was asked to stop (jobs.stop_reason)
PREEMPT, CANCEL, SHUTDOWN = "preempt", "cancel", "shutdown"

# events for lab_on_event (docs/hooks.md)
JOB_STARTED = "queue.job_started"
JOB_PREEMPTED = "queue.job_preempted"  # stopped and back in the queue: for a higher-priority job, or on its own
JOB_FINISHED = "queue.job_finished"
JOB_FAILED = "queue.job_failed"
JOB_CANCELLED = "queue.job_cancelled"


@dataclass(frozen=True)
class Device:
    """One schedulable device.

    ``id``: the queue's name for it (``gpu:0``, ``gpu:0.1`` for MIG instance 1 of GPU 0,
    ``cpu:3``); ``cuda``: what ``CUDA_VISIBLE_DEVICES`` names it by (an index, a
    ``GPU-``/``MIG-`` UUID; None for a CPU slot); ``memory_mb``: its memory in MiB when
    known; ``order``: its place in listings and the tie-break of best fit.
    """

    id: str
    kind: str
    cuda: str | None = None
    name: str = ""
    memory_mb: int | None = None
    order: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "cuda": self.cuda, "name": self.name,
                "memory_mb": self.memory_mb}


@dataclass(frozen=True)
class DeviceRequest:
    """What a job needs, all at once: ``count`` devices of ``kind``, each with at least
    ``min_memory_mb`` MiB (GPUs), or exactly the devices named in ``ids``."""

    kind: str = CPU
    count: int = 1
    ids: tuple[str, ...] = ()
    min_memory_mb: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"a job asks for devices of kind {' or '.join(KINDS)}, not {self.kind!r}")
        if self.ids and self.count != len(self.ids):
            raise ConfigError("a request naming devices asks for exactly those (count = number of ids)")
        if self.count < 1:
            raise LabError(f"a job needs at least one device, got {self.count}; ask for --cpus 1 or --gpus 1")
        if self.min_memory_mb < 0:
            raise LabError(f"--gpu-memory must be 0 or more, got {self.min_memory_mb} MiB")

    def suits(self, device: Device) -> bool:
        """Whether ``device`` may be one of this job's devices."""
        if self.ids:
            return device.id in self.ids
        if device.kind != self.kind:
            return False
        return not self.min_memory_mb or (device.memory_mb or 0) >= self.min_memory_mb

    def describe(self) -> str:
        """``2 gpu``, ``1 gpu >= 40960 MiB``, ``gpu:0,gpu:2``, ``1 cpu``."""
        if self.ids:
            return ",".join(self.ids)
        text = f"{self.count} {self.kind}"
        return text + (f" >= {self.min_memory_mb} MiB" if self.min_memory_mb else "")

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "count": self.count, "ids": list(self.ids),
                           "min_memory_mb": self.min_memory_mb}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DeviceRequest":
        data = json.loads(text)
        return cls(kind=data["kind"], count=data["count"], ids=tuple(data.get("ids") or ()),
                   min_memory_mb=data.get("min_memory_mb") or 0)


def request_for(devices: "list[Device] | tuple[Device, ...]", *, gpus: int | None = None, cpus: int | None = None,
                ids: "list[str] | tuple[str, ...]" = (), gpu_memory_gb: float | None = None) -> DeviceRequest:
    """The request ``lab queue submit`` makes from its options, checked against the
    devices the queue has: a request no device set could ever meet is refused now,
    naming the fix, rather than waiting forever. Without any option: one CPU slot."""
    chosen = [name for name, value in (("--gpus", gpus), ("--cpus", cpus), ("--devices", ids or None))
              if value is not None]
    if len(chosen) > 1:
        raise LabError(f"give one of --gpus, --cpus and --devices, not {' and '.join(chosen)}")
    if gpu_memory_gb is not None and cpus is not None:
        raise LabError("--gpu-memory applies to GPUs: use it with --gpus N")
    min_mb = int(round(gpu_memory_gb * 1024)) if gpu_memory_gb else 0
    by_id = {d.id: d for d in devices}
    if ids:
        names = tuple(dict.fromkeys(i.strip() for i in ids if i.strip()))
        unknown = [i for i in names if i not in by_id]
        if unknown:
            raise LabError(f"no device {', '.join(unknown)} in this queue; its devices are "
                           f"{', '.join(by_id) or 'none'} (`lab queue devices`)")
        kinds = {by_id[i].kind for i in names}
        if len(kinds) > 1:
            raise LabError(f"--devices names GPUs and CPU slots together ({', '.join(names)}); a job holds one kind")
        request = DeviceRequest(kind=kinds.pop(), count=len(names), ids=names, min_memory_mb=min_mb)
        if min_mb and not all(request.suits(by_id[i]) for i in names):
            raise LabError(f"a device named in --devices has less memory than --gpu-memory {gpu_memory_gb} GB")
        return request
    if gpus is not None or gpu_memory_gb is not None:
        request = DeviceRequest(kind=GPU, count=1 if gpus is None else gpus, min_memory_mb=min_mb)
    else:
        request = DeviceRequest(kind=CPU, count=1 if cpus is None else cpus)
    fitting = [d for d in devices if request.suits(d)]
    if len(fitting) < request.count:
        raise LabError(_unsatisfiable(request, devices, fitting))
    return request


def _unsatisfiable(request: DeviceRequest, devices, fitting) -> str:
    of_kind = [d for d in devices if d.kind == request.kind]
    if request.kind == CPU:
        return (f"the job asks for {request.count} CPU slot(s) but the queue has {len(of_kind)}; raise "
                f"[tool.lab.queue] cpu_slots or ask for fewer (--cpus {max(len(of_kind), 1)})")
    if not of_kind:
        return ("the queue knows no GPU (nvidia-smi found none, and [tool.lab.queue] devices declares none); "
                "declare them (devices = [\"gpu:0\"]) or ask for CPU slots (--cpus N)")
    if request.min_memory_mb:
        return (f"the job asks for {request.count} GPU(s) with at least {request.min_memory_mb} MiB, and "
                f"{len(fitting)} of the queue's {len(of_kind)} have that much; ask for less memory or fewer GPUs")
    return f"the job asks for {request.count} GPU(s) but the queue has {len(of_kind)}; ask for --gpus {len(of_kind)}"


@dataclass(frozen=True)
class Job:
    """One row of the queue's ``jobs`` table (see ``lab.queue._migrations``)."""

    id: int
    name: str
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    request: DeviceRequest
    priority: int
    state: str
    submitted_at: str
    submitted_by: str = ""
    devices: tuple[str, ...] = ()
    pid: int | None = None
    pid_start: str | None = None
    attempts: int = 0
    preemptions: int = 0
    requeues: int = 0
    exit_code: int | None = None
    reason: str | None = None
    stop_reason: str | None = None
    stop_sent_at: str | None = None
    stopped_for: int | None = None
    cancel_requested: bool = False
    started_at: str | None = None
    first_started_at: str | None = None
    ended_at: str | None = None
    run_seconds: float = 0.0
    log: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Job":
        return cls(
            id=row["id"], name=row["name"], argv=tuple(json.loads(row["argv"])), cwd=row["cwd"],
            env=json.loads(row["env"] or "{}"), request=DeviceRequest.from_json(row["request"]),
            priority=row["priority"], state=row["state"], submitted_at=row["submitted_at"],
            submitted_by=row["submitted_by"] or "", devices=tuple(json.loads(row["devices"] or "[]")),
            pid=row["pid"], pid_start=row["pid_start"], attempts=row["attempts"], preemptions=row["preemptions"],
            requeues=row["requeues"], exit_code=row["exit_code"], reason=row["reason"],
            stop_reason=row["stop_reason"], stop_sent_at=row["stop_sent_at"], stopped_for=row["stopped_for"],
            cancel_requested=bool(row["cancel_requested"]), started_at=row["started_at"],
            first_started_at=row["first_started_at"], ended_at=row["ended_at"],
            run_seconds=row["run_seconds"] or 0.0, log=row["log"],
        )

    def as_dict(self) -> dict[str, Any]:
        """The job as ``lab queue list --json`` prints it (times ISO 8601 UTC, seconds)."""
        return {
            "id": self.id, "name": self.name, "argv": list(self.argv), "cwd": self.cwd, "env": dict(self.env),
            "wants": self.request.describe(), "request": json.loads(self.request.to_json()),
            "priority": self.priority, "state": self.state, "devices": list(self.devices), "pid": self.pid,
            "attempts": self.attempts, "preemptions": self.preemptions, "requeues": self.requeues,
            "exit_code": self.exit_code, "reason": self.reason, "stop_reason": self.stop_reason,
            "cancel_requested": self.cancel_requested, "submitted_by": self.submitted_by,
            "submitted_at": self.submitted_at, "first_started_at": self.first_started_at,
            "started_at": self.started_at, "ended_at": self.ended_at, "run_seconds": self.run_seconds,
            "log": self.log,
        }


def describe_status(code: int | None) -> str:
    """``exit 3``, ``killed by SIGKILL``: an exit status as ``subprocess`` reports it, in words."""
    if code is None:
        return "no exit status"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


@dataclass(frozen=True)
class Outcome:
    """Where a job goes when its process has ended."""

    state: str  # queued (back in the queue), finished, failed or cancelled
    reason: str | None
    preempted: bool = False  # counted in jobs.preemptions (stopped for a higher-priority job)
    requeued: bool = False  # counted in jobs.requeues (ended with the preempted status on its own)


def outcome(code: int | None, stop_reason: str | None, cancel_requested: bool, requeues: int,
            max_requeues: int) -> Outcome:
    """The rule for an ended job (docs/queue.md, "When a job ends"):

    - exit 0 is finished, whatever was asked of it;
    - a cancelled job (cancel asked) is cancelled;
    - a job the queue stopped (preemption, or the scheduler's own stop) goes back to the
      queue when it ended with the preempted status (75), by SIGTERM, or by the SIGKILL
      the grace period ends in; any other status is a failure (it should checkpoint and
      exit 75, or finish);
    - a job that ended with 75 or by SIGTERM on its own (a spot notice, an operator) goes
      back up to ``max_requeues`` times, then fails;
    - anything else fails.
    """
    if code == 0:
        return Outcome(FINISHED, None)
    status = describe_status(code)
    if cancel_requested or stop_reason == CANCEL:
        return Outcome(CANCELLED, f"cancelled while running ({status})")
    if stop_reason in (PREEMPT, SHUTDOWN):
        if code in REQUEUE_STATUSES or code in KILLED_STATUSES:
            if stop_reason == PREEMPT:
                return Outcome(QUEUED, f"preempted ({status}); back in the queue", preempted=True)
            return Outcome(QUEUED, f"the scheduler stopped ({status}); back in the queue")
        return Outcome(FAILED, f"{status} after SIGTERM ({stop_reason}); a job asked to stop should "
                                           f"checkpoint and exit {PREEMPTED_EXIT_STATUS}, or finish")
    if code in REQUEUE_STATUSES:
        if requeues < max_requeues:
            return Outcome(QUEUED, f"ended with {status} on its own (preempted from outside the "
                                                  f"queue); back in the queue ({requeues + 1} of {max_requeues})",
                           requeued=True)
        return Outcome(FAILED, f"ended with {status} on its own {requeues + 1} times; not requeued again "
                                           "(raise [tool.lab.queue] max_requeues to allow more)")
    return Outcome(FAILED, status)
