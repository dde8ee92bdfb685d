"""The LLM gateway: every chat call of the platform passes through one ``Gateway``, which
applies, in order,

1. the rate limits (``lab.llm.limits``: per user and per key; ``RateLimited``, 429),
2. the exact cache, then the semantic cache (``lab.llm.cache``),
3. routing by complexity (``lab.llm.routing``) and degradation near a spend ceiling (the
   model's ``fallback`` and half the context budget above ``degrade_at``),
4. the token budget (``lab.llm.budget``: contexts trimmed by relevance; ``BudgetExceeded``, 400),
5. a spend reservation (``lab.llm.spend``: ``SpendCeilingReached``, 429),
6. the provider call (``lab.llm.plugins.get_provider`` for the model's provider), then
   ``settle`` of the reservation, or ``release`` when the provider failed,
7. the cache put (not for a degraded answer), and ``recorder(...)`` (the LLM ledger's ``record``) for every outcome:
   ``ok`` (``completion.cached`` for a cache hit), ``refused_rate``, ``refused_budget``,
   ``refused_spend`` or ``error``.

A refused call is never billed: the reservation is taken before the provider is called and
dropped when the call fails.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable

from lab.config import LabConfig
from lab.llm import models
from lab.llm.budget import BudgetExceeded, allocate, budget_settings
from lab.llm.cache import AnswerCache, cache_path, cache_settings, exact_key, semantic_group, user_input
from lab.llm.limits import RateLimited, RateLimiter, RequestTooLarge, limit_settings
from lab.llm.plugins import get_embedder, get_provider
from lab.llm.routing import route, routing_settings
from lab.llm.settings import llm_settings
from lab.llm.spend import SpendCeilingReached, SpendLedger
from lab.llm.types import ChatRequest, Completion, Usage

DEGRADED_CONTEXT_FACTOR = 0.5
"""Share of the context budget a request keeps once spend is above ``degrade_at``."""

Recorder = Callable[..., Any]


class Gateway:
    """Rate limits, caches, routing, budgets and spend around a lab's providers (see the
    module docstring). Thread-safe; one per process (the rate limits are this process's).
    ``recorder`` has the signature of ``lab.llm.ledger.LLMLedger.record``; ``clock``
    (monotonic seconds) drives the rate limits, ``wall_clock`` (epoch seconds) spend
    periods and cache expiry."""

    def __init__(self, config: LabConfig, pm: Any, recorder: Recorder | None = None, *,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        self.config = config
        self.pm = pm
        self.recorder = recorder
        self.default_model = llm_settings(config).model
        self.budget = budget_settings(config)
        self.routing = routing_settings(config)
        self.limits = RateLimiter(limit_settings(config), clock)
        self.spend = SpendLedger.for_config(config, pm, wall_clock)
        settings = cache_settings(config)
        self.cache = AnswerCache(cache_path(config), settings, wall_clock) if settings.enabled else None

    def close(self) -> None:
        self.spend.close()
        if self.cache is not None:
            self.cache.close()

    def _record(self, completion: Completion | None, request: ChatRequest, status: str, prompt: dict | None,
                key: str | None, error: str | None = None, started: float | None = None) -> None:
        if self.recorder is None:
            return
        latency = (time.perf_counter() - started) * 1000 if started is not None else None
        self.recorder(completion, request, status=status, prompt=_ledger_prompt(prompt), key=key, error=error,
                      latency_ms=latency)

    def chat(self, request: ChatRequest, *, key: str | None = None, prompt: dict | None = None,
             contexts: list[tuple[str, float]] | None = None) -> Completion:
        """Answer ``request`` (see the module docstring for the steps). ``key`` is the
        caller's API key id (rate limits and spend per key); ``prompt`` the registered
        prompt's ledger fields (name, version, hash) and front matter (``output_reserve``,
        ``context_max_tokens``); ``contexts`` retrieved passages as (text, relevance),
        trimmed to the budget and added to ``request.context``."""
        started = time.perf_counter()
        contexts = list(contexts or [])
        if not request.model:
            request = replace(request, model=self.default_model)
        asked = models.model_info(self.config, request.model)
        # Admission counts every passage offered; unused tokens are handed back after the call.
        offered = models.request_tokens(asked, request) + sum(models.count_tokens(asked, t) for t, _ in contexts)
        try:
            permit = self.limits.acquire(request.user, key, offered + request.max_tokens)
        except (RateLimited, RequestTooLarge) as exc:
            self._record(None, request, "refused_rate", prompt, key, str(exc), started)
            raise

        prompt_hash = (prompt or {}).get("hash")
        cached_request = replace(request, context=request.context + tuple(t for t, _ in contexts))
        hit, key_exact, group, vector = None, None, None, None
        if self.cache is not None and self.cache.cacheable(request):
            key_exact = exact_key(cached_request, prompt_hash)
            group = semantic_group(request, prompt_hash)
            hit = self.cache.get(key_exact)
            if hit is None and self.cache.semantic:
                vector = get_embedder(self.config, self.pm).embed([user_input(request)])[0]
                found = self.cache.nearest(group, vector)
                hit = found[0] if found else None
        if hit is not None:
            self.limits.refund(permit, 0)
            hit = replace(hit, latency_ms=(time.perf_counter() - started) * 1000)
            self._record(hit, request, "ok", prompt, key, None, started)
            return hit

        model, routed_by = route(self.routing, request.model, offered, user_input(request))
        context_factor = 1.0
        degraded = self.spend.fraction(request.user, key) >= self.spend.settings.degrade_at
        if degraded:
            fallback = models.model_info(self.config, model).fallback
            model = fallback or model
            context_factor = DEGRADED_CONTEXT_FACTOR
        info = models.model_info(self.config, model)
        try:
            request, allocation = self._fit(request, info, prompt or {}, contexts, context_factor)
        except BudgetExceeded as exc:
            self.limits.refund(permit, 0)
            self._record(None, replace(request, model=model), "refused_budget", prompt, key, str(exc), started)
            raise
        request = replace(request, metadata={**request.metadata, "routed_by": routed_by, "degraded": degraded,
                                             "contexts_dropped": allocation.dropped})

        estimate_in = math.ceil(models.request_tokens(info, request) * self.spend.settings.input_margin)
        estimate = models.cost_usd(info, Usage(estimate_in, request.max_tokens))
        try:
            reservation = self.spend.reserve(request.user, key, estimate, model=model)
        except SpendCeilingReached as exc:
            self.limits.refund(permit, 0)
            self._record(None, request, "refused_spend", prompt, key, str(exc), started)
            raise
        try:
            completion = get_provider(self.config, self.pm, info.provider).complete(request)
        except BaseException as exc:
            self.spend.release(reservation)
            self.limits.refund(permit, 0)
            self._record(None, request, "error", prompt, key, f"{type(exc).__name__}: {exc}", started)
            raise
        actual = completion.cost_usd if completion.cost_usd > 0 else models.cost_usd(info, completion.usage)
        completion = replace(completion, cost_usd=self.spend.settle(reservation, actual))
        self.limits.refund(permit, completion.usage.total)
        if key_exact is not None and not degraded:  # a degraded answer is not the asked model's
            self.cache.put(key_exact, group, completion, user_input(request), vector)
        self._record(completion, request, "ok", prompt, key, None, started)
        return completion

    def _fit(self, request: ChatRequest, info: models.ModelInfo, prompt: dict, contexts: list[tuple[str, float]],
             context_factor: float):
        """``request`` for ``info``'s model with the contexts that fit its budget."""
        overhead = models.MESSAGE_OVERHEAD_TOKENS
        system = sum(models.count_tokens(info, m.content) + overhead for m in request.messages if m.role == "system")
        rest = sum(models.count_tokens(info, m.content) + overhead for m in request.messages if m.role != "system")
        rest += sum(models.count_tokens(info, passage) for passage in request.context)
        reserve = int(prompt.get("output_reserve") or self.budget.output_reserve or request.max_tokens)
        allocation = allocate(
            window=info.context_window, system_tokens=system, input_tokens=rest, output_reserve=reserve,
            contexts=contexts, count=lambda text: models.count_tokens(info, text),
            context_max_tokens=int(prompt.get("context_max_tokens") or self.budget.context_max_tokens),
            safety_tokens=self.budget.safety_tokens, context_factor=context_factor)
        fitted = replace(request, model=info.name, max_tokens=min(request.max_tokens, reserve),
                         context=request.context + allocation.kept)
        return fitted, allocation


def _ledger_prompt(prompt: dict | None) -> dict | None:
    if not prompt:
        return None
    return {k: prompt.get(k) for k in ("name", "version", "hash")}
