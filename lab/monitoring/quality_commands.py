"""``lab monitor quality``: the served model's live quality per version, with late labels
(``lab.monitoring.quality``). Exits 3 when a version's quality has degraded."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from lab.atomic import atomic_write_text
from lab.errors import ConfigError

DEGRADED_EXIT = 3
"""The exit status when a version is degraded (2 stays a usage or input error)."""


def quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="the model (default: [tool.lab] model_name, or the lab's only model)")
    p.add_argument("--labels", help="Parquet/CSV of the model's event id, label and event time (default: the "
                                    "model's offline source)")
    p.add_argument("--as-of", dest="as_of", help="use what was known at this time, YYYY-MM-DDTHH:MM:SS (UTC; "
                                                 "default: now)")
    p.add_argument("--window", help="windows of request time, e.g. 1d, 6h (default: [tool.lab.quality] window)")
    p.add_argument("--version", dest="versions", type=int, action="append",
                   help="a model version to report (repeat for several; default: every one in the ledger)")
    p.add_argument("--baseline", help="early | registry | a mean loss (default: [tool.lab.quality] baseline)")
    p.add_argument("--label-delay", dest="label_delay",
                   help="a label is known this long after its event, e.g. 7d (default: the model's views')")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="do not record the check as a registry run")


def _baseline(text: str | None):
    if text is None or text in ("early", "registry"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--baseline {text!r} must be early, registry or a mean loss (a number above 0)") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--baseline {text!r} must be a mean loss above 0")
    return value


def quality_run(args: argparse.Namespace, ctx) -> int:
    """Check once (``QualityMonitor.check``): emit ``quality.degraded`` for a new breach,
    record the check, print it; exit 3 when a version is degraded."""
    from lab.monitoring.quality import QualityConfig, QualityMonitor  # polars and numpy only when it runs

    settings = QualityConfig.from_config(ctx.config)
    if args.label_delay is not None:
        settings = dataclasses.replace(settings, label_delay=args.label_delay)
    monitor = QualityMonitor(ctx.config, args.model, labels=args.labels, baseline=_baseline(args.baseline),
                             versions=args.versions, quality_config=settings, pm=ctx.pm, record=args.record)
    result = monitor.check(args.as_of, window=args.window)
    data = result.to_dict()
    if args.out:
        atomic_write_text(Path(args.out).resolve(), json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else result.table())
    if result.degraded:
        if not args.json:
            print(f"lab: quality degraded: {args.model or result.model} version(s) "
                  f"{', '.join(map(str, result.degraded))}", file=sys.stderr)
        return DEGRADED_EXIT
    return 0
