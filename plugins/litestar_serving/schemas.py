"""Request and response bodies of the model server, as msgspec Structs.

The request is flat and every field is bounded, so no value a client can send reaches
the model as something it cannot score: ids fit SQLite's INTEGER, the amount is finite
and non-negative, the time is an ISO 8601 date-time.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

MAX_ID = 2**63 - 1  # SQLite INTEGER; a larger key could not be looked up, only overflow
MAX_AMOUNT = 1e9  # keeps every derived feature a finite float32

Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="a whole number, 0 or more")]
Amount = Annotated[float, msgspec.Meta(ge=0, le=MAX_AMOUNT, description="the amount, 0 to 1e9")]


class Transaction(msgspec.Struct, forbid_unknown_fields=True):
    """One card transaction to score. Unknown fields are refused (a typo is not ignored)."""

    TRANSACTION_ID: Id
    TX_DATETIME: Annotated[dt.datetime, msgspec.Meta(
        description="ISO 8601 date-time, e.g. 2018-08-01T12:30:00; an offset, if any, is "
                    "ignored: features read the wall-clock time")]
    CUSTOMER_ID: Id
    TERMINAL_ID: Id
    TX_AMOUNT: Amount

    def as_request(self) -> dict:
        return {
            "TRANSACTION_ID": self.TRANSACTION_ID,
            "TX_DATETIME": self.TX_DATETIME,
            "CUSTOMER_ID": self.CUSTOMER_ID,
            "TERMINAL_ID": self.TERMINAL_ID,
            "TX_AMOUNT": self.TX_AMOUNT,
        }


FIELD_HINTS = {
    "TRANSACTION_ID": "a whole number, 0 or more",
    "TX_DATETIME": "an ISO 8601 date-time string such as \"2018-08-01T12:30:00\"",
    "CUSTOMER_ID": "a whole number, 0 or more",
    "TERMINAL_ID": "a whole number, 0 or more",
    "TX_AMOUNT": "a number from 0 to 1e9",
}
"""What each request field must be: appended to a 400 so the message names the fix."""


class Prediction(msgspec.Struct):
    """The score for one transaction and everything needed to trust or audit it."""

    request_id: str
    transaction_id: int
    score: float
    model: str
    model_version: int
    features: dict[str, float]
    defaults: dict[str, bool]
    feature_age_seconds: dict[str, float | None]
    stale: dict[str, bool]
    latency_ms: float
    flag: str | None = None
    variant: str | None = None


class ErrorBody(msgspec.Struct):
    """Every 4xx and 503 body: what is wrong and, for a bad request field, which one."""

    detail: str
    field: str | None = None


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    """Whether the server can score now; ``reason`` says why not (or what is being loaded)."""

    ready: bool
    reason: str | None
    model: str
    alias: str
    model_version: int | None
    warnings: list[str]


class ServerStats(msgspec.Struct):
    """Counters since start: predictions served and the ledger's appended, written,
    dropped (queue full), failed, commits and queued right now."""

    predictions: int
    not_ready: int
    ledger: dict[str, int]
