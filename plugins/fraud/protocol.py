"""The fraud evaluation protocol's train/test split (specs/fraud-simulator.md).

``reference_split`` trains on ``delta_train`` days, skips ``delta_delay`` days (labels
arrive a week late) and tests on the next ``delta_test`` days, dropping cards already
known to be compromised. ``protocol_split`` adapts it to ``ModelSpec.split``.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from lab.errors import LabError
from lab.modelspec import SplitWindow

REQUIRED_COLUMNS = ("TX_DATETIME", "TX_TIME_DAYS", "CUSTOMER_ID", "TX_FRAUD")


def reference_split(
    df: pl.DataFrame,
    *,
    train_start: dt.date,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_test: int = 7,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split transactions into the protocol's training and test sets.

    Training: ``TX_DATETIME`` in ``[train_start, train_start + delta_train days)``.
    Test: the ``delta_test`` days (by ``TX_TIME_DAYS``) that follow the delay. On test
    day T a card is dropped when it is already known to be compromised: it had a fraud
    in the training period, or on any day from the end of training up to
    ``T - delta_delay - 1`` (T − 8 with the default delay: a label is known a week
    later). Frauds before ``train_start`` are not counted, as in the handbook.

    Returns ``(train_df, test_df)``, each in the input's row order with all its columns.
    Raises ``LabError`` when a column is missing or a window holds no transactions.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise LabError(
            f"the transactions frame lacks column(s) {', '.join(missing)}; "
            "reference_split needs TX_DATETIME, TX_TIME_DAYS, CUSTOMER_ID and TX_FRAUD"
        )
    for name, value in (("delta_train", delta_train), ("delta_test", delta_test)):
        if value < 1:
            raise LabError(f"{name} must be at least 1 day, got {value}")
    if delta_delay < 0:
        raise LabError(f"delta_delay must be 0 or more days, got {delta_delay}")
    if isinstance(train_start, dt.datetime) or not isinstance(train_start, dt.date):
        raise LabError(f"train_start must be a datetime.date (e.g. date(2018, 7, 25)), got {train_start!r}")

    start = dt.datetime.combine(train_start, dt.time())
    end = start + dt.timedelta(days=delta_train)
    tx_time = pl.col("TX_DATETIME")
    train_df = df.filter((tx_time >= start) & (tx_time < end))
    if train_df.height == 0:
        raise LabError(
            f"no transactions between {train_start} and {end.date()} (exclusive); "
            "choose a train_start inside the data's date range"
        )
    first_day = int(train_df["TX_TIME_DAYS"].min())
    first_test_day = first_day + delta_train + delta_delay

    frauds = df.filter(pl.col("TX_FRAUD") == 1).select("TX_TIME_DAYS", "CUSTOMER_ID")
    known = set(train_df.filter(pl.col("TX_FRAUD") == 1)["CUSTOMER_ID"].to_list())
    known_up_to = first_day + delta_train - 1  # the last day whose frauds are in `known`
    indexed = df.with_row_index("_row")
    test_parts = []
    for offset in range(delta_test):
        test_day = first_test_day + offset
        # Labels of day d are known on day d + delta_delay + 1.
        newly_known_until = test_day - delta_delay - 1
        if newly_known_until > known_up_to:
            new = frauds.filter(pl.col("TX_TIME_DAYS").is_between(known_up_to + 1, newly_known_until))
            known.update(new["CUSTOMER_ID"].to_list())
            known_up_to = newly_known_until
        day_rows = indexed.filter(
            (pl.col("TX_TIME_DAYS") == test_day) & ~pl.col("CUSTOMER_ID").is_in(list(known))
        )
        test_parts.append(day_rows)
    test_df = pl.concat(test_parts).sort("_row").drop("_row")
    if test_df.height == 0:
        raise LabError(
            f"no test transactions on days {first_test_day}..{first_test_day + delta_test - 1} "
            "(TX_TIME_DAYS); the data ends too early for this train_start"
        )
    return train_df, test_df


def protocol_split(frame: pl.DataFrame, window: SplitWindow) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``reference_split`` over a ``[tool.lab.train]`` window: the fraud spec's ``split``."""
    return reference_split(frame, train_start=window.train_start, delta_train=window.delta_train,
                           delta_delay=window.delta_delay, delta_test=window.delta_test)
