"""Batch inference (lab.serving.batch, `lab score`, the batch_score step) and the server's
fallback to the latest batch prediction.

Two labs, so nothing here leans on one domain: the tiny fraud lab (a classifier trained
with the built-in flavor) proves the batch scores are those of the point-in-time training
set; a sensor lab declared here (a regression model of a test-only linear flavor, one
windowed view keyed by an int and one latest-value view keyed by a string) carries the
coverage, freshness, atomicity and online-fallback tests. Real DuckDB and SQLite files,
the real server in process (Litestar's TestClient), a real subprocess killed with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from litestar.testing import TestClient

from lab.cli import main as lab_main
from lab.config import load_config
from lab.features.training import model_training_set
from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.plugins import feature_views, get_plugin_manager, model_flavor, model_spec
from lab.registry import Registry
from lab.serving.batch import predictions_dir, score_window, training_window
from lab.serving.batch_predictions import latest_path, read_latest
from lab.testing.flavors import FixedModelFlavor
from tests._helpers import DeclaredLab, plugin_manager_with, wait_ready
from tests.conftest import REPO, write_pyproject

DAY = dt.timedelta(days=1)

# -- a second lab: sensors (regression) ------------------------------------------------

SENSOR_DAILY = FeatureView(
    "sensor_daily", entity="SENSOR_ID", source="readings", timestamp="READ_AT",
    aggregations=(Aggregation("SENSOR_MEAN_1D", "VALUE", "mean", DAY, fill=0.0),
                  Aggregation("SENSOR_N_1D", "VALUE", "count", DAY)),
    ttl=2 * DAY, label_delay=dt.timedelta(hours=1),
)
SITE_INFO = FeatureView("site_info", entity="SITE_ID", source="sites", timestamp="UPDATED_AT",
                        features=("CAPACITY",), ttl=10 * DAY)

READING = RequestSchema(
    title="Reading",
    fields=(RequestField("READING_ID", "str", "the reading", max_length=16),
            RequestField("READ_AT", "datetime", "when it was read"),
            RequestField("SENSOR_ID", "int", "the sensor", ge=0, le=10**6),
            RequestField("SITE_ID", "str", "the site", max_length=8),
            RequestField("VALUE", "float", "the value read", ge=-1e6, le=1e6)),
    id="READING_ID", timestamp="READ_AT", entities=("SENSOR_ID", "SITE_ID"),
    example={"READING_ID": "r-0", "READ_AT": "2024-03-05T06:00:00", "SENSOR_ID": 1, "SITE_ID": "a",
             "VALUE": 1.0},
)
FEATURES = ("VALUE", "HOUR", "SENSOR_MEAN_1D", "SENSOR_N_1D", "CAPACITY")
WEIGHTS = np.array([1.0, 0.1, 0.5, 0.01, 0.001], dtype=np.float32)


def sensor_frame(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(pl.col("READ_AT").dt.hour().cast(pl.Int64).alias("HOUR"))


def sensor_row(request, rows):
    daily = rows.get("sensor_daily") or SENSOR_DAILY.defaults
    site = rows.get("site_info") or {"CAPACITY": 0.0}
    return {"VALUE": request["VALUE"], "HOUR": request["READ_AT"].hour, **daily, "CAPACITY": site["CAPACITY"]}


SENSOR = ModelSpec(name="sensor", task="regression", label="NEXT_VALUE", source="readings", features=FEATURES,
                   views=("sensor_daily", "site_info"), request=READING, request_frame=sensor_frame,
                   request_row=sensor_row, flavor="linear")


class LinearModel:
    feature_names = list(FEATURES)
    task = "regression"

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.nan_to_num(x, nan=0.0).astype(np.float64) @ WEIGHTS.astype(np.float64)


class LinearFlavor(FixedModelFlavor):
    """A test-only flavor: fixed weights, nothing to train."""

    name = "linear"
    tasks = ("regression",)

    def make_model(self):
        return LinearModel()


def sensor_pm(config, spec: ModelSpec = SENSOR):
    return plugin_manager_with(config, DeclaredLab([SENSOR_DAILY, SITE_INFO], [spec], [LinearFlavor()]), "sensor-lab")


START = dt.datetime(2024, 3, 1)


def readings() -> pl.DataFrame:
    """Sensors 1-6 read every 3 hours over 2024-03-01 .. 03-06; sensor 7 appears on 03-06
    only (new), sensor 8 read once on 02-20 and again on 03-06 (past the ttl: stale)."""
    rows = []
    for hour in range(0, 6 * 24, 3):
        for sensor in range(1, 7):
            rows.append((START + dt.timedelta(hours=hour, minutes=sensor), sensor, "ab"[sensor % 2],
                         float(sensor * 10 + hour % 7)))
    rows += [(dt.datetime(2024, 3, 6, 12), 7, "c", 70.0), (dt.datetime(2024, 3, 6, 13), 7, "c", 71.0),
             (dt.datetime(2024, 2, 20, 8), 8, "a", 80.0), (dt.datetime(2024, 3, 6, 14), 8, "a", 81.0)]
    rows.sort()
    return pl.DataFrame({
        "READING_ID": [f"r-{i}" for i in range(len(rows))],
        "READ_AT": [r[0] for r in rows], "SENSOR_ID": [r[1] for r in rows], "SITE_ID": [r[2] for r in rows],
        "VALUE": [r[3] for r in rows], "NEXT_VALUE": [r[3] + 1 for r in rows],
    })


SITES = pl.DataFrame({"SITE_ID": ["a", "b"], "UPDATED_AT": [dt.datetime(2024, 2, 28), dt.datetime(2024, 3, 2)],
                      "CAPACITY": [100.0, 250.0]})


@pytest.fixture(scope="module")
def sensor_template(tmp_path_factory):
    """A sensor lab: sources in the offline store, a promoted model, the training window."""
    root = tmp_path_factory.mktemp("sensor-lab")
    write_pyproject(root, 'model_name = "sensor"\n\n[tool.lab.train]\ntrain_start = "2024-03-01"\n'
                          "delta_train = 2\ndelta_delay = 0\ndelta_test = 1\n")
    config = load_config(root)
    pm = sensor_pm(config)
    offline = pm.hook.lab_offline_store(config=config)
    try:
        offline.write_source("readings", readings().to_arrow())
        offline.write_source("sites", SITES.to_arrow())
    finally:
        offline.close()
    with Registry.open(config.registry_path, project_root=root) as registry:
        version = registry.register_model("sensor", run_id=None, flavor="linear",
                                          artifact_path="runs/models/sensor-v1", metrics={}, lineage={})
        registry.promote("sensor", version.version, reason="test")
    store = pm.hook.lab_online_store(config=config)
    try:
        store.write(SENSOR_DAILY, pa.table({"SENSOR_ID": [1, 2], "SENSOR_MEAN_1D": [10.0, 20.0],
                                            "SENSOR_N_1D": [8, 8]}), dt.datetime(2024, 3, 6))
        store.write(SITE_INFO, pa.table({"SITE_ID": ["a", "b"], "CAPACITY": [100.0, 250.0]}), dt.datetime(2024, 3, 6))
    finally:
        store.close()
    return root


@pytest.fixture
def sensor_lab(sensor_template, tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(sensor_template, root)
    return root


def run_batch(root: Path, start: dt.date, end: dt.date, *, batch_size: int = 7, spec: ModelSpec = SENSOR,
              version_number: int | None = None, on_chunk=None, features_path=None) -> dict:
    config = load_config(root)
    pm = sensor_pm(config, spec)
    views = [feature_views(pm, config)[name] for name in spec.views]
    offline = pm.hook.lab_offline_store(config=config)
    try:
        with Registry.open(config.registry_path, project_root=root) as registry:
            version = (registry.get_alias(spec.name, "champion") if version_number is None
                       else registry.get_model_version(spec.name, version_number))
            model = model_flavor(pm, version.flavor).load(root / version.artifact_path)
            return score_window(offline=offline, registry=registry, spec=spec, views=views, version=version,
                                model=model, start=start, end=end, out_dir=predictions_dir(config, spec.name),
                                latest_db=latest_path(config), batch_size=batch_size,
                                window=training_window(registry, config, version), on_chunk=on_chunk,
                                features_path=features_path)
    finally:
        offline.close()


def read_partitions(folder: Path) -> pl.DataFrame:
    return pl.from_arrow(ds.dataset(folder, format="parquet", partitioning="hive").to_table())


# -- the batch job ----------------------------------------------------------------------


def test_a_window_is_scored_in_chunks_into_date_partitions_with_version_and_time(sensor_lab):
    now = dt.datetime(2024, 4, 1, 12, tzinfo=dt.timezone.utc)
    config = load_config(sensor_lab)
    pm = sensor_pm(config)
    views = [feature_views(pm, config)[n] for n in SENSOR.views]
    offline = pm.hook.lab_offline_store(config=config)
    chunks = []
    with Registry.open(config.registry_path, project_root=sensor_lab) as registry:
        version = registry.get_alias("sensor", "champion")
        report = score_window(offline=offline, registry=registry, spec=SENSOR, views=views, version=version,
                              model=LinearModel(), start=dt.date(2024, 3, 4), end=dt.date(2024, 3, 6),
                              out_dir=predictions_dir(config, "sensor"), latest_db=latest_path(config),
                              batch_size=7, window=training_window(registry, config, version), now=now,
                              on_chunk=lambda day, part: chunks.append((day, part)))
        # Point-in-time features as the training set computes them, one score per event.
        expected, _ = model_training_set(offline, views, SENSOR, dt.date(2024, 3, 4), dt.date(2024, 3, 6))
        run = registry.get_run(report["run_id"])
    offline.close()
    expected = pl.from_arrow(expected)
    got = read_partitions(sensor_lab / "data" / "predictions" / "sensor").sort("READING_ID")
    assert got.height == expected.height == report["rows"] == 8 * 6 * 3 + 3
    assert sorted(got["date"].unique().to_list()) == ["2024-03-04", "2024-03-05", "2024-03-06"]
    assert report["partitions"] == {d: got.filter(pl.col("date") == d).height
                                    for d in ("2024-03-04", "2024-03-05", "2024-03-06")}
    assert all(got.filter(pl.col("date") == d)["READ_AT"].dt.date().cast(pl.String).eq(d).all()
               for d in got["date"].unique())
    # Every part holds at most batch_size rows: the window was never one frame.
    parts = sorted((sensor_lab / "data" / "predictions" / "sensor").glob("date=*/part-*.parquet"))
    assert len(parts) >= len(chunks) > 3 and all(pl.read_parquet(p).height <= 7 for p in parts)
    assert len(chunks) >= math.ceil(report["rows"] / 7)  # chunks of at most 7 rows, across days
    assert set(got.columns) >= {"READING_ID", "READ_AT", "SENSOR_ID", "SITE_ID", "score", "model", "model_version",
                                "scored_at", "defaulted", "new_entity"}
    want = expected.sort("READING_ID")
    np.testing.assert_allclose(got["score"].to_numpy(), LinearModel().predict(
        want.select(FEATURES).to_numpy().astype(np.float32)), rtol=1e-6)
    assert got["READING_ID"].to_list() == want["READING_ID"].to_list()
    assert set(got["model"]) == {"sensor"} and set(got["model_version"]) == {1}
    assert set(got["scored_at"]) == {now}
    # Recorded in the registry as a run, with the report's numbers as metrics.
    assert run["kind"] == "batch_score" and run["status"] == "finished"
    assert run["metrics"]["rows"] == report["rows"]
    assert json.loads((sensor_lab / "data" / "predictions" / "sensor" / "_report.json").read_text()) == report
    assert not (sensor_lab / "data" / "predictions" / ".staging").exists()


def test_coverage_counts_new_and_defaulted_entities_and_freshness_per_view(sensor_lab):
    report = run_batch(sensor_lab, dt.date(2024, 3, 6), dt.date(2024, 3, 6))
    source = readings()
    day = source.filter(pl.col("READ_AT").dt.date() == dt.date(2024, 3, 6))
    cov, fresh = report["coverage"], report["freshness"]
    assert report["training_window"] == {"start": "2024-03-01", "end": "2024-03-03", "from": "[tool.lab.train]"}
    assert cov["rows"] == day.height
    assert cov["entities_scored"] == {"SENSOR_ID": 8, "SITE_ID": 3}
    # Sensors 7 and 8 and site c were not read in the training window.
    assert cov["new_entities"] == {"SENSOR_ID": 2, "SITE_ID": 1}
    assert cov["new_entity_rows"] == day.filter(pl.col("SENSOR_ID").is_in([7, 8]) | (pl.col("SITE_ID") == "c")).height
    # Defaults, computed independently: no reading of the sensor at or before t - 1 h, within 2 days.
    def sensor_defaulted(row) -> bool:
        t, sensor = row["READ_AT"], row["SENSOR_ID"]
        seen = source.filter((pl.col("SENSOR_ID") == sensor) & (pl.col("READ_AT") <= t - dt.timedelta(hours=1)))
        return seen.height == 0 or t - dt.timedelta(hours=1) - seen["READ_AT"].max() > 2 * DAY

    expected = sum(sensor_defaulted(r) for r in day.iter_rows(named=True))
    assert expected == 2  # sensor 7's first reading (none an hour before) and sensor 8's (stale)
    site_missing = day.filter(pl.col("SITE_ID") == "c").height
    assert cov["defaulted_rows_by_view"] == {"sensor_daily": expected, "site_info": site_missing}
    assert fresh["sensor_daily"]["stale_share"] == pytest.approx(1 / day.height, abs=1e-6)
    assert fresh["sensor_daily"]["missing_share"] == pytest.approx(1 / day.height, abs=1e-6)
    # Site b was updated 2024-03-02 00:00: at 03-06 its age is 4 days and some hours.
    site_ages = fresh["site_info"]["age_s"]
    assert 4 * 86400 <= site_ages["p50"] <= site_ages["p95"] <= site_ages["max"] < 8 * 86400
    assert fresh["site_info"]["ttl_s"] == 10 * 86400
    # The regular sensors were read 3 hours before; the window's label delay is 1 h.
    assert fresh["sensor_daily"]["age_s"]["p50"] == pytest.approx(2 * 3600, abs=600)
    rows = read_partitions(sensor_lab / "data" / "predictions" / "sensor")
    either = sum(sensor_defaulted(r) or r["SITE_ID"] == "c" for r in day.iter_rows(named=True))
    assert rows["defaulted"].sum() == cov["defaulted_rows"] == either == 3  # sensor 7's first reading: both
    assert rows.filter(pl.col("SENSOR_ID") == 7)["new_entity"].all()


def test_the_latest_table_keeps_each_entitys_newest_event_and_a_rerun_replaces_days(sensor_lab):
    config = load_config(sensor_lab)
    first = run_batch(sensor_lab, dt.date(2024, 3, 5), dt.date(2024, 3, 6))
    newest = read_latest(latest_path(config), "sensor", "SENSOR_ID", 3)
    rows = read_partitions(sensor_lab / "data" / "predictions" / "sensor")
    last = rows.filter(pl.col("SENSOR_ID") == 3).sort("READ_AT").row(-1, named=True)
    assert newest.score == pytest.approx(last["score"]) and newest.event_id == last["READING_ID"]
    assert newest.model_version == 1 and newest.scored_at == first["scored_at"]
    assert read_latest(latest_path(config), "sensor", "SITE_ID", "c").event_id == "r-" + str(
        readings().with_row_index().filter(pl.col("SITE_ID") == "c")["index"][-1])
    assert read_latest(latest_path(config), "sensor", "SENSOR_ID", 999) is None
    assert read_latest(latest_path(config), "sensor", "SENSOR_ID", "3") is None  # keys compare as sent
    # Scoring an older window again leaves newer events' predictions alone, and replaces its days whole.
    (sensor_lab / "data" / "predictions" / "sensor" / "date=2024-03-05" / "part-99999.parquet").write_bytes(b"x")
    run_batch(sensor_lab, dt.date(2024, 3, 5), dt.date(2024, 3, 5), batch_size=1000)
    assert read_latest(latest_path(config), "sensor", "SENSOR_ID", 3).event_id == newest.event_id
    assert [p.name for p in (sensor_lab / "data" / "predictions" / "sensor" / "date=2024-03-05").iterdir()] == [
        "part-00000.parquet"]


def test_a_killed_batch_job_leaves_whole_partitions_or_none(sensor_lab, tmp_path):
    marker = tmp_path / "second-day-half-written"
    code = f"""
import datetime as dt, sys, time
from pathlib import Path
from tests.test_batch_inference import run_batch
def on_chunk(day, part):
    if day == dt.date(2024, 3, 5) and part == 2:
        Path({str(marker)!r}).touch()
        time.sleep(60)
run_batch(Path({str(sensor_lab)!r}), dt.date(2024, 3, 4), dt.date(2024, 3, 6), batch_size=5, on_chunk=on_chunk)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the batch job never reached its second day"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = sensor_lab / "data" / "predictions" / "sensor"
    # The first day is whole; the second, half-written, is not visible; no report, no latest table.
    assert sorted(p.name for p in out.iterdir()) == ["date=2024-03-04"]
    day = readings().filter(pl.col("READ_AT").dt.date() == dt.date(2024, 3, 4))
    assert read_partitions(out).height == day.height
    assert not (out / "_report.json").exists() and not latest_path(load_config(sensor_lab)).exists()
    # A rerun finishes the job and clears what the killed one staged.
    report = run_batch(sensor_lab, dt.date(2024, 3, 4), dt.date(2024, 3, 6))
    assert read_partitions(out).height == report["rows"]
    assert not (out.parent / ".staging").exists()
    with Registry.open(load_config(sensor_lab).registry_path) as registry:
        kinds = [(r["kind"], r["status"]) for r in registry.list_runs(kind="batch_score")]
    assert kinds[0] == ("batch_score", "finished")


def test_lab_score_cli_scores_a_version_and_refuses_bad_windows(sensor_lab, monkeypatch, capsys):
    monkeypatch.setattr("lab.cli.get_plugin_manager", sensor_pm)
    args = ["--root", str(sensor_lab), "score", "--model", "sensor@1", "--start", "2024-03-05", "--end", "2024-03-06",
            "--batch-size", "50"]
    assert lab_main(args) == 0
    out = capsys.readouterr().out
    assert "scored 99 event(s) of sensor v1, 2024-03-05 .. 2024-03-06, into 2 partition(s)" in out
    assert "sensor_daily: age p50" in out
    assert lab_main([*args[:-1], "0"]) == 2
    assert "batch size must be a whole number of rows, 1 or more" in capsys.readouterr().err
    assert lab_main(["--root", str(sensor_lab), "score", "--start", "2024-03-06", "--end", "2024-03-05"]) == 2
    assert "starts (2024-03-06) after it ends (2024-03-05); swap them" in capsys.readouterr().err
    assert lab_main(["--root", str(sensor_lab), "score", "--start", "2024-04-01", "--end", "2024-04-02"]) == 2
    assert "has no events dated 2024-04-01 .. 2024-04-02" in capsys.readouterr().err
    assert lab_main(["--root", str(sensor_lab), "score", "--start", "March", "--end", "2024-04-02"]) == 2
    assert "--start 'March' is not a date" in capsys.readouterr().err
    assert lab_main(["--root", str(sensor_lab), "score", "--model", "sensor@blue"]) == 2
    assert "has no alias 'blue'" in capsys.readouterr().err
    with Registry.open(load_config(sensor_lab).registry_path) as registry:
        statuses = [r["status"] for r in registry.list_runs(kind="batch_score")]
    assert statuses.count("finished") == 1 and "running" not in statuses


def test_the_batch_score_step_of_a_classifier_scores_as_its_training_set(tmp_path):
    from plugins.fraud.simulator import simulate
    from plugins.fraud.testing import build_tiny_lab

    from lab import steps

    lab = build_tiny_lab(tmp_path / "lab")
    text = (lab.root / "pyproject.toml").read_text()
    (lab.root / "pyproject.toml").write_text(text + '\n[tool.lab.train]\ntrain_start = "2018-07-01"\n'
                                             "delta_train = 3\ndelta_delay = 0\ndelta_test = 1\n")
    config = load_config(lab.root)
    pm = get_plugin_manager(config)
    tx = simulate(n_customers=40, n_terminals=80, nb_days=10, start_date="2018-07-01", seed=1)
    offline = pm.hook.lab_offline_store(config=config)
    offline.write_source("transactions", tx.to_arrow())
    result = steps.batch_score(lab.root, tmp_path / "run", score_days=3, batch_size=64)
    spec = model_spec(pm, config)
    views = [feature_views(pm, config)[v] for v in spec.views]
    expected, _ = model_training_set(offline, views, spec, dt.date(2018, 7, 8), dt.date(2018, 7, 10))
    offline.close()
    expected = pl.from_arrow(expected).sort("TRANSACTION_ID")
    with Registry.open(config.registry_path, project_root=lab.root) as registry:
        champion = registry.get_alias("fraud", "champion")
    model = model_flavor(pm, champion.flavor).load(lab.root / champion.artifact_path)
    want = model.predict(expected.select(model.feature_names).to_numpy().astype(np.float32))
    got = read_partitions(lab.root / "data" / "predictions" / "fraud").sort("TRANSACTION_ID")
    assert result["rows"] == got.height == expected.height and result["window"] == ["2018-07-08", "2018-07-10"]
    np.testing.assert_allclose(got["score"].to_numpy(), want, rtol=1e-5, atol=1e-7)
    # The drift stage's input: every scored row with its features.
    scores = pl.read_parquet(lab.root / "data" / "scores.parquet").sort("TRANSACTION_ID")
    assert scores.height == got.height and set(model.feature_names) <= set(scores.columns)
    assert result["coverage"]["new_entities"] is not None and math.isfinite(result["coverage"]["defaulted_share"])


# -- the online fallback --------------------------------------------------------------------


def serve(root: Path, spec: ModelSpec = SENSOR, **options) -> TestClient:
    from plugins.litestar_serving import create_app

    config = load_config(root)
    return TestClient(create_app(config, sensor_pm(config, spec), **options), base_url="http://127.0.0.1")


def reading(i: int, sensor: int, site: str = "a") -> dict:
    return {"READING_ID": f"q-{i}", "READ_AT": "2024-03-06T18:00:00", "SENSOR_ID": sensor, "SITE_ID": site,
            "VALUE": 5.0}


def break_store(root: Path) -> None:
    store = root / "data" / "online.db"
    for extra in ("-wal", "-shm"):
        Path(f"{store}{extra}").unlink(missing_ok=True)
    store.write_bytes(b"this is not a database at all " * 200)


def opt_in(root: Path, extra: str = "") -> None:
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text + "\n[tool.lab.serve]\nbatch_fallback = true\nbreaker_failures = 0\n"
                                         + extra)


def test_a_request_the_server_cannot_score_gets_its_entitys_latest_batch_prediction(sensor_lab):
    run_batch(sensor_lab, dt.date(2024, 3, 5), dt.date(2024, 3, 6))
    opt_in(sensor_lab)
    latest = read_latest(latest_path(load_config(sensor_lab)), "sensor", "SENSOR_ID", 2)
    with serve(sensor_lab, dataclasses.replace(SENSOR, fallback=-1.0)) as client:
        wait_ready(client)
        healthy = client.post("/predict", json=reading(1, 2)).json()
        assert healthy["fallback"] is False and healthy["fallback_source"] is None
        break_store(sensor_lab)
        hit = client.post("/predict", json=reading(2, 2))
        assert hit.status_code == 200, hit.text
        body = hit.json()
        assert body["fallback"] is True and body["fallback_reason"] == "store_error"
        assert body["fallback_source"] == "batch" and body["score"] == pytest.approx(latest.score)
        assert body["batch_model_version"] == 1 and body["batch_scored_at"] == latest.scored_at
        assert 0 <= body["batch_age_seconds"] < 120
        # No batch prediction for this sensor: the declared fallback, as before.
        miss = client.post("/predict", json=reading(3, 4242)).json()
        assert miss["fallback_source"] == "declared" and miss["score"] == -1.0 and miss["batch_scored_at"] is None
        stats = client.get("/stats").json()
        assert stats["fallbacks"] == {"store_error": 2} and stats["batch_fallback"] == {"hits": 1, "misses": 1}
        metrics = client.get("/metrics").text
        assert 'lab_batch_fallback_lookups_total{outcome="hit"} 1.0' in metrics
        assert client.app.state.serving.ledger.flush()
    from lab.serving.ledger import read_predictions

    rows = read_predictions(sensor_lab / "data" / "ledger.db", include_fallbacks=True)
    assert [(r["event_id"], r["fallback"], r["score"]) for r in rows][1:] == [
        ("q-2", "store_error", pytest.approx(latest.score)), ("q-3", "store_error", -1.0)]


def test_without_a_declared_fallback_a_batch_prediction_still_answers_and_none_is_a_503(sensor_lab):
    run_batch(sensor_lab, dt.date(2024, 3, 6), dt.date(2024, 3, 6))
    opt_in(sensor_lab, 'batch_fallback_entity = "SITE_ID"\n')
    site = read_latest(latest_path(load_config(sensor_lab)), "sensor", "SITE_ID", "c")
    with serve(sensor_lab) as client:
        wait_ready(client)
        break_store(sensor_lab)
        body = client.post("/predict", json=reading(1, 2, site="c")).json()
        assert body["fallback_source"] == "batch" and body["score"] == pytest.approx(site.score)
        none = client.post("/predict", json=reading(2, 2, site="zz"))
        assert none.status_code == 503 and "store_error" in none.json()["detail"]


def test_the_batch_fallback_is_off_unless_opted_in_and_its_entity_is_checked(sensor_lab):
    from lab.errors import ConfigError

    run_batch(sensor_lab, dt.date(2024, 3, 6), dt.date(2024, 3, 6))
    with serve(sensor_lab, dataclasses.replace(SENSOR, fallback=-1.0)) as client:
        wait_ready(client)
        break_store(sensor_lab)
        body = client.post("/predict", json=reading(1, 2)).json()
        assert body["fallback_source"] == "declared" and body["score"] == -1.0
    opt_in(sensor_lab, 'batch_fallback_entity = "VALUE"\n')
    with pytest.raises(ConfigError, match="batch_fallback_entity 'VALUE' is not an entity field"):
        serve(sensor_lab)


def test_a_lookup_without_any_batch_table_is_a_miss_not_an_error(sensor_lab):
    from lab.serving.batch_predictions import BatchFallback

    fallback = BatchFallback(sensor_lab / "data" / "batch_predictions.db", "sensor", "SENSOR_ID")
    assert fallback.find({"SENSOR_ID": 1}) is None
    run_batch(sensor_lab, dt.date(2024, 3, 6), dt.date(2024, 3, 6))
    assert fallback.find({"SENSOR_ID": 1}).model_version == 1  # the table appeared: picked up
    assert fallback.counts() == {"hits": 1, "misses": 1}
    fallback.close()
    with sqlite3.connect(sensor_lab / "data" / "batch_predictions.db") as conn:
        assert conn.execute("SELECT count(*) FROM latest_predictions WHERE model = 'sensor'").fetchone()[0] > 0


def test_the_contracts_default_scan_source_agrees_with_duckdbs(tmp_path):
    from lab.features.stores import OfflineStore
    from plugins.duckdb_offline.store import DuckDBOfflineStore

    class SlicingStore(DuckDBOfflineStore):
        scan_source = OfflineStore.scan_source  # the contract's default: read the table, filter, slice

    fast, slow = DuckDBOfflineStore(tmp_path / "a.duckdb"), SlicingStore(tmp_path / "b.duckdb")
    for store in (fast, slow):
        store.write_source("readings", readings().sample(fraction=1.0, shuffle=True, seed=3).to_arrow())
    window = dict(time_column="READ_AT", start=dt.date(2024, 3, 2), end=dt.date(2024, 3, 3), batch_rows=10)
    a = pl.concat([pl.from_arrow(t) for t in fast.scan_source("readings", **window)])
    b = pl.concat([pl.from_arrow(t) for t in slow.scan_source("readings", **window)])
    assert a.height == 96 and a["READ_AT"].is_sorted()
    assert a.sort("READING_ID").equals(b.sort("READING_ID")) and b["READ_AT"].is_sorted()
    assert all(t.num_rows <= 10 for t in slow.scan_source("readings", **window))


def test_a_score_that_is_not_a_number_is_counted_and_never_served_as_a_fallback(sensor_lab):
    class Broken(LinearModel):
        def predict(self, x):
            out = super().predict(x)
            out[x[:, 0] >= 70] = np.nan  # sensors 7 and 8 read 70 and more
            return out

    config = load_config(sensor_lab)
    pm = sensor_pm(config)
    views = [feature_views(pm, config)[n] for n in SENSOR.views]
    offline = pm.hook.lab_offline_store(config=config)
    with Registry.open(config.registry_path, project_root=sensor_lab) as registry:
        report = score_window(offline=offline, registry=registry, spec=SENSOR, views=views,
                              version=registry.get_alias("sensor", "champion"), model=Broken(),
                              start=dt.date(2024, 3, 6), end=dt.date(2024, 3, 6),
                              out_dir=predictions_dir(config, "sensor"), latest_db=latest_path(config))
    offline.close()
    assert report["coverage"]["non_finite_scores"] == 3
    assert read_partitions(sensor_lab / "data" / "predictions" / "sensor")["score"].is_nan().sum() == 3
    assert read_latest(latest_path(config), "sensor", "SENSOR_ID", 7) is None
    assert read_latest(latest_path(config), "sensor", "SENSOR_ID", 6) is not None
    # No training window given: new_entity is unknown (null), not false.
    assert read_partitions(sensor_lab / "data" / "predictions" / "sensor")["new_entity"].null_count() == 51
    assert report["coverage"]["new_entities"] is None and report["training_window"] is None
