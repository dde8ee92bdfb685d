"""Contract test suites for store backends: subclass one, override ``store``, run pytest.

    from lab.testing.stores import OfflineStoreContract

    class TestMyStore(OfflineStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            s = MyStore(tmp_path / "db")
            yield s
            s.close()

The fixture must give a fresh, empty store for each test. ``OfflineStoreContract``
checks source tables and digests; ``lab.testing.point_in_time.PointInTimeContract``
checks retrieval; ``OnlineStoreContract`` checks the online store.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from lab.errors import LabError, NotFound
from lab.features.stores import EVENT_TIME, RowTimes
from lab.features.views import Aggregation, FeatureView

T0 = dt.datetime(2024, 3, 10, 12, 0, 0)
SECOND = dt.timedelta(seconds=1)


def events(n: int = 6, offset: float = 0.0) -> pa.Table:
    """A small source table: ENTITY, TS (one a minute from T0), AMOUNT, LABEL, NOTE."""
    return pa.table({
        "ENTITY": pa.array([i % 3 for i in range(n)], pa.int64()),
        "TS": pa.array([T0 + dt.timedelta(minutes=i) for i in range(n)], pa.timestamp("us")),
        "AMOUNT": pa.array([10.5 * i + offset for i in range(n)], pa.float64()),
        "LABEL": pa.array([i % 2 for i in range(n)], pa.int64()),
        "NOTE": pa.array([None if i == 2 else f"n{i}" for i in range(n)], pa.string()),
    })


class OfflineStoreContract:
    """Source tables: write, replace, read, digest, and the errors for bad names."""

    @pytest.fixture
    def store(self):
        raise NotImplementedError("override the `store` fixture: return a fresh, empty OfflineStore")

    def test_read_gives_back_what_was_written(self, store):
        data = events()
        store.write_source("events", data)
        back = store.read_source("events")
        assert back.column_names == data.column_names
        assert back.to_pylist() == data.to_pylist()

    def test_read_some_columns_in_the_order_asked(self, store):
        store.write_source("events", events())
        back = store.read_source("events", ["AMOUNT", "ENTITY"])
        assert back.column_names == ["AMOUNT", "ENTITY"]
        assert back.column("AMOUNT").to_pylist() == events().column("AMOUNT").to_pylist()

    def test_unknown_column_is_an_error_naming_it(self, store):
        store.write_source("events", events())
        with pytest.raises(LabError, match="NOPE"):
            store.read_source("events", ["ENTITY", "NOPE"])

    def test_write_replaces_the_whole_table(self, store):
        store.write_source("events", events(6))
        store.write_source("events", events(2).select(["ENTITY", "TS"]))
        back = store.read_source("events")
        assert back.column_names == ["ENTITY", "TS"]
        assert back.num_rows == 2

    def test_write_returns_the_digest_that_source_digest_reports(self, store):
        digest = store.write_source("events", events())
        assert isinstance(digest, str) and len(digest) >= 32
        assert store.source_digest("events") == digest

    def test_digest_ignores_row_order_and_chunking(self, store):
        data = events(9)
        first = store.write_source("a", data)
        shuffled = data.take([4, 8, 0, 2, 6, 1, 7, 3, 5])
        rechunked = pa.concat_tables([shuffled.slice(0, 4), shuffled.slice(4)])
        assert store.write_source("b", rechunked) == first

    def test_digest_changes_when_one_value_does(self, store):
        first = store.write_source("events", events(6))
        assert store.write_source("events", events(6, offset=0.01)) != first
        assert store.source_digest("events") != first

    def test_each_source_keeps_its_own_digest(self, store):
        a = store.write_source("a", events(3))
        b = store.write_source("b", events(4))
        assert a != b
        assert (store.source_digest("a"), store.source_digest("b")) == (a, b)

    def test_missing_source_raises_not_found(self, store):
        store.write_source("events", events())
        with pytest.raises(NotFound, match="nothing_here"):
            store.source_digest("nothing_here")
        with pytest.raises(NotFound, match="nothing_here"):
            store.read_source("nothing_here")

    @pytest.mark.parametrize("bad", ["", "1abc", "has space", "semi;colon", 'quo"te'])
    def test_bad_source_name_is_refused_before_anything_is_written(self, store, bad):
        store.write_source("events", events())
        with pytest.raises(LabError):
            store.write_source(bad, events())
        assert store.read_source("events").num_rows == events().num_rows

    def test_scan_source_streams_a_window_of_days_in_time_order(self, store):
        days = [T0 + dt.timedelta(days=d, hours=h) for d in (0, 1, 2) for h in (5, -3, 1)]  # written out of order
        data = pa.table({"TS": pa.array(days, pa.timestamp("us")), "ID": pa.array(range(9), pa.int64())})
        store.write_source("events", data)
        day1 = (T0 + dt.timedelta(days=1)).date()
        chunks = list(store.scan_source("events", time_column="TS", start=day1, end=day1 + dt.timedelta(days=1),
                                        columns=["ID"], batch_rows=2))
        assert all(c.column_names == ["ID"] and 1 <= c.num_rows <= 2 for c in chunks)
        wanted = sorted((t, i) for i, t in enumerate(days) if day1 <= t.date() <= day1 + dt.timedelta(days=1))
        assert [i for c in chunks for i in c.column("ID").to_pylist()] == [i for _, i in wanted]
        assert list(store.scan_source("events", time_column="TS", start=day1, end=day1 - dt.timedelta(days=1))) == []
        with pytest.raises(LabError, match="NOPE"):
            list(store.scan_source("events", time_column="TS", start=day1, end=day1, columns=["NOPE"]))


SPEND = FeatureView(
    name="spend", entity="USER_ID", source="events", timestamp="TS",
    aggregations=(
        Aggregation("NB_1D", "AMOUNT", "count", dt.timedelta(days=1)),
        Aggregation("AVG_1D", "AMOUNT", "mean", dt.timedelta(days=1)),
    ),
)
PROFILE = FeatureView(name="profile", entity="CITY", source="cities", timestamp="TS", features=("NAME",))


SPEND_V2 = FeatureView(  # SPEND redefined: another version of the same view
    name="spend", entity="USER_ID", source="events", timestamp="TS",
    aggregations=(
        Aggregation("NB_1D", "AMOUNT", "count", dt.timedelta(days=1)),
        Aggregation("AVG_1D", "AMOUNT", "mean", dt.timedelta(days=2)),
    ),
)


def spend_rows(keys, counts=None, means=None, event_times=None) -> pa.Table:
    """Rows of ``SPEND``; with ``event_times``, also the ``EVENT_TIME`` column."""
    counts = counts if counts is not None else [i + 1 for i in range(len(keys))]
    means = means if means is not None else [1.5 * (i + 1) for i in range(len(keys))]
    columns = {"USER_ID": pa.array(keys, pa.int64()), "NB_1D": pa.array(counts, pa.int64()),
               "AVG_1D": pa.array(means, pa.float64())}
    if event_times is not None:
        columns[EVENT_TIME] = pa.array(event_times, pa.timestamp("us"))
    return pa.table(columns)


class OnlineStoreContract:
    """Write, read and watermark: replacement is whole, an upsert only touches its keys,
    reads keep key order, each row keeps its event and write time, view versions live
    side by side, and the serving path's ``read_with_watermark`` agrees with ``read``
    and ``watermark``."""

    @pytest.fixture
    def store(self):
        raise NotImplementedError("override the `store` fixture: return a fresh, empty OnlineStore")

    def test_never_materialized_view_has_no_watermark_and_no_rows(self, store):
        assert store.watermark(SPEND) is None
        assert store.read(SPEND, [1, 2]) == [None, None]

    def test_read_returns_features_in_key_order_none_for_unknown(self, store):
        assert store.write(SPEND, spend_rows([10, 20, 30]), T0) == 3
        got = store.read(SPEND, [30, 99, 10, 30])
        assert got == [{"NB_1D": 3, "AVG_1D": 4.5}, None, {"NB_1D": 1, "AVG_1D": 1.5}, {"NB_1D": 3, "AVG_1D": 4.5}]

    def test_watermark_is_the_as_of_time_written(self, store):
        store.write(SPEND, spend_rows([1]), T0)
        assert store.watermark(SPEND) == T0
        store.write(SPEND, spend_rows([1]), T0 + SECOND)
        assert store.watermark(SPEND) == T0 + SECOND

    def test_write_replaces_every_row_of_the_view(self, store):
        store.write(SPEND, spend_rows([1, 2, 3]), T0)
        store.write(SPEND, spend_rows([3, 4], counts=[7, 8]), T0 + SECOND)
        assert store.read(SPEND, [1, 2, 3, 4]) == [None, None, {"NB_1D": 7, "AVG_1D": 1.5},
                                                   {"NB_1D": 8, "AVG_1D": 3.0}]

    def test_views_are_kept_apart(self, store):
        store.write(SPEND, spend_rows([1]), T0)
        cities = pa.table({"CITY": ["paris", "oslo"], "NAME": ["Paris", "Oslo"]})
        store.write(PROFILE, cities, T0 + SECOND)
        assert store.read(PROFILE, ["oslo", "rome"]) == [{"NAME": "Oslo"}, None]
        assert store.read(SPEND, [1]) == [{"NB_1D": 1, "AVG_1D": 1.5}]
        assert store.watermark(SPEND) == T0

    def test_null_feature_values_come_back_as_none(self, store):
        store.write(SPEND, spend_rows([1, 2], counts=[0, 2], means=[None, 2.0]), T0)
        assert store.read(SPEND, [1]) == [{"NB_1D": 0, "AVG_1D": None}]

    def test_many_keys_are_read_in_order(self, store):
        keys = list(range(2500))
        store.write(SPEND, spend_rows(keys, counts=keys, means=[k / 2 for k in keys]), T0)
        wanted = [2499, -1, *range(0, 2500, 3)]
        got = store.read(SPEND, wanted)
        assert got[1] is None
        assert [g["NB_1D"] for g in got[:1] + got[2:]] == [2499, *range(0, 2500, 3)]

    def test_repeated_key_is_refused_and_old_rows_stay(self, store):
        store.write(SPEND, spend_rows([1, 2]), T0)
        with pytest.raises(LabError):
            store.write(SPEND, spend_rows([5, 5]), T0 + SECOND)
        assert store.read(SPEND, [1, 5]) == [{"NB_1D": 1, "AVG_1D": 1.5}, None]
        assert store.watermark(SPEND) == T0

    def test_read_with_watermark_gives_one_keys_row_and_its_materializations_watermark(self, store):
        assert store.read_with_watermark(SPEND, 1) == (None, None)  # never materialized
        store.write(SPEND, spend_rows([1, 2]), T0)
        assert store.read_with_watermark(SPEND, 2) == ({"NB_1D": 2, "AVG_1D": 3.0}, T0)
        assert store.read_with_watermark(SPEND, 3) == (None, T0)  # unknown key, known view
        assert store.read_with_watermark(PROFILE, "oslo") == (None, None)  # another view, never materialized
        store.write(SPEND, spend_rows([3], counts=[7]), T0 + SECOND)
        assert store.read_with_watermark(SPEND, 1) == (None, T0 + SECOND)
        assert store.read_with_watermark(SPEND, 3) == ({"NB_1D": 7, "AVG_1D": 1.5}, T0 + SECOND)

    def test_read_views_with_watermark_answers_as_one_view_at_a_time(self, store):
        # The server's per-request read: every pair as read_with_watermark answers it,
        # whichever views are materialized, for known and unknown keys.
        pairs = [(SPEND, 2), (PROFILE, "oslo"), (SPEND, 3)]
        assert store.read_views_with_watermark(pairs) == [(None, None)] * 3
        store.write(SPEND, spend_rows([1, 2]), T0)
        assert store.read_views_with_watermark(pairs) == [({"NB_1D": 2, "AVG_1D": 3.0}, T0), (None, None),
                                                          (None, T0)]
        store.write(PROFILE, pa.table({"CITY": ["oslo"], "NAME": ["Oslo"]}), T0 + SECOND)
        for pairs in ([(SPEND, 1), (PROFILE, "oslo")], [(PROFILE, "bergen"), (SPEND, 2)], [(SPEND, 9)], []):
            assert store.read_views_with_watermark(pairs) == [store.read_with_watermark(v, k) for v, k in pairs]
        assert store.read_views_with_watermark([(SPEND, 1), (PROFILE, "oslo")])[1] == ({"NAME": "Oslo"},
                                                                                       T0 + SECOND)
        with pytest.raises(LabError, match="materialize"):  # a version never written beside another
            store.read_views_with_watermark([(PROFILE, "oslo"), (SPEND_V2, 1)])

    def test_missing_feature_column_is_refused_naming_it(self, store):
        with pytest.raises(LabError, match="AVG_1D"):
            store.write(SPEND, spend_rows([1]).drop_columns(["AVG_1D"]), T0)
        assert store.watermark(SPEND) is None

    # -- incremental writes, row times, versions (``upsert``, ``row_times``, ``state``) ----------

    def test_upsert_replaces_only_the_keys_given_and_moves_the_watermark(self, store):
        store.write(SPEND, spend_rows([1, 2, 3]), T0)
        assert store.write(SPEND, spend_rows([3, 4], counts=[7, 8]), T0 + SECOND, upsert=True) == 2
        assert store.read(SPEND, [1, 2, 3, 4]) == [{"NB_1D": 1, "AVG_1D": 1.5}, {"NB_1D": 2, "AVG_1D": 3.0},
                                                   {"NB_1D": 7, "AVG_1D": 1.5}, {"NB_1D": 8, "AVG_1D": 3.0}]
        assert store.watermark(SPEND) == T0 + SECOND
        assert store.state(SPEND).rows == 4

    def test_upsert_of_nothing_only_moves_the_watermark(self, store):
        store.write(SPEND, spend_rows([1]), T0)
        assert store.write(SPEND, spend_rows([]), T0 + SECOND, upsert=True) == 0
        assert store.read_with_watermark(SPEND, 1) == ({"NB_1D": 1, "AVG_1D": 1.5}, T0 + SECOND)

    def test_upsert_into_a_view_never_written_creates_it(self, store):
        store.write(SPEND, spend_rows([5]), T0, upsert=True)
        assert store.read(SPEND, [5]) == [{"NB_1D": 1, "AVG_1D": 1.5}]
        assert store.watermark(SPEND) == T0

    def test_upsert_with_a_repeated_key_is_refused_and_nothing_changes(self, store):
        store.write(SPEND, spend_rows([1, 2]), T0)
        with pytest.raises(LabError, match="repeat"):
            store.write(SPEND, spend_rows([2, 2], counts=[5, 6]), T0 + SECOND, upsert=True)
        assert store.read(SPEND, [1, 2]) == [{"NB_1D": 1, "AVG_1D": 1.5}, {"NB_1D": 2, "AVG_1D": 3.0}]
        assert store.watermark(SPEND) == T0

    def test_rows_keep_their_event_time_and_write_time(self, store):
        before = dt.datetime.now(dt.timezone.utc)
        store.write(SPEND, spend_rows([1, 2], event_times=[T0 - SECOND, None]), T0)
        after = dt.datetime.now(dt.timezone.utc)
        first, second, unknown = store.row_times(SPEND, [1, 2, 3])
        assert unknown is None
        assert isinstance(first, RowTimes) and first.event_time == T0 - SECOND and second.event_time is None
        assert before <= first.written_at <= after and first.written_at.tzinfo is not None
        assert store.read(SPEND, [1]) == [{"NB_1D": 1, "AVG_1D": 1.5}]  # EVENT_TIME is no feature

    def test_upserted_rows_get_their_own_write_time(self, store):
        store.write(SPEND, spend_rows([1, 2], event_times=[T0, T0]), T0)
        (old,) = store.row_times(SPEND, [1])
        store.write(SPEND, spend_rows([2], event_times=[T0 + SECOND]), T0 + SECOND, upsert=True)
        kept, new = store.row_times(SPEND, [1, 2])
        assert kept == old
        assert new.event_time == T0 + SECOND and new.written_at >= old.written_at

    def test_rows_written_without_event_times_have_none(self, store):
        store.write(SPEND, spend_rows([1]), T0)
        (times,) = store.row_times(SPEND, [1])
        assert times.event_time is None and times.written_at.tzinfo is not None
        assert store.state(SPEND).newest_event_time is None

    def test_state_summarizes_a_view_version(self, store):
        assert store.state(SPEND) is None
        store.write(SPEND, spend_rows([1, 2, 3], event_times=[T0 - 3 * SECOND, T0 - SECOND, None]), T0)
        state = store.state(SPEND)
        assert (state.version, state.watermark, state.rows, state.newest_event_time) == (
            SPEND.version, T0, 3, T0 - SECOND)
        assert state.written_at.tzinfo is not None
        store.write(SPEND, spend_rows([4], event_times=[T0 + SECOND]), T0 + 2 * SECOND, upsert=True)
        state = store.state(SPEND)
        assert (state.watermark, state.rows, state.newest_event_time) == (T0 + 2 * SECOND, 4, T0 + SECOND)

    def test_versions_of_a_view_live_side_by_side(self, store):
        """A changed definition is a new version: writing it leaves the old version's rows
        and watermark readable by the old definition (a model trained on it)."""
        assert SPEND_V2.version != SPEND.version
        store.write(SPEND, spend_rows([1]), T0)
        store.write(SPEND_V2, spend_rows([1], counts=[9]), T0 + SECOND)
        assert store.read(SPEND, [1]) == [{"NB_1D": 1, "AVG_1D": 1.5}]
        assert store.read_with_watermark(SPEND, 1) == ({"NB_1D": 1, "AVG_1D": 1.5}, T0)
        assert store.read_with_watermark(SPEND_V2, 1) == ({"NB_1D": 9, "AVG_1D": 1.5}, T0 + SECOND)
        assert (store.watermark(SPEND), store.watermark(SPEND_V2)) == (T0, T0 + SECOND)
        assert store.state(SPEND).version == SPEND.version and store.state(SPEND_V2).rows == 1

    def test_a_version_never_written_beside_another_is_refused_naming_materialize(self, store):
        store.write(SPEND, spend_rows([1]), T0)
        with pytest.raises(LabError, match="materialize"):
            store.read(SPEND_V2, [1])
        with pytest.raises(LabError, match="materialize"):
            store.read_with_watermark(SPEND_V2, 1)
        with pytest.raises(LabError, match="materialize"):
            store.row_times(SPEND_V2, [1])
        assert store.state(SPEND_V2) is None  # state only tells: this version was never written
