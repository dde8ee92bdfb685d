"""Evaluation suites: cases in JSONL, run against a prompt, into a JSON report and a
registry run of kind ``llm_eval``.

A suite is a JSONL file, one case a line::

    {"id": "serve-port", "vars": {"question": "Which port does lab serve use?"},
     "expect": [{"type": "contains", "value": "8000"}]}

- ``id``: unique in the suite (the regression report and the gate name cases by it);
- ``vars``: the prompt's variables (only those the prompt uses are passed to it), or
  ``messages``: ``[{"role", "content"}]`` sent as they are (no prompt);
- ``context``: passages for the provider (``ChatRequest.context``); when a case has none
  and the prompt uses ``{{context}}``, they are retrieved from the lab's RAG index
  (``lab.llm.rag.Index``) for the case's ``[tool.lab.llm.evals] query_var`` variable, k
  from the prompt's front matter or ``[tool.lab.llm.rag] k``;
- ``expect``: assertions (``lab.llm.evals.assertions``). A case passes when every
  assertion passes; its score is their mean score.

``[tool.lab.llm.evals]``::

    min_pass_rate = 0.0          # the gate fails below this share of passing cases
    min_judge_kappa = 0.6        # a judge is used in a gate only with recorded kappa >= this
    similarity_threshold = 0.75  # a similarity assertion's default cosine threshold
    judge_threshold = 0.7        # similarity_judge's cosine threshold
    baseline = "production"      # the prompt alias a gate compares against
    query_var = "question"       # the variable retrieval searches with

Providers are called through ``lab.llm.gateway.Gateway`` with its caches off (an eval
must see the prompt's real output), else straight through the provider.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from lab.errors import ConfigError, LabError
from lab.llm.evals.assertions import AssertionResult, check_assertion, evaluate
from lab.llm.evals.settings import EvalSettings, eval_settings
from lab.llm.rag.prompted import PromptRetriever, needs_retrieval
from lab.llm.settings import llm_settings
from lab.llm.types import ChatRequest, Message, ROLES

RUN_KIND = "llm_eval"


@dataclass(frozen=True)
class Case:
    """One suite case (see the module docstring)."""

    id: str
    vars: dict[str, Any] = field(default_factory=dict)
    messages: tuple[Message, ...] | None = None
    context: tuple[str, ...] | None = None
    expect: tuple[dict[str, Any], ...] = ()

    @property
    def question(self) -> str:
        """What a judge is told the input was: the ``question`` variable, else the last user
        message, else the variables as JSON."""
        if "question" in self.vars:
            return str(self.vars["question"])
        if self.messages:
            users = [m.content for m in self.messages if m.role == "user"]
            if users:
                return users[-1]
        return json.dumps(self.vars, sort_keys=True, default=str)


@dataclass(frozen=True)
class Suite:
    """A loaded suite: ``digest`` is the SHA-256 (16 hex) of its file's bytes, so two
    reports can be compared only when they ran the same cases."""

    name: str
    path: str
    digest: str
    cases: tuple[Case, ...]


def load_suite(path: str | Path, custom: "dict[str, Callable] | None" = None) -> Suite:
    """Read and check a suite; a ``ConfigError`` names the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no suite at {path}; pass a JSONL file of cases (id, vars or messages, expect)")
    data = path.read_bytes()
    cases: list[Case] = []
    seen: set[str] = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc.msg}); each line is one case") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: a case is a JSON object with id, vars or messages, and expect")
        unknown = sorted(set(row) - {"id", "vars", "messages", "context", "expect", "note"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; a case has id, vars, messages, "
                              "context, expect (and note)")
        case_id = row.get("id")
        if not isinstance(case_id, str) or not case_id:
            raise ConfigError(f"{where}: every case needs a non-empty string 'id'")
        if case_id in seen:
            raise ConfigError(f"{where}: case id {case_id!r} is used twice; ids must be unique")
        seen.add(case_id)
        where = f"{where} (case {case_id!r})"
        variables = row.get("vars", {})
        if not isinstance(variables, dict):
            raise ConfigError(f"{where}: 'vars' must be an object of the prompt's variables")
        messages = None
        if "messages" in row:
            messages = _messages(row["messages"], where)
        context = row.get("context")
        if context is not None and not (isinstance(context, list) and all(isinstance(c, str) for c in context)):
            raise ConfigError(f"{where}: 'context' must be a list of passages (strings)")
        expect = row.get("expect")
        if not isinstance(expect, list) or not expect:
            raise ConfigError(f"{where}: 'expect' must be a non-empty list of assertions")
        checked = tuple(check_assertion(a, where, custom) for a in expect)
        cases.append(Case(case_id, dict(variables), messages, None if context is None else tuple(context), checked))
    if not cases:
        raise ConfigError(f"{path} holds no cases; write one JSON object per line")
    return Suite(path.stem, str(path), hashlib.sha256(data).hexdigest()[:16], tuple(cases))


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a string content, "
                              f"got {m!r}")
        out.append(Message(m["role"], m["content"]))
    return tuple(out)


# -- prompts ------------------------------------------------------------------------------


def resolve_prompt(config, ref: str, *, name: str | None = None):
    """A ``lab.llm.prompts.Prompt`` from ``ref``: a file path (``*.md`` or an existing
    file; ``name`` or its stem names it), ``NAME@ALIAS`` or ``NAME:VERSION`` (registered),
    or ``NAME`` (the working copy ``prompts/NAME.md``)."""
    from lab.llm import prompts

    path = Path(ref)
    if not path.is_absolute():
        path = config.root / path
    if ref.endswith(".md") or ("/" in ref and path.is_file()):
        if not path.is_file():
            raise ConfigError(f"no prompt file {ref}; give a path to a prompt .md, NAME, NAME@ALIAS or NAME:VERSION")
        return prompts.parse_prompt(path.read_text(encoding="utf-8"), name or path.stem, ref)
    if "@" in ref:
        base, _, alias = ref.partition("@")
        return prompts.load_prompt(config, base, alias)
    if ":" in ref:
        base, _, version = ref.partition(":")
        if not version.isdigit():
            raise ConfigError(f"prompt {ref!r}: the part after ':' must be a version number (NAME:3)")
        return prompts.load_prompt(config, base, int(version))
    return prompts.read_prompt(config, ref)


def prompt_info(prompt) -> dict[str, Any]:
    return {"name": prompt.name, "version": prompt.version, "hash": prompt.hash, "source": prompt.source}


# -- running ------------------------------------------------------------------------------


class EvalEnv:
    """What assertions need, loaded on first use: the embedder, judges (checked for
    recorded agreement when ``trusted_judges_only``), custom assertions."""

    def __init__(self, config, pm, *, trusted_judges_only: bool = False):
        from lab.llm.plugins import custom_assertions

        self.config = config
        self.pm = pm
        self.settings = eval_settings(config)
        self.trusted_judges_only = trusted_judges_only
        self.custom = custom_assertions(config, pm)
        self._embedder = None
        self._judges: dict[str, Any] = {}

    def similarity(self, a: str, b: str) -> float:
        """Cosine of the two texts' embeddings (unit vectors: a dot product)."""
        if self._embedder is None:
            from lab.llm.plugins import get_embedder

            self._embedder = get_embedder(self.config, self.pm)
        vectors = self._embedder.embed([a, b])
        return float(vectors[0] @ vectors[1])

    def judge(self, name: str):
        if name not in self._judges:
            from lab.llm.evals.judge import find_judge, require_trusted

            if self.trusted_judges_only:
                require_trusted(self.config, name)
            self._judges[name] = find_judge(self.config, self.pm, name)
        return self._judges[name]


def _chat_function(config, pm) -> tuple[Callable[..., Any], Callable[[], None]]:
    """(``chat(request, prompt) -> Completion``, close): the gateway with its answer cache
    off when the lab has one (an eval must see the prompt's real output), else the
    model's provider. ``request.context``'s passages go to the gateway as ``contexts``."""
    try:
        from lab.llm.gateway import Gateway
    except ImportError:  # pragma: no cover - a lab without the gateway module
        Gateway = None
    if Gateway is not None:
        gateway = Gateway(config, pm)
        if getattr(gateway, "cache", None) is not None:
            gateway.cache.close()
            gateway.cache = None

        def via_gateway(request, prompt):
            contexts = [(text, 1.0) for text in request.context] or None
            return gateway.chat(replace(request, context=()), prompt=prompt, contexts=contexts)

        return via_gateway, gateway.close
    from lab.llm.models import model_info
    from lab.llm.plugins import get_provider

    def direct(request, prompt):
        return get_provider(config, pm, model_info(config, request.model).provider).complete(request)

    return direct, lambda: None


@dataclass
class SuiteReport:
    """A suite's run: per case the output and each assertion's result; ``pass_rate`` and
    ``mean_score`` are shares in [0, 1] over the cases."""

    suite: dict[str, Any]
    prompt: dict[str, Any] | None
    model: str
    cases: list[dict[str, Any]]
    created_at: str
    run_id: str | None = None

    @property
    def passed(self) -> int:
        return sum(c["passed"] for c in self.cases)

    @property
    def pass_rate(self) -> float:
        return self.passed / len(self.cases) if self.cases else 0.0

    @property
    def mean_score(self) -> float:
        return sum(c["score"] for c in self.cases) / len(self.cases) if self.cases else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "prompt": self.prompt, "model": self.model, "created_at": self.created_at,
                "run_id": self.run_id, "total": len(self.cases), "passed": self.passed,
                "pass_rate": round(self.pass_rate, 6), "mean_score": round(self.mean_score, 6), "cases": self.cases}


def run_suite(config, pm, suite: Suite, prompt=None, *, chat: Callable[..., Any] | None = None,
              trusted_judges_only: bool = False, record: bool = True) -> SuiteReport:
    """Run every case of ``suite`` with ``prompt`` (a ``Prompt``; None: cases carry
    messages) and check its assertions. ``chat`` overrides how requests are answered
    (default: ``_chat_function``). ``record``: a registry run of kind ``llm_eval``."""
    env = EvalEnv(config, pm, trusted_judges_only=trusted_judges_only)
    close = lambda: None  # noqa: E731
    if chat is None:
        chat, close = _chat_function(config, pm)
    top = llm_settings(config)
    model = (getattr(prompt, "model", None) or top.model)
    settings = env.settings
    index_box: list = []
    rows = []
    try:
        for case in suite.cases:
            rows.append(_run_case(config, pm, case, prompt, model, chat, env, settings, index_box))
    finally:
        close()
        if index_box:
            index_box[0].close()
    report = SuiteReport(
        suite={"name": suite.name, "path": suite.path, "digest": suite.digest, "cases": len(suite.cases)},
        prompt=None if prompt is None else prompt_info(prompt), model=model, cases=rows,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    if record:
        report.run_id = record_run(config, report)
    return report


def _run_case(config, pm, case: Case, prompt, model: str, chat, env: EvalEnv, settings: EvalSettings,
              index_box: list) -> dict[str, Any]:
    row: dict[str, Any] = {"id": case.id, "output": None, "error": None}
    started = time.perf_counter()
    try:
        context = case.context
        if case.messages is not None:
            messages = case.messages
        else:
            if prompt is None:
                raise ConfigError(f"case {case.id!r} has no messages; run the suite with a prompt (--prompt NAME)")
            from lab.llm.prompts import render

            variables = {k: v for k, v in case.vars.items() if k in prompt.variables}
            if needs_retrieval(prompt, case.vars):
                if context is None:
                    if not index_box:
                        index_box.append(PromptRetriever(config, pm, settings.query_var))
                    context = index_box[0].passages(prompt, case.vars, where=f"case {case.id!r}")
                variables["context"] = list(context)
            messages = render(prompt, variables)
        request = ChatRequest(
            messages=tuple(messages), model=model,
            max_tokens=getattr(prompt, "max_tokens", None) or 256,
            temperature=(getattr(prompt, "temperature", None) or 0.0),
            context=tuple(context or ()),
            metadata={"eval_case": case.id, **({"prompt": prompt_info(prompt)} if prompt is not None else {})})
        completion = chat(request, None if prompt is None else prompt_info(prompt))
        row.update(output=completion.text, provider=completion.provider, tokens_in=completion.usage.input_tokens,
                   tokens_out=completion.usage.output_tokens, cost_usd=completion.cost_usd)
    except LabError as exc:
        # a case the prompt cannot render or the provider refuses fails; the run goes on
        row.update(error=f"{type(exc).__name__}: {exc}")
    row["latency_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
    if row["error"] is not None:
        results = [AssertionResult(a["type"], False, 0.0, "no output") for a in case.expect]
    else:
        results = [evaluate(a, row["output"], case, env) for a in case.expect]
    row["assertions"] = [r.to_dict() for r in results]
    row["passed"] = all(r.passed for r in results)
    row["score"] = round(sum(r.score for r in results) / len(results), 6)
    return row


def record_run(config, report: SuiteReport) -> str:
    """A finished registry run of kind ``llm_eval`` for ``report``; returns its id."""
    from lab.registry import Registry

    prompt = report.prompt or {}
    with Registry.open(config.registry_path, project_root=config.root) as reg:
        run_id = reg.start_run(kind=RUN_KIND, name=f"eval {report.suite['name']}", params={
            "suite": report.suite["path"], "suite_digest": report.suite["digest"], "model": report.model,
            "prompt": prompt.get("name"), "prompt_version": prompt.get("version"), "prompt_hash": prompt.get("hash")})
        reg.log_metrics(run_id, {"pass_rate": report.pass_rate, "mean_score": report.mean_score,
                                 "passed": float(report.passed), "cases": float(len(report.cases))})
        reg.finish_run(run_id)
    return run_id


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write a report (any JSON-able dict) atomically."""
    from lab.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True, default=str))
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no eval report at {path}; write one with `lab llm eval ... --report {path}`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not a JSON eval report ({exc.msg})") from None
    if not isinstance(data, dict) or "cases" not in data or "suite" not in data:
        raise ConfigError(f"{path} is not an eval report (no suite/cases); use a report `lab llm eval` wrote")
    return data
