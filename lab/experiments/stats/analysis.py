"""Analysing a finished (fixed-horizon) experiment.

- ``proportion_test``: two-proportion z test with the pooled rate under H0 (statsmodels'
  ``proportions_ztest``); the interval on the difference is the unpooled Wald interval.
- ``mean_test`` / ``mean_test_from_summary``: Welch's t test (unequal variances); the
  interval on the difference uses the Welch–Satterthwaite degrees of freedom.
- Relative lift ``treatment / control − 1`` with a delta-method interval on the ratio of
  the two means: ``Var(m_t/m_c) ≈ Var(m_t)/m_c² + m_t²·Var(m_c)/m_c⁴`` (independent
  arms), normal critical value. It is symmetric and asymptotic; with a control mean near
  zero the lift, and its interval, are not meaningful (they come back as NaN at zero).
- ``adjust_pvalues``: Bonferroni, Holm, Benjamini–Hochberg, as statsmodels' ``multipletests``.
- ``srm_check``: sample-ratio mismatch, a chi-square goodness-of-fit test.
- ``cuped``: variance reduction with a pre-period covariate.

Intervals are two-sided at level 1 − alpha whatever ``alternative`` is; ``alternative``
only changes the p-value ("larger" means treatment above control). The tests broadcast:
give arrays (e.g. one entry per simulated experiment) and every field is an array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from lab.errors import ConfigError
from lab.experiments.stats._checks import check_alternative, check_probability

__all__ = [
    "Comparison", "CupedAdjustment", "SampleRatioCheck", "adjust_pvalues", "cuped", "mean_test",
    "mean_test_from_summary", "proportion_test", "relative_lift", "srm_check",
]

CORRECTIONS = ("bonferroni", "holm", "fdr_bh")


@dataclass(frozen=True)
class Comparison:
    """Treatment against control. Floats for scalar input, arrays for array input.

    ``effect`` is treatment − control with interval ``ci``; ``lift`` is the relative
    change treatment / control − 1 with interval ``lift_ci``; ``significant`` is
    ``p_value < alpha``.
    """

    metric_kind: str
    control: float
    treatment: float
    n_control: int
    n_treatment: int
    effect: float
    ci: tuple[float, float]
    lift: float
    lift_ci: tuple[float, float]
    statistic: float
    p_value: float
    alpha: float
    alternative: str
    significant: bool


def _scalar(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value


def _count(n):
    n = np.asarray(n)
    return _scalar(n.astype(int)) if np.all(n == np.round(n)) else _scalar(n)


def _p_value(statistic, alternative: str, dist) -> np.ndarray:
    if alternative == "two-sided":
        return np.minimum(1.0, 2.0 * dist.sf(np.abs(statistic)))
    if alternative == "larger":
        return dist.sf(statistic)
    return dist.cdf(statistic)


def relative_lift(control_mean, control_var_of_mean, treatment_mean, treatment_var_of_mean, alpha: float = 0.05):
    """Relative lift ``t/c − 1`` and its delta-method interval; returns (lift, (low, high)).

    The variances are of the arm means (unit variance / n). NaN where the control mean is 0.
    """
    c, t = np.asarray(control_mean, float), np.asarray(treatment_mean, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(c != 0, t / c, np.nan)
        var_ratio = np.asarray(treatment_var_of_mean) / c**2 + t**2 * np.asarray(control_var_of_mean) / c**4
    half = stats.norm.isf(alpha / 2.0) * np.sqrt(var_ratio)
    lift = ratio - 1.0
    return _scalar(lift), (_scalar(lift - half), _scalar(lift + half))


def proportion_test(successes_control, n_control, successes_treatment, n_treatment, *, alpha: float = 0.05,
                    alternative: str = "two-sided") -> Comparison:
    """Two-proportion z test (pooled) of treatment against control conversion.

    Counts may be arrays of the same shape. Raises ConfigError on negative counts or more
    successes than units.
    """
    alpha = check_probability("alpha", alpha)
    check_alternative(alternative)
    xc, nc, xt, nt = (np.asarray(a, dtype=float) for a in (successes_control, n_control,
                                                           successes_treatment, n_treatment))
    for name, x, n in (("control", xc, nc), ("treatment", xt, nt)):
        if np.any(~np.isfinite(x)) or np.any(~np.isfinite(n)) or np.any(n < 1) or np.any(x < 0) or np.any(x > n):
            got = f"successes={x.item()!r}, units={n.item()!r}" if x.size == n.size == 1 else "in some entries"
            raise ConfigError(f"{name}: need 0 <= successes <= units and units >= 1 ({got})")
    pc, pt = xc / nc, xt / nt
    effect = pt - pc
    pooled = (xc + xt) / (nc + nt)
    se_null = np.sqrt(pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nt))
    with np.errstate(divide="ignore", invalid="ignore"):
        # all-zero or all-one arms: no variance, and no difference to test
        z = np.where(se_null > 0, effect / se_null, 0.0)
    var_c, var_t = pc * (1 - pc) / nc, pt * (1 - pt) / nt
    half = stats.norm.isf(alpha / 2.0) * np.sqrt(var_c + var_t)
    lift, lift_ci = relative_lift(pc, var_c, pt, var_t, alpha)
    p = _p_value(z, alternative, stats.norm)
    return Comparison("proportion", _scalar(pc), _scalar(pt), _count(nc), _count(nt), _scalar(effect),
                      (_scalar(effect - half), _scalar(effect + half)), lift, lift_ci, _scalar(z), _scalar(p),
                      alpha, alternative, _scalar(p < alpha))


def mean_test_from_summary(mean_control, var_control, n_control, mean_treatment, var_treatment, n_treatment, *,
                           alpha: float = 0.05, alternative: str = "two-sided") -> Comparison:
    """Welch's t test from per-arm means, unit variances (ddof=1) and counts (n >= 2)."""
    alpha = check_probability("alpha", alpha)
    check_alternative(alternative)
    mc, vc, nc, mt, vt, nt = (np.asarray(a, dtype=float) for a in (mean_control, var_control, n_control,
                                                                   mean_treatment, var_treatment, n_treatment))
    for name, v, n in (("control", vc, nc), ("treatment", vt, nt)):
        if np.any(n < 2) or np.any(v < 0) or np.any(~np.isfinite(v)):
            got = f"n={n.item()!r}, var={v.item()!r}" if v.size == n.size == 1 else "in some entries"
            raise ConfigError(f"{name}: a t test needs at least 2 units and a finite variance >= 0 ({got})")
    sc, st = vc / nc, vt / nt  # variances of the arm means
    se = np.sqrt(sc + st)
    effect = mt - mc
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (sc + st) ** 2 / (sc**2 / (nc - 1) + st**2 / (nt - 1))
        t = effect / se
    dist = stats.t(df)
    half = dist.isf(alpha / 2.0) * se
    lift, lift_ci = relative_lift(mc, sc, mt, st, alpha)
    p = _p_value(t, alternative, dist)
    return Comparison("mean", _scalar(mc), _scalar(mt), _count(nc), _count(nt), _scalar(effect),
                      (_scalar(effect - half), _scalar(effect + half)), lift, lift_ci, _scalar(t), _scalar(p),
                      alpha, alternative, _scalar(p < alpha))


def mean_test(control, treatment, *, alpha: float = 0.05, alternative: str = "two-sided") -> Comparison:
    """Welch's t test on unit-level observations of each arm (1-d arrays)."""
    arms = []
    for name, values in (("control", control), ("treatment", treatment)):
        values = np.asarray(values, dtype=float)
        if values.ndim != 1 or values.size < 2 or not np.all(np.isfinite(values)):
            raise ConfigError(f"{name} must be a 1-d array of at least 2 finite values")
        arms.append(values)
    c, t = arms
    return mean_test_from_summary(c.mean(), c.var(ddof=1), c.size, t.mean(), t.var(ddof=1), t.size,
                                  alpha=alpha, alternative=alternative)


# --------------------------------------------------------------------------- multiple comparisons


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm", alpha: float = 0.05
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Correct p-values for multiple comparisons; returns (reject, adjusted), input order.

    ``method``: "bonferroni" (family-wise), "holm" (family-wise, step-down, never less
    powerful than Bonferroni) or "fdr_bh" (Benjamini–Hochberg false-discovery rate,
    independent or positively dependent tests). Agrees with statsmodels' ``multipletests``.
    """
    if method not in CORRECTIONS:
        raise ConfigError(f"method must be one of {', '.join(CORRECTIONS)}; got {method!r}")
    alpha = check_probability("alpha", alpha)
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ConfigError("pvalues must be a non-empty 1-d sequence")
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ConfigError(f"pvalues must lie in [0, 1]; got {p.tolist()!r}")
    m = p.size
    if method == "bonferroni":
        return p <= alpha / m, np.minimum(p * m, 1.0)

    order = np.argsort(p)
    ranked = p[order]
    reject_ranked = np.zeros(m, dtype=bool)
    if method == "holm":
        # step down: reject the smallest while p_(k) <= alpha / (m - k + 1), stop at the first failure
        remaining = np.arange(m, 0, -1)
        fails = np.flatnonzero(ranked > alpha / remaining)
        reject_ranked[: fails[0] if fails.size else m] = True
        adjusted_ranked = np.maximum.accumulate(ranked * remaining)
    else:
        # step up: reject every p up to the largest rank k with p_(k) <= alpha * k / m
        fraction = np.arange(1, m + 1) / m
        passes = np.flatnonzero(ranked <= fraction * alpha)
        if passes.size:
            reject_ranked[: passes[-1] + 1] = True
        adjusted_ranked = np.minimum.accumulate((ranked / fraction)[::-1])[::-1]
    reject, adjusted = np.empty(m, dtype=bool), np.empty(m)
    reject[order], adjusted[order] = reject_ranked, np.minimum(adjusted_ranked, 1.0)
    return reject, adjusted


# --------------------------------------------------------------------------- sample ratio


@dataclass(frozen=True)
class SampleRatioCheck:
    """Observed arm counts against the configured weights. ``mismatch`` is p < threshold."""

    statistic: float
    p_value: float
    mismatch: bool
    threshold: float
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    names: tuple[str, ...] | None = None


def srm_check(counts, weights, threshold: float = 0.001) -> SampleRatioCheck:
    """Chi-square goodness of fit of arm counts to the assignment weights.

    ``counts`` and ``weights`` are sequences in the same arm order, or mappings keyed by
    variant name. Weights are normalised (only their proportions matter) and must be > 0;
    an arm with weight 0 should have no units and is left out by the caller. A mismatch
    (p < threshold, 0.001 by default) means assignment or logging is broken: the effect
    estimates cannot be trusted until it is explained.
    """
    threshold = check_probability("threshold", threshold)
    names = None
    if isinstance(counts, Mapping):
        if not isinstance(weights, Mapping) or set(counts) != set(weights):
            raise ConfigError(f"counts and weights must name the same variants; got {sorted(counts)} "
                              f"and {sorted(weights) if isinstance(weights, Mapping) else weights!r}")
        names = tuple(counts)
        counts, weights = [counts[n] for n in names], [weights[n] for n in names]
    observed, w = np.asarray(counts, dtype=float), np.asarray(weights, dtype=float)
    if observed.ndim != 1 or observed.shape != w.shape or observed.size < 2:
        raise ConfigError(f"counts and weights need one entry per arm and at least 2 arms; "
                          f"got {observed.size} counts and {w.size} weights")
    if np.any(~np.isfinite(observed)) or np.any(observed < 0) or np.any(observed != np.round(observed)):
        raise ConfigError(f"counts must be whole numbers >= 0; got {observed.tolist()!r}")
    if np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise ConfigError(f"weights must be > 0 (leave out arms with weight 0); got {w.tolist()!r}")
    total = observed.sum()
    if total <= 0:
        raise ConfigError("counts are all zero: no units assigned yet, nothing to check")
    expected = total * w / w.sum()
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    p = float(stats.chi2.sf(statistic, observed.size - 1))
    return SampleRatioCheck(statistic, p, p < threshold, threshold, tuple(int(c) for c in observed),
                            tuple(float(e) for e in expected), names)


# --------------------------------------------------------------------------- CUPED


@dataclass(frozen=True)
class CupedAdjustment:
    """CUPED-adjusted outcomes: ``adjusted = y − theta·(x − mean(x))``.

    ``variance_reduction`` is ``1 − var(adjusted)/var(y)``, about corr(x, y)².
    """

    adjusted: np.ndarray
    theta: float
    variance_reduction: float
    correlation: float


def cuped(y, x, theta: float | None = None, *, arms=None) -> CupedAdjustment:
    """Adjust outcomes ``y`` with a pre-period covariate ``x`` of the same units (CUPED).

    ``theta`` defaults to cov(y, x) / var(x) estimated over the units of all arms
    together; with ``arms`` (one label per unit) it is pooled within arms instead (sum of
    within-arm cross-products over sum of within-arm squares), so a treatment effect on y
    cannot leak into it. ``x`` is centred on its mean over all arms, the same constant for
    every arm, so the difference of adjusted means estimates the same effect as the raw
    one (randomization makes the arms' x means equal in expectation) with less variance.
    The pre-period must precede assignment, or the treatment can move x too.
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    if y.ndim != 1 or y.shape != x.shape or y.size < 3:
        raise ConfigError(f"y and x must be 1-d arrays of the same length >= 3; got shapes {y.shape} and {x.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(x))):
        raise ConfigError("y and x must be finite (fill or drop units with a missing pre-period value first)")
    if arms is None:
        xc, yc = x - x.mean(), y - y.mean()
    else:
        labels = np.asarray(arms)
        if labels.shape != y.shape:
            raise ConfigError(f"arms must give one label per unit; got shape {labels.shape} for {y.size} units")
        xc, yc = np.empty_like(x), np.empty_like(y)
        for label in np.unique(labels):
            sel = labels == label
            xc[sel], yc[sel] = x[sel] - x[sel].mean(), y[sel] - y[sel].mean()
    sxx = float(np.dot(xc, xc))
    if sxx == 0.0:
        raise ConfigError("the covariate x is constant, so it cannot explain any variance; pick another covariate")
    if theta is None:
        theta = float(np.dot(xc, yc)) / sxx
    elif not np.isfinite(theta):
        raise ConfigError(f"theta must be a finite number, got {theta!r}")
    adjusted = y - theta * (x - x.mean())
    var_y = float(np.var(y, ddof=1))
    reduction = 1.0 - float(np.var(adjusted, ddof=1)) / var_y if var_y > 0 else 0.0
    correlation = float(np.corrcoef(x, y)[0, 1]) if var_y > 0 else 0.0
    return CupedAdjustment(adjusted, float(theta), reduction, correlation)
