"""``lab serve`` of a lab with ``[tool.lab.llm]`` and prompts but no tabular model, run for
real on 127.0.0.1: the OpenAI-compatible chat completion through a registered prompt, a
``lab rollback`` of the prompt's production alias followed within 1.5 s, 400s naming the
field, a 429 with Retry-After, the health and metrics routes, and the OpenAI HTTP provider
(``plugins/llm_providers``, type "openai") pointed at this endpoint answering exactly as
the extractive provider called directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab.config import load_config
from lab.llm.ledger import LLMLedger, ledger_path
from lab.llm.plugins import get_provider
from lab.llm.prompts import read_prompt, register_prompt
from lab.llm.types import ChatRequest, Message
from lab.plugins import get_plugin_manager
from lab.registry import Registry
from lab.testing.pytest_plugin import write_bare_pyproject
from tests._helpers import free_port

LAB = Path(sys.executable).with_name("lab")
PROMPT = """+++
model = "extractive"
max_tokens = 64
+++
### system
RULE
### user
Context:
{{passages}}
Question: {{question}}
"""
PASSAGES = ["The registry keeps every model version.", "Aliases point at versions and move on promotion.",
            "The ledger records each prediction."]
QUESTION = "What do aliases point at?"
EXPECTED = "Aliases point at versions and move on promotion."
# A prompt that renders retrieved passages: the server retrieves them from the lab's index
RAG_PROMPT = """+++
model = "extractive"
k = 1
+++
### user
Context:
{{context}}
Question: {{question}}
"""
RAG_DOCS = ["# Serving\n\nThe model server listens on port 8000 unless told otherwise.",
            "# Cooking\n\nSimmer the onions slowly until they turn golden brown."]


def _call(port: int, path: str, body: dict | None = None, *, content_type: str = "application/json"):
    """``(status, headers, parsed body)`` of a GET (no body) or POST to the server."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw, status, headers = answer.read(), answer.status, answer.headers
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, exc.headers
    text = raw.decode()
    return status, headers, (json.loads(text) if headers.get("content-type", "").startswith("application/json")
                             else text)


def _chat(port: int, prompt: str = "answer", user: str = "ann", **extra):
    body = {"model": "extractive", "prompt": prompt, "user": user, "messages": [],
            "variables": {"passages": PASSAGES, "question": QUESTION}}
    return _call(port, "/v1/chat/completions", {**body, **extra})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A lab with prompt ``answer`` v1 and v2 (production: v2), served by ``lab serve``."""
    root = tmp_path_factory.mktemp("llm_lab")
    port = free_port()
    write_bare_pyproject(root, f"""
        [tool.lab.llm]
        provider = "extractive"
        model = "extractive"

        [tool.lab.llm.limits]
        user_requests_per_min = 3

        [tool.lab.llm.cache]
        enabled = false

        [tool.lab.llm.models.broken]
        provider = "ghost"   # no plugin offers it: the provider-failure path

        [tool.lab.llm.providers.remote]
        type = "openai"
        base_url = "http://127.0.0.1:{port}/v1"
        retries = 0
        timeout_s = 30
        """)
    (root / "prompts").mkdir()
    config = load_config(root)
    for rule in ("Answer from the context only.", "Answer from the context."):
        (root / "prompts" / "answer.md").write_text(PROMPT.replace("RULE", rule))
        register_prompt(config, "answer")
    (root / "prompts" / "rag.md").write_text(RAG_PROMPT)
    register_prompt(config, "rag")
    with Registry.open(config.registry_path, project_root=root) as registry:
        registry.promote("answer", 1, alias="production")
        registry.promote("answer", 2, alias="production")
        registry.promote("rag", 1, alias="production")
    from lab.llm.rag import Index

    index = Index(config, get_plugin_manager(config))
    try:
        index.ingest([("notes/serving.md", RAG_DOCS[0]), ("notes/cooking.md", RAG_DOCS[1])])
    finally:
        index.close()
    env = {k: v for k, v in os.environ.items() if k != "LAB_HOME"}
    log = open(root / "serve.log", "wb")
    process = subprocess.Popen([str(LAB), "--root", str(root), "serve", "--port", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _call(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"lab serve did not become ready:\n{(root / 'serve.log').read_text()}")
            time.sleep(0.1)
        yield root, port, config
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_chat_completion_through_a_registered_prompt(server):
    root, port, config = server
    status, headers, body = _chat(port, user="first")
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["model"] == "extractive"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": EXPECTED}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    x = body["x-lab"]
    assert (x["prompt"], x["version"], x["hash"], x["cached"]) == ("answer", 2, read_prompt(config, "answer").hash,
                                                                  False)
    assert headers["X-Request-ID"] == x["request_id"]
    with LLMLedger(ledger_path(config)) as ledger:
        row = next(r for r in ledger.calls(50) if r["request_id"] == x["request_id"])
    assert (row["status"], row["prompt_name"], row["prompt_version"], row["prompt_hash"], row["output"],
            row["user"]) == ("ok", "answer", 2, x["hash"], EXPECTED, "first")


def test_rollback_of_production_is_followed_within_1_5_s(server):
    root, port, _ = server
    assert _chat(port, user="before")[2]["x-lab"]["version"] == 2
    assert _chat(port, prompt="answer@1", user="pinned")[2]["x-lab"]["version"] == 1
    env = {k: v for k, v in os.environ.items() if k != "LAB_HOME"}
    done = subprocess.run([str(LAB), "--root", str(root), "rollback", "answer", "--alias", "production"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    moved, seen, i = time.monotonic(), 2, 0
    while seen != 1 and time.monotonic() - moved < 5:
        i += 1
        seen = _chat(port, user=f"poll-{i}")[2]["x-lab"]["version"]
        time.sleep(0.02)
    took = time.monotonic() - moved
    print(f"rollback followed after {took:.3f} s")
    assert seen == 1 and took <= 1.5, f"still v{seen} after {took:.2f} s"
    with Registry.open(load_config(root).registry_path, project_root=root) as registry:
        registry.promote("answer", 2, alias="production")  # as the module's other tests expect


def test_bad_fields_are_400s_naming_the_field(server):
    _, port, _ = server
    cases = [
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"prompt": "nosuch"}, "prompt"),
        ({"prompt": "answer@staging"}, "prompt"),
        ({"variables": {"passages": "p"}}, "variables"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"stream": True}, "stream"),
    ]
    for extra, param in cases:
        status, _, body = _chat(port, user=f"bad-{param}", **extra)
        assert status == 400, (extra, body)
        assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["message"]
    status, _, body = _call(port, "/v1/chat/completions", {"model": "extractive"})
    assert (status, body["error"]["param"]) == (400, "messages")
    status, _, body = _call(port, "/v1/chat/completions", {"messages": []}, content_type="text/plain")
    assert status == 415 and "application/json" in body["error"]["message"]


def test_rate_limit_is_a_429_with_retry_after(server):
    _, port, _ = server
    statuses = [_chat(port, user="greedy")[:2] for _ in range(4)]
    assert [s for s, _ in statuses[:3]] == [200, 200, 200]
    status, headers = statuses[3]
    assert status == 429 and int(headers["Retry-After"]) >= 1


def test_models_health_and_metrics(server):
    _, port, _ = server
    status, _, body = _call(port, "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in body["data"]] == [("extractive", "extractive"), ("broken", "ghost")]
    assert _call(port, "/healthz")[:1] == (200,)
    assert _call(port, "/readyz")[2]["ready"] is True
    status, _, text = _call(port, "/metrics")
    assert status == 200 and 'lab_llm_requests_total{status="200"}' in text


def test_the_openai_provider_on_this_endpoint_answers_as_the_extractive_one(server):
    _, port, config = server
    pm = get_plugin_manager(config)
    request = ChatRequest(messages=(Message("system", "Answer from the context."), Message(
        "user", "Context:\n" + "\n".join(PASSAGES) + f"\nQuestion: {QUESTION}")), model="extractive",
        user="provider-check")
    remote = get_provider(config, pm, "remote").complete(request)
    direct = get_provider(config, pm, "extractive").complete(request)
    assert remote.text == direct.text == EXPECTED
    assert remote.provider == "remote" and remote.usage.output_tokens > 0


def test_a_lab_with_a_model_serves_the_llm_routes_beside_predict(boring_model):
    """With a tabular model too, ``create_app`` mounts the LLM routes beside ``/predict``."""
    from litestar.testing import TestClient

    from lab.testing.pytest_plugin import add_to_lab
    from plugins.litestar_serving import create_app

    root = boring_model.root
    add_to_lab(root, toml="\n[tool.lab.llm]\nprovider = \"extractive\"\n")
    boring_model.materialize()
    config = load_config(root)
    with TestClient(create_app(config, get_plugin_manager(config)), base_url="http://127.0.0.1") as client:
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        assert models.json()["data"][0]["id"] == "extractive"
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 3}]})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "messages[0].content"
        paths = client.get("/schema/openapi.json").json()["paths"]
        assert "/predict" in paths and "/v1/chat/completions" in paths


def test_without_a_gateway_the_provider_is_called_and_recorded(server):
    """The fallback path (no ``lab.llm.gateway``): the provider straight, each outcome recorded."""
    from lab.errors import LabError
    from plugins.litestar_serving.llm_routes import LLMService, _as_openai, parse_chat

    _, _, config = server
    service = LLMService(config, get_plugin_manager(config), refresh_s=1.0)
    service.gateway = None
    try:
        chat = parse_chat(json.dumps({"prompt": "answer@1", "user": "direct", "variables": {
            "passages": PASSAGES, "question": QUESTION}}).encode())
        completion, prompt, _ = service.complete(chat, "direct-1", None)
        assert completion.text == EXPECTED and prompt.version == 1
        bad = parse_chat(json.dumps({"model": "broken", "messages": [{"role": "user", "content": "hi"}]}).encode())
        with pytest.raises(LabError) as failed:
            service.complete(bad, "direct-2", None)
        assert _as_openai(failed.value).status == 502
        rows = {r["request_id"]: r for r in service.ledger.calls(50, prompt=None)}
        assert (rows["direct-1"]["status"], rows["direct-1"]["prompt_version"]) == ("ok", 1)
        assert rows["direct-2"]["status"] == "error" and "ghost" in rows["direct-2"]["error"]
    finally:
        service.close()


def test_a_prompt_rendering_context_gets_passages_retrieved_from_the_labs_index(server):
    """No ``context`` in the request: the server retrieves the prompt's ``k`` passages with
    its ``question`` variable, renders them and answers from them; without the question
    the 400 names the variable."""
    _, port, _ = server
    status, _, body = _call(port, "/v1/chat/completions", {
        "model": "extractive", "prompt": "rag", "user": "rag-user", "messages": [],
        "variables": {"question": "Which port does the model server listen on?"}})
    assert status == 200, body
    assert "8000" in body["choices"][0]["message"]["content"]
    status, _, body = _call(port, "/v1/chat/completions", {
        "model": "extractive", "prompt": "rag", "user": "rag-user2", "messages": [], "variables": {}})
    assert status == 400 and "question" in json.dumps(body)


def test_a_flag_assigns_prompt_versions_sticky_per_user_and_the_ledger_records_the_variant(server):
    """A flag whose variants name prompt versions: each user always gets the same version
    (the flags' own hash), both versions are served across users, and each ledger row
    carries the flag and variant."""
    from lab.experiments import Experiment, ExperimentStore, Variant

    root, port, config = server
    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("prompt_ab", (Variant("control", 0.5, {"model_version": 1}),
                                              Variant("treatment", 0.5, {"model_version": 2})),
                                kind="flag", unit="user"))
        store.start("prompt_ab")
    seen: dict[str, set] = {}
    for round_ in range(2):
        for i in range(12):
            user = f"flag-user-{i}"
            status, _, body = _chat(port, user=user, flag="prompt_ab")
            assert status == 200, body
            lab = body["x-lab"]
            assert lab["flag"] == "prompt_ab" and lab["variant"] in ("control", "treatment")
            assert lab["version"] == {"control": 1, "treatment": 2}[lab["variant"]]
            seen.setdefault(user, set()).add(lab["version"])
    assert all(len(versions) == 1 for versions in seen.values()), seen  # sticky
    assert {v for versions in seen.values() for v in versions} == {1, 2}
    with LLMLedger(ledger_path(config)) as ledger:
        rows = [r for r in ledger.calls(100) if r["experiment"] == "prompt_ab"]
    assert len(rows) == 24 and {r["variant"] for r in rows} == {"control", "treatment"}
    assert all(r["prompt_version"] == {"control": 1, "treatment": 2}[r["variant"]] for r in rows)
    status, _, body = _chat(port, user="flag-user-0", flag="prompt_ab", prompt="answer@production")
    assert status == 400 and body["error"]["param"] == "flag"
