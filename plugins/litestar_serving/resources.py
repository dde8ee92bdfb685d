"""The model server's memory watch: sampling, leak metrics, the event, drain and restart.

``ResourceWatch`` is one per app (``ServingState.resources``). Once the server is ready, a
daemon thread samples the process every ``[tool.lab.resources] sample_interval_s``
(``lab.monitoring.resources``: RSS, CUDA allocated bytes when torch is imported, and the
requests answered so far, read from the metrics' own ``lab_http_requests_total`` of this
process, so the request path does no new work) and judges the track with a
``LeakDetector``. The first time a series (``rss`` or ``cuda``) is suspected of a leak it
logs it, emits ``serving.leak_suspected`` (``lab.events``), and, with ``restart_on_leak``,
drains and restarts the process:

1. readiness turns false with the reason (``/readyz`` 503 ``draining: memory leak
   suspected (...)``; ``/predict`` answers the same 503, so a client or balancer moves on);
2. it waits until no request of this process is in flight (at most ``drain_timeout_s``);
3. it hands this worker's last counters to the pooled metrics, leaves the live gauges'
   sums, and sends itself SIGTERM: uvicorn's graceful shutdown runs the lifespan's
   ``finally`` (the ledger flushed) and the process exits;
4. the supervisor (uvicorn's, which ``lab serve`` runs whenever a restart is possible:
   ``--workers N``, or one worker when ``restart_on_leak`` is set) starts a fresh process
   on the same listening socket, which loads, warms up and turns ready.

Outside that supervisor (an app built in process) there is nothing to start it again,
so a flagged server only reports. ``ResourceCollector`` exposes the verdicts on
``/metrics``. See docs/monitoring.md, "Memory leaks".
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lab import events
from lab.config import ResourcesConfig
from lab.monitoring.resources import LEAK_SUSPECTED, LeakDetector, MemoryTrend, ResourceTrack, RssSampler

log = logging.getLogger("lab.serving")

SUPERVISED_ENV = "LAB_SERVE_SUPERVISED"
"""Set to 1 by ``lab serve`` for processes a supervisor starts again when they exit: only
those drain and exit on a leak."""

MULTIPROCESS_MODES = {"lab_memory_leak_suspected": "livemax", "lab_memory_growth_bytes_per_request": "livemax",
                      "lab_memory_growth_bytes_per_hour": "livemax", "lab_memory_trend_p_value": "livemin"}
"""With workers, how each gauge pools: the worst worker (a leak in any worker shows)."""


def answered(metrics: Any) -> int:
    """Requests this process answered so far: the sum of its ``lab_http_requests_total``
    series (with workers, this process's own values, not the pool's)."""
    if metrics is None:
        return 0
    return int(sum(sample.value for family in metrics.requests.collect() for sample in family.samples
                   if sample.name.endswith("_total")))


def in_flight(metrics: Any) -> int:
    """Requests this process is handling now (``lab_http_requests_in_flight``, its own value)."""
    if metrics is None:
        return 0
    return int(sum(sample.value for family in metrics.in_flight.collect() for sample in family.samples))


class ResourceWatch:
    """Samples and judges the memory of the process serving ``state`` (a ``ServingState``)
    on a thread of its own; ``settings`` is ``[tool.lab.resources]``; ``pm`` receives the
    event. ``supervised`` (default: ``SUPERVISED_ENV`` is set) allows the drain and exit.

    ``trends`` holds the latest verdict per series, ``flagged`` the first suspected one,
    ``restarts`` the drains begun (0 or 1 per process)."""

    def __init__(self, state: Any, settings: ResourcesConfig, pm: Any, *, supervised: bool | None = None):
        self.state, self.settings, self.pm = state, settings, pm
        self.supervised = os.environ.get(SUPERVISED_ENV) == "1" if supervised is None else supervised
        self.track = ResourceTrack(settings.window)
        self.detector = LeakDetector(settings)
        self.sampler = RssSampler(self.track, lambda: answered(state.metrics))
        self.trends: dict[str, MemoryTrend] = {}
        self.flagged: dict[str, MemoryTrend] = {}
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.sample_interval_s > 0

    def start(self) -> "ResourceWatch":
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lab-resource-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.sample_interval_s):
            if not self.state.ready:
                continue  # loading (the warm-up starts once ready), or draining, or stopping
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a failed reading must not stop the server
                log.exception("sampling this process's memory failed")

    def check(self) -> dict[str, MemoryTrend]:
        """Take one sample, judge the track, and act on a first suspicion; the verdicts."""
        self.sampler.sample()
        self.trends = trends = self.detector.judge(self.track)
        for memory, trend in trends.items():
            if trend.suspected and memory not in self.flagged:
                self.flagged[memory] = trend
                self._flag(trend)
        return trends

    def _flag(self, trend: MemoryTrend) -> None:
        restart = self.settings.restart_on_leak and self.supervised
        log.warning("memory leak suspected: %s%s", trend.describe(),
                    "; draining, then restarting" if restart else "")
        if self.settings.restart_on_leak and not self.supervised:
            log.warning("restart_on_leak is set, but this server was not started by `lab serve`, whose supervisor "
                        "would start it again: it keeps serving")
        version = getattr(self.state, "version", None)
        try:
            events.emit(self.pm, LEAK_SUSPECTED, model=self.state.model_name,
                        version=getattr(version, "version", None), pid=os.getpid(),
                        action="restart" if restart else "none", **trend.payload())
        except Exception:  # noqa: BLE001 - an observer's failure must not stop the watch
            log.exception("an observer of %s failed", LEAK_SUSPECTED)
        if restart:
            self._drain_and_exit(trend)

    def _drain_and_exit(self, trend: MemoryTrend) -> None:
        state = self.state
        state.ready, state.reason = False, f"draining: memory leak suspected ({trend.describe()}); restarting"
        self.restarts += 1
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while (busy := in_flight(state.metrics)) > 0 and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.02)
        log.warning("drained (%d request(s) still in flight); exiting so the supervisor starts a fresh process", busy)
        publisher = getattr(state.metrics, "publisher", None)
        if publisher is not None:  # pooled metrics: the last counters in, then out of the live gauges' sums
            publisher.publish()
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown: the lifespan's finally, then exit


class ResourceCollector(Collector):
    """``/metrics``' memory verdicts, read at each scrape from ``state.resources``."""

    def __init__(self, state: Any):
        self.state = state

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[Metric, ...]:
        return (
            GaugeMetricFamily("lab_memory_growth_bytes_per_request", "Memory a request leaves behind: the Theil-Sen "
                              "slope of the memory against requests answered, past the warm-up ([tool.lab.resources])",
                              labels=["memory"]),
            GaugeMetricFamily("lab_memory_growth_bytes_per_hour", "The Theil-Sen slope of the memory against time",
                              labels=["memory"]),
            GaugeMetricFamily("lab_memory_trend_p_value", "One-sided Mann-Kendall p-value of an upward trend of "
                              "the memory (1 until enough samples past the warm-up)", labels=["memory"]),
            GaugeMetricFamily("lab_memory_leak_suspected", "1 once the memory grew steadily past every threshold of "
                              "[tool.lab.resources] (a leak suspected), else 0", labels=["memory"]),
            CounterMetricFamily("lab_memory_leak_restarts", "Drains begun to restart a process suspected of a leak "
                                "(restart_on_leak; with workers, summed over every worker that ever ran)"),
        )

    def collect(self) -> Iterator[Metric]:
        watch = getattr(self.state, "resources", None)
        if watch is None or not watch.enabled:
            return
        per_request, per_hour, p_value, suspected, restarts = self._families()
        trends = dict(watch.trends) or {"rss": None}
        for memory, trend in trends.items():
            if trend is not None:
                if trend.bytes_per_request is not None:
                    per_request.add_metric([memory], trend.bytes_per_request)
                per_hour.add_metric([memory], trend.bytes_per_hour)
            p_value.add_metric([memory], trend.p_value if trend is not None else 1.0)
            suspected.add_metric([memory], 1.0 if memory in watch.flagged else 0.0)
        restarts.add_metric([], watch.restarts)
        yield from (per_request, per_hour, p_value, suspected, restarts)


def run_supervised(app: str, **settings: Any) -> None:
    """Serve the app factory ``app`` (an import string) in one worker process under
    uvicorn's supervisor, which starts a fresh one whenever it exits: ``lab serve`` with
    ``restart_on_leak`` and no ``--workers``. The socket is bound here, once, so requests
    that arrive while the worker restarts wait in its backlog instead of being refused."""
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess

    config = Config(app, factory=True, workers=1, **settings)
    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
