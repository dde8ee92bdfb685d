"""The evaluate step: candidate and champion on the same test window, and the gate (on a
point estimate, or on a paired-bootstrap confidence interval of the improvement)."""

from __future__ import annotations

from typing import Any, Callable

from lab.errors import ConfigError, LabError
from lab.modelspec import ModelSpec
from lab.pipeline.context import StageContext
from lab.plugins import model_flavor
from lab.steps._common import CANDIDATE, CANDIDATE_JSON, EVALUATION, TRAINSET, spec_of, split, window, xy


def score_metrics(spec: ModelSpec, model: Any, frame) -> dict[str, float]:
    """The task's metrics (plus the spec's own) of ``model`` on ``frame``."""
    from lab.training.metrics import task_metrics  # numpy loads only in the step that runs

    x, y = xy(frame, list(model.feature_names), spec.label)
    scores = model.predict(x)
    metrics = task_metrics(spec.task, y, scores)
    if spec.metrics is not None:
        metrics.update({k: float(v) for k, v in spec.metrics(frame, scores).items()})
    return metrics


def gate(metric: str, candidate: dict[str, float], champion: dict[str, float] | None,
         min_delta: float, *, interval: dict | None = None) -> dict[str, Any]:
    """Whether the candidate may replace the champion: it must beat it on ``metric`` by at
    least ``min_delta`` in the metric's better direction (no champion: it passes). With
    ``interval`` (``improvement_interval``'s), on evidence rather than a point estimate:
    the interval's lower bound of the improvement must exceed ``min_delta``."""
    from lab.training.metrics import gate_passes, higher_is_better  # numpy, as above

    if metric not in candidate:
        raise ConfigError(f"[tool.lab.gate] metric {metric!r} is not one of {sorted(candidate)}")
    if champion is None:
        return {"metric": metric, "min_delta": min_delta, "passed": True, "reason": "no champion yet"}
    passed, delta = gate_passes(metric, candidate[metric], champion[metric], min_delta)
    better = "higher" if higher_is_better(metric) else "lower"
    reason = (f"{metric} {candidate[metric]:.4f} vs champion {champion[metric]:.4f} "
              f"(improvement {delta:+.4f}, {better} is better, needs >= {min_delta:+.4f})")
    out = {"metric": metric, "min_delta": min_delta, "passed": passed, "reason": reason}
    if interval is not None:
        passed = interval["low"] > min_delta
        level = int(round(interval["confidence"] * 100))
        reason = (f"{metric} {candidate[metric]:.4f} vs champion {champion[metric]:.4f}: improvement "
                  f"{delta:+.4f}, {level}% CI [{interval['low']:+.4f}, {interval['high']:+.4f}] "
                  f"({interval['method']}, {interval['samples']} resamples, {better} is better); "
                  f"the lower bound must exceed {min_delta:+.4f}")
        out.update(passed=passed, reason=reason, interval=interval, point_estimate_passed=out["passed"])
    return out


def paired_bootstrap(values: Callable[[Any], tuple[float, float]], n: int, *, higher_is_better: bool,
                     samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """A percentile interval of the improvement of a candidate over a champion on the same
    ``n`` test rows: each resample draws ``n`` row indices with replacement and scores
    both models on those same rows (``values(indices) -> (candidate, champion)``), so
    what varies with the sample varies for both. The improvement is ``candidate -
    champion`` (``champion - candidate`` when lower is better). A resample where the
    metric is undefined (one class only) is skipped; more than 10 % skipped is an error."""
    import numpy as np  # numpy loads only in the step that runs

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 100:
        raise ConfigError(f"[tool.lab.gate] bootstrap_samples must be a whole number >= 100, got {samples!r}")
    if not isinstance(confidence, (int, float)) or not 0.5 <= confidence < 1:
        raise ConfigError(f"[tool.lab.gate] confidence must be in [0.5, 1), e.g. 0.95, got {confidence!r}")
    if n < 2:
        raise LabError(f"a bootstrap needs at least 2 test rows, got {n}; widen the test window")
    sign = 1.0 if higher_is_better else -1.0
    rng = np.random.default_rng(seed)
    deltas, skipped = [], 0
    for _ in range(samples):
        idx = rng.integers(0, n, size=n)
        try:
            cand, champ = values(idx)
        except LabError:
            skipped += 1
            continue
        deltas.append(sign * (float(cand) - float(champ)))
    if skipped > samples // 10:
        raise LabError(f"the gate metric was undefined on {skipped} of {samples} bootstrap resamples (too few "
                       "rows of one class in the test window); widen the test window or turn off "
                       "[tool.lab.gate] require_ci")
    cand, champ = values(np.arange(n))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(deltas), [tail, 1 - tail])
    return {"method": "paired bootstrap, percentile", "confidence": float(confidence), "samples": samples,
            "skipped": skipped, "seed": seed, "delta": sign * (float(cand) - float(champ)),
            "low": float(low), "high": float(high)}


def improvement_interval(spec: ModelSpec, metric: str, candidate: Any, champion: Any, frame, *,
                         samples: int, confidence: float, seed: int = 0) -> dict[str, Any]:
    """``paired_bootstrap`` of ``metric`` for two models on the same test ``frame``: a
    task metric from the scores alone, a lab's own (``ModelSpec.metrics``) from the
    resampled rows and scores."""
    from lab.training.metrics import higher_is_better, metric_names, metric_value  # numpy, as above

    y_cand = xy(frame, list(candidate.feature_names), spec.label)
    y_champ = xy(frame, list(champion.feature_names), spec.label)
    y, cand_scores, champ_scores = y_cand[1], candidate.predict(y_cand[0]), champion.predict(y_champ[0])
    if metric in metric_names(spec.task):
        def values(idx):
            return (metric_value(spec.task, metric, y[idx], cand_scores[idx]),
                    metric_value(spec.task, metric, y[idx], champ_scores[idx]))
    elif spec.metrics is not None:
        def values(idx):
            rows = frame[idx]
            return spec.metrics(rows, cand_scores[idx])[metric], spec.metrics(rows, champ_scores[idx])[metric]
    else:
        raise ConfigError(f"[tool.lab.gate] metric {metric!r} is not a {spec.task} metric of the platform and "
                          f"model {spec.name!r} declares no metrics of its own")
    return paired_bootstrap(values, len(y), higher_is_better=higher_is_better(metric), samples=samples,
                            confidence=confidence, seed=seed)


def evaluate(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, metric=None,
             min_delta=0.0, model: str | None = None, require_ci: bool | None = None,
             confidence: float | None = None, bootstrap_samples: int | None = None) -> dict:
    """Score the candidate and the current champion on the same test window and apply the
    gate on ``metric`` (default: the spec's metric). With ``require_ci`` the gate is judged
    on the lower bound of a paired-bootstrap interval of the improvement at ``confidence``
    over ``bootstrap_samples`` resamples, which the register step stores as the version's
    offline evidence (each None: its [tool.lab.gate] value)."""
    import polars as pl  # data libraries load only in the step that runs

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        metric = metric or spec.metric
        settings = ctx.config.gate
        require_ci = settings.require_ci if require_ci is None else require_ci
        confidence = settings.confidence if confidence is None else confidence
        bootstrap_samples = settings.bootstrap_samples if bootstrap_samples is None else bootstrap_samples
        info = ctx.read_json(CANDIDATE_JSON)
        frame = pl.read_parquet(ctx.path(TRAINSET))
        _, test_df = split(spec, frame, window(train_start, delta_train, delta_delay, delta_test))
        candidate = model_flavor(ctx.pm, info["flavor"]).load(ctx.path(CANDIDATE))
        cand_metrics = score_metrics(spec, candidate, test_df)
        champion = ctx.registry.get_alias(spec.name, "champion")
        champ, interval = None, None
        if champion is not None:
            champ_model = model_flavor(ctx.pm, champion.flavor).load(ctx.path(champion.artifact_path))
            champ = {"version": champion.version, "metrics": score_metrics(spec, champ_model, test_df)}
            if require_ci:
                interval = improvement_interval(spec, metric, candidate, champ_model, test_df,
                                                samples=bootstrap_samples, confidence=confidence,
                                                seed=ctx.config.train.seed)
        verdict = gate(metric, cand_metrics, champ["metrics"] if champ else None, min_delta, interval=interval)
        evaluation = {"model": spec.name, "candidate": {"metrics": cand_metrics, "run_id": info["run_id"]},
                      "champion": champ, "gate": verdict, "test_rows": test_df.height}
        ctx.registry.log_metrics(info["run_id"], {f"test_{k}": v for k, v in cand_metrics.items()})
        ctx.write_json(EVALUATION, evaluation)
        return evaluation
