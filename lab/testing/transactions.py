"""Small random card transactions for tests: the simulator's columns, none of its cost.

``random_transactions`` is not the spec's simulator (``lab.datasets``); it is built to
stress point-in-time logic. Times fall on a coarse grid (every 10 minutes), so many
transactions sit exactly 1, 7 or 30 days apart or share a second with another one of
the same customer or terminal: the window bounds and ties are exercised, not avoided.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

TRANSACTION_COLUMNS = (
    "TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
    "TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO",
)


def random_transactions(
    n_customers: int = 40,
    n_terminals: int = 25,
    nb_days: int = 45,
    tx_per_day: float = 1.5,
    fraud_rate: float = 0.1,
    seed: int = 0,
    start_date: str = "2018-04-01",
    grid_s: int = 600,
) -> pl.DataFrame:
    """Transactions sorted by time, ``TRANSACTION_ID`` the row number after sorting.

    Each customer makes Poisson(``tx_per_day``) transactions a day at times on a
    ``grid_s`` grid; amounts are in cents-rounded dollars; ``TX_FRAUD`` is Bernoulli.
    """
    rng = np.random.default_rng(seed)
    n = rng.poisson(tx_per_day, size=(n_customers, nb_days))
    customer = np.repeat(np.repeat(np.arange(n_customers), nb_days), n.ravel())
    day = np.repeat(np.tile(np.arange(nb_days), n_customers), n.ravel())
    seconds_in_day = rng.integers(0, 86400 // grid_s, size=len(day)) * grid_s
    time_s = day * 86400 + seconds_in_day
    order = np.lexsort((customer, time_s))
    customer, day, time_s = customer[order], day[order], time_s[order]
    size = len(customer)
    start = dt.datetime.fromisoformat(start_date)
    return pl.DataFrame(
        {
            "TRANSACTION_ID": np.arange(size, dtype=np.int64),
            "TX_DATETIME": pl.Series([start], dtype=pl.Datetime("us")).first()
            + pl.Series(time_s * 1_000_000, dtype=pl.Int64).cast(pl.Duration("us")),
            "CUSTOMER_ID": customer.astype(np.int64),
            "TERMINAL_ID": rng.integers(0, n_terminals, size=size).astype(np.int64),
            "TX_AMOUNT": np.round(rng.gamma(2.0, 30.0, size=size), 2),
            "TX_TIME_SECONDS": time_s.astype(np.int64),
            "TX_TIME_DAYS": day.astype(np.int64),
            "TX_FRAUD": (rng.random(size) < fraud_rate).astype(np.int64),
        }
    ).with_columns(
        pl.when(pl.col("TX_FRAUD") == 1).then(1).otherwise(0).cast(pl.Int64).alias("TX_FRAUD_SCENARIO")
    ).select(TRANSACTION_COLUMNS)
