"""The train step: validate the data, then an Optuna sweep of the spec's flavor; the best
trial is the candidate.

The validation gate (``validate_trainset``) checks the lab's declared expectations
(``lab_expectations``, ``lab.monitoring.validation``) on the source rows the training
set was built from and on the training set's view columns, before anything is trained; a
failing batch raises ``ValidationFailed`` with the report beside the training set
(``data/trainset.validation.json``), so the pipeline stops there. ``lab data validate``
runs the same checks from the command line.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lab import events
from lab.atomic import atomic_write_text
from lab.config import TrainingConfig
from lab.errors import ConfigError, LabError
from lab.modelspec import ModelSpec, SplitWindow
from lab.pipeline.context import StageContext
from lab.pipeline.progress import SweepProgress
from lab.plugins import model_flavor, model_specs
from lab.steps._common import CANDIDATE, CANDIDATE_JSON, TRAINSET, spec_of, split, views_of, window, xy
from lab.steps.sweep_workers import DATA as SWEEP_DATA, start_workers, stop_workers, write_manifest
from lab.training.sweep_storage import redact_url

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

VALIDATION_JSON = "data/trainset.validation.json"  # lab.monitoring.validation.validation_path(TRAINSET)
REFERENCES = "data/validation"  # samples of passed training sets, by digest: the next set's drift reference


def train(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, n_trials, max_epochs, seed,
          valid_days: int = 2, model: str | None = None, accelerator: str | None = None,
          devices: int | str | list[int] | None = None, strategy: str | None = None,
          precision: str | int | None = None, num_nodes: int | None = None,
          sweep_workers: int | None = None) -> dict:
    """Sweep on the training days, holding out their last ``valid_days`` in time order for
    the objective (the spec's metric); save the best model to ``data/candidate``.

    ``accelerator``, ``devices``, ``strategy``, ``precision``, ``num_nodes``: where the
    trials train, each over ``[tool.lab.training]``'s value (None: the config's); handed
    to the flavor's ``fit`` as given (docs/training.md, Devices)."""
    import polars as pl  # data libraries load only in the step that runs

    from lab.training.sweep import run_sweep  # numpy (and optuna when the sweep starts)

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        columns = list(spec.features)
        frame = pl.read_parquet(ctx.path(TRAINSET))
        win = window(train_start, delta_train, delta_delay, delta_test)
        # The digest the features step recorded the training set under (its source digest,
        # window and view versions), so lineage walks run -> data set -> source.
        trainset_digest = ctx.dataset_digest(TRAINSET)
        # The gate: a batch that fails the lab's expectations stops here, before any run.
        validation = validate_trainset(ctx, spec, frame, win, trainset_digest)
        train_df, _ = split(spec, frame, win)
        day = pl.col(spec.time_column).dt.date()
        cut = train_df.select(day.max()).item() - dt.timedelta(days=valid_days - 1)
        fit_df, valid_df = train_df.filter(day < cut), train_df.filter(day >= cut)

        workdir = ctx.run_dir / "train"
        workdir.mkdir(parents=True, exist_ok=True)
        run_id = _resumable_run(ctx, workdir, params={"model": spec.name, "n_trials": n_trials,
                                                       "max_epochs": max_epochs, "train_start": str(train_start),
                                                       "valid_days": valid_days}, seed=seed)
        ctx.registry.log_data(run_id, "training_set", trainset_digest)
        given = {"accelerator": accelerator, "devices": devices, "strategy": strategy, "precision": precision,
                 "num_nodes": num_nodes}
        placement = TrainingConfig(**{**ctx.config.training.settings(),
                                      **{k: v for k, v in given.items() if v is not None}}).settings()
        ctx.registry.log_params(run_id, {f"training.{k}": v for k, v in placement.items()})
        if validation is not None:
            ctx.registry.log_artifact(run_id, "validation_report", validation["path"])
            ctx.registry.log_params(run_id, {"validation_report_digest": validation["digest"]})
        flavor = model_flavor(ctx.pm, spec.flavor)
        study = f"{spec.name}-{ctx.run_dir.name}"
        storage = ctx.pm.hook.lab_sweep_storage(config=ctx.config, study_name=study)
        callbacks = [cb for batch in ctx.pm.hook.lab_trainer_callbacks(config=ctx.config, run_dir=str(workdir))
                     for cb in (batch or [])]
        fx, fy = xy(fit_df, columns, spec.label)
        vx, vy = xy(valid_df, columns, spec.label)
        progress = SweepProgress(n_trials, max_epochs)  # trials and epochs, live in `lab run`
        progress.start()

        def on_trial(t: dict) -> None:
            ctx.registry.record_trial(run_id, number=t["number"], params=t["params"], value=t["value"],
                                      state=t["state"])
            progress.trial_finished(t)

        sweep = dict(n_trials=n_trials, storage=storage, study_name=study, seed=seed, workdir=workdir,
                     max_epochs=max_epochs, task=spec.task, metric=spec.metric,
                     devices=None if placement == TrainingConfig().settings() else placement)  # default: as ever
        # Other workers (this machine's sweep_workers, or `lab sweep worker` anywhere) join
        # through the manifest; this process works on the study too and waits for them.
        workers = _sweep_workers(ctx, workdir, sweep, flavor.name, columns, (fx, fy, vx, vy), sweep_workers)
        try:
            result = run_sweep(flavor, fx, fy, vx, vy, columns, callbacks=[*callbacks, progress],
                               on_trial=on_trial, **sweep)
        except BaseException:  # an error, Ctrl-C, a preemption: the workers stop now (SIGTERM)
            stop_workers(workers, wait_s=0)
            raise
        finally:
            (workdir / SWEEP_DATA).unlink(missing_ok=True)
        statuses = stop_workers(workers)  # they leave on their own once the study is complete
        # on_trial recorded this worker's trials as they finished; this pass records the
        # study's final word on every trial (other workers', failed and re-queued ones too).
        for trial in result.trials:
            ctx.registry.record_trial(run_id, number=trial["number"], params=trial["params"],
                                      value=trial["value"], state=trial["state"])
        # The best trial's lineage: where the study lives and every attempt at its params.
        ctx.registry.log_params(run_id, {"sweep_study": result.study, "sweep_storage": result.storage,
                                         "sweep_workers": len(workers) + 1, "sweep_worker_exits": statuses,
                                         "best_trial": result.best_number,
                                         "best_trial_attempts": result.lineage["attempts"]})
        ctx.registry.log_params(run_id, {"best_" + k: v for k, v in result.best_params.items()})
        ctx.registry.log_metrics(run_id, {f"valid_{spec.metric}": result.best_value})
        target = ctx.path(CANDIDATE)
        if target.exists():
            shutil.rmtree(target)
        flavor.save(result.best_fit.model, target)
        ctx.registry.log_artifact(run_id, "model", CANDIDATE)
        ctx.registry.finish_run(run_id, "finished")
        info = {"run_id": run_id, "model": spec.name, "flavor": flavor.name, "task": spec.task,
                "params": result.best_params, "metric": spec.metric, f"valid_{spec.metric}": result.best_value,
                "best_trial": result.best_number, "features": columns, "trainset_digest": trainset_digest,
                "seed": seed, "validation": validation, "sweep": result.lineage}
        ctx.write_json(CANDIDATE_JSON, info)
        return info


def _sweep_workers(ctx: StageContext, workdir: Path, sweep: dict, flavor: str, columns: list[str],
                   arrays: tuple, count: int | None = None) -> list:
    """Write the sweep's manifest and data for joining workers, and start ``count`` - 1 of
    them on this machine (None: ``[tool.lab.train] sweep_workers``)."""
    count = ctx.config.train.sweep_workers if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"[tool.lab.train] sweep_workers must be 1 or more (worker processes on this machine), "
                          f"got {count!r}")
    write_manifest(workdir, study=sweep["study_name"], storage=redact_url(sweep["storage"]), flavor=flavor,
                   task=sweep["task"], metric=sweep["metric"], seed=sweep["seed"], n_trials=sweep["n_trials"],
                   max_epochs=sweep["max_epochs"], features=columns, devices=sweep["devices"], arrays=arrays)
    return start_workers(ctx.root, workdir, count - 1)


def _resumable_run(ctx: StageContext, workdir: Path, *, params: dict, seed: int) -> str:
    """The tracking run of this train step; a rerun after a kill continues the same run."""
    marker = workdir / "run_id"
    if marker.exists():
        run_id = marker.read_text().strip()
        try:
            if ctx.registry.get_run(run_id)["status"] == "running":
                return run_id
        except LabError:  # an unknown id (registry replaced): start afresh
            pass
    run_id = ctx.registry.start_run(kind="train", params=params, seeds={"seed": seed},
                                    parent_run_id=ctx.run_dir.name)
    atomic_write_text(marker, run_id)
    return run_id


# -- the validation gate -----------------------------------------------------------------------

def validate_trainset(ctx: StageContext, spec: ModelSpec, frame: "pl.DataFrame", win: SplitWindow,
                      trainset_digest: str) -> dict | None:
    """Validate what the model is about to be trained on; raise ``ValidationFailed`` when
    the batch fails, after writing the report and emitting ``data.validation_failed``.

    Checked: every ``lab_expectations`` declaration of the spec's source, against the
    source rows dated in the training window (the rows the training set was built from),
    and of each view the model reads, against the training set's columns of that view.
    Drift is scored against the newest training set of this model recorded in the
    registry that passed, through the sample of it kept under ``data/validation/``; a set
    that passes has its sample kept and becomes the next reference.
    Returns None when ``[tool.lab.validation] enabled`` is false or nothing is declared,
    else the report's path and digest and the skipped checks.
    """
    from lab.monitoring.validation import VALIDATION_FAILED, ValidationFailed

    settings = ctx.config.validation
    if not settings.enabled:
        return None
    report = _report(ctx, spec, win, frame, trainset_digest)
    if report is None:
        return None
    digest = report.write(ctx.path(VALIDATION_JSON))
    if not report.passed:
        events.emit(ctx.pm, VALIDATION_FAILED, model=spec.name, checks=report.failed_names,
                    targets=sorted({c.target for c in report.failed}), report=VALIDATION_JSON,
                    training_set=trainset_digest)
        raise ValidationFailed(f"model {spec.name!r} was not trained: " + report.failure_message(VALIDATION_JSON),
                               report)
    _keep_reference(ctx, frame, trainset_digest, settings.reference_rows)
    return {"path": VALIDATION_JSON, "digest": digest, "checks": len(report.checks),
            "skipped": [f"{c.target} {c.name}" for c in report.skipped]}


def _report(ctx: StageContext, spec: ModelSpec, win: SplitWindow, frame: "pl.DataFrame | None",
            trainset_digest: str | None, *, targets: list[str] | None = None, batch: "pl.DataFrame | None" = None):
    """The validation report of the model's data, or None when nothing is declared for it.
    ``frame`` is the training set (None: view declarations cannot be checked), ``batch``
    the source rows to check (default: the offline source's rows in the window)."""
    import polars as pl  # data libraries load only in the step that runs

    from lab.monitoring.validation import declared_expectations, validate_training_data

    declared = declared_expectations(ctx.pm, ctx.config)
    views = views_of(ctx, spec)
    known = {spec.source, *ctx.views, *(v.source for v in ctx.views.values()),
             *(s.source for s in model_specs(ctx.pm, ctx.config).values())}
    if targets:
        unknown = sorted(set(targets) - known)
        if unknown:
            raise ConfigError(f"--target {', '.join(unknown)}: no source or feature view has that name; targets "
                              f"are {', '.join(sorted(known))}")
        declared = [e for e in declared if e.target in targets]
    read = {spec.source, *(v.name for v in views)}
    if not any(e.target in read for e in declared):
        return None
    if frame is None and any(e.target in read - {spec.source} for e in declared):
        raise LabError(f"no training set at {TRAINSET} to check the views' expectations on; build it "
                       "(`lab run features`) or pass --target with the source's name")
    if batch is None and any(e.target == spec.source for e in declared):
        raw = pl.from_arrow(ctx.offline.read_source(spec.source))
        if spec.time_column not in raw.columns:
            raise LabError(f"source {spec.source!r} has no {spec.time_column!r} column (the model's event time); "
                           f"it has {', '.join(raw.columns)}")
        batch = raw.filter(pl.col(spec.time_column).dt.date().is_between(win.train_start, win.end))
    reference, reference_name, note = _last_reference(ctx, spec, trainset_digest)
    settings = ctx.config.validation
    report = validate_training_data(
        spec, views, batch if batch is not None else pl.DataFrame(), frame if frame is not None else pl.DataFrame(),
        declared, known_targets=sorted(known), reference=reference, reference_name=reference_name,
        no_reference=note or "", skip=settings.skip, max_drift=settings.max_drift,
        drift_config=ctx.config.drift)
    report.meta.update(what=f"model {spec.name}, the {spec.source} rows and the training set of "
                            f"{win.train_start}..{win.end}", window=[str(win.train_start), str(win.end)],
                       training_set=trainset_digest, reference=reference_name if reference is not None else None)
    return report


def _last_reference(ctx: StageContext, spec: ModelSpec, trainset_digest: str | None):
    """``(frame or None, name, note)``: the drift reference, the kept sample of the newest
    training set of this model recorded in the registry, other than ``trainset_digest``,
    that passed validation (only those are kept); the note says why there is none."""
    import polars as pl  # data libraries load only in the step that runs

    earlier = 0
    for record in ctx.registry.list_datasets(kind="training_set", limit=200):
        if record["meta"].get("model") != spec.name or record["digest"] == trainset_digest:
            continue
        earlier += 1
        path = ctx.path(_reference_path(record["digest"]))
        if path.exists():
            return pl.read_parquet(path), f"the last training set ({record['name']}, {record['digest'][:12]})", None
    if earlier:
        return None, "the last training set", (f"none of the {earlier} earlier training set(s) of model "
                                               f"{spec.name!r} has a kept sample in {REFERENCES}/ (a set's sample "
                                               "is kept when it passes validation)")
    return None, "the last training set", (f"no earlier training set of model {spec.name!r} is recorded (a set "
                                           "that passes the train step's gate is the next one's reference)")


def _reference_path(trainset_digest: str) -> str:
    return f"{REFERENCES}/{trainset_digest[:16]}.parquet"


def _keep_reference(ctx: StageContext, frame: "pl.DataFrame", trainset_digest: str, rows: int) -> None:
    """Keep every k-th row of a passed training set (at most ``rows``; 0: all) as the next
    set's drift reference, the file carrying the training set's registry digest."""
    rel = _reference_path(trainset_digest)
    if not ctx.path(rel).exists():
        step = max(1, math.ceil(frame.height / rows)) if rows else 1
        ctx.write_dataset(rel, frame.gather_every(step), digest=trainset_digest)


# -- lab data validate -------------------------------------------------------------------------

VALIDATION_FAILED_EXIT = 3


def validate_args(p) -> None:
    p.add_argument("--model", help="the model whose data to check (default: [tool.lab] model_name)")
    p.add_argument("--target", action="append",
                   help="only the declarations of this source or feature view (repeatable)")
    p.add_argument("--file", help="check this Parquet file as the model's source batch (e.g. before loading it) "
                                  "instead of the offline source's rows in the training window")
    p.add_argument("--out", default=VALIDATION_JSON,
                   help=f"the JSON report (default {VALIDATION_JSON}); its HTML page goes beside it")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")


def validate_run(args, ctx) -> int:
    """``lab data validate``: the train step's checks, without training; exit 3 when they fail."""
    import json
    import sys

    import polars as pl  # data libraries load only in the command that runs

    out = Path(args.out)
    if out.suffix != ".json":
        raise ConfigError(f"--out {args.out!r} must end in .json")
    train = ctx.config.train
    with StageContext(root=ctx.config.root, run_dir=ctx.config.runs_path) as stage:  # no run folder made
        spec = spec_of(stage, args.model)
        win = window(train.train_start, train.delta_train, train.delta_delay, train.delta_test)
        trainset = stage.path(TRAINSET)
        frame, digest = (pl.read_parquet(trainset), stage.dataset_digest(TRAINSET)) if trainset.exists() else (None, None)
        batch = None
        if args.file:
            path = Path(args.file)
            if not path.exists():
                raise LabError(f"--file {args.file}: no such file")
            batch = pl.read_parquet(path)
        report = _report(stage, spec, win, frame, digest, targets=args.target, batch=batch)
        if report is None:
            print(f"nothing to check: no lab_expectations declaration for model {spec.name!r}'s source or views"
                  + (f" among {', '.join(args.target)}" if args.target else ""))
            return 0
        report.write(out if out.is_absolute() else stage.path(str(out)))
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.text())
    print(f"report: {out}")
    if not report.passed:
        print(f"lab: error: {report.failure_message(str(out))}", file=sys.stderr)
        return VALIDATION_FAILED_EXIT
    return 0
