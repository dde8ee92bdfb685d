"""The model server's Litestar app: ``create_app(config, pm)``.

It serves any lab's model from its ``ModelSpec`` (``lab_model_specs``): the request
body is a Struct made from the spec's request schema, features come from the spec's
views (keyed by request fields) and its ``request_row``, and the warm-up scores the
schema's example. Nothing here names a field of a particular lab.

Start-up happens in the lifespan, in the background: the process answers ``/healthz``
at once while a worker thread opens the online store and the prediction ledger,
resolves the alias (``champion`` by default) in the registry, loads that version with
its flavor, and warms it with one prediction and one dry-run feature assembly of the example request. Only
then does ``/readyz`` answer 200 and ``/predict`` score; before, or if any step failed,
both answer 503 with the reason. An online store with a view the model reads never
materialized (a missing ``online.db``) is such a failure, unless ``allow_empty_store``.
Everything opened is closed in ``finally`` at shutdown, the ledger last so that every
prediction made is committed, and its counts are written to stderr at once (not through
the queued log, which a re-raised SIGTERM would cut short).

Only requests that say they carry JSON are read (a text/plain or form post is what any
web page may send without asking), and on a loopback address only requests addressed to
a loopback name are answered (a DNS-rebinding page cannot read the responses).

The server follows its alias: every ``flag_refresh_s`` it looks the alias up again, and
when ``lab promote`` or ``lab rollback`` moved it, loads that version beside the one
serving and swaps them whole, with no restart and no failed request. With ``flag=NAME`` the server routes each request
by that flag instead (a ``lab.serving.routing.Router``; the built one is
``lab.experiments.routing.FlagRouter``): every variant's model version is loaded, the
variant of the request's unit field (the experiment's ``unit``) picks the model, and a
background task follows weight changes without a restart.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import re
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import msgspec
import msgspec.inspect
import numpy as np
from litestar import Controller, Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import ClientException, ImproperlyConfiguredException, ServiceUnavailableException
from litestar.logging.config import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIResponse, Reference, Schema
from litestar.params import JSONBody

import lab
from lab.errors import ConfigError, LabError
from lab.experiments.routing import FlagRouter
from lab.features.freshness import FreshnessWatch
from lab.features.stores import pin_views
from lab.modelspec import ModelSpec
from lab.plugins import feature_views, get_plugin_manager, model_flavor, model_spec
from lab.registry import Registry
from lab.serving.batch_predictions import batch_fallback_for, fallback_fields
from lab.serving.keys import keys_path
from lab.serving.ledger import Ledger
from lab.serving.predictor import STORE_UNAVAILABLE, ledger_record, prediction_fields, request_time
from lab.serving.routing import Router
from lab.serving.scoring import FeatureAssembler
from lab.serving.shadow import ShadowMirror
from plugins.litestar_serving import admin as admin_routes
from plugins.litestar_serving.auth import ServerKeys, guard
from plugins.litestar_serving.breaker import CLOSED, CircuitBreaker, StoreAvailability
from plugins.litestar_serving import fastpath
from plugins.litestar_serving.batching import MicroBatcher
from plugins.litestar_serving.errors import RequestErrors, host_guard
from plugins.litestar_serving.limits import Budget, Busy, ScoringLimit, Unscored, score_bounded, score_inline
from plugins.litestar_serving.metrics import MEDIA_TYPE as METRICS_MEDIA_TYPE
from plugins.litestar_serving.metrics import ServerMetrics
from plugins.litestar_serving.resources import ResourceWatch
from plugins.litestar_serving.schemas import (
    ErrorBody,
    Health,
    Prediction,
    Readiness,
    ServedModel,
    ServerStats,
    field_hints,
    request_type,
)

log = logging.getLogger("lab.serving")

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_ids = random.Random()  # seeded from os.urandom once; request ids need uniqueness, not secrecy


def _new_id() -> str:
    """A fresh request id: 32 hex digits, as ``uuid4().hex`` (without its syscall per call)."""
    return f"{_ids.getrandbits(128):032x}"


@dataclass
class ServingState:
    """What the handlers share: the loaded model and the open stores, and why not, if not."""

    model_name: str
    alias: str
    spec: ModelSpec
    reason: str | None = "starting"
    ready: bool = False
    version: Any = None  # lab.registry.ModelVersion resolved (for /readyz and extra routes)
    current: tuple[Any, Any] | None = None  # (ModelVersion, loaded model): what scores, swapped whole
    assembler: FeatureAssembler | None = None
    store: Any = None
    ledger: Ledger | None = None
    warnings: list[str] = field(default_factory=list)
    router: Router | None = None
    shadow: ShadowMirror | None = None  # mirrors answered requests to a shadow's challenger, off the request path
    unit: str | None = None  # the request field the router routes by
    predictions: int = 0
    not_ready: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    allow_empty_store: bool = False
    batch: Any = None  # lab.serving.batch_predictions.BatchFallback with [tool.lab.serve] batch_fallback
    metrics: ServerMetrics | None = None  # what /metrics shows; set by create_app
    limit: ScoringLimit = field(default_factory=lambda: ScoringLimit(0, 0))  # scoring slots and queue
    batcher: MicroBatcher | None = None  # scoring on the event loop: concurrent requests together
    budget: Budget = field(default_factory=Budget)  # latency budget and timeouts; enforced on the pool
    fallbacks: dict[str, int] = field(default_factory=dict)  # fallback answers by reason
    breakers: tuple[CircuitBreaker, CircuitBreaker] = field(  # (online store, model)
        default_factory=lambda: (CircuitBreaker("store", 0, 1.0), CircuitBreaker("model", 0, 1.0)))
    models: Any = None  # plugins.litestar_serving.models.ModelCache when other models are served beside this one
    freshness_watch: FreshnessWatch | None = None  # freshness breaches by view; one event per view a minute
    availability: StoreAvailability = field(default_factory=StoreAvailability)  # the online store's, as met
    resources: ResourceWatch | None = None  # the process's memory, sampled off the request path; leak verdicts
    devices: dict[str, str] = field(default_factory=dict)  # model -> where it scores ([tool.lab.serve] device)


def spec_views(spec: ModelSpec, views: dict) -> list:
    """The feature views ``spec`` reads, in its order; ``LabError`` naming the fix when one
    is not declared or is keyed by something the request does not carry."""
    fields = spec.request.names
    out = []
    for name in spec.views:
        view = views.get(name)
        if view is None:
            raise LabError(f"model {spec.name!r} reads feature view {name!r}, which no plugin declares "
                           f"(lab_feature_views; declared: {', '.join(sorted(views)) or 'none'})")
        if view.entity not in fields:
            raise LabError(f"feature view {name!r} is keyed by {view.entity!r}, which is not a field of the "
                           f"{spec.request.title} request ({', '.join(fields)}); add it to the request "
                           f"schema of model {spec.name!r}")
        out.append(view)
    return out


def check_unit(router: Router, spec: ModelSpec) -> str:
    """The request field ``router`` routes by; ``LabError`` naming the fix when the
    request has no such field (every request would land on one variant, or none)."""
    fields = spec.request.names
    if router.unit not in fields:
        raise LabError(f"flag {router.flag!r} assigns by {router.unit!r}, which is not a field of the "
                       f"{spec.request.title} request ({', '.join(fields)}); route by a flag created with "
                       f"--unit set to one of them")
    return router.unit


def start_up(state: ServingState, config, pm) -> None:
    """Open the stores, load and warm the model; set ``state.ready`` or ``state.reason``.

    Runs in a worker thread; every failure ends as a reason for ``/readyz``, logged.
    """
    try:
        state.reason = "opening the online store"
        state.store = pm.hook.lab_online_store(config=config)
        if state.store is None:
            raise LabError("no plugin answered lab_online_store; install or enable an online store plugin")
        state.reason = "opening the prediction ledger"
        state.ledger = Ledger.open(config.ledger_path, sync=config.serve.ledger_sync)
        state.reason = f"looking up the {state.alias} of model {state.model_name!r}"
        if not config.registry_path.exists():
            raise LabError(f"no registry at {config.registry_path}: run `lab run` to train and register a model")
        if state.router is not None:
            state.reason = f"loading the model versions of flag {state.router.flag!r}"
            state.router.refresh()
            state.unit = check_unit(state.router, state.spec)
            routes = state.router.routes()
            control = routes[state.router.control]
            version, model = control.version, control.model
            names_by_version = {n: list(r.model.feature_names) for n, r in routes.items()}
            if len({tuple(v) for v in names_by_version.values()}) > 1:
                raise LabError(f"flag {state.router.flag!r} mixes models with different inputs "
                               f"{names_by_version}; route only between versions of one feature set")
        else:
            with Registry.open(config.registry_path, project_root=config.root) as registry:
                version = registry.get_alias(state.model_name, state.alias)
            if version is None:
                raise LabError(f"model {state.model_name!r} has no {state.alias}: run `lab run` or "
                               f"`lab promote {state.model_name} VERSION`")
            model = None
        state.version = version
        where = f"model {version.name!r} v{version.version} ({version.flavor})"
        if model is None:
            state.reason = f"loading {where}"
            flavor = model_flavor(pm, version.flavor)
            model = flavor.load(config.root / version.artifact_path)
            device = config.serve.placement(version.name)[0]
            if device != "cpu":
                state.reason = f"placing {where} on {device}"
                model = place(flavor, model, config, version.name)
        if state.stopping.is_set():
            return
        state.reason = f"warming up {where}"
        names = list(model.feature_names)
        score = model.predict(np.zeros((1, len(names)), dtype=np.float32))
        if np.shape(score) != (1,):
            raise LabError(f"{where} returned shape {np.shape(score)} for one row; a flavor's predict "
                           "must return one score per row")
        # the view versions this model version was trained on, where the store still holds them
        views = pin_views(spec_views(state.spec, feature_views(pm, config)),
                          (version.lineage or {}).get("feature_views"), state.store)
        state.reason = "checking the online store"
        check_materialized(state.store, views, state.allow_empty_store)
        state.reason = f"warming up {where}"
        assembler = FeatureAssembler(state.store, views, state.spec.request_row, names)
        example = state.spec.request.example_request()
        timestamp = state.spec.request.timestamp
        example[timestamp] = request_time(example[timestamp])
        problems = assembler.check(example, example[timestamp])
        if problems:
            raise LabError(f"{where} cannot be served: " + "; ".join(problems))
        state.warnings = assembler.warnings()
        for warning in state.warnings:
            log.warning("%s", warning)
        if state.freshness_watch is None:
            state.freshness_watch = FreshnessWatch(views, _event_emitter(pm))
        else:
            state.freshness_watch.objectives.update({v.name: v.freshness_s for v in views})
        state.current, state.assembler = (version, model), assembler
        if state.stopping.is_set():  # shut down while we loaded: stay not ready
            return
        state.ready, state.reason = True, None
        log.info("ready: serving %s", where)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the readiness reason
        state.reason = f"{state.reason} failed: {exc}"
        if isinstance(exc, LabError):
            log.error("not ready: %s", state.reason)
        else:
            log.exception("not ready: %s", state.reason)


def check_materialized(store, views, allow_empty: bool) -> None:
    """Raise ``LabError`` naming the fix when a view the model reads was never
    materialized: every request would silently score on defaults. ``allow_empty``
    (``lab serve --allow-empty-store``) accepts that; ``/readyz`` then warns instead."""
    never = [view.name for view in views if store.watermark(view) is None]
    if not never or allow_empty:
        return
    path = getattr(store, "path", None)
    where = f" (there is no {path})" if path is not None and not path.exists() else ""
    raise LabError(f"the online store{where} has no features for view(s) {', '.join(map(repr, never))}, so "
                   "every request would be scored on defaults: run `lab run materialize` first, or serve "
                   "on defaults anyway with `lab serve --allow-empty-store`")


def follow_alias(state: ServingState, config, pm) -> bool:
    """Swap in the version the alias points at now, if it moved; True if swapped."""
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        target = registry.get_alias(state.model_name, state.alias)
    serving_version, serving_model = state.current
    if target is None or target.version == serving_version.version:
        return False
    model = _load(config, pm, target)
    if list(model.feature_names) != list(serving_model.feature_names):
        raise LabError(f"{state.alias} moved to v{target.version}, whose inputs differ from v"
                       f"{serving_version.version}'s; restart `lab serve` to serve it")
    model.predict(np.zeros((1, len(model.feature_names)), dtype=np.float32))  # warm before it takes traffic
    state.current = (target, model)
    state.version = target
    log.info("%s of %r moved: now serving v%d (was v%d)", state.alias, state.model_name,
             target.version, serving_version.version)
    return True


async def follow_changes(state: ServingState, config, pm, refresh_s: float, guardrail_s: float) -> None:
    """Keep serving what the registry says: the alias's current version, or the flag's
    current routing table; every ``guardrail_s`` check a flag's guardrails, which may
    stop it. A change that cannot be applied is logged and the old one keeps serving."""
    last_check = time.monotonic()
    last_error = None
    while not state.stopping.is_set():
        await asyncio.sleep(refresh_s)
        if not state.ready:
            continue
        router = state.router
        try:
            if router is None:
                await asyncio.to_thread(follow_alias, state, config, pm)
            else:
                await asyncio.to_thread(router.refresh)
                if guardrail_s > 0 and time.monotonic() - last_check >= guardrail_s:
                    last_check = time.monotonic()
                    results = await asyncio.to_thread(router.check_guardrails, config, pm, state.ledger)
                    if any(r.breached for r in results):
                        await asyncio.to_thread(router.refresh)  # route to control now, not a tick later
            last_error = None
        except Exception as exc:  # noqa: BLE001 - a bad change must not take serving down
            if str(exc) != last_error:
                log.error("change not applied, still serving as before: %s", exc)
            last_error = str(exc)
            state.warnings = [w for w in state.warnings if not w.startswith("change not applied")]
            state.warnings.append(f"change not applied: {exc}")


def _lifespan(config, pm, refresh_s: float, guardrail_s: float):
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state: ServingState = app.state.serving
        loader = asyncio.ensure_future(asyncio.to_thread(start_up, state, config, pm))
        follower = asyncio.ensure_future(follow_changes(state, config, pm, refresh_s, guardrail_s))
        state.shadow = ShadowMirror(config, pm, state.model_name, lambda: state.current, refresh_s=refresh_s).start()
        state.resources.start()
        try:
            yield
        finally:
            state.ready, state.reason = False, "shutting down"
            state.stopping.set()
            state.resources.stop()
            state.limit.close()
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            # The loader thread cannot be cancelled; wait for it so nothing opens after we close.
            await asyncio.gather(loader, return_exceptions=True)
            await asyncio.to_thread(state.shadow.close)
            try:
                if state.store is not None:
                    state.store.close()
            finally:
                if state.ledger is not None:
                    await asyncio.to_thread(state.ledger.close)
                    stats = state.ledger.stats()
                    # Straight to stderr: the "lab" logger goes through Litestar's queue
                    # listener, drained only at exit, and uvicorn re-raises SIGTERM first.
                    print(f"lab serve: ledger closed: {stats['written']} written, {stats['dropped']} "
                          f"dropped, {stats['failed']} failed", file=sys.stderr, flush=True)

    return lifespan


def _not_ready(state: ServingState) -> ServiceUnavailableException:
    state.not_ready += 1
    if state.metrics is not None:
        state.metrics.not_ready("not_ready")
    return ServiceUnavailableException(detail=f"not ready: {state.reason}")


def _unrecorded(state: ServingState) -> ServiceUnavailableException:
    """With ledger_sync, a prediction whose ledger row was not committed is not answered."""
    state.not_ready += 1
    if state.metrics is not None:
        state.metrics.not_ready("ledger_unavailable")
    return ServiceUnavailableException(
        detail="the prediction could not be committed to the ledger, and [tool.lab.serve] ledger_sync = true "
               "answers only committed ones; retry", headers={"Retry-After": "1"})


def _event_emitter(pm):
    """``emit(name, payload)`` handing the event to ``lab_on_event`` on a thread of its own,
    so an observer's I/O (a webhook) never holds a request."""
    from lab import events

    def emit(name: str, payload: dict) -> None:
        threading.Thread(target=events.emit, args=(pm, name), kwargs=payload, daemon=True,
                         name=f"lab-event-{name}").start()

    return emit


@dataclass(frozen=True)
class _NoFeatures:
    """What a fallback reports when the store phase did not end: no features at all."""

    features: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    freshness: dict = field(default_factory=dict)


_NOTHING = _NoFeatures()


def _record(breakers: tuple[CircuitBreaker, CircuitBreaker], miss: Unscored | None) -> None:
    """Tell the breakers how a request's calls went: both answered (``miss`` None), or
    the store or the model failed or timed out (the store answered first, then)."""
    store, model = breakers
    if miss is None:
        store.success()
        model.success()
    elif miss.reason.endswith("_circuit_open") or miss.dependency is None:
        return  # not called, or never reached (no slot in time)
    elif miss.dependency == "store":
        store.failure(miss.detail)
    else:
        store.success()
        model.failure(miss.detail)


def _store_read(availability: StoreAvailability, miss: Unscored | None) -> None:
    """Count how a request's online store read went for ``lab_online_store_availability``:
    answered (``miss`` None, or the model failed after it), failed, too slow, or kept
    from the store by its open breaker. A request that never reached it is not a read."""
    if miss is None:
        availability.record("ok")
    elif miss.dependency == "store":
        availability.record(miss.reason)
    elif miss.dependency == "model" and miss.reason != "model_circuit_open":
        availability.record("ok")


def _on_feature_defaults(serving: ServingState, miss: Unscored, model, fields: dict, what: str):
    """``(assembled, score)`` scored by ``model`` on every view's declared defaults, when
    the spec opts in (``on_store_outage = "feature_defaults"``) and ``miss`` is the online
    store's (failed, too slow, circuit open); counted per view. None otherwise, or when
    the model cannot score them (its breaker not closed, or it raises): then the
    whole-prediction fallback. Runs on the event loop: the model's predict, no store."""
    if miss.dependency != "store" or serving.spec.on_store_outage != "feature_defaults":
        return None
    if serving.breakers[1].state != CLOSED or serving.assembler is None:
        return None
    try:
        assembled = serving.assembler.without_store(fields)
        score = float(model.predict(assembled.vector)[0])
    except Exception as exc:  # noqa: BLE001 - then the declared fallback, as for any model failure
        log.warning("cannot score %s on feature defaults: %s", what, exc)
        return None
    log.warning("feature defaults for %s (%s): %s", what, miss.reason, miss.detail)
    serving.fallbacks[STORE_UNAVAILABLE] = serving.fallbacks.get(STORE_UNAVAILABLE, 0) + 1
    if serving.metrics is not None:
        serving.metrics.fallback(STORE_UNAVAILABLE)
        serving.metrics.feature_fallbacks(assembled.defaults, miss.reason)
    return assembled, score


def _unscored(serving: ServingState, miss: Unscored, what: str, request: dict) -> tuple[str, Any]:
    """The fallback reason for ``miss``, counted and logged, with the request entity's latest
    batch prediction when ``[tool.lab.serve] batch_fallback`` finds one (None: the declared
    fallback); or the 503 (or, for a bug, the original exception) when there is neither."""
    batch = serving.batch.find(request) if serving.batch is not None else None
    if serving.spec.fallback is None and batch is None:
        if miss.error is not None and not isinstance(miss.error, LabError):
            raise miss.error  # a bug, not a dependency's state: a 500, logged with its traceback
        log.error("cannot score %s: %s", what, miss.detail)
        serving.not_ready += 1
        if serving.metrics is not None:
            serving.metrics.not_ready("cannot_score")
        raise ServiceUnavailableException(
            detail=f"cannot score now ({miss.reason}): {miss.detail}",
            headers={"Retry-After": str(miss.retry_after)} if miss.retry_after else None)
    if miss.error is not None and not isinstance(miss.error, LabError):
        log.error("fallback for %s (%s)", what, miss.reason, exc_info=miss.error)
    else:
        log.warning("fallback for %s (%s): %s", what, miss.reason, miss.detail)
    serving.fallbacks[miss.reason] = serving.fallbacks.get(miss.reason, 0) + 1
    if serving.metrics is not None:
        serving.metrics.fallback(miss.reason)
    return miss.reason, batch


def prediction_controller(spec: ModelSpec, errors: RequestErrors, *, path: str = "/predict",
                          operation_id: str = "predict", serving_for=None) -> type[Controller]:
    """A ``/predict`` controller whose body is ``errors.struct``, the request type made
    from ``spec``: made per app, so Litestar documents and decodes that type. ``path`` and
    ``operation_id`` place it elsewhere (``/models/NAME/predict``); ``serving_for``, an
    async function, gives the ``ServingState`` that scores (default: ``state.serving``)."""
    schema = spec.request
    id_field, timestamp = schema.id, schema.timestamp
    source = (f"the online store by {', '.join(schema.entities)}, plus the request-time features of the request"
              if schema.entities else "the request alone")

    async def predict(self, data, state: State, request: Request) -> Prediction:
        started = time.perf_counter()
        serving: ServingState = state.serving if serving_for is None else await serving_for()
        if not serving.ready:
            raise _not_ready(serving)
        header_id = next((v for k, v in request.scope["headers"] if k == b"x-request-id"), None)
        request_id = header_id.decode("latin-1") if header_id and _REQUEST_ID.match(header_id) else _new_id()
        fields = msgspec.structs.asdict(data)
        sent = fields[timestamp]
        # Features read the wall-clock time; an offset, if sent, does not move it.
        when = fields[timestamp] = request_time(sent)
        event_id = fields[id_field]
        (version, model), flag, variant = serving.current, None, None
        limit, assembler, fallback, batch = serving.limit, serving.assembler, None, None
        try:
            if serving.router is not None:
                route, flag = serving.router.route(fields[serving.unit])
                model, version, variant = route.model, route.version, route.variant
            for breaker in serving.breakers:  # open: straight to the fallback, the dependency not called
                if not breaker.allow():
                    raise Unscored(f"{breaker.name}_circuit_open", breaker.name, breaker.describe(),
                                   retry_after=breaker.retry_after_s())

            def assemble():
                return assembler.assemble(fields, when)

            def predict_one(assembled):
                return float(model.predict(assembled.vector)[0])

            if limit.pooled:
                # The slot is released when the work ends, not when this request stops waiting.
                assembled, score = await score_bounded(limit, serving.budget, started, assemble, predict_one)
            elif serving.batcher is not None:  # with the requests that arrived together; the same answer
                assembled, score = await serving.batcher.score(assembler, model, fields, when)
            else:
                assembled, score = score_inline(assemble, predict_one)
            _record(serving.breakers, None)
            _store_read(serving.availability, None)
        except Busy as exc:
            if serving.metrics is not None:
                serving.metrics.rejected("queue_full")
            raise ServiceUnavailableException(
                detail=str(exc), headers={"Retry-After": str(limit.retry_after_s())}) from None
        except LabError as exc:  # the router's
            if variant is not None:
                serving.router.count(variant, failed=True)
            log.error("cannot score %s %s: %s", schema.title, event_id, exc)
            serving.not_ready += 1
            if serving.metrics is not None:
                serving.metrics.not_ready("cannot_score")
            raise ServiceUnavailableException(detail=f"cannot score now: {exc}") from None
        except Unscored as miss:
            # A store or model that failed or did not answer in time, not the caller's
            # input: the declared fallback, flagged; with none declared, a 503 with the reason.
            if variant is not None:
                serving.router.count(variant, failed=True)
            _record(serving.breakers, miss)
            _store_read(serving.availability, miss)
            defaulted = _on_feature_defaults(serving, miss, model, fields, f"{schema.title} {event_id}")
            if defaulted is not None:  # the model's score on the views' declared defaults
                fallback, (assembled, score) = STORE_UNAVAILABLE, defaulted
            else:
                fallback, batch = _unscored(serving, miss, f"{schema.title} {event_id}", fields)
                assembled, score = miss.assembled or _NOTHING, batch.score if batch else serving.spec.fallback
        latency_ms = (time.perf_counter() - started) * 1000.0
        if variant is not None and fallback is None:
            serving.router.count(variant, failed=False)
        # One record and one answer for the server and the embedded predictor (lab.load_model).
        durable = serving.ledger.sync
        if durable and not await serving.ledger.append_durably(ledger_record(
                schema, fields, sent, version, assembled, score, latency_ms, request_id, experiment=flag,
                variant=variant, fallback=fallback)):  # ledger_sync: answer only what is committed
            raise _unrecorded(serving)
        if fallback is None:
            serving.predictions += 1

        def bookkeeping() -> None:
            # Nothing here changes the answer: on the lean path it runs once the answer is
            # sent (fastpath.DEFERRED), so the client does not wait for it.
            if not durable:
                serving.ledger.append(ledger_record(schema, fields, sent, version, assembled, score, latency_ms,
                                                    request_id, experiment=flag, variant=variant, fallback=fallback))
            if fallback is None:
                fresh = assembled.freshness
                serving.shadow.mirror(request_id, event_id, assembled.features, score, latency_ms, version.version)
                if serving.metrics is not None:
                    serving.metrics.prediction(version.name, version.version, variant)
                    serving.metrics.features(assembled.defaults, fresh)
                if serving.freshness_watch is not None:
                    serving.freshness_watch.observe(fresh)

        deferred = request.scope.get(fastpath.DEFERRED)
        if deferred is None:  # Litestar's generic path: before the answer, as it always was
            bookkeeping()
        else:
            deferred.append(bookkeeping)
        return Prediction(
            request_id=request_id,
            **prediction_fields(event_id, version, assembled, score, latency_ms),
            flag=flag,
            variant=variant,
            fallback=fallback is not None,
            fallback_reason=fallback,
            **({"fallback_source": "feature_defaults"} if fallback == STORE_UNAVAILABLE
               else fallback_fields(fallback, batch)),
        )

    predict.__doc__ = f"""Score one {schema.title} with the served model version.

        Features come from {source}. An entity the store does not know
        gets its view's default features and ``defaults`` says which view;
        ``feature_age_seconds``, ``stale`` and ``future`` say how old each view's values
        were at {timestamp} (values past the ttl, or dated after a back-dated request, are
        not used). ``event_id`` is the request's {id_field}. Every prediction goes to the ledger.
        """
    # Litestar reads the body type from the annotation: this app's request type.
    predict.__annotations__ = {**predict.__annotations__, "data": JSONBody[errors.struct]}
    handler = post(
        "/",
        status_code=200,
        operation_id=operation_id,
        summary=f"Score one {schema.title}" + ("" if path == "/predict" else f" with model {spec.name!r}"),
        before_request=errors.strict_body,
        responses={
            400: ResponseSpec(ErrorBody, description="Malformed JSON, or a field missing, unknown, of the "
                                                     "wrong type or out of its bounds; or a Host header "
                                                     "that is not this server's"),
            413: ResponseSpec(ErrorBody, description="The body is over [tool.lab.serve] max_body_bytes"),
            415: ResponseSpec(ErrorBody, description="The content-type is not application/json"),
            503: ResponseSpec(ErrorBody, description="The model is not loaded yet, or failed to load; or "
                                                     "the server is busy (every scoring slot taken and the "
                                                     "queue full: retry after the Retry-After header's "
                                                     "seconds)"),
        },
    )(predict)
    return type("PredictionController", (Controller,), {"path": path, "tags": ["prediction"],
                                                         "predict": handler, "__module__": __name__})


class HealthController(Controller):
    path = "/"
    tags = ["health"]

    @get("/healthz", operation_id="healthz", summary="Is the process up")
    async def healthz(self) -> Health:
        """200 whenever the process answers; says nothing about the model (see /readyz)."""
        return Health(status="ok")

    @get(
        "/readyz",
        operation_id="readyz",
        summary="Can the server score now",
        responses={503: ResponseSpec(Readiness, description="Not ready: still loading, or a step failed")},
    )
    async def readyz(self, state: State) -> Response[Readiness]:
        """200 when the model is loaded and warmed and the stores are open (with
        ``--workers``: in every worker); else 503 with the reason. Either way the body
        names the model, alias and version."""
        serving: ServingState = state.serving
        ready, reason = serving.ready, serving.reason
        waiting = serving.metrics.workers_waiting() if ready and serving.metrics is not None else None
        if waiting:
            ready, reason = False, waiting
        body = Readiness(
            ready=ready, reason=reason, model=serving.model_name, alias=serving.alias,
            model_version=serving.version.version if serving.version is not None else None,
            warnings=list(serving.warnings) + [b.describe() for b in serving.breakers if b.state != CLOSED],
            models=_loaded_models(serving) if ready else [],
        )
        return Response(body, status_code=200 if ready else 503)

    @get("/stats", operation_id="stats", summary="Prediction and ledger counters")
    async def stats(self, state: State) -> ServerStats:
        """Counters since start, including ledger rows dropped because its queue was full
        and requests served a view's defaults because its values were stale or from the
        request's future."""
        serving: ServingState = state.serving
        ledger = serving.ledger.stats() if serving.ledger is not None else {}
        features = serving.assembler.counts() if serving.assembler is not None else {"stale": 0, "future": 0}
        return ServerStats(predictions=serving.predictions, not_ready=serving.not_ready, ledger=ledger,
                           features=features, fallbacks=dict(serving.fallbacks),
                           batch_fallback=serving.batch.counts() if serving.batch is not None else {},
                           shadow=serving.shadow.counts() if serving.shadow is not None else {},
                           devices=dict(serving.devices))


def _loaded_models(serving: ServingState) -> list[ServedModel]:
    """The models loaded now, the default (pinned) first, with their measured footprints."""
    from plugins.litestar_serving.models import loaded_models

    return [ServedModel(**model) for model in loaded_models(serving)]


class MetricsController(Controller):
    path = "/"
    tags = ["monitoring"]

    @get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics",
        media_type=MediaType.TEXT,
    )
    async def metrics(self, state: State) -> Response[bytes]:
        """The server's metrics in the Prometheus text format (version 0.0.4): request
        latency histograms by model and route, requests by route and status, requests in
        flight, predictions by model, version and variant, not-ready answers, views
        served defaults (stale, back-dated), the ledger's counters and queue depth, the
        process's memory and, on a GPU, CUDA memory. See docs/serving.md, "Metrics"."""
        return Response(state.serving.metrics.render(), media_type=METRICS_MEDIA_TYPE)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to listen on) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_names(host: str) -> frozenset[str]:
    """The Host header names a server listening on ``host`` answers to; empty: any."""
    if not is_loopback(host):
        return frozenset()
    bound = host.lower().strip("[]")
    bound = f"[{bound}]" if ":" in bound else bound
    return frozenset({"127.0.0.1", "localhost", "[::1]", bound})


def _strict_openapi(openapi: OpenAPI, struct: type[msgspec.Struct], example: Any, path: str = "/predict") -> None:
    """Make the request body's schema say what the decoder enforces: Litestar writes
    integer bounds as floats (2**63-1 becomes 9.223372036854776e+18, a different number)
    and leaves out that unknown fields are refused. Add the struct's description and
    the schema's example request."""
    info = msgspec.inspect.type_info(struct)
    schema = _request_body_schema(openapi, path)
    if not isinstance(schema, Schema):
        return
    schema.description = schema.description or struct.__doc__
    schema.examples = [msgspec.to_builtins(dict(example))]
    if info.forbid_unknown_fields:
        schema.additional_properties = False
    for struct_field in info.fields:
        kind = struct_field.type
        kind = kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind
        prop = (schema.properties or {}).get(struct_field.encode_name)
        if isinstance(kind, msgspec.inspect.IntType) and isinstance(prop, Schema):
            for bound, key in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusive_minimum"),
                               ("lt", "exclusive_maximum")):
                if getattr(kind, bound) is not None:
                    setattr(prop, key, getattr(kind, bound))


HOST_REFUSED = "The Host header does not name this server (it listens on a loopback address)"


def _document_host_check(openapi: OpenAPI) -> None:
    """Every route is behind the Host check (``host_guard``): say on each operation that
    it may answer a 400 ``ErrorBody``, as ``/predict`` already does."""
    for item in (openapi.paths or {}).values():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            operation.responses = operation.responses or {}
            if "400" not in operation.responses:
                operation.responses["400"] = OpenAPIResponse(description=HOST_REFUSED, content={
                    "application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/ErrorBody"))})


def _request_body_schema(openapi: OpenAPI, path: str = "/predict") -> Schema | None:
    """The component schema ``path``'s request body refers to."""
    operation = openapi.paths[path].post if openapi.paths and path in openapi.paths else None
    body = operation.request_body if operation is not None else None
    media = (getattr(body, "content", None) or {}).get("application/json")
    ref = getattr(getattr(media, "schema", None), "ref", None)
    if not ref:
        return None
    return (openapi.components.schemas or {}).get(ref.rsplit("/", 1)[-1])


def create_app(config, pm=None, *, model_name: str | None = None, alias: str = "champion",
               flag: str | None = None, refresh_s: float | None = None,
               guardrail_s: float | None = None, host: str | None = None,
               allow_empty_store: bool | None = None, max_concurrency: int | None = None,
               max_queue: int | None = None, latency_budget_ms: float | None = None,
               store_timeout_ms: float | None = None, model_timeout_ms: float | None = None,
               lean_predict: bool = True, max_batch: int = 64, batch_wait_ms: float = 0.0,
               models: Sequence[str] = (), max_model_memory_mb: float | None = None) -> Litestar:
    """The model server for the lab ``config``: serves ``alias`` of ``model_name``
    (default ``config.model_name``, or the lab's only model), plus every route from
    ``lab_http_routes``. The model's ``ModelSpec`` (``lab.plugins.model_spec``) gives the
    request type, the feature views and the request-time features; a model no plugin
    declares is a ``ConfigError`` here, naming the models that are.
    The alias is looked up again every ``refresh_s`` seconds and a moved alias is
    swapped in live. With ``flag``, each request is routed to the version its unit's
    variant names, changes to the flag are picked up every ``refresh_s``, and the platform
    guardrails are checked every ``guardrail_s`` seconds (defaults: [tool.lab.serve]).

    ``host`` is the address the server listens on (default [tool.lab.serve] host): on a
    loopback address only requests whose Host header names 127.0.0.1, localhost or
    [::1] (any port) are answered; others get a 400. ``allow_empty_store`` (default
    [tool.lab.serve] allow_empty_store) lets the server be ready when a view was never
    materialized, scoring on defaults. ``max_concurrency`` and ``max_queue`` (defaults:
    [tool.lab.serve]) bound the requests scoring at once, on a pool of that many threads,
    and those waiting for a slot; one more is answered 503 with Retry-After (see
    ``plugins.litestar_serving.limits``). ``max_concurrency`` 0 scores on the event loop.
    ``latency_budget_ms``, ``store_timeout_ms`` and ``model_timeout_ms`` (defaults:
    [tool.lab.serve]; 0 none; they need the pool) bound a request's wait; past them, or
    when a store or the model fails, the request gets the spec's ``fallback``, flagged
    (none declared: 503).

    ``max_batch`` (default 64; 1: off) and ``batch_wait_ms`` (default 0: only what arrived in
    the same turn of the event loop): requests scoring on the event loop are scored
    together (``plugins.litestar_serving.batching``), each answer exactly its one-at-a-time
    answer; on the pool (``max_concurrency`` 1 or more, where the latency budget applies)
    each request scores alone.

    ``models`` names other models to serve beside it, each at ``POST /models/NAME/predict``
    (the default too), loaded on first use into a memory-bounded LRU of at most
    ``max_model_memory_mb`` (default [tool.lab.serve]; 0: unbounded): see
    ``plugins.litestar_serving.models``.

    ``lean_predict`` (default True) serves ``POST /predict`` through
    ``plugins.litestar_serving.fastpath``: the same middleware, guards, hook, handler and
    answers without Litestar's generic parameter parsing; False leaves it all to Litestar.

    Routes: POST /predict, GET /healthz, /readyz, /stats, /metrics; OpenAPI at /schema.
    Extra handlers find the shared ``ServingState`` at ``request.app.state.serving``.
    """
    if pm is None:
        pm = get_plugin_manager(config)
    extra = [handler for batch in pm.hook.lab_http_routes(config=config) for handler in (batch or [])]
    refresh_s = config.serve.flag_refresh_s if refresh_s is None else refresh_s
    closers = []
    if config.section("llm"):  # [tool.lab.llm]: the OpenAI-compatible routes beside /predict (llm_routes.py)
        from plugins.litestar_serving.llm_routes import llm_routes

        llm_handlers, llm_service = llm_routes(config, pm, refresh_s)
        extra, closers = [*extra, *llm_handlers], [llm_service.close]
    guardrail_s = config.serve.guardrail_interval_s if guardrail_s is None else guardrail_s
    host = config.serve.host if host is None else host
    allow_empty_store = config.serve.allow_empty_store if allow_empty_store is None else allow_empty_store
    spec = model_spec(pm, config, model_name)
    max_concurrency = config.serve.max_concurrency if max_concurrency is None else max_concurrency
    max_queue = config.serve.max_queue if max_queue is None else max_queue
    limit = ScoringLimit(max_concurrency, max_queue)
    serve = config.serve
    budget = Budget(serve.latency_budget_ms if latency_budget_ms is None else latency_budget_ms,
                    serve.store_timeout_ms if store_timeout_ms is None else store_timeout_ms,
                    serve.model_timeout_ms if model_timeout_ms is None else model_timeout_ms)
    breakers = tuple(CircuitBreaker(name, serve.breaker_failures, serve.breaker_open_s)
                     for name in ("store", "model"))
    if budget.bounded and not limit.pooled:
        raise ConfigError("[tool.lab.serve] latency_budget_ms, store_timeout_ms and model_timeout_ms are enforced "
                          "on the scoring pool: set max_concurrency to 1 or more (--max-concurrency N) as well")
    state = ServingState(model_name=spec.name, alias=f"flag {flag}" if flag else alias, spec=spec,
                         allow_empty_store=allow_empty_store, limit=limit,
                         budget=budget, breakers=breakers, batch=batch_fallback_for(config, spec))
    state.devices = {name: config.serve.placement(name)[0] for name in dict.fromkeys([spec.name, *models])}
    if max_batch > 1 and not limit.pooled:
        state.batcher = MicroBatcher(max_batch, batch_wait_ms / 1000)
    if flag:
        state.router = FlagRouter(config.registry_path, flag, state.model_name, functools.partial(_load, config, pm))
    struct = request_type(spec.request)
    errors = RequestErrors(struct, field_hints(spec.request),
                           (f.name for f in spec.request.fields if f.type == "datetime"))
    names = _host_names(host)
    state.metrics = ServerMetrics(state, spec.views)
    state.resources = ResourceWatch(state, config.resources, pm)
    keys = ServerKeys(keys_path(config))  # API keys: the admin routes', and /predict's when predict_auth = "key"
    predict = prediction_controller(spec, errors)
    predict.guards = [guard(keys, "predict")] if config.serve.predict_auth == "key" else []
    admin = admin_routes.admin_controllers(admin_routes.Admin(config, pm, keys, spec.name, spec.task))
    lifespans, served = [_lifespan(config, pm, refresh_s, guardrail_s)], []
    if [name for name in models if name != spec.name]:  # several models: /models/NAME/predict and the LRU
        from plugins.litestar_serving.models import serve_models

        served, lifespan = serve_models(state, config, pm, models, errors, alias=alias if not flag else "champion",
                                        max_model_memory_mb=max_model_memory_mb, refresh_s=refresh_s)
        lifespans.append(lifespan)  # after the main one: it ends first, before the store and ledger close
        for _, controller, _, _ in served:
            controller.guards = predict.guards
    try:
        app = Litestar(
            route_handlers=[predict, *(c for _, c, _, _ in served), HealthController, MetricsController, *admin,
                            *extra],
            # The metrics first (outermost), so requests the Host check refuses are counted too.
            middleware=[state.metrics.middleware, *([host_guard(names, host)] if names else [])],
            lifespan=lifespans,
            on_shutdown=[keys.close, *closers],
            request_max_body_size=config.serve.max_body_bytes,  # every route with a body; 413 names the limit
            state=State({"serving": state}),
            exception_handlers={ClientException: errors.handler, ServiceUnavailableException: errors.handler},
            openapi_config=OpenAPIConfig(
                title="lab model server", version=lab.__version__, path="/schema", use_handler_docstrings=True,
                description=f"Scores {spec.request.title} events with the {state.alias} of model "
                            f"{state.model_name!r}.",
            ),
            # A 500 is a bug (bad input never gets one): log every one, with its traceback.
            logging_config=LoggingConfig(
                log_exceptions="always",
                disable_stack_trace={*range(400, 500), 503},  # client errors and not-ready are not bugs
                configure_root_logger=False,
                loggers={"lab": {"level": "INFO", "handlers": ["queue_listener"], "propagate": False}},
            ),
        )
    except ImproperlyConfiguredException as exc:
        raise LabError(f"the routes from lab_http_routes cannot be mounted: {exc}") from None
    _strict_openapi(app.openapi_schema, struct, spec.request.example)
    for path, _, model_struct, example in served:
        _strict_openapi(app.openapi_schema, model_struct, example, path)
    admin_routes.document(app.openapi_schema, predict_keyed=config.serve.predict_auth == "key")
    if names:
        _document_host_check(app.openapi_schema)
    if lean_predict:  # POST /predict without Litestar's generic parameter parsing (same answers)
        fastpath.install(app, errors)
    return app


def _load(config, pm, version):
    """Load a registered ``ModelVersion`` with its flavor and place it on its model's
    device (``place``): the router's loader, and the one of moved aliases."""
    flavor = model_flavor(pm, version.flavor)
    return place(flavor, flavor.load(config.root / version.artifact_path), config, version.name)


def place(flavor, model, config, name: str):
    """``model`` of model ``name`` where ``[tool.lab.serve]`` (or its
    ``[tool.lab.serve.models.<name>]`` table) puts it: on ``"cpu"`` the model itself,
    untouched (the CPU scoring path is the loaded model's own); else the flavor's
    ``ModelFlavor.place``, whose ``LabError`` names the fix (no such device, a flavor
    that cannot place) and makes the server not ready with it."""
    device, fraction = config.serve.placement(name)
    if device == "cpu":
        return model
    return flavor.place(model, device, fraction)
