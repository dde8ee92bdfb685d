"""``lab features ...``: load sources, build training sets, materialize, list and look up.

The stores come from the ``lab_offline_store`` / ``lab_online_store`` hooks, the views
from ``lab_feature_views``, and what a training set needs of a model (its source, columns,
views and request-time transform) from its ``ModelSpec`` (``lab_model_specs``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from lab.atomic import atomic_path
from lab.cli import Context
from lab.errors import ConfigError, LabError, NotFound
from lab.plugins import feature_views, model_spec
from lab.registry import Registry


def _date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} {value!r} is not a date; write it as YYYY-MM-DD (2018-07-25)") from None


def _datetime(value: str, flag: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{flag} {value!r} is not a date-time; write it as YYYY-MM-DDTHH:MM:SS (2018-08-01T00:00:00)"
        ) from None


def offline_store(ctx: Context):
    store = ctx.pm.hook.lab_offline_store(config=ctx.config)
    if store is None:
        raise LabError("no plugin provides an offline store (lab_offline_store); is duckdb_offline loaded?")
    return store


def online_store(ctx: Context):
    store = ctx.pm.hook.lab_online_store(config=ctx.config)
    if store is None:
        raise LabError("no plugin provides an online store (lab_online_store); is sqlite_online loaded?")
    return store


def views(ctx: Context) -> dict:
    return feature_views(ctx.pm, ctx.config)


def _view(ctx: Context, name: str):
    known = views(ctx)
    if name not in known:
        raise NotFound(f"no feature view {name!r}; views: {', '.join(sorted(known)) or 'none'}")
    return known[name]


# -- lab features load ---------------------------------------------------------------

def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="source table name (a model spec's source, e.g. 'events')")
    p.add_argument("parquet", help="Parquet file to load; replaces the table in one transaction")


def _load_run(args: argparse.Namespace, ctx: Context) -> int:
    import pyarrow.parquet as pq  # pyarrow loads only for the commands that read Parquet

    path = Path(args.parquet)
    if not path.is_file():
        raise NotFound(f"no Parquet file {path}; simulate first (`lab run`) or give another path")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise LabError(f"cannot read {path} as Parquet: {exc}") from None
    digest = offline_store(ctx).write_source(args.source, table)
    print(f"loaded {table.num_rows} rows into {args.source}  digest {digest}")
    return 0


# -- lab features training-set --------------------------------------------------------

def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last day (inclusive), YYYY-MM-DD")
    p.add_argument("--out", required=True,
                   help="Parquet file to write (atomically); the registry records its absolute path")
    p.add_argument("--model", help="the model whose spec names the source, columns and views "
                                   "(default: [tool.lab] model_name, or the lab's only model)")


def _training_run(args: argparse.Namespace, ctx: Context) -> int:
    import pyarrow.parquet as pq  # pyarrow and polars load only for the commands that use them

    from lab.features.audit import audit_path, audited_training_set, format_audit, write_audit  # polars

    start, end = _date(args.start, "--start"), _date(args.end, "--end")
    if start > end:
        raise ConfigError(f"--start {start} is after --end {end}; swap them")
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise ConfigError(f"--out {args.out!r} must end in .parquet")
    config = ctx.config
    out = out.resolve()  # relative to the working directory; the registry keeps it absolute
    spec = model_spec(ctx.pm, config, args.model)
    spec_views = _spec_views(ctx, spec)
    offline = offline_store(ctx)
    table, digest, audit = audited_training_set(offline, spec_views, spec, start, end)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    audit_file = audit_path(out)
    audit_digest = write_audit(audit_file, audit)
    shown_path = str(out)
    meta = {
        "model": spec.name, "start": start.isoformat(), "end": end.isoformat(), "source": spec.source,
        "source_digest": offline.source_digest(spec.source),
        "views": {v.name: v.version for v in spec_views}, "feature_columns": list(spec.features),
        "leakage_audit": {"digest": audit_digest, "path": str(audit_file)},
    }
    with Registry.open(config.registry_path, project_root=config.root) as reg:
        dataset_id = reg.record_dataset(kind="training_set", name=f"{spec.name}-{start}-{end}",
                                        digest=digest, path=shown_path, rows=table.num_rows, meta=meta)
    print(f"wrote {table.num_rows} rows to {shown_path}")
    print(f"digest {digest}  (dataset {dataset_id})")
    print(f"leakage audit {audit_file}  digest {audit_digest}")
    print(format_audit(audit))
    return 0


# -- lab features audit ----------------------------------------------------------------

def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="a training set's Parquet file (or its .audit.json); "
                                           "default: the model's latest recorded training set")
    p.add_argument("--model", help="the model whose latest training set to show (default: [tool.lab] "
                                   "model_name, or the lab's only model)")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")


def _audit_run(args: argparse.Namespace, ctx: Context) -> int:
    from lab.features.audit import audit_path, format_audit, read_audit

    config = ctx.config
    with Registry.open(config.registry_path, project_root=config.root) as reg:
        if args.path:
            if args.model:
                raise ConfigError("give a PATH or --model, not both")
            path = Path(args.path).resolve()
            target = path if path.name.endswith(".audit.json") else audit_path(path)
            if path.suffix != ".parquet" and not path.name.endswith(".audit.json"):
                raise ConfigError(f"{args.path!r} is neither a training set (.parquet) nor an audit (.audit.json)")
            audit, digest = read_audit(target)
            record = reg.get_dataset(audit["training_set_digest"]) if audit.get("training_set_digest") else None
        else:
            name = model_spec(ctx.pm, config, args.model).name
            record = next((d for d in reg.list_datasets(kind="training_set", limit=1000)
                           if d["meta"].get("model") == name), None)
            if record is None:
                raise NotFound(f"no training set of model {name!r} in the registry; build one "
                               "(`lab features training-set` or `lab run features`)")
            recorded = record["meta"].get("leakage_audit")
            if not recorded:
                raise NotFound(f"training set {record['name']} (dataset {record['id']}) was built without a "
                               "leakage audit; rebuild it with `lab features training-set` or `lab run features`")
            target = Path(recorded["path"])
            if not target.is_absolute():
                target = config.root / target
            audit, digest = read_audit(target)
    recorded = (record or {}).get("meta", {}).get("leakage_audit", {}).get("digest")
    if recorded and recorded != digest:
        raise LabError(f"{target} has digest {digest}, but the registry recorded {recorded} for training set "
                       f"{record['name']}: the file changed since it was written; rebuild the training set")
    if args.json:
        print(json.dumps({**audit, "digest": digest, "path": str(target)}, indent=2, sort_keys=True))
        return 0
    print(f"leakage audit {target}")
    print(f"digest {digest}" + (f"  (training set {record['name']}, dataset {record['id']})" if record else
                                "  (not recorded in this registry)"))
    print(format_audit(audit))
    return 0 if audit["ok"] else 1


def _spec_views(ctx: Context, spec) -> list:
    """The spec's feature views, in its order; one no loaded plugin defines is an error."""
    known = views(ctx)
    missing = [name for name in spec.views if name not in known]
    if missing:
        raise ConfigError(f"model {spec.name!r} reads feature view(s) {', '.join(missing)}, which no loaded "
                          f"plugin defines; defined: {', '.join(sorted(known)) or 'none'}")
    return [known[name] for name in spec.views]


# -- lab features materialize ---------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str, flag: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``2h`` or ``1d`` as a timedelta (0 or more)."""
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"{flag} {value!r} is not a duration; write seconds or a number with s, m, h or d "
                          "(90, 15m, 2h, 1d)")
    return dt.timedelta(seconds=seconds)


def _materialize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as-of", dest="as_of",
                   help="materialize as of this time, YYYY-MM-DDTHH:MM:SS (default: the latest event)")
    p.add_argument("--view", action="append", dest="views", metavar="NAME",
                   help="only this view (repeat for several; default: every view)")
    p.add_argument("--full", action="store_true",
                   help="recompute every entity, not only those changed since the watermark")
    p.add_argument("--lookback", default="1h",
                   help="also recompute entities with rows known up to this long before the watermark "
                        "(late arrivals): seconds or 15m, 2h, 1d (default 1h)")
    p.add_argument("--all-versions", action="store_true", dest="all_versions",
                   help="also bring up to date the earlier versions of each view that the store holds "
                        "(the ones models trained before a redefinition read)")
    p.add_argument("--backfill", action="store_true",
                   help="re-materialize the entities with events between --start and --end, as of each "
                        "view's watermark (or --as-of)")
    p.add_argument("--start", help="with --backfill: first event time, YYYY-MM-DD[THH:MM:SS]")
    p.add_argument("--end", help="with --backfill: last event time (inclusive; a date means its whole day)")


def _materialize_run(args: argparse.Namespace, ctx: Context) -> int:
    # pyarrow only to materialize
    from lab.features.materialize import backfill, latest_event_time, materialize_view

    known = views(ctx)
    if not known:
        raise LabError("no feature views are defined; load a plugin that implements lab_feature_views")
    selected = [_view(ctx, name) for name in dict.fromkeys(args.views)] if args.views else list(known.values())
    lookback = duration(args.lookback, "--lookback")
    if args.backfill:
        if not (args.start and args.end):
            raise ConfigError("--backfill needs --start and --end (the window of event times to re-materialize)")
        if args.full:
            raise ConfigError("--backfill and --full do not go together: --full already recomputes everything")
        start, end = _moment(args.start, "--start"), _moment(args.end, "--end", end=True)
        if end < start:
            raise ConfigError(f"--start {args.start} is after --end {args.end}; swap them")
    elif args.start or args.end:
        raise ConfigError("--start and --end belong to --backfill; add --backfill, or drop them")
    offline, online = offline_store(ctx), online_store(ctx)
    try:
        as_of = _datetime(args.as_of, "--as-of") if args.as_of else None
        if as_of is None and not args.backfill:
            as_of = latest_event_time(offline, selected)
        if args.all_versions:
            from lab.features.views import FeatureView

            selected = [each for view in selected for each in
                        [view, *(FeatureView.from_definition(d, freshness=view.freshness)
                                 for version, d in sorted(online.definitions(view.name).items())
                                 if version != view.version)]]
        for view in selected:
            if args.backfill:
                done = backfill(offline, online, view, start, end, as_of)
            else:
                done = materialize_view(offline, online, view, as_of, full=args.full, lookback=lookback)
            since = f"  since {done.since.isoformat()}" if done.since is not None else ""
            label = done.view if view is known.get(view.name) else f"{done.view}@{view.version}"  # an earlier one
            print(f"{label:<22} {done.mode:<11} {done.written:>8} rows written  {done.rows:>8} held  "
                  f"as of {done.as_of.isoformat()}{since}")
    finally:
        online.close()
    return 0


def _moment(value: str, flag: str, *, end: bool = False) -> dt.datetime:
    """A date-time, or a date meaning its first (``end``: its last) microsecond."""
    if len(str(value).strip()) == 10:
        day = _date(value, flag)
        start = dt.datetime.combine(day, dt.time())
        return start + dt.timedelta(days=1, microseconds=-1) if end else start
    return _datetime(value, flag)


# -- lab features list / get ------------------------------------------------------------

def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _list_run(args: argparse.Namespace, ctx: Context) -> int:
    rows = [
        {"name": v.name, "version": v.version, "entity": v.entity, "source": v.source,
         "label_delay_s": v.label_delay.total_seconds(), "ttl_s": v.ttl.total_seconds(),
         "freshness_s": v.freshness_s, "features": v.feature_names}
        for v in sorted(views(ctx).values(), key=lambda v: v.name)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<22} {r['version']}  entity {r['entity']:<12} source {r['source']}  "
              f"delay {r['label_delay_s'] / 86400:g} d  ttl {r['ttl_s'] / 86400:g} d"
              + (f"  freshness {r['freshness_s']:g} s" if r["freshness_s"] is not None else ""))
        for f in r["features"]:
            print(f"    {f}")
    return 0


def _get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("view", help="feature view name (see `lab features list`)")
    p.add_argument("key", help="entity key, e.g. a USER_ID")


def _get_run(args: argparse.Namespace, ctx: Context) -> int:
    view = _view(ctx, args.view)
    online = online_store(ctx)
    try:
        watermark = online.watermark(view)
        if watermark is None:
            raise NotFound(f"view {view.name!r} is not materialized; run `lab features materialize`")
        (row,) = online.read(view, [args.key])
    finally:
        online.close()
    if row is None:
        raise NotFound(f"no {view.entity} {args.key!r} in view {view.name!r} (materialized as of "
                       f"{watermark.isoformat()})")
    print(json.dumps({"view": view.name, "version": view.version, view.entity: args.key,
                      "as_of": watermark.isoformat(), "features": row}, indent=2))
    return 0


# -- lab features status ----------------------------------------------------------------

def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", default="1d",
                   help="breach rate over the predictions of this last span: seconds or 15m, 2h, 1d (default 1d)")
    p.add_argument("--model", help="only the ledger's predictions of this model (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _status_run(args: argparse.Namespace, ctx: Context) -> int:
    from lab.features.freshness import format_status, ledger_ages, view_status

    window = duration(args.window, "--window")
    now = dt.datetime.now(dt.timezone.utc)
    known = sorted(views(ctx).values(), key=lambda v: v.name)
    if not known:
        raise LabError("no feature views are defined; load a plugin that implements lab_feature_views")
    ages = ledger_ages(ctx.config.ledger_path, now - window, args.model)
    online = online_store(ctx)
    try:
        rows = [view_status(view, online.state(view), ages.get(view.name, []), now) for view in known]
    finally:
        online.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_status(rows))
    print(f"lag: now minus the newest event materialized; breaches: served requests of the last "
          f"{args.window} older than the objective (from the ledger)")
    return 0
