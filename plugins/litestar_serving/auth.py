"""API keys on the model server: who is calling, and may they do this.

A request carries its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(``lab keys create`` makes one). ``ServerKeys.check(headers, scope)`` answers with the
``ApiKey`` or raises the refusal, as Litestar exceptions the app turns into
``ErrorBody`` answers:

- no key is configured at all (no key file, or every key revoked): 401 naming
  ``lab keys create NAME --scope <scope>``;
- no key sent, or one that is malformed, unknown or revoked: 401, with a
  ``WWW-Authenticate: Bearer`` header (RFC 6750);
- a live key without the scope the route needs: 403 naming that scope.

``guard(keys, scope)`` is the same check as a Litestar guard: it runs before the body
is read, and leaves the key at ``request.state.api_key`` for the handler (the actor of
its audit row). The key file is opened when it first exists, so keys made after the
server started work at once, and revocations take effect on the next request
(``lab.serving.keys``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from lab.serving.keys import ApiKey, KeyStore

HEADER_HELP = "send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`"
SECURITY_SCHEMES = ("BearerKey", "ApiKeyHeader")
"""The OpenAPI security schemes of a keyed route (either one is enough)."""


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: the ``Authorization: Bearer`` token, else ``X-API-Key``;
    None when neither header is there. Raises the 401 for an Authorization header of
    another scheme (a Basic password must not be read as a key)."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException(
                detail=f"the Authorization header must be `Bearer KEY`; or {HEADER_HELP}",
                headers={"WWW-Authenticate": 'Bearer realm="lab", error="invalid_request"'})
        return token.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key else None


class ScopeDenied(PermissionDeniedException):
    """The 403 of a live key without the scope asked; ``key`` is that key."""

    def __init__(self, key: ApiKey, **kwargs: Any):
        super().__init__(**kwargs)
        self.key = key


class ServerKeys:
    """The server's side of the key file (``[tool.lab.serve] keys``): opened lazily, once
    it exists (the server never creates it), shared by every request; ``close`` at shutdown."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._store: KeyStore | None = None
        self._lock = threading.Lock()

    def store(self) -> KeyStore | None:
        if self._store is None and self.path.exists():
            with self._lock:
                if self._store is None:
                    self._store = KeyStore.open(self.path, create=False)
        return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def check(self, headers: Mapping[str, str], scope: str, what: str = "this route") -> ApiKey:
        """The live key of this request if it holds ``scope``; else raises the 401 or 403
        (see the module's docstring). ``what`` names the route in the messages."""
        raw = presented_key(headers)
        store = self.store()
        key = store.verify(raw) if store is not None and raw is not None else None
        if key is not None:
            if not key.allows(scope):
                raise ScopeDenied(
                    key, detail=f"key {key.name!r} has scope(s) {', '.join(key.scopes)}, but {what} needs scope "
                                f"{scope!r}: use a key with it, or create one with `lab keys create NAME --scope "
                                f"{scope}`",
                    headers={"WWW-Authenticate": f'Bearer realm="lab", error="insufficient_scope", scope="{scope}"'})
            return key
        # Refused: say why (no key on this server at all, none sent, or not a live one).
        if store is None or store.live_count() == 0:
            create = (f"`lab keys create NAME --scope {scope}`" if scope == "predict" else
                      f"`lab keys create NAME --scope admin` (every admin route; --scope {scope} for this one)")
            raise NotAuthorizedException(
                detail=f"{what} needs an API key with scope {scope!r} and this server has no key configured: "
                       f"create one with {create}, then {HEADER_HELP}",
                headers={"WWW-Authenticate": f'Bearer realm="lab", scope="{scope}"'})
        if raw is None:
            raise NotAuthorizedException(
                detail=f"{what} needs an API key with scope {scope!r}: {HEADER_HELP}",
                headers={"WWW-Authenticate": f'Bearer realm="lab", scope="{scope}"'})
        raise NotAuthorizedException(
            detail=f"the API key is not valid (malformed, unknown or revoked); {what} needs a live key with "
                   f"scope {scope!r} (see `lab keys list`)",
            headers={"WWW-Authenticate": f'Bearer realm="lab", error="invalid_token", scope="{scope}"'})


Denied = Callable[[ASGIConnection, ApiKey, str], Awaitable[None]]
"""``on_denied(connection, key, scope)``: told when a live key lacked the scope (the 403)."""


def guard(keys: ServerKeys, scope: str, on_denied: Denied | None = None) -> Callable[..., Any]:
    """A Litestar guard: the request needs a live key holding ``scope``; the key is left
    at ``request.state.api_key``. ``on_denied`` is awaited before a 403 is raised."""

    async def require(connection: ASGIConnection, _handler: Any) -> None:
        what = f"{connection.scope.get('method', '')} {connection.scope.get('path', '')}".strip()
        try:
            connection.state.api_key = keys.check(connection.headers, scope, what)
        except ScopeDenied as denied:
            if on_denied is not None:
                await on_denied(connection, denied.key, scope)
            raise

    require.__name__ = f"require_{scope}_scope"
    return require
