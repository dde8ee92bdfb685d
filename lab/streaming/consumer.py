"""The stream consumer behind ``lab stream run``: read a batch of events, score each one
as the model server would, hand the predictions to the side-effect sinks, commit.

Scoring is ``lab.load_model``'s ``Predictor`` (lab/serving/predictor.py): the same
``ModelSpec``, request validation, online store, feature assembly and ledger record as
``lab serve``; each ledger row's ``request_id`` is the prediction's idempotency key.

One batch, in order (``StreamConsumer.step``):

1. ``log.read``: at most ``batch_size`` events the group has not committed, those a dead
   consumer held first. Nothing more is read until this batch is committed, so at most
   ``batch_size`` events are in flight and the consumer reads only as fast as scoring and
   the sinks keep up (backpressure); the log holds the rest.
2. Each event is decoded and validated against the spec's request schema; one that is not
   a JSON object, breaks the schema or whose features cannot be assembled goes to the
   dead letters with the reason, and the consumer goes on.
3. Every sink is called with every prediction and its idempotency key
   (``stream/log id/model/v version``).
4. One transaction in ``data/stream.db``: the predictions (UNIQUE per group and key), the
   dead letters and, for the SQLite log, the group's offset. Then ``log.acknowledge``
   (Redis: XACK).

A crash anywhere before 4 commits nothing: the batch is read again, scored again with the
same keys, the sinks see those keys again (they apply each once) and the predictions table
absorbs the duplicates. A crash between 4 and the acknowledgement (Redis) re-reads a batch
whose keys are all there already.

Model changes: every ``refresh_s`` the consumer looks its alias up; when it moved (or
moved while the consumer was down), it loads the new version and applies the declared
``on_model_change`` policy, recorded in ``model_changes``: ``forward`` scores new events
with it; ``rescore`` first scores again, with the new version, every event appended since
the alias moved that the group had already scored.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

from lab.errors import ConfigError, LabError
from lab.serving.predictor import Predictor, load_model, parse_ref, validate_request
from lab.serving.scoring import FeatureAssemblyError
from lab.streaming.log import EventLog, LogEvent, SqliteEventLog, check_name
from lab.streaming.metrics import StreamMetrics
from lab.streaming.sinks import Sink, load_sinks
from lab.streaming.store import ModelChange, StreamStore, idempotency_key

MODEL_CHANGED = "stream.model_changed"
"""The event (``lab_on_event``) a consumer emits when it switches model versions."""


def open_event_log(config, pm, stream: str | None = None, *, create: bool = True) -> EventLog | None:
    """The log holding ``stream`` (default ``[tool.lab.stream] stream``): the first plugin
    answering ``lab_event_log``, else the SQLite log in ``data/stream.db`` (with
    ``create=False``, None when that file does not exist yet)."""
    stream = check_name(stream or config.stream.stream, "a stream name")
    log = pm.hook.lab_event_log(config=config, stream=stream)
    if log is None:
        if not create and not config.stream_path.exists():
            return None
        return SqliteEventLog(config.stream_path, stream)
    if not isinstance(log, EventLog):
        raise ConfigError(f"a plugin's lab_event_log returned {type(log).__name__}, not a lab.streaming.EventLog")
    return log


@dataclass(frozen=True)
class ConsumerOptions:
    """What one consumer does: ``[tool.lab.stream]``, with the command line's overrides."""

    stream: str
    group: str
    consumer: str
    model: str
    batch_size: int
    wait_s: float
    refresh_s: float
    on_model_change: str
    sinks: tuple[str, ...]
    ledger: bool = True

    @classmethod
    def from_config(cls, config, **overrides: Any) -> "ConsumerOptions":
        s = config.stream
        model = s.model or (f"{config.model_name}@champion" if config.model_name else None)
        values = dict(stream=s.stream, group=s.group, consumer="consumer-1", model=model,
                      batch_size=s.batch_size, wait_s=s.wait_s, refresh_s=s.refresh_s,
                      on_model_change=s.on_model_change, sinks=tuple(s.sinks))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["model"]:
            raise ConfigError("no model to score with: set [tool.lab.stream] model = \"MODEL@ALIAS\" "
                              "(or [tool.lab] model_name), or pass --model")
        options = cls(**values)
        check_name(options.stream, "a stream name")
        check_name(options.group, "a consumer group name")
        check_name(options.consumer, "a consumer name")
        parse_ref(options.model)
        if options.batch_size < 1:
            raise ConfigError(f"--batch-size must be 1 or more, got {options.batch_size}")
        return options


class StreamConsumer:
    """One consumer of one stream for one group. ``open()`` loads the model and applies
    any model change since the group last ran; ``step()`` handles one batch; ``run()``
    steps until stopped. Use as a context manager, or call ``close``."""

    def __init__(self, config, pm, options: ConsumerOptions, *, metrics: StreamMetrics | None = None):
        self.config, self.pm, self.options = config, pm, options
        self.metrics = metrics or StreamMetrics(options.stream, options.group)
        self.model_name, self.target = parse_ref(options.model)
        self.log: EventLog | None = None
        self.store: StreamStore | None = None
        self.predictor: Predictor | None = None
        self.sinks: list[tuple[str, Sink]] = []
        self._checked_at = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self) -> "StreamConsumer":
        try:
            self.sinks = load_sinks(self.options.sinks, self.config.root)
            self.log = open_event_log(self.config, self.pm, self.options.stream)
            self.store = StreamStore(self.config.stream_path)
            self.predictor = self._load()
            self._start_state()
            self.metrics.set_lag(self.log.lag(self.options.group))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for thing in (self.predictor, self.log, self.store):
            if thing is not None:
                thing.close()
        self.predictor = self.log = self.store = None

    def __enter__(self) -> "StreamConsumer":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def version(self) -> int:
        return self.predictor.version.version

    def _load(self) -> Predictor:
        predictor = load_model(self.options.model, root=self.config.root, ledger=self.options.ledger)
        self.metrics.set_version(predictor.version.version)
        self._checked_at = time.monotonic()
        return predictor

    def _start_state(self) -> None:
        o = self.options
        state = self.store.model_state(o.stream, o.group)
        if state is None:
            self.store.start_state(o.stream, o.group, self.model_name, self.version)
        elif state["model_name"] != self.model_name:
            raise LabError(f"consumer group {o.group!r} of stream {o.stream!r} scores model "
                           f"{state['model_name']!r}, not {self.model_name!r}: a group scores one model; "
                           "use another --group for this one")
        elif state["model_version"] != self.version:
            self._apply_change(state["model_version"])

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, drain: bool = False) -> dict[str, Any]:
        """Handle batches until ``stop`` is set (or, with ``drain``, until the group has no
        lag left); returns the counts."""
        stop = stop or threading.Event()
        while not stop.is_set():
            handled = self.step()
            if drain and handled == 0 and self.metrics.lag == 0:
                break
        return self.metrics.summary()

    def step(self) -> int:
        """Look for a model change when it is time, then read, score, deliver and commit one
        batch; returns how many events it handled (0: none came within ``wait_s``)."""
        if isinstance(self.target, str) and time.monotonic() - self._checked_at >= self.options.refresh_s:
            self.check_model()
        o = self.options
        started = time.perf_counter()
        events = self.log.read(o.group, o.consumer, o.batch_size, o.wait_s)
        if events:
            self._handle(events, commit_offsets=True)
            self.metrics.batch(time.perf_counter() - started)
        self.metrics.set_lag(self.log.lag(o.group))
        return len(events)

    def _handle(self, events: Sequence[LogEvent], *, commit_offsets: bool,
                change: ModelChange | None = None) -> int:
        o = self.options
        predictions, dead = self._score(events)
        self._deliver(predictions)
        new = self.store.commit_batch(self.log, o.group, o.consumer, events if commit_offsets else (),
                                      predictions, dead, change=change)
        if commit_offsets:
            self.log.acknowledge(o.group, o.consumer, events)
        self.metrics.event("scored", new)
        self.metrics.event("duplicate", len(predictions) - new)
        self.metrics.event("dead_letter", len(dead))
        return len(predictions)

    def _score(self, events: Sequence[LogEvent]) -> tuple[list[dict], list[tuple[LogEvent, str]]]:
        o, predictor = self.options, self.predictor
        schema = predictor.spec.request
        version = predictor.version
        predictions: list[dict] = []
        dead: list[tuple[LogEvent, str]] = []
        for event in events:
            try:
                request = json.loads(event.payload)
            except ValueError as exc:
                dead.append((event, f"not JSON: {exc}"))
                continue
            if not isinstance(request, dict):
                dead.append((event, f"not a JSON object of the {schema.title} request's fields, but "
                                    f"{type(request).__name__}"))
                continue
            try:
                validate_request(schema, request)
            except LabError as exc:
                dead.append((event, str(exc)))
                continue
            key = idempotency_key(o.stream, event.id, version.name, version.version)
            try:
                answer = predictor.predict(request, request_id=key)
            except FeatureAssemblyError as exc:
                dead.append((event, f"features could not be assembled: {exc}"))
                continue
            predictions.append({"idempotency_key": key, "stream": o.stream, "group": o.group,
                                "log_id": event.id, **answer})
        return predictions, dead

    def _deliver(self, predictions: Sequence[dict]) -> None:
        for name, sink in self.sinks:
            for prediction in predictions:
                try:
                    sink(prediction)
                except Exception as exc:
                    raise LabError(f"sink {name} failed on {prediction['idempotency_key']} ({type(exc).__name__}: "
                                   f"{exc}); nothing of the batch was committed: fix the sink and run again, it "
                                   "will see the batch again") from exc
            self.metrics.side_effects(len(predictions))

    # -- model changes ------------------------------------------------------------------------

    def check_model(self) -> bool:
        """Look the alias up; when it moved, load the new version and apply the policy.
        Returns whether the model changed."""
        from lab.registry import Registry

        self._checked_at = time.monotonic()
        with Registry.open(self.config.registry_path, project_root=self.config.root) as registry:
            now = registry.get_alias(self.model_name, self.target)
        if now is None or now.version == self.version:
            return False
        old = self.predictor
        self.predictor = self._load()
        old.close()
        if self.version != old.version.version:
            self._apply_change(old.version.version)
        return True

    def _alias_moved_at(self) -> str | None:
        """When the alias last moved to the version now loaded (None for a pinned version)."""
        if not isinstance(self.target, str):
            return None
        from lab.registry import Registry

        with Registry.open(self.config.registry_path, project_root=self.config.root) as registry:
            moves = [e for e in registry.alias_history(self.model_name, self.target)
                     if e["to_version"] == self.version]
        return moves[-1]["at"] if moves else None

    def _apply_change(self, from_version: int) -> None:
        o = self.options
        moved_at = self._alias_moved_at()
        change = ModelChange(self.model_name, from_version, self.version, o.on_model_change, moved_at)
        rescored = 0
        if o.on_model_change == "rescore" and moved_at is not None:
            after = None
            while True:
                events = self.log.consumed_since(o.group, moved_at, after, o.batch_size)
                if not events:
                    break
                rescored += self._handle(events, commit_offsets=False)
                after = events[-1].id
        change = replace(change, rescored=rescored)
        self.store.commit_batch(self.log, o.group, o.consumer, (), (), (), change=change)
        self.metrics.model_change(o.on_model_change)
        from lab.events import emit

        emit(self.pm, MODEL_CHANGED, stream=o.stream, group=o.group, model=self.model_name,
             from_version=from_version, to_version=self.version, policy=o.on_model_change,
             alias_moved_at=moved_at, rescored=rescored)
