"""The built-in LLM providers (``lab_llm_providers``): ``extractive``, offline and
deterministic, and one OpenAI-compatible HTTP provider per table:

    [tool.lab.llm.providers.openai]      # the provider's name
    type = "openai"                      # chat completions over HTTP
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "OPENAI_API_KEY"       # the key is read from this variable at call time
    # timeout_s = 30.0, retries = 2, backoff_base_s = 0.5, backoff_max_s = 8.0,
    # retry_after_max_s = 30.0, breaker_failures = 5, breaker_open_s = 30.0, headers = {}

    [tool.lab.llm.providers.extractive]  # optional: tunes the built-in extractive provider
    type = "extractive"
    # min_similarity = 0.3, max_sentences = 2, second_margin = 0.1, embedder = "minilm"

A table of any other type is a ConfigError naming the two types. docs/llm.md, "Providers".
"""

from __future__ import annotations

from lab import hookimpl
from lab.errors import ConfigError

__version__ = "0.1.0"

TYPES = ("openai", "extractive")


@hookimpl
def lab_llm_providers(config):
    """``extractive`` (built in, or as its table says) and one ``OpenAIProvider`` per
    ``[tool.lab.llm.providers.<name>]`` table with ``type = "openai"``, settings checked now."""
    from lab.llm.settings import sub_table
    from plugins.llm_providers.extractive import ExtractiveProvider, ExtractiveSettings
    from plugins.llm_providers.openai_http import OpenAIProvider, OpenAISettings

    found = []
    for name, table in sorted(sub_table(config, "providers").items()):
        where = f"tool.lab.llm.providers.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"[tool.lab.llm.providers] {name} = {table!r} is not a table; write [{where}] "
                              f"with type = one of {', '.join(TYPES)}")
        kind = table.get("type")
        rest = {k: v for k, v in table.items() if k != "type"}
        if kind == "openai":
            found.append(OpenAIProvider(name, OpenAISettings.from_table(rest, where), config))
        elif kind == "extractive":
            found.append(ExtractiveProvider(config, name=name, settings=ExtractiveSettings.from_table(rest, where)))
        else:
            raise ConfigError(f"[{where}] type = {kind!r} is unknown; use type = \"openai\" (an OpenAI-compatible "
                              "server) or type = \"extractive\"")
    if not any(p.name == "extractive" for p in found):
        found.append(ExtractiveProvider(config))
    return found
