"""Start-up of the ``lab`` command against a bare interpreter (goal: ``lab --help`` ≤ 4×).

    .venv/bin/python benchmarks/bench_startup.py [--rounds 15]

Each round runs, in a rotating order, ``python -c pass`` (this interpreter),
``lab --help`` and ``lab plugins`` (the installed console script beside it) in a small
lab made in a temporary folder, and ``lab --help`` in this repository (the fraud lab,
whose plugin answers). ``lab --help`` prints from its cache (``lab.launch``) after the
first call; ``lab --help, no cache`` is the full path (plugin manager, entry points,
parser) that a changed install or project takes once. Interleaving spreads the machine's noise over every command
alike. The figures are medians of wall-clock time and of CPU time (user + system, which
other load on the machine disturbs less), each with its ratio to ``python -c pass``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)

    lab = Path(sys.executable).parent / "lab"
    if not lab.is_file():
        sys.exit(f"no `lab` console script beside {sys.executable}; install the project (make test)")
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_HOME", "LAB_TRACE_HOOKS")}
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp)
        (small / "pyproject.toml").write_text('[project]\nname = "small-lab"\nversion = "0"\n\n[tool.lab]\n')
        env["XDG_CACHE_HOME"] = str(small / "cache")  # the help cache, this run's own
        cold = {**env, "LAB_NO_HELP_CACHE": "1"}
        cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], small, env),
            "lab --help (small lab)": ([str(lab), "--help"], small, env),
            "lab --help, no cache": ([str(lab), "--help"], small, cold),
            "lab plugins (small lab)": ([str(lab), "plugins"], small, env),
            "lab --help (fraud lab)": ([str(lab), "--help"], REPO, env),
        }
        for command, cwd, case_env in cases.values():  # warm the file cache, .pyc files, help cache
            timed(command, cwd, case_env)
        walls: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                wall, cpu = timed(*cases[name])
                walls[name].append(wall)
                cpus[name].append(cpu)

    base_wall, base_cpu = statistics.median(walls["python -c pass"]), statistics.median(cpus["python -c pass"])
    print(f"{args.rounds} interleaved rounds; medians, and their ratio to `python -c pass`")
    print(f"  {'':<26} {'wall':>9} {'':>6}  {'cpu':>9}")
    for name in cases:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"  {name:<26} {wall * 1000:6.1f} ms {wall / base_wall:5.1f}x  {cpu * 1000:6.1f} ms {cpu / base_cpu:5.1f}x")


if __name__ == "__main__":
    main()
