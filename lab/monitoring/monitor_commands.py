"""``lab monitor run``: every check of the served model over one window
(``lab.monitoring.monitor``). Exits 3 when a check breaches."""

from __future__ import annotations

import argparse
import json

from lab.errors import ConfigError

BREACH_EXIT = 3
"""The exit status when a check breaches (2 stays a usage or input error)."""


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="the model (default: [tool.lab] model_name, or the lab's only model)")
    p.add_argument("--end", help="the window's last day, YYYY-MM-DD (default: the newest request in the ledger, "
                                 "else the newest event of the model's source)")
    p.add_argument("--days", type=int, help="the window's length in days (default: [tool.lab.monitor] days)")
    p.add_argument("--checks", help="a comma-separated subset of drift,score_drift,freshness,quality,volume "
                                    "(default: [tool.lab.monitor] checks)")
    p.add_argument("--out", help="the folder for monitor.json and monitor.html (default: data/)")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of a table")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="neither record the run in the registry nor emit events")


def run_run(args: argparse.Namespace, ctx) -> int:
    from pathlib import Path

    from lab.monitoring.monitor import run_monitor  # polars and numpy only when it runs

    checks = None
    if args.checks is not None:
        checks = tuple(c.strip() for c in args.checks.split(",") if c.strip())
        if not checks:
            raise ConfigError("--checks names no check; give e.g. --checks drift,volume")
    result = run_monitor(ctx.config, ctx.pm, model=args.model, end=args.end, days=args.days, checks=checks,
                         out_dir=Path(args.out) if args.out else None, record=args.record, emit=args.record)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
        print(f"report: {result.page_path}")
    return BREACH_EXIT if result.breaches else 0


def retrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="the model (default: [tool.lab] model_name, or the lab's only model)")
    p.add_argument("--no-monitor", dest="monitor", action="store_false",
                   help="decide on the last data/monitor.json instead of running the monitor first")
    p.add_argument("--force", action="store_true", help="retrain even when nothing makes it due")
    p.add_argument("--force-stages", dest="force_stages", action="store_true",
                   help="rerun the retrain stages even when their inputs are unchanged")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")


def retrain_run(args: argparse.Namespace, ctx) -> int:
    """Exit 0 when not due, nothing new, trained or promoted; 3 when a gate refused it."""
    from lab.monitoring.retrain import retrain, write_outcome

    quiet = args.json
    outcome = retrain(ctx.config, ctx.pm, model=args.model, monitor=args.monitor, force=args.force,
                      force_stages=args.force_stages, log=(lambda _: None) if quiet else print)
    write_outcome(ctx.config.data_path / "retrain.json", outcome)
    if quiet:
        print(json.dumps(outcome.to_dict(), indent=2))
    return BREACH_EXIT if outcome.status == "refused" else 0
