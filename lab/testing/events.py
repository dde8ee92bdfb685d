"""Small random labelled events for tests, and two views over them.

``random_events`` is built to stress point-in-time logic, not to look like any domain:
users act on items, each event has an amount and a 0/1 label. Times fall on a coarse
grid (every 10 minutes), so many events sit exactly 1, 7 or 30 days apart or share a
second with another one of the same user or item: the window bounds and ties are
exercised, not avoided.

``EVENT_VIEWS`` are two views of the shapes labs use: ``user_activity`` (count and mean
amount per user over 1, 7 and 30 days; ttl 30 days) and ``item_label_rate`` (count and
label rate per item over 1, 7 and 30 days, known only after a 7-day label delay, fill
0; ttl 37 days).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from lab.features.views import Aggregation, FeatureView

EVENT_COLUMNS = ("EVENT_ID", "EVENT_TIME", "USER_ID", "ITEM_ID", "AMOUNT", "LABEL")
SOURCE = "events"
DAY = dt.timedelta(days=1)
WINDOWS = (1, 7, 30)
LABEL_DELAY_DAYS = 7


def random_events(
    n_users: int = 40,
    n_items: int = 25,
    nb_days: int = 45,
    events_per_day: float = 1.5,
    label_rate: float = 0.1,
    seed: int = 0,
    start_date: str = "2018-04-01",
    grid_s: int = 600,
) -> pl.DataFrame:
    """Events sorted by time, ``EVENT_ID`` the row number after sorting.

    Each user makes Poisson(``events_per_day``) events a day at times on a ``grid_s``
    grid, on uniformly drawn items; amounts are gamma-distributed, rounded to cents;
    ``LABEL`` is Bernoulli(``label_rate``).
    """
    rng = np.random.default_rng(seed)
    n = rng.poisson(events_per_day, size=(n_users, nb_days))
    user = np.repeat(np.repeat(np.arange(n_users), nb_days), n.ravel())
    day = np.repeat(np.tile(np.arange(nb_days), n_users), n.ravel())
    seconds_in_day = rng.integers(0, 86400 // grid_s, size=len(day)) * grid_s
    time_s = day * 86400 + seconds_in_day
    order = np.lexsort((user, time_s))
    user, time_s = user[order], time_s[order]
    size = len(user)
    start = dt.datetime.fromisoformat(start_date)
    return pl.DataFrame(
        {
            "EVENT_ID": np.arange(size, dtype=np.int64),
            "EVENT_TIME": pl.Series([start], dtype=pl.Datetime("us")).first()
            + pl.Series(time_s * 1_000_000, dtype=pl.Int64).cast(pl.Duration("us")),
            "USER_ID": user.astype(np.int64),
            "ITEM_ID": rng.integers(0, n_items, size=size).astype(np.int64),
            "AMOUNT": np.round(rng.gamma(2.0, 30.0, size=size), 2),
            "LABEL": (rng.random(size) < label_rate).astype(np.int64),
        }
    ).select(EVENT_COLUMNS)


USER_ACTIVITY = FeatureView(
    name="user_activity",
    entity="USER_ID",
    source=SOURCE,
    timestamp="EVENT_TIME",
    aggregations=tuple(
        agg
        for n in WINDOWS
        for agg in (
            Aggregation(f"USER_NB_EVENTS_{n}D", "AMOUNT", "count", n * DAY),
            Aggregation(f"USER_AVG_AMOUNT_{n}D", "AMOUNT", "mean", n * DAY),
        )
    ),
    ttl=30 * DAY,
    description="How often and how much the user acted over the last 1, 7 and 30 days.",
)

ITEM_LABEL_RATE = FeatureView(
    name="item_label_rate",
    entity="ITEM_ID",
    source=SOURCE,
    timestamp="EVENT_TIME",
    aggregations=tuple(
        agg
        for n in WINDOWS
        for agg in (
            Aggregation(f"ITEM_NB_EVENTS_{n}D", "LABEL", "count", n * DAY),
            Aggregation(f"ITEM_LABEL_RATE_{n}D", "LABEL", "mean", n * DAY, fill=0.0),
        )
    ),
    ttl=(LABEL_DELAY_DAYS + 30) * DAY,
    label_delay=LABEL_DELAY_DAYS * DAY,
    description="The item's traffic and label rate, as known after the label delay.",
)

EVENT_VIEWS = (USER_ACTIVITY, ITEM_LABEL_RATE)
