"""The model server serves any lab's model from its ModelSpec: a tiny thermometer lab,
declared here and nowhere else (a text id, one view, a regression model of the built-in
flavor), trained, registered, promoted and materialized for real, then served in-process."""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np
import pyarrow as pa
import pytest
from litestar.testing import TestClient

from lab import hookimpl
from lab.config import load_config
from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.plugins import get_plugin_manager, model_flavor
from lab.registry import Registry
from lab.serving.ledger import read_predictions
from plugins.litestar_serving import create_app
from tests.conftest import write_pyproject

WATERMARK = dt.datetime(2024, 3, 1, 0, 0)
ARTIFACT = "runs/models/thermo-v1"
FEATURES = ("CELSIUS", "SENSOR_MEAN_1D", "SENSOR_N_1D")

SENSOR_DAILY = FeatureView(
    "sensor_daily", entity="SENSOR_ID", source="readings", timestamp="READ_AT",
    aggregations=(Aggregation("SENSOR_MEAN_1D", "CELSIUS", "mean", dt.timedelta(days=1), fill=20.0),
                  Aggregation("SENSOR_N_1D", "CELSIUS", "count", dt.timedelta(days=1))),
    ttl=dt.timedelta(days=2),
)

READING = RequestSchema(
    title="Reading",
    fields=(
        RequestField("READING_ID", "str", "the reading's id, as the sensor sent it", max_length=12),
        RequestField("READ_AT", "datetime", "when it was read"),
        RequestField("SENSOR_ID", "int", "the sensor", ge=0, le=999),
        RequestField("CELSIUS", "float", "the temperature read", ge=-50, le=60),
    ),
    id="READING_ID",
    timestamp="READ_AT",
    entities=("SENSOR_ID",),
    example={"READING_ID": "r-0", "READ_AT": "2024-03-01T06:00:00", "SENSOR_ID": 1, "CELSIUS": 21.0},
)


def reading_row(request, rows):
    stats = rows.get(SENSOR_DAILY.name) or SENSOR_DAILY.defaults
    return {"CELSIUS": request["CELSIUS"], "SENSOR_MEAN_1D": stats["SENSOR_MEAN_1D"],
            "SENSOR_N_1D": stats["SENSOR_N_1D"]}


THERMO = ModelSpec(
    name="thermo", task="regression", label="NEXT_CELSIUS", source="readings", features=FEATURES,
    views=(SENSOR_DAILY.name,), request=READING, request_frame=lambda events: events, request_row=reading_row,
    flavor="lightning_mlp",
)


class ThermoLab:
    """The thermometer lab's plugin: one view, one model."""

    @hookimpl
    def lab_feature_views(self, config):
        return [SENSOR_DAILY]

    @hookimpl
    def lab_model_specs(self, config):
        return [THERMO]


def thermo_pm(config):
    pm = get_plugin_manager(config)
    pm.register(ThermoLab(), name="thermo-lab")
    return pm


@pytest.fixture(scope="module")
def thermo_root(tmp_path_factory):
    """A lab folder holding a trained, registered, promoted thermo model and a materialized view."""
    root = tmp_path_factory.mktemp("thermo-lab")
    write_pyproject(root, 'model_name = "thermo"\n')
    config = load_config(root)
    pm = thermo_pm(config)
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.uniform(-10, 35, 64), rng.uniform(15, 25, 64), rng.integers(0, 30, 64)]).astype(np.float32)
    y = (0.8 * x[:, 0] + 0.2 * x[:, 1]).astype(np.float32)
    flavor = model_flavor(pm, "lightning_mlp")
    fit = flavor.fit(x[:48], y[:48], x[48:], y[48:], list(FEATURES), {"hidden_sizes": [8], "batch_size": 16},
                     seed=0, workdir=root / "runs" / "train", max_epochs=1, task="regression")
    flavor.save(fit.model, root / ARTIFACT)
    with Registry.open(config.registry_path, project_root=root) as registry:
        version = registry.register_model("thermo", run_id=None, flavor=flavor.name, artifact_path=ARTIFACT,
                                          metrics={}, lineage={"built_by": "test_serving_generic"})
        registry.promote("thermo", version.version, reason="test")
    store = pm.hook.lab_online_store(config=config)
    try:
        store.write(SENSOR_DAILY, pa.table({"SENSOR_ID": [1, 2], "SENSOR_MEAN_1D": [21.5, 30.0],
                                            "SENSOR_N_1D": [12, 3]}), WATERMARK)
    finally:
        store.close()
    return root


@pytest.fixture(scope="module")
def client(thermo_root):
    config = load_config(thermo_root)
    with TestClient(create_app(config, thermo_pm(config)), base_url="http://127.0.0.1") as c:
        deadline = time.monotonic() + 30
        while (ready := c.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            assert "failed" not in (ready.json()["reason"] or ""), ready.text
            time.sleep(0.02)
        assert ready.status_code == 200 and ready.json()["model"] == "thermo", ready.text
        yield c


GOOD = {"READING_ID": "r-1", "READ_AT": "2024-03-01T09:30:00+01:00", "SENSOR_ID": 1, "CELSIUS": 23.5}


def test_schema_documents_the_labs_own_fields_and_bounds(client):
    raw = client.get("/schema/openapi.json").text
    assert "fraud" not in raw.lower() and "transaction" not in raw.lower()
    spec = json.loads(raw)
    predict = spec["paths"]["/predict"]["post"]
    assert predict["summary"] == "Score one Reading" and "SENSOR_ID" in predict["description"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Reading"
    body = spec["components"]["schemas"]["Reading"]
    assert body["additionalProperties"] is False and set(body["required"]) == set(GOOD)
    props = body["properties"]
    assert props["READING_ID"]["type"] == "string" and props["READING_ID"]["maxLength"] == 12
    assert props["READ_AT"]["format"] == "date-time" and props["READ_AT"]["description"] == "when it was read"
    assert props["SENSOR_ID"]["type"] == "integer" and (props["SENSOR_ID"]["minimum"], props["SENSOR_ID"]["maximum"]) == (0, 999)
    assert type(props["SENSOR_ID"]["maximum"]) is int
    assert props["CELSIUS"]["type"] == "number" and (props["CELSIUS"]["minimum"], props["CELSIUS"]["maximum"]) == (-50, 60)
    assert body["examples"] == [READING.example]
    assert "Reading events" in spec["info"]["description"] and "'thermo'" in spec["info"]["description"]


def test_a_good_reading_is_scored_from_its_sensors_row_and_logged(client, thermo_root):
    response = client.post("/predict", json=GOOD, headers={"x-request-id": "thermo-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["event_id"] == "r-1" and body["model"] == "thermo" and body["model_version"] == 1
    assert body["features"] == {"CELSIUS": 23.5, "SENSOR_MEAN_1D": 21.5, "SENSOR_N_1D": 12}
    assert body["defaults"] == {"sensor_daily": False} and body["future"] == {"sensor_daily": False}
    assert body["feature_age_seconds"] == {"sensor_daily": 9.5 * 3600}  # wall clock: the offset is dropped
    assert np.isfinite(body["score"])
    unknown = client.post("/predict", json={**GOOD, "READING_ID": "r-2", "SENSOR_ID": 7}).json()
    assert unknown["defaults"] == {"sensor_daily": True} and unknown["features"]["SENSOR_MEAN_1D"] == 20.0
    early = client.post("/predict", json={**GOOD, "READING_ID": "r-3", "READ_AT": "2024-02-29T23:00:00"}).json()
    assert early["future"] == {"sensor_daily": True} and early["defaults"] == {"sensor_daily": True}
    assert client.get("/stats").json()["features"]["future"] >= 1
    assert client.app.state.serving.ledger.flush()
    row = next(r for r in read_predictions(thermo_root / "data" / "ledger.db") if r["request_id"] == "thermo-1")
    assert row["event_id"] == "r-1" and row["request"] == GOOD  # as sent, offset included


@pytest.mark.parametrize("change, field, words", [
    ({"SENSOR_ID": 1000}, "SENSOR_ID", "a whole number from 0 to 999 (the sensor)"),
    ({"SENSOR_ID": "1"}, "SENSOR_ID", "got `str`"),
    ({"CELSIUS": -51.0}, "CELSIUS", "a number from -50 to 60 (the temperature read)"),
    ({"READING_ID": "r-" + "9" * 12}, "READING_ID", "a string of at most 12 characters"),
    ({"READ_AT": "soon"}, "READ_AT", 'ISO 8601 date-time string such as "2024-03-01T06:00:00"'),
    ({"READ_AT": "2024-03-01T09:30:00\u0000x"}, "READ_AT", "NUL"),
    ({"CUSTOMER_ID": 1}, "CUSTOMER_ID", "the body takes only READING_ID, READ_AT, SENSOR_ID, CELSIUS"),
    ({"CELSIUS": None}, "CELSIUS", "CELSIUS"),
])
def test_a_bad_field_is_a_400_naming_it_with_its_hint(client, change, field, words):
    before = client.get("/stats").json()["predictions"]
    response = client.post("/predict", content=json.dumps({**GOOD, **change}).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and words in response.json()["detail"]
    assert client.get("/stats").json()["predictions"] == before


def test_a_missing_field_names_what_it_must_be(client):
    body = {k: v for k, v in GOOD.items() if k != "CELSIUS"}
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    assert response.json() == {"detail": "missing field CELSIUS: it must be a number from -50 to 60 "
                                          "(the temperature read)", "field": "CELSIUS"}


def test_a_view_keyed_by_a_field_the_request_lacks_is_not_ready_with_the_fix(thermo_root):
    config = load_config(thermo_root)
    pm = get_plugin_manager(config)

    class Keyless(ThermoLab):
        @hookimpl
        def lab_feature_views(self, config):
            return [FeatureView("sensor_daily", entity="STATION_ID", source="readings", timestamp="READ_AT",
                                aggregations=SENSOR_DAILY.aggregations)]

    pm.register(Keyless(), name="keyless")
    with TestClient(create_app(config, pm), base_url="http://127.0.0.1") as c:
        deadline = time.monotonic() + 30
        while "failed" not in (reason := c.get("/readyz").json()["reason"] or "") and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "keyed by 'STATION_ID', which is not a field of the Reading request" in reason
