"""Strict request decoding, and 4xx/503 exceptions as ``{"detail": ..., "field": ...}`` bodies.

Litestar converts a request body to its Struct in msgspec's lax mode, so ``"12"``
passes as a number and ``"true"`` as a bool; ``strict_body`` (a ``before_request``
hook) decodes the raw bytes strictly first and refuses a wrongly typed field. Litestar
also reports a failure as "Validation failed for POST /predict" with msgspec's message
in ``extra``, a missing or unknown field under the key ``data``. A client needs the
field and the fix, so the handler finds the field (the key, or the name the message
quotes) and appends what the field must be. msgspec stops at the first error, so one
field is named at a time.
"""

from __future__ import annotations

import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from plugins.litestar_serving.schemas import FIELD_HINTS, ErrorBody, Transaction

_QUOTED_FIELD = re.compile(r"field `([^`]+)`")
_PATH_FIELD = re.compile(r"at `\$\.([A-Za-z0-9_]+)")
_AT_PATH = re.compile(r" - at `\$[^`]*`$")
_EXPECTED = ", ".join(FIELD_HINTS)
_decoder = msgspec.json.Decoder(Transaction)  # strict: no string-to-number coercion


async def strict_body(request: Request) -> None:
    """``before_request`` hook: raise a 400 naming the field unless the raw body decodes
    strictly as a ``Transaction``. Returns None so the handler then runs as usual."""
    try:
        _decoder.decode(await request.body())
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationException(detail="invalid body", extra=[{"message": str(exc), "key": None}]) from None


def describe_validation(message: str, key: str | None) -> tuple[str, str | None]:
    """``(detail, field)`` for one msgspec validation message reported under ``key``."""
    message = message.strip()
    if key and key != "data":
        field = key
    else:
        match = _QUOTED_FIELD.search(message) or _PATH_FIELD.search(message)
        field = match.group(1) if match else None
    message = _AT_PATH.sub("", message)
    if message.startswith(("JSON is malformed", "Input data was truncated")):
        return f"the body is not valid JSON ({message}); send a JSON object with {_EXPECTED}", None
    if message.startswith("Object contains unknown field"):
        return f"unknown field {field}; the body takes only {_EXPECTED}", field
    if message.startswith("Object missing required field"):
        return f"missing field {field}: it must be {FIELD_HINTS.get(field, 'given')}", field
    if field is None:
        if message.startswith("Expected `object`"):
            return f"the body must be a JSON object with {_EXPECTED} ({message})", None
        # Litestar reports an empty body as a bare KeyError of the parameter name.
        return f"the body must be a JSON object with {_EXPECTED}; got none or an unreadable one", None
    hint = FIELD_HINTS.get(field)
    detail = f"invalid {field}: {message}" + (f"; it must be {hint}" if hint else "")
    return detail, field


def client_error_handler(request: Request, exc: HTTPException) -> Response[ErrorBody]:
    """Every 4xx (and a 503 raised by a handler) as an ``ErrorBody``, status and headers kept."""
    field = None
    detail = exc.detail
    extra = exc.extra if isinstance(exc.extra, list) else []
    if extra and isinstance(extra[0], dict) and "message" in extra[0]:
        detail, field = describe_validation(str(extra[0]["message"]), extra[0].get("key"))
    elif detail.startswith("JSON is malformed"):
        detail = f"the body is not valid JSON ({detail}); send a JSON object with {_EXPECTED}"
    elif exc.status_code == 413:
        detail = "the body is too large for this endpoint; send one transaction per request"
    return Response(ErrorBody(detail=detail, field=field), status_code=exc.status_code, headers=exc.headers)
