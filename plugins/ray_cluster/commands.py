"""``lab ray status`` and ``lab ray sweep``: the cluster as this lab sees it, and sweep
workers started on it by hand (the executor starts them by itself with ``sweep_workers``)."""

from __future__ import annotations

import argparse
import json
import socket

from lab.errors import ConfigError
from lab.steps.sweep_workers import find_workdir

from plugins.ray_cluster import cluster
from plugins.ray_cluster.settings import RaySettings
from plugins.ray_cluster.sweeps import collect, start_sweep_workers


def _settings(ctx) -> RaySettings:
    table = ctx.config.section("ray")
    if table is None:
        raise ConfigError("this lab has no [tool.lab.ray] table: add one (address = \"auto\" for a cluster started "
                          "with `ray start --head`) to use Ray; docs/ray.md")
    return RaySettings.from_table(table)


def _sees(path: str) -> dict:
    """Run on one node: whether it sees ``path`` (the lab's pyproject.toml)."""
    import os

    return {"host": socket.gethostname(), "sees": os.path.exists(path)}


def status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def status_run(args: argparse.Namespace, ctx) -> int:
    """Each live node, its resources and whether it sees this lab's folder (checked by a tiny
    task pinned to that node): stages and sweep workers need the folder on every node."""
    ray = cluster.connect(_settings(ctx))
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(_sees)
    target = str((ctx.config.root / "pyproject.toml").resolve())
    rows = cluster.nodes(ray)
    refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(row["id"], soft=False))
            .remote(target) for row in rows]
    for row, ref in zip(rows, refs):
        row["sees_lab"] = ray.get(ref, timeout=60)["sees"]
    if args.json:
        print(json.dumps({"lab": str(ctx.config.root), "nodes": rows}, indent=2))
    else:
        print(f"Ray cluster: {len(rows)} node(s); lab folder {ctx.config.root}")
        for row in rows:
            custom = "".join(f" {v:g} {k}," for k, v in sorted(row["custom"].items()))
            print(f"  {row['host']:<24} {row['address']:<16} {row['cpus']:>5g} CPUs {row['gpus']:>3g} GPUs "
                  f"{row['memory_gb']:>7g} GiB,{custom} "
                  f"{'sees the lab' if row['sees_lab'] else 'DOES NOT SEE THE LAB FOLDER'}")
    return 0 if all(row["sees_lab"] for row in rows) else 1


def sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="the run folder, its train/ folder, or a run id (default: the newest run "
                                          "with a sweep)")
    p.add_argument("--workers", type=int, default=None,
                   help="sweep workers to start as Ray tasks (default: [tool.lab.ray] sweep_workers, else 1)")


def sweep_run(args: argparse.Namespace, ctx) -> int:
    """Start N Ray sweep workers on a running sweep and wait until its study is complete;
    Ctrl+C cancels them (their running trials fail and are retried by the study)."""
    settings = _settings(ctx)
    count = args.workers if args.workers is not None else (settings.sweep_workers or 1)
    if count < 1:
        raise ConfigError(f"--workers must be 1 or more, got {count}")
    workdir = find_workdir(ctx.config.runs_path, args.run)
    ray = cluster.connect(settings)
    refs = start_sweep_workers(ray, settings, ctx.config.root, workdir, count)
    print(f"{count} Ray sweep worker(s) on {workdir}", flush=True)
    try:
        ray.wait(refs, num_returns=len(refs))
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=False)
        collect(ray, refs, timeout_s=30.0)
        raise
    results = collect(ray, refs, timeout_s=0.0)
    for r in results:
        line = f"  {r.get('node', '?')}:{r.get('pid', '?')} {r['status']}"
        line += f", trials {r['trials']}" if "trials" in r else f": {r.get('error', '')}"
        print(line)
    return 0 if all(r["status"] == "complete" for r in results) else 1
