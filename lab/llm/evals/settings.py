"""``[tool.lab.llm.evals]``: the eval gate's settings (see ``lab.llm.evals.suite``)."""

from __future__ import annotations

from dataclasses import dataclass

from lab.config import build_section
from lab.errors import ConfigError
from lab.llm.settings import sub_table


@dataclass(frozen=True)
class EvalSettings:
    """``[tool.lab.llm.evals]`` (see the module docstring)."""

    min_pass_rate: float = 0.0
    min_judge_kappa: float = 0.6
    similarity_threshold: float = 0.75
    judge_threshold: float = 0.7
    baseline: str = "production"
    query_var: str = "question"

    def __post_init__(self) -> None:
        for name in ("min_pass_rate", "similarity_threshold", "judge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"[tool.lab.llm.evals] {name} must be in [0, 1], got {getattr(self, name)!r}")
        if not -1.0 <= self.min_judge_kappa <= 1.0:
            raise ConfigError(f"[tool.lab.llm.evals] min_judge_kappa must be in [-1, 1], got {self.min_judge_kappa!r}")


def eval_settings(config) -> EvalSettings:
    return build_section(EvalSettings, sub_table(config, "evals"), "tool.lab.llm.evals")
