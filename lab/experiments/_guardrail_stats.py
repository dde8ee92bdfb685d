"""The one-sided tests behind ``lab.experiments.guardrails``: is a variant worse than control?

Both kinds reduce an arm to ``(mean, unit variance, n)``: samples give their mean and
sample variance (ddof=1); ``(successes, trials)`` give ``p`` and ``p(1 - p)``. A margin
``m`` (``1 + tolerance`` when higher is worse, ``1 - tolerance`` when lower is worse)
turns "worse beyond the tolerance" into "variant worse than control scaled by ``m``":
scaling control's samples by ``m`` scales its mean by ``m`` and its variance by ``m**2``.

- fixed, mean: Welch's t test of the variant against scaled control
  (``stats.mean_test_from_summary``, one-sided).
- fixed, proportion: with no tolerance the pooled two-proportion z test
  (``stats.proportion_test``, one-sided); with one, a Wald z on ``p_t - m * p_c`` with the
  unpooled variance, since the pooled one assumes ``p_t = p_c``.
- sequential (both kinds): the mixture SPRT of ``lab.experiments.stats.sequential``
  (``sequential_test`` for means, ``sequential_proportion_test`` for proportions, the
  functions the experiment report uses) on ``mean_t - m * mean_c`` with ``margin=m``,
  mixing scale ``tau * |control mean|``: the variance pooled under the null, and no
  verdict (``p_value=None`` with a note) before the minimum sample those functions
  require. Its p-value ``1/Lambda`` is two-sided and valid at every look however often
  one looks (Ville's inequality), so breaching only when it is below alpha *and* the
  variant is worse keeps the chance of a false stop below alpha over the whole
  experiment (conservative for one side).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from lab.experiments.stats.analysis import mean_test_from_summary, proportion_test, relative_lift
from lab.experiments.stats.sequential import MIN_EVENTS, MIN_UNITS, sequential_proportion_test, sequential_test


def moments(kind: str, data: Any) -> tuple[float, float, int]:
    """``(mean, unit variance, n)`` of one arm: samples (an array) or ``(successes, trials)``."""
    if kind == "mean":
        n = len(data)
        return (float(data.mean()) if n else math.nan), (float(data.var(ddof=1)) if n > 1 else math.nan), n
    successes, trials = data
    p = successes / trials if trials else math.nan
    return p, p * (1 - p), trials


def margin(worse: str, tolerance: float) -> tuple[float, str]:
    """The margin factor ``m`` and the one-sided alternative meaning "variant is worse"."""
    return (1.0 + tolerance, "larger") if worse == "increase" else (1.0 - tolerance, "smaller")


def too_little(kind: str, control: Any, variant: Any) -> str:
    """Why there is too little data to test, or "" when there is enough."""
    if kind == "mean" and (len(control) < 2 or len(variant) < 2):
        return "needs at least 2 samples per variant"
    if kind == "proportion" and (control[1] == 0 or variant[1] == 0):
        return "no trials for a variant"
    return ""


def _by_sign(gap: float) -> float:
    return 0.0 if gap > 0 else 1.0  # no noise at all: the sign of the gap decides


def fixed_p(kind: str, worse: str, tolerance: float, alpha: float, control: Any, variant: Any) -> float:
    """One-sided fixed-horizon p-value that the variant is worse than control beyond ``tolerance``."""
    m, alternative = margin(worse, tolerance)
    mc, vc, nc = moments(kind, control)
    mv, vv, nv = moments(kind, variant)
    gap = mv - m * mc if alternative == "larger" else m * mc - mv
    if kind == "proportion" and tolerance == 0:
        return float(proportion_test(control[0], nc, variant[0], nv, alpha=alpha, alternative=alternative).p_value)
    if vc == 0 and vv == 0:
        return _by_sign(gap)
    if kind == "mean":
        return float(mean_test_from_summary(m * mc, m * m * vc, nc, mv, vv, nv,
                                            alpha=alpha, alternative=alternative).p_value)
    return float(stats.norm.sf(gap / math.sqrt(vv / nv + m * m * vc / nc)))


def sequential_p(kind: str, worse: str, tolerance: float, tau: float, control: Any,
                 variant: Any) -> tuple[float | None, str]:
    """Always-valid p-value (mSPRT) that the variant is worse, and a note.

    ``(None, why)`` before the sequential test's minimum sample; 1 when the variant is not worse.
    """
    m, alternative = margin(worse, tolerance)
    mc, vc, nc = moments(kind, control)
    mv, vv, nv = moments(kind, variant)
    gap = mv - m * mc if alternative == "larger" else m * mc - mv
    # The scale of a "relevant" change: tau of control's level (of the variant's if control is at 0).
    scale = tau * (abs(mc) or abs(mv)) or tau
    if kind == "proportion":
        result = sequential_proportion_test([control[0]], [nc], [variant[0]], [nv], tau=scale, margin=m)
        wait = (f"the sequential test waits for {MIN_UNITS} requests and {MIN_EVENTS} expected events and "
                f"non-events per variant at the pooled rate (has {nc} and {nv} requests, "
                f"{control[0] + variant[0]} events)")
    else:
        result = sequential_test([mc], [vc], [nc], [mv], [vv], [nv], tau=scale, margin=m)
        wait = f"the sequential test waits for {MIN_UNITS} samples per variant (has {nc} and {nv})"
    if not result.ready[-1]:
        if kind == "mean" and nc >= MIN_UNITS and nv >= MIN_UNITS and result.variance[-1] == 0:
            return _by_sign(gap), ""  # no noise at all within either arm
        return None, wait
    if gap <= 0:
        return 1.0, ""
    return float(result.p_value[-1]), ""


def lift_interval(kind: str, alpha: float, control: Any, variant: Any) -> tuple[float, float] | None:
    """The two-sided (1 - 2 alpha) delta-method interval on variant / control - 1, whose
    bound on the worse side is the one-sided bound at alpha. None where undefined."""
    if 2 * alpha >= 1 or too_little(kind, control, variant):
        return None
    mc, vc, nc = moments(kind, control)
    mv, vv, nv = moments(kind, variant)
    _, (low, high) = relative_lift(mc, vc / nc, mv, vv / nv, alpha=2 * alpha)
    return (float(low), float(high)) if np.isfinite(low) and np.isfinite(high) else None
