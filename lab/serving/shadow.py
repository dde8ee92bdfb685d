"""Shadow mode in the server: mirror scored requests to a challenger, off the request path.

``ShadowMirror`` follows the registry: when ``lab shadow start MODEL --challenger V``
made a shadow active for the served model, it loads version V beside the champion (on
start-up and on each refresh, as the server follows its alias), and from then on the
request path hands it each answered request with ``mirror(...)``: one ``put_nowait`` on
a bounded queue, nothing more. A worker thread scores the challenger on the same inputs
the champion used, times it, decides agreement (``lab.serving.shadow_report``) and
commits the rows in batches to ``shadow_predictions`` in the ledger's file. So:

- the response is always the champion's; the challenger's score never reaches it;
- a full queue drops the mirror and counts it (``stats()["dropped"]``), never blocking
  or slowing the request; a challenger that fails is a row with ``error``, counted;
- the refresh thread also checks the criteria (``check_shadow``) every ``check_s``,
  recording ``met`` or ``expired`` and firing the event, and stops mirroring when the
  shadow ends or its challenger became the champion.

The challenger reads its inputs by name from the features the request assembled, so it
must read no feature the champion's request does not assemble (checked when it loads).
Standard library and numpy only; models load through the flavor plugins (``lab.plugins``).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab.errors import LabError
from lab.plugins import model_flavor
from lab.registry import Registry
from lab.serving._shadow_migrations import MIGRATIONS, OWNER
from lab.serving.shadow_report import agreement_rule, check_shadow
from lab.sqlite import connect, migrate, write_transaction

log = logging.getLogger("lab.serving.shadow")

_INSERT = ("INSERT INTO shadow_predictions (at, shadow_id, request_id, event_id, model_name, champion_version, "
           "challenger_version, champion_score, challenger_score, champion_latency_ms, challenger_latency_ms, "
           "agree, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_STOP = object()


@dataclass(frozen=True)
class _Challenger:
    """The shadow being mirrored: its registry row, the loaded challenger, its agreement rule."""

    shadow: dict
    model: Any
    names: tuple[str, ...]
    agree: Callable[[float, float], bool]


class ShadowMirror:
    """Mirrors answered requests of ``model_name`` to its active shadow's challenger.

    ``start()`` starts the refresh and worker threads; ``close()`` stops them after
    writing what is queued. ``mirror()`` is safe to call from any thread and never waits.
    ``served()`` returns the server's ``(ModelVersion, model)`` pair now serving, so the
    mirror can check the challenger's inputs against the champion's.
    """

    def __init__(self, config, pm, model_name: str, served: Callable[[], Any], *, refresh_s: float = 1.0,
                 check_s: float | None = None, queue_size: int = 1000, batch_size: int = 256):
        self.config, self.pm, self.model_name = config, pm, model_name
        self._served = served
        self.refresh_s = max(0.05, float(refresh_s))
        self.check_s = max(self.refresh_s, 5.0) if check_s is None else float(check_s)
        self.batch_size = batch_size
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._current: _Challenger | None = None
        self._lock = threading.Lock()
        self._counts = {"mirrored": 0, "dropped": 0, "written": 0, "failed": 0, "errors": 0}
        self._agreement = [0, 0]  # agreed, compared (the challenger answered)
        self._warning: str | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conn: sqlite3.Connection | None = None
        self._last_check = 0.0
        self._logged_drops = 0

    # -- the request path ---------------------------------------------------------------

    def mirror(self, request_id: str, event_id: Any, features: dict, score: float, latency_ms: float,
               version: int) -> bool:
        """Queue one answered request for the challenger; False (a drop, counted when a
        shadow is active) when no shadow is mirrored or the queue is full. Never waits."""
        current = self._current
        if current is None or version == current.shadow["version"]:
            return False
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
        try:
            self._queue.put_nowait((current, at, request_id, event_id, features, float(score),
                                    float(latency_ms), int(version)))
        except queue.Full:
            with self._lock:
                self._counts["dropped"] += 1
            return False
        with self._lock:
            self._counts["mirrored"] += 1
        return True

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> "ShadowMirror":
        for target, name in ((self._refresh_loop, "lab-shadow-refresh"), (self._work_loop, "lab-shadow-worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop following the registry, write what is queued, release the file."""
        self._stopping.set()
        self._current = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._conn is not None and not any(t.is_alive() for t in self._threads):
            self._conn.close()

    def counts(self) -> dict[str, int]:
        """The counters of ``stats`` as whole numbers (``/stats``' ``shadow``), with the
        shadow and challenger version while one is mirrored."""
        return {k: v for k, v in self.stats().items() if isinstance(v, int)}

    def agreement(self) -> tuple[int, int]:
        """``(agreed, compared)`` since start: mirrored requests the challenger scored, and
        those it agreed on by the shadow's rule (``/metrics``' agreement so far)."""
        with self._lock:
            return self._agreement[0], self._agreement[1]

    def stats(self) -> dict:
        """Counters since start (mirrored, dropped, written, failed writes, challenger
        errors), the queue depth, the shadow mirrored now and any warning."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
        current = self._current
        out["queued"] = self._queue.qsize()
        out["shadow_id"] = current.shadow["id"] if current else None
        out["challenger_version"] = current.shadow["version"] if current else None
        out["warning"] = self._warning
        return out

    # -- following the registry -----------------------------------------------------------

    def refresh(self) -> None:
        """Mirror the model's active shadow now (load its challenger if new; stop when it
        ended or its challenger became the champion); check its criteria every ``check_s``."""
        if not self.config.registry_path.exists():
            return
        with Registry.open(self.config.registry_path, project_root=self.config.root) as registry:
            try:
                shadow = registry.active_shadow(self.model_name)
            except LabError:  # no version of the model yet
                shadow = None
            served = self._served()
            if shadow is None or served is None or shadow["version"] == served[0].version:
                self._set(None, None)
                return
            current = self._current
            if current is None or current.shadow["id"] != shadow["id"]:
                version = registry.get_model_version(self.model_name, shadow["version"])
                self._load(shadow, version, served[1])
        if time.monotonic() - self._last_check >= self.check_s:
            self._last_check = time.monotonic()
            dropped = self.stats()["dropped"]
            if dropped > self._logged_drops:  # counted in /stats too; said here, once per check
                log.warning("shadow #%d: %d request(s) not mirrored since start (the challenger's queue was full); "
                            "the report counts only what was mirrored", shadow["id"], dropped)
                self._logged_drops = dropped
            report = check_shadow(self.config, self.pm, self.model_name, shadow_id=shadow["id"], actor="lab serve")
            if report["recorded"] == "expired":
                self._set(None, None)
            if report["recorded"]:
                log.info("shadow #%d of %r %s: %s", shadow["id"], self.model_name, report["recorded"],
                         report["summary"])

    def _load(self, shadow: dict, version, champion_model) -> None:
        model = model_flavor(self.pm, version.flavor).load(self.config.root / version.artifact_path)
        names = tuple(model.feature_names)
        missing = [n for n in names if n not in set(champion_model.feature_names)]
        if missing:
            self._set(None, f"shadow #{shadow['id']} not mirrored: challenger v{version.version} reads "
                            f"{', '.join(missing)}, which the champion's requests do not assemble")
            return
        import numpy as np  # the challenger is warmed like the champion before it sees traffic

        model.predict(np.zeros((1, len(names)), dtype=np.float32))
        self._set(_Challenger(shadow, model, names, agreement_rule(shadow["criteria"])), None)
        log.info("shadow #%d: mirroring %r requests to challenger v%d", shadow["id"], self.model_name,
                 version.version)

    def _set(self, current: _Challenger | None, warning: str | None) -> None:
        if warning and warning != self._warning:
            log.warning("%s", warning)
        self._current, self._warning = current, warning

    def _refresh_loop(self) -> None:
        last_error = None
        while not self._stopping.is_set():
            try:
                self.refresh()
                last_error = None
            except Exception as exc:  # noqa: BLE001 - the shadow must never take serving down
                if str(exc) != last_error:
                    log.error("shadow not refreshed, still mirroring as before: %s", exc)
                last_error = str(exc)
            self._stopping.wait(self.refresh_s)

    # -- the worker -------------------------------------------------------------------

    def _work_loop(self) -> None:
        import numpy as np  # numpy is loaded by the server already; kept off this module's import

        stopping = False
        while not stopping:
            item = self._queue.get()
            rows = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    rows.append(self._score(item, np))
                if stopping or len(rows) >= self.batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if rows:
                self._write(rows)

    def _score(self, item, np) -> tuple:
        current, at, request_id, event_id, features, score, latency_ms, version = item
        shadow = current.shadow
        error, challenger, took = None, None, None
        try:
            vector = np.array([[features[n] for n in current.names]], dtype=np.float32)
            started = time.perf_counter()
            challenger = float(current.model.predict(vector)[0])
            took = (time.perf_counter() - started) * 1000.0
            if challenger != challenger:  # NaN: not an answer
                error, challenger = "challenger returned NaN", None
        except Exception as exc:  # noqa: BLE001 - a failing challenger is a finding, not a crash
            error = f"{type(exc).__name__}: {exc}"[:500]
        if error is not None:
            with self._lock:
                self._counts["errors"] += 1
        agree = int(challenger is not None and current.agree(score, challenger))
        if challenger is not None:
            with self._lock:
                self._agreement[0] += agree
                self._agreement[1] += 1
        return (at, shadow["id"], request_id, event_id if isinstance(event_id, (int, str)) else str(event_id),
                self.model_name, version, shadow["version"], score, challenger, latency_ms, took, agree, error)

    def _write(self, rows: list[tuple]) -> None:
        try:
            if self._conn is None:
                self._conn = connect(Path(self.config.ledger_path), dict_rows=False)
                migrate(self._conn, OWNER, MIGRATIONS)
            with write_transaction(self._conn, doing="write shadow predictions to the ledger", retry_s=5.0):
                self._conn.executemany(_INSERT, rows)
        except (sqlite3.Error, LabError) as exc:
            log.error("shadow could not write %d row(s) to %s: %s", len(rows), self.config.ledger_path, exc)
            with self._lock:
                self._counts["failed"] += len(rows)
            return
        with self._lock:
            self._counts["written"] += len(rows)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every mirrored request so far is written (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = self._counts["written"] + self._counts["failed"] >= self._counts["mirrored"]
            if done and self._queue.empty():
                return True
            time.sleep(0.01)
        return False
