"""Peeking, measured: A/A and A/B simulations of the fixed and the sequential test.

    .venv/bin/python benchmarks/bench_sequential.py [--sims 2000] [--looks 20] [--seed 7]

A/A: every experiment has no true difference and is looked at ``--looks`` times, equally
spaced up to the planned sample size. Then A/A at 50/50, 90/10 and 99/1 splits looked at
after every 5 units from the first, for several mixing scales, beside what each arm's own
variance with no minimum sample gave (the old, anti-conservative form). The naive analyst runs the fixed-horizon test at
every look and stops at the first p < 0.05; the sequential analyst checks the mSPRT's
always-valid p-value at every look. Their false-positive rates are printed with
Monte-Carlo standard errors. A/B: the true lift equals the planned MDE; the fixed test at
the planned sample size should reach the planned power. Both metric kinds are run:
conversion (baseline 10 %, MDE +1 point) and a mean (SD 1, MDE 0.1).

Everything is vectorized: one (sims × looks) array per quantity, simulated from the
sufficient statistics of each look's new units (binomial counts; for normal outcomes the
chunk mean and its chi-square sum of squares), so 2,000 × 20 looks take well under a
second per scenario.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from lab.experiments.stats import (  # noqa: E402
    difference_variance, mean_test_from_summary, mixture_log_likelihood_ratio, proportion_test, sample_size_means,
    sample_size_proportions, sequential_proportion_test, sequential_test,
)

ALPHA, POWER = 0.05, 0.8
BASELINE, MDE_RATE = 0.10, 0.01
STD, MDE_MEAN = 1.0, 0.1


def look_sizes(n_per_arm: int, looks: int) -> np.ndarray:
    """Cumulative units per arm at each of ``looks`` equally spaced looks."""
    return np.linspace(n_per_arm / looks, n_per_arm, looks).round().astype(int)


def simulate_conversions(rng, sims: int, at: np.ndarray, rate_control: float, rate_treatment: float):
    """Cumulative conversions per arm at each look: two (sims × looks) arrays."""
    chunks = np.diff(at, prepend=0)
    control = rng.binomial(chunks, rate_control, size=(sims, at.size)).cumsum(axis=1)
    treatment = rng.binomial(chunks, rate_treatment, size=(sims, at.size)).cumsum(axis=1)
    return control, treatment


def simulate_means(rng, sims: int, at: np.ndarray, mean: float, std: float):
    """Running (mean, variance) of normal outcomes at each look for one arm, (sims × looks)."""
    chunks = np.diff(at, prepend=0)
    chunk_mean = rng.normal(mean, std / np.sqrt(chunks), size=(sims, at.size))
    chunk_ss = std**2 * rng.chisquare(chunks - 1, size=(sims, at.size))  # within-chunk squares
    total = (chunks * chunk_mean).cumsum(axis=1)
    squares = (chunk_ss + chunks * chunk_mean**2).cumsum(axis=1)
    running_mean = total / at
    return running_mean, (squares - at * running_mean**2) / (at - 1)


def arrivals(rng, sims: int, units: int, every: int, share: float, kind: str, rate: float = BASELINE):
    """A/A experiments watched from the first units: each unit goes to treatment with
    probability ``share``, and the test is looked at after every ``every`` units.

    Returns the cumulative per-arm summaries at each look as (sims × looks) arrays:
    ``(successes_c, n_c, successes_t, n_t)`` for conversions (rate ``rate``), else
    ``(mean_c, var_c, n_c, mean_t, var_t, n_t)`` for standard normal outcomes (NaN where
    an arm has too few units). Simulated from each chunk's sufficient statistics.
    """
    looks = units // every
    treated = rng.binomial(every, share, size=(sims, looks))
    out = []
    for n in (every - treated, treated):
        total = n.cumsum(axis=1)
        if kind == "proportion":
            out.append((rng.binomial(n, rate).cumsum(axis=1), total))
            continue
        chunk_sum = rng.normal(0.0, 1.0, n.shape) * np.sqrt(n)
        within = np.where(n > 1, rng.chisquare(np.maximum(n - 1, 1)), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            squares = (within + np.where(n > 0, chunk_sum**2 / np.maximum(n, 1), 0.0)).cumsum(axis=1)
            mean = np.where(total > 0, chunk_sum.cumsum(axis=1) / total, np.nan)
            var = np.where(total > 1, (squares - total * mean**2) / (total - 1), np.nan)
        out.append((mean, var, total))
    (a, b, *c), (d, e, *f) = out
    return (a, b, d, e) if kind == "proportion" else (a, b, c[0], d, e, f[0])


def unbalanced_aa(rng, sims: int, kind: str, share: float, taus, *, units: int = 10_000, every: int = 5,
                  rate: float = BASELINE, unpooled: bool = False) -> dict[float, np.ndarray]:
    """For each mixing scale in ``taus``: whether each A/A experiment ever rejected.

    ``unpooled=True`` evaluates the mixture with each arm's own variance and no minimum
    sample instead (what the library did before), for comparison.
    """
    data = arrivals(rng, sims, units, every, share, kind, rate)
    if unpooled:
        if kind == "proportion":
            xc, nc, xt, nt = data
            with np.errstate(divide="ignore", invalid="ignore"):
                mc, mt = xc / nc, xt / nt
            data = (mc, mc * (1 - mc), nc, mt, mt * (1 - mt), nt)
        mc, vc, nc, mt, vt, nt = data
        variance = difference_variance(vc, nc, vt, nt)
        return {tau: (mixture_log_likelihood_ratio(mt - mc, variance, tau) >= math.log(1 / ALPHA)).any(axis=-1)
                for tau in taus}
    test = sequential_proportion_test if kind == "proportion" else sequential_test
    return {tau: test(*data, tau=tau, alpha=ALPHA).stopped_at >= 0 for tau in taus}


UNBALANCED_TAUS = {"proportion": (0.005, 0.01, 0.03, 0.1, 0.5), "mean": (0.05, 0.1, 0.3, 1.0, 5.0)}
SPLITS = (0.5, 0.1, 0.01)


def unbalanced_report(rng, sims: int) -> bool:
    """Print A/A false-positive rates at 50/50, 90/10 and 99/1 splits, looked at after every
    5 units from the first, per mixing scale; True when all keep alpha (+ 3 s.e.)."""
    ok = True
    print(f"A/A at unbalanced splits, looked at after every 5 units from the start up to 10,000 units, "
          f"{sims} experiments each (conversion at {BASELINE:.0%}; standard normal means):")
    for kind, taus in UNBALANCED_TAUS.items():
        start = time.perf_counter()
        print(f"  [{kind}] tau: " + "  ".join(f"{t:>15g}" for t in taus))
        for share in SPLITS:
            split = f"{100 * (1 - share):g}/{100 * share:g}"
            seed = rng.integers(2**32)
            pooled = unbalanced_aa(np.random.default_rng(seed), sims, kind, share, taus)
            old = unbalanced_aa(np.random.default_rng(seed), sims, kind, share, taus, unpooled=True)
            rates = [rate(pooled[t]) for t in taus]
            ok &= all(r[0] <= ALPHA + 3 * r[1] for r in rates)
            print(f"    {split:>6} mSPRT     " + "  ".join(f"{fmt(r):>15}" for r in rates))
            print(f"    {split:>6} unpooled  " + "  ".join(f"{fmt(rate(old[t])):>15}" for t in taus))
        print(f"  ({time.perf_counter() - start:.2f} s)")
    print("  mSPRT: pooled variance and the minimum sample; unpooled: each arm's own variance, no minimum "
          "(the old, anti-conservative form)\n")
    return ok


def conversion_runs(rng, sims: int, looks: int, lift: float, horizon: float = 1.0):
    """Naive p-values and the sequential result for conversion experiments with a true ``lift``.

    Looks are spread over ``horizon`` times the planned sample size.
    """
    plan = sample_size_proportions(BASELINE, MDE_RATE, alpha=ALPHA, power=POWER)
    at = look_sizes(round(horizon * plan.n_per_arm), looks)
    xc, xt = simulate_conversions(rng, sims, at, BASELINE, BASELINE + lift)
    naive = proportion_test(xc, at, xt, at, alpha=ALPHA).p_value
    sequential = sequential_proportion_test(xc, at, xt, at, tau=plan.mde, alpha=ALPHA)
    return plan, naive, sequential


def mean_runs(rng, sims: int, looks: int, lift: float, horizon: float = 1.0):
    """Naive p-values and the sequential result for mean-metric experiments with a true ``lift``."""
    plan = sample_size_means(STD, MDE_MEAN, alpha=ALPHA, power=POWER)
    at = look_sizes(round(horizon * plan.n_per_arm), looks)
    mc, vc = simulate_means(rng, sims, at, 0.0, STD)
    mt, vt = simulate_means(rng, sims, at, lift, STD)
    naive = mean_test_from_summary(mc, vc, at, mt, vt, at, alpha=ALPHA).p_value
    sequential = sequential_test(mc, vc, at, mt, vt, at, tau=plan.mde, alpha=ALPHA)
    return plan, naive, sequential


def rate(hits: np.ndarray) -> tuple[float, float]:
    """Share of True and its Monte-Carlo standard error."""
    p = float(np.mean(hits))
    return p, math.sqrt(p * (1 - p) / hits.size)


def fmt(estimate: tuple[float, float]) -> str:
    return f"{estimate[0]:.4f} ± {estimate[1]:.4f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"{args.sims} experiments per scenario, {args.looks} equally spaced looks, alpha = {ALPHA}; "
          f"rates ± one Monte-Carlo s.e.\n")
    ok = True
    for kind, runs, mde in (("conversion", conversion_runs, MDE_RATE), ("mean", mean_runs, MDE_MEAN)):
        start = time.perf_counter()
        plan, naive, seq = runs(rng, args.sims, args.looks, 0.0)
        peeking, fixed_final = rate((naive < ALPHA).any(axis=1)), rate(naive[:, -1] < ALPHA)
        always_valid = rate(seq.stopped_at >= 0)
        print(f"[{kind}] plan: {plan.n_per_arm} units per arm (MDE {plan.mde:g}, power {plan.power:g})")
        print(f"  A/A naive test, stop at first p < 0.05 : FPR {fmt(peeking)}   (inflated)")
        print(f"  A/A fixed test at the planned n only   : FPR {fmt(fixed_final)}")
        print(f"  A/A sequential mSPRT at every look     : FPR {fmt(always_valid)}   "
              f"(<= {ALPHA} + 3 s.e.: {always_valid[0] <= ALPHA + 3 * always_valid[1]})")
        ok &= always_valid[0] <= ALPHA + 3 * always_valid[1] and peeking[0] > ALPHA + 3 * peeking[1]

        plan, naive, seq = runs(rng, args.sims, args.looks, mde)
        power = rate(naive[:, -1] < ALPHA)
        seq_power = rate(seq.stopped_at >= 0)
        covered = rate(((seq.ci_lower <= mde) & (mde <= seq.ci_upper)).all(axis=1))
        stopped = seq.stopped_at[seq.stopped_at >= 0]
        median_stop = f"{(np.median(stopped) + 1) / args.looks:.0%}" if stopped.size else "n/a"
        print(f"  A/B true lift = MDE, fixed test at the planned n: power {fmt(power)} vs planned {POWER} "
              f"(within 3 s.e.: {abs(power[0] - POWER) <= 3 * power[1]})")
        print(f"  A/B sequential mSPRT by the planned n : power {fmt(seq_power)}, "
              f"median stop at {median_stop} of the planned n")
        print(f"  A/B confidence sequence covers the true lift at every look: {fmt(covered)}")
        _, _, longer = runs(rng, args.sims, 2 * args.looks, mde, horizon=2.0)
        print(f"  A/B sequential mSPRT by twice the planned n ({2 * args.looks} looks): "
              f"power {fmt(rate(longer.stopped_at >= 0))}")
        print(f"  ({time.perf_counter() - start:.2f} s)\n")
        ok &= abs(power[0] - POWER) <= 3 * power[1]
    ok &= unbalanced_report(rng, args.sims)
    print("acceptance:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
