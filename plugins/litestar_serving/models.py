"""Several models in one server: ``POST /models/{name}/predict`` and a memory-bounded LRU.

``lab serve --model a --model b`` (or ``--all-models``) serves the first model as before
(``/predict``, loaded and warmed before ``/readyz`` is 200, pinned) and every other one at
its own route, ``/models/NAME/predict``, with its own request type from its ``ModelSpec``
(documented in OpenAPI), the same strict decoding, handler, ledger and metrics. The
default model answers at ``/models/DEFAULT/predict`` too.

The other models are loaded on first use into a ``ModelCache``: the load (registry
lookup, flavor load, warm-up, feature-view checks, a dry-run assembly of the example
request) runs in a thread, so requests to models already loaded keep being answered;
concurrent first requests for one model share one load (a future per model). A loaded
model's footprint is measured once, after its load (``model_memory_bytes``: the bytes of
the arrays, tensors and byte strings the loaded object holds). With ``[tool.lab.serve]
max_model_memory_mb`` above 0 the footprints of the loaded models, the pinned default's
included, stay within it: admitting one evicts the least recently used unpinned models
first, and a model that cannot fit (larger than the whole bound, or than what the pinned
default leaves) is refused, its requests answered 503 naming the setting, for
``RETRY_S`` seconds before it is tried again. A model that fails to load is remembered
the same way. Loaded models follow their alias as the default does.

Shadow mirroring and ``--flag`` routing stay the default model's. Imported by ``create_app``
only when more than one model is served.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sys
import time
import types
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable

import numpy as np
from litestar import Litestar
from litestar.exceptions import ClientException, ServiceUnavailableException

from lab.errors import ConfigError, LabError
from lab.modelspec import ModelSpec
from lab.plugins import feature_views
from lab.registry import Registry
from lab.serving.batch_predictions import batch_fallback_for
from lab.serving.predictor import request_time
from lab.serving.scoring import FeatureAssembler
from plugins.litestar_serving.app import (
    ServingState,
    _load,
    _not_ready,
    check_materialized,
    follow_alias,
    prediction_controller,
    spec_views,
)
from plugins.litestar_serving.breaker import CircuitBreaker
from plugins.litestar_serving.errors import RequestErrors
from plugins.litestar_serving.schemas import field_hints, request_type

log = logging.getLogger("lab.serving")

MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
"""What a model served at ``/models/NAME/predict`` may be called (one path segment)."""

RETRY_S = 10.0
"""Seconds a refused or failed model is answered 503 (with Retry-After) before it is tried again."""

MB = 1024 * 1024


# -- a loaded model's footprint ----------------------------------------------------------


def model_memory_bytes(model: Any, *, limit: int = 200_000) -> int:
    """The bytes a loaded model holds: its numpy arrays (``nbytes``, each buffer once),
    torch tensors (their storage, once), and ``bytes``/``bytearray`` values, found by
    walking its attributes, containers and the closures of its functions (a lazily built
    part keeps its source bytes there). A model whose class defines ``memory_bytes()``
    answers for itself. Interpreter overhead (object headers, small strings) is not
    counted: a few KB per model. Attributes are read from ``__dict__``, never through
    ``getattr``, so a model that builds parts on attribute access is not disturbed."""
    own = getattr(type(model), "memory_bytes", None)
    if callable(own):
        return int(own(model))
    seen: set[int] = set()
    buffers: set[int] = set()
    total = 0
    stack = [model]
    torch_tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, int, float, bool, complex, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            key = base.__array_interface__["data"][0]
            if key not in buffers:
                buffers.add(key)
                total += base.nbytes
            continue
        if isinstance(obj, (bytes, bytearray, memoryview)):
            total += obj.nbytes if isinstance(obj, memoryview) else len(obj)
            continue
        if torch_tensor is not None and isinstance(obj, torch_tensor):
            try:
                storage = obj.untyped_storage()
                key = storage.data_ptr()
                if key not in buffers:
                    buffers.add(key)
                    total += storage.nbytes()
            except Exception:  # noqa: BLE001 - a tensor without storage (meta, sparse) counts nothing
                pass
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif callable(obj) and getattr(obj, "__closure__", None):
            stack.extend(cell.cell_contents for cell in obj.__closure__ if _filled(cell))
        else:
            if isinstance(obj, types.ModuleType) or str(getattr(type(obj), "__module__", "")).split(".")[0] in _SKIP:
                continue
            try:  # not getattr: a model's __getattr__ may build parts on demand
                attrs = object.__getattribute__(obj, "__dict__")
            except AttributeError:
                attrs = None
            if isinstance(attrs, dict):
                stack.extend(attrs.values())
            for slot in getattr(type(obj), "__slots__", ()) or ():
                try:
                    stack.append(object.__getattribute__(obj, slot))
                except AttributeError:
                    pass
    return total


_SKIP = frozenset({"builtins", "_thread", "threading", "logging", "sqlite3", "asyncio", "concurrent", "queue"})
"""Modules whose objects a model may refer to (locks, loggers, connections) but that hold no weights."""


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def megabytes(nbytes: float) -> str:
    return f"{nbytes / MB:.3g} MB"


# -- the cache -----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """One model the cache holds (never the pinned default): its serving state and measured footprint."""

    name: str
    serving: ServingState
    nbytes: int
    seconds: float = 0.0  # the load took


@dataclass(frozen=True)
class Refusal:
    """Why a model is not served now, until ``until`` (``time.monotonic``)."""

    detail: str
    until: float
    reason: str  # "too_big" or "load_failed"


class ModelCache:
    """The models a server holds besides its default (``default``, pinned, loaded by the
    app's start-up): ``serving(name)`` gives the ``ServingState`` scoring ``name``,
    loading it first when needed. Used from the event loop; loads run in threads.

    ``bound_bytes`` (0: unbounded) bounds the sum of the loaded models' footprints, the
    default's included; the least recently used unpinned models are evicted to admit one.
    """

    def __init__(self, config, pm, default: ServingState, specs: dict[str, ModelSpec], *, alias: str,
                 bound_bytes: int, refresh_s: float):
        self.config, self.pm, self.default = config, pm, default
        self.specs = specs  # every model served, the default included
        self.alias = alias
        self.bound_bytes = int(bound_bytes)
        self.refresh_s = refresh_s
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Future] = {}
        self._refused: dict[str, Refusal] = {}
        self._default_size: tuple[int, int] | None = None  # (id of the model measured, bytes)
        self.loads = {name: 0 for name in specs}
        self.evictions = {name: 0 for name in specs}
        self.refusals: dict[tuple[str, str], int] = {}  # (model, reason) -> count

    # -- the request path -----------------------------------------------------------

    async def serving(self, name: str) -> ServingState:
        """The state scoring ``name``; ``ServiceUnavailableException`` (503) while the
        server is not ready, or when the model is refused or failed to load."""
        default = self.default
        if not default.ready:
            raise _not_ready(default)
        entry = self.loaded.get(name)
        if entry is not None:
            self.loaded.move_to_end(name)
            return entry.serving
        refused = self._refused.get(name)
        if refused is not None and refused.until > time.monotonic():
            raise self._unavailable(refused)
        future = self._loading.get(name)
        if future is None:
            future = self._loading[name] = asyncio.ensure_future(self._load_and_admit(name))
        # Shielded: a client that goes away does not cancel a load others wait for.
        result = await asyncio.shield(future)
        if isinstance(result, Refusal):
            raise self._unavailable(result)
        return result.serving

    def _unavailable(self, refused: Refusal) -> ServiceUnavailableException:
        self.default.not_ready += 1
        if self.default.metrics is not None:
            self.default.metrics.not_ready("model_unavailable")
        retry = max(1, int(refused.until - time.monotonic() + 0.999))
        return ServiceUnavailableException(detail=refused.detail, headers={"Retry-After": str(retry)})

    async def _load_and_admit(self, name: str) -> LoadedModel | Refusal:
        try:
            try:
                entry = await asyncio.to_thread(self._load, name)
            except Exception as exc:  # noqa: BLE001 - every failure is an answer naming it
                detail = f"model {name!r} could not be loaded: {exc}"
                (log.error if isinstance(exc, LabError) else log.exception)("%s", detail)
                return self._refuse(name, detail, "load_failed")
            if self.default.stopping.is_set():
                return Refusal("not ready: shutting down", time.monotonic(), "load_failed")
            return self._admit(entry)
        finally:
            self._loading.pop(name, None)

    def _refuse(self, name: str, detail: str, reason: str) -> Refusal:
        refused = self._refused[name] = Refusal(detail, time.monotonic() + RETRY_S, reason)
        self.refusals[name, reason] = self.refusals.get((name, reason), 0) + 1
        return refused

    def refusal_counts(self) -> dict[tuple[str, str], int]:
        return dict(self.refusals)

    # -- memory ---------------------------------------------------------------------

    def default_bytes(self) -> int:
        """The pinned default model's footprint (measured once per version served)."""
        current = self.default.current
        if current is None:
            return 0
        model = current[1]
        if self._default_size is None or self._default_size[0] != id(model):
            self._default_size = (id(model), model_memory_bytes(model))
        return self._default_size[1]

    def used_bytes(self) -> int:
        return self.default_bytes() + sum(e.nbytes for e in self.loaded.values())

    def _admit(self, entry: LoadedModel) -> LoadedModel | Refusal:
        """Hold ``entry``, evicting the least recently used unpinned models until it fits;
        a ``Refusal`` naming the setting when it cannot fit at all."""
        bound = self.bound_bytes
        version = entry.serving.version
        what = f"model {entry.name!r} v{version.version}"
        if bound:
            pinned = self.default_bytes()
            if entry.nbytes > bound:
                detail = (f"{what} needs {megabytes(entry.nbytes)}, more than the whole [tool.lab.serve] "
                          f"max_model_memory_mb = {self.config_mb():g}; raise it to serve this model")
                log.error("%s", detail)
                return self._refuse(entry.name, detail, "too_big")
            if pinned + entry.nbytes > bound:
                detail = (f"{what} needs {megabytes(entry.nbytes)} and the pinned default model "
                          f"{self.default.model_name!r} holds {megabytes(pinned)}: together more than "
                          f"[tool.lab.serve] max_model_memory_mb = {self.config_mb():g}; raise it to serve both")
                log.error("%s", detail)
                return self._refuse(entry.name, detail, "too_big")
            while self.used_bytes() + entry.nbytes > bound and self.loaded:
                self._evict(next(iter(self.loaded)))
        self.loaded[entry.name] = entry
        self._refused.pop(entry.name, None)
        self.loads[entry.name] = self.loads.get(entry.name, 0) + 1
        log.info("loaded %s (%s, %s) in %.2f s", what, version.flavor, megabytes(entry.nbytes), entry.seconds)
        return entry

    def _evict(self, name: str) -> None:
        entry = self.loaded.pop(name)
        self.evictions[name] = self.evictions.get(name, 0) + 1
        log.info("evicted model %r v%d (%s, least recently used) to stay within max_model_memory_mb", name,
                 entry.serving.version.version, megabytes(entry.nbytes))

    def config_mb(self) -> float:
        return self.config.serve.max_model_memory_mb

    # -- loading (in a thread) --------------------------------------------------------

    def _load(self, name: str) -> LoadedModel:
        """Load, warm and check ``name`` as start-up does the default; its serving state."""
        started = time.perf_counter()
        config, pm, default = self.config, self.pm, self.default
        spec = self.specs[name]
        with Registry.open(config.registry_path, project_root=config.root) as registry:
            version = registry.get_alias(name, self.alias)
        if version is None:
            raise LabError(f"model {name!r} has no {self.alias}: run `lab run` or `lab promote {name} VERSION`")
        where = f"model {version.name!r} v{version.version} ({version.flavor})"
        model = _load(config, pm, version)  # and placed on its device ([tool.lab.serve.models.<name>])
        names = list(model.feature_names)
        score = model.predict(np.zeros((1, len(names)), dtype=np.float32))
        if np.shape(score) != (1,):
            raise LabError(f"{where} returned shape {np.shape(score)} for one row; a flavor's predict "
                           "must return one score per row")
        views = spec_views(spec, feature_views(pm, config))
        check_materialized(default.store, views, default.allow_empty_store)
        assembler = FeatureAssembler(default.store, views, spec.request_row, names)
        example = spec.request.example_request()
        timestamp = spec.request.timestamp
        example[timestamp] = request_time(example[timestamp])
        problems = assembler.check(example, example[timestamp])
        if problems:
            raise LabError(f"{where} cannot be served: " + "; ".join(problems))
        try:
            batch = batch_fallback_for(config, spec)
        except ConfigError as exc:  # the default's entity field is not this model's: no batch fallback here
            log.warning("model %r has no batch fallback: %s", name, exc)
            batch = None
        serve = config.serve
        state = ServingState(
            model_name=name, alias=self.alias, spec=spec, reason=None, ready=True, version=version,
            current=(version, model), assembler=assembler, store=default.store, ledger=default.ledger,
            warnings=assembler.warnings(), shadow=_NO_SHADOW, allow_empty_store=default.allow_empty_store,
            batch=batch, metrics=default.metrics, limit=default.limit, batcher=default.batcher,
            budget=default.budget, availability=default.availability,  # one store: its breaker and availability
            breakers=(default.breakers[0], CircuitBreaker("model", serve.breaker_failures, serve.breaker_open_s)))
        return LoadedModel(name, state, model_memory_bytes(model), seconds=time.perf_counter() - started)

    # -- following aliases, life cycle ---------------------------------------------------

    async def follow(self) -> None:
        """Every ``refresh_s``: swap in the version each loaded model's alias points at now."""
        last_error = None
        while not self.default.stopping.is_set():
            await asyncio.sleep(self.refresh_s)
            for entry in list(self.loaded.values()):
                try:
                    if await asyncio.to_thread(follow_alias, entry.serving, self.config, self.pm):
                        entry.nbytes = model_memory_bytes(entry.serving.current[1])
                    last_error = None
                except Exception as exc:  # noqa: BLE001 - a bad change must not take serving down
                    if str(exc) != last_error:
                        log.error("model %r: change not applied, still serving as before: %s", entry.name, exc)
                    last_error = str(exc)

    def lifespan(self):
        """The app's lifespan for the cache (after the main one: it ends first, before the
        store and ledger close): follow aliases; at the end, wait for loads under way."""

        @asynccontextmanager
        async def lifespan(app: Litestar) -> AsyncIterator[None]:
            follower = asyncio.ensure_future(self.follow())
            try:
                yield
            finally:
                self.default.stopping.set()
                follower.cancel()
                await asyncio.gather(follower, *self._loading.values(), return_exceptions=True)
                self.loaded.clear()

        return lifespan

    # -- what /readyz and /metrics show ---------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """The loaded models, the default first, then from most to least recently used."""
        out = []
        if self.default.current is not None:
            version = self.default.current[0]
            out.append({"name": self.default.model_name, "version": version.version,
                        "memory_bytes": self.default_bytes(), "pinned": True})
        for entry in reversed(self.loaded.values()):
            out.append({"name": entry.name, "version": entry.serving.version.version,
                        "memory_bytes": entry.nbytes, "pinned": False})
        return out


class _NoShadow:
    """Shadow mirroring is the default model's; the other models mirror nothing."""

    @staticmethod
    def mirror(*args: Any, **kwargs: Any) -> bool:
        return False

    @staticmethod
    def counts() -> dict[str, int]:
        return {}


_NO_SHADOW = _NoShadow()


# -- the routes ------------------------------------------------------------------------------


def model_route(name: str) -> str:
    return f"/models/{name}/predict"


def check_names(names: Iterable[str]) -> None:
    """``ConfigError`` naming the fix for a model name that cannot be a path segment."""
    for name in names:
        if not MODEL_NAME.match(name):
            raise ConfigError(f"model {name!r} cannot be served at /models/NAME/predict: a name of letters, digits, "
                              "'.', '_' or '-' (at most 64) is needed; serve it alone (lab serve --model NAME)")


def serve_models(state: ServingState, config, pm, names: Iterable[str], default_errors: RequestErrors, *,
                 alias: str, max_model_memory_mb: float | None, refresh_s: float) -> tuple[list, Any]:
    """Serve ``names`` beside the default model of ``state``: its ``ModelCache``
    (``state.models``) and ``(routes, lifespan)``, ``routes`` a list of ``(path,
    controller, request type, example)``, one ``POST /models/NAME/predict`` per model, the
    default's included. ``ConfigError`` for a model no plugin declares or a bad bound."""
    from lab.plugins import model_spec

    default_spec = state.spec
    specs = {default_spec.name: default_spec}
    for name in names:
        if name not in specs:
            specs[name] = model_spec(pm, config, name)
    check_names(specs)
    mb = config.serve.max_model_memory_mb if max_model_memory_mb is None else max_model_memory_mb
    check_bound(mb)
    cache = state.models = ModelCache(config, pm, state, specs, alias=alias, bound_bytes=int(mb * MB),
                                      refresh_s=refresh_s)
    routes = model_controllers(cache, default_spec, default_errors)
    if state.metrics is not None:
        state.metrics.route_models.update({path: name for name, (path, *_) in zip(specs, routes)})
    return routes, cache.lifespan()


def check_bound(mb: Any) -> None:
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not math.isfinite(mb) or mb < 0:
        raise ConfigError(f"[tool.lab.serve] max_model_memory_mb must be 0 (unbounded) or a number of megabytes "
                          f"above 0, got {mb!r}")


def loaded_models(serving: ServingState) -> list[dict[str, Any]]:
    """What ``/readyz`` lists: the cache's models, or the one model served."""
    if serving.models is not None:
        return serving.models.describe()
    if serving.current is None:
        return []
    version, model = serving.current
    size = getattr(serving, "_footprint", None)
    if size is None or size[0] is not model:
        size = (model, model_memory_bytes(model))
        serving._footprint = size
    return [{"name": serving.model_name, "version": version.version, "memory_bytes": size[1], "pinned": True}]


def model_controllers(cache: ModelCache, default_spec: ModelSpec, default_errors: RequestErrors) -> list:
    """``POST /models/NAME/predict`` for every model served, as ``(path, controller,
    request type, example)``, each decoding its own request type with its own 400
    messages; the default's answers from the default's state. Request types of equal
    schemas are shared (one OpenAPI component); different schemas with one title get the
    model's name added to theirs."""
    routes = []
    by_title: dict[str, list[tuple[Any, Any]]] = {default_spec.request.title: [(default_spec.request,
                                                                               default_errors.struct)]}
    for name, spec in cache.specs.items():
        if name == default_spec.name:
            errors = default_errors
        else:
            known = by_title.setdefault(spec.request.title, [])
            struct = next((s for schema, s in known if schema == spec.request), None)
            if struct is None:
                # Another schema with this title: two OpenAPI components need two names.
                schema = _retitled(spec.request, f"{spec.request.title}_{name}") if known else spec.request
                struct = request_type(schema)
                known.append((spec.request, struct))
            errors = RequestErrors(struct, field_hints(spec.request),
                                   (f.name for f in spec.request.fields if f.type == "datetime"))

        async def serving_for(name=name):
            return await cache.serving(name)

        path = model_route(name)
        controller = prediction_controller(spec, errors, path=path,
                                           operation_id=f"predict_{re.sub(r'[^A-Za-z0-9_]', '_', name)}",
                                           serving_for=None if name == default_spec.name else serving_for)
        controller.exception_handlers = {ClientException: errors.handler, ServiceUnavailableException: errors.handler}
        routes.append((path, controller, errors.struct, spec.request.example))
    return routes


def _retitled(schema, title: str):
    import dataclasses

    return dataclasses.replace(schema, title=title)
