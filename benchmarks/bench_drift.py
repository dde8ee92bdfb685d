"""Native drift (``lab.monitoring.drift.compare``) against Evidently's data-drift preset on
the same frames, same statistic, same run.

    .venv/bin/python benchmarks/bench_drift.py [--rows 1000000] [--columns 20] [--repeats 1]

Both sides judge every numeric column by the first Wasserstein distance normed by the
reference's standard deviation, flagged at 0.1: Evidently with ``method="wasserstein",
threshold=0.1`` (the statistic ``plugins/evidently_drift`` records), natively with the
default ``[tool.lab.drift]`` (a column also needs its KS test's BH q-value below 0.05,
which at these sizes every shift of that size has). Columns are log-normal, normal,
exponential, Poisson and 0/1; a few are shifted by 0.3 or 0.15 standard deviations
(flagged) and one by 0.03 (significant at a million rows, too small to flag).

Timed, interleaved per repeat, medians reported: Evidently's ``Report.run`` and its
scores (pandas frames made beforehand, untimed); native ``compare`` of the two polars
frames (exact); and, for repeated checks, ``compare`` of a saved reference sketch against
the current frame (building the sketch is timed once, apart). Printed: the times, the
speed-up (goal: at least 50x), whether both flag the same columns (goal: identical) and
the largest difference between the two Wasserstein figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from lab.monitoring.drift import ReferenceSketch, compare  # noqa: E402
from plugins.evidently_drift import drift_scores  # noqa: E402

SHIFTS = (0.3, 0.15, 0.03)  # standard deviations, on the first columns; the rest are unchanged


def frames(rows: int, columns: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reference and current frames of ``columns`` numeric columns; column i of the
    current window is shifted by ``SHIFTS[i]`` of its standard deviation."""
    rng = np.random.default_rng(seed)
    makers = (
        lambda n: rng.lognormal(3.5, 0.8, n),
        lambda n: rng.normal(0.0, 1.0, n),
        lambda n: rng.exponential(2.0, n),
        lambda n: rng.poisson(14, n).astype(np.float64),
        lambda n: (rng.random(n) < 0.3).astype(np.float64),
    )
    ref, cur = {}, {}
    for i in range(columns):
        make = makers[i % len(makers)]
        name = f"x{i:02d}"
        ref[name] = make(rows)
        shift = SHIFTS[i] if i < len(SHIFTS) else 0.0
        cur[name] = make(rows) + shift * ref[name].std()
    return pl.DataFrame(ref), pl.DataFrame(cur)


def evidently_drift(reference, current, columns: list[str]) -> dict[str, dict]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    report = Report([DataDriftPreset(columns=columns, method="wasserstein", threshold=0.1)])
    return drift_scores(report.run(current_data=current, reference_data=reference).dict())


def timed(fn, cpu: list | None = None):
    """``(wall seconds, result)``; the process's CPU seconds are appended to ``cpu``."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    if cpu is not None:
        cpu.append(time.process_time() - c0)
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of each window")
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (Evidently takes ~100 s at 1M)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ref, cur = frames(args.rows, args.columns, args.seed)
    columns = ref.columns
    ref_pd, cur_pd = ref.to_pandas(), cur.to_pandas()
    compare(ref.head(1000), cur.head(1000))  # imports and caches warm, as in a long-lived process
    t_build, sketch = timed(lambda: ReferenceSketch.from_frame(ref))
    times: dict[str, list[float]] = {"evidently": [], "native": [], "sketch": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(args.repeats):
        t, evidently = timed(lambda: evidently_drift(ref_pd, cur_pd, columns), cpu["evidently"])
        times["evidently"].append(t)
        t, native = timed(lambda: compare(ref, cur), cpu["native"])
        times["native"].append(t)
        t, sketched = timed(lambda: compare(sketch, cur), cpu["sketch"])
        times["sketch"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    flagged_ev = sorted(c for c, s in evidently.items() if s["drifted"])
    gap = max(abs(native.columns[c].wasserstein - evidently[c]["score"]) for c in columns)

    import evidently as ev

    print(f"rows {args.rows:,} x {args.columns} numeric columns per window, median of {args.repeats}, "
          f"evidently {ev.__version__}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.1f} at the end (other processes slow every figure)")
    print(f"{'':45s}   wall (s)   CPU (s, all threads)")
    print(f"evidently DataDriftPreset (wasserstein, 0.1) : {med['evidently']:9.3f}  {med_cpu['evidently']:9.3f}")
    print(f"native compare, two frames (exact)           : {med['native']:9.3f}  {med_cpu['native']:9.3f}")
    print(f"native compare, sketch vs frame              : {med['sketch']:9.3f}  {med_cpu['sketch']:9.3f}"
          f"  (sketch built once in {t_build:.3f} s)")
    print(f"speed-up, exact native / evidently           : {med['evidently'] / med['native']:9.1f}x "
          f"{med_cpu['evidently'] / med_cpu['native']:8.1f}x  (goal >= 50x)")
    print(f"speed-up, sketch check / evidently           : {med['evidently'] / med['sketch']:9.1f}x "
          f"{med_cpu['evidently'] / med_cpu['sketch']:8.1f}x")
    print(f"flagged by evidently : {', '.join(flagged_ev) or 'none'}")
    print(f"flagged natively     : {', '.join(native.flagged) or 'none'}"
          f"  (sketch: {', '.join(sketched.flagged) or 'none'})")
    print(f"same columns flagged : {native.flagged == flagged_ev and sketched.flagged == flagged_ev}")
    print(f"largest |wasserstein native - evidently| : {gap:.2e}")
    trivial = [c for c in columns if native.columns[c].reason.startswith("significant but trivial")]
    print(f"significant but trivial (not flagged)    : {', '.join(trivial) or 'none'}")


if __name__ == "__main__":
    main()
