"""The optimize step and ``lab optimize MODEL VERSION``: cheaper-to-serve versions of a
registered model, each registered only when the evaluation set says it is good enough.

For a registered version (the parent) this step asks the parent's flavor for the
optional methods of ``ModelFlavor`` that ``[tool.lab.optimize] methods`` names:

- ``quantize``: an int8 dynamic quantization of the parent;
- ``distill``: a smaller student of the same flavor trained on the parent's scores (soft
  targets) over the training rows, every tenth of them held out to pick its epoch.

Each variant is saved and loaded back through the flavor (so what is judged is what
would be served), scored on the evaluation set (the test split of
``data/trainset.parquet`` by the model spec's split and ``[tool.lab.train]``'s window,
as the evaluate step does), and gated: its drop on the metric against the parent, in
the metric's direction and units, must be at most ``max_quality_drop``, judged on the
point estimate, or with ``require_ci`` on the upper bound of a paired-bootstrap interval
of the drop. Parent and variants are measured side by side (``measure_serving``): p50
latency of one-row and of batch predicts in interleaved rounds, CPU time per prediction
and its cost per 1,000 predictions (CPU-seconds × ``price_per_cpu_hour`` / 3600), the
saved folder's bytes and the RSS growth of loading it in a fresh process.

A variant that passes is copied to a content-addressed folder and registered as a new
version of the same model, its lineage naming the parent (``derived_from``), the
method, the gate's figures and the measurements; no alias moves (promotion stays a
decision: ``lab promote``). One that fails is reported and not registered. One registry
run (kind ``optimize``) records the whole step.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import events
from lab.errors import ConfigError, LabError
from lab.pipeline.context import StageContext
from lab.pipeline.digest import path_digest
from lab.plugins import model_flavor
from lab.steps._common import TRAINSET, spec_of, split, window, xy
from lab.steps.evaluation import improvement_interval, score_metrics

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from lab.cli import Context

OPTIMIZED = "data/optimized.json"
METHOD_NAMES = {"quantize": "int8_dynamic_quantization", "distill": "distillation"}
"""The lineage's ``method`` for each of ``[tool.lab.optimize] methods``."""
VARIANT_NAMES = {"quantize": "quantized", "distill": "distilled"}


# -- the gate ------------------------------------------------------------------------------


def quality_gate(metric: str, parent: float, variant: float, max_drop: float, *,
                 interval: dict | None = None, require_ci: bool = False) -> dict[str, Any]:
    """Whether a variant keeps its parent's quality: its ``drop`` (``parent - variant``
    when higher is better, ``variant - parent`` for an error) must be at most
    ``max_drop``. ``interval`` is ``improvement_interval``'s of the variant over the
    parent; its negation is the drop's interval, reported, and judged instead of the point
    estimate when ``require_ci`` (its upper bound must be at most ``max_drop``)."""
    from lab.training.metrics import higher_is_better  # numpy only in the step that runs

    if not (isinstance(max_drop, (int, float)) and max_drop >= 0):
        raise ConfigError(f"[tool.lab.optimize] max_quality_drop must be 0 or more, got {max_drop!r}")
    better = higher_is_better(metric)
    drop = float(parent) - float(variant) if better else float(variant) - float(parent)
    passed = drop <= max_drop + 1e-12  # float rounding: 0.80 - 0.79 is 0.010000000000000009
    out: dict[str, Any] = {"metric": metric, "parent": float(parent), "variant": float(variant), "drop": drop,
                           "max_quality_drop": float(max_drop), "judged_on": "point estimate"}
    reason = (f"{metric} {variant:.4f} vs parent {parent:.4f}: drop {drop:+.4f} "
              f"({'higher' if better else 'lower'} is better), allowed {max_drop:.4f}")
    if interval is not None:
        low, high = -interval["high"], -interval["low"]
        level = int(round(interval["confidence"] * 100))
        out["drop_interval"] = {"low": low, "high": high, "confidence": interval["confidence"],
                                "samples": interval["samples"], "method": interval["method"]}
        reason += f"; {level}% CI of the drop [{low:+.4f}, {high:+.4f}]"
        if require_ci:
            passed = high <= max_drop
            out["judged_on"] = f"upper bound of the {level}% CI"
            reason += " (its upper bound is judged)"
    out.update(passed=bool(passed), reason=reason)
    return out


# -- measurements --------------------------------------------------------------------------


def cost_per_1000(cpu_seconds_per_prediction: float, price_per_cpu_hour: float) -> float:
    """The cost of 1,000 predictions: CPU-seconds × price per CPU-hour / 3600."""
    return cpu_seconds_per_prediction * 1000.0 * price_per_cpu_hour / 3600.0


def measure_serving(models: dict[str, Any], rows: "np.ndarray", *, batch_rows: int, rounds: int,
                    one_row_calls: int, batch_calls: int, price_per_cpu_hour: float) -> dict[str, dict]:
    """Latency, CPU time and cost of ``predict`` for each model, measured side by side.

    In each of ``rounds`` rounds every model (in an order rotated per round) makes
    ``one_row_calls`` one-row predicts (different rows of ``rows`` in turn), then
    ``batch_calls`` predicts of ``batch_rows`` rows. Per model: the p50 and p99 of the
    one-row calls (µs), the p50 of the batch calls (ms), the CPU time per prediction in
    each mode (µs, the process's CPU clock, so threads count) and the cost of 1,000
    predictions in each mode. Every model first scores one row and one batch unmeasured
    (a lazily built part, e.g. torch for large batches, is built then)."""
    import numpy as np  # numpy only in the step that runs

    if rows.ndim != 2 or rows.shape[0] == 0:
        raise LabError("no evaluation rows to measure latency on; widen the test window")
    batch = np.ascontiguousarray(np.resize(rows, (batch_rows, rows.shape[1])), dtype=np.float32)
    singles = [np.ascontiguousarray(rows[i % rows.shape[0]:i % rows.shape[0] + 1], dtype=np.float32)
               for i in range(one_row_calls)]
    names = list(models)
    one: dict[str, list[int]] = {n: [] for n in names}
    many: dict[str, list[int]] = {n: [] for n in names}
    cpu_one = dict.fromkeys(names, 0.0)
    cpu_many = dict.fromkeys(names, 0.0)
    for name in names:
        models[name].predict(singles[0])
        models[name].predict(batch)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            predict = models[name].predict
            gc.collect()
            cpu = time.process_time()
            for x in singles:
                t = time.perf_counter_ns()
                predict(x)
                one[name].append(time.perf_counter_ns() - t)
            cpu_one[name] += time.process_time() - cpu
            cpu = time.process_time()
            for _ in range(batch_calls):
                t = time.perf_counter_ns()
                predict(batch)
                many[name].append(time.perf_counter_ns() - t)
            cpu_many[name] += time.process_time() - cpu
    out = {}
    for name in names:
        per_one = cpu_one[name] / (rounds * one_row_calls)
        per_row = cpu_many[name] / (rounds * batch_calls * batch_rows)
        ordered = sorted(one[name])
        out[name] = {
            "one_row_p50_us": statistics.median(one[name]) / 1e3,
            "one_row_p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e3,
            "batch_rows": batch_rows,
            "batch_p50_ms": statistics.median(many[name]) / 1e6,
            "cpu_us_per_prediction_one_row": per_one * 1e6,
            "cpu_us_per_prediction_batch": per_row * 1e6,
            "cost_per_1000_one_row": cost_per_1000(per_one, price_per_cpu_hour),
            "cost_per_1000_batch": cost_per_1000(per_row, price_per_cpu_hour),
        }
    return out


def measure_child(job: dict) -> dict:
    """What a fresh measuring process does (``_in_fresh_process``): load the models of
    ``job`` through their flavor, then either ``measure_serving`` on the rows saved at
    ``job["rows"]`` (``job["what"] == "timing"``), or the RSS growth of loading one model
    (``"rss"``): ``rss_load_bytes`` for the first load and one-row predict (the model and
    any library its loading imports, e.g. torch) and ``rss_per_copy_bytes``, the mean
    growth per further copy (the model alone, to the allocator's page granularity)."""
    import numpy as np  # numpy only in the process that measures

    from lab.config import load_config
    from lab.monitoring.resources import rss_bytes
    from lab.plugins import get_plugin_manager

    flavor = model_flavor(get_plugin_manager(load_config(job["root"])), job["flavor"])
    if job["what"] == "timing":
        models = {name: flavor.load(path) for name, path in job["models"].items()}
        return measure_serving(models, np.load(job["rows"]), **job["settings"])
    path, copies = job["path"], job["copies"]
    gc.collect()
    before = rss_bytes()
    model = flavor.load(path)
    row = np.zeros((1, len(model.feature_names)), dtype=np.float32)
    model.predict(row)
    gc.collect()
    first = rss_bytes()
    more = [flavor.load(path) for _ in range(copies)]
    for other in more:
        other.predict(row)
    gc.collect()
    return {"rss_load_bytes": float(first - before), "rss_per_copy_bytes": (rss_bytes() - first) / copies}


_CHILD = "import json, sys\nfrom lab.steps.optimize import measure_child\nprint(json.dumps(measure_child(json.loads(sys.argv[1]))))"


def _in_fresh_process(root: Path, job: dict, threads: int) -> dict:
    """``measure_child(job)`` in a new Python process with ``OMP_NUM_THREADS=threads``, as
    ``lab serve --threads`` sizes torch's pool, so the step's own state does not count."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({**job, "root": str(root)})], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise LabError(f"measuring the models in a fresh process failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(path: Path) -> int:
    """The bytes of every file in a saved model (a folder or a file)."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the step ------------------------------------------------------------------------------


def optimize(root, run_dir, *, model: str | None = None, version: int | None = None, methods=None,
             max_quality_drop: float | None = None, train_start=None, delta_train: int | None = None,
             delta_delay: int | None = None, delta_test: int | None = None) -> dict:
    """The pipeline step: optimize ``model`` (default ``[tool.lab] model_name``) at
    ``version`` (default: its champion) with ``methods`` (default ``[tool.lab.optimize]
    methods``) and write the report to ``data/optimized.json``. Window arguments default
    to ``[tool.lab.train]``'s."""
    with StageContext.open(root, run_dir) as ctx:
        report = optimize_version(ctx, model, version, methods=methods, max_quality_drop=max_quality_drop,
                                  train_start=train_start, delta_train=delta_train, delta_delay=delta_delay,
                                  delta_test=delta_test)
        ctx.write_json(OPTIMIZED, report)
        return report


def optimize_version(ctx: StageContext, model: str | None, version: int | None, *, methods=None,
                     max_quality_drop: float | None = None, train_start=None, delta_train: int | None = None,
                     delta_delay: int | None = None, delta_test: int | None = None) -> dict:
    """Make, gate, measure and register the variants of one version; the report (see the
    module docstring). Raises ``LabError`` when the flavor can do none of ``methods``,
    or there is no training set or no such version."""
    import polars as pl  # data libraries load only in the step that runs

    settings = ctx.config.optimize
    methods = tuple(methods or settings.methods)
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ConfigError(f"unknown optimization(s) {', '.join(unknown)}; use {', '.join(METHOD_NAMES)}")
    max_drop = settings.max_quality_drop if max_quality_drop is None else float(max_quality_drop)
    spec = spec_of(ctx, model)
    name = spec.name
    if version is None:
        champion = ctx.registry.get_alias(name, "champion")
        if champion is None:
            raise LabError(f"model {name!r} has no champion to optimize; name a version (`lab models {name}`)")
        version = champion.version
    parent_version = ctx.registry.get_model_version(name, int(version))
    flavor = model_flavor(ctx.pm, parent_version.flavor)
    supported = flavor.optimizations()
    if not any(m in supported for m in methods):
        raise LabError(f"model flavor {flavor.name!r} implements none of {', '.join(methods)} (it implements "
                       f"{', '.join(supported) or 'neither quantize nor distill'}); a flavor optimizes through "
                       "ModelFlavor.quantize and ModelFlavor.distill")
    metric = settings.metric or spec.metric
    train = ctx.config.train
    win = window(train.train_start if train_start is None else train_start,
                 train.delta_train if delta_train is None else delta_train,
                 train.delta_delay if delta_delay is None else delta_delay,
                 train.delta_test if delta_test is None else delta_test)
    if not ctx.path(TRAINSET).exists():
        raise LabError(f"no training set at {TRAINSET} to evaluate and distill on; build it with "
                       "`lab run features` first")
    frame = pl.read_parquet(ctx.path(TRAINSET))
    try:
        trainset_digest = ctx.dataset_digest(TRAINSET)
    except LabError:
        trainset_digest = None
    train_df, test_df = split(spec, frame, win)
    parent_path = ctx.path(parent_version.artifact_path)
    parent = flavor.load(parent_path)
    features = list(parent.feature_names)
    parent_metrics = score_metrics(spec, parent, test_df)
    if metric not in parent_metrics:
        raise ConfigError(f"[tool.lab.optimize] metric {metric!r} is not one of {sorted(parent_metrics)}")

    try:  # inside a pipeline run the run folder is named after it; from `lab optimize` there is none
        pipeline_run = ctx.registry.get_run(ctx.run_dir.name)["id"]
    except LabError:
        pipeline_run = None
    run_id = ctx.registry.start_run(kind="optimize", seeds={"seed": train.seed}, parent_run_id=pipeline_run,
                                    params={"model": name, "parent_version": parent_version.version,
                                            "methods": list(methods), "metric": metric,
                                            "max_quality_drop": max_drop, "require_ci": settings.require_ci,
                                            "price_per_cpu_hour": settings.price_per_cpu_hour})
    try:
        if trainset_digest:
            ctx.registry.log_data(run_id, "training_set", trainset_digest)
        workdir = ctx.run_dir / "optimize" / f"{name}-v{parent_version.version}"
        variants: list[dict] = []
        loaded: dict[str, Any] = {}
        for method in methods:
            entry: dict[str, Any] = {"method": METHOD_NAMES[method], "name": VARIANT_NAMES[method]}
            variants.append(entry)
            if method not in supported:
                entry.update(status="unsupported",
                             reason=f"flavor {flavor.name!r} does not implement ModelFlavor.{method}")
                continue
            target = workdir / VARIANT_NAMES[method]
            if method == "quantize":
                flavor.save(flavor.quantize(parent), target)
            else:
                entry["fit"] = _distill(flavor, parent, xy(train_df, features, spec.label)[0], settings,
                                        seed=train.seed, workdir=workdir / "distill", target=target)
            variant = flavor.load(target)  # judged as it would be served: saved and loaded back
            loaded[entry["name"]] = variant
            entry["metrics"] = score_metrics(spec, variant, test_df)
            interval = improvement_interval(spec, metric, variant, parent, test_df,
                                            samples=settings.bootstrap_samples, confidence=settings.confidence,
                                            seed=train.seed)
            entry["gate"] = quality_gate(metric, parent_metrics[metric], entry["metrics"][metric], max_drop,
                                         interval=interval, require_ci=settings.require_ci)
            entry["artifact"] = str(target.relative_to(ctx.root))
            entry["status"] = "passed" if entry["gate"]["passed"] else "refused"
        measured = _measure(ctx, flavor.name, {"parent": parent_path, **{
            e["name"]: ctx.path(e["artifact"]) for e in variants if e["name"] in loaded}},
            xy(test_df, features, spec.label)[0], settings, workdir)
        for entry in variants:
            if entry["name"] in measured:
                entry["measurements"] = measured[entry["name"]]
                entry["ratios"] = _ratios(entry["measurements"], measured["parent"])
            if entry.get("status") == "passed":
                entry["version"], entry["registered_before"] = _register(
                    ctx, spec.name, parent_version, flavor.name, entry, run_id, trainset_digest)
                entry["status"] = "registered"
            if "gate" in entry:
                ctx.registry.log_metrics(run_id, {f"{entry['name']}_{metric}": entry["metrics"][metric],
                                                  f"{entry['name']}_drop": entry["gate"]["drop"]})
        ctx.registry.finish_run(run_id, "finished")
    except BaseException:
        ctx.registry.finish_run(run_id, "failed")
        raise
    return {
        "model": name, "run_id": run_id, "metric": metric, "max_quality_drop": max_drop,
        "judged_on": ("upper bound of the %d%% CI" % round(settings.confidence * 100)) if settings.require_ci
        else "point estimate",
        "parent": {"version": parent_version.version, "flavor": flavor.name, "metrics": parent_metrics,
                   "measurements": measured["parent"]},
        "variants": variants, "eval_rows": test_df.height, "train_rows": train_df.height,
        "trainset_digest": trainset_digest,
        "cost_model": {"formula": "CPU-seconds per prediction x 1000 x price_per_cpu_hour / 3600",
                       "price_per_cpu_hour": settings.price_per_cpu_hour, "currency": settings.currency,
                       "cpu": "process CPU time of predict() alone (threads included), no server overhead"},
    }


def _distill(flavor, parent, train_x, settings, *, seed: int, workdir: Path, target: Path) -> dict:
    """Train and save the student on the parent's scores of ``train_x``; every tenth row
    is held out to pick the epoch. Returns what the report keeps of the fit."""
    import numpy as np  # numpy only in the step that runs

    if train_x.shape[0] < 20:
        raise LabError(f"distillation needs at least 20 training rows, got {train_x.shape[0]}; widen the "
                       "training window")
    soft = np.asarray(parent.predict(train_x), dtype=np.float32)
    held = np.zeros(train_x.shape[0], dtype=bool)
    held[::10] = True
    fit = flavor.distill(parent, train_x[~held], soft[~held], train_x[held], soft[held],
                         dict(settings.student_params) or None, seed=seed, workdir=workdir,
                         max_epochs=settings.distill_epochs)
    flavor.save(fit.model, target)
    return {"params": fit.params, "metrics": fit.metrics, "transfer_rows": int((~held).sum()),
            "held_out_rows": int(held.sum())}


def _measure(ctx: StageContext, flavor: str, models: dict[str, Path], rows, settings, workdir: Path) -> dict:
    """Timing of every model in one fresh process (interleaved), RSS of each in its own."""
    import numpy as np  # numpy only in the step that runs

    workdir.mkdir(parents=True, exist_ok=True)
    rows_file = workdir / "measure_rows.npy"
    np.save(rows_file, np.ascontiguousarray(rows, dtype=np.float32))
    timing = _in_fresh_process(ctx.root, {
        "what": "timing", "flavor": flavor, "models": {k: str(p) for k, p in models.items()},
        "rows": str(rows_file), "settings": {
            "batch_rows": settings.batch_rows, "rounds": settings.rounds, "one_row_calls": settings.one_row_calls,
            "batch_calls": settings.batch_calls, "price_per_cpu_hour": settings.price_per_cpu_hour}},
        settings.threads)
    out = {}
    for key, path in models.items():
        out[key] = {**timing[key], "artifact_bytes": folder_bytes(path), "threads": settings.threads}
        if settings.measure_load_rss:
            out[key].update(_in_fresh_process(ctx.root, {"what": "rss", "flavor": flavor, "path": str(path),
                                                         "copies": 8}, settings.threads))
    return out


def _ratios(variant: dict, parent: dict) -> dict[str, float | None]:
    """Variant over parent for the figures where smaller is cheaper."""
    keys = ("one_row_p50_us", "batch_p50_ms", "cost_per_1000_one_row", "cost_per_1000_batch", "artifact_bytes",
            "rss_load_bytes")
    return {k: (variant[k] / parent[k] if parent.get(k) else None) for k in keys if k in variant}


def _register(ctx: StageContext, name: str, parent, flavor: str, entry: dict, run_id: str,
              trainset_digest: str | None) -> tuple[int, bool]:
    """Copy a passed variant to its content-addressed folder and register it, derived from
    ``parent``: ``(version, False)``. A model with the same digest registered before (a
    rerun: both methods are deterministic) is that version, its lineage the first one's:
    ``(version, True)``."""
    staged = ctx.path(entry["artifact"])
    digest = path_digest(staged)
    rel = f"runs/models/{name}/{digest[:16]}"
    target = ctx.path(rel)
    if not target.exists():
        tmp = target.with_name(f".{target.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(staged, tmp)
        tmp.rename(target)
    same = [v for v in ctx.registry.list_model_versions(name) if v.lineage.get("model_digest") == digest]
    if same:
        return same[-1].version, True
    lineage = {
        "derived_from": {"model": name, "version": parent.version,
                         "model_digest": parent.lineage.get("model_digest")},
        "method": entry["method"],
        "gate": entry["gate"],
        "measurements": entry.get("measurements", {}),
        "model_digest": digest,
        "optimize_run_id": run_id,
        "trainset_digest": trainset_digest,
        "feature_views": parent.lineage.get("feature_views", {}),
    }
    if "fit" in entry:
        lineage["distillation"] = entry["fit"]
    registered = ctx.registry.register_model(name, run_id=run_id, flavor=flavor, artifact_path=rel,
                                             metrics=entry["metrics"], lineage=lineage)
    events.emit(ctx.pm, events.MODEL_REGISTERED, model=name, version=registered.version,
                derived_from=parent.version, method=entry["method"])
    return registered.version, False


# -- lab optimize --------------------------------------------------------------------------


def optimize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the registered model's name")
    p.add_argument("version", type=int, help="the version to optimize (see `lab models NAME`)")
    p.add_argument("--method", action="append", choices=list(METHOD_NAMES),
                   help="quantize or distill (repeatable; default: [tool.lab.optimize] methods)")
    p.add_argument("--max-quality-drop", type=float,
                   help="the largest drop of the metric allowed (default: [tool.lab.optimize] max_quality_drop)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")


def optimize_run(args: argparse.Namespace, ctx: "Context") -> int:
    """``lab optimize``: exit 0 when a variant was registered, 3 when every one was refused."""
    run_dir = ctx.config.runs_path / "optimize"
    with StageContext(root=ctx.config.root, run_dir=run_dir) as stage:
        report = optimize_version(stage, args.model, args.version, methods=args.method,
                                  max_quality_drop=args.max_quality_drop)
        stage.write_json(OPTIMIZED, report)
    print(json.dumps(report, indent=2, default=str) if args.json else report_text(report))
    return 0 if any(v["status"] == "registered" for v in report["variants"]) else 3


def report_text(report: dict) -> str:
    """The report as a table: quality, gate, latency, memory and cost per model."""
    parent = report["parent"]
    cost = report["cost_model"]
    lines = [f"{report['model']} v{parent['version']} ({parent['flavor']}): {report['metric']} on "
             f"{report['eval_rows']} evaluation rows; a variant may drop it by at most "
             f"{report['max_quality_drop']:.4f} ({report['judged_on']})",
             f"{'model':<12} {'status':<12} {report['metric'][:10]:>10} {'drop':>8} {'drop CI':>19} "
             f"{'1-row p50':>10} {'batch p50':>10} {'files':>9} {'RSS load':>9} {'cost/1k 1-row':>14}"]

    def row(label: str, status: str, metrics: dict, gate: dict | None, m: dict | None) -> str:
        ci = (gate or {}).get("drop_interval")
        cells = [f"{label:<12}", f"{status:<12}", f"{metrics.get(report['metric'], float('nan')):>10.4f}",
                 f"{gate['drop']:+8.4f}" if gate else f"{'-':>8}",
                 f"{'[%+.4f,%+.4f]' % (ci['low'], ci['high']):>19}" if ci else f"{'-':>19}"]
        if m:
            rss = "%.1f MiB" % (m["rss_load_bytes"] / 2**20) if "rss_load_bytes" in m else "-"
            cells += [f"{'%.1f us' % m['one_row_p50_us']:>10}", f"{'%.2f ms' % m['batch_p50_ms']:>10}",
                      f"{'%.1f KiB' % (m['artifact_bytes'] / 1024):>9}", f"{rss:>9}",
                      f"{m['cost_per_1000_one_row']:>14.2e}"]
        return " ".join(cells)

    lines.append(row(f"parent v{parent['version']}", "-", parent["metrics"], None, parent["measurements"]))
    for v in report["variants"]:
        status = f"{v['status']} v{v['version']}" if v.get("version") else v["status"]
        status = f"{status} (before)" if v.get("registered_before") else status
        lines.append(row(v["name"], status, v.get("metrics", {}), v.get("gate"), v.get("measurements")))
    for v in report["variants"]:
        lines.append(f"  {v['name']}: {v.get('gate', {}).get('reason') or v.get('reason', '')}")
    lines.append(f"cost model: {cost['formula']} ({cost['price_per_cpu_hour']} {cost['currency']} per CPU-hour); "
                 f"{cost['cpu']}")
    return "\n".join(lines)
