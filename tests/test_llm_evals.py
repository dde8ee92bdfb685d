"""LLM evaluation (``lab.llm.evals``, ``lab.steps.llm_eval``): each assertion passing and
failing on hand-made outputs, the exact paired tests on hand-computed counts, judge
agreement on a labelled set and the rule that a gate uses only a checked judge, and THE
ACCEPTANCE TEST: a real ``lab run`` whose eval stage passes on the unchanged prompt and
fails, naming the regressed case, after an edit that drops the question.

The embedder (MiniLM) and the extractive provider are the real ones; one lab per module
keeps the embedder loaded once."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.llm.evals.assertions import check_assertion, evaluate
from lab.llm.evals.compare import compare_reports, gate, mcnemar_exact, sign_test
from lab.llm.evals.judge import (LabelledExample, SimilarityJudge, cohen_kappa, judge_agreement, record_agreement,
                                 require_trusted)
from lab.llm.evals.suite import Case, EvalEnv, load_suite, resolve_prompt, run_suite
from lab.llm.plugins import get_embedder
from lab.plugins import get_plugin_manager
from lab.testing.executors import write_notebook
from lab.testing.pytest_plugin import write_bare_pyproject

ANSWER = """+++
max_tokens = 120
+++
### system
Answer the question from the context only.
### user
Context:
{{context}}

Question: {{question}}
"""
# the regressing edit: the user message no longer holds the question
NO_QUESTION = ANSWER.replace("\nQuestion: {{question}}\n", "\n")
PASSAGE = ("The server listens on port 8000 by default. Models are stored in the registry file. "
           "Drift is checked every night with a KS test.")
SUITE = [
    {"id": "port", "vars": {"question": "Which port does the server listen on?"}, "context": [PASSAGE],
     "expect": [{"type": "contains", "value": "8000"}]},
    {"id": "registry", "vars": {"question": "Where are models stored?"}, "context": [PASSAGE],
     "expect": [{"type": "contains", "value": "registry"}]},
    {"id": "drift", "vars": {"question": "How often is drift checked?"}, "context": [PASSAGE],
     "expect": [{"type": "regex", "pattern": "night", "flags": "i"}]},
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab with [tool.lab.llm] (extractive provider, MiniLM), prompts/answer.md, a
    three-case suite and a one-stage pipeline running the eval gate."""
    root = tmp_path_factory.mktemp("evals")
    write_bare_pyproject(root, '\n[tool.lab.llm]\nprovider = "extractive"\nmodel = "extractive"\n\n'
                               '[tool.lab.pipeline]\nstages = ["eval_prompt"]\n')
    (root / "prompts").mkdir()
    (root / "prompts" / "answer.md").write_text(ANSWER)
    (root / "suite.jsonl").write_text("".join(json.dumps(c) + "\n" for c in SUITE))
    write_notebook(root / "notebooks" / "eval_prompt.ipynb",
                   "from lab.steps.llm_eval import eval_prompt\n"
                   "eval_prompt(root, run_dir, suite=suite, prompt=prompt)",
                   parameters='root = "."\nrun_dir = "runs/dev"\nsuite = ""\nprompt = ""')
    (root / "notebooks" / "pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "eval_prompt"
        notebook = "notebooks/eval_prompt.ipynb"
        params = { suite = "suite.jsonl", prompt = "answer" }
        inputs = ["prompts/answer.md", "suite.jsonl"]
        outputs = ["data/llm_eval.json"]
    """))
    return root


@pytest.fixture(scope="module")
def env(lab):
    config = load_config(lab)
    return EvalEnv(config, get_plugin_manager(config))


CASE = Case("c1", {"question": "q?"})


def check(assertion, output, env):
    return evaluate(check_assertion(assertion, "test"), output, CASE, env)


def test_contains_regex_numeric_json_schema_pass_and_fail(env):
    assert check({"type": "contains", "value": ["Port", "8000"]}, "the port is 8000", env).passed
    partial = check({"type": "contains", "value": ["port", "9000"]}, "the port is 8000", env)
    assert (partial.passed, partial.score) == (False, 0.5)
    assert check({"type": "contains", "value": ["port", "9000"], "mode": "any"}, "the port is 8000", env).passed
    assert not check({"type": "contains", "value": "Port", "case_sensitive": True}, "the port", env).passed
    assert check({"type": "not_contains", "value": "sorry"}, "8000", env).passed
    assert not check({"type": "not_contains", "value": "sorry"}, "Sorry, no.", env).passed
    assert check({"type": "regex", "pattern": r"\bport \d+"}, "the port 8000", env).passed
    assert not check({"type": "regex", "pattern": "^port"}, "the port 8000", env).passed
    near = check({"type": "numeric", "value": 8000, "abs_tol": 1}, "about 8,000.5 requests", env)
    assert near.passed and near.score == 1.0
    far = check({"type": "numeric", "value": 100, "rel_tol": 0.05}, "it is 120", env)
    assert not far.passed and math.isclose(far.score, 0.8)
    assert not check({"type": "numeric", "value": 1}, "no digits", env).passed
    schema = {"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}}
    assert check({"type": "json_schema", "schema": schema}, '```json\n{"port": 8000}\n```', env).passed
    wrong = check({"type": "json_schema", "schema": schema}, '{"port": "8000"}', env)
    assert not wrong.passed and "port" in wrong.reason
    assert not check({"type": "json_schema", "schema": schema}, "port: 8000", env).passed


def test_similarity_assertion_uses_the_embedder(env):
    same = check({"type": "similarity", "value": "Drift is checked every night.", "threshold": 0.7},
                 "Every night the drift is checked.", env)
    assert same.passed and same.score > 0.7
    other = check({"type": "similarity", "value": "Drift is checked every night.", "threshold": 0.7},
                  "The server listens on port 8000.", env)
    assert not other.passed and other.score < 0.7


def test_bad_assertions_and_suites_name_the_fix(lab, tmp_path):
    with pytest.raises(ConfigError, match="unknown assertion type 'containz'"):
        check_assertion({"type": "containz", "value": "x"}, "case 1")
    with pytest.raises(ConfigError, match="needs pattern"):
        check_assertion({"type": "regex"}, "case 1")
    with pytest.raises(ConfigError, match="does not compile"):
        check_assertion({"type": "regex", "pattern": "("}, "case 1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "expect": [{"type": "contains", "value": "x"}]}\n'
                   '{"id": "a", "expect": [{"type": "contains", "value": "y"}]}\n')
    with pytest.raises(ConfigError, match="used twice"):
        load_suite(bad)
    bad.write_text('{"id": "a", "expect": []}\n')
    with pytest.raises(ConfigError, match="non-empty list of assertions"):
        load_suite(bad)


def test_custom_assertion_through_the_hook(lab):
    from lab import hookimpl

    class Plugin:
        @hookimpl
        def lab_eval_assertions(self, config):
            return {"even_length": lambda output, a, case: (len(output) % 2 == 0, 1.0, f"{len(output)} chars")}

    config = load_config(lab)
    pm = get_plugin_manager(config)
    pm.register(Plugin(), name="test_even")
    env = EvalEnv(config, pm)
    a = check_assertion({"type": "even_length"}, "case", env.custom)
    assert evaluate(a, "ab", CASE, env).passed and not evaluate(a, "abc", CASE, env).passed


def test_mcnemar_and_sign_test_on_hand_computed_counts():
    # b=1, c=5: 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 64
    assert math.isclose(mcnemar_exact(1, 5), 14 / 64)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    # 6 of 8 changed scores rose, 2 unchanged dropped: 2 * P(X <= 2), X ~ Bin(8, 1/2) = 2 * 37 / 256
    up, n, p = sign_test([0.1, 0.2, 0.3, 0.1, 0.5, 0.2, -0.1, -0.4, 0.0, 0.0])
    assert (up, n) == (6, 8) and math.isclose(p, 74 / 256)


def _report(passes, scores, digest="d"):
    cases = [{"id": f"c{i}", "passed": p, "score": s, "assertions": [], "error": None}
             for i, (p, s) in enumerate(zip(passes, scores))]
    return {"suite": {"digest": digest, "path": "s.jsonl"}, "prompt": {"name": "p", "hash": "h"},
            "pass_rate": sum(passes) / len(passes), "mean_score": sum(scores) / len(scores), "cases": cases}


def test_compare_and_gate_name_the_regressed_cases():
    base = _report([True, True, False, True], [1.0, 1.0, 0.0, 0.5])
    head = _report([True, False, True, True], [1.0, 0.0, 1.0, 0.7])
    cmp = compare_reports(base, head)
    assert (cmp.newly_failing, cmp.newly_passing, cmp.b, cmp.c) == (["c1"], ["c2"], 1, 1)
    assert cmp.score_deltas == {"c0": 0.0, "c1": -1.0, "c2": 1.0, "c3": 0.2}
    result = gate(head, base, 0.0)
    assert not result.passed and result.regressed == ["c1"] and "c1" in result.reasons[0]
    assert gate(head, None, 0.75).passed and not gate(head, None, 0.8).passed
    with pytest.raises(LabError, match="different suites"):
        compare_reports(base, _report([True] * 4, [1.0] * 4, digest="other"))


def test_cohen_kappa_by_hand_and_judge_agreement(lab, env):
    # tp=20 fp=5 fn=10 tn=15: p_o = 0.7, p_e = (25*30 + 25*20) / 2500 = 0.5, kappa = 0.4
    assert math.isclose(cohen_kappa(20, 5, 10, 15), 0.4)
    with pytest.raises(LabError, match="undefined"):
        cohen_kappa(10, 0, 0, 0)
    config = load_config(lab)
    pm = get_plugin_manager(config)
    judge = SimilarityJudge(get_embedder(config, pm), 0.7)
    expectation = "Drift is checked every night with a KS test."
    examples = [
        LabelledExample("q", "Every night drift is checked using a KS test.", expectation, True),
        LabelledExample("q", "Drift gets checked nightly by a KS test.", expectation, True),
        LabelledExample("q", "The server listens on port 8000.", expectation, False),
        LabelledExample("q", "Models are stored in the registry file.", expectation, False),
        LabelledExample("q", "Drift is checked every night.", expectation, False),  # a strict human: no test named
        LabelledExample("q", "Yes, nightly.", expectation, True),  # a lenient one
    ]
    agreement = judge_agreement(judge, examples)
    assert (agreement.tp, agreement.fp, agreement.fn, agreement.tn) == (2, 1, 1, 2)
    assert math.isclose(agreement.accuracy, 4 / 6) and agreement.disagreements == (4, 5)
    # p_o = 4/6, p_e = (3*3 + 3*3) / 36 = 0.5: kappa = (4/6 - 0.5) / 0.5 = 1/3
    assert math.isclose(agreement.kappa, 1 / 3)
    with pytest.raises(LabError, match="no recorded agreement"):
        require_trusted(config, "similarity_judge")
    record_agreement(config, pm, agreement, "digest")
    with pytest.raises(LabError, match="below .* min_judge_kappa 0.6"):
        require_trusted(config, "similarity_judge")


def test_judge_check_command_and_a_gate_refusing_an_unchecked_judge(lab, capsys):
    labelled = lab / "labelled.jsonl"
    rows = [("Every night drift is checked using a KS test.", True), ("Drift gets checked nightly by a KS test.", True),
            ("The server listens on port 8000.", False), ("Models are stored in the registry file.", False)]
    labelled.write_text("".join(json.dumps({"input": "q", "output": o, "expectation":
                                            "Drift is checked every night with a KS test.", "label": lab_})
                                + "\n" for o, lab_ in rows))
    assert main(["--root", str(lab), "llm", "judge-check", "similarity_judge", "--set", "labelled.jsonl"]) == 0
    assert "kappa 1.000" in capsys.readouterr().out
    config = load_config(lab)
    assert require_trusted(config, "similarity_judge") == 1.0
    with pytest.raises(LabError, match="no recorded agreement"):
        require_trusted(config, "another_judge")
    suite = lab / "judged.jsonl"
    suite.write_text(json.dumps({"id": "j", "vars": {"question": "How often is drift checked?"}, "context": [PASSAGE],
                                 "expect": [{"type": "judge", "judge": "some_judge", "value": "nightly"}]}) + "\n")
    pm = get_plugin_manager(config)
    with pytest.raises(LabError, match="some_judge.*no recorded agreement"):
        run_suite(config, pm, load_suite(suite), resolve_prompt(config, "answer"), trusted_judges_only=True,
                  record=False)


def _lab_run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab.launch", "--root", str(root), "run"], capture_output=True,
                          text=True, timeout=300)


def test_acceptance_eval_gate_in_lab_run_passes_unchanged_and_fails_on_a_regression(lab, capsys):
    # v1 of the prompt is production: the baseline
    config = load_config(lab)
    from lab.llm.prompts import register_prompt
    from lab.registry import Registry

    version, _ = register_prompt(config, "answer")
    with Registry.open(config.registry_path, project_root=lab) as reg:
        reg.set_alias("answer", "production", version.version)

    first = _lab_run(lab)
    assert first.returncode == 0, first.stdout + first.stderr
    report = json.loads((lab / "data" / "llm_eval.json").read_text())
    assert report["gate"]["passed"] and report["pass_rate"] == 1.0
    assert report["gate"]["baseline_source"].startswith("answer@production")
    with Registry.open(config.registry_path, project_root=lab) as reg:
        run = reg.get_run(report["run_id"])
    assert run["kind"] == "llm_eval" and run["metrics"]["pass_rate"] == 1.0

    (lab / "prompts" / "answer.md").write_text(NO_QUESTION)
    try:
        second = _lab_run(lab)
        assert second.returncode != 0
        out = second.stdout + second.stderr
        assert "eval gate failed" in out and "passing on the baseline fail now" in out
        report = json.loads((lab / "data" / "llm_eval.json").read_text())
        assert not report["gate"]["passed"] and report["gate"]["regressed"]
        for case_id in report["gate"]["regressed"]:
            assert f"{case_id}:" in out  # the failure names each regressed case

        # the same through the CLI: exit 3, and the comparison names the same cases
        assert main(["--root", str(lab), "llm", "eval", "suite.jsonl", "--prompt", "answer"]) == 3
        assert main(["--root", str(lab), "llm", "compare", "suite.jsonl", "--prompt", "answer", "--base",
                     "production", "--json"]) == 0
        out = capsys.readouterr().out
        cmp = json.loads(out[out.index("{"):])
        assert cmp["newly_failing"] == report["gate"]["regressed"]
    finally:
        (lab / "prompts" / "answer.md").write_text(ANSWER)
    assert main(["--root", str(lab), "llm", "eval", "suite.jsonl", "--prompt", "answer"]) == 0


def test_a_plugin_judge_through_the_hook_is_measured_before_a_gate_trusts_it(lab):
    """A ``lab_llm_judges`` judge is found by name and its agreement with labelled examples
    is measured; until it is recorded at or above the kappa floor, a gate refuses it."""
    from lab import hookimpl
    from lab.llm.evals.judge import find_judge

    class Mentions:
        name = "mentions"

        def judge(self, input, output, expectation):
            passed = expectation.lower() in output.lower()
            return passed, float(passed), "mentioned" if passed else "not mentioned"

    class Plugin:
        @hookimpl
        def lab_llm_judges(self, config):
            return [Mentions()]

    config = load_config(lab)
    pm = get_plugin_manager(config)
    pm.register(Plugin(), name="test_judges")
    judge = find_judge(config, pm, "mentions")
    assert judge.name == "mentions"
    examples = [LabelledExample("q", "port 8000", "8000", True), LabelledExample("q", "port 80", "8000", False),
                LabelledExample("q", "it is 8000", "8000", True), LabelledExample("q", "no idea", "8000", True)]
    agreement = judge_agreement(judge, examples)
    assert (agreement.accuracy, agreement.n) == (0.75, 4)  # it misses the human's lenient "no idea" label
    with pytest.raises(LabError, match="mentions"):
        require_trusted(config, "mentions")
