"""Contract tests for a lab's ``ModelSpec``: subclass ``ModelSpecContract``, give it the spec
and a few source rows.

    from lab.testing import ModelSpecContract

    class TestDeliverySpec(ModelSpecContract):
        @pytest.fixture
        def spec(self):
            return DELIVERY_SPEC

        @pytest.fixture
        def events(self):
            return pl.read_parquet("tests/data/orders_sample.parquet")  # a few source rows

Optional fixtures: ``views_by_name`` (``{name: FeatureView}``, so the contract knows which
features come from views and which are request-time) and ``online_rows`` (the online rows
``request_row`` gets: one ``{view: row or None}`` for every event, or one for all; by
default every view is unknown, None).

What it checks (``check_model_spec`` returns the problems as sentences, the tests assert
there are none):

- the events hold the label, the request id and timestamp, and the entity keys, which
  are fields of the request;
- ``request_frame(events)`` keeps the rows and adds every request-time feature (a
  feature of the spec that none of its views produces);
- ``request_row(request, rows)`` for each event gives every feature, and the same
  request-time values as ``request_frame``: the one-definition rule, training and
  serving agree;
- the schema's example request, with every view unknown, gives every feature as a
  finite number (the server warms up with it).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import pytest

from lab.modelspec import ModelSpec

EVENTS = "events"
ENTITIES = "entities"
FRAME = "frame"
ROW = "row"
EXAMPLE = "example"
_SHOWN = 3  # disagreeing rows quoted per feature


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(float(value))


def _rows_for(online_rows: Any, views: Sequence[str], height: int) -> tuple[list[Mapping[str, Any]] | None, str]:
    """One ``{view: row or None}`` per event, or a problem."""
    if online_rows is None:
        return [{v: None for v in views}] * height, ""
    if isinstance(online_rows, Mapping):
        return [online_rows] * height, ""
    rows = list(online_rows)
    if len(rows) != height:
        return None, f"online_rows has {len(rows)} entries for {height} events; give one per event or one for all"
    return rows, ""


def _problems(
    spec: ModelSpec,
    events: Any,
    views_by_name: Mapping[str, Any] | None = None,
    online_rows: Any = None,
) -> list[tuple[str, str]]:
    """``(check, sentence)`` for every problem found; empty when the spec keeps the contract."""
    found: list[tuple[str, str]] = []
    request = spec.request

    # ---------------------------------------------------------------- events and keys
    roles = [("label", spec.label), ("request id", request.id), ("request timestamp", request.timestamp),
             *(("entity key", e) for e in request.entities)]
    for role, column in roles:
        if column not in events.columns:
            found.append((EVENTS, f"the events lack the {role} column {column!r} (source {spec.source!r})"))
    for entity in request.entities:
        if entity not in request.names:
            found.append((ENTITIES, f"entity key {entity!r} is not a field of the request ({', '.join(request.names)})"))

    # ---------------------------------------------------------------- which features are request-time
    view_features: set[str] | None = None
    unknown_view = False
    if views_by_name is not None:
        view_features = set()
        for name in spec.views:
            view = views_by_name.get(name)
            if view is None:
                found.append((ENTITIES, f"the spec reads view {name!r}, which is not among the views "
                                        f"({', '.join(sorted(views_by_name)) or 'none'})"))
                unknown_view = True
                continue
            view_features.update(view.feature_names)
            if view.entity not in request.entities:
                found.append((ENTITIES, f"view {name!r} is keyed by {view.entity!r}, which is not an entity "
                                        f"field of the request ({', '.join(request.entities) or 'none'})"))
        if unknown_view:
            view_features = None  # its features cannot be told from request-time ones
    elif not spec.views:
        view_features = set()

    # ---------------------------------------------------------------- request_frame
    frame = None
    try:
        frame = spec.request_frame(events)
    except Exception as exc:  # noqa: BLE001 - any failure of the lab's code is the finding
        found.append((FRAME, f"request_frame(events) raised {type(exc).__name__}: {exc}"))
    if frame is not None:
        if not hasattr(frame, "columns") or not hasattr(frame, "height"):
            found.append((FRAME, f"request_frame returned a {type(frame).__name__}, not a polars DataFrame"))
            frame = None
        elif frame.height != events.height:
            found.append((FRAME, f"request_frame turned {events.height} events into {frame.height} rows; "
                                 "it must add columns, one row per event"))
            frame = None
    if view_features is None:
        # Views unknown: a feature the frame lacks is taken for a view feature.
        request_time = [f for f in spec.features if frame is not None and f in frame.columns]
    else:
        request_time = [f for f in spec.features if f not in view_features]
        if frame is not None:
            missing = [f for f in request_time if f not in frame.columns]
            if missing:
                found.append((FRAME, f"request_frame does not add the request-time feature(s) {', '.join(missing)} "
                                     "(features of the spec that no view produces)"))
                request_time = [f for f in request_time if f not in missing]

    # ---------------------------------------------------------------- request_row for each event
    absent = [n for n in request.names if n not in events.columns]
    rows, problem = _rows_for(online_rows, spec.views, events.height)
    if problem:
        found.append((ROW, problem))
    elif absent:
        found.append((ROW, f"the events lack request field(s) {', '.join(absent)}, so request_row cannot be "
                           "checked against request_frame; include them in the events"))
    else:
        disagree: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        frame_rows = frame.select(request_time).rows(named=True) if frame is not None else [None] * events.height
        for i, (event, online, framed) in enumerate(zip(events.rows(named=True), rows, frame_rows)):
            one_request = {name: event[name] for name in request.names}
            try:
                served = spec.request_row(one_request, dict(online))
            except Exception as exc:  # noqa: BLE001
                found.append((ROW, f"request_row raised {type(exc).__name__} for event {i}: {exc}"))
                break
            lacking = [f for f in spec.features if f not in served]
            if lacking:
                found.append((ROW, f"request_row leaves out feature(s) {', '.join(lacking)} for event {i}"))
                break
            for feature in request_time if framed is not None else ():
                if not _same(served[feature], framed[feature]):
                    counts[feature] = counts.get(feature, 0) + 1
                    if len(disagree.setdefault(feature, [])) < _SHOWN:
                        disagree[feature].append(f"event {i}: {served[feature]!r} vs {framed[feature]!r}")
        for feature, examples in disagree.items():
            found.append((ROW, f"request_row and request_frame disagree on {feature} for {counts[feature]} of "
                               f"{events.height} events ({'; '.join(examples)}; serving vs training): "
                               "compute it from one definition"))

    # ---------------------------------------------------------------- the example request
    try:
        example = request.example_request()
        served = spec.request_row(example, {v: None for v in spec.views})
    except Exception as exc:  # noqa: BLE001
        found.append((EXAMPLE, f"request_row on the example request with every view unknown raised "
                               f"{type(exc).__name__}: {exc}"))
    else:
        bad = {f: served.get(f) for f in spec.features if not _finite_number(served.get(f))}
        if bad:
            shown = ", ".join(f"{f}={v!r}" for f, v in bad.items())
            found.append((EXAMPLE, f"the example request with every view unknown gives {shown}; every feature "
                                   "must be a finite number (fill defaults for unknown entities)"))
    return found


def check_model_spec(
    spec: ModelSpec,
    events: Any,
    views_by_name: Mapping[str, Any] | None = None,
    online_rows: Any = None,
) -> list[str]:
    """Every way ``spec`` breaks the contract on ``events`` (a polars DataFrame of source
    rows), as sentences; empty when it keeps it. See the module docstring for the checks."""
    return [sentence for _, sentence in _problems(spec, events, views_by_name, online_rows)]


class ModelSpecContract:
    """Events and keys, the request-time frame, one definition for training and serving, the example."""

    @pytest.fixture
    def spec(self):
        raise NotImplementedError("override the `spec` fixture: return the lab's ModelSpec")

    @pytest.fixture
    def events(self):
        raise NotImplementedError("override the `events` fixture: return a polars DataFrame of a few source rows")

    @pytest.fixture
    def views_by_name(self):
        """``{name: FeatureView}`` of the lab's views; None when not given."""
        return None

    @pytest.fixture
    def online_rows(self):
        """What ``request_row`` gets per event; None means every view unknown."""
        return None

    @staticmethod
    def _assert_none(check: str, spec, events, views_by_name, online_rows) -> None:
        problems = [s for c, s in _problems(spec, events, views_by_name, online_rows) if c == check]
        assert not problems, "\n".join(problems)

    def test_events_hold_the_label_id_timestamp_and_keys(self, spec, events, views_by_name, online_rows):
        self._assert_none(EVENTS, spec, events, views_by_name, online_rows)

    def test_entity_keys_are_request_fields_and_key_the_views(self, spec, events, views_by_name, online_rows):
        self._assert_none(ENTITIES, spec, events, views_by_name, online_rows)

    def test_request_frame_adds_every_request_time_feature(self, spec, events, views_by_name, online_rows):
        self._assert_none(FRAME, spec, events, views_by_name, online_rows)

    def test_request_row_agrees_with_request_frame(self, spec, events, views_by_name, online_rows):
        self._assert_none(ROW, spec, events, views_by_name, online_rows)

    def test_example_request_gives_finite_features_with_views_unknown(self, spec, events, views_by_name, online_rows):
        self._assert_none(EXAMPLE, spec, events, views_by_name, online_rows)
