"""The SQLite connection under the registry: WAL, write transactions that take the lock
first, a bounded retry when another process holds it, and JSON/time helpers.

Why ``BEGIN IMMEDIATE``: a deferred ``BEGIN`` that reads and then writes cannot upgrade
its read lock while another connection writes, and SQLite answers "database is locked"
at once, whatever the busy timeout. Taking the write lock up front makes the busy
timeout (and our retry on top of it) apply.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import numbers
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from lab.errors import ConfigError, LabError

BUSY_TIMEOUT_S = 5.0
"""How long one ``BEGIN IMMEDIATE`` waits inside SQLite for another writer."""

LOCK_RETRY_S = 30.0
"""How long, in all, a writer keeps retrying before it gives up with a LabError."""


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds; stored strings sort by time."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def to_utc_iso(when: str | dt.datetime | dt.date) -> str:
    """A moment in the stored format. A naive datetime is read as UTC; a bare date
    (a ``date`` or ``"YYYY-MM-DD"``) means the end of that day, so "what was live on
    day X" sees every change made that day."""
    if isinstance(when, str):
        text = when.strip()
        try:
            if len(text) == 10:
                when = dt.date.fromisoformat(text)
            else:
                when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise LabError(
                f"cannot read {when!r} as a date or time; use ISO 8601, e.g. "
                "2026-11-29 or 2026-11-29T14:00:00+00:00"
            ) from None
    if isinstance(when, dt.date) and not isinstance(when, dt.datetime):
        when = dt.datetime.combine(when, dt.time.max, tzinfo=dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def dumps(value: Any, what: str) -> str:
    """JSON text for a JSON column; a value JSON cannot hold is a LabError naming ``what``."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise LabError(f"{what} must be JSON-serializable (str, number, bool, list, dict): {exc}") from None


def loads(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


def as_float(value: Any, what: str) -> float:
    """A metric value as float (numpy scalars too); bools and non-numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LabError(f"{what} must be a number, got {value!r}")
    return float(value)


def require_dict(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a dict, got {type(value).__name__}")
    return value


def require_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    return value


def from_real(value: float | None) -> float:
    # SQLite stores NaN as NULL; give it back as NaN.
    return math.nan if value is None else value


class Database:
    """One connection to the registry file, safe to share between threads.

    ``write()`` and ``read()`` are the only ways in: each is one transaction, so a
    caller never sees half of another writer's change and never leaves half of its own.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the driver opens no implicit transactions; we issue
        # BEGIN IMMEDIATE ourselves, and sqlite-utils nests its writes in savepoints.
        conn = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._retry(lambda: self.db.enable_wal(), "switch the registry to WAL mode")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @property
    def journal_mode(self) -> str:
        return self.db.journal_mode

    def _retry(self, action, doing: str):
        deadline = time.monotonic() + LOCK_RETRY_S
        pause = 0.01
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked:
                    raise
                if time.monotonic() >= deadline:
                    raise LabError(
                        f"could not {doing}: {self.path} stayed locked by another writer "
                        f"for {LOCK_RETRY_S:.0f}s; stop the other lab process or try again"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction: ``BEGIN IMMEDIATE`` (retried while another process holds
        the lock), commit on success, roll back on any exception."""
        with self._lock:
            self._retry(lambda: self.db.conn.execute("BEGIN IMMEDIATE"), "start a registry write")
            try:
                yield self.db
            except BaseException:
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self._retry(lambda: self.db.conn.execute("COMMIT"), "commit a registry write")
                except BaseException:
                    if self.db.conn.in_transaction:
                        self.db.conn.execute("ROLLBACK")
                    raise

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite_utils.Database]:
        """A read transaction: one consistent snapshot across several queries."""
        with self._lock:
            if self.db.conn.in_transaction:  # nested inside write(): same snapshot
                yield self.db
                return
            self.db.conn.execute("BEGIN")
            try:
                yield self.db
            finally:
                if self.db.conn.in_transaction:
                    self.db.conn.execute("COMMIT")

    def rows(self, sql: str, params: Any = ()) -> list[dict]:
        """All rows of a query as dicts (call inside ``read()`` or ``write()``)."""
        return list(self.db.query(sql, params))

    def one(self, sql: str, params: Any = ()) -> dict | None:
        found = self.rows(sql, params)
        return found[0] if found else None
