"""The fraud demo's features (spec: Le Borgne et al., ch. 3.3), defined once for both paths.

Fifteen model inputs, in ``FEATURE_COLUMNS`` order:

- ``TX_AMOUNT``, the transaction's own amount;
- ``TX_DURING_WEEKEND`` and ``TX_DURING_NIGHT``, computed from ``TX_DATETIME`` by the
  rules in ``REQUEST_RULES`` (one definition; ``request_features`` applies them to a
  frame for training, ``request_row`` to one request for serving);
- six customer-spending features (view ``customer_spending``): count and mean amount of
  the customer's transactions over ``(t - n days, t]`` for n in 1, 7, 30;
- six terminal-risk features (view ``terminal_risk``): count and fraud rate of the
  terminal's transactions over ``(t - 7 - w days, t - 7 days]`` for w in 1, 7, 30; the
  7-day label delay is the view's ``label_delay``, so labels not yet known are not used.

Training computes the view features point-in-time at each transaction's own time, so the
customer windows include the transaction itself (it is visible at ``e == t``). Serving
reads the values materialized as of an earlier watermark, which cannot include the
request, and ``online_row_for_request`` adds it: count + 1 and the mean updated with the
amount. Transactions between the watermark and the request are not in the online values:
refresh by materializing again.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from lab.errors import LabError
from lab.features.views import Aggregation, FeatureView

DAY = dt.timedelta(days=1)
CUSTOMER_WINDOWS = (1, 7, 30)
TERMINAL_WINDOWS = (1, 7, 30)
TERMINAL_DELAY_DAYS = 7

CUSTOMER_SPENDING = FeatureView(
    name="customer_spending",
    entity="CUSTOMER_ID",
    source="transactions",
    timestamp="TX_DATETIME",
    aggregations=tuple(
        agg
        for n in CUSTOMER_WINDOWS
        for agg in (
            Aggregation(f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW", "TX_AMOUNT", "count", n * DAY),
            Aggregation(f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW", "TX_AMOUNT", "mean", n * DAY),
        )
    ),
    ttl=30 * DAY,
    description="How much and how often the customer spent over the last 1, 7 and 30 days.",
    tags={"spec": "fraud-simulator.md#features"},
)

TERMINAL_RISK = FeatureView(
    name="terminal_risk",
    entity="TERMINAL_ID",
    source="transactions",
    timestamp="TX_DATETIME",
    aggregations=tuple(
        agg
        for w in TERMINAL_WINDOWS
        for agg in (
            Aggregation(f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", "TX_FRAUD", "count", w * DAY),
            Aggregation(f"TERMINAL_ID_RISK_{w}DAY_WINDOW", "TX_FRAUD", "mean", w * DAY, fill=0.0),
        )
    ),
    ttl=(TERMINAL_DELAY_DAYS + 30) * DAY,
    label_delay=TERMINAL_DELAY_DAYS * DAY,
    description="The terminal's traffic and fraud rate, as known a week later (label delay).",
    tags={"spec": "fraud-simulator.md#features"},
)

VIEWS = (CUSTOMER_SPENDING, TERMINAL_RISK)

REQUEST_FEATURES = ("TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT")
FEATURE_COLUMNS: tuple[str, ...] = (
    *REQUEST_FEATURES,
    *CUSTOMER_SPENDING.feature_names,
    *TERMINAL_RISK.feature_names,
)
"""The 15 model inputs, in the spec's order."""


REQUEST_RULES: dict[str, tuple[str, int, int]] = {
    "TX_DURING_WEEKEND": ("weekday", 6, 7),  # ISO weekday: Saturday 6, Sunday 7
    "TX_DURING_NIGHT": ("hour", 0, 6),       # hours 0..6 inclusive
}
"""The request-time features, defined once: 1 when a calendar field of TX_DATETIME lies
in an inclusive range. ``request_features`` (batches) and ``request_row`` (one request)
both read these rules; a test checks the two agree at every boundary."""


def request_features(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` plus the ``REQUEST_RULES`` columns (0/1 Int64) computed from TX_DATETIME.

    Wall-clock time in whatever zone the column carries. Training and batch scoring call
    this; serving calls ``request_row``, which applies the same rules to one datetime.
    """
    if "TX_DATETIME" not in df.columns:
        raise LabError(f"request features need a TX_DATETIME column; got {', '.join(df.columns)}")
    ts = pl.col("TX_DATETIME").dt
    fields = {"weekday": ts.weekday(), "hour": ts.hour()}  # polars weekday is ISO (Mon=1)
    return df.with_columns(
        fields[field].is_between(lo, hi).cast(pl.Int64).alias(name)
        for name, (field, lo, hi) in REQUEST_RULES.items()
    )


def request_row(when: dt.datetime) -> dict[str, int]:
    """The ``REQUEST_RULES`` columns for one transaction time (no DataFrame: microseconds)."""
    fields = {"weekday": when.isoweekday(), "hour": when.hour}
    return {name: int(lo <= fields[field] <= hi) for name, (field, lo, hi) in REQUEST_RULES.items()}


_CUSTOMER_NAMES = tuple((f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW")
                        for n in CUSTOMER_WINDOWS)
_TERMINAL_NAMES = tuple((f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", f"TERMINAL_ID_RISK_{w}DAY_WINDOW")
                        for w in TERMINAL_WINDOWS)
_EMPTY: dict = {}


def _customer_with_request(customer: dict | None, amount: float) -> tuple[dict, bool]:
    """The customer features with the current transaction added to every window."""
    out = {}
    row = customer or _EMPTY
    for count_name, mean_name in _CUSTOMER_NAMES:  # names made once: this runs per request
        count = int(row.get(count_name) or 0)
        mean = row.get(mean_name)
        total = (mean * count) if (count and mean is not None) else 0.0
        out[count_name] = count + 1
        out[mean_name] = (total + amount) / (count + 1)
    return out, customer is None


def _terminal_or_default(terminal: dict | None) -> tuple[dict, bool]:
    out = {}
    row = terminal or _EMPTY
    for count_name, risk_name in _TERMINAL_NAMES:
        out[count_name] = int(row.get(count_name) or 0)
        risk = row.get(risk_name)
        out[risk_name] = 0.0 if risk is None else float(risk)
    return out, terminal is None


def online_row_for_request(
    transaction: dict, customer: dict | None, terminal: dict | None
) -> tuple[dict, dict]:
    """The 15 model inputs for one incoming transaction, from the online store's rows.

    ``transaction`` holds ``TX_AMOUNT`` and ``TX_DATETIME`` (a datetime or ISO string);
    ``customer`` and ``terminal`` are the online rows of the two views, or None for an
    entity the store does not know. The customer windows gain the transaction itself
    (count + 1, mean updated), matching the offline definition ``(t - n days, t]``. An
    unknown customer gets count 1 and mean = the amount; an unknown terminal gets
    counts 0 and risk 0. Returns ``(features, flags)``: ``features`` in
    ``FEATURE_COLUMNS`` order; ``flags`` says which groups were defaulted:
    ``{"customer_defaulted": bool, "terminal_defaulted": bool}``.
    """
    missing = [c for c in ("TX_AMOUNT", "TX_DATETIME") if transaction.get(c) is None]
    if missing:
        raise LabError(f"the transaction lacks {', '.join(missing)}")
    when = transaction["TX_DATETIME"]
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when)
        except ValueError:
            raise LabError(f"TX_DATETIME {when!r} is not an ISO date-time (2018-08-01T12:30:00)") from None
    amount = float(transaction["TX_AMOUNT"])
    request = {"TX_AMOUNT": amount, **request_row(when)}
    customer_part, customer_defaulted = _customer_with_request(customer, amount)
    terminal_part, terminal_defaulted = _terminal_or_default(terminal)
    merged = {**request, **customer_part, **terminal_part}
    features = {name: merged[name] for name in FEATURE_COLUMNS}
    return features, {"customer_defaulted": customer_defaulted, "terminal_defaulted": terminal_defaulted}
