"""``lab reproduce MODEL VERSION`` from the command line (``lab.pipeline.reproduce``).

Registered by ``lab.commands`` as ``"lab.pipeline.reproduce_commands:..."``, so this module
loads only when the command runs or shows its help.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lab.cli import Context
from lab.pipeline.reproduce import NOT_REPRODUCED_EXIT, Report, reproduce
from lab.pipeline.reproduce_diff import describe


def reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name, e.g. churn")
    p.add_argument("version", type=int, help="the version to reproduce (see `lab models MODEL`)")
    p.add_argument("--tolerance", type=float, default=None, metavar="ABS",
                   help="how far a reproduced metric may be from the recorded one, in its own units (default: "
                        "[tool.lab.reproduce] tolerance, 0 = exactly, with the same model files)")
    p.add_argument("--current-params", action="store_true",
                   help="run each stage with today's config and pipeline.toml parameters instead of the recorded "
                        "ones: does today's lab still make this model?")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch copy's data folder (removed by default; its notebooks and the report stay)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    p.add_argument("--progress", choices=("auto", "bars", "lines", "off"), default="auto",
                   help="how running stages show their progress (as `lab run --progress`)")


def reproduce_run(args: argparse.Namespace, ctx: Context) -> int:
    """Exit 0 when the version reproduced, ``NOT_REPRODUCED_EXIT`` (4) when it did not."""
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    report = reproduce(ctx.config, ctx.pm, args.model, args.version, tolerance=args.tolerance,
                       current_params=args.current_params, keep=args.keep, log=log,
                       progress="lines" if args.json and args.progress == "auto" else args.progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_report(report)
    return 0 if report.reproduced else NOT_REPRODUCED_EXIT


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if value != 0 else "0"
    return "-" if value is None else str(value)


def print_report(report: Report, out=None) -> None:
    """The report as tables: metrics, model files, stages, differences, then the verdict."""
    out = out or sys.stdout
    width = max([len("metric"), *(len(m["metric"]) for m in report.metrics)])
    print(f"\n{'metric':<{width}}  {'recorded':>12}  {'reproduced':>12}  {'difference':>12}  within {report.tolerance:g}",
          file=out)
    for m in report.metrics:
        print(f"{m['metric']:<{width}}  {_number(m['recorded']):>12}  {_number(m['reproduced']):>12}  "
              f"{_number(m['difference']):>12}  {'yes' if m['within'] else 'NO'}", file=out)
    for a in report.artifacts:
        print(f"{a['what']} ({a['key']}): recorded {str(a['recorded'])[:12]}, reproduced "
              f"{str(a['reproduced'] or '-')[:12]}: {'same' if a['same'] else 'DIFFERENT'}", file=out)
    print("\nstage         ran       seconds  params    same key  same outputs", file=out)
    for s in report.stages:
        print(f"{s['stage']:<13} {s['status']:<9} {_number(s['seconds']):>7}  {str(s['params_from'] or '-'):<8}  "
              f"{_yes(s['same_key']):<8}  {_yes(s['same_outputs'])}"
              + (f" ({', '.join(s['differing_outputs'])} differ)" if s.get("differing_outputs") else "")
              + (f"  [{s['note']}]" if s.get("note") else ""), file=out)
    if report.differences:
        print("\ndifferences from the recorded run:", file=out)
        for d in report.differences:
            mark = {True: "", False: " (noted, not applied)", None: " (cannot tell)"}[d["applied"]]
            print(f"  {describe(d)}{mark}", file=out)
    else:
        print("\nno difference from the recorded run can be named", file=out)
    print(f"\n{report.model} v{report.version}: {report.explanation}", file=out)
    print(f"{report.seconds:.1f} s; report and notebooks in {report.scratch.rsplit('/', 1)[0]} "
          f"(registry run {report.run_id})", file=out)


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")
