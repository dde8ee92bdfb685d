"""Stages: notebooks that run as pipeline steps, and the executor contract that runs them."""

from __future__ import annotations

import abc
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError

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
    """

    @abc.abstractmethod
    def execute(self, notebook: Path, output_notebook: Path, params: dict[str, Any], cwd: Path) -> None:
        """Run ``notebook`` with ``params`` injected; write the result to ``output_notebook``."""


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
