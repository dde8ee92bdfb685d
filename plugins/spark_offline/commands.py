"""``lab spark score``: batch scoring through Spark (``scoring.score_window_spark``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from lab.cli import Context
from lab.errors import ConfigError, LabError

PREDICTIONS = "predictions"


def _date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} {value!r} is not a date; write it as YYYY-MM-DD (2018-09-24)") from None


def score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="MODEL, MODEL@ALIAS or MODEL@VERSION (default: [tool.lab] model_name's "
                                   "champion)")
    p.add_argument("--start", required=True, help="first day to score, YYYY-MM-DD")
    p.add_argument("--end", help="last day to score, YYYY-MM-DD (default: --start)")
    p.add_argument("--out", help="output folder (default: <warehouse>/predictions/<model>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def score_run(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from lab.plugins import feature_views, model_spec
    from lab.registry import Registry
    from lab.serving.predictor import parse_ref
    from plugins.spark_offline.scoring import score_window_spark
    from plugins.spark_offline.store import SparkOfflineStore

    config, pm = ctx.config, ctx.pm
    if config.section("spark") is None:
        raise LabError("lab spark score needs a [tool.lab.spark] table in pyproject.toml (docs/scale-out.md)")
    store = pm.hook.lab_offline_store(config=config)
    if not isinstance(store, SparkOfflineStore):
        raise LabError(f"the lab's offline store is {store!r}, not the Spark store; another plugin answers "
                       "lab_offline_store first")
    name, target = parse_ref(args.model) if args.model else (None, "champion")
    spec = model_spec(pm, config, name)
    by_name = feature_views(pm, config)
    missing = [v for v in spec.views if v not in by_name]
    if missing:
        raise LabError(f"model {spec.name!r} reads feature view(s) {', '.join(missing)}, which no plugin declares")
    start = _date(args.start, "--start")
    end = _date(args.end, "--end") if args.end else start
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        version = (registry.get_model_version(spec.name, target) if isinstance(target, int)
                   else registry.get_alias(spec.name, target))
    if version is None:
        raise LabError(f"model {spec.name!r} has no alias {target!r}: `lab promote {spec.name} VERSION`, or score "
                       f"{spec.name}@VERSION")
    out = Path(args.out) if args.out else store.layout.root / PREDICTIONS / spec.name
    report = score_window_spark(store, root=config.root, spec=spec, views=[by_name[v] for v in spec.views],
                                version=version, start=start, end=end, out_dir=out)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"scored {report['rows']} event(s) of {spec.name} v{version.version}, {start} .. {end}, into "
              f"{len(report['partitions'])} partition(s) under {report['output']}")
    return 0
