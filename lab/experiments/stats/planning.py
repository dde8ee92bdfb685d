"""Planning an experiment: units per arm, minimum detectable effect, and duration.

The approximations are the ones statsmodels uses, so a plan agrees with its power
functions to within one unit:

- proportions: a normal test on Cohen's h, ``h = 2·asin(√p₂) − 2·asin(√p₁)``
  (statsmodels ``proportion_effectsize`` + ``NormalIndPower``);
- means: Cohen's ``d = mde / std`` with a two-sample t test (``TTestIndPower``, the
  default, ``test="t"``) or a normal test (``NormalIndPower``, ``test="z"``). The t test
  asks for one or two more units at small samples and the same at large ones; it is the
  default because the analysis of means is a t test.

Two-sided power counts both rejection tails, as statsmodels does. ``ratio`` is
treatment units per control unit. The MDE is absolute (``0.01`` = one percentage point,
or one unit of the metric) unless ``relative=True`` (``0.05`` = +5 % of the baseline).
A two-sided plan for proportions is sized for an increase of the MDE; with a baseline
below 0.5 that is the harder direction, so the plan is conservative for a decrease.
Sample sizes are rounded up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize, stats

from lab.errors import ConfigError
from lab.experiments.stats._checks import (
    check_alternative, check_count, check_finite, check_positive, check_probability,
)

__all__ = [
    "Plan", "duration_days", "mde_means", "mde_proportions", "power_means", "power_proportions",
    "sample_size_means", "sample_size_proportions",
]

TESTS = ("t", "z")


@dataclass(frozen=True)
class Plan:
    """What an experiment needs: units per arm, the effect it can detect, how long it runs.

    ``n_per_arm`` is the control arm (every arm when ``ratio == 1``); each treatment arm
    gets ``n_treatment``; ``total`` covers ``n_arms`` arms. ``mde`` is absolute, in the
    metric's units; ``relative_mde`` is ``mde / baseline`` where a baseline is known.
    ``days`` is None unless daily traffic was given.
    """

    metric_kind: str
    n_per_arm: int
    n_treatment: int
    total: int
    mde: float
    relative_mde: float | None
    effect_size: float
    alpha: float
    power: float
    ratio: float
    alternative: str
    test: str
    baseline: float | None = None
    std: float | None = None
    days: float | None = None


# --------------------------------------------------------------------------- power


def _power(effect_size: float, n1: float, *, alpha: float, ratio: float, alternative: str, test: str) -> float:
    """Power of a two-sample test with a standardized effect and n1 control units.

    One-sided alternatives are evaluated in the direction of the effect, so a positive
    effect size serves "larger" and "smaller" alike (the planner passes |effect|).
    """
    n_effective = n1 * ratio / (1.0 + ratio)  # 1 / (1/n1 + 1/n2)
    shift = abs(effect_size) * math.sqrt(n_effective)
    tail = alpha / 2.0 if alternative == "two-sided" else alpha
    if test == "z":
        crit = stats.norm.isf(tail)
        power = stats.norm.sf(crit - shift)
        if alternative == "two-sided":
            power += stats.norm.cdf(-crit - shift)
        return float(power)
    df = n1 * (1.0 + ratio) - 2.0
    crit = stats.t.isf(tail, df)
    power = stats.nct.sf(crit, df, shift)
    if not math.isfinite(power):  # scipy's nct can fail far out in a tail
        power = stats.norm.sf(crit - shift)
    if alternative == "two-sided":
        far_tail = stats.nct.cdf(-crit, df, shift)
        power += far_tail if math.isfinite(far_tail) else 0.0  # NaN only where it is ~1e-30 or less
    return float(power)


def _solve_n1(effect_size: float, *, alpha: float, power: float, ratio: float, alternative: str, test: str) -> float:
    """Control units (continuous) at which the test reaches ``power``."""
    def gap(n1: float) -> float:
        return _power(effect_size, n1, alpha=alpha, ratio=ratio, alternative=alternative, test=test) - power

    # the t test needs two degrees of freedom; the normal test is defined near zero
    low = (2.0 / (1.0 + ratio) + 1e-3) if test == "t" else 1e-6
    if gap(low) >= 0:
        return low
    z = stats.norm.isf(alpha / 2 if alternative == "two-sided" else alpha) + stats.norm.isf(1 - power)
    high = max(2.0 * low, (z / abs(effect_size)) ** 2 * (1.0 + 1.0 / ratio))
    while gap(high) < 0:
        high *= 2.0
    return optimize.brentq(gap, low, high, xtol=1e-10, rtol=1e-13)


def _solve_effect(n1: float, *, alpha: float, power: float, ratio: float, alternative: str, test: str) -> float:
    """Smallest standardized effect the test detects with ``power`` at n1 control units."""
    def gap(effect: float) -> float:
        return _power(effect, n1, alpha=alpha, ratio=ratio, alternative=alternative, test=test) - power

    high = 1.0
    while gap(high) < 0:
        high *= 2.0
        if high > 1e6:
            raise ConfigError(f"n_per_arm={n1:g} is too small to reach power={power:g}; plan more units")
    return optimize.brentq(gap, 1e-12, high, xtol=1e-14, rtol=1e-13)


def _round_up(n: float) -> int:
    # a solver answer of 100.0000000001 means 100 units, not 101
    return max(1, math.ceil(n - 1e-7))


# --------------------------------------------------------------------------- checks


def _common(alpha, power, ratio, alternative, test, daily_units, share, n_arms):
    alpha = check_probability("alpha", alpha)
    power = check_probability("power", power)
    if power <= alpha:
        raise ConfigError(f"power must exceed alpha (a test rejects with probability alpha by chance); "
                          f"got power={power:g}, alpha={alpha:g}")
    ratio = check_positive("ratio", ratio)
    check_alternative(alternative)
    if test not in TESTS:
        raise ConfigError(f"test must be 't' or 'z', got {test!r}")
    if daily_units is not None:
        check_positive("daily_units", daily_units)
    share = check_positive("share", share)
    if share > 1.0:
        raise ConfigError(f"share is the fraction of traffic in the experiment, in (0, 1]; got {share!r}")
    check_count("n_arms", n_arms, minimum=2)
    return alpha, power, ratio, share


def _treated_rate(baseline: float, mde: float, alternative: str) -> float:
    rate = baseline - mde if alternative == "smaller" else baseline + mde
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"baseline {baseline:g} {'-' if alternative == 'smaller' else '+'} mde {mde:g} = "
                          f"{rate:g} is not a rate in (0, 1); lower mde")
    return rate


def cohens_h(rate: float, baseline: float) -> float:
    """Cohen's h between a rate and the baseline (statsmodels' ``proportion_effectsize``)."""
    return 2.0 * math.asin(math.sqrt(rate)) - 2.0 * math.asin(math.sqrt(baseline))


def _plan(kind, n1_exact, n1, *, mde, baseline, std, effect_size, alpha, power, ratio, alternative, test,
          daily_units, share, n_arms) -> Plan:
    n_treatment = _round_up(ratio * n1_exact)
    total = n1 + (n_arms - 1) * n_treatment
    days = None if daily_units is None else total / (daily_units * share)
    relative = mde / baseline if baseline else None
    return Plan(metric_kind=kind, n_per_arm=n1, n_treatment=n_treatment, total=total, mde=mde,
                relative_mde=relative, effect_size=effect_size, alpha=alpha, power=power, ratio=ratio,
                alternative=alternative, test=test, baseline=baseline, std=std, days=days)


# --------------------------------------------------------------------------- public


def sample_size_proportions(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8,
                            ratio: float = 1.0, alternative: str = "two-sided", relative: bool = False,
                            daily_units: float | None = None, share: float = 1.0, n_arms: int = 2) -> Plan:
    """Units per arm to detect a change of ``mde`` in a conversion rate of ``baseline``.

    Returns a Plan; ``days`` is filled in when ``daily_units`` (eligible units a day) is
    given, of which ``share`` enter the experiment. Raises ConfigError naming a bad argument.
    """
    alpha, power, ratio, share = _common(alpha, power, ratio, alternative, "z", daily_units, share, n_arms)
    baseline = check_probability("baseline", baseline)
    mde = check_positive("mde", mde) * (baseline if relative else 1.0)
    h = abs(cohens_h(_treated_rate(baseline, mde, alternative), baseline))
    n1_exact = _solve_n1(h, alpha=alpha, power=power, ratio=ratio, alternative=alternative, test="z")
    return _plan("proportion", n1_exact, _round_up(n1_exact), mde=mde, baseline=baseline, std=None,
                 effect_size=h, alpha=alpha, power=power, ratio=ratio, alternative=alternative, test="z",
                 daily_units=daily_units, share=share, n_arms=n_arms)


def sample_size_means(std: float, mde: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
                      alternative: str = "two-sided", relative: bool = False, baseline: float | None = None,
                      test: str = "t", daily_units: float | None = None, share: float = 1.0,
                      n_arms: int = 2) -> Plan:
    """Units per arm to detect a shift of ``mde`` in a mean whose unit-level SD is ``std``.

    ``relative=True`` reads ``mde`` as a fraction of ``baseline`` (the control mean), which
    must then be given. Returns a Plan; raises ConfigError naming a bad argument.
    """
    alpha, power, ratio, share = _common(alpha, power, ratio, alternative, test, daily_units, share, n_arms)
    std = check_positive("std", std)
    mde = check_positive("mde", mde)
    if relative:
        if baseline is None:
            raise ConfigError("relative=True needs baseline= (the control mean) to turn the MDE into units")
        baseline = check_finite("baseline", baseline)
        if baseline == 0.0:
            raise ConfigError("relative=True needs a non-zero baseline (the control mean)")
        mde *= abs(baseline)
    d = mde / std
    n1_exact = _solve_n1(d, alpha=alpha, power=power, ratio=ratio, alternative=alternative, test=test)
    return _plan("mean", n1_exact, _round_up(n1_exact), mde=mde, baseline=baseline, std=std, effect_size=d,
                 alpha=alpha, power=power, ratio=ratio, alternative=alternative, test=test,
                 daily_units=daily_units, share=share, n_arms=n_arms)


def mde_proportions(baseline: float, n_per_arm: int, *, alpha: float = 0.05, power: float = 0.8,
                    ratio: float = 1.0, alternative: str = "two-sided", daily_units: float | None = None,
                    share: float = 1.0, n_arms: int = 2) -> Plan:
    """The smallest absolute change in a rate detectable with ``n_per_arm`` control units.

    The change is an increase unless ``alternative="smaller"``. Returns a Plan.
    """
    alpha, power, ratio, share = _common(alpha, power, ratio, alternative, "z", daily_units, share, n_arms)
    baseline = check_probability("baseline", baseline)
    n1 = check_count("n_per_arm", n_per_arm)
    h = _solve_effect(n1, alpha=alpha, power=power, ratio=ratio, alternative=alternative, test="z")
    angle = math.asin(math.sqrt(baseline)) + (-h / 2.0 if alternative == "smaller" else h / 2.0)
    if not 0.0 < angle < math.pi / 2:
        raise ConfigError(f"n_per_arm={n1} cannot detect any change from baseline {baseline:g} with "
                          f"power {power:g}; plan more units")
    mde = abs(math.sin(angle) ** 2 - baseline)
    return _plan("proportion", n1, n1, mde=mde, baseline=baseline, std=None, effect_size=h, alpha=alpha,
                 power=power, ratio=ratio, alternative=alternative, test="z", daily_units=daily_units,
                 share=share, n_arms=n_arms)


def mde_means(std: float, n_per_arm: int, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
              alternative: str = "two-sided", baseline: float | None = None, test: str = "t",
              daily_units: float | None = None, share: float = 1.0, n_arms: int = 2) -> Plan:
    """The smallest absolute shift in a mean detectable with ``n_per_arm`` control units."""
    alpha, power, ratio, share = _common(alpha, power, ratio, alternative, test, daily_units, share, n_arms)
    std = check_positive("std", std)
    n1 = check_count("n_per_arm", n_per_arm, minimum=2)
    d = _solve_effect(n1, alpha=alpha, power=power, ratio=ratio, alternative=alternative, test=test)
    return _plan("mean", n1, n1, mde=d * std, baseline=baseline, std=std, effect_size=d, alpha=alpha,
                 power=power, ratio=ratio, alternative=alternative, test=test, daily_units=daily_units,
                 share=share, n_arms=n_arms)


def power_proportions(baseline: float, mde: float, n_per_arm: float, *, alpha: float = 0.05, ratio: float = 1.0,
                      alternative: str = "two-sided", relative: bool = False) -> float:
    """Power to detect a change of ``mde`` in a rate with ``n_per_arm`` control units."""
    alpha = check_probability("alpha", alpha)
    ratio = check_positive("ratio", ratio)
    check_alternative(alternative)
    baseline = check_probability("baseline", baseline)
    mde = check_positive("mde", mde) * (baseline if relative else 1.0)
    h = cohens_h(_treated_rate(baseline, mde, alternative), baseline)
    return _power(h, check_positive("n_per_arm", n_per_arm), alpha=alpha, ratio=ratio,
                  alternative=alternative, test="z")


def power_means(std: float, mde: float, n_per_arm: float, *, alpha: float = 0.05, ratio: float = 1.0,
                alternative: str = "two-sided", test: str = "t") -> float:
    """Power to detect a shift of ``mde`` in a mean (unit SD ``std``) with ``n_per_arm`` units."""
    alpha = check_probability("alpha", alpha)
    ratio = check_positive("ratio", ratio)
    check_alternative(alternative)
    if test not in TESTS:
        raise ConfigError(f"test must be 't' or 'z', got {test!r}")
    d = check_positive("mde", mde) / check_positive("std", std)
    return _power(d, check_positive("n_per_arm", n_per_arm), alpha=alpha, ratio=ratio,
                  alternative=alternative, test=test)


def duration_days(n_per_arm: int, n_arms: int, daily_units: float, share: float = 1.0) -> float:
    """Days to enrol ``n_per_arm`` units in each of ``n_arms`` arms.

    ``daily_units`` is the eligible traffic a day and ``share`` the fraction of it the
    experiment receives (its layer share). Not rounded: a report may round up to whole
    days or weeks (weekly seasonality) as it sees fit.
    """
    n_per_arm = check_count("n_per_arm", n_per_arm)
    n_arms = check_count("n_arms", n_arms, minimum=1)
    daily_units = check_positive("daily_units", daily_units)
    share = check_positive("share", share)
    if share > 1.0:
        raise ConfigError(f"share is the fraction of traffic in the experiment, in (0, 1]; got {share!r}")
    return n_per_arm * n_arms / (daily_units * share)
