"""Shadow mode in-process: a tiny lab served by the real app (Litestar's TestClient, the
lifespan running), a challenger registered beside the champion, the real registry and
ledger files. The real `lab serve` process is in test_shadow_server.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import sqlite3
import threading
import time

import numpy as np
import pytest
from litestar.testing import TestClient

from lab import hookimpl
from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError
from lab.plugins import get_plugin_manager, model_flavor
from lab.registry import PromotionRefused, Registry
from lab.serving.ledger import read_predictions
from lab.serving.shadow import ShadowMirror, _Challenger
from lab.serving.shadow_report import (
    agreement_rule,
    check_shadow,
    shadow_counts,
    shadow_criteria,
    shadow_report,
    wilson_interval,
)
from plugins.fraud.features import FEATURE_COLUMNS
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab
from plugins.litestar_serving import create_app

OTHER_ARTIFACT = "runs/models/fraud-other"


@pytest.fixture(scope="session")
def shadow_template(tmp_path_factory):
    """Built once: the tiny lab (v1 champion), v2 = the same files (agrees everywhere),
    v3 = a model trained on other rows with another seed (disagrees somewhere)."""
    lab = build_tiny_lab(tmp_path_factory.mktemp("shadow-template"))
    config = load_config(lab.root)
    flavor = model_flavor(get_plugin_manager(config), "lightning_mlp")
    rng = np.random.default_rng(99)
    x = rng.normal(size=(300, len(FEATURE_COLUMNS))).astype(np.float32)
    y = (x[:, 1] > 0.3).astype(np.float32)
    fit = flavor.fit(x[:240], y[:240], x[240:], y[240:], list(FEATURE_COLUMNS),
                     {"hidden_sizes": [8], "batch_size": 64}, seed=99, workdir=lab.root / "runs" / "train-other",
                     max_epochs=1)
    flavor.save(fit.model, lab.root / OTHER_ARTIFACT)
    with Registry.open(config.registry_path, project_root=lab.root) as reg:
        for artifact in (MODEL_ARTIFACT, OTHER_ARTIFACT):
            reg.register_model("fraud", run_id=None, flavor="lightning_mlp", artifact_path=artifact, metrics={},
                               lineage={})
    return lab


@pytest.fixture
def lab(shadow_template, tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(shadow_template.root, root)
    return dataclasses.replace(shadow_template, root=root)


def wait_for(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def serve(root, **kwargs) -> TestClient:
    config = load_config(root)
    client = TestClient(create_app(config, get_plugin_manager(config), refresh_s=0.1, **kwargs),
                        base_url="http://127.0.0.1")
    return client


def ready(client) -> None:
    wait_for(lambda: client.get("/readyz").status_code == 200, "the server to be ready", 60)


def mirror_of(client) -> ShadowMirror:
    return client.app.state.serving.shadow


def start_shadow(root, version: int, **criteria) -> dict:
    config = load_config(root)
    with Registry.open(config.registry_path) as reg:
        return reg.start_shadow("fraud", version, shadow_criteria("classification", **criteria))


def cli(root, *args) -> int:
    return main(["--root", str(root), *args])


def answer(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("request_id", "latency_ms")}


def test_shadow_logs_both_answers_off_the_request_path_and_leaves_responses_unchanged(lab):
    with serve(lab.root) as client:
        ready(client)
        before = [client.post("/predict", json=lab.transaction(i), headers={"x-request-id": f"before-{i}"})
                  for i in range(40)]
        shadow = start_shadow(lab.root, 3, min_requests=40, min_agreement=0.5)
        wait_for(lambda: mirror_of(client).stats()["challenger_version"] == 3, "the server to load the challenger")
        after = [client.post("/predict", json=lab.transaction(i), headers={"x-request-id": f"after-{i}"})
                 for i in range(40)]
        assert mirror_of(client).flush()
        stats = mirror_of(client).stats()
        counted = client.get("/stats").json()["shadow"]
    assert counted == {"mirrored": 40, "dropped": 0, "written": 40, "failed": 0, "errors": 0, "queued": 0,
                       "shadow_id": shadow["id"], "challenger_version": 3}
    # The answers are the champion's, field for field, with and without the shadow.
    assert all(r.status_code == 200 for r in before + after)
    assert [answer(r.json()) for r in after] == [answer(r.json()) for r in before]
    assert {r.json()["model_version"] for r in after} == {1}
    assert stats | {"queued": 0} == {"mirrored": 40, "dropped": 0, "written": 40, "failed": 0, "errors": 0,
                                     "queued": 0, "shadow_id": shadow["id"], "challenger_version": 3,
                                     "warning": None}

    # Both outputs are in the ledger, keyed by the request id of the champion's row.
    config = load_config(lab.root)
    predictions = {r["request_id"]: r for r in read_predictions(config.ledger_path)}
    with sqlite3.connect(config.ledger_path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM shadow_predictions ORDER BY id")]
    assert [r["request_id"] for r in rows] == [f"after-{i}" for i in range(40)]
    challenger = model_flavor(get_plugin_manager(config), "lightning_mlp").load(lab.root / OTHER_ARTIFACT)
    agree = agreement_rule({"threshold": 0.5})
    for row in rows:
        served = predictions[row["request_id"]]
        assert row["champion_score"] == served["score"] and row["champion_version"] == 1
        assert row["champion_latency_ms"] == served["latency_ms"] and row["event_id"] == served["event_id"]
        vector = np.array([[served["features"][n] for n in challenger.feature_names]], dtype=np.float32)
        assert row["challenger_score"] == pytest.approx(float(challenger.predict(vector)[0]), abs=1e-6)
        assert row["challenger_version"] == 3 and row["error"] is None and row["challenger_latency_ms"] > 0
        assert row["agree"] == int(agree(row["champion_score"], row["challenger_score"]))

    # The agreement report says what the rows say.
    report = shadow_report(config, "fraud")
    agreed = sum(r["agree"] for r in rows)
    assert report["requests"] == 40 and report["agreed"] == agreed and report["errors"] == 0
    assert report["agreement"] == pytest.approx(agreed / 40)
    assert report["agreement_ci"] == pytest.approx(list(wilson_interval(agreed, 40)))
    latencies = sorted(r["challenger_latency_ms"] for r in rows)
    assert report["latency_ms"]["challenger"] == {"p50": latencies[19], "p99": latencies[39]}
    assert report["shadow"]["version"] == 3 and report["shadow"]["champion_version"] == 1


def test_promotion_is_refused_until_the_exit_criteria_hold_and_allowed_after(lab, capsys):
    start_shadow(lab.root, 2, min_requests=60, min_agreement=0.9)
    with serve(lab.root) as client:
        ready(client)
        wait_for(lambda: mirror_of(client).stats()["challenger_version"] == 2, "the server to load the challenger")
        for i in range(30):
            assert client.post("/predict", json=lab.transaction(i)).status_code == 200
        assert mirror_of(client).flush()

        assert cli(lab.root, "promote", "fraud", "2") == 2
        err = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("lab: error:"))
        assert err.startswith("lab: error: v2 of 'fraud' cannot become champion: shadow: shadow #1 of v2 has not "
                              "met its exit criteria: requests 30 < 60;")
        assert "agreement 1.000 (95% CI lower bound 0.886) below 0.9" in err

        for i in range(30, 70):
            assert client.post("/predict", json=lab.transaction(i)).status_code == 200
        assert mirror_of(client).flush()
        assert cli(lab.root, "promote", "fraud", "2", "--reason", "shadow met") == 0
        out = capsys.readouterr().out
        assert "fraud: champion -> version 2 (was version 1)" in out and "shadow    ok" in out
        # The server follows the alias; the challenger is the champion now: nothing left to mirror.
        wait_for(lambda: client.get("/readyz").json()["model_version"] == 2, "the server to serve v2")
        wait_for(lambda: mirror_of(client).stats()["challenger_version"] is None, "mirroring to stop")

    assert cli(lab.root, "history", "fraud") == 0
    history = capsys.readouterr().out
    assert "shadow   started    shadow #1 of v2 against v1: min_requests 60, min_agreement 0.9" in history
    assert "shadow   met        shadow #1 of v2  70 requests, agreement 1.000" in history
    assert "evidence shadow     v2 shadow passed: shadow #1 met its exit criteria" in history
    assert "alias    promote    champion v1 -> v2  shadow met" in history
    assert "on shadow: ok: shadow #1 met its exit criteria at" in history
    assert "shadow   stopped    shadow #1 of v2  (v2 promoted to champion)" in history


class Heard:
    def __init__(self):
        self.events = []

    @hookimpl
    def lab_on_event(self, event):
        self.events.append((event.name, event.payload))


def test_a_deadline_passed_unmet_expires_the_shadow_fires_its_event_and_keeps_promotion_refused(lab, capsys):
    shadow = start_shadow(lab.root, 2, min_requests=10, days=1)
    config = load_config(lab.root)
    pm = get_plugin_manager(config)
    heard = Heard()
    pm.register(heard)
    report = check_shadow(config, pm, "fraud")  # nothing mirrored, deadline ahead: nothing to record
    assert report["recorded"] is None and report["unmet"][0] == "requests 0 < 10"
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    report = check_shadow(config, pm, "fraud", now=later)
    assert report["recorded"] == "expired" and report["shadow"]["status"] == "expired"
    assert heard.events == [("shadow.expired", {
        "model": "fraud", "version": 2, "champion_version": 1, "shadow_id": shadow["id"],
        "summary": report["summary"], "unmet": report["unmet"]})]
    assert check_shadow(config, pm, "fraud", now=later)["recorded"] is None  # once
    with Registry.open(config.registry_path) as reg:
        with pytest.raises(PromotionRefused, match="expired without meeting its exit criteria"):
            reg.promote("fraud", 2)
        assert reg.active_shadow("fraud") is None
        assert reg.evidence("fraud", 2, kind="shadow")[-1]["passed"] is False
    assert cli(lab.root, "shadow", "status", "fraud") == 0
    assert ": expired" in capsys.readouterr().out


def test_a_full_mirror_queue_drops_and_counts_and_never_waits(lab):
    config = load_config(lab.root)
    release = threading.Event()

    class Stuck:  # a challenger that does not answer until told: the worker cannot drain the queue
        feature_names = ("a",)

        def predict(self, x):
            release.wait(10)
            return np.array([0.9], dtype=np.float32)

    mirror = ShadowMirror(config, None, "fraud", lambda: None, queue_size=2)
    shadow = {"id": 7, "version": 2, "champion_version": 1, "criteria": {"threshold": 0.5}}
    mirror._current = _Challenger(shadow, Stuck(), ("a",), agreement_rule(shadow["criteria"]))
    mirror._threads.append(threading.Thread(target=mirror._work_loop, daemon=True))
    mirror._threads[0].start()
    took = []
    for i in range(50):
        started = time.perf_counter()
        mirror.mirror(f"r{i}", i, {"a": 1.0}, 0.2, 1.0, 1)
        took.append(time.perf_counter() - started)
    stats = mirror.stats()
    assert max(took) < 0.05  # a put_nowait, never a wait on the challenger
    assert stats["mirrored"] + stats["dropped"] == 50 and stats["dropped"] >= 47
    release.set()
    assert mirror.flush()
    mirror.close()
    assert shadow_counts(config.ledger_path, 7)["requests"] == mirror.stats()["written"] == stats["mirrored"]
    with sqlite3.connect(config.ledger_path) as conn:
        assert conn.execute("SELECT SUM(agree) FROM shadow_predictions").fetchone()[0] == 0  # 0.2 vs 0.9


def test_shadow_start_checks_its_criteria_and_names_the_fix(lab, capsys):
    bad = [
        (["--min-agreement", "1.5"], "--min-agreement must be a share in (0, 1]"),
        (["--min-requests", "0"], "--min-requests must be a whole number >= 1"),
        (["--deadline", "2020-01-01T00:00Z"], "--deadline 2020-01-01T00:00Z is in the past"),
        (["--deadline", "soon"], "--deadline 'soon' is not an ISO 8601 time"),
        (["--tolerance", "2"], "--tolerance is for regression models"),
        (["--challenger", "1"], "v1 is already the champion of 'fraud'"),
        (["--challenger", "9"], "model 'fraud' has no version 9"),
    ]
    for args, message in bad:
        full = ["shadow", "start", "fraud", *(() if "--challenger" in args else ("--challenger", "2")), *args]
        assert cli(lab.root, *full) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("lab: error: ") and message in err and "Traceback" not in err, (args, err)
    with sqlite3.connect(lab.root / "registry.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM shadow_events").fetchone()[0] == 0

    assert cli(lab.root, "shadow", "start", "fraud", "--challenger", "2", "--min-requests", "5", "--deadline",
               "2099-01-01T00:00Z") == 0
    assert "shadow #1 started: v2 mirrors champion v1's traffic until 2099-01-01T00:00:00+00:00" in \
        capsys.readouterr().out
    assert cli(lab.root, "shadow", "start", "fraud", "--challenger", "3") == 2
    assert "already shadows v2 (shadow #1" in capsys.readouterr().err
    assert cli(lab.root, "shadow", "report", "fraud", "--json", "--out", str(lab.root / "out")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 0 and report["met"] is False and report["agreement"] is None
    assert json.loads((lab.root / "out" / "shadow_report.json").read_text())["shadow"]["id"] == 1
    assert "NOT MET yet: requests 0 < 5" in (lab.root / "out" / "shadow_report.txt").read_text()
    assert cli(lab.root, "shadow", "stop", "fraud", "--reason", "wrong build") == 0
    assert "stopped (before its criteria were met: promotion stays refused)" in capsys.readouterr().out
    with Registry.open(lab.root / "registry.db") as reg:
        with pytest.raises(PromotionRefused, match="was stopped before meeting its exit criteria"):
            reg.promote("fraud", 2)


def test_agreement_rules_for_classification_and_regression():
    assert shadow_criteria("regression", tolerance=2.5, days=1)["tolerance"] == 2.5
    with pytest.raises(ConfigError, match="a regression model's shadow needs --tolerance"):
        shadow_criteria("regression")
    with pytest.raises(ConfigError, match="--threshold is for classification models"):
        shadow_criteria("regression", tolerance=1, threshold=0.3)
    for days in (1e9, float("nan"), 0):  # past datetime's range, or no deadline at all: refused, no traceback
        with pytest.raises(ConfigError, match="--days must be a number of days > 0 and at most 3650"):
            shadow_criteria("classification", days=days)
    within = agreement_rule({"tolerance": 2.5})
    assert within(10.0, 12.5) and not within(10.0, 12.6)
    decision = agreement_rule(shadow_criteria("classification", threshold=0.3))
    assert decision(0.31, 0.9) and not decision(0.29, 0.31)
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(95, 100)
    assert 0.88 < low < 0.9 and 0.97 < high < 0.98  # the Wilson interval of 95/100 at 95 %


def test_a_regression_lab_of_another_domain_is_shadowed_within_its_tolerance(tmp_path):
    """Generic: the thermometer lab of test_serving_generic (a text id, one view, a
    regression model), two versions trained apart, the second shadowed against the first."""
    import pyarrow as pa

    from tests.conftest import write_pyproject
    from tests.test_serving_generic import FEATURES, GOOD, SENSOR_DAILY, WATERMARK, thermo_pm

    root = tmp_path / "thermo"
    root.mkdir()
    write_pyproject(root, 'model_name = "thermo"\n')
    config = load_config(root)
    pm = thermo_pm(config)
    flavor = model_flavor(pm, "lightning_mlp")
    with Registry.open(config.registry_path, project_root=root) as reg:
        for seed in (3, 11):
            rng = np.random.default_rng(seed)
            x = np.column_stack([rng.uniform(-10, 35, 64), rng.uniform(15, 25, 64),
                                 rng.integers(0, 30, 64)]).astype(np.float32)
            y = (0.8 * x[:, 0] + 0.2 * x[:, 1]).astype(np.float32)
            fit = flavor.fit(x[:48], y[:48], x[48:], y[48:], list(FEATURES), {"hidden_sizes": [8], "batch_size": 16},
                             seed=seed, workdir=root / "runs" / f"train-{seed}", max_epochs=1, task="regression")
            flavor.save(fit.model, root / f"runs/models/thermo-{seed}")
            reg.register_model("thermo", run_id=None, flavor="lightning_mlp", artifact_path=f"runs/models/thermo-{seed}",
                               metrics={}, lineage={})
        reg.promote("thermo", 1)
        with pytest.raises(ConfigError, match="needs --tolerance"):
            shadow_criteria("regression", min_requests=20)
        reg.start_shadow("thermo", 2, shadow_criteria("regression", tolerance=0.5, min_requests=20,
                                                       min_agreement=0.01))
    store = pm.hook.lab_online_store(config=config)
    try:
        store.write(SENSOR_DAILY, pa.table({"SENSOR_ID": [1, 2], "SENSOR_MEAN_1D": [21.5, 30.0],
                                            "SENSOR_N_1D": [12, 3]}), WATERMARK)
    finally:
        store.close()

    with TestClient(create_app(config, pm, refresh_s=0.1), base_url="http://127.0.0.1") as client:
        ready(client)
        wait_for(lambda: mirror_of(client).stats()["challenger_version"] == 2, "the challenger to load")
        for i in range(20):
            body = {**GOOD, "READING_ID": f"r-{i}", "CELSIUS": float(i)}
            assert client.post("/predict", json=body).json()["model_version"] == 1
        assert mirror_of(client).flush()
    with sqlite3.connect(config.ledger_path) as conn:
        rows = conn.execute("SELECT event_id, champion_score, challenger_score, agree FROM shadow_predictions").fetchall()
    assert [r[0] for r in rows] == [f"r-{i}" for i in range(20)]  # the lab's own text ids
    assert all(agree == int(abs(a - b) <= 0.5) for _, a, b, agree in rows)
    assert any(a != b for _, a, b, _ in rows)  # two different models
    report = check_shadow(config, pm, "thermo")
    assert report["agreement_rule"] == "|champion - challenger| <= 0.5"
    assert report["requests"] == 20 and report["agreed"] == sum(r[3] for r in rows)


def test_the_offline_interval_compares_two_registered_models_on_the_same_rows(shadow_template):
    import polars as pl

    from lab.plugins import model_spec
    from lab.steps.evaluation import gate, improvement_interval
    from lab.training.metrics import roc_auc

    config = load_config(shadow_template.root)
    pm = get_plugin_manager(config)
    spec = model_spec(pm, config)
    flavor = model_flavor(pm, "lightning_mlp")
    champion = flavor.load(shadow_template.root / MODEL_ARTIFACT)
    candidate = flavor.load(shadow_template.root / OTHER_ARTIFACT)
    rng = np.random.default_rng(4)
    columns = {name: rng.normal(size=500).astype(np.float32) for name in FEATURE_COLUMNS}
    columns[FEATURE_COLUMNS[0]] = rng.gamma(2.0, 30.0, size=500).astype(np.float32)
    frame = pl.DataFrame({**columns, spec.label: (columns[FEATURE_COLUMNS[1]] > 0.3).astype(np.int8)})
    interval = improvement_interval(spec, "roc_auc", candidate, champion, frame, samples=200, confidence=0.9)
    y = frame[spec.label].to_numpy()
    x = frame.select(list(FEATURE_COLUMNS)).to_numpy().astype(np.float32)
    assert interval["delta"] == pytest.approx(roc_auc(y, candidate.predict(x)) - roc_auc(y, champion.predict(x)))
    assert interval["low"] <= interval["high"] and interval["samples"] == 200 and interval["confidence"] == 0.9
    verdict = gate("roc_auc", {"roc_auc": 0.0}, {"roc_auc": 0.0}, 0.0, interval=interval)
    assert verdict["passed"] is (interval["low"] > 0.0) and verdict["interval"] is interval


def test_the_shadow_report_step_writes_its_product_for_a_notebook_stage(lab):
    from lab import steps

    start_shadow(lab.root, 2, min_requests=5)
    report = steps.shadow_report(lab.root, lab.root / "runs" / "r1")
    written = json.loads((lab.root / "data" / "shadow_report.json").read_text())
    assert written["shadow"]["version"] == 2 and written["requests"] == 0 and written["met"] is False
    assert report["text"].startswith("shadow #1 of fraud: challenger v2 against champion v1 (running;")
    assert "NOT MET yet: requests 0 < 5" in written["text"]
