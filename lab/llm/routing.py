"""Routing by request complexity: a long or hard-looking request goes to a larger model,
everything else to the one asked for (``[tool.lab.llm.routing]``).

    [tool.lab.llm.routing]
    large_model = "big-model"       # "" (default): routing off
    min_input_tokens = 1500         # input tokens above this -> large_model (0: no length rule)
    keywords = ["prove", "step by step", "compare"]   # any of these (case-insensitive) -> large_model

The rule is deterministic: the same request always goes to the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.config import LabConfig, build_section
from lab.errors import ConfigError
from lab.llm.settings import sub_table


@dataclass(frozen=True)
class RoutingSettings:
    """``[tool.lab.llm.routing]``: ``min_input_tokens`` in tokens; ``keywords`` matched as
    case-insensitive substrings of the user's messages."""

    large_model: str = ""
    min_input_tokens: int = 0
    keywords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.min_input_tokens < 0:
            raise ConfigError(f"[tool.lab.llm.routing] min_input_tokens must be 0 or more, got {self.min_input_tokens}")
        if any(not isinstance(k, str) or not k.strip() for k in self.keywords):
            raise ConfigError("[tool.lab.llm.routing] keywords must be non-empty strings")
        if self.large_model and not (self.min_input_tokens or self.keywords):
            raise ConfigError("[tool.lab.llm.routing] large_model is set but no rule sends anything to it; set "
                              "min_input_tokens or keywords")


def routing_settings(config: LabConfig) -> RoutingSettings:
    return build_section(RoutingSettings, sub_table(config, "routing"), "tool.lab.llm.routing")


def route(settings: RoutingSettings, model: str, input_tokens: int, user_text: str) -> tuple[str, str | None]:
    """The model to call and why (None: the one asked for, no rule matched)."""
    if not settings.large_model:
        return model, None
    if settings.min_input_tokens and input_tokens > settings.min_input_tokens:
        return settings.large_model, f"input {input_tokens} tokens > {settings.min_input_tokens}"
    lowered = user_text.lower()
    for word in settings.keywords:
        if word.lower() in lowered:
            return settings.large_model, f"keyword {word!r}"
    return model, None
