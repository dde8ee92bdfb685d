"""What the fraud lab expects of its data, checked before every training (``lab_expectations``).

Each bound comes from the simulator's specification (specs/fraud-simulator.md) and the
lab's ``[tool.lab.fraud]`` world, so a batch the simulator could not have made fails:

- **transactions**: the nine columns and their types, none missing; ids unique; customer
  and terminal ids inside the world; times of day inside the day.
- **amounts** in euros: a customer's mean amount is at most 100 with a standard deviation
  of half the mean, so an amount above 400 is a 6-sigma draw; scenario 3 multiplies a
  compromised customer's amounts by 5, again when the customer is compromised again
  within 14 days (small worlds), so ``MAX_AMOUNT`` = 400 x 5 x 5. The median amount lies
  near the median customer mean (about 50). Amounts in cents (x 100) fail both.
- **rows per day** near the median day: a customer makes Poisson(mean) transactions a
  day, so a day's count is Poisson around about 1.93 per customer; the band is 5 of its
  standard deviations wide, at least +-30 % (a day loaded twice, at 2x, fails it).
- **fraud rate** within a band around the simulated rate on the training window's days
  (``expected_fraud_rate``): scenario 1 (amounts over 220), 2 compromised terminals a day
  each fraudulent for 28 days, 3 compromised customers a day for 14 days with a third of
  their transactions fraudulent.
- **the views**: counts whole and not negative (a customer's windows hold the
  transaction itself: at least 1), mean amounts within the amount range, terminal risk a
  share in [0, 1], nothing missing; drift against the last training set.
"""

from __future__ import annotations

import datetime as dt
import math

from lab.monitoring.validation import Expectations
from plugins.fraud.features import CUSTOMER_SPENDING, TERMINAL_RISK
from plugins.fraud.settings import FraudSettings, fraud_settings

SOURCE = "transactions"
MAX_AMOUNT = 10_000.0  # euros: 400 (6 sigma of the largest customer mean) x 5 x 5 (scenario 3, twice)
MEDIAN_AMOUNT = (10.0, 150.0)  # euros: the median customer mean is about 50 (U(5, 100))
TX_PER_CUSTOMER_DAY = 1.93  # E[U(0, 4)] = 2 transactions, of which about 97 % fall inside their day
TERMINAL_DAYS, CUSTOMER_DAYS = 28, 14  # how long scenarios 2 and 3 keep a terminal or customer compromised
TERMINALS_A_DAY, CUSTOMERS_A_DAY = 2, 3
SCENARIO_1_RATE = 0.00055  # share of amounts over 220 (973 of 1,754,155 in the published set)
RATE_BAND = (0.5, 1.5)  # the fraud rate may lie between these multiples of the expected one
MAX_DRIFT = 0.3  # a column's drift score against the last training set (lab.monitoring.drift)


def expected_fraud_rate(settings: FraudSettings, day: int) -> float:
    """The simulator's expected share of fraudulent transactions on day ``day`` (0 is the
    first) of a world of ``settings``: 1 - (1 - p1)(1 - terminals compromised)(1 - a third
    of the customers compromised), each the share drawn at least once in its window
    (fewer draws in the first days: the rate ramps up)."""
    terminals = 1 - (1 - TERMINALS_A_DAY / settings.n_terminals) ** min(day + 1, TERMINAL_DAYS)
    customers = 1 - (1 - CUSTOMERS_A_DAY / settings.n_customers) ** min(day + 1, CUSTOMER_DAYS)
    return 1 - (1 - SCENARIO_1_RATE) * (1 - min(terminals, 1.0)) * (1 - min(customers, 1.0) / 3)


def fraud_rate_band(settings: FraudSettings, train) -> tuple[float, float]:
    """``RATE_BAND`` around the expected rate over the training window's days (the
    steady-state rate when no window is set)."""
    first = dt.date.fromisoformat(settings.start_date)
    if train.train_start is None:
        days = [TERMINAL_DAYS]
    else:
        start = (train.train_start_date - first).days
        length = train.delta_train + train.delta_delay + train.delta_test
        days = [max(0, d) for d in range(start, start + length)]
    rates = [expected_fraud_rate(settings, d) for d in days]
    return (round(RATE_BAND[0] * min(rates), 6), round(min(1.0, RATE_BAND[1] * max(rates)), 6))


def per_day_band(settings: FraudSettings) -> tuple[float, float]:
    """Each day's rows as a multiple of the median day: 5 Poisson standard deviations,
    at least 30 % either side, never admitting a doubled day in a world big enough."""
    expected = TX_PER_CUSTOMER_DAY * settings.n_customers
    half = max(0.3, 5 / math.sqrt(expected))
    return (round(max(0.2, 1 - half), 3), round(min(1.8, 1 + half), 3))


def expectations(config) -> list[Expectations]:
    """The fraud lab's declarations for its ``transactions`` source and both views."""
    settings = fraud_settings(config)
    columns = {"TRANSACTION_ID": "int", "TX_DATETIME": "datetime", "CUSTOMER_ID": "int", "TERMINAL_ID": "int",
               "TX_AMOUNT": "float", "TX_TIME_SECONDS": "int", "TX_TIME_DAYS": "int", "TX_FRAUD": "int",
               "TX_FRAUD_SCENARIO": "int"}
    transactions = Expectations(
        target=SOURCE,
        schema=columns,
        max_null_share={c: 0.0 for c in columns},
        ranges={"TX_AMOUNT": (0.0, MAX_AMOUNT), "CUSTOMER_ID": (0, settings.n_customers - 1),
                "TERMINAL_ID": (0, settings.n_terminals - 1), "TX_TIME_SECONDS": (0, None),
                "TX_TIME_DAYS": (0, settings.nb_days - 1), "TX_FRAUD": (0, 1), "TX_FRAUD_SCENARIO": (0, 3)},
        medians={"TX_AMOUNT": MEDIAN_AMOUNT},
        rows=(1, None),
        per_day_vs_median=per_day_band(settings),
        label_rate=fraud_rate_band(settings, config.train),
        unique=["TRANSACTION_ID"],
        max_drift={"TX_AMOUNT": MAX_DRIFT},
        description="the simulator's transactions (specs/fraud-simulator.md)",
    )
    spending = Expectations(
        target=CUSTOMER_SPENDING.name,
        schema={a.name: ("int" if a.function == "count" else "float") for a in CUSTOMER_SPENDING.aggregations},
        max_null_share={a.name: 0.0 for a in CUSTOMER_SPENDING.aggregations},
        ranges={a.name: ((1, None) if a.function == "count" else (0.0, MAX_AMOUNT))
                for a in CUSTOMER_SPENDING.aggregations},
        max_drift=MAX_DRIFT,
        description="a customer's windows include the transaction itself",
    )
    risk = Expectations(
        target=TERMINAL_RISK.name,
        schema={a.name: ("int" if a.function == "count" else "float") for a in TERMINAL_RISK.aggregations},
        max_null_share={a.name: 0.0 for a in TERMINAL_RISK.aggregations},
        ranges={a.name: ((0, None) if a.function == "count" else (0.0, 1.0)) for a in TERMINAL_RISK.aggregations},
        max_drift=MAX_DRIFT,
        description="a terminal's traffic and fraud share a week later",
    )
    return [transactions, spending, risk]
