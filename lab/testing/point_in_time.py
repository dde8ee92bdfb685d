"""Contract suite for ``OfflineStore.get_historical_features``: the visibility rule.

Hand-made rows one second either side of every bound (entity time, label delay, window
start, ttl), then random data checked against the brute-force ``reference_features``.
Subclass ``PointInTimeContract`` and override ``store`` (fresh and empty per test).
"""

from __future__ import annotations

import datetime as dt
import math
import random

import pyarrow as pa
import pytest

from lab.errors import LabError, NotFound
from lab.features.views import Aggregation, FeatureView
from lab.testing.reference import reference_features
from lab.testing.stores import SECOND, T0
from lab.testing.events import random_events

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


def windowed(delay=dt.timedelta(0), window=DAY, ttl=30 * DAY, fill=None) -> FeatureView:
    return FeatureView(
        name="w", entity="K", source="ev", timestamp="TS", label_delay=delay, ttl=ttl,
        aggregations=(Aggregation("N", "X", "count", window), Aggregation("S", "X", "sum", window),
                      Aggregation("M", "X", "mean", window, fill=fill)),
    )


def latest(delay=dt.timedelta(0), ttl=HOUR) -> FeatureView:
    return FeatureView(name="l", entity="K", source="ev", timestamp="TS", features=("X",),
                       label_delay=delay, ttl=ttl)


def source(*rows) -> pa.Table:
    """Rows of (key, time, value)."""
    return pa.table({"K": pa.array([r[0] for r in rows], pa.int64()),
                     "TS": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "X": pa.array([r[2] for r in rows], pa.float64())})


def entity_rows(*rows) -> pa.Table:
    """Rows of (key, time)."""
    return pa.table({"K": pa.array([r[0] for r in rows], pa.int64()),
                     "T": pa.array([r[1] for r in rows], pa.timestamp("us"))})


class PointInTimeContract:
    """The visibility rule of ``lab.features.views``, bound by bound."""

    @pytest.fixture
    def store(self):
        raise NotImplementedError("override the `store` fixture: return a fresh, empty OfflineStore")

    def features(self, store, src, view, rows) -> list[dict]:
        store.write_source("ev", src)
        out = store.get_historical_features(rows, [view], "T")
        return out.select(view.feature_names).to_pylist()

    def test_row_at_the_entity_time_is_visible_one_second_later_is_not(self, store):
        src = source((1, T0, 1.0), (1, T0 + SECOND, 10.0))
        got = self.features(store, src, windowed(), entity_rows((1, T0), (1, T0 + SECOND)))
        assert got == [{"N": 1, "S": 1.0, "M": 1.0}, {"N": 2, "S": 11.0, "M": 5.5}]

    def test_window_start_is_exclusive(self, store):
        src = source((1, T0 - DAY, 100.0), (1, T0 - DAY + SECOND, 1000.0))
        got = self.features(store, src, windowed(), entity_rows((1, T0), (1, T0 - SECOND)))
        assert got == [{"N": 1, "S": 1000.0, "M": 1000.0}, {"N": 2, "S": 1100.0, "M": 550.0}]

    def test_label_delay_hides_rows_until_they_are_known(self, store):
        delay = 7 * DAY
        src = source((1, T0 - delay, 1.0), (1, T0 - delay + SECOND, 10.0),
                     (1, T0 - delay - DAY, 100.0), (1, T0 - delay - DAY + SECOND, 1000.0))
        got = self.features(store, src, windowed(delay=delay, ttl=37 * DAY), entity_rows((1, T0)))
        # visible: known exactly at T0 (inclusive) and the one just inside the window start
        assert got == [{"N": 2, "S": 1001.0, "M": 500.5}]

    def test_window_wider_than_the_ttl_is_cut_at_the_ttl_inclusive(self, store):
        src = source((1, T0 - DAY, 1.0), (1, T0 - DAY - SECOND, 10.0))
        got = self.features(store, src, windowed(window=2 * DAY, ttl=DAY), entity_rows((1, T0)))
        assert got == [{"N": 1, "S": 1.0, "M": 1.0}]

    def test_latest_value_exactly_ttl_old_is_visible_one_second_more_is_not(self, store):
        src = source((1, T0 - HOUR, 5.0), (2, T0 - HOUR - SECOND, 6.0))
        got = self.features(store, src, latest(ttl=HOUR), entity_rows((1, T0), (1, T0 + SECOND), (2, T0)))
        assert got == [{"X": 5.0}, {"X": None}, {"X": None}]

    def test_latest_value_is_the_newest_visible_row(self, store):
        src = source((1, T0 - 2 * SECOND, 1.0), (1, T0, 2.0), (1, T0 + SECOND, 3.0))
        got = self.features(store, src, latest(), entity_rows((1, T0), (1, T0 - SECOND)))
        assert got == [{"X": 2.0}, {"X": 1.0}]

    def test_latest_value_label_delay_and_ttl_counted_from_when_known(self, store):
        delay = DAY
        src = source((1, T0 - delay, 1.0), (1, T0 - delay + SECOND, 2.0),
                     (2, T0 - delay - HOUR, 3.0), (3, T0 - delay - HOUR - SECOND, 4.0))
        got = self.features(store, src, latest(delay=delay, ttl=HOUR),
                            entity_rows((1, T0), (2, T0), (3, T0)))
        assert got == [{"X": 1.0}, {"X": 3.0}, {"X": None}]

    def test_latest_value_ties_the_row_written_last_wins(self, store):
        src = source((1, T0, 1.0), (1, T0, 2.0))
        assert self.features(store, src, latest(), entity_rows((1, T0))) == [{"X": 2.0}]

    def test_entity_without_rows_gets_zero_counts_and_the_fill(self, store):
        src = source((1, T0, 1.0))
        with_fill = self.features(store, src, windowed(fill=0.25), entity_rows((2, T0), (1, T0 - SECOND)))
        assert with_fill == [{"N": 0, "S": 0.0, "M": 0.25}, {"N": 0, "S": 0.0, "M": 0.25}]
        no_fill = self.features(store, src, windowed(), entity_rows((2, T0)))
        assert no_fill == [{"N": 0, "S": 0.0, "M": None}]
        # what serving falls back to for an unknown or stale entity (FeatureView.defaults)
        assert with_fill == [windowed(fill=0.25).defaults] * 2 and no_fill == [windowed().defaults]
        assert self.features(store, src, latest(), entity_rows((2, T0))) == [latest().defaults]

    def test_result_keeps_input_rows_order_and_columns(self, store):
        store.write_source("ev", source((1, T0, 1.0), (2, T0, 2.0), (3, T0 - HOUR, 3.0)))
        rows = entity_rows((3, T0), (1, T0 - SECOND), (2, T0), (3, T0), (1, T0)).append_column(
            "TAG", pa.array(["a", "b", "c", "d", "e"]))
        out = store.get_historical_features(rows, [windowed(), latest()], "T")
        assert out.column_names == ["K", "T", "TAG", "N", "S", "M", "X"]
        assert out.select(["K", "T", "TAG"]).to_pylist() == rows.to_pylist()
        assert out.column("N").to_pylist() == [1, 0, 1, 1, 1]
        assert out.column("X").to_pylist() == [3.0, None, 2.0, 3.0, 1.0]

    def test_bad_entity_rows_are_refused_naming_the_column(self, store):
        store.write_source("ev", source((1, T0, 1.0)))
        with pytest.raises(LabError, match="'K'"):
            store.get_historical_features(entity_rows((1, T0)).drop_columns(["K"]), [windowed()], "T")
        with pytest.raises(LabError, match="WHEN"):
            store.get_historical_features(entity_rows((1, T0)), [windowed()], "WHEN")
        nulls = pa.table({"K": [1], "T": pa.array([None], pa.timestamp("us"))})
        with pytest.raises(LabError, match="null"):
            store.get_historical_features(nulls, [windowed()], "T")
        clash = entity_rows((1, T0)).append_column("N", pa.array([0]))
        with pytest.raises(LabError, match="overwrite"):
            store.get_historical_features(clash, [windowed()], "T")

    def test_view_over_a_missing_source_raises_not_found(self, store):
        store.write_source("other", source((1, T0, 1.0)))
        with pytest.raises(NotFound, match="ev"):
            store.get_historical_features(entity_rows((1, T0)), [windowed()], "T")

    def test_agrees_with_the_brute_force_reference_on_random_data(self, store):
        ev = random_events(n_users=12, n_items=6, nb_days=40, seed=7).to_arrow()
        store.write_source("events", ev)
        views = [
            FeatureView(name="u", entity="USER_ID", source="events", timestamp="EVENT_TIME",
                        ttl=5 * DAY, aggregations=tuple(
                            Aggregation(f"{f}_{w}", "AMOUNT", f, w * DAY, fill=-1.0 if w == 1 else None)
                            for w in (1, 3, 9) for f in ("count", "sum", "mean"))),
            FeatureView(name="i", entity="ITEM_ID", source="events", timestamp="EVENT_TIME",
                        label_delay=2 * DAY, ttl=9 * DAY, aggregations=tuple(
                            Aggregation(f"I{f}_{w}", "LABEL", f, w * DAY) for w in (1, 7) for f in ("count", "mean"))),
            # Users often act twice in one second (a 10-minute grid): the latest values are
            # those of the row written last among the tied ones.
            FeatureView(name="last", entity="USER_ID", source="events", timestamp="EVENT_TIME",
                        features=("EVENT_ID", "AMOUNT"), ttl=2 * DAY,
                        label_delay=HOUR),
        ]
        rng = random.Random(3)
        times = ev.column("EVENT_TIME").to_pylist()
        shifts = (dt.timedelta(0), SECOND, -SECOND, DAY, -DAY, HOUR, 2 * DAY + SECOND)
        rows = [(rng.randrange(13), rng.choice(times) + rng.choice(shifts), rng.randrange(7)) for _ in range(400)]
        probes = pa.table({"USER_ID": pa.array([r[0] for r in rows], pa.int64()),
                           "T": pa.array([r[1] for r in rows], pa.timestamp("us")),
                           "ITEM_ID": pa.array([r[2] for r in rows], pa.int64())})
        got = store.get_historical_features(probes, views, "T").to_pylist()
        want = reference_features({"events": ev}, probes, views, "T")
        for g, w in zip(got, want):
            for name, expected in w.items():
                value = g[name]
                if expected is None or isinstance(expected, int):
                    assert value == expected, (name, g, w)
                else:
                    assert math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-12), (name, value, expected)
