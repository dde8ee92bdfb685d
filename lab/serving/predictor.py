"""An in-process predictor: ``lab.load_model("MODEL@champion")``.

It scores exactly as the model server does, without HTTP: the same ``ModelSpec``, the
same online store (``lab_online_store``), the same ``FeatureAssembler`` and the same
prediction ledger record, so a model embedded in a program and the same model behind
``lab serve`` give identical results for identical requests. ``ledger_record`` and
``prediction_fields`` are shared with the server (plugins/litestar_serving/app.py).

``ref`` is ``MODEL@ALIAS``, ``MODEL@VERSION`` (a number) or ``MODEL`` (its champion).
Requests are plain dicts with the spec's request fields; a field missing, unknown, of
the wrong type or out of its bounds raises a one-line ``LabError`` naming it.

This module imports no plugin: everything comes through the plugin manager.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from typing import Any, Iterable, Mapping

from lab.errors import LabError
from lab.modelspec import ModelSpec, RequestField, RequestSchema


STORE_UNAVAILABLE = "store_unavailable"
"""The fallback reason of a score on the views' declared defaults (``ModelSpec.on_store_outage``)."""


def parse_ref(ref: str) -> tuple[str, str | int]:
    """``"MODEL@ALIAS"`` -> (model, alias); ``"MODEL@3"`` -> (model, 3); ``"MODEL"`` -> champion."""
    if not isinstance(ref, str) or not ref.strip():
        raise LabError(f"model reference {ref!r}: write MODEL, MODEL@ALIAS or MODEL@VERSION (e.g. churn@champion)")
    name, _, target = ref.strip().partition("@")
    if not name or (_ and not target):
        raise LabError(f"model reference {ref!r}: write MODEL, MODEL@ALIAS or MODEL@VERSION (e.g. churn@champion)")
    if not target:
        return name, "champion"
    return name, int(target) if target.isdigit() else target


def _bad(schema: RequestSchema, name: str, why: str) -> LabError:
    return LabError(f"{schema.title} request field {name!r} {why}")


def _check_field(schema: RequestSchema, spec_field: RequestField, value: Any) -> Any:
    name, kind = spec_field.name, spec_field.type
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(schema, name, f"must be an integer, not {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(schema, name, f"must be a number, not {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise _bad(schema, name, f"must be a finite number, not {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _bad(schema, name, f"must be true or false, not {value!r}")
    elif kind == "str":
        if not isinstance(value, str):
            raise _bad(schema, name, f"must be a string, not {value!r}")
        if spec_field.max_length is not None and len(value) > spec_field.max_length:
            raise _bad(schema, name, f"must be at most {spec_field.max_length} characters long")
    elif kind == "datetime":
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                raise _bad(schema, name, f"must be an ISO 8601 date and time, not {value!r}") from None
        elif not isinstance(value, dt.datetime):
            raise _bad(schema, name, f"must be an ISO 8601 date and time, not {value!r}")
    if spec_field.ge is not None and value < spec_field.ge:
        raise _bad(schema, name, f"must be >= {spec_field.ge}, not {value!r}")
    if spec_field.le is not None and value > spec_field.le:
        raise _bad(schema, name, f"must be <= {spec_field.le}, not {value!r}")
    return value


def validate_request(schema: RequestSchema, request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` checked against ``schema`` (every field present, none unknown, types
    and bounds) with datetimes parsed; ``LabError`` naming the first bad field."""
    if not isinstance(request, Mapping):
        raise LabError(f"a {schema.title} request must be a dict of its fields ({', '.join(schema.names)}), "
                       f"not {type(request).__name__}")
    unknown = [name for name in request if name not in schema.names]
    if unknown:
        raise _bad(schema, unknown[0], f"is not a field of the request ({', '.join(schema.names)})")
    out = {}
    for spec_field in schema.fields:
        if spec_field.name not in request:
            raise _bad(schema, spec_field.name, "is missing")
        out[spec_field.name] = _check_field(schema, spec_field, request[spec_field.name])
    return out


def request_time(value: dt.datetime) -> dt.datetime:
    """The time features read from a request's timestamp: its wall clock, offset dropped."""
    return value.replace(tzinfo=None)


def ledger_record(schema: RequestSchema, fields: dict[str, Any], sent: dt.datetime, version, assembled,
                  score: float, latency_ms: float, request_id: str, *, experiment: str | None = None,
                  variant: str | None = None, fallback: str | None = None):
    """The ledger's ``PredictionRecord`` for one scored request (the server's and the
    embedded predictor's): ``fields`` as decoded, the timestamp and datetimes as sent."""
    from lab.serving.ledger import PredictionRecord

    fields = dict(fields)
    fields[schema.timestamp] = sent
    for f in schema.fields:
        if f.type == "datetime":  # as sent, offset included
            fields[f.name] = fields[f.name].isoformat()
    return PredictionRecord(
        event_id=fields[schema.id], model_name=version.name, model_version=version.version,
        features=assembled.features, defaults=assembled.defaults, score=score, latency_ms=latency_ms,
        request=fields, request_id=request_id, experiment=experiment, variant=variant, fallback=fallback,
        feature_ages={name: f.age_seconds for name, f in assembled.freshness.items()},
    )


def prediction_fields(event_id, version, assembled, score: float, latency_ms: float) -> dict[str, Any]:
    """What a prediction answers (the server's /predict body less its request id, flag and fallback)."""
    fresh = assembled.freshness
    return {
        "event_id": event_id,
        "score": score,
        "model": version.name,
        "model_version": version.version,
        "features": assembled.features,
        "defaults": assembled.defaults,
        "feature_age_seconds": {name: f.age_seconds for name, f in fresh.items()},
        "stale": {name: f.stale for name, f in fresh.items()},
        "future": {name: f.future for name, f in fresh.items()},
        "latency_ms": latency_ms,
    }


class Predictor:
    """A loaded model version with its online store and (optionally) ledger: ``predict``
    scores one request as the server does. Use as a context manager, or call ``close``."""

    def __init__(self, spec: ModelSpec, version, model, assembler, store, ledger=None):
        self.spec, self.version, self.model = spec, version, model
        self.assembler, self.store, self.ledger = assembler, store, ledger

    def predict(self, request: Mapping[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        """Score ``request`` (a dict of the spec's request fields); the server's fields.
        With ``ModelSpec.on_store_outage = "feature_defaults"`` a store that raises gives
        every view its declared defaults and the answer adds ``fallback: True``,
        ``fallback_reason: "store_unavailable"``, ``fallback_source: "feature_defaults"``
        (the ledger row's ``fallback`` too); otherwise the store's error is raised."""
        started = time.perf_counter()
        schema = self.spec.request
        fields = validate_request(schema, request)
        sent = fields[schema.timestamp]
        when = fields[schema.timestamp] = request_time(sent)
        fallback = None
        if self.spec.on_store_outage == "feature_defaults":
            # As the server: a store that raises gives every view its declared defaults, flagged.
            assembled, outage = self.assembler.assemble_or_defaults(fields, when)
            fallback = None if outage is None else STORE_UNAVAILABLE
        else:
            assembled = self.assembler.assemble(fields, when)
        score = float(self.model.predict(assembled.vector)[0])
        latency_ms = (time.perf_counter() - started) * 1000.0
        request_id = request_id or uuid.uuid4().hex
        if self.ledger is not None:
            self.ledger.append(ledger_record(schema, fields, sent, self.version, assembled, score, latency_ms,
                                             request_id, fallback=fallback))
        flags = {} if fallback is None else {"fallback": True, "fallback_reason": fallback,
                                             "fallback_source": "feature_defaults"}
        return {"request_id": request_id,
                **prediction_fields(fields[schema.id], self.version, assembled, score, latency_ms), **flags}

    def predict_many(self, requests: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``predict`` for each request, in order."""
        return [self.predict(request) for request in requests]

    def close(self) -> None:
        """Close the online store, then the ledger (every prediction committed)."""
        try:
            if self.store is not None:
                self.store.close()
        finally:
            self.store = None
            if self.ledger is not None:
                self.ledger.close()
                self.ledger = None

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({self.version.name!r} v{self.version.version})"


def load_model(ref: str, *, root=None, ledger: bool = True) -> Predictor:
    """An in-process ``Predictor`` for ``ref`` (``MODEL@ALIAS``, ``MODEL@VERSION`` or
    ``MODEL``) of the lab at ``root`` (default: the current lab), scoring as ``lab serve``
    does; with ``ledger`` its predictions go to the lab's prediction ledger."""
    import numpy as np

    from lab.config import load_config
    from lab.features.stores import pin_views
    from lab.plugins import feature_views, get_plugin_manager, model_flavor, model_spec
    from lab.registry import Registry
    from lab.serving.ledger import Ledger
    from lab.serving.scoring import FeatureAssembler

    name, target = parse_ref(ref)
    config = load_config(root)
    pm = get_plugin_manager(config)
    spec = model_spec(pm, config, name)
    if not config.registry_path.exists():
        raise LabError(f"no registry at {config.registry_path}: run `lab run` to train and register a model")
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        if isinstance(target, int):
            version = registry.get_model_version(name, target)  # NotFound names the versions there are
        else:
            version = registry.get_alias(name, target)
            if version is None:
                registry.list_model_versions(name)  # NotFound when no version of it is registered
                set_aliases = ", ".join(sorted(registry.aliases(name))) or "none"
                raise LabError(f"model {name!r} has no alias {target!r} (its aliases: {set_aliases}): "
                               f"`lab promote {name} VERSION` sets champion, or load {name}@VERSION")
    model = model_flavor(pm, version.flavor).load(config.root / version.artifact_path)
    names = list(model.feature_names)
    views_by_name = feature_views(pm, config)
    views = []
    for view_name in spec.views:
        if view_name not in views_by_name:
            raise LabError(f"model {spec.name!r} reads feature view {view_name!r}, which no plugin declares "
                           f"(lab_feature_views)")
        views.append(views_by_name[view_name])
    store = pm.hook.lab_online_store(config=config)
    if store is None:
        raise LabError("no plugin answered lab_online_store; install or enable an online store plugin")
    opened = None
    try:
        # the view versions this model version was trained on, where the store still holds them
        views = pin_views(views, (version.lineage or {}).get("feature_views"), store)
        assembler = FeatureAssembler(store, views, spec.request_row, names)
        model.predict(np.zeros((1, len(names)), dtype=np.float32))  # warm, as the server does
        opened = Ledger.open(config.ledger_path) if ledger else None
    except BaseException:
        store.close()
        raise
    return Predictor(spec, version, model, assembler, store, opened)
