"""The fraud model's declarations: its request, its request-time features, its protocol.

``fraud_spec()`` is what the plugin returns from ``lab_model_specs``: a binary classifier
of ``TX_FRAUD`` over the ``transactions`` source, reading the ``customer_spending`` and
``terminal_risk`` views, with the handbook's split (``protocol.protocol_split``) and card
precision@100 beside the platform's ROC AUC and average precision.
"""

from __future__ import annotations

from typing import Any, Mapping

from lab.modelspec import ModelSpec, RequestField, RequestSchema
from plugins.fraud.features import (
    CUSTOMER_SPENDING,
    FEATURE_COLUMNS,
    TERMINAL_RISK,
    online_row_for_request,
    request_features,
)
from plugins.fraud.metrics import card_precision_metrics
from plugins.fraud.protocol import protocol_split

MODEL_NAME = "fraud"
MAX_ID = 2**63 - 1  # SQLite INTEGER; a larger key could not be looked up, only overflow
MAX_AMOUNT = 1e9  # keeps every derived feature a finite float32

TRANSACTION = RequestSchema(
    title="Transaction",
    fields=(
        RequestField("TRANSACTION_ID", "int", "the transaction's id, a whole number, 0 or more", ge=0, le=MAX_ID),
        RequestField("TX_DATETIME", "datetime", "ISO 8601 date-time, e.g. 2018-08-01T12:30:00; an offset, if "
                     "any, is ignored: features read the wall-clock time"),
        RequestField("CUSTOMER_ID", "int", "the card holder, a whole number, 0 or more", ge=0, le=MAX_ID),
        RequestField("TERMINAL_ID", "int", "the payment terminal, a whole number, 0 or more", ge=0, le=MAX_ID),
        RequestField("TX_AMOUNT", "float", "the amount, 0 to 1e9", ge=0, le=MAX_AMOUNT),
    ),
    id="TRANSACTION_ID",
    timestamp="TX_DATETIME",
    entities=("CUSTOMER_ID", "TERMINAL_ID"),
    example={"TRANSACTION_ID": 1, "TX_DATETIME": "2018-09-30T12:00:00", "CUSTOMER_ID": 596,
             "TERMINAL_ID": 3156, "TX_AMOUNT": 57.16},
)


def request_row(request: Mapping[str, Any], rows: Mapping[str, "dict | None"]) -> dict:
    """The 15 model inputs for one transaction from its customer's and terminal's online rows."""
    features, _flags = online_row_for_request(
        request, rows.get(CUSTOMER_SPENDING.name), rows.get(TERMINAL_RISK.name))
    return features


def _split(frame, window):
    return protocol_split(frame, window)


def _metrics(frame, scores):
    return card_precision_metrics(frame, scores)


def fraud_spec() -> ModelSpec:
    return ModelSpec(
        name=MODEL_NAME,
        task="classification",
        label="TX_FRAUD",
        source="transactions",
        features=FEATURE_COLUMNS,
        views=(CUSTOMER_SPENDING.name, TERMINAL_RISK.name),
        request=TRANSACTION,
        request_frame=request_features,
        request_row=request_row,
        flavor="lightning_mlp",
        metric="average_precision",
        carry=("TX_TIME_DAYS",),
        split=_split,
        metrics=_metrics,
        description="Card-fraud scoring on the handbook's simulated transactions.",
    )
