"""Time the fraud plugin's simulator at full default size: fast (vectorized) against exact mode.

Run from the project root:  .venv/bin/python benchmarks/bench_simulator.py [--runs 3]
Prints wall-clock seconds (median of ``--runs`` for fast mode, one exact run by default)
and, because this machine's cores are shared, the process CPU seconds as well.
"""

from __future__ import annotations

import argparse
import statistics
import time

from plugins.fraud.simulator import simulate


def timed(**kwargs) -> tuple[float, float, int]:
    """Wall and CPU seconds of one ``simulate`` call, and the rows it made."""
    wall, cpu = time.perf_counter(), time.process_time()
    df = simulate(**kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, df.height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fast-mode runs (median is shown)")
    parser.add_argument("--exact-runs", type=int, default=1, help="exact-mode runs (median is shown)")
    args = parser.parse_args()
    simulate(n_customers=20, n_terminals=50, nb_days=3)  # imports and first-call costs
    fast = [timed() for _ in range(args.runs)]
    exact = [timed(exact=True) for _ in range(args.exact_runs)]
    f_wall, f_cpu = statistics.median(r[0] for r in fast), statistics.median(r[1] for r in fast)
    e_wall, e_cpu = statistics.median(r[0] for r in exact), statistics.median(r[1] for r in exact)
    print(f"fast {f_wall:5.2f} s   exact {e_wall:5.1f} s   speed-up {e_wall / f_wall:4.1f}x   (wall clock)")
    print(f"fast {f_cpu:5.2f} s   exact {e_cpu:5.1f} s   speed-up {e_cpu / f_cpu:4.1f}x   (CPU time)")
    print(f"rows: fast {fast[0][2]:,}   exact {exact[0][2]:,}")


if __name__ == "__main__":
    main()
