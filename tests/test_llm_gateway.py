"""The LLM gateway (lab.llm.gateway) and its parts: rate limits, token budgets, routing,
caches, degradation near a spend ceiling, and THE acceptance test: 50 concurrent requests
(threads, and two processes on one SQLite file) against a ceiling that admits only some:
the recorded spend never exceeds it, and no request is both refused and billed.

The provider is a real ``Provider`` in a tiny project plugin written into the lab
(``priced_provider``): it sleeps a few milliseconds, bills known tokens at the model's
prices and appends each billed call to ``billed.log``; a hashed bag-of-words embedder in
the same plugin serves the semantic cache, so no test here loads MiniLM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lab.config import load_config
from lab.errors import LabError
from lab.llm.budget import BudgetExceeded, allocate, budget_drift, check_budget_drift
from lab.llm.gateway import Gateway
from lab.llm.ledger import LLMLedger
from lab.llm.limits import LimitSettings, RateLimited, RateLimiter, RequestTooLarge
from lab.llm.routing import RoutingSettings, route
from lab.llm.spend import SpendCeilingReached
from lab.llm.types import ChatRequest, Message
from lab.plugins import get_plugin_manager


PLUGIN = '''
"""A deterministic priced provider and a bag-of-words embedder, for the gateway's tests."""
import json, re, threading, time, zlib

from lab import hookimpl
from lab.llm import models
from lab.llm.providers import ProviderError
from lab.llm.types import Completion, Usage

_LOCK = threading.Lock()
OUTPUT_TOKENS = 10


class PricedProvider:
    name = "priced"

    def __init__(self, config):
        self.config = config
        self.log = config.root / "billed.log"
        self.seen = []

    def complete(self, request):
        if "FAIL" in request.messages[-1].content:
            raise ProviderError("the test provider was asked to fail", retryable=False)
        time.sleep(0.004)
        info = models.model_info(self.config, request.model)
        usage = Usage(models.request_tokens(info, request), min(OUTPUT_TOKENS, request.max_tokens))
        cost = models.cost_usd(info, usage)
        with _LOCK:
            self.seen.append(request)
            with open(self.log, "a") as f:
                f.write(json.dumps({"id": request.metadata.get("request_id"), "cost": cost}) + "\\n")
        return Completion(text="answer: " + request.messages[-1].content, model=request.model,
                          provider=self.name, usage=usage, latency_ms=4.0, cost_usd=cost)

    def count_tokens(self, text, model):
        return models.count_tokens(models.model_info(self.config, model), text)


class BagOfWords:
    name = "bow"
    dim = 64

    def embed(self, texts):
        import numpy as np
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


@hookimpl
def lab_llm_providers(config):
    return [PricedProvider(config)]


@hookimpl
def lab_embedders(config):
    return [BagOfWords()]
'''

PRICES = """
[tool.lab.llm.models.priced-model]
provider = "priced"
input_usd_per_1m = 1000.0
output_usd_per_1m = 2000.0
fallback = "small-model"
context_window = 4096

[tool.lab.llm.models.small-model]
provider = "priced"
input_usd_per_1m = 100.0
output_usd_per_1m = 200.0
context_window = 4096

[tool.lab.llm.models.big-model]
provider = "priced"
input_usd_per_1m = 5000.0
output_usd_per_1m = 9000.0
"""

WORKER = '''
import json, sys, threading, time
from pathlib import Path
from lab.config import load_config
from lab.plugins import get_plugin_manager
from lab.llm.gateway import Gateway
from lab.llm.ledger import LLMLedger
from lab.llm.types import ChatRequest, Message

root, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
config = load_config(root)
pm = get_plugin_manager(config)
gateway = Gateway(config, pm, recorder=LLMLedger.for_lab(config))
(root / f"ready-{tag}").touch()
while not (root / "go").exists():
    time.sleep(0.002)
out = {}
def one(i):
    rid = f"{tag}-{i}"
    req = ChatRequest((Message("user", f"question number {i} from {tag}"),), model="priced-model",
                      max_tokens=20, user=f"u{i % 5}", metadata={"request_id": rid})
    try:
        gateway.chat(req)
        out[rid] = "ok"
    except Exception as exc:
        out[rid] = type(exc).__name__
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
'''


def make_lab(root: Path, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "priced_provider.py").write_text(PLUGIN)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "gw-lab"\nversion = "0"\n\n[tool.lab]\nplugins = ["priced_provider"]\n\n'
        '[tool.lab.llm]\nprovider = "priced"\nmodel = "priced-model"\nembedder = "bow"\n'
        + PRICES + textwrap.dedent(extra))
    return root


class Events:
    """A plugin collecting every event."""

    def __init__(self):
        self.seen = []

    from lab import hookimpl as _hookimpl

    @_hookimpl
    def lab_on_event(self, event):
        self.seen.append(event)


def gateway_for(root: Path, recorder=None, **kwargs):
    config = load_config(root)
    pm = get_plugin_manager(config)
    events = Events()
    pm.register(events)
    return Gateway(config, pm, recorder=recorder, **kwargs), events


def ask(text: str, rid: str | None = None, user: str | None = None, model: str = "priced-model",
        system: str | None = None, max_tokens: int = 20) -> ChatRequest:
    messages = ((Message("system", system),) if system else ()) + (Message("user", text),)
    return ChatRequest(messages, model=model, max_tokens=max_tokens, user=user,
                       metadata={"request_id": rid} if rid else {})


def billed(root: Path) -> dict[str, float]:
    log = root / "billed.log"
    if not log.exists():
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {r["id"]: r["cost"] for r in rows}


def check_never_overspent(root: Path, ceiling: float, outcomes: dict[str, str]) -> None:
    """The acceptance invariants over the spend db, the ledger and the provider's bills."""
    from lab.llm.spend import SpendLedger

    config = load_config(root)
    spend = SpendLedger.for_config(config)
    totals = spend.totals()
    spend.close()
    ledger = LLMLedger.for_lab(config)
    rows = ledger.calls(limit=1000)
    ledger.close()
    bills = billed(root)
    ok = {rid for rid, what in outcomes.items() if what == "ok"}
    refused = {rid for rid, what in outcomes.items() if what == "SpendCeilingReached"}
    assert ok | refused == set(outcomes), outcomes  # nothing else happened
    assert ok and refused, "the ceiling should admit some requests and refuse others"
    # Billed exactly the answered ones; never a refused one.
    assert set(bills) == ok
    assert not refused & set(bills)
    settled = totals["settled"]
    assert settled["n"] == len(ok)
    assert set(totals) <= {"settled"}  # no open, expired or released reservation left behind
    assert settled["actual_usd"] <= ceiling + 1e-9
    assert sum(bills.values()) == pytest.approx(settled["actual_usd"], abs=1e-9)
    # The ledger has one row per request: ok rows billed, refused rows at no cost.
    by_id = {r["request_id"]: r for r in rows}
    assert set(by_id) == set(outcomes)
    assert {rid for rid, r in by_id.items() if r["status"] == "ok"} == ok
    assert {rid for rid, r in by_id.items() if r["status"] == "refused_spend"} == refused
    assert all(by_id[rid]["cost_usd"] == 0 for rid in refused)
    assert sum(by_id[rid]["cost_usd"] for rid in ok) == pytest.approx(settled["actual_usd"], abs=1e-9)


# A full-price call costs about $0.029 and one on the fallback about $0.003, so past
# degrade_at (80 % of $0.20) the 50 requests must be refused even when they happen to run
# one after the other (a ceiling the fallback alone can stay under would make the test
# depend on how much the threads overlap).
CEILING_USD = 0.2
CEILING = f"""
[tool.lab.llm.spend]
daily_usd = {CEILING_USD}
monthly_usd = 10.0
"""


def test_fifty_concurrent_threads_never_overspend(tmp_path):
    root = make_lab(tmp_path / "lab", CEILING)
    config = load_config(root)
    ledger = LLMLedger.for_lab(config)
    gateway, _ = gateway_for(root, recorder=ledger)
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(50)

    def one(i: int) -> None:
        rid = f"t-{i}"
        barrier.wait()
        try:
            gateway.chat(ask(f"question number {i} from threads", rid, user=f"u{i % 5}"))
            outcomes[rid] = "ok"
        except Exception as exc:  # the outcome is what is checked
            outcomes[rid] = type(exc).__name__

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gateway.close()
    ledger.close()
    check_never_overspent(root, CEILING_USD, outcomes)


def test_fifty_requests_from_two_processes_never_overspend(tmp_path):
    root = make_lab(tmp_path / "lab", CEILING)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(root), tag, "25"], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ("p0", "p1")]
    deadline = time.monotonic() + 30
    while not all((root / f"ready-{tag}").exists() for tag in ("p0", "p1")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (root / "go").touch()  # both processes start their 25 threads together
    outcomes: dict[str, str] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outcomes.update(json.loads(out.strip().splitlines()[-1]))
    assert len(outcomes) == 50
    check_never_overspent(root, CEILING_USD, outcomes)


def test_provider_failure_releases_the_reservation_and_is_recorded(tmp_path):
    root = make_lab(tmp_path / "lab", CEILING)
    records = []
    gateway, _ = gateway_for(root, recorder=lambda c, r, **kw: records.append((c, r, kw)))
    with pytest.raises(LabError, match="asked to fail"):
        gateway.chat(ask("please FAIL now", "f1"))
    assert gateway.spend.totals() == {"released": {"n": 1, "actual_usd": 0.0, "estimate_usd": pytest.approx(0.048)}}  # 8 x 0.001 + 20 x 0.002
    assert records[0][0] is None and records[0][2]["status"] == "error"
    assert "asked to fail" in records[0][2]["error"]
    assert billed(root) == {}
    gateway.close()


def test_degradation_switches_to_the_fallback_model_and_halves_the_context(tmp_path):
    root = make_lab(tmp_path / "lab", """
        [tool.lab.llm.spend]
        daily_usd = 1.0
        degrade_at = 0.8
        [tool.lab.llm.budget]
        safety_tokens = 0
        context_max_tokens = 40
    """)
    gateway, _ = gateway_for(root)
    from lab.llm.plugins import get_provider

    provider = get_provider(gateway.config, gateway.pm, "priced")
    passages = [(" ".join(f"w{k}{i}" for i in range(10)), 1.0 - k / 10) for k in range(6)]  # 10 tokens each
    answer = gateway.chat(ask("below the threshold", "a"), contexts=passages)
    assert answer.model == "priced-model"
    assert len(provider.seen[-1].context) == 4  # 40 tokens of context
    # Spend to 85 % of the ceiling, then the same request degrades.
    r = gateway.spend.reserve(None, None, 0.85)
    gateway.spend.settle(r, 0.85)
    answer = gateway.chat(ask("above the threshold", "b"), contexts=passages)
    assert answer.model == "small-model"
    assert provider.seen[-1].model == "small-model"
    assert len(provider.seen[-1].context) == 2  # half the context budget: 20 tokens
    assert provider.seen[-1].metadata["degraded"] is True
    gateway.close()


def test_spend_threshold_events_fire_once_each_through_the_gateway(tmp_path):
    root = make_lab(tmp_path / "lab", """
        [tool.lab.llm.spend]
        daily_usd = 0.1
        degrade_at = 1.0
    """)
    gateway, events = gateway_for(root)
    outcomes = []
    for i in range(6):  # each costs 0.029 USD against an estimate of 0.05
        try:
            gateway.chat(ask(f"question number {i} from here", f"r{i}"))
            outcomes.append("ok")
        except SpendCeilingReached as exc:
            outcomes.append("refused")
            assert exc.http_status == 429 and exc.retry_after_s > 0
    # 0.029 + 0.029 settled (58 %), then 0.058 + a 0.05 estimate would cross 0.1.
    assert outcomes == ["ok", "ok", "refused", "refused", "refused", "refused"]
    assert [(e.payload["ceiling"], e.payload["percent"]) for e in events.seen
            if e.name == "llm.spend_threshold"] == [("daily", 50)]
    gateway.close()


def test_token_bucket_refills_on_the_injected_clock():
    now = [1000.0]
    limiter = RateLimiter(LimitSettings(user_requests_per_min=2, user_tokens_per_min=600), clock=lambda: now[0])
    limiter.acquire("ann", None, 100)
    limiter.acquire("ann", None, 100)
    with pytest.raises(RateLimited) as caught:
        limiter.acquire("ann", None, 100)
    assert caught.value.http_status == 429
    assert caught.value.retry_after_s == pytest.approx(30.0)  # one request refills in 60/2 s
    limiter.acquire("bob", None, 100)  # another user has its own bucket
    now[0] += 29.9
    with pytest.raises(RateLimited):
        limiter.acquire("ann", None, 100)
    now[0] += 0.2
    limiter.acquire("ann", None, 100)


def test_token_bucket_counts_tokens_and_takes_back_unused_ones():
    now = [0.0]
    limiter = RateLimiter(LimitSettings(user_tokens_per_min=600), clock=lambda: now[0])  # 10 tokens/s
    limiter.acquire("ann", None, 500)
    with pytest.raises(RateLimited, match="tokens/min") as caught:
        limiter.acquire("ann", None, 200)
    assert caught.value.retry_after_s == pytest.approx(10.0)
    now[0] += 10.0
    permit = limiter.acquire("ann", None, 200)
    limiter.refund(permit, 50)  # 150 unused tokens come back
    limiter.acquire("ann", None, 150)
    with pytest.raises(RateLimited):
        limiter.acquire("ann", None, 1)
    with pytest.raises(RequestTooLarge, match="at most 600 per minute"):
        limiter.acquire("ann", None, 601)
    assert RateLimiter(LimitSettings(), clock=lambda: 0.0).acquire("ann", "k", 10**9).tokens == 10**9  # no limits


def test_rate_limited_requests_are_recorded_and_never_billed(tmp_path):
    root = make_lab(tmp_path / "lab", """
        [tool.lab.llm.limits]
        key_requests_per_min = 2
    """)
    records = []
    gateway, _ = gateway_for(root, recorder=lambda c, r, **kw: records.append(kw["status"]),
                             clock=lambda: 0.0)
    gateway.chat(ask("one question", "1"), key="k")
    gateway.chat(ask("two questions", "2"), key="k")
    with pytest.raises(RateLimited):
        gateway.chat(ask("three questions", "3"), key="k")
    gateway.chat(ask("three questions", "3b"), key="other")
    assert records == ["ok", "ok", "refused_rate", "ok"]
    assert set(billed(root)) == {"1", "2", "3b"}
    gateway.close()


def test_exact_cache_answers_the_same_request_without_the_provider(tmp_path):
    root = make_lab(tmp_path / "lab")
    records = []
    gateway, _ = gateway_for(root, recorder=lambda c, r, **kw: records.append((c, kw["status"])))
    first = gateway.chat(ask("what is a feature view", "1"))
    second = gateway.chat(ask("what is a feature view", "2"))
    assert not first.cached and second.cached and second.text == first.text and second.cost_usd == 0
    assert set(billed(root)) == {"1"}
    assert [(c.cached, s) for c, s in records] == [(False, "ok"), (True, "ok")]
    # Another temperature, max_tokens or prompt hash is another question.
    gateway.chat(ask("what is a feature view", "3", max_tokens=21))
    gateway.chat(ask("what is a feature view", "4"), prompt={"name": "p", "version": 1, "hash": "abc"})
    assert set(billed(root)) == {"1", "3", "4"}
    # A sampled answer is not cached by default.
    sampled = ChatRequest((Message("user", "tell me a story"),), model="priced-model", temperature=0.7,
                          metadata={"request_id": "5"})
    gateway.chat(sampled)
    gateway.chat(replace_id(sampled, "6"))
    assert {"5", "6"} <= set(billed(root))
    gateway.close()


def replace_id(request: ChatRequest, rid: str) -> ChatRequest:
    from dataclasses import replace

    return replace(request, metadata={"request_id": rid})


@pytest.mark.parametrize("threshold, hit", [(0.0, False), (0.99, True)])
def test_semantic_cache_hits_only_at_an_explicit_threshold(tmp_path, threshold, hit):
    root = make_lab(tmp_path / "lab", f"""
        [tool.lab.llm.cache]
        semantic_threshold = {threshold}
    """)
    gateway, _ = gateway_for(root)
    gateway.chat(ask("how do I promote a model", "1", system="answer briefly"))
    same_words = gateway.chat(ask("a model: how do I promote", "2", system="answer briefly"))
    assert same_words.cached is hit
    other = gateway.chat(ask("how do I roll back a model", "3", system="answer briefly"))
    assert not other.cached  # shares words, below any useful threshold
    other_system = gateway.chat(ask("how do I promote a model?", "4", system="answer at length"))
    assert not other_system.cached  # another system message is another question
    gateway.close()


def test_budget_trims_lowest_relevance_first_then_cuts_at_a_sentence():
    def count(text: str) -> int:
        return len(text.split())

    contexts = [("low relevance passage here", 0.1),  # 4 tokens
                ("First best sentence. Second best sentence. Third one.", 0.9),  # 8 tokens
                ("middle passage of five", 0.5)]  # 4 tokens
    full = allocate(window=100, system_tokens=10, input_tokens=10, output_reserve=20, contexts=contexts, count=count)
    assert full.kept == (contexts[1][0], contexts[2][0], contexts[0][0]) and full.dropped == 0
    a = allocate(window=100, system_tokens=10, input_tokens=10, output_reserve=20, contexts=contexts, count=count,
                 context_max_tokens=12)
    assert a.kept == (contexts[1][0], contexts[2][0]) and a.dropped == 1 and not a.truncated
    b = allocate(window=100, system_tokens=10, input_tokens=10, output_reserve=20, contexts=contexts, count=count,
                 context_max_tokens=7)
    assert b.kept == ("First best sentence. Second best sentence.",) and b.truncated and b.context_used == 6
    with pytest.raises(BudgetExceeded, match="window of 100 tokens: system 10 \\+ input 60 \\+ output reserve 40") \
            as caught:
        allocate(window=100, system_tokens=10, input_tokens=60, output_reserve=40, contexts=[], count=count)
    assert caught.value.http_status == 400


def test_an_input_too_big_for_the_window_is_refused_before_any_spend(tmp_path):
    root = make_lab(tmp_path / "lab", """
        [tool.lab.llm.models.tiny-model]
        provider = "priced"
        context_window = 30
    """)
    records = []
    gateway, _ = gateway_for(root, recorder=lambda c, r, **kw: records.append(kw["status"]))
    with pytest.raises(BudgetExceeded, match="context window of 30 tokens"):
        gateway.chat(ask("word " * 40, "1", model="tiny-model"))
    assert records == ["refused_budget"] and gateway.spend.totals() == {} and billed(root) == {}
    gateway.close()


def test_routing_sends_long_or_keyword_requests_to_the_large_model(tmp_path):
    rules = RoutingSettings(large_model="big-model", min_input_tokens=50, keywords=("step by step",))
    assert route(rules, "priced-model", 10, "hello") == ("priced-model", None)
    assert route(rules, "priced-model", 51, "hello")[0] == "big-model"
    assert route(rules, "priced-model", 10, "Explain STEP BY STEP")[0] == "big-model"
    root = make_lab(tmp_path / "lab", """
        [tool.lab.llm.routing]
        large_model = "big-model"
        keywords = ["step by step"]
    """)
    gateway, _ = gateway_for(root)
    assert gateway.chat(ask("explain it step by step", "1")).model == "big-model"
    assert gateway.chat(ask("explain it", "2")).model == "priced-model"
    gateway.close()


def test_budget_drift_is_judged_from_the_ledger_and_emitted(tmp_path):
    steady = [100 + (i % 7) for i in range(60)]
    assert not budget_drift(steady + steady[:50], recent=50, min_baseline=50).breached
    assert "not judged" in budget_drift(steady[:70], recent=50, min_baseline=50).reason
    root = make_lab(tmp_path / "lab", """
        [tool.lab.llm.budget]
        drift_recent = 10
        drift_min_baseline = 20
    """)
    config = load_config(root)
    ledger = LLMLedger.for_lab(config)
    from lab.llm.types import Completion, Usage

    for i in range(40):
        grown = 400 if i >= 30 else 0
        c = Completion("x", "m", "priced", Usage(90 + i % 5 + grown, 10), 1.0)
        ledger.record(c, ask("q"), status="ok", prompt={"name": "qa", "version": 1, "hash": "h"})
    ledger.close()
    gateway, events = gateway_for(root)
    [result] = check_budget_drift(config, gateway.pm)
    assert result.prompt == "qa" and result.breached and result.baseline_calls == 30
    assert [e.payload["prompt"] for e in events.seen if e.name == "llm.budget_drift"] == ["qa"]
    gateway.close()


def test_lab_llm_budget_exits_3_on_a_drift(tmp_path, monkeypatch, capsys):
    from lab.cli import main
    from lab.llm.types import Completion, Usage

    root = make_lab(tmp_path / "lab", """
        [tool.lab.llm.budget]
        drift_recent = 5
        drift_min_baseline = 5
    """)
    monkeypatch.chdir(root)
    monkeypatch.delenv("LAB_HOME", raising=False)
    assert main(["llm", "budget"]) == 0 and "no answered calls" in capsys.readouterr().out
    ledger = LLMLedger.for_lab(load_config(root))
    for tokens in [100] * 5 + [100] * 5:
        ledger.record(Completion("x", "m", "p", Usage(tokens, 0), 1.0), ask("q"), status="ok", prompt={"name": "qa"})
    assert main(["llm", "budget"]) == 0 and "qa: ok" in capsys.readouterr().out
    for tokens in [300] * 5:
        ledger.record(Completion("x", "m", "p", Usage(tokens, 0), 1.0), ask("q"), status="ok", prompt={"name": "qa"})
    ledger.close()
    assert main(["llm", "budget", "--prompt", "qa"]) == 3
    assert "qa: DRIFT" in capsys.readouterr().out
