"""The train step: an Optuna sweep of the spec's flavor; the best trial is the candidate."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from lab.atomic import atomic_write_text
from lab.errors import LabError
from lab.pipeline.context import StageContext
from lab.plugins import model_flavor
from lab.steps._common import CANDIDATE, CANDIDATE_JSON, TRAINSET, spec_of, split, window, xy


def train(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, n_trials, max_epochs, seed,
          valid_days: int = 2, model: str | None = None) -> dict:
    """Sweep on the training days, holding out their last ``valid_days`` in time order for
    the objective (the spec's metric); save the best model to ``data/candidate``."""
    import polars as pl  # data libraries load only in the step that runs

    from lab.training.sweep import run_sweep  # numpy (and optuna when the sweep starts)

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        columns = list(spec.features)
        frame = pl.read_parquet(ctx.path(TRAINSET))
        train_df, _ = split(spec, frame, window(train_start, delta_train, delta_delay, delta_test))
        day = pl.col(spec.time_column).dt.date()
        cut = train_df.select(day.max()).item() - dt.timedelta(days=valid_days - 1)
        fit_df, valid_df = train_df.filter(day < cut), train_df.filter(day >= cut)
        # The digest the features step recorded the training set under (its source digest,
        # window and view versions), so lineage walks run -> data set -> source.
        trainset_digest = ctx.dataset_digest(TRAINSET)

        workdir = ctx.run_dir / "train"
        workdir.mkdir(parents=True, exist_ok=True)
        run_id = _resumable_run(ctx, workdir, params={"model": spec.name, "n_trials": n_trials,
                                                       "max_epochs": max_epochs, "train_start": str(train_start),
                                                       "valid_days": valid_days}, seed=seed)
        ctx.registry.log_data(run_id, "training_set", trainset_digest)
        flavor = model_flavor(ctx.pm, spec.flavor)
        study = f"{spec.name}-{ctx.run_dir.name}"
        storage = ctx.pm.hook.lab_sweep_storage(config=ctx.config, study_name=study)
        callbacks = [cb for batch in ctx.pm.hook.lab_trainer_callbacks(config=ctx.config, run_dir=str(workdir))
                     for cb in (batch or [])]
        fx, fy = xy(fit_df, columns, spec.label)
        vx, vy = xy(valid_df, columns, spec.label)
        result = run_sweep(
            flavor, fx, fy, vx, vy, columns, n_trials=n_trials, storage=storage, study_name=study,
            seed=seed, workdir=workdir, max_epochs=max_epochs, callbacks=callbacks,
            task=spec.task, metric=spec.metric,
            on_trial=lambda t: ctx.registry.record_trial(
                run_id, number=t["number"], params=t["params"], value=t["value"], state=t["state"]),
        )
        # on_trial recorded trials as they finished; this pass records the study's final
        # word on every trial (failed and re-queued ones too). record_trial upserts.
        for trial in result.trials:
            ctx.registry.record_trial(run_id, number=trial["number"], params=trial["params"],
                                      value=trial["value"], state=trial["state"])
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
                "seed": seed}
        ctx.write_json(CANDIDATE_JSON, info)
        return info


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
