"""What a streaming consumer writes: ``StreamStore``, the SQLite file ``data/stream.db``.

Its tables (``_migrations.py``): ``predictions`` (one row per consumer group and
idempotency key: a UNIQUE constraint, so a prediction made twice, after a crash, is
kept once), ``dead_letters`` (events that could not be scored, with the reason; one per
group and event), ``model_state`` (the version a group scores with) and the append-only
``model_changes``. ``commit_batch`` writes a batch's rows and, for a log whose offsets
live in this file, the offset, in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lab.sqlite import connect, migrate, utc_now, write_transaction
from lab.streaming._migrations import MIGRATIONS, OWNER
from lab.streaming.log import EventLog, LogEvent


def idempotency_key(stream: str, log_id: str, model: str, version: int) -> str:
    """The key a side effect of one prediction carries: the stream, the event's log id and
    the model version that scored it. The same event scored again by the same version
    (a retry after a crash) has the same key; re-scored by a new version, a new one."""
    return f"{stream}/{log_id}/{model}/v{version}"


@dataclass(frozen=True)
class ModelChange:
    """A group's switch from one model version to another, and what was done about it."""

    model_name: str
    from_version: int
    to_version: int
    policy: str
    alias_moved_at: str | None
    rescored: int = 0


class StreamStore:
    """The consumer's products in ``path`` (normally ``data/stream.db``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self._conn = connect(self.path)
        try:
            migrate(self._conn, OWNER, MIGRATIONS)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "StreamStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def commit_batch(self, log: EventLog, group: str, consumer: str, events: Sequence[LogEvent],
                     predictions: Sequence[dict], dead: Sequence[tuple[LogEvent, str]], *,
                     change: ModelChange | None = None) -> int:
        """One transaction: the predictions (a key already there is skipped), the dead
        letters, the log's offset for ``events`` (a transactional log) and ``change``
        (recorded, and the group's model state moved). Returns how many predictions were
        new; the rest were duplicates absorbed by their keys."""
        now = utc_now()
        new = 0
        with write_transaction(self._conn, doing=f"commit a batch of stream {log.stream}"):
            for p in predictions:
                cursor = self._conn.execute(
                    "INSERT INTO predictions (key, stream, group_name, log_id, model_name, model_version, score, "
                    "prediction, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_name, key) DO NOTHING",
                    [p["idempotency_key"], log.stream, group, p["log_id"], p["model"], p["model_version"],
                     p["score"], json.dumps(p, sort_keys=True, default=str), now])
                new += cursor.rowcount
            for event, reason in dead:
                self._conn.execute(
                    "INSERT INTO dead_letters (stream, group_name, log_id, payload, reason, at) VALUES "
                    "(?, ?, ?, ?, ?, ?) ON CONFLICT (stream, group_name, log_id) DO NOTHING",
                    [log.stream, group, event.id, event.payload, reason, now])
            if log.transactional:
                log.commit(self._conn, group, consumer, events)
            if change is not None:
                self._record_change(log.stream, group, change, now)
        return new

    def _record_change(self, stream: str, group: str, change: ModelChange, now: str) -> None:
        self._conn.execute(
            "INSERT INTO model_changes (stream, group_name, model_name, from_version, to_version, policy, "
            "alias_moved_at, rescored, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [stream, group, change.model_name, change.from_version, change.to_version, change.policy,
             change.alias_moved_at, change.rescored, now])
        self._set_state(stream, group, change.model_name, change.to_version, now)

    def _set_state(self, stream: str, group: str, model: str, version: int, now: str) -> None:
        self._conn.execute(
            "INSERT INTO model_state (stream, group_name, model_name, model_version, since) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (stream, group_name) DO UPDATE SET model_name = excluded.model_name, "
            "model_version = excluded.model_version, since = excluded.since", [stream, group, model, version, now])

    def model_state(self, stream: str, group: str) -> dict | None:
        """The model and version ``group`` scores ``stream`` with, or None before its first start."""
        return self._conn.execute("SELECT model_name, model_version, since FROM model_state WHERE stream = ? "
                                  "AND group_name = ?", [stream, group]).fetchone()

    def start_state(self, stream: str, group: str, model: str, version: int) -> None:
        """Record the version a group starts with (its first start: no change to record)."""
        with write_transaction(self._conn, doing="record the stream's model"):
            if self.model_state(stream, group) is None:
                self._set_state(stream, group, model, version, utc_now())

    # -- reading ------------------------------------------------------------------------------

    def predictions(self, stream: str, group: str) -> list[dict]:
        """The group's predictions, oldest first (``prediction`` decoded)."""
        rows = self._conn.execute("SELECT * FROM predictions WHERE stream = ? AND group_name = ? ORDER BY id",
                                  [stream, group]).fetchall()
        for row in rows:
            row["prediction"] = json.loads(row["prediction"])
        return rows

    def dead_letters(self, stream: str, group: str) -> list[dict]:
        return self._conn.execute("SELECT * FROM dead_letters WHERE stream = ? AND group_name = ? ORDER BY id",
                                  [stream, group]).fetchall()

    def model_changes(self, stream: str, group: str) -> list[dict]:
        return self._conn.execute("SELECT * FROM model_changes WHERE stream = ? AND group_name = ? ORDER BY id",
                                  [stream, group]).fetchall()

    def counts(self, stream: str, group: str) -> dict[str, int]:
        """How many predictions, dead letters and model changes the group has."""
        out = {}
        for table in ("predictions", "dead_letters", "model_changes"):
            out[table] = self._conn.execute(f"SELECT count(*) AS n FROM {table} WHERE stream = ? AND group_name = ?",
                                            [stream, group]).fetchone()["n"]
        return out
