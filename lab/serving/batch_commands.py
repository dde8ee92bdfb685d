"""``lab score``: batch inference of a window of the offline store (``lab.serving.batch``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from lab.cli import Context
from lab.errors import ConfigError, LabError


def _date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} {value!r} is not a date; write it as YYYY-MM-DD (2018-09-24)") from None


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="MODEL, MODEL@ALIAS or MODEL@VERSION (default: [tool.lab] model_name's "
                                   "champion)")
    p.add_argument("--start", help="first day to score, YYYY-MM-DD (default: --end)")
    p.add_argument("--end", help="last day to score, YYYY-MM-DD (default: the day of the source's last event)")
    p.add_argument("--batch-size", type=int, default=50_000, metavar="ROWS",
                   help="rows read and scored at a time (bounds memory; default 50000)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")


def _score_run(args: argparse.Namespace, ctx: Context) -> int:
    import pyarrow.compute as pc  # the data libraries load only when this command runs

    from lab.plugins import feature_views, model_flavor, model_spec
    from lab.registry import Registry
    from lab.serving.batch import REPORT_NAME, predictions_dir, score_window, training_window
    from lab.serving.batch_predictions import latest_path
    from lab.serving.predictor import parse_ref

    config, pm = ctx.config, ctx.pm
    name, target = parse_ref(args.model) if args.model else (None, "champion")
    spec = model_spec(pm, config, name)
    views_by_name = feature_views(pm, config)
    missing = [v for v in spec.views if v not in views_by_name]
    if missing:
        raise LabError(f"model {spec.name!r} reads feature view(s) {', '.join(missing)}, which no plugin declares")
    views = [views_by_name[v] for v in spec.views]
    if not config.registry_path.exists():
        raise LabError(f"no registry at {config.registry_path}: run `lab run` to train and register a model")
    offline = pm.hook.lab_offline_store(config=config)
    if offline is None:
        raise LabError("no plugin provides an offline store (lab_offline_store); is duckdb_offline loaded?")
    try:
        with Registry.open(config.registry_path, project_root=config.root) as registry:
            if isinstance(target, int):
                version = registry.get_model_version(spec.name, target)
            else:
                version = registry.get_alias(spec.name, target)
                if version is None:
                    raise LabError(f"model {spec.name!r} has no alias {target!r}: `lab promote {spec.name} VERSION`, "
                                   f"or score {spec.name}@VERSION")
            if args.end:
                end = _date(args.end, "--end")
            else:
                last = pc.max(offline.read_source(spec.source, [spec.time_column]).column(0)).as_py()
                if last is None:
                    raise LabError(f"source {spec.source!r} holds no events; load it first (`lab features load`)")
                end = last.date()
            start = _date(args.start, "--start") if args.start else end
            model = model_flavor(pm, version.flavor).load(config.root / version.artifact_path)
            out_dir = predictions_dir(config, spec.name)
            report = score_window(
                offline=offline, registry=registry, spec=spec, views=views, version=version, model=model,
                start=start, end=end, out_dir=out_dir, latest_db=latest_path(config), batch_size=args.batch_size,
                window=training_window(registry, config, version))
    finally:
        offline.close()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
        return 0
    cov = report["coverage"]
    print(f"scored {cov['rows']} event(s) of {spec.name} v{version.version}, {start} .. {end}, into "
          f"{len(report['partitions'])} partition(s) under {out_dir}")
    print(f"  entities: {', '.join(f'{e} {n}' for e, n in cov['entities_scored'].items())}; "
          f"on defaults: {cov['defaulted_rows']} row(s); "
          + ("new since training: " + ", ".join(f"{e} {n}" for e, n in cov["new_entities"].items())
             if cov["new_entities"] is not None else "new entities: unknown (no training window)"))
    for view, f in report["freshness"].items():
        age = f["age_s"]
        print(f"  {view}: age p50 {age['p50']} s, p95 {age['p95']} s, max {age['max']} s; "
              f"stale {f['stale_share']}, missing {f['missing_share']}")
    print(f"  report: {out_dir / REPORT_NAME}; run {report['run_id']}; "
          f"latest per entity in {report['latest_table']}")
    return 0
