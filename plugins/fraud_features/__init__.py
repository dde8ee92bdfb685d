"""Built-in plugin: the fraud demo's feature views and request-time features.

Contributes ``customer_spending`` and ``terminal_risk`` through ``lab_feature_views``;
``request_features``, ``request_row``, ``FEATURE_COLUMNS`` and ``online_row_for_request`` are the
request-time half, used by training (``lab.features.training``) and serving alike.
"""

from __future__ import annotations

from lab import hookimpl
from plugins.fraud_features.features import (
    CUSTOMER_SPENDING,
    FEATURE_COLUMNS,
    REQUEST_RULES,
    TERMINAL_RISK,
    VIEWS,
    online_row_for_request,
    request_features,
    request_row,
)

__all__ = [
    "CUSTOMER_SPENDING", "FEATURE_COLUMNS", "REQUEST_RULES", "TERMINAL_RISK", "VIEWS",
    "lab_feature_views", "online_row_for_request", "request_features", "request_row",
]


@hookimpl
def lab_feature_views(config):
    """The demo's two views over the ``transactions`` source."""
    return list(VIEWS)
