"""The materialize and batch-score steps: the online store, and the champion's batch predictions."""

from __future__ import annotations

import datetime as dt

from lab.errors import LabError
from lab.pipeline import progress
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
        counts: dict[str, int] = {}
        for view in progress.track(views, unit="views", what="feature views written online"):
            counts.update(write_online(ctx.offline, ctx.online, [view], as_of))  # each its own transaction
        out = {"as_of": as_of.isoformat(), "rows": counts}
        ctx.write_json(MATERIALIZED, out)
        return out


def batch_score(root, run_dir, *, score_days, model: str | None = None, batch_size: int = 50_000) -> dict:
    """Score the source's last ``score_days`` days with the champion, ``batch_size`` rows at a
    time, with point-in-time features for every event as the training set has them
    (``lab.serving.batch.score_window``): date-partitioned predictions under
    ``data/predictions/<model>/``, a coverage and freshness report there and in the
    registry, each entity's newest prediction in ``data/batch_predictions.db``, and every
    scored row with its features in ``data/scores.parquet`` for the drift stage."""
    import pyarrow.compute as pc  # data libraries load only in the step that runs

    from lab.serving.batch import REPORT_NAME, predictions_dir, score_window, training_window
    from lab.serving.batch_predictions import latest_path

    if isinstance(score_days, bool) or not isinstance(score_days, int) or score_days < 1:
        raise LabError(f"score_days must be a whole number of days, 1 or more, got {score_days!r}")
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
        # the events dated in the window: the bar's total (score_window scans the same days)
        total = _events_since(times, start)
        progress.report(0, total, "rows", "rows scored")
        report = score_window(
            offline=ctx.offline, registry=ctx.registry, spec=spec, views=views_of(ctx, spec), version=champion,
            model=scorer, start=start, end=last, out_dir=predictions_dir(ctx.config, spec.name),
            latest_db=latest_path(ctx.config), batch_size=batch_size,
            window=training_window(ctx.registry, ctx.config, champion), features_path=ctx.path(SCORES),
            on_rows=lambda rows: progress.report(rows, None if total is None else max(total, rows), "rows",
                                                 "rows scored"))
        progress.report(report["rows"], report["rows"], "rows", "rows scored")
        return {"model": spec.name, "rows": report["rows"], "window": report["window"],
                "model_version": champion.version, "partitions": len(report["partitions"]),
                "coverage": report["coverage"], "report": str(predictions_dir(ctx.config, spec.name) / REPORT_NAME),
                "run_id": report["run_id"]}


def _events_since(times, start: dt.date) -> int | None:
    """How many event times (a pyarrow timestamp column) fall on ``start`` or later: the
    batch-score bar's total; None when the column's type does not compare with a date."""
    import pyarrow as pa  # data libraries load only in the step that runs
    import pyarrow.compute as pc

    try:
        since = pa.scalar(dt.datetime.combine(start, dt.time()), times.type)
        return int(pc.sum(pc.greater_equal(times, since)).as_py() or 0)
    except (pa.ArrowException, TypeError, ValueError):
        return None
