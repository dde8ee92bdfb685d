"""Feature views and the store contracts: one definition for training and serving."""

from lab.features.stores import OfflineStore, OnlineStore
from lab.features.views import AGG_FUNCTIONS, Aggregation, FeatureView

__all__ = ["AGG_FUNCTIONS", "Aggregation", "FeatureView", "OfflineStore", "OnlineStore"]
