"""The drift step: the scored window against the training window, column by column."""

from __future__ import annotations

import shutil

from lab import events
from lab.atomic import atomic_path
from lab.pipeline.context import StageContext
from lab.steps._common import DRIFT_HTML, DRIFT_JSON, SCORES, TRAINSET, spec_of, split, window


def drift(root, run_dir, *, train_start, delta_train, delta_delay, delta_test, model: str | None = None) -> dict:
    """Compare the model's inputs in the batch-scored window with the training days through
    ``lab_drift_report``; record each column's score in the registry; emit
    ``drift.detected`` naming the drifted columns."""
    import polars as pl  # data libraries load only in the step that runs

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        columns = list(spec.features)
        frame = pl.read_parquet(ctx.path(TRAINSET))
        train_df, _ = split(spec, frame, window(train_start, delta_train, delta_delay, delta_test))
        scores = pl.read_parquet(ctx.path(SCORES))
        report = ctx.run_dir / "drift.html"
        result = ctx.pm.hook.lab_drift_report(
            config=ctx.config, reference=train_df.select(columns).to_pandas(),
            current=scores.select(columns).to_pandas(), columns=columns, html_path=str(report))
        with atomic_path(ctx.path(DRIFT_HTML)) as tmp:
            shutil.copyfile(report, tmp)
        version = int(scores["model_version"][0]) if scores.height else None
        times = scores[spec.time_column]
        ctx.registry.record_drift(ctx.run_dir.name, model_name=spec.name, model_version=version,
                                  reference=f"train {train_start} +{delta_train}d",
                                  current=f"scores {times.min()}..{times.max()}", scores=result)
        drifted = sorted(c for c, r in result.items() if r["drifted"])
        if drifted:
            events.emit(ctx.pm, events.DRIFT_DETECTED, model=spec.name, columns=drifted)
        out = {"model": spec.name, "columns": result, "drifted": drifted, "report": str(report)}
        ctx.write_json(DRIFT_JSON, out)
        return out
