"""Serving support that no web framework owns: the prediction ledger, feature assembly,
and the routing protocol the server calls (implemented in ``lab.experiments.routing``)."""

from lab.serving.ledger import Ledger, PredictionRecord, iter_feature_rows, read_predictions
from lab.serving.routing import Route, Router
from lab.serving.scoring import AssembledFeatures, FeatureAssembler, FeatureAssemblyError, Freshness

__all__ = [
    "AssembledFeatures", "FeatureAssembler", "FeatureAssemblyError", "Freshness", "Ledger",
    "PredictionRecord", "Route", "Router", "iter_feature_rows", "read_predictions",
]
