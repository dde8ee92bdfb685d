"""A brute-force point-in-time join in plain Python: slow, obvious, and the yardstick.

``reference_features`` applies the visibility rule of ``lab.features.views`` row by row
with ``datetime`` arithmetic; a store's ``get_historical_features`` must agree with it.
Naive datetimes are taken as UTC, as the built-in store does.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Sequence

import pyarrow as pa

from lab.features.views import FeatureView


def _utc(value) -> dt.datetime:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def visible(event_time, query_time, view: FeatureView) -> bool:
    """The rule: ``e + delay <= t`` and ``t - (e + delay) <= ttl``, both inclusive."""
    known_at = _utc(event_time) + view.label_delay
    t = _utc(query_time)
    return known_at <= t and t - known_at <= view.ttl


def _aggregate(view: FeatureView, rows: list[dict], t: dt.datetime) -> dict:
    out = {}
    upper = t - view.label_delay
    for agg in view.aggregations:
        lower = upper - agg.window
        values = [
            r[agg.column] for r in rows
            if lower < r["__e"] <= upper and visible(r["__e"], t, view) and r[agg.column] is not None
        ]
        numbers = [float(v) for v in values] if agg.function != "count" else values
        if agg.function == "count":
            out[agg.name] = len(values)
        elif agg.function == "sum":
            out[agg.name] = float(sum(numbers))
        else:
            out[agg.name] = sum(numbers) / len(numbers) if numbers else agg.fill
    return out


def _latest(view: FeatureView, rows: list[dict], t: dt.datetime) -> dict:
    candidates = [(r["__e"], i) for i, r in enumerate(rows) if visible(r["__e"], t, view)]
    if not candidates:
        return {f: None for f in view.features}
    _, best = max(candidates)  # latest event time; among ties, the row written last
    return {f: rows[best][f] for f in view.features}


def reference_features(
    sources: dict[str, pa.Table], entity_rows: pa.Table, views: Sequence[FeatureView], timestamp_column: str
) -> list[dict]:
    """For each entity row, a dict of every view's features (one list item per row)."""
    by_key: dict[tuple[str, object], list[dict]] = defaultdict(list)
    for view in views:
        for row in sources[view.source].to_pylist():
            if row[view.entity] is None or row[view.timestamp] is None:
                continue
            by_key[(view.name, row[view.entity])].append({**row, "__e": _utc(row[view.timestamp])})
    result = []
    for entity_row in entity_rows.to_pylist():
        t = _utc(entity_row[timestamp_column])
        features: dict = {}
        for view in views:
            rows = by_key.get((view.name, entity_row[view.entity]), [])
            features.update(_aggregate(view, rows, t) if view.aggregations else _latest(view, rows, t))
        result.append(features)
    return result
