"""Where a run's code and environment came from: git commit, lock-file hash, versions.

Read once when a run starts, so lineage can answer "which code and which dependencies
made this model" without trusting anyone to write it down.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

LOCK_FILES = (
    "uv.lock",
    "poetry.lock",
    "pdm.lock",
    "requirements.lock",
    "requirements-lock.txt",
    "requirements.txt",
)
"""Lock files in order of preference; ``pyproject.toml`` is the fallback when none exists."""

PACKAGES = (
    "lab", "numpy", "pandas", "polars", "pyarrow", "duckdb", "torch",
    "pytorch-lightning", "optuna", "evidently", "litestar", "papermill", "pluggy",
    "scikit-learn",
)
"""Distributions whose versions every run records (those installed)."""


@dataclass(frozen=True)
class Provenance:
    git_commit: str | None
    git_dirty: bool | None
    lock_file: str | None
    lock_hash: str | None
    env: dict = field(default_factory=dict)


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):  # git missing, or hung
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the repository holding ``root``; ``(None, None)`` outside git.

    Dirty means tracked files differ from the commit or untracked, unignored files exist:
    either way the commit alone does not reproduce the code.
    """
    if not root.is_dir():
        return None, None
    head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    if not head:  # not a repository, or one with no commit yet
        return None, None
    status = _git(root, "status", "--porcelain")
    return head.strip(), (bool(status.strip()) if status is not None else None)


def lock_hash(root: Path) -> tuple[str | None, str | None]:
    """``(file name, sha256 hex)`` of the project's lock file, else of pyproject.toml."""
    for name in (*LOCK_FILES, "pyproject.toml"):
        path = root / name
        if path.is_file():
            return name, hashlib.sha256(path.read_bytes()).hexdigest()
    return None, None


def environment() -> dict:
    """Python version and platform, and the versions of the installed key packages."""
    packages = {}
    for dist in PACKAGES:
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "packages": packages,
    }


def provenance(root: Path) -> Provenance:
    commit, dirty = git_state(root)
    lock_file, digest = lock_hash(root)
    return Provenance(commit, dirty, lock_file, digest, environment())
