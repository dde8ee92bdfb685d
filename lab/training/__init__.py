"""Training: the model-flavor contract, metrics, the evaluation protocol, sweeps."""

from lab.training.flavor import FitResult, ModelFlavor, ScoringModel
from lab.training.metrics import (
    average_precision,
    card_precision_at_k,
    evaluate,
    gate_passes,
    higher_is_better,
    mae,
    metric_names,
    metric_value,
    r2,
    rmse,
    roc_auc,
    task_metrics,
)
from lab.training.protocol import Scaler, reference_split

__all__ = [
    "FitResult", "ModelFlavor", "Scaler", "ScoringModel", "average_precision",
    "card_precision_at_k", "evaluate", "gate_passes", "higher_is_better", "mae", "metric_names", "metric_value",
    "r2", "reference_split", "rmse", "roc_auc", "task_metrics",
]
