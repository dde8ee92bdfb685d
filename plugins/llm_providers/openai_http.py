"""An OpenAI-compatible chat-completions provider over HTTP (stdlib ``http.client``: no
dependency), one per ``[tool.lab.llm.providers.<name>]`` table with ``type = "openai"``.

It POSTs ``{base_url}/chat/completions`` with the request's model, messages, max_tokens,
temperature and user; the API key is read from the ``api_key_env`` variable at each call
(never stored in settings, logs or errors) and sent as ``Authorization: Bearer``. HTTP 408,
429 and 5xx, timeouts and connection errors are retried with backoff (``with_retries``);
other 4xx are raised at once, naming the status and the server's message. A circuit
breaker per provider fails calls fast once ``breaker_failures`` attempts in a row failed.
Usage comes from the response's ``usage``, else is counted with the model's tokenizer.
The request's ``context`` is not sent: a prompt renders retrieved passages into messages.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lab.config import build_section
from lab.errors import ConfigError
from lab.llm import models
from lab.llm.providers import CircuitBreaker, ProviderError, with_retries
from lab.llm.types import ChatRequest, Completion, Usage

RETRYABLE_STATUS = frozenset({408, 425, 429})  # and every 5xx


@dataclass(frozen=True)
class OpenAISettings:
    """One HTTP provider's table. ``base_url`` up to ``/v1``; ``api_key_env`` the variable
    holding the key ("" for none); ``timeout_s`` per attempt, seconds; ``retries`` after
    the first attempt; backoff between ``backoff_base_s`` and ``backoff_max_s`` seconds; a
    Retry-After longer than ``retry_after_max_s`` is not waited for; the breaker opens after
    ``breaker_failures`` failed attempts in a row (0: off) for ``breaker_open_s`` seconds;
    ``headers`` extra request headers (an ``api-version``, an organisation)."""

    base_url: str = ""
    api_key_env: str = ""
    timeout_s: float = 30.0
    retries: int = 2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 30.0
    breaker_failures: int = 5
    breaker_open_s: float = 30.0
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> "OpenAISettings":
        s = build_section(cls, table, where)
        parts = urlsplit(s.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"[{where}] base_url = {s.base_url!r} is not an http(s) URL; write e.g. "
                              "base_url = \"http://127.0.0.1:8000/v1\"")
        if not isinstance(s.headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in s.headers.items()):
            raise ConfigError(f"[{where}] headers must be a table of strings, e.g. headers = {{ \"api-version\" = \"1\" }}")
        if any(k.lower() == "authorization" for k in s.headers):
            raise ConfigError(f"[{where}] headers must not hold Authorization (a secret in pyproject.toml); "
                              "put the key in an environment variable and name it in api_key_env")
        for key in ("timeout_s", "backoff_base_s", "backoff_max_s", "retry_after_max_s", "breaker_open_s"):
            if getattr(s, key) < 0 or (key == "timeout_s" and s.timeout_s == 0):
                raise ConfigError(f"[{where}] {key} must be a positive number of seconds, got {getattr(s, key)}")
        if s.retries < 0 or s.breaker_failures < 0:
            raise ConfigError(f"[{where}] retries and breaker_failures must be >= 0")
        return s


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(body: bytes) -> str:
    """The server's error message: OpenAI's ``{"error": {"message": ...}}``, a ``detail``,
    or the start of the body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str):
                return data[key][:300]
    return text[:300]


class OpenAIProvider:
    """See the module docstring. ``breaker`` and ``sleep`` may be given (tests)."""

    def __init__(self, name: str, settings: OpenAISettings, config, *, breaker: CircuitBreaker | None = None,
                 sleep=time.sleep):
        self.name = name
        self.settings = settings
        self.config = config
        self.breaker = breaker or CircuitBreaker(settings.breaker_failures, settings.breaker_open_s, name=name)
        self._sleep = sleep
        parts = urlsplit(settings.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/chat/completions"
        self.attempts = 0  # HTTP requests sent, for /stats and tests
        self._count_lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.settings.headers}
        env = self.settings.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:
                raise ProviderError(f"provider {self.name!r}: the environment variable {env} (api_key_env) is not "
                                    f"set; export {env}=<your key> before starting the lab", provider=self.name)
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes, headers: dict[str, str]) -> dict:
        """One attempt: the parsed JSON answer, or a ProviderError saying whether to retry."""
        where = f"provider {self.name!r} ({self.settings.base_url})"
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.settings.timeout_s)
        with self._count_lock:
            self.attempts += 1
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            status = response.status
            payload = response.read()
            after = retry_after_s(response.getheader("Retry-After"))
        except (socket.timeout, TimeoutError):
            raise ProviderError(f"{where} timed out after {self.settings.timeout_s} s; raise timeout_s or check the "
                                "server's load", provider=self.name, retryable=True, http_status=504) from None
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            raise ProviderError(f"{where}: cannot connect ({type(exc).__name__}: {exc}); is the server running at "
                                "base_url?", provider=self.name, retryable=True) from None
        finally:
            conn.close()
        if status >= 400:
            retryable = status in RETRYABLE_STATUS or status >= 500
            hint = "" if retryable else "; the request was refused, fix it (model name, key, max_tokens) rather than retry"
            raise ProviderError(f"{where} answered HTTP {status}: {_server_message(payload)}{hint}",
                                provider=self.name, retryable=retryable, upstream_status=status,
                                http_status=502, retry_after_s=after)
        try:
            data = json.loads(payload)
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError(f"{where} answered HTTP {status} without an OpenAI chat completion "
                                f"(choices[0].message.content): {payload[:200]!r}", provider=self.name,
                                upstream_status=status) from None
        data["_text"] = text
        return data

    def complete(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        info = models.model_info(self.config, request.model)
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.user:
            payload["user"] = request.user
        body = json.dumps(payload).encode()
        headers = self._headers()
        s = self.settings
        data = with_retries(
            lambda: self.breaker.call(lambda: self._post(body, headers)),
            retries=s.retries, base_s=s.backoff_base_s, max_s=s.backoff_max_s,
            retry_after_max_s=s.retry_after_max_s, sleep=self._sleep,
        )
        text = data["_text"]
        usage_in = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens, completion_tokens = usage_in.get("prompt_tokens"), usage_in.get("completion_tokens")
        usage = Usage(
            prompt_tokens if isinstance(prompt_tokens, int) else models.request_tokens(info, request),
            completion_tokens if isinstance(completion_tokens, int) else models.count_tokens(info, text),
        )
        return Completion(
            text=text, model=request.model, provider=self.name, usage=usage,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            finish_reason=str(data["choices"][0].get("finish_reason") or "stop"),
            cost_usd=models.cost_usd(info, usage),
        )

    def count_tokens(self, text: str, model: str) -> int:
        return models.count_tokens(models.model_info(self.config, model), text)
