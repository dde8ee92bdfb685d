"""Training-serving skew: the features serving logged, against the offline recomputation.

The prediction ledger keeps, for every prediction, the request as received and the model
inputs the server actually used (``lab.serving.ledger``). Two things are built from
those rows, for any lab's ``ModelSpec``:

- ``logged_training_set``: a training set from logs. One row per logged prediction with
  the request fields, the logged features, the model version and score, and the label
  joined by event id from the spec's offline source, but only where the label's time
  (event time plus the label delay) has passed.
- ``skew_report``: for the logged (entity, time) pairs, the features recomputed offline
  exactly as a training set computes them (the spec's request-time transform, then the
  point-in-time join of the same views as of the request's time), compared feature by
  feature: share of matches within a tolerance, mean absolute difference, PSI of the
  logged against the recomputed distribution, and how often the online store served a
  view's defaults. ``SkewReport.check`` is the gate: features above the thresholds of
  ``[tool.lab.skew]`` raise ``SkewGateError`` naming them.

The request's time is its wall clock with the offset dropped, as the server reads it
(``lab.serving.predictor.request_time``). This module takes ledger rows as plain dicts
(the ``lab.steps.monitoring`` step and the CLI read them), so it needs no serving code.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from lab.config import SkewConfig
from lab.errors import LabError
from lab.features.stores import OfflineStore
from lab.features.views import FeatureView
from lab.modelspec import ModelSpec

REQUEST_TIME = "request"
"""The group of a feature no view makes: computed at request time from the request itself."""

_ROW = "__lab_logged_row"
_POLARS = {"int": pl.Int64, "float": pl.Float64, "str": pl.Utf8, "bool": pl.Boolean, "datetime": pl.Datetime("us")}
_PSI_FLOOR = 1e-4  # a bin's share below this counts as this: an empty bin is not an infinite PSI


class SkewGateError(LabError):
    """Features whose training-serving skew is above the declared thresholds."""


# -- the logged predictions, as frames -------------------------------------------------

@dataclass(frozen=True)
class LoggedPredictions:
    """Ledger rows of one model as three aligned frames (row i of each is prediction i).

    ``requests``: the spec's request fields, typed (the timestamp and every datetime as
    the wall clock the server used); ``features``: the logged model inputs (Float64);
    ``meta``: ``request_id``, ``at``, ``model_name``, ``model_version``, ``score`` and one
    ``defaults_<view>`` flag per view (the online store served that view's defaults).
    """

    requests: pl.DataFrame
    features: pl.DataFrame
    meta: pl.DataFrame

    @property
    def height(self) -> int:
        return self.requests.height


def _wall_clock(value: Any, name: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise LabError(f"a logged request's {name} {value!r} is not an ISO date-time") from None
    if not isinstance(value, dt.datetime):
        raise LabError(f"a logged request's {name} {value!r} is not a date-time")
    return value.replace(tzinfo=None)


def logged_predictions(spec: ModelSpec, rows: Sequence[dict]) -> LoggedPredictions:
    """``rows`` (``lab.serving.ledger.read_predictions`` dicts) as ``LoggedPredictions``.

    A row whose request lacks one of the spec's fields, or whose features lack one of its
    inputs, was logged for another shape of the model: ``LabError`` naming the field.
    """
    requests: dict[str, pl.Series] = {}
    for f in spec.request.fields:
        values = []
        for row in rows:
            if f.name not in row["request"]:
                raise LabError(f"logged request {row.get('request_id')} of model {row.get('model_name')!r} has no "
                               f"field {f.name!r}: it was logged for another request schema; select rows with "
                               f"--start/--end (or a model version) that match the spec")
            value = row["request"][f.name]
            values.append(_wall_clock(value, f.name) if f.type == "datetime" else value)
        try:
            requests[f.name] = pl.Series(f.name, values, dtype=_POLARS[f.type])
        except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LabError(f"logged request field {f.name!r} does not hold {f.type} values: {first}") from None
    features: dict[str, list] = {name: [] for name in spec.features}
    for row in rows:
        logged = row["features"]
        for name, column in features.items():
            if name not in logged:
                raise LabError(f"logged prediction {row.get('request_id')} (model {row.get('model_name')!r} "
                               f"v{row.get('model_version')}) has no feature {name!r}; it was made by a model with "
                               f"other inputs: select one version with --version")
            column.append(logged[name])
    views = sorted({v for row in rows for v in row["defaults"]})
    meta = {
        "request_id": pl.Series([row["request_id"] for row in rows], dtype=pl.Utf8),
        "at": pl.Series([dt.datetime.fromisoformat(row["at"]) for row in rows],
                        dtype=pl.Datetime("us", "UTC")),
        "model_name": pl.Series([row["model_name"] for row in rows], dtype=pl.Utf8),
        "model_version": pl.Series([row["model_version"] for row in rows], dtype=pl.Int64),
        "score": pl.Series([row["score"] for row in rows], dtype=pl.Float64),
        **{f"defaults_{v}": pl.Series([bool(row["defaults"].get(v, False)) for row in rows], dtype=pl.Boolean)
           for v in views},
    }
    return LoggedPredictions(
        requests=pl.DataFrame(requests, schema={f.name: _POLARS[f.type] for f in spec.request.fields}),
        features=pl.DataFrame({n: pl.Series(n, v, dtype=pl.Float64, strict=False) for n, v in features.items()},
                              schema={n: pl.Float64 for n in spec.features}),
        meta=pl.DataFrame(meta),
    )


def select_days(logged: LoggedPredictions, spec: ModelSpec, start: dt.date | None,
                end: dt.date | None) -> LoggedPredictions:
    """The predictions whose request time falls on the days ``start`` through ``end``
    (inclusive, wall clock; None: unbounded)."""
    day = logged.requests[spec.time_column].dt.date()
    keep = pl.Series([True] * logged.height, dtype=pl.Boolean)
    if start is not None:
        keep = keep & (day >= start)
    if end is not None:
        keep = keep & (day <= end)
    return LoggedPredictions(logged.requests.filter(keep), logged.features.filter(keep), logged.meta.filter(keep))


def select_in_source(logged: LoggedPredictions, spec: ModelSpec, offline: OfflineStore) -> LoggedPredictions:
    """The predictions whose event id the spec's offline source holds: the events a
    training set would have. A lab whose ``request_row`` folds the request's own event
    into a view's values (as training sees it in the source) compares like with like
    only on these."""
    try:
        ids = pl.from_arrow(offline.read_source(spec.source, [spec.id_column])).to_series()
    except LabError as exc:
        raise LabError(f"cannot keep the events in {spec.source!r}: {exc}") from None
    id_type = logged.requests.schema[spec.request.id]
    known = ids.cast(id_type, strict=False).drop_nulls().unique().to_frame(spec.request.id)
    rows = logged.requests.select(spec.request.id).with_row_index(_ROW).join(known, on=spec.request.id, how="semi")
    keep = pl.Series([False] * logged.height, dtype=pl.Boolean).scatter(rows[_ROW].to_list(), True)
    return LoggedPredictions(logged.requests.filter(keep), logged.features.filter(keep), logged.meta.filter(keep))


# -- the offline recomputation ---------------------------------------------------------

def recompute_features(offline: OfflineStore, views: Sequence[FeatureView], spec: ModelSpec,
                       requests: pl.DataFrame) -> pl.DataFrame:
    """The spec's features for each logged request as a training set computes them: the
    request-time transform (``spec.request_frame``), then every view's point-in-time
    features as of the request's time. One row per request, in order; Float64 columns
    named as ``spec.features`` (null where the offline join has no value)."""
    missing = [v.entity for v in views if v.entity not in requests.columns]
    if missing:
        raise LabError(f"model {spec.name!r} reads views keyed by {', '.join(sorted(set(missing)))}, which its "
                       f"request does not carry; the offline values cannot be recomputed")
    if requests.height == 0:
        return pl.DataFrame(schema={n: pl.Float64 for n in spec.features})
    frame = spec.request_frame(requests.with_row_index(_ROW))
    if frame.height != requests.height:
        raise LabError(f"model {spec.name!r}: its request_frame returned {frame.height} rows for "
                       f"{requests.height}; it must add columns, not drop or add rows")
    joined = pl.from_arrow(offline.get_historical_features(frame.to_arrow(), list(views), spec.time_column))
    if _ROW in joined.columns:
        joined = joined.sort(_ROW)
    absent = [n for n in spec.features if n not in joined.columns]
    if absent:
        raise LabError(f"the offline recomputation makes no column(s) {', '.join(absent)}: neither the "
                       f"request-time transform nor a view ({', '.join(v.name for v in views) or 'none'}) makes them")
    return joined.select(pl.col(n).cast(pl.Float64, strict=False) for n in spec.features)


# -- comparing -------------------------------------------------------------------------

def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (finite values only).

    Bins are the reference's quantiles (``bins`` of them); when the two samples hold at
    most ``bins`` distinct values together, each value is its own bin. A bin's share is
    floored at 1e-4, so a bin one side leaves empty adds a large but finite term. 0 when
    both are empty or identical."""
    reference = reference[np.isfinite(reference)]
    current = current[np.isfinite(current)]
    if reference.size == 0 or current.size == 0:
        return 0.0 if reference.size == current.size else math.inf
    distinct = np.unique(np.concatenate([reference, current]))
    if distinct.size <= bins:
        ref_counts = np.searchsorted(distinct, reference)
        cur_counts = np.searchsorted(distinct, current)
        expected = np.bincount(ref_counts, minlength=distinct.size)
        actual = np.bincount(cur_counts, minlength=distinct.size)
    else:
        edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])
        expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1)
        actual = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1)
    e = np.maximum(expected / reference.size, _PSI_FLOOR)
    a = np.maximum(actual / current.size, _PSI_FLOOR)
    return float(max(0.0, np.sum((a - e) * np.log(a / e))))


@dataclass(frozen=True)
class FeatureSkew:
    """One feature's comparison over ``rows`` logged predictions."""

    feature: str
    view: str  # the view that makes it, or ``REQUEST_TIME``
    rows: int
    matches: int  # logged and recomputed within the tolerance
    match_share: float
    mean_abs_diff: float | None  # over the rows where both values exist
    psi: float
    recomputed_null: int  # rows the offline join gives no value for (a mismatch)
    defaults_rows: int  # rows where the online store served the view's defaults
    failing: tuple[str, ...] = ()  # why the gate fails it: "mismatch", "psi"

    @property
    def mismatch_share(self) -> float:
        return 1.0 - self.match_share


@dataclass(frozen=True)
class SkewReport:
    """Per-feature skew of one model's logged predictions, and the thresholds it was judged by."""

    model: str
    rows: int
    thresholds: dict
    features: tuple[FeatureSkew, ...]
    defaults: dict = field(default_factory=dict)  # view -> rows served its defaults
    window: dict = field(default_factory=dict)  # what was read: model versions, first and last request time

    @property
    def failing(self) -> list[FeatureSkew]:
        return [f for f in self.features if f.failing]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["failing"] = [f.feature for f in self.failing]
        out["failing_views"] = sorted({f.view for f in self.failing})
        out["passed"] = not self.failing
        for item in out["features"]:
            item["mismatch_share"] = 1.0 - item["match_share"]
            item["failing"] = list(item["failing"])
            if not math.isfinite(item["psi"]):  # no recomputed value at all: JSON has no infinity
                item["psi"] = None
        return out

    def table(self) -> str:
        """A short text table: one line per feature, failing ones marked."""
        head = f"{'feature':<40} {'view':<20} {'match':>7} {'mean |d|':>10} {'PSI':>8} {'defaults':>8}"
        lines = [f"skew of {self.model}: {self.rows} logged prediction(s); gate: mismatch <= "
                 f"{self.thresholds['max_mismatch_share']:.2%}, PSI <= {self.thresholds['max_psi']:g}", head]
        for f in self.features:
            mad = "-" if f.mean_abs_diff is None else f"{f.mean_abs_diff:.4g}"
            mark = "  FAIL " + ",".join(f.failing) if f.failing else ""
            lines.append(f"{f.feature:<40} {f.view:<20} {f.match_share:>7.1%} {mad:>10} {f.psi:>8.3f} "
                         f"{f.defaults_rows:>8}{mark}")
        lines.append("passed" if not self.failing else
                     f"FAILED: {len(self.failing)} feature(s) in {', '.join(sorted({f.view for f in self.failing}))}")
        return "\n".join(lines)

    def check(self, where: str = "") -> None:
        """The gate: ``SkewGateError`` naming every failing feature (by view), or nothing."""
        if not self.failing:
            return
        by_view: dict[str, list[str]] = {}
        for f in self.failing:
            by_view.setdefault(f.view, []).append(
                f"{f.feature} (match {f.match_share:.1%}, PSI {f.psi:.3g})")
        named = "; ".join(f"{view}: {', '.join(items)}" for view, items in sorted(by_view.items()))
        t = self.thresholds
        raise SkewGateError(
            f"training-serving skew in {len(self.failing)} feature(s) of {self.model!r} above [tool.lab.skew] "
            f"(mismatch share > {t['max_mismatch_share']:g} or PSI > {t['max_psi']:g}) — {named}"
            + (f"; report: {where}" if where else "")
            + "; rematerialize or fix the online values, or align the request-time transform with request_row")


def _feature_views(spec: ModelSpec, views: Sequence[FeatureView]) -> dict[str, str]:
    out = {}
    for view in views:
        for name in view.feature_names:
            out.setdefault(name, view.name)
    return {name: out.get(name, REQUEST_TIME) for name in spec.features}


def skew_report(spec: ModelSpec, views: Sequence[FeatureView], logged: LoggedPredictions,
                recomputed: pl.DataFrame, settings: SkewConfig | None = None) -> SkewReport:
    """Compare ``logged.features`` with ``recomputed`` (``recompute_features``) per feature,
    judged by ``settings`` (``[tool.lab.skew]``)."""
    settings = settings or SkewConfig()
    if recomputed.height != logged.height:
        raise LabError(f"{recomputed.height} recomputed rows for {logged.height} logged predictions")
    owner = _feature_views(spec, views)
    defaults = {v.name: int(logged.meta[f"defaults_{v.name}"].sum()) if f"defaults_{v.name}" in logged.meta.columns
                else 0 for v in views}
    tol = settings.tolerance
    out = []
    for name in spec.features:
        served = logged.features[name].to_numpy().astype(np.float64)
        offline = recomputed[name].to_numpy().astype(np.float64)  # null -> nan
        both = np.isfinite(served) & np.isfinite(offline)
        close = both & (np.abs(served - offline) <= np.maximum(tol, tol * np.abs(offline)))
        rows = int(served.size)
        matches = int(close.sum())
        share = matches / rows if rows else 1.0
        mad = float(np.mean(np.abs(served[both] - offline[both]))) if both.any() else None
        index = psi(offline, served, settings.psi_bins)
        failing = tuple(why for why, bad in (("mismatch", 1.0 - share > settings.max_mismatch_share),
                                             ("psi", index > settings.max_psi)) if bad)
        view = owner[name]
        out.append(FeatureSkew(feature=name, view=view, rows=rows, matches=matches, match_share=share,
                               mean_abs_diff=mad, psi=index, recomputed_null=int(np.isnan(offline).sum()),
                               defaults_rows=defaults.get(view, 0), failing=failing))
    time = logged.requests[spec.time_column] if logged.height else None
    window = {
        "model_versions": sorted(set(logged.meta["model_version"].to_list())),
        "first_request": None if time is None else str(time.min()),
        "last_request": None if time is None else str(time.max()),
    }
    return SkewReport(model=spec.name, rows=logged.height, thresholds=asdict(settings), features=tuple(out),
                      defaults=defaults, window=window)


# -- a training set from logs ------------------------------------------------------------

def read_labels(offline: OfflineStore, spec: ModelSpec) -> tuple[pl.DataFrame | None, str]:
    """``(labels, why)``: the spec's source's id and label columns, or None and the reason
    there are none (no such source, or no label column in it)."""
    try:
        table = offline.read_source(spec.source, [spec.id_column, spec.label])
    except LabError as exc:
        return None, str(exc)
    labels = pl.from_arrow(table).unique(subset=[spec.id_column], keep="first", maintain_order=True)
    return labels, ""


def logged_training_set(spec: ModelSpec, logged: LoggedPredictions, labels: pl.DataFrame | None, *, label_delay: dt.timedelta, as_of: dt.datetime,
                        labelled_only: bool = False) -> tuple[pa.Table, dict]:
    """The logged predictions as a training set, and counts of what it holds.

    Columns: the request's id, time and entity fields, its other fields (one the model
    also has as a feature is kept as ``request_<name>``), the logged features in the
    spec's order, the label (when ``labels`` is given), then ``model_name``,
    ``model_version``, ``score``, ``request_id``, ``at`` and the ``defaults_<view>`` flags.
    The label is joined by event id and kept only where ``event time + label_delay <=
    as_of`` (wall clock): a label not yet due is null, as is one the source does not
    hold. ``labelled_only`` keeps only rows with a label. Rows in ledger order.
    """
    schema = spec.request
    first = [schema.id, schema.timestamp, *[e for e in schema.entities if e not in (schema.id, schema.timestamp)]]
    ordered = [*first, *[n for n in schema.names if n not in first]]
    renamed = {n: f"request_{n}" for n in ordered if n in spec.features}
    clash = [new for new in renamed.values() if new in spec.features or new in schema.names]
    if clash:
        raise LabError(f"cannot name request field(s) {', '.join(clash)} beside the features of {spec.name!r}")
    frame = pl.concat([logged.requests.select(ordered).rename(renamed), logged.features], how="horizontal")
    counts = {"rows": logged.height}
    if labels is not None:
        id_type = logged.requests.schema[schema.id]
        keyed = labels.select(pl.col(spec.id_column).cast(id_type, strict=False).alias(schema.id),
                              pl.col(spec.label))
        if spec.label in frame.columns:
            raise LabError(f"the label {spec.label!r} of {spec.name!r} is also a request field or a feature")
        joined = frame.with_row_index(_ROW).join(keyed, on=schema.id, how="left").sort(_ROW).drop(_ROW)
        due = (pl.col(schema.timestamp) + pl.duration(microseconds=label_delay // dt.timedelta(microseconds=1))
               <= pl.lit(as_of.replace(tzinfo=None)))
        frame = joined.with_columns(pl.when(due).then(pl.col(spec.label)).otherwise(None).alias(spec.label))
        due_rows = int(joined.select(due.sum()).item())
        counts.update(labelled=int(frame[spec.label].is_not_null().sum()), not_due=logged.height - due_rows)
        counts["not_found"] = due_rows - counts["labelled"]
    frame = pl.concat([frame, logged.meta], how="horizontal")
    if labelled_only:
        if labels is None:
            raise LabError(f"no labels to keep rows by: {spec.source!r} holds none for {spec.name!r}")
        frame = frame.filter(pl.col(spec.label).is_not_null())
    counts["written"] = frame.height
    return frame.to_arrow(), counts
