"""``[tool.lab.llm]``: the table every LLM module reads its settings from.

    [tool.lab.llm]
    provider = "extractive"     # the default provider (lab_llm_providers), by name
    model = "extractive"        # the default model name sent to it
    embedder = "minilm"         # lab_embedders, by name
    prompts_dir = "prompts"     # prompt templates under version control

Sub-tables (``[tool.lab.llm.models.<model>]``, ``.providers.<name>``, ``.spend``,
``.limits``, ``.cache``, ``.rag``, ``.evals``) belong to the module that reads them; each
builds its frozen settings with ``lab.config.build_section`` so unknown keys and wrong
types are errors naming the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.config import LabConfig, build_section

SUB_TABLES = ("models", "providers", "spend", "limits", "cache", "rag", "evals", "budget", "routing", "serve")


@dataclass(frozen=True)
class LLMSettings:
    """The top level of ``[tool.lab.llm]`` (its sub-tables are read elsewhere)."""

    provider: str = "extractive"
    model: str = "extractive"
    embedder: str = "minilm"
    prompts_dir: str = "prompts"


def llm_table(config: LabConfig) -> dict[str, Any]:
    """``[tool.lab.llm]`` as a dict ({} when the lab has none)."""
    return dict(config.section("llm") or {})


def sub_table(config: LabConfig, name: str) -> dict[str, Any]:
    """``[tool.lab.llm.<name>]`` as a dict ({} when absent)."""
    value = llm_table(config).get(name) or {}
    return dict(value) if isinstance(value, dict) else {}


def llm_settings(config: LabConfig) -> LLMSettings:
    """The top-level keys of ``[tool.lab.llm]``, checked."""
    top = {k: v for k, v in llm_table(config).items() if k not in SUB_TABLES}
    return build_section(LLMSettings, top, "tool.lab.llm")
