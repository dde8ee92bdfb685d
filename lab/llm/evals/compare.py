"""Two runs of one suite, case by case: what regressed, what improved, and whether the
difference is more than chance; and the gate a suite run passes.

Paired tests (both exact, no normal approximation; suites are small):

- McNemar on pass/fail: of the discordant cases, ``b`` passed on the base and fail on the
  head, ``c`` the other way; under no difference each is Binomial(b + c, 1/2), so the
  two-sided p = min(1, 2 * P(X <= min(b, c))).
- The sign test on per-case scores: of the ``n`` cases whose score changed, ``k`` rose;
  two-sided p = min(1, 2 * P(X <= min(k, n - k))) with X ~ Binomial(n, 1/2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.errors import LabError


def _binom_two_sided(low: int, n: int) -> float:
    """2 * P(X <= low), X ~ Binomial(n, 1/2), capped at 1 (1 when n is 0)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``."""
    return _binom_two_sided(min(b, c), b + c)


def sign_test(deltas: list[float]) -> tuple[int, int, float]:
    """(cases that rose, cases that changed, exact two-sided p) for paired score deltas;
    unchanged cases (|delta| <= 1e-12) are dropped, as the sign test does."""
    moved = [d for d in deltas if abs(d) > 1e-12]
    up = sum(d > 0 for d in moved)
    return up, len(moved), _binom_two_sided(min(up, len(moved) - up), len(moved))


@dataclass(frozen=True)
class Comparison:
    """``head`` against ``base`` on the same cases. ``b``: passed on base, fail on head;
    ``c``: failed on base, pass on head."""

    base: dict[str, Any]
    head: dict[str, Any]
    newly_failing: list[str]
    newly_passing: list[str]
    score_deltas: dict[str, float]
    b: int
    c: int
    mcnemar_p: float
    scores_up: int
    scores_changed: int
    sign_p: float
    only_in_base: list[str] = field(default_factory=list)
    only_in_head: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["cases"]}


def compare_reports(base: dict[str, Any], head: dict[str, Any]) -> Comparison:
    """Compare two suite reports (``SuiteReport.to_dict()``) case by case; a LabError when
    they come from different suites."""
    if base["suite"]["digest"] != head["suite"]["digest"]:
        raise LabError(f"the two reports ran different suites ({base['suite']['path']} {base['suite']['digest']} vs "
                       f"{head['suite']['path']} {head['suite']['digest']}); compare runs of one suite")
    b_cases, h_cases = _by_id(base), _by_id(head)
    common = [i for i in b_cases if i in h_cases]
    failing = [i for i in common if b_cases[i]["passed"] and not h_cases[i]["passed"]]
    passing = [i for i in common if not b_cases[i]["passed"] and h_cases[i]["passed"]]
    deltas = {i: round(h_cases[i]["score"] - b_cases[i]["score"], 6) for i in common}
    up, changed, sign_p = sign_test(list(deltas.values()))
    return Comparison(
        base=_summary(base), head=_summary(head), newly_failing=failing, newly_passing=passing,
        score_deltas=deltas, b=len(failing), c=len(passing), mcnemar_p=mcnemar_exact(len(failing), len(passing)),
        scores_up=up, scores_changed=changed, sign_p=sign_p,
        only_in_base=[i for i in b_cases if i not in h_cases], only_in_head=[i for i in h_cases if i not in b_cases],
    )


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": report.get("prompt"), "pass_rate": report["pass_rate"], "mean_score": report["mean_score"]}


@dataclass(frozen=True)
class GateResult:
    """The eval gate's verdict: ``regressed`` are cases that pass on the baseline and fail
    now; ``reasons`` say, one line each, why it failed (empty when it passed)."""

    passed: bool
    pass_rate: float
    min_pass_rate: float
    regressed: list[str]
    baseline: dict[str, Any] | None
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(head: dict[str, Any], base: dict[str, Any] | None, min_pass_rate: float) -> GateResult:
    """Fail when a case that passed on ``base`` fails in ``head``, or ``head``'s pass rate
    is below ``min_pass_rate`` (a share, 0..1). ``base`` None: only the pass rate counts."""
    reasons = []
    regressed: list[str] = []
    if base is not None:
        regressed = compare_reports(base, head).newly_failing
        if regressed:
            why = {c["id"]: c for c in head["cases"]}
            detail = "; ".join(f"{i}: {_first_failure(why[i])}" for i in regressed)
            reasons.append(f"{len(regressed)} case(s) passing on the baseline fail now: {detail}")
    if head["pass_rate"] < min_pass_rate:
        reasons.append(f"pass rate {head['pass_rate']:.3f} is below [tool.lab.llm.evals] min_pass_rate "
                       f"{min_pass_rate}")
    baseline = None if base is None else {"prompt": base.get("prompt"), "pass_rate": base["pass_rate"]}
    return GateResult(not reasons, head["pass_rate"], min_pass_rate, regressed, baseline, reasons)


def _first_failure(case: dict[str, Any]) -> str:
    if case.get("error"):
        return case["error"]
    for a in case.get("assertions", []):
        if not a["passed"]:
            return f"{a['type']} {a['reason']}"
    return "failed"


def format_comparison(cmp: Comparison) -> str:
    """The regression report as text, one line per changed case."""
    lines = [f"base {_label(cmp.base)}: pass rate {cmp.base['pass_rate']:.3f}, mean score {cmp.base['mean_score']:.3f}",
             f"head {_label(cmp.head)}: pass rate {cmp.head['pass_rate']:.3f}, mean score {cmp.head['mean_score']:.3f}"]
    for name, ids in (("newly failing", cmp.newly_failing), ("newly passing", cmp.newly_passing)):
        lines.append(f"{name} ({len(ids)}): {', '.join(ids) or '-'}")
    moved = {i: d for i, d in cmp.score_deltas.items() if abs(d) > 1e-12}
    for i, d in sorted(moved.items(), key=lambda kv: kv[1]):
        lines.append(f"  {i:<24} score {d:+.3f}")
    lines.append(f"McNemar (exact): b={cmp.b} c={cmp.c} p={cmp.mcnemar_p:.4g}")
    lines.append(f"sign test on scores: {cmp.scores_up} of {cmp.scores_changed} changed rose, p={cmp.sign_p:.4g}")
    return "\n".join(lines)


def _label(side: dict[str, Any]) -> str:
    p = side.get("prompt") or {}
    return f"{p.get('name', '?')} v{p.get('version') or '-'} {p.get('hash', '')[:8]}"
