"""``lab run``: the notebook pipeline from the command line (``lab.pipeline.runner``).

Registered by ``lab.commands`` as ``"lab.pipeline.commands:..."``, so this module (and
the runner and registry it imports) loads only when ``lab run`` runs or shows its help.
"""

from __future__ import annotations

import argparse
import sys
import time

from lab.cli import Context
from lab.config import apply_overrides
from lab.pipeline.runner import PipelinePreempted, run_pipeline
from lab.registry import Registry


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stages", nargs="*", help="run only these stages (default: all, in order)")
    p.add_argument("--force", action="store_true", help="run stages even when nothing changed")
    p.add_argument("--new", action="store_true", help="start a new run instead of resuming a stopped one")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a [tool.lab] setting for this run only, e.g. train.seed=7 (a TOML value; "
                        "repeatable); the stages that receive it rerun")
    p.add_argument("--progress", choices=("auto", "bars", "lines", "off"), default="auto",
                   help="how running stages show their progress: bars on a terminal, a few plain lines "
                        "otherwise (auto, the default), or always bars, lines, or nothing")


def run_run(args: argparse.Namespace, ctx: Context) -> int:
    started = time.perf_counter()
    try:
        result = run_pipeline(apply_overrides(ctx.config, args.set), ctx.pm, only=args.stages or None,
                              force=args.force, new_run=args.new, progress=args.progress)
    except PipelinePreempted as exc:
        # A distinct status (75, EX_TEMPFAIL) so a scheduler re-queues the job; `lab run` resumes it.
        print(f"lab: preempted: {exc}", file=sys.stderr)
        return exc.exit_status
    ran = sum(1 for s in result.stages if s.status == "finished")
    skipped = sum(1 for s in result.stages if s.status == "skipped")
    print(f"run {result.run_id}: {ran} stage(s) ran, {skipped} skipped, "
          f"{time.perf_counter() - started:.1f} s; notebooks in {result.run_dir}")
    _print_champion(ctx)
    return 0


def _print_champion(ctx: Context) -> None:
    if ctx.config.model_name is None:  # a lab without a model: nothing to report
        return
    with Registry.open(ctx.config.registry_path, project_root=ctx.config.root) as registry:
        champion = registry.get_alias(ctx.config.model_name, "champion")
    if champion is None:
        print(f"model {ctx.config.model_name!r} has no champion yet")
        return
    shown = "  ".join(f"{k} {v:.4f}" for k, v in champion.metrics.items() if isinstance(v, (int, float)))
    print(f"champion {champion.name} v{champion.version} on its test window: {shown or 'no metrics recorded'}")
