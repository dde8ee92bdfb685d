"""The statistics of live quality: per-row losses, window metrics, and the sequential
test of a mean loss against a baseline (``lab.monitoring.quality`` uses them; the tests
replay them on simulated losses).

The test is the experiments package's mixture SPRT (``lab.experiments.stats.sequential``):
always-valid p-values and confidence sequences, so a quality check may be repeated every
day, for as long as a version serves, with the false-alarm level holding over all the
checks together. Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lab.errors import ConfigError, LabError
from lab.experiments.stats.sequential import (
    SequentialResult,
    boundary,
    confidence_sequence,
    mixture_log_likelihood_ratio,
    sequential_test,
)
from lab.training.metrics import average_precision, roc_auc

LOSSES = {"classification": ("brier", "log_loss"), "regression": ("absolute_error", "squared_error")}
"""The per-row losses the test can watch, per task; the first is the default."""

REGISTRY_METRIC = {"brier": "brier", "log_loss": "log_loss", "absolute_error": "mae", "squared_error": "rmse"}
"""The registry metric of a version whose value is (or gives) its offline mean loss: the
mean squared error is ``rmse`` squared."""

LOG_LOSS_EPS = 1e-15
"""Probabilities are clipped to [eps, 1 - eps] for the log loss (as scikit-learn does)."""


def row_losses(loss: str, y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The per-row loss of each labelled prediction, in the loss's units: ``brier``
    ``(score - y)²``, ``log_loss`` ``-(y·log p + (1 - y)·log(1 - p))`` (p clipped),
    ``absolute_error`` ``|y - score|`` (the label's units), ``squared_error`` ``(y - score)²``."""
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if loss == "brier":
        return (score - y) ** 2
    if loss == "log_loss":
        p = np.clip(score, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
        return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    if loss == "absolute_error":
        return np.abs(y - score)
    if loss == "squared_error":
        return (y - score) ** 2
    raise ConfigError(f"unknown loss {loss!r}; use one of {', '.join(n for ns in LOSSES.values() for n in ns)}")


def precision_at(y: np.ndarray, score: np.ndarray, k: float) -> tuple[float | None, int]:
    """Share of positives among the ``k`` highest scores, and the ``k`` used: ``k`` below 1
    is a share of the rows (at least one row), 1 or more a count (at most every row).
    Ties keep the rows' order. None when there is no row."""
    n = int(y.size)
    if n == 0:
        return None, 0
    take = max(1, int(round(k * n))) if k < 1 else min(n, int(k))
    top = np.argsort(-score, kind="stable")[:take]
    return float(np.mean(y[top])), take


def classification_metrics(y: np.ndarray, score: np.ndarray, k: float) -> tuple[dict, str]:
    """ROC AUC and average precision (``lab.training.metrics``), precision at ``k``, log loss,
    Brier score and the positive rate of labelled rows; a metric that cannot be computed
    (no row, one class) is None and the note says why."""
    out: dict = dict.fromkeys(("roc_auc", "average_precision", "precision_at_k", "log_loss", "brier",
                               "positive_rate"))
    if y.size == 0:
        return out, "no labelled prediction yet"
    out["precision_at_k"], _ = precision_at(y, score, k)
    out["log_loss"] = float(np.mean(row_losses("log_loss", y, score)))
    out["brier"] = float(np.mean(row_losses("brier", y, score)))
    positives = int(y.sum())
    out["positive_rate"] = positives / y.size
    if 0 < positives < y.size:
        out["roc_auc"], out["average_precision"] = roc_auc(y, score), average_precision(y, score)
        return out, ""
    if positives:
        out["average_precision"] = average_precision(y, score)
    return out, f"all {y.size} labels are {int(positives > 0)}: ROC AUC needs both classes"


def regression_metrics(y: np.ndarray, prediction: np.ndarray) -> tuple[dict, str]:
    """MAE and RMSE (the label's units) and the mean error ``prediction - y`` (bias)."""
    if y.size == 0:
        return dict.fromkeys(("mae", "rmse", "mean_error")), "no labelled prediction yet"
    error = prediction - y
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error**2))),
            "mean_error": float(np.mean(error))}, ""


def cumulative_summaries(losses: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running count, mean and unit variance (ddof=1; NaN below 2 rows) of ``losses`` (in
    arrival order) at each look, a look being the number of rows seen so far (``counts``,
    non-decreasing). Works along the last axis, so a stack of simulated replays is one call."""
    losses = np.asarray(losses, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    shift = losses[..., :1] if losses.shape[-1] else 0.0  # centred sums: no cancellation
    z = losses - shift
    s = np.concatenate([np.zeros(z.shape[:-1] + (1,)), np.cumsum(z, axis=-1)], axis=-1)
    q = np.concatenate([np.zeros(z.shape[:-1] + (1,)), np.cumsum(z * z, axis=-1)], axis=-1)
    s_at, q_at = np.take(s, counts, axis=-1), np.take(q, counts, axis=-1)
    n = counts.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        centred_mean = np.where(n > 0, s_at / np.maximum(n, 1.0), np.nan)
        variance = np.where(n > 1, np.maximum(q_at - n * centred_mean**2, 0.0) / (n - 1.0), np.nan)
    return np.broadcast_to(n, centred_mean.shape), centred_mean + shift, variance


def degradation_test(live_n, live_mean, live_var, *, baseline_mean: float, baseline_var: float | None = None,
                     baseline_n: float | None = None, tolerance: float = 0.0, min_effect: float = 0.2,
                     alpha: float = 0.05, min_units: int = 100) -> SequentialResult:
    """The mSPRT of the live mean loss against ``(1 + tolerance)`` times the baseline's, at
    each look (arrays over looks: running count, mean and unit variance of the live rows).

    With ``baseline_n`` the baseline is a sample too (the version's own early windows):
    the two-sample test ``sequential_test`` with the control scaled by ``1 + tolerance``
    (its pooled variance under the null). Without it the baseline mean is a known
    number (a registry metric or one given): a one-sample test with the live rows'
    plug-in variance, from the same mixture likelihood ratio and confidence sequence.
    The mixing scale τ is ``min_effect`` times the baseline mean: the relative
    degradation the test is tuned to find fastest. No look decides before ``min_units``
    live rows (and baseline rows). The effect, its p-value and its confidence sequence
    are those of ``live mean - (1 + tolerance)·baseline mean``; the loss has degraded
    when the sequence's lower bound is above 0 (``degraded_at``).
    """
    if not (isinstance(baseline_mean, (int, float, np.floating)) and math.isfinite(baseline_mean)
            and baseline_mean > 0):
        raise LabError(f"the baseline mean loss must be a number above 0, got {baseline_mean!r}: a loss of 0 "
                       "cannot degrade by a share of itself; pass baseline= a positive mean loss")
    margin = 1.0 + float(tolerance)
    tau = float(min_effect) * float(baseline_mean)
    live_n = np.asarray(live_n, dtype=np.float64)
    live_mean = np.asarray(live_mean, dtype=np.float64)
    live_var = np.asarray(live_var, dtype=np.float64)
    if baseline_n is not None:
        shape = live_mean.shape
        return sequential_test(np.full(shape, float(baseline_mean)), np.full(shape, float(baseline_var)),
                               np.full(shape, float(baseline_n)), live_mean, live_var, live_n, tau=tau,
                               alpha=alpha, margin=margin, min_units=min_units)
    effect = live_mean - margin * float(baseline_mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = live_var / live_n
    ready = (live_n >= max(int(min_units), 2)) & np.isfinite(variance) & (variance > 0)
    v = np.where(ready, variance, np.nan)
    llr = mixture_log_likelihood_ratio(effect, v, tau)
    p = np.minimum.accumulate(np.exp(-np.maximum(llr, 0.0)), axis=-1)
    lower, upper = confidence_sequence(effect, v, tau, alpha)
    return SequentialResult(effect, variance, llr, p, lower, upper, boundary(v, tau, alpha), ready, float(alpha),
                            tau)


def degraded_at(result: SequentialResult):
    """The first look whose confidence sequence lies wholly above 0 (the loss exceeds the
    tolerated baseline), -1 where none does; along the last axis."""
    above = np.asarray(result.ci_lower) > 0
    first = np.where(above.any(axis=-1), above.argmax(axis=-1), -1)
    return first.item() if first.ndim == 0 else first


def segment_alpha(alpha: float, segment: int) -> float:
    """The false-alarm level spent on segment ``segment`` (0, 1, 2...): ``alpha · 6 / (π² (s+1)²)``,
    which sums to ``alpha`` over every segment there will ever be."""
    return float(alpha) * 6.0 / (math.pi**2 * (int(segment) + 1) ** 2)


@dataclass(frozen=True)
class Watch:
    """The degradation test of each segment of live rows at every look.

    ``segments`` are the segments' numbers, ``results`` their ``SequentialResult`` (looks
    along the last axis), ``alphas`` the level spent on each (``segment_alpha``),
    ``counts`` their live rows at each look; ``alpha`` the level of the whole watch.
    """

    looks: np.ndarray
    alpha: float
    segments: tuple[int, ...]
    results: tuple[SequentialResult, ...]
    alphas: tuple[float, ...]
    counts: tuple[np.ndarray, ...]

    @property
    def alarm(self) -> tuple[int, int]:
        """``(look, position in segments)`` of the earliest look at which some segment's
        confidence sequence lay wholly above 0; ``(-1, -1)`` when none did."""
        best = (-1, -1)
        for position, result in enumerate(self.results):
            look = degraded_at(result)
            if look >= 0 and (best[0] < 0 or look < best[0]):
                best = (look, position)
        return best

    @property
    def p_value(self) -> float:
        """The always-valid p-value of "no segment degraded" at the last look: the weighted
        Bonferroni ``min_s p_s · alpha / alpha_s``, at most 1 (it is at most ``alpha``
        exactly when some segment's test rejected at its own level)."""
        return float(min([1.0, *(float(r.p_value[-1]) * self.alpha / a for r, a in zip(self.results, self.alphas))]))


def watch(losses, segments, arrival, looks, *, baseline_mean: float, baseline_var: float | None = None,
          baseline_n: float | None = None, tolerance: float = 0.0, min_effect: float = 0.2, alpha: float = 0.05,
          min_units: int = 100) -> Watch:
    """``degradation_test`` per segment of live rows, each at level ``segment_alpha(alpha, s)``.

    A cumulative test from the version's start dilutes a late decay in everything before
    it: after a year of good service a week of bad rows barely moves the mean. So the live
    rows are cut into segments (consecutive spans of request time, numbered from 0), each
    tested against the baseline on its own, and the levels spent sum to ``alpha``: the
    probability that any segment ever alarms is at most ``alpha`` (union bound), and a
    decay is diluted by at most one segment's rows. ``losses``, ``segments`` (whole
    numbers >= 0) and ``arrival`` (when each row's label became known: any ordered type)
    are per row; a look at time ``t`` sees the rows with ``arrival <= t``. Rows of equal
    arrival keep their order (pass them sorted by request time).
    """
    losses, segments, arrival = np.asarray(losses, dtype=np.float64), np.asarray(segments), np.asarray(arrival)
    found, results, alphas, counts = [], [], [], []
    for s in np.unique(segments):
        if s < 0:
            raise LabError(f"segments are numbered from 0, got {s}")
        here = segments == s
        order = np.argsort(arrival[here], kind="stable")
        at = np.searchsorted(arrival[here][order], looks, side="right")
        n, mean, var = cumulative_summaries(losses[here][order], at)
        level = segment_alpha(alpha, int(s))
        results.append(degradation_test(n, mean, var, baseline_mean=baseline_mean, baseline_var=baseline_var,
                                        baseline_n=baseline_n, tolerance=tolerance, min_effect=min_effect,
                                        alpha=level, min_units=min_units))
        found.append(int(s))
        alphas.append(level)
        counts.append(at)
    return Watch(np.asarray(looks), float(alpha), tuple(found), tuple(results), tuple(alphas), tuple(counts))
