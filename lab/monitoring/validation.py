"""Data validation before training: what a lab expects of its data, checked before a model
is trained on it.

A lab declares ``Expectations`` per offline source and per feature view through the
``lab_expectations`` hook (a domain plugin reads them from what it knows of its data);
``validate`` checks one frame against one declaration and returns a ``ValidationReport``,
a list of ``Check`` results. The train step (``lab.steps.training``) runs every
declaration of the model's source and views first, and a failing batch raises
``ValidationFailed`` there, so nothing downstream runs on it (docs/monitoring.md).

The checks, each reported under ``kind:column`` (``nulls:AMOUNT``, ``unique:ID``, ...):

- ``schema``: each declared column is present and of its type family (``int``, ``float``,
  ``number``, ``str``, ``bool``, ``datetime``, ``date``);
- ``rows``: the total row count within ``(min, max)``;
- ``per_day_rows`` and ``per_day_vs_median``: rows per calendar day of ``time_column``
  (days inside the span with no row count 0) within absolute bounds, or as a multiple
  of the median day (a day loaded twice shows as about 2x the median);
- ``nulls``: the share of missing values (null, or NaN in a float column) at most the
  declared share;
- ``range``: every present value within ``[lo, hi]`` (inclusive; None leaves a side
  open; NaN is out of range); ``median``: the median within ``[lo, hi]``, which a unit
  change (cents for euros) moves even when a few large values are legitimate;
- ``unique``: no two rows share a declared key (a column or a tuple of columns);
- ``label_rate``: the share of positive labels (a 0/1 or boolean ``label`` column);
- ``drift``: numeric columns against a reference (the last training set), judged by
  ``lab.monitoring.drift.compare`` with the declared threshold; with no reference the
  check is skipped with a note.

A declaration that cannot be checked (an unknown column, ``lo > hi``) is a ``LabError``
naming the fix, never a failed check: a failed check always means the data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import polars as pl

from lab.atomic import atomic_write_text
from lab.errors import ConfigError, LabError

TYPES = ("int", "float", "number", "str", "bool", "datetime", "date")
"""The type families ``Expectations.schema`` may name (``number``: int or float)."""

CHECK_KINDS = ("schema", "rows", "per_day_rows", "per_day_vs_median", "nulls", "range", "median", "unique",
               "label_rate", "drift")
"""Every kind of check, in report order; ``[tool.lab.validation] skip`` names kinds to leave out."""

VALIDATION_FAILED = "data.validation_failed"
"""The event emitted when a batch fails validation (payload: model, target(s), checks, report)."""

REPORT_FORMAT = "lab-validation-report-v1"
_EXAMPLES = 5


class ValidationFailed(LabError):
    """The data failed declared expectations; ``report`` holds every check."""

    def __init__(self, message: str, report: "ValidationReport | None" = None):
        super().__init__(message)
        self.report = report


# -- declarations -------------------------------------------------------------------------

def _bounds(value: Any, what: str, *, kinds: tuple[type, ...], least: float | None = None,
            most: float | None = None) -> tuple | None:
    """``(lo, hi)`` checked: a pair of ``kinds`` or None, not both None, ``lo <= hi``."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{what} must be a pair (lo, hi), None leaving a side open; got {value!r}")
    lo, hi = value
    for side in (lo, hi):
        if side is None:
            continue
        if isinstance(side, bool) or not isinstance(side, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{what}: bound {side!r} must be a {names} (or None for an open side)")
        if isinstance(side, float) and not math.isfinite(side):
            raise ConfigError(f"{what}: bound {side!r} must be finite (None leaves a side open)")
        if (least is not None and side < least) or (most is not None and side > most):
            raise ConfigError(f"{what}: bound {side!r} must lie between {least} and {most}")
    if lo is None and hi is None:
        raise ConfigError(f"{what}: give at least one bound of (lo, hi); (None, None) checks nothing")
    if lo is not None and hi is not None:
        try:
            wrong = lo > hi
        except TypeError:
            raise ConfigError(f"{what}: bounds {lo!r} and {hi!r} cannot be compared; give two of one kind") from None
        if wrong:
            raise ConfigError(f"{what}: lo {lo!r} is above hi {hi!r}; swap them")
    return (lo, hi)


_NUMBER = (int, float)
_ORDERED = (int, float, dt.date)  # dt.datetime is a dt.date


def _key(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class Expectations:
    """What a lab expects of one offline source or feature view (``target``).

    Every mapping is keyed by column. ``schema`` maps a column to its type family
    (``TYPES``); when it is given, every column another field names must be in it (a
    column missing from the data then fails ``schema:COL``, the checks that read it are
    skipped). ``ranges`` and ``medians`` are inclusive ``(lo, hi)`` pairs, numbers or
    dates/datetimes, None for an open side. ``max_null_share`` is a share in [0, 1].
    ``rows`` and ``per_day_rows`` bound row counts (whole numbers); ``per_day_vs_median``
    bounds each day's rows as a multiple of the median day's, e.g. ``(0.7, 1.4)``.
    ``label_rate`` bounds the share of positives of ``label`` (filled from the model's
    spec by the train step). ``unique`` lists keys: a column name or a tuple of names.
    ``max_drift`` is a drift score threshold (``lab.monitoring.drift``) for every numeric
    column but the keys, the time column and the label, or a mapping column -> threshold.
    ``time_column`` dates the rows for the per-day checks (the train step fills it with the
    spec's event time).
    """

    target: str
    schema: Mapping[str, str] = field(default_factory=dict)
    ranges: Mapping[str, tuple] = field(default_factory=dict)
    medians: Mapping[str, tuple] = field(default_factory=dict)
    max_null_share: Mapping[str, float] = field(default_factory=dict)
    rows: tuple | None = None
    per_day_rows: tuple | None = None
    per_day_vs_median: tuple | None = None
    label_rate: tuple | None = None
    unique: Sequence[str | tuple[str, ...]] = ()
    max_drift: float | Mapping[str, float] | None = None
    time_column: str | None = None
    label: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target.strip():
            raise ConfigError(f"expectations need a target (a source or feature view name), got {self.target!r}")
        where = f"expectations for {self.target!r}"
        maps = {}
        for name in ("schema", "ranges", "medians", "max_null_share"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {name} must be a mapping column -> ..., got {value!r}")
            if any(not isinstance(k, str) or not k for k in value):
                raise ConfigError(f"{where}: {name} keys must be column names, got {list(value)!r}")
            maps[name] = dict(value)
        for column, kind in maps["schema"].items():
            if kind not in TYPES:
                raise ConfigError(f"{where}: schema gives {column!r} the type {kind!r}; use one of {', '.join(TYPES)}")
        maps["ranges"] = {c: _bounds(v, f"{where}: ranges[{c!r}]", kinds=_ORDERED) for c, v in maps["ranges"].items()}
        maps["medians"] = {c: _bounds(v, f"{where}: medians[{c!r}]", kinds=_ORDERED)
                           for c, v in maps["medians"].items()}
        for column, share in maps["max_null_share"].items():
            if isinstance(share, bool) or not isinstance(share, _NUMBER) or not 0 <= share <= 1:
                raise ConfigError(f"{where}: max_null_share[{column!r}] must be a share between 0 and 1, got {share!r}")
        for name, value in maps.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "rows", _bounds(self.rows, f"{where}: rows", kinds=(int,), least=0))
        object.__setattr__(self, "per_day_rows",
                           _bounds(self.per_day_rows, f"{where}: per_day_rows", kinds=(int,), least=0))
        object.__setattr__(self, "per_day_vs_median",
                           _bounds(self.per_day_vs_median, f"{where}: per_day_vs_median", kinds=_NUMBER, least=0))
        object.__setattr__(self, "label_rate",
                           _bounds(self.label_rate, f"{where}: label_rate", kinds=_NUMBER, least=0, most=1))
        if isinstance(self.unique, str):
            object.__setattr__(self, "unique", (self.unique,))
        keys = []
        for key in self.unique:
            columns = _key(key) if isinstance(key, (str, tuple, list)) else ()
            if not columns or any(not isinstance(c, str) or not c for c in columns):
                raise ConfigError(f"{where}: unique lists keys, each a column name or a tuple of names; got {key!r}")
            keys.append(columns[0] if len(columns) == 1 else tuple(columns))
        object.__setattr__(self, "unique", tuple(keys))
        drift = self.max_drift
        if drift is not None:
            pairs = drift.items() if isinstance(drift, Mapping) else [("every numeric column", drift)]
            for column, limit in pairs:
                if isinstance(limit, bool) or not isinstance(limit, _NUMBER) or not limit > 0 or not math.isfinite(limit):
                    raise ConfigError(f"{where}: max_drift for {column} must be a drift score above 0, got {limit!r}")
            if isinstance(drift, Mapping):
                object.__setattr__(self, "max_drift", dict(drift))
        for name in ("time_column", "label"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}: {name} must be a column name or None, got {value!r}")
        if self.schema:
            undeclared = [c for c in self.columns if c not in self.schema]
            if undeclared:
                raise ConfigError(f"{where} name column(s) {', '.join(undeclared)} that its schema does not declare; "
                                  "add each to schema= with its type, or fix the name")

    @property
    def columns(self) -> list[str]:
        """Every column the declaration names, in first-mention order (the time column and
        the label only when a check reads them)."""
        named = [*self.schema, *self.ranges, *self.medians, *self.max_null_share]
        named += [c for key in self.unique for c in _key(key)]
        if isinstance(self.max_drift, Mapping):
            named += list(self.max_drift)
        if self.time_column and (self.per_day_rows or self.per_day_vs_median):
            named.append(self.time_column)
        if self.label and self.label_rate:
            named.append(self.label)
        return list(dict.fromkeys(named))

    def replace(self, **changes: Any) -> "Expectations":
        return dataclasses.replace(self, **changes)


# -- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One check's result: ``name`` is ``kind`` or ``kind:column`` (``unique:A+B`` for a
    key of several columns). A ``skipped`` check could not run (no reference, a missing
    column) and does not fail the report; ``message`` says why."""

    name: str
    kind: str
    target: str
    passed: bool
    observed: Any
    expected: Any
    message: str
    column: str | None = None
    skipped: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ValidationReport:
    """The checks of one or more targets. ``passed`` when none failed (skipped ones do
    not fail); ``meta`` holds per target the rows read and what the data was."""

    checks: list[Check] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.skipped]

    @property
    def failed_names(self) -> list[str]:
        """``target name`` of each failed check, e.g. ``transactions nulls:AMOUNT``."""
        return [f"{c.target} {c.name}" for c in self.failed]

    def check(self, target: str, name: str) -> Check:
        """The check ``name`` of ``target``; KeyError when the report has none."""
        for c in self.checks:
            if c.target == target and c.name == name:
                return c
        raise KeyError(f"{target} {name}")

    @classmethod
    def merge(cls, reports: Sequence["ValidationReport"], **meta: Any) -> "ValidationReport":
        """One report of several (each target's ``meta`` kept under ``targets``)."""
        targets: dict = {}
        for r in reports:
            targets.update(r.meta.get("targets", {}))
        return cls([c for r in reports for c in r.checks], {**meta, "targets": targets})

    def to_dict(self) -> dict:
        return {"format": REPORT_FORMAT, "passed": self.passed, "failed": self.failed_names,
                "skipped": [f"{c.target} {c.name}" for c in self.skipped], "meta": self.meta,
                "checks": [c.to_dict() for c in self.checks]}

    def text(self) -> str:
        """A plain table: one line per check, failures first."""
        rows = sorted(self.checks, key=lambda c: (c.passed, c.skipped))
        lines = [f"{'status':<7} {'target':<20} {'check':<44} message"]
        for c in rows:
            status = "FAIL" if not c.passed else ("skip" if c.skipped else "ok")
            lines.append(f"{status:<7} {c.target:<20} {c.name:<44} {c.message}")
        verdict = "passed" if self.passed else f"FAILED: {len(self.failed)} check(s)"
        lines.append(f"{len(self.checks)} check(s), {len(self.skipped)} skipped: {verdict}")
        return "\n".join(lines)

    def failure_message(self, where: str) -> str:
        """One line naming each failed check and where the report is (``ValidationFailed``)."""
        parts = [f"{c.target} {c.name} ({c.message})" for c in self.failed]
        return (f"the data failed {len(parts)} validation check(s): {'; '.join(parts)}. Report: {where} (and "
                f"{Path(where).with_suffix('.html')}). Fix the batch and rerun, or change the lab's expectations "
                "(its lab_expectations hook) or [tool.lab.validation]")

    def write(self, path: str | Path) -> str:
        """Write the JSON report to ``path`` and a small HTML page beside it (``.html``),
        each atomically; return the JSON's digest (sha256 of its bytes)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)
        atomic_write_text(path, text)
        atomic_write_text(path.with_suffix(".html"), self.html())
        return hashlib.sha256(text.encode()).hexdigest()

    def html(self) -> str:
        """A self-contained page: the verdict, then a table of every check (failures first)."""
        def cell(value: Any) -> str:
            text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
            return html.escape(text if len(text) <= 400 else text[:400] + " ...")

        rows = []
        for c in sorted(self.checks, key=lambda c: (c.passed, c.skipped)):
            status = "fail" if not c.passed else ("skip" if c.skipped else "ok")
            rows.append(f"<tr class={status}><td>{status}</td><td>{cell(c.target)}</td><td>{cell(c.name)}</td>"
                        f"<td>{cell(c.observed)}</td><td>{cell(c.expected)}</td><td>{cell(c.message)}</td></tr>")
        verdict = "passed" if self.passed else f"failed {len(self.failed)} check(s)"
        return ("<!doctype html><html><head><meta charset=utf-8><title>Data validation</title><style>"
                "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}"
                ".fail{background:#fdd}.skip{background:#eee}</style></head><body>"
                f"<h1>Data validation: {html.escape(verdict)}</h1>"
                f"<p>{len(self.checks)} check(s), {len(self.skipped)} skipped. {cell(self.meta.get('what', ''))}</p>"
                "<table><tr><th>status</th><th>target</th><th>check</th><th>observed</th><th>expected</th>"
                f"<th>message</th></tr>{''.join(rows)}</table></body></html>\n")


# -- checking ---------------------------------------------------------------------------------

def as_frame(data: Any) -> pl.DataFrame:
    """A polars DataFrame of ``data``: a polars DataFrame or LazyFrame, a pyarrow Table or
    record-batch reader, a DuckDB relation, or a pandas DataFrame."""
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, pl.LazyFrame):
        return data.collect()
    module = type(data).__module__
    if module.startswith("duckdb"):
        return data.pl()
    if module.startswith("pyarrow"):
        if hasattr(data, "read_all"):
            data = data.read_all()
        return pl.from_arrow(data)
    if module.startswith("pandas"):
        return pl.from_pandas(data)
    raise LabError(f"cannot validate a {type(data).__name__}: give a polars DataFrame, a pyarrow Table, "
                   "a DuckDB relation or a pandas DataFrame")


def _family(dtype: pl.DataType) -> str:
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype.is_numeric():
        return "number"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if dtype == pl.Date:
        return "date"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "str"
    return str(dtype)


def _fits(dtype: pl.DataType, kind: str) -> bool:
    family = _family(dtype)
    return family == kind or (kind == "number" and family in ("int", "float", "number"))


def _num(value: Any) -> Any:
    """A JSON-friendly scalar: floats rounded to 6 significant digits, dates as ISO text."""
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, (dt.date, dt.datetime, dt.timedelta)):
        return str(value)
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _interval(bounds: tuple) -> str:
    lo, hi = bounds
    return f"[{'-inf' if lo is None else _fmt(lo)}, {'inf' if hi is None else _fmt(hi)}]"


def _within(value: Any, bounds: tuple) -> bool:
    lo, hi = bounds
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _missing(frame: pl.DataFrame, column: str) -> pl.Expr:
    """Null, or NaN in a float column."""
    expr = pl.col(column).is_null()
    if frame.schema[column].is_float():
        expr = expr | pl.col(column).is_nan()
    return expr


class _Checks:
    """Builds one target's checks; ``absent`` columns (declared, not in the data) skip."""

    def __init__(self, target: str, frame: pl.DataFrame, absent: set[str], skip: Sequence[str]):
        self.target, self.frame, self.absent, self.skip = target, frame, absent, set(skip)
        self.out: list[Check] = []

    def add(self, kind: str, column: str | None, passed: bool, observed: Any, expected: Any, message: str,
            *, skipped: bool = False, name: str | None = None) -> None:
        name = name or (kind if column is None else f"{kind}:{column}")
        self.out.append(Check(name, kind, self.target, passed or skipped, observed, expected, message, column,
                              skipped))

    def wanted(self, kind: str, *columns: str, name: str | None = None) -> bool:
        """False (after recording a skip when a column is absent) when the check cannot or
        should not run."""
        if kind in self.skip:
            return False
        gone = [c for c in columns if c in self.absent]
        if gone:
            column = columns[0] if len(columns) == 1 else None
            self.add(kind, column, True, None, None, f"not checked: column {', '.join(gone)} is missing "
                     f"(see schema:{gone[0]})", skipped=True, name=name)
            return False
        return True


def _daily_counts(frame: pl.DataFrame, time_column: str) -> pl.DataFrame:
    """Rows per calendar day of ``time_column`` over its whole span, 0 for an empty day."""
    dtype = frame.schema[time_column]
    day = pl.col(time_column) if dtype == pl.Date else pl.col(time_column).dt.date()
    counts = frame.select(day.alias("day")).drop_nulls().group_by("day").agg(pl.len().alias("rows"))
    if counts.height == 0:
        return counts
    lo, hi = counts["day"].min(), counts["day"].max()
    span = pl.DataFrame({"day": pl.date_range(lo, hi, "1d", eager=True)})
    return span.join(counts, on="day", how="left").with_columns(pl.col("rows").fill_null(0).cast(pl.Int64)).sort("day")


def validate(data: Any, expectations: Expectations, *, reference: Any = None, reference_name: str = "the reference",
             no_reference: str = "no reference data set was given", skip: Sequence[str] = (),
             drift_config: Any = None) -> ValidationReport:
    """Check ``data`` (a frame, Arrow table or DuckDB relation: ``as_frame``) against
    ``expectations``; ``reference`` (same kinds, or None) is what the drift checks compare
    with, named ``reference_name`` in messages; with none, they are skipped with the note
    ``no_reference``. ``skip`` names check kinds to leave out (``CHECK_KINDS``).

    A drift check fails a column that ``lab.monitoring.drift.compare`` flags with the
    declared threshold as its effect threshold (by default the normed Wasserstein
    distance, and a KS test whose Benjamini-Hochberg q-value is below ``alpha``), the
    rest of its settings from ``drift_config`` (a ``DriftConfig``, ``[tool.lab.drift]``;
    default its defaults). Null shares are left to the nulls check.

    Raises ``LabError`` for a declaration the data cannot be checked against: a column
    named outside ``schema`` that the data lacks, a label rate with no label column, a
    per-day bound with no time column.
    """
    unknown_kinds = sorted(set(skip) - set(CHECK_KINDS))
    if unknown_kinds:
        raise ConfigError(f"unknown check kind(s) {', '.join(unknown_kinds)} to skip; kinds are: "
                          f"{', '.join(CHECK_KINDS)}")
    exp = expectations
    if not isinstance(exp, Expectations):
        raise LabError(f"validate takes one Expectations, got {type(exp).__name__}")
    frame = as_frame(data)
    where = f"expectations for {exp.target!r}"
    if exp.label_rate is not None and exp.label is None:
        raise LabError(f"{where}: label_rate needs the label column; set label= (the train step fills it from the "
                       "model's spec for its source and views)")
    if (exp.per_day_rows or exp.per_day_vs_median) and exp.time_column is None:
        raise LabError(f"{where}: per-day row bounds need time_column= (the column that dates each row)")
    missing = [c for c in exp.columns if c not in frame.columns]
    undeclared = [c for c in missing if c not in exp.schema]
    if undeclared:
        raise LabError(f"{where} name column(s) {', '.join(undeclared)} that the data does not have (it has "
                       f"{', '.join(frame.columns) or 'no columns'}); fix the name in the lab's lab_expectations, "
                       "or declare the column in schema= so that its absence fails the schema check")
    checks = _Checks(exp.target, frame, set(missing), skip)
    n = frame.height

    if "schema" not in checks.skip:
        for column, kind in exp.schema.items():
            if column in missing:
                checks.add("schema", column, False, None, kind, f"column {column} is missing")
                continue
            dtype = frame.schema[column]
            ok = _fits(dtype, kind)
            checks.add("schema", column, ok, str(dtype), kind,
                       f"{dtype} is {'' if ok else 'not '}of type {kind}")

    if exp.rows is not None and checks.wanted("rows"):
        ok = _within(n, exp.rows)
        checks.add("rows", None, ok, n, list(exp.rows), f"{n:,} rows, {'within' if ok else 'outside'} "
                   f"{_interval(exp.rows)}")

    if (exp.per_day_rows or exp.per_day_vs_median) and exp.time_column not in missing:
        tc = exp.time_column
        if _family(frame.schema[tc]) not in ("datetime", "date"):
            raise LabError(f"{where}: time_column {tc!r} is {frame.schema[tc]}, not a datetime or date column")
        days = _daily_counts(frame, tc)
        median = float(days["rows"].median()) if days.height else 0.0
        for kind, bounds in (("per_day_rows", exp.per_day_rows), ("per_day_vs_median", exp.per_day_vs_median)):
            if bounds is None or not checks.wanted(kind):
                continue
            if days.height == 0:
                checks.add(kind, None, True, None, list(bounds), "not checked: no dated rows", skipped=True)
                continue
            value = pl.col("rows") if kind == "per_day_rows" else pl.col("rows") / median if median else pl.lit(0.0)
            valued = days.with_columns(value.alias("value"))
            lo, hi = bounds
            bad = valued.filter(((pl.col("value") < lo) if lo is not None else pl.lit(False))
                                | ((pl.col("value") > hi) if hi is not None else pl.lit(False)))
            examples = [{"day": str(r["day"]), "rows": r["rows"], **({} if kind == "per_day_rows" else
                         {"vs_median": _num(r["value"])})} for r in bad.head(10).to_dicts()]
            observed = {"days": days.height, "median": _num(median), "min": _num(valued["value"].min()),
                        "max": _num(valued["value"].max()), "bad_days": bad.height, "examples": examples}
            what = "rows" if kind == "per_day_rows" else "rows as a multiple of the median day"
            if bad.height:
                shown = ", ".join(f"{e['day']}: {e['rows']:,}" + ("" if kind == "per_day_rows" else
                                  f" ({e['vs_median']:.3g}x)") for e in examples[:3])
                message = (f"{bad.height} of {days.height} day(s) with {what} outside {_interval(bounds)} "
                           f"(median {median:,.0f}/day): {shown}")
            else:
                message = (f"{days.height} day(s), {what} {_fmt(observed['min'])}..{_fmt(observed['max'])} within "
                           f"{_interval(bounds)}")
            checks.add(kind, None, not bad.height, observed, list(bounds), message)

    for column, share in exp.max_null_share.items():
        if not checks.wanted("nulls", column):
            continue
        count = int(frame.select(_missing(frame, column).sum()).item()) if n else 0
        observed_share = count / n if n else 0.0
        ok = observed_share <= share
        checks.add("nulls", column, ok, {"missing": count, "share": _num(observed_share)}, share,
                   f"{count:,} of {n:,} missing ({observed_share:.2%}), at most {share:.2%} allowed")

    for column, bounds in exp.ranges.items():
        if not checks.wanted("range", column):
            continue
        series = frame.get_column(column).drop_nulls()
        lo, hi = bounds
        inside = pl.lit(True)
        if lo is not None:
            inside = inside & (pl.col(column) >= lo)
        if hi is not None:
            inside = inside & (pl.col(column) <= hi)
        if series.dtype.is_float():  # polars orders NaN above every number: it would pass (lo, None)
            inside = inside & pl.col(column).is_not_nan()
        try:
            outside = series.to_frame().filter(~inside.fill_null(False))
        except Exception as exc:  # polars raises several types for a bound of the wrong type
            raise LabError(f"{where}: ranges[{column!r}] {bounds!r} cannot be compared with a {series.dtype} "
                           f"column ({type(exc).__name__}); give bounds of the column's kind") from None
        examples = [_num(v) for v in outside.get_column(column).unique(maintain_order=True).head(_EXAMPLES)]
        lo_seen = _num(series.min()) if series.len() else None
        hi_seen = _num(series.max()) if series.len() else None
        observed = {"min": lo_seen, "max": hi_seen, "outside": outside.height,
                    "share": _num(outside.height / series.len()) if series.len() else 0.0, "examples": examples}
        if outside.height:
            message = (f"{outside.height:,} of {series.len():,} values outside {_interval(bounds)}: seen "
                       f"{_fmt(lo_seen)}..{_fmt(hi_seen)}, e.g. {', '.join(map(_fmt, examples[:3]))}")
        else:
            message = f"{series.len():,} values in {_fmt(lo_seen)}..{_fmt(hi_seen)}, within {_interval(bounds)}"
        checks.add("range", column, not outside.height, observed, list(bounds), message)

    for column, bounds in exp.medians.items():
        if not checks.wanted("median", column):
            continue
        values = frame.get_column(column).drop_nulls()
        if values.dtype.is_float():
            values = values.filter(~values.is_nan())
        if values.len() == 0:
            checks.add("median", column, False, None, list(bounds), "no values to take the median of")
            continue
        median = values.median() if values.dtype.is_numeric() else values.sort()[(values.len() - 1) // 2]
        ok = _within(median, bounds)
        checks.add("median", column, ok, _num(median), list(bounds),
                   f"median {_fmt(_num(median))}, {'within' if ok else 'outside'} {_interval(bounds)}")

    for key in exp.unique:
        columns = _key(key)
        name = f"unique:{'+'.join(columns)}"
        if not checks.wanted("unique", *columns, name=name):
            continue
        dupes = (frame.group_by(list(columns)).agg(pl.len().alias("copies")).filter(pl.col("copies") > 1)
                 .sort(["copies", *columns], descending=[True, *([False] * len(columns))]))
        extra = int(dupes["copies"].sum() - dupes.height) if dupes.height else 0
        examples = [{k: _num(v) for k, v in r.items()} for r in dupes.head(_EXAMPLES).to_dicts()]
        if extra:
            shown = ", ".join("(" + ", ".join(_fmt(e[c]) for c in columns) + f") x{e['copies']}" for e in examples[:3])
            message = f"{dupes.height:,} key(s) repeated, {extra:,} extra row(s): {shown}"
        else:
            message = f"{n:,} rows, every key distinct"
        checks.add("unique", None, not extra, {"repeated_keys": dupes.height, "extra_rows": extra,
                                                "examples": examples}, "distinct", message, name=name)
        checks.out[-1] = dataclasses.replace(checks.out[-1], column="+".join(columns))

    if exp.label_rate is not None and checks.wanted("label_rate", exp.label):
        labels = frame.get_column(exp.label).drop_nulls()
        if labels.dtype == pl.Boolean:
            labels = labels.cast(pl.Int64)
        name = f"label_rate:{exp.label}"
        if not labels.dtype.is_numeric():
            raise LabError(f"{where}: label_rate needs a 0/1 or boolean label; {exp.label!r} is {labels.dtype}")
        others = labels.filter(~labels.is_in([0, 1])).unique().head(_EXAMPLES).to_list()
        if others:
            checks.add("label_rate", exp.label, False, {"other_values": others}, list(exp.label_rate),
                       f"the label holds values other than 0 and 1: {', '.join(map(_fmt, others))}", name=name)
        elif labels.len() == 0:
            checks.add("label_rate", exp.label, False, None, list(exp.label_rate), "no labelled rows", name=name)
        else:
            rate = float(labels.mean())
            ok = _within(rate, exp.label_rate)
            lo, hi = exp.label_rate
            checks.add("label_rate", exp.label, ok, {"rate": _num(rate), "positives": int(labels.sum()),
                                                     "rows": labels.len()}, list(exp.label_rate),
                       f"{rate:.4%} positive ({int(labels.sum()):,} of {labels.len():,}), "
                       f"{'within' if ok else 'outside'} [{lo if lo is None else f'{lo:.4%}'}, "
                       f"{hi if hi is None else f'{hi:.4%}'}]", name=name)

    if exp.max_drift is not None and "drift" not in checks.skip:
        _drift_checks(checks, exp, reference, reference_name, no_reference, drift_config)

    meta = {"rows": n, "columns": frame.columns}
    return ValidationReport(checks.out, {"targets": {exp.target: meta}})


def drift_columns(exp: Expectations, frame: pl.DataFrame) -> dict[str, float]:
    """The columns the drift check scores, with their thresholds: a mapping's columns, or
    every numeric column of ``frame`` but the keys, the time column and the label."""
    if exp.max_drift is None:
        return {}
    if isinstance(exp.max_drift, Mapping):
        return dict(exp.max_drift)
    keys = {c for key in exp.unique for c in _key(key)}
    left_out = keys | {exp.time_column, exp.label}
    return {c: float(exp.max_drift) for c, dtype in frame.schema.items()
            if c not in left_out and (dtype.is_numeric() or dtype == pl.Boolean)}


def _drift_checks(checks: _Checks, exp: Expectations, reference: Any, reference_name: str, no_reference: str,
                  drift_config: Any) -> None:
    columns = drift_columns(exp, checks.frame)
    if reference is None:
        checks.add("drift", None, True, None, exp.max_drift, f"not checked: {no_reference}", skipped=True)
        return
    from lab.monitoring.drift import DriftConfig, compare  # scipy: only when there is something to compare
    ref = as_frame(reference)
    scored = []
    for column in columns:
        if not checks.wanted("drift", column):
            continue
        if column not in ref.columns:
            checks.add("drift", column, True, None, columns[column], f"not checked: {reference_name} has no "
                       f"column {column}", skipped=True)
        else:
            scored.append(column)
    if not scored:
        return
    if ref.height == 0 or checks.frame.height == 0:
        for column in scored:
            checks.add("drift", column, True, None, columns[column], "not checked: no rows to compare", skipped=True)
        return
    base = drift_config if drift_config is not None else DriftConfig()
    by_limit: dict[float, list[str]] = {}
    for column in scored:
        by_limit.setdefault(columns[column], []).append(column)
    for limit, group in by_limit.items():
        # Null shares are the nulls check's business; here only the distributions count.
        config = dataclasses.replace(base, numeric_threshold=limit, categorical_threshold=limit, nulls="ignore")
        sides = [_comparable(f.select(group)) for f in (ref, checks.frame)]
        categorical = [c for c in group if not sides[0].schema[c].is_numeric()]
        report = compare(sides[0], sides[1], group, categorical=categorical, config=config)
        for column in group:
            d = report.columns[column]
            size = "-" if d.effect_size is None else f"{d.effect_size:.4g}"
            observed = {"effect": d.effect, "size": _num(d.effect_size), "test": d.test, "q_value": _num(d.q_value),
                        "wasserstein": _num(d.wasserstein), "ks": _num(d.ks.statistic) if d.ks else None,
                        "power": _num(d.power), "underpowered": d.underpowered,
                        "rows": [d.n_reference, d.n_current]}
            message = f"{d.effect} {size} against {reference_name}: {d.reason}"
            checks.add("drift", column, not d.flagged, observed, limit, message)


def _comparable(frame: pl.DataFrame) -> pl.DataFrame:
    """Booleans as 0/1 integers: drift compares them as numbers."""
    return frame.with_columns([pl.col(c).cast(pl.Int8) for c, t in frame.schema.items() if t == pl.Boolean])


def validation_path(training_set: str | Path) -> Path:
    """Where the validation report of the training set at ``training_set`` lives:
    ``x.validation.json`` beside it (its HTML page as ``x.validation.html``), as the
    leakage audit's ``x.audit.json``."""
    path = Path(training_set)
    return path.with_name(path.stem + ".validation.json")


# -- a model's training data --------------------------------------------------------------

def declared_expectations(pm, config) -> list[Expectations]:
    """Every plugin's ``lab_expectations(config)``, concatenated in plugin order."""
    out = []
    for batch in pm.hook.lab_expectations(config=config):
        for exp in batch or []:
            if not isinstance(exp, Expectations):
                raise LabError(f"lab_expectations returned {exp!r}; return a list of "
                               "lab.monitoring.validation.Expectations")
            out.append(exp)
    return out


def with_max_drift(exp: Expectations, max_drift: float) -> Expectations:
    """``exp`` with every declared drift threshold replaced by ``max_drift`` (0: unchanged;
    a declaration without drift checks gets none)."""
    if not max_drift or exp.max_drift is None:
        return exp
    if isinstance(exp.max_drift, Mapping):
        return exp.replace(max_drift={c: max_drift for c in exp.max_drift})
    return exp.replace(max_drift=max_drift)


def validate_training_data(spec, views: Sequence, source_rows: Any, trainset: Any,
                           expectations: Sequence[Expectations], *, known_targets: Sequence[str] = (),
                           reference: Any = None, reference_name: str = "the last training set",
                           no_reference: str = "no earlier training set to compare with",
                           skip: Sequence[str] = (), max_drift: float = 0.0, drift_config: Any = None
                           ) -> ValidationReport:
    """Validate what a model (``spec``, a ``ModelSpec``) is about to be trained on.

    A declaration whose target is the spec's source is checked against ``source_rows``
    (the source rows the training set was built from); one whose target is a view the
    model reads, against the training set's columns of that view: the spec's time column
    and label, then the view's features. Declarations of other known targets (views or
    sources of other models: ``known_targets``) are left out and listed in
    ``meta["not_read"]``; an unknown target is a ``LabError``. Each declaration's
    ``time_column`` and ``label`` default to the spec's; ``max_drift`` above 0 replaces
    the declared drift thresholds (``[tool.lab.validation]``).
    """
    by_view = {v.name: v for v in views}
    known = {spec.source, *by_view, *known_targets}
    source_frame, trainset_frame = as_frame(source_rows), as_frame(trainset)
    reports, not_read = [], []
    for exp in expectations:
        if exp.target not in known:
            raise LabError(f"expectations for {exp.target!r}: no source or feature view has that name; targets are "
                           f"{', '.join(sorted(known))} (fix the target in the lab's lab_expectations)")
        if exp.target != spec.source and exp.target not in by_view:
            not_read.append(exp.target)
            continue
        exp = with_max_drift(exp.replace(time_column=exp.time_column or spec.time_column,
                                         label=exp.label or spec.label), max_drift)
        if exp.target == spec.source:
            frame = source_frame
        else:
            view = by_view[exp.target]
            columns = list(dict.fromkeys([spec.time_column, spec.label, *view.feature_names]))
            absent = [c for c in columns if c not in trainset_frame.columns]
            if absent:
                raise LabError(f"the training set lacks column(s) {', '.join(absent)} of view {view.name!r}; "
                               "rebuild it (`lab run features --force`)")
            foreign = [c for c in exp.columns if c not in columns]
            if foreign:
                raise LabError(f"expectations for view {view.name!r} name column(s) {', '.join(foreign)}, which the "
                               f"view does not make (its features: {', '.join(view.feature_names)}); fix the names "
                               "in the lab's lab_expectations")
            frame = trainset_frame.select(columns)
        reports.append(validate(frame, exp, reference=reference, reference_name=reference_name,
                                no_reference=no_reference, skip=skip, drift_config=drift_config))
    report = ValidationReport.merge(reports, model=spec.name, source=spec.source,
                                    not_read=sorted(set(not_read)))
    return report
