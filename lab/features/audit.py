"""Leakage audit of a training set: how old each view's features were at label time, and
proof that none is newer than its row's time minus the view's label delay.

For each view and training row (entity key ``k``, row time ``t``, the view's label delay
``d`` and ttl), the audit recomputes in polars, apart from the offline store's SQL:

- the **newest known row**: the source row of ``k`` with the greatest event time ``e`` such
  that ``e <= t - d``; the view's features *use* it when it is within reach (latest value:
  ``t - d - e <= ttl``; windowed: inside the widest window, cut at the ttl). Its **age at
  label time** is ``t - e`` (never less than ``d``). A row that uses none is **missing**:
  it holds the view's defaults.
- the **values** the rows known by ``t - d`` give (the latest value, ties to the row
  written last; or each window's count, sum and mean), compared with the training set's.
  A row whose values differ is a **violation**: its features hold something the data
  known at ``t - d`` does not give, such as a row known only later. Counts compare
  exactly; sums and means within the rounding of float running totals (``1e-9`` of the
  summed magnitudes).
- ``hidden_by_delay``: rows that have a source row with ``t - d < e <= t`` (it happened
  before the row but was not known yet): how often the label delay mattered.

The audit is a JSON-able dict (``audit_training_set``); ``write_audit`` stores it next to
the training set (``x.parquet`` -> ``x.audit.json``) and returns the sha256 of the bytes
written, the digest recorded in the registry. ``check_audit`` raises on a violation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from lab.atomic import atomic_write_text
from lab.errors import LabError, NotFound
from lab.features.stores import OfflineStore
from lab.features.views import FeatureView

AUDIT_FORMAT = "lab-leakage-audit-v1"
_US = dt.timedelta(microseconds=1)
_EXAMPLES = 5
_REL_TOL = 1e-9


class LeakageError(LabError):
    """A training set holds values newer than its rows' time minus a label delay."""


def audit_path(training_set: str | Path) -> Path:
    """Where the audit of the training set at ``training_set`` lives: ``x.audit.json``."""
    path = Path(training_set)
    return path.with_name(path.stem + ".audit.json")


def _us(delta: dt.timedelta) -> int:
    return delta // _US


def _epoch_us(frame: pl.DataFrame, column: str, what: str) -> pl.Series:
    s = frame.get_column(column)
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if not isinstance(s.dtype, pl.Datetime):
        raise LabError(f"{what} column {column!r} is {s.dtype}, not a timestamp")
    return s.dt.epoch("us")


def _percentile(sorted_values: np.ndarray, p: float) -> float:
    """Nearest rank: a value that occurs, the smallest with at least ``p`` % at or below."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def _asof(probes: pl.DataFrame, right: pl.DataFrame, bound: str, suffix: str) -> pl.DataFrame:
    """For each probe, the right row of its key with the greatest ``e <= probes[bound]``;
    the right columns get ``suffix``; probes in their own order (``__row``)."""
    renamed = right.rename({c: f"{c}{suffix}" for c in right.columns if c != "__k"})
    joined = probes.sort(bound).join_asof(renamed.sort(f"__e{suffix}"), left_on=bound, right_on=f"__e{suffix}",
                                          by="__k", strategy="backward", check_sortedness=False)
    return joined.sort("__row")


def _same(got: pl.Series, want: pl.Series, tol: pl.Series | None) -> pl.Series:
    """Row by row: equal (nulls equal nulls, NaN equals NaN), within ``tol`` if given."""
    both_null = got.is_null() & want.is_null()
    if tol is None:
        if got.dtype.is_float() and want.dtype.is_float():
            nan = got.is_nan().fill_null(False) & want.is_nan().fill_null(False)
            return (both_null | nan | (got == want).fill_null(False))
        return both_null | (got == want).fill_null(False)
    g, w = got.cast(pl.Float64), want.cast(pl.Float64)
    nan = g.is_nan().fill_null(False) & w.is_nan().fill_null(False)
    close = ((g - w).abs() <= tol).fill_null(False) | (g == w).fill_null(False)
    return both_null | nan | close


def _lower_offset_us(view: FeatureView, window: dt.timedelta) -> int:
    """How far below ``t - d`` a window reaches (exclusive), cut at the ttl (inclusive)."""
    return _us(window) if window <= view.ttl else _us(view.ttl) + 1


def _audit_view(view: FeatureView, frame: pl.DataFrame, t_us: pl.Series, source: pl.DataFrame,
                id_column: str | None) -> dict:
    d, ttl = _us(view.label_delay), _us(view.ttl)
    if view.entity not in frame.columns:
        raise LabError(f"the training set has no {view.entity!r} column, the key of view {view.name!r}")
    key_type = source.schema[view.entity]
    try:
        keys = frame.get_column(view.entity).cast(key_type)
    except Exception:  # polars raises several types for a failed cast
        raise LabError(f"view {view.name!r}: the training set's {view.entity!r} ({frame.schema[view.entity]}) "
                       f"does not cast to the source's {key_type}") from None
    n = frame.height
    probes = pl.DataFrame({"__row": np.arange(n, dtype=np.int64), "__k": keys, "__t": t_us})
    probes = probes.with_columns((pl.col("__t") - d).alias("__b"))
    stamp = pl.col(view.timestamp)
    if source.schema[view.timestamp] == pl.Date:
        stamp = stamp.cast(pl.Datetime("us"))
    src = (source.with_row_index("__w")
           .filter(pl.col(view.entity).is_not_null() & pl.col(view.timestamp).is_not_null())
           .with_columns(pl.col(view.entity).alias("__k"), stamp.dt.epoch("us").alias("__e")))
    times = src.select("__k", "__e").unique()
    newest = _asof(probes, times, "__b", "_b").get_column("__e_b")
    at_t = _asof(probes, times, "__t", "_t").get_column("__e_t")
    reach = ttl + 1 if not view.aggregations else max(_lower_offset_us(view, a.window) for a in view.aggregations)
    used = newest.is_not_null() & ((probes.get_column("__b") - newest) < reach)
    used = used.fill_null(False)
    hidden = (at_t.is_not_null() & (at_t > probes.get_column("__b"))).fill_null(False)

    present = [f for f in view.feature_names if f in frame.columns]
    bad = pl.Series("bad", [False] * n)
    if view.aggregations:
        expected = _windowed_values(view, probes, src)
        for agg in view.aggregations:
            if agg.name not in present:
                continue
            want, tol = expected[agg.name]
            bad = bad | ~_same(frame.get_column(agg.name), want, tol)
    elif present:
        latest = (src.sort("__k", "__e", "__w").unique(subset=["__k", "__e"], keep="last", maintain_order=True)
                  .select("__k", "__e", *present))
        joined = _asof(probes, latest, "__b", "_v")
        within = (joined.get_column("__e_v").is_not_null()
                  & ((probes.get_column("__b") - joined.get_column("__e_v")) <= ttl)).fill_null(False)
        for f in present:
            want = pl.select(pl.when(within).then(joined.get_column(f"{f}_v")).otherwise(None)).to_series()
            bad = bad | ~_same(frame.get_column(f), want, None)

    ages = np.sort((t_us - newest).filter(used).to_numpy())
    n_used = int(used.sum())
    age = None if n_used == 0 else {
        "min": float(ages[0]) / 1e6, "p50": _percentile(ages, 50) / 1e6, "p95": _percentile(ages, 95) / 1e6,
        "p99": _percentile(ages, 99) / 1e6, "max": float(ages[-1]) / 1e6}
    n_bad = int(bad.sum())
    examples = []
    if n_bad:
        ids = frame.get_column(id_column) if id_column and id_column in frame.columns else pl.Series(range(n))
        examples = [v if isinstance(v, (int, str)) else str(v) for v in ids.filter(bad).head(_EXAMPLES).to_list()]
    return {
        "version": view.version, "entity": view.entity, "source": view.source,
        "label_delay_s": view.label_delay.total_seconds(), "ttl_s": view.ttl.total_seconds(),
        "reach_s": (min(view.ttl, max(a.window for a in view.aggregations)) if view.aggregations
                    else view.ttl).total_seconds(),
        "features_checked": present, "rows": n, "with_values": n_used, "missing": n - n_used,
        "share_missing": (n - n_used) / n if n else 0.0, "age_s": age,
        "hidden_by_delay": int(hidden.sum()), "violations": n_bad, "violation_examples": examples,
    }


def _windowed_values(view: FeatureView, probes: pl.DataFrame, src: pl.DataFrame) -> dict:
    """Each aggregation's value per probe from running totals per entity (polars), with
    the tolerance of its float sums: ``{name: (values, tolerance or None)}``."""
    columns = sorted({a.column for a in view.aggregations})
    parts = []
    for i, c in enumerate(columns):
        x = pl.col(c).cast(pl.Float64)
        parts += [pl.col(c).count().alias(f"n{i}"), x.sum().alias(f"s{i}"), x.abs().sum().alias(f"a{i}")]
    grouped = src.group_by("__k", "__e").agg(parts).sort("__k", "__e")
    running = grouped.with_columns(
        [pl.col(f"{p}{i}").cum_sum().over("__k") for i in range(len(columns)) for p in "nsa"])
    totals = running.select("__k", "__e", *[f"{p}{i}" for i in range(len(columns)) for p in "nsa"])
    offsets = sorted({_lower_offset_us(view, a.window) for a in view.aggregations})
    at = {0: _asof(probes, totals, "__b", "_0")}
    for o in offsets:
        at[o] = _asof(probes.with_columns((pl.col("__b") - o).alias(f"__b{o}")), totals, f"__b{o}", f"_{o}")
    out = {}
    for a in view.aggregations:
        i, o = columns.index(a.column), _lower_offset_us(view, a.window)
        hi, lo = at[0], at[o]

        def col(frame, p, suffix):
            return frame.get_column(f"{p}{i}{suffix}").fill_null(0)

        n = col(hi, "n", "_0") - col(lo, "n", f"_{o}")
        s = col(hi, "s", "_0").cast(pl.Float64) - col(lo, "s", f"_{o}").cast(pl.Float64)
        tol = (col(hi, "a", "_0") + col(lo, "a", f"_{o}")) * _REL_TOL + 1e-12
        if a.function == "count":
            out[a.name] = (n.cast(pl.Int64), None)
        elif a.function == "sum":
            out[a.name] = (s, tol)
        else:
            mean = pl.select(pl.when(n > 0).then(s / n).otherwise(pl.lit(a.fill, pl.Float64))).to_series()
            out[a.name] = (mean, pl.select(pl.when(n > 0).then(tol / n).otherwise(1e-12)).to_series())
    return out


def audit_training_set(offline: OfflineStore, views: Sequence[FeatureView], table: pa.Table, *,
                       time_column: str, id_column: str | None = None, digest: str | None = None) -> dict:
    """The leakage audit of ``table`` (a training set: ``time_column``, each view's entity
    and features) against the views' sources in ``offline``; see the module docstring."""
    frame = pl.from_arrow(table) if isinstance(table, pa.Table) else table
    if time_column not in frame.columns:
        raise LabError(f"the training set has no time column {time_column!r}; it has {', '.join(frame.columns)}")
    if frame.get_column(time_column).null_count():
        raise LabError(f"the training set's {time_column!r} has nulls; every row needs a time")
    t_us = _epoch_us(frame, time_column, "the training set's time")
    sources: dict[str, pl.DataFrame] = {}
    audited = {}
    for view in views:
        needed = list(dict.fromkeys([view.entity, view.timestamp, *{a.column for a in view.aggregations},
                                     *view.features]))
        key = f"{view.source}\0{','.join(needed)}"
        if key not in sources:
            sources[key] = pl.from_arrow(offline.read_source(view.source, columns=needed))
        audited[view.name] = _audit_view(view, frame, t_us, sources[key], id_column)
    return {
        "format": AUDIT_FORMAT, "training_set_digest": digest, "rows": frame.height,
        "time_column": time_column, "id_column": id_column,
        "ok": all(v["violations"] == 0 for v in audited.values()), "views": audited,
    }


def check_audit(audit: dict) -> None:
    """Raise ``LeakageError`` naming each view with violations and its offending rows."""
    bad = [(name, v) for name, v in audit["views"].items() if v["violations"]]
    if not bad:
        return
    parts = []
    for name, v in bad:
        ids = ", ".join(str(i) for i in v["violation_examples"])
        parts.append(f"view {name!r}: {v['violations']} of {v['rows']} rows hold values that the source rows "
                     f"known by the row's time minus the label delay ({v['label_delay_s']:g} s) do not give "
                     f"(e.g. {audit.get('id_column') or 'row'} {ids})")
    raise LeakageError("leakage audit failed: " + "; ".join(parts)
                       + ". The offline store's point-in-time join leaks, or a source changed while the set "
                         "was built; nothing was written")


def audit_text(audit: dict) -> str:
    """The bytes ``write_audit`` stores (its digest is the sha256 of them)."""
    return json.dumps(audit, indent=2, sort_keys=True) + "\n"


def audit_digest(audit: dict) -> str:
    return hashlib.sha256(audit_text(audit).encode()).hexdigest()


def write_audit(path: str | Path, audit: dict) -> str:
    """Write ``audit`` atomically to ``path``; return its digest (sha256 of the file)."""
    text = audit_text(audit)
    atomic_write_text(Path(path), text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_audit(path: str | Path) -> tuple[dict, str]:
    """``(audit, digest)`` from a file ``write_audit`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no leakage audit at {path}; rebuild the training set (`lab features training-set`) "
                       "or run the features stage again")
    raw = path.read_bytes()
    try:
        audit = json.loads(raw)
    except ValueError as exc:
        raise LabError(f"{path} is not a leakage audit (not JSON: {exc})") from None
    if not isinstance(audit, dict) or audit.get("format") != AUDIT_FORMAT:
        raise LabError(f"{path} is not a leakage audit (format {AUDIT_FORMAT!r} expected)")
    return audit, hashlib.sha256(raw).hexdigest()


def format_audit(audit: dict) -> str:
    """The audit as a table: one line per view."""
    verdict = "ok: no value newer than its row time minus the label delay" if audit["ok"] else "VIOLATIONS"
    lines = [f"{audit['rows']} rows  {verdict}",
             f"{'view':<22} {'delay':>9} {'p50 age':>10} {'p95':>10} {'p99':>10} {'max age':>10} "
             f"{'missing':>8} {'hidden':>7} {'violations':>10}"]
    for name, v in audit["views"].items():
        age = v["age_s"] or {}
        lines.append(f"{name:<22} {_dur(v['label_delay_s']):>9} {_dur(age.get('p50')):>10} {_dur(age.get('p95')):>10} "
                     f"{_dur(age.get('p99')):>10} {_dur(age.get('max')):>10} {v['share_missing']:>8.1%} "
                     f"{v['hidden_by_delay']:>7} {v['violations']:>10}")
    return "\n".join(lines)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:g} s"


def audited_training_set(offline: OfflineStore, views: Sequence[FeatureView], spec, start: dt.date,
                         end: dt.date) -> tuple[pa.Table, str, dict]:
    """``model_training_set`` and its audit: ``(table, digest, audit)``; ``LeakageError``
    (before anything is written) when a view's values are newer than the rule allows.
    The features step and ``lab features training-set`` share it."""
    from lab.features.training import model_training_set

    table, digest = model_training_set(offline, views, spec, start, end)
    audit = audit_training_set(offline, views, table, time_column=spec.time_column, id_column=spec.id_column,
                               digest=digest)
    check_audit(audit)
    return table, digest, audit
