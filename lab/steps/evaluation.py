"""The evaluate step: candidate and champion on the same test window, and the gate."""

from __future__ import annotations

from typing import Any

from lab.errors import ConfigError
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
         min_delta: float) -> dict[str, Any]:
    """Whether the candidate may replace the champion: it must beat it on ``metric`` by at
    least ``min_delta`` in the metric's better direction (no champion: it passes)."""
    from lab.training.metrics import gate_passes, higher_is_better  # numpy, as above

    if metric not in candidate:
        raise ConfigError(f"[tool.lab.gate] metric {metric!r} is not one of {sorted(candidate)}")
    if champion is None:
        return {"metric": metric, "min_delta": min_delta, "passed": True, "reason": "no champion yet"}
    passed, delta = gate_passes(metric, candidate[metric], champion[metric], min_delta)
    better = "higher" if higher_is_better(metric) else "lower"
    reason = (f"{metric} {candidate[metric]:.4f} vs champion {champion[metric]:.4f} "
              f"(improvement {delta:+.4f}, {better} is better, needs >= {min_delta:+.4f})")
    return {"metric": metric, "min_delta": min_delta, "passed": passed, "reason": reason}


def evaluate(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, metric=None,
             min_delta=0.0, model: str | None = None) -> dict:
    """Score the candidate and the current champion on the same test window and apply the
    gate on ``metric`` (default: the spec's metric)."""
    import polars as pl  # data libraries load only in the step that runs

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        metric = metric or spec.metric
        info = ctx.read_json(CANDIDATE_JSON)
        frame = pl.read_parquet(ctx.path(TRAINSET))
        _, test_df = split(spec, frame, window(train_start, delta_train, delta_delay, delta_test))
        candidate = model_flavor(ctx.pm, info["flavor"]).load(ctx.path(CANDIDATE))
        cand_metrics = score_metrics(spec, candidate, test_df)
        champion = ctx.registry.get_alias(spec.name, "champion")
        champ = None
        if champion is not None:
            champ_model = model_flavor(ctx.pm, champion.flavor).load(ctx.path(champion.artifact_path))
            champ = {"version": champion.version, "metrics": score_metrics(spec, champ_model, test_df)}
        verdict = gate(metric, cand_metrics, champ["metrics"] if champ else None, min_delta)
        evaluation = {"model": spec.name, "candidate": {"metrics": cand_metrics, "run_id": info["run_id"]},
                      "champion": champ, "gate": verdict, "test_rows": test_df.height}
        ctx.registry.log_metrics(info["run_id"], {f"test_{k}": v for k, v in cand_metrics.items()})
        ctx.write_json(EVALUATION, evaluation)
        return evaluation
