"""Strict request decoding, and 4xx/503 exceptions as ``{"detail": ..., "field": ...}`` bodies.

Litestar converts a request body to its Struct in msgspec's lax mode, so ``"12"``
passes as a number and ``"true"`` as a bool; ``RequestErrors.strict_body`` (a
``before_request`` hook) decodes the raw bytes strictly first and refuses a wrongly
typed field. Litestar also reports a failure as "Validation failed for POST /predict"
with msgspec's message in ``extra``, a missing or unknown field under the key ``data``.
A client needs the field and the fix, so the handler finds the field (the key, or the
name the message quotes) and appends what the field must be (the schema's hints).
msgspec stops at the first error, so one field is named at a time.

``strict_body`` also refuses, with a 415, a body not declared ``application/json``:
text/plain and form posts are what any web page may send cross-site without asking
first. ``host_guard`` (a middleware) refuses a request addressed to a name this server
does not answer to, so a DNS-rebinding page cannot read it.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import msgspec
import msgspec.inspect
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_415_UNSUPPORTED_MEDIA_TYPE

from plugins.litestar_serving.schemas import ErrorBody

_QUOTED_FIELD = re.compile(r"field `([^`]+)`")
_PATH_FIELD = re.compile(r"at `\$\.([A-Za-z0-9_]+)")
_AT_PATH = re.compile(r" - at `\$[^`]*`$")


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def host_guard(names: frozenset[str], bound: str):
    """Middleware: a 400 for an HTTP request whose Host header, port aside, is not in
    ``names``. A request with no Host header (no browser sends one) passes."""
    allowed = ", ".join(sorted(names))

    def middleware(app):
        async def guard(scope, receive, send):
            if scope["type"] == "http":
                raw = next((value for key, value in scope["headers"] if key == b"host"), None)
                if raw is not None and _host_name(raw.decode("latin-1")) not in names:
                    body = msgspec.json.encode(ErrorBody(detail=(
                        f"the Host header {raw.decode('latin-1')[:100]!r} does not name this server, which "
                        f"listens on {bound} and answers only requests to {allowed} (any port); use "
                        "http://127.0.0.1:PORT, or listen on another address with `lab serve --host`")))
                    await send({"type": "http.response.start", "status": HTTP_400_BAD_REQUEST,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            await app(scope, receive, send)

        return guard

    return middleware


def _host_name(host: str) -> str | None:
    """The name in a Host header, port aside: ``"localhost:8000"`` -> ``"localhost"``,
    ``"[::1]:80"`` -> ``"[::1]"``; None when what follows the name is not ``:PORT``."""
    host = host.strip().lower()
    split = host.index("]") + 1 if host.startswith("[") and "]" in host else host.find(":")
    if split < 0 or split == len(host):
        return host
    name, port = host[:split], host[split:]
    return name if port[:1] == ":" and port[1:].isdigit() else None


def _int_fields(struct: type[msgspec.Struct]) -> Iterable[str]:
    """The names, as encoded, of ``struct``'s int fields, optional ones too (of each member
    of a tagged union)."""
    info = msgspec.inspect.type_info(struct)
    for field in (f for member in getattr(info, "types", (info,)) for f in getattr(member, "fields", ())):
        for kind in getattr(field.type, "types", (field.type,)):  # int | None: its int
            kind = kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind
            if isinstance(kind, msgspec.inspect.IntType):
                yield field.encode_name
                break


class RequestErrors:
    """How one request type is checked before the handler runs, and how a client error
    about it is described: built per app from the served model's request struct.

    ``hints`` maps each field name to what it must be (``schemas.field_hints``);
    ``datetime_fields`` are the fields a NUL byte must not reach (see ``strict_body``).
    """

    def __init__(self, struct: type[msgspec.Struct], hints: Mapping[str, str], datetime_fields: Iterable[str]):
        self.struct = struct
        self.hints = dict(hints)
        self.datetime_fields = frozenset(datetime_fields)
        self.expected = ", ".join(self.hints)
        self._decoder = msgspec.json.Decoder(struct)  # strict: no string-to-number coercion
        self.int_fields = frozenset(_int_fields(struct))

    def __deepcopy__(self, memo: dict) -> "RequestErrors":
        # Litestar deep-copies a controller's handlers, hooks included; this is read-only.
        return self

    async def strict_body(self, request: Request) -> None:
        """``before_request`` hook: raise a 415 unless the body is declared JSON, and a
        400 naming the field unless the raw body decodes strictly as the request type.
        Returns None so the handler then runs as usual."""
        self.check_media_type(request.headers.get("content-type", ""))
        self.decode(await request.body())

    def check_media_type(self, content_type: str) -> None:
        """The 415 unless ``content_type`` (the header's value) declares JSON."""
        media_type = content_type.split(";", 1)[0].strip().lower()
        if not _is_json(media_type):
            got = f"content-type {media_type}" if media_type else "no content-type"
            raise ClientException(status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                                  detail=f"the body must be JSON, sent with the header `content-type: "
                                         f"application/json` (got {got})")

    def decode(self, body: bytes) -> msgspec.Struct:
        """``body`` as the request struct, decoded strictly (an integral float in an int
        field read as that int); else the 400 naming the field (``ValidationException``)."""
        try:
            try:
                data = self._decoder.decode(body)
            except msgspec.ValidationError as exc:
                if not self.int_fields or "got `float`" not in str(exc):  # `int` or `int | null`
                    raise
                data = self._check_whole_numbers(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ValidationException(detail="invalid body", extra=[{"message": str(exc), "key": None}]) from None
        if b"\\u0000" in body and self.datetime_fields:
            # msgspec reads a date-time only up to a NUL: "...12:00:00\u0000junk" would pass.
            for name, value in msgspec.json.decode(body).items():
                if name in self.datetime_fields and isinstance(value, str) and "\x00" in value:
                    raise ValidationException(detail="invalid body", extra=[{
                        "message": "Invalid RFC3339 encoded datetime: it holds a NUL character", "key": name}])
        return data

    def _check_whole_numbers(self, body: bytes) -> msgspec.Struct:
        """Check ``body`` strictly, reading a whole number written as a float (``44369.0``,
        ``1e3``) in an int field as that int: JSON Schema's ``integer``, which the OpenAPI
        document promises, is the value, not its spelling. Litestar's own (lax) decoding
        then reads it the same way. Raises msgspec's error for anything else."""
        fields = msgspec.json.decode(body)
        if isinstance(fields, dict):
            for name in self.int_fields:
                value = fields.get(name)
                if isinstance(value, float) and value.is_integer():
                    fields[name] = int(value)
        return msgspec.convert(fields, self.struct, strict=True)

    def describe(self, message: str, key: str | None) -> tuple[str, str | None]:
        """``(detail, field)`` for one msgspec validation message reported under ``key``."""
        message = message.strip()
        if key and key != "data":
            field = key
        else:
            match = _QUOTED_FIELD.search(message) or _PATH_FIELD.search(message)
            field = match.group(1) if match else None
        message = _AT_PATH.sub("", message)
        expected = self.expected
        if message.startswith(("JSON is malformed", "Input data was truncated")):
            return f"the body is not valid JSON ({message}); send a JSON object with {expected}", None
        if message.startswith("Object contains unknown field"):
            return f"unknown field {field}; the body takes only {expected}", field
        if message.startswith("Object missing required field"):
            return f"missing field {field}: it must be {self.hints.get(field, 'given')}", field
        if field is None:
            if message.startswith("Expected `object`"):
                return f"the body must be a JSON object with {expected} ({message})", None
            # Litestar reports an empty body as a bare KeyError of the parameter name.
            return f"the body must be a JSON object with {expected}; got none or an unreadable one", None
        hint = self.hints.get(field)
        detail = f"invalid {field}: {message}" + (f"; it must be {hint}" if hint else "")
        return detail, field

    def handler(self, request: Request, exc: HTTPException) -> Response[ErrorBody]:
        """Every 4xx (and a 503 raised by a handler) as an ``ErrorBody``, status and headers kept."""
        field = None
        detail = exc.detail
        extra = exc.extra if isinstance(exc.extra, list) else []
        if extra and isinstance(extra[0], dict) and "message" in extra[0]:
            detail, field = self.describe(str(extra[0]["message"]), extra[0].get("key"))
        elif detail.startswith("JSON is malformed"):
            detail = f"the body is not valid JSON ({detail}); send a JSON object with {self.expected}"
        elif exc.status_code == 413:
            limit = request.route_handler.resolve_request_max_body_size()
            detail = (f"the body is too large: over this server's limit of {limit} bytes "
                      "([tool.lab.serve] max_body_bytes)")
        return Response(ErrorBody(detail=detail, field=field), status_code=exc.status_code, headers=exc.headers)
