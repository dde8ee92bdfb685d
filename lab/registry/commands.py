"""``lab`` commands for the registry: promote, approve, rollback, models, history, runs, lineage.

Each opens ``ctx.config.registry_path`` (git and lock hash read from ``ctx.config.root``).
Promote and rollback announce themselves to plugins through ``lab_on_event`` after the
change has committed; that emission lives here, in the CLI layer, so library callers
choose for themselves (``Registry.open(..., on_event=...)``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lab import events
from lab.cli import Context
from lab.registry import Registry


def _open(ctx: Context):
    return Registry.open(ctx.config.registry_path, project_root=ctx.config.root)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _metrics_text(metrics: dict, limit: int = 4) -> str:
    items = sorted(metrics.items())[:limit]
    return " ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in items)


def _short_time(at: str | None) -> str:
    return (at or "-")[:19].replace("T", " ")


# -- promote / rollback -----------------------------------------------------------------

def _promote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name, e.g. churn")
    p.add_argument("version", type=int, help="version number to promote (see `lab models NAME`)")
    p.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    p.add_argument("--reason", default="", help="why, kept in the alias history")
    p.add_argument("--force", action="store_true",
                   help="promote to champion although criteria are unmet (needs --reason; recorded in the history)")


def _promote_run(args: argparse.Namespace, ctx: Context, notes: dict[str, str] | None = None) -> int:
    """``lab promote``: to champion only when the version's shadow (if any) met its exit
    criteria and [tool.lab.gate] holds (see ``Registry.promotion_criteria``)."""
    with _open(ctx) as reg:
        event = reg.promote(args.name, args.version, alias=args.alias, reason=args.reason,
                            gate=ctx.config.gate, force=args.force, notes=notes)
    if event is None:
        print(f"{args.name}: version {args.version} is already {args.alias}; nothing changed")
        return 0
    previous = event["from_version"]
    was = f" (was version {previous})" if previous is not None else " (first time set)"
    print(f"{args.name}: {args.alias} -> version {args.version}{was}")
    checked = event.get("evidence") or {}
    for criterion in checked.get("criteria", []):
        mark = "ok" if criterion["passed"] else "OVERRIDDEN"
        print(f"  {criterion['name']:<9} {mark:<10} {criterion['detail']}")
    if checked.get("forced"):
        print(f"  forced by {event['actor']}: {args.reason}")
    extra = {"criteria": checked["criteria"], "forced": checked["forced"]} if checked.get("criteria") else {}
    events.emit(ctx.pm, events.MODEL_PROMOTED, model=args.name, version=args.version,
                alias=args.alias, previous=previous, **extra)
    return 0


def _approve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name, e.g. churn")
    p.add_argument("version", type=int, help="the version approved to become champion")
    p.add_argument("--by", required=True, metavar="NAME", help="who approves (kept in the history)")
    p.add_argument("--note", default="", help="what the approval rests on")


def _approve_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as reg:
        row = reg.approve(args.name, args.version, approver=args.by, note=args.note)
    print(f"{args.name}: v{args.version} approved by {row['approver']} (approval #{row['id']})")
    events.emit(ctx.pm, events.MODEL_APPROVED, model=args.name, version=args.version, approver=row["approver"],
                note=args.note, approval_id=row["id"])
    return 0


def _rollback_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name, e.g. churn")
    p.add_argument("--alias", default="champion", help="alias to move back (default: champion)")
    p.add_argument("--reason", default="", help="why, kept in the alias history")


def _rollback_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as reg:
        event = reg.rollback(args.name, alias=args.alias, reason=args.reason)
    # From the row this rollback wrote: a later read could see someone else's move.
    restored, previous = event["to_version"], event["from_version"]
    print(f"{args.name}: {args.alias} rolled back to version {restored} (was version {previous})")
    events.emit(ctx.pm, events.MODEL_ROLLED_BACK, model=args.name, version=restored,
                alias=args.alias, previous=previous)
    return 0


# -- listings -----------------------------------------------------------------------------

def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show this model's versions (default: list models)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _models_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as reg:
        if args.name is None:
            models = reg.list_models()
            if args.json:
                _print_json(models)
            elif not models:
                print("no models registered yet (run the pipeline with `lab run`)")
            for m in [] if args.json else models:
                aliases = ", ".join(f"{a}=v{v}" for a, v in m["aliases"].items()) or "-"
                print(f"{m['name']:<20} {m['versions']:>3} versions  latest v{m['latest']:<4} aliases: {aliases}")
            return 0
        aliases = reg.aliases(args.name)  # NotFound (naming the models there are) first
        versions = reg.list_model_versions(args.name)
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    if args.json:
        _print_json([{**v.to_dict(), "aliases": by_version.get(v.version, [])} for v in versions])
        return 0
    print(f"{'version':<8} {'created':<20} {'flavor':<18} {'aliases':<22} metrics")
    for v in versions:
        tags = ",".join(by_version.get(v.version, [])) or "-"
        print(f"{v.version:<8} {_short_time(v.created_at):<20} {v.flavor:<18} {tags:<22} {_metrics_text(v.metrics)}")
    return 0


def _history_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name")
    p.add_argument("--alias", help="only this alias's moves (default: every move, shadow, approval and evidence)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _history_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as reg:
        if args.alias is not None:
            history = [{"at": e["at"], "kind": "alias", "action": e["action"], "version": e["to_version"],
                        "actor": e["actor"], "evidence": e["evidence"], "row": e,
                        "text": f"{e['alias']} {'-' if e['from_version'] is None else 'v%d' % e['from_version']} "
                                f"-> v{e['to_version']}" + (f"  {e['reason']}" if e["reason"] else "")}
                       for e in reg.alias_history(args.name, args.alias)]
        else:
            history = reg.model_history(args.name)
    if args.json:
        _print_json(history)
        return 0
    if not history:
        print(f"no alias of {args.name} has been set yet (use `lab promote {args.name} VERSION`)")
    for e in history:
        print(f"{_short_time(e['at'])}  {e['kind']:<8} {e['action']:<10} {e['text']}  by {e['actor']}")
        checked = e.get("evidence") or {}
        for criterion in checked.get("criteria", []):
            mark = "ok" if criterion["passed"] else "OVERRIDDEN"
            refs = f" [{', '.join(criterion['refs'])}]" if criterion.get("refs") else ""
            print(f"{'':<21}  on {criterion['name']}: {mark}: {criterion['detail']}{refs}")
    return 0


def _runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", help="only runs of this kind (pipeline, train, sweep...)")
    p.add_argument("--limit", type=int, default=20, help="how many of the latest runs (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _runs_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as reg:
        runs = reg.list_runs(kind=args.kind, limit=args.limit)
    if args.json:
        _print_json(runs)
        return 0
    if not runs:
        print("no runs recorded yet" + (f" of kind {args.kind!r}" if args.kind else ""))
    for r in runs:
        commit = (r["git_commit"] or "-")[:8] + ("*" if r["git_dirty"] else "")
        print(f"{r['id']}  {r['kind']:<10} {r['status']:<9} {_short_time(r['started_at'])}  {commit:<9} "
              f"{_metrics_text(r['metrics'])}")
    return 0


def _lineage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name")
    p.add_argument("version", type=int, help="version number")
    p.add_argument("--json", action="store_true", help="print the whole walk as JSON")


def _lineage_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as reg:
        walk = reg.lineage(args.name, args.version)
    if args.json:
        _print_json(walk)
        return 0
    model, run = walk["model"], walk["run"]
    print(f"model    {model['name']} v{model['version']} ({model['flavor']}) {model['artifact_path']}")
    print(f"aliases  {', '.join(walk['aliases']) or '-'}")
    print(f"metrics  {_metrics_text(model['metrics'], limit=20) or '-'}")
    if run is None:
        print("run      - (registered without a run)")
    else:
        dirty = " (dirty)" if run["git_dirty"] else ""
        print(f"run      {run['id']} kind={run['kind']} status={run['status']}")
        print(f"params   {json.dumps(run['params'], sort_keys=True)}")
        print(f"seeds    {json.dumps(run['seeds'], sort_keys=True)}")
        print(f"code     git {run['git_commit'] or '- (not a git checkout)'}{dirty}")
        print(f"deps     {run['lock_file'] or '-'} sha256 {run['lock_hash'] or '-'}")
    for item in walk["data"]:
        print(f"data     {item['name']} {item['digest']}")
        for ds in item["datasets"]:
            print(f"           {ds['kind']} {ds['name']} rows={ds['rows']} {ds['path']}")
            audit = (ds.get("meta") or {}).get("leakage_audit")
            if audit:  # a training set's leakage audit (lab features audit)
                print(f"           leakage audit {audit.get('digest')} {audit.get('path')}")
    return 0
