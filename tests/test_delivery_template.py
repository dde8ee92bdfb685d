"""The delivery template as a lab: its simulator, feature views and model spec, checked on a
real DuckDB offline store, then the whole lab from `lab init` to a served forecast."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lab.config import load_config
from lab.errors import LabError
from lab.features.training import training_set
from lab.modelspec import ModelSpec
from lab.plugins import make_plugin_manager
from lab.scaffold import available_templates, find_template, init_lab
from lab.testing.modelspec import ModelSpecContract
from lab.testing.reference import reference_features
from tests._helpers import free_port

LAB = Path(sys.executable).parent / "lab"
SMALL = dict(n_stores=8, n_couriers=12, orders_per_day=150, days=10, start_date="2024-03-01", seed=3)


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory) -> Path:
    return init_lab(tmp_path_factory.mktemp("labs") / "eta", find_template("delivery", available_templates()))


@pytest.fixture(scope="module")
def dl(lab_dir):
    """The new lab's plugin module, imported from its file (not left in sys.modules)."""
    spec = importlib.util.spec_from_file_location("delivery_lab_under_test", lab_dir / "delivery_lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(tmp_path):
    """The real offline store, from the lab_offline_store hook, in a fresh folder."""
    pm = make_plugin_manager(entry_points=False)
    store = pm.hook.lab_offline_store(config=load_config(tmp_path))
    yield store
    store.close()


def trainset(dl, offline, orders: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    spec = dl.MODEL
    offline.write_source(spec.source, orders.to_arrow())
    table, _ = training_set(offline, dl.VIEWS, start, end, request_features=spec.request_frame,
                            feature_columns=list(spec.features), source=spec.source, id_column=spec.id_column,
                            time_column=spec.time_column, label=spec.label, carry=list(spec.carry))
    return pl.from_arrow(table)


# ---------------------------------------------------------------------------- simulator

def test_the_simulator_is_deterministic(dl):
    a, b = dl.simulate_orders(**SMALL), dl.simulate_orders(**SMALL)
    assert a.equals(b)
    assert not a.equals(dl.simulate_orders(**{**SMALL, "seed": 4}))


def test_simulated_orders_fit_the_request_schema_and_the_label_delay(dl):
    orders = dl.simulate_orders(**SMALL)
    n = orders.height
    assert 0.8 * 150 * 10 < n < 1.3 * 150 * 10
    assert orders["ORDER_ID"].to_list() == list(range(1, n + 1))
    assert orders["ORDERED_AT"].is_sorted()
    assert orders["ORDERED_AT"].min() >= dt.datetime(2024, 3, 1)
    assert orders["ORDERED_AT"].max() < dt.datetime(2024, 3, 11)
    assert orders["STORE_ID"].is_between(1, 8).all() and orders["COURIER_ID"].is_between(1, 12).all()
    schema = dl.MODEL.request
    for name in ("DISTANCE_KM", "N_ITEMS"):
        f = schema.field(name)
        assert orders[name].is_between(f.ge, f.le).all(), name
    # A delivery is over before the views read its order: no label leaks into features.
    assert orders["DELIVERY_MINUTES"].max() <= dl.MAX_MINUTES
    assert dt.timedelta(minutes=dl.MAX_MINUTES) < dl.LABEL_DELAY
    assert orders.null_count().sum_horizontal().item() == 0


def test_bad_simulator_settings_name_the_key(dl):
    with pytest.raises(LabError, match=r"\[tool.lab.delivery\] n_stores must be a whole number"):
        dl.simulate_orders(**{**SMALL, "n_stores": 0})
    with pytest.raises(LabError, match="start_date 'March' is not a date"):
        dl.simulate_orders(**{**SMALL, "start_date": "March"})


def test_the_simulate_stage_writes_the_orders(dl, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.lab]\n")
    summary = dl.simulate(tmp_path, tmp_path / "runs" / "r1", **SMALL)
    written = pl.read_parquet(tmp_path / "data" / "orders.parquet")
    assert written.equals(dl.simulate_orders(**SMALL))
    assert summary["orders"] == written.height and summary["path"] == "data/orders.parquet"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["orders.parquet"]  # no temp file left


def test_a_misspelt_simulator_key_is_not_ignored(dl, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.lab.delivery]\nn_store = 3\n")
    with pytest.raises(LabError, match=r"unknown key\(s\) n_store in \[tool.lab.delivery\]; known keys are: days, "):
        dl.simulate(tmp_path, tmp_path / "runs" / "r1", **SMALL)
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------- spec and hooks

def test_the_hooks_declare_the_model_and_its_views(dl, lab_dir):
    config = load_config(lab_dir)
    [spec] = dl.lab_model_specs(config)
    assert isinstance(spec, ModelSpec) and spec.name == config.model_name
    assert (spec.task, spec.metric, spec.label) == ("regression", "mae", "DELIVERY_MINUTES")
    views = {v.name: v for v in dl.lab_feature_views(config)}
    assert list(views) == list(spec.views)
    view_columns = [c for name in spec.views for c in views[name].feature_names]
    assert list(spec.features) == [*dl.REQUEST_NUMBERS, *dl.CALENDAR_RULES, *view_columns]
    assert {views[v].entity for v in spec.views} == set(spec.request.entities)
    assert all(views[v].label_delay == dl.LABEL_DELAY for v in spec.views)


def test_the_example_request_is_valid(dl):
    schema = dl.MODEL.request
    example = schema.example_request()
    for f in schema.fields:
        value = example[f.name]
        if f.ge is not None:
            assert f.ge <= value <= f.le, f.name
    row = dl.request_row(example, {"store_prep": None, "courier_pace": None})
    assert list(row) == list(dl.MODEL.features)


class TestDeliverySpecContract(ModelSpecContract):
    """The platform's contract for a lab's model spec, on simulated orders."""

    @pytest.fixture
    def spec(self, dl):
        return dl.MODEL

    @pytest.fixture
    def events(self, dl):
        return dl.simulate_orders(**{**SMALL, "days": 2})

    @pytest.fixture
    def views_by_name(self, dl):
        return {v.name: v for v in dl.VIEWS}


@pytest.mark.parametrize("when, hour, rush, weekend", [
    ("2024-03-08T10:59:59", 10, 0, 0),   # Friday, before lunch
    ("2024-03-08T11:00:00", 11, 1, 0),
    ("2024-03-08T13:59:59", 13, 1, 0),
    ("2024-03-08T14:00:00", 14, 0, 0),
    ("2024-03-08T17:59:59", 17, 0, 0),
    ("2024-03-08T18:00:00", 18, 1, 0),
    ("2024-03-08T20:59:59", 20, 1, 0),
    ("2024-03-08T23:59:59", 23, 0, 0),
    ("2024-03-09T00:00:00", 0, 0, 1),    # Saturday
    ("2024-03-10T23:59:59", 23, 0, 1),   # Sunday
    ("2024-03-11T00:00:00", 0, 0, 0),    # Monday
    ("2024-03-09T12:30:00+02:00", 10, 0, 1),  # an offset: read in UTC, as the store does
])
def test_request_time_features_agree_for_frames_and_single_requests(dl, when, hour, rush, weekend):
    expected = {"HOUR_OF_DAY": hour, "IS_RUSH_HOUR": rush, "IS_WEEKEND": weekend}
    moment = dt.datetime.fromisoformat(when)
    assert dl.calendar_row(moment) == expected
    frame = pl.DataFrame({"ORDERED_AT": [moment]})
    assert dl.request_frame(frame).select(list(expected)).row(0, named=True) == expected


# ---------------------------------------------------------------------------- point in time

T = dt.datetime(2024, 3, 10, 12, 0, 0)  # a Sunday, at lunch
S = dt.timedelta(seconds=1)


def hand_orders() -> pl.DataFrame:
    """Store 1 and courier 7 with orders around every bound; orders 100 and 101 are asked at T."""
    rows = [  # (id, time, store, courier, prep, min_per_km)
        (1, T - dt.timedelta(days=8), 1, 7, 50.0, 9.0),             # older than 7 days + delay
        (2, T - dt.timedelta(days=1, hours=2), 1, 7, 40.0, 5.0),    # on the 1-day window's open end: 7 days only
        (3, T - dt.timedelta(days=1, hours=2) + S, 1, 7, 30.0, 4.0),
        (4, T - dt.timedelta(hours=3), 1, 7, 10.0, 3.0),
        (5, T - dt.timedelta(hours=2), 1, 7, 20.0, 2.0),            # known exactly at T: visible
        (6, T - dt.timedelta(hours=2) + S, 1, 7, 99.0, 99.0),       # delivered, not yet known at T
        (100, T, 1, 7, 77.0, 77.0),                                 # the order itself
        (101, T, 2, 8, 11.0, 11.0),                                 # a store and a courier with no history
    ]
    return pl.DataFrame(
        {"ORDER_ID": [r[0] for r in rows], "ORDERED_AT": [r[1] for r in rows],
         "STORE_ID": [r[2] for r in rows], "COURIER_ID": [r[3] for r in rows],
         "DISTANCE_KM": [2.5] * len(rows), "N_ITEMS": [2] * len(rows),
         "PREP_MINUTES": [r[4] for r in rows], "MIN_PER_KM": [r[5] for r in rows],
         "DELIVERY_MINUTES": [30.0] * len(rows)},
        schema_overrides={"ORDERED_AT": pl.Datetime("us")},
    )


def test_training_features_are_point_in_time_on_hand_checked_rows(dl, offline):
    table = trainset(dl, offline, hand_orders(), T.date(), T.date())
    rows = {r["ORDER_ID"]: r for r in table.iter_rows(named=True)}
    assert rows[100] == {
        "ORDER_ID": 100, "ORDERED_AT": T, "STORE_ID": 1, "COURIER_ID": 7,
        "DISTANCE_KM": 2.5, "N_ITEMS": 2, "HOUR_OF_DAY": 12, "IS_RUSH_HOUR": 1, "IS_WEEKEND": 1,
        "STORE_ORDERS_1D": 3, "STORE_PREP_MINUTES_1D": pytest.approx((30 + 10 + 20) / 3),
        "STORE_ORDERS_7D": 4, "STORE_PREP_MINUTES_7D": pytest.approx((40 + 30 + 10 + 20) / 4),
        "COURIER_DELIVERIES_7D": 4, "COURIER_MIN_PER_KM_7D": pytest.approx((5 + 4 + 3 + 2) / 4),
        "DELIVERY_MINUTES": 30.0,
    }
    # Nothing known yet: the offline join gives the views' defaults, and so does serving.
    unknown = rows[101]
    served = dl.request_row({"ORDERED_AT": T, "DISTANCE_KM": 2.5, "N_ITEMS": 2},
                            {"store_prep": None, "courier_pace": None})
    assert served == {name: unknown[name] for name in dl.MODEL.features}
    assert served["STORE_ORDERS_1D"] == 0 and served["STORE_PREP_MINUTES_7D"] == dl.TYPICAL_PREP_MINUTES
    assert served["COURIER_MIN_PER_KM_7D"] == dl.TYPICAL_MIN_PER_KM


@pytest.fixture(scope="module")
def small_trainset(dl, tmp_path_factory):
    from lab.plugins import make_plugin_manager

    folder = tmp_path_factory.mktemp("small")
    store = make_plugin_manager(entry_points=False).hook.lab_offline_store(config=load_config(folder))
    try:
        orders = dl.simulate_orders(**SMALL)
        return orders, trainset(dl, store, orders, dt.date(2024, 3, 8), dt.date(2024, 3, 10))
    finally:
        store.close()


def test_simulated_training_features_match_the_reference_reading(dl, small_trainset):
    orders, table = small_trainset
    sample = table.sample(40, seed=1)
    expected = reference_features({"orders": orders.to_arrow()}, sample.to_arrow(), dl.VIEWS, "ORDERED_AT")
    for got, want in zip(sample.iter_rows(named=True), expected):
        for name, value in want.items():
            assert got[name] == pytest.approx(value), (got["ORDER_ID"], name)


def test_serving_features_equal_training_features_for_the_same_online_rows(dl, small_trainset):
    _, table = small_trainset
    for row in table.sample(50, seed=2).iter_rows(named=True):
        online = {v.name: {f: row[f] for f in v.feature_names} for v in dl.VIEWS}
        request = {name: row[name] for name in dl.MODEL.request.names if name in row}
        assert dl.request_row(request, online) == {f: row[f] for f in dl.MODEL.features}


def test_the_label_is_learnable_from_the_features(dl, small_trainset):
    """A linear fit on the model's inputs explains most of the delivery time."""
    _, table = small_trainset
    x = np.column_stack([table.select(dl.MODEL.features).to_numpy(), np.ones(table.height)])
    y = table[dl.LABEL].to_numpy()
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - np.sum((y - x @ coef) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 > 0.6, r2


# ---------------------------------------------------------------------------- the whole lab



@pytest.mark.slow
def test_a_new_delivery_lab_runs_and_serves(tmp_path, dl):
    """`lab init`, `lab run`, `lab serve`, then a forecast for the template's example order."""
    import httpx

    env = {k: v for k, v in os.environ.items() if k != "LAB_HOME"}
    folder = tmp_path / "eta-lab"
    made = subprocess.run([LAB, "init", folder, "--template", "delivery"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    ran = subprocess.run([LAB, "run"], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-4000:]
    print(f"lab run took {time.monotonic() - started:.0f} s")
    assert (folder / "data" / "scores.parquet").exists()

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([LAB, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=folder, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the server was not ready in 90 s"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        example = dict(dl.MODEL.request.example)
        answer = httpx.post(f"{base}/predict", content=json.dumps(example),
                            headers={"content-type": "application/json"}, timeout=10)
        assert answer.status_code == 200, answer.text
        minutes = answer.json()["score"]
        assert math.isfinite(minutes) and minutes > 0, answer.json()
        refused = httpx.post(f"{base}/predict", content=json.dumps({**example, "DISTANCE_KM": 99.0}),
                             headers={"content-type": "application/json"}, timeout=10)
        assert refused.status_code == 400 and "DISTANCE_KM" in refused.text, refused.text
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
