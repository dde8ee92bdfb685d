"""Peeking, measured: A/A and A/B simulations of the fixed and the sequential test.

    .venv/bin/python benchmarks/bench_sequential.py [--sims 2000] [--looks 20] [--seed 7]

A/A: every experiment has no true difference and is looked at ``--looks`` times, equally
spaced up to the planned sample size. The naive analyst runs the fixed-horizon test at
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
    mean_test_from_summary, proportion_test, sample_size_means, sample_size_proportions,
    sequential_proportion_test, sequential_test,
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
    print("acceptance:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
