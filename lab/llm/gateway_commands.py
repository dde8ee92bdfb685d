"""``lab llm spend`` (spend against the ceilings this day and month) and ``lab llm budget``
(each prompt's token-use drift, from the LLM ledger)."""

from __future__ import annotations

import argparse
import json

from lab.cli import Context


def spend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def spend_run(args: argparse.Namespace, ctx: Context) -> int:
    from lab.llm.spend import SpendLedger

    spend = SpendLedger.for_config(ctx.config)
    try:
        rows = spend.report()
    finally:
        spend.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'scope':<24} {'period':<11} {'settled $':>10} {'open $':>10} {'ceiling $':>10} {'used':>7}")
    for r in rows:
        ceiling = f"{r['ceiling_usd']:.4f}" if r["ceiling_usd"] else "none"
        share = f"{100 * r['share']:.1f}%" if r["share"] is not None else "-"
        print(f"{r['scope']:<24} {r['period']:<11} {r['settled_usd']:>10.4f} {r['open_usd']:>10.4f} {ceiling:>10} "
              f"{share:>7}")
    return 0


def budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help="one prompt's drift (default: every prompt in the ledger)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")


def budget_run(args: argparse.Namespace, ctx: Context) -> int:
    """Exit 3 when a prompt's token use drifted (a CI or cron check), else 0."""
    from lab.llm.budget import check_budget_drift

    results = check_budget_drift(ctx.config, ctx.pm, args.prompt)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    elif not results:
        print("no answered calls in the LLM ledger yet")
    for r in results if not args.json else ():
        state = "DRIFT" if r.breached else "ok"
        numbers = (f"median {r.baseline_median:.0f} -> {r.recent_median:.0f}, p95 {r.baseline_p95:.0f} -> "
                   f"{r.recent_p95:.0f} tokens" if r.recent_median is not None else "")
        print(f"{r.prompt or '(no prompt)'}: {state} ({r.baseline_calls} baseline, {r.recent_calls} recent calls) "
              f"{numbers} {r.reason}".rstrip())
    return 3 if any(r.breached for r in results) else 0
