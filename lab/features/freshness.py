"""Freshness as a contract: each view's objective (``FeatureView.freshness``), the
breaches serving meets, and the status of every view.

- ``FreshnessWatch`` is told each served request's ``Freshness`` by view. It counts the
  breaches per view and fires ``feature.freshness_breached`` (``lab.events``) at most
  once per view per ``interval_s`` (60 s), with the number of breaches since the last
  event, so a stale view makes one event a minute, not one per request.
- ``ledger_ages`` and ``breach_rates`` read the ages the prediction ledger recorded per
  request (its ``feature_ages`` column) over a window, for ``lab features status``.
- ``view_status`` puts one view's watermark, lag, objective and breach rate together.

Core code: the ledger is read with ``lab.sqlite`` (read-only), the online store through
its contract.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lab.errors import NotFound
from lab.events import FEATURE_FRESHNESS_BREACHED
from lab.features.views import FeatureView

log = logging.getLogger("lab.features.freshness")

EVENT_INTERVAL_S = 60.0
"""At most one breach event per view in this many seconds."""


class FreshnessWatch:
    """Counts freshness breaches per view and announces them, throttled.

    ``emit(name, payload)`` is called (from the thread that observed the breach) at most
    once per view per ``interval_s``; an error it raises is logged, never passed to the
    request. Thread-safe.
    """

    def __init__(self, views: Sequence[FeatureView], emit: Callable[[str, dict], Any] | None = None, *,
                 interval_s: float = EVENT_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.objectives = {v.name: v.freshness_s for v in views}
        self.emit = emit
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._breaches: dict[str, int] = {}
        self._unannounced: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self.events = 0

    def observe(self, freshness: Mapping[str, Any]) -> None:
        """Note one served request's ``Freshness`` by view name."""
        for name, state in freshness.items():
            if state.breached:
                self._breach(name, state)

    def _breach(self, name: str, state: Any) -> None:
        now = self.clock()
        with self._lock:
            self._breaches[name] = self._breaches.get(name, 0) + 1
            self._unannounced[name] = self._unannounced.get(name, 0) + 1
            last = self._last.get(name)
            if last is not None and now - last < self.interval_s:
                return
            self._last[name] = now
            count, self._unannounced[name] = self._unannounced[name], 0
            self.events += 1
        if self.emit is None:
            return
        payload = {"view": name, "age_seconds": state.age_seconds, "objective_s": self.objectives.get(name),
                   "watermark": None if state.watermark is None else state.watermark.isoformat(),
                   "breaches": count, "interval_s": self.interval_s}
        try:
            self.emit(FEATURE_FRESHNESS_BREACHED, payload)
        except Exception:  # noqa: BLE001 - an observer's failure must not fail a request
            log.exception("a lab_on_event plugin failed on %s for view %s", FEATURE_FRESHNESS_BREACHED, name)

    def counts(self) -> dict[str, int]:
        """Breaches per view since start."""
        with self._lock:
            return dict(self._breaches)


# -- the ledger's recorded ages ------------------------------------------------------------


def ledger_ages(path: str | Path, since: dt.datetime, model: str | None = None) -> dict[str, list[float | None]]:
    """The ages (seconds; None: never materialized) the ledger at ``path`` recorded per
    view for predictions made at or after ``since`` (fallbacks left out). Empty when
    there is no ledger, or it predates recorded ages."""
    from lab.sqlite import connect

    try:
        conn = connect(path, readonly=True)
    except NotFound:
        return {}
    try:
        have = {row["name"] for row in conn.execute("PRAGMA table_info(predictions)")}
        if "feature_ages" not in have:
            return {}
        where = ["at >= ?", "feature_ages IS NOT NULL"]
        params: list = [_utc(since).isoformat(timespec="microseconds")]
        if "fallback" in have:
            where.append("fallback IS NULL")
        if model is not None:
            where.append("model_name = ?")
            params.append(model)
        rows = conn.execute(f"SELECT feature_ages FROM predictions WHERE {' AND '.join(where)}", params)
        ages: dict[str, list[float | None]] = {}
        for row in rows:
            for view, age in json.loads(row["feature_ages"]).items():
                ages.setdefault(view, []).append(age)
        return ages
    finally:
        conn.close()


def breach_rate(ages: Sequence[float | None], objective_s: float | None) -> float | None:
    """The share of ``ages`` over ``objective_s`` (an age of None counts as a breach);
    None when there is no objective or no age."""
    if objective_s is None or not ages:
        return None
    return sum(1 for a in ages if a is None or a > objective_s) / len(ages)


def view_status(view: FeatureView, state, ages: Sequence[float | None], now: dt.datetime) -> dict:
    """One view's status: version, watermark, rows, newest event time, lag (``now`` minus
    the newest event time), objective, requests seen and breach rate."""
    newest = None if state is None else state.newest_event_time
    served = [a for a in ages if a is not None]
    return {
        "view": view.name,
        "version": view.version,
        "watermark": None if state is None else state.watermark.isoformat(),
        "rows": None if state is None else state.rows,
        "newest_event": None if newest is None else newest.isoformat(),
        "lag_s": None if newest is None else _seconds(now, newest),
        "written_at": None if state is None else state.written_at.isoformat(),
        "freshness_s": view.freshness_s,
        "requests": len(ages),
        "age_p50_s": _median(served),
        "age_max_s": max(served) if served else None,
        "breach_rate": breach_rate(ages, view.freshness_s),
    }


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def _seconds(now: dt.datetime, then: dt.datetime) -> float:
    if (now.tzinfo is None) != (then.tzinfo is None):  # a naive time is read as UTC
        now, then = _utc(now), _utc(then)
    return (now - then).total_seconds()


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def format_status(rows: Sequence[dict]) -> str:
    """The status rows as a table for the terminal."""
    def cell(value, kind: str) -> str:
        if value is None:
            return "-"
        if kind == "s":
            return _duration(value)
        if kind == "%":
            return f"{100 * value:.1f}%"
        return str(value)

    header = ("view", "version", "watermark", "rows", "lag", "objective", "requests", "age p50", "breaches")
    body = [(r["view"], r["version"], cell(r["watermark"], ""), cell(r["rows"], ""), cell(r["lag_s"], "s"),
             cell(r["freshness_s"], "s"), str(r["requests"]), cell(r["age_p50_s"], "s"),
             cell(r["breach_rate"], "%")) for r in rows]
    widths = [max(len(str(line[i])) for line in (header, *body)) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in (header, *body))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{sign}{seconds / size:.1f}{unit}"
    return f"{sign}{seconds:.0f}s"
