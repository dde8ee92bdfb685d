"""The latest batch prediction per entity, for the online path: ``data/batch_predictions.db``.

A batch job (``lab.serving.batch``, ``lab score``, the ``batch_score`` stage) ends by
loading, for each entity key it scored, the prediction of that key's newest event into
one SQLite table, ``latest_predictions`` (primary key ``model, entity, key``). The model
server, when it cannot score a request (the store or the model failed or timed out, a
circuit is open, no slot came free in the budget) and the lab opted in (``[tool.lab.serve]
batch_fallback = true``), answers that prediction instead of the declared constant: one
indexed read, never a Parquet scan. The answer is flagged ``fallback_source: "batch"``
with the batch's model version, scoring time and age.

A load is one write transaction. A key keeps the prediction of its newest event: a job
that re-scores an older window does not replace a newer event's prediction (the same
event scored again does replace it). Keys are stored as they are (SQLite keeps an int an
int and a string a string), so a lookup compares them as the request sends them, as the
online store does.

Only the standard library is used: the server imports this module.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from lab.errors import ConfigError, LabError, NotFound
from lab.sqlite import Migration, connect, migrate, run_script, write_transaction

OWNER = "batch_predictions"
FILE_NAME = "batch_predictions.db"

_SCHEMA = """
CREATE TABLE latest_predictions (
    model TEXT NOT NULL,
    entity TEXT NOT NULL,       -- the request field the key is a value of
    key NOT NULL,               -- no type: an int stays an int, a string a string
    score REAL NOT NULL,
    model_version INTEGER NOT NULL,
    event_id,
    event_time TEXT NOT NULL,   -- ISO 8601 with microseconds: compares as text
    scored_at TEXT NOT NULL,    -- UTC, when the batch job scored it
    PRIMARY KEY (model, entity, key)
) WITHOUT ROWID;
"""

MIGRATIONS = (Migration("0001_latest_predictions", lambda conn: run_script(conn, _SCHEMA)),)

_UPSERT = (
    "INSERT INTO latest_predictions (model, entity, key, score, model_version, event_id, event_time, scored_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, entity, key) DO UPDATE SET "
    "score = excluded.score, model_version = excluded.model_version, event_id = excluded.event_id, "
    "event_time = excluded.event_time, scored_at = excluded.scored_at "
    "WHERE excluded.event_time >= latest_predictions.event_time"
)
_LOOKUP = ("SELECT score, model_version, event_id, event_time, scored_at FROM latest_predictions "
           "WHERE model = ? AND entity = ? AND key = ?")


def latest_path(config) -> Path:
    """Where the lab at ``config`` keeps the table: ``<data_dir>/batch_predictions.db``."""
    return config.data_path / FILE_NAME


def event_time_text(value: dt.datetime) -> str:
    """The stored form of an event time: sortable as text (microseconds always written)."""
    return value.isoformat(timespec="microseconds")


@dataclass(frozen=True)
class BatchPrediction:
    """One entity's latest batch prediction."""

    model: str
    entity: str
    key: Any
    score: float
    model_version: int
    event_id: Any
    event_time: str
    scored_at: str

    def age_seconds(self, now: dt.datetime | None = None) -> float:
        """Seconds since the batch job scored it."""
        now = now or dt.datetime.now(dt.timezone.utc)
        return (now - dt.datetime.fromisoformat(self.scored_at)).total_seconds()


def load_latest(path: str | os.PathLike, rows: Iterable[tuple]) -> int:
    """Upsert ``(model, entity, key, score, model_version, event_id, event_time, scored_at)``
    rows in one transaction (created with its folder if missing); returns how many rows
    were offered. A key keeps the prediction of its newest event."""
    conn = connect(path)
    try:
        migrate(conn, OWNER, MIGRATIONS)
        count = 0
        with write_transaction(conn, doing="load the latest batch predictions"):
            for chunk in _chunks(rows, 5000):
                conn.executemany(_UPSERT, chunk)
                count += len(chunk)
        return count
    except sqlite3.Error as exc:
        raise LabError(f"cannot load batch predictions into {path}: {exc}") from None
    finally:
        conn.close()


def _chunks(rows: Iterable[tuple], size: int) -> Iterable[list[tuple]]:
    chunk: list[tuple] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_latest(path: str | os.PathLike, model: str, entity: str, key: Any) -> BatchPrediction | None:
    """The latest batch prediction of ``model`` for ``entity`` = ``key``, or None (no such
    key, or no table yet). Opens and closes a read-only connection."""
    try:
        conn = connect(path, readonly=True, dict_rows=False)
    except NotFound:
        return None
    try:
        return _lookup(conn, model, entity, key)
    finally:
        conn.close()


def _lookup(conn: sqlite3.Connection, model: str, entity: str, key: Any) -> BatchPrediction | None:
    try:
        row = conn.execute(_LOOKUP, (model, entity, key)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the file exists, no batch job has loaded it yet
            return None
        raise
    if row is None:
        return None
    return BatchPrediction(model, entity, key, *row)


class BatchFallback:
    """The server's lookup of the latest batch prediction for a request it cannot score.

    ``entity`` is the request field whose value is the key (``[tool.lab.serve]
    batch_fallback_entity``; default the request's first entity field). The file is
    opened on the first lookup, and again after an error, so a server started before any
    batch job picks the table up once one has run. ``find`` is safe from any thread;
    ``counts()`` says how many lookups found a prediction (``hits``) and how many did
    not (``misses``).
    """

    def __init__(self, path: str | os.PathLike, model: str, entity: str):
        self.path, self.model, self.entity = Path(path), model, entity
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0}

    def find(self, request: Mapping[str, Any]) -> BatchPrediction | None:
        """The latest batch prediction for ``request``'s entity key, or None (none scored,
        no table yet, or the file unreadable: a fallback lookup never raises)."""
        key = request.get(self.entity)
        found = None
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = connect(self.path, readonly=True, dict_rows=False)
                found = _lookup(self._conn, self.model, self.entity, key)
            except (NotFound, LabError, sqlite3.Error):
                self._close()
            self._counts["hits" if found is not None else "misses"] += 1
        return found

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()


def batch_fallback_for(config, spec) -> BatchFallback | None:
    """The lookup ``[tool.lab.serve]`` asks for: None unless ``batch_fallback = true``;
    ``ConfigError`` naming the fix when the entity field is not one of the request's."""
    serve = config.serve
    if not getattr(serve, "batch_fallback", False):
        return None
    entities = spec.request.entities
    entity = getattr(serve, "batch_fallback_entity", "") or (entities[0] if entities else "")
    if entity not in entities:
        raise ConfigError(f"[tool.lab.serve] batch_fallback_entity {entity!r} is not an entity field of model "
                          f"{spec.name!r}'s request (entities: {', '.join(entities) or 'none'}); set it to one of "
                          "them, or batch_fallback = false")
    return BatchFallback(latest_path(config), spec.name, entity)


def fallback_fields(fallback: str | None, hit: BatchPrediction | None) -> dict[str, Any]:
    """What a response says about where a fallback score came from: nothing for a
    prediction (``fallback`` None), ``fallback_source`` ``batch`` with the batch's model
    version, scoring time and age for a batch prediction, else ``declared``."""
    if fallback is None:
        return {}
    if hit is None:
        return {"fallback_source": "declared"}
    return {"fallback_source": "batch", "batch_model_version": hit.model_version,
            "batch_scored_at": hit.scored_at, "batch_age_seconds": round(hit.age_seconds(), 3)}
