"""The ModelSpec contract on a toy delivery-time spec defined here, and proof that it fails
on specs that break it (frame and row disagree, a missing column, a NaN for an unknown store)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import polars as pl
import pytest

from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.testing.modelspec import ModelSpecContract, check_model_spec

STORE_PREP = FeatureView(
    name="store_prep", entity="STORE_ID", source="orders", timestamp="ORDERED_AT",
    aggregations=(Aggregation("STORE_AVG_MINUTES_7D", "MINUTES", "mean", dt.timedelta(days=7)),),
)
VIEWS = {"store_prep": STORE_PREP}
PEAK_HOURS = ((11, 13), (18, 20))  # inclusive; the one definition both paths read
DEFAULT_PREP = 25.0  # minutes, for a store the online store does not know


def _peak(hour: int) -> int:
    return int(any(lo <= hour <= hi for lo, hi in PEAK_HOURS))


def request_frame(events: pl.DataFrame) -> pl.DataFrame:
    hour = pl.col("ORDERED_AT").dt.hour()
    return events.with_columns(
        pl.any_horizontal([hour.is_between(lo, hi) for lo, hi in PEAK_HOURS]).cast(pl.Int64).alias("IS_PEAK"),
        (pl.col("DISTANCE_KM") + 1.0).log().alias("LOG_DISTANCE"),
    )


def request_row(request, rows):
    store = rows.get("store_prep") or {}
    prep = store.get("STORE_AVG_MINUTES_7D")
    return {
        "DISTANCE_KM": float(request["DISTANCE_KM"]),
        "IS_PEAK": _peak(request["ORDERED_AT"].hour),
        "LOG_DISTANCE": math.log(float(request["DISTANCE_KM"]) + 1.0),
        "STORE_AVG_MINUTES_7D": DEFAULT_PREP if prep is None else float(prep),
    }


SCHEMA = RequestSchema(
    fields=(RequestField("ORDER_ID", "int", ge=0), RequestField("ORDERED_AT", "datetime"),
            RequestField("STORE_ID", "int", ge=0), RequestField("DISTANCE_KM", "float", ge=0, le=100)),
    id="ORDER_ID", timestamp="ORDERED_AT", entities=("STORE_ID",),
    example={"ORDER_ID": 1, "ORDERED_AT": "2024-03-01T12:00:00", "STORE_ID": 7, "DISTANCE_KM": 2.5},
)
SPEC = ModelSpec(
    name="delivery_time", task="regression", label="MINUTES", source="orders",
    features=("DISTANCE_KM", "IS_PEAK", "LOG_DISTANCE", "STORE_AVG_MINUTES_7D"), views=("store_prep",),
    request=SCHEMA, request_frame=request_frame, request_row=request_row,
)


def orders() -> pl.DataFrame:
    # Hours on both sides of each peak boundary, where two definitions would part ways.
    hours = [10, 11, 13, 14, 17, 18, 20, 21]
    return pl.DataFrame({
        "ORDER_ID": list(range(len(hours))),
        "ORDERED_AT": [dt.datetime(2024, 3, 1, h, 30) for h in hours],
        "STORE_ID": [i % 3 for i in range(len(hours))],
        "DISTANCE_KM": [0.5 + i for i in range(len(hours))],
        "MINUTES": [20.0 + 3 * i for i in range(len(hours))],
    })


class TestDeliverySpec(ModelSpecContract):
    @pytest.fixture
    def spec(self):
        return SPEC

    @pytest.fixture
    def events(self):
        return orders()

    @pytest.fixture
    def views_by_name(self):
        return VIEWS

    @pytest.fixture
    def online_rows(self):
        return [{"store_prep": None if i == 0 else {"STORE_AVG_MINUTES_7D": 30.0 + i}} for i in range(8)]


class TestDeliverySpecWithDefaults(ModelSpecContract):
    """The optional fixtures left out: views unknown, every view None."""

    @pytest.fixture
    def spec(self):
        return SPEC

    @pytest.fixture
    def events(self):
        return orders()


def test_the_good_spec_has_no_problems():
    assert check_model_spec(SPEC, orders(), VIEWS) == []
    assert check_model_spec(SPEC, orders()) == []


def test_frame_and_row_that_disagree_break_the_one_definition_rule():
    def drifting_row(request, rows):
        out = dict(request_row(request, rows))
        hour = request["ORDERED_AT"].hour
        out["IS_PEAK"] = int(_peak(hour) or hour == 14)  # serving's copy drifted: 14 is not peak
        return out

    bad = dataclasses.replace(SPEC, request_row=drifting_row)
    problems = check_model_spec(bad, orders(), VIEWS)
    assert len(problems) == 1
    assert "disagree on IS_PEAK for 1 of 8 events (event 3: 1 vs 0" in problems[0]
    # The contract's test method fails on it too.
    with pytest.raises(AssertionError, match="IS_PEAK"):
        ModelSpecContract().test_request_row_agrees_with_request_frame(bad, orders(), VIEWS, None)


def test_a_request_time_feature_the_frame_does_not_add_is_named():
    bad = dataclasses.replace(SPEC, request_frame=lambda events: request_frame(events).drop("LOG_DISTANCE"))
    problems = check_model_spec(bad, orders(), VIEWS)
    assert problems == ["request_frame does not add the request-time feature(s) LOG_DISTANCE "
                        "(features of the spec that no view produces)"]


def test_an_unknown_store_must_still_give_finite_features():
    def no_default(request, rows):
        out = dict(request_row(request, rows))
        if rows.get("store_prep") is None:
            out["STORE_AVG_MINUTES_7D"] = float("nan")
        return out

    problems = check_model_spec(dataclasses.replace(SPEC, request_row=no_default), orders(), VIEWS)
    assert len(problems) == 1 and "example request with every view unknown gives STORE_AVG_MINUTES_7D=nan" in problems[0]


def test_missing_columns_views_and_failing_code_are_named():
    problems = check_model_spec(SPEC, orders().drop("MINUTES", "DISTANCE_KM"), VIEWS)
    assert "the events lack the label column 'MINUTES' (source 'orders')" in problems
    assert any(p.startswith("request_frame(events) raised ColumnNotFoundError") for p in problems)
    assert any("lack request field(s) DISTANCE_KM" in p for p in problems)

    problems = check_model_spec(SPEC, orders(), {})
    assert problems == ["the spec reads view 'store_prep', which is not among the views (none)"]

    other_key = FeatureView(name="store_prep", entity="COURIER_ID", source="orders", timestamp="ORDERED_AT",
                            features=("STORE_AVG_MINUTES_7D",))
    problems = check_model_spec(SPEC, orders(), {"store_prep": other_key})
    assert problems == ["view 'store_prep' is keyed by 'COURIER_ID', which is not an entity field of the request (STORE_ID)"]

    def broken_row(request, rows):
        raise KeyError("DISTANCE")

    problems = check_model_spec(dataclasses.replace(SPEC, request_row=broken_row), orders(), VIEWS)
    assert problems[0] == "request_row raised KeyError for event 0: 'DISTANCE'"
    assert problems[1].startswith("request_row on the example request with every view unknown raised KeyError")

    problems = check_model_spec(SPEC, orders(), VIEWS, online_rows=[{"store_prep": None}])
    assert problems == ["online_rows has 1 entries for 8 events; give one per event or one for all"]
