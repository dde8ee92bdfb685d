"""Online model quality per variant: ledger predictions joined with labels that came later.

The serving ledger records, for each prediction, the event it scored (``event_id``: the
request's id field, as sent), the score, and the experiment and variant that routed it.
Labels often arrive afterwards (a claim is settled, a case investigated, a customer
churns). Joining the ledger's event ids with a label table's id column gives each
variant's ROC AUC and average precision on live traffic.

The label table's columns are the model's: its event id (``ModelSpec.request.id``), its
label and its event time; ``lab.experiments.report`` reads them from the lab's model
spec. ``labels_as_of`` replays what was known at a moment: a label counts only if its
event time plus ``label_delay`` is at or before that moment. Without it every label in
the table counts.

A variant with no labelled prediction, or whose labels are all one class, gets ``None``
for the metric that cannot be computed and a ``note`` that says why; that is the normal
state of a young experiment, not an error.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from typing import Any

import numpy as np
import polars as pl

from lab.errors import LabError
from lab.experiments.outcomes import as_naive_utc, describe, read_table
from lab.serving.ledger import read_predictions
from lab.training.metrics import average_precision, roc_auc

def _labels(labels: Any, wanted: set, id_column: str, label_column: str, time_column: str | None,
            as_of: dt.datetime | None, label_delay: dt.timedelta) -> tuple[dict, set]:
    """``{event id: label}`` for the ``wanted`` events whose label is known by ``as_of``,
    and the ids whose label exists but was not known yet."""
    source = describe(labels)
    frame = read_table(labels, "labels")
    if as_of is not None and time_column is None:
        raise LabError("labels_as_of needs the labels' event-time column; pass time_column")
    need = [id_column, label_column] + ([time_column] if as_of is not None else [])
    missing = [c for c in need if c not in frame.columns]
    if missing:
        why = f" (labels_as_of needs the event time {time_column})" if time_column in missing else ""
        raise LabError(f"labels {source} lack column(s) {', '.join(missing)}{why}; they have: "
                       f"{', '.join(frame.columns)}. Give the model's event id {id_column} and its label "
                       f"{label_column}")
    ids = frame[id_column].dtype
    if not (ids.is_integer() or ids in (pl.String, pl.Categorical)):
        raise LabError(f"{id_column} in {source} is {ids}; an event id is a whole number or text, as the "
                       "requests sent it")
    if not (frame[label_column].dtype.is_numeric() or frame[label_column].dtype == pl.Boolean):
        raise LabError(f"{label_column} in {source} is {frame[label_column].dtype}; it must be 0 or 1")
    if ids == pl.Categorical:
        frame = frame.with_columns(pl.col(id_column).cast(pl.String))
    # only the ledger's events: a label table can hold millions of rows
    kind = int if ids.is_integer() else str
    wanted_here = sorted(w for w in wanted if isinstance(w, kind) and not isinstance(w, bool))
    frame = frame.filter(pl.col(id_column).is_in(wanted_here) & pl.col(label_column).is_not_null())
    pending: set = set()
    if as_of is not None:
        times = frame[time_column]
        if times.dtype == pl.Date:
            times = times.cast(pl.Datetime("us"))
        if not isinstance(times.dtype, pl.Datetime):
            raise LabError(f"{time_column} in {source} is {times.dtype}; labels_as_of needs event times")
        if times.dtype.time_zone is not None:
            times = times.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        known = (times + label_delay) <= as_of
        pending = set(frame.filter(~known)[id_column].to_list())
        frame = frame.filter(known)
    values = frame[label_column].cast(pl.Float64).to_numpy()
    if not np.isin(values, (0.0, 1.0)).all():
        raise LabError(f"{label_column} in {source} must be 0 or 1; found other values")
    pairs = frame.select(id_column, pl.col(label_column).cast(pl.Int64)).unique()
    if pairs.height != pairs[id_column].n_unique():
        raise LabError(f"labels {source} give two different {label_column} values for one {id_column}; "
                       "keep one label per event")
    known_labels = dict(zip(pairs[id_column].to_list(), pairs[label_column].to_list()))
    return known_labels, pending - set(known_labels)


def _metrics(y: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None, str]:
    if y.size == 0:
        return None, None, "no labelled predictions yet (labels arrive after the events they label)"
    positives = int(y.sum())
    if positives == 0:
        return None, None, f"all {y.size} labels are 0 (no positive yet): AUC and AP need both classes"
    if positives == y.size:
        return None, None, f"all {y.size} labels are 1: AUC needs both classes"
    return roc_auc(y, scores), average_precision(y, scores), ""


def variant_quality(
    ledger_path: str | os.PathLike,
    experiment: Any,
    labels: Any,
    *,
    id_column: str,
    label_column: str,
    time_column: str | None = None,
    label_delay: dt.timedelta = dt.timedelta(0),
    labels_as_of: dt.datetime | str | None = None,
) -> dict[str, dict]:
    """Per-variant ROC AUC and average precision of the predictions ``experiment`` routed.

    ``experiment`` is a name, or an ``Experiment`` (then every variant appears, even one
    with no predictions). ``labels`` is a Parquet/CSV path, polars frame or pyarrow table
    with ``id_column`` (the model's event id: whole numbers or text, matched with the
    ledger's ``event_id`` as sent) and ``label_column`` (0/1; null = not known yet). With
    ``labels_as_of`` only labels whose ``time_column`` + ``label_delay`` is at or before
    it count (naive times are UTC).

    An event scored more than once within a variant counts once, with its latest score.
    Returns ``{variant: {"n_predictions", "n_labelled", "n_positive", "n_pending",
    "roc_auc", "average_precision", "note"}}`` (``n_pending``: events whose label was not
    yet known at ``labels_as_of``); a metric is None, and ``note`` says why, when
    the variant has no labelled prediction or only one class. Raises LabError for a missing
    ledger or labels file, missing columns, or labels that are not 0/1.
    """
    name = getattr(experiment, "name", experiment)
    if not isinstance(name, str) or not name:
        raise LabError(f"experiment must be a name or an Experiment, got {experiment!r}")
    as_of = as_naive_utc(labels_as_of)
    try:
        rows = read_predictions(ledger_path, experiment=name)
    except sqlite3.Error as exc:
        raise LabError(f"cannot read the prediction ledger {ledger_path}: {exc}; a ledger written before "
                       "it recorded experiments gains the columns when `lab serve` next opens it") from None
    latest: dict[str, dict] = {v.name: {} for v in getattr(experiment, "variants", ())}
    counts: dict[str, int] = {v: 0 for v in latest}
    for row in rows:  # oldest first, so a later score of one event replaces the earlier
        variant = row.get("variant")
        if variant is None:
            continue
        counts[variant] = counts.get(variant, 0) + 1
        scored = latest.setdefault(variant, {})
        if row["event_id"] is not None:  # a request without one cannot meet its label
            scored[row["event_id"]] = float(row["score"])
    wanted = {t for scored in latest.values() for t in scored}
    known, pending = _labels(labels, wanted, id_column, label_column, time_column, as_of, label_delay)
    out: dict[str, dict] = {}
    for variant, scored in latest.items():
        ids = [t for t in scored if t in known]
        y = np.array([known[t] for t in ids], dtype=np.int8)
        scores = np.array([scored[t] for t in ids], dtype=np.float64)
        auc, ap, note = _metrics(y, scores)
        if counts[variant] == 0:
            note = f"no predictions routed to {variant!r} in the ledger"
        out[variant] = {
            "n_predictions": counts[variant], "n_labelled": int(y.size), "n_positive": int(y.sum()),
            "n_pending": sum(1 for t in scored if t in pending),
            "roc_auc": auc, "average_precision": ap, "note": note,
        }
    return out
