"""Stages: notebooks that run as pipeline steps, and the executor contract that runs them."""

from __future__ import annotations

import abc
import os
import re
import signal
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.signals import SigtermWatch

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Stage:
    """One pipeline step: a notebook, the files it reads and the files it writes.

    ``inputs`` are paths relative to the project root (a file or a folder) or
    ``alias:MODEL/ALIAS`` (the model version an alias points at). Their digests, the
    notebook's bytes, the parameters and the platform's code form the stage's cache key.
    ``config`` names [tool.lab.<section>] tables (or single ``section.key`` values) whose
    values become parameters.
    ``outputs`` are paths that must exist after the stage ran; their content digests are
    recorded, and when one is missing or no longer holds those bytes the stage runs again.
    """

    name: str
    notebook: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    config: tuple[str, ...] = ()
    description: str = ""


class StageFailed(Exception):
    """A stage's notebook raised; ``summary`` is the error's last line."""

    def __init__(self, stage: str, summary: str, output_notebook: str | None = None):
        super().__init__(f"stage {stage!r} failed: {summary}")
        self.stage = stage
        self.summary = summary
        self.output_notebook = output_notebook


class StageExecutor(abc.ABC):
    """Runs a stage notebook with parameters and writes the executed copy.

    Contract: ``execute`` returns normally when every cell ran, and raises
    ``StageFailed`` otherwise, after writing the executed notebook (with the error) to
    ``output_notebook`` so it can be debugged.

    Preemption: while a stage runs, the runner relays a SIGTERM it receives to its child
    processes (``SigtermRelay``), which reaches a kernel the executor started locally. An
    executor that runs stages elsewhere (another host, a cluster) must stop the remote
    stage itself when the runner gets SIGTERM. A stage whose training was preempted
    writes the marker named by ``lab.training.preemption.PREEMPTION_MARKER_ENV``, which
    the executor must pass on to the stage's environment (a local kernel inherits it).
    """

    @abc.abstractmethod
    def execute(self, notebook: Path, output_notebook: Path, params: dict[str, Any], cwd: Path) -> None:
        """Run ``notebook`` with ``params`` injected; write the result to ``output_notebook``."""


def child_pids(pid: int | None = None) -> list[int]:
    """The direct child processes of ``pid`` (default: this process), e.g. a stage's kernel.

    Linux: ``/proc/PID/task/*/children``; elsewhere psutil when it is installed (Jupyter
    brings it), else none.
    """
    pid = os.getpid() if pid is None else pid
    try:
        found: set[int] = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.update(int(child) for child in fh.read().split())
        return sorted(found)
    except OSError:
        pass
    try:
        import psutil  # only where /proc cannot answer (macOS)
    except ImportError:
        return []
    try:
        return sorted(p.pid for p in psutil.Process(pid).children())
    except psutil.Error:
        return []


class SigtermRelay(SigtermWatch):
    """While a stage runs: a SIGTERM to the runner is noted and relayed to the stage.

    A cluster that preempts a ``lab run`` sends it SIGTERM, but papermill starts the
    stage's kernel in a session of its own, so the signal (even one sent to the run's
    process group) never reaches the training in it. The relay sends SIGTERM on to every
    child process, to its whole process group when it leads one (the kernel and what the
    kernel started); the training checkpoints and stops (``lab.training.preemption``), and
    the runner, seeing ``requested``, stops after that stage. Each further SIGTERM is
    relayed again. Installed only from the main thread (``installed``); the handler in
    place before is put back on exit.
    """

    def __init__(self) -> None:
        super().__init__(on_signal=_relay_to_children)


def _relay_to_children() -> None:
    for child in child_pids():
        try:
            if os.getpgid(child) == child:
                os.killpg(child, signal.SIGTERM)
            else:
                os.kill(child, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # it ended meanwhile


def load_stages(path: Path) -> list[Stage]:
    """Read the stage list from a ``pipeline.toml`` (``[[stage]]`` tables, in run order)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no pipeline file at {path}; create one with [[stage]] tables") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    stages = []
    seen = set()
    allowed = {"name", "notebook", "inputs", "outputs", "params", "config", "description"}
    for i, raw in enumerate(data.get("stage", [])):
        unknown = set(raw) - allowed
        if unknown:
            raise ConfigError(f"{path}: stage #{i + 1} has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        name = raw.get("name", "")
        if not _NAME.match(name):
            raise ConfigError(f"{path}: stage #{i + 1} needs a lower-case name, got {name!r}")
        if name in seen:
            raise ConfigError(f"{path}: stage {name!r} is defined twice")
        seen.add(name)
        if not raw.get("notebook"):
            raise ConfigError(f"{path}: stage {name!r} needs a notebook")
        stages.append(Stage(
            name=name,
            notebook=raw["notebook"],
            inputs=tuple(raw.get("inputs", ())),
            outputs=tuple(raw.get("outputs", ())),
            params=dict(raw.get("params", {})),
            config=tuple(raw.get("config", ())),
            description=raw.get("description", ""),
        ))
    if not stages:
        raise ConfigError(f"{path} defines no [[stage]]")
    return stages
