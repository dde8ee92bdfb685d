"""The ``docs_qa`` template (``plugins/docs_qa``): ``lab init`` makes a lab whose files
hold together — lab's docs copied in as the corpus, the prompt rendering a question and
its retrieved context, the answer suite loading against it, four stages with their
notebooks — and the platform names no part of it. The eval gate's behaviour in a real
``lab run`` is tests/test_llm_evals.py's acceptance test; a whole docs_qa run embeds all
of docs/ (minutes on 2 cores), so it is a manual check (docs/llm.md)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from lab.cli import main
from lab.config import load_config
from lab.llm.evals.suite import load_suite, resolve_prompt
from lab.llm.prompts import render
from lab.pipeline.stage import load_stages

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def docs_lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa") / "docs-qa"
    assert main(["init", str(root), "--template", "docs_qa"]) == 0
    return root


def test_init_copies_the_docs_the_prompt_and_the_suite(docs_lab):
    docs = sorted(p.name for p in (docs_lab / "docs").glob("*.md"))
    assert docs == sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert not (docs_lab / "docs").is_symlink()  # a copy: the lab owns its corpus
    assert (docs_lab / "evals" / "suite.jsonl").read_bytes() == (REPO / "plugins/docs_qa/data/suite.jsonl").read_bytes()
    assert (docs_lab / "evals" / "retrieval.jsonl").is_file()
    config = load_config(docs_lab)
    table = tomllib.loads((docs_lab / "pyproject.toml").read_text())["tool"]["lab"]
    assert table["llm"]["provider"] == "extractive" and table["llm"]["rag"]["sources"] == ["docs/*.md"]
    prompt = resolve_prompt(config, "answer")
    assert set(prompt.variables) == {"context", "question"} and prompt.k == 4
    messages = render(prompt, {"question": "Which port?", "context": ["Port 8000."]})
    assert messages[-1].role == "user" and "Which port?" in messages[-1].content and "Port 8000." in messages[-1].content
    suite = load_suite(docs_lab / "evals" / "suite.jsonl")
    assert len(suite.cases) >= 10 and all("question" in c.vars for c in suite.cases)


def test_the_pipeline_has_four_stages_with_their_notebooks(docs_lab):
    config = load_config(docs_lab)
    assert config.pipeline.stages == ("ingest", "eval_retrieval", "eval_prompt", "register_prompt")
    stages = load_stages(docs_lab / "notebooks" / "pipeline.toml")
    assert [s.name for s in stages] == list(config.pipeline.stages)
    for stage in stages:
        notebook = json.loads((docs_lab / stage.notebook).read_text())
        assert any("parameters" in c["metadata"].get("tags", []) for c in notebook["cells"])
    gate = next(s for s in stages if s.name == "eval_prompt")
    assert "prompts/answer.md" in gate.inputs and gate.params == {"suite": "evals/suite.jsonl", "prompt": "answer"}

