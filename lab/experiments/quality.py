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

KNOWN_AT = "known_at"
"""``label_frame``'s column: when a label became known (its event time plus the label delay)."""


def label_frame(labels: Any, wanted: set, *, id_column: str, label_column: str, time_column: str | None = None,
                as_of: dt.datetime | None = None, label_delay: dt.timedelta = dt.timedelta(0),
                binary: bool = True) -> tuple[pl.DataFrame, set]:
    """The labels of the ``wanted`` events known by ``as_of``, and the ids whose label
    exists but was not known yet.

    Shared by online quality per variant (here) and live quality per model version
    (``lab.monitoring.quality``). ``labels`` is a Parquet/CSV path, polars frame or pyarrow
    table. Only the rows of ``wanted`` events are read past the column checks (a label
    table can hold millions of rows, and only those rows' problems matter). Returns a
    frame with ``id_column``, ``label_column`` (Int64 0/1 when ``binary``, else Float64)
    and, when ``time_column`` is given, ``known_at`` (naive UTC: the event time plus
    ``label_delay``), one row per event; and the pending ids. With ``as_of``, a label
    counts only if its ``known_at`` is at or before it. Raises LabError naming the fix
    for missing columns, ids that are not whole numbers or text, labels that are not
    0/1 (``binary``) or not numbers, or two different labels for one event.
    """
    source = describe(labels)
    frame = read_table(labels, "labels")
    if as_of is not None and time_column is None:
        raise LabError("labels_as_of needs the labels' event-time column; pass time_column")
    need = [id_column, label_column] + ([time_column] if time_column is not None else [])
    missing = [c for c in need if c not in frame.columns]
    if missing:
        why = ""
        if time_column in missing:
            why = (f" (labels_as_of needs the event time {time_column})" if as_of is not None else
                   f" (the event time {time_column}: a label counts once it plus the label delay has passed)")
        raise LabError(f"labels {source} lack column(s) {', '.join(missing)}{why}; they have: "
                       f"{', '.join(frame.columns)}. Give the model's event id {id_column} and its label "
                       f"{label_column}" + (f", with its event time {time_column}" if time_column else ""))
    ids = frame[id_column].dtype
    if not (ids.is_integer() or ids in (pl.String, pl.Categorical)):
        raise LabError(f"{id_column} in {source} is {ids}; an event id is a whole number or text, as the "
                       "requests sent it")
    if not (frame[label_column].dtype.is_numeric() or frame[label_column].dtype == pl.Boolean):
        what = "it must be 0 or 1" if binary else "it must hold numbers"
        raise LabError(f"{label_column} in {source} is {frame[label_column].dtype}; {what}")
    if ids == pl.Categorical:
        frame = frame.with_columns(pl.col(id_column).cast(pl.String))
    # only the ledger's events: a label table can hold millions of rows
    kind = int if ids.is_integer() else str
    wanted_here = sorted(w for w in wanted if isinstance(w, kind) and not isinstance(w, bool))
    frame = frame.filter(pl.col(id_column).is_in(wanted_here) & pl.col(label_column).is_not_null())
    columns = [pl.col(id_column), pl.col(label_column).cast(pl.Int64 if binary else pl.Float64)]
    if time_column is not None:
        times = frame[time_column]
        if times.dtype == pl.Date:
            times = times.cast(pl.Datetime("us"))
        if not isinstance(times.dtype, pl.Datetime):
            raise LabError(f"{time_column} in {source} is {times.dtype}; labels_as_of needs event times")
        if times.dtype.time_zone is not None:
            times = times.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        frame = frame.with_columns((times.cast(pl.Datetime("us")) + label_delay).alias(KNOWN_AT))
        columns.append(pl.col(KNOWN_AT))
    pending: set = set()
    if as_of is not None:
        known = pl.col(KNOWN_AT) <= as_of
        pending = set(frame.filter(~known)[id_column].to_list())
        frame = frame.filter(known)
    values = frame[label_column].cast(pl.Float64).to_numpy()
    if binary and not np.isin(values, (0.0, 1.0)).all():
        raise LabError(f"{label_column} in {source} must be 0 or 1; found other values")
    if not np.isfinite(values).all():
        raise LabError(f"{label_column} in {source} holds NaN or infinity; drop those rows (a label not known "
                       "yet is null)")
    pairs = frame.select(columns)
    if time_column is not None:  # the same label given twice: known from its first row
        pairs = pairs.group_by(id_column, label_column, maintain_order=True).agg(pl.col(KNOWN_AT).min())
    else:
        pairs = pairs.unique(maintain_order=True)
    if pairs.height != pairs[id_column].n_unique():
        raise LabError(f"labels {source} give two different {label_column} values for one {id_column}; "
                       "keep one label per event")
    return pairs, pending - set(pairs[id_column].to_list())


def _labels(labels: Any, wanted: set, id_column: str, label_column: str, time_column: str | None,
            as_of: dt.datetime | None, label_delay: dt.timedelta) -> tuple[dict, set]:
    """``{event id: label}`` for the ``wanted`` events whose label is known by ``as_of``,
    and the ids whose label exists but was not known yet."""
    frame, pending = label_frame(labels, wanted, id_column=id_column, label_column=label_column,
                                 time_column=time_column if as_of is not None else None, as_of=as_of,
                                 label_delay=label_delay)
    return dict(zip(frame[id_column].to_list(), frame[label_column].to_list())), pending


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
