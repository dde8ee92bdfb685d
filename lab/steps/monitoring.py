"""The monitoring steps: drift (the scored window against the training window, column by
column) and training-serving skew (logged serving features against their offline
recomputation), with the CLI of the latter (``lab features skew``, ``lab features
logged-set``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import shutil
from pathlib import Path

from lab import events
from lab.atomic import atomic_path, atomic_write_text
from lab.config import DriftConfig, SkewConfig, build_section
from lab.errors import ConfigError, LabError
from lab.pipeline.context import StageContext
from lab.steps._common import DRIFT_HTML, DRIFT_JSON, SCORES, TRAINSET, spec_of, split, views_of, window


def drift(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, model: str | None = None,
          **settings) -> dict:
    """Compare the model's inputs in the batch-scored window with the training days, column
    by column, with the native statistics (``lab.monitoring.drift``: a KS test and the
    normed Wasserstein distance per column, Benjamini-Hochberg across columns, judged by
    ``[tool.lab.drift]``; ``settings`` override its keys for this call). The native report
    decides: each column's effect size and flag are recorded in the registry, and
    ``drift.detected`` names the flagged columns. The training window's
    ``ReferenceSketch`` is saved beside the report (data/drift_reference.json) for later
    checks; Evidently's page (``lab_drift_report``, on a sample of at most
    ``html_max_rows`` rows per window) is drawn when ``html`` is on, for reading only."""
    import polars as pl  # data libraries load only in the step that runs

    from lab.monitoring.drift import ReferenceSketch, compare

    with StageContext.open(root, run_dir) as ctx:
        config = build_section(DriftConfig, {**dataclasses.asdict(ctx.config.drift), **settings}, "tool.lab.drift")
        spec = spec_of(ctx, model)
        columns = list(spec.features)
        frame = pl.read_parquet(ctx.path(TRAINSET))
        train_df, _ = split(spec, frame, window(train_start, delta_train, delta_delay, delta_test))
        scores = pl.read_parquet(ctx.path(SCORES))
        reference, current = train_df.select(columns), scores.select(columns)
        native = compare(reference, current, columns, config=config)
        times = scores[spec.time_column]
        described = {"reference": f"train {train_start} +{delta_train}d",
                     "current": f"scores {times.min()}..{times.max()}"}
        sketch = ReferenceSketch.from_frame(reference, columns, bins=config.sketch_bins,
                                            meta={"model": spec.name, "window": described["reference"]})
        sketch.save(ctx.path(DRIFT_SKETCH))
        report = ctx.run_dir / "drift.html"
        evidently = _drift_page(ctx, config, reference, current, columns, report, native)
        with atomic_path(ctx.path(DRIFT_HTML)) as tmp:
            shutil.copyfile(report, tmp)
        version = int(scores["model_version"][0]) if scores.height else None
        ctx.registry.record_drift(ctx.run_dir.name, model_name=spec.name, model_version=version,
                                  scores=native.scores(), **described)
        drifted = native.flagged
        if drifted:
            events.emit(ctx.pm, events.DRIFT_DETECTED, model=spec.name, columns=drifted)
        out = {"model": spec.name, "columns": native.scores(), "drifted": drifted, "report": str(report),
               "underpowered": native.underpowered, "native": native.to_dict(),
               "reference_sketch": str(ctx.path(DRIFT_SKETCH)), "evidently": evidently, **described}
        ctx.write_json(DRIFT_JSON, out)
        return out


DRIFT_SKETCH = "data/drift_reference.json"
"""The drift step's reference: the training window's ``ReferenceSketch``, beside the report."""


def _drift_page(ctx, config, reference, current, columns, target: Path, native) -> dict | None:
    """Write the drift page at ``target``: Evidently's (through ``lab_drift_report``, on a
    seeded sample of at most ``html_max_rows`` rows per window) when ``html`` is on and a
    plugin answers, else the native table as a plain page. Returns Evidently's own
    per-column scores (shown, never deciding), or None."""
    import html

    if config.html:
        def sample(frame):
            rows = config.html_max_rows
            return frame if rows == 0 or frame.height <= rows else frame.sample(n=rows, seed=0)

        try:
            result = ctx.pm.hook.lab_drift_report(
                config=ctx.config, reference=sample(reference).to_pandas(), current=sample(current).to_pandas(),
                columns=columns, html_path=str(target))
        except ImportError as exc:  # the rich page is optional: no Evidently, the native page
            result = None
            note = f"no drift page plugin could run ({exc}); the native table follows"
        else:
            note = "no plugin answered lab_drift_report; the native table follows"
        if result is not None and target.exists():
            return result
    else:
        note = "[tool.lab.drift] html = false; the native table follows"
    body = html.escape(native.table())
    atomic_write_text(target, f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>drift</title></head>"
                              f"<body><p>{html.escape(note)}</p><pre>{body}</pre></body></html>\n")
    return None


# -- training-serving skew (lab.monitoring.skew) -----------------------------------------

SKEW_JSON = "data/skew.json"
SKEW_TEXT = "data/skew.txt"
GATE_FAILED_EXIT = 3
"""``lab features skew``'s exit status when the gate fails (2 stays a usage or input error)."""


def _day(value, what: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a date; write it as YYYY-MM-DD (2018-08-01)") from None


def load_logged(config, spec, *, version: int | None = None, start=None, end=None, limit: int | None = None):
    """The model's logged predictions (fallback rows left out) on the request days
    ``start`` .. ``end``, as ``lab.monitoring.skew.LoggedPredictions``; none is a
    ``LabError`` saying how to get some."""
    from lab.monitoring.skew import logged_predictions, select_days  # polars only here
    from lab.serving.ledger import read_predictions

    first, last = _day(start, "start"), _day(end, "end")
    if first and last and first > last:
        raise ConfigError(f"start {first} is after end {last}; swap them")
    rows = read_predictions(config.ledger_path, model_name=spec.name, model_version=version, limit=limit)
    logged = select_days(logged_predictions(spec, rows), spec, first, last)
    if logged.height == 0:
        which = f"{spec.name!r}" + (f" v{version}" if version is not None else "")
        days = f" with a request time on {first or '...'} .. {last or '...'}" if (first or last) else ""
        raise LabError(f"the ledger {config.ledger_path} holds no logged predictions of model {which}{days}; "
                       "serve it (`lab serve`, or lab.load_model(...).predict) or widen the days")
    return logged


def _in_source(logged, spec, offline):
    from lab.monitoring.skew import select_in_source

    kept = select_in_source(logged, spec, offline)
    if kept.height == 0:
        raise LabError(f"none of the {logged.height} logged predictions of {spec.name!r} is an event of the source "
                       f"{spec.source!r} yet (by {spec.id_column}); load the served events, or leave out in_source")
    return kept


def skew(root, run_dir, *, model: str | None = None, version: int | None = None, start=None, end=None,
         limit: int | None = None, in_source: bool = False, gate: bool = True, **thresholds) -> dict:
    """Training-serving skew of the model's logged predictions: each logged feature against
    its offline recomputation as of the request's time (``lab.monitoring.skew``), judged
    by ``[tool.lab.skew]``; with ``in_source`` only the events the spec's source already
    holds. ``thresholds`` (``tolerance``, ``max_mismatch_share``, ``max_psi``,
    ``psi_bins``: a stage's ``config = ["skew"]`` parameters) override the lab's table.
    Writes data/skew.json and data/skew.txt, then, with ``gate``, raises
    ``SkewGateError`` naming the features above the thresholds."""
    from lab.monitoring.skew import recompute_features, skew_report  # polars only in the step that runs

    with StageContext.open(root, run_dir) as ctx:
        settings = build_section(SkewConfig, {**dataclasses.asdict(ctx.config.skew), **thresholds},
                                 "tool.lab.skew")
        spec = spec_of(ctx, model)
        views = views_of(ctx, spec)
        logged = load_logged(ctx.config, spec, version=version, start=start, end=end, limit=limit)
        if in_source:
            logged = _in_source(logged, spec, ctx.offline)
        report = skew_report(spec, views, logged, recompute_features(ctx.offline, views, spec, logged.requests),
                             settings)
        out = report.as_dict()
        ctx.write_json(SKEW_JSON, out)
        atomic_write_text(ctx.path(SKEW_TEXT), report.table() + "\n")
        if gate:
            report.check(where=str(ctx.path(SKEW_JSON)))
        return out


def _model_args(p) -> None:
    p.add_argument("--model", help="the model (default: [tool.lab] model_name, or the lab's only model)")
    p.add_argument("--version", type=int, help="only this model version's predictions (default: every version)")
    p.add_argument("--start", help="first day of request time, YYYY-MM-DD (default: the first logged)")
    p.add_argument("--end", help="last day of request time (inclusive), YYYY-MM-DD (default: the last logged)")
    p.add_argument("--limit", type=int, help="only the latest N logged predictions")


def skew_args(p) -> None:
    _model_args(p)
    p.add_argument("--out", default=SKEW_JSON,
                   help=f"the JSON report (default {SKEW_JSON}, relative to the project root); the text table "
                        "goes beside it as .txt")
    p.add_argument("--in-source", dest="in_source", action="store_true",
                   help="only the predictions whose event the model's offline source already holds (by its id): "
                        "the events a training set would have")
    p.add_argument("--no-gate", dest="gate", action="store_false",
                   help="report only: exit 0 even when features are above [tool.lab.skew]")


def skew_run(args, ctx) -> int:
    """``lab features skew``: write the report, print the table; exit 3 when the gate fails."""
    import json
    import sys

    from lab.features.commands import offline_store, _spec_views
    from lab.monitoring.skew import SkewGateError, recompute_features, skew_report
    from lab.plugins import model_spec

    out = Path(args.out)
    if out.suffix != ".json":
        raise ConfigError(f"--out {args.out!r} must end in .json")
    out = out if out.is_absolute() else ctx.config.root / out
    spec = model_spec(ctx.pm, ctx.config, args.model)
    views = _spec_views(ctx, spec)
    logged = load_logged(ctx.config, spec, version=args.version, start=args.start, end=args.end, limit=args.limit)
    offline = offline_store(ctx)
    try:
        if args.in_source:
            logged = _in_source(logged, spec, offline)
        report = skew_report(spec, views, logged, recompute_features(offline, views, spec, logged.requests),
                             ctx.config.skew)
    finally:
        offline.close()
    atomic_write_text(out, json.dumps(report.as_dict(), indent=2, sort_keys=True, default=str))
    atomic_write_text(out.with_suffix(".txt"), report.table() + "\n")
    print(report.table())
    print(f"report: {out}")
    if not args.gate:
        return 0
    try:
        report.check(where=str(out))
    except SkewGateError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return GATE_FAILED_EXIT
    return 0


def logged_set_args(p) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, help="Parquet file to write (atomically); recorded in the registry")
    p.add_argument("--label-delay-days", dest="label_delay_days", type=float,
                   help="a label is known this many days after its event (default: [tool.lab.train] delta_delay)")
    p.add_argument("--as-of", dest="as_of",
                   help="join the labels due by this time, YYYY-MM-DDTHH:MM:SS (default: now, UTC wall clock)")
    p.add_argument("--labelled-only", dest="labelled_only", action="store_true",
                   help="keep only the rows whose label is due and found")


def logged_set_run(args, ctx) -> int:
    """``lab features logged-set``: the ledger's logged features as a training set."""
    from lab.features.commands import _datetime, offline_store
    from lab.features.digest import table_digest
    from lab.monitoring.skew import logged_training_set, read_labels
    from lab.plugins import model_spec
    from lab.registry import Registry

    out = Path(args.out)
    if out.suffix != ".parquet":
        raise ConfigError(f"--out {args.out!r} must end in .parquet")
    out = out.resolve()
    delay_days = ctx.config.train.delta_delay if args.label_delay_days is None else args.label_delay_days
    if not math.isfinite(delay_days) or delay_days < 0:
        raise ConfigError(f"--label-delay-days must be 0 or more, got {delay_days!r}")
    as_of = (_datetime(args.as_of, "--as-of") if args.as_of
             else dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    spec = model_spec(ctx.pm, ctx.config, args.model)
    logged = load_logged(ctx.config, spec, version=args.version, start=args.start, end=args.end, limit=args.limit)
    offline = offline_store(ctx)
    try:
        labels, why = read_labels(offline, spec)
        source_digest = offline.source_digest(spec.source) if labels is not None else None
    finally:
        offline.close()
    table, counts = logged_training_set(spec, logged, labels, label_delay=dt.timedelta(days=delay_days),
                                        as_of=as_of, labelled_only=args.labelled_only)
    import pyarrow.parquet as pq  # pyarrow only for the command that writes Parquet

    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    digest = table_digest(table)
    meta = {"model": spec.name, "from": "prediction ledger", "start": args.start, "end": args.end,
            "version": args.version, "label": spec.label if labels is not None else None,
            "label_delay_days": delay_days, "as_of": as_of.isoformat(), "source_digest": source_digest, **counts}
    with Registry.open(ctx.config.registry_path, project_root=ctx.config.root) as reg:
        dataset_id = reg.record_dataset(kind="logged_set", name=f"{spec.name}-logged", digest=digest,
                                        path=str(out), rows=table.num_rows, meta=meta)
    print(f"wrote {table.num_rows} rows to {out}")
    if labels is None:
        print(f"no labels: {why}")
    else:
        print(f"labels: {counts['labelled']} joined, {counts['not_due']} not due by {as_of.isoformat()}, "
              f"{counts['not_found']} not in {spec.source!r}")
    print(f"digest {digest}  (dataset {dataset_id})")
    return 0
