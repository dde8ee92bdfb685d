"""``JobStore``: the queue's SQLite file (``runs/queue.db`` unless ``[tool.lab.queue]
store`` says otherwise), shared by ``lab queue submit`` in any shell and the one
scheduler (``lab queue run``).

Every change of a job is one write transaction that checks the state it expects
(``UPDATE ... WHERE state = 'queued'``), so a cancel and a start racing for a job never
both win. Each change also appends a row to ``job_events``, the job's history.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from lab.errors import LabError, NotFound
from lab.events import current_actor
from lab.queue import _migrations
from lab.queue.model import ACTIVE, CANCELLED, ENDED, QUEUED, RUNNING, STOPPING, Device, DeviceRequest, Job
from lab.sqlite import Database, dumps, utc_now


def queue_path(config) -> Path:
    """The queue's file: ``[tool.lab.queue] store`` under the project root, else ``<runs_dir>/queue.db``."""
    return config.root / config.queue.store if config.queue.store else config.runs_path / "queue.db"


def _seconds_since(start: str | None, end: str) -> float:
    if not start:
        return 0.0
    return max((dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds(), 0.0)


class JobStore:
    """The jobs, their history, and the scheduler's devices and samples. Safe to share
    between threads (one ``lab.sqlite.Database``); several processes may open the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.db = Database.open_migrated(self.path, _migrations.OWNER, _migrations.MIGRATIONS, what="job queue")

    @classmethod
    def for_lab(cls, config) -> "JobStore":
        return cls(queue_path(config))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def data_version(self) -> int:
        """A number that changes when another connection commits to the file (SQLite's
        ``PRAGMA data_version``): the scheduler plans again only then, or after its own changes."""
        return self.db.one("PRAGMA data_version")["data_version"]

    # -- jobs ------------------------------------------------------------------------

    def _event(self, conn, job_id: int, event: str, at: str, actor: str | None = None, **detail: Any) -> None:
        conn.execute("INSERT INTO job_events (job_id, at, event, actor, detail) VALUES (?, ?, ?, ?, ?)",
                     [job_id, at, event, actor, dumps(detail, "a job event's detail")])

    def submit(self, *, name: str, argv: Sequence[str], cwd: str | os.PathLike, request: DeviceRequest,
               priority: int = 0, env: dict[str, str] | None = None, actor: str | None = None,
               log_dir: str | os.PathLike | None = None) -> Job:
        """Queue a job; returns it (state ``queued``). ``log_dir``: its output file's folder
        (``<id>.log`` there)."""
        if not argv:
            raise LabError("a job needs a command: lab queue submit [OPTIONS] -- PROGRAM [ARGS...]")
        now, actor = utc_now(), actor or current_actor()
        with self.db.write("queue a job") as conn:
            cursor = conn.execute(
                "INSERT INTO jobs (name, argv, cwd, env, request, priority, state, submitted_by, submitted_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, json.dumps(list(argv)), str(Path(cwd).resolve()), json.dumps(env or {}, sort_keys=True),
                 request.to_json(), int(priority), QUEUED, actor, now])
            job_id = cursor.lastrowid
            if log_dir is not None:
                conn.execute("UPDATE jobs SET log = ? WHERE id = ?", [str(Path(log_dir) / f"{job_id}.log"), job_id])
            self._event(conn, job_id, "submitted", now, actor, priority=int(priority), wants=request.describe())
        return self.job(job_id)

    def job(self, job_id: int) -> Job:
        row = self.db.one("SELECT * FROM jobs WHERE id = ?", [int(job_id)])
        if row is None:
            raise NotFound(f"no job {job_id} in {self.path}; `lab queue list --all` shows the jobs there are")
        return Job.from_row(row)

    def jobs(self, states: Iterable[str] | None = None, *, limit: int | None = None) -> list[Job]:
        """Jobs in ``states`` (all when None), by job number; ``limit``: the newest that many."""
        where, params = "", []
        if states is not None:
            states = list(states)
            where = f"WHERE state IN ({', '.join('?' for _ in states)})"
            params = states
        sql = f"SELECT * FROM jobs {where} ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM (SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?) ORDER BY id"
            params = [*params, int(limit)]
        return [Job.from_row(r) for r in self.db.rows(sql, params)]

    def events(self, job_id: int | None = None) -> list[dict]:
        """A job's history (every job's when None), oldest first; ``detail`` decoded."""
        where, params = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        rows = self.db.rows(f"SELECT * FROM job_events {where} ORDER BY id", params)
        return [{**r, "detail": json.loads(r["detail"] or "{}")} for r in rows]

    def cancel(self, job_id: int, actor: str | None = None) -> Job:
        """A queued job is cancelled at once; a running one is marked, and the scheduler
        stops it (SIGTERM, then SIGKILL after the grace period). An ended job is a LabError."""
        now, actor = utc_now(), actor or current_actor()
        with self.db.write("cancel a job") as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", [int(job_id)]).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id} in {self.path}; `lab queue list --all` shows the jobs there are")
            if row["state"] in ENDED:
                raise LabError(f"job {job_id} is already {row['state']}; nothing to cancel")
            if row["state"] == QUEUED:
                conn.execute("UPDATE jobs SET state = ?, ended_at = ?, reason = ?, cancel_requested = 1 WHERE id = ?",
                             [CANCELLED, now, f"cancelled by {actor} while queued", job_id])
                self._event(conn, job_id, "cancelled", now, actor, state=QUEUED)
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", [job_id])
                self._event(conn, job_id, "cancel_requested", now, actor, state=row["state"])
        return self.job(job_id)

    # -- what the scheduler does to jobs ---------------------------------------------------

    def claim(self, job_id: int, devices: Sequence[str]) -> Job | None:
        """Move a queued job to running on ``devices``; None when it is no longer queued
        (cancelled meanwhile)."""
        now = utc_now()
        with self.db.write("start a job") as conn:
            changed = conn.execute(
                "UPDATE jobs SET state = ?, devices = ?, attempts = attempts + 1, started_at = ?, "
                "first_started_at = COALESCE(first_started_at, ?), ended_at = NULL, exit_code = NULL, reason = NULL, "
                "stop_reason = NULL, stop_sent_at = NULL, stopped_for = NULL, pid = NULL, pid_start = NULL "
                "WHERE id = ? AND state = ? AND cancel_requested = 0",
                [RUNNING, json.dumps(list(devices)), now, now, job_id, QUEUED]).rowcount
        return self.job(job_id) if changed else None

    def started(self, job_id: int, pid: int, pid_start: str | None, devices: Sequence[str], attempt: int) -> None:
        now = utc_now()
        with self.db.write("record a job's process") as conn:
            conn.execute("UPDATE jobs SET pid = ?, pid_start = ? WHERE id = ?", [pid, pid_start, job_id])
            self._event(conn, job_id, "started", now, None, pid=pid, devices=list(devices), attempt=attempt)

    def stopping(self, job_id: int, reason: str, for_job: int | None = None) -> None:
        """Record that SIGTERM was sent to a running job (``reason``: preempt, cancel, shutdown)."""
        now = utc_now()
        with self.db.write("record a job's stop") as conn:
            conn.execute("UPDATE jobs SET state = ?, stop_reason = ?, stop_sent_at = ?, stopped_for = ? "
                         "WHERE id = ? AND state IN (?, ?)", [STOPPING, reason, now, for_job, job_id, *ACTIVE])
            self._event(conn, job_id, "stop_sent", now, None, reason=reason, for_job=for_job)

    def note(self, job_id: int, event: str, **detail: Any) -> None:
        """Append an event to a job's history only (``killed`` after the grace period, say)."""
        with self.db.write("record a job event") as conn:
            self._event(conn, job_id, event, utc_now(), None, **detail)

    def ended(self, job_id: int, state: str, *, exit_code: int | None, reason: str | None, event: str,
              preempted: bool = False, requeued: bool = False, **detail: Any) -> Job:
        """Record the end of a job's attempt: ``state`` is where it goes (``queued`` again
        when preempted or requeued, else finished, failed or cancelled)."""
        now = utc_now()
        with self.db.write("record a job's end") as conn:
            row = conn.execute("SELECT started_at FROM jobs WHERE id = ?", [job_id]).fetchone()
            seconds = _seconds_since(row["started_at"] if row else None, now)
            conn.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, pid = NULL, pid_start = NULL, "
                "run_seconds = run_seconds + ?, ended_at = CASE WHEN ? = 'queued' THEN NULL ELSE ? END, "
                "preemptions = preemptions + ?, requeues = requeues + ?, stop_reason = NULL, stop_sent_at = NULL "
                "WHERE id = ?",
                [state, exit_code, reason, seconds, state, now, int(preempted), int(requeued), job_id])
            self._event(conn, job_id, event, now, None, exit_code=exit_code, reason=reason, seconds=seconds,
                        **detail)
        return self.job(job_id)

    def set_reasons(self, reasons: dict[int, str]) -> None:
        """Why each queued job waits (shown by ``lab queue list``); written only when changed."""
        if not reasons:
            return
        current = {r["id"]: r["reason"] for r in self.db.rows(
            f"SELECT id, reason FROM jobs WHERE state = ? AND id IN ({', '.join('?' for _ in reasons)})",
            [QUEUED, *reasons])}
        changed = {k: v for k, v in reasons.items() if k in current and current[k] != v}
        if changed:
            with self.db.write("record why jobs wait") as conn:
                conn.executemany("UPDATE jobs SET reason = ? WHERE id = ? AND state = ?",
                                 [[v, k, QUEUED] for k, v in changed.items()])

    def cancel_requested(self) -> list[Job]:
        return [Job.from_row(r) for r in self.db.rows(
            "SELECT * FROM jobs WHERE cancel_requested = 1 AND state = ? ORDER BY id", [RUNNING])]

    # -- the scheduler and its devices -------------------------------------------------------

    def scheduler_started(self, devices: Sequence[Device], source: str) -> None:
        """Record this process as the scheduler and the devices it schedules on."""
        now = utc_now()
        with self.db.write("record the scheduler") as conn:
            conn.execute("DELETE FROM devices")
            conn.executemany(
                "INSERT INTO devices (id, kind, cuda, name, memory_mb, ord) VALUES (?, ?, ?, ?, ?, ?)",
                [[d.id, d.kind, d.cuda, d.name, d.memory_mb, d.order] for d in devices])
            conn.execute("INSERT OR REPLACE INTO scheduler (id, pid, host, started_at, heartbeat_at, stopped_at, "
                         "source) VALUES (1, ?, ?, ?, ?, NULL, ?)", [os.getpid(), socket.gethostname(), now, now,
                                                                      source])

    def scheduler_stopped(self) -> None:
        with self.db.write("record the scheduler's stop") as conn:
            conn.execute("UPDATE scheduler SET stopped_at = ? WHERE pid = ?", [utc_now(), os.getpid()])

    def scheduler(self) -> dict | None:
        return self.db.one("SELECT * FROM scheduler WHERE id = 1")

    def save_samples(self, samples: Sequence[dict[str, Any]]) -> None:
        """Each device's latest sample (``id``, ``job_id``, ``utilization_pct``,
        ``memory_used_mb``, ``job_on_device``, ``idle_since``) and the scheduler's heartbeat."""
        now = utc_now()
        with self.db.write("record device samples") as conn:
            conn.executemany(
                "UPDATE devices SET job_id = ?, sampled_at = ?, utilization_pct = ?, memory_used_mb = ?, "
                "job_on_device = ?, idle_since = ? WHERE id = ?",
                [[s.get("job_id"), now, s.get("utilization_pct"), s.get("memory_used_mb"),
                  None if s.get("job_on_device") is None else int(s["job_on_device"]), s.get("idle_since"), s["id"]]
                 for s in samples])
            conn.execute("UPDATE scheduler SET heartbeat_at = ? WHERE pid = ?", [now, os.getpid()])

    def device_rows(self) -> list[dict]:
        return self.db.rows("SELECT * FROM devices ORDER BY ord")


# -- the one scheduler per queue -------------------------------------------------------------


def lock_path(path: str | os.PathLike) -> Path:
    """The file the scheduler of the queue at ``path`` holds an exclusive lock on while it runs."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def scheduler_lock(path: str | os.PathLike, store: "JobStore | None" = None) -> Iterator[None]:
    """Hold the queue's scheduler lock (``flock``: the system drops it when the process
    dies, however it dies); a LabError naming the running scheduler when another holds it."""
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for _ in range(20):  # `lab queue list` probes the lock for a moment: wait it out
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            row = store.scheduler() if store is not None else None
            who = f" (pid {row['pid']} on {row['host']}, since {row['started_at'][:19]})" if row else ""
            pid = row["pid"] if row else "PID"
            raise LabError(f"another `lab queue run` is scheduling this queue{who}; use it, or stop it first "
                           f"(kill -TERM {pid}: it hands its jobs back to the queue)") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def scheduler_running(path: str | os.PathLike) -> bool:
    """Whether a scheduler holds the queue's lock now (a probe: takes it and lets go at once)."""
    target = lock_path(path)
    if not target.exists():
        return False
    fd = os.open(target, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
