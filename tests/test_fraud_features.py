"""The fraud plugin's 15 features: the spec's definitions computed by brute force, the
request-time half shared by training and serving, and serving's request row equal to
training's. Training sets are built from the fraud model's spec, as the platform does."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pytest

from lab.config import load_config
from lab.errors import LabError
from lab.features.materialize import materialize
from lab.features.training import training_set
from lab.plugins import feature_views, make_plugin_manager, model_spec
from lab.serving.scoring import FeatureAssembler
from plugins.duckdb_offline import DuckDBOfflineStore
from plugins.fraud.features import (
    FEATURE_COLUMNS, VIEWS, online_row_for_request, request_features, request_row,
)
from plugins.fraud.simulator import simulate
from plugins.fraud.spec import fraud_spec
from plugins.sqlite_online import SQLiteOnlineStore
from tests.conftest import write_pyproject

DAY = dt.timedelta(days=1)
START, END = dt.date(2018, 5, 10), dt.date(2018, 5, 24)


@pytest.fixture(scope="module")
def transactions() -> pl.DataFrame:
    return simulate(n_customers=80, n_terminals=150, nb_days=60, exact=False, seed=4)


@pytest.fixture(scope="module")
def offline(tmp_path_factory, transactions):
    store = DuckDBOfflineStore(tmp_path_factory.mktemp("fraud") / "offline.duckdb")
    store.write_source("transactions", transactions.to_arrow())
    return store


def fraud_training_set(offline, start, end):
    """``training_set`` with everything the fraud spec declares (what ``lab.steps`` passes)."""
    spec = fraud_spec()
    return training_set(offline, VIEWS, start, end, request_features=spec.request_frame,
                        feature_columns=spec.features, source=spec.source, id_column=spec.id_column,
                        time_column=spec.time_column, label=spec.label, carry=spec.carry)


@pytest.fixture(scope="module")
def train(offline):
    return fraud_training_set(offline, START, END)


def spec_features(tx: list[dict], row: dict) -> dict:
    """The spec's definitions, literally, over every transaction (no views, no SQL)."""
    t = row["TX_DATETIME"]
    out = {"TX_AMOUNT": row["TX_AMOUNT"], "TX_DURING_WEEKEND": int(t.weekday() >= 5),
           "TX_DURING_NIGHT": int(t.hour <= 6)}
    for n in (1, 7, 30):
        amounts = [x["TX_AMOUNT"] for x in tx
                   if x["CUSTOMER_ID"] == row["CUSTOMER_ID"] and t - n * DAY < x["TX_DATETIME"] <= t]
        out[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = len(amounts)
        out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = sum(amounts) / len(amounts)
    for w in (1, 7, 30):
        frauds = [x["TX_FRAUD"] for x in tx if x["TERMINAL_ID"] == row["TERMINAL_ID"]
                  and t - (7 + w) * DAY < x["TX_DATETIME"] <= t - 7 * DAY]
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = len(frauds)
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = sum(frauds) / len(frauds) if frauds else 0
    return out


def test_feature_columns_are_the_spec_15_in_order():
    assert len(FEATURE_COLUMNS) == 15 and len(set(FEATURE_COLUMNS)) == 15
    assert FEATURE_COLUMNS[:5] == ("TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT",
                                   "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW")
    assert FEATURE_COLUMNS[-2:] == ("TERMINAL_ID_NB_TX_30DAY_WINDOW", "TERMINAL_ID_RISK_30DAY_WINDOW")


def test_the_plugin_contributes_both_views_and_the_spec_to_a_fraud_lab(tmp_path):
    write_pyproject(tmp_path, "[tool.lab.fraud]\n")
    pm, config = make_plugin_manager(), load_config(tmp_path)  # the lab plugin comes by its entry point
    views = feature_views(pm, config)
    assert views["customer_spending"].entity == "CUSTOMER_ID"
    assert views["terminal_risk"].label_delay == 7 * DAY
    spec = model_spec(pm, config, "fraud")
    assert spec.views == tuple(v.name for v in VIEWS) and spec.features == FEATURE_COLUMNS
    assert (spec.source, spec.id_column, spec.time_column, spec.label, spec.carry) == (
        "transactions", "TRANSACTION_ID", "TX_DATETIME", "TX_FRAUD", ("TX_TIME_DAYS",))


def test_a_lab_without_a_fraud_table_gets_nothing_from_the_plugin(tmp_path):
    write_pyproject(tmp_path, "")
    pm, config = make_plugin_manager(), load_config(tmp_path)  # the lab plugin comes by its entry point
    assert not {"customer_spending", "terminal_risk"} & set(feature_views(pm, config))
    with pytest.raises(LabError, match="declared: none"):
        model_spec(pm, config, "fraud")


def test_training_set_equals_the_spec_brute_force_on_sampled_transactions(transactions, train):
    table, _ = train
    tx = transactions.to_dicts()
    rows = table.to_pylist()
    assert len(rows) > 300
    for row in random.Random(2).sample(rows, 120):
        expected = spec_features(tx, row)
        for name in FEATURE_COLUMNS:
            assert row[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-12), (name, row, expected)


def test_training_set_shape_order_and_digest(offline, transactions, train):
    table, digest = train
    assert table.column_names == ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID",
                                  *FEATURE_COLUMNS, "TX_FRAUD", "TX_TIME_DAYS"]
    ids = table.column("TRANSACTION_ID").to_pylist()
    assert ids == sorted(ids)
    days = transactions.filter(pl.col("TX_DATETIME").dt.date().is_between(START, END))
    assert ids == days["TRANSACTION_ID"].to_list()  # first second of START .. last of END
    again, digest_again = fraud_training_set(offline, START, END)
    assert digest_again == digest
    shorter = fraud_training_set(offline, START, END - DAY)
    assert shorter[1] != digest


def test_training_window_outside_the_data_says_what_the_data_covers(offline):
    with pytest.raises(LabError, match="covers"):
        fraud_training_set(offline, dt.date(2020, 1, 1), dt.date(2020, 1, 7))
    with pytest.raises(LabError, match="swap"):
        fraud_training_set(offline, END, START)


@pytest.mark.parametrize("when, weekend, night", [
    ("2018-04-07T00:00:00", 1, 1),   # Saturday midnight
    ("2018-04-08T23:59:59", 1, 0),   # Sunday, last second
    ("2018-04-09T06:59:59", 0, 1),   # Monday, last second of hour 6
    ("2018-04-09T07:00:00", 0, 0),
    ("2018-04-06T23:59:59", 0, 0),   # Friday
    ("2018-04-07T06:00:00", 1, 1),   # Saturday, hour 6
])
def test_request_features_weekend_and_night_batch_and_single(when, weekend, night):
    """The same rules, applied to a frame (training) and to one request (serving)."""
    df = request_features(pl.DataFrame({"TX_DATETIME": [dt.datetime.fromisoformat(when)]}))
    assert df.row(0, named=True)["TX_DURING_WEEKEND"] == weekend
    assert df.row(0, named=True)["TX_DURING_NIGHT"] == night
    features, _ = online_row_for_request({"TX_AMOUNT": 1.0, "TX_DATETIME": when}, None, None)
    assert (features["TX_DURING_WEEKEND"], features["TX_DURING_NIGHT"]) == (weekend, night)


def test_request_rules_agree_on_a_frame_and_per_row_for_every_hour_of_a_week():
    hours = [dt.datetime(2018, 4, 2) + dt.timedelta(hours=h, minutes=59) for h in range(7 * 24)]
    batch = request_features(pl.DataFrame({"TX_DATETIME": hours})).drop("TX_DATETIME").to_dicts()
    assert batch == [request_row(h) for h in hours]
    assert sum(r["TX_DURING_WEEKEND"] for r in batch) == 48 and sum(r["TX_DURING_NIGHT"] for r in batch) == 49


def test_unknown_customer_and_terminal_get_defaults_and_flags():
    features, flags = online_row_for_request({"TX_AMOUNT": 42.5, "TX_DATETIME": "2018-04-09T12:00:00"},
                                             None, None)
    assert list(features) == list(FEATURE_COLUMNS)
    assert features["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 1
    assert features["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 42.5
    assert features["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 0 and features["TERMINAL_ID_RISK_7DAY_WINDOW"] == 0.0
    assert flags == {"customer_defaulted": True, "terminal_defaulted": True}


def test_known_customer_gains_the_request_in_every_window():
    customer = {"CUSTOMER_ID_NB_TX_1DAY_WINDOW": 0, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": None,
                "CUSTOMER_ID_NB_TX_7DAY_WINDOW": 3, "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW": 20.0,
                "CUSTOMER_ID_NB_TX_30DAY_WINDOW": 9, "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW": 10.0}
    features, flags = online_row_for_request({"TX_AMOUNT": 100.0, "TX_DATETIME": "2018-04-09T12:00:00"},
                                             customer, None)
    assert features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert features["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 100.0
    assert features["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 4
    assert features["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == 40.0
    assert features["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 19.0
    assert flags == {"customer_defaulted": False, "terminal_defaulted": True}


def test_a_transaction_without_amount_is_refused():
    with pytest.raises(LabError, match="TX_AMOUNT"):
        online_row_for_request({"TX_DATETIME": "2018-04-09T12:00:00"}, None, None)
    with pytest.raises(LabError, match="ISO"):
        online_row_for_request({"TX_AMOUNT": 1, "TX_DATETIME": "yesterday"}, None, None)


def test_serving_row_equals_the_training_row(tmp_path, transactions, train):
    """Materialize the history before a transaction at its own time; serving's row for the
    transaction then equals the training set's row for it, all 15 inputs."""
    table, _ = train
    by_id = {r["TRANSACTION_ID"]: r for r in table.to_pylist()}
    # transactions whose customer has no other transaction in the same second
    ties = transactions.group_by("CUSTOMER_ID", "TX_DATETIME").len().filter(pl.col("len") > 1)
    candidates = [i for i in by_id if not ties.filter(
        (pl.col("CUSTOMER_ID") == by_id[i]["CUSTOMER_ID"]) & (pl.col("TX_DATETIME") == by_id[i]["TX_DATETIME"])
    ).height]
    for tx_id in random.Random(9).sample(candidates, 4):
        row = by_id[tx_id]
        history = DuckDBOfflineStore(tmp_path / f"history-{tx_id}.duckdb")
        history.write_source("transactions", transactions.filter(pl.col("TRANSACTION_ID") != tx_id).to_arrow())
        online = SQLiteOnlineStore(tmp_path / f"online-{tx_id}.db")
        materialize(history, online, VIEWS, row["TX_DATETIME"])
        (customer,) = online.read(VIEWS[0], [row["CUSTOMER_ID"]])
        (terminal,) = online.read(VIEWS[1], [row["TERMINAL_ID"]])
        online.close()
        features, flags = online_row_for_request(row, customer, terminal)
        assert flags == {"customer_defaulted": False, "terminal_defaulted": False}
        for name in FEATURE_COLUMNS:
            assert features[name] == pytest.approx(row[name], rel=1e-12), name


def _assembler(online) -> FeatureAssembler:
    def build(request, rows):
        return online_row_for_request(request, rows["customer_spending"], rows["terminal_risk"])[0]

    return FeatureAssembler(online, VIEWS, build, FEATURE_COLUMNS)


@pytest.fixture
def materialized_at_t(tmp_path, transactions):
    """The history up to T materialized at T, the last transaction before T (its customer
    and terminal have online rows with history), and an offline store of that history."""
    as_of = dt.datetime(2018, 4, 25, 12, 0)
    known = transactions.filter(pl.col("TX_DATETIME") <= as_of)
    history = DuckDBOfflineStore(tmp_path / "history.duckdb")
    history.write_source("transactions", known.to_arrow())
    online = SQLiteOnlineStore(tmp_path / "online.db")
    materialize(history, online, VIEWS, as_of)
    last = known.row(known.height - 1, named=True)
    (customer,) = online.read(VIEWS[0], [last["CUSTOMER_ID"]])
    (terminal,) = online.read(VIEWS[1], [last["TERMINAL_ID"]])
    assert customer["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] > 0 and terminal["TERMINAL_ID_NB_TX_30DAY_WINDOW"] > 0
    yield as_of, known, last, online
    online.close()


def test_a_request_past_both_ttls_gets_what_training_computes_flagged_stale(tmp_path, materialized_at_t):
    """40 days after T (ttls 30 and 37 days) none of the history is visible to the
    point-in-time join, so the training row of that transaction holds only itself; the
    online store's values at T must not be used either: served row == training row."""
    as_of, known, last, online = materialized_at_t
    when = as_of + 40 * DAY
    request = {**last, "TRANSACTION_ID": 10**9, "TX_DATETIME": when, "TX_AMOUNT": 77.25, "TX_FRAUD": 0}
    store = DuckDBOfflineStore(tmp_path / "with-request.duckdb")
    store.write_source("transactions", pl.concat([known, pl.DataFrame([request], schema=known.schema)]).to_arrow())
    table, _ = fraud_training_set(store, when.date(), when.date())
    (trained,) = table.to_pylist()
    assembler = _assembler(online)
    served = assembler.assemble(request, when)
    assert served.features == {name: pytest.approx(trained[name], rel=1e-12) for name in FEATURE_COLUMNS}
    assert served.features["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1
    assert served.features["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0
    assert served.defaults == {"customer_spending": True, "terminal_risk": True}
    assert {n: (f.stale, f.future) for n, f in served.freshness.items()} == {
        "customer_spending": (True, False), "terminal_risk": (True, False)}
    assert assembler.counts() == {"stale": 1, "future": 0}


def test_a_request_dated_before_t_gets_flagged_defaults_not_its_future(materialized_at_t):
    """A back-dated request (a replay) must not read values built from events after its
    own time: it gets the defaults, flagged future (not stale), and is counted."""
    as_of, _known, last, online = materialized_at_t
    assembler = _assembler(online)
    when = last["TX_DATETIME"] - dt.timedelta(seconds=1)
    request = {**last, "TX_DATETIME": when, "TX_AMOUNT": 10.0}
    served = assembler.assemble(request, when)
    unknown, _ = online_row_for_request(request, None, None)
    assert served.features == unknown
    assert served.defaults == {"customer_spending": True, "terminal_risk": True}
    for fresh in served.freshness.values():
        assert fresh.future and not fresh.stale and not fresh.usable
        assert fresh.age_seconds == (when - as_of).total_seconds() < 0
    at_t = assembler.assemble({**request, "TX_DATETIME": as_of}, as_of)  # age 0: the values are used
    assert at_t.defaults == {"customer_spending": False, "terminal_risk": False}
    assert assembler.counts() == {"stale": 0, "future": 1}
