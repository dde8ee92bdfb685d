"""LLM providers: the model table (tokenizers, prices), retries with backoff, the circuit
breaker, the OpenAI-compatible HTTP provider against a real HTTP server on 127.0.0.1, and
the offline extractive provider with the real MiniLM embedder (loaded once per module)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lab.config import load_config
from lab.errors import ConfigError
from lab.llm import models
from lab.llm.providers import CircuitBreaker, ProviderError, ProviderUnavailable, backoff_s, with_retries
from lab.llm.types import ChatRequest, Message, Usage
from lab.plugins import make_plugin_manager

import plugins.llm_providers as llm_providers
from plugins.llm_providers.extractive import NO_ANSWER, ExtractiveProvider, split_sentences
from plugins.llm_providers.openai_http import OpenAIProvider, OpenAISettings, retry_after_s


def lab_config(tmp_path, llm_toml: str = ""):
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "t"\n[tool.lab]\n{llm_toml}\n')
    return load_config(tmp_path)


def ask(question: str, *, context=(), model="extractive", max_tokens=256, messages=None) -> ChatRequest:
    msgs = messages or (Message("user", question),)
    return ChatRequest(messages=tuple(msgs), model=model, context=tuple(context), max_tokens=max_tokens)


# ---------------------------------------------------------------- the model table

def test_an_undeclared_model_gets_the_defaults(tmp_path):
    info = models.model_info(lab_config(tmp_path), "any-server-model")
    assert (info.provider, info.context_window, info.tokenizer, info.declared) == (None, 4096, "words", False)
    assert models.cost_usd(info, Usage(1000, 1000)) == 0.0


def test_a_declared_model_prices_its_usage(tmp_path):
    config = lab_config(tmp_path, """
[tool.lab.llm.models."gpt-4o-mini"]
provider = "openai"
context_window = 128000
tokenizer = "chars4"
input_usd_per_1m = 0.15
output_usd_per_1m = 0.6
fallback = "extractive"
""")
    info = models.model_info(config, "gpt-4o-mini")
    assert (info.provider, info.context_window, info.tokenizer, info.fallback) == ("openai", 128000, "chars4", "extractive")
    assert models.cost_usd(info, Usage(2_000_000, 500_000)) == pytest.approx(0.3 + 0.3)
    assert models.count_tokens(info, "abcdefghi") == 3  # ceil(9 / 4)
    assert models.fallback_chain(config, "gpt-4o-mini") == ["gpt-4o-mini", "extractive"]
    assert list(models.declared_models(config)) == ["gpt-4o-mini"]


@pytest.mark.parametrize("table, named", [
    ('input_usd_per_1m = "cheap"', "input_usd_per_1m"),
    ('output_usd_per_1m = -1.0', "output_usd_per_1m"),
    ('tokenizer = "bpe"', "tokenizer"),
    ('context_window = 0', "context_window"),
    ('price = 1', "price"),
])
def test_a_wrong_model_table_is_a_config_error_naming_the_key(tmp_path, table, named):
    config = lab_config(tmp_path, f'[tool.lab.llm.models.m]\n{table}\n')
    with pytest.raises(ConfigError, match=named):
        models.model_info(config, "m")


def test_fallback_cycles_are_refused(tmp_path):
    config = lab_config(tmp_path, '[tool.lab.llm.models.a]\nfallback = "b"\n[tool.lab.llm.models.b]\nfallback = "a"\n')
    with pytest.raises(ConfigError, match="a -> b -> a"):
        models.fallback_chain(config, "a")


def test_tokenizers_count_deterministically():
    words = models.ModelInfo("m")
    assert models.count_tokens(words, "Hello, world!") == 4
    assert models.count_tokens(words, "") == 0
    minilm = models.ModelInfo("m", tokenizer="minilm")
    assert models.count_tokens(minilm, "Hello, world!") == 4  # hello , world !
    assert models.count_tokens(minilm, "tokenization") == 2  # token ##ization
    long = "word " * 1000
    assert models.count_tokens(minilm, long) == 1000  # no truncation at 128 or 512
    request = ask("Hello, world!", context=("One two three.",))
    assert models.request_tokens(words, request) == 4 + models.MESSAGE_OVERHEAD_TOKENS + 4


# ---------------------------------------------------------------- retries and the breaker

class Flaky:
    """Fails with the given errors in turn, then answers "ok"."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def retryable(after=None):
    return ProviderError("busy", retryable=True, upstream_status=503, retry_after_s=after)


def test_retries_back_off_with_full_jitter_within_the_bound():
    waits: list[float] = []
    call = Flaky(retryable(), retryable(), retryable())
    assert with_retries(call, retries=3, base_s=0.1, max_s=0.25, seed=7, sleep=waits.append) == "ok"
    assert call.calls == 4
    bounds = [0.1, 0.2, 0.25]  # base * 2**i, capped at max_s
    assert all(0 <= w <= b for w, b in zip(waits, bounds)) and len(waits) == 3
    again: list[float] = []
    with_retries(Flaky(retryable(), retryable(), retryable()), retries=3, base_s=0.1, max_s=0.25, seed=7,
                 sleep=again.append)
    assert again == waits  # seeded: the same waits
    assert backoff_s(10, base_s=0.1, max_s=0.25) == 0.25


def test_retries_stop_at_the_limit_and_never_retry_a_client_error():
    with pytest.raises(ProviderError, match="busy"):
        with_retries(Flaky(retryable(), retryable()), retries=1, sleep=lambda s: None)
    call = Flaky(ProviderError("bad request", retryable=False, upstream_status=400))
    with pytest.raises(ProviderError, match="bad request"):
        with_retries(call, retries=5, sleep=lambda s: None)
    assert call.calls == 1


def test_retry_after_is_honoured_and_too_long_a_one_is_not_waited_for():
    waits: list[float] = []
    assert with_retries(Flaky(retryable(after=2.0)), retries=1, base_s=0.01, max_s=0.02, retry_after_max_s=5,
                        sleep=waits.append) == "ok"
    assert waits == [2.0]
    call = Flaky(retryable(after=60.0))
    with pytest.raises(ProviderError) as err:
        with_retries(call, retries=3, retry_after_max_s=5, sleep=waits.append)
    assert call.calls == 1 and err.value.retry_after_s == 60.0


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_breaker_opens_after_n_failures_then_lets_one_trial_through():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, open_s=10.0, name="p", clock=clock)
    down = Flaky(*[retryable() for _ in range(10)])
    for _ in range(2):
        with pytest.raises(ProviderError):
            breaker.call(down)
    assert breaker.state == "closed"
    breaker.call(Flaky())  # a success resets the count
    for _ in range(3):
        with pytest.raises(ProviderError):
            breaker.call(down)
    assert breaker.state == "open" and down.calls == 5
    with pytest.raises(ProviderUnavailable) as err:
        breaker.call(down)
    assert down.calls == 5 and err.value.http_status == 503 and err.value.retry_after_s == pytest.approx(10.0)
    clock.now += 10.0
    assert breaker.state == "half_open"
    with pytest.raises(ProviderError) as err:  # the trial fails: open again for open_s
        breaker.call(down)
    assert not isinstance(err.value, ProviderUnavailable) and down.calls == 6
    assert breaker.state == "open" and breaker.opened_count == 2
    clock.now += 9.9
    with pytest.raises(ProviderUnavailable):
        breaker.call(down)
    clock.now += 0.1
    assert breaker.call(Flaky()) == "ok"  # the trial succeeds: closed
    assert breaker.state == "closed"


def test_the_half_open_breaker_admits_exactly_one_trial_at_a_time():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, open_s=1.0, clock=clock)
    with pytest.raises(ProviderError):
        breaker.call(Flaky(retryable()))
    clock.now += 1.0
    inside, release, results = threading.Event(), threading.Event(), []

    def slow_trial():
        inside.set()
        release.wait(5)
        return "ok"

    worker = threading.Thread(target=lambda: results.append(breaker.call(slow_trial)))
    worker.start()
    assert inside.wait(5)
    with pytest.raises(ProviderUnavailable, match="trial call is in flight"):
        breaker.call(Flaky())
    release.set()
    worker.join(5)
    assert results == ["ok"] and breaker.state == "closed"


def test_a_client_error_does_not_count_against_the_breaker():
    breaker = CircuitBreaker(failures=2, open_s=1.0, clock=FakeClock())
    for _ in range(5):
        with pytest.raises(ProviderError):
            breaker.call(Flaky(ProviderError("400", retryable=False)))
    assert breaker.state == "closed"


# ---------------------------------------------------------------- the HTTP provider

def completion_body(text="Paris.", usage=True):
    body = {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    return body


class Upstream:
    """A real HTTP server on 127.0.0.1 answering scripted (status, body, headers, delay_s)
    in turn (the last one repeats); it records every request it receives."""

    def __init__(self):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                status, payload, headers, delay = (upstream.script.pop(0) if len(upstream.script) > 1
                                                   else upstream.script[0])
                time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, *steps):
        self.script = [s + ({}, 0.0)[len(s) - 2:] for s in steps]
        self.requests.clear()


@pytest.fixture(scope="module")
def upstream():
    server = Upstream()
    yield server
    server.server.shutdown()
    server.server.server_close()


def http_provider(config, url, *, waits=None, **settings):
    defaults = {"base_url": url, "timeout_s": 5.0, "retries": 2, "backoff_base_s": 0.05, "backoff_max_s": 0.1,
                "breaker_failures": 0}
    s = OpenAISettings.from_table({**defaults, **settings}, "tool.lab.llm.providers.up")

    def sleep(seconds):
        if waits is not None:
            waits.append(seconds)
        time.sleep(seconds)

    return OpenAIProvider("up", s, config, sleep=sleep)


def test_500_500_200_succeeds_on_the_third_call_with_bounded_backoff(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("UP_KEY", "sk-secret-123")
    upstream.answer((500, {"error": {"message": "boom"}}), (500, {}), (200, completion_body()))
    waits: list[float] = []
    provider = http_provider(lab_config(tmp_path), upstream.url, waits=waits, api_key_env="UP_KEY",
                             headers={"api-version": "7"})
    started = time.perf_counter()
    out = provider.complete(ask("Capital of France?", model="m"))
    elapsed = time.perf_counter() - started
    assert out.text == "Paris." and out.provider == "up" and out.usage == Usage(11, 2)
    assert len(upstream.requests) == 3 and provider.attempts == 3
    assert len(waits) == 2 and 0 <= waits[0] <= 0.05 and 0 <= waits[1] <= 0.1
    assert elapsed < 2.0
    sent = upstream.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert sent["body"]["model"] == "m" and sent["body"]["max_tokens"] == 256
    assert sent["headers"]["Authorization"] == "Bearer sk-secret-123" and sent["headers"]["api-version"] == "7"
    assert "sk-secret-123" not in repr(provider.settings)


def test_429_with_retry_after_is_waited_for(tmp_path, upstream):
    upstream.answer((429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}), (200, completion_body()))
    waits: list[float] = []
    provider = http_provider(lab_config(tmp_path), upstream.url, waits=waits)
    started = time.perf_counter()
    assert provider.complete(ask("q", model="m")).text == "Paris."
    assert time.perf_counter() - started >= 1.0
    assert waits == [1.0] and len(upstream.requests) == 2


def test_400_is_not_retried_and_names_status_and_message(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("UP_KEY", "sk-secret-123")
    upstream.answer((400, {"error": {"message": "max_tokens is too large"}}))
    provider = http_provider(lab_config(tmp_path), upstream.url, api_key_env="UP_KEY")
    with pytest.raises(ProviderError) as err:
        provider.complete(ask("q", model="m"))
    assert len(upstream.requests) == 1
    assert not err.value.retryable and err.value.upstream_status == 400
    assert "HTTP 400" in str(err.value) and "max_tokens is too large" in str(err.value)
    assert "sk-secret" not in str(err.value)


def test_a_timeout_is_retryable(tmp_path, upstream):
    upstream.answer((200, completion_body(), {}, 1.0))
    provider = http_provider(lab_config(tmp_path), upstream.url, timeout_s=0.2, retries=0)
    with pytest.raises(ProviderError, match="timed out after 0.2 s") as err:
        provider.complete(ask("q", model="m"))
    assert err.value.retryable and err.value.http_status == 504


def test_a_refused_connection_is_retryable(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = http_provider(lab_config(tmp_path), f"http://127.0.0.1:{port}/v1", retries=0)
    with pytest.raises(ProviderError, match="cannot connect") as err:
        provider.complete(ask("q", model="m"))
    assert err.value.retryable


def test_the_breaker_fails_fast_without_reaching_the_server(tmp_path, upstream):
    upstream.answer((503, {"error": {"message": "down"}}))
    provider = http_provider(lab_config(tmp_path), upstream.url, retries=0, breaker_failures=2, breaker_open_s=60)
    for _ in range(2):
        with pytest.raises(ProviderError, match="HTTP 503"):
            provider.complete(ask("q", model="m"))
    assert len(upstream.requests) == 2
    started = time.perf_counter()
    with pytest.raises(ProviderUnavailable, match="circuit breaker is open") as err:
        provider.complete(ask("q", model="m"))
    assert time.perf_counter() - started < 0.05
    assert len(upstream.requests) == 2 and err.value.http_status == 503


def test_usage_is_counted_when_the_server_sends_none(tmp_path, upstream):
    config = lab_config(tmp_path, '[tool.lab.llm.models.m]\ninput_usd_per_1m = 1000000.0\noutput_usd_per_1m = 0\n')
    upstream.answer((200, completion_body("The answer is here.", usage=False)))
    out = http_provider(config, upstream.url).complete(ask("Hello, world!", model="m"))
    assert out.usage == Usage(4 + models.MESSAGE_OVERHEAD_TOKENS, 5)
    assert out.cost_usd == pytest.approx(8.0)


def test_a_missing_api_key_names_the_variable(tmp_path, upstream, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    upstream.answer((200, completion_body()))
    with pytest.raises(ProviderError, match="NO_SUCH_KEY_VAR"):
        http_provider(lab_config(tmp_path), upstream.url, api_key_env="NO_SUCH_KEY_VAR").complete(ask("q"))
    assert upstream.requests == []


def test_provider_tables_build_providers_and_wrong_ones_name_the_fix(tmp_path):
    config = lab_config(tmp_path, '[tool.lab.llm.providers.local]\ntype = "openai"\n'
                                  'base_url = "http://127.0.0.1:9/v1"\nretries = 1\n')
    found = {p.name: p for p in llm_providers.lab_llm_providers(config)}
    assert set(found) == {"local", "extractive"} and found["local"].settings.retries == 1
    bad = {
        'type = "anthropic"': 'type = "openai"',
        'type = "openai"\nbase_url = "127.0.0.1:8000"': "base_url",
        'type = "openai"\nbase_url = "http://h/v1"\ntimeout = 3': "timeout",
        'type = "openai"\nbase_url = "http://h/v1"\nheaders = { Authorization = "Bearer x" }': "api_key_env",
    }
    for table, named in bad.items():
        config = lab_config(tmp_path, f"[tool.lab.llm.providers.x]\n{table}\n")
        with pytest.raises(ConfigError, match=named):
            llm_providers.lab_llm_providers(config)


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# ---------------------------------------------------------------- the extractive provider

CONTEXT = (
    "# Retries\n\nThe HTTP provider retries a failed call up to two times. Each wait is drawn uniformly "
    "between zero and a bound that doubles each time.\n\nA circuit breaker opens after five consecutive "
    "failures. While it is open, calls fail at once with HTTP 503.\n\n```\nlab serve\n```\n",
    "The registry stores model versions in SQLite. Rollback moves an alias back to the previous version.",
)


@pytest.fixture(scope="module")
def embedder():
    """The lab's MiniLM embedder, found through the plugin hooks (loaded once here)."""
    import plugins.minilm_embedder

    from lab.llm.plugins import get_embedder

    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(plugins.minilm_embedder, name="minilm_embedder")
    config = load_config("/nonexistent-lab-root")
    emb = get_embedder(config, pm)
    emb.embed(["warm up"])
    return emb


def test_split_sentences_drops_headings_code_and_fragments():
    text = "# Title\n\nFirst sentence is here. Second one follows it!\n- a list item with words\n```\ncode line here\n```\nOk."
    assert split_sentences(text) == ["First sentence is here.", "Second one follows it!", "a list item with words"]


@pytest.fixture(scope="module")
def extractive(embedder, tmp_path_factory):
    """One extractive provider for the module (its sentence vectors are kept between tests)."""
    config = lab_config(tmp_path_factory.mktemp("extractive"), '[tool.lab.llm.models.small]\ntokenizer = "chars4"\n'
                                                              'input_usd_per_1m = 1.0\noutput_usd_per_1m = 2.0\n')
    return ExtractiveProvider(config, embedder=embedder)


def test_extractive_answers_with_the_sentence_that_holds_the_answer(extractive):
    out = extractive.complete(ask("How many failures open the circuit breaker?", context=CONTEXT))
    assert "A circuit breaker opens after five consecutive failures." in out.text
    assert "registry" not in out.text
    assert out.provider == "extractive" and out.finish_reason == "stop" and out.cost_usd == 0.0
    assert out.usage.output_tokens == models.count_tokens(models.ModelInfo("x"), out.text)
    again = extractive.complete(ask("How many failures open the circuit breaker?", context=CONTEXT))
    assert again.text == out.text  # deterministic
    rollback = extractive.complete(ask("What does rollback do?", context=CONTEXT))
    assert rollback.text.startswith("Rollback moves an alias back to the previous version.")


def test_extractive_says_it_does_not_know_when_nothing_is_close(extractive):
    assert extractive.complete(ask("What is the capital of France?", context=CONTEXT)).text == NO_ANSWER
    assert extractive.complete(ask("Anything?")).text == NO_ANSWER  # no context at all


def test_extractive_reads_a_context_block_inside_the_messages(extractive):
    messages = (Message("system", "Answer from the context only."),
                Message("user", "Context:\n" + "\n\n".join(CONTEXT) + "\n\nQuestion: Where are model versions stored?"))
    out = extractive.complete(ask("", messages=messages, model="small"))
    assert out.text.startswith("The registry stores model versions in SQLite.")
    info = models.model_info(extractive.config, "small")
    assert out.usage.output_tokens == models.count_tokens(info, out.text)
    assert out.cost_usd == pytest.approx(models.cost_usd(info, out.usage)) and out.cost_usd > 0


def test_extractive_truncates_to_max_tokens(extractive):
    out = extractive.complete(ask("How many failures open the circuit breaker?", context=CONTEXT, max_tokens=3))
    assert out.finish_reason == "length" and out.usage.output_tokens <= 3 and out.text == "A circuit breaker"


def test_extractive_finds_its_embedder_through_the_plugins_on_first_use(tmp_path, embedder):
    import plugins.minilm_embedder

    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(plugins.minilm_embedder, name="minilm_embedder")
    pm.register(llm_providers, name="llm_providers")
    from lab.llm.plugins import get_provider

    provider = get_provider(lab_config(tmp_path), pm, "extractive")
    provider._pm = pm  # the hook has no plugin manager; without one it builds the lab's own
    out = provider.complete(ask("What does rollback do?", context=(CONTEXT[1],)))
    assert out.text.startswith("Rollback")
    assert provider.embedder() is embedder  # MiniLM's weights are shared, not loaded again
