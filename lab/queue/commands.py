"""``lab queue submit | list | devices | cancel | run`` (named in lab.commands)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from lab.errors import LabError
from lab.events import emit
from lab.queue.model import ACTIVE, CANCELLED, ENDED, JOB_CANCELLED, QUEUED, STATES, Job, request_for
from lab.queue.store import JobStore, scheduler_running

_NO_SCHEDULER = "no scheduler is running: start one with `lab queue run`"


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


# -- submit ------------------------------------------------------------------------------


def submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="the program and its arguments, after -- (lab queue submit --gpus 1 -- lab run train)")
    p.add_argument("--name", help="a name to know it by (default: the command)")
    p.add_argument("--priority", type=int, default=0,
                   help="higher runs first, and preempts running jobs of lower priority (default 0)")
    p.add_argument("--gpus", type=int, metavar="N", help="any N GPUs (or MIG instances), all at once")
    p.add_argument("--cpus", type=int, metavar="N", help="N CPU slots (the default: 1 slot)")
    p.add_argument("--devices", metavar="IDS", help="exactly these devices, comma-separated (gpu:0,gpu:1); see "
                                                    "`lab queue devices`")
    p.add_argument("--gpu-memory", type=float, metavar="GB", help="only GPUs with at least this much memory (GiB)")
    p.add_argument("--cwd", help="the folder it runs in (default: the current folder)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="a variable set for the job, on top of the scheduler's environment (repeatable)")
    _json_arg(p)


def _program(argv: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    """``argv`` with its program checked now (not when the job starts, maybe hours later)
    and, found on PATH, made absolute, so the scheduler runs the same program."""
    program = argv[0]
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        if not path.is_file() or not os.access(path, os.X_OK):
            raise LabError(f"{program} is not an executable file (looked in {cwd}); fix the path, or run it "
                           f"through its interpreter (-- python {program})")
        return argv
    found = shutil.which(program, path=env.get("PATH", os.environ.get("PATH")))
    if not found:
        raise LabError(f"cannot find the program {program!r} on PATH; give its full path, or activate the "
                       "environment that has it before submitting")
    return [found, *argv[1:]]


def submit_run(args: argparse.Namespace, ctx) -> int:
    from lab.queue.devices import discover

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("give the job's command after --: lab queue submit --cpus 1 -- python train.py")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key or not key.replace("_", "a").isalnum():
            raise LabError(f"--env {item!r}: write KEY=VALUE (a variable name, =, its value)")
        env[key] = value
    cwd = Path(args.cwd).resolve() if args.cwd else Path.cwd()
    if not cwd.is_dir():
        raise LabError(f"--cwd {args.cwd}: no such folder")
    devices, _ = discover(ctx.config.queue)
    ids = args.devices.split(",") if args.devices else ()
    request = request_for(devices, gpus=args.gpus, cpus=args.cpus, ids=ids, gpu_memory_gb=args.gpu_memory)
    argv = _program(argv, cwd, env)
    name = args.name or " ".join([Path(argv[0]).name, *argv[1:]])[:60]
    with JobStore.for_lab(ctx.config) as store:
        job = store.submit(name=name, argv=argv, cwd=cwd, request=request, priority=args.priority, env=env,
                           log_dir=ctx.config.runs_path / "queue")
        running = scheduler_running(store.path)
    if args.json:
        print(json.dumps(job.as_dict(), indent=2))
        return 0
    print(f"job {job.id} queued: {job.name} (wants {request.describe()}, priority {job.priority}); output in {job.log}")
    if not running:
        print(f"lab queue: {_NO_SCHEDULER}", file=sys.stderr)
    return 0


# -- list --------------------------------------------------------------------------------


def list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="every job; default: queued and running ones and the "
                                                      "20 that ended last")
    p.add_argument("--state", action="append", choices=STATES, help="only jobs in this state (repeatable)")
    _json_arg(p)


def _when(at: str | None) -> str:
    return at[5:19].replace("T", " ") if at else "-"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _selected(store: JobStore, args: argparse.Namespace) -> list[Job]:
    if args.state:
        return store.jobs(args.state)
    if args.all:
        return store.jobs()
    live = store.jobs([QUEUED, *ACTIVE])
    ended = store.jobs(ENDED, limit=20)
    return sorted(live + ended, key=lambda j: j.id)


def list_run(args: argparse.Namespace, ctx) -> int:
    with JobStore.for_lab(ctx.config) as store:
        jobs = _selected(store, args)
        running = scheduler_running(store.path)
    if args.json:
        print(json.dumps([j.as_dict() for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no jobs; queue one with `lab queue submit -- COMMAND`")
    else:
        rows = [("ID", "NAME", "STATE", "PRIO", "WANTS", "DEVICES", "SUBMITTED", "STARTED", "ENDED", "RAN", "TRIES",
                 "NOTE")]
        for j in jobs:
            state = j.state if j.state != "stopping" else f"stopping ({j.stop_reason})"
            note = j.reason or ""
            if j.cancel_requested and j.state in ACTIVE:
                note = "cancel requested"
            rows.append((str(j.id), j.name[:28], state, str(j.priority), j.request.describe(),
                         ",".join(j.devices) if j.state in ACTIVE else "-", _when(j.submitted_at),
                         _when(j.started_at), _when(j.ended_at), _duration(j.run_seconds),
                         f"{j.attempts}" + (f" ({j.preemptions}p)" if j.preemptions else ""), note[:70]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        print("times are UTC (month-day hour:minute:second); TRIES: attempts (p: of them preempted)")
    waiting = any(j.state == QUEUED for j in jobs)
    if waiting and not running:
        print(f"lab queue: {_NO_SCHEDULER}", file=sys.stderr)
    return 0


# -- devices -----------------------------------------------------------------------------


def devices_args(p: argparse.ArgumentParser) -> None:
    _json_arg(p)


def devices_run(args: argparse.Namespace, ctx) -> int:
    from lab.queue.status import device_report

    with JobStore.for_lab(ctx.config) as store:
        report = device_report(ctx.config, store)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = [("DEVICE", "NAME", "MEMORY", "JOB", "UTIL", "MEM USED", "IDLE")]
    for d in report["devices"]:
        util = "-" if d["utilization_pct"] is None else f"{d['utilization_pct']:.0f}%"
        used = "-" if d["memory_used_mb"] is None else f"{d['memory_used_mb'] / 1024:.1f} GiB"
        memory = "-" if d["memory_mb"] is None else f"{d['memory_mb'] / 1024:.0f} GiB"
        job = "free" if d["job"] is None else f"{d['job']} ({(d['job_name'] or '')[:20]})"
        idle = "-" if d["idle_for_s"] is None else f"{d['idle_for_s']:.0f}s" + (" RESERVED, IDLE" if d["idle_reserved"]
                                                                               else "")
        if d["job_on_device"] is False:
            idle += " (no process of the job on it)"
        rows.append((d["id"], d["name"][:28], memory, job, util, used, idle))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for d in report["devices"]:
        if d["idle_reserved"]:
            print(f"idle reservation: {d['id']} is held by job {d['job']} ({d['job_name']}) and has been idle for "
                  f"{d['idle_for_s']:.0f} s; check that the job uses it, or cancel it (lab queue cancel {d['job']})")
    scheduler = report["scheduler"]
    if scheduler["running"]:
        print(f"scheduler: running (pid {scheduler['pid']}); GPUs from {scheduler['source']}")
    else:
        print(f"scheduler: not running (GPUs from {scheduler['source']}); {_NO_SCHEDULER}")
    return 0


# -- cancel ------------------------------------------------------------------------------


def cancel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", nargs="+", type=int, metavar="JOB", help="job number(s), as `lab queue list` shows")
    _json_arg(p)


def cancel_run(args: argparse.Namespace, ctx) -> int:
    out = []
    with JobStore.for_lab(ctx.config) as store:
        running = scheduler_running(store.path)
        for job_id in args.jobs:
            job = store.cancel(job_id)
            if job.state == CANCELLED:
                emit(ctx.pm, JOB_CANCELLED, job=job.id, job_name=job.name, exit_code=None, attempts=job.attempts,
                     run_seconds=round(job.run_seconds, 3), reason=job.reason)
            out.append(job)
    if args.json:
        print(json.dumps([j.as_dict() for j in out], indent=2))
        return 0
    grace = ctx.config.queue.grace_s
    for job in out:
        if job.state == CANCELLED:
            print(f"job {job.id} cancelled")
        elif running:
            print(f"job {job.id} cancel requested: the scheduler stops it (SIGTERM, SIGKILL after {grace:g} s)")
        else:
            print(f"job {job.id} cancel requested; {_NO_SCHEDULER} (it stops the job first)")
    return 0


# -- run ---------------------------------------------------------------------------------


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--until-empty", action="store_true",
                   help="exit once nothing runs and nothing queued can start (else: until SIGTERM or Ctrl-C)")
    _json_arg(p)


def run_run(args: argparse.Namespace, ctx) -> int:
    from lab.queue.scheduler import Scheduler

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # hand the jobs back, then stop
        signal.signal(sig, lambda *_: stop.set())
    scheduler = Scheduler(ctx.config, ctx.pm)
    try:
        summary = scheduler.run(stop, until_empty=args.until_empty)
    finally:
        scheduler.store.close()
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        states = ", ".join(f"{n} {s}" for s, n in sorted(summary["states"].items())) or "no jobs"
        print(f"lab queue: stopped after starting {summary['started']} job(s); the queue holds {states}")
    return 0
