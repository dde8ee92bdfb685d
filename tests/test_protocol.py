"""The fraud plugin's reference split (windows and known-compromised cards) and the
platform's training-set scaler."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from lab.errors import LabError
from lab.modelspec import SplitWindow
from lab.training.protocol import Scaler
from plugins.fraud.protocol import protocol_split, reference_split

DAY0 = dt.datetime(2018, 4, 1)


def frame(rows):
    """Transactions from (day, seconds into the day, card, fraud) tuples."""
    return pl.DataFrame(
        {
            "TX_DATETIME": [DAY0 + dt.timedelta(days=d, seconds=s) for d, s, _, _ in rows],
            "TX_TIME_DAYS": [d for d, _, _, _ in rows],
            "CUSTOMER_ID": [c for _, _, c, _ in rows],
            "TX_FRAUD": [f for _, _, _, f in rows],
            "TX_AMOUNT": [float(i) for i in range(len(rows))],
        }
    )


def test_windows_follow_the_dates_at_both_ends():
    rows = [
        (2, 86399, 1, 0),  # the second before training: out
        (3, 0, 1, 0),      # the first second of training: in
        (4, 86399, 1, 0),  # the last second of training: in
        (5, 0, 1, 0),      # the delay: neither set
        (6, 0, 1, 0),
        (7, 0, 2, 0),      # test days 7, 8, 9
        (9, 86399, 2, 0),
        (10, 0, 2, 0),     # after the test: out
    ]
    train, test = reference_split(frame(rows), train_start=(DAY0 + dt.timedelta(days=3)).date(),
                                  delta_train=2, delta_delay=2, delta_test=3)
    assert train["TX_TIME_DAYS"].to_list() == [3, 4]
    assert test["TX_TIME_DAYS"].to_list() == [7, 9]
    assert test.columns == frame(rows).columns  # every feature column kept


def test_known_compromised_cards_are_dropped_day_by_day():
    # Training days 3-4, delay 2, test days 7, 8, 9. On test day T the frauds known are
    # those of the training period and of days up to T - delay - 1.
    frauds = {
        1: 3,  # fraud while training: dropped on every test day
        2: 5,  # known from day 8 (5 <= 8 - 3)
        3: 6,  # known from day 9
        4: 1,  # before training: the handbook does not count it
        5: 7,  # on a test day: known only from day 10, after the test
    }
    rows = [(3, 100, card, 0) for card in frauds] + [(day, 200, card, 1) for card, day in frauds.items()]
    rows += [(t, 300 + card, card, 0) for t in (7, 8, 9) for card in frauds]
    rows.sort()
    df = frame(rows)
    _, test = reference_split(df, train_start=(DAY0 + dt.timedelta(days=3)).date(),
                              delta_train=2, delta_delay=2, delta_test=3)
    cards_on = {t: sorted(set(test.filter(pl.col("TX_TIME_DAYS") == t)["CUSTOMER_ID"])) for t in (7, 8, 9)}
    assert cards_on == {7: [2, 3, 4, 5], 8: [3, 4, 5], 9: [4, 5]}
    # Rows come in the input's order.
    assert test["TX_DATETIME"].is_sorted()


def test_default_reference_split_uses_test_day_minus_8():
    # The spec's split: train 2018-07-25..31, test 2018-08-08..14. A card defrauded on
    # 2018-08-01 is known from 2018-08-09 (08-01 <= 08-09 - 8), not on 08-08.
    start = dt.date(2018, 7, 25)
    day = lambda d: (d - DAY0.date()).days  # noqa: E731
    rows = [(day(start), 10, 99, 0), (day(dt.date(2018, 8, 1)), 10, 7, 1)]
    rows += [(day(dt.date(2018, 8, 8)) + i, 10, 7, 0) for i in range(7)]
    rows += [(day(dt.date(2018, 8, 15)), 10, 7, 0)]  # the day after the test
    train, test = reference_split(frame(rows), train_start=start)
    assert train["CUSTOMER_ID"].to_list() == [99]
    assert [d.date() for d in test["TX_DATETIME"]] == [dt.date(2018, 8, 8)]


def test_protocol_split_is_the_reference_split_over_a_train_window():
    """The fraud spec's ``split``: the ``[tool.lab.train]`` window's days, same rows."""
    rows = [(d, 10 * c, c, int(d == 4 and c == 2)) for d in range(2, 12) for c in (1, 2, 3)]
    df = frame(rows)
    window = SplitWindow(train_start=(DAY0 + dt.timedelta(days=3)).date(), delta_train=2, delta_delay=2,
                         delta_test=3)
    train, test = protocol_split(df, window)
    want_train, want_test = reference_split(df, train_start=window.train_start, delta_train=2,
                                            delta_delay=2, delta_test=3)
    assert train.equals(want_train) and test.equals(want_test)
    assert sorted(set(test["TX_TIME_DAYS"])) == [7, 8, 9] and 2 not in set(test["CUSTOMER_ID"])


def test_bad_input_names_the_fix():
    with pytest.raises(LabError, match="TX_FRAUD"):
        reference_split(frame([(3, 0, 1, 0)]).drop("TX_FRAUD"), train_start=dt.date(2018, 4, 4))
    with pytest.raises(LabError, match="no transactions between"):
        reference_split(frame([(3, 0, 1, 0)]), train_start=dt.date(2019, 1, 1))
    with pytest.raises(LabError, match="no test transactions"):
        reference_split(frame([(3, 0, 1, 0)]), train_start=dt.date(2018, 4, 4))
    with pytest.raises(LabError, match="datetime.date"):
        reference_split(frame([(3, 0, 1, 0)]), train_start="2018-04-04")


def test_scaler_standardizes_with_training_statistics():
    train = np.array([[1.0, 5.0], [3.0, 5.0]])
    scaler = Scaler.fit(train, ["AMOUNT", "CONSTANT"])
    assert scaler.mean == (2.0, 5.0)
    assert scaler.std == (1.0, 1.0)  # the constant column's std 0 becomes 1
    out = scaler.transform(np.array([[5.0, 7.0]]))
    assert out.dtype == np.float32
    assert out.tolist() == [[3.0, 2.0]]
    again = Scaler.from_dict(scaler.to_dict())
    assert again == scaler


def test_scaler_rejects_bad_input():
    with pytest.raises(LabError, match="NaN"):
        Scaler.fit(np.array([[1.0], [np.nan]]), ["AMOUNT"])
    with pytest.raises(LabError, match="2 features"):
        Scaler.fit(np.ones((3, 2))).transform(np.ones((1, 3)))
    with pytest.raises(LabError, match="not a scaler"):
        Scaler.from_dict({"mean": [0.0]})
    with pytest.raises(LabError, match="not positive"):
        Scaler.from_dict({"mean": [0.0], "std": [0.0]})
