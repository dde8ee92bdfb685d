"""The model server in-process: the fraud plugin's tiny lab (model, registry, online store,
ledger) and Litestar's TestClient. The real `lab serve` process is tested in
test_serving_server.py; a lab of another domain in test_serving_generic.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import sqlite3
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from litestar import get
from litestar.datastructures import State
from litestar.testing import TestClient

from lab import hookimpl
from lab.cli import main
from lab.config import load_config
from lab.plugins import feature_views, get_plugin_manager, model_flavor
from lab.registry import Registry
from lab.serving.ledger import Ledger, PredictionRecord, read_predictions
from lab.errors import ConfigError
from plugins.fraud.features import FEATURE_COLUMNS
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab
from plugins.litestar_serving import create_app
from tests.conftest import write_pyproject


@pytest.fixture(scope="session")
def tiny_lab_template(tmp_path_factory):
    """Built once: training even one epoch costs seconds. Tests get a copy."""
    return build_tiny_lab(tmp_path_factory.mktemp("tiny-lab-template"))


@pytest.fixture
def tiny_lab(tiny_lab_template, tmp_path):
    """A servable lab of its own for each test: model, registry, online store."""
    root = tmp_path / "lab"
    shutil.copytree(tiny_lab_template.root, root)
    return dataclasses.replace(tiny_lab_template, root=root)


def wait_ready(client, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        body = response.json()
        if "failed" in (body.get("reason") or ""):
            return response
        time.sleep(0.02)


def open_client(root, pm=None, **kwargs) -> TestClient:
    config = load_config(root)
    # The server answers only requests addressed to a loopback name (DNS rebinding).
    return TestClient(create_app(config, pm or get_plugin_manager(config), **kwargs), base_url="http://127.0.0.1")


@pytest.fixture
def client(tiny_lab):
    with open_client(tiny_lab.root) as c:
        assert wait_ready(c).status_code == 200
        yield c


# -- scoring -----------------------------------------------------------------------

def test_valid_transaction_is_scored_with_store_features(client, tiny_lab):
    tx = tiny_lab.transaction(1, customer=2, terminal=11, amount=42.5)
    response = client.post("/predict", json=tx)
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["score"] <= 1.0
    assert body["model"] == "fraud" and body["model_version"] == tiny_lab.model_version
    assert body["event_id"] == 1
    assert list(body["features"]) == list(FEATURE_COLUMNS)
    # The stored customer row (count 6, mean 52 for customer 2) plus this transaction.
    assert body["features"]["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 7
    assert body["features"]["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == pytest.approx((6 * 52 + 42.5) / 7)
    assert body["features"]["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 11
    assert body["features"]["TX_AMOUNT"] == 42.5
    assert body["defaults"] == {"customer_spending": False, "terminal_risk": False}
    age = (dt.datetime.fromisoformat(tx["TX_DATETIME"]) - tiny_lab.watermark).total_seconds()
    assert body["feature_age_seconds"] == {"customer_spending": age, "terminal_risk": age}
    assert body["stale"] == {"customer_spending": False, "terminal_risk": False}
    assert body["future"] == {"customer_spending": False, "terminal_risk": False}
    assert body["latency_ms"] > 0
    assert client.get("/stats").json()["features"] == {"stale": 0, "future": 0}


def test_score_is_the_models_score_of_the_reported_features(client, tiny_lab):
    config = load_config(tiny_lab.root)
    model = model_flavor(get_plugin_manager(config), "lightning_mlp").load(tiny_lab.root / MODEL_ARTIFACT)
    body = client.post("/predict", json=tiny_lab.transaction(5, amount=913.0)).json()
    row = np.array([[body["features"][n] for n in model.feature_names]], dtype=np.float32)
    assert body["score"] == pytest.approx(float(model.predict(row)[0]), abs=1e-6)


def test_night_and_weekend_come_from_the_transaction_time(client, tiny_lab):
    sunday_night = dt.datetime(2018, 8, 5, 2, 30)  # a Sunday
    body = client.post("/predict", json=tiny_lab.transaction(2, when=sunday_night)).json()
    assert body["features"]["TX_DURING_WEEKEND"] == 1 and body["features"]["TX_DURING_NIGHT"] == 1


def test_unknown_customer_and_terminal_get_flagged_defaults(client, tiny_lab):
    response = client.post("/predict", json=tiny_lab.transaction(3, customer=999_999, terminal=888_888, amount=20.0))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["defaults"] == {"customer_spending": True, "terminal_risk": True}
    assert body["features"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert body["features"]["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 20.0
    assert body["features"]["TERMINAL_ID_RISK_7DAY_WINDOW"] == 0.0
    assert 0.0 <= body["score"] <= 1.0
    one = client.post("/predict", json=tiny_lab.transaction(4, customer=1, terminal=888_888)).json()
    assert one["defaults"] == {"customer_spending": False, "terminal_risk": True}


@pytest.mark.parametrize("days, stale", [
    (30, {"customer_spending": False, "terminal_risk": False}),  # exactly the ttl: still fresh
    (31, {"customer_spending": True, "terminal_risk": False}),   # customer ttl 30 d, terminal 37 d
    (38, {"customer_spending": True, "terminal_risk": True}),
])
def test_stale_is_flagged_past_each_views_ttl(client, tiny_lab, days, stale):
    when = tiny_lab.watermark + dt.timedelta(days=days)
    body = client.post("/predict", json=tiny_lab.transaction(6, when=when)).json()
    assert body["stale"] == stale
    assert body["feature_age_seconds"]["customer_spending"] == days * 86400
    assert client.get("/stats").json()["features"] == {"stale": int(any(stale.values())), "future": 0}


def test_a_back_dated_request_is_flagged_future_and_served_defaults(client, tiny_lab):
    when = tiny_lab.watermark - dt.timedelta(hours=1)  # before the materialization it would read
    body = client.post("/predict", json=tiny_lab.transaction(8, customer=2, terminal=11, when=when)).json()
    assert body["future"] == {"customer_spending": True, "terminal_risk": True}
    assert body["defaults"] == {"customer_spending": True, "terminal_risk": True}
    assert body["stale"] == {"customer_spending": False, "terminal_risk": False}
    assert body["feature_age_seconds"]["terminal_risk"] == -3600
    assert body["features"]["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 1  # this transaction only, not the stored 6
    assert client.get("/stats").json()["features"] == {"stale": 0, "future": 1}


def test_a_time_with_an_offset_is_read_as_wall_clock(client, tiny_lab):
    tx = tiny_lab.transaction(7, when=dt.datetime(2018, 8, 1, 3, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))))
    response = client.post("/predict", json=tx)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["features"]["TX_DURING_NIGHT"] == 1 and body["feature_age_seconds"]["terminal_risk"] == 3 * 3600


# -- bad input: always a 400 naming the field, never a 500, never a ledger row ----------

GOOD = {"TRANSACTION_ID": 1, "TX_DATETIME": "2018-08-01T10:00:00", "CUSTOMER_ID": 1,
        "TERMINAL_ID": 10, "TX_AMOUNT": 12.0}


def _without(key):
    return json.dumps({k: v for k, v in GOOD.items() if k != key})


def _with(**changes):
    return json.dumps({**GOOD, **changes})


@pytest.mark.parametrize("body, field, words", [
    ('{"TRANSACTION_ID": 1,', None, "not valid JSON"),
    ("", None, "not valid JSON"),
    ("[]", None, "JSON object"),
    ("null", None, "JSON object"),
    (_without("TX_AMOUNT"), "TX_AMOUNT", "missing field"),
    (_without("CUSTOMER_ID"), "CUSTOMER_ID", "missing field"),
    (_with(CUSTOMER_ID="abc"), "CUSTOMER_ID", "got `str`"),
    (_with(TX_AMOUNT="12.5"), "TX_AMOUNT", "got `str`"),  # no lax string-to-number coercion
    (_with(TERMINAL_ID=True), "TERMINAL_ID", "got `bool`"),
    (_with(TRANSACTION_ID=1.5), "TRANSACTION_ID", "int"),
    (_with(TX_AMOUNT=-0.01), "TX_AMOUNT", ">= 0"),
    (_with(TX_AMOUNT=1e10), "TX_AMOUNT", "1e9"),
    (_with(TX_AMOUNT=[1, 2]), "TX_AMOUNT", "got `array`"),
    (_with(CUSTOMER_ID=-3), "CUSTOMER_ID", ">= 0"),
    (_with(CUSTOMER_ID=2**63), "CUSTOMER_ID", "<="),
    (_with(TX_DATETIME="yesterday"), "TX_DATETIME", "ISO 8601"),
    (_with(TX_DATETIME=20180801), "TX_DATETIME", "got `int`"),
    (_with(COLOUR="red"), "COLOUR", "unknown field"),
    ('{"TX_AMOUNT": 1e400}', "TX_AMOUNT", "out of range"),
])
def test_bad_input_is_a_400_naming_the_field(client, body, field, words):
    response = client.post("/predict", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["field"] == field
    assert words in payload["detail"]
    if field and not words.startswith("unknown"):
        assert field in payload["detail"]
    assert client.get("/stats").json()["predictions"] == 0


def test_oversized_body_is_refused_before_parsing(client):
    response = client.post("/predict", content=b'{"TX_AMOUNT": ' + b"1" * 20_000 + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_a_nul_byte_in_the_date_is_refused_naming_the_field(client):
    body = _with(TX_DATETIME="2018-09-30T12:00:00\u0000junk")
    assert "\\u0000" in body  # the JSON escape, as a client would send it
    response = client.post("/predict", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "TX_DATETIME" and "TX_DATETIME" in response.json()["detail"]
    assert client.get("/stats").json()["predictions"] == 0


# -- what a web page on this machine can do: nothing -------------------------------------

def _nothing_scored(client):
    stats = client.get("/stats").json()
    assert stats["predictions"] == 0 and stats["ledger"]["appended"] == 0


@pytest.mark.parametrize("headers", [
    {"content-type": "text/plain"},
    {"content-type": "text/plain;charset=UTF-8"},
    {"content-type": "application/x-www-form-urlencoded"},
    {"content-type": "multipart/form-data; boundary=x"},
    {},
])
def test_predict_refuses_a_body_that_is_not_declared_json(client, headers):
    response = client.post("/predict", content=_with().encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert "content-type: application/json" in response.json()["detail"]
    _nothing_scored(client)


def test_a_form_post_is_refused(client):
    response = client.post("/predict", data={k: str(v) for k, v in GOOD.items()})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    _nothing_scored(client)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                                  "localhost.evil.example:8000", "[::2]:8000"])
def test_a_request_for_another_host_name_is_refused_dns_rebinding(client, tiny_lab, host):
    scored = client.post("/predict", json=tiny_lab.transaction(1), headers={"host": host})
    assert scored.status_code == 400 and "Host" in scored.json()["detail"]
    for path in ("/readyz", "/stats", "/schema/openapi.json"):
        assert client.get(path, headers={"host": host}).status_code == 400
    _nothing_scored(client)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:9", "[::1]", "[::1]:8000"])
def test_loopback_host_names_are_served(client, tiny_lab, host):
    assert client.post("/predict", json=tiny_lab.transaction(1), headers={"host": host}).status_code == 200


def test_a_server_bound_beyond_loopback_takes_any_host_name(tiny_lab):
    with open_client(tiny_lab.root, host="0.0.0.0") as c:
        assert wait_ready(c).status_code == 200
        assert c.get("/readyz", headers={"host": "fraud.internal:8000"}).status_code == 200


def test_openapi_document_agrees_with_the_server(client):
    raw = client.get("/schema/openapi.json")
    assert "e+18" not in raw.text and str(2**63 - 1) in raw.text
    spec = raw.json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"200", "400", "413", "415", "503"} <= set(predict["responses"])
    body_ref = predict["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False
    for name in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"):
        bounds = schema["properties"][name]
        assert bounds["type"] == "integer"
        assert bounds["maximum"] == 2**63 - 1 and type(bounds["maximum"]) is int
        assert bounds["minimum"] == 0 and type(bounds["minimum"]) is int
    assert schema["properties"]["TX_AMOUNT"]["maximum"] == 1e9
    # What the document promises is what the server does, at the bound and past it.
    top = client.post("/predict", json={**GOOD, "CUSTOMER_ID": 2**63 - 1})
    assert top.status_code == 200, top.text
    assert client.post("/predict", json={**GOOD, "CUSTOMER_ID": 2**63}).status_code == 400
    assert client.post("/predict", json={**GOOD, "EXTRA": 1}).status_code == 400


# -- health, readiness, schema ------------------------------------------------------------

def test_health_ready_and_schema(client, tiny_lab):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    (loaded,) = body.pop("models")  # the one model, pinned, with its measured footprint
    assert loaded | {"memory_bytes": 1} == {"name": "fraud", "version": tiny_lab.model_version, "pinned": True,
                                            "memory_bytes": 1} and loaded["memory_bytes"] > 0
    assert body | {"warnings": []} == {"ready": True, "reason": None, "model": "fraud", "alias": "champion",
                                       "model_version": tiny_lab.model_version, "warnings": []}
    assert client.get("/schema").status_code == 200
    spec = client.get("/schema/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert predict["operationId"] == "predict" and predict["tags"] == ["prediction"]
    assert predict["summary"] == "Score one Transaction" and "ledger" in predict["description"]
    assert "fraud" not in predict["description"].lower()
    assert {"200", "400", "503"} <= set(predict["responses"])
    body_ref = predict["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert set(schema["required"]) == set(GOOD)
    assert schema["examples"] == [{"TRANSACTION_ID": 1, "TX_DATETIME": "2018-09-30T12:00:00", "CUSTOMER_ID": 596,
                                   "TERMINAL_ID": 3156, "TX_AMOUNT": 57.16}]
    assert schema["properties"]["TX_AMOUNT"]["description"] == "the amount, 0 to 1e9"
    assert spec["paths"]["/readyz"]["get"]["operationId"] == "readyz"


class _SlowStoreStart:
    """A plugin whose online-store hook waits for a signal, then defers to the built-in store."""

    def __init__(self):
        self.go = threading.Event()

    @hookimpl(tryfirst=True)
    def lab_online_store(self, config):
        self.go.wait(10)
        return None  # firstresult: the next implementation (the SQLite store) answers


def test_readyz_is_503_until_start_up_finishes_while_healthz_is_200(tiny_lab):
    config = load_config(tiny_lab.root)
    pm = get_plugin_manager(config)
    slow = _SlowStoreStart()
    pm.register(slow, name="slow-store-start")
    with open_client(tiny_lab.root, pm) as c:
        assert c.get("/healthz").status_code == 200
        waiting = c.get("/readyz")
        assert waiting.status_code == 503 and waiting.json()["reason"] == "opening the online store"
        scored = c.post("/predict", json=tiny_lab.transaction(1))
        assert scored.status_code == 503 and scored.json()["detail"] == "not ready: opening the online store"
        slow.go.set()
        assert wait_ready(c).status_code == 200
        assert c.post("/predict", json=tiny_lab.transaction(1)).status_code == 200
        assert c.get("/stats").json()["not_ready"] == 1


def test_readyz_is_503_with_the_reason_when_the_model_cannot_load(tiny_lab):
    shutil.rmtree(tiny_lab.root / MODEL_ARTIFACT)
    with open_client(tiny_lab.root) as c:
        ready = wait_ready(c)
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False and body["model_version"] == tiny_lab.model_version
        assert body["reason"].startswith("loading model 'fraud' v1") and "failed" in body["reason"]
        assert c.get("/healthz").status_code == 200
        scored = c.post("/predict", json=tiny_lab.transaction(1))
        assert scored.status_code == 503 and scored.json()["detail"].startswith("not ready: loading model")


def test_readyz_names_the_fix_when_there_is_no_champion(bare_lab):
    write_pyproject(bare_lab, 'model_name = "fraud"\n\n[tool.lab.fraud]\n')
    config = load_config(bare_lab)
    Registry.open(config.registry_path, project_root=bare_lab).close()
    with open_client(bare_lab) as c:
        ready = wait_ready(c)
        assert ready.status_code == 503
        assert "has no champion: run `lab run` or `lab promote fraud VERSION`" in ready.json()["reason"]


def test_a_redefined_view_makes_the_server_unready_not_a_500(tiny_lab):
    config = load_config(tiny_lab.root)
    pm = get_plugin_manager(config)
    view = feature_views(pm, config)["terminal_risk"]
    other = dataclasses.replace(view, ttl=view.ttl * 2)  # same name, another definition
    store = pm.hook.lab_online_store(config=config)
    store.write(other, pa.table({view.entity: [10], **{n: [0.5] for n in view.feature_names}}), tiny_lab.watermark)
    # versions live side by side: the served model keeps reading its own, so drop that one
    assert store.drop_version(view.name, view.version)
    store.close()
    with open_client(tiny_lab.root) as c:
        ready = wait_ready(c)
        assert ready.status_code == 503 and "materialize" in ready.json()["reason"]


def test_a_missing_online_store_makes_the_server_unready_and_is_not_created(tiny_lab):
    online = tiny_lab.root / "data" / "online.db"
    online.unlink()
    with open_client(tiny_lab.root) as c:
        ready = wait_ready(c)
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert "run `lab run materialize`" in reason and "--allow-empty-store" in reason
        assert "customer_spending" in reason and "terminal_risk" in reason and str(online) in reason
        scored = c.post("/predict", json=tiny_lab.transaction(1))
        assert scored.status_code == 503 and "lab run materialize" in scored.json()["detail"]
    assert not online.exists()  # reading never creates the store; only materialization does
    assert read_predictions(tiny_lab.root / "data" / "ledger.db") == []


def test_a_view_never_materialized_makes_the_server_unready(tiny_lab):
    config = load_config(tiny_lab.root)
    online = tiny_lab.root / "data" / "online.db"
    online.unlink()
    pm = get_plugin_manager(config)
    view = feature_views(pm, config)["customer_spending"]
    store = pm.hook.lab_online_store(config=config)
    store.write(view, pa.table({view.entity: [1], **{n: [1.0] for n in view.feature_names}}), tiny_lab.watermark)
    store.close()
    with open_client(tiny_lab.root) as c:
        reason = wait_ready(c).json()["reason"]
        assert "'terminal_risk'" in reason and "'customer_spending'" not in reason and "lab run materialize" in reason


@pytest.mark.parametrize("how", ["argument", "config"])
def test_allow_empty_store_serves_defaults_with_a_warning(tiny_lab, how):
    online = tiny_lab.root / "data" / "online.db"
    online.unlink()
    if how == "config":
        with (tiny_lab.root / "pyproject.toml").open("a") as f:
            f.write("\n[tool.lab.serve]\nallow_empty_store = true\n")
    with open_client(tiny_lab.root, **({"allow_empty_store": True} if how == "argument" else {})) as c:
        ready = wait_ready(c)
        assert ready.status_code == 200
        assert any("never materialized" in w for w in ready.json()["warnings"])
        body = c.post("/predict", json=tiny_lab.transaction(1)).json()
        assert body["defaults"] == {"customer_spending": True, "terminal_risk": True}
        assert body["stale"] == {"customer_spending": True, "terminal_risk": True}
        assert body["feature_age_seconds"] == {"customer_spending": None, "terminal_risk": None}
    assert not online.exists()


def test_the_sqlite_online_store_does_not_create_a_missing_file_when_read(tiny_lab, tmp_path):
    from plugins.sqlite_online import SQLiteOnlineStore

    config = load_config(tiny_lab.root)
    view = feature_views(get_plugin_manager(config), config)["terminal_risk"]
    path = tmp_path / "nested" / "online.db"
    store = SQLiteOnlineStore(path)
    try:
        assert store.read(view, [10, 11]) == [None, None]
        assert store.watermark(view) is None and store.materialized() == {}
        assert not path.exists() and not path.parent.exists()
        # A file written after the first read is seen by the same store object.
        writer = SQLiteOnlineStore(path)
        writer.write(view, pa.table({view.entity: [10], **{n: [0.5] for n in view.feature_names}}),
                     tiny_lab.watermark)
        writer.close()
        assert store.read(view, [10, 11])[0] is not None and store.watermark(view) == tiny_lab.watermark
    finally:
        store.close()


# -- the ledger -------------------------------------------------------------------------

def test_every_prediction_reaches_the_ledger_by_shutdown(tiny_lab):
    responses = []
    with open_client(tiny_lab.root) as c:
        assert wait_ready(c).status_code == 200
        for i in range(5):
            responses.append(c.post("/predict", json=tiny_lab.transaction(100 + i, customer=9999 if i == 0 else None)).json())
        c.post("/predict", content=b"{", headers={"content-type": "application/json"})  # no row for this
        responses.append(c.post("/predict", json=tiny_lab.transaction(200),
                                headers={"x-request-id": "trace-abc.1"}).json())
    rows = read_predictions(tiny_lab.root / "data" / "ledger.db")
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in responses]
    assert rows[-1]["request_id"] == "trace-abc.1"
    first = rows[0]
    assert first["event_id"] == 100 and first["model_name"] == "fraud" and first["model_version"] == 1
    assert first["features"] == responses[0]["features"] and first["score"] == responses[0]["score"]
    assert first["defaults"] == {"customer_spending": True, "terminal_risk": False}
    assert first["request"]["CUSTOMER_ID"] == 9999 and first["request"]["TX_DATETIME"].startswith("2018-08-01T10:")
    assert all(r["latency_ms"] > 0 for r in rows)
    assert dt.datetime.fromisoformat(first["at"]).tzinfo is not None


def _record(i: int) -> PredictionRecord:
    return PredictionRecord(event_id=i, model_name="fraud", model_version=1 + i % 2,
                            features={"TX_AMOUNT": float(i)}, defaults={"customer_spending": False},
                            score=0.5, latency_ms=0.3, request={"TRANSACTION_ID": i})


def test_ledger_query_filters_and_limit(tmp_path):
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        for i in range(10):
            assert ledger.append(_record(i))
        assert ledger.flush()
        assert [r["event_id"] for r in ledger.read(3)] == [7, 8, 9]
        assert [r["event_id"] for r in ledger.query(model_version=2)] == [1, 3, 5, 7, 9]
        assert [r["event_id"] for r in ledger.query(event_ids=[4, 8, 99])] == [4, 8]
        assert ledger.stats() | {"commits": 0} == {"appended": 10, "written": 10, "dropped": 0, "failed": 0,
                                                    "commits": 0, "queued": 0}


def test_a_full_ledger_queue_drops_and_counts_instead_of_blocking(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, queue_size=2, batch_size=1)
    # Another connection holds the write lock, so the writer thread waits in BEGIN IMMEDIATE.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert ledger.append(_record(0))
        time.sleep(0.2)  # the writer takes record 0 and waits for the lock
        started = time.perf_counter()
        results = [ledger.append(_record(i)) for i in range(1, 10)]
        assert time.perf_counter() - started < 0.1  # never waited
        assert results[:2] == [True, True] and not any(results[2:])
        assert ledger.stats()["dropped"] == 7
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    ledger.close()
    assert [r["event_id"] for r in read_predictions(path)] == [0, 1, 2]
    assert ledger.stats()["written"] == 3 and not ledger.append(_record(11))  # closed: dropped, counted


def test_ledger_append_is_safe_from_many_threads(tmp_path):
    with Ledger.open(tmp_path / "ledger.db", batch_size=16) as ledger:
        threads = [threading.Thread(target=lambda k=k: [ledger.append(_record(k * 100 + i)) for i in range(50)])
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = read_predictions(tmp_path / "ledger.db")
    assert sorted(r["event_id"] for r in rows) == sorted(k * 100 + i for k in range(4) for i in range(50))


def test_reading_a_missing_ledger_names_the_fix(tmp_path):
    from lab.errors import LabError

    with pytest.raises(LabError, match="created when `lab serve` starts"):
        read_predictions(tmp_path / "nope.db")


# -- plugins and the command line ---------------------------------------------------------

class _VersionRoute:
    """A plugin contributing one route through lab_http_routes."""

    @hookimpl
    def lab_http_routes(self, config):
        @get("/model-version", sync_to_thread=False)
        def model_version(state: State) -> dict:
            return {"model": config.model_name, "version": state.serving.version.version}

        @get("/boom", sync_to_thread=False)
        def boom() -> dict:
            raise RuntimeError("a bug in a plugin route")

        return [model_version, boom]


def test_routes_from_lab_http_routes_are_mounted_and_a_500_is_logged(tiny_lab, capfd):
    config = load_config(tiny_lab.root)
    pm = get_plugin_manager(config)
    pm.register(_VersionRoute(), name="version-route")
    with open_client(tiny_lab.root, pm) as c:
        assert wait_ready(c).status_code == 200
        assert c.get("/model-version").json() == {"model": "fraud", "version": 1}
        broken = c.get("/boom")
        assert broken.status_code == 500
        time.sleep(0.2)  # the log goes through litestar's queue listener thread
    assert "a bug in a plugin route" in capfd.readouterr().err


def test_a_model_no_plugin_declares_cannot_be_served(bare_lab, capsys):
    with pytest.raises(ConfigError, match="set \\[tool.lab\\] model_name"):
        create_app(load_config(bare_lab))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "declares 0 models" in err and "model_name" in err and "Traceback" not in err
    write_pyproject(bare_lab, 'model_name = "fraud"\n\n[tool.lab.fraud]\n')
    assert main(["serve", "--model", "other"]) == 2
    assert "no plugin declares model 'other'" in capsys.readouterr().err


def test_lab_serve_refuses_without_a_champion(bare_lab, capsys):
    write_pyproject(bare_lab, 'model_name = "fraud"\n\n[tool.lab.fraud]\n')
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "nothing to serve" in err and "lab promote fraud VERSION" in err and "Traceback" not in err
    config = load_config(bare_lab)
    Registry.open(config.registry_path, project_root=bare_lab).close()
    assert main(["serve"]) == 2
    assert "model 'fraud' has no champion" in capsys.readouterr().err


def test_lab_serve_names_a_busy_port(tiny_lab, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["--root", str(tiny_lab.root), "serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use; choose another with --port" in err and "warning" not in err


def test_serve_is_offered_through_the_cli_hook(bare_lab, capsys):
    pm = get_plugin_manager(load_config(bare_lab))
    names = [cmd.name for batch in pm.hook.lab_cli_commands() for cmd in (batch or [])]
    assert names.count("serve") == 1
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--port" in out and "--alias" in out and "127.0.0.1" in out and "--allow-empty-store" in out


def test_lab_serve_warns_when_listening_beyond_loopback(tiny_lab, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        serve = ["--root", str(tiny_lab.root), "serve", "--host", "0.0.0.0", "--port", str(port)]
        # /predict open to other machines: refused unless said on purpose (docs/serving.md, Security).
        assert main(serve) == 2
        refused = capsys.readouterr().err
        assert "refusing to listen on 0.0.0.0" in refused and "--allow-open" in refused and "predict_auth" in refused
        assert main([*serve, "--allow-open"]) == 2  # then the port in use stops it, after the warning
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "other machines" in err and "127.0.0.1" in err
