"""Serving support that no web framework owns: the prediction ledger and feature assembly."""

from lab.serving.ledger import Ledger, PredictionRecord, iter_feature_rows, read_predictions
from lab.serving.scoring import AssembledFeatures, FeatureAssembler, FeatureAssemblyError, Freshness

__all__ = [
    "AssembledFeatures", "FeatureAssembler", "FeatureAssemblyError", "Freshness", "Ledger",
    "PredictionRecord", "iter_feature_rows", "read_predictions",
]
