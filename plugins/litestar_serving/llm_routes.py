"""The OpenAI-compatible LLM routes of ``lab serve``, for labs with ``[tool.lab.llm]``.

- ``POST /v1/chat/completions``: OpenAI's request shape (``model``, ``messages``,
  ``max_tokens``, ``temperature``, ``user``) plus ``prompt`` (``"name"``,
  ``"name@alias"`` or ``"name@VERSION"``; alias default ``production``) with
  ``variables`` to render a registered prompt (its messages first, then the request's),
  and ``context`` (a list of passages kept apart from the messages). The answer is
  OpenAI's response shape with ``usage`` and an ``x-lab`` object: prompt name, version,
  hash, cost (USD), cached, provider, request id.
- ``GET /v1/models``: the default model and every ``[tool.lab.llm.models.<model>]``.

A registered prompt's front matter sets the model, temperature and max_tokens unless the
request sets them (the prompt's ``model`` wins over the request's: it is part of the
versioned prompt). Calls go through ``lab.llm.gateway.Gateway`` (rate limits, caches,
budgets, spend; it records every outcome in the LLM ledger) when that module exists,
else straight to the provider, recorded here. The blocking call runs on a worker thread
(``asyncio.to_thread``), never on the event loop.

Errors are OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: a bad
field is a 400 naming it in ``param``; a rate limit or spend ceiling a 429 with
``Retry-After``; a provider's failure a 502 (503 with ``Retry-After`` while it is
unavailable). A prompt's alias is looked up again once it is ``refresh_s`` old
(``[tool.lab.serve] flag_refresh_s``), so ``lab rollback NAME --alias production`` takes
effect within that time, with no restart.

``create_llm_app`` is the server of a lab with ``[tool.lab.llm]`` and no tabular model:
these routes plus ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.openapi import OpenAPIConfig

import lab
from lab.errors import LabError, NotFound
from lab.llm.evals.settings import eval_settings
from lab.llm.ledger import LLMLedger
from lab.llm.plugins import get_provider
from lab.llm.prompts import DEFAULT_ALIAS, Prompt, prompt_of_version, render, resolve_version
from lab.llm.rag.prompted import PromptRetriever, needs_retrieval
from lab.llm.settings import llm_settings, llm_table
from lab.llm.types import ROLES, ChatRequest, Completion, Message
from lab.registry import Registry
from lab.serving.keys import keys_path
from plugins.litestar_serving.auth import ServerKeys

log = logging.getLogger("lab.serving.llm")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ids = itertools.count(1)
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OpenAIError(Exception):
    """An answer in OpenAI's error shape: ``status``, ``message``, ``param`` (the field),
    ``kind`` (its ``type``), ``code`` and extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def response(self) -> Response:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return Response(body, status_code=self.status, headers=self.headers, media_type=MediaType.JSON)


def _bad(param: str | None, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param)


@dataclass(frozen=True)
class ChatBody:
    """A checked ``POST /v1/chat/completions`` body."""

    messages: tuple[Message, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    user: str | None = None
    prompt: str | None = None
    alias: str = DEFAULT_ALIAS
    variables: dict = field(default_factory=dict)
    context: tuple[str, ...] = ()
    flag: str | None = None


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI's content parts: only text ones here
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{i}]", f"{where}[{i}] must be a text part {{\"type\": \"text\", \"text\": "
                                            "\"...\"}; only text is supported")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(where, f"{where} must be a string (or a list of text parts)")


def parse_chat(raw: bytes) -> ChatBody:
    """``raw`` (JSON) as a ``ChatBody``; ``OpenAIError`` 400 naming the first bad field.
    Fields OpenAI defines that change nothing here (``top_p``, ``stop``, ...) are ignored."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise _bad(None, f"the body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise _bad(None, "the body must be a JSON object with model and messages")
    if body.get("stream"):
        raise _bad("stream", "stream is not supported; send stream: false or leave it out")
    if body.get("n", 1) != 1:
        raise _bad("n", "n must be 1: one answer per request")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise _bad("model", "model must be a non-empty string (see GET /v1/models)")
    raw_messages = body.get("messages", [])
    if not isinstance(raw_messages, list):
        raise _bad("messages", "messages must be a list of {\"role\", \"content\"} objects")
    messages = []
    for i, item in enumerate(raw_messages):
        if not isinstance(item, dict):
            raise _bad(f"messages[{i}]", f"messages[{i}] must be an object with role and content")
        role = item.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise _bad(f"messages[{i}].role", f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        messages.append(Message(role, _content(item.get("content"), f"messages[{i}].content")))
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise _bad("max_tokens", f"max_tokens must be a whole number of tokens, 1 or more; got {max_tokens!r}")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise _bad("temperature", f"temperature must be a number from 0 to 2, got {temperature!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "user must be a string (the caller's id)")
    prompt, alias = body.get("prompt"), DEFAULT_ALIAS
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise _bad("prompt", "prompt must be \"name\", \"name@alias\" or \"name@VERSION\"")
        prompt, _, named = prompt.partition("@")
        alias = named or DEFAULT_ALIAS
        if not prompt or not alias:
            raise _bad("prompt", "prompt must be \"name\", \"name@alias\" or \"name@VERSION\"")
    variables = body.get("variables", {})
    if not isinstance(variables, dict):
        raise _bad("variables", "variables must be an object {\"name\": value}")
    if variables and prompt is None:
        raise _bad("variables", "variables fill a registered prompt's placeholders: name it with prompt")
    context = body.get("context", [])
    if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
        raise _bad("context", "context must be a list of passages (strings)")
    if not messages and prompt is None:
        raise _bad("messages", "messages must hold at least one message (or name a registered prompt)")
    flag = body.get("flag")
    if flag is not None:
        if not isinstance(flag, str) or not flag.strip():
            raise _bad("flag", "flag must be the name of a flag whose variants name prompt versions")
        if prompt is None:
            raise _bad("flag", "a flag picks a version of a registered prompt: name it with prompt")
        if "@" in body["prompt"]:
            raise _bad("flag", "give the prompt's name alone with a flag: the flag's variant picks its version")
    return ChatBody(messages=tuple(messages), model=model, max_tokens=max_tokens,
                    temperature=None if temperature is None else float(temperature), user=user, prompt=prompt,
                    alias=alias, variables=variables, context=tuple(context), flag=flag)


def _gateway_class():
    """``lab.llm.gateway.Gateway`` when that module exists, else None (straight to the provider)."""
    try:
        from lab.llm.gateway import Gateway
    except ModuleNotFoundError as exc:
        if exc.name != "lab.llm.gateway":
            raise
        return None
    return Gateway


@dataclass
class LLMCounters:
    """What ``/metrics`` shows of the LLM routes since start."""

    requests: dict[int, int] = field(default_factory=dict)  # by HTTP status
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached: int = 0
    latency_s_sum: float = 0.0
    latency_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, completion: Completion, seconds: float) -> None:
        with self.lock:
            self.input_tokens += completion.usage.input_tokens
            self.output_tokens += completion.usage.output_tokens
            self.cost_usd += completion.cost_usd
            self.cached += int(completion.cached)
            self.latency_s_sum += seconds
            self.latency_count += 1

    def status(self, code: int) -> None:
        with self.lock:
            self.requests[code] = self.requests.get(code, 0) + 1

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP lab_llm_requests_total LLM route requests by HTTP status",
                     "# TYPE lab_llm_requests_total counter"]
            lines += [f'lab_llm_requests_total{{status="{code}"}} {n}' for code, n in sorted(self.requests.items())]
            for name, value, what in (
                    ("lab_llm_input_tokens_total", self.input_tokens, "tokens sent to providers"),
                    ("lab_llm_output_tokens_total", self.output_tokens, "tokens answered by providers"),
                    ("lab_llm_cost_usd_total", self.cost_usd, "spend in US dollars"),
                    ("lab_llm_cached_total", self.cached, "answers from a cache"),
                    ("lab_llm_latency_seconds_sum", self.latency_s_sum, "seconds spent answering"),
                    ("lab_llm_latency_seconds_count", self.latency_count, "answers timed")):
                lines += [f"# HELP {name} {what}", f"# TYPE {name} counter", f"{name} {value}"]
            return "\n".join(lines) + "\n"


class LLMService:
    """What the routes share: prompts by alias (looked up again once ``refresh_s`` old),
    the gateway or provider, the LLM ledger and the API keys. Thread-safe: its blocking
    methods run on worker threads."""

    def __init__(self, config, pm, refresh_s: float):
        self.config, self.pm, self.refresh_s = config, pm, refresh_s
        self.settings = llm_settings(config)
        self.ledger = LLMLedger.for_lab(config)
        gateway = _gateway_class()
        self.gateway = gateway(config, pm, recorder=self.ledger.record) if gateway is not None else None
        self.keys = ServerKeys(keys_path(config))
        self.counters = LLMCounters()
        self.retriever = PromptRetriever(config, pm, eval_settings(config).query_var)
        self._aliases: dict[tuple[str, str], tuple[float, int]] = {}  # (name, alias) -> (looked up at, version)
        self._prompts: dict[tuple[str, int], Prompt] = {}
        self._routers: dict[tuple[str, str], tuple[float, Any]] = {}  # (flag, prompt) -> (refreshed at, router)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.retriever.close()
        self.keys.close()
        self.ledger.close()

    def prompt(self, name: str, alias: str) -> Prompt:
        """Registered prompt ``name`` at ``alias`` (or a version number); an alias's
        answer is kept ``refresh_s`` seconds, a version's text for good (it is immutable)."""
        now = time.monotonic()
        with self._lock:
            seen = self._aliases.get((name, alias))
        if seen is not None and now - seen[0] < self.refresh_s and (name, seen[1]) in self._prompts:
            return self._prompts[(name, seen[1])]
        if not self.config.registry_path.exists():
            raise NotFound(f"no prompt {name!r} is registered (there is no registry yet); run "
                           f"`lab prompt register {name}`")
        with Registry.open(self.config.registry_path, project_root=self.config.root) as registry:
            version = resolve_version(registry, name, alias)
        with self._lock:
            prompt = self._prompts.get((name, version.version))
        if prompt is None:
            prompt = prompt_of_version(self.config, version)
        with self._lock:
            previous = self._aliases.get((name, alias))
            if previous is not None and previous[1] != version.version:
                log.info("prompt %r: %s moved to v%d (was v%d)", name, alias, version.version, previous[1])
            self._prompts[(name, version.version)] = prompt
            self._aliases[(name, alias)] = (now, version.version)
        return prompt

    def flagged_prompt(self, flag: str, name: str, unit_of: dict) -> tuple[Prompt, str]:
        """The version of prompt ``name`` that flag ``flag`` assigns this request's unit,
        and the variant: the flag's ``unit`` names a request field (``user``) or a variable;
        the assignment is the flags' own sticky hash, so every server agrees. The flag is
        read again once ``refresh_s`` old, like an alias."""
        from lab.experiments.routing import FlagRouter  # the flags' package, loaded for flagged requests only

        now = time.monotonic()
        with self._lock:
            seen = self._routers.get((flag, name))
        if seen is None:
            router = FlagRouter(self.config.registry_path, flag, name,
                                lambda version: prompt_of_version(self.config, version))
            router.refresh()
            with self._lock:
                self._routers[(flag, name)] = (now, router)
        else:
            router = seen[1]
            if now - seen[0] >= self.refresh_s:
                router.refresh()
                with self._lock:
                    self._routers[(flag, name)] = (now, router)
        unit = router.unit
        value = unit_of.get(unit)
        if value is None or value == "":
            raise _bad(unit, f"flag {flag!r} assigns by {unit!r}: send it as a request field or a variable")
        route, _ = router.route(value)
        return route.model, route.variant

    def models(self) -> list[dict]:
        from lab.llm.models import declared_models

        out = {self.settings.model: self.settings.provider}
        for name, info in declared_models(self.config).items():
            out.setdefault(name, info.provider or self.settings.provider)
        return [{"id": name, "object": "model", "created": 0, "owned_by": owner} for name, owner in out.items()]

    def _provider_for(self, model: str):
        from lab.llm.models import model_info

        return get_provider(self.config, self.pm, model_info(self.config, model).provider)

    def complete(self, chat: ChatBody, request_id: str, key: str | None) -> tuple[Completion, Prompt | None, str | None]:
        """Render the prompt (if any; with ``chat.flag``, the version the flag's variant
        names for this unit), call the gateway or the provider; the completion, the prompt
        and the variant (None without a flag). Raises ``OpenAIError`` for a bad prompt or variables, and lets a
        gateway's or provider's ``LabError`` through (the route maps it)."""
        prompt = None
        messages, context = chat.messages, chat.context
        variant = None
        if chat.prompt is not None:
            try:
                if chat.flag is not None:
                    unit_of = {**chat.variables, "user": chat.user}
                    prompt, variant = self.flagged_prompt(chat.flag, chat.prompt, unit_of)
                else:
                    prompt = self.prompt(chat.prompt, chat.alias)
            except OpenAIError:
                raise
            except (NotFound, LabError) as exc:
                raise _bad("flag" if chat.flag is not None else "prompt", str(exc)) from None
            variables = dict(chat.variables)
            if needs_retrieval(prompt, variables):  # the prompt's passages, retrieved as a suite's are
                try:
                    retrieved = self.retriever.passages(prompt, variables, where="variables")
                except LabError as exc:
                    raise _bad("variables", str(exc)) from None
                variables["context"] = list(retrieved)
                context = context + retrieved
            try:
                messages = render(prompt, variables) + messages
            except LabError as exc:
                raise _bad("variables", str(exc)) from None
        model = (prompt.model if prompt is not None and prompt.model else None) or chat.model or self.settings.model
        max_tokens = chat.max_tokens or (prompt.max_tokens if prompt is not None else None)
        temperature = chat.temperature
        if temperature is None and prompt is not None:
            temperature = prompt.temperature
        fields = prompt.ledger_fields() if prompt is not None else None
        metadata = {"request_id": request_id}
        if variant is not None:
            metadata.update({"experiment": chat.flag, "variant": variant})
        if fields:
            metadata.update({"prompt_name": fields["name"], "prompt_version": fields["version"],
                             "prompt_hash": fields["hash"]})
        request = ChatRequest(messages=messages, model=model, user=chat.user, context=context,
                              metadata=metadata)
        if max_tokens is not None:
            request = replace(request, max_tokens=max_tokens)
        if temperature is not None:
            request = replace(request, temperature=temperature)
        if self.gateway is not None:
            return self.gateway.chat(request, key=key, prompt=fields), prompt, variant
        started = time.perf_counter()
        try:
            completion = self._provider_for(model).complete(request)
        except Exception as exc:
            self.ledger.record(None, request, status="error", prompt=fields, key=key, error=str(exc)[:2000],
                               latency_ms=(time.perf_counter() - started) * 1000)
            raise
        self.ledger.record(completion, request, status="ok", prompt=fields, key=key)
        return completion, prompt, variant


def _as_openai(exc: Exception) -> OpenAIError | None:
    """The answer for a gateway's or provider's refusal; None for a bug (a 500)."""
    status = getattr(exc, "http_status", None)
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(max(1, math.ceil(retry)))} if isinstance(retry, (int, float)) else {}
    kind = type(exc).__name__
    if status == 429:
        code = "spend_ceiling_reached" if "Spend" in kind else "rate_limit_exceeded"
        return OpenAIError(429, str(exc), kind="rate_limit_error", code=code, headers=headers)
    if isinstance(status, int) and 400 <= status < 500:
        return OpenAIError(status, str(exc), param="messages" if "TooLarge" in kind else None,
                           code=kind)
    if not isinstance(exc, LabError):
        return None
    if "Unavailable" in kind or "CircuitOpen" in kind:
        return OpenAIError(503, f"the provider is unavailable: {exc}", kind="server_error",
                           code="provider_unavailable", headers=headers or {"Retry-After": "1"})
    return OpenAIError(502, f"the provider failed: {exc}", kind="server_error", code="provider_error")


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return f"{time.time_ns():x}-{next(_ids)}"


def llm_routes(config, pm, refresh_s: float | None = None) -> tuple[list, LLMService]:
    """The route handlers and the ``LLMService`` behind them (``close`` it at shutdown)."""
    service = LLMService(config, pm, config.serve.flag_refresh_s if refresh_s is None else refresh_s)
    keyed = config.serve.predict_auth == "key"

    @post("/v1/chat/completions", status_code=200, operation_id="chat_completions", tags=["llm"],
          summary="An OpenAI-compatible chat completion, optionally from a registered prompt")
    async def chat_completions(request: Request) -> Response:
        """OpenAI's chat completion request and answer, plus ``prompt`` ("name@alias"),
        ``variables`` and ``context``; the answer's ``x-lab`` names the prompt version,
        its hash, the cost (USD) and whether it came from a cache."""
        request_id = _request_id(request)
        try:
            key = None
            if keyed:
                try:
                    key = service.keys.check(request.headers, "predict", "POST /v1/chat/completions").id
                except (NotAuthorizedException, PermissionDeniedException) as exc:
                    raise OpenAIError(exc.status_code, exc.detail, kind="authentication_error",
                                      headers=dict(exc.headers or {})) from None
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise OpenAIError(415, f"send the body as JSON with Content-Type: application/json (got "
                                       f"{media or 'none'!r})")
            chat = parse_chat(await request.body())
            started = time.perf_counter()
            try:
                completion, prompt, variant = await asyncio.to_thread(service.complete, chat, request_id, key)
            except OpenAIError:
                raise
            except Exception as exc:  # noqa: BLE001 - refusals become their answers; bugs a logged 500
                mapped = _as_openai(exc)
                if mapped is None:
                    raise
                raise mapped from None
            service.counters.answered(completion, time.perf_counter() - started)
        except OpenAIError as err:
            service.counters.status(err.status)
            return err.response()
        except Exception:
            service.counters.status(500)
            raise
        service.counters.status(200)
        usage = completion.usage
        body = {
            "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": completion.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": completion.finish_reason}],
            "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                      "total_tokens": usage.total},
            "x-lab": {"prompt": prompt.name if prompt else None, "version": prompt.version if prompt else None,
                      "hash": prompt.hash if prompt else None, "cost_usd": completion.cost_usd,
                      "cached": completion.cached, "provider": completion.provider, "request_id": request_id,
                      "flag": chat.flag, "variant": variant},
        }
        return Response(body, status_code=200, media_type=MediaType.JSON, headers={"X-Request-ID": request_id})

    @get("/v1/models", operation_id="list_models", tags=["llm"], summary="The models this server answers for")
    async def list_models() -> dict:
        """OpenAI's model list: ``[tool.lab.llm] model`` and every ``[tool.lab.llm.models.<model>]``."""
        return {"object": "list", "data": await asyncio.to_thread(service.models)}

    return [chat_completions, list_models], service


def create_llm_app(config, pm, *, host: str | None = None, refresh_s: float | None = None) -> Litestar:
    """The server of a lab with ``[tool.lab.llm]`` and no tabular model: the LLM routes,
    ``/healthz``, ``/readyz`` (200 once the provider is found and the ledger open) and
    ``/metrics`` (Prometheus text: requests by status, tokens, cost, latency)."""
    from plugins.litestar_serving.app import _host_names
    from plugins.litestar_serving.errors import host_guard

    if not llm_table(config):
        raise LabError("this lab has no [tool.lab.llm] table and no model to serve: declare a model "
                       "(lab_model_specs) or add [tool.lab.llm]")
    host = config.serve.host if host is None else host
    handlers, service = llm_routes(config, pm, refresh_s)
    problem: list[str] = []
    try:
        service._provider_for(service.settings.model)
    except LabError as exc:
        problem.append(str(exc))

    @get("/healthz", operation_id="healthz", tags=["health"], summary="Is the process up")
    async def healthz() -> dict:
        """200 whenever the process answers."""
        return {"status": "ok"}

    @get("/readyz", operation_id="readyz", tags=["health"], summary="Can the server answer now")
    async def readyz() -> Response:
        """200 when the default provider is found and the LLM ledger is open; else 503 with why."""
        ready = not problem
        body = {"ready": ready, "reason": problem[0] if problem else None, "model": service.settings.model,
                "provider": service.settings.provider, "gateway": service.gateway is not None}
        return Response(body, status_code=200 if ready else 503, media_type=MediaType.JSON)

    @get("/metrics", operation_id="metrics", tags=["monitoring"], summary="Prometheus metrics",
         media_type=MediaType.TEXT)
    async def metrics() -> Response[bytes]:
        """The LLM routes' counters in the Prometheus text format (version 0.0.4)."""
        return Response(service.counters.render().encode(), media_type=METRICS_MEDIA_TYPE)

    names = _host_names(host)
    return Litestar(
        route_handlers=[*handlers, healthz, readyz, metrics],
        middleware=[host_guard(names, host)] if names else [],
        on_shutdown=[service.close],
        request_max_body_size=config.serve.max_body_bytes,
        openapi_config=OpenAPIConfig(title="lab LLM server", version=lab.__version__, path="/schema",
                                     use_handler_docstrings=True),
    )
