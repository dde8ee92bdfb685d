"""Native drift statistics: a current window against a reference, column by column.

``compare(reference, current)`` takes two polars frames, or a ``ReferenceSketch`` for
either, and returns a ``DriftReport``. Per column:

- numeric: the Kolmogorov–Smirnov test (statistic and p-value), the first Wasserstein
  distance normed by the reference's standard deviation (Evidently's ``wasserstein``),
  the PSI and the Jensen–Shannon distance on the reference's quantile bins;
- categorical: Pearson's chi-square test of homogeneity, the Jensen–Shannon distance
  and the PSI of the category shares;
- both: the null share of each window, and (``nulls = "compare"``) a two-proportion
  test of it with Cohen's h as its effect.

**The verdict.** Every test's p-value in the report (one per column, plus one per column
whose null share is tested) is adjusted by Benjamini–Hochberg; a column is flagged when
its q-value is below ``alpha`` *and* its effect size reaches the threshold of
``DriftConfig`` (``[tool.lab.drift]``). Significance alone does not flag (a million rows
make a trivial shift significant), nor does size alone (a handful of rows make noise
look large). A column not flagged whose test had less than ``min_power`` to detect an
effect of the threshold's size at these sample sizes is reported *underpowered*, not
silently "no drift".

**Exact and sketched.** Two frames are compared exactly: sorted samples, both ECDFs over
the merged sample (KS and Wasserstein in one pass). Where a sketch is involved, numeric
columns are compared through quantile grids (the frame's side is sketched with the same
number of bins): the CDF is exact at grid values and linear between them, and each
column reports the bound of that approximation (``approximation``: at most the largest
share between two grid values per side for KS, share times width for Wasserstein).

``ledger_window`` and ``offline_window`` read the two usual current windows: the model
inputs the server logged, and the spec's features over the offline store.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from lab.config import DriftConfig
from lab.errors import LabError
from lab.monitoring import _drift_stats as st
from lab.monitoring._drift_sketch import (
    _THREADED_ROWS, CATEGORICAL, NUMERIC, CategoricalColumn, NumericColumn, ReferenceSketch, categorical_column,
    check_columns, check_frame, finite_or_none, map_columns, numeric_column,
)
from lab.monitoring._drift_windows import ledger_window, offline_window

__all__ = ["ColumnDrift", "DriftConfig", "DriftReport", "ReferenceSketch", "Test", "compare", "ledger_window",
           "offline_window"]

_STD_FLOOR = 0.001  # Evidently's: a constant reference norms the Wasserstein distance by this


@dataclass(frozen=True)
class Test:
    """One test's statistic and its (unadjusted) two-sided p-value."""

    statistic: float
    p_value: float


@dataclass(frozen=True)
class ColumnDrift:
    """One column's comparison. Shares are fractions; distances are unitless (normed or
    on shares); ``n_*`` count the non-null values compared, ``null_*`` are null shares.

    ``test`` names the test that decides (``ks`` or ``chi_square``), ``p_value`` is its
    p-value and ``q_value`` its Benjamini–Hochberg adjustment across the report; ``effect``
    names the effect size (``wasserstein``, ``jensen_shannon`` or ``psi``) whose value is
    ``effect_size`` and threshold ``threshold``; ``power`` is the test's approximate power
    at ``alpha`` to detect an effect of the threshold's size at these sample sizes.
    """

    column: str
    kind: str
    n_reference: int
    n_current: int
    null_reference: float
    null_current: float
    psi: float | None
    jensen_shannon: float | None
    ks: Test | None  # numeric
    wasserstein: float | None  # numeric: W1 / the reference's std (floored at 0.001, as Evidently)
    chi_square: Test | None  # categorical
    test: str
    p_value: float
    q_value: float
    effect: str
    effect_size: float | None
    threshold: float
    power: float
    underpowered: bool
    null_test: Test | None  # the null shares' two-proportion test (nulls = "compare" and some null)
    null_q_value: float | None
    null_effect: float | None  # Cohen's h between the null shares
    flagged: bool
    reason: str
    approximation: dict | None = None  # sketch comparisons: error bounds of "ks" and "wasserstein"
    new_categories: tuple[str, ...] = ()  # categorical: values of the current window the reference never had
    new_share: float = 0.0  # ... and their share of the current window's values

    @property
    def score(self) -> float:
        """The effect size (0 when the column had nothing to compare): what the registry keeps."""
        return 0.0 if self.effect_size is None else self.effect_size

    @property
    def method(self) -> str:
        return f"{self.test}+{self.effect}"


@dataclass(frozen=True)
class DriftReport:
    """Per-column drift of a current window against a reference, and how it was judged."""

    columns: dict[str, ColumnDrift]
    alpha: float
    config: dict
    rows_reference: int
    rows_current: int
    exact: bool  # False when a sketch was involved (see ``ColumnDrift.approximation``)
    meta: dict = field(default_factory=dict)

    @property
    def flagged(self) -> list[str]:
        """The drifted columns, in report order."""
        return [c for c, d in self.columns.items() if d.flagged]

    @property
    def drifted(self) -> bool:
        return any(d.flagged for d in self.columns.values())

    @property
    def underpowered(self) -> list[str]:
        return [c for c, d in self.columns.items() if d.underpowered]

    def scores(self) -> dict[str, dict]:
        """``{column: {"score", "drifted", "method", ...}}`` as the registry's
        ``record_drift`` takes it (score: the effect size)."""
        return {c: {"score": d.score, "drifted": d.flagged, "method": d.method, "threshold": d.threshold,
                    "q_value": d.q_value, "reason": d.reason} for c, d in self.columns.items()}

    def to_dict(self) -> dict:
        """A JSON-safe dict (no NaN or infinity: those become null)."""
        return _json_safe({
            "flagged": self.flagged, "drifted": self.drifted, "underpowered": self.underpowered,
            "alpha": self.alpha, "config": self.config, "rows_reference": self.rows_reference,
            "rows_current": self.rows_current, "exact": self.exact, "meta": self.meta,
            "columns": {c: asdict(d) for c, d in self.columns.items()},
        })

    def table(self) -> str:
        """A short text table, one line per column; flagged ones marked."""
        lines = [f"drift: {self.rows_current} current row(s) against {self.rows_reference} reference row(s); "
                 f"flagged when q < {self.alpha:g} and the effect reaches its threshold"
                 + ("" if self.exact else " (reference sketch: approximate)"),
                 f"{'column':<32} {'test':<10} {'q':>9} {'effect':<15} {'size':>8} {'power':>6}  verdict"]
        for c, d in self.columns.items():
            size = "-" if d.effect_size is None else f"{d.effect_size:.4g}"
            lines.append(f"{c:<32} {d.test:<10} {d.q_value:>9.3g} {d.effect:<15} {size:>8} {d.power:>6.2f}  "
                         f"{'DRIFT: ' if d.flagged else ''}{d.reason}")
        lines.append(f"flagged: {', '.join(self.flagged)}" if self.drifted else "no column flagged")
        return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- comparing -------------------------------------------------------------------------

@dataclass
class _Measured:
    """A column's statistics before the report-wide adjustment."""

    kind: str
    n_reference: int
    n_current: int
    null_reference: float
    null_current: float
    psi: float | None = None
    jensen_shannon: float | None = None
    ks: Test | None = None
    wasserstein: float | None = None
    chi_square: Test | None = None
    p_value: float | None = None  # None: nothing to test (a side with no values)
    effect_size: float | None = None
    power: float = 0.0
    null_test: Test | None = None
    null_effect: float | None = None
    approximation: dict | None = None
    new_categories: tuple[str, ...] = ()
    new_share: float = 0.0


def compare(reference: pl.DataFrame | ReferenceSketch, current: pl.DataFrame | ReferenceSketch,
            columns: Sequence[str] | None = None, *, categorical: Iterable[str] = (),
            config: DriftConfig | None = None) -> DriftReport:
    """Drift of ``current`` against ``reference`` per column (see the module's docstring).

    ``columns``: default every column of the reference (a sketch's columns). ``categorical``:
    the columns compared by category; with a sketch, its own kinds hold and must agree.
    ``config``: thresholds and options (default ``DriftConfig()``; a lab's is
    ``config.drift``, from ``[tool.lab.drift]``). An unknown column, an empty frame, a
    non-numeric column not declared categorical: ``LabError`` naming the fix.
    """
    config = config or DriftConfig()
    if not isinstance(config, DriftConfig):
        raise LabError(f"config must be a DriftConfig ([tool.lab.drift]), got {type(config).__name__}")
    categorical = [categorical] if isinstance(categorical, str) else list(categorical)
    sides = {}
    for what, side in (("reference", reference), ("current", current)):
        sides[what] = side if isinstance(side, ReferenceSketch) else check_frame(side, what)
    ref, cur = sides["reference"], sides["current"]
    available = list(ref.columns) if isinstance(ref, ReferenceSketch) else ref.columns
    columns = check_columns(available, columns, categorical, "reference")
    kinds = _kinds(ref, cur, columns, categorical)
    if not isinstance(cur, ReferenceSketch):
        absent = [c for c in columns if c not in cur.columns]
        if absent:
            raise LabError(f"the current frame has no column(s) {', '.join(map(repr, absent))} (it has "
                           f"{', '.join(cur.columns)}): select the same columns in both windows, or leave them "
                           f"out of columns=[...]")
    exact = not any(isinstance(side, ReferenceSketch) for side in sides.values())
    longest = max((s.height for s in sides.values() if not isinstance(s, ReferenceSketch)), default=0)
    parallel = len(columns) > 1 and longest >= _THREADED_ROWS and (os.cpu_count() or 1) > 1
    bins = next((s.bins for s in sides.values() if isinstance(s, ReferenceSketch)), config.sketch_bins)

    def read(side, column: str, what: str):
        if isinstance(side, ReferenceSketch):
            return side.columns[column]
        series = side.get_column(column)
        if kinds[column] == CATEGORICAL:
            return categorical_column(series)
        # the reference's std norms the distance; one sort per core when columns run in parallel
        return numeric_column(series, what, moments=what == "reference", parallel=not parallel)

    def measure(column: str) -> _Measured:
        r, c = read(ref, column, "reference"), read(cur, column, "current")
        if isinstance(r, NumericColumn):
            return _numeric(r, c, config, bins)
        return _categorical(r, c, config)

    measured = dict(zip(columns, map_columns(measure, columns, parallel)))
    return _judge(measured, config, rows_reference=_rows(ref), rows_current=_rows(cur), exact=exact)


def _rows(side) -> int:
    return side.rows if isinstance(side, ReferenceSketch) else side.height


def _kinds(ref, cur, columns: list[str], categorical: list[str]) -> dict[str, str]:
    kinds = {c: CATEGORICAL if c in categorical else NUMERIC for c in columns}
    if isinstance(ref, ReferenceSketch) and isinstance(cur, ReferenceSketch):
        differ = [c for c in columns if c in ref.columns and c in cur.columns
                  and ref.columns[c].kind != cur.columns[c].kind]
        if differ:
            raise LabError(f"column(s) {', '.join(map(repr, differ))} are numeric in one sketch and categorical in "
                           f"the other: rebuild them with the same categorical=[...]")
    for what, side in (("reference", ref), ("current", cur)):
        if not isinstance(side, ReferenceSketch):
            continue
        missing = [c for c in columns if c not in side.columns]
        if missing:
            raise LabError(f"the {what} sketch has no column(s) {', '.join(map(repr, missing))}; it has "
                           f"{', '.join(side.columns)}: rebuild it with them, or leave them out of columns=[...]")
        clash = [c for c in categorical if side.columns[c].kind != CATEGORICAL]
        if clash:
            raise LabError(f"column(s) {', '.join(map(repr, clash))} are numeric in the {what} sketch but were "
                           f"passed as categorical: rebuild the sketch with categorical=[...] naming them")
        kinds.update({c: side.columns[c].kind for c in columns})
    return kinds


def _null_shares(r, c) -> tuple[float, float]:
    return (r.nulls / r.rows if r.rows else 0.0), (c.nulls / c.rows if c.rows else 0.0)


def _effect_as_shift(effect: str, threshold: float) -> float:
    """The normal location shift (in standard deviations) whose effect size is
    ``threshold``: Wasserstein normed is the shift itself; on quantile bins PSI is about
    the shift squared, and the Jensen–Shannon divergence about an eighth of it."""
    if effect == "wasserstein":
        return threshold
    if effect == "psi":
        return math.sqrt(threshold)
    return threshold * math.sqrt(8.0)


def _numeric(r: NumericColumn, c: NumericColumn, config: DriftConfig, bins: int) -> _Measured:
    null_r, null_c = _null_shares(r, c)
    out = _Measured(NUMERIC, r.n, c.n, null_r, null_c)
    _null_test(out, r, c, config)
    if r.n == 0 or c.n == 0:
        return out
    if r.values is not None and c.values is not None:
        ks, w1 = st.ecdf_gap(r.values, c.values)
        p = st.ks_p_value(ks, r.n, c.n, r.values, c.values)
        edges = np.unique(r.values[-((-np.arange(1, config.psi_bins) * r.n) // config.psi_bins) - 1])
        cum_r = np.searchsorted(r.values, edges, side="right") / r.n
        cum_c = np.searchsorted(c.values, edges, side="right") / c.n
    else:
        gr, gc = r.as_grid(bins), c.as_grid(bins)
        ks, w1 = st.grid_gap(gr, gc)
        p = st.ks_p_value(ks, r.n, c.n)
        edges = gr.quantile_edges(config.psi_bins)
        cum_r, cum_c = gr.cdf(edges)[0], gc.cdf(edges)[0]
        (mass_r, area_r), (mass_c, area_c) = gr.spread(), gc.spread()
        out.approximation = {"ks": mass_r + mass_c,
                             "wasserstein": (area_r + area_c) / max(r.std or 0.0, _STD_FLOOR)}
    share_r = np.diff(np.concatenate([[0.0], cum_r, [1.0]]))
    share_c = np.diff(np.concatenate([[0.0], cum_c, [1.0]]))
    out.ks = Test(ks, p)
    out.p_value = p
    out.wasserstein = w1 / max(r.std or 0.0, _STD_FLOOR)
    out.psi = st.psi(share_r, share_c)
    out.jensen_shannon = st.jensen_shannon(share_r, share_c)
    out.effect_size = {"wasserstein": out.wasserstein, "psi": out.psi,
                       "jensen_shannon": out.jensen_shannon}[config.numeric_effect]
    out.power = st.ks_power(_effect_as_shift(config.numeric_effect, config.numeric_threshold), r.n, c.n,
                            config.alpha)
    return out


def _categorical(r: CategoricalColumn, c: CategoricalColumn, config: DriftConfig) -> _Measured:
    null_r, null_c = _null_shares(r, c)
    out = _Measured(CATEGORICAL, r.n, c.n, null_r, null_c)
    _null_test(out, r, c, config)
    if r.n == 0 or c.n == 0:
        return out
    keys = sorted(set(r.counts) | set(c.counts))
    out.new_categories = tuple(k for k in keys if k not in r.counts)
    out.new_share = sum(c.counts[k] for k in out.new_categories) / c.n
    a = np.array([r.counts.get(k, 0) for k in keys], dtype=np.float64)
    b = np.array([c.counts.get(k, 0) for k in keys], dtype=np.float64)
    statistic, df, p = st.chi_square(a, b)
    out.chi_square = Test(statistic, p)
    out.p_value = p
    out.psi = st.psi(a / a.sum(), b / b.sum())
    out.jensen_shannon = st.jensen_shannon(a, b)
    out.effect_size = out.jensen_shannon if config.categorical_effect == "jensen_shannon" else out.psi
    # noncentrality of a shift of the threshold's size: n_eff * sum (p-q)^2 / mean share,
    # which is about 8 JSD for Jensen-Shannon and about the PSI itself
    per_row = (8.0 * config.categorical_threshold**2 if config.categorical_effect == "jensen_shannon"
               else config.categorical_threshold)
    effective = r.n * c.n / (r.n + c.n)
    out.power = st.chi_square_power(effective * per_row, max(df, 1), config.alpha)
    return out


def _null_test(out: _Measured, r, c, config: DriftConfig) -> None:
    if config.nulls != "compare" or (r.nulls == 0 and c.nulls == 0):
        return
    out.null_test = Test(*st.two_proportion_test(r.nulls, r.rows, c.nulls, c.rows))
    out.null_effect = st.cohens_h(out.null_reference, out.null_current)


def _judge(measured: dict[str, _Measured], config: DriftConfig, *, rows_reference: int, rows_current: int,
           exact: bool) -> DriftReport:
    family = [(c, "values", m.p_value) for c, m in measured.items() if m.p_value is not None]
    family += [(c, "nulls", m.null_test.p_value) for c, m in measured.items() if m.null_test is not None]
    q = dict(zip([(c, part) for c, part, _ in family], st.benjamini_hochberg([p for *_, p in family])))
    out = {}
    for column, m in measured.items():
        numeric = m.kind == NUMERIC
        effect = config.numeric_effect if numeric else config.categorical_effect
        threshold = config.numeric_threshold if numeric else config.categorical_threshold
        q_values = q.get((column, "values"), 1.0)
        q_nulls = q.get((column, "nulls"))
        shifted = (m.p_value is not None and q_values < config.alpha and m.effect_size >= threshold)
        null_shifted = q_nulls is not None and q_nulls < config.alpha and m.null_effect >= config.null_threshold
        underpowered = not shifted and m.power < config.min_power
        reason = _reason(m, effect, threshold, q_values, shifted, underpowered, config)
        if m.new_categories:
            named = ", ".join(m.new_categories[:5]) + (", ..." if len(m.new_categories) > 5 else "")
            reason += f"; new: {named} ({m.new_share:.1%} of the current values)"
        if m.null_test is not None and (null_shifted or m.null_effect >= config.null_threshold):
            h = f"null share {m.null_reference:.3g} -> {m.null_current:.3g}"
            reason = (f"{h}: shift above threshold and significant (Cohen's h {m.null_effect:.3g} >= "
                      f"{config.null_threshold:g}, q {q_nulls:.3g} < {config.alpha:g})" if null_shifted
                      else f"{h} but not significant (Cohen's h {m.null_effect:.3g}, q {q_nulls:.3g})") + f"; {reason}"
        out[column] = ColumnDrift(
            column=column, kind=m.kind, n_reference=m.n_reference, n_current=m.n_current,
            null_reference=m.null_reference, null_current=m.null_current, psi=finite_or_none(m.psi),
            jensen_shannon=m.jensen_shannon, ks=m.ks, wasserstein=m.wasserstein, chi_square=m.chi_square,
            test="ks" if numeric else "chi_square", p_value=1.0 if m.p_value is None else m.p_value,
            q_value=float(q_values), effect=effect, effect_size=m.effect_size, threshold=threshold,
            power=m.power, underpowered=underpowered, null_test=m.null_test,
            null_q_value=None if q_nulls is None else float(q_nulls), null_effect=m.null_effect,
            flagged=bool(shifted or null_shifted), reason=reason, approximation=m.approximation,
            new_categories=m.new_categories, new_share=m.new_share)
    return DriftReport(columns=out, alpha=config.alpha, config=asdict(config), rows_reference=rows_reference,
                       rows_current=rows_current, exact=exact)


def _reason(m: _Measured, effect: str, threshold: float, q: float, shifted: bool, underpowered: bool,
            config: DriftConfig) -> str:
    if m.p_value is None:
        side = "reference" if m.n_reference == 0 else "current window"
        return f"no values to compare: the {side} has only nulls"
    size = f"{effect} {m.effect_size:.3g}"
    if shifted:
        return f"shift above threshold and significant ({size} >= {threshold:g}, q {q:.3g} < {config.alpha:g})"
    significant = q < config.alpha
    if significant:
        return f"significant but trivial effect ({size} < {threshold:g}, q {q:.3g})"
    if underpowered:
        return (f"underpowered: n too small to detect {effect} {threshold:g} at alpha {config.alpha:g} "
                f"(power {m.power:.2f}; {m.n_reference} vs {m.n_current} values; {size}, q {q:.3g})")
    if m.effect_size >= threshold:
        return f"effect above threshold but not significant ({size}, q {q:.3g})"
    return f"no drift ({size} < {threshold:g}, q {q:.3g})"
