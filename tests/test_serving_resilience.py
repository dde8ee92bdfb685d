"""The model server stays bounded and answers under faults: a concurrency limit with a
bounded queue (503 + Retry-After when full); a latency budget and timeouts past which a
request gets the model's declared fallback, flagged (or 503 when it declares none); a
circuit breaker per dependency (the online store, the model).

A tiny meter lab declared here (one view, a text id) serves a test-only model flavor
whose predict sleeps as long as the test says: a model made slow on purpose, with no
training. The online store and the ledger are real SQLite files; the server runs in
process (Litestar's TestClient), and concurrent requests come from real threads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lab.config import load_config
from lab.errors import ConfigError
from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.registry import Registry
from lab.serving.ledger import read_predictions
from lab.testing.flavors import FixedModelFlavor
from plugins.litestar_serving import create_app
from plugins.litestar_serving.breaker import CircuitBreaker
from plugins.litestar_serving.limits import Busy, ScoringLimit
from tests._helpers import DeclaredLab, plugin_manager_with, wait_ready
from tests.conftest import write_pyproject

WATERMARK = dt.datetime(2024, 3, 1, 0, 0)

METER_DAILY = FeatureView(
    "meter_daily", entity="METER_ID", source="readings", timestamp="READ_AT",
    aggregations=(Aggregation("METER_MEAN_1D", "WATTS", "mean", dt.timedelta(days=1), fill=100.0),),
    ttl=dt.timedelta(days=2),
)

READING = RequestSchema(
    title="MeterReading",
    fields=(
        RequestField("READING_ID", "str", "the reading's id", max_length=16),
        RequestField("READ_AT", "datetime", "when it was read"),
        RequestField("METER_ID", "int", "the meter", ge=0, le=999),
        RequestField("WATTS", "float", "the power read", ge=0, le=10_000),
    ),
    id="READING_ID", timestamp="READ_AT", entities=("METER_ID",),
    example={"READING_ID": "m-0", "READ_AT": "2024-03-01T06:00:00", "METER_ID": 1, "WATTS": 90.0},
)

FEATURES = ("WATTS", "METER_MEAN_1D")


def meter_row(request, rows):
    stats = rows.get(METER_DAILY.name) or METER_DAILY.defaults
    return {"WATTS": request["WATTS"], "METER_MEAN_1D": stats["METER_MEAN_1D"]}


METER = ModelSpec(name="meter", task="regression", label="NEXT_WATTS", source="readings", features=FEATURES,
                  views=(METER_DAILY.name,), request=READING, request_frame=lambda events: events,
                  request_row=meter_row, flavor="sleepy")

SLOW = {"model_s": 0.0, "fail": False}
"""How long the sleepy model's predict sleeps, and whether it raises: the tests set it."""


class SleepyModel:
    feature_names = list(FEATURES)
    task = "regression"

    def predict(self, features: np.ndarray) -> np.ndarray:
        if SLOW["model_s"]:
            time.sleep(SLOW["model_s"])
        if SLOW["fail"]:
            raise RuntimeError("the model's backend is gone")
        return features.sum(axis=1) * 0.5


class SleepyFlavor(FixedModelFlavor):
    """A test-only flavor: nothing to train; its model sleeps ``SLOW["model_s"]`` per call."""

    name = "sleepy"
    tasks = ("regression",)

    def make_model(self):
        return SleepyModel()


@pytest.fixture(autouse=True)
def fast_model():
    SLOW.update(model_s=0.0, fail=False)
    yield
    SLOW.update(model_s=0.0, fail=False)


@pytest.fixture(scope="module")
def meter_template(tmp_path_factory):
    """A lab folder with a registered, promoted meter model and a materialized view."""
    root = tmp_path_factory.mktemp("meter-lab")
    write_pyproject(root, 'model_name = "meter"\n')
    config = load_config(root)
    pm = meter_pm(config)
    SleepyFlavor().save(SleepyModel(), root / "runs" / "models" / "meter-v1")
    with Registry.open(config.registry_path, project_root=root) as registry:
        version = registry.register_model("meter", run_id=None, flavor="sleepy", artifact_path="runs/models/meter-v1",
                                          metrics={}, lineage={})
        registry.promote("meter", version.version, reason="test")
    store = pm.hook.lab_online_store(config=config)
    try:
        store.write(METER_DAILY, pa.table({"METER_ID": [1, 2], "METER_MEAN_1D": [80.0, 120.0]}), WATERMARK)
    finally:
        store.close()
    return root


@pytest.fixture
def meter_lab(meter_template, tmp_path):
    """A copy of the template per test: its own ledger and store."""
    import shutil

    root = tmp_path / "lab"
    shutil.copytree(meter_template, root)
    return root


def meter_pm(config, spec: ModelSpec = METER):
    return plugin_manager_with(config, DeclaredLab([METER_DAILY], [spec], [SleepyFlavor()]), "meter-lab")


def serve(root: Path, spec: ModelSpec = METER, **options) -> TestClient:
    config = load_config(root)
    return TestClient(create_app(config, meter_pm(config, spec), **options), base_url="http://127.0.0.1")


def reading(i: int, meter: int = 1) -> dict:
    return {"READING_ID": f"m-{i}", "READ_AT": "2024-03-01T09:00:00", "METER_ID": meter, "WATTS": 50.0 + i}


def scrape(client) -> dict:
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- 1. a concurrency limit with a bounded queue ------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_and_is_counted(meter_lab):
    with serve(meter_lab, max_concurrency=1, max_queue=1) as client:
        wait_ready(client)
        SLOW["model_s"] = 0.4
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: client.post("/predict", json=reading(i)), range(4)))
        took = time.monotonic() - started
        SLOW["model_s"] = 0.0
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 200, 503, 503], [a.text for a in answers]
        assert took < 3.0  # the refused two did not wait for the model
        for refused in (a for a in answers if a.status_code == 503):
            assert int(refused.headers["retry-after"]) >= 1
            detail = refused.json()["detail"]
            assert "busy" in detail and "max_concurrency=1" in detail and "max_queue=1" in detail
        samples = scrape(client)
        assert samples[("lab_rejected_total", (("reason", "queue_full"),))] == 2
        assert samples[("lab_scoring_in_flight", ())] == 0 and samples[("lab_queue_depth", ())] == 0
        assert client.get("/stats").json()["predictions"] == 2
        # Free again: the next request scores at once.
        assert client.post("/predict", json=reading(9)).status_code == 200


def test_the_queue_serves_in_order_and_metrics_show_its_depth(meter_lab):
    with serve(meter_lab, max_concurrency=1, max_queue=5) as client:
        wait_ready(client)
        SLOW["model_s"] = 0.3
        seen = {}

        def watch():
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not seen:
                samples = scrape(client)
                if samples[("lab_queue_depth", ())] >= 2:
                    seen.update(samples)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        with ThreadPoolExecutor(3) as pool:
            watcher.start()
            answers = list(pool.map(lambda i: client.post("/predict", json=reading(i)), range(3)))
        watcher.join()
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert seen[("lab_scoring_in_flight", ())] == 1 and seen[("lab_queue_depth", ())] == 2


def test_the_limit_is_read_from_the_config_and_checked(meter_lab):
    text = (meter_lab / "pyproject.toml").read_text()
    (meter_lab / "pyproject.toml").write_text(text + "\n[tool.lab.serve]\nmax_concurrency = 2\nmax_queue = 0\n")
    config = load_config(meter_lab)
    assert (config.serve.max_concurrency, config.serve.max_queue) == (2, 0)
    app = create_app(config, meter_pm(config))
    limit = app.state.serving.limit
    assert limit.pooled and (limit.max_concurrency, limit.max_queue) == (2, 0)
    with pytest.raises(ConfigError, match="max_queue must be a whole number, 0 or more"):
        create_app(config, meter_pm(config), max_queue=-1)


def test_a_slot_handed_to_a_waiter_that_gave_up_passes_on():
    import asyncio

    async def scenario():
        limit = ScoringLimit(1, 2)
        await limit.acquire()
        late = asyncio.ensure_future(limit.acquire(timeout=0.05))
        patient = asyncio.ensure_future(limit.acquire())
        with pytest.raises(TimeoutError):
            await late
        limit.max_queue = 1
        with pytest.raises(Busy):  # the patient one fills the queue
            await limit.acquire()
        limit.release()  # to the patient waiter, not the one that gave up
        await asyncio.wait_for(patient, 1)
        assert limit.scoring == 1 and limit.waiting == 0
        limit.release()
        assert limit.scoring == 0
        limit.close()

    asyncio.run(scenario())


def test_inline_scoring_is_the_default(meter_lab):
    config = load_config(meter_lab)
    app = create_app(config, meter_pm(config))
    assert not app.state.serving.limit.pooled


def test_lab_serve_takes_the_limits_as_flags():
    import argparse

    from plugins.litestar_serving.server import _add_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    _add_arguments(parser)
    args = parser.parse_args(["--max-concurrency", "4", "--max-queue", "0"])
    assert (args.max_concurrency, args.max_queue) == (4, 0)
    assert parser.parse_args([]).max_concurrency is None  # then [tool.lab.serve] decides
    with pytest.raises(argparse.ArgumentError, match="must be 0 or more, got -1"):
        parser.parse_args(["--max-queue", "-1"])


# -- 2. a latency budget, timeouts and declared fallbacks -----------------------------------

WITH_FALLBACK = dataclasses.replace(METER, fallback=0.25)


def test_a_slow_model_answers_within_budget_with_a_flagged_fallback(meter_lab):
    with serve(meter_lab, WITH_FALLBACK, max_concurrency=2, latency_budget_ms=150) as client:
        wait_ready(client)
        SLOW["model_s"] = 1.0
        started = time.monotonic()
        response = client.post("/predict", json=reading(1), headers={"x-request-id": "slow-1"})
        took = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert took < 0.7, took  # the budget, not the model's second
        body = response.json()
        assert body["fallback"] is True and body["fallback_reason"] == "model_timeout"
        assert body["score"] == 0.25
        assert body["features"] == {"WATTS": 51.0, "METER_MEAN_1D": 80.0}  # the store did answer
        assert 100 <= body["latency_ms"] < 700
        samples = scrape(client)
        assert samples[("lab_fallbacks_total", (("reason", "model_timeout"),))] == 1
        stats = client.get("/stats").json()
        assert stats["fallbacks"] == {"model_timeout": 1} and stats["predictions"] == 0
        assert client.app.state.serving.ledger.flush()
        rows = read_predictions(meter_lab / "data" / "ledger.db", include_fallbacks=True)
        row = next(r for r in rows if r["request_id"] == "slow-1")
        assert row["fallback"] == "model_timeout" and row["score"] == 0.25
        SLOW["model_s"] = 0.0
        time.sleep(1.0)  # the timed-out call ends and gives its slot back
        fine = client.post("/predict", json=reading(2)).json()
        assert fine["fallback"] is False and fine["fallback_reason"] is None and fine["score"] == (52.0 + 80.0) * 0.5
        assert client.app.state.serving.ledger.flush()
        assert next(r for r in read_predictions(meter_lab / "data" / "ledger.db")
                    if r["event_id"] == "m-2")["fallback"] is None


def test_a_model_timeout_of_its_own_and_no_fallback_declared_is_a_503(meter_lab):
    with serve(meter_lab, max_concurrency=1, model_timeout_ms=100) as client:
        wait_ready(client)
        SLOW["model_s"] = 0.6
        started = time.monotonic()
        response = client.post("/predict", json=reading(1))
        assert time.monotonic() - started < 0.5
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "model_timeout" in detail and "model_timeout_ms=100" in detail
        assert client.get("/stats").json()["fallbacks"] == {}


def test_waiting_for_a_slot_past_the_budget_is_a_flagged_fallback(meter_lab):
    with serve(meter_lab, WITH_FALLBACK, max_concurrency=1, max_queue=4, latency_budget_ms=200) as client:
        wait_ready(client)
        SLOW["model_s"] = 0.8
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/predict", json=reading(1))
            time.sleep(0.05)
            second = pool.submit(client.post, "/predict", json=reading(2))
            answers = [first.result(), second.result()]
        assert sorted(a.json()["fallback_reason"] for a in answers) == ["model_timeout", "queue_timeout"]
        queued = next(a.json() for a in answers if a.json()["fallback_reason"] == "queue_timeout")
        assert queued["features"] == {} and queued["score"] == 0.25


def test_a_failing_model_gets_the_fallback_inline_too(meter_lab):
    with serve(meter_lab, WITH_FALLBACK) as client:
        wait_ready(client)
        SLOW["fail"] = True
        body = client.post("/predict", json=reading(1)).json()
        assert body["fallback"] is True and body["fallback_reason"] == "model_error" and body["score"] == 0.25
    SLOW["fail"] = False
    with serve(meter_lab) as client:  # no fallback declared: a model that raises is a bug, a 500
        wait_ready(client)
        SLOW["fail"] = True
        assert client.post("/predict", json=reading(2)).status_code == 500


def test_the_budget_needs_the_pool_and_sane_values(meter_lab):
    config = load_config(meter_lab)
    with pytest.raises(ConfigError, match="set max_concurrency to 1 or more"):
        create_app(config, meter_pm(config), latency_budget_ms=50)
    with pytest.raises(ConfigError, match="latency_budget_ms must be a number of milliseconds"):
        create_app(config, meter_pm(config), max_concurrency=1, latency_budget_ms=-1)


@pytest.mark.parametrize("value", [float("nan"), True, "0.1"])
def test_a_fallback_must_be_a_finite_number(value):
    with pytest.raises(ConfigError, match="fallback must be a finite number"):
        dataclasses.replace(METER, fallback=value)


# -- 3. a circuit breaker per dependency --------------------------------------------------


def test_a_breaker_opens_after_k_failures_half_opens_after_t_and_a_probe_decides():
    now = [0.0]
    breaker = CircuitBreaker("model", 2, 10.0, clock=lambda: now[0])
    breaker.failure("boom")
    assert breaker.state == "closed" and breaker.allow()
    breaker.success()  # consecutive: a success starts the count again
    breaker.failure("boom")
    breaker.failure("boom")
    assert breaker.state == "open" and not breaker.allow() and breaker.opened == 1
    assert breaker.retry_after_s() == 10 and "open after 2 consecutive" in breaker.describe()
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failure("still down")
    assert breaker.state == "open" and breaker.opened == 2
    now[0] = 20.0
    assert breaker.allow()
    now[0] = 31.0  # a probe that never reported is replaced after T
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()
    off = CircuitBreaker("store", 0, 1.0)
    for _ in range(10):
        off.failure("x")
    assert off.state == "closed"
    with pytest.raises(ConfigError, match="breaker_open_s must be a number of seconds above 0"):
        CircuitBreaker("store", 3, 0)


def test_an_unreadable_online_store_gives_flagged_fallbacks_and_opens_its_breaker(meter_lab):
    text = (meter_lab / "pyproject.toml").read_text()
    (meter_lab / "pyproject.toml").write_text(text + "\n[tool.lab.serve]\nbreaker_failures = 2\nbreaker_open_s = 0.5\n")
    store = meter_lab / "data" / "online.db"
    good = store.read_bytes()
    with serve(meter_lab, WITH_FALLBACK, max_concurrency=2, latency_budget_ms=500) as client:
        wait_ready(client)
        for extra in ("-wal", "-shm"):
            Path(f"{store}{extra}").unlink(missing_ok=True)
        store.write_bytes(b"this is not a database at all " * 200)  # unreadable from now on
        answers = [client.post("/predict", json=reading(i)) for i in range(4)]
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        reasons = [a.json()["fallback_reason"] for a in answers]
        assert reasons == ["store_error", "store_error", "store_circuit_open", "store_circuit_open"]
        assert all(a.json()["fallback"] and a.json()["score"] == 0.25 for a in answers)
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert any("circuit breaker of the online store is open" in w for w in ready.json()["warnings"])
        samples = scrape(client)
        assert samples[("lab_circuit_state", (("dependency", "store"), ("state", "open")))] == 1
        assert samples[("lab_circuit_state", (("dependency", "model"), ("state", "closed")))] == 1
        assert samples[("lab_circuit_opened_total", (("dependency", "store"),))] == 1
        assert samples[("lab_fallbacks_total", (("reason", "store_circuit_open"),))] == 2
        store.write_bytes(good)  # the store is back; after T a probe finds it and closes the breaker
        time.sleep(0.6)
        probe = client.post("/predict", json=reading(9)).json()
        assert probe["fallback"] is False and probe["features"]["METER_MEAN_1D"] == 80.0
        assert client.get("/readyz").json()["warnings"] == []
        assert client.app.state.serving.ledger.flush()
        rows = read_predictions(meter_lab / "data" / "ledger.db", include_fallbacks=True)
        assert [r["fallback"] for r in rows] == reasons + [None]
        # Readers of predictions (quality, guardrails, training from logs) never see a fallback as one.
        assert [r["event_id"] for r in read_predictions(meter_lab / "data" / "ledger.db")] == ["m-9"]


def test_an_open_model_breaker_stops_calling_the_model_and_without_a_fallback_says_503(meter_lab):
    calls = []
    original = SleepyModel.predict

    def counted(self, features):
        calls.append(1)
        return original(self, features)

    text = (meter_lab / "pyproject.toml").read_text()
    (meter_lab / "pyproject.toml").write_text(text + "\n[tool.lab.serve]\nbreaker_failures = 3\nbreaker_open_s = 30\n")
    with serve(meter_lab, max_concurrency=1, model_timeout_ms=50) as client:
        wait_ready(client)
        SleepyModel.predict = counted
        try:
            SLOW["model_s"] = 0.15
            codes = [client.post("/predict", json=reading(i)) for i in range(5)]
        finally:
            SleepyModel.predict = original
        assert [c.status_code for c in codes] == [503] * 5
        assert "model_timeout" in codes[0].json()["detail"]
        assert "model_circuit_open" in codes[4].json()["detail"] and int(codes[4].headers["retry-after"]) >= 29
        assert len(calls) == 3  # the open breaker never called it again
