"""Statistics for experiments: plan the sample, analyse the result, monitor it safely.

- ``planning``: units per arm, minimum detectable effect, duration (``Plan``).
- ``analysis``: fixed-horizon tests with intervals on the effect and the relative lift,
  multiple-comparison corrections, the sample-ratio-mismatch check, CUPED.
- ``sequential``: the mixture SPRT: always-valid p-values and confidence sequences
  (pooled variance under the null; no decision before a minimum sample).

Pure numpy and scipy; statsmodels is only used by the tests, to check these against it.
"""

from lab.experiments.stats.analysis import (
    Comparison, CupedAdjustment, SampleRatioCheck, adjust_pvalues, cuped, mean_test, mean_test_from_summary,
    proportion_test, relative_lift, srm_check,
)
from lab.experiments.stats.planning import (
    Plan, duration_days, mde_means, mde_proportions, power_means, power_proportions, sample_size_means,
    sample_size_proportions,
)
from lab.experiments.stats.sequential import (
    MIN_EVENTS, MIN_UNITS, SequentialResult, always_valid_p_values, boundary, confidence_sequence,
    difference_variance, mixture_log_likelihood_ratio, pooled_variance, sequential_proportion_test, sequential_test,
    sequential_test_observations,
)

__all__ = [
    "MIN_EVENTS", "MIN_UNITS", "Comparison", "CupedAdjustment", "Plan", "SampleRatioCheck", "SequentialResult",
    "adjust_pvalues",
    "always_valid_p_values", "boundary", "confidence_sequence", "cuped", "difference_variance", "duration_days",
    "mde_means", "mde_proportions", "mean_test", "mean_test_from_summary", "mixture_log_likelihood_ratio",
    "pooled_variance", "power_means", "power_proportions", "proportion_test", "relative_lift", "sample_size_means",
    "sample_size_proportions", "sequential_proportion_test", "sequential_test", "sequential_test_observations",
    "srm_check",
]
