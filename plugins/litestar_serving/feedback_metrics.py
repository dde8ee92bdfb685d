"""Feedback-loop gauges on ``/metrics``: exploration share, coverage, diversity and holdout
share of the served model (and the flag routing it), from the prediction ledger.

``FeedbackCollector`` never reads the ledger at scrape time nor on the request path: a
scrape (or, with workers, the metrics publisher's tick) yields the last computed
figures and, when they are older than ``refresh_s``, starts one background refresh that
reads the rows the ledger gained since the last one, keeps the last ``window`` of them
(at most ``max_rows``), and computes ``lab.monitoring.feedback.feedback_of_rows``: each
row is read and decoded once, so a refresh costs what the traffic since the last one
does. Every worker reads the same ledger, so
with ``--workers`` the gauges pool as the largest value (``FEEDBACK_MODES``), not a sum.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from typing import Any, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lab.experiments.bandit_loop import moment
from lab.monitoring.feedback import FeedbackReport, feedback_of_rows
from lab.serving.ledger import read_predictions

log = logging.getLogger("lab.serving")

REFRESH_S = 60.0
"""Seconds between two reads of the ledger for the gauges."""

WINDOW = dt.timedelta(hours=1)
"""The ledger window the gauges describe: the last hour of predictions ..."""

MAX_ROWS = 50_000
"""... at most its latest this many rows, so a refresh stays bounded."""

_GAUGES = (
    ("lab_feedback_exploration_share", "Share of the model's decisions made by exploration (a variant other than "
     "the one with the largest weight in force, or an even split), over the last window of the ledger", ()),
    ("lab_feedback_holdout_share", "Share of the traffic served by a holdout variant (no model influences its "
     "decision), over the last window of the ledger", ()),
    ("lab_feedback_unit_coverage", "Distinct units the model decided for / distinct units seen, over the last "
     "window of the ledger", ()),
    ("lab_feedback_item_coverage", "Score buckets (of 10) the model's decisions fell into / all buckets, over the "
     "last window of the ledger", ()),
    ("lab_feedback_entropy", "Normalized Shannon entropy of the served distribution (1: even, 0: one "
     "category only), of the variants or of the score buckets", ("of",)),
    ("lab_feedback_gini", "Gini coefficient of the served distribution (0: even, 1 - 1/K: one category only), of "
     "the variants or of the score buckets", ("of",)),
    ("lab_feedback_decisions", "Model decisions in the window the feedback gauges describe", ()),
)

_KEPT = ("id", "at", "model_name", "experiment", "variant", "score", "fallback", "request")
"""The ledger columns a feedback report reads."""

FEEDBACK_MODES = {name: "livemax" for name, _, _ in _GAUGES}
"""With workers: every worker computes the same figures from the shared ledger."""


class FeedbackCollector(Collector):
    """The feedback gauges of the model served by ``state`` (a ``ServingState``): one
    series per (model, experiment) in the ledger's last ``window``, refreshed in the
    background at most every ``refresh_s`` seconds (0: at every scrape)."""

    def __init__(self, state: Any, *, refresh_s: float = REFRESH_S, window: dt.timedelta = WINDOW,
                 max_rows: int = MAX_ROWS):
        self.state = state
        self.refresh_s, self.window, self.max_rows = refresh_s, window, max_rows
        self.reports: list[FeedbackReport] = []
        self.refreshed = 0.0  # time.monotonic() of the last finished refresh; 0: never
        self.refreshes = 0
        self._rows: deque[dict] = deque()  # the window's rows, oldest first
        self._last_id: int | None = None  # the last ledger row read; None: not read yet
        self._running = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        # The names this collector may yield, so the registry refuses a duplicate at once.
        yield from self._families()

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, text, labels=["model", "experiment", *extra]) for name, text, extra in _GAUGES]

    def refresh(self) -> list[FeedbackReport]:
        """Read the ledger's new rows now, drop those past the window, and recompute the
        reports (the background thread's work). The first refresh reads the window's
        latest ``max_rows`` rows; later ones only the rows after the last one read (a
        range of the ledger's primary key), so each row is decoded once."""
        ledger = getattr(self.state, "ledger", None)
        if ledger is None:
            return self.reports
        model = self.state.model_name
        since = dt.datetime.now(dt.timezone.utc) - self.window
        if self._last_id is None:
            new = read_predictions(ledger.path, model_name=model, since=since.isoformat(timespec="microseconds"),
                                   limit=self.max_rows, include_fallbacks=True)
            if not new:  # nothing in the window: start after the latest row there is
                latest = read_predictions(ledger.path, model_name=model, limit=1, include_fallbacks=True)
                self._last_id = latest[-1]["id"] if latest else 0
        else:
            new = read_predictions(ledger.path, model_name=model, after_id=self._last_id, include_fallbacks=True)
        rows = self._rows
        for row in new:  # what a report reads, without the features (memory)
            rows.append({k: row.get(k) for k in _KEPT})
        if new:
            self._last_id = new[-1]["id"]
        while rows and (len(rows) > self.max_rows or moment(rows[0]["at"], "ledger time") < since.replace(tzinfo=None)):
            rows.popleft()
        router = getattr(self.state, "router", None)
        self.reports = feedback_of_rows(rows, getattr(router, "registry_path", None), model=model,
                                        since=since, until=None)
        self.refreshed = time.monotonic()
        self.refreshes += 1
        return self.reports

    def _refresh_in_background(self) -> None:
        if not self._running.acquire(blocking=False):
            return  # one refresh at a time
        def work() -> None:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a ledger being migrated or moved must not break /metrics
                log.warning("could not compute the feedback gauges from the ledger", exc_info=True)
                self.refreshed = time.monotonic()  # try again after refresh_s, not at every scrape
            finally:
                self._running.release()

        threading.Thread(target=work, name="lab-feedback-gauges", daemon=True).start()

    def collect(self) -> Iterator[Metric]:
        if getattr(self.state, "ledger", None) is not None and (
                not self.refreshed or time.monotonic() - self.refreshed >= self.refresh_s):
            self._refresh_in_background()
        exploration, holdout, units, items, entropy, gini, decisions = self._families()
        for report in self.reports:
            labels = [report.model or "", report.experiment or ""]
            for family, value in ((exploration, report.exploration_share), (holdout, report.holdout_share),
                                  (units, report.unit_coverage), (items, report.item_coverage),
                                  (decisions, report.n_decisions)):
                if value is not None:
                    family.add_metric(labels, float(value))
            for of, diversity in (("variants", report.variants), ("score_buckets", report.items)):
                if diversity is not None and diversity.entropy is not None:
                    entropy.add_metric([*labels, of], diversity.entropy)
                if diversity is not None and diversity.gini is not None:
                    gini.add_metric([*labels, of], diversity.gini)
        yield from (exploration, holdout, units, items, entropy, gini, decisions)
