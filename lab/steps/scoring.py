"""The materialize and batch-score steps: the online store, and the champion's scores."""

from __future__ import annotations

import datetime as dt

from lab.atomic import atomic_path
from lab.errors import LabError
from lab.pipeline.context import StageContext
from lab.plugins import model_flavor
from lab.steps._common import MATERIALIZED, SCORES, spec_of, views_of


def materialize(root, run_dir, *, model: str | None = None) -> dict:
    """Write the latest values of every view the model reads to the online store, as of
    the latest event in their sources."""
    # pyarrow loads only in the step that runs
    from lab.features.materialize import latest_event_time, materialize as write_online

    with StageContext.open(root, run_dir) as ctx:
        views = views_of(ctx, spec_of(ctx, model))
        as_of = latest_event_time(ctx.offline, views)
        counts = write_online(ctx.offline, ctx.online, views, as_of)
        out = {"as_of": as_of.isoformat(), "rows": counts}
        ctx.write_json(MATERIALIZED, out)
        return out


def batch_score(root, run_dir, *, score_days, model: str | None = None) -> dict:
    """Score the source's last ``score_days`` days with the champion: point-in-time features
    for every event, as the training set has them, and one score per row."""
    # data libraries load only in the step that runs
    import numpy as np
    import polars as pl
    import pyarrow.compute as pc

    from lab.features.training import model_training_set

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        champion = ctx.registry.get_alias(spec.name, "champion")
        if champion is None:
            raise LabError(f"model {spec.name!r} has no champion to score with; run the register stage "
                           f"or `lab promote {spec.name} VERSION`")
        scorer = model_flavor(ctx.pm, champion.flavor).load(ctx.path(champion.artifact_path))
        times = ctx.offline.read_source(spec.source, [spec.time_column]).column(0)
        latest = pc.max(times).as_py()
        if latest is None:
            raise LabError(f"source {spec.source!r} holds no events to score; run the features stage first")
        last = latest.date()
        start = last - dt.timedelta(days=score_days - 1)
        table, digest = model_training_set(ctx.offline, views_of(ctx, spec), spec, start, last)
        frame = pl.from_arrow(table)
        scores = scorer.predict(frame.select(scorer.feature_names).to_numpy().astype(np.float32))
        out = frame.with_columns(pl.Series("score", scores), pl.lit(champion.version).alias("model_version"))
        with atomic_path(ctx.path(SCORES)) as tmp:
            out.write_parquet(tmp)
        return {"model": spec.name, "rows": out.height, "window": [str(start), str(last)],
                "model_version": champion.version, "features_digest": digest}
