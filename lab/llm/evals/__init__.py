"""Evaluation of prompts: suites of cases with assertions (``suite``, ``assertions``),
LLM-as-judge agreement (``judge``) and the case-by-case regression report with paired
tests (``compare``). The gate and the commands are ``lab.steps.llm_eval``; docs/llm.md,
"Evaluation suites and the eval gate"."""

from lab.llm.evals.assertions import AssertionResult, check_assertion, evaluate
from lab.llm.evals.compare import Comparison, GateResult, compare_reports, gate, mcnemar_exact, sign_test
from lab.llm.evals.judge import Agreement, SimilarityJudge, cohen_kappa, judge_agreement, require_trusted
from lab.llm.evals.settings import EvalSettings, eval_settings
from lab.llm.evals.suite import Case, Suite, SuiteReport, load_suite, run_suite

__all__ = ["Agreement", "AssertionResult", "Case", "Comparison", "EvalSettings", "GateResult", "SimilarityJudge",
           "Suite", "SuiteReport", "check_assertion", "cohen_kappa", "compare_reports", "eval_settings", "evaluate",
           "gate", "judge_agreement", "load_suite", "mcnemar_exact", "require_trusted", "run_suite", "sign_test"]
