"""lab.experiments.stats checked against statsmodels and scipy, and by simulation.

statsmodels is a test-only dependency: the library reimplements these with numpy and
scipy, and these tests hold the two to agreement.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from benchmarks.bench_sequential import conversion_runs, mean_runs, unbalanced_aa
from lab.errors import ConfigError
from lab.experiments.stats import (
    adjust_pvalues, boundary, confidence_sequence, cuped, duration_days, mde_means, mde_proportions, mean_test,
    mean_test_from_summary, mixture_log_likelihood_ratio, power_means, power_proportions, proportion_test,
    sample_size_means, sample_size_proportions, sequential_proportion_test, sequential_test,
    sequential_test_observations, srm_check,
)

ALTERNATIVES = ("two-sided", "larger", "smaller")


# --------------------------------------------------------------------------- planning


def _sm_effect(baseline, mde, alternative):
    return proportion_effectsize(baseline - mde if alternative == "smaller" else baseline + mde, baseline)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_sample_size_for_proportions_matches_statsmodels_within_one_unit(alternative):
    grid = itertools.product((0.01, 0.05, 0.2, 0.5, 0.85), (0.002, 0.01, 0.05), (0.01, 0.05, 0.1),
                             (0.8, 0.9), (0.5, 1.0, 3.0))
    checked = 0
    for baseline, mde, alpha, power, ratio in grid:
        if not 0 < baseline - mde and baseline + mde < 1:
            continue
        plan = sample_size_proportions(baseline, mde, alpha=alpha, power=power, ratio=ratio, alternative=alternative)
        expected = NormalIndPower().solve_power(effect_size=_sm_effect(baseline, mde, alternative), alpha=alpha,
                                                power=power, ratio=ratio, alternative=alternative)
        assert abs(plan.n_per_arm - math.ceil(expected)) <= 1, (baseline, mde, alpha, power, ratio)
        assert plan.n_treatment >= ratio * expected - 1
        checked += 1
    assert checked > 70


@pytest.mark.parametrize("test, solver", [("t", TTestIndPower()), ("z", NormalIndPower())])
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_sample_size_for_means_matches_statsmodels_within_one_unit(test, solver, alternative):
    for std, mde, alpha, power, ratio in itertools.product((1.0, 25.0), (0.05, 0.3, 1.0), (0.01, 0.05),
                                                           (0.8, 0.95), (1.0, 2.0)):
        plan = sample_size_means(std, mde, alpha=alpha, power=power, ratio=ratio, alternative=alternative, test=test)
        d = (-mde if alternative == "smaller" else mde) / std
        expected = solver.solve_power(effect_size=d, alpha=alpha, power=power, ratio=ratio, alternative=alternative)
        assert abs(plan.n_per_arm - math.ceil(expected)) <= 1, (std, mde, alpha, power, ratio)
        assert plan.effect_size == pytest.approx(mde / std)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_minimum_detectable_effect_matches_statsmodels(alternative):
    sign = -1 if alternative == "smaller" else 1
    for baseline, n, alpha, power, ratio in itertools.product((0.03, 0.1, 0.4), (500, 20_000), (0.05, 0.01),
                                                             (0.8, 0.9), (1.0, 0.5)):
        plan = mde_proportions(baseline, n, alpha=alpha, power=power, ratio=ratio, alternative=alternative)
        h = NormalIndPower().solve_power(nobs1=n, alpha=alpha, power=power, ratio=ratio, alternative=alternative)
        # statsmodels' solver stops at about 1e-6 in power; ours solves to machine precision
        ours = proportion_effectsize(baseline + sign * plan.mde, baseline)
        assert ours == pytest.approx(h, rel=1e-4)
        assert NormalIndPower().power(ours, n, alpha, ratio=ratio, alternative=alternative) == pytest.approx(power)
        # and it round-trips: planning for that MDE asks for the same units
        again = sample_size_proportions(baseline, plan.mde, alpha=alpha, power=power, ratio=ratio,
                                        alternative=alternative)
        assert abs(again.n_per_arm - n) <= 1
    for test, solver in (("t", TTestIndPower()), ("z", NormalIndPower())):
        for n in (10, 300, 50_000):
            plan = mde_means(4.0, n, test=test, alternative=alternative, ratio=2.0)
            d = solver.solve_power(nobs1=n, alpha=0.05, power=0.8, ratio=2.0, alternative=alternative)
            assert plan.mde == pytest.approx(4.0 * abs(d), rel=1e-3)  # its solver is coarser at large n
            assert solver.power(sign * plan.effect_size, n, 0.05, ratio=2.0, alternative=alternative) == pytest.approx(0.8)


def test_power_functions_match_statsmodels():
    for baseline, mde, n in ((0.1, 0.01, 10_000), (0.5, 0.05, 800), (0.02, 0.004, 30_000)):
        for alternative in ALTERNATIVES:
            expected = NormalIndPower().power(_sm_effect(baseline, mde, alternative), n, 0.05, ratio=1.5,
                                              alternative=alternative)
            got = power_proportions(baseline, mde, n, ratio=1.5, alternative=alternative)
            assert got == pytest.approx(expected, rel=1e-9)
    for n in (5, 60, 400):  # statsmodels' t power is NaN far out (scipy's nct); ours falls back
        expected = TTestIndPower().power(0.3, n, 0.05, ratio=1.0)
        assert power_means(2.0, 0.6, n) == pytest.approx(expected, rel=1e-7)


def test_relative_mde_and_duration():
    absolute = sample_size_proportions(0.1, 0.01)
    relative = sample_size_proportions(0.1, 0.10, relative=True)
    assert relative.n_per_arm == absolute.n_per_arm and relative.relative_mde == pytest.approx(0.1)
    means = sample_size_means(20.0, 0.05, relative=True, baseline=40.0)
    assert means.mde == pytest.approx(2.0) and means.n_per_arm == sample_size_means(20.0, 2.0).n_per_arm

    plan = sample_size_proportions(0.1, 0.01, daily_units=10_000, share=0.25, n_arms=3)
    assert plan.total == 3 * plan.n_per_arm
    assert plan.days == pytest.approx(plan.total / 2_500)
    assert duration_days(1000, 2, daily_units=400, share=0.5) == pytest.approx(10.0)
    uneven = sample_size_proportions(0.1, 0.01, ratio=2.0)
    assert uneven.n_treatment == math.ceil(2 * NormalIndPower().solve_power(
        proportion_effectsize(0.11, 0.1), alpha=0.05, power=0.8, ratio=2.0) - 1e-7)
    assert uneven.total == uneven.n_per_arm + uneven.n_treatment


# --------------------------------------------------------------------------- fixed-horizon tests


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_proportion_test_matches_statsmodels(alternative):
    for xc, nc, xt, nt in ((100, 1000, 130, 1000), (52, 4000, 41, 3800), (7, 90, 7, 95), (0, 50, 3, 60)):
        result = proportion_test(xc, nc, xt, nt, alternative=alternative)
        z, p = proportions_ztest([xt, xc], [nt, nc], alternative=alternative)
        assert result.statistic == pytest.approx(z, rel=1e-10) and result.p_value == pytest.approx(p, rel=1e-9)
        low, high = confint_proportions_2indep(xt, nt, xc, nc, method="wald", compare="diff", alpha=0.05)
        assert result.ci == pytest.approx((low, high), rel=1e-9, abs=1e-12)
        assert result.significant == (p < 0.05)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_welch_test_matches_scipy_and_statsmodels(alternative):
    rng = np.random.default_rng(3)
    for nc, nt, shift, scale in ((40, 60, 0.3, 2.0), (500, 450, 0.05, 1.0), (8, 30, 1.0, 0.2)):
        control, treatment = rng.normal(0, 1, nc), rng.normal(5 + shift, scale, nt)
        control += 5
        result = mean_test(control, treatment, alternative=alternative)
        scipy_alternative = {"larger": "greater", "smaller": "less"}.get(alternative, alternative)
        reference = stats.ttest_ind(treatment, control, equal_var=False, alternative=scipy_alternative)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
        _, p_sm, _ = ttest_ind(treatment, control, usevar="unequal", alternative=alternative)
        assert result.p_value == pytest.approx(p_sm, rel=1e-9)
        low, high = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).tconfint_diff(usevar="unequal")
        assert result.ci == pytest.approx((low, high), rel=1e-9)


def test_lift_interval_covers_at_its_level_and_tests_broadcast():
    rng = np.random.default_rng(11)
    sims, n, rate_c, rate_t = 4000, 5000, 0.08, 0.09
    xc, xt = rng.binomial(n, rate_c, sims), rng.binomial(n, rate_t, sims)
    result = proportion_test(xc, n, xt, n)
    true_lift = rate_t / rate_c - 1
    coverage = np.mean((result.lift_ci[0] <= true_lift) & (true_lift <= result.lift_ci[1]))
    assert abs(coverage - 0.95) < 3 * math.sqrt(0.95 * 0.05 / sims)
    one = proportion_test(int(xc[5]), n, int(xt[5]), n)
    assert one.p_value == pytest.approx(result.p_value[5]) and one.lift_ci[1] == pytest.approx(result.lift_ci[1][5])
    summary = mean_test_from_summary(10.0, 4.0, 100, 11.0, 9.0, 100)
    assert summary.lift == pytest.approx(0.1)
    se = math.sqrt(9 / 100 / 10**2 + 11**2 * 4 / 100 / 10**4)
    assert summary.lift_ci == pytest.approx((0.1 - 1.959963984540054 * se, 0.1 + 1.959963984540054 * se))


# --------------------------------------------------------------------------- corrections, SRM, CUPED


@pytest.mark.parametrize("method", ("bonferroni", "holm", "fdr_bh"))
def test_corrections_match_statsmodels_multipletests(method):
    rng = np.random.default_rng(5)
    cases = [
        rng.uniform(0, 0.2, 12),                                  # unsorted
        np.array([0.01, 0.04, 0.04, 0.04, 0.2, 0.01, 0.03]),      # ties
        np.array([0.0125, 0.025, 0.0375, 0.05]),                  # on the BH/Holm boundaries at 0.05
        np.array([0.0, 1.0, 0.5, 0.9999, 1e-12]),
        np.array([0.3]),
        rng.uniform(0, 1, 200) ** 3,
    ]
    for pvalues, alpha in itertools.product(cases, (0.05, 0.1, 0.01)):
        reject, adjusted = adjust_pvalues(pvalues, method, alpha)
        expected_reject, expected_adjusted, _, _ = multipletests(pvalues, alpha=alpha, method=method)
        np.testing.assert_array_equal(reject, expected_reject)
        np.testing.assert_allclose(adjusted, expected_adjusted, rtol=0, atol=1e-12)


def test_srm_matches_scipy_chisquare_and_flags_a_broken_split():
    for counts, weights in (([5000, 5100], [0.5, 0.5]), ([1000, 2100, 6900], [0.1, 0.2, 0.7]),
                            ([300, 700], [3, 7])):
        check = srm_check(counts, weights)
        expected = np.asarray(weights) / np.sum(weights) * np.sum(counts)
        reference = stats.chisquare(counts, expected)
        assert check.statistic == pytest.approx(reference.statistic) and check.p_value == pytest.approx(reference.pvalue)
        assert not check.mismatch
    broken = srm_check({"control": 50_000, "treatment": 48_800}, {"control": 0.5, "treatment": 0.5})
    assert broken.mismatch and broken.p_value < 0.001 and broken.names == ("control", "treatment")
    assert not srm_check([50_000, 49_700], [0.5, 0.5]).mismatch


def test_cuped_reduces_variance_by_rho_squared_and_keeps_the_effect_unbiased():
    rng = np.random.default_rng(8)
    rho, n, effect, sims = 0.7, 2000, 0.1, 300
    raw, adjusted, reductions = [], [], []
    for _ in range(sims):
        x = rng.normal(10, 2, 2 * n)
        y = 5 + rho * (x - 10) / 2 + math.sqrt(1 - rho**2) * rng.normal(0, 1, 2 * n)
        treated = np.arange(2 * n) >= n
        y = y + effect * treated
        result = cuped(y, x, arms=treated)
        reductions.append(result.variance_reduction)
        raw.append(y[treated].mean() - y[~treated].mean())
        adjusted.append(result.adjusted[treated].mean() - result.adjusted[~treated].mean())
    raw, adjusted = np.array(raw), np.array(adjusted)
    assert np.mean(reductions) == pytest.approx(rho**2, abs=0.02)
    assert abs(adjusted.mean() - effect) < 3 * adjusted.std() / math.sqrt(sims)
    assert adjusted.var() / raw.var() == pytest.approx(1 - rho**2, abs=0.12)
    assert cuped(y, x).theta == pytest.approx(result.theta, rel=0.05)  # all-units theta ~ within-arm theta


# --------------------------------------------------------------------------- sequential


def test_mixture_likelihood_ratio_equals_the_integral_it_stands_for():
    for effect, variance, tau in ((0.02, 1e-4, 0.01), (-0.5, 0.04, 0.3), (0.0, 2.0, 1.0)):
        def integrand(theta):
            ratio = stats.norm.pdf(effect, theta, math.sqrt(variance)) / stats.norm.pdf(effect, 0, math.sqrt(variance))
            return ratio * stats.norm.pdf(theta, 0, tau)
        numeric, _ = integrate.quad(integrand, -12 * tau, 12 * tau, points=[effect], limit=200)
        assert math.exp(mixture_log_likelihood_ratio(effect, variance, tau)) == pytest.approx(numeric, rel=1e-7)
    # the band's edge is where the test of that theta rejects exactly
    radius = boundary(0.04, 0.3, alpha=0.05)
    assert mixture_log_likelihood_ratio(0.1 + radius, 0.04, 0.3, theta0=0.1) == pytest.approx(math.log(20))
    lower, upper = confidence_sequence([0.5, 0.1], [0.04, 0.01], 0.3)
    assert lower[1] == pytest.approx(0.5 - boundary(0.04, 0.3))  # the first look's bound was tighter
    assert upper[1] == pytest.approx(0.1 + boundary(0.01, 0.3))


def test_sequential_from_observations_equals_the_summary_form():
    rng = np.random.default_rng(2)
    y, treated = rng.exponential(3.0, 3000), rng.random(3000) < 0.4
    result = sequential_test_observations(y, treated, looks=6, tau=0.5)
    at = np.linspace(500, 3000, 6).astype(int)
    summary = [(y[:k][~treated[:k]], y[:k][treated[:k]]) for k in at]
    expected = sequential_test([c.mean() for c, _ in summary], [c.var(ddof=1) for c, _ in summary],
                               [c.size for c, _ in summary], [t.mean() for _, t in summary],
                               [t.var(ddof=1) for _, t in summary], [t.size for _, t in summary], tau=0.5)
    np.testing.assert_allclose(result.p_value, expected.p_value, rtol=1e-9)
    assert np.all(np.diff(result.p_value) <= 0)
    # no conversions yet, then too few expected events per arm (8 of 60 pooled: 4 per arm < MIN_EVENTS): no evidence
    early = sequential_proportion_test([0, 0, 3, 30], [10, 20, 30, 300], [0, 0, 5, 50], [10, 20, 30, 300], tau=0.05)
    assert early.ready.tolist() == [False, False, False, True]
    assert np.all(early.p_value[:3] == 1.0) and np.all(np.isinf(early.boundary[:3])) and np.isfinite(early.boundary[3])
    assert np.all(np.isinf(early.ci_lower[:3])) and np.isfinite(early.ci_lower[3])


def test_a_small_arm_without_conversions_is_no_evidence():
    # The defect: a 90/10 canary after a few dozen units, 0 conversions in the small arm.
    # Its own variance is 0 and the unpooled test read that as certainty; pooled, it is not.
    seq = sequential_proportion_test([9, 18, 45], [90, 180, 450], [0, 0, 5], [10, 20, 50], tau=0.05)
    assert seq.ready.tolist() == [False, False, True] and np.all(seq.p_value == 1.0)
    assert seq.variance[0] == pytest.approx(0.09 * 0.91 * (1 / 90 + 1 / 10))  # pooled rate 9/100
    # means: each arm needs MIN_UNITS units; the variance is the pooled one
    means = sequential_test([0.0, 0.0], [1.0, 1.0], [20, 40], [5.0, 0.3], [1e-6, 2.0], [2, 10], tau=1.0)
    assert means.ready.tolist() == [False, True] and means.p_value[0] == 1.0
    assert means.variance[1] == pytest.approx((39 * 1.0 + 9 * 2.0) / 48 * (1 / 40 + 1 / 10))


@pytest.mark.parametrize("runs", (conversion_runs, mean_runs))
def test_aa_sequential_keeps_alpha_while_peeking_does_not(runs):
    sims = 300
    _, naive, sequential = runs(np.random.default_rng(42), sims, 20, 0.0)
    se = math.sqrt(0.05 * 0.95 / sims)
    assert np.mean(sequential.stopped_at >= 0) <= 0.05 + 3 * se
    assert np.mean((naive < 0.05).any(axis=1)) > 0.05 + 5 * se  # peeking roughly quadruples the FPR


UNBALANCED_TAUS = {"proportion": (0.005, 0.02, 0.1, 0.5), "mean": (0.05, 0.3, 1.0, 5.0)}


@pytest.mark.parametrize("kind", ("proportion", "mean"))
def test_aa_sequential_keeps_alpha_at_unbalanced_splits_looked_at_from_the_first_units(kind):
    # A 90/10 or 99/1 canary checked after every 5 units from the very start: a small arm
    # with no conversions yet, or with a variance estimated from two units, must not look
    # like overwhelming evidence. Every split and mixing scale keeps alpha (+ 3 s.e.).
    sims, alpha = 1200, 0.05
    limit = alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)
    rng = np.random.default_rng(11)
    rates = {}
    for share in (0.5, 0.1, 0.01):
        for tau, stopped in unbalanced_aa(rng, sims, kind, share, UNBALANCED_TAUS[kind]).items():
            rates[share, tau] = float(stopped.mean())
    assert max(rates.values()) <= limit, {k: v for k, v in rates.items() if v > limit}


@pytest.mark.parametrize("runs, lift", ((conversion_runs, 0.01), (mean_runs, 0.1)))
def test_ab_planned_sample_reaches_planned_power(runs, lift):
    sims = 400
    plan, naive, sequential = runs(np.random.default_rng(4), sims, 20, lift)
    assert plan.mde == lift
    power = np.mean(naive[:, -1] < 0.05)
    assert abs(power - plan.power) <= 3 * math.sqrt(plan.power * (1 - plan.power) / sims)
    covered = ((sequential.ci_lower <= plan.mde) & (plan.mde <= sequential.ci_upper)).all(axis=1)
    assert covered.mean() >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / sims)
    assert np.mean(sequential.stopped_at >= 0) > 0.3  # it does detect real effects


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, names", [
    (lambda: sample_size_proportions(0.1, 0.01, alpha=1.5), "alpha"),
    (lambda: sample_size_proportions(0.1, 0.01, power=0.0), "power"),
    (lambda: sample_size_proportions(1.2, 0.01), "baseline"),
    (lambda: sample_size_proportions(0.95, 0.1), "mde"),
    (lambda: sample_size_proportions(0.1, 0.01, daily_units=0), "daily_units"),
    (lambda: sample_size_proportions(0.1, 0.01, alternative="bigger"), "alternative"),
    (lambda: sample_size_means(-1.0, 0.5), "std"),
    (lambda: sample_size_means(1.0, 0.0), "mde"),
    (lambda: sample_size_means(1.0, 0.1, relative=True), "baseline"),
    (lambda: sample_size_means(1.0, "x"), "mde"),
    (lambda: mde_means(1.0, 2.5), "n_per_arm"),
    (lambda: duration_days(100, 2, daily_units=-5), "daily_units"),
    (lambda: duration_days(100, 2, daily_units=5, share=2), "share"),
    (lambda: adjust_pvalues([0.01, 0.2], "sidak"), "method"),
    (lambda: adjust_pvalues([0.01, 1.2], "holm"), "pvalues"),
    (lambda: adjust_pvalues([0.01], "holm", alpha=0), "alpha"),
    (lambda: srm_check([100, 100, 5], [0.5, 0.5]), "counts"),
    (lambda: srm_check([100, 100], [1.0, 0.0]), "weights"),
    (lambda: proportion_test(10, 5, 3, 10), "control"),
    (lambda: mean_test([1.0], [1.0, 2.0]), "control"),
    (lambda: cuped([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]), "covariate"),
    (lambda: sequential_proportion_test([1, 2], [10, 20], [1, 2], [10, 20], tau=0), "tau"),
])
def test_bad_input_raises_config_error_naming_the_argument(call, names):
    with pytest.raises(ConfigError, match=names):
        call()
