"""The leakage audit of training sets (``lab.features.audit``): ages and missing shares
against a brute-force oracle, violations found when a join leaks (exactly the rows it
changed, naming the view), the audit next to the set, its digest in the registry, and
``lab features audit``. Generic: random events of no domain and a latest-value view; the
fraud lab only for the command line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.features.audit import (LeakageError, audit_path, audit_training_set, audited_training_set, check_audit,
                                read_audit, write_audit)
from lab.features.training import training_set
from lab.features.views import FeatureView
from lab.registry import Registry
from lab.testing.events import EVENT_VIEWS, SOURCE, random_events
from lab.testing.reference import reference_features
from plugins.duckdb_offline import DuckDBOfflineStore
from tests._helpers import run_lab as lab
from tests.test_pit_properties import latest_view, probe_table, src_table, windowed_view

DAY, S = dt.timedelta(days=1), dt.timedelta(seconds=1)
LAST = FeatureView(name="last_amount", entity="USER_ID", source="amounts", timestamp="EVENT_TIME",
                   features=("LAST_AMOUNT",), ttl=2 * DAY, label_delay=3 * DAY)
VIEWS = (*EVENT_VIEWS, LAST)
FEATURES = [f for v in VIEWS for f in v.feature_names]
START, END = dt.date(2018, 4, 20), dt.date(2018, 4, 30)


class LeakyStore(DuckDBOfflineStore):
    """A broken offline store: it forgets every view's label delay."""

    def get_historical_features(self, entity_rows, views, timestamp_column):
        views = [dataclasses.replace(v, label_delay=dt.timedelta(0)) for v in views]
        return super().get_historical_features(entity_rows, views, timestamp_column)


@pytest.fixture(scope="module")
def events():
    return random_events(n_users=30, n_items=12, nb_days=40, seed=5)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, events):
    folder = tmp_path_factory.mktemp("audit")
    good, leaky = DuckDBOfflineStore(folder / "good.duckdb"), LeakyStore(folder / "leaky.duckdb")
    amounts = events.select("USER_ID", "EVENT_TIME", pl.col("AMOUNT").alias("LAST_AMOUNT"))
    for store in (good, leaky):
        store.write_source(SOURCE, events.to_arrow())
        store.write_source("amounts", amounts.to_arrow())
    return good, leaky


def build(store):
    return training_set(store, VIEWS, START, END, request_features=lambda f: f, feature_columns=FEATURES,
                        source=SOURCE, id_column="EVENT_ID", time_column="EVENT_TIME", label="LABEL")


def oracle_ages(events, table, view) -> list[float | None]:
    """Brute force: per row, t - e of the newest source row with e <= t - d within reach."""
    reach = min(view.ttl, max(a.window for a in view.aggregations)) if view.aggregations else view.ttl
    rows = [(r[view.entity], r[view.timestamp]) for r in events.select(view.entity, view.timestamp).to_dicts()]
    out = []
    for row in table.select([view.entity, "EVENT_TIME"]).to_pylist():
        k, t = row[view.entity], row["EVENT_TIME"]
        b = t - view.label_delay
        inside = [e for kk, e in rows if kk == k and e <= b and
                  (b - e < reach if view.aggregations else b - e <= reach)]
        out.append((t - max(inside)).total_seconds() if inside else None)
    return out


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_ages_and_missing_shares_agree_with_brute_force(stores, events):
    table, digest = build(stores[0])
    audit = audit_training_set(stores[0], VIEWS, table, time_column="EVENT_TIME", id_column="EVENT_ID",
                               digest=digest)
    assert audit["ok"] and audit["rows"] == table.num_rows > 300 and audit["training_set_digest"] == digest
    for view in VIEWS:
        got = audit["views"][view.name]
        ages = oracle_ages(events, table, view)
        present = [a for a in ages if a is not None]
        assert got["violations"] == 0 and got["version"] == view.version
        assert got["missing"] == ages.count(None) and got["share_missing"] == ages.count(None) / len(ages)
        assert got["age_s"] == {"min": min(present), "max": max(present),
                                **{f"p{p}": nearest_rank(present, p) for p in (50, 95, 99)}}
        assert got["age_s"]["min"] >= view.label_delay.total_seconds()
    # the latest-value view misses some rows (ttl 2 days): the share is not trivially 0
    assert 0 < audit["views"]["last_amount"]["share_missing"] < 1
    assert audit["views"]["item_label_rate"]["hidden_by_delay"] > 0
    assert audit["views"]["user_activity"]["hidden_by_delay"] == 0  # no delay, nothing hidden


def test_a_join_that_ignores_the_label_delay_is_caught_row_by_row(stores, events):
    good, _ = build(stores[0])
    leaked, _ = build(stores[1])
    audit = audit_training_set(stores[1], VIEWS, leaked, time_column="EVENT_TIME", id_column="EVENT_ID")
    assert not audit["ok"]
    assert audit["views"]["user_activity"]["violations"] == 0  # delay 0: the leak changes nothing
    for view in VIEWS[1:]:
        names = view.feature_names
        changed = [g["EVENT_ID"] for g, b in zip(good.to_pylist(), leaked.to_pylist())
                   if any(g[n] != b[n] for n in names)]
        got = audit["views"][view.name]
        assert got["violations"] == len(changed) > 0, view.name
        assert got["violation_examples"] == changed[:5]
    with pytest.raises(LeakageError, match=r"view 'item_label_rate': \d+ of \d+ rows .* \(e.g. EVENT_ID \d+"):
        check_audit(audit)


def test_the_audited_build_fails_before_writing_naming_the_view(stores):
    class Spec:  # what audited_training_set reads of a ModelSpec
        source, id_column, time_column, label, carry, features = SOURCE, "EVENT_ID", "EVENT_TIME", "LABEL", (), FEATURES

        @staticmethod
        def request_frame(frame):
            return frame

    table, digest, audit = audited_training_set(stores[0], VIEWS, Spec, START, END)
    assert audit["ok"] and audit["training_set_digest"] == digest and table.num_rows == audit["rows"]
    with pytest.raises(LeakageError) as caught:
        audited_training_set(stores[1], VIEWS, Spec, START, END)
    message = str(caught.value)
    assert "'item_label_rate'" in message and "'last_amount'" in message and "'user_activity'" not in message
    assert "nothing was written" in message


def test_write_and_read_back_with_the_digest_of_the_bytes(tmp_path, stores):
    table, digest = build(stores[0])
    audit = audit_training_set(stores[0], VIEWS, table, time_column="EVENT_TIME", digest=digest)
    target = audit_path(tmp_path / "sets" / "train.parquet")
    assert target.name == "train.audit.json"
    written = write_audit(target, audit)
    assert written == hashlib.sha256(target.read_bytes()).hexdigest()
    assert read_audit(target) == (json.loads(target.read_text()), written)
    # the same training set gives the same audit, byte for byte
    assert write_audit(tmp_path / "again.audit.json", audit_training_set(
        stores[0], VIEWS, build(stores[0])[0], time_column="EVENT_TIME", digest=digest)) == written


def test_bad_inputs_are_named(stores):
    table, _ = build(stores[0])
    from lab.errors import LabError, NotFound
    with pytest.raises(LabError, match="no time column 'WHEN'"):
        audit_training_set(stores[0], VIEWS, table, time_column="WHEN")
    with pytest.raises(LabError, match="no 'ITEM_ID' column, the key of view 'item_label_rate'"):
        audit_training_set(stores[0], VIEWS, table.drop_columns(["ITEM_ID"]), time_column="EVENT_TIME")
    with pytest.raises(NotFound, match="no leakage audit at"):
        read_audit("/nonexistent/x.audit.json")


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.one_of(st.integers(1, 3), st.none()), st.integers(-12, 12),
                               st.one_of(st.none(), st.integers(-8, 8).map(lambda n: n / 4))), max_size=14),
       probes=st.lists(st.tuples(st.one_of(st.integers(1, 4), st.none()), st.integers(-12, 12)), min_size=1,
                       max_size=10),
       ttl=st.integers(1, 15), delay=st.integers(1, 6), window=st.integers(1, 15))
def test_property_the_audit_flags_exactly_the_rows_a_leak_changes(tmp_path, rows, probes, ttl, delay, window):
    """On generated data: the store's retrieval passes the audit; a retrieval without the
    label delay fails it on exactly the rows whose oracle values differ."""
    store = DuckDBOfflineStore(tmp_path / "p.duckdb")
    src, entity = src_table(rows), probe_table(probes).append_column("ID", pa.array(range(len(probes))))
    store.write_source("ev", src)
    views = [latest_view(ttl * S, delay * S), windowed_view(ttl * S, delay * S, [window * S], None)]
    honest = store.get_historical_features(entity, views, "T")
    audit = audit_training_set(store, views, honest, time_column="T", id_column="ID")
    assert audit["ok"], audit
    leaky_views = [dataclasses.replace(v, label_delay=dt.timedelta(0)) for v in views]
    leaked = store.get_historical_features(entity, leaky_views, "T")
    audit = audit_training_set(store, views, leaked, time_column="T", id_column="ID")
    want = reference_features({"ev": src}, entity, views, "T")
    for view in views:
        differ = [i for i, (w, g) in enumerate(zip(want, leaked.to_pylist()))
                  if any(w[n] != g[n] for n in view.feature_names)]
        assert audit["views"][view.name]["violations"] == len(differ)
        assert audit["views"][view.name]["violation_examples"] == differ[:5]


# -- the command line, on a small fraud lab ---------------------------------------------

def test_training_set_command_writes_the_audit_and_records_its_digest(small_fraud_lab, capsys):
    out = small_fraud_lab / "sets" / "train.parquet"
    assert lab(small_fraud_lab, "features", "training-set", "--start", "2018-04-10", "--end", "2018-04-16",
               "--out", str(out)) == 0
    printed = capsys.readouterr().out
    target = small_fraud_lab / "sets" / "train.audit.json"
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert f"leakage audit {target}  digest {digest}" in printed
    assert "customer_spending" in printed and "terminal_risk" in printed
    audit = json.loads(target.read_text())
    table = pq.read_table(out)
    with Registry.open(small_fraud_lab / "registry.db", project_root=small_fraud_lab) as reg:
        record = reg.get_dataset(audit["training_set_digest"])
        assert reg.list_datasets(kind="training_set", limit=1)[0]["id"] == record["id"]
    assert record["meta"]["leakage_audit"] == {"digest": digest, "path": str(target)}
    assert audit["ok"] and audit["rows"] == table.num_rows and set(audit["views"]) == {"customer_spending",
                                                                                       "terminal_risk"}
    assert audit["views"]["terminal_risk"]["age_s"]["min"] >= audit["views"]["terminal_risk"]["label_delay_s"] > 0

    for argv in ((str(out),), (str(target),), ("--model", "fraud"), ()):
        assert lab(small_fraud_lab, "features", "audit", *argv) == 0, argv
        shown = capsys.readouterr().out
        assert f"digest {digest}" in shown and f"dataset {record['id']}" in shown and "terminal_risk" in shown
    assert lab(small_fraud_lab, "features", "audit", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {**audit, "digest": digest, "path": str(target)}


def test_audit_command_errors_name_the_fix(small_fraud_lab, tmp_path, capsys):
    out = small_fraud_lab / "sets" / "tampered.parquet"
    assert lab(small_fraud_lab, "features", "training-set", "--start", "2018-04-10", "--end", "2018-04-11",
               "--out", str(out)) == 0
    target = audit_path(out)
    target.write_text(target.read_text().replace('"ok": true', '"ok": true '))
    capsys.readouterr()
    assert lab(small_fraud_lab, "features", "audit", str(out)) != 0
    err = capsys.readouterr().err
    assert "changed since it was written" in err and "Traceback" not in err
    assert lab(small_fraud_lab, "features", "audit", str(tmp_path / "none.parquet")) != 0
    assert "no leakage audit at" in capsys.readouterr().err
    assert lab(small_fraud_lab, "features", "audit", str(tmp_path / "x.csv")) != 0
    assert "neither a training set" in capsys.readouterr().err
    assert lab(small_fraud_lab, "features", "audit", str(out), "--model", "fraud") != 0
    assert "not both" in capsys.readouterr().err


def test_the_delivery_lab_s_training_set_passes_its_audit(tmp_path):
    """A second, regression lab made from its template: its own views, label delay and
    spec, audited with nothing fraud-specific."""
    import importlib.util

    from lab.scaffold import available_templates, find_template, init_lab

    lab_dir = init_lab(tmp_path / "eta", find_template("delivery", available_templates()))
    spec_file = importlib.util.spec_from_file_location("delivery_lab_for_audit", lab_dir / "delivery_lab.py")
    dl = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(dl)
    orders = dl.simulate_orders(n_stores=8, n_couriers=12, orders_per_day=150, days=10, start_date="2024-03-01", seed=3)
    store = DuckDBOfflineStore(tmp_path / "offline.duckdb")
    store.write_source(dl.MODEL.source, orders.to_arrow())
    table, digest, audit = audited_training_set(store, dl.VIEWS, dl.MODEL, dt.date(2024, 3, 4), dt.date(2024, 3, 8))
    assert audit["ok"] and audit["rows"] == table.num_rows > 0 and set(audit["views"]) == {v.name for v in dl.VIEWS}
    for view in dl.VIEWS:
        got = audit["views"][view.name]
        assert got["features_checked"] and got["violations"] == 0
        if got["age_s"]:
            assert got["age_s"]["min"] >= view.label_delay.total_seconds()
