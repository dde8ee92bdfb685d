"""Reading the tables a report is built from: experiment outcomes and late labels.

An **outcomes** table has one row per unit: ``unit_id`` (int or str, the experiment's
randomization unit), ``value`` (0/1 for a proportion metric, a number for a mean
metric), and optionally ``at`` (when the unit was first exposed; it spaces the
sequential looks in time), ``pre`` (a pre-period covariate, for CUPED) and ``variant``
(the arm the unit was served, from an exposure log). A Parquet or CSV path, a polars
frame or a pyarrow table all work. Every problem is a ``LabError`` that names the fix,
raised before anything is computed.

One row per unit matters: rows of one unit are not independent, and treating them as
separate units understates every interval. Aggregate first (``max`` for "converted",
``sum`` or ``mean`` for a value).

Which arm a unit was in: the logged ``variant`` when the table has one, else the sticky
hash of the experiment as it ran (``analysed_experiment``: a stopped experiment now
serves control to everyone, so its running layout is rebuilt from the audit log).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lab.errors import LabError
from lab.experiments.assignment import Assigner
from lab.experiments.model import Experiment

REQUIRED = ("unit_id", "value")
OPTIONAL = ("at", "pre", "variant")


@dataclass(frozen=True)
class Outcomes:
    """Validated outcomes, one entry per unit, in the table's row order.

    ``at`` is ``datetime64[us]`` (naive UTC) or None; ``pre`` is float with NaN where a
    unit has no pre-period value, or None; ``variants`` holds the logged arm (None where
    the row names none) or is None when the table has no ``variant`` column.
    """

    source: str
    unit_ids: list
    values: np.ndarray
    at: np.ndarray | None
    pre: np.ndarray | None
    variants: list | None

    def __len__(self) -> int:
        return len(self.unit_ids)


def describe(source: Any) -> str:
    """How to name ``source`` in a message: its path, or the kind of frame it is."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"the given {type(source).__name__}"


def read_table(source: Any, what: str, *, text_columns: tuple[str, ...] = ()):
    """A polars DataFrame from a Parquet/CSV path, a polars frame or a pyarrow table.

    ``text_columns`` are read as text from a CSV, so ids such as ``007`` keep their zeros.
    """
    if isinstance(source, pl.DataFrame):
        return source
    if isinstance(source, pl.LazyFrame):
        return source.collect()
    if type(source).__module__.startswith("pyarrow"):
        return pl.from_arrow(source)
    if type(source).__module__.startswith("pandas"):
        return pl.from_pandas(source)
    if not isinstance(source, (str, os.PathLike)):
        raise LabError(f"{what} must be a Parquet or CSV path, a polars DataFrame or a pyarrow Table, "
                       f"got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise LabError(f"no {what} file at {path}; check the path (Parquet or CSV)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        if suffix == ".csv":
            header = pl.read_csv(path, n_rows=0).columns
            overrides = {c: pl.String for c in text_columns if c in header}
            return pl.read_csv(path, schema_overrides=overrides, try_parse_dates=True)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LabError(f"cannot read {what} {path}: {exc}; is it a valid {suffix[1:]} file?") from None
    raise LabError(f"{what} {path} is neither .parquet nor .csv; convert it to one of them")


def _missing(frame, columns, source: str, what: str, hint: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LabError(f"{what} {source} lacks column(s) {', '.join(missing)}; it has: "
                       f"{', '.join(frame.columns) or 'none'}. {hint}")


def _unit_ids(series, source: str) -> list:
    dtype = series.dtype
    if not (dtype.is_integer() or dtype in (pl.String, pl.Categorical, pl.Enum)):
        raise LabError(f"unit_id in {source} is {dtype}; unit ids must be integers or text: "
                       "cast the column (e.g. pl.col('unit_id').cast(pl.Int64) or .cast(pl.String))")
    if series.null_count():
        raise LabError(f"{series.null_count()} row(s) of {source} have no unit_id; drop them")
    ids = series.cast(pl.String).to_list() if dtype != pl.String and not dtype.is_integer() else series.to_list()
    if "" in ids:
        raise LabError(f"{source} has an empty unit_id; every row needs the id of its unit")
    n_unique = series.n_unique()
    if n_unique != len(ids):
        raise LabError(
            f"{source} has {len(ids) - n_unique} repeated unit_id(s); a report needs one row per unit "
            "(rows of one unit are not independent): aggregate first, e.g. max(value) for a conversion, "
            "sum or mean for a value"
        )
    return ids


def _values(series, source: str, metric_kind: str, experiment: str) -> np.ndarray:
    if not (series.dtype.is_numeric() or series.dtype == pl.Boolean):
        raise LabError(f"value in {source} is {series.dtype}; it must be numeric "
                       "(0/1 for a proportion metric, a number for a mean metric)")
    if series.null_count():
        raise LabError(f"{series.null_count()} row(s) of {source} have no value; drop those units or fill "
                       "them (0 for a unit that did not convert)")
    values = series.cast(pl.Float64).to_numpy()
    if not np.all(np.isfinite(values)):
        raise LabError(f"value in {source} holds NaN or infinity; drop or fix those rows")
    if metric_kind == "proportion" and not np.isin(values, (0.0, 1.0)).all():
        odd = sorted(set(values[~np.isin(values, (0.0, 1.0))].tolist()))[:5]
        raise LabError(
            f"experiment {experiment!r} has a proportion metric, so value must be 0 or 1, but {source} "
            f"holds {', '.join(f'{v:g}' for v in odd)}; give 1 for a unit that converted and 0 otherwise, "
            "or create the experiment with --metric-kind mean for a numeric metric"
        )
    return values


def _times(series, source: str) -> np.ndarray:
    if series.dtype == pl.String:
        try:
            series = series.str.to_datetime(time_unit="us")
        except pl.exceptions.PolarsError:
            raise LabError(f"cannot read the at column of {source} as times; write ISO 8601, "
                           "e.g. 2026-01-31T12:00:00") from None
    if series.dtype == pl.Date:
        series = series.cast(pl.Datetime("us"))
    if not isinstance(series.dtype, pl.Datetime):
        raise LabError(f"at in {source} is {series.dtype}; it must be a timestamp (or ISO 8601 text)")
    if series.null_count():
        raise LabError(f"{series.null_count()} row(s) of {source} have no at time; fill them or drop the column")
    if series.dtype.time_zone is not None:
        series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return series.cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]")


def _pre(series, source: str) -> np.ndarray:
    if not (series.dtype.is_numeric() or series.dtype == pl.Boolean):
        raise LabError(f"pre in {source} is {series.dtype}; the pre-period covariate must be numeric")
    return series.cast(pl.Float64).fill_null(float("nan")).to_numpy()


def read_outcomes(outcomes: Any, *, metric_kind: str, experiment: str, pre: Any = None) -> Outcomes:
    """Read and check an outcomes table (see the module docstring).

    ``pre``, when given, is a separate table with ``unit_id`` and ``pre`` joined onto the
    outcomes by unit (units it lacks get NaN). Raises LabError naming the fix for a
    missing file or column, repeated units, a value that is not 0/1 for a proportion
    metric, and unreadable types.
    """
    source = describe(outcomes)
    frame = read_table(outcomes, "outcomes", text_columns=("unit_id", "variant"))
    _missing(frame, REQUIRED, source, "outcomes",
             "An outcomes table needs unit_id and value (optional: at, pre, variant).")
    if frame.height == 0:
        raise LabError(f"outcomes {source} has no rows; nothing to report")
    if pre is not None:
        if "pre" in frame.columns:
            raise LabError(f"outcomes {source} already has a pre column; give the covariate once")
        pre_source = describe(pre)
        pre_frame = read_table(pre, "pre-period table", text_columns=("unit_id",))
        _missing(pre_frame, ("unit_id", "pre"), pre_source, "pre-period table",
                 "It needs unit_id and pre (the covariate measured before assignment).")
        _unit_ids(pre_frame["unit_id"], pre_source)
        key_type = frame["unit_id"].dtype
        try:
            pre_frame = pre_frame.select(pl.col("unit_id").cast(key_type), "pre")
        except pl.exceptions.PolarsError:
            raise LabError(f"unit_id of {pre_source} ({pre_frame['unit_id'].dtype}) cannot be matched with "
                           f"unit_id of {source} ({key_type}); give both the same type") from None
        frame = frame.join(pre_frame, on="unit_id", how="left", maintain_order="left")
    variants = None
    if "variant" in frame.columns:
        column = frame["variant"]
        if column.dtype not in (pl.String, pl.Categorical, pl.Enum):
            raise LabError(f"variant in {source} is {column.dtype}; it must hold variant names (text)")
        variants = column.cast(pl.String).to_list()
    return Outcomes(
        source=source,
        unit_ids=_unit_ids(frame["unit_id"], source),
        values=_values(frame["value"], source, metric_kind, experiment),
        at=_times(frame["at"], source) if "at" in frame.columns else None,
        pre=_pre(frame["pre"], source) if "pre" in frame.columns else None,
        variants=variants,
    )


def as_naive_utc(moment: dt.datetime | str | None) -> dt.datetime | None:
    """A datetime (or ISO 8601 text) as naive UTC; naive input is taken as UTC already."""
    if moment is None:
        return None
    if isinstance(moment, str):
        try:
            moment = dt.datetime.fromisoformat(moment)
        except ValueError:
            raise LabError(f"cannot read {moment!r} as a time; write ISO 8601, e.g. 2018-09-30T00:00:00") from None
    if isinstance(moment, dt.date) and not isinstance(moment, dt.datetime):
        moment = dt.datetime.combine(moment, dt.time())
    if not isinstance(moment, dt.datetime):
        raise LabError(f"expected a datetime, got {type(moment).__name__} {moment!r}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment


# --------------------------------------------------------------------------- which arm each unit was in

def _weights_of(value: Any) -> dict | None:
    """The weights in an audit value: a bare weights dict or one under ``"weights"``."""
    if isinstance(value, dict):
        weights = value.get("weights", value)
        if isinstance(weights, dict) and weights and all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights.values()):
            return dict(weights)
    return None


def _replay(experiment, audit: list[dict]):
    """The experiment as it was just before it stopped, rebuilt from the audit log (the
    created experiment, then every weight change in order, so the bucket layout is the
    one that served), and the weights it ran with, in order. None when the log cannot
    rebuild it."""
    created = next((r for r in audit if r["action"] == "create"), None)
    if created is None or not isinstance(created["new"], dict):
        return None, []
    try:
        replayed = Experiment.from_dict(created["new"])
        history, running = [], False
        for row in audit:
            if row["action"] == "start":
                running = True
                history.append(replayed.weights)
            elif row["action"] == "set_weights" and _weights_of(row["new"]):
                replayed = replayed.with_weights(_weights_of(row["new"]))
                if running:
                    history.append(replayed.weights)
            elif row["action"] == "stop":
                break
    except LabError:
        return None, []
    return replayed.with_status("running"), history


def analysed_experiment(experiment, audit: list[dict]):
    """The experiment as it ran, and warnings. Returns (experiment, status, warnings).

    A stopped experiment serves control to everyone, so its units are analysed with the
    layout it had when it stopped, rebuilt from the audit log. Raises LabError for a draft.
    """
    warnings: list[str] = []
    if experiment.status == "draft":
        raise LabError(f"{experiment.kind} {experiment.name!r} is a draft: no unit has been assigned yet; "
                       f"start it with `lab experiment start {experiment.name}`")
    replayed, history = _replay(experiment, audit)
    stop_row = next((r for r in reversed(audit) if r["action"] == "stop"), None)
    analysed = experiment
    if experiment.status == "stopped":
        last = _weights_of(stop_row["old"]) if stop_row else None
        if replayed is not None and (last is None or replayed.weights == last):
            analysed = replayed
        elif last is not None:
            analysed = experiment.with_weights(last).with_status("running")
            warnings.append("the audit log could not rebuild the bucket layout it ran with; units are assigned "
                            "from its last weights, which may differ from what was served for some units")
        else:
            analysed = experiment.with_status("running")
            warnings.append("no weights on record from while it ran; the stored weights are used")
    distinct = []
    for w in history:
        if w not in distinct:
            distinct.append(w)
    if len(distinct) > 1:
        steps = " then ".join(",".join(f"{k}={v:g}" for k, v in w.items()) for w in distinct)
        warnings.append(
            f"weights changed while it ran ({steps}): a unit seen before a change may have switched arms, "
            "and the SRM check uses the last weights; give a variant column from the exposure log to "
            "analyse the arms as served")
    status = {"status": experiment.status, "stopped_at": None, "stopped_by": None, "stop_reason": None}
    if experiment.status == "stopped" and stop_row is not None:
        status.update(stopped_at=stop_row["at"], stopped_by=stop_row["actor"], stop_reason=stop_row["reason"])
    return analysed, status, warnings


def assign_arms(analysed, data: Outcomes) -> tuple[list, dict, list[str]]:
    """Each unit's arm: the logged variant when the table has one, else the sticky hash.

    Returns (arm per row, None outside the experiment), a summary of the assignment, and
    warnings. A logged variant the experiment lacks is a LabError.
    """
    assigner = Assigner([analysed])
    derived = [assigner.variant(analysed.name, u) for u in data.unit_ids]
    summary = {"derived": data.variants is None, "disagreements": 0, "examples": []}
    warnings: list[str] = []
    arms = derived
    if data.variants is not None:
        names = {v.name for v in analysed.variants}
        unknown = sorted({v for v in data.variants if v is not None and v not in names})
        if unknown:
            raise LabError(f"the variant column of {data.source} names {', '.join(map(repr, unknown))}, which "
                           f"experiment {analysed.name!r} does not have; its variants are "
                           f"{', '.join(sorted(names))}")
        arms = data.variants
        differ = [(u, logged, mine) for u, logged, mine in zip(data.unit_ids, arms, derived) if logged != mine]
        summary.update(disagreements=len(differ), examples=[
            {"unit_id": u, "logged": logged, "assigned": mine} for u, logged, mine in differ[:5]])
        if differ:
            warnings.append(
                f"{len(differ)} unit(s) were logged in another arm than the sticky assignment gives "
                f"(e.g. unit {differ[0][0]!r}: logged {differ[0][1]!r}, assigned {differ[0][2]!r}); the logged "
                "arm is analysed. Check the exposure logging, or weight changes while it ran")
    outside = sum(1 for a in arms if a is None)
    summary.update(outside=outside, in_experiment=len(arms) - outside)
    if outside:
        warnings.append(f"{outside} unit(s) are not in the experiment (outside its layer share, or no variant "
                        "logged); they are left out")
    if outside == len(arms):
        raise LabError(f"none of the {len(arms)} units of {data.source} is in experiment {analysed.name!r}; "
                       "check that unit_id holds the experiment's unit "
                       f"({analysed.unit}) and that the outcomes belong to this experiment")
    return arms, summary, warnings
