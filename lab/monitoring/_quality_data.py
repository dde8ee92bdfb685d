"""What live quality joins (``lab.monitoring.quality``): the model's predictions in the
ledger (latest score per event and version, request time as the server read it) and the
label table, by event id."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import polars as pl

from lab.config import LabConfig
from lab.errors import LabError, NotFound
from lab.experiments.quality import KNOWN_AT
from lab.modelspec import ModelSpec
from lab.serving.ledger import read_predictions
from lab.sqlite import connect


def labels_from_source(config: LabConfig, spec: ModelSpec, pm: Any) -> pl.DataFrame:
    """The spec's id, label and event-time columns from its offline source (``pm``'s store)."""
    store = pm.hook.lab_offline_store(config=config)
    if store is None:
        raise LabError("no labels given and no offline store to read them from; pass labels= (a Parquet/CSV path "
                       f"or frame with {spec.id_column}, {spec.label} and {spec.time_column})")
    try:
        table = store.read_source(spec.source, [spec.id_column, spec.label, spec.time_column])
    except LabError as exc:
        raise LabError(f"no labels given, and the model's source {spec.source!r} cannot give them: {exc}. Pass "
                       f"labels= (a Parquet/CSV path or frame with {spec.id_column}, {spec.label} and "
                       f"{spec.time_column})") from None
    finally:
        store.close()
    return pl.from_arrow(table)


def _models_in(path: os.PathLike) -> list[str]:
    try:
        conn = connect(path, readonly=True)
    except NotFound:
        return []
    try:
        return [r["model_name"] for r in conn.execute("SELECT DISTINCT model_name FROM predictions ORDER BY 1")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _request_time(row: dict, column: str) -> dt.datetime:
    """The request's event time as the server read it (its wall clock, the offset
    dropped); the ledger's ``at`` (UTC) for a request without it."""
    value = row["request"].get(column) if isinstance(row.get("request"), dict) else None
    if value is None:
        value = dt.datetime.fromisoformat(row["at"]).astimezone(dt.timezone.utc)
    elif isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise LabError(f"logged request {row.get('request_id')} has {column} {value!r}, not an ISO "
                           "date-time") from None
    return value.replace(tzinfo=None)


@dataclass
class VersionRows:
    """One version's predictions (latest score per event), in ledger order."""

    time: np.ndarray  # datetime64[us], request time
    score: np.ndarray
    label: np.ndarray  # float, NaN: no label at all
    known_at: np.ndarray  # datetime64[us], NaT: no label


def ledger_state(path: os.PathLike) -> tuple | None:
    """``(rows, highest id)`` of the ledger's predictions: the ledger is append-only, so an
    unchanged pair means unchanged content (a repeated check reuses what it read)."""
    try:
        conn = connect(path, readonly=True)
    except NotFound:
        return None
    try:
        return tuple(conn.execute("SELECT count(*) AS n, max(id) AS top FROM predictions").fetchone().values())
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def ledger_rows(config: LabConfig, spec: ModelSpec) -> list[tuple]:
    """The model's predictions in the ledger, oldest first, as ``(version, event key,
    request time, score)``; a prediction without an event id gets a key of its own."""
    try:
        rows = read_predictions(config.ledger_path, model_name=spec.name)
    except sqlite3.Error as exc:
        raise LabError(f"cannot read the prediction ledger {config.ledger_path}: {exc}") from None
    if not rows:
        present = _models_in(config.ledger_path)
        raise LabError(f"the prediction ledger {config.ledger_path} holds no prediction of model {spec.name!r}"
                       f" (it has: {', '.join(present) or 'none'}); serve the model or name another "
                       "(--model, [tool.lab] model_name)")
    return [(int(row["model_version"]),
             row["event_id"] if row["event_id"] is not None else ("\0no id", row["request_id"]),
             _request_time(row, spec.time_column), float(row["score"])) for row in rows]


def predictions(logged: list[tuple], spec: ModelSpec, versions: Iterable[int] | None,
                 as_of: dt.datetime) -> tuple[dict[int, list], set]:
    """Per version, the latest score of each event requested by ``as_of``; and the event ids."""
    by_version: dict[int, dict] = {}
    for version, key, when, score in logged:  # oldest first: a later score of one event replaces the earlier
        if when > as_of:  # not yet made at as_of: a replay sees only the past
            continue
        scored = by_version.setdefault(version, {})
        scored.pop(key, None)
        scored[key] = (when, score)
    present = sorted(by_version)
    if versions is not None:
        wanted = sorted({int(v) for v in versions})
        unknown = [v for v in wanted if v not in by_version]
        if unknown:
            raise LabError(f"no prediction of {spec.name!r} version(s) {', '.join(map(str, unknown))} in the "
                           f"ledger by {as_of.isoformat()}; versions there: {', '.join(map(str, present)) or 'none'}")
        by_version = {v: by_version[v] for v in wanted}
    if not by_version:
        raise LabError(f"no prediction of {spec.name!r} was made by {as_of.isoformat()}; pass a later as_of")
    ids = {k for scored in by_version.values() for k in scored if not isinstance(k, tuple)}
    return {v: list(scored.items()) for v, scored in sorted(by_version.items())}, ids


def join(items: list, labels: pl.DataFrame, id_column: str, label_column: str) -> VersionRows:
    index = {k: i for i, k in enumerate(labels[id_column].to_list())}
    values = labels[label_column].cast(pl.Float64).to_numpy()
    known = labels[KNOWN_AT].to_numpy().astype("datetime64[us]")
    at = np.array([index.get(k, -1) if not isinstance(k, tuple) else -1 for k, _ in items], dtype=np.int64)
    has = at >= 0
    label = np.full(at.size, np.nan)
    label[has] = values[at[has]]
    known_at = np.full(at.size, np.datetime64("NaT"), dtype="datetime64[us]")
    known_at[has] = known[at[has]]
    return VersionRows(time=np.array([w for _, (w, _) in items], dtype="datetime64[us]"),
                    score=np.array([s for _, (_, s) in items], dtype=np.float64), label=label, known_at=known_at)
