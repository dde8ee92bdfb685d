"""Training: the model-flavor contract, metrics and the gate, the scaler, sweeps."""

from lab.training.flavor import FitResult, ModelFlavor, ScoringModel
from lab.training.metrics import (
    average_precision,
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
from lab.training.protocol import Scaler

__all__ = [
    "FitResult", "ModelFlavor", "Scaler", "ScoringModel", "average_precision",
    "gate_passes", "higher_is_better", "mae", "metric_names", "metric_value",
    "r2", "rmse", "roc_auc", "task_metrics",
]
