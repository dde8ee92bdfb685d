"""Hatch build hook: the JupyterLab extension (``jupyterlab-ext/``) built into the wheel.

Every wheel build, the editable one that ``pip install -e .`` (so ``make test`` and
``make demo``) makes included, runs ``npm ci`` (only when ``node_modules`` is missing or
``package-lock.json`` changed), ``tsc`` and ``jupyter-builder build`` into
``plugins/jupyterlab_ext/labextension/``, which the wheel's shared-data installs as
``<prefix>/share/jupyter/labextensions/lab-jupyterlab`` where JupyterLab finds it. A
build is skipped when the sources' digest matches the last build's, so a reinstall with
unchanged sources costs nothing here. The assets are never committed.

``LAB_SKIP_LABEXTENSION=1`` installs the Python package without the extension (for a
machine without Node.js); everything but the JupyterLab sidebar works then.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "jupyterlab-ext"
OUTPUT = "plugins/jupyterlab_ext/labextension"
# What decides the built assets; node_modules and lib are derived from these.
INPUTS = ("package.json", "package-lock.json", "tsconfig.json", "src", "style")
NODE_MIN = (20, 19)  # @rspack/core 2: node ^20.19 || >=22.12
NPM_FLAGS = ["--no-audit", "--no-fund", "--loglevel=error", "--prefer-offline"]


def digest(paths: list[Path], base: Path) -> str:
    """SHA-256 of the files under ``paths`` (names relative to ``base`` and bytes)."""
    h = hashlib.sha256()
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
    for file in sorted(files):
        h.update(file.relative_to(base).as_posix().encode() + b"\0")
        h.update(file.read_bytes() + b"\0")
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True)
    except FileNotFoundError as exc:
        raise RuntimeError(f"{what}: {cmd[0]} is not installed ({exc}). Install Node.js 20+ and npm "
                           "(apt-get install nodejs npm), or set LAB_SKIP_LABEXTENSION=1 to install "
                           "lab without its JupyterLab extension") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{what} failed (exit {exc.returncode}) in {cwd}: see the output above; "
                           f"`rm -rf {SOURCE}/node_modules` and reinstall if the modules are broken, "
                           "or set LAB_SKIP_LABEXTENSION=1 to install lab without its JupyterLab "
                           "extension") from exc


def build_labextension(root: Path, log=print) -> bool:
    """Build ``jupyterlab-ext`` into ``plugins/jupyterlab_ext/labextension`` unless its
    sources are unchanged since the last build; returns whether it built."""
    src, out = root / SOURCE, root / OUTPUT
    if not (src / "package.json").is_file():
        return False  # an sdist or checkout without the frontend: nothing to build
    stamp = src / "lib" / ".build-digest"
    wanted = digest([src / name for name in INPUTS], src)
    if (out / "package.json").is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return False
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise RuntimeError("building the JupyterLab extension needs Node.js 20+ and npm on PATH: "
                           "apt-get install nodejs npm (or nodesource's Node.js 20), or set "
                           "LAB_SKIP_LABEXTENSION=1 to install lab without it")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major_minor = tuple(int(x) for x in version.lstrip("v").split(".")[:2] if x.isdigit())
    if major_minor < NODE_MIN:
        raise RuntimeError(f"the JupyterLab extension's bundler (rspack 2) needs Node.js "
                           f"{'.'.join(map(str, NODE_MIN))}+; {node} is {version or 'unknown'}. Install "
                           "a newer Node.js, or set LAB_SKIP_LABEXTENSION=1 to install lab without it")
    started = time.monotonic()
    modules = src / "node_modules"
    lock_stamp = modules / ".lab-lock-digest"
    lock = digest([src / "package.json", src / "package-lock.json"], src)
    if not (lock_stamp.is_file() and lock_stamp.read_text() == lock):
        has_lock = (src / "package-lock.json").is_file()
        log(f"lab-jupyterlab: npm {'ci' if has_lock else 'install'} in {SOURCE}/")
        _run([npm, "ci" if has_lock else "install", *NPM_FLAGS], src, "npm install")
        lock_stamp.write_text(lock)
    log("lab-jupyterlab: tsc")
    _run([node, str(modules / "typescript" / "bin" / "tsc"), "-p", "tsconfig.json"], src, "tsc")
    log(f"lab-jupyterlab: jupyter-builder build -> {OUTPUT}/")
    if out.exists():
        shutil.rmtree(out)  # no stale chunks from an earlier build
    _run([sys.executable, "-m", "jupyter_builder.main", "build", "."], src, "jupyter-builder build")
    if not (out / "package.json").is_file():
        raise RuntimeError(f"jupyter-builder build left no {OUTPUT}/package.json; check "
                           f"jupyterlab.outputDir in {SOURCE}/package.json")
    stamp.write_text(wanted)
    log(f"lab-jupyterlab: built in {time.monotonic() - started:.1f} s")
    return True


class LabextensionBuildHook(BuildHookInterface):
    """Builds the JupyterLab extension before hatchling collects the wheel's shared data."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if os.environ.get("LAB_SKIP_LABEXTENSION", "").strip() not in ("", "0"):
            self.app.display_warning("LAB_SKIP_LABEXTENSION set: lab is installed without its JupyterLab extension")
            return
        build_labextension(Path(self.root), log=self.app.display_info)
