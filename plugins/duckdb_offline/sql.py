"""The SQL of point-in-time retrieval in DuckDB (see ``store`` for how it works).

Every builder reads the temp table ``__lab_probes`` (row number, entity keys, ``t`` in
epoch microseconds) that ``DuckDBOfflineStore.get_historical_features`` creates.
"""

from __future__ import annotations

import datetime as dt

from lab.features.views import FeatureView

ROW = "__lab_row"
_US = dt.timedelta(microseconds=1)


def q(name: str) -> str:
    """Quote an identifier (names are checked elsewhere; this guards the odd quote)."""
    return '"' + name.replace('"', '""') + '"'


def us(delta: dt.timedelta) -> int:
    return delta // _US


NUMERIC = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "BOOLEAN"}


def _lower_offset_us(view: FeatureView, window: dt.timedelta) -> int:
    """How far below ``t - delay`` a window starts (exclusive), with the ttl bound applied.

    A window wider than the ttl is cut at the ttl, inclusive: ``e >= t-d-ttl`` is
    ``e > t-d-ttl-1µs``.
    """
    return us(window) if window <= view.ttl else us(view.ttl) + 1


_GRID = 1 << 20  # float sums: a whole number of 2^-20 steps (exact) plus a small remainder
_BIG = "18446744073709551616.0"  # 2^64: a float this large goes to the DOUBLE part g


def special_sql(column: str) -> str:
    """True when ``column`` holds a NaN, an infinity or a float of magnitude >= 2^64 (which
    the exact HUGEINT part cannot hold): the view then needs ``_sum_parts(special=True)``."""
    c = f"{q(column)}::DOUBLE"
    return f"coalesce(bool_or(NOT isfinite({c}) OR abs({c}) >= {_BIG}), false)"


def _sum_parts(column: str, col_type: str, special: bool = False) -> dict[str, str]:
    """How one event's values enter the running totals, by part name.

    Integers and booleans sum exactly as HUGEINT (``s``). A float ``x`` is split into
    ``floor(x * 2^20)`` (``h``, summed exactly as HUGEINT) and the remainder below 2^-20
    (``l``, summed as DOUBLE): the difference of two running totals is then as accurate
    as a direct sum, where a plain running DOUBLE sum would carry the rounding error of
    the whole history into every window. A column only counted (a string) has no parts.

    A float column that holds NaN, infinities or magnitudes >= 2^64 (``special``) also
    counts its NaN, +inf and -inf (``nan``, ``pinf``, ``ninf``) and sums the huge finite
    values apart (``g``, DOUBLE); ``h`` and ``l`` then take only the ordinary values. A
    window's sum is then what a direct sum gives: NaN if it holds a NaN or both
    infinities, else the infinity it holds, else the finite parts (``g`` exactly 0 for a
    window without huge values).
    """
    c = q(column)
    if col_type == "BOOLEAN":
        return {"s": f"sum({c}::INTEGER)"}
    if col_type in NUMERIC and col_type not in ("FLOAT", "DOUBLE"):
        return {"s": f"sum({c})"}
    if col_type in ("FLOAT", "DOUBLE") or col_type.startswith("DECIMAL"):
        x = f"{c}::DOUBLE"
        grid = f"floor({x} * {_GRID}.0)"
        if not special:
            return {"h": f"sum(CAST({grid} AS HUGEINT))", "l": f"sum({x} - {grid} / {_GRID}.0)"}
        ordinary = f"isfinite({x}) AND abs({x}) < {_BIG}"
        return {"h": f"sum(CASE WHEN {ordinary} THEN CAST({grid} AS HUGEINT) END)",
                "l": f"sum(CASE WHEN {ordinary} THEN {x} - {grid} / {_GRID}.0 END)",
                "g": f"sum(CASE WHEN isfinite({x}) AND abs({x}) >= {_BIG} THEN {x} END)",
                "nan": f"sum(CASE WHEN isnan({x}) THEN 1 ELSE 0 END)",
                "pinf": f"sum(CASE WHEN {x} = 'inf'::DOUBLE THEN 1 ELSE 0 END)",
                "ninf": f"sum(CASE WHEN {x} = '-inf'::DOUBLE THEN 1 ELSE 0 END)"}
    return {}


def _sum_expr(parts: dict[str, str], i: int, j: int) -> str:
    """A window's sum of column ``i``: running totals at bound 0 minus at bound ``j``."""
    def diff(part: str) -> str:
        return f"(coalesce(r0.{part}{i}, 0) - coalesce(r{j}.{part}{i}, 0))"
    if "s" in parts:
        return f"CAST({diff('s')} AS DOUBLE)"
    if "h" in parts:
        finite = f"(CAST({diff('h')} AS DOUBLE) / {_GRID}.0 + {diff('l')})"
        if "g" not in parts:
            return finite
        return (f"CASE WHEN {diff('nan')} > 0 OR ({diff('pinf')} > 0 AND {diff('ninf')} > 0) THEN 'NaN'::DOUBLE "
                f"WHEN {diff('pinf')} > 0 THEN 'inf'::DOUBLE WHEN {diff('ninf')} > 0 THEN '-inf'::DOUBLE "
                f"ELSE {finite} + {diff('g')} END")
    return "NULL::DOUBLE"


def running_totals_sql(view: FeatureView, t_max: int | None, types: dict[str, str],
                       special: frozenset[str] = frozenset()) -> str:
    """Per (entity, event time): running count and sum parts of every aggregated column
    (``special``: the float columns with NaN, infinities or huge values, see ``_sum_parts``)."""
    delay = us(view.label_delay)
    per_event, running = [], []
    for i, c in enumerate(sorted({a.column for a in view.aggregations})):
        per_event.append(f"count({q(c)}) AS n{i}")
        running.append(f"sum(n{i}) OVER w AS n{i}")
        for part, expr in _sum_parts(c, types[c], c in special).items():
            per_event.append(f"{expr} AS {part}{i}")
            running.append(f"sum({part}{i}) OVER w AS {part}{i}")
    # Rows after the latest entity time can never be visible; earlier rows all count,
    # so the running totals (and their float rounding) do not depend on the entity rows.
    hi = "" if t_max is None else f" AND epoch_us({q(view.timestamp)}) <= {t_max - delay}"
    return (
        f"CREATE OR REPLACE TEMP TABLE __lab_running AS SELECT k, e, {', '.join(running)} FROM ("
        f"SELECT {q(view.entity)} AS k, epoch_us({q(view.timestamp)}) AS e, {', '.join(per_event)} "
        f"FROM {q(view.source)} WHERE {q(view.entity)} IS NOT NULL "
        f"AND {q(view.timestamp)} IS NOT NULL{hi} GROUP BY 1, 2) "
        "WINDOW w AS (PARTITION BY k ORDER BY e ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )


def window_sql(view: FeatureView, types: dict[str, str], special: frozenset[str] = frozenset()) -> str:
    """Each probe's window totals: running total at the upper bound minus at the lower."""
    delay = us(view.label_delay)
    col_id = {c: i for i, c in enumerate(sorted({a.column for a in view.aggregations}))}
    offsets = sorted({_lower_offset_us(view, a.window) for a in view.aggregations})
    bound_id = {o: j + 1 for j, o in enumerate(offsets)}
    bounds = [f"t - {delay} AS b0"] + [f"t - {delay + o} AS b{bound_id[o]}" for o in offsets]
    joins = "".join(
        f" ASOF LEFT JOIN __lab_running r{j} ON p.k = r{j}.k AND p.b{j} >= r{j}.e"
        for j in range(len(offsets) + 1)
    )
    features = []
    for a in view.aggregations:
        i, j = col_id[a.column], bound_id[_lower_offset_us(view, a.window)]
        n = f"(coalesce(r0.n{i}, 0) - coalesce(r{j}.n{i}, 0))"
        s = _sum_expr(_sum_parts(a.column, types[a.column], a.column in special), i, j)
        if a.function == "count":
            expr = f"CAST({n} AS BIGINT)"
        elif a.function == "sum":
            expr = s
        else:
            fill = "NULL" if a.fill is None else repr(float(a.fill))
            expr = f"CASE WHEN {n} > 0 THEN {s} / {n} ELSE CAST({fill} AS DOUBLE) END"
        features.append(f"{expr} AS {q(a.name)}")
    return (
        f"SELECT p.{ROW}, {', '.join(features)} FROM "
        f"(SELECT {ROW}, {q(view.entity)} AS k, {', '.join(bounds)} FROM __lab_probes) p"
        f"{joins} ORDER BY p.{ROW}"
    )


_TIE_BITS = 40  # rowid bits in a latest-value key: tables up to 2^40 rows


def latest_sql(view: FeatureView, unique: bool = False) -> str:
    """Each probe's newest visible row (ASOF at ``t - delay``), kept if within the ttl.

    Among rows with one entity and time the one written last wins: the ASOF key is then
    ``(event time, rowid)`` packed in one HUGEINT, without a window function (a QUALIFY
    subquery on the right of an ASOF join also returns extra rows in DuckDB 2.0.1). When
    the caller found ``(entity, event time)`` ``unique`` in the source there is no tie to
    break, and the join runs on the event time alone (cheaper: no HUGEINT per row).

    Rows come in probe order (``ORDER BY ROW``, DuckDB's parallel sort: an Arrow ``take``
    of the result by the row numbers measured no faster at 1M rows, and at 10M costs
    about 0.5 s per feature column on this machine, more than the sort).
    """
    delay, ttl = us(view.label_delay), us(view.ttl)
    cols = ", ".join(q(f) for f in view.features)
    e = f"epoch_us({q(view.timestamp)})"
    picked = ", ".join(
        f"CASE WHEN p.b - s.e <= {ttl} THEN s.{q(f)} END AS {q(f)}" for f in view.features
    )
    where = f"WHERE {q(view.entity)} IS NOT NULL AND {q(view.timestamp)} IS NOT NULL"
    if unique:
        return (
            f"SELECT p.{ROW}, {picked} FROM "
            f"(SELECT {ROW}, {q(view.entity)} AS k, t - {delay} AS b FROM __lab_probes) p "
            f"ASOF LEFT JOIN (SELECT {q(view.entity)} AS k, {e} AS e, {cols} FROM {q(view.source)} {where}) s "
            f"ON p.k = s.k AND p.b >= s.e ORDER BY p.{ROW}"
        )
    shift = f"{1 << _TIE_BITS}::HUGEINT"
    source = (
        f"SELECT {q(view.entity)} AS k, {e} AS e, {e}::HUGEINT * {shift} + rowid AS ek, {cols} "
        f"FROM {q(view.source)} {where}"
    )
    return (
        f"SELECT p.{ROW}, {picked} FROM "
        f"(SELECT {ROW}, {q(view.entity)} AS k, t - {delay} AS b, "
        f"(t - {delay})::HUGEINT * {shift} + {(1 << _TIE_BITS) - 1} AS bk FROM __lab_probes) p "
        f"ASOF LEFT JOIN ({source}) s ON p.k = s.k AND p.bk >= s.ek ORDER BY p.{ROW}"
    )


def ties_sql(view: FeatureView) -> str:
    """One row, one column: true when two source rows share an entity and event time."""
    return (
        f"SELECT count(*) > 0 FROM (SELECT 1 FROM {q(view.source)} "
        f"WHERE {q(view.entity)} IS NOT NULL AND {q(view.timestamp)} IS NOT NULL "
        f"GROUP BY {q(view.entity)}, {q(view.timestamp)} HAVING count(*) > 1 LIMIT 1)"
    )
