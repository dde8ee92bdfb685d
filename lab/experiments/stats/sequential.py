"""Always-valid inference for an experiment that is watched while it runs.

A mixture sequential probability ratio test (mSPRT; Johari, Pekelis, Koomen and Walsh,
"Always valid inference: continuous monitoring of A/B tests", Operations Research 2022).
At each look the difference of arm means ``Δ̂ = m_t − m_c`` is treated as normal with
variance ``V``. Mixing the likelihood ratio of ``θ`` against ``θ₀`` over
``θ ~ N(θ₀, τ²)`` gives, in closed form,

    Λ = √(V / (V + τ²)) · exp( τ²·(Δ̂ − θ₀)² / (2·V·(V + τ²)) ).

With ``V = σ²·(1/n_c + 1/n_t)`` for a known common variance ``σ²``, Λ is a martingale
under H0 however the units are split between the arms (the split may be 99/1 and may
change, as long as it does not depend on the outcomes), so by Ville's inequality
``P(Λ ever reaches 1/α) ≤ α``: one may look after every unit and stop whenever. The
always-valid p-value is the running minimum of ``min(1, 1/Λ)``; the confidence sequence
is the running intersection of the sets of θ₀ not rejected, a band whose half-width is

    r = √( 2·V·(V + τ²)/τ² · ( log(1/α) + ½·log((V + τ²)/V) ) ).

Choices, documented because they matter:

- **Variance: pooled under the null.** ``σ²`` is estimated from both arms together:
  for means the pooled within-arm variance ``((n_c−1)s_c² + (n_t−1)s_t²)/(n_c+n_t−2)``;
  for proportions ``p̄(1 − p̄)`` with ``p̄`` the pooled rate. Estimating each arm's
  variance on its own (Welch-style) is anti-conservative when one arm is small: a 10 %
  arm with two units or no conversion yet has a variance near 0, and a difference of a
  few units reads as overwhelming evidence (A/A false-positive rates of 25–95 % at
  90/10 and 99/1 splits looked at from the start).
- **No decision before a minimum sample** (``MIN_UNITS`` units in each arm; for
  proportions also ``MIN_EVENTS`` expected events and non-events in each arm at the
  pooled rate). Before that the plug-in variance and the normal approximation are not
  trustworthy: such looks count as no evidence (Λ = 1, the band is infinite) and
  ``SequentialResult.ready`` is False.
- **The guarantee** is exact for normal outcomes with a known common variance and
  asymptotic (large arms) otherwise; with the two rules above, simulated A/A experiments
  at 50/50, 90/10 and 99/1 looked at every 5 units stay at or below alpha for mixing
  scales from well below to far above the effect (tests/test_experiment_stats.py;
  benchmarks/bench_sequential.py prints the rates).
- **The band for proportions** uses the larger of the pooled variance and the unpooled
  ``p̂_c(1 − p̂_c)/n_c + p̂_t(1 − p̂_t)/n_t``: the pooled one is right at θ = 0 but too small
  for a large effect on a small arm. It can therefore be a little wider than the test.
- **Mixing scale τ: the planned MDE** (absolute, in the metric's units). The evidence Λ
  for an observed effect δ peaks at ``τ² = δ² − V``; at the planned sample size an effect
  equal to the MDE is about 2.8 standard errors, so the best τ is about 0.93·MDE. A τ much
  smaller than the effects that occur slows detection of big effects; a τ much larger
  slows detection of small ones. Neither affects validity.
- Two-sided only: the normal mixture is symmetric around θ₀.
- ``margin`` (used by the guardrails) tests ``mean_t = margin · mean_c`` instead of
  equality: control is scaled by it before pooling (for proportions the null rates are
  ``p_c0 = (x_c + x_t)/(n_c + margin·n_t)`` and ``p_t0 = margin·p_c0``).

Every function broadcasts, with looks along the last axis, so one call can evaluate
thousands of simulated experiments at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.errors import ConfigError
from lab.experiments.stats._checks import check_positive, check_probability

__all__ = [
    "MIN_EVENTS", "MIN_UNITS", "SequentialResult", "always_valid_p_values", "boundary", "confidence_sequence",
    "difference_variance", "mixture_log_likelihood_ratio", "pooled_variance", "sequential_proportion_test",
    "sequential_test", "sequential_test_observations",
]

MIN_UNITS = 10
"""No decision before each arm has this many units: a look before counts as no evidence."""
MIN_EVENTS = 5
"""Proportions: no decision before each arm expects this many events and as many
non-events at the pooled rate (``n_arm · p̄ >= 5`` and ``n_arm · (1 − p̄) >= 5``)."""


@dataclass(frozen=True)
class SequentialResult:
    """The mSPRT at every look (arrays, looks along the last axis).

    ``p_value`` is always valid (non-increasing); ``ci_lower``/``ci_upper`` is the
    confidence sequence for treatment − control; ``boundary`` is the |effect| that had to
    be exceeded at each look to reject; ``variance`` is the variance of the effect under
    the null (pooled); ``ready`` says whether the look had the minimum sample (looks
    before it carry no evidence); ``rejected`` is ``p_value <= alpha``; ``stopped_at`` is
    the first look that rejected, −1 where none did.
    """

    effect: np.ndarray
    variance: np.ndarray
    log_likelihood_ratio: np.ndarray
    p_value: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    boundary: np.ndarray
    ready: np.ndarray
    alpha: float
    tau: float

    @property
    def rejected(self) -> np.ndarray:
        return self.p_value <= self.alpha

    @property
    def stopped_at(self):
        rejected = self.rejected
        first = np.where(rejected.any(axis=-1), rejected.argmax(axis=-1), -1)
        return first.item() if first.ndim == 0 else first


def difference_variance(var_control, n_control, var_treatment, n_treatment) -> np.ndarray:
    """Unpooled variance of the difference of arm means: ``s_c²/n_c + s_t²/n_t`` (NaN where
    n is 0). Not what the mSPRT uses (see ``pooled_variance``): with a small arm it is
    anti-conservative."""
    nc, nt = np.asarray(n_control, dtype=float), np.asarray(n_treatment, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((nc > 0) & (nt > 0), np.asarray(var_control) / nc + np.asarray(var_treatment) / nt, np.nan)


def pooled_variance(var_control, n_control, var_treatment, n_treatment) -> np.ndarray:
    """The pooled within-arm unit variance ``((n_c−1)s_c² + (n_t−1)s_t²) / (n_c+n_t−2)``.

    An arm with fewer than 2 units adds nothing (its variance may be NaN); NaN where the
    two arms together have fewer than 3 units.
    """
    nc, nt = np.asarray(n_control, dtype=float), np.asarray(n_treatment, dtype=float)
    vc, vt = np.asarray(var_control, dtype=float), np.asarray(var_treatment, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        squares = np.where(nc > 1, (nc - 1) * vc, 0.0) + np.where(nt > 1, (nt - 1) * vt, 0.0)
        return np.where(nc + nt > 2, squares / (nc + nt - 2), np.nan)


def _usable(variance: np.ndarray) -> np.ndarray:
    return np.isfinite(variance) & (variance > 0)


def mixture_log_likelihood_ratio(effect, variance, tau: float, theta0: float = 0.0) -> np.ndarray:
    """log Λ of the normal-mixture SPRT for an effect estimate with the given variance.

    Looks with an unusable variance (0 or NaN) give 0: no evidence either way.
    """
    tau2 = check_positive("tau", tau) ** 2
    effect, v = np.asarray(effect, dtype=float), np.asarray(variance, dtype=float)
    ok = _usable(v)
    v_safe = np.where(ok, v, 1.0)
    llr = 0.5 * np.log(v_safe / (v_safe + tau2)) + tau2 * (effect - theta0) ** 2 / (2.0 * v_safe * (v_safe + tau2))
    return np.where(ok & np.isfinite(effect), llr, 0.0)


def always_valid_p_values(effect, variance, tau: float, theta0: float = 0.0) -> np.ndarray:
    """Running minimum of ``min(1, 1/Λ)`` over looks (the last axis)."""
    llr = mixture_log_likelihood_ratio(effect, variance, tau, theta0)
    return np.minimum.accumulate(np.exp(-np.maximum(llr, 0.0)), axis=-1)


def boundary(variance, tau: float, alpha: float = 0.05) -> np.ndarray:
    """The |effect| an estimate must exceed to reject θ = 0 at each look (for plotting).

    It is also the half-width of the (not yet intersected) confidence band. Infinite where
    the variance is unusable. Divide by √variance for the boundary on the z scale.
    """
    alpha = check_probability("alpha", alpha)
    tau2 = check_positive("tau", tau) ** 2
    v = np.asarray(variance, dtype=float)
    ok = _usable(v)
    v_safe = np.where(ok, v, 1.0)
    radius = np.sqrt(2.0 * v_safe * (v_safe + tau2) / tau2
                     * (np.log(1.0 / alpha) + 0.5 * np.log((v_safe + tau2) / v_safe)))
    return np.where(ok, radius, np.inf)


def confidence_sequence(effect, variance, tau: float, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid (1 − alpha) bounds on treatment − control: running intersection over looks."""
    radius = boundary(variance, tau, alpha)
    effect = np.asarray(effect, dtype=float)
    lower = np.where(np.isfinite(radius), effect - radius, -np.inf)
    upper = np.where(np.isfinite(radius), effect + radius, np.inf)
    return np.maximum.accumulate(lower, axis=-1), np.minimum.accumulate(upper, axis=-1)


def _result(effect, variance, band_variance, ready, tau: float, alpha: float, theta0: float) -> SequentialResult:
    """The mSPRT from the effect, its variance under the null, the band's variance and
    whether each look had the minimum sample (a look that had not counts as no evidence)."""
    ready = np.asarray(ready, dtype=bool) & _usable(variance)
    v = np.where(ready, variance, np.nan)
    llr = mixture_log_likelihood_ratio(effect, v, tau, theta0)
    p = np.minimum.accumulate(np.exp(-np.maximum(llr, 0.0)), axis=-1)
    band = np.where(ready, band_variance, np.nan)
    lower, upper = confidence_sequence(effect, band, tau, alpha)
    return SequentialResult(effect, variance, llr, p, lower, upper, boundary(v, tau, alpha), ready, alpha, float(tau))


def _check_minimums(min_units, min_events=0) -> tuple[float, float]:
    for name, value in (("min_units", min_units), ("min_events", min_events)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= 0:
            raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    return float(min_units), float(min_events)


def sequential_test(mean_control, var_control, n_control, mean_treatment, var_treatment, n_treatment, *,
                    tau: float, alpha: float = 0.05, theta0: float = 0.0, margin: float = 1.0,
                    min_units: int = MIN_UNITS) -> SequentialResult:
    """mSPRT on the difference of means from cumulative per-arm summaries at each look.

    Each argument is an array over looks (last axis): running mean, running unit variance
    (ddof=1) and running count of each arm. ``tau`` is the mixing scale, normally the
    planned MDE in the metric's units. The variance is pooled over both arms, and no look
    decides before each arm has ``min_units`` units. ``margin`` tests
    ``mean_t − margin·mean_c = θ₀`` (control scaled by ``margin``; 1 compares the means).
    """
    alpha = check_probability("alpha", alpha)
    check_positive("tau", tau)
    margin = check_positive("margin", margin)
    least, _ = _check_minimums(min_units)
    mc, mt = np.asarray(mean_control, dtype=float), np.asarray(mean_treatment, dtype=float)
    effect = mt - margin * mc
    if effect.ndim == 0:
        raise ConfigError("sequential_test needs arrays over looks (one entry per look), got scalars")
    nc, nt = np.asarray(n_control, dtype=float), np.asarray(n_treatment, dtype=float)
    unit_variance = pooled_variance(margin**2 * np.asarray(var_control, dtype=float), nc, var_treatment, nt)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = unit_variance * (1.0 / nc + 1.0 / nt)
    ready = (nc >= max(least, 1)) & (nt >= max(least, 1)) & (nc + nt > 2)
    return _result(effect, variance, variance, ready, tau, alpha, theta0)


def sequential_proportion_test(successes_control, n_control, successes_treatment, n_treatment, *,
                               tau: float, alpha: float = 0.05, margin: float = 1.0, min_units: int = MIN_UNITS,
                               min_events: float = MIN_EVENTS) -> SequentialResult:
    """mSPRT on the difference of conversion rates (normal approximation, pooled rate).

    Arguments are cumulative counts at each look (arrays over looks, last axis). The
    variance is the one under H0, ``p̄(1 − p̄)(1/n_c + 1/n_t)`` with the pooled rate
    ``p̄``. No look decides before each arm has ``min_units`` units and expects
    ``min_events`` events and non-events at the pooled rate. ``margin`` tests
    ``p_t = margin·p_c`` (the guardrails' tolerance).
    """
    xc, nc, xt, nt = (np.asarray(a, dtype=float) for a in (successes_control, n_control,
                                                           successes_treatment, n_treatment))
    if np.any(xc < 0) or np.any(xt < 0) or np.any(xc > nc) or np.any(xt > nt):
        raise ConfigError("need 0 <= successes <= units at every look")
    alpha = check_probability("alpha", alpha)
    check_positive("tau", tau)
    margin = check_positive("margin", margin)
    least, events = _check_minimums(min_units, min_events)
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, pt = np.where(nc > 0, xc / nc, np.nan), np.where(nt > 0, xt / nt, np.nan)
        # the rates under H0 (p_t = margin·p_c) that fit the pooled data
        pc0 = np.where(nc + nt > 0, (xc + xt) / (nc + margin * nt), np.nan)
        pt0 = np.minimum(margin * pc0, 1.0)
        variance = margin**2 * pc0 * (1 - pc0) / nc + pt0 * (1 - pt0) / nt
        unpooled = margin**2 * pc * (1 - pc) / nc + pt * (1 - pt) / nt
    expected = np.stack([nc * pc0, nc * (1 - pc0), nt * pt0, nt * (1 - pt0)])
    ready = (nc >= max(least, 1)) & (nt >= max(least, 1)) & np.all(np.nan_to_num(expected) >= events, axis=0)
    return _result(pt - margin * pc, variance, np.fmax(variance, unpooled), ready, tau, alpha, 0.0)


def sequential_test_observations(values, treated, *, looks, tau: float, alpha: float = 0.05,
                                 kind: str = "auto") -> SequentialResult:
    """mSPRT from unit-level outcomes in arrival order (e.g. ledger rows joined with labels).

    ``treated`` marks each unit's arm (True = treatment). ``looks`` is a number of equally
    spaced looks, or the cumulative unit counts at which to look. ``kind`` is "mean"
    (``sequential_test``), "proportion" (0/1 outcomes, ``sequential_proportion_test``) or
    "auto": proportion when every value is 0 or 1.
    """
    y, t = np.asarray(values, dtype=float), np.asarray(treated, dtype=bool)
    if y.ndim != 1 or t.shape != y.shape or not np.all(np.isfinite(y)):
        raise ConfigError("values must be a 1-d array of finite outcomes with one treated flag per unit")
    binary = bool(np.all((y == 0) | (y == 1)))
    if kind not in ("auto", "mean", "proportion"):
        raise ConfigError(f"kind must be 'auto', 'mean' or 'proportion', got {kind!r}")
    if kind == "proportion" and not binary:
        raise ConfigError("kind='proportion' needs 0/1 outcomes; use kind='mean' for other values")
    if np.isscalar(looks):
        count = int(looks)
        if count < 1 or count > y.size:
            raise ConfigError(f"looks must be between 1 and the number of units ({y.size}); got {looks!r}")
        at = np.linspace(y.size / count, y.size, count).round().astype(int)
    else:
        at = np.asarray(looks, dtype=int)
        if at.ndim != 1 or at.size == 0 or np.any(np.diff(at) <= 0) or at[0] < 1 or at[-1] > y.size:
            raise ConfigError(f"looks must be increasing unit counts within 1..{y.size}")
    if kind == "proportion" or (kind == "auto" and binary):
        counts = [(np.cumsum(np.where(arm, y, 0.0))[at - 1], np.cumsum(arm)[at - 1]) for arm in (~t, t)]
        return sequential_proportion_test(*counts[0], *counts[1], tau=tau, alpha=alpha)
    shift = y[0]  # variance is shift-invariant; centring keeps the running sums from cancelling
    z = y - shift
    summaries = []
    for arm in (~t, t):
        n = np.cumsum(arm)[at - 1]
        s = np.cumsum(np.where(arm, z, 0.0))[at - 1]
        q = np.cumsum(np.where(arm, z * z, 0.0))[at - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
            var = np.where(n > 1, np.maximum(q - n * mean**2, 0.0) / (n - 1), np.nan)
        summaries.append((mean + shift, var, n))
    (mc, vc, nc), (mt, vt, nt) = summaries
    return sequential_test(mc, vc, nc, mt, vt, nt, tau=tau, alpha=alpha)
