"""Stages and sweep workers on a Ray cluster, for labs with a ``[tool.lab.ray]`` table.

    [tool.lab.ray]
    address = "auto"          # a cluster started with `ray start --head`; "HOST:PORT"; "local"
    # num_cpus = 1            # per stage task; GPUs come from the stage's devices
    # sweep_workers = 0       # Ray tasks joining the train step's sweep

Every other lab keeps the built-in executor (papermill on the local kernel). Ray is an
optional dependency (``pip install 'lab[ray]'``): this module never imports it, and a lab
that enables the plugin without Ray installed gets an error naming the install when a
stage is about to run. docs/ray.md has the cluster recipe and what is tested.
"""

from __future__ import annotations

from lab import hookimpl
from lab.cli import Command

__version__ = "0.1.0"

_COMMANDS = "plugins.ray_cluster.commands"


@hookimpl
def lab_stage_executor(config):
    """``RayExecutor`` for labs with ``[tool.lab.ray]`` (its settings checked now); None otherwise."""
    table = config.section("ray")
    if table is None:
        return None
    from plugins.ray_cluster.executor import RayExecutor  # the plugin's modules load for Ray labs only
    from plugins.ray_cluster.settings import RaySettings

    return RayExecutor(RaySettings.from_table(table), config.root)


@hookimpl(wrapper=True)
def lab_execute_stage(stage, executor):
    """Tell a ``RayExecutor`` which stage it runs (its name picks ``[tool.lab.ray.stages]``
    resources); any other executor passes through untouched."""
    scope = getattr(executor, "ray_stage_scope", None)
    if scope is None:
        return (yield)
    with scope(stage):
        return (yield)


@hookimpl
def lab_cli_commands():
    """``lab ray status`` and ``lab ray sweep``; the module loads only when one runs."""
    return [
        Command("ray status", "the Ray cluster of [tool.lab.ray]: its nodes, their CPUs and GPUs, and whether each "
                "sees this lab's folder", f"{_COMMANDS}:status_args", f"{_COMMANDS}:status_run"),
        Command("ray sweep", "join a running sweep with N sweep workers as Ray tasks (lab sweep worker on the "
                "cluster)", f"{_COMMANDS}:sweep_args", f"{_COMMANDS}:sweep_run"),
    ]
