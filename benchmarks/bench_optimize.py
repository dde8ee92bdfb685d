"""Quantized and distilled models beside the original: ``lab optimize`` on two parents of the
tiny fraud lab, the demo's size (15-64-32-1, the flavor's default) and a wide one
(15-1024-1024-1), trained on a synthetic training set with a nonlinear, noisy label.

    .venv/bin/python benchmarks/bench_optimize.py [--rows-per-day 2000] [--rounds 5] [--wide 1024]

For each parent the step makes the int8 dynamic quantization and the distilled student,
gates each on the evaluation set (average precision, its drop with a paired-bootstrap
95 % interval), and measures parent and variants side by side in one fresh process with
one torch thread (as ``lab serve --threads 1``): interleaved rounds, every model once per
round in a rotated order, medians (p50) of one-row and of 1,000-row predicts, CPU time
per prediction and cost per 1,000 predictions, the saved folder's bytes and the RSS
growth of loading the model in a fresh process. Prints the step's table per parent, then
the ratios to the parent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.config import load_config  # noqa: E402
from lab.pipeline.context import StageContext  # noqa: E402
from lab.plugins import get_plugin_manager, model_flavor, model_spec  # noqa: E402
from lab.steps._common import split, window, xy  # noqa: E402
from lab.steps.optimize import optimize_version, report_text  # noqa: E402
from plugins.fraud.features import FEATURE_COLUMNS  # noqa: E402
from plugins.fraud.testing import PYPROJECT, build_tiny_lab  # noqa: E402

DAYS = 21  # 7 training days, 7 of delay, 7 of test


def transactions(rows_per_day: int, seed: int = 0) -> pl.DataFrame:
    """A training-set file the fraud spec can split: 15 features, a label drawn from a
    nonlinear logit (an interaction and a threshold), one card per transaction."""
    rng = np.random.default_rng(seed)
    n = DAYS * rows_per_day
    x = rng.normal(size=(n, len(FEATURE_COLUMNS))).astype(np.float32)
    x[:, 0] = rng.gamma(2.0, 30.0, size=n)
    logit = 0.05 * (x[:, 0] - 90) + 2.4 * x[:, -1] + 1.8 * x[:, 3] * x[:, 5] + 3.0 * (x[:, 7] > 1.0) - 3.2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    i = np.arange(n)
    start = dt.datetime(2018, 7, 1)
    step = 86400 // rows_per_day
    return pl.DataFrame({
        "TX_DATETIME": [start + dt.timedelta(days=int(k // rows_per_day), seconds=int(k % rows_per_day) * step)
                        for k in i],
        "TX_TIME_DAYS": i // rows_per_day, "CUSTOMER_ID": i,
        **{name: x[:, j] for j, name in enumerate(FEATURE_COLUMNS)}, "TX_FRAUD": y})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wide", type=int, default=1024, help="width of the wide parent's two hidden layers")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-optimize-")) / "lab"
    build_tiny_lab(root)
    (root / "pyproject.toml").write_text(
        PYPROJECT + '\n[tool.lab.train]\ntrain_start = "2018-07-01"\n\n[tool.lab.optimize]\n'
        f"max_quality_drop = 0.01\nrounds = {args.rounds}\none_row_calls = 500\nbatch_calls = 5\n"
        "batch_rows = 1000\n")
    frame = transactions(args.rows_per_day)
    with StageContext(root=root, run_dir=root / "runs" / "bench") as ctx:
        ctx.write_dataset("data/trainset.parquet", frame, digest="bench-optimize-trainset")
    config = load_config(root)
    pm = get_plugin_manager(config)
    spec = model_spec(pm, config)
    flavor = model_flavor(pm, "lightning_mlp")
    train = config.train
    train_df, _ = split(spec, frame, window(train.train_start, train.delta_train, train.delta_delay, train.delta_test))
    x, y = xy(train_df, list(FEATURE_COLUMNS), spec.label)
    cut = x.shape[0] * 6 // 7  # the last training day validates the parent
    print(f"{frame.height} transactions, {x.shape[0]} training rows ({y.mean():.1%} positive); "
          f"{args.rounds} interleaved rounds, 1 torch thread", flush=True)
    summary = []
    for label, hidden in (("demo-size", [64, 32]), ("wide", [args.wide, args.wide])):
        started = time.perf_counter()
        fit = flavor.fit(x[:cut], y[:cut], x[cut:], y[cut:], list(FEATURE_COLUMNS),
                         {"hidden_sizes": hidden, "lr": 3e-3, "batch_size": 512}, seed=0,
                         workdir=root / "runs" / f"train-{label}", max_epochs=args.epochs)
        artifact = f"runs/models/bench-{label}"
        flavor.save(fit.model, root / artifact)
        with StageContext(root=root, run_dir=root / "runs" / "bench") as ctx:
            parent = ctx.registry.register_model("fraud", run_id=None, flavor=flavor.name, artifact_path=artifact,
                                                 metrics=fit.metrics, lineage={"built_by": "bench_optimize"})
        trained = time.perf_counter() - started
        started = time.perf_counter()
        with StageContext(root=root, run_dir=root / "runs" / f"optimize-{label}") as ctx:
            report = optimize_version(ctx, "fraud", parent.version)
        print(f"\n== {label} parent 15-{'-'.join(map(str, hidden))}-1 (trained in {trained:.0f} s; "
              f"optimized and measured in {time.perf_counter() - started:.0f} s)")
        print(report_text(report))
        for name, m in [("parent", report["parent"]["measurements"]),
                        *[(v["name"], v["measurements"]) for v in report["variants"]]]:
            print(f"  memory {name:<10} files {m['artifact_bytes'] / 1024:8.1f} KiB, RSS at load "
                  f"{m['rss_load_bytes'] / 2**20:6.1f} MiB, RSS per further copy {m['rss_per_copy_bytes'] / 1024:7.1f} KiB; "
                  f"CPU per prediction {m['cpu_us_per_prediction_one_row']:.1f} us one row, "
                  f"{m['cpu_us_per_prediction_batch']:.2f} us in a batch", flush=True)
        summary.append((label, report))
    print("\nratios to the parent (variant / parent; quality: the drop in average precision, 95% CI)")
    print(f"{'parent':<10} {'variant':<10} {'AP drop':>8} {'CI':>19} {'1-row p50':>10} {'batch p50':>10} "
          f"{'files':>6} {'RSS load':>9} {'cost/1k 1-row':>14} {'cost/1k batch':>14}")
    for label, report in summary:
        for v in report["variants"]:
            r, g = v["ratios"], v["gate"]
            ci = g["drop_interval"]
            cells = [ratio(r.get(k), w) for k, w in (("one_row_p50_us", 10), ("batch_p50_ms", 10),
                                                         ("artifact_bytes", 6), ("rss_load_bytes", 9),
                                                         ("cost_per_1000_one_row", 14), ("cost_per_1000_batch", 14))]
            print(f"{label:<10} {v['name']:<10} {g['drop']:+8.4f} {'[%+.4f,%+.4f]' % (ci['low'], ci['high']):>19} "
                  + " ".join(cells))


def ratio(value: float | None, width: int) -> str:
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


if __name__ == "__main__":
    main()
