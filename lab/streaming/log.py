"""The event log a streaming consumer reads: the ``EventLog`` contract and the embedded
SQLite implementation.

An event log holds named streams of events (JSON text, one request of a model's
``RequestSchema`` each) in the order they were appended, and remembers, per consumer
group, which events the group has committed. ``lab_event_log`` lets a plugin supply
another backend (``plugins/redis_streams``: Redis Streams with consumer groups); with
no plugin answering, a lab uses ``SqliteEventLog`` in ``data/stream.db``.

Delivery is at least once: an event read and not committed (the consumer died) is read
again by the group. The consumer makes side effects exactly once on top of that with
idempotency keys (``lab.streaming.consumer``).
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from lab.errors import ConfigError, LabError
from lab.sqlite import connect, migrate, utc_now, write_transaction
from lab.streaming._migrations import MIGRATIONS, OWNER


@dataclass(frozen=True)
class LogEvent:
    """One event as the log holds it: ``id`` is the log's own id (an offset, or a Redis
    stream id), unique within its stream; ``payload`` the text published;
    ``appended_at`` when the log took it (UTC, ISO 8601)."""

    id: str
    payload: str
    appended_at: str


def encode_payload(event: Any) -> str:
    """The text appended for ``event``: a dict becomes compact JSON; text is kept as is
    (a consumer dead-letters text that is not a JSON object)."""
    if isinstance(event, str):
        return event
    if isinstance(event, bytes):
        return event.decode("utf-8", errors="replace")
    try:
        return json.dumps(event, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LabError(f"an event must be a JSON object (a dict of the request's fields): {exc}") from None


def check_name(value: Any, what: str) -> str:
    """A stream or group name: non-empty text without whitespace or ``/``."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value) or "/" in value:
        raise ConfigError(f"{what} must be a non-empty name without spaces or '/', got {value!r}")
    return value


class EventLog(abc.ABC):
    """One stream of an event log, and its consumer groups.

    Contract, for every backend:

    - ``append`` keeps the order of its events and returns their ids; ids are unique
      in the stream and never reused. All of a call's events are appended, or none.
    - ``read`` returns, for a group and consumer, at most ``count`` events the group has
      not committed: first those delivered before and never committed (a consumer died
      holding them), then new ones in log order. It waits up to ``wait_s`` for a first
      event and returns ``[]`` when none came.
    - ``commit`` runs inside the write transaction of the consumer's stream store
      (``conn``, a connection to ``data/stream.db``); a backend whose offsets live in
      that file (``transactional = True``) records them there, so offsets and
      predictions commit together. ``acknowledge`` runs after that commit (a backend
      whose offsets live elsewhere records them there: Redis's XACK).
    - ``lag`` counts the events a group has not committed (undelivered and pending).
    - ``consumed_since`` pages through events appended at or after a time that the
      group has already read (re-scoring after a model change).

    One object serves one thread at a time; ``close`` releases its connections.
    """

    backend: str = "?"
    transactional: bool = False

    def __init__(self, stream: str):
        self.stream = check_name(stream, "a stream name")

    @abc.abstractmethod
    def append(self, events: Iterable[Any]) -> list[str]:
        """Append events (dicts, or text) in order; their ids."""

    @abc.abstractmethod
    def read(self, group: str, consumer: str, count: int, wait_s: float = 0.0) -> list[LogEvent]:
        """At most ``count`` events ``group`` has not committed (see the class docstring)."""

    def commit(self, conn, group: str, consumer: str, events: Sequence[LogEvent]) -> None:
        """Record ``events`` as committed by ``group`` inside the store's transaction ``conn``."""

    def acknowledge(self, group: str, consumer: str, events: Sequence[LogEvent]) -> None:
        """Record ``events`` as committed by ``group`` once the store's transaction committed."""

    @abc.abstractmethod
    def lag(self, group: str) -> int:
        """How many events of the stream ``group`` has not committed."""

    @abc.abstractmethod
    def length(self) -> int:
        """How many events the stream holds."""

    @abc.abstractmethod
    def groups(self) -> list[dict]:
        """Every consumer group of the stream: ``group``, ``lag`` and what else the backend knows."""

    @abc.abstractmethod
    def consumed_since(self, group: str, since: str, after: str | None, count: int) -> list[LogEvent]:
        """At most ``count`` events appended at or after ``since`` (UTC ISO 8601) that ``group``
        has read, in log order, starting after the id ``after`` (None: from the first)."""

    def describe(self) -> str:
        """Where the log lives, for ``lab stream status``."""
        return self.backend

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SqliteEventLog(EventLog):
    """The embedded log: an append-only ``events`` table and per-group ``offsets`` in one
    SQLite file (``data/stream.db``), the file the consumer's predictions go to, so an
    offset commits in the same transaction as the predictions it covers.

    A group's consumers share one offset: run one consumer per group (a second one would
    score the same events; its duplicates are absorbed by the idempotency keys, but the
    work is wasted). Fan out with several groups.
    """

    backend = "sqlite"
    transactional = True

    def __init__(self, path: str | Path, stream: str, *, poll_s: float = 0.05):
        super().__init__(stream)
        self.path = Path(path).resolve()
        self.poll_s = poll_s
        self._conn = connect(self.path)
        try:
            migrate(self._conn, OWNER, MIGRATIONS)
        except BaseException:
            self._conn.close()
            raise

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def close(self) -> None:
        self._conn.close()

    def append(self, events: Iterable[Any]) -> list[str]:
        payloads = [encode_payload(e) for e in events]
        ids: list[str] = []
        with write_transaction(self._conn, doing=f"append to stream {self.stream}"):
            at = utc_now()
            for payload in payloads:
                cursor = self._conn.execute("INSERT INTO events (stream, payload, appended_at) VALUES (?, ?, ?)",
                                            [self.stream, payload, at])
                ids.append(str(cursor.lastrowid))
        return ids

    def _committed(self, group: str) -> int:
        row = self._conn.execute("SELECT committed FROM offsets WHERE stream = ? AND group_name = ?",
                                 [self.stream, group]).fetchone()
        return row["committed"] if row else 0

    def read(self, group: str, consumer: str, count: int, wait_s: float = 0.0) -> list[LogEvent]:
        deadline = time.monotonic() + wait_s
        while True:
            rows = self._conn.execute(
                "SELECT id, payload, appended_at FROM events WHERE stream = ? AND id > "
                "(SELECT coalesce(max(committed), 0) FROM offsets WHERE stream = ? AND group_name = ?) "
                "ORDER BY id LIMIT ?", [self.stream, self.stream, group, count]).fetchall()
            if rows or time.monotonic() >= deadline:
                return [LogEvent(str(r["id"]), r["payload"], r["appended_at"]) for r in rows]
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def commit(self, conn, group: str, consumer: str, events: Sequence[LogEvent]) -> None:
        if not events:
            return
        if Path(conn.execute("PRAGMA database_list").fetchone()["file"]).resolve() != self.path:
            raise LabError(f"the SQLite event log {self.path} commits offsets only in its own file's "
                           "transaction; open the stream store on the same file")
        last = max(int(e.id) for e in events)
        conn.execute(
            "INSERT INTO offsets (stream, group_name, committed, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (stream, group_name) DO UPDATE SET committed = max(committed, excluded.committed), "
            "updated_at = excluded.updated_at", [self.stream, group, last, utc_now()])

    def lag(self, group: str) -> int:
        return self._conn.execute("SELECT count(*) AS n FROM events WHERE stream = ? AND id > ?",
                                  [self.stream, self._committed(group)]).fetchone()["n"]

    def length(self) -> int:
        return self._conn.execute("SELECT count(*) AS n FROM events WHERE stream = ?",
                                  [self.stream]).fetchone()["n"]

    def groups(self) -> list[dict]:
        rows = self._conn.execute("SELECT group_name, committed, updated_at FROM offsets WHERE stream = ? "
                                  "ORDER BY group_name", [self.stream]).fetchall()
        return [{"group": r["group_name"], "committed": str(r["committed"]), "lag": self.lag(r["group_name"]),
                 "updated_at": r["updated_at"]} for r in rows]

    def consumed_since(self, group: str, since: str, after: str | None, count: int) -> list[LogEvent]:
        rows = self._conn.execute(
            "SELECT id, payload, appended_at FROM events WHERE stream = ? AND appended_at >= ? AND id > ? "
            "AND id <= ? ORDER BY id LIMIT ?",
            [self.stream, since, int(after or 0), self._committed(group), count]).fetchall()
        return [LogEvent(str(r["id"]), r["payload"], r["appended_at"]) for r in rows]
