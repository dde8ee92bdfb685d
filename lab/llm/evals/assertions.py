"""Assertions an evaluation case makes about one output: each returns an
``AssertionResult`` (passed, score in [0, 1], reason).

A case's ``expect`` is a list of tables, each with a ``type``:

=============  ==========================================================================
type           keys (defaults)
=============  ==========================================================================
contains       ``value`` (a string or a list), ``mode`` ("all" | "any", "all"),
               ``case_sensitive`` (false). Score: the share of the strings found.
not_contains   the same keys; passes when none (mode "all") or not every one ("any") is found
regex          ``pattern``, ``flags`` ("" or letters of "imsx"). Score 1 or 0.
json_schema    ``schema`` (a JSON Schema); the output (a ```json fence stripped) must parse
               and validate. Score 1 or 0.
numeric        ``value``, ``abs_tol`` (0), ``rel_tol`` (0), ``pattern`` (the first number
               by default). Passes when |x - value| <= max(abs_tol, rel_tol * |value|).
               Score: 1 when it passes, else max(0, 1 - |x - value| / max(|value|, 1)).
similarity     ``value`` (the expected text), ``threshold`` ([tool.lab.llm.evals]
               similarity_threshold): cosine of the embeddings (the lab's embedder)
               >= threshold. Score: the cosine clipped to [0, 1].
judge          ``judge`` (a ``lab_llm_judges`` name), ``value`` (the expectation); the
               judge must have passed ``lab llm judge-check`` (``judge.require_trusted``).
<custom>       any name a ``lab_eval_assertions`` plugin returns: ``fn(output, assertion,
               case) -> (passed, score, reason)``.
=============  ==========================================================================

Assertions are checked when the suite is loaded (``check_assertion``), so a typo is an
error naming the case before any provider is called.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from lab.errors import ConfigError, LabError

if TYPE_CHECKING:  # pragma: no cover
    from lab.llm.evals.suite import Case, EvalEnv

BUILTIN = ("contains", "not_contains", "regex", "json_schema", "numeric", "similarity", "judge")
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.S)
_REQUIRED = {"contains": ("value",), "not_contains": ("value",), "regex": ("pattern",), "json_schema": ("schema",),
             "numeric": ("value",), "similarity": ("value",), "judge": ("judge", "value")}


@dataclass(frozen=True)
class AssertionResult:
    """One assertion's verdict on one output: ``score`` in [0, 1], ``reason`` one line."""

    type: str
    passed: bool
    score: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "passed": self.passed, "score": round(self.score, 6), "reason": self.reason}


def check_assertion(assertion: Any, where: str, custom: "dict[str, Callable] | None" = None) -> dict[str, Any]:
    """``assertion`` checked for shape (type known, required keys present); ``where``
    names the case in the error. Returns it as a dict."""
    if not isinstance(assertion, dict) or not isinstance(assertion.get("type"), str):
        raise ConfigError(f"{where}: each expectation must be a table with a 'type' (one of "
                          f"{', '.join(BUILTIN)}), got {assertion!r}")
    kind = assertion["type"]
    if kind not in BUILTIN and kind not in (custom or {}):
        known = ", ".join([*BUILTIN, *sorted(custom or {})])
        raise ConfigError(f"{where}: unknown assertion type {kind!r}; known: {known} "
                          "(a plugin adds more through lab_eval_assertions)")
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in assertion]
    if missing:
        raise ConfigError(f"{where}: a {kind!r} assertion needs {', '.join(missing)}")
    if kind == "regex":
        _compile(assertion, where)
    if kind in ("contains", "not_contains") and assertion.get("mode", "all") not in ("all", "any"):
        raise ConfigError(f"{where}: 'mode' of a {kind} assertion is 'all' or 'any', got {assertion['mode']!r}")
    if kind == "numeric":
        for key in ("value", "abs_tol", "rel_tol"):
            value = assertion.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: numeric {key} must be a number, got {value!r}")
    if kind == "json_schema" and not isinstance(assertion["schema"], dict):
        raise ConfigError(f"{where}: json_schema 'schema' must be a JSON object")
    return dict(assertion)


def evaluate(assertion: dict[str, Any], output: str, case: "Case", env: "EvalEnv") -> AssertionResult:
    """The verdict of one (checked) assertion on ``output``."""
    kind = assertion["type"]
    if kind in ("contains", "not_contains"):
        return _contains(assertion, output, negate=kind == "not_contains")
    if kind == "regex":
        return _regex(assertion, output)
    if kind == "json_schema":
        return _json_schema(assertion, output)
    if kind == "numeric":
        return _numeric(assertion, output)
    if kind == "similarity":
        threshold = float(assertion.get("threshold", env.settings.similarity_threshold))
        cosine = env.similarity(output, str(assertion["value"]))
        passed = cosine >= threshold
        return AssertionResult(kind, passed, min(max(cosine, 0.0), 1.0),
                               f"cosine {cosine:.3f} {'>=' if passed else '<'} {threshold:.3f}")
    if kind == "judge":
        judge = env.judge(str(assertion["judge"]))
        passed, score, reason = judge.judge(case.question, output, str(assertion["value"]))
        return AssertionResult(kind, bool(passed), _unit(score, f"judge {judge.name!r}"), f"{judge.name}: {reason}")
    fn = env.custom[kind]
    try:
        passed, score, reason = fn(output, assertion, case)
    except LabError:
        raise
    except Exception as exc:  # a plugin's bug is reported as that assertion's failure, with its cause
        return AssertionResult(kind, False, 0.0, f"custom assertion {kind!r} raised {type(exc).__name__}: {exc}")
    return AssertionResult(kind, bool(passed), _unit(score, f"custom assertion {kind!r}"), str(reason))


def _unit(score: Any, who: str) -> float:
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise LabError(f"{who} returned score {score!r}; it must be a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise LabError(f"{who} returned score {value}; it must be in [0, 1]")
    return value


def _contains(a: dict[str, Any], output: str, *, negate: bool) -> AssertionResult:
    needles = a["value"] if isinstance(a["value"], list) else [a["value"]]
    sensitive = bool(a.get("case_sensitive", False))
    hay = output if sensitive else output.lower()
    found = [n for n in needles if (str(n) if sensitive else str(n).lower()) in hay]
    missing = [n for n in needles if n not in found]
    mode = a.get("mode", "all")
    kind = "not_contains" if negate else "contains"
    if negate:
        passed = not found if mode == "all" else bool(missing)
        score = len(missing) / len(needles) if needles else 1.0
        reason = f"found {found!r}" if found else "none found"
    else:
        passed = not missing if mode == "all" else bool(found)
        score = len(found) / len(needles) if needles else 1.0
        reason = f"missing {missing!r}" if missing else "all found"
    return AssertionResult(kind, passed, score, f"{reason} ({mode} of {len(needles)})")


def _compile(a: dict[str, Any], where: str = "regex") -> re.Pattern:
    flags = 0
    for letter in str(a.get("flags", "")):
        if letter not in "imsx":
            raise ConfigError(f"{where}: regex flag {letter!r} is not one of i, m, s, x")
        flags |= {"i": re.I, "m": re.M, "s": re.S, "x": re.X}[letter]
    try:
        return re.compile(str(a["pattern"]), flags)
    except re.error as exc:
        raise ConfigError(f"{where}: regex {a['pattern']!r} does not compile: {exc}") from None


def _regex(a: dict[str, Any], output: str) -> AssertionResult:
    match = _compile(a).search(output)
    reason = f"matched {match.group(0)[:60]!r}" if match else f"no match for {a['pattern']!r}"
    return AssertionResult("regex", match is not None, 1.0 if match else 0.0, reason)


def _json_schema(a: dict[str, Any], output: str) -> AssertionResult:
    try:
        import jsonschema  # only suites with a json_schema assertion need it (a jupyter dependency)
    except ImportError:  # pragma: no cover - installed with jupyterlab
        raise LabError("the json_schema assertion needs jsonschema: pip install jsonschema") from None
    fenced = _FENCE.match(output)
    text = fenced.group(1) if fenced else output
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return AssertionResult("json_schema", False, 0.0, f"output is not JSON: {exc.msg} at {exc.pos}")
    try:
        jsonschema.validate(value, a["schema"])
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return AssertionResult("json_schema", False, 0.0, f"{path}: {exc.message}")
    except jsonschema.SchemaError as exc:
        raise LabError(f"json_schema assertion: the schema itself is invalid: {exc.message}") from None
    return AssertionResult("json_schema", True, 1.0, "valid")


def _numeric(a: dict[str, Any], output: str) -> AssertionResult:
    pattern = re.compile(a["pattern"]) if a.get("pattern") else _NUMBER
    match = pattern.search(output)
    if match is None:
        return AssertionResult("numeric", False, 0.0, "no number in the output")
    text = match.group(1) if match.groups() else match.group(0)
    try:
        got = float(text.replace(",", ""))
    except ValueError:
        return AssertionResult("numeric", False, 0.0, f"{text!r} is not a number")
    want = float(a["value"])
    tol = max(float(a.get("abs_tol", 0.0)), float(a.get("rel_tol", 0.0)) * abs(want))
    err = abs(got - want)
    passed = err <= tol
    score = 1.0 if passed else max(0.0, 1.0 - err / max(abs(want), 1.0))
    return AssertionResult("numeric", passed, score, f"{got:g} vs {want:g} (|err| {err:g}, tol {tol:g})")
