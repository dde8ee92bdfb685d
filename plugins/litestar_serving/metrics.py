"""The model server's Prometheus metrics (``GET /metrics``), with ``prometheus-client``.

One ``ServerMetrics`` per app, with its own ``CollectorRegistry``: several apps in one
process (tests, or later several models) never share or collide on a series. It holds
two kinds of numbers:

- **Events**, counted where they happen with the library's ``Counter``, ``Gauge`` and
  ``Histogram``: every HTTP request's latency (by model and route), its status, the
  requests in flight, predictions by model, version and variant, not-ready answers, and
  the views served their defaults, stale values or a back-dated request's defaults.
- **Live state**, read at scrape time by ``StateCollector`` from the ``ServingState``
  and the components it holds: readiness and the version served, the ledger's counters
  and queue depth, the process's memory (the library's ``ProcessCollector``) and, when
  torch is already imported and CUDA is available, CUDA memory per device.

Only the server imports this module (``lab --help`` never loads prometheus_client), and
torch is never imported here: ``sys.modules`` says whether it already is.

Workers (``lab serve --workers N``): the server sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
folder of its own before the workers start, so the event metrics (the library's own
objects; each Gauge names its ``multiprocess_mode``) write their values there. Each
worker's ``Publisher`` copies its live state (``StateCollector`` and ``ProcessCollector``)
into multiprocess metrics of the same names every second and at each scrape, and
``render`` pools every worker's files with ``MultiProcessCollector``: a scrape, whichever
worker answers it, sums the workers. See docs/serving.md, "Metrics".
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from plugins.litestar_serving.feedback_metrics import FEEDBACK_MODES, FeedbackCollector
from plugins.litestar_serving.resources import MULTIPROCESS_MODES, ResourceCollector

MEDIA_TYPE = CONTENT_TYPE_PLAIN_0_0_4.removesuffix("; charset=utf-8")
"""``text/plain; version=0.0.4``, the text format every Prometheus reads (the server adds
``; charset=utf-8``, as it does to every text response)."""

# No ``*_created`` series (the time each series was first seen): they double the scrape
# and Prometheus stores them as series of their own. A process-wide switch of the
# library; the model server is its only user in the process.
disable_created_metrics()

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: a warm /predict takes a fraction of a millisecond, a cold or queued one seconds."""

AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0,
               7 * 86400.0, 30 * 86400.0)
"""Seconds: a view materialized every minute up to one a month old."""

LEDGER_OUTCOMES = ("appended", "written", "dropped", "failed")
SHADOW_OUTCOMES = (("mirrored", "mirrored"), ("dropped", "dropped"), ("written", "written"), ("failed", "failed"),
                   ("challenger_error", "errors"))
"""``lab_shadow_requests_total``'s outcomes and the ``ShadowMirror.stats()`` key of each."""

WORKERS_ENV = "LAB_SERVE_WORKERS"
"""Set by ``lab serve --workers N`` to N for its workers: how many must be ready for ``/readyz``."""


class ServerMetrics:
    """The metrics of one app serving ``state`` (a ``ServingState``); ``views`` are the
    names of the feature views the served model reads (their series start at zero).

    The handlers call ``prediction``, ``not_ready`` and ``features``; ``middleware``
    times every request to a route; ``render()`` is the ``/metrics`` body.
    """

    def __init__(self, state: Any, views: Iterable[str] = ()):
        self.state = state
        self.model = state.model_name
        self.route_models: dict[str, str] = {}  # route template -> the model it scores, when not the default
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "lab_http_request_duration_seconds",
            "Time from a request reaching the route to its last response byte, by model and route",
            ["model", "route", "method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.requests = Counter(
            "lab_http_requests", "HTTP requests answered, by route, method and status code",
            ["route", "method", "status"], registry=registry)
        self.in_flight = Gauge(
            "lab_http_requests_in_flight", "Requests being handled now (an autoscaling signal)",
            registry=registry, multiprocess_mode="livesum")
        self.predictions = Counter(
            "lab_predictions", "Predictions served, by model, version and variant (empty without a flag)",
            ["model", "version", "variant"], registry=registry)
        self.refused = Counter(
            "lab_not_ready", "POST /predict answered 503: not ready (loading, failed or shutting down), or "
            "cannot score now (a store or model error)", ["reason"], registry=registry)
        self.defaults = Counter(
            "lab_feature_defaults", "Predictions that used a view's default features (unknown entity, stale "
            "values, a back-dated request or a view never materialized)", ["view"], registry=registry)
        self.stale = Counter(
            "lab_feature_stale", "Predictions that got a view's defaults because its values were past the ttl",
            ["view"], registry=registry)
        self.future = Counter(
            "lab_feature_future", "Predictions that got a view's defaults because the request was dated "
            "before the view's materialization (back-dated)", ["view"], registry=registry)
        self.breaches = Counter(
            "lab_feature_freshness_breaches", "Predictions that found a view's values older than its freshness "
            "objective (FeatureView.freshness), or the view never materialized", ["view"], registry=registry)
        self.age = Histogram(
            "lab_feature_age_seconds", "Age of each view's values when served: the request's time minus the "
            "view's watermark (back-dated requests left out)", ["view"], buckets=AGE_BUCKETS, registry=registry)
        self.busy = Counter(
            "lab_rejected", "POST /predict answered 503 because the server was busy (queue_full: every "
            "scoring slot taken and the queue full; the answer carries Retry-After)", ["reason"],
            registry=registry)
        self.busy.labels("queue_full")
        self.fallbacks = Counter(
            "lab_fallbacks", "POST /predict answered the model's declared fallback score (flagged in the "
            "response and the ledger), by reason: store_timeout, model_timeout, store_error, model_error, "
            "queue_timeout, store_circuit_open, model_circuit_open; store_unavailable: the model's score on "
            "the views' declared defaults (ModelSpec.on_store_outage = feature_defaults)", ["reason"],
            registry=registry)
        self.view_fallbacks = Counter(
            "lab_feature_fallbacks", "Predictions that scored a view's declared defaults because the online "
            "store was unavailable (on_store_outage = feature_defaults), by view and the store's failure: "
            "store_error, store_timeout, store_circuit_open", ["view", "reason"], registry=registry)
        self.state_collector = StateCollector(state)
        # process_resident_memory_bytes and friends (Linux /proc)
        process = ProcessCollector(registry=None)
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.publisher: Publisher | None = None
        resources = ResourceCollector(state)  # memory growth and leak verdicts (state.resources)
        self.feedback = FeedbackCollector(state)  # feedback-loop gauges: the ledger read off the request path
        if self.multiprocess_dir:  # lab serve --workers N: every worker's numbers pooled at the scrape
            self.publisher = Publisher([self.state_collector, process, resources, self.feedback], state,
                                       self.multiprocess_dir)
            self.publisher.start()
        else:
            registry.register(self.state_collector)
            registry.register(process)
            registry.register(resources)
            registry.register(self.feedback)
        for reason in ("not_ready", "cannot_score"):
            self.refused.labels(reason)
        self._views = {view: (self.defaults.labels(view), self.stale.labels(view), self.future.labels(view))
                       for view in views}
        self._ages = {view: (self.age.labels(view), self.breaches.labels(view)) for view in views}
        # Label lookups cost more than the increments: resolve each series once.
        self._timers: dict[tuple[str, str], Any] = {}
        self._statuses: dict[tuple[str, str, int], Any] = {}
        self._served: dict[tuple[str, int, str], Any] = {}

    # -- what the handlers count --------------------------------------------------------

    def prediction(self, model: str, version: int, variant: str | None) -> None:
        key = (model, version, variant or "")
        child = self._served.get(key)
        if child is None:
            child = self._served[key] = self.predictions.labels(model, str(version), variant or "")
        child.inc()

    def not_ready(self, reason: str) -> None:
        """``reason``: ``not_ready`` or ``cannot_score``."""
        self.refused.labels(reason).inc()

    def rejected(self, reason: str) -> None:
        """``reason``: ``queue_full``."""
        self.busy.labels(reason).inc()

    def fallback(self, reason: str) -> None:
        self.fallbacks.labels(reason).inc()

    def feature_fallbacks(self, defaults: dict[str, bool], reason: str) -> None:
        """Count one prediction's views scored on their declared defaults in a store outage."""
        for view, defaulted in defaults.items():
            if defaulted:
                self.view_fallbacks.labels(view, reason).inc()

    def features(self, defaults: dict[str, bool], freshness: dict[str, Any]) -> None:
        """Count one prediction's views served defaults, stale or from its future
        (``AssembledFeatures.defaults`` and ``.freshness``), each view's age and its
        freshness breaches."""
        for view, fresh in freshness.items():
            series = self._ages.get(view)
            if series is None:
                series = self._ages[view] = (self.age.labels(view), self.breaches.labels(view))
            age = fresh.age_seconds
            if age is not None and age >= 0:
                series[0].observe(age)
            if fresh.breached:
                series[1].inc()
        for view, defaulted in defaults.items():
            if not defaulted:
                continue
            children = self._views.get(view)
            if children is None:
                children = self._views[view] = (self.defaults.labels(view), self.stale.labels(view),
                                                self.future.labels(view))
            children[0].inc()
            fresh = freshness.get(view)
            if fresh is not None and fresh.stale and fresh.watermark is not None:
                children[1].inc()
            if fresh is not None and fresh.future:
                children[2].inc()

    # -- every request --------------------------------------------------------------

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method)
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = self.latency.labels(self.route_models.get(route, self.model), route, method)
        timer.observe(seconds)
        counted = (route, method, status)
        counter = self._statuses.get(counted)
        if counter is None:
            counter = self._statuses[counted] = self.requests.labels(route, method, str(status))
        counter.inc()

    def middleware(self, app):
        """Litestar middleware (the outermost, so a refused Host is counted too): times each
        HTTP request to a route and counts its status. Litestar runs route middleware
        after routing, so the label is the route's template (``/predict``), never the raw
        path; a request to no route is answered (404) before it and not counted."""
        in_flight, observe, clock = self.in_flight, self.observe, time.perf_counter

        async def timed(scope, receive, send):
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = clock()
            status = 500  # if the app fails before it answers, the server answers 500

            async def send_status(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            in_flight.inc()
            try:
                await app(scope, receive, send_status)
            finally:
                in_flight.dec()
                observe(scope.get("path_template") or "unknown", scope["method"], status, clock() - started)

        return timed

    # -- the scrape -----------------------------------------------------------------

    def workers_waiting(self) -> str | None:
        """With workers: why the server as a whole is not ready yet (some worker is not),
        else None. ``/readyz`` answers 200 only when every worker can score."""
        if self.publisher is None:
            return None
        expected = int(os.environ.get(WORKERS_ENV) or 0)
        ready = self.publisher.ready_workers()
        if ready >= expected:
            return None
        return f"{ready} of {expected} workers ready"

    def render(self) -> bytes:
        """The body of ``GET /metrics``: every metric of this app in the Prometheus text
        format (``MEDIA_TYPE``, UTF-8); with workers, every live worker's, pooled."""
        if self.publisher is None:
            return generate_latest(self.registry)
        self.publisher.publish()  # this worker's state as of now; the others' at most a second old
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)


class Publisher:
    """Workers (``lab serve --workers N``): copies what ``collectors`` read of this process's
    live state into prometheus-client multiprocess metrics of the same names, every
    ``interval_s`` and at each scrape, so that ``MultiProcessCollector`` pools them with the
    event metrics. Counters add their growth since the last copy (summed over workers,
    exited ones included); gauges are summed over live workers, except those in ``MODES``.
    A worker that exits normally is marked dead (its live gauges leave the sums)."""

    MODES = {"lab_ready": "livemin", "lab_model_info": "livemax", "lab_circuit_state": "livemax",
             "process_start_time_seconds": "livemin", "process_max_fds": "livemax",
             "lab_model_memory_limit_bytes": "livemax", "lab_shadow_active": "livemax",
             "lab_online_store_availability": "livemin", **MULTIPROCESS_MODES,
             **FEEDBACK_MODES}
    """Gauges not summed: ready only when every worker is, the versions any worker serves,
    a breaker state any worker is in, the oldest start, the worst store availability."""

    def __init__(self, collectors: list, state: Any, folder: str, interval_s: float = 1.0):
        self.collectors = collectors
        self.state = state
        self.marker = os.path.join(folder, f"ready-{os.getpid()}")
        self.folder = folder
        self.interval_s = interval_s
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        atexit.register(self._exit)
        threading.Thread(target=self._loop, name="lab-metrics-publisher", daemon=True).start()

    def _exit(self) -> None:
        multiprocess.mark_process_dead(os.getpid())
        self._mark(False)

    def _mark(self, ready: bool) -> None:
        """A file per ready worker, so any worker's /readyz can tell whether all are."""
        try:
            if ready and not os.path.exists(self.marker):
                open(self.marker, "w").close()
            elif not ready and os.path.exists(self.marker):
                os.remove(self.marker)
        except OSError:
            pass

    def ready_workers(self) -> int:
        """Workers (live processes) that marked themselves ready."""
        count = 0
        for name in os.listdir(self.folder):
            if name.startswith("ready-"):
                try:
                    os.kill(int(name[6:]), 0)
                except (ValueError, ProcessLookupError):
                    continue
                except PermissionError:
                    pass
                count += 1
        return count

    def _loop(self) -> None:
        while True:
            # Often until this worker is ready (the server's /readyz waits for it), then every interval.
            time.sleep(self.interval_s if self.state.ready else min(self.interval_s, 0.05))
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - never let a scrape-side problem kill the worker
                logging.getLogger("lab.serving").exception("publishing this worker's metrics failed")

    def publish(self) -> None:
        self._mark(bool(self.state.ready))
        with self._lock:
            seen = set()
            for collector in self.collectors:
                for family in collector.collect():
                    if family.type not in ("counter", "gauge"):
                        continue
                    for sample in family.samples:
                        if family.type == "counter" and not sample.name.endswith("_total"):
                            continue  # ``_created``
                        key = (family.name, tuple(sorted(sample.labels.items())))
                        seen.add(key)
                        self._set(family, key, sample.value)
            for key in [k for k in self._last if k not in seen]:  # a label set gone (a version swapped out)
                metric = self._metrics[key[0]]
                if isinstance(metric, Gauge):
                    (metric.labels(**dict(key[1])) if key[1] else metric).set(0)
                del self._last[key]

    def _set(self, family: Metric, key: tuple, value: float) -> None:
        name, labels = key
        metric = self._metrics.get(name)
        if metric is None:
            names = [label for label, _ in labels]
            if family.type == "counter":
                metric = Counter(name, family.documentation, names, registry=None)
            else:
                metric = Gauge(name, family.documentation, names, registry=None,
                               multiprocess_mode=self.MODES.get(name, "livesum"))
            self._metrics[name] = metric
        child = metric.labels(**dict(labels)) if labels else metric
        if family.type == "counter":
            last = self._last.get(key, 0.0)
            child.inc(value - last if value >= last else value)  # a counter that restarted
        else:
            child.set(value)
        self._last[key] = value


class StateCollector(Collector):
    """Reads the live ``ServingState`` at each scrape: readiness, the model version
    served, the ledger's counters, queue depth and lag, and CUDA memory (``cuda_memory``)."""

    def __init__(self, state: Any):
        self.state = state

    def describe(self) -> Iterator[Metric]:
        # The names this collector may yield, so the registry refuses a duplicate at once.
        yield from self._families()

    def _families(self) -> tuple[Metric, ...]:
        return (
            GaugeMetricFamily("lab_ready", "1 when the server can score (/readyz 200), else 0"),
            GaugeMetricFamily("lab_model_info", "The model version serving now (value 1)",
                              labels=["model", "alias", "version"]),
            CounterMetricFamily("lab_ledger_records", "Prediction ledger records: appended to its queue, "
                                "written (committed), dropped (queue full or closed), failed (write error)",
                                labels=["outcome"]),
            CounterMetricFamily("lab_ledger_commits", "Prediction ledger transactions committed"),
            GaugeMetricFamily("lab_ledger_queue_depth", "Prediction ledger records waiting in its queue"),
            GaugeMetricFamily("lab_ledger_lag_records", "Prediction ledger records appended and not yet "
                              "committed (queued, or in the batch being written): what a SIGKILL would lose"),
            GaugeMetricFamily("lab_scoring_in_flight", "Requests holding a scoring slot now (at most "
                              "[tool.lab.serve] max_concurrency; an autoscaling signal)"),
            GaugeMetricFamily("lab_queue_depth", "Requests waiting for a scoring slot now (at most "
                              "[tool.lab.serve] max_queue; an autoscaling signal)"),
            GaugeMetricFamily("lab_circuit_state", "The circuit breaker of each dependency (store, model): 1 "
                              "for its current state (closed, open, half_open), 0 for the others",
                              labels=["dependency", "state"]),
            CounterMetricFamily("lab_circuit_opened", "Times each dependency's circuit breaker opened",
                                labels=["dependency"]),
            GaugeMetricFamily("lab_online_store_availability", "Share of the online store reads of the last 60 s "
                              "(at most the last 100) that answered; a read its open breaker skipped counts as "
                              "failed; 1 with none"),
            CounterMetricFamily("lab_online_store_reads", "Online store reads by requests: ok, store_error, "
                                "store_timeout, store_circuit_open (not called: its breaker was open)",
                                labels=["outcome"]),
            CounterMetricFamily("lab_batch_fallback_lookups", "Lookups of the latest batch prediction for a "
                                "request that could not be scored ([tool.lab.serve] batch_fallback): hit "
                                "(answered with it) or miss (the declared fallback, or 503)", labels=["outcome"]),
            CounterMetricFamily("lab_batches", "Micro-batches scored on the event loop (lab serve --max-batch); "
                                "lab_batched_requests_total / lab_batches_total is the mean batch size"),
            CounterMetricFamily("lab_batched_requests", "Requests scored in micro-batches"),
            GaugeMetricFamily("lab_models_loaded", "Models loaded now (the default, pinned, included; lab serve "
                              "--model A --model B)"),
            CounterMetricFamily("lab_model_loads", "Models loaded on first use (or again after an eviction)",
                                labels=["model"]),
            CounterMetricFamily("lab_model_evictions", "Models evicted, least recently used first, to stay within "
                                "[tool.lab.serve] max_model_memory_mb", labels=["model"]),
            CounterMetricFamily("lab_model_refusals", "Loads refused or failed: too_big (over max_model_memory_mb) "
                                "or load_failed", labels=["model", "reason"]),
            GaugeMetricFamily("lab_model_memory_bytes", "The measured footprint of each loaded model (its arrays, "
                              "tensors and byte strings)", labels=["model"]),
            GaugeMetricFamily("lab_model_memory_limit_bytes", "[tool.lab.serve] max_model_memory_mb in bytes "
                              "(0: unbounded)"),
            CounterMetricFamily("lab_shadow_requests", "Answered requests handed to the shadow's challenger: "
                                "mirrored (queued), dropped (its queue full), written (to shadow_predictions), "
                                "failed (the write failed), challenger_error (the challenger raised)",
                                labels=["outcome"]),
            GaugeMetricFamily("lab_shadow_queue_depth", "Mirrored requests waiting for the challenger"),
            CounterMetricFamily("lab_shadow_compared", "Mirrored requests the challenger scored (since start, "
                                "every shadow of this process)"),
            CounterMetricFamily("lab_shadow_agreed", "... of which the challenger agreed with the champion (the "
                                "shadow's agreement rule); agreed / compared is the agreement so far"),
            GaugeMetricFamily("lab_shadow_active", "The shadow mirrored now (value 1)",
                              labels=["shadow_id", "challenger_version"]),
            GaugeMetricFamily("lab_cuda_memory_allocated_bytes", "CUDA memory held by tensors, by device "
                              "(only when torch is imported and CUDA is available)", labels=["device"]),
            GaugeMetricFamily("lab_cuda_memory_reserved_bytes", "CUDA memory reserved by torch's caching "
                              "allocator, by device", labels=["device"]),
        )

    def collect(self) -> Iterator[Metric]:
        (ready, info, records, commits, depth, lag, scoring, queued, circuit, opened, availability, store_reads,
         batch_lookups, batches,
         batched, models_loaded, model_loads, evictions, refusals, model_memory, memory_limit, shadow_requests,
         shadow_depth, compared, agreed, shadow_active, allocated, reserved) = self._families()
        state = self.state
        ready.add_metric([], 1.0 if state.ready else 0.0)
        yield ready
        version = state.version
        if version is not None:
            info.add_metric([version.name, state.alias, str(version.version)], 1.0)
        yield info
        limit = getattr(state, "limit", None)
        if limit is not None:
            scoring.add_metric([], limit.scoring)
            queued.add_metric([], limit.waiting)
            yield from (scoring, queued)
        batcher = getattr(state, "batcher", None)
        if batcher is not None:
            batches.add_metric([], batcher.counts["batches"])
            batched.add_metric([], batcher.counts["requests"])
            yield from (batches, batched)
        breakers = getattr(state, "breakers", ())
        if breakers:
            for breaker in breakers:
                now = breaker.state
                for name in ("closed", "open", "half_open"):
                    circuit.add_metric([breaker.name, name], 1.0 if name == now else 0.0)
                opened.add_metric([breaker.name], breaker.opened)
            yield from (circuit, opened)
        store = getattr(state, "availability", None)
        if store is not None:
            rate, counts = store.snapshot()
            availability.add_metric([], rate)
            for outcome, count in counts.items():
                store_reads.add_metric([outcome], count)
            yield from (availability, store_reads)
        ledger = state.ledger
        if ledger is not None:
            stats = ledger.stats()
            for outcome in LEDGER_OUTCOMES:
                records.add_metric([outcome], stats.get(outcome, 0))
            commits.add_metric([], stats.get("commits", 0))
            depth.add_metric([], stats.get("queued", 0))
            pending = stats.get("appended", 0) - stats.get("written", 0) - stats.get("failed", 0)
            lag.add_metric([], max(pending, 0))
            yield from (records, commits, depth, lag)
        batch = getattr(state, "batch", None)
        if batch is not None:
            counts = batch.counts()
            batch_lookups.add_metric(["hit"], counts["hits"])
            batch_lookups.add_metric(["miss"], counts["misses"])
            yield batch_lookups
        cache = getattr(state, "models", None)
        if cache is not None:
            loaded = cache.describe()
            models_loaded.add_metric([], len(loaded))
            for name in cache.specs:
                if name == state.model_name:
                    continue  # the default is loaded at start and never evicted
                model_loads.add_metric([name], cache.loads.get(name, 0))
                evictions.add_metric([name], cache.evictions.get(name, 0))
            for (name, reason), count in sorted(cache.refusal_counts().items()):
                refusals.add_metric([name, reason], count)
            for model in loaded:
                model_memory.add_metric([model["name"]], model["memory_bytes"])
            memory_limit.add_metric([], cache.bound_bytes)
            yield from (models_loaded, model_loads, evictions, refusals, model_memory, memory_limit)
        shadow = getattr(state, "shadow", None)
        if shadow is not None and hasattr(shadow, "stats"):
            stats = shadow.stats()
            for outcome, key in SHADOW_OUTCOMES:
                shadow_requests.add_metric([outcome], stats.get(key, 0))
            shadow_depth.add_metric([], stats.get("queued", 0))
            agreement = shadow.agreement() if hasattr(shadow, "agreement") else None
            yield from (shadow_requests, shadow_depth)
            if agreement is not None:
                compared.add_metric([], agreement[1])
                agreed.add_metric([], agreement[0])
                yield from (compared, agreed)
            if stats.get("shadow_id") is not None:
                shadow_active.add_metric([str(stats["shadow_id"]), str(stats["challenger_version"])], 1.0)
            yield shadow_active
        devices = cuda_memory(sys.modules.get("torch"))
        if devices:
            for device, (held, cached) in devices.items():
                allocated.add_metric([device], held)
                reserved.add_metric([device], cached)
            yield allocated
            yield reserved


def cuda_memory(torch: Any) -> dict[str, tuple[int, int]]:
    """``{device index: (allocated, reserved bytes)}`` from an already imported ``torch``
    module (None: not imported, nothing to report), when CUDA is available; empty
    otherwise. Never initializes CUDA: before a model is on the GPU both are 0."""
    if torch is None:
        return {}
    try:
        cuda = torch.cuda
        if not cuda.is_available():
            return {}
        return {str(i): (int(cuda.memory_allocated(i)), int(cuda.memory_reserved(i)))
                for i in range(cuda.device_count())}
    except Exception:  # noqa: BLE001 - a broken driver must not take /metrics down
        return {}
