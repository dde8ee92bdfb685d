"""Batch inference: one model version scores a window of the offline store, chunk by chunk.

``score_window`` is what the ``batch_score`` stage (``lab.steps.batch_score``) and ``lab
score`` run, for any lab's ``ModelSpec``. It streams the spec's source rows dated in the
window, in time order, from the offline store (``OfflineStore.scan_source``, at most
``batch_size`` rows at a time), adds the request-time features
(``spec.request_frame``) and every view's point-in-time features, as training does, and
scores them. Memory is bounded by ``batch_size`` rows, plus one latest row per entity key
and one float per scored row for the freshness percentiles.

Outputs, for model ``M`` under the lab's data folder:

- ``predictions/M/date=YYYY-MM-DD/part-NNNNN.parquet`` (hive-style partitions), one row
  per event: the entity keys, the event id and time, ``score``, ``model``,
  ``model_version``, ``scored_at`` (UTC), ``defaulted`` (some view had no row for the
  entity within its ttl, so it gave its defaults) and ``new_entity`` (a key not seen in
  the model's training-set window; null when that window is unknown). A day is written
  to a staging folder (``predictions/.staging/``) and renamed into place once the scan
  has moved past it, so a killed job leaves whole partitions or none, never a partial one (a
  rerun replaces a day whole).
- ``predictions/M/_report.json``: coverage and feature freshness (see ``score_window``),
  also recorded in the registry as a run of kind ``batch_score`` (params, metrics, the
  report as an artifact).
- ``batch_predictions.db``: each entity key's newest prediction, loaded when the job
  ends (``lab.serving.batch_predictions``), for the server's batch fallback.

Data libraries are imported inside the functions that use them: the server imports
``lab.serving`` and needs none of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from lab.atomic import atomic_write_text, fsync_dir, pid_alive
from lab.errors import ConfigError, LabError
from lab.serving.batch_predictions import event_time_text, load_latest

PREDICTIONS_DIR = "predictions"
REPORT_NAME = "_report.json"
STAGING_DIR = ".staging"
_SEEN_TTL = dt.timedelta(days=365 * 200)  # the newest visible row, however old: age, then the real ttl
_MODEL_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def predictions_dir(config, model: str) -> Path:
    """``<data_dir>/predictions/<model>``: the model's partitioned batch predictions."""
    if not _MODEL_DIR.match(model):
        raise ConfigError(f"model name {model!r} cannot name a folder of batch predictions; use letters, "
                          "digits, _, . and -")
    return config.data_path / PREDICTIONS_DIR / model


def training_window(registry, config, version) -> dict | None:
    """The days of the training set ``version`` was trained on: from its lineage (the
    training set's record in the registry), else ``[tool.lab.train]``; None if neither."""
    digest = (version.lineage or {}).get("trainset_digest")
    record = registry.get_dataset(digest) if digest else None
    meta = (record or {}).get("meta") or {}
    if meta.get("start") and meta.get("end"):
        return {"start": meta["start"], "end": meta["end"], "from": "lineage"}
    train = config.train
    if train.train_start:
        start = dt.date.fromisoformat(str(train.train_start))
        end = start + dt.timedelta(days=train.delta_train + train.delta_delay + train.delta_test - 1)
        return {"start": str(start), "end": str(end), "from": "[tool.lab.train]"}
    return None


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _write_part(table, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _publish(staged: Path | None, target: Path, staging: Path) -> None:
    """Put a complete day in place of ``target`` (None: the day has no rows, remove it)."""
    old = None
    if target.exists():
        old = staging / f"old-{uuid.uuid4().hex}"
        os.replace(target, old)
    if staged is not None:
        fsync_dir(staged)
        os.replace(staged, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clear_abandoned(staging: Path, model: str) -> None:
    """Remove what killed jobs for ``model`` left in the staging folder."""
    if not staging.exists():
        return
    for entry in staging.iterdir():
        name, _, rest = entry.name.partition("--")
        pid = rest.split("-", 1)[0]
        if name == model and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


class _Stats:
    """Coverage and freshness, accumulated chunk by chunk."""

    def __init__(self, views, entities: Sequence[str], known: dict[str, set] | None):
        import numpy as np

        self.np = np
        self.views, self.entities, self.known = views, list(entities), known
        self.known_series: dict[str, Any] = {}
        self.rows = self.defaulted = self.new_rows = self.non_finite = 0
        self.keys = {e: set() for e in self.entities}
        self.new = {e: set() for e in self.entities}
        self.by_view = {v.name: {"stale": 0, "missing": 0, "ages": []} for v in views}

    def add(self, frame, ages: dict, stale: dict, missing: dict) -> tuple[Any, Any]:
        """Count one scored chunk; returns its per-row ``defaulted`` and ``new_entity``."""
        import polars as pl

        np = self.np
        n = frame.height
        self.rows += n
        defaulted = np.zeros(n, dtype=bool)
        for view in self.views:
            s, m = stale[view.name], missing[view.name]
            defaulted |= s | m
            stats = self.by_view[view.name]
            stats["stale"] += int(s.sum())
            stats["missing"] += int(m.sum())
            age = ages[view.name]
            stats["ages"].append(age[~m].astype(np.float32))
        self.defaulted += int(defaulted.sum())
        new_row = np.zeros(n, dtype=bool) if self.known is not None else None
        for entity in self.entities:
            keys = frame[entity]
            self.keys[entity].update(keys.unique().to_list())
            if self.known is not None:
                if entity not in self.known_series:  # built once: the training window's keys
                    self.known_series[entity] = pl.Series(list(self.known[entity]), dtype=keys.dtype).implode()
                is_new = ~keys.is_in(self.known_series[entity]).to_numpy()
                new_row |= is_new
                self.new[entity].update(keys.filter(pl.Series(is_new)).unique().to_list())
        if new_row is not None:
            self.new_rows += int(new_row.sum())
        return defaulted, new_row

    def report(self) -> tuple[dict, dict]:
        np = self.np
        share = (lambda k: round(k / self.rows, 6)) if self.rows else (lambda k: None)
        coverage = {
            "rows": self.rows,
            "entities_scored": {e: len(keys) for e, keys in self.keys.items()},
            "defaulted_rows": self.defaulted,
            "defaulted_share": share(self.defaulted),
            "defaulted_rows_by_view": {v: s["stale"] + s["missing"] for v, s in self.by_view.items()},
            "new_entities": None if self.known is None else {e: len(keys) for e, keys in self.new.items()},
            "new_entity_rows": None if self.known is None else self.new_rows,
            "non_finite_scores": self.non_finite,
        }
        freshness = {}
        for view in self.views:
            s = self.by_view[view.name]
            ages = np.concatenate(s["ages"]) if s["ages"] else np.zeros(0, dtype=np.float32)
            pct = (lambda q: round(float(np.percentile(ages, q)), 3)) if ages.size else (lambda q: None)
            freshness[view.name] = {
                "ttl_s": view.ttl.total_seconds(),
                "rows_with_data": int(ages.size),
                "age_s": {"p50": pct(50), "p95": pct(95), "max": pct(100)},
                "stale_share": share(s["stale"]),
                "missing_share": share(s["missing"]),
            }
        return coverage, freshness


def _ages(offline, probe, views, time_column: str) -> tuple[dict, dict, dict]:
    """Per view: each row's age (event time minus the newest source row the view could see
    then, label delay included), whether that row is past the ttl (``stale``), and whether
    there is none (``missing``). Either way the view gave its defaults."""
    import numpy as np
    import polars as pl

    ages, stale, missing = {}, {}, {}
    t = pl.col("__lab_t").dt.epoch("us")
    for view in views:
        # A latest-value view of the source's own event time, however old: the store's
        # point-in-time join finds the newest row visible at each event's time.
        seen = dataclasses.replace(view, name=f"{view.name}__seen", aggregations=(), features=(view.timestamp,),
                                   ttl=_SEEN_TTL, tags={})
        got = pl.from_arrow(offline.get_historical_features(probe, [seen], "__lab_t"))
        age = got.select(((t - pl.col(view.timestamp).dt.epoch("us")) / 1e6
                          - view.label_delay.total_seconds()).alias("age"))["age"]
        m = age.is_null().to_numpy()
        values = age.fill_null(0.0).to_numpy().astype(np.float64)
        ages[view.name], missing[view.name] = values, m
        stale[view.name] = ~m & (values > view.ttl.total_seconds())
    return ages, stale, missing


def score_window(*, offline, registry, spec, views, version, model, start: dt.date, end: dt.date,
                 out_dir: Path, latest_db: Path, batch_size: int = 50_000, window: dict | None = None,
                 features_path: Path | None = None, now: dt.datetime | None = None,
                 on_chunk: Callable[[dt.date, int], None] | None = None,
                 on_rows: Callable[[int], None] | None = None) -> dict:
    """Score the spec's source events dated ``start`` .. ``end`` with ``model`` (the loaded
    ``version``) and write the partitions, the report and the latest table (see the
    module docstring). ``window`` is the training-set window (``training_window``) that
    decides which entities are new. ``features_path``, if given, also gets every scored
    row with its features (the drift stage reads it). ``on_chunk(day, part)`` and
    ``on_rows(rows scored so far)`` are called after each chunk (progress). Returns the report:

    - ``coverage``: ``rows``, distinct ``entities_scored`` per entity field,
      ``defaulted_rows`` (and share, and by view): rows scored on some view's defaults;
      ``new_entities`` per field and ``new_entity_rows``: keys not in the training window.
    - ``freshness`` per view: the age of the newest source row the view could see at each
      event (``age_s`` p50/p95/max over the rows that had one), ``stale_share`` (that
      row is older than the ttl) and ``missing_share`` (no row at all).
    """
    import polars as pl

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a whole number of rows, 1 or more, got {batch_size!r}")
    if start > end:
        raise ConfigError(f"the scoring window starts ({start}) after it ends ({end}); swap them")
    time_column, id_column = spec.time_column, spec.id_column
    entities = list(dict.fromkeys([*spec.request.entities, *(v.entity for v in views)]))
    names = list(model.feature_names)
    known = _training_keys(offline, spec, entities, window) if window is not None else None
    scored_at = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    staging = out_dir.parent / STAGING_DIR
    _clear_abandoned(staging, out_dir.name)
    job = staging / f"{out_dir.name}--{os.getpid()}-{uuid.uuid4().hex[:8]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = registry.start_run(kind="batch_score", name=f"{spec.name} v{version.version} {start}..{end}",
                                params={"model": spec.name, "model_version": version.version, "start": str(start),
                                        "end": str(end), "batch_size": batch_size})
    stats = _Stats(views, [e for e in entities if e in [v.entity for v in views]], known)
    latest: dict[str, Any] = {}
    partitions: dict[str, int] = {}
    writer = features_tmp = None
    try:
        job.mkdir(parents=True)
        parts: dict[dt.date, int] = {}  # days written to the staging folder, not yet published
        for chunk in offline.scan_source(spec.source, time_column=time_column, start=start, end=end,
                                         batch_rows=batch_size):
            frame = spec.request_frame(pl.from_arrow(chunk))
            table = pl.from_arrow(offline.get_historical_features(frame.to_arrow(), views, time_column))
            absent = [c for c in [id_column, *entities, *names] if c not in table.columns]
            if absent:
                raise LabError(f"batch scoring of model {spec.name!r}: no column(s) {', '.join(absent)} after "
                               "the request-time transform and the views; retrain on these features")
            scores = model.predict(table.select(names).to_numpy().astype("float32"))
            probe = table.select([*stats.entities, pl.col(time_column).alias("__lab_t")]).to_arrow()
            defaulted, new_row = stats.add(table, *_ages(offline, probe, views, time_column))
            out = table.select([*entities, id_column, time_column]).with_columns(
                pl.Series("score", scores, dtype=pl.Float64), pl.lit(spec.name).alias("model"),
                pl.lit(version.version, dtype=pl.Int64).alias("model_version"),
                pl.lit(scored_at).alias("scored_at"), pl.Series("defaulted", defaulted),
                pl.Series("new_entity", new_row, dtype=pl.Boolean) if new_row is not None
                else pl.lit(None, dtype=pl.Boolean).alias("new_entity"))  # no training window known
            # The scan is in time order: a chunk may end one day and begin the next.
            day_of = out[time_column].dt.date()
            for (day,), rows in out.with_columns(day_of.alias("__lab_day")).partition_by(
                    "__lab_day", as_dict=True, maintain_order=True).items():
                folder = job / f"date={day}"
                folder.mkdir(exist_ok=True)
                _write_part(rows.drop("__lab_day").to_arrow(), folder / f"part-{parts.get(day, 0):05d}.parquet")
                parts[day] = parts.get(day, 0) + 1
                partitions[str(day)] = partitions.get(str(day), 0) + rows.height
            last = day_of.max()
            for day in [d for d in parts if d < last]:  # days the scan has moved past are complete
                _publish(job / f"date={day}", out_dir / f"date={day}", staging)
                del parts[day]
            # A score that is not a number (a model gone wrong) is in the partition but never
            # stands in for an entity online; nor does a row without a key.
            usable = out.filter(pl.col("score").is_finite())
            stats.non_finite += out.height - usable.height
            for entity in spec.request.entities:
                if entity in out.columns:
                    fresh = usable.filter(pl.col(entity).is_not_null())
                    both = pl.concat([latest[entity], fresh]) if entity in latest else fresh
                    latest[entity] = both.unique(subset=[entity], keep="last", maintain_order=True)
            if features_path is not None:
                rows = table.with_columns(pl.Series("score", scores, dtype=pl.Float64),
                                          pl.lit(version.version, dtype=pl.Int64).alias("model_version")).to_arrow()
                if writer is None:
                    import pyarrow.parquet as pq

                    features_tmp = features_path.with_name(f".{features_path.name}.{uuid.uuid4().hex[:8]}.tmp")
                    writer = pq.ParquetWriter(features_tmp, rows.schema)
                writer.write_table(rows.cast(writer.schema))
            if on_chunk is not None:
                on_chunk(last, parts.get(last, 0))
            if on_rows is not None:
                on_rows(stats.rows)
        for day in list(parts):
            _publish(job / f"date={day}", out_dir / f"date={day}", staging)
        for day in _days(start, end):  # a day of the window with no events keeps no old partition
            if str(day) not in partitions and (out_dir / f"date={day}").exists():
                _publish(None, out_dir / f"date={day}", staging)
        if not partitions:
            raise LabError(f"source {spec.source!r} has no events dated {start} .. {end}; pick days the source "
                           "covers (`lab features list` shows the views; the stage's window ends at the last event)")
        if writer is not None:
            writer.close()
            writer = None
            with open(features_tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(features_tmp, features_path)
            fsync_dir(features_path.parent)
        loaded = load_latest(latest_db, _latest_rows(spec, version, latest, scored_at))
        coverage, freshness = stats.report()
        report = {"model": spec.name, "model_version": version.version, "window": [str(start), str(end)],
                  "scored_at": scored_at.isoformat(), "batch_size": batch_size, "rows": coverage["rows"],
                  "partitions": partitions, "output": str(out_dir), "latest_table": str(latest_db),
                  "latest_loaded": loaded, "training_window": window, "coverage": coverage,
                  "freshness": freshness, "run_id": run_id}
        report_path = out_dir / REPORT_NAME
        atomic_write_text(report_path, json.dumps(report, indent=2, sort_keys=True, default=str))
        registry.log_metrics(run_id, _metrics(coverage, freshness))
        registry.log_artifact(run_id, "report", str(report_path))
        registry.log_artifact(run_id, "predictions", str(out_dir))
        registry.finish_run(run_id, "finished")
        return report
    except BaseException:
        registry.finish_run(run_id, "failed")
        raise
    finally:
        if writer is not None:
            writer.close()
        if features_tmp is not None and features_tmp.exists():
            features_tmp.unlink()
        shutil.rmtree(job, ignore_errors=True)
        try:
            staging.rmdir()  # only when empty: another job may be staging beside this one
        except OSError:
            pass


def _training_keys(offline, spec, entities: Sequence[str], window: dict) -> dict[str, set]:
    keys: dict[str, set] = {e: set() for e in entities}
    for chunk in offline.scan_source(spec.source, time_column=spec.time_column,
                                     start=dt.date.fromisoformat(window["start"]),
                                     end=dt.date.fromisoformat(window["end"]), columns=list(entities)):
        for entity in entities:
            keys[entity].update(chunk.column(entity).unique().to_pylist())
    return keys


def _latest_rows(spec, version, latest: dict, scored_at: dt.datetime):
    when = scored_at.isoformat()
    for entity, frame in latest.items():
        for key, event_id, event_time, score in frame.select(
                [entity, spec.id_column, spec.time_column, "score"]).iter_rows():
            yield (spec.name, entity, key, float(score), version.version, event_id,
                   event_time_text(event_time), when)


def _metrics(coverage: dict, freshness: dict) -> dict[str, float]:
    """The report's numbers as flat registry metrics (None left out)."""
    out = {"rows": coverage["rows"], "defaulted_rows": coverage["defaulted_rows"],
           "defaulted_share": coverage["defaulted_share"], "new_entity_rows": coverage["new_entity_rows"]}
    for entity, n in coverage["entities_scored"].items():
        out[f"entities_scored.{entity}"] = n
    for entity, n in (coverage["new_entities"] or {}).items():
        out[f"new_entities.{entity}"] = n
    for view, f in freshness.items():
        for q, value in f["age_s"].items():
            out[f"freshness.{view}.age_{q}_s"] = value
        out[f"freshness.{view}.stale_share"] = f["stale_share"]
        out[f"freshness.{view}.missing_share"] = f["missing_share"]
    return {k: float(v) for k, v in out.items() if v is not None}
