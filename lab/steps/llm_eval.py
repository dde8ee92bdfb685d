"""The eval gate: a suite run against a prompt, compared with its baseline, as a pipeline
step (``eval_prompt``, ``register_prompt``) and as commands (``lab llm eval``, ``lab llm
compare``, ``lab llm judge-check``).

The gate fails when a case that passes on the baseline fails now, or when the pass rate
falls below ``[tool.lab.llm.evals] min_pass_rate``. The baseline is the prompt's
``production`` version (``[tool.lab.llm.evals] baseline``: any alias), run on the same
suite now, or a stored report (a ``.json`` a previous ``lab llm eval --report`` wrote). A
prompt with no production version yet is gated on the pass rate alone.

As a step it raises ``EvalGateFailed`` (a ``LabError``) naming the regressed cases, so the
stage and ``lab run`` fail; as a command it exits 3.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, LabError, NotFound
from lab.llm.evals.compare import compare_reports, format_comparison, gate
from lab.llm.evals.suite import (eval_settings, load_suite, read_report, resolve_prompt, run_suite,
                                 write_report)

EVAL_JSON = "data/llm_eval.json"
PROMPT_REGISTERED = "data/prompt_registered.json"
GATE_FAILED_EXIT = 3


class EvalGateFailed(LabError):
    """The eval gate refused a prompt: a case regressed or the pass rate is too low."""


def _split_ref(ref: str) -> str:
    """The prompt's name in ``NAME``, ``NAME@ALIAS``, ``NAME:3`` or a path."""
    if ref.endswith(".md") or "/" in ref:
        return Path(ref).stem
    return ref.split("@")[0].split(":")[0]


def _baseline(config, pm, suite, head, name: str, baseline: str | None) -> tuple[dict | None, str]:
    """(the baseline's report or None, what it was) for ``head``."""
    choice = baseline or eval_settings(config).baseline
    if choice.endswith(".json"):
        report = read_report(config.root / choice)
        if report["suite"]["digest"] != suite.digest:
            raise ConfigError(f"baseline report {choice} ran another version of the suite ({report['suite']['digest']}, "
                              f"now {suite.digest}); write a new one with `lab llm eval ... --report {choice}`")
        return report, f"report {choice}"
    from lab.llm.prompts import load_prompt

    try:
        base_prompt = load_prompt(config, name, choice)
    except NotFound:
        return None, f"none (prompt {name!r} has no {choice!r} version yet)"
    label = f"{name}@{choice} (v{base_prompt.version}, {base_prompt.hash})"
    if head is not None and base_prompt.hash == head.hash:
        return "same", label
    return run_suite(config, pm, suite, base_prompt, trusted_judges_only=True, record=False).to_dict(), label


def evaluate_gate(config, pm, suite_path: str, prompt_ref: str, *, baseline: str | None = None,
                  min_pass_rate: float | None = None) -> dict[str, Any]:
    """Run the suite on ``prompt_ref`` and on its baseline; the report with a ``gate``
    entry (``lab.llm.evals.compare.GateResult``)."""
    from lab.llm.plugins import custom_assertions

    suite = load_suite(config.root / suite_path, custom_assertions(config, pm))
    head = resolve_prompt(config, prompt_ref)
    report = run_suite(config, pm, suite, head, trusted_judges_only=True).to_dict()
    base, label = _baseline(config, pm, suite, head, _split_ref(prompt_ref), baseline)
    if base == "same":
        base = report
    least = eval_settings(config).min_pass_rate if min_pass_rate is None else float(min_pass_rate)
    result = gate(report, base, least)
    report["gate"] = {**result.to_dict(), "baseline_source": label}
    return report


def _gate_message(report: dict[str, Any]) -> str:
    g = report["gate"]
    return (f"eval gate failed for prompt {report['prompt']['name']!r} ({report['prompt']['hash']}) on "
            f"{report['suite']['path']}: " + "; ".join(g["reasons"]))


# -- pipeline steps -------------------------------------------------------------------------


def eval_prompt(root: str = ".", run_dir: str = "runs/dev", *, suite: str, prompt: str,
                baseline: str | None = None, min_pass_rate: float | None = None,
                output: str = EVAL_JSON) -> dict[str, Any]:
    """The eval gate as a stage: writes ``output`` (the report with its gate), then raises
    ``EvalGateFailed`` naming the regressed cases when the gate fails. Returns a summary."""
    from lab.pipeline.context import StageContext

    ctx = StageContext.open(root, run_dir)
    try:
        report = evaluate_gate(ctx.config, ctx.pm, suite, prompt, baseline=baseline, min_pass_rate=min_pass_rate)
        ctx.write_json(output, report)
    finally:
        ctx.close()
    if not report["gate"]["passed"]:
        raise EvalGateFailed(_gate_message(report))
    return {"passed": True, "pass_rate": report["pass_rate"], "mean_score": report["mean_score"],
            "baseline": report["gate"]["baseline_source"], "run_id": report["run_id"]}


def register_prompt(root: str = ".", run_dir: str = "runs/dev", *, prompt: str, eval_report: str = EVAL_JSON,
                    alias: str = "production", output: str = PROMPT_REGISTERED) -> dict[str, Any]:
    """Register the working copy of ``prompt`` and point ``alias`` at it, only when
    ``eval_report`` holds a passed gate for this very text (its hash)."""
    from lab.llm import prompts
    from lab.pipeline.context import StageContext
    from lab.registry import Registry

    ctx = StageContext.open(root, run_dir)
    try:
        config = ctx.config
        report = read_report(ctx.path(eval_report))
        current = prompts.read_prompt(config, prompt)
        if not (report.get("gate") or {}).get("passed"):
            raise EvalGateFailed(f"{eval_report} holds no passed eval gate; run the eval_prompt stage first")
        if (report.get("prompt") or {}).get("hash") != current.hash:
            raise EvalGateFailed(f"{eval_report} gated prompt hash {report['prompt'].get('hash')}, but "
                                 f"prompts/{prompt}.md is now {current.hash}; rerun the eval_prompt stage")
        version, created = prompts.register_prompt(config, prompt)
        with Registry.open(config.registry_path, project_root=config.root) as reg:
            moved = reg.set_alias(prompt, alias, version.version,
                                  reason=f"eval gate passed: pass rate {report['pass_rate']:.3f} "
                                         f"(run {report.get('run_id')})")
        out = {"prompt": prompt, "version": version.version, "hash": current.hash, "created": created,
               "alias": alias, "moved": moved is not None}
        ctx.write_json(output, out)
    finally:
        ctx.close()
    return out


# -- commands -------------------------------------------------------------------------------


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", metavar="SUITE", help="the suite: a JSONL file of cases")
    p.add_argument("--prompt", required=True, metavar="REF",
                   help="NAME (prompts/NAME.md), NAME@ALIAS, NAME:VERSION or a path to a prompt .md")
    p.add_argument("--baseline", metavar="ALIAS|REPORT.json",
                   help="what regressions are judged against (default [tool.lab.llm.evals] baseline, production)")
    p.add_argument("--min-pass-rate", type=float, metavar="SHARE", help="override [tool.lab.llm.evals] min_pass_rate")
    p.add_argument("--report", metavar="PATH", help="write the JSON report here (a later --baseline)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def eval_run(args: argparse.Namespace, ctx) -> int:
    report = evaluate_gate(ctx.config, ctx.pm, args.suite, args.prompt, baseline=args.baseline,
                           min_pass_rate=args.min_pass_rate)
    if args.report:
        write_report(Path(args.report), report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        p = report["prompt"]
        print(f"suite {report['suite']['path']}: {report['passed']}/{report['total']} cases pass "
              f"(pass rate {report['pass_rate']:.3f}, mean score {report['mean_score']:.3f}); prompt {p['name']} "
              f"{p['hash']}; baseline {report['gate']['baseline_source']}; run {report['run_id']}")
        for case in report["cases"]:
            if not case["passed"]:
                why = case["error"] or "; ".join(f"{a['type']}: {a['reason']}" for a in case["assertions"]
                                                 if not a["passed"])
                print(f"  FAIL {case['id']}: {why}")
        print("gate: passed" if report["gate"]["passed"] else "gate: FAILED: " + "; ".join(report["gate"]["reasons"]))
    return 0 if report["gate"]["passed"] else GATE_FAILED_EXIT


def _ref(name: str, side: str) -> str:
    if side.endswith(".md") or "/" in side:
        return side
    if side.isdigit():
        return f"{name}:{side}"
    if side in ("working", "file"):
        return name
    return f"{name}@{side}"


def compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", metavar="SUITE", help="the suite: a JSONL file of cases")
    p.add_argument("--prompt", required=True, metavar="NAME", help="the prompt's name")
    p.add_argument("--base", default="production", metavar="ALIAS|VERSION|FILE",
                   help="the base version: an alias (default production), a version number or a prompt file")
    p.add_argument("--head", default="working", metavar="ALIAS|VERSION|FILE",
                   help="the head version (default: the working copy prompts/NAME.md)")
    p.add_argument("--report", metavar="PATH", help="write the comparison as JSON here")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def compare_run(args: argparse.Namespace, ctx) -> int:
    from lab.llm.plugins import custom_assertions

    config, pm = ctx.config, ctx.pm
    suite = load_suite(config.root / args.suite, custom_assertions(config, pm))
    sides = {}
    for side in ("base", "head"):
        prompt = resolve_prompt(config, _ref(args.prompt, getattr(args, side)), name=args.prompt)
        sides[side] = run_suite(config, pm, suite, prompt, record=False).to_dict()
    cmp = compare_reports(sides["base"], sides["head"])
    if args.report:
        write_report(Path(args.report), {"comparison": cmp.to_dict(), **sides})
    print(json.dumps(cmp.to_dict(), indent=2) if args.json else format_comparison(cmp))
    return 0


def judge_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("judge", metavar="JUDGE", help="a judge's name (lab_llm_judges, or similarity_judge)")
    p.add_argument("--set", required=True, metavar="FILE",
                   help="labelled examples: JSONL with input, output, expectation, label (true/false)")
    p.add_argument("--json", action="store_true", help="print the agreement as JSON")


def judge_check_run(args: argparse.Namespace, ctx) -> int:
    from lab.llm.evals.judge import examples_digest, find_judge, judge_agreement, load_labelled, record_agreement

    config, pm = ctx.config, ctx.pm
    examples = load_labelled(config.root / args.set)
    agreement = judge_agreement(find_judge(config, pm, args.judge), examples)
    run_id = record_agreement(config, pm, agreement, examples_digest(examples))
    least = eval_settings(config).min_judge_kappa
    trusted = agreement.kappa >= least
    if args.json:
        print(json.dumps({**agreement.to_dict(), "run_id": run_id, "min_judge_kappa": least, "trusted": trusted}))
    else:
        a = agreement
        print(f"judge {a.judge}: {a.n} examples, accuracy {a.accuracy:.3f}, Cohen's kappa {a.kappa:.3f} "
              f"(min_judge_kappa {least}); run {run_id}")
        print(f"  judge pass & human pass {a.tp}, judge pass & human fail {a.fp}, judge fail & human pass {a.fn}, "
              f"both fail {a.tn}")
        print(f"  {'trusted: gates may use it' if trusted else 'NOT trusted: gates refuse it'}")
    return 0 if trusted else GATE_FAILED_EXIT
