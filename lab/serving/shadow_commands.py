"""``lab shadow start|status|report|stop``: shadow a challenger against the champion.

The shadow and its exit criteria live in the registry (append-only, in ``lab history``);
a running ``lab serve`` of the model picks it up within ``flag_refresh_s`` and mirrors
its traffic (``lab.serving.shadow``); ``status`` and ``report`` read the ledger and
record the outcome (``lab.serving.shadow_report.check_shadow``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lab import events
from lab.atomic import atomic_write_text
from lab.cli import Context
from lab.plugins import model_spec
from lab.registry import Registry
from lab.serving.shadow_report import check_shadow, report_text, shadow_criteria


def _open(ctx: Context) -> Registry:
    return Registry.open(ctx.config.registry_path, project_root=ctx.config.root)


def _start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="MODEL", help="the served model, e.g. churn")
    p.add_argument("--challenger", type=int, required=True, metavar="VERSION", help="the version to shadow")
    p.add_argument("--min-requests", type=int, help="requests mirrored before the criteria can hold (default 1000)")
    p.add_argument("--min-agreement", type=float,
                   help="share of requests both answer alike, judged by its 95%% CI lower bound (default 0.95)")
    p.add_argument("--max-latency-ms", type=float, help="the challenger's p99 predict time must stay under this")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--deadline", metavar="TIME", help="when the shadow expires if unmet, ISO 8601 (2026-12-08T00:00Z)")
    when.add_argument("--days", type=float, help="expire this many days from now if unmet (default 7)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="classification: agree = same decision at this score (0.5)")
    rule.add_argument("--tolerance", type=float, help="regression (required): agree = predictions this close")
    p.add_argument("--reason", default="", help="why, kept in the history")


def _start_run(args: argparse.Namespace, ctx: Context) -> int:
    spec = model_spec(ctx.pm, ctx.config, args.name)  # the task decides the agreement rule
    criteria = shadow_criteria(spec.task, min_requests=args.min_requests, min_agreement=args.min_agreement,
                               max_latency_ms=args.max_latency_ms, deadline=args.deadline, days=args.days,
                               threshold=args.threshold, tolerance=args.tolerance)
    with _open(ctx) as registry:
        shadow = registry.start_shadow(spec.name, args.challenger, criteria, reason=args.reason)
    print(f"{spec.name}: shadow #{shadow['id']} started: v{args.challenger} mirrors champion "
          f"v{shadow['champion_version']}'s traffic until {criteria['deadline']}")
    print(f"  exit criteria: >= {criteria['min_requests']} requests, agreement >= {criteria['min_agreement']} "
          f"(95% CI lower bound)" + (f", challenger p99 <= {criteria['max_latency_ms']} ms"
                                     if criteria["max_latency_ms"] is not None else ""))
    print(f"  a running `lab serve` picks it up within [tool.lab.serve] flag_refresh_s; "
          f"`lab shadow status {spec.name}` shows progress")
    events.emit(ctx.pm, events.SHADOW_STARTED, model=spec.name, version=args.challenger,
                champion_version=shadow["champion_version"], shadow_id=shadow["id"], criteria=criteria)
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="MODEL", help="the model whose shadow to show")
    p.add_argument("--shadow", type=int, metavar="ID", help="a past shadow by id (default: the latest)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _status_run(args: argparse.Namespace, ctx: Context) -> int:
    report = check_shadow(ctx.config, ctx.pm, args.name, shadow_id=args.shadow)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    s = report["shadow"]
    state = ("met" if s.get("met_at") else s["status"])
    print(f"shadow #{s['id']} of {s['model']}: v{s['version']} vs champion v{s['champion_version']}: {state}"
          + (" (recorded now)" if report["recorded"] else ""))
    print(f"  {report['summary']}")
    for line in report["unmet"] if not s.get("met_at") else []:
        print(f"  unmet: {line}")
    print(f"  deadline {report['deadline']}" + (" (passed)" if report["deadline_passed"] else ""))
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", metavar="DIR", help="also write shadow_report.json and shadow_report.txt there")


def _report_run(args: argparse.Namespace, ctx: Context) -> int:
    report = check_shadow(ctx.config, ctx.pm, args.name, shadow_id=args.shadow)
    text = report_text(report)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "shadow_report.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(folder / "shadow_report.txt", text + "\n")
    print(json.dumps(report, indent=2, default=str) if args.json else text)
    return 0


def _stop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="MODEL", help="the model whose active shadow to stop")
    p.add_argument("--reason", default="", help="why, kept in the history")


def _stop_run(args: argparse.Namespace, ctx: Context) -> int:
    report = check_shadow(ctx.config, ctx.pm, args.name)  # record a met or expired outcome first
    with _open(ctx) as registry:
        shadow = registry.active_shadow(args.name)
        if shadow is None:
            print(f"{args.name}: no active shadow (the latest: #{report['shadow']['id']}, "
                  f"{report['shadow']['status']}); nothing changed")
            return 0
        registry.end_shadow(args.name, shadow["id"], "stopped", reason=args.reason)
    print(f"{args.name}: shadow #{shadow['id']} of v{shadow['version']} stopped "
          f"({'its criteria were met' if shadow['met'] else 'before its criteria were met: promotion stays refused'})")
    events.emit(ctx.pm, events.SHADOW_STOPPED, model=args.name, version=shadow["version"], shadow_id=shadow["id"],
                met=shadow["met"], reason=args.reason)
    return 0
