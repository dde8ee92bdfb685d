"""``[tool.lab.ray]``: where the Ray cluster is and what each stage and sweep worker asks of it.

Read by the plugin only (``config.section("ray")``); the core owns no ``ray`` table. Every
key is optional; a lab turns the plugin on by having the table at all::

    [tool.lab.ray]
    address = "auto"        # see RaySettings.address
    # num_cpus = 1          # CPUs a stage's task asks for
    # sweep_workers = 0     # Ray sweep workers started beside a stage that starts a sweep
    [tool.lab.ray.stages]   # per stage, over what the stage's devices ask
    # train = { num_cpus = 4, num_gpus = 1, resources = { registry = 1 } }
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from lab.config import build_section
from lab.errors import ConfigError

WHERE = "tool.lab.ray"
_RESOURCE_KEYS = ("num_cpus", "num_gpus", "resources")


@dataclass(frozen=True)
class Resources:
    """What one Ray task asks for: logical CPUs and GPUs (fractions allowed, as in Ray), and
    custom resources a node was started with (``ray start --resources='{"registry": 1}'``),
    e.g. to keep a stage on the machine that holds ``registry.db``."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RaySettings:
    """The ``[tool.lab.ray]`` table, checked (unknown keys and wrong types are a ConfigError)."""

    address: str = "auto"
    """``"auto"``: the cluster ``ray start --head`` started on this machine; ``"HOST:PORT"``:
    the head node's GCS address (``ray start --address HOST:PORT`` joins a node to it);
    ``"local"``: a throwaway single-machine Ray started inside ``lab run`` and ended with
    it. A process already connected to Ray (``ray.init`` in a test or a notebook) keeps
    its connection whatever this says."""
    num_cpus: float = 1.0
    """CPUs a stage's task asks for (more when the stage trains on several CPU devices)."""
    num_gpus: float = 0.0
    """GPUs every stage's task asks for when its own devices ask none (0: only stages whose
    ``accelerator`` is gpu get GPUs, as many as their ``devices``)."""
    sweep_workers: int = 0
    """Sweep workers (``lab sweep worker``'s function) started as Ray tasks as soon as a
    stage writes a sweep manifest (the train step's ``train/sweep.json``); 0: none."""
    worker_num_cpus: float = 1.0
    """CPUs each Ray sweep worker asks for."""
    worker_num_gpus: float = -1.0
    """GPUs each Ray sweep worker asks for; -1: what the sweep's device settings ask (the
    ``[tool.lab.training]`` of the train step: ``devices`` GPUs when the accelerator is gpu)."""
    grace_s: float = 60.0
    """After SIGTERM or Ctrl+C: seconds a cancelled stage's kernel has to checkpoint and
    stop (it gets SIGTERM) before its Ray worker is killed."""
    kernel: str = "python3"
    """The Jupyter kernel the worker runs the notebook in (installed on every node)."""
    env_vars: tuple[str, ...] = ()
    """Names of environment variables passed from ``lab run`` to the stage and the sweep
    workers, besides every ``LAB_*`` one (e.g. a sweep storage URL's password)."""
    log_to_driver: bool = False
    """Print the Ray workers' output in ``lab run``'s terminal (Ray's session logs keep it
    either way); only when this process connects."""
    local_num_cpus: int = 0
    """``address = "local"`` only: CPUs of the throwaway Ray (0: the machine's)."""
    stages: Mapping[str, Resources] = field(default_factory=dict)
    """``[tool.lab.ray.stages]``: a stage's own ``{num_cpus, num_gpus, resources}``, over the rest."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> "RaySettings":
        values = dict(table or {})
        stages = values.pop("stages", {})
        settings = build_section(cls, values, WHERE)
        if not isinstance(stages, dict):
            raise ConfigError(f"[{WHERE}] stages must be a table of stage = {{ num_cpus = N, num_gpus = N }}, "
                              f"got {stages!r}")
        checked = {name: _resources(f"{WHERE}.stages.{name}", spec) for name, spec in stages.items()}
        _check_counts(settings)
        return dataclasses.replace(settings, stages=checked)


def _resources(where: str, spec: Any) -> Resources:
    if not isinstance(spec, dict):
        raise ConfigError(f"[{where}] must be a table such as {{ num_cpus = 2, num_gpus = 1 }}, got {spec!r}")
    unknown = sorted(set(spec) - set(_RESOURCE_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in [{where}]; known keys are: "
                          f"{', '.join(_RESOURCE_KEYS)}")
    custom = spec.get("resources", {})
    if not isinstance(custom, dict):
        raise ConfigError(f"[{where}] resources must be a table of custom Ray resources such as "
                          f"{{ registry = 1 }}, got {custom!r}")
    numbers = {k: v for k, v in spec.items() if k != "resources"}
    for key, value in [*numbers.items(), *((f"resources.{k}", v) for k, v in custom.items())]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ConfigError(f"[{where}] {key} must be a number of 0 or more, got {value!r}")
    base = Resources()
    return Resources(num_cpus=float(spec.get("num_cpus", base.num_cpus)),
                     num_gpus=float(spec.get("num_gpus", base.num_gpus)),
                     custom={k: float(v) for k, v in custom.items()})


def _check_counts(settings: RaySettings) -> None:
    for key in ("num_cpus", "num_gpus", "worker_num_cpus", "grace_s"):
        if not 0 <= getattr(settings, key) < math.inf:
            raise ConfigError(f"[{WHERE}] {key} must be 0 or more, got {getattr(settings, key)!r}")
    if settings.worker_num_gpus != -1 and not 0 <= settings.worker_num_gpus < math.inf:
        raise ConfigError(f"[{WHERE}] worker_num_gpus must be 0 or more (or -1: what the sweep's devices ask), "
                          f"got {settings.worker_num_gpus!r}")
    if settings.sweep_workers < 0:
        raise ConfigError(f"[{WHERE}] sweep_workers must be 0 or more (Ray tasks joining a stage's sweep), "
                          f"got {settings.sweep_workers}")
    if settings.local_num_cpus < 0:
        raise ConfigError(f"[{WHERE}] local_num_cpus must be 0 (the machine's) or more, got {settings.local_num_cpus}")
    if not settings.address.strip():
        raise ConfigError(f'[{WHERE}] address is empty; write "auto", "HOST:PORT" (the head node) or "local"')


def device_gpus(devices: Mapping[str, Any] | None, *, where: str) -> float:
    """GPUs a ``[tool.lab.training]``-style placement asks for: ``devices`` when the
    accelerator is gpu/cuda, else 0. A Ray task is one machine, so ``num_nodes`` > 1 is a
    ConfigError, and so is a GPU count Ray cannot know (-1, "auto")."""
    devices = devices or {}
    accelerator = str(devices.get("accelerator") or "cpu").lower()
    nodes = devices.get("num_nodes") or 1
    if isinstance(nodes, int) and nodes > 1:
        raise ConfigError(f"{where}: num_nodes = {nodes}, but a Ray task runs on one machine; train on several "
                          "machines with torchrun or srun (docs/training.md), or set num_nodes = 1")
    if accelerator not in ("gpu", "cuda"):
        return 0.0
    count = devices.get("devices", 1)
    if isinstance(count, list):
        return float(len(count))
    if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
        return float(count)
    raise ConfigError(f"{where}: devices = {count!r} on accelerator {accelerator!r} does not say how many GPUs "
                      "the Ray task needs; write a count (devices = 2) or give the stage its own "
                      "[tool.lab.ray.stages] entry with num_gpus")


def device_cpus(devices: Mapping[str, Any] | None) -> float:
    """CPU processes a placement trains on (DDP on CPU: ``devices`` processes), else 0."""
    devices = devices or {}
    if str(devices.get("accelerator") or "cpu").lower() != "cpu":
        return 0.0
    count = devices.get("devices", 1)
    return float(count) if isinstance(count, int) and not isinstance(count, bool) and count > 1 else 0.0


def stage_resources(settings: RaySettings, stage: str, params: Mapping[str, Any]) -> Resources:
    """What stage ``stage``'s task asks for: its ``[tool.lab.ray.stages]`` entry when it has
    one; else ``num_cpus`` (at least the CPU processes its devices train on) and the GPUs
    its ``accelerator``/``devices`` parameters ask (the train stage gets them from
    ``[tool.lab.training]``), or ``num_gpus`` when they ask none."""
    if stage in settings.stages:
        return settings.stages[stage]
    where = f"stage {stage!r} on Ray"
    gpus = device_gpus(params, where=where)
    cpus = max(settings.num_cpus, device_cpus(params))
    return Resources(num_cpus=cpus, num_gpus=gpus or settings.num_gpus)


def worker_resources(settings: RaySettings, devices: Mapping[str, Any] | None) -> Resources:
    """What each Ray sweep worker asks for: ``worker_num_cpus`` (at least its CPU devices)
    and ``worker_num_gpus``, or (-1) the GPUs the sweep's device settings ask."""
    gpus = (device_gpus(devices, where="the sweep's [tool.lab.training]") if settings.worker_num_gpus == -1
            else settings.worker_num_gpus)
    return Resources(num_cpus=max(settings.worker_num_cpus, device_cpus(devices)), num_gpus=gpus)
