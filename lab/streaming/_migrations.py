"""The stream file's schema (``data/stream.db``), as named migrations of owner ``stream``
(applied by ``lab.sqlite.migrate`` when a ``SqliteEventLog`` or ``StreamStore`` opens it).

One file holds both sides of the embedded backend, so that a consumer commits its
offset in the same transaction as the predictions it made:

- the log: ``events`` (append-only: triggers refuse UPDATE and DELETE) and
  ``offsets`` (one row per stream and consumer group: the last event id committed);
- the consumer's products: ``predictions`` (one row per idempotency key and group),
  ``dead_letters`` (events that could not be scored, with the reason),
  ``model_state`` (the version a group scores with now) and ``model_changes`` (every
  change of model a group saw, with the policy applied; append-only).

With the Redis backend the log lives in Redis and this file holds only the products.
Add a migration by appending to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

from lab.sqlite import Migration, append_only, run_script

OWNER = "stream"


def _log(conn: sqlite3.Connection) -> None:
    run_script(conn, """
        CREATE TABLE events (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- the event's offset; never reused
            stream       TEXT NOT NULL,
            payload      TEXT NOT NULL,                      -- as published (JSON expected)
            appended_at  TEXT NOT NULL                       -- UTC, ISO 8601
        );
        CREATE INDEX events_stream ON events (stream, id);
        CREATE INDEX events_stream_time ON events (stream, appended_at);
        CREATE TABLE offsets (
            stream       TEXT NOT NULL,
            group_name   TEXT NOT NULL,
            committed    INTEGER NOT NULL,                   -- the last event id the group committed
            updated_at   TEXT NOT NULL,
            PRIMARY KEY (stream, group_name)
        );
    """ + append_only("events"))


def _products(conn: sqlite3.Connection) -> None:
    run_script(conn, """
        CREATE TABLE predictions (
            id              INTEGER PRIMARY KEY,
            key             TEXT NOT NULL,                   -- the idempotency key: stream/log id/model/v version
            stream          TEXT NOT NULL,
            group_name      TEXT NOT NULL,
            log_id          TEXT NOT NULL,                   -- the log's id of the event
            model_name      TEXT NOT NULL,
            model_version   INTEGER NOT NULL,
            score           REAL NOT NULL,
            prediction      TEXT NOT NULL,                   -- what a sink received (JSON object)
            at              TEXT NOT NULL,
            UNIQUE (group_name, key)
        );
        CREATE INDEX predictions_log_id ON predictions (stream, group_name, log_id);
        CREATE TABLE dead_letters (
            id              INTEGER PRIMARY KEY,
            stream          TEXT NOT NULL,
            group_name      TEXT NOT NULL,
            log_id          TEXT NOT NULL,
            payload         TEXT NOT NULL,
            reason          TEXT NOT NULL,
            at              TEXT NOT NULL,
            UNIQUE (stream, group_name, log_id)
        );
        CREATE TABLE model_state (
            stream          TEXT NOT NULL,
            group_name      TEXT NOT NULL,
            model_name      TEXT NOT NULL,
            model_version   INTEGER NOT NULL,
            since           TEXT NOT NULL,
            PRIMARY KEY (stream, group_name)
        );
        CREATE TABLE model_changes (
            id              INTEGER PRIMARY KEY,
            stream          TEXT NOT NULL,
            group_name      TEXT NOT NULL,
            model_name      TEXT NOT NULL,
            from_version    INTEGER NOT NULL,
            to_version      INTEGER NOT NULL,
            policy          TEXT NOT NULL,                   -- forward or rescore
            alias_moved_at  TEXT,                            -- when the alias moved (rescore reads from there)
            rescored        INTEGER NOT NULL,                -- events scored again with to_version
            at              TEXT NOT NULL
        );
    """ + append_only("model_changes"))


MIGRATIONS = (
    Migration("0001_log", _log),
    Migration("0002_products", _products),
)
