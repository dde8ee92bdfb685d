"""A lean path for ``POST /predict``: the same handler, without Litestar's per-request parsing.

Litestar spends most of a warm ``/predict`` on generic work: resolving the handler's
parameters through its signature model (the body decoded a second time, then validated
again as keyword arguments) and building a ``Response`` object to encode the result.
``install(app, errors)`` adds, in front of the app's router, a dispatch for exactly
``POST /predict`` that does the same steps directly:

- the same route middleware (the metrics timer, the Host check, any other), inside the
  same exception handling (Litestar's ``ExceptionHandlerMiddleware`` with the route's
  exception handlers), so every error answer is made by the same code as before;
- the route's guards (``authorize_connection``: API keys) and its ``before_request`` hook;
  when that hook is the app's ``RequestErrors.strict_body`` (415 unless JSON, 400 naming the
  field), its two checks run on the raw header and body and its decode is the request
  struct (one decode instead of three); any other hook is awaited as Litestar would, then
  the body decoded as Litestar decodes it;
- the handler function itself, called with ``data``, ``state`` and ``request``: every
  check, hook and side effect inside it (readiness, routing, breakers, the ledger record,
  metrics) is the handler's own;
- a returned ``msgspec.Struct`` encoded with Litestar's serializer and sent with the same
  headers (``content-type: application/json`` and ``content-length``); anything else
  the handler returns goes through ``to_response`` as on the Litestar route;
- work the handler deferred (``scope[DEFERRED]``: the ledger record, metrics, the shadow
  mirror), run right after the answer is sent, so the client does not wait for it: at
  one connection it overlaps the client's turn-around instead of adding to the latency.

Anything the path does not reproduce (an ``after_request`` hook, a return DTO, response
headers or cookies, a handler parameter other than those three, a non-200 status)
leaves it uninstalled and Litestar handles ``/predict`` as before: ``install`` returns
the reason. Other paths and methods (``/predict/``, ``GET /predict``) always go to Litestar.
``tests/test_serving_fastpath.py`` sends the same requests both ways and compares the
answers byte for byte.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import msgspec
from litestar import Litestar
from litestar._asgi.routing_trie.mapping import build_route_middleware_stack
from litestar._asgi.utils import is_valid_host
from litestar.exceptions import ClientException, InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json, get_serializer
from litestar.utils.scope.state import ScopeState

from plugins.litestar_serving.errors import RequestErrors

log = logging.getLogger("lab.serving")

PARAMETERS = frozenset({"data", "state", "request"})
DEFERRED = "lab.deferred"
"""A scope key: on the lean path, a list the handler may append callables to; they run
once the answer is sent (or sending failed), off the request's latency. A handler that
finds no list (Litestar's generic path) does that work before it returns."""
_JSON = b"application/json"


class _Route:
    """What ``build_route_middleware_stack`` reads of a route: its ``handle``."""

    def __init__(self, handle):
        self.handle = handle


async def read_body(scope, receive, limit: float) -> bytes:
    """The request body, as ``Request.body()`` reads it (the same 413 past ``limit`` bytes,
    announced or streamed; the same errors), without building the request's ``Headers``.
    The body is left where ``Request.body()`` finds it, for anything that asks later."""
    announced = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if announced is not None:
        try:
            length = int(announced)
        except ValueError:
            raise ClientException(f"Invalid content-length: {announced.decode('latin-1')!r}") from None
        if length > limit:
            raise RequestEntityTooLarge
    chunks, total = [], 0
    while True:
        event = await receive()
        if event["type"] == "http.request":
            chunk = event.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise RequestEntityTooLarge
                chunks.append(chunk)
            if not event.get("more_body", False):
                break
        elif event["type"] == "http.disconnect":
            raise InternalServerException("client disconnected prematurely")
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    ScopeState.from_scope(scope).body = body
    return body


def unsupported(handler: Any) -> str | None:
    """Why the lean path cannot stand in for ``handler`` (a Litestar ``HTTPRouteHandler``), or None."""
    if any(getattr(layer, "after_request", None) for layer in handler.ownership_layers):
        return "an after_request hook"
    if handler.resolve_return_dto():
        return "a return DTO"
    if handler.resolve_response_headers() or handler.resolve_response_cookies():
        return "response headers or cookies"
    if handler.status_code != 200:
        return f"status code {handler.status_code}"
    if getattr(handler, "cache", False):
        return "a response cache"
    names = set(inspect.signature(handler.fn).parameters) - {"self"}
    if not names <= PARAMETERS:
        return f"handler parameters {sorted(names - PARAMETERS)}"
    return None


def install(app: Litestar, errors: RequestErrors, path: str = "/predict") -> str | None:
    """Serve ``POST path`` of ``app`` on the lean path; the body decodes into
    ``errors.struct``, checked by ``errors``. Returns None when installed, else why not
    (Litestar then serves it as before)."""
    route = next((r for r in app.routes if isinstance(r, HTTPRoute) and r.path == path), None)
    if route is None or "POST" not in route.route_handler_map:
        return f"no POST {path} route"
    handler, _ = route.route_handler_map["POST"]
    reason = unsupported(handler)
    if app.csrf_config or app.compression_config or app.allowed_hosts:
        reason = reason or "CSRF, compression or allowed-hosts middleware"
    if reason:
        log.info("POST %s is served by Litestar's generic path: its handler has %s", path, reason)
        return reason

    fn = handler.fn
    names = set(inspect.signature(fn).parameters)
    request_class = handler.resolve_request_class()
    guarded = bool(handler.resolve_guards())
    before = handler.resolve_before_request()
    after_response = handler.resolve_after_response()
    exception_handlers = handler.resolve_exception_handlers()
    serializer = get_serializer(handler.resolve_type_encoders())
    max_body = handler.resolve_request_max_body_size() or math.inf
    strict_hook = before == errors.strict_body  # the checks we run inline, on the raw request
    lax = msgspec.json.Decoder(errors.struct, strict=False)

    async def handle(scope, receive, send) -> None:
        request = request_class(scope=scope, receive=receive, send=send)
        if guarded:
            await handler.authorize_connection(connection=request)
        if strict_hook:
            content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            errors.check_media_type(content_type.decode("latin-1"))
            data = errors.decode(await read_body(scope, receive, max_body))
        else:
            if before is not None:
                early = await before(request)
                if early:
                    response = await handler.to_response(app=app, data=early, request=request)
                    await response(scope, receive, send)
                    return
            try:
                data = lax.decode(await request.body())  # as Litestar decodes ``data``
            except msgspec.MsgspecError as exc:
                raise ClientException(str(exc)) from exc
        kwargs = {"data": data}
        if "state" in names:
            kwargs["state"] = app.state
        if "request" in names:
            kwargs["request"] = request
        deferred = scope[DEFERRED] = []
        result = await fn(**kwargs)
        try:
            if isinstance(result, msgspec.Struct):
                content = encode_json(result, serializer)
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", _JSON), (b"content-length", str(len(content)).encode())]})
                await send({"type": "http.response.body", "body": content})
            else:
                response = await handler.to_response(app=app, data=result, request=request)
                await response(scope, receive, send)
        finally:  # sent, or the client gone: the handler's bookkeeping runs either way
            for work in deferred:
                work()
        if after_response is not None:
            await after_response(request)

    stack = build_route_middleware_stack(app, _Route(handle), handler)
    generic = app.asgi_handler

    async def dispatch(scope, receive, send) -> None:
        # What Litestar's router does for a matched route, less the lookup. A Host header
        # that is not a valid host name goes to Litestar, which answers it as it always
        # does; the route's own stack handles every other error (its exception handlers).
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == path \
                and not scope.get("root_path"):
            host = next((value for name, value in scope["headers"] if name == b"host"), None)
            if host is None or is_valid_host(host):
                scope.setdefault("path_params", {})
                ScopeState.from_scope(scope).exception_handlers = exception_handlers
                scope["route_handler"] = handler
                scope["path_template"] = path
                await stack(scope, receive, send)
                return
        await generic(scope, receive, send)

    app.asgi_handler = dispatch
    return None
