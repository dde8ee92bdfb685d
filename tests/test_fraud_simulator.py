"""The fraud plugin's card-transaction simulator: published figures, both modes, Parquet output."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pandas as pd
import polars as pl
import pytest

from plugins.fraud import simulator as fraud
from lab.errors import ConfigError, LabError

SMALL = dict(n_customers=60, n_terminals=150, nb_days=45, radius=15.0)
PUBLISHED_ROWS = 1_754_155


def assert_well_formed(df: pl.DataFrame, start: dt.datetime = dt.datetime(2018, 4, 1)) -> None:
    """Invariants every simulated frame keeps, whatever the mode."""
    assert df.columns == fraud.COLUMNS
    assert dict(df.schema) == fraud.SCHEMA
    assert df["TRANSACTION_ID"].to_list() == list(range(df.height))
    assert df["TX_DATETIME"].is_sorted()
    seconds = df["TX_TIME_SECONDS"].to_numpy()
    assert (seconds % 86_400 > 0).all()  # kept times are strictly inside (0, 86400)
    assert (df["TX_TIME_DAYS"].to_numpy() == seconds // 86_400).all()
    stamps = [start + dt.timedelta(seconds=int(s)) for s in seconds[:1000]]
    expected = pl.Series(stamps).cast(pl.Datetime("us"))
    assert df["TX_DATETIME"].head(1000).equals(expected, check_names=False)
    assert df["TX_AMOUNT"].min() >= 0
    scenario = df["TX_FRAUD_SCENARIO"].to_numpy()
    assert set(np.unique(scenario)) <= {0, 1, 2, 3}
    assert (df["TX_FRAUD"].to_numpy() == (scenario > 0)).all()
    assert (df.filter(pl.col("TX_FRAUD_SCENARIO") == 1)["TX_AMOUNT"] > 220).all()
    assert (df.filter(pl.col("TX_FRAUD") == 0)["TX_AMOUNT"] <= 220).all()


# -- exact mode ---------------------------------------------------------------------------

@pytest.mark.slow
def test_exact_mode_reproduces_the_published_dataset():
    df = fraud.simulate(exact=True)
    s = fraud.summary(df)
    assert s["n_transactions"] == PUBLISHED_ROWS
    assert s["n_fraud"] == 14_681
    assert round(100 * s["fraud_rate"], 4) == 0.8369
    assert s["scenario_counts"] == {1: 973, 2: 9_077, 3: 4_631}
    first = s["first_row"]
    assert (first["TRANSACTION_ID"], first["TX_DATETIME"], first["CUSTOMER_ID"], first["TERMINAL_ID"],
            first["TX_AMOUNT"]) == (0, dt.datetime(2018, 4, 1, 0, 0, 31), 596, 3156, 57.16)
    # The next rows as the handbook prints them (chapter 3.2).
    head = df.select("TX_TIME_SECONDS", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT").head(5).rows()
    assert head == [(31, 596, 3156, 57.16), (130, 4961, 3412, 81.51), (476, 2, 1365, 146.0),
                    (569, 4128, 8737, 64.49), (634, 927, 9906, 50.99)]
    assert_well_formed(df)


def legacy_replay(n_customers, n_terminals, nb_days, radius, start="2018-04-01") -> pd.DataFrame:
    """The spec's exact procedure, step by step on the global legacy streams and pandas."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        np.random.seed(0)
        customers = []
        for _ in range(n_customers):
            x, y = np.random.uniform(0, 100), np.random.uniform(0, 100)
            mean = np.random.uniform(5, 100)
            customers.append((x, y, mean, np.random.uniform(0, 4)))
        np.random.seed(1)
        terminals = np.array([(np.random.uniform(0, 100), np.random.uniform(0, 100))
                              for _ in range(n_terminals)])
        records = []
        for cid, (x, y, mean, per_day) in enumerate(customers):
            distance = np.sqrt(np.sum(np.square(np.array([x, y]) - terminals), axis=1))
            usable = list(np.flatnonzero(distance < radius))
            random.seed(cid)
            np.random.seed(cid)
            for day in range(nb_days):
                for _ in range(np.random.poisson(per_day)):
                    t = int(np.random.normal(43200, 20000))
                    if not 0 < t < 86400:
                        continue
                    amount = np.random.normal(mean, mean / 2)
                    if amount < 0:
                        amount = np.random.uniform(0, 2 * mean)
                    if usable:
                        terminal = random.choice(usable)
                        records.append((day * 86400 + t, day, cid, terminal, np.round(amount, 2)))
        df = pd.DataFrame(records, columns=["TX_TIME_SECONDS", "TX_TIME_DAYS", "CUSTOMER_ID",
                                            "TERMINAL_ID", "TX_AMOUNT"])
        df["TX_DATETIME"] = pd.to_datetime(df["TX_TIME_SECONDS"], unit="s", origin=start)
        df = df.sort_values("TX_DATETIME").reset_index(drop=True)
        df["TX_FRAUD"] = (df["TX_AMOUNT"] > 220).astype(int)
        df["TX_FRAUD_SCENARIO"] = df["TX_FRAUD"].copy()
        terminal_ids, customer_ids = pd.Series(range(n_terminals)), pd.Series(range(n_customers))
        days = df["TX_TIME_DAYS"]
        for d in range(days.max()):
            hit = terminal_ids.sample(n=2, random_state=d)
            rows = df.index[(days >= d) & (days < d + 28) & df["TERMINAL_ID"].isin(hit)]
            df.loc[rows, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 2]
        for d in range(days.max()):
            hit = customer_ids.sample(n=3, random_state=d)
            rows = df.index[(days >= d) & (days < d + 14) & df["CUSTOMER_ID"].isin(hit)]
            random.seed(d)
            chosen = random.sample(list(rows), k=len(rows) // 3)
            df.loc[chosen, "TX_AMOUNT"] = df.loc[chosen, "TX_AMOUNT"] * 5
            df.loc[chosen, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 3]
        return df
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def test_exact_mode_matches_a_step_by_step_legacy_replay_row_for_row():
    # Enough customers that several transactions share a second, so the tie order counts.
    params = dict(n_customers=300, n_terminals=400, nb_days=20, radius=12.0)
    ours = fraud.simulate(exact=True, **params)
    theirs = legacy_replay(**params)
    assert ours["TX_DATETIME"].is_duplicated().sum() > 20
    stable = theirs.sort_values(["TX_DATETIME", "CUSTOMER_ID"], kind="stable")
    assert not (stable["CUSTOMER_ID"].to_numpy() == theirs["CUSTOMER_ID"].to_numpy()).all()
    assert ours.height == len(theirs)
    for column in ("TX_TIME_SECONDS", "TX_TIME_DAYS", "CUSTOMER_ID", "TERMINAL_ID",
                   "TX_AMOUNT", "TX_FRAUD", "TX_FRAUD_SCENARIO"):
        assert (ours[column].to_numpy() == theirs[column].to_numpy()).all(), column
    assert (ours["TX_DATETIME"].to_numpy() == theirs["TX_DATETIME"].to_numpy()).all()
    assert set(ours["TX_FRAUD_SCENARIO"].unique().to_list()) == {0, 1, 2, 3}


def test_exact_mode_is_deterministic_and_ignores_the_seed():
    a = fraud.simulate(exact=True, **SMALL)
    b = fraud.simulate(exact=True, seed=99, **SMALL)
    assert a.height > 1000
    assert a.equals(b)
    assert_well_formed(a)


def test_legacy_picks_draw_what_pandas_sample_draws():
    picks = fraud._LegacyPicks()
    for d in (0, 1, 57, 181):
        expected = pd.Series(range(10_000)).sample(n=2, random_state=d).to_numpy()
        assert picks.ids(d, 10_000, 2).tolist() == expected.tolist()


# -- fast mode ------------------------------------------------------------------------------

def test_fast_mode_is_deterministic_for_a_seed_and_differs_across_seeds():
    a, b = fraud.simulate(seed=7, **SMALL), fraud.simulate(seed=7, **SMALL)
    c = fraud.simulate(seed=8, **SMALL)
    assert a.equals(b)
    assert not a.equals(c)
    assert fraud.content_digest(a) == fraud.content_digest(b) != fraud.content_digest(c)


def test_fast_mode_full_size_resembles_the_published_dataset():
    df = fraud.simulate(seed=0)
    s = fraud.summary(df)
    assert abs(s["n_transactions"] - PUBLISHED_ROWS) / PUBLISHED_ROWS < 0.02
    assert 0.006 < s["fraud_rate"] < 0.011
    for label, published in {1: 973, 2: 9_077, 3: 4_631}.items():
        assert 0.75 * published < s["scenario_counts"][label] < 1.25 * published
    assert_well_formed(df)


def test_every_transaction_uses_a_terminal_within_reach_of_its_customer():
    df = fraud.simulate(seed=3, **SMALL)
    customers, terminals = fraud.profiles(seed=3, n_customers=SMALL["n_customers"],
                                          n_terminals=SMALL["n_terminals"], radius=SMALL["radius"])
    joined = (df.join(customers, on="CUSTOMER_ID").join(terminals, on="TERMINAL_ID", suffix="_T")
              .with_columns(d=((pl.col("X") - pl.col("X_T")) ** 2
                               + (pl.col("Y") - pl.col("Y_T")) ** 2).sqrt()))
    assert joined.height == df.height
    assert joined["d"].max() < SMALL["radius"]
    assert_well_formed(df)
    # Each customer's daily count averages its drawn rate (minus the ~3 % dropped times).
    active = customers.filter(pl.col("NB_TERMINALS") > 0)
    ratio = df.height / (active["MEAN_NB_TX_PER_DAY"].sum() * SMALL["nb_days"])
    assert 0.9 < ratio < 1.02


def test_terminals_within_agrees_with_brute_force_and_excludes_the_boundary():
    rng = np.random.default_rng(11)
    cxy, txy = rng.uniform(0, 100, (300, 2)), rng.uniform(0, 100, (700, 2))
    for radius in (0.7, 5.0, 33.0, 500.0):
        indptr, indices = fraud.terminals_within(cxy, txy, radius)
        dist = np.sqrt(((cxy[:, None, :] - txy[None, :, :]) ** 2).sum(axis=2))
        for c in range(len(cxy)):
            assert indices[indptr[c]:indptr[c + 1]].tolist() == np.flatnonzero(dist[c] < radius).tolist()
    indptr, indices = fraud.terminals_within(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [2.9, 4.0]]), 5.0)
    assert indices.tolist() == [1]  # distance exactly 5 is out of reach


class ScriptedPicks:
    """Compromises the terminals and customers a test names; samples the first rows."""

    def __init__(self, terminals: dict[int, list[int]], customers: dict[int, list[int]]):
        self.terminals, self.customers = terminals, customers

    def ids(self, day, population, k):
        table = self.terminals if k == fraud.TERMINALS_PER_DAY else self.customers
        return np.array(table.get(day, []), dtype=np.int64)

    def rows(self, day, rows, k):
        return rows[:k]


def test_fraud_scenarios_cover_their_windows_and_overwrite_in_order():
    # One transaction per day for 40 days: customer 0 at terminal 0, customer 1 at terminal 1.
    days = np.repeat(np.arange(40), 2)
    tx = {"seconds": days * 86_400 + 3600, "customer": np.tile([0, 1], 40),
          "terminal": np.tile([0, 1], 40), "amount": np.full(80, 10.0)}
    tx["amount"][0] = 500.0  # day 0, customer 0: scenario 1
    fraud._label_fraud(tx, 2, 2, ScriptedPicks(terminals={5: [0]}, customers={2: [1], 30: [0]}))
    scenario = tx["scenario"]
    t0, c1 = scenario[0::2], scenario[1::2]
    assert t0[0] == 1
    assert (t0[5:30] == 2).all() and (t0[1:5] == 0).all() and (t0[33:] == 0).all()  # days 5..32
    # Customer 1, days 2..15: 14 rows, a third (4) are fraud with 5x the amount.
    assert (np.flatnonzero(c1 == 3) == [2, 3, 4, 5]).all() and (c1[6:] == 0).all()
    assert (tx["amount"][1::2][2:6] == 50.0).all()
    # Customer 0 from day 30: days 30..39 is 10 rows, 3 drawn, overwriting scenario 2.
    assert t0[30:33].tolist() == [3, 3, 3] and t0[33:].tolist() == [0] * 7
    assert (tx["fraud"] == (scenario > 0)).all()


# -- output ------------------------------------------------------------------------------------

def test_write_parquet_is_atomic_round_trips_and_digests_the_data(tmp_path):
    df = fraud.simulate(seed=1, **SMALL)
    target = tmp_path / "raw" / "transactions.parquet"
    digest = fraud.write_parquet(df, target)
    assert [p.name for p in target.parent.iterdir()] == ["transactions.parquet"]
    back = pl.read_parquet(target)
    assert back.equals(df) and dict(back.schema) == fraud.SCHEMA
    assert fraud.write_parquet(back, tmp_path / "again.parquet") == digest == fraud.content_digest(df)
    changed = df.with_columns(pl.when(pl.col("TRANSACTION_ID") == 5).then(pl.col("TX_AMOUNT") + 0.01)
                              .otherwise(pl.col("TX_AMOUNT")).alias("TX_AMOUNT"))
    assert fraud.content_digest(changed) != digest
    assert fraud.content_digest(df.reverse()) != digest


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "transactions.parquet"
    df = fraud.simulate(seed=1, **SMALL)
    fraud.write_parquet(df, target)
    before = target.read_bytes()
    unwritable = pl.DataFrame({"a": [1, 2]}).with_columns(b=pl.Series([object(), object()], dtype=pl.Object))
    with pytest.raises(LabError, match="could not write Parquet"):
        fraud.write_parquet(unwritable, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["transactions.parquet"]
    with pytest.raises(ConfigError, match="polars DataFrame"):
        fraud.write_parquet(df.to_pandas(), target)


def test_summary_counts_what_is_in_the_frame():
    df = fraud.simulate(seed=2, **SMALL)
    s = fraud.summary(df)
    assert s["n_transactions"] == df.height
    assert s["n_fraud"] == df["TX_FRAUD"].sum() == sum(s["scenario_counts"].values())
    assert s["fraud_rate"] == pytest.approx(df["TX_FRAUD"].mean())
    assert s["first_row"] == df.row(0, named=True)


# -- bad arguments ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(n_customers=0), "n_customers"), (dict(n_customers=2.5), "n_customers"),
    (dict(n_terminals=-3), "n_terminals"), (dict(n_terminals=True), "n_terminals"),
    (dict(nb_days=0), "nb_days"), (dict(start_date="2018-13-01"), "start_date"),
    (dict(start_date="yesterday"), "start_date"), (dict(start_date=20180401), "start_date"),
    (dict(radius=0), "radius"), (dict(radius=float("nan")), "radius"),
    (dict(seed=-1), "seed"), (dict(exact="yes"), "exact"),
])
def test_bad_arguments_raise_a_config_error_naming_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        fraud.simulate(**kwargs)


def test_start_date_moves_the_timeline():
    df = fraud.simulate(start_date=dt.date(2020, 2, 28), seed=4, **SMALL)
    assert_well_formed(df, start=dt.datetime(2020, 2, 28))
    assert df["TX_DATETIME"].min().date() == dt.date(2020, 2, 28)
