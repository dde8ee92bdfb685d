"""The value types every LLM module and plugin shares: messages, requests, completions,
and the ``Provider``, ``Embedder``, ``Reranker`` and ``Judge`` protocols plugins implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """One chat message: ``role`` is one of ``ROLES``."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """What is asked of a provider. ``model`` is the provider's model name; ``max_tokens``
    bounds the answer (tokens); ``temperature`` 0 asks for the most likely answer;
    ``user`` is the caller's id (rate limits, spend scopes); ``context`` holds retrieved
    passages kept apart from the messages (the extractive provider answers from them; an
    HTTP provider receives them rendered into the messages by the prompt);
    ``metadata`` carries what the ledger records (prompt name, version, hash)."""

    messages: tuple[Message, ...]
    model: str
    max_tokens: int = 256
    temperature: float = 0.0
    user: str | None = None
    context: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """Tokens counted by the provider's tokenizer for the model."""

    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Completion:
    """A provider's answer. ``latency_ms`` is wall time of the call, retries included;
    ``cost_usd`` comes from the model's price table (0 when none is declared)."""

    text: str
    model: str
    provider: str
    usage: Usage
    latency_ms: float
    finish_reason: str = "stop"
    cost_usd: float = 0.0
    cached: bool = False


@runtime_checkable
class Provider(Protocol):
    """A source of completions, returned by ``lab_llm_providers``. ``name`` is how config
    and requests pick it. ``complete`` raises ``lab.errors.LabError`` subclasses for
    failures a caller can act on (``lab.llm.providers.ProviderError``)."""

    name: str

    def complete(self, request: ChatRequest) -> Completion: ...

    def count_tokens(self, text: str, model: str) -> int: ...


@runtime_checkable
class Embedder(Protocol):
    """Text to unit-length float32 vectors of ``dim`` numbers, returned by ``lab_embedders``.
    The same texts always give the same vectors (retrieval and caches rely on it)."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> "np.ndarray": ...


@runtime_checkable
class Reranker(Protocol):
    """Reorders retrieved passages for a query: ``rerank`` returns one score per passage,
    higher is more relevant (``lab_rerankers``)."""

    name: str

    def rerank(self, query: str, passages: Sequence[str]) -> list[float]: ...


@runtime_checkable
class Judge(Protocol):
    """An LLM-as-judge (``lab_llm_judges``): ``judge`` says whether ``output`` meets
    ``expectation`` for ``input``, with a score in [0, 1] and a reason."""

    name: str

    def judge(self, input: str, output: str, expectation: str) -> tuple[bool, float, str]: ...
