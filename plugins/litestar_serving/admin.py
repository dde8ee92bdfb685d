"""The model server's admin routes: move an alias, read and change flags; each needs an
API key with the route's scope (``auth.py``) and each is audited.

- ``POST /admin/promote`` (scope ``promote``): ``Registry.promote`` with the lab's
  ``[tool.lab.gate]``, so a promotion to champion needs what ``lab promote`` needs (a
  met shadow, evidence, approval; refused: 409 naming what is unmet; no ``--force``
  over HTTP). The server follows its alias within ``flag_refresh_s``.
- ``POST /admin/rollback`` (scope ``promote``): ``Registry.rollback``.
- ``GET /admin/flags`` and ``POST /admin/flags`` (scope ``flags``): the experiment
  store's flags and experiments; ``start``, ``stop`` and ``set_weights`` call
  ``ExperimentStore.start``/``stop``/``set_weights``, so their checks and their own
  audit rows are the store's.

Audit: the change itself is written by the registry or the experiment store with the
key as its actor (``key:<name>``), and then one row of the registry's append-only
``events`` table, kind ``admin.<action>``, holds the actor, the route, the key's id,
the request id and the state before and after (``lab audit`` lists them). A live key
refused for want of a scope is recorded too (``admin.denied``). Events for plugins
(``lab_on_event``) follow the change, as the CLI's do.

- ``POST /admin/shadow`` (scope ``shadow``): start a shadow of the served model with its
  exit criteria, or stop it, through the registry's ``start_shadow``/``end_shadow`` as
  ``lab shadow start|stop`` do (``lab.serving.shadow``).

Errors: a bad body is a 400 naming the field (decoded strictly, as ``/predict``); an
unknown model, version, alias or flag a 404; a change the store refuses (nothing to roll
back to, a stopped flag) a 409; each names the fix.
"""

from __future__ import annotations

import asyncio
import logging
import re
import types
import uuid
from typing import Annotated, Any, Callable

import msgspec
from litestar import Controller, Request, get, post
from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIResponse, Reference, Schema, SecurityScheme
from litestar.params import JSONBody

from lab import events
from lab.errors import ConfigError, LabError, NotFound
from lab.experiments import ExperimentStore
from lab.registry import Registry
from lab.serving.keys import ApiKey
from plugins.litestar_serving.auth import SECURITY_SCHEMES, ServerKeys, guard
from plugins.litestar_serving.errors import RequestErrors
from plugins.litestar_serving.schemas import ErrorBody

log = logging.getLogger("lab.serving")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
SECURITY = [{name: []} for name in SECURITY_SCHEMES]

ModelName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128,
                                        description="a registered model (default: the model this server serves)")]
Alias = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64,
                                    description="the alias to move (an identifier)")]
Reason = Annotated[str, msgspec.Meta(max_length=500, description="why; kept in the history and the audit log")]
FlagName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128,
                                       description="a flag or experiment (see GET /admin/flags)")]


class PromoteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Point an alias (champion by default) at a registered version."""

    version: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000, description="the version to promote")]
    model: ModelName | None = None
    alias: Alias = "champion"
    reason: Reason = ""


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Move an alias back to the version it held before the current one."""

    model: ModelName | None = None
    alias: Alias = "champion"
    reason: Reason = ""


class _FlagAction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="action"):
    name: FlagName
    reason: Reason = ""


class StartFlag(_FlagAction, tag="start"):
    """Start a draft flag or experiment: units are assigned by its weights from now on."""


class StopFlag(_FlagAction, tag="stop"):
    """Stop a flag or experiment: every unit sees control from now on (final)."""


class SetWeights(_FlagAction, tag="set_weights"):
    """Serve new weights: ``weights`` names every variant, each from 0 to 1, summing to 1
    (the experiment store checks them, naming the fix)."""

    weights: dict[str, float]


FlagChangeRequest = StartFlag | StopFlag | SetWeights
"""The body of POST /admin/flags, told apart by its ``action``."""


class _ShadowAction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="action"):
    reason: Reason = ""


Positive = Annotated[float, msgspec.Meta(gt=0, le=1e9)]


class _StartShadow(_ShadowAction, tag="start"):
    challenger: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000, description="the version to shadow")]
    min_requests: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)] | None = None
    min_agreement: Annotated[float, msgspec.Meta(gt=0, lt=1)] | None = None
    max_latency_ms: Positive | None = None
    days: Annotated[float, msgspec.Meta(gt=0, le=3650, description="days until it expires unmet")] | None = None


class StartShadow(_StartShadow, tag="start"):
    """Mirror the served classifier's traffic to ``challenger``, with its exit criteria
    declared now (defaults as ``lab shadow start``: 1000 requests, agreement 0.95, 7 days);
    the two agree when they decide alike at ``threshold`` (default 0.5)."""

    threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None

    tolerance = None  # a classifier's shadow agrees at a threshold


class StartRegressionShadow(_StartShadow, tag="start", kw_only=True):
    """Mirror the served regression model's traffic to ``challenger``, with its exit
    criteria declared now (defaults as ``lab shadow start``: 1000 requests, agreement 0.95,
    7 days); the two agree when their predictions differ by at most ``tolerance``."""

    tolerance: Positive

    threshold = None  # a regression model's shadow agrees within a tolerance


class StopShadow(_ShadowAction, tag="stop"):
    """Stop mirroring to the challenger (its outcome, met or not, is recorded first)."""


ShadowChangeRequest = StartShadow | StopShadow
"""The body of POST /admin/shadow for a served classifier, told apart by its ``action``
(a regression model's is ``RegressionShadowChangeRequest``: a tolerance, no threshold)."""

RegressionShadowChangeRequest = StartRegressionShadow | StopShadow


def shadow_change_request(task: str):
    """The body POST /admin/shadow takes for a served model of ``task``: the document
    names only the agreement rule that task has."""
    return RegressionShadowChangeRequest if task == "regression" else ShadowChangeRequest


_ACTIONS = {StartFlag: "start", StopFlag: "stop", SetWeights: "set_weights", StartShadow: "start",
            StartRegressionShadow: "start", StopShadow: "stop"}


class AliasChange(msgspec.Struct):
    """What an alias move did: ``before`` -> ``after`` (``changed`` false: it already
    pointed there, and nothing was written but the audit row)."""

    request_id: str
    actor: str
    model: str
    alias: str
    action: str
    before: int | None
    after: int
    changed: bool


class FlagState(msgspec.Struct):
    status: str
    weights: dict[str, float]


class Flag(msgspec.Struct):
    name: str
    kind: str
    status: str
    unit: str
    layer: str
    weights: dict[str, float]


class FlagList(msgspec.Struct):
    flags: list[Flag]


class ShadowState(msgspec.Struct):
    id: int
    version: int
    champion_version: int
    status: str


class ShadowChange(msgspec.Struct):
    """What a shadow change did: the model's active shadow before and after (null: none)."""

    request_id: str
    actor: str
    model: str
    action: str
    before: ShadowState | None
    after: ShadowState | None
    changed: bool


class FlagChange(msgspec.Struct):
    """What a flag change did: its status and weights before and after."""

    request_id: str
    actor: str
    name: str
    action: str
    before: FlagState
    after: FlagState
    changed: bool


_REFUSALS = {
    400: ResponseSpec(ErrorBody, description="A field missing, unknown, of the wrong type or out of its bounds "
                                             "(named), or fields that do not fit together or the model (weights "
                                             "that do not sum to 1, a tolerance for a classifier); or a Host "
                                             "header that is not this server's"),
    401: ResponseSpec(ErrorBody, description="No API key, or one that is malformed, unknown or revoked; or no "
                                             "key configured on this server (`lab keys create`)"),
    403: ResponseSpec(ErrorBody, description="The API key lacks the scope this route needs (named)"),
}
_WRITE_REFUSALS = {
    **_REFUSALS,
    404: ResponseSpec(ErrorBody, description="No such model, version, alias or flag"),
    409: ResponseSpec(ErrorBody, description="The change cannot be made (e.g. the promotion gate is unmet, "
                                             "nothing to roll back to, a stopped flag); the detail names the fix"),
    413: ResponseSpec(ErrorBody, description="The body is over [tool.lab.serve] max_body_bytes"),
    415: ResponseSpec(ErrorBody, description="The content-type is not application/json"),
}


def _request_id(request: Request) -> str:
    sent = request.headers.get("x-request-id")
    return sent if sent and _REQUEST_ID.match(sent) else uuid.uuid4().hex


def actor(key: ApiKey) -> str:
    """The actor an API key's actions are recorded under: ``key:<name>``."""
    return f"key:{key.name}"


def _refusal(exc: LabError) -> ClientException:
    if isinstance(exc, NotFound):
        return NotFoundException(detail=str(exc))
    if isinstance(exc, ConfigError):
        return ClientException(status_code=400, detail=str(exc))
    return ClientException(status_code=409, detail=str(exc))


def _errors(struct: type[msgspec.Struct], hints: dict[str, str]) -> RequestErrors:
    return RequestErrors(struct, hints, ())


class Admin:
    """What the admin routes share: the lab's config and plugins, the key file, and the
    model this server serves (the default ``model``)."""

    def __init__(self, config, pm, keys: ServerKeys, model_name: str, task: str = "classification"):
        self.config, self.pm, self.keys, self.model_name, self.task = config, pm, keys, model_name, task

    def registry(self) -> Registry:
        path = self.config.registry_path
        if not path.exists():
            raise NotFound(f"there is no registry at {path}: run `lab run` to train and register a model")
        return Registry.open(path, project_root=self.config.root)

    def record(self, registry: Registry, kind: str, subject: str, key: ApiKey, request: Request,
               request_id: str, **payload: Any) -> None:
        registry.append_event(f"admin.{kind}", subject, {
            "route": f"{request.method} {request.url.path}", "key_id": key.id, "request_id": request_id, **payload,
        }, actor=actor(key))

    def announce(self, name: str, who: str, **payload: Any) -> None:
        """Tell plugins (``lab_on_event``), after the change committed; their failure is logged."""
        try:
            self.pm.hook.lab_on_event(event=events.Event(name=name, payload=payload, actor=who))
        except Exception:  # noqa: BLE001 - the change is made; a plugin's bug must not undo the answer
            log.exception("a lab_on_event plugin failed on %s", name)

    async def denied(self, connection, key: ApiKey, scope: str) -> None:
        """Record a live key refused for want of ``scope`` (no registry: only logged)."""
        route = f"{connection.scope.get('method', '')} {connection.scope.get('path', '')}"
        log.warning("refused %s to key %r (%s): it lacks scope %r", route, key.name, key.id, scope)
        if not self.config.registry_path.exists():
            return
        request_id = connection.headers.get("x-request-id") or ""

        def write() -> None:
            with Registry.open(self.config.registry_path, project_root=self.config.root) as registry:
                registry.append_event("admin.denied", route, {
                    "route": route, "scope": scope, "key_id": key.id,
                    "request_id": request_id if _REQUEST_ID.match(request_id) else None,
                }, actor=actor(key))

        try:
            await asyncio.to_thread(write)
        except LabError as exc:
            log.error("could not record the refusal of %s to key %r: %s", route, key.name, exc)

    # -- the changes, each run on a worker thread ------------------------------------------

    def promote(self, body: PromoteRequest, key: ApiKey, request: Request, request_id: str) -> AliasChange:
        model, who = body.model or self.model_name, actor(key)
        with self.registry() as registry:
            # To champion, the registry's gate decides, as for `lab promote` (no --force here).
            event = registry.promote(model, body.version, alias=body.alias, actor=who, reason=body.reason,
                                     gate=self.config.gate)
            before = event["from_version"] if event is not None else body.version
            evidence = (event or {}).get("evidence")
            self.record(registry, "promote", model, key, request, request_id, alias=body.alias,
                        before={"version": before}, after={"version": body.version}, changed=event is not None,
                        reason=body.reason, **({"evidence": evidence} if evidence else {}))
        if event is not None:
            self.announce(events.MODEL_PROMOTED, who, model=model, version=body.version, alias=body.alias,
                          previous=before, **({"criteria": evidence["criteria"]} if evidence else {}))
        return AliasChange(request_id=request_id, actor=who, model=model, alias=body.alias, action="promote",
                           before=before, after=body.version, changed=event is not None)

    def rollback(self, body: RollbackRequest, key: ApiKey, request: Request, request_id: str) -> AliasChange:
        model, who = body.model or self.model_name, actor(key)
        with self.registry() as registry:
            event = registry.rollback(model, alias=body.alias, actor=who, reason=body.reason)
            self.record(registry, "rollback", model, key, request, request_id, alias=body.alias,
                        before={"version": event["from_version"]}, after={"version": event["to_version"]},
                        changed=True, reason=body.reason)
        self.announce(events.MODEL_ROLLED_BACK, who, model=model, version=event["to_version"], alias=body.alias,
                      previous=event["from_version"])
        return AliasChange(request_id=request_id, actor=who, model=model, alias=body.alias, action="rollback",
                           before=event["from_version"], after=event["to_version"], changed=True)

    def flags(self) -> FlagList:
        if not self.config.registry_path.exists():
            return FlagList(flags=[])
        with ExperimentStore.open(self.config.registry_path) as store:
            found = store.list()
        return FlagList(flags=[Flag(name=e.name, kind=e.kind, status=e.status, unit=e.unit, layer=e.layer,
                                    weights=dict(e.weights)) for e in found])

    def change_flag(self, body: FlagChangeRequest, key: ApiKey, request: Request, request_id: str) -> FlagChange:
        who, action = actor(key), _ACTIONS[type(body)]
        with self.registry() as registry, ExperimentStore.open(self.config.registry_path) as store:
            before = store.get(body.name)
            if action == "start":
                from lab.experiments.commands import check_model_versions  # as `lab experiment start` checks

                check_model_versions(types.SimpleNamespace(config=self.config), before, at_create=False)
                after = store.start(body.name, actor=who, reason=body.reason)
            elif action == "stop":
                after = store.stop(body.name, actor=who, reason=body.reason)
            else:
                after = store.set_weights(body.name, body.weights, actor=who, reason=body.reason)
            states = [FlagState(status=e.status, weights=dict(e.weights)) for e in (before, after)]
            changed = after != before
            self.record(registry, "flags", body.name, key, request, request_id, action=action,
                        before=msgspec.to_builtins(states[0]), after=msgspec.to_builtins(states[1]),
                        changed=changed, reason=body.reason)
        if changed:
            name = {"start": events.EXPERIMENT_STARTED, "stop": events.EXPERIMENT_STOPPED}.get(
                action, events.FLAG_CHANGED)
            self.announce(name, who, experiment=after.name, kind=after.kind, status=after.status,
                          weights=after.weights, old=before.weights, action=action, reason=body.reason)
        return FlagChange(request_id=request_id, actor=who, name=body.name, action=action,
                          before=states[0], after=states[1], changed=changed)


    def change_shadow(self, body: ShadowChangeRequest | RegressionShadowChangeRequest, key: ApiKey, request: Request,
                      request_id: str) -> ShadowChange:
        """Start or stop the served model's shadow, as ``lab shadow start|stop`` do."""
        from lab.plugins import model_spec
        from lab.serving.shadow_report import check_shadow, shadow_criteria

        who, action, model = actor(key), _ACTIONS[type(body)], self.model_name
        if action == "start":
            with self.registry() as registry:
                registry.get_model_version(model, body.challenger)  # which version, before which criteria
            criteria = shadow_criteria(model_spec(self.pm, self.config, model).task, min_requests=body.min_requests,
                                       min_agreement=body.min_agreement, max_latency_ms=body.max_latency_ms,
                                       days=body.days, threshold=body.threshold, tolerance=body.tolerance)
        with self.registry() as registry:
            if action == "stop" and registry.shadows(model):
                check_shadow(self.config, self.pm, model, actor=who)  # record a met or expired outcome first
            before = registry.active_shadow(model)
            if action == "start":
                after = registry.start_shadow(model, body.challenger, criteria, actor=who, reason=body.reason)
            elif before is not None:
                after = registry.end_shadow(model, before["id"], "stopped", actor=who, reason=body.reason)
            else:
                after = None
            states = [ShadowState(id=sh["id"], version=sh["version"], champion_version=sh["champion_version"],
                                  status=sh["status"]) if sh is not None else None for sh in (before, after)]
            changed = states[0] != states[1]
            self.record(registry, "shadow", model, key, request, request_id, action=action,
                        before=msgspec.to_builtins(states[0]), after=msgspec.to_builtins(states[1]),
                        changed=changed, reason=body.reason, **({"criteria": criteria} if action == "start" else {}))
        if changed and action == "start":
            self.announce(events.SHADOW_STARTED, who, model=model, version=body.challenger,
                          champion_version=after["champion_version"], shadow_id=after["id"], criteria=criteria)
        elif changed:
            self.announce(events.SHADOW_STOPPED, who, model=model, version=before["version"], shadow_id=before["id"],
                          met=before["met"], reason=body.reason)
        return ShadowChange(request_id=request_id, actor=who, model=model, action=action, before=states[0],
                            after=states[1], changed=changed)


async def _run(change: Callable[..., Any], *args: Any) -> Any:
    """``change(*args)`` on a worker thread (SQLite writes wait for locks); a ``LabError``
    becomes the 4xx that names its fix."""
    try:
        return await asyncio.to_thread(change, *args)
    except LabError as exc:
        if "stayed locked" in str(exc):
            raise ServiceUnavailableException(detail=str(exc), headers={"Retry-After": "5"}) from None
        raise _refusal(exc) from None


def admin_controllers(admin: Admin) -> list[type[Controller]]:
    """The admin routes as Litestar controllers, each guarded by its scope."""
    promote_errors = _errors(PromoteRequest, {
        "version": "a whole number >= 1 (a registered version, see `lab models`)",
        "model": "a registered model name", "alias": "an identifier such as champion", "reason": "a string"})
    rollback_errors = _errors(RollbackRequest, {
        "model": "a registered model name", "alias": "an identifier such as champion", "reason": "a string"})
    flag_errors = _errors(FlagChangeRequest, {
        "name": "a flag or experiment name (GET /admin/flags lists them)",
        "action": "one of start, stop, set_weights",
        "weights": "an object of variant name to weight from 0 to 1, naming every variant, summing to 1",
        "reason": "a string"})
    shadow_request = shadow_change_request(admin.task)
    shadow_errors = _errors(shadow_request, {
        "action": "start or stop", "challenger": "a registered version of the served model, not its champion",
        "min_requests": "a whole number >= 1", "min_agreement": "a share between 0 and 1",
        "max_latency_ms": "milliseconds above 0", "days": "days above 0", "threshold": "a score from 0 to 1",
        "tolerance": "a difference above 0 (regression)", "reason": "a string"})
    shadow_guard = guard(admin.keys, "shadow", admin.denied)
    promote_guard = guard(admin.keys, "promote", admin.denied)
    flags_guard = guard(admin.keys, "flags", admin.denied)

    async def promote(self, data, request: Request) -> AliasChange:
        """Point ``alias`` (default champion) of ``model`` (default: the model served) at
        ``version``. The server follows its alias within ``flag_refresh_s``. Audited
        (``lab audit``) with the key as actor, before and after."""
        return await _run(admin.promote, data, request.state.api_key, request, _request_id(request))

    async def rollback(self, data, request: Request) -> AliasChange:
        """Move ``alias`` of ``model`` back to the version it held before. Audited."""
        return await _run(admin.rollback, data, request.state.api_key, request, _request_id(request))

    async def list_flags(self) -> FlagList:
        """Every flag and experiment: status, unit, layer and weights."""
        return await _run(admin.flags)

    async def change_flag(self, data, request: Request) -> FlagChange:
        """Start, stop or re-weigh a flag or experiment, through the experiment store (its
        own audit row too). A server routing by the flag follows within ``flag_refresh_s``."""
        return await _run(admin.change_flag, data, request.state.api_key, request, _request_id(request))

    async def change_shadow(self, data, request: Request) -> ShadowChange:
        """Start shadowing a challenger version of the served model (exit criteria declared
        now), or stop the active shadow; as ``lab shadow start|stop``. The server picks it
        up within ``flag_refresh_s``. Audited."""
        return await _run(admin.change_shadow, data, request.state.api_key, request, _request_id(request))

    change_shadow.__annotations__ = {**change_shadow.__annotations__, "data": JSONBody[shadow_request]}
    promote.__annotations__ = {**promote.__annotations__, "data": JSONBody[PromoteRequest]}
    rollback.__annotations__ = {**rollback.__annotations__, "data": JSONBody[RollbackRequest]}
    change_flag.__annotations__ = {**change_flag.__annotations__, "data": JSONBody[FlagChangeRequest]}

    def writes(path: str, operation_id: str, summary: str, errors: RequestErrors, scope_guard, handler):
        return post(path, status_code=200, operation_id=operation_id, summary=summary, guards=[scope_guard],
                    security=SECURITY, before_request=errors.strict_body, responses=_WRITE_REFUSALS,
                    exception_handlers={ClientException: errors.handler,
                                        ServiceUnavailableException: errors.handler})(handler)

    handlers = {
        "promote": writes("/promote", "admin_promote", "Promote a model version to an alias (scope promote)",
                          promote_errors, promote_guard, promote),
        "rollback": writes("/rollback", "admin_rollback", "Roll an alias back (scope promote)",
                           rollback_errors, promote_guard, rollback),
        "list_flags": get("/flags", operation_id="admin_list_flags", summary="List flags and experiments "
                          "(scope flags)", guards=[flags_guard], security=SECURITY, responses=_REFUSALS,
                          exception_handlers={ClientException: flag_errors.handler})(list_flags),
        "change_flag": writes("/flags", "admin_change_flag", "Start, stop or re-weigh a flag (scope flags)",
                              flag_errors, flags_guard, change_flag),
        "change_shadow": writes("/shadow", "admin_change_shadow", "Start or stop a shadow of the served model "
                                "(scope shadow)", shadow_errors, shadow_guard, change_shadow),
    }
    return [type("AdminController", (Controller,), {"path": "/admin", "tags": ["admin"], "__module__": __name__,
                                                    **handlers})]


_REQUESTS = {s.__name__: s for s in (PromoteRequest, RollbackRequest, StartFlag, StopFlag, SetWeights,
                                     StartShadow, StartRegressionShadow, StopShadow)}
_BOUNDS = (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusive_minimum"), ("lt", "exclusive_maximum"))


def _exact_bounds(schema: Schema, struct: type[msgspec.Struct]) -> None:
    """Write each number field's bounds as the decoder enforces them: Litestar leaves out a
    bound of 0 (``gt=0`` vanishes) and those of an optional field's number."""
    for field in msgspec.inspect.type_info(struct).fields:
        kind = field.type
        for member in getattr(kind, "types", (kind,)):  # an optional field: its non-null member
            member = member.type if isinstance(member, msgspec.inspect.Metadata) else member
            prop = (schema.properties or {}).get(field.encode_name)
            if isinstance(member, (msgspec.inspect.IntType, msgspec.inspect.FloatType)) and isinstance(prop, Schema):
                for bound, key in _BOUNDS:
                    if getattr(member, bound) is not None:
                        setattr(prop, key, getattr(member, bound))


_UNAUTHORIZED = "No API key, or one that is malformed, unknown or revoked; or no key configured (`lab keys create`)"
_FORBIDDEN = "The API key lacks the scope this route needs (named)"


def document(openapi: OpenAPI, *, predict_keyed: bool) -> None:
    """Declare the key's two security schemes; say that the admin request bodies take no
    other field; and, when /predict needs a key, say so on it with its 401 and 403."""
    components = openapi.components
    components.security_schemes = {
        **(components.security_schemes or {}),
        "BearerKey": SecurityScheme(type="http", scheme="bearer", description="Authorization: Bearer <API key> "
                                    "(`lab keys create NAME --scope SCOPE`)"),
        "ApiKeyHeader": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header",
                                       description="the same API key, in the X-API-Key header"),
    }
    for path, item in (openapi.paths or {}).items():
        body = item.post.request_body if path.startswith("/admin/") and item.post is not None else None
        media = (getattr(body, "content", None) or {}).get("application/json")
        shape = getattr(media, "schema", None)
        for ref in [shape, *(getattr(shape, "one_of", None) or [])]:  # a struct, or each of a tagged union
            name = getattr(ref, "ref", None)
            schema = (components.schemas or {}).get(name.rsplit("/", 1)[-1]) if name else None
            if schema is not None:  # as the decoder does (forbid_unknown_fields)
                schema.additional_properties = False
                struct = _REQUESTS.get(name.rsplit("/", 1)[-1])
                if struct is not None:
                    _exact_bounds(schema, struct)
    predict = (openapi.paths or {}).get("/predict")
    if not predict_keyed or predict is None or predict.post is None:
        return
    operation = predict.post
    operation.security = SECURITY
    operation.responses = operation.responses or {}
    for status, description in (("401", _UNAUTHORIZED), ("403", _FORBIDDEN)):
        operation.responses[status] = OpenAPIResponse(description=description, content={
            "application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/ErrorBody"))})
