"""{{project}}: forecast how many minutes a food delivery takes. This module is the lab.

It is a plugin of this lab (``[tool.lab] plugins``) and uses public hooks only:

- ``simulate_orders``: a deterministic simulator of orders. A store takes its own time to
  prepare an order (more with more items, at rush hours and at weekends); a courier rides
  at their own pace (slower at rush hours); a delivery takes preparation plus riding
  plus a hand-over. ``simulate`` is the pipeline stage that writes ``data/orders.parquet``.
- two feature views over the ``orders`` source, known only once an order is delivered
  (``label_delay``): ``store_prep`` (how long the store took lately, and how busy it was)
  and ``courier_pace`` (the courier's minutes per km lately);
- ``lab_expectations``: what the orders and both views must look like before a model
  trains on them (the train step checks them first; ``lab data validate`` on demand);
- ``MODEL``, the ``delivery_time`` model: a regression of ``DELIVERY_MINUTES`` judged by
  MAE, its request schema, and the request-time features (hour, rush hour, weekend)
  written once in ``CALENDAR_RULES`` and applied to a frame (``request_frame``: training,
  batch scoring) and to one request (``request_row``: ``lab serve``).

Edit anything here: the pipeline reruns the stages whose inputs changed (this file is an
input of each stage in ``notebooks/pipeline.toml``).
"""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any, Mapping

from lab import hookimpl
from lab.atomic import atomic_path
from lab.errors import LabError
from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.pipeline.context import StageContext

ORDERS = "data/orders.parquet"
SOURCE = "orders"
LABEL = "DELIVERY_MINUTES"
MODEL_NAME = "delivery_time"

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
# A delivery's minutes are known when it arrives: at most MAX_MINUTES after the order, so
# within LABEL_DELAY. The views read an order only LABEL_DELAY after it was placed.
MAX_MINUTES = 115.0
LABEL_DELAY = 2 * HOUR
RUSH_HOURS = ((11, 13), (18, 20))  # lunch and dinner, inclusive hours
# Typical values, for a store or courier with no delivery in a window (a mean over nothing).
TYPICAL_PREP_MINUTES = 18.0
TYPICAL_MIN_PER_KM = 4.0

# --------------------------------------------------------------------------- simulator

# Orders per hour of the day, relative: a quiet night, lunch and dinner peaks.
_HOURLY = (0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.2, 3.0,
           3.2, 2.6, 1.2, 1.0, 1.1, 1.6, 3.2, 3.6, 3.0, 1.6, 0.9, 0.5)


def simulate_orders(*, n_stores: int = 150, n_couriers: int = 250, orders_per_day: int = 2000,
                    days: int = 30, start_date: str = "2024-03-01", seed: int = 7):
    """A polars frame of simulated orders, one row per order, sorted by ``ORDERED_AT``.

    Columns: ``ORDER_ID`` (1, 2, ... in time order), ``ORDERED_AT``, ``STORE_ID`` (1 ..
    n_stores), ``COURIER_ID`` (1 .. n_couriers), ``DISTANCE_KM``, ``N_ITEMS``, then what is
    known after delivery: ``PREP_MINUTES``, ``MIN_PER_KM`` (the courier's pace on this
    trip) and ``DELIVERY_MINUTES``. The same arguments give the same frame.
    """
    # numpy and polars load when data is made, not at every `lab` start in this lab
    import numpy as np
    import polars as pl

    for name, value in (("n_stores", n_stores), ("n_couriers", n_couriers),
                        ("orders_per_day", orders_per_day), ("days", days)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabError(f"[tool.lab.delivery] {name} must be a whole number >= 1, got {value!r}")
    try:
        start = dt.datetime.combine(dt.date.fromisoformat(str(start_date)), dt.time())
    except ValueError:
        raise LabError(f"[tool.lab.delivery] start_date {start_date!r} is not a date (2024-03-01)") from None
    rng = np.random.default_rng(seed)

    # Who the stores and couriers are: a store's base preparation time, a courier's pace.
    store_weight = rng.lognormal(0.0, 0.8, n_stores)
    store_prep = rng.uniform(8.0, 22.0, n_stores)
    courier_pace = rng.uniform(2.2, 4.8, n_couriers)

    # When orders come: a Poisson count per day (more at weekends), hours by _HOURLY.
    weekday = np.array([(start + dt.timedelta(days=d)).isoweekday() for d in range(days)])
    per_day = rng.poisson(orders_per_day * np.where(weekday >= 6, 1.15, 1.0))
    day = np.repeat(np.arange(days), per_day)
    n = day.size
    hourly = np.array(_HOURLY) / sum(_HOURLY)
    seconds = day * 86_400 + rng.choice(24, size=n, p=hourly) * 3_600 + rng.integers(0, 3_600, n)
    seconds.sort(kind="stable")
    hour = (seconds % 86_400) // 3_600
    weekend = weekday[seconds // 86_400] >= 6
    rush = np.zeros(n, dtype=bool)
    for lo, hi in RUSH_HOURS:
        rush |= (hour >= lo) & (hour <= hi)

    # What each order is, and how long it took.
    store = rng.choice(n_stores, size=n, p=store_weight / store_weight.sum())
    courier = rng.integers(0, n_couriers, n)
    distance = np.round(np.clip(rng.gamma(2.0, 1.5, n) + 0.3, 0.3, 15.0), 2)
    items = np.clip(1 + rng.poisson(1.8, n), 1, 20)
    prep = store_prep[store] * (1 + 0.07 * (items - 1)) * (1 + 0.25 * rush) * (1 + 0.10 * weekend)
    prep = np.maximum(prep + rng.normal(0.0, 1.5, n), 2.0)
    pace = courier_pace[courier] * (1 + 0.30 * rush) * rng.lognormal(0.0, 0.10, n)
    handover = np.maximum(rng.normal(3.0, 1.0, n), 0.5)
    minutes = np.clip(prep + distance * pace + handover, 5.0, MAX_MINUTES)

    ordered_at = np.datetime64(start, "us") + seconds.astype("timedelta64[s]")
    return pl.DataFrame({
        "ORDER_ID": np.arange(1, n + 1, dtype=np.int64),
        "ORDERED_AT": ordered_at,
        "STORE_ID": (store + 1).astype(np.int64),
        "COURIER_ID": (courier + 1).astype(np.int64),
        "DISTANCE_KM": distance,
        "N_ITEMS": items.astype(np.int64),
        "PREP_MINUTES": np.round(prep, 2),
        "MIN_PER_KM": np.round(pace, 3),
        "DELIVERY_MINUTES": np.round(minutes, 1),
    })


def simulate(root, run_dir, *, n_stores: int, n_couriers: int, orders_per_day: int, days: int,
             start_date: str, seed: int) -> dict:
    """The ``simulate`` stage: write ``data/orders.parquet`` (atomically) and summarize it.

    Its parameters come from ``[tool.lab.delivery]``; a key there that it does not know
    is an error rather than a setting silently ignored.
    """
    with StageContext.open(root, run_dir) as ctx:
        known = tuple(inspect.signature(simulate_orders).parameters)
        unknown = sorted(set(ctx.config.section("delivery") or {}) - set(known))
        if unknown:
            raise LabError(f"unknown key(s) {', '.join(unknown)} in [tool.lab.delivery]; "
                           f"known keys are: {', '.join(sorted(known))}")
        orders = simulate_orders(n_stores=n_stores, n_couriers=n_couriers, orders_per_day=orders_per_day,
                                 days=days, start_date=start_date, seed=seed)
        with atomic_path(ctx.path(ORDERS)) as tmp:
            orders.write_parquet(tmp)
    return {
        "path": ORDERS,
        "orders": orders.height,
        "first": str(orders["ORDERED_AT"].min()),
        "last": str(orders["ORDERED_AT"].max()),
        "mean_minutes": round(float(orders[LABEL].mean()), 2),
    }


# --------------------------------------------------------------------------- feature views

STORE_PREP = FeatureView(
    name="store_prep",
    entity="STORE_ID",
    source=SOURCE,
    timestamp="ORDERED_AT",
    aggregations=tuple(
        agg
        for days in (1, 7)
        for agg in (
            Aggregation(f"STORE_ORDERS_{days}D", "PREP_MINUTES", "count", days * DAY),
            Aggregation(f"STORE_PREP_MINUTES_{days}D", "PREP_MINUTES", "mean", days * DAY,
                        fill=TYPICAL_PREP_MINUTES),
        )
    ),
    ttl=7 * DAY,
    label_delay=LABEL_DELAY,
    description="How long the store took to prepare its delivered orders, and how many, over 1 and 7 days.",
)

COURIER_PACE = FeatureView(
    name="courier_pace",
    entity="COURIER_ID",
    source=SOURCE,
    timestamp="ORDERED_AT",
    aggregations=(
        Aggregation("COURIER_DELIVERIES_7D", "MIN_PER_KM", "count", 7 * DAY),
        Aggregation("COURIER_MIN_PER_KM_7D", "MIN_PER_KM", "mean", 7 * DAY, fill=TYPICAL_MIN_PER_KM),
    ),
    ttl=7 * DAY,
    label_delay=LABEL_DELAY,
    description="The courier's riding pace (minutes per km) over their deliveries of the last 7 days.",
)

VIEWS = (STORE_PREP, COURIER_PACE)

# --------------------------------------------------------------------------- request-time features

CALENDAR_RULES: dict[str, tuple[str, tuple[tuple[int, int], ...] | None]] = {
    "HOUR_OF_DAY": ("hour", None),               # the hour itself, 0..23
    "IS_RUSH_HOUR": ("hour", RUSH_HOURS),        # 1 inside an inclusive range
    "IS_WEEKEND": ("weekday", ((6, 7),)),        # ISO weekday: Saturday 6, Sunday 7
}
"""Request-time features from ``ORDERED_AT``, defined once: a calendar field itself, or 1
when it lies in one of the ranges. Naive times are UTC wall clock, as the stores read
them; an aware time is converted to UTC first."""

REQUEST_NUMBERS = ("DISTANCE_KM", "N_ITEMS")
FEATURES: tuple[str, ...] = (
    *REQUEST_NUMBERS, *CALENDAR_RULES,
    *STORE_PREP.feature_names, *COURIER_PACE.feature_names,
)
"""The model's inputs, in order."""


def request_frame(orders):
    """``orders`` plus the ``CALENDAR_RULES`` columns (Int64), for training and batch scoring."""
    import polars as pl  # as in simulate_orders

    if "ORDERED_AT" not in orders.columns:
        raise LabError(f"request features need an ORDERED_AT column; got {', '.join(orders.columns)}")
    when = pl.col("ORDERED_AT")
    if getattr(orders.schema["ORDERED_AT"], "time_zone", None):
        when = when.dt.convert_time_zone("UTC")
    fields = {"hour": when.dt.hour(), "weekday": when.dt.weekday()}  # polars weekday is ISO
    columns = []
    for name, (field, ranges) in CALENDAR_RULES.items():
        value = fields[field]
        if ranges is not None:
            inside = pl.lit(False)
            for lo, hi in ranges:
                inside = inside | value.is_between(lo, hi)
            value = inside
        columns.append(value.cast(pl.Int64).alias(name))
    return orders.with_columns(columns)


def calendar_row(when: dt.datetime) -> dict[str, int]:
    """The ``CALENDAR_RULES`` columns for one order time."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    fields = {"hour": when.hour, "weekday": when.isoweekday()}
    out = {}
    for name, (field, ranges) in CALENDAR_RULES.items():
        value = fields[field]
        out[name] = value if ranges is None else int(any(lo <= value <= hi for lo, hi in ranges))
    return out


def request_row(request: Mapping[str, Any], rows_by_view: Mapping[str, dict | None]) -> dict[str, Any]:
    """The model's inputs for one order, from the online rows of its store and courier.

    A store or courier the online store does not know (None), or a value it lacks, gets
    the view's default: what the offline join gives an entity with no delivered order in
    the window (count 0, the typical mean).
    """
    when = request["ORDERED_AT"]
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when)
        except ValueError:
            raise LabError(f"ORDERED_AT {when!r} is not an ISO date-time (2024-03-31T12:30:00)") from None
    out: dict[str, Any] = {"DISTANCE_KM": float(request["DISTANCE_KM"]), "N_ITEMS": int(request["N_ITEMS"]),
                           **calendar_row(when)}
    for view in VIEWS:
        row = rows_by_view.get(view.name) or {}
        for name, default in view.defaults.items():
            value = row.get(name)
            out[name] = default if value is None else value
    return {name: out[name] for name in FEATURES}


# --------------------------------------------------------------------------- the model

REQUEST = RequestSchema(
    title="Order",
    fields=(
        RequestField("ORDER_ID", "int", "the order's id, logged with its prediction", ge=0, le=2**53),
        RequestField("ORDERED_AT", "datetime", "when the order was placed (naive: UTC)"),
        RequestField("STORE_ID", "int", "the store preparing it", ge=0, le=2**31 - 1),
        RequestField("COURIER_ID", "int", "the courier assigned to it", ge=0, le=2**31 - 1),
        RequestField("DISTANCE_KM", "float", "store to customer, by road", ge=0.0, le=30.0),
        RequestField("N_ITEMS", "int", "items in the order", ge=1, le=50),
    ),
    id="ORDER_ID",
    timestamp="ORDERED_AT",
    entities=("STORE_ID", "COURIER_ID"),
    example={"ORDER_ID": 900001, "ORDERED_AT": "2024-03-31T12:30:00", "STORE_ID": 12, "COURIER_ID": 40,
             "DISTANCE_KM": 3.2, "N_ITEMS": 3},
)

MODEL = ModelSpec(
    name=MODEL_NAME,
    task="regression",
    label=LABEL,
    source=SOURCE,
    features=FEATURES,
    views=tuple(v.name for v in VIEWS),
    request=REQUEST,
    request_frame=request_frame,
    request_row=request_row,
    metric="mae",
    description="Minutes from order to delivery, from the order, the store's and the courier's recent deliveries.",
    tags={"domain": "food delivery"},
)


# --------------------------------------------------------------------------- hooks

@hookimpl
def lab_feature_views(config):
    """This lab's two views over the ``orders`` source."""
    return list(VIEWS)


@hookimpl
def lab_model_specs(config):
    """The ``delivery_time`` model."""
    return [MODEL]


@hookimpl
def lab_expectations(config):
    """What the orders and both views must look like before a model trains on them: the
    simulator's columns and bounds, one row per order, each day's orders near the median
    day's (a day loaded twice fails), and drift against the last training set."""
    from lab.monitoring.validation import Expectations  # polars, only when data is checked

    columns = {"ORDER_ID": "int", "ORDERED_AT": "datetime", "STORE_ID": "int", "COURIER_ID": "int",
               "DISTANCE_KM": "float", "N_ITEMS": "int", "PREP_MINUTES": "float", "MIN_PER_KM": "float",
               LABEL: "float"}
    orders = Expectations(
        target=SOURCE, schema=columns, max_null_share={c: 0.0 for c in columns},
        ranges={"STORE_ID": (1, None), "COURIER_ID": (1, None), "DISTANCE_KM": (0.0, 30.0), "N_ITEMS": (1, 50),
                "PREP_MINUTES": (0.0, None), "MIN_PER_KM": (0.0, None), LABEL: (0.0, MAX_MINUTES)},
        medians={LABEL: (10.0, 60.0)},  # minutes: hours or seconds fail
        rows=(1, None), per_day_vs_median=(0.5, 1.6), unique=["ORDER_ID"],
        max_drift={"DISTANCE_KM": 0.3, LABEL: 0.3})
    views = [Expectations(target=view.name,
                          max_null_share={a.name: 0.0 for a in view.aggregations},
                          ranges={a.name: (0, None) if a.function == "count" else (0.0, None)
                                  for a in view.aggregations},
                          max_drift=0.3)
             for view in VIEWS]
    return [orders, *views]
