"""``training_set`` on a lab that is not the fraud demo: every column it needs is given
by the caller (a model spec), nothing is assumed. Random events, two views, a one-column
request-time transform; rows, order, carry, digest, and the errors naming the fix."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from lab.errors import LabError
from lab.features.training import training_set
from lab.testing.events import EVENT_VIEWS, SOURCE, random_events
from lab.testing.reference import reference_features
from plugins.duckdb_offline import DuckDBOfflineStore

START, END = dt.date(2018, 4, 20), dt.date(2018, 4, 26)
FEATURES = ("AMOUNT", "EVENT_HOUR", *EVENT_VIEWS[0].feature_names, *EVENT_VIEWS[1].feature_names)


def with_hour(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("EVENT_TIME").dt.hour().cast(pl.Int64).alias("EVENT_HOUR"))


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return random_events(n_users=20, n_items=10, nb_days=40, seed=3).with_columns(
        (pl.col("EVENT_ID") % 5).alias("GROUP"))


@pytest.fixture(scope="module")
def offline(tmp_path_factory, events):
    store = DuckDBOfflineStore(tmp_path_factory.mktemp("ts") / "offline.duckdb")
    store.write_source(SOURCE, events.to_arrow())
    return store


def build(offline, start=START, end=END, **changes):
    kwargs = dict(request_features=with_hour, feature_columns=FEATURES, source=SOURCE, id_column="EVENT_ID",
                  time_column="EVENT_TIME", label="LABEL", carry=("GROUP",))
    kwargs.update(changes)
    return training_set(offline, EVENT_VIEWS, start, end, **kwargs)


def test_rows_are_the_events_of_the_days_with_their_point_in_time_features(offline, events):
    table, digest = build(offline)
    assert table.column_names == ["EVENT_ID", "EVENT_TIME", "USER_ID", "ITEM_ID", *FEATURES, "LABEL", "GROUP"]
    days = events.filter(pl.col("EVENT_TIME").dt.date().is_between(START, END)).sort("EVENT_ID")
    assert table.column("EVENT_ID").to_pylist() == days["EVENT_ID"].to_list()
    assert table.column("GROUP").to_pylist() == days["GROUP"].to_list()
    assert table.column("EVENT_HOUR").to_pylist() == [t.hour for t in days["EVENT_TIME"]]
    want = reference_features({SOURCE: events.to_arrow()}, days.to_arrow(), EVENT_VIEWS, "EVENT_TIME")
    got = table.to_pylist()
    for row, expected in list(zip(got, want))[::7]:
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    assert build(offline)[1] == digest
    assert build(offline, end=END - dt.timedelta(days=1))[1] != digest


def test_no_carry_by_default(offline):
    table, _ = training_set(offline, EVENT_VIEWS, START, END, request_features=with_hour, feature_columns=FEATURES,
                            source=SOURCE, id_column="EVENT_ID", time_column="EVENT_TIME", label="LABEL")
    assert table.column_names[-1] == "LABEL"


def test_the_lab_must_name_its_columns():
    with pytest.raises(TypeError, match="source"):
        training_set(None, EVENT_VIEWS, START, END, request_features=with_hour, feature_columns=FEATURES,
                     id_column="EVENT_ID", time_column="EVENT_TIME", label="LABEL")


@pytest.mark.parametrize("changes, needle", [
    ({"label": "OUTCOME"}, "lacks column(s) OUTCOME"),
    ({"carry": ("DAY_INDEX",)}, "lacks column(s) DAY_INDEX"),
    ({"feature_columns": (*FEATURES, "EVENT_WEEKDAY")}, "no column(s) EVENT_WEEKDAY"),
    ({"request_features": None}, "request_features must be callable"),
    ({"source": "orders"}, "orders"),
])
def test_a_column_nobody_makes_is_named(offline, changes, needle):
    with pytest.raises(LabError) as info:
        build(offline, **changes)
    assert needle in str(info.value)


def test_a_window_outside_the_data_says_what_the_data_covers(offline):
    with pytest.raises(LabError, match="covers 2018-04-01"):
        build(offline, dt.date(2020, 1, 1), dt.date(2020, 1, 7))
    with pytest.raises(LabError, match="swap"):
        build(offline, END, START)
