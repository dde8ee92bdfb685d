"""GET /metrics: the model server's Prometheus metrics, scraped from a real app (the fraud
plugin's tiny lab: real model, registry, online store and ledger) and parsed with
prometheus-client's own parser."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import subprocess
import sys
import textwrap
import time
import types

import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lab.config import load_config
from lab.plugins import get_plugin_manager
from plugins.fraud.testing import build_tiny_lab
from plugins.litestar_serving import create_app
from plugins.litestar_serving.metrics import cuda_memory
from tests.conftest import REPO

VIEWS = ("customer_spending", "terminal_risk")


@pytest.fixture(scope="module")
def tiny_lab_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("metrics-lab"))


@pytest.fixture
def tiny_lab(tiny_lab_template, tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(tiny_lab_template.root, root)
    return dataclasses.replace(tiny_lab_template, root=root)


def open_client(root) -> TestClient:
    config = load_config(root)
    return TestClient(create_app(config, get_plugin_manager(config)), base_url="http://127.0.0.1")


def wait_started(client, timeout: float = 30.0) -> int:
    """Wait until start-up ends (ready, or a step failed); the /readyz status."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if (response.status_code == 200 or "failed" in (response.json().get("reason") or "")
                or time.monotonic() > deadline):
            return response.status_code
        time.sleep(0.02)


@pytest.fixture
def client(tiny_lab):
    with open_client(tiny_lab.root) as c:
        assert wait_started(c) == 200
        yield c


def scrape(client) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one GET /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_count_requests_predictions_and_the_features_each_view_was_served(client, tiny_lab):
    wm = tiny_lab.watermark
    known = client.post("/predict", json=tiny_lab.transaction(1, customer=2, terminal=11))
    unknown_terminal = client.post("/predict", json=tiny_lab.transaction(2, customer=2, terminal=999))
    stale_customer = client.post("/predict", json=tiny_lab.transaction(3, when=wm + dt.timedelta(days=31)))
    back_dated = client.post("/predict", json=tiny_lab.transaction(4, when=wm - dt.timedelta(hours=1)))
    assert [r.status_code for r in (known, unknown_terminal, stale_customer, back_dated)] == [200] * 4
    bad_field = client.post("/predict", json={**tiny_lab.transaction(5), "TX_AMOUNT": "12"})
    not_json = client.post("/predict", content=b"x=1", headers={"content-type": "text/plain"})
    assert (bad_field.status_code, not_json.status_code) == (400, 415)

    samples = scrape(client)

    assert value(samples, "lab_predictions_total", model="fraud", version="1", variant="") == 4
    assert value(samples, "lab_http_requests_total", route="/predict", method="POST", status="200") == 4
    assert value(samples, "lab_http_requests_total", route="/predict", method="POST", status="400") == 1
    assert value(samples, "lab_http_requests_total", route="/predict", method="POST", status="415") == 1
    timed = dict(model="fraud", route="/predict", method="POST")
    assert value(samples, "lab_http_request_duration_seconds_count", **timed) == 6
    assert 0 < value(samples, "lab_http_request_duration_seconds_sum", **timed) < 60
    # Buckets from a tenth of a millisecond to seconds, cumulative, ending in +Inf.
    assert value(samples, "lab_http_request_duration_seconds_bucket", le="0.0001", **timed) is not None
    assert value(samples, "lab_http_request_duration_seconds_bucket", le="10.0", **timed) == 6
    assert value(samples, "lab_http_request_duration_seconds_bucket", le="+Inf", **timed) == 6
    # The scrape is timed under its own route; at the scrape, it is the one request in flight.
    assert value(samples, "lab_http_requests_in_flight") == 1
    assert value(samples, "lab_http_request_duration_seconds_count", model="fraud", route="/metrics",
                 method="GET") is None
    again = scrape(client)
    assert value(again, "lab_http_request_duration_seconds_count", model="fraud", route="/metrics",
                 method="GET") == 1
    assert value(again, "lab_http_request_duration_seconds_count", **timed) == 6

    # Per view: the unknown terminal, the customer past its 30-day ttl, both views of
    # the back-dated request.
    assert {v: value(samples, "lab_feature_defaults_total", view=v) for v in VIEWS} == \
        {"customer_spending": 2, "terminal_risk": 2}
    assert {v: value(samples, "lab_feature_stale_total", view=v) for v in VIEWS} == \
        {"customer_spending": 1, "terminal_risk": 0}
    assert {v: value(samples, "lab_feature_future_total", view=v) for v in VIEWS} == \
        {"customer_spending": 1, "terminal_risk": 1}
    assert value(samples, "lab_not_ready_total", reason="not_ready") == 0
    assert value(samples, "lab_ready") == 1
    assert value(samples, "lab_model_info", model="fraud", alias="champion", version="1") == 1
    assert samples[("process_resident_memory_bytes", ())] > 10 * 2**20


def test_ledger_counters_queue_depth_and_lag(client, tiny_lab):
    for i in range(5):
        assert client.post("/predict", json=tiny_lab.transaction(i)).status_code == 200
    assert client.app.state.serving.ledger.flush(10)
    samples = scrape(client)
    assert {o: value(samples, "lab_ledger_records_total", outcome=o)
            for o in ("appended", "written", "dropped", "failed")} == \
        {"appended": 5, "written": 5, "dropped": 0, "failed": 0}
    assert value(samples, "lab_ledger_commits_total") >= 1
    assert value(samples, "lab_ledger_queue_depth") == 0
    assert value(samples, "lab_ledger_lag_records") == 0


def test_not_ready_answers_are_counted(tiny_lab):
    load_config(tiny_lab.root).registry_path.unlink()  # start-up fails: no registry
    with open_client(tiny_lab.root) as c:
        assert wait_started(c) == 503
        assert c.post("/predict", json=tiny_lab.transaction(1)).status_code == 503
        samples = scrape(c)
    assert value(samples, "lab_not_ready_total", reason="not_ready") == 1
    assert value(samples, "lab_http_requests_total", route="/predict", method="POST", status="503") == 1
    assert value(samples, "lab_ready") == 0
    assert value(samples, "lab_model_info", model="fraud", alias="champion", version="1") is None


def test_two_apps_in_one_process_keep_their_own_metrics(client, tiny_lab, tmp_path):
    other_root = tmp_path / "other"
    shutil.copytree(tiny_lab.root, other_root)
    with open_client(other_root) as other:
        assert wait_started(other) == 200
        for i in range(3):
            other.post("/predict", json=tiny_lab.transaction(i))
        client.post("/predict", json=tiny_lab.transaction(9))
        mine, theirs = scrape(client), scrape(other)
    assert value(mine, "lab_predictions_total", model="fraud", version="1", variant="") == 1
    assert value(theirs, "lab_predictions_total", model="fraud", version="1", variant="") == 3


def test_metrics_keep_the_host_check_and_count_the_refusal(client):
    refused = client.get("/metrics", headers={"host": "evil.example"})
    assert refused.status_code == 400 and "Host" in refused.json()["detail"]
    samples = scrape(client)
    assert value(samples, "lab_http_requests_total", route="/metrics", method="GET", status="400") == 1


def test_metrics_are_in_the_openapi_document_as_text(client):
    document = client.get("/schema/openapi.json").json()
    operation = document["paths"]["/metrics"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]
    assert operation["responses"]["200"]["content"]["text/plain"]["schema"] == {"type": "string"}


def test_cuda_memory_only_from_an_imported_torch_with_cuda():
    assert cuda_memory(None) == {}  # torch not imported: nothing, and nothing imported
    no_gpu = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
    assert cuda_memory(no_gpu) == {}
    two_gpus = types.SimpleNamespace(cuda=types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 2,
        memory_allocated=lambda i: 1000 * (i + 1), memory_reserved=lambda i: 4096 * (i + 1)))
    assert cuda_memory(two_gpus) == {"0": (1000, 4096), "1": (2000, 8192)}
    broken = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: 1 / 0))
    assert cuda_memory(broken) == {}


def test_cuda_series_appear_only_on_a_gpu(client):
    import torch  # the tiny lab's model already imported it

    text = client.get("/metrics").text
    assert ("lab_cuda_memory_allocated_bytes{" in text) == torch.cuda.is_available()


def _run(code: str, cwd) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_a_scrape_never_imports_torch(tmp_path):
    assert _run("""
        import sys
        from types import SimpleNamespace
        from plugins.litestar_serving.metrics import StateCollector
        state = SimpleNamespace(ready=False, version=None, alias="champion", ledger=None)
        families = [f.name for f in StateCollector(state).collect()]
        print(families, "torch" in sys.modules)
    """, tmp_path) == "['lab_ready', 'lab_model_info'] False"


def test_lab_help_never_imports_prometheus_client(tmp_path):
    assert _run("""
        import sys
        from lab.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print("prometheus_client" in sys.modules)
    """, tmp_path) == "False"
