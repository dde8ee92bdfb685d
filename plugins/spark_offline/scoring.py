"""Batch scoring through Spark, for windows that do not fit one machine.

``score_window_spark`` scores the model's source events dated ``start`` .. ``end``: the
window is read from the warehouse by Spark, each view's point-in-time features are
computed and joined there (``pit``), and ``mapInArrow`` runs the request-time transform
(``spec.request_frame``) and the model on each partition's Arrow batches. The model is
loaded in the Python worker from the registry's artifact on the partition's first
batch and kept for the worker's later partitions (``_loaded``): once per worker, never
per row or batch. The output is Parquet partitioned by day, ``date=YYYY-MM-DD/``; a
rerun replaces only the days it scores (dynamic partition overwrite), so other days
stay. One row per event: the entity keys, id and time, ``score``, ``model``,
``model_version``.

This is the scale-out path; ``lab score`` (``lab.serving.batch``) remains the one with
the coverage and freshness report, the registry run and the server's fallback table.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from plugins.spark_offline import pit
from plugins.spark_offline.layout import HIDDEN, ROW, us_column

_DAY_US = 86_400_000_000
_LOADED: dict[tuple, tuple] = {}  # per Python worker: (root, model, version) -> (spec, model)


@dataclass(frozen=True)
class ScoringJob:
    """What a worker needs to score: all plain values, pickled to every executor."""

    root: str
    model: str
    model_version: int
    flavor: str
    artifact: str
    features: tuple[str, ...]
    keep: tuple[str, ...]  # the columns written beside the score


def _loaded(job: ScoringJob):
    """The spec and the loaded model, once per worker process."""
    key = (job.root, job.model, job.model_version)
    if key not in _LOADED:
        from lab.config import load_config
        from lab.plugins import get_plugin_manager, model_flavor, model_spec

        config = load_config(Path(job.root))
        pm = get_plugin_manager(config)
        spec = model_spec(pm, config, job.model)
        model = model_flavor(pm, job.flavor).load(Path(job.root) / job.artifact)
        _LOADED[key] = (spec, model)
    return _LOADED[key]


def _score_batches(job: ScoringJob, arrow_schema, batches):
    import numpy as np
    import polars as pl
    import pyarrow as pa

    spec = model = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if model is None:
            spec, model = _loaded(job)
        frame = spec.request_frame(pl.from_arrow(pa.Table.from_batches([batch])))
        missing = [c for c in job.features if c not in frame.columns]
        if missing:
            raise LabError(f"batch scoring of model {job.model!r}: no column(s) {', '.join(missing)} after the "
                           "request-time transform and the views; retrain on these features")
        scores = np.asarray(model.predict(frame.select(job.features).to_numpy().astype("float32")), dtype=np.float64)
        out = frame.select(job.keep).to_arrow()
        n = out.num_rows
        out = out.append_column("score", pa.array(scores.reshape(-1)))
        out = out.append_column("model", pa.array([job.model] * n, pa.string()))
        out = out.append_column("model_version", pa.array(np.full(n, job.model_version, dtype=np.int64)))
        out = out.append_column("date", pa.array(batch.column("__lab_date")))
        yield from out.cast(arrow_schema).to_batches()


def score_window_spark(store, *, root: Path, spec, views, version, start: dt.date, end: dt.date,
                       out_dir: Path) -> dict:
    """Score ``spec``'s source events dated ``start`` .. ``end`` with model ``version``
    (a registry ``ModelVersion``) through ``store``'s Spark session into ``out_dir``
    (see the module docstring). Returns ``{"rows", "partitions": {day: rows}, ...}``."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import DateType, DoubleType, LongType, StringType, StructField, StructType

    if start > end:
        raise LabError(f"the scoring window starts ({start}) after it ends ({end}); swap them")
    schemas = store._schemas(views)
    source_schema = store.layout.schema(spec.source)
    entities = list(dict.fromkeys([*spec.request.entities, *(v.entity for v in views)]))
    keep = list(dict.fromkeys([*entities, spec.id_column, spec.time_column]))
    missing = [c for c in keep if c not in source_schema.names]
    if missing:
        raise LabError(f"source {spec.source!r} lacks column(s) {', '.join(missing)} that model {spec.name!r} "
                       "writes beside its scores")
    lo = (start - dt.date(1970, 1, 1)).days * _DAY_US
    hi = ((end - dt.date(1970, 1, 1)).days + 1) * _DAY_US
    t = pit._c(us_column(spec.time_column))
    rows = store.frame(spec.source).where((t >= F.lit(lo)) & (t < F.lit(hi)))
    probes = rows.select(pit._c(ROW).alias(pit.PROBE_ROW), *[pit._c(v.entity) for v in views],
                         t.alias(pit.PROBE_T))
    frame = rows.withColumn("__lab_date", F.to_date(F.timestamp_micros(t)))
    for view in views:
        key_type = pit.key_spark_type(schemas[view.name].field(view.entity).type)
        answer = pit.view_frame(probes, store.frame(view.source), view, schemas[view.name], key_type)
        frame = frame.join(answer, on=ROW, how="left")
    frame = frame.select([c for c in frame.columns if not c.startswith(HIDDEN) or c == "__lab_date"])
    fields = {f.name: f for f in frame.schema.fields}
    out_schema = StructType([fields[c] for c in keep] + [
        StructField("score", DoubleType()), StructField("model", StringType()),
        StructField("model_version", LongType()), StructField("date", DateType())])
    job = ScoringJob(root=str(Path(root).resolve()), model=spec.name, model_version=int(version.version),
                     flavor=version.flavor, artifact=version.artifact_path, features=tuple(spec.features),
                     keep=tuple(keep))
    arrow_schema = to_arrow_schema(out_schema)
    scored = frame.mapInArrow(lambda batches: _score_batches(job, arrow_schema, batches), out_schema)
    out_dir = Path(out_dir).resolve()
    (scored.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("date")
     .parquet(out_dir.as_uri()))
    written = store.spark.read.parquet(out_dir.as_uri()).where(
        (F.col("date") >= F.lit(start)) & (F.col("date") <= F.lit(end))).groupBy("date").count().collect()
    partitions = {str(r["date"]): int(r["count"]) for r in sorted(written, key=lambda r: r["date"])}
    if not partitions:
        raise LabError(f"source {spec.source!r} has no events dated {start} .. {end}; pick days the source covers")
    return {"model": spec.name, "model_version": int(version.version), "window": [str(start), str(end)],
            "rows": sum(partitions.values()), "partitions": partitions, "output": str(out_dir)}
