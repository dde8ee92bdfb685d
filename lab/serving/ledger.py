"""The prediction ledger: every prediction the server makes, appended to one SQLite file.

Serving calls ``Ledger.append`` on the request path, so it must never wait on the disk.
``append`` only puts the record on a bounded in-memory queue and returns; one writer
thread wakes on the first queued record, lingers ``linger_s`` (10 ms) for more, then
encodes and commits up to ``batch_size`` records in one transaction. Serialization, the
commit and the thread's wake-ups are thus paid once per batch, off the request path;
measured on the model server, committing each prediction on its own cost about a third
of the request time.

Durability, stated exactly (docs/serving.md, "What a kill -9 keeps"):

- The file is in WAL mode with ``synchronous=NORMAL``: a commit is written to the WAL
  but not fsynced. A killed *process* loses nothing that was committed; a power cut or
  kernel crash may lose the last commits (the database itself stays consistent).
- A row is committed once ``stats()["written"]`` counts it (``written`` is raised after
  the commit returns). Records appended but not yet written (``appended - written -
  dropped - failed``: on the queue, or in the batch being committed) are in memory
  only. ``close()`` (called when the server shuts down, SIGTERM included) commits them;
  SIGKILL loses them. By default that is the last ``linger_s`` (10 ms) of predictions
  plus one commit, more if the disk is behind: a response does not wait for its row.
- Durable mode (``Ledger.open(..., sync=True)``; the server's ``[tool.lab.serve]
  ledger_sync = true``): ``append_durably`` returns only once the record's batch is
  committed, and the server answers only then, so every acknowledged prediction
  survives a SIGKILL. Records waiting on the queue share one commit (group commit, no
  linger), so the cost is about one commit's latency per request, not one commit each.
- When the queue is full (the disk cannot keep up) ``append`` drops the record instead
  of blocking the request, and counts it: ``stats()["dropped"]``. A lost ledger row is
  never silent; in durable mode the request is not acknowledged (``append_durably``
  returns False and the server answers 503).

Reading (``read``, ``query``, ``read_predictions``) opens its own read-only connection,
so tests, notebooks and training-from-logs can read while a server writes; reading
never changes the file.

Connections, the write transaction and the schema's named migrations (owner ``ledger``,
``_ledger_migrations.py``, applied by ``Ledger.open``) come from ``lab.sqlite``.
``BaseLedger`` is the contract; ``Ledger`` the SQLite implementation. Only the standard
library is used: this module is part of the core.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import msgspec

from lab.errors import ConfigError, LabError, NotFound
from lab.serving._ledger_migrations import ADDED_COLUMNS, LATER_COLUMNS, MIGRATIONS, OWNER, RENAMED_COLUMNS
from lab.sqlite import connect, migrate, write_transaction

log = logging.getLogger("lab.serving.ledger")

_COLUMNS = ("at", "request_id", "event_id", "model_name", "model_version",
            "request", "features", "defaults", "score", "latency_ms", "experiment", "variant", "fallback",
            "feature_ages")
_JSON_COLUMNS = ("request", "features", "defaults")
_CHUNKS = (256, 64, 16, 4, 1)  # rows per INSERT statement: five statement shapes, each prepared once


def _insert_sql(rows: int) -> str:
    one = f"({', '.join('?' * len(_COLUMNS))})"
    return f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES {', '.join([one] * rows)}"


_INSERTS = {n: _insert_sql(n) for n in _CHUNKS}


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert ``rows``, in order, with a few multi-row statements. ``executemany`` steps
    once a row, and each step lets the serving thread and this one trade the GIL; in
    process this cut the ledger's cost to a request by 15-25 µs (docs/serving.md)."""
    at = 0
    while at < len(rows):
        size = next(n for n in _CHUNKS if len(rows) - at >= n)
        conn.execute(_INSERTS[size], [value for row in rows[at:at + size] for value in row])
        at += size
_COMMIT_RETRY_S = 5.0


def _is_url(path: Any) -> bool:
    """Whether ``path`` names a PostgreSQL ledger (a ``postgresql://`` URL), not a file."""
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass
class PredictionRecord:
    """One prediction as the ledger stores it. ``event_id`` is the value of the request's
    id field (None when there is none); ``request``, ``features`` and ``defaults`` must be
    JSON-able; ``at`` defaults to now (UTC) and ``request_id`` to a fresh uuid. ``fallback``
    is the reason ``score`` is the model's declared fallback, not a prediction (None: a
    prediction). ``feature_ages``: feature view -> the age of its values in seconds at the
    request's time (``Freshness.age_seconds``; None for a view never materialized)."""

    event_id: int | str | None
    model_name: str
    model_version: int
    features: dict[str, Any]
    defaults: dict[str, bool]
    score: float
    latency_ms: float
    request: dict[str, Any] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: str = field(default_factory=utc_now_iso)
    experiment: str | None = None
    variant: str | None = None
    fallback: str | None = None
    feature_ages: dict[str, float | None] | None = None

    def as_row(self) -> tuple:
        return (
            self.at, self.request_id, self.event_id, self.model_name, int(self.model_version),
            _encode(self.request), _encode_numbers(self.features), _encode(self.defaults),
            float(self.score), float(self.latency_ms), self.experiment, self.variant, self.fallback,
            None if self.feature_ages is None else _encode_numbers(self.feature_ages),
        )


_ENCODER = msgspec.json.Encoder(enc_hook=str)  # ~1 us a field map, where json.dumps took ~15 us


def _encode(value: dict) -> str:
    """``value`` as JSON text (date-times in ISO 8601, anything else unknown as ``str``)."""
    return _ENCODER.encode(value).decode()


def _encode_numbers(values: dict) -> str:
    """A map of numbers as JSON text; NaN and infinities kept as ``json`` writes them
    (msgspec would write null), so they read back as they were."""
    try:
        if all(v is None or math.isfinite(v) for v in values.values()):
            return _ENCODER.encode(values).decode()
    except TypeError:  # not all numbers: as before
        pass
    return json.dumps(values, default=str)


class _Flush:
    """A marker on the queue: the writer sets ``done`` once everything before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Durable:
    """A record whose appender waits for its commit: ``done(True)`` once committed,
    ``done(False)`` if it could not be (a write error, a record that is not JSON)."""

    __slots__ = ("record", "done")

    def __init__(self, record: PredictionRecord, done: Callable[[bool], None]) -> None:
        self.record, self.done = record, done


_STOP = object()


def _settle(future: asyncio.Future, ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


def _init_file(path: Path) -> None:
    """Create the file (and folder) if needed and apply the ledger's pending migrations."""
    conn = connect(path)
    try:
        migrate(conn, OWNER, MIGRATIONS)
    finally:
        conn.close()


class BaseLedger(abc.ABC):
    """The prediction-ledger contract: an append-only log of predictions that serving
    writes to on the request path and analysis reads back.

    Contract: ``append`` never blocks and never raises for a full or closed ledger (it
    returns False and counts a drop); ``flush`` waits until everything appended before
    it is durable and readable; ``close`` writes what is still queued; every lost record
    is counted in ``stats()``. Reading works while another process writes.
    ``Ledger`` is the built-in one, over a SQLite file.
    """

    @abc.abstractmethod
    def append(self, record: PredictionRecord) -> bool:
        """Queue ``record``; False (counted as dropped) when it cannot be taken."""

    @abc.abstractmethod
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record appended so far is written; False on timeout."""

    @abc.abstractmethod
    def close(self, timeout: float = 30.0) -> None:
        """Write everything still queued and release the file; idempotent."""

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters: appended, written, dropped, failed, commits, queued."""

    @abc.abstractmethod
    def read(self, limit: int = 100) -> list[dict]:
        """The latest ``limit`` written predictions, oldest first."""

    @abc.abstractmethod
    def query(self, **filters: Any) -> list[dict]:
        """Written predictions matching ``filters`` (those of ``read_predictions``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Ledger(BaseLedger):
    """An append-only log of predictions in a SQLite file, written by one background thread.

    Open with ``Ledger.open(path)``; use as a context manager or call ``close()``, which
    commits everything still queued. ``append`` is safe to call from any thread and
    never blocks; ``flush`` waits until everything appended so far is committed.
    """

    def __init__(self, path: Path, *, queue_size: int, batch_size: int, linger_s: float, sync: bool = False):
        self.path = path
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.sync = sync  # the server waits for each prediction's commit (append_durably)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # synchronous=NORMAL (the layer's default): see the module docstring. Tuples, not
        # dicts: this connection only inserts.
        self._conn = self._connect_writer()
        self._lock = threading.Lock()
        self._counts = {"appended": 0, "written": 0, "dropped": 0, "failed": 0, "commits": 0}
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="lab-ledger-writer", daemon=True)
        self._writer.start()

    def _connect_writer(self):
        return connect(self.path, create=False, dict_rows=False)

    @classmethod
    def open(cls, path: str | os.PathLike, *, queue_size: int = 10_000, batch_size: int = 512,
             linger_s: float = 0.01, sync: bool = False) -> "Ledger":
        """Open (creating the file, its folder and the table if needed) the ledger at ``path``
        and start its writer thread. ``queue_size`` bounds the records waiting in memory;
        ``batch_size`` bounds the records committed in one transaction; ``linger_s`` is how
        long the writer waits after a first record for others to share its commit (a
        durable record never lingers). ``sync`` tells the server to acknowledge a
        prediction only once it is committed (``append_durably``).

        A ``postgresql://`` URL for ``path`` opens the ledger in that database instead
        (``lab.serving._pg_ledger``: ``[tool.lab] ledger = "postgresql://..."``)."""
        if queue_size < 1 or batch_size < 1:
            raise ConfigError("ledger queue_size and batch_size must be at least 1")
        if not 0 <= linger_s <= 1:
            raise ConfigError(f"ledger linger_s must be between 0 and 1 second, got {linger_s!r}")
        if _is_url(path):
            from lab.serving import _pg_ledger

            _pg_ledger.open_database(str(path))
            return PostgresLedger(str(path), queue_size=queue_size, batch_size=batch_size, linger_s=linger_s,
                                  sync=sync)
        path = Path(path).resolve()
        try:
            _init_file(path)
            return cls(path, queue_size=queue_size, batch_size=batch_size, linger_s=linger_s, sync=sync)
        except sqlite3.Error as exc:
            raise LabError(f"cannot open the prediction ledger {path}: {exc}; check the folder is writable") from None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------

    def append(self, record: PredictionRecord) -> bool:
        """Queue ``record`` for writing. Returns False, and counts a drop, when the queue
        is full or the ledger is closed; it never waits."""
        return self._enqueue(record)  # encoded by the writer, off the request path

    def append_then(self, record: PredictionRecord, done: Callable[[bool], None]) -> bool:
        """Queue ``record``; the writer thread calls ``done(True)`` once it is committed or
        ``done(False)`` if it could not be. False (counted as dropped, ``done`` never
        called) when the queue is full or the ledger closed; it never waits."""
        return self._enqueue(_Durable(record, done))

    def _enqueue(self, item) -> bool:
        """Put ``item`` on the writer's queue, counting it appended or dropped."""
        accepted = not self._closed
        if accepted:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                accepted = False
        with self._lock:
            self._counts["appended" if accepted else "dropped"] += 1
        return accepted

    async def append_durably(self, record: PredictionRecord, timeout: float = 10.0) -> bool:
        """Queue ``record`` and wait, without blocking the event loop, until it is
        committed: True then; False when it was dropped (queue full, ledger closed), could
        not be written, or was not committed within ``timeout`` seconds (it may still be
        committed later, but the caller must not count on it)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.append_then(record, lambda ok: loop.call_soon_threadsafe(_settle, future, ok)):
            return False
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record appended before this call is committed. Returns False
        if that did not happen within ``timeout`` seconds."""
        if self._closed or not self._writer.is_alive():
            return self._queue.empty()
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything still queued, stop the writer and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        while self._writer.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._writer.join(max(0.0, deadline - time.monotonic()))
        if self._writer.is_alive():
            log.error("ledger writer did not finish within %.0f s; %d record(s) not written",
                      timeout, self._queue.qsize())
        else:
            self._conn.close()

    def stats(self) -> dict[str, int]:
        """Counters since open: appended, written, dropped (queue full or closed), failed
        (a write error or a record that is not JSON), commits, and queued right now."""
        with self._lock:
            out = dict(self._counts)
        out["queued"] = self._queue.qsize()
        return out

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if self.linger_s and isinstance(item, PredictionRecord):
                time.sleep(self.linger_s)  # let a batch gather: one commit, one wake-up
            rows: list[tuple] = []
            markers: list[_Flush] = []
            waiting: list[Callable[[bool], None]] = []
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                elif isinstance(item, _Durable):
                    row = self._encode(item.record)
                    if row is None:
                        self._notify([item.done], False)
                    else:
                        rows.append(row)
                        waiting.append(item.done)
                else:
                    row = self._encode(item)
                    if row is not None:
                        rows.append(row)
                if stopping or len(rows) >= self.batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            committed = self._commit(rows) if rows else True
            self._notify(waiting, committed)
            for marker in markers:
                marker.done.set()

    @staticmethod
    def _notify(callbacks: list[Callable[[bool], None]], ok: bool) -> None:
        for done in callbacks:
            try:
                done(ok)
            except Exception:  # noqa: BLE001 - a waiter gone (its loop closed) must not stop the writer
                log.debug("a durable append's waiter could not be told", exc_info=True)

    def _encode(self, record: PredictionRecord) -> tuple | None:
        try:
            return record.as_row()
        except (TypeError, ValueError) as exc:  # a value that is not JSON: a bug upstream, not a crash here
            log.error("ledger record for request %s is not JSON-able: %s", record.request_id, exc)
            with self._lock:
                self._counts["failed"] += 1
            return None

    def _commit(self, rows: list[tuple]) -> bool:
        try:
            # Retried while another process holds the lock, for as long again as the busy
            # timeout; meanwhile appends queue up (and are dropped, counted, once it is full).
            with write_transaction(self._conn, doing="write to the prediction ledger", retry_s=_COMMIT_RETRY_S):
                _insert(self._conn, rows)
        except (sqlite3.Error, LabError) as exc:
            log.error("ledger could not write %d prediction(s) to %s: %s", len(rows), self.path, exc)
            with self._lock:
                self._counts["failed"] += len(rows)
            return False
        with self._lock:
            self._counts["written"] += len(rows)
            self._counts["commits"] += 1
        return True

    # -- reading ------------------------------------------------------------------

    def read(self, limit: int = 100) -> list[dict]:
        """The latest ``limit`` committed predictions, oldest first (JSON columns decoded)."""
        return read_predictions(self.path, limit=limit)

    def query(self, **filters: Any) -> list[dict]:
        """Committed predictions matching ``filters``; see ``read_predictions``."""
        return read_predictions(self.path, **filters)


class PostgresLedger(Ledger):
    """``Ledger`` whose writer thread commits each batch to a PostgreSQL table
    (``lab.serving._pg_ledger``: schema, durability, order). ``path`` is the URL (what
    ``read_predictions`` takes); ``where`` the URL with its password masked."""

    def __init__(self, url: str, **options: Any):
        from lab.postgres import mask_url

        self.where = mask_url(url)
        super().__init__(url, **options)  # type: ignore[arg-type]

    def _connect_writer(self):
        from lab.serving._pg_ledger import connect_writer

        return connect_writer(str(self.path))

    def _commit(self, rows: list[tuple]) -> bool:
        from lab.serving._pg_ledger import connect_writer, insert_batch

        for attempt in (1, 2):
            try:
                if self._conn.closed:
                    self._conn = connect_writer(str(self.path))
                insert_batch(self._conn, rows)
                break
            except Exception as exc:  # noqa: BLE001 - psycopg2's errors, a lost connection, a LabError
                # A lost connection (no SQL state) is reopened once; a refused batch is not retried.
                again = attempt == 1 and getattr(exc, "pgcode", None) is None
                log.error("ledger could not write %d prediction(s) to %s: %s%s", len(rows), self.where,
                          str(exc).strip(), "; reconnecting" if again else "")
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
                if not again:
                    with self._lock:
                        self._counts["failed"] += len(rows)
                    return False
        with self._lock:
            self._counts["written"] += len(rows)
            self._counts["commits"] += 1
        return True


def _decode(row: dict) -> dict:
    out = dict(row)
    for name in _JSON_COLUMNS:
        out[name] = json.loads(out[name])
    if out.get("feature_ages") is not None:  # null in rows from before ages were kept
        out["feature_ages"] = json.loads(out["feature_ages"])
    return out


def read_predictions(
    path: str | os.PathLike,
    *,
    model_name: str | None = None,
    model_version: int | None = None,
    experiment: str | None = None,
    variant: str | None = None,
    event_ids: Sequence[int | str] | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    include_fallbacks: bool = False,
    after_id: int | None = None,
) -> list[dict]:
    """Predictions in the ledger at ``path``, oldest first, with JSON columns decoded.

    Filters combine with AND: ``model_name``/``model_version``; ``experiment``/``variant``
    (the flag that routed the request); ``event_ids`` (the request ids, compared as sent:
    17 and "17" differ);
    ``since``/``until`` (inclusive, ISO 8601 UTC strings compared with ``at``);
    ``after_id``: only rows whose ``id`` is above it (an incremental reader's watermark: a
    range of the primary key, not a scan). With ``limit``, the latest ``limit`` matching
    rows. Works while a server is writing.

    Rows whose ``fallback`` is set hold the model's declared fallback score, not a
    prediction: they are left out (analysis, quality and training from logs must not
    read a constant as the model's output) unless ``include_fallbacks``.

    ``path`` may be a ``postgresql://`` URL: the ledger in that database, read the same way.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a whole number >= 0, got {limit!r}")
    if _is_url(path):
        from lab.serving._pg_ledger import read_rows

        return [_decode(row) for row in read_rows(
            str(path), model_name=model_name, model_version=model_version, experiment=experiment, variant=variant,
            event_ids=event_ids, since=since, until=until, limit=limit, include_fallbacks=include_fallbacks,
            after_id=after_id)]
    path = Path(path)
    if not path.exists():
        raise LabError(f"no prediction ledger at {path}; it is created when `lab serve` starts")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a whole number >= 0, got {limit!r}")
    where, params = [], []
    if model_name is not None:
        where.append("model_name = ?")
        params.append(model_name)
    if model_version is not None:
        where.append("model_version = ?")
        params.append(int(model_version))
    try:
        conn = connect(path, readonly=True)  # reading never migrates nor creates anything
    except NotFound:
        raise LabError(f"no prediction ledger at {path}; it is created when `lab serve` starts") from None
    try:
        have = {row["name"] for row in conn.execute("PRAGMA table_info(predictions)")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LabError(f"{path} is not a readable prediction ledger: {exc}") from None
    for column, value in (("experiment", experiment), ("variant", variant)):
        if value is not None:
            if column not in have:  # a ledger from before flags: nothing was routed by one
                conn.close()
                return []
            where.append(f"{column} = ?")
            params.append(value)
    if not include_fallbacks and "fallback" in have:
        where.append("fallback IS NULL")
    # A file not opened by a server since a rename still has the old name; read it as the new.
    renamed = {old: new for old, new in RENAMED_COLUMNS if old in have and new not in have}
    event_column = next((old for old, new in renamed.items() if new == "event_id"), "event_id")
    if event_ids is not None:
        where.append(f"{event_column} IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(event_ids)))
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if until is not None:
        where.append("at <= ?")
        params.append(until)
    if after_id is not None:
        where.append("id > ?")
        params.append(int(after_id))
    sql = "SELECT * FROM predictions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    missing = {name: None for name, _ in (*ADDED_COLUMNS, *LATER_COLUMNS) if name not in have}
    out = []
    for row in reversed(rows):
        decoded = {**_decode(row), **missing}
        for old, new in renamed.items():
            decoded[new] = decoded.pop(old)
        out.append(decoded)
    return out


def iter_feature_rows(rows: Sequence[dict], *, id_column: str = "event_id") -> Iterator[dict]:
    """Flatten ledger rows for training from logs: one dict per prediction with the
    event id (under ``id_column``: pass the spec's ``request.id`` to join labels on it),
    the features used, the score and the model version."""
    for row in rows:
        yield {id_column: row["event_id"], **row["features"],
               "score": row["score"], "model_version": row["model_version"]}
