"""Training: the model-flavor contract, metrics, the evaluation protocol, sweeps."""

from lab.training.flavor import FitResult, ModelFlavor, ScoringModel
from lab.training.metrics import average_precision, card_precision_at_k, evaluate, roc_auc
from lab.training.protocol import Scaler, reference_split

__all__ = [
    "FitResult", "ModelFlavor", "Scaler", "ScoringModel", "average_precision",
    "card_precision_at_k", "evaluate", "reference_split", "roc_auc",
]
