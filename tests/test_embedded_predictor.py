"""The embedded predictor (``lab.load_model``) scores exactly as the model server does:
the same features, score, freshness flags and ledger row, on the tiny fraud lab."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil

import pytest
from litestar.testing import TestClient

import lab
from lab.config import load_config
from lab.errors import LabError
from lab.plugins import get_plugin_manager
from lab.serving.ledger import Ledger
from plugins.fraud.testing import build_tiny_lab
from plugins.litestar_serving import create_app

NOT_COMPARED = {"request_id", "latency_ms"}


@pytest.fixture(scope="module")
def tiny_lab_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("tiny-lab-embedded"))


def _copy(template, folder):
    shutil.copytree(template.root, folder)
    return dataclasses.replace(template, root=folder)


def _requests(tiny):
    return [
        tiny.transaction(1),  # known customer and terminal
        tiny.transaction(2, customer=999_999, terminal=888_888),  # unknown entities: defaults
        tiny.transaction(3, when=tiny.watermark + dt.timedelta(days=400)),  # stale views
        tiny.transaction(4, when=tiny.watermark - dt.timedelta(days=2)),  # back-dated: future
        {**tiny.transaction(5), "TX_DATETIME": (tiny.watermark + dt.timedelta(hours=3)).isoformat() + "+02:00"},
    ]


def _served(root, requests):
    config = load_config(root)
    client = TestClient(create_app(config, get_plugin_manager(config)), base_url="http://127.0.0.1")
    with client:
        deadline = dt.datetime.now() + dt.timedelta(seconds=30)
        while client.get("/readyz").status_code != 200:
            assert dt.datetime.now() < deadline, client.get("/readyz").json()
        out = []
        for i, body in enumerate(requests):
            response = client.post("/predict", json=body, headers={"x-request-id": f"req-{i}"})
            assert response.status_code == 200, response.text
            out.append(response.json())
    return out


def _ledger_rows(root):
    with Ledger.open(load_config(root).ledger_path) as ledger:
        rows = ledger.read(limit=100)
    return sorted(rows, key=lambda r: str(r["event_id"]))


def test_embedded_predictions_and_ledger_equal_the_servers(tiny_lab_template, tmp_path):
    served_lab = _copy(tiny_lab_template, tmp_path / "served")
    embedded_lab = _copy(tiny_lab_template, tmp_path / "embedded")
    requests = _requests(served_lab)
    served = _served(served_lab.root, requests)
    with lab.load_model("fraud@champion", root=embedded_lab.root) as predictor:
        embedded = [predictor.predict(body, request_id=f"req-{i}") for i, body in enumerate(requests)]
    assert any(any(r["defaults"].values()) for r in served)
    assert any(any(r["stale"].values()) for r in served)
    assert any(any(r["future"].values()) for r in served)
    for server, here in zip(served, embedded):
        assert server["fallback"] is False and server["flag"] is None
        for key, value in here.items():
            if key not in NOT_COMPARED:
                assert value == server[key], key
        fallback_only = {"fallback", "fallback_reason", "fallback_source", "batch_model_version", "batch_scored_at",
                         "batch_age_seconds"}  # the server's fallbacks; the embedded predictor has none
        assert set(server) - {"flag", "variant", *fallback_only} == set(here)
    served_rows, embedded_rows = _ledger_rows(served_lab.root), _ledger_rows(embedded_lab.root)
    assert len(served_rows) == len(embedded_rows) == len(requests)
    for a, b in zip(served_rows, embedded_rows):
        assert {k: v for k, v in a.items() if k not in {"at", "latency_ms", "id"}} == \
               {k: v for k, v in b.items() if k not in {"at", "latency_ms", "id"}}


def test_predict_many_and_refs_by_version_and_default(tiny_lab_template, tmp_path):
    tiny = _copy(tiny_lab_template, tmp_path / "lab")
    requests = [tiny.transaction(i) for i in range(3)]
    with lab.load_model(f"fraud@{tiny.model_version}", root=tiny.root, ledger=False) as by_version:
        first = by_version.predict_many(requests)
        assert by_version.ledger is None
    with lab.load_model("fraud", root=tiny.root, ledger=False) as champion:
        second = champion.predict_many(requests)
    assert [r["score"] for r in first] == [r["score"] for r in second]
    assert [r["event_id"] for r in first] == [0, 1, 2]


@pytest.mark.parametrize("change, field", [
    ({"TX_AMOUNT": "lots"}, "TX_AMOUNT"),
    ({"CUSTOMER_ID": 1.5}, "CUSTOMER_ID"),
    ({"TX_DATETIME": "yesterday"}, "TX_DATETIME"),
    ({"TX_AMOUNT": -1.0}, "TX_AMOUNT"),
    ({"SURPRISE": 1}, "SURPRISE"),
])
def test_a_bad_field_is_a_one_line_error_naming_it(tiny_lab_template, tmp_path, change, field):
    tiny = _copy(tiny_lab_template, tmp_path / "lab")
    with lab.load_model("fraud", root=tiny.root) as predictor:
        with pytest.raises(LabError) as caught:
            predictor.predict({**tiny.transaction(1), **change})
        missing = {k: v for k, v in tiny.transaction(1).items() if k != "TERMINAL_ID"}
        with pytest.raises(LabError, match="'TERMINAL_ID' is missing"):
            predictor.predict(missing)
        assert predictor.ledger.stats()["written"] == 0
    message = str(caught.value)
    assert repr(field) in message and "\n" not in message


def test_an_unknown_model_alias_or_version_names_the_fix(tiny_lab_template, tmp_path):
    tiny = _copy(tiny_lab_template, tmp_path / "lab")
    with pytest.raises(LabError, match="declared: fraud"):
        lab.load_model("nosuch@champion", root=tiny.root)
    with pytest.raises(LabError, match="lab promote fraud VERSION"):
        lab.load_model("fraud@staging", root=tiny.root)
    with pytest.raises(LabError, match="versions are 1"):
        lab.load_model("fraud@7", root=tiny.root)
    with pytest.raises(LabError, match="MODEL@ALIAS"):
        lab.load_model("fraud@", root=tiny.root)
