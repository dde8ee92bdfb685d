"""Prompts as code (``lab.llm.prompts``) and the LLM ledger (``lab.llm.ledger``): parsing,
rendering, hashing, registering (and the no-op), aliases and rollback through the
registry's own commands, and the ledger's append-only rows and totals."""

from __future__ import annotations

import sqlite3

import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import LabError, NotFound
from lab.llm.ledger import LLMLedger, ledger_path
from lab.llm.prompts import content_hash, load_prompt, parse_prompt, read_prompt, register_prompt, render
from lab.llm.types import ChatRequest, Completion, Message, Usage
from lab.registry import Registry
from lab.testing.pytest_plugin import write_bare_pyproject

ANSWER = """+++
model = "extractive"
temperature = 0.0
max_tokens = 64
k = 3
tone = "plain"   # kept in params
+++
### system
Answer from the context only.
### user
Context:
{{passages}}
Question: {{ question }}
"""


@pytest.fixture
def llm_lab(tmp_path, monkeypatch):
    """A lab with [tool.lab.llm] and prompts/answer.md; cwd is set to it."""
    write_bare_pyproject(tmp_path, "\n[tool.lab.llm]\nprovider = \"extractive\"\n")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "answer.md").write_text(ANSWER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_HOME", raising=False)
    return tmp_path


def test_parse_front_matter_and_render_splits_roles():
    prompt = parse_prompt(ANSWER, "answer")
    assert (prompt.model, prompt.temperature, prompt.max_tokens, prompt.k) == ("extractive", 0.0, 64, 3)
    assert prompt.params["tone"] == "plain"
    assert prompt.variables == ("passages", "question")
    messages = render(prompt, {"passages": ["A is 1.", "B is {{question}}."], "question": "What is A?"})
    assert messages == (
        Message("system", "Answer from the context only."),
        Message("user", "Context:\nA is 1.\n\nB is {{question}}.\nQuestion: What is A?"),  # one pass only
    )
    bare = parse_prompt("Say {{x}}.", "bare")
    assert render(bare, {"x": 3}) == (Message("user", "Say 3."),)


def test_missing_and_unknown_variables_are_named():
    prompt = parse_prompt(ANSWER, "answer")
    with pytest.raises(LabError, match="needs variable.*'question'"):
        render(prompt, {"passages": "p"})
    with pytest.raises(LabError, match="has no variable.*'colour'"):
        render(prompt, {"passages": "p", "question": "q", "colour": "red"})
    with pytest.raises(LabError, match="variable 'question' must be text"):
        render(prompt, {"passages": "p", "question": None})


@pytest.mark.parametrize("text, fix", [
    ("+++\nmodel = 1\n+++\nhi", "'model' must be a str"),
    ("+++\nmodel = \"m\"\nhi", "never closed"),
    ("+++\nmodel = \n+++\nhi", "not valid TOML"),
    ("intro\n### user\nhi", "text before the first"),
    ("+++\n+++\n  \n", "no body"),
])
def test_bad_prompt_files_name_the_fix(text, fix):
    with pytest.raises(LabError, match=fix):
        parse_prompt(text, "p", "prompts/p.md")


def test_hash_is_canonical_front_matter_and_body():
    base = parse_prompt(ANSWER, "answer").hash
    assert len(base) == 16 and int(base, 16) >= 0
    reordered = ANSWER.replace('model = "extractive"\ntemperature = 0.0', 'temperature = 0.0\nmodel = "extractive"')
    assert parse_prompt(reordered.replace("# kept in params", ""), "answer").hash == base  # comments, order: same
    assert parse_prompt(ANSWER.replace("\n", "\r\n") + "\n\n", "answer").hash == base  # line ends, trailing blank
    assert parse_prompt(ANSWER.replace("max_tokens = 64", "max_tokens = 65"), "answer").hash != base
    assert parse_prompt(ANSWER.replace("context only", "context"), "answer").hash != base
    assert content_hash({"a": 1}, "x") == content_hash({"a": 1}, "x\n")


def test_register_is_a_noop_when_unchanged_and_aliases_roll_back(llm_lab, capsys):
    config = load_config(llm_lab)
    v1, created = register_prompt(config, "answer")
    assert created and v1.version == 1 and v1.flavor == "prompt" and v1.metrics == {}
    assert v1.lineage["prompt_hash"] == read_prompt(config, "answer").hash
    assert v1.lineage["source"] == "prompts/answer.md"
    assert (llm_lab / v1.artifact_path).read_text() == ANSWER
    again, created = register_prompt(config, "answer")
    assert not created and again.version == 1
    assert main(["prompt", "register", "answer"]) == 0
    assert "unchanged" in capsys.readouterr().out

    (llm_lab / "prompts" / "answer.md").write_text(ANSWER.replace("context only", "context, briefly"))
    assert main(["prompt", "register", "answer"]) == 0
    assert "registered version 2" in capsys.readouterr().out
    assert main(["prompt", "promote", "answer", "1"]) == 0  # default alias: production, no champion gate
    assert main(["prompt", "promote", "answer", "2"]) == 0
    assert main(["prompt", "promote", "answer", "2", "--alias", "candidate"]) == 0
    assert load_prompt(config, "answer").version == 2
    assert "context, briefly" in load_prompt(config, "answer", "candidate").body
    capsys.readouterr()
    assert main(["rollback", "answer", "--alias", "production"]) == 0
    assert load_prompt(config, "answer").version == 1
    assert load_prompt(config, "answer", 2).hash == read_prompt(config, "answer").hash
    assert main(["history", "answer"]) == 0
    history = capsys.readouterr().out
    assert "rollback" in history and "production" in history and "candidate" in history

    with pytest.raises(NotFound, match="no alias 'staging'.*lab prompt promote answer VERSION --alias staging"):
        load_prompt(config, "answer", "staging")
    with pytest.raises(NotFound, match="lab prompt register other"):
        load_prompt(config, "other")
    # a registered prompt's file is read-only: an edit is caught by its hash
    (llm_lab / v1.artifact_path).write_text(ANSWER + "more\n")
    with pytest.raises(LabError, match="changed after registration"):
        load_prompt(config, "answer", 1)


def test_render_command_and_its_errors(llm_lab, capsys):
    assert main(["prompt", "render", "answer", "--var", "passages=P.", "--var", "question=Q?"]) == 0
    assert "### user\nContext:\nP.\nQuestion: Q?" in capsys.readouterr().out
    assert main(["prompt", "render", "answer", "--var", "passages=P."]) == 2
    assert "needs variable(s) 'question'" in capsys.readouterr().err


def _request(**metadata) -> ChatRequest:
    return ChatRequest(messages=(Message("user", "hi"),), model="m1", user="ann", metadata=metadata)


def test_ledger_records_every_outcome_and_is_append_only(llm_lab):
    config = load_config(llm_lab)
    path = ledger_path(config)
    answer = Completion(text="hello", model="m1", provider="p1", usage=Usage(12, 3), latency_ms=40.0,
                        cost_usd=0.0015)
    prompt = {"name": "answer", "version": 2, "hash": "abcd"}
    with LLMLedger(path) as ledger:
        ledger.record(answer, _request(request_id="r1"), status="ok", prompt=prompt, key="k1")
        ledger.record(Completion(**{**answer.__dict__, "cached": True, "latency_ms": 1.0}), _request(),
                      status="ok", prompt=prompt, request_id="r2")
        ledger.record(None, _request(request_id="r3"), status="refused_rate", prompt=prompt, key="k1",
                      error="rate limited")
        with pytest.raises(LabError, match="lowercase word"):
            ledger.record(None, _request(), status="Refused!")
        with pytest.raises(LabError, match="needs the completion"):
            ledger.record(None, _request(), status="ok")
        rows = ledger.calls(10)
        assert [r["request_id"] for r in rows] == ["r3", "r2", "r1"]
        first = rows[-1]
        assert (first["user"], first["key_id"], first["prompt_name"], first["prompt_version"], first["prompt_hash"],
                first["provider"], first["model"], first["input_tokens"], first["output_tokens"],
                first["cost_usd"], first["latency_ms"], first["cached"], first["status"], first["output"]) == (
            "ann", "k1", "answer", 2, "abcd", "p1", "m1", 12, 3, 0.0015, 40.0, 0, "ok", "hello")
        assert rows[0]["output"] is None and rows[0]["error"] == "rate limited"
        (totals,) = ledger.totals()
        assert (totals["calls"], totals["ok"], totals["cached"], totals["refused"], totals["input_tokens"],
                totals["cost_usd"]) == (3, 2, 1, 1, 24, 0.003)
    conn = sqlite3.connect(path)
    try:
        for sql in ("UPDATE llm_calls SET output = 'edited'", "DELETE FROM llm_calls"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert main(["llm", "calls", "--totals"]) == 0
