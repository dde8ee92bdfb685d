"""The numbers behind ``lab.monitoring.drift``: two-sample statistics on sorted arrays,
on quantile sketches and on category counts, their p-values, power and the FDR adjustment.

Pure numpy and scipy (distributions only). Every function takes plain arrays; nothing
here knows a frame, a column name or a configuration.

Conventions: an ECDF is right-continuous, ``F(x) = share of values <= x``; distances
between two distributions use the reference as the first argument; logarithms are
natural (Jensen–Shannon distance is ``sqrt(JSD)`` in nats, as
``scipy.spatial.distance.jensenshannon``).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

PSI_FLOOR = 1e-4
"""A bin's share below this counts as this in the PSI: an empty bin is not an infinite PSI."""

_EXACT_KS_N = 10_000  # both samples at most this: scipy's exact two-sample KS distribution
_EXACT_CRIT_N = 10_000  # effective n up to this: kstwo's critical value (it is slow beyond)


# -- exact ECDF comparison of two sorted samples ---------------------------------------

def ecdf_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(ks, w1)`` of two sorted, finite, non-empty samples, exactly.

    ``ks`` is the Kolmogorov–Smirnov statistic ``sup |F_a - F_b|``; ``w1`` the first
    Wasserstein distance ``integral |F_a - F_b| dx`` (in the values' units). One pass over
    the merged sample: a stable merge of the two sorted runs (ties: ``a`` first), then both
    ECDFs are counts along the merged order, kept as ``n*m*(F_a - F_b)`` in integers so the
    supremum is exact. It is read at the last position of each run of equal values only,
    where both ECDFs hold their true (right-continuous) values.
    """
    n, m = a.size, b.size
    total = n + m
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="stable")  # two sorted runs: one merge
    merged = both[order]
    gap = np.cumsum(order >= n, dtype=np.int64)  # b's values seen so far
    gap *= -total
    gap += _multiples(m, total)  # (position + 1) * m
    np.abs(gap, out=gap)
    step = np.diff(merged)
    inner = gap[:-1]
    w1 = float(np.einsum("i,i->", inner, step)) / (n * m)  # einsum: no BLAS threads for a dot
    top = int(inner.argmax()) if inner.size else 0
    if inner.size and step[top] == 0:  # inside a run of ties the counts are partial
        inner[step == 0] = 0
        top = int(inner.argmax())
    return (float(inner[top]) if inner.size else 0.0) / (n * m), w1


@functools.lru_cache(maxsize=4)
def _multiples(m: int, total: int) -> np.ndarray:
    """``m, 2m, ..., total*m`` (int64), kept for the next column of the same sizes."""
    out = np.arange(m, (total + 1) * m, m, dtype=np.int64)
    out.flags.writeable = False
    return out


def ks_p_value(ks: float, n: int, m: int, a: np.ndarray | None = None, b: np.ndarray | None = None) -> float:
    """Two-sided p-value of the KS statistic ``ks`` between samples of ``n`` and ``m``.

    With both samples given and both at most 10,000 values: scipy's exact distribution
    (``ks_2samp(method="exact")``). Otherwise Smirnov's asymptotic form, as
    ``ks_2samp(method="asymp")`` computes it (``kstwo.sf(ks, round(n*m/(n+m)))``) up to
    an effective n of 10,000, and beyond it the limiting Kolmogorov distribution
    ``kstwobign.sf(ks * sqrt(n*m/(n+m)))``: within 0.5 % of the former there (slightly
    larger: conservative) and a thousand times cheaper (``kstwo`` takes seconds at 10^6).
    """
    if n == 0 or m == 0:
        return 1.0
    if a is not None and b is not None and max(n, m) <= _EXACT_KS_N:
        with warnings.catch_warnings():  # scipy falls back to the asymptotic form itself, warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(stats.ks_2samp(a, b, method="exact").pvalue)
    en = n * m / (n + m)
    if en <= _EXACT_KS_N:
        return float(np.clip(stats.kstwo.sf(ks, max(round(en), 1)), 0.0, 1.0))
    return float(np.clip(stats.kstwobign.sf(ks * math.sqrt(en)), 0.0, 1.0))


@functools.lru_cache(maxsize=1024)
def ks_critical(n: int, m: int, alpha: float) -> float:
    """The KS statistic a two-sided test at ``alpha`` needs between ``n`` and ``m`` values."""
    en = n * m / (n + m)
    if en <= _EXACT_CRIT_N:
        return float(stats.kstwo.isf(alpha, max(round(en), 1)))
    return float(stats.kstwobign.isf(alpha) / math.sqrt(en))


def ks_power(shift: float, n: int, m: int, alpha: float) -> float:
    """Approximate power of the two-sided KS test at ``alpha`` against a normal location
    shift of ``shift`` standard deviations (whose normed Wasserstein distance is ``shift``).

    For large samples ``sqrt(en) * KS`` (``en = n*m/(n+m)``) behaves as ``sup |B(t) +
    sqrt(en) * h(t)|``, ``B`` a Brownian bridge and ``h(t) = t - Phi(Phi^-1(t) - shift)``
    the gap of the two CDFs at the reference's quantile ``t``. Power is the share of
    simulated bridges (a fixed seed: the answer is deterministic) whose path crosses the
    critical value, taken from the same bridges without the shift (so the grid's
    discreteness cancels) and scaled to the finite-sample critical value. Checked against
    simulated KS tests within a few points from 100 values up.
    """
    if n == 0 or m == 0:
        return 0.0
    en = n * m / (n + m)
    finite = ks_critical(n, m, alpha) * math.sqrt(en) / _asymptotic_critical(alpha)
    return _bridge_power(float(shift), round(en, 1), float(alpha), round(finite, 4))


_BRIDGE_PATHS, _BRIDGE_POINTS = 2000, 256


@functools.lru_cache(maxsize=1)
def _bridges() -> tuple[np.ndarray, np.ndarray]:
    """Brownian bridges at the midpoints of ``_BRIDGE_POINTS`` cells, seeded, and the
    largest absolute value of each (the KS statistic's null distribution on that grid)."""
    rng = np.random.default_rng(20240601)
    t = (np.arange(1, _BRIDGE_POINTS + 1) - 0.5) / _BRIDGE_POINTS
    walk = np.cumsum(rng.standard_normal((_BRIDGE_PATHS, _BRIDGE_POINTS)) / math.sqrt(_BRIDGE_POINTS), axis=1)
    bridges = walk - t * walk[:, -1:]
    return bridges, np.abs(bridges).max(axis=1)


@functools.lru_cache(maxsize=256)
def _bridge_power(shift: float, en: float, alpha: float, finite: float) -> float:
    bridges, sup = _bridges()
    critical = float(np.quantile(sup, 1.0 - alpha)) * finite
    t = (np.arange(1, _BRIDGE_POINTS + 1) - 0.5) / _BRIDGE_POINTS
    drift = math.sqrt(en) * (t - stats.norm.cdf(stats.norm.ppf(t) - shift))
    return float((np.abs(bridges + drift).max(axis=1) > critical).mean())


@functools.lru_cache(maxsize=64)
def _asymptotic_critical(alpha: float) -> float:
    return float(stats.kstwobign.isf(alpha))


# -- a sorted sample's quantile sketch ---------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A sorted sample of ``n`` values summarized at (at most) ``bins + 1`` of its values.

    ``values`` are distinct order statistics at the probabilities ``k / bins`` (the
    minimum and maximum included); ``le[k]`` counts the sample's values ``<= values[k]``
    and ``lt[k]`` those ``< values[k]``, exactly. So the ECDF is exact at every grid value
    (its jumps there, atoms, included: a column with at most ``bins`` distinct values is
    held whole) and, between two grid values, the mass ``lt[k+1] - le[k]`` is taken as
    spread evenly (the CDF is interpolated linearly).
    """

    n: int
    values: np.ndarray
    le: np.ndarray
    lt: np.ndarray

    @classmethod
    def of_sorted(cls, sample: np.ndarray, bins: int) -> "Grid":
        n = sample.size
        if n == 0:
            empty = np.empty(0)
            return cls(0, empty, empty.astype(np.int64), empty.astype(np.int64))
        k = np.arange(bins + 1, dtype=np.int64)
        index = np.clip(-((-k * n) // bins) - 1, 0, n - 1)  # ceil(k n / bins) - 1: the inverted-CDF quantile
        values = np.unique(sample[index])
        return cls(n, values, np.searchsorted(sample, values, side="right").astype(np.int64),
                   np.searchsorted(sample, values, side="left").astype(np.int64))

    def cdf(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(F(x), F(x-))``: the interpolated CDF and its left limit at each of ``x``."""
        v, n = self.values, self.n
        k = np.searchsorted(v, x, side="right") - 1
        at = np.clip(k, 0, v.size - 1)
        nxt = np.clip(k + 1, 0, v.size - 1)
        width = v[nxt] - v[at]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(width > 0, (x - v[at]) / width, 0.0)
        between = self.le[at] + (self.lt[nxt] - self.le[at]) * frac
        on_grid = v[at] == x
        right = np.where(k < 0, 0.0, np.where(k >= v.size - 1, n, np.where(on_grid, self.le[at], between)))
        left = np.where(k < 0, 0.0, np.where(on_grid, self.lt[at], right))
        return right / n, left / n

    def quantile_edges(self, parts: int) -> np.ndarray:
        """The distinct inner edges cutting the sample into ``parts`` equal-count bins:
        the order statistic at ``j / parts`` (the smallest grid value whose ECDF reaches it;
        exact when the grid's ``bins`` is a multiple of ``parts``)."""
        need = -((-np.arange(1, parts, dtype=np.int64) * self.n) // parts)  # ceil(j n / parts)
        index = np.clip(np.searchsorted(self.le, need, side="left"), 0, self.values.size - 1)
        return np.unique(self.values[index])

    def spread(self) -> tuple[float, float]:
        """``(mass, area)``: the largest share between two grid values, and the sum over
        the gaps of share times width. They bound the interpolation's error in the KS
        statistic and in the Wasserstein distance (units of the values)."""
        if self.values.size < 2:
            return 0.0, 0.0
        inner = (self.lt[1:] - self.le[:-1]) / self.n
        return float(inner.max()), float(np.einsum("i,i->", inner, np.diff(self.values)))


def grid_gap(a: Grid, b: Grid) -> tuple[float, float]:
    """``(ks, w1)`` between two sketches' interpolated CDFs (``Grid.cdf``).

    Both CDFs are linear between consecutive points of the union of the grids, so the
    supremum is at a point (its value or its left limit) and the integral of ``|F_a -
    F_b|`` is exact per interval (with the crossing of a sign change). The error against
    the samples' exact figures is bounded by ``Grid.spread`` of each.
    """
    x = np.union1d(a.values, b.values)
    fa, fa_left = a.cdf(x)
    fb, fb_left = b.cdf(x)
    start, end = (fa - fb)[:-1], (fa_left - fb_left)[1:]
    ks = float(max(np.abs(fa - fb).max(), np.abs(fa_left - fb_left).max()))
    s, e = np.abs(start), np.abs(end)
    same = np.sign(start) * np.sign(end) >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = np.where(s + e > 0, (start**2 + end**2) / (2.0 * (s + e)), 0.0)
    mean_gap = np.where(same, (s + e) / 2.0, crossing)
    return ks, float(np.einsum("i,i->", mean_gap, np.diff(x)))


# -- shares: PSI, Jensen-Shannon, chi-square -------------------------------------------

def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of the shares ``actual`` against ``expected`` (each
    floored at ``PSI_FLOOR``)."""
    e = np.maximum(expected, PSI_FLOOR)
    a = np.maximum(actual, PSI_FLOOR)
    return float(max(0.0, np.sum((a - e) * np.log(a / e))))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance (``sqrt`` of the divergence, natural log) of two share
    vectors; 0 for identical, ``sqrt(ln 2) ~ 0.83`` for disjoint supports."""
    p = p / p.sum()
    q = q / q.sum()
    mid = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / mid), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log(q / mid), 0.0).sum()
    return float(math.sqrt(max(0.0, (kl_p + kl_q) / 2.0)))


def chi_square(a: np.ndarray, b: np.ndarray) -> tuple[float, int, float]:
    """``(statistic, df, p_value)``: Pearson's chi-square test of homogeneity of two count
    vectors over the same categories (a 2 x k table, no continuity correction; categories
    empty on both sides left out). One category: nothing to test, p = 1."""
    keep = (a + b) > 0
    a, b = a[keep].astype(np.float64), b[keep].astype(np.float64)
    k = a.size
    if k < 2 or a.sum() == 0 or b.sum() == 0:
        return 0.0, max(k - 1, 0), 1.0
    total = a.sum() + b.sum()
    col = a + b
    ea, eb = col * a.sum() / total, col * b.sum() / total
    statistic = float(((a - ea) ** 2 / ea).sum() + ((b - eb) ** 2 / eb).sum())
    return statistic, k - 1, float(stats.chi2.sf(statistic, k - 1))


def chi_square_power(noncentrality: float, df: int, alpha: float) -> float:
    """Power of the chi-square test with ``df`` degrees of freedom at ``alpha`` when the
    alternative's noncentrality is ``noncentrality``."""
    df = max(df, 1)
    return float(stats.ncx2.sf(stats.chi2.isf(alpha, df), df, noncentrality))


# -- null share -------------------------------------------------------------------------

def cohens_h(p1: float, p2: float) -> float:
    """Cohen's h between two proportions: ``|2 asin sqrt p2 - 2 asin sqrt p1|`` (0.2 small)."""
    return abs(2.0 * math.asin(math.sqrt(p2)) - 2.0 * math.asin(math.sqrt(p1)))


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """``(z, p_value)`` of the pooled two-proportion z test of ``x2/n2`` against ``x1/n1``
    (two-sided; ``(0, 1)`` when nothing varies)."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return float(z), float(min(1.0, 2.0 * stats.norm.sf(abs(z))))


# -- many columns at once ---------------------------------------------------------------

def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values): ``q_(i) = min over j >= i of
    m p_(j) / j``, capped at 1, in the input's order. Rejecting ``q < alpha`` keeps the
    expected share of false discoveries at or below ``alpha`` (independent or positively
    dependent tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out
