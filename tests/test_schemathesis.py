"""The model server against its own OpenAPI document, with schemathesis.

A real server (uvicorn with the settings of `lab serve`, in a thread, on 127.0.0.1)
serves the fraud plugin's tiny lab (real model, registry, online store and ledger).
schemathesis loads the document the server publishes and sends what it generates from
it: its coverage cases (boundary values, missing and wrongly typed fields, unexpected
methods) and property-based cases, valid and invalid, for /predict and every GET
route. Each response must be no 5xx, have a documented status and content type, match
its documented schema, and accept valid data and refuse invalid data. Deterministic
(derandomized) and bounded: a fixed number of cases, about 1,100 requests.
"""

from __future__ import annotations

import collections
import re
import time

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from lab.config import load_config
from lab.plugins import get_plugin_manager
from plugins.fraud.testing import build_tiny_lab
from plugins.litestar_serving import create_app
from tests.conftest import uvicorn_in_thread

ADMIN_LABELS = ["GET /admin/flags", "POST /admin/flags", "POST /admin/promote", "POST /admin/rollback",
                "POST /admin/shadow"]
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
          positive_data_acceptance, negative_data_rejection]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(base URL, tiny lab)`` of a real server, ready; stopped (ledger closed) after the module."""
    lab = build_tiny_lab(tmp_path_factory.mktemp("fuzzed-lab"))
    config = load_config(lab.root)
    with uvicorn_in_thread(create_app(config, get_plugin_manager(config))) as base:
        yield base, lab


FUZZED_EXAMPLES = 500  # per operation with inputs and per mode (valid, invalid)
ADMIN_EXAMPLES = 50  # the admin routes, without a key here: each is a 401 (tests/test_serving_admin.py fuzzes them keyed)


def test_generated_requests_get_no_5xx_and_conform_to_the_document(served):
    base, lab = served
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    sent: collections.Counter = collections.Counter()  # (operation, source) -> requests
    answered: collections.Counter = collections.Counter()  # (operation, status) -> responses
    session = requests.Session()

    def send(operation, source: str, case) -> None:
        sent[operation.label, source] += 1
        # Raises schemathesis' failure report (the check, the response, a curl line).
        response = case.call_and_validate(base_url=base, session=session, checks=CHECKS)
        answered[operation.label, response.status_code] += 1

    started = time.perf_counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        # Boundary values, missing and wrongly typed fields, unexpected methods; valid and invalid.
        for case in schema.iter_coverage_cases(
                operation, generation_modes=list(GenerationMode),
                generation_config=schema.config.generation_for(operation=operation, phase="coverage")):
            send(operation, "coverage", case)
        has_inputs = bool(operation.body or operation.query or operation.headers or operation.path_parameters)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,):
            examples = ADMIN_EXAMPLES if operation.path.startswith("/admin/") else FUZZED_EXAMPLES

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):  # called at once, so the loop variables are this iteration's
                send(operation, mode.value, case)

            fuzz()
    seconds = time.perf_counter() - started
    total = sum(sent.values())
    print(f"\nschemathesis: {total} requests in {seconds:.1f} s: {dict(sent)}; answers {dict(answered)}")

    assert sorted(o.label for o in operations) == sorted(ADMIN_LABELS + [
        "GET /healthz", "GET /metrics", "GET /readyz", "GET /stats", "POST /predict"])
    assert total >= 1000
    assert sent["POST /predict", "positive"] == sent["POST /predict", "negative"] == FUZZED_EXAMPLES
    # Not a vacuous run: valid requests were scored, invalid ones refused.
    assert answered["POST /predict", 200] >= FUZZED_EXAMPLES // 2
    assert answered["POST /predict", 400] >= FUZZED_EXAMPLES // 2
    # The server's own counts agree: no 5xx (but the 503s of /readyz while the fixture
    # waited for start-up), every 200 of /predict a prediction.
    metrics = httpx.get(f"{base}/metrics").text
    samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples]
    assert not [s for s in samples if s.name == "lab_http_requests_total" and s.labels["status"][0] == "5"
                and (s.labels["route"], s.labels["status"]) != ("/readyz", "503")]
    assert sum(s.value for s in samples if s.name == "lab_predictions_total") == answered["POST /predict", 200]


# -- defects the fuzzing found, each pinned ------------------------------------------

def test_a_whole_number_written_as_a_float_is_an_integer(served):
    """JSON Schema's ``integer`` is a value, not a spelling: 44369.0 and 1e3 are integers,
    and the document says the ids are integers. The server refused them (400)."""
    base, lab = served
    body = {**lab.transaction(1, customer=2, terminal=11), "TRANSACTION_ID": 44369.0, "CUSTOMER_ID": 2.0,
            "TERMINAL_ID": 1.1e1}
    scored = httpx.post(f"{base}/predict", json=body)
    assert scored.status_code == 200, scored.text
    assert scored.json()["event_id"] == 44369 and isinstance(scored.json()["event_id"], int)
    assert scored.json()["defaults"] == {"customer_spending": False, "terminal_risk": False}
    # Still refused: a fraction, a number in a string, a bool, past the bound.
    for field, value, words in [("CUSTOMER_ID", 2.5, "Expected `int`, got `float`"),
                                ("CUSTOMER_ID", "2", "Expected `int`, got `str`"),
                                ("TRANSACTION_ID", True, "Expected `int`, got `bool`"),
                                ("TERMINAL_ID", 1e19, "<= 9223372036854775807"),
                                ("TERMINAL_ID", -1.0, ">= 0")]:
        refused = httpx.post(f"{base}/predict", json={**body, field: value})
        assert refused.status_code == 400, (field, value, refused.text)
        assert refused.json()["field"] == field and words in refused.json()["detail"], refused.json()
    # A whole float in one field does not let another field's wrong type through.
    mixed = httpx.post(f"{base}/predict", json={**body, "TX_AMOUNT": "42"})
    assert mixed.status_code == 400 and mixed.json()["field"] == "TX_AMOUNT"


def test_every_route_documents_the_400_of_a_refused_host(served):
    """On a loopback address every route refuses a Host that is not this server's with a
    400 ErrorBody; the document said so only for /predict, so GET /healthz's 400 was an
    undocumented status."""
    base, lab = served
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        body = {"body": lab.transaction(1), "media_type": "application/json"} if operation.body else {}
        case = operation.Case(headers={"Host": "evil.example"}, **body)
        response = case.call(base_url=base)
        assert response.status_code == 400 and "Host" in response.json()["detail"], response.text
        case.validate_response(response, checks=CHECKS)
    assert sorted(labels) == sorted(ADMIN_LABELS + [
        "GET /healthz", "GET /metrics", "GET /readyz", "GET /stats", "POST /predict"])
