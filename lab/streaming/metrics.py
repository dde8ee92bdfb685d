"""A stream consumer's numbers: always counted in memory, and exported in Prometheus text
format on 127.0.0.1 when ``lab stream run --metrics-port`` is given.

Series (labels ``stream`` and ``group``): ``lab_stream_lag`` (events of the stream the
group has not committed; it returns to 0 when the consumer has caught up),
``lab_stream_events_total`` by ``outcome`` (``scored``, ``dead_letter``, ``duplicate``:
a prediction whose key was already committed), ``lab_stream_side_effects_total`` (sink
calls), ``lab_stream_batch_seconds`` (read to commit), ``lab_stream_model_version`` and
``lab_stream_model_changes_total`` by ``policy``.
"""

from __future__ import annotations

from typing import Any


class StreamMetrics:
    """Counters for one consumer; ``port`` starts the exporter (prometheus-client)."""

    def __init__(self, stream: str, group: str, port: int | None = None):
        self.counts = {"scored": 0, "dead_letter": 0, "duplicate": 0, "side_effects": 0, "batches": 0,
                       "model_changes": 0}
        self.lag: int | None = None
        self.port = port
        self._server = None
        if port is None:
            return
        # Imported only for an exporting consumer: prometheus-client is a serving dependency.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        registry = CollectorRegistry()
        labels = {"stream": stream, "group": group}
        self._lag = Gauge("lab_stream_lag", "events of the stream the group has not committed",
                          ["stream", "group"], registry=registry).labels(**labels)
        events = Counter("lab_stream_events", "events handled, by outcome", ["stream", "group", "outcome"],
                         registry=registry)
        self._events = {o: events.labels(**labels, outcome=o) for o in ("scored", "dead_letter", "duplicate")}
        self._effects = Counter("lab_stream_side_effects", "side-effect sink calls", ["stream", "group"],
                                registry=registry).labels(**labels)
        self._batch = Histogram("lab_stream_batch_seconds", "one batch, from its read to its commit",
                                ["stream", "group"], registry=registry).labels(**labels)
        self._version = Gauge("lab_stream_model_version", "the model version the consumer scores with",
                              ["stream", "group"], registry=registry).labels(**labels)
        self._changes = Counter("lab_stream_model_changes", "model changes seen, by policy",
                                ["stream", "group", "policy"], registry=registry)
        self._labels = labels
        try:
            self._server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
        except OSError as exc:
            from lab.errors import LabError

            raise LabError(f"cannot serve metrics on 127.0.0.1:{port} ({exc}); pick a free --metrics-port") from None

    def event(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n
        if self._server is not None and n:
            self._events[outcome].inc(n)

    def side_effects(self, n: int) -> None:
        self.counts["side_effects"] += n
        if self._server is not None and n:
            self._effects.inc(n)

    def batch(self, seconds: float) -> None:
        self.counts["batches"] += 1
        if self._server is not None:
            self._batch.observe(seconds)

    def set_lag(self, lag: int) -> None:
        self.lag = lag
        if self._server is not None:
            self._lag.set(lag)

    def set_version(self, version: int) -> None:
        if self._server is not None:
            self._version.set(version)

    def model_change(self, policy: str) -> None:
        self.counts["model_changes"] += 1
        if self._server is not None:
            self._changes.labels(**self._labels, policy=policy).inc()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def summary(self) -> dict[str, Any]:
        return {**self.counts, "lag": self.lag}
