"""Always-valid inference for an experiment that is watched while it runs.

A mixture sequential probability ratio test (mSPRT; Johari, Pekelis, Koomen and Walsh,
"Always valid inference: continuous monitoring of A/B tests", Operations Research 2022).
At each look the difference of arm means ``Δ̂ = m_t − m_c`` is treated as normal with
variance ``V = s_c²/n_c + s_t²/n_t``. Mixing the likelihood ratio of ``θ`` against
``θ₀`` over ``θ ~ N(θ₀, τ²)`` gives, in closed form,

    Λ = √(V / (V + τ²)) · exp( τ²·(Δ̂ − θ₀)² / (2·V·(V + τ²)) ).

Under H0 the sequence Λ is a martingale with mean 1, so by Ville's inequality
``P(Λ ever reaches 1/α) ≤ α``: one may look after every unit and stop whenever. The
always-valid p-value is the running minimum of ``min(1, 1/Λ)``; the confidence sequence
is the running intersection of the sets of θ₀ not rejected, a band whose half-width is

    r = √( 2·V·(V + τ²)/τ² · ( log(1/α) + ½·log((V + τ²)/V) ) ).

Choices, documented because they matter:

- **Variance: plug-in.** ``V`` uses each arm's running sample variance (p̂(1 − p̂) for
  proportions, the normal approximation). The guarantee is exact for balanced arms with a
  known variance and asymptotic otherwise; at the first few hundred units the plug-in is
  noisy, which is why a report starts looking after a burn-in. A look where ``V`` is 0
  (no conversions yet) counts as no evidence: p stays 1 and the band is infinite.
- **Mixing scale τ: the planned MDE** (absolute, in the metric's units). The evidence Λ
  for an observed effect δ peaks at ``τ² = δ² − V``; at the planned sample size an effect
  equal to the MDE is about 2.8 standard errors, so the best τ is about 0.93·MDE. A τ much
  smaller than the effects that occur slows detection of big effects; a τ much larger
  slows detection of small ones. Neither affects validity.
- Two-sided only: the normal mixture is symmetric around θ₀.

Every function broadcasts, with looks along the last axis, so one call can evaluate
thousands of simulated experiments at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.errors import ConfigError
from lab.experiments.stats._checks import check_positive, check_probability

__all__ = [
    "SequentialResult", "always_valid_p_values", "boundary", "confidence_sequence", "difference_variance",
    "mixture_log_likelihood_ratio", "sequential_proportion_test", "sequential_test",
    "sequential_test_observations",
]


@dataclass(frozen=True)
class SequentialResult:
    """The mSPRT at every look (arrays, looks along the last axis).

    ``p_value`` is always valid (non-increasing); ``ci_lower``/``ci_upper`` is the
    confidence sequence for treatment − control; ``boundary`` is the |effect| that had to
    be exceeded at each look to reject; ``rejected`` is ``p_value <= alpha``;
    ``stopped_at`` is the first look that rejected, −1 where none did.
    """

    effect: np.ndarray
    variance: np.ndarray
    log_likelihood_ratio: np.ndarray
    p_value: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    boundary: np.ndarray
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
    """Variance of the difference of arm means: ``s_c²/n_c + s_t²/n_t`` (NaN where n is 0)."""
    nc, nt = np.asarray(n_control, dtype=float), np.asarray(n_treatment, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((nc > 0) & (nt > 0), np.asarray(var_control) / nc + np.asarray(var_treatment) / nt, np.nan)


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


def sequential_test(mean_control, var_control, n_control, mean_treatment, var_treatment, n_treatment, *,
                    tau: float, alpha: float = 0.05, theta0: float = 0.0) -> SequentialResult:
    """mSPRT on the difference of means from cumulative per-arm summaries at each look.

    Each argument is an array over looks (last axis): running mean, running unit variance
    (ddof=1) and running count of each arm. ``tau`` is the mixing scale, normally the
    planned MDE in the metric's units.
    """
    alpha = check_probability("alpha", alpha)
    check_positive("tau", tau)
    effect = np.asarray(mean_treatment, dtype=float) - np.asarray(mean_control, dtype=float)
    if effect.ndim == 0:
        raise ConfigError("sequential_test needs arrays over looks (one entry per look), got scalars")
    variance = difference_variance(var_control, n_control, var_treatment, n_treatment)
    llr = mixture_log_likelihood_ratio(effect, variance, tau, theta0)
    p = np.minimum.accumulate(np.exp(-np.maximum(llr, 0.0)), axis=-1)
    lower, upper = confidence_sequence(effect, variance, tau, alpha)
    return SequentialResult(effect, variance, llr, p, lower, upper, boundary(variance, tau, alpha), alpha, float(tau))


def sequential_proportion_test(successes_control, n_control, successes_treatment, n_treatment, *,
                               tau: float, alpha: float = 0.05) -> SequentialResult:
    """mSPRT on the difference of conversion rates (normal approximation, p̂(1 − p̂) plug-in).

    Arguments are cumulative counts at each look (arrays over looks, last axis).
    """
    xc, nc, xt, nt = (np.asarray(a, dtype=float) for a in (successes_control, n_control,
                                                           successes_treatment, n_treatment))
    if np.any(xc < 0) or np.any(xt < 0) or np.any(xc > nc) or np.any(xt > nt):
        raise ConfigError("need 0 <= successes <= units at every look")
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, pt = np.where(nc > 0, xc / nc, np.nan), np.where(nt > 0, xt / nt, np.nan)
    return sequential_test(pc, pc * (1 - pc), nc, pt, pt * (1 - pt), nt, tau=tau, alpha=alpha)


def sequential_test_observations(values, treated, *, looks, tau: float, alpha: float = 0.05) -> SequentialResult:
    """mSPRT from unit-level outcomes in arrival order (e.g. ledger rows joined with labels).

    ``treated`` marks each unit's arm (True = treatment). ``looks`` is a number of equally
    spaced looks, or the cumulative unit counts at which to look. Works for 0/1 outcomes
    too (their sample variance is p̂(1 − p̂)·n/(n − 1), the same to first order).
    """
    y, t = np.asarray(values, dtype=float), np.asarray(treated, dtype=bool)
    if y.ndim != 1 or t.shape != y.shape or not np.all(np.isfinite(y)):
        raise ConfigError("values must be a 1-d array of finite outcomes with one treated flag per unit")
    if np.isscalar(looks):
        count = int(looks)
        if count < 1 or count > y.size:
            raise ConfigError(f"looks must be between 1 and the number of units ({y.size}); got {looks!r}")
        at = np.linspace(y.size / count, y.size, count).round().astype(int)
    else:
        at = np.asarray(looks, dtype=int)
        if at.ndim != 1 or at.size == 0 or np.any(np.diff(at) <= 0) or at[0] < 1 or at[-1] > y.size:
            raise ConfigError(f"looks must be increasing unit counts within 1..{y.size}")
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
