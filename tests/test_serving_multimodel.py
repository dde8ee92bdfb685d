"""Several models in one server (`lab serve --model A --model B`, `--all-models`): the tiny
fraud lab's model at /predict plus models of another spec (a thermometer lab declared by a
project plugin in the lab folder: a regression spec with a text id, of the built-in
flavor) at /models/NAME/predict, loaded on first use into an LRU bounded by
[tool.lab.serve] max_model_memory_mb. Answers equal one-model servers'; eviction and
reload; a model too big is refused with a 503 naming the setting; a slow load does not
hold up the other models; one load for concurrent first requests; the metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import sys

import httpx
import numpy as np
import pyarrow as pa
import pytest
from litestar.testing import TestClient

from lab.config import load_config
from lab.plugins import feature_views, get_plugin_manager, model_flavor
from lab.registry import Registry
from lab.serving.ledger import read_predictions
from plugins.fraud.testing import build_tiny_lab
from plugins.litestar_serving import create_app
from plugins.litestar_serving.models import MB, model_memory_bytes
from tests._helpers import started_app_client, wait_ready
from tests.conftest import lab_server
from tests.test_shadow import shadow_template  # noqa: F401 - a fixture

PLUGIN = "multimodel_thermo_lab"
THERMO_LAB = '''
import datetime as dt
import threading

import numpy as np

from lab import hookimpl
from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.training.flavor import FitResult, ModelFlavor

SENSOR_DAILY = FeatureView(
    "sensor_daily", entity="SENSOR_ID", source="readings", timestamp="READ_AT",
    aggregations=(Aggregation("SENSOR_MEAN_1D", "CELSIUS", "mean", dt.timedelta(days=1), fill=20.0),),
    ttl=dt.timedelta(days=2))
READING = RequestSchema(
    title="Reading",
    fields=(RequestField("READING_ID", "str", "the reading", max_length=12),
            RequestField("READ_AT", "datetime", "when it was read"),
            RequestField("SENSOR_ID", "int", "the sensor", ge=0, le=999),
            RequestField("CELSIUS", "float", "the temperature read", ge=-50, le=60)),
    id="READING_ID", timestamp="READ_AT", entities=("SENSOR_ID",),
    example={"READING_ID": "r-0", "READ_AT": "2024-03-01T06:00:00", "SENSOR_ID": 1, "CELSIUS": 21.0})
FEATURES = ("CELSIUS", "SENSOR_MEAN_1D")
GATE = threading.Event()  # the gated flavor's load waits for it (a test holds it closed)
GATE.set()
LOADING = threading.Event()  # set when a gated load has started


def row(request, rows):
    stats = rows.get(SENSOR_DAILY.name) or SENSOR_DAILY.defaults
    return {"CELSIUS": request["CELSIUS"], "SENSOR_MEAN_1D": stats["SENSOR_MEAN_1D"]}


class HalfSum:
    feature_names = list(FEATURES)
    task = "regression"

    def predict(self, x):
        return (np.asarray(x, dtype=np.float32).sum(axis=1) * 0.5).astype(np.float32)


class GatedFlavor(ModelFlavor):
    name = "gated_half_sum"
    tasks = ("regression",)

    def search_space(self, trial, task="regression"):
        return {}

    def fit(self, *args, **kwargs):
        return FitResult(HalfSum())

    def save(self, model, path):
        pass

    def load(self, path):
        LOADING.set()
        assert GATE.wait(30), "the test never opened the gate"
        return HalfSum()


def spec(name, flavor="lightning_mlp"):
    return ModelSpec(name=name, task="regression", label="NEXT_CELSIUS", source="readings", features=FEATURES,
                     views=(SENSOR_DAILY.name,), request=READING, request_frame=lambda events: events,
                     request_row=row, flavor=flavor)


@hookimpl
def lab_feature_views(config):
    return [SENSOR_DAILY]


@hookimpl
def lab_model_specs(config):
    return [spec("thermo"), spec("thermo2"), spec("bigthermo"), spec("slow", "gated_half_sum")]


@hookimpl
def lab_model_flavors():
    return [GatedFlavor()]
'''
SIZES = {"thermo": [8], "thermo2": [32], "bigthermo": [256, 256]}
READ = {"READ_AT": "2024-03-01T09:00:00", "SENSOR_ID": 1}


def reading(i: int, sensor: int = 1) -> dict:
    return {"READING_ID": f"r-{i}", "CELSIUS": float(i % 40), **READ, "SENSOR_ID": sensor}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The tiny fraud lab plus the thermometer lab's plugin, four models registered and
    promoted, the sensor view materialized; ``sizes``: each model's measured footprint."""
    tiny = build_tiny_lab(tmp_path_factory.mktemp("multimodel") / "lab")
    root = tiny.root
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('model_name = "fraud"\n',
                                                      f'model_name = "fraud"\nplugins = ["{PLUGIN}"]\n'))
    (root / f"{PLUGIN}.py").write_text(THERMO_LAB)
    sys.modules.pop(PLUGIN, None)
    config = load_config(root)
    pm = get_plugin_manager(config)
    plugin = sys.modules[PLUGIN]
    flavor = model_flavor(pm, "lightning_mlp")
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.uniform(-10, 35, 64), rng.uniform(15, 25, 64)]).astype(np.float32)
    y = (0.8 * x[:, 0] + 0.2 * x[:, 1]).astype(np.float32)
    sizes = {}
    with Registry.open(config.registry_path, project_root=root) as registry:
        for seed, (name, hidden) in enumerate(SIZES.items()):
            fit = flavor.fit(x[:48], y[:48], x[48:], y[48:], list(plugin.FEATURES),
                             {"hidden_sizes": hidden, "batch_size": 16}, seed=seed, workdir=root / "runs" / name,
                             max_epochs=1, task="regression")
            flavor.save(fit.model, root / f"runs/models/{name}")
            version = registry.register_model(name, run_id=None, flavor=flavor.name,
                                              artifact_path=f"runs/models/{name}", metrics={}, lineage={})
            registry.promote(name, version.version, reason="test")
            sizes[name] = model_memory_bytes(flavor.load(root / f"runs/models/{name}"))
        version = registry.register_model("slow", run_id=None, flavor="gated_half_sum",
                                          artifact_path="runs/models/slow", metrics={}, lineage={})
        registry.promote("slow", version.version, reason="test")
    sizes["fraud"] = model_memory_bytes(flavor.load(root / "runs/models/fraud-v1"))
    store = pm.hook.lab_online_store(config=config)
    try:
        view = feature_views(pm, config)["sensor_daily"]
        store.write(view, pa.table({"SENSOR_ID": [1, 2], "SENSOR_MEAN_1D": [21.5, 30.0]}), dt.datetime(2024, 3, 1))
    finally:
        store.close()
    return tiny, sizes, plugin


def same(answer: dict) -> dict:
    """An answer less what differs between two servers (its id and timing)."""
    return {k: v for k, v in answer.items() if k not in ("request_id", "latency_ms")}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series of a Prometheus text body (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == labels:
            return float(match.group(3))
    return 0.0


def bound_mb(sizes: dict) -> float:
    """Room for the pinned default and one thermo model, not two."""
    t1, t2 = sizes["thermo"], sizes["thermo2"]
    return (sizes["fraud"] + max(t1, t2) + min(t1, t2) // 2) / MB


def test_two_models_of_two_specs_answer_as_one_model_servers(lab):
    tiny, sizes, _ = lab
    config = load_config(tiny.root)
    pm = get_plugin_manager(config)
    bodies = [tiny.transaction(i) for i in range(1, 6)]
    readings = [reading(i, sensor=1 + i % 3) for i in range(6)]  # sensor 3 unknown: defaults
    with TestClient(create_app(config, pm), base_url="http://127.0.0.1") as alone:
        wait_ready(alone, timeout=30)
        fraud_alone = [alone.post("/predict", json=b).json() for b in bodies]
    with TestClient(create_app(config, pm, model_name="thermo"), base_url="http://127.0.0.1") as alone:
        wait_ready(alone, timeout=30)
        thermo_alone = [alone.post("/predict", json=r).json() for r in readings]
    assert fraud_alone[0]["model"] == "fraud" and thermo_alone[0]["model"] == "thermo"

    with TestClient(create_app(config, pm, models=["thermo"]), base_url="http://127.0.0.1") as client:
        wait_ready(client, timeout=30)
        assert [m["name"] for m in client.get("/readyz").json()["models"]] == ["fraud"]  # thermo: on first use
        assert [same(client.post("/predict", json=b).json()) for b in bodies] == [same(a) for a in fraud_alone]
        assert [same(client.post("/models/fraud/predict", json=b).json()) for b in bodies] == [
            same(a) for a in fraud_alone]
        answers = [client.post("/models/thermo/predict", json=r) for r in readings]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert [same(a.json()) for a in answers] == [same(a) for a in thermo_alone]
        assert answers[2].json()["defaults"] == {"sensor_daily": True}  # sensor 3: unknown

        # Each route decodes its own request type, with its own 400 naming the field.
        bad = client.post("/models/thermo/predict", json={**readings[0], "CELSIUS": 99.0})
        assert bad.status_code == 400 and bad.json()["field"] == "CELSIUS" and "-50 to 60" in bad.json()["detail"]
        wrong = client.post("/models/thermo/predict", json=bodies[0])
        assert wrong.status_code == 400 and "READING_ID" in wrong.json()["detail"]
        assert client.post("/models/fraud/predict", json=readings[0]).status_code == 400
        assert client.post("/models/nope/predict", json=readings[0]).status_code == 404

        ready = client.get("/readyz").json()
        assert [(m["name"], m["pinned"]) for m in ready["models"]] == [("fraud", True), ("thermo", False)]
        assert {m["name"]: m["memory_bytes"] for m in ready["models"]} == {"fraud": sizes["fraud"],
                                                                          "thermo": sizes["thermo"]}
        spec = client.get("/schema/openapi.json").json()
        thermo_op = spec["paths"]["/models/thermo/predict"]["post"]
        ref = thermo_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][ref]
        assert thermo_op["operationId"] == "predict_thermo" and set(schema["properties"]) == {
            "READING_ID", "READ_AT", "SENSOR_ID", "CELSIUS"}
        assert schema["additionalProperties"] is False and schema["properties"]["SENSOR_ID"]["maximum"] == 999
        assert "/models/fraud/predict" in spec["paths"] and "/predict" in spec["paths"]

        text = client.get("/metrics").text
        assert metric(text, "lab_predictions_total", model="thermo", version="1", variant="") == 6
        assert metric(text, "lab_predictions_total", model="fraud", version="1", variant="") == 10
        assert metric(text, "lab_http_request_duration_seconds_count", model="thermo",
                      route="/models/thermo/predict", method="POST") == 8
        assert metric(text, "lab_models_loaded") == 2
        assert metric(text, "lab_model_loads_total", model="thermo") == 1
        assert metric(text, "lab_model_memory_bytes", model="thermo") == sizes["thermo"]
        assert metric(text, "lab_model_memory_limit_bytes") == 0  # unbounded by default
        assert metric(text, "lab_shadow_requests_total", outcome="mirrored") == 0
        assert "lab_shadow_queue_depth 0.0" in text
    rows = read_predictions(tiny.root / "data" / "ledger.db", model_name="thermo")
    assert [r["event_id"] for r in rows[-6:]] == [r["READING_ID"] for r in readings]
    assert [r["score"] for r in rows[-6:]] == [a.json()["score"] for a in answers]


def test_the_lru_evicts_within_the_bound_reloads_and_refuses_a_model_too_big(lab):
    tiny, sizes, _ = lab
    config = load_config(tiny.root)
    mb = bound_mb(sizes)
    app = create_app(config, get_plugin_manager(config), models=["thermo", "thermo2", "bigthermo"],
                     max_model_memory_mb=mb)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        wait_ready(client, timeout=30)
        first = client.post("/models/thermo/predict", json=reading(1)).json()
        other = client.post("/models/thermo2/predict", json=reading(1)).json()  # evicts thermo
        assert other["model"] == "thermo2" and other["score"] != first["score"]
        loaded = [m["name"] for m in client.get("/readyz").json()["models"]]
        assert loaded == ["fraud", "thermo2"]
        again = client.post("/models/thermo/predict", json=reading(1)).json()  # reloaded, evicts thermo2
        assert same(again) == same(first)
        assert [m["name"] for m in client.get("/readyz").json()["models"]] == ["fraud", "thermo"]

        big = client.post("/models/bigthermo/predict", json=reading(1))
        assert big.status_code == 503 and "max_model_memory_mb" in big.json()["detail"], big.text
        assert "bigthermo" in big.json()["detail"] and int(big.headers["retry-after"]) >= 1
        assert client.post("/models/bigthermo/predict", json=reading(2)).status_code == 503  # remembered
        assert client.post("/models/thermo/predict", json=reading(2)).status_code == 200  # the others still score
        assert client.post("/predict", json=tiny.transaction(1)).status_code == 200

        text = client.get("/metrics").text
        assert metric(text, "lab_model_evictions_total", model="thermo") == 1
        assert metric(text, "lab_model_evictions_total", model="thermo2") == 1
        assert metric(text, "lab_model_loads_total", model="thermo") == 2
        assert metric(text, "lab_model_refusals_total", model="bigthermo", reason="too_big") == 1
        assert metric(text, "lab_model_memory_limit_bytes") == int(mb * MB)
        assert metric(text, "lab_models_loaded") == 2
        used = sum(metric(text, "lab_model_memory_bytes", model=m) for m in ("fraud", "thermo", "thermo2"))
        assert 0 < used <= mb * MB


def test_a_slow_load_holds_up_no_other_model_and_concurrent_first_requests_load_once(lab):
    tiny, _, plugin = lab
    config = load_config(tiny.root)
    app = create_app(config, get_plugin_manager(config), models=["thermo", "slow"])

    async def scenario():
        async with started_app_client(app) as client:
            plugin.GATE.clear()
            plugin.LOADING.clear()
            try:
                slow = [asyncio.ensure_future(client.post("/models/slow/predict", json=reading(i)))
                        for i in range(8)]
                assert await asyncio.to_thread(plugin.LOADING.wait, 20), "the slow load never started"
                # While it loads: the default and another model (loaded now) answer.
                others = [await client.post("/predict", json=tiny.transaction(1)),
                          await client.post("/models/thermo/predict", json=reading(1))]
                assert not any(task.done() for task in slow)
            finally:
                plugin.GATE.set()
            answers = await asyncio.gather(*slow)
            return others, answers, (await client.get("/metrics")).text

    others, answers, text = asyncio.run(scenario())
    assert [a.status_code for a in others] == [200, 200]
    assert [a.status_code for a in answers] == [200] * 8
    assert [a.json()["score"] for a in answers] == [(i % 40 + 21.5) * 0.5 for i in range(8)]
    assert metric(text, "lab_model_loads_total", model="slow") == 1  # eight first requests, one load


@pytest.mark.slow
def test_real_lab_serve_with_all_models(lab, tmp_path):
    tiny, sizes, _ = lab
    pyproject = tiny.root / "pyproject.toml"
    original = pyproject.read_text()
    pyproject.write_text(original + f"\n[tool.lab.serve]\nmax_model_memory_mb = {bound_mb(sizes)!r}\n")
    try:
        config = load_config(tiny.root)
        with TestClient(create_app(config, get_plugin_manager(config), model_name="thermo2"),
                        base_url="http://127.0.0.1") as alone:
            wait_ready(alone, timeout=30)
            thermo2_alone = alone.post("/predict", json=reading(7)).json()
        log_path = tmp_path / "serve.log"
        with lab_server(tiny.root, log_path, "--all-models", ready_s=60) as (base, proc):
            with httpx.Client(base_url=base, timeout=10) as http:
                assert http.post("/predict", json=tiny.transaction(1)).json()["model"] == "fraud"
                thermo = http.post("/models/thermo/predict", json=reading(7)).json()
                thermo2 = http.post("/models/thermo2/predict", json=reading(7)).json()  # evicts thermo
                assert same(thermo2) == same(thermo2_alone)
                assert same(http.post("/models/thermo/predict", json=reading(7)).json()) == same(thermo)
                big = http.post("/models/bigthermo/predict", json=reading(7))
                assert big.status_code == 503 and "max_model_memory_mb" in big.json()["detail"]
                assert http.post("/models/slow/predict", json=reading(7)).json()["score"] == (7 + 21.5) * 0.5
                models = [m["name"] for m in http.get("/readyz").json()["models"]]
                text = http.get("/metrics").text
            assert models[0] == "fraud" and "bigthermo" not in models
            assert metric(text, "lab_model_evictions_total", model="thermo") >= 1
            assert metric(text, "lab_model_refusals_total", model="bigthermo", reason="too_big") == 1
            assert metric(text, "lab_predictions_total", model="thermo2", version="1", variant="") == 1
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in log_path.read_text()
        rows = read_predictions(tiny.root / "data" / "ledger.db")
        assert {"fraud", "thermo", "thermo2", "slow"} <= {r["model_name"] for r in rows}
    finally:
        pyproject.write_text(original)


def test_bad_settings_name_the_fix(lab):
    from lab.errors import ConfigError, LabError

    tiny, _, _ = lab
    config = load_config(tiny.root)
    with pytest.raises(ConfigError, match="max_model_memory_mb must be 0"):
        create_app(config, get_plugin_manager(config), models=["thermo"], max_model_memory_mb=-1)
    with pytest.raises((ConfigError, LabError), match="no plugin declares model 'nope'"):
        create_app(config, get_plugin_manager(config), models=["nope"])
    pyproject = tiny.root / "pyproject.toml"
    original = pyproject.read_text()
    try:
        pyproject.write_text(original + "\n[tool.lab.serve]\nmax_model_memory_mb = -5\n")
        with pytest.raises(ConfigError, match=r"\[tool.lab.serve\] max_model_memory_mb"):
            load_config(tiny.root)
    finally:
        pyproject.write_text(original)


def test_metrics_show_the_shadow_as_stats_does(shadow_template, tmp_path):
    """The shadow's counters in /metrics equal /stats' and the ledger's rows; agreement so
    far is lab_shadow_agreed_total / lab_shadow_compared_total."""
    import shutil
    import sqlite3

    from tests.test_shadow import mirror_of, ready, serve, start_shadow, wait_for

    root = tmp_path / "lab"
    shutil.copytree(shadow_template.root, root)
    with serve(root) as client:
        ready(client)
        text = client.get("/metrics").text
        assert metric(text, "lab_shadow_requests_total", outcome="mirrored") == 0
        assert "lab_shadow_active{" not in text
        shadow = start_shadow(root, 3, min_requests=12, min_agreement=0.5)
        wait_for(lambda: mirror_of(client).stats()["challenger_version"] == 3, "the challenger to load")
        for i in range(12):
            assert client.post("/predict", json=shadow_template.transaction(i)).status_code == 200
        assert mirror_of(client).flush()
        text = client.get("/metrics").text
        stats = client.get("/stats").json()["shadow"]
    with sqlite3.connect(root / "data" / "ledger.db") as conn:
        agreed = conn.execute("SELECT SUM(agree) FROM shadow_predictions").fetchone()[0]
    for outcome, key in (("mirrored", "mirrored"), ("dropped", "dropped"), ("written", "written"),
                         ("failed", "failed"), ("challenger_error", "errors")):
        assert metric(text, "lab_shadow_requests_total", outcome=outcome) == stats[key]
    assert stats["mirrored"] == stats["written"] == 12
    assert metric(text, "lab_shadow_compared_total") == 12 and metric(text, "lab_shadow_agreed_total") == agreed
    assert metric(text, "lab_shadow_active", shadow_id=str(shadow["id"]), challenger_version="3") == 1
    assert metric(text, "lab_shadow_queue_depth") == 0


def test_a_model_of_another_schema_with_the_same_title_and_no_champion(lab):
    """Two request schemas titled alike get two OpenAPI components; a model with no
    champion is answered 503 naming the fix (and counted), the others unaffected."""
    import dataclasses

    from lab import hookimpl

    tiny, _, plugin = lab
    config = load_config(tiny.root)
    pm = get_plugin_manager(config)
    other = dataclasses.replace(plugin.READING, fields=tuple(
        dataclasses.replace(f, max_length=4) if f.name == "READING_ID" else f for f in plugin.READING.fields))

    class Unregistered:
        @hookimpl
        def lab_model_specs(self, config):
            return [dataclasses.replace(plugin.spec("unregistered"), request=other)]

    pm.register(Unregistered(), name="unregistered-lab")
    with TestClient(create_app(config, pm, models=["thermo", "unregistered"]), base_url="http://127.0.0.1") as client:
        wait_ready(client, timeout=30)
        doc = client.get("/schema/openapi.json").json()
        refs = {path: doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                for path in ("/models/thermo/predict", "/models/unregistered/predict")}
        assert refs["/models/thermo/predict"] != refs["/models/unregistered/predict"]
        component = doc["components"]["schemas"][refs["/models/unregistered/predict"].rsplit("/", 1)[-1]]
        assert component["properties"]["READING_ID"]["maxLength"] == 4
        too_long = client.post("/models/unregistered/predict", json=reading(12345))
        assert too_long.status_code == 400 and too_long.json()["field"] == "READING_ID"
        missing = client.post("/models/unregistered/predict", json=reading(1))
        assert missing.status_code == 503 and "has no champion" in missing.json()["detail"]
        assert "lab promote unregistered VERSION" in missing.json()["detail"] and missing.headers["retry-after"]
        assert client.post("/models/thermo/predict", json=reading(1)).status_code == 200
        text = client.get("/metrics").text
    assert metric(text, "lab_model_refusals_total", model="unregistered", reason="load_failed") == 1
    assert metric(text, "lab_not_ready_total", reason="model_unavailable") == 1
