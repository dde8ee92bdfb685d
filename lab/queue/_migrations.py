"""The queue's tables in its own SQLite file (``runs/queue.db`` by default), as named
migrations of owner ``queue`` (applied by ``lab.sqlite.migrate`` on first open).

Add a migration by appending a ``Migration`` to ``MIGRATIONS``; never edit, rename or
reorder one that has shipped.
"""

from __future__ import annotations

import sqlite3

from lab.sqlite import Migration, append_only, run_script

OWNER = "queue"


def jobs(conn: sqlite3.Connection) -> None:
    """One row per job, updated as it moves (queued, running, stopping, then finished,
    failed or cancelled; a preempted job goes back to queued), with its history in the
    append-only ``job_events``."""
    run_script(conn, """
        CREATE TABLE jobs (
            id               INTEGER PRIMARY KEY,   -- the job's number (lab queue cancel N); also its FIFO order
            name             TEXT NOT NULL,
            argv             TEXT NOT NULL,         -- JSON list: the program and its arguments
            cwd              TEXT NOT NULL,         -- absolute working folder
            env              TEXT NOT NULL,         -- JSON object: variables set on top of the scheduler's
            request          TEXT NOT NULL,         -- JSON: kind, count, ids, min_memory_mb (lab.queue.model)
            priority         INTEGER NOT NULL,      -- higher runs first and may preempt lower
            state            TEXT NOT NULL CHECK (state IN
                                 ('queued', 'running', 'stopping', 'finished', 'failed', 'cancelled')),
            devices          TEXT,                  -- JSON list of device ids held now, or last held
            pid              INTEGER,               -- the running attempt's process (leader of its group)
            pid_start        TEXT,                  -- its start in /proc (ticks): a reused pid is never signalled
            attempts         INTEGER NOT NULL DEFAULT 0,
            preemptions      INTEGER NOT NULL DEFAULT 0,  -- times stopped for a higher-priority job
            requeues         INTEGER NOT NULL DEFAULT 0,  -- times it went back on its own (status 75, SIGTERM)
            exit_code        INTEGER,               -- the last attempt's (negative: killed by that signal)
            reason           TEXT,                  -- why it waits, or why it failed
            stop_reason      TEXT,                  -- 'preempt', 'cancel' or 'shutdown' while stopping
            stop_sent_at     TEXT,                  -- when SIGTERM was sent (SIGKILL after grace_s)
            stopped_for      INTEGER,               -- the job it was preempted for
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            submitted_by     TEXT,
            submitted_at     TEXT NOT NULL,         -- ISO 8601 UTC, like every time here
            first_started_at TEXT,
            started_at       TEXT,                  -- of the current or last attempt
            ended_at         TEXT,
            run_seconds      REAL NOT NULL DEFAULT 0,  -- wall time over all attempts
            log              TEXT                   -- the file its output goes to (all attempts)
        );
        CREATE INDEX jobs_state ON jobs (state, priority, id);
        CREATE TABLE job_events (
            id      INTEGER PRIMARY KEY,
            job_id  INTEGER NOT NULL REFERENCES jobs (id),
            at      TEXT NOT NULL,
            event   TEXT NOT NULL,   -- submitted, started, stop_sent, killed, preempted, requeued, finished, ...
            actor   TEXT,
            detail  TEXT             -- JSON
        );
        CREATE INDEX job_events_job ON job_events (job_id, id);
    """ + append_only("job_events"))


def devices(conn: sqlite3.Connection) -> None:
    """The scheduler's view of its devices: the set it schedules on (rewritten when it
    starts) and each device's latest utilization sample, for ``lab queue devices``."""
    run_script(conn, """
        CREATE TABLE devices (
            id               TEXT PRIMARY KEY,   -- gpu:0, gpu:0.1 (a MIG instance), cpu:0
            kind             TEXT NOT NULL,
            cuda             TEXT,               -- what CUDA_VISIBLE_DEVICES names it by
            name             TEXT,
            memory_mb        INTEGER,
            ord              INTEGER NOT NULL,
            job_id           INTEGER,            -- the job holding it at the last sample
            sampled_at       TEXT,
            utilization_pct  REAL,               -- GPU: nvidia-smi's utilization.gpu; CPU slot: the job's CPU time
                                                 -- over wall time, per slot held
            memory_used_mb   REAL,
            job_on_device    INTEGER,            -- GPU: 1 when a process of its job uses it (nvidia-smi), else 0
            idle_since       TEXT                -- held and idle (below idle_util_pct, or no process on it) since
        );
        CREATE TABLE scheduler (
            id           INTEGER PRIMARY KEY CHECK (id = 1),
            pid          INTEGER NOT NULL,
            host         TEXT NOT NULL,
            started_at   TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL,
            stopped_at   TEXT,
            source       TEXT NOT NULL        -- where its devices came from: declared, nvidia-smi, cpu only
        );
    """)


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_jobs", jobs),
    Migration("0002_devices", devices),
)
