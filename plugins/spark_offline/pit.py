"""Point-in-time retrieval as Spark DataFrames: the rule of ``lab.features.views``.

Both joins put the source's events and the probes (entity rows) in one frame,
partitioned by entity and ordered by time, so Spark sorts each entity's rows once and
reads every answer off the order (no range join, no per-probe scan of the source):

- **windowed view**: a probe at time ``t`` has the bound ``b = t - label_delay``; an
  aggregation of width ``w`` covers the events with ``b - w < e <= b``, and a window
  wider than the ttl is cut at the ttl, inclusive (``e >= b - ttl``). Each is one window
  function over a ``RANGE`` frame on the integer time (microseconds): ``[b - w + 1, b]``;
  peers at ``b`` (events at the probe's own bound) are inside, as the rule says. The sum
  is a direct sum of the window's rows, not a difference of running totals, so no
  rounding from the rest of the history enters it. Empty windows: count and sum 0, a
  mean its ``fill``.
- **latest-value view**: the order is (time, events before probes, then the row written
  last), and each probe takes the last event at or before ``b`` (``last(...,
  ignorenulls)`` over a running frame); kept if ``b - e <= ttl``.

Every time is epoch microseconds (``layout.us_column``), every probe carries
``__lab_row`` (its position), and each view's answer is a frame of ``__lab_row`` and the
view's features. pyspark is imported in the functions, never at module level.
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

import pyarrow as pa

from lab.errors import LabError
from lab.features.views import FeatureView
from plugins.spark_offline.layout import ROW, us_column

PROBE_ROW = "__lab_row"
PROBE_T = "__lab_t"
_US = dt.timedelta(microseconds=1)


def us(delta: dt.timedelta) -> int:
    return delta // _US


def lower_offset_us(view: FeatureView, window: dt.timedelta) -> int:
    """How far below ``b`` a window starts (exclusive), the ttl bound applied: a window
    wider than the ttl is cut at ``b - ttl`` inclusive, i.e. ``e > b - ttl - 1µs``."""
    return us(window) if window <= view.ttl else us(view.ttl) + 1


def _c(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


_GRID = float(1 << 20)  # float sums: whole 2^-20 steps summed exactly as integers, plus a small remainder
_ORDINARY = float(1 << 24)  # |x| below this takes the exact path; a window overflows a long past 2^19 such rows


def _sum_parts(column, kind: pa.DataType) -> list:
    """How a source column enters a window's sum, as parts summed apart and then added.

    Integers and booleans: one exact long sum. Floats (and decimals, as doubles), as the
    DuckDB store sums them: ``floor(x * 2^20)`` summed exactly as a long, plus the
    remainder below 2^-20 as a double, so a window's sum is the exactly rounded sum of
    its values but for the remainders' last bits, whatever order Spark adds them in, and
    equal to DuckDB's to the bit in practice. NaN, infinities and magnitudes of 2^24 or
    more go to a third part summed directly as doubles (NaN and inf propagate as in a
    direct sum).
    """
    from pyspark.sql import functions as F

    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return [column.cast("long")]
    if not (pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        return []
    x = column.cast("double")
    ordinary = ~F.isnan(x) & (F.abs(x) < F.lit(_ORDINARY))
    grid = F.floor(x * F.lit(_GRID))
    return [F.when(ordinary, grid.cast("long")), F.when(ordinary, x - grid / F.lit(_GRID)),
            F.when(~ordinary, x)]


def _window_sum(parts: list, frame):
    """The window's sum of a column from its ``_sum_parts`` (0.0 for an empty window)."""
    from pyspark.sql import functions as F

    def total(part):
        return F.sum(part).over(frame)

    if len(parts) == 1:
        return F.coalesce(total(parts[0]).cast("double"), F.lit(0.0))
    h, low, rest = parts
    finite = (F.coalesce(total(h), F.lit(0)).cast("double") / F.lit(_GRID)
              + F.coalesce(total(low), F.lit(0.0)))
    return F.when(total(rest).isNull(), finite).otherwise(finite + total(rest))


def windowed(probes, source, view: FeatureView, schema: pa.Schema, key_type: str):
    """``__lab_row`` and the view's aggregations for every probe (see the module docstring).

    ``probes``: ``__lab_row``, the view's entity, ``__lab_t`` (epoch µs); ``source``: the
    stored source (hidden columns included); ``key_type``: the source key's Spark type.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    delay = us(view.label_delay)
    columns = sorted({a.column for a in view.aggregations})
    value = {c: f"__lab_x{i}" for i, c in enumerate(columns)}
    e = _c(us_column(view.timestamp))
    events = source.where(_c(view.entity).isNotNull() & e.isNotNull()).select(
        _c(view.entity).alias("__lab_k"), e.alias("__lab_time"), F.lit(None).cast("long").alias(ROW),
        *[_c(c).alias(value[c]) for c in columns])
    asked = probes.select(_c(view.entity).cast(key_type).alias("__lab_k"),
                          (_c(PROBE_T) - F.lit(delay)).alias("__lab_time"), _c(PROBE_ROW).alias(ROW))
    both = events.unionByName(asked, allowMissingColumns=True)
    frames = {}
    features = []
    for agg in view.aggregations:
        low = lower_offset_us(view, agg.window)
        if low not in frames:
            frames[low] = (Window.partitionBy("__lab_k").orderBy("__lab_time").rangeBetween(-(low - 1), 0))
        frame, x = frames[low], F.col(value[agg.column])
        n = F.count(x).over(frame)
        if agg.function == "count":
            features.append(n.cast("long").alias(agg.name))
            continue
        kind = schema.field(agg.column).type
        total = _window_sum(_sum_parts(x, kind), frame)
        if agg.function == "sum":
            expr = total
        else:
            fill = F.lit(None).cast("double") if agg.fill is None else F.lit(float(agg.fill))
            expr = F.when(n > 0, total / n).otherwise(fill)
        features.append(expr.alias(agg.name))
    return both.select(F.col(ROW), *features).where(F.col(ROW).isNotNull())


def latest(probes, source, view: FeatureView, key_type: str):
    """``__lab_row`` and the view's latest-value features for every probe."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    delay, ttl = us(view.label_delay), us(view.ttl)
    e = _c(us_column(view.timestamp))
    events = source.where(_c(view.entity).isNotNull() & e.isNotNull()).select(
        _c(view.entity).alias("__lab_k"), e.alias("__lab_time"), F.lit(0).alias("__lab_probe"),
        _c(ROW).alias("__lab_order"),
        F.struct(e.alias("e"), *[_c(f).alias(f"f{i}") for i, f in enumerate(view.features)]).alias("__lab_v"))
    asked = probes.select(_c(view.entity).cast(key_type).alias("__lab_k"),
                          (_c(PROBE_T) - F.lit(delay)).alias("__lab_time"), F.lit(1).alias("__lab_probe"),
                          _c(PROBE_ROW).alias("__lab_probe_row"))
    both = events.unionByName(asked, allowMissingColumns=True)
    running = (Window.partitionBy("__lab_k").orderBy("__lab_time", "__lab_probe", "__lab_order")
               .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    picked = both.select("__lab_probe", "__lab_probe_row", "__lab_time",
                         F.last("__lab_v", ignorenulls=True).over(running).alias("__lab_v"))
    fresh = F.col("__lab_v").isNotNull() & (F.col("__lab_time") - F.col("__lab_v.e") <= F.lit(ttl))
    return picked.where(F.col("__lab_probe") == 1).select(
        F.col("__lab_probe_row").alias(ROW),
        *[F.when(fresh, F.col(f"__lab_v.f{i}")).alias(f) for i, f in enumerate(view.features)])


def view_frame(probes, source, view: FeatureView, schema: pa.Schema, key_type: str):
    """The view's answer frame for ``probes`` (windowed or latest-value)."""
    if view.aggregations:
        return windowed(probes, source, view, schema, key_type)
    return latest(probes, source, view, key_type)


def check_view(view: FeatureView, schema: pa.Schema) -> None:
    """``LabError`` naming the fix when ``view`` cannot read a source of ``schema``."""
    have = [n for n in schema.names if not n.startswith("__lab_")]
    needed = [view.entity, view.timestamp, *{a.column for a in view.aggregations}, *view.features]
    missing = [c for c in dict.fromkeys(needed) if c not in have]
    if missing:
        raise LabError(f"feature view {view.name!r} needs column(s) {', '.join(missing)} in source "
                       f"{view.source!r}, which has {', '.join(have)}")
    kind = schema.field(view.timestamp).type
    if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        raise LabError(f"feature view {view.name!r}: timestamp column {view.timestamp!r} is {kind}, not a "
                       "timestamp; convert it before writing the source")
    for agg in view.aggregations:
        kind = schema.field(agg.column).type
        numeric = (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                   or pa.types.is_decimal(kind))
        if agg.function != "count" and not numeric:
            raise LabError(f"feature view {view.name!r}: {agg.function} of {agg.column!r} needs a numeric column, "
                           f"but it is {kind}")


def output_types(view: FeatureView, schema: pa.Schema) -> dict[str, pa.DataType]:
    """The Arrow type of each of the view's features, as the DuckDB store gives them."""
    if view.aggregations:
        return {a.name: pa.int64() if a.function == "count" else pa.float64() for a in view.aggregations}
    return {f: schema.field(f).type for f in view.features}


def key_spark_type(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return "long" if not (pa.types.is_unsigned_integer(kind) and kind.bit_width == 64) else "decimal(20,0)"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_boolean(kind):
        return "boolean"
    raise LabError(f"an entity key of type {kind} is not supported by the Spark offline store; store keys as "
                   "integers or strings")


def probe_keys(rows: pa.Table, views: Sequence[FeatureView], schemas: dict[str, pa.Schema]) -> None:
    """``LabError`` when an entity row key cannot be compared with its source's key."""
    for view in views:
        have, want = rows.schema.field(view.entity).type, schemas[view.name].field(view.entity).type
        same_kind = (pa.types.is_integer(have) and pa.types.is_integer(want)) or (
            (pa.types.is_string(have) or pa.types.is_large_string(have))
            and (pa.types.is_string(want) or pa.types.is_large_string(want))) or have == want
        if not same_kind and not pa.types.is_null(have):
            raise LabError(f"feature view {view.name!r}: the entity rows' {view.entity!r} is {have} but the source's "
                           f"is {want}; cast the entity rows' column to {want}")
