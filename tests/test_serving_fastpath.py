"""The lean POST /predict path (plugins/litestar_serving/fastpath.py) answers exactly as
Litestar's generic path: the same requests sent to an app with it and to one without
give the same status, headers and body, and the same ledger rows; keyed /predict included."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from litestar.testing import TestClient

from lab.config import load_config
from lab.serving.keys import KeyStore, keys_path
from lab.serving.ledger import read_predictions
from plugins.fraud.testing import build_tiny_lab
from plugins.litestar_serving import create_app, fastpath

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def lab_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("fastpath") / "lab")


@pytest.fixture
def tiny(lab_template, tmp_path):
    """The tiny lab, twice (one ledger per path)."""
    for name in ("generic", "lean"):
        shutil.copytree(lab_template.root, tmp_path / name)
    return lab_template, tmp_path / "generic", tmp_path / "lean"


def both(generic_root, lean_root):
    """Two clients: Litestar's generic path on one copy of the lab, the lean one on the other."""
    generic, lean = create_app(load_config(generic_root), lean_predict=False), create_app(load_config(lean_root))
    assert getattr(generic.asgi_handler, "__name__", None) != "dispatch" and lean.asgi_handler.__name__ == "dispatch"
    return TestClient(generic, base_url="http://127.0.0.1"), TestClient(lean, base_url="http://127.0.0.1")


def wait_ready(*clients, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not all(c.app.state.serving.ready for c in clients):
        assert time.monotonic() < deadline, [c.app.state.serving.reason for c in clients]
        time.sleep(0.02)


def comparable(response):
    body = response.content
    try:
        parsed = json.loads(body)
    except ValueError:
        return response.status_code, dict(response.headers), body
    headers = dict(response.headers)
    if isinstance(parsed, dict) and "latency_ms" in parsed:
        assert parsed["latency_ms"] >= 0
        parsed["latency_ms"] = None  # timing differs; the length of its digits too
        headers.pop("content-length")
        if re.fullmatch(r"[0-9a-f]{32}", parsed["request_id"]):
            parsed["request_id"] = "<generated>"
    return response.status_code, headers, parsed


def cases(body: dict) -> list[tuple[dict, bytes]]:
    dump = lambda value: json.dumps(value).encode()  # noqa: E731
    without = {k: v for k, v in body.items() if k != "CUSTOMER_ID"}
    return [
        (JSON, dump(body)),
        ({**JSON, "x-request-id": "order-17"}, dump(body)),
        ({**JSON, "x-request-id": "not valid!"}, dump(body)),  # a generated id instead
        ({"content-type": "application/vnd.lab+json; charset=utf-8"}, dump(body)),
        (JSON, dump({**body, "TRANSACTION_ID": 5.0})),  # an integral float in an int field
        (JSON, dump({**body, "CUSTOMER_ID": 99_999})),  # an unknown entity: defaults, flagged
        (JSON, dump({**body, "x": 1})),
        (JSON, dump(without)),
        (JSON, dump({**body, "CUSTOMER_ID": "3"})),
        (JSON, dump({**body, "CUSTOMER_ID": -1})),
        (JSON, dump({**body, "TX_DATETIME": "2018-08-01T10:00:00\u0000junk"})),
        (JSON, dump({**body, "TX_DATETIME": "yesterday"})),
        ({"content-type": "text/plain"}, dump(body)),
        ({}, dump(body)),
        (JSON, b""),
        (JSON, b"[1, 2]"),
        (JSON, b"{bad"),
        (JSON, b" " * 20_000),
        ({**JSON, "host": "evil.example"}, dump(body)),
        ({**JSON, "host": "bad host"}, dump(body)),
    ]


def test_the_lean_path_answers_as_litestar_does_and_writes_the_same_ledger_rows(tiny):
    lab, *roots = tiny
    body = lab.transaction(1)
    generic, lean = both(*roots)
    with generic, lean:
        wait_ready(generic, lean)
        sent = cases(body)
        for i, (headers, content) in enumerate(sent):
            a = comparable(generic.post("/predict", content=content, headers=headers))
            b = comparable(lean.post("/predict", content=content, headers=headers))
            assert a == b, (i, headers, content[:80])
        # Streamed in chunks, no content-length: read whole, or refused past the limit as it arrives.
        whole = json.dumps({**body, "TRANSACTION_ID": 77}).encode()
        for chunks in ([whole[:10], whole[10:]], [b" " * 9000, b" " * 9000]):
            a, b = (comparable(c.post("/predict", content=iter(chunks), headers=JSON)) for c in (generic, lean))
            assert a == b and a[0] in (200, 413), a
        # Not POST /predict exactly: Litestar's own routing, on both.
        for client in (generic, lean):
            assert client.get("/predict").status_code == 405
        metrics = [c.get("/metrics").text for c in (generic, lean)]
        stats = [c.get("/stats").json() for c in (generic, lean)]
    assert stats[0]["predictions"] == stats[1]["predictions"] == 7
    counted = [sorted(line for line in text.splitlines() if line.startswith("lab_http_requests_total")
                      and 'route="/predict"' in line) for text in metrics]
    assert counted[0] == counted[1]
    assert 'lab_http_requests_total{method="POST",route="/predict",status="200"} 7.0' in counted[1]
    ledgers = []
    for root in roots:
        rows = [dict(row) for row in read_predictions(load_config(root).ledger_path)]
        for row in rows:
            assert row.pop("latency_ms") >= 0
            row.pop("at")
            if row["request_id"] != "order-17":
                assert re.fullmatch(r"[0-9a-f]{32}", row.pop("request_id"))
        ledgers.append(rows)
    assert len(ledgers[0]) == 7 and ledgers[0] == ledgers[1]


def test_keyed_predict_is_guarded_the_same_on_the_lean_path(tiny):
    lab, *roots = tiny
    for root in roots:
        pyproject = root / "pyproject.toml"
        pyproject.write_text(pyproject.read_text() + '\n[tool.lab.serve]\npredict_auth = "key"\n')
    with KeyStore.open(keys_path(load_config(roots[0]))) as store:
        _, good = store.create("caller", "predict")
        _, other = store.create("flag-bot", "flags")
    shutil.copy(keys_path(load_config(roots[0])), keys_path(load_config(roots[1])))
    body = json.dumps(lab.transaction(2)).encode()
    generic, lean = both(*roots)
    with generic, lean:
        wait_ready(generic, lean)
        for headers in ({}, {"authorization": "Basic abc"}, {"x-api-key": "nope"}, {"x-api-key": other},
                        {"authorization": f"Bearer {good}"}, {"x-api-key": good}):
            a = comparable(generic.post("/predict", content=body, headers={**JSON, **headers}))
            b = comparable(lean.post("/predict", content=body, headers={**JSON, **headers}))
            assert a == b, headers
            assert a[0] == (200 if good in str(headers) else 401 if other not in str(headers) else 403)


def test_what_the_lean_path_cannot_reproduce_leaves_litestar_in_charge(tiny):
    _, root, _ = tiny
    app = create_app(load_config(root), lean_predict=False)
    route = next(r for r in app.routes if r.path == "/predict")
    handler = route.route_handler_map["POST"][0]
    assert fastpath.unsupported(handler) is None
    handler.after_request = lambda response: response
    assert fastpath.unsupported(handler) == "an after_request hook"
    errors = handler.before_request.__self__
    assert fastpath.install(app, errors) == "an after_request hook"
    assert getattr(app.asgi_handler, "__name__", None) != "dispatch"
