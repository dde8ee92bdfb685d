"""The fraud-scoring pipeline's stage functions, one per notebook in ``notebooks/``.

Each takes the notebook's parameters, works through the plugin hooks and the registry,
and writes only its declared outputs (see ``notebooks/pipeline.toml``).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
import numpy as np
import polars as pl

from lab import events
from lab.atomic import atomic_path, atomic_write_text
from lab.pipeline.context import StageContext
from lab.pipeline.digest import path_digest

TRANSACTIONS = "data/transactions.parquet"
TRAINSET = "data/trainset.parquet"
CANDIDATE = "data/candidate"
CANDIDATE_JSON = "data/candidate.json"
EVALUATION = "data/evaluation.json"
REGISTERED = "data/registered.json"
MATERIALIZED = "data/materialized.json"
SCORES = "data/scores.parquet"
DRIFT_JSON = "data/drift.json"
DRIFT_HTML = "data/drift.html"
LABEL = "TX_FRAUD"


def _feature_columns() -> list[str]:
    from plugins.fraud_features import FEATURE_COLUMNS

    return list(FEATURE_COLUMNS)


def _dates(train_start: str, delta_train: int, delta_delay: int, delta_test: int) -> tuple[dt.date, dt.date]:
    start = dt.date.fromisoformat(train_start)
    end = start + dt.timedelta(days=delta_train + delta_delay + delta_test - 1)
    return start, end


def _split(frame: pl.DataFrame, train: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    from lab.training.protocol import reference_split

    return reference_split(
        frame,
        train_start=dt.date.fromisoformat(train["train_start"]),
        delta_train=train["delta_train"],
        delta_delay=train["delta_delay"],
        delta_test=train["delta_test"],
    )


def _xy(frame: pl.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = frame.select(columns).to_numpy().astype(np.float32)
    y = frame[LABEL].to_numpy().astype(np.float32)
    return x, y


def _score_metrics(model, frame: pl.DataFrame, columns: list[str]) -> dict[str, float]:
    from lab.training.metrics import evaluate

    x, y = _xy(frame, columns)
    scores = model.predict(x)
    return evaluate(y, scores, frame["CUSTOMER_ID"].to_numpy(), frame["TX_TIME_DAYS"].to_numpy())


# ---------------------------------------------------------------------------- stages

def simulate(root, run_dir, *, exact, n_customers, n_terminals, nb_days, start_date, radius, seed) -> dict:
    from lab.datasets import fraud

    with StageContext.open(root, run_dir) as ctx:
        frame = fraud.simulate(n_customers=n_customers, n_terminals=n_terminals, nb_days=nb_days,
                               start_date=start_date, radius=radius, exact=exact, seed=seed)
        digest = fraud.write_parquet(frame, ctx.path(TRANSACTIONS))
    summary = fraud.summary(frame)
    summary["digest"] = digest
    return summary


def features(root, run_dir, *, train_start, delta_train, delta_delay, delta_test) -> dict:
    from lab.features.training import training_set

    with StageContext.open(root, run_dir) as ctx:
        transactions = pl.read_parquet(ctx.path(TRANSACTIONS))
        source_digest = ctx.offline.write_source("transactions", transactions.to_arrow())
        start, end = _dates(train_start, delta_train, delta_delay, delta_test)
        table, digest = training_set(ctx.offline, list(ctx.views.values()), start, end)
        # The file carries the digest it is recorded under, so train logs that one.
        ctx.write_dataset(TRAINSET, table, digest=digest)
        ctx.registry.record_dataset(
            kind="training_set", name=f"fraud {start}..{end}", digest=digest, path=TRAINSET,
            rows=table.num_rows,
            meta={"start": str(start), "end": str(end), "source_digest": source_digest,
                  "views": {v.name: v.version for v in ctx.views.values()}},
        )
        return {"rows": table.num_rows, "digest": digest, "source_digest": source_digest}


def train(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, n_trials, max_epochs, seed,
          valid_days: int = 2) -> dict:
    from lab.plugins import model_flavor
    from lab.training.sweep import run_sweep

    with StageContext.open(root, run_dir) as ctx:
        columns = _feature_columns()
        frame = pl.read_parquet(ctx.path(TRAINSET))
        train_df, _ = _split(frame, dict(train_start=train_start, delta_train=delta_train,
                                         delta_delay=delta_delay, delta_test=delta_test))
        # Hold out the last days of the training week, in time order, for the sweep's objective.
        cut = train_df["TX_TIME_DAYS"].max() - valid_days + 1
        fit_df = train_df.filter(pl.col("TX_TIME_DAYS") < cut)
        valid_df = train_df.filter(pl.col("TX_TIME_DAYS") >= cut)
        # The digest the features stage recorded the training set under (its source
        # digest, window and view versions), so lineage walks run -> data set -> source.
        trainset_digest = ctx.dataset_digest(TRAINSET)

        workdir = ctx.run_dir / "train"
        workdir.mkdir(parents=True, exist_ok=True)
        run_id = _resumable_run(ctx, workdir, params={"n_trials": n_trials, "max_epochs": max_epochs,
                                                       "train_start": train_start, "valid_days": valid_days},
                                seed=seed)
        ctx.registry.log_data(run_id, "training_set", trainset_digest)
        flavor = model_flavor(ctx.pm, "lightning_mlp")
        study = f"fraud-{ctx.run_dir.name}"
        storage = ctx.pm.hook.lab_sweep_storage(config=ctx.config, study_name=study)
        callbacks = [cb for batch in ctx.pm.hook.lab_trainer_callbacks(config=ctx.config, run_dir=str(workdir))
                     for cb in (batch or [])]
        fx, fy = _xy(fit_df, columns)
        vx, vy = _xy(valid_df, columns)
        result = run_sweep(
            flavor, fx, fy, vx, vy, columns, n_trials=n_trials, storage=storage, study_name=study,
            seed=seed, workdir=workdir, max_epochs=max_epochs, callbacks=callbacks,
            on_trial=lambda t: ctx.registry.record_trial(
                run_id, number=t["number"], params=t["params"], value=t["value"], state=t["state"]),
        )
        # on_trial recorded trials as they finished; this pass records the study's final
        # word on every trial (failed and re-queued ones too). record_trial upserts.
        for trial in result.trials:
            ctx.registry.record_trial(run_id, number=trial["number"], params=trial["params"],
                                      value=trial["value"], state=trial["state"])
        ctx.registry.log_params(run_id, {"best_" + k: v for k, v in result.best_params.items()})
        ctx.registry.log_metrics(run_id, {"valid_average_precision": result.best_value})
        target = ctx.path(CANDIDATE)
        if target.exists():
            shutil.rmtree(target)
        flavor.save(result.best_fit.model, target)
        ctx.registry.log_artifact(run_id, "model", CANDIDATE)
        ctx.registry.finish_run(run_id, "finished")
        info = {"run_id": run_id, "flavor": flavor.name, "params": result.best_params,
                "valid_average_precision": result.best_value, "best_trial": result.best_number,
                "features": columns, "trainset_digest": trainset_digest, "seed": seed}
        ctx.write_json(CANDIDATE_JSON, info)
        return info


def _resumable_run(ctx: StageContext, workdir: Path, *, params: dict, seed: int) -> str:
    """The tracking run of this train stage; a rerun after a kill continues the same run."""
    marker = workdir / "run_id"
    if marker.exists():
        run_id = marker.read_text().strip()
        try:
            if ctx.registry.get_run(run_id)["status"] == "running":
                return run_id
        except Exception:  # an unknown id (registry replaced): start afresh
            pass
    run_id = ctx.registry.start_run(kind="train", params=params, seeds={"seed": seed},
                                    parent_run_id=ctx.run_dir.name)
    atomic_write_text(marker, run_id)
    return run_id


def evaluate(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, metric, min_delta) -> dict:
    from lab.plugins import model_flavor

    with StageContext.open(root, run_dir) as ctx:
        info = ctx.read_json(CANDIDATE_JSON)
        columns = info["features"]
        frame = pl.read_parquet(ctx.path(TRAINSET))
        _, test_df = _split(frame, dict(train_start=train_start, delta_train=delta_train,
                                        delta_delay=delta_delay, delta_test=delta_test))
        candidate = model_flavor(ctx.pm, info["flavor"]).load(ctx.path(CANDIDATE))
        cand_metrics = _score_metrics(candidate, test_df, columns)
        champion = ctx.registry.get_alias(ctx.config.model_name, "champion")
        champ = None
        if champion is not None:
            champ_model = model_flavor(ctx.pm, champion.flavor).load(ctx.path(champion.artifact_path))
            champ = {"version": champion.version,
                     "metrics": _score_metrics(champ_model, test_df, champ_model.feature_names)}
        if metric not in cand_metrics:
            from lab.errors import ConfigError

            raise ConfigError(f"[tool.lab.gate] metric {metric!r} is not one of {sorted(cand_metrics)}")
        if champ is None:
            passed, reason = True, "no champion yet"
        else:
            delta = cand_metrics[metric] - champ["metrics"][metric]
            passed = delta >= min_delta
            reason = f"{metric} {cand_metrics[metric]:.4f} vs champion {champ['metrics'][metric]:.4f} (delta {delta:+.4f}, needs >= {min_delta:+.4f})"
        evaluation = {"candidate": {"metrics": cand_metrics, "run_id": info["run_id"]}, "champion": champ,
                      "gate": {"metric": metric, "min_delta": min_delta, "passed": passed, "reason": reason},
                      "test_rows": test_df.height}
        ctx.registry.log_metrics(info["run_id"], {f"test_{k}": v for k, v in cand_metrics.items()})
        ctx.write_json(EVALUATION, evaluation)
        return evaluation


def register(root, run_dir) -> dict:
    with StageContext.open(root, run_dir) as ctx:
        info = ctx.read_json(CANDIDATE_JSON)
        evaluation = ctx.read_json(EVALUATION)
        name = ctx.config.model_name
        digest = path_digest(ctx.path(CANDIDATE))
        # Content-addressed copy: a registered model's files never change under it.
        rel = f"runs/models/{name}/{digest[:16]}"
        target = ctx.path(rel)
        if not target.exists():
            tmp = target.with_name(f".{target.name}.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(ctx.path(CANDIDATE), tmp)
            tmp.rename(target)
        existing = [v for v in ctx.registry.list_model_versions(name) if v.lineage.get("model_digest") == digest]
        if existing:
            version = existing[-1]
        else:
            run = ctx.registry.get_run(info["run_id"])
            lineage = {
                "model_digest": digest,
                "train_run_id": info["run_id"],
                "pipeline_run_id": ctx.run_dir.name,
                "trainset_digest": info["trainset_digest"],
                "data": run.get("data", {}),
                "feature_views": {v.name: v.version for v in ctx.views.values()},
                "git_commit": run.get("git_commit"),
                "lock_hash": run.get("lock_hash"),
                "gate": evaluation["gate"],
            }
            version = ctx.registry.register_model(
                name, run_id=info["run_id"], flavor=info["flavor"], artifact_path=rel,
                metrics=evaluation["candidate"]["metrics"], lineage=lineage)
            events.emit(ctx.pm, events.MODEL_REGISTERED, model=name, version=version.version)
        challenger = ctx.registry.get_alias(name, "challenger")
        if challenger is None or challenger.version != version.version:
            ctx.registry.set_alias(name, "challenger", version.version, reason="pipeline register stage")
        promoted = False
        current = ctx.registry.get_alias(name, "champion")
        if evaluation["gate"]["passed"] and (current is None or current.version != version.version):
            ctx.registry.promote(name, version.version, reason=f"gate passed: {evaluation['gate']['reason']}")
            events.emit(ctx.pm, events.MODEL_PROMOTED, model=name, version=version.version, alias="champion",
                        previous=current.version if current else None)
            promoted = True
        out = {"model": name, "version": version.version, "promoted": promoted,
               "gate": evaluation["gate"], "artifact_path": rel}
        ctx.write_json(REGISTERED, out)
        return out


def materialize(root, run_dir) -> dict:
    from lab.features.materialize import materialize as write_online

    with StageContext.open(root, run_dir) as ctx:
        as_of = pl.read_parquet(ctx.path(TRANSACTIONS), columns=["TX_DATETIME"])["TX_DATETIME"].max()
        counts = write_online(ctx.offline, ctx.online, list(ctx.views.values()), as_of)
        out = {"as_of": as_of.isoformat(), "rows": counts}
        ctx.write_json(MATERIALIZED, out)
        return out


def batch_score(root, run_dir, *, score_days) -> dict:
    from lab.features.training import training_set
    from lab.plugins import model_flavor

    with StageContext.open(root, run_dir) as ctx:
        name = ctx.config.model_name
        champion = ctx.registry.get_alias(name, "champion")
        if champion is None:
            from lab.errors import LabError

            raise LabError(f"model {name!r} has no champion to score with; run the register stage or `lab promote`")
        model = model_flavor(ctx.pm, champion.flavor).load(ctx.path(champion.artifact_path))
        last = pl.read_parquet(ctx.path(TRANSACTIONS), columns=["TX_DATETIME"])["TX_DATETIME"].max().date()
        start = last - dt.timedelta(days=score_days - 1)
        table, digest = training_set(ctx.offline, list(ctx.views.values()), start, last)
        frame = pl.from_arrow(table)
        scores = model.predict(frame.select(model.feature_names).to_numpy().astype(np.float32))
        out = frame.with_columns(pl.Series("score", scores), pl.lit(champion.version).alias("model_version"))
        with atomic_path(ctx.path(SCORES)) as tmp:
            out.write_parquet(tmp)
        return {"rows": out.height, "window": [str(start), str(last)], "model_version": champion.version,
                "features_digest": digest}


def drift(root, run_dir, *, train_start, delta_train, delta_delay, delta_test) -> dict:
    with StageContext.open(root, run_dir) as ctx:
        columns = _feature_columns()
        frame = pl.read_parquet(ctx.path(TRAINSET))
        train_df, _ = _split(frame, dict(train_start=train_start, delta_train=delta_train,
                                         delta_delay=delta_delay, delta_test=delta_test))
        scores = pl.read_parquet(ctx.path(SCORES))
        report = ctx.run_dir / "drift.html"
        result = ctx.pm.hook.lab_drift_report(
            config=ctx.config, reference=train_df.select(columns).to_pandas(),
            current=scores.select(columns).to_pandas(), columns=columns, html_path=str(report))
        with atomic_path(ctx.path(DRIFT_HTML)) as tmp:
            shutil.copyfile(report, tmp)
        version = int(scores["model_version"][0]) if scores.height else None
        ctx.registry.record_drift(ctx.run_dir.name, model_name=ctx.config.model_name, model_version=version,
                                  reference=f"train {train_start} +{delta_train}d",
                                  current=f"scores {scores['TX_DATETIME'].min()}..{scores['TX_DATETIME'].max()}",
                                  scores=result)
        drifted = sorted(c for c, r in result.items() if r["drifted"])
        if drifted:
            events.emit(ctx.pm, events.DRIFT_DETECTED, model=ctx.config.model_name, columns=drifted)
        out = {"columns": result, "drifted": drifted, "report": str(report)}
        ctx.write_json(DRIFT_JSON, out)
        return out
