"""Request and response bodies of the model server, as msgspec Structs.

The request body is made per app from the served model's ``RequestSchema``
(``request_type``): one field per schema field, each with its type, its bounds and its
description, and unknown fields refused. It is flat and every bound the lab declares is
enforced by the decoder, so no value a client can send reaches the model as something
it cannot score. ``field_hints`` says in words what each field must be; a 400 appends
it, so the message names the fix.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any

import msgspec

from lab.modelspec import RequestField, RequestSchema

_PYTHON_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "datetime": dt.datetime}


def _int_bounds(field: RequestField) -> tuple[int | None, int | None]:
    # An int field's bounds may be written as floats (ge=0.5): the whole numbers inside them.
    ge = field.ge if field.ge is None or isinstance(field.ge, int) else math.ceil(field.ge)
    le = field.le if field.le is None or isinstance(field.le, int) else math.floor(field.le)
    return ge, le


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text.replace("e+", "e")


def _bounds(ge: Any, le: Any) -> str:
    if ge is not None and le is not None:
        return f" from {_number(ge)} to {_number(le)}"
    if ge is not None:
        return f", {_number(ge)} or more"
    if le is not None:
        return f", at most {_number(le)}"
    return ""


def field_hint(field: RequestField, example: Any = None) -> str:
    """What ``field`` must be, in words, from its type, bounds and description:
    ``'a whole number from 0 to 9 (the sensor)'``."""
    if field.type == "int":
        text = "a whole number" + _bounds(*_int_bounds(field))
    elif field.type == "float":
        text = "a number" + _bounds(field.ge, field.le)
    elif field.type == "str":
        text = "a string" + (f" of at most {field.max_length} characters" if field.max_length is not None else "")
    elif field.type == "bool":
        text = "true or false"
    else:
        if isinstance(example, dt.datetime):
            example = example.isoformat()
        text = "an ISO 8601 date-time string" + (f' such as "{example}"' if isinstance(example, str) else "")
    return f"{text} ({field.description})" if field.description else text


def field_hints(schema: RequestSchema) -> dict[str, str]:
    """Field name -> ``field_hint``, in the schema's order."""
    return {f.name: field_hint(f, schema.example.get(f.name)) for f in schema.fields}


def _annotation(field: RequestField, hint: str) -> Any:
    meta: dict[str, Any] = {"description": field.description or hint}
    if field.type == "int":
        ge, le = _int_bounds(field)
        meta.update({k: v for k, v in (("ge", ge), ("le", le)) if v is not None})
    elif field.type == "float":
        meta.update({k: v for k, v in (("ge", field.ge), ("le", field.le)) if v is not None})
    elif field.type == "str" and field.max_length is not None:
        meta["max_length"] = field.max_length
    return Annotated[_PYTHON_TYPES[field.type], msgspec.Meta(**meta)]


def request_type(schema: RequestSchema) -> type[msgspec.Struct]:
    """The msgspec Struct of a request body for ``schema``, named after its title.

    Every field is required and annotated with its bounds and description (so the
    OpenAPI document shows them); unknown fields are refused (a typo is not ignored).
    """
    hints = field_hints(schema)
    fields = [(f.name, _annotation(f, hints[f.name])) for f in schema.fields]
    doc = (f"One {schema.title} to score. Its id is {schema.id}, its time {schema.timestamp}"
           + (f", its entity keys {', '.join(schema.entities)}" if schema.entities else "")
           + ". Unknown fields are refused.")
    return msgspec.defstruct(schema.title, fields, forbid_unknown_fields=True, module=__name__,
                             namespace={"__doc__": doc})


class Prediction(msgspec.Struct):
    """The score for one event and everything needed to trust or audit it.

    ``defaults``, ``feature_age_seconds``, ``stale`` and ``future`` are by feature view:
    a view whose values were unknown for the entity, past its ttl (``stale``) or dated
    after the request (``future``: a back-dated request) was served its defaults.

    ``fallback`` is True when ``score`` is the model's declared fallback, not a
    prediction: a store or the model failed or did not answer within the latency budget
    (``fallback_reason`` says which: ``store_timeout``, ``model_timeout``, ``store_error``,
    ``model_error``, ``queue_timeout``), or its circuit breaker is open
    (``store_circuit_open``, ``model_circuit_open``). ``features`` then holds what was
    assembled, if the store answered, else nothing. ``fallback_source`` says where the
    score came from: ``batch`` (the entity's latest batch prediction, with
    ``[tool.lab.serve] batch_fallback``; ``batch_model_version``, ``batch_scored_at`` and
    ``batch_age_seconds`` describe it) or ``declared`` (the model's declared fallback).
    With ``ModelSpec.on_store_outage = "feature_defaults"`` a store that failed, timed out
    or whose circuit is open gives instead ``fallback_reason`` ``store_unavailable`` and
    ``fallback_source`` ``feature_defaults``: ``score`` is the model's on every view's
    declared defaults (``features``; every view true in ``defaults``)."""

    request_id: str
    event_id: int | str
    score: float
    model: str
    model_version: int
    features: dict[str, float]
    defaults: dict[str, bool]
    feature_age_seconds: dict[str, float | None]
    stale: dict[str, bool]
    future: dict[str, bool]
    latency_ms: float
    flag: str | None = None
    variant: str | None = None
    fallback: bool = False
    fallback_reason: str | None = None
    fallback_source: str | None = None
    batch_model_version: int | None = None
    batch_scored_at: str | None = None
    batch_age_seconds: float | None = None


class ErrorBody(msgspec.Struct):
    """Every 4xx and 503 body: what is wrong and, for a bad request field, which one."""

    detail: str
    field: str | None = None


class Health(msgspec.Struct):
    status: str


class ServedModel(msgspec.Struct):
    """A model loaded in the server: its version, its measured footprint (the bytes of its
    arrays, tensors and byte strings) and whether it is pinned (the default model)."""

    name: str
    version: int
    memory_bytes: int
    pinned: bool


class Readiness(msgspec.Struct):
    """Whether the server can score now; ``reason`` says why not (or what is being loaded).
    ``models`` lists the models loaded now (the default first; with ``lab serve --model A
    --model B``, the others from most to least recently used)."""

    ready: bool
    reason: str | None
    model: str
    alias: str
    model_version: int | None
    warnings: list[str]
    models: list[ServedModel] = []


class ServerStats(msgspec.Struct):
    """Counters since start: predictions served, requests refused as not ready, the
    ledger's appended, written, dropped (queue full), failed, commits and queued right
    now, and ``features``: requests served some view's defaults because its values were
    past the ttl (``stale``) or dated after the request (``future``); ``fallbacks``: answers
    that were the model's declared fallback, by reason (not counted in ``predictions``);
    ``batch_fallback``: lookups of the latest batch prediction for a request that could not
    be scored, ``hits`` and ``misses`` (empty unless ``[tool.lab.serve] batch_fallback``);
    ``shadow``: requests mirrored to a shadow's challenger, dropped (its queue full),
    written, failed writes, challenger errors, queued now, and the shadow_id and
    challenger_version while one is mirrored."""

    predictions: int
    not_ready: int
    ledger: dict[str, int]
    features: dict[str, int]
    fallbacks: dict[str, int] = {}
    batch_fallback: dict[str, int] = {}
    shadow: dict[str, int] = {}
    devices: dict[str, str] = {}
    """Where each served model scores: ``"cpu"`` or ``"cuda:N"`` ([tool.lab.serve] device,
    or the model's [tool.lab.serve.models.<name>] table)."""
