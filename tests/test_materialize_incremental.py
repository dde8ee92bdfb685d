"""Incremental materialization: from a view's watermark, only the entities whose values
can change are recomputed and upserted, and the store then equals a full
materialization at the new time, row for row, event times included; late rows within
the lookback are caught, older ones by a backfill; a changed definition is a new
version materialized whole, beside the old one."""

from __future__ import annotations

import dataclasses
import datetime as dt

import polars as pl
import pyarrow as pa
import pytest

from lab.cli import main
from lab.errors import LabError
from lab.features.materialize import backfill, entity_rows_at, materialize, materialize_view
from lab.features.views import FeatureView
from lab.testing.events import EVENT_VIEWS, SOURCE, random_events
from plugins.duckdb_offline import DuckDBOfflineStore
from plugins.sqlite_online import SQLiteOnlineStore
from tests.conftest import fraud_lab_with_transactions

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
LAST_AMOUNT = FeatureView(name="last_amount", entity="USER_ID", source=SOURCE, timestamp="EVENT_TIME",
                          features=("AMOUNT",), ttl=3 * DAY)
VIEWS = (*EVENT_VIEWS, LAST_AMOUNT)


@pytest.fixture
def offline(tmp_path):
    return DuckDBOfflineStore(tmp_path / "offline.duckdb")


@pytest.fixture
def stores(tmp_path):
    """(incremental, reference): two online stores."""
    a, b = SQLiteOnlineStore(tmp_path / "incremental.db"), SQLiteOnlineStore(tmp_path / "full.db")
    yield a, b
    a.close()
    b.close()


def snapshot(offline, online, view, as_of) -> dict:
    """Every entity of the source: its stored features and event time."""
    keys = entity_rows_at(offline, view, as_of).column(view.entity).to_pylist()
    rows = online.read(view, keys)
    times = online.row_times(view, keys)
    return {k: (r, t.event_time if t else "missing") for k, r, t in zip(keys, rows, times)}


def assert_equal_to_full(offline, incremental, reference, as_of):
    materialize(offline, reference, VIEWS, as_of)
    for view in VIEWS:
        assert incremental.watermark(view) == as_of
        assert snapshot(offline, incremental, view, as_of) == snapshot(offline, reference, view, as_of), view.name
        assert incremental.state(view).rows == reference.state(view).rows
        assert incremental.state(view).newest_event_time == reference.state(view).newest_event_time


def test_incremental_steps_equal_a_full_materialization_each_time(offline, stores):
    incremental, reference = stores
    events = random_events(n_users=50, n_items=30, nb_days=60, seed=3)
    offline.write_source(SOURCE, events.to_arrow())
    start = dt.datetime(2018, 4, 20, 13, 20)
    # small steps (a few entities), steps onto the 10-minute grid and across window and
    # ttl edges, and a long one past every ttl
    steps = [start, start + dt.timedelta(minutes=10), start + DAY + 5 * HOUR,
             start + 7 * DAY + dt.timedelta(minutes=7), start + 31 * DAY, start + 70 * DAY]
    modes = []
    for as_of in steps:
        done = [materialize_view(offline, incremental, view, as_of, lookback=dt.timedelta(0)) for view in VIEWS]
        modes.append({d.mode for d in done})
        assert_equal_to_full(offline, incremental, reference, as_of)
        if modes[-1] == {"incremental"} and as_of - done[0].since <= HOUR:
            assert all(d.written < d.rows for d in done)  # a short step touches few entities
    assert modes[0] == {"full"} and all(m == {"incremental"} for m in modes[1:])


def test_late_rows_within_the_lookback_are_caught_older_ones_by_a_backfill(offline, stores):
    incremental, reference = stores
    events = random_events(n_users=30, n_items=20, nb_days=40, seed=4)
    as_of = dt.datetime(2018, 5, 1, 12, 0)
    late = pl.DataFrame({"EVENT_ID": [10**6, 10**6 + 1], "USER_ID": [7, 8], "ITEM_ID": [3, 4],
                         "EVENT_TIME": [as_of - dt.timedelta(minutes=30), as_of - 3 * HOUR],
                         "AMOUNT": [999.0, 555.0], "LABEL": [0, 0]}).select(events.columns)
    late = late.cast(dict(events.schema))
    offline.write_source(SOURCE, events.to_arrow())
    for view in VIEWS:
        materialize_view(offline, incremental, view, as_of)
    offline.write_source(SOURCE, pl.concat([events, late]).to_arrow())  # both rows arrive after the watermark
    later = as_of + dt.timedelta(minutes=10)
    for view in VIEWS:
        materialize_view(offline, incremental, view, later, lookback=HOUR)
    materialize(offline, reference, VIEWS, later)
    # the row 30 minutes late is in; the one 3 hours late is not yet
    assert incremental.read(LAST_AMOUNT, [7]) == reference.read(LAST_AMOUNT, [7]) == [{"AMOUNT": 999.0}]
    assert incremental.read(LAST_AMOUNT, [8]) != reference.read(LAST_AMOUNT, [8])
    done = backfill(offline, incremental, LAST_AMOUNT, as_of - DAY, as_of)
    assert (done.mode, done.as_of) == ("backfill", later)
    assert incremental.watermark(LAST_AMOUNT) == later  # a backfill does not move the watermark
    assert snapshot(offline, incremental, LAST_AMOUNT, later) == snapshot(offline, reference, LAST_AMOUNT, later)


def test_a_changed_definition_is_a_new_version_materialized_whole_beside_the_old(offline, stores):
    online, _ = stores
    offline.write_source(SOURCE, random_events(n_users=20, n_items=10, nb_days=20, seed=5).to_arrow())
    as_of = dt.datetime(2018, 4, 15)
    assert materialize_view(offline, online, LAST_AMOUNT, as_of).mode == "full"
    old_rows = online.read(LAST_AMOUNT, list(range(20)))
    changed = dataclasses.replace(LAST_AMOUNT, ttl=DAY)
    done = materialize_view(offline, online, changed, as_of + HOUR)
    assert done.mode == "full" and online.watermark(changed) == as_of + HOUR
    assert online.read(LAST_AMOUNT, list(range(20))) == old_rows  # the old model's values stay
    assert online.watermark(LAST_AMOUNT) == as_of


def test_going_back_in_time_or_full_rewrites_the_view(offline, stores):
    online, _ = stores
    offline.write_source(SOURCE, random_events(n_users=20, n_items=10, nb_days=20, seed=6).to_arrow())
    as_of = dt.datetime(2018, 4, 15)
    materialize_view(offline, online, LAST_AMOUNT, as_of)
    assert materialize_view(offline, online, LAST_AMOUNT, as_of - DAY).mode == "full"
    assert materialize_view(offline, online, LAST_AMOUNT, as_of, full=True).mode == "full"
    assert materialize_view(offline, online, LAST_AMOUNT, as_of + HOUR).mode == "incremental"
    with pytest.raises(LabError, match="negative"):
        materialize_view(offline, online, LAST_AMOUNT, as_of, lookback=-HOUR)
    with pytest.raises(LabError, match="swap"):
        backfill(offline, online, LAST_AMOUNT, as_of, as_of - DAY)
    fresh = SQLiteOnlineStore(online.path.with_name("other.db"))
    with pytest.raises(LabError, match="materialize"):
        backfill(offline, fresh, LAST_AMOUNT, as_of - DAY, as_of)
    fresh.close()


# -- the command -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    return fraud_lab_with_transactions(tmp_path_factory.mktemp("lab"),
                                       n_customers=30, n_terminals=40, nb_days=20, seed=2)


def lab(root, *argv) -> int:
    return main(["--root", str(root), *argv])


def test_materialize_command_runs_full_then_incremental_then_backfill(lab_root, capsys):
    assert lab(lab_root, "features", "materialize", "--as-of", "2018-04-15T00:00:00") == 0
    first = capsys.readouterr().out
    assert first.count(" full ") == 2
    assert lab(lab_root, "features", "materialize", "--as-of", "2018-04-15T06:00:00", "--lookback", "30m") == 0
    second = capsys.readouterr().out
    assert second.count(" incremental ") == 2 and "since 2018-04-15T00:00:00" in second
    assert lab(lab_root, "features", "materialize", "--backfill", "--start", "2018-04-10", "--end", "2018-04-11",
               "--view", "customer_spending") == 0
    third = capsys.readouterr().out
    assert "customer_spending" in third and " backfill " in third and "terminal_risk" not in third
    assert "as of 2018-04-15T06:00:00" in third


@pytest.mark.parametrize("argv, message", [
    (["--lookback", "soon"], "--lookback 'soon' is not a duration"),
    (["--lookback=-5m"], "--lookback '-5m' is not a duration"),
    (["--backfill", "--start", "2018-04-10"], "--backfill needs --start and --end"),
    (["--start", "2018-04-10", "--end", "2018-04-11"], "belong to --backfill"),
    (["--backfill", "--start", "2018-04-12", "--end", "2018-04-11"], "swap them"),
    (["--backfill", "--full", "--start", "2018-04-10", "--end", "2018-04-11"], "do not go together"),
    (["--view", "nope"], "no feature view 'nope'"),
])
def test_materialize_command_refuses_bad_flags_naming_them(lab_root, capsys, argv, message):
    assert lab(lab_root, "features", "materialize", *argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- versions: old models keep reading theirs -------------------------------------------


def test_a_definition_round_trips_with_its_version():
    from lab.features.views import FeatureView

    for view in VIEWS:
        again = FeatureView.from_definition(view.definition(), description=view.description)
        assert again == view and again.version == view.version


def test_pin_views_reads_the_version_a_model_was_trained_on_while_the_store_holds_it(offline, stores):
    from lab.features.stores import pin_views

    online, _ = stores
    offline.write_source(SOURCE, random_events(n_users=10, n_items=5, nb_days=10, seed=8).to_arrow())
    old = dataclasses.replace(LAST_AMOUNT, ttl=DAY)
    materialize_view(offline, online, old, dt.datetime(2018, 4, 8))
    current = dataclasses.replace(LAST_AMOUNT, freshness=HOUR)
    (pinned,) = pin_views([current], {"last_amount": old.version}, online)
    assert pinned.version == old.version and pinned.ttl == DAY and pinned.freshness == HOUR
    assert pin_views([current], {"last_amount": "0123456789ab"}, online) == [current]  # not held: current
    assert pin_views([current], None, online) == [current]


def test_all_versions_brings_earlier_versions_up_to_date_too(lab_root, capsys):
    from lab.config import load_config
    from lab.plugins import feature_views, get_plugin_manager

    config = load_config(lab_root)
    view = feature_views(get_plugin_manager(config), config)["customer_spending"]
    old = dataclasses.replace(view, ttl=view.ttl * 2)
    offline = DuckDBOfflineStore(config.offline_store_path)
    online = SQLiteOnlineStore(config.online_store_path)
    try:
        materialize_view(offline, online, old, dt.datetime(2018, 4, 12))
        assert lab(lab_root, "features", "materialize", "--all-versions", "--view", "customer_spending",
                   "--as-of", "2018-04-16T00:00:00") == 0
        out = capsys.readouterr().out
        assert f"customer_spending@{old.version}" in out
        assert online.watermark(old) == online.watermark(view) == dt.datetime(2018, 4, 16)
    finally:
        online.close()


def test_a_model_trained_on_an_earlier_view_version_keeps_reading_it(tmp_path):
    """A model version whose lineage names an earlier version of a view reads that
    version's rows; the model trained on the current definition reads the current ones."""
    from lab import load_model
    from lab.config import load_config
    from lab.plugins import feature_views, get_plugin_manager
    from lab.registry import Registry
    from plugins.fraud.testing import build_tiny_lab

    tiny = build_tiny_lab(tmp_path / "lab")
    config = load_config(tiny.root)
    pm = get_plugin_manager(config)
    view = feature_views(pm, config)["customer_spending"]
    old = dataclasses.replace(view, ttl=view.ttl * 2)
    customer = tiny.customers[0]
    store = pm.hook.lab_online_store(config=config)
    store.write(old, pa.table({view.entity: [customer],
                               **{n: [7] if "NB_TX" in n else [7.5] for n in view.feature_names}}), tiny.watermark)
    store.close()
    with Registry.open(config.registry_path, project_root=tiny.root) as registry:
        first = registry.get_model_version("fraud", tiny.model_version)
        trained_before = registry.register_model(
            "fraud", run_id=None, flavor=first.flavor, artifact_path=first.artifact_path, metrics={},
            lineage={"feature_views": {"customer_spending": old.version, "terminal_risk": "0123456789ab"}})
    request = {view.entity: customer, "TERMINAL_ID": tiny.terminals[0]}
    when = tiny.watermark + HOUR
    for ref, wanted in ((f"fraud@{trained_before.version}", old.version), (f"fraud@{tiny.model_version}", view.version)):
        predictor = load_model(ref, root=tiny.root, ledger=False)
        try:
            views = {v.name: v.version for v in predictor.assembler.views}
            assert views["customer_spending"] == wanted
            row = predictor.assembler.rows(request, when)[0]["customer_spending"]
            assert (row["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 7) == (wanted == old.version)
        finally:
            predictor.close()
