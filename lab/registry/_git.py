"""Where a run's code and environment came from: git commit, lock-file hash, versions,
and the hardware it ran on.

Read once when a run starts, so lineage can answer "which code and which dependencies
made this model, on which machine" without trusting anyone to write it down.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
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


NONE = "none"
"""What ``hardware()`` says for a GPU driver or CUDA version it did not find."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model name", "cpu model") and value.strip():
                return value.strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _nvidia_smi() -> tuple[list[dict], str | None, str | None]:
    """``(gpus, driver version, CUDA version)`` from nvidia-smi; ``([], None, None)`` without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], None, None
    try:
        query = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,driver_version,uuid", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=False)
        banner = subprocess.run([exe], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # hung or broken driver: say none rather than fail the run
        return [], None, None
    gpus, driver = [], None
    for line in query.stdout.splitlines() if query.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        index, name, memory_mib, driver, uuid = parts[:5]
        gpus.append({"index": int(index) if index.isdigit() else index, "name": name,
                     "memory_bytes": int(memory_mib) * 2**20 if memory_mib.isdigit() else None, "uuid": uuid})
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner.stdout or "")
    return gpus, driver, cuda.group(1) if cuda else None


def _torch_gpus(torch) -> list[dict]:
    """GPUs as torch sees them, asked only when torch has already initialized CUDA here:
    a first CUDA call from this process could break a later fork (ddp_fork)."""
    try:
        if not torch.cuda.is_initialized():
            return []
        out = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            out.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory),
                        "uuid": str(getattr(props, "uuid", "")) or None})
        return out
    except Exception:  # noqa: BLE001 — provenance never fails a run; a broken CUDA setup is recorded as none
        return []


@functools.lru_cache(maxsize=1)
def _machine() -> tuple[str, int | None, int | None, int | None, tuple, str | None, str | None]:
    """What cannot change while a process runs (nvidia-smi costs tens of milliseconds)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count()
    gpus, driver, cuda = _nvidia_smi()
    return _cpu_model(), os.cpu_count(), usable, _memory_bytes(), tuple(gpus), driver, cuda


def hardware() -> dict:
    """The machine this process runs on, as a run records it.

    ``cpu_model``, ``cpu_count`` (logical CPUs), ``cpu_usable`` (those this process may
    run on), ``memory_bytes`` (physical memory); ``gpus``: one ``{index, name,
    memory_bytes, uuid}`` per GPU, from nvidia-smi when it is on PATH, else from torch
    when torch is already imported and has initialized CUDA (torch is never imported for
    this); ``gpu_driver`` and ``cuda`` (the driver's CUDA version, from nvidia-smi),
    ``torch_cuda`` (the CUDA torch was built with, when torch is imported) and
    ``gpu_source``: each ``"none"`` when absent, never an error. ``cuda_visible_devices``
    is the environment's ``CUDA_VISIBLE_DEVICES`` (``"unset"``). The CPU, memory and
    nvidia-smi's answer are read once per process.
    """
    cpu_model, cpu_count, usable, memory, smi_gpus, driver, cuda = _machine()
    gpus = [dict(g) for g in smi_gpus]
    source = "nvidia-smi" if gpus else NONE
    torch = sys.modules.get("torch")
    torch_cuda = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    if not gpus and torch is not None:
        gpus = _torch_gpus(torch)
        source = "torch" if gpus else NONE
    return {
        "cpu_model": cpu_model,
        "cpu_count": cpu_count,
        "cpu_usable": usable,
        "memory_bytes": memory,
        "gpus": gpus,
        "gpu_driver": driver or NONE,
        "cuda": cuda or NONE,
        "torch_cuda": torch_cuda or NONE,
        "gpu_source": source,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
    }


def environment() -> dict:
    """Python version and platform, the versions of the installed key packages, and the
    hardware (``hardware()``)."""
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
        "hardware": hardware(),
    }


def provenance(root: Path) -> Provenance:
    commit, dirty = git_state(root)
    lock_file, digest = lock_hash(root)
    return Provenance(commit, dirty, lock_file, digest, environment())
