"""Find the LLM parts plugins contribute, by name: providers, embedders, rerankers,
judges and custom assertions.

Each hook's answers are gathered once per plugin manager and ``[tool.lab.llm]`` table and
kept, so a provider's circuit breaker and an embedder's loaded weights live as long as the
process that uses them (a server, a pipeline stage), not one call.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from lab.errors import ConfigError
from lab.llm.settings import llm_settings, llm_table

_KEPT: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _gathered(pm, config, hook: str, what: str) -> dict[str, Any]:
    """``{name: part}`` from every plugin's answer to ``hook``; a name two plugins use is an
    error naming both the part and the fix."""
    key = (hook, str(config.root), json.dumps(llm_table(config), sort_keys=True, default=str))
    with _LOCK:
        kept = _KEPT.setdefault(pm, {})
        if key in kept:
            return kept[key]
        found: dict[str, Any] = {}
        for batch in getattr(pm.hook, hook)(config=config):
            for part in batch or []:
                name = getattr(part, "name", None)
                if not isinstance(name, str) or not name:
                    raise ConfigError(f"a plugin's {hook} returned a {what} without a name ({part!r}); give it "
                                      "a non-empty .name")
                if name in found:
                    raise ConfigError(f"{what} {name!r} is defined by two plugins; rename one")
                found[name] = part
        kept[key] = found
        return found


def _pick(found: dict[str, Any], name: str, what: str, where: str) -> Any:
    if name not in found:
        raise ConfigError(f"no {what} {name!r} ({where}); loaded: {', '.join(sorted(found)) or 'none'}")
    return found[name]


def providers(config, pm) -> dict[str, Any]:
    """Every provider by name (``lab_llm_providers``)."""
    return _gathered(pm, config, "lab_llm_providers", "LLM provider")


def get_provider(config, pm, name: str | None = None):
    """The provider ``name`` (default ``[tool.lab.llm] provider``)."""
    name = name or llm_settings(config).provider
    return _pick(providers(config, pm), name, "LLM provider", "[tool.lab.llm] provider, or a model's provider")


def get_embedder(config, pm, name: str | None = None):
    """The embedder ``name`` (default ``[tool.lab.llm] embedder``, ``minilm``)."""
    name = name or llm_settings(config).embedder
    return _pick(_gathered(pm, config, "lab_embedders", "embedder"), name, "embedder", "[tool.lab.llm] embedder")


def get_reranker(config, pm, name: str):
    """The reranker ``name`` (``lab_rerankers``)."""
    return _pick(_gathered(pm, config, "lab_rerankers", "reranker"), name, "reranker", "[tool.lab.llm.rag] rerank")


def get_judge(config, pm, name: str):
    """The LLM-as-judge ``name`` (``lab_llm_judges``)."""
    return _pick(_gathered(pm, config, "lab_llm_judges", "judge"), name, "judge", "a suite's judge assertion")


def custom_assertions(config, pm) -> dict[str, Any]:
    """Every custom evaluation assertion by name (``lab_eval_assertions``)."""
    key = ("lab_eval_assertions", str(config.root), json.dumps(llm_table(config), sort_keys=True, default=str))
    with _LOCK:
        kept = _KEPT.setdefault(pm, {})
        if key not in kept:
            found: dict[str, Any] = {}
            for batch in pm.hook.lab_eval_assertions(config=config):
                for name, fn in (batch or {}).items():
                    if name in found:
                        raise ConfigError(f"evaluation assertion {name!r} is defined by two plugins; rename one")
                    if not callable(fn):
                        raise ConfigError(f"evaluation assertion {name!r} is not callable: {fn!r}")
                    found[name] = fn
            kept[key] = found
        return kept[key]
