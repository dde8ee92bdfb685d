"""The fraud plugin's views under the point-in-time checks the platform's suites make:
online values equal the offline retrieval at the materialization time, and past the ttl
both give the views' defaults."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from lab.testing.events import random_events
from plugins.duckdb_offline import DuckDBOfflineStore
from plugins.fraud.features import VIEWS
from tests.test_point_in_time import assert_online_equals_offline

AS_TRANSACTIONS = {"EVENT_ID": "TRANSACTION_ID", "EVENT_TIME": "TX_DATETIME", "USER_ID": "CUSTOMER_ID",
                   "ITEM_ID": "TERMINAL_ID", "AMOUNT": "TX_AMOUNT", "LABEL": "TX_FRAUD"}


def random_transactions(**kwargs) -> pl.DataFrame:
    """``lab.testing.events.random_events`` under the fraud source's column names."""
    return random_events(**kwargs).rename(AS_TRANSACTIONS)


@pytest.fixture
def offline(tmp_path):
    return DuckDBOfflineStore(tmp_path / "offline.duckdb")


def test_the_views_read_the_transactions_source_columns():
    tx = random_transactions(n_users=3, n_items=2, nb_days=2)
    for view in VIEWS:
        assert view.source == "transactions"
        assert {view.entity, view.timestamp, *(a.column for a in view.aggregations)} <= set(tx.columns)


def test_online_values_of_the_fraud_views_equal_offline_point_in_time_values(tmp_path, offline):
    tx = random_transactions(n_users=60, n_items=30, nb_days=50, seed=11)
    as_of = dt.datetime(2018, 5, 9, 13, 20, 0)  # on the 10-minute grid: rows sit on bounds
    assert_online_equals_offline(tmp_path, offline, tx, "transactions", "TX_DATETIME", VIEWS, as_of)
