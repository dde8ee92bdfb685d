"""Content digests for stage inputs and for the platform's own code."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import lab

_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def path_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative names and file digests (sorted)."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = child.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:  # temp files of an in-flight atomic write
            continue
        h.update(rel.encode() + b"\0" + file_digest(child).encode() + b"\n")
    return h.hexdigest()


def _code_base() -> Path:
    """The folder holding the ``lab`` and ``plugins`` packages; code paths are relative to it."""
    return Path(lab.__file__).resolve().parent.parent


def all_code_files() -> list[str]:
    base = _code_base()
    return sorted(f.relative_to(base).as_posix() for pkg in ("lab", "plugins") for f in (base / pkg).rglob("*.py"))


PROJECT_PREFIX = "project:"
"""Marks a code file of the lab itself (its plugin module), relative to the lab's root."""


def _project_file(path: Path, project_root: Path) -> str | None:
    """``project:REL`` for a source file of the lab's own (not its virtualenv's) code."""
    try:
        rel = path.relative_to(project_root)
    except ValueError:
        return None
    if any(part.startswith(".") or part in ("site-packages", "runs", "data") for part in rel.parts):
        return None
    return PROJECT_PREFIX + rel.as_posix()


def imported_code_files(project_root: str | os.PathLike | None = None) -> list[str]:
    """The source files this process has imported that a stage's result depends on: the
    platform's (``lab/``, ``plugins/``) and, given ``project_root``, the lab's own modules
    (its plugin module: ``project:delivery_lab.py``), so editing either reruns the stage."""
    base = _code_base()
    project = Path(project_root).resolve() if project_root is not None else None
    out = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        # A module object whose __file__ is a bare name (torch.ops: "_ops.py") is no
        # file of this process: resolving it against the working folder would name one.
        if not isinstance(path, str) or not path.endswith(".py") or not os.path.isabs(path):
            continue
        resolved = Path(path).resolve()
        try:
            rel = resolved.relative_to(base).as_posix()
        except ValueError:
            rel = None
        if rel is not None and rel.split("/", 1)[0] in ("lab", "plugins"):
            out.add(rel)
        elif project is not None and (own := _project_file(resolved, project)) is not None:
            out.add(own)
    return sorted(out)


def code_digest(files: list[str] | None = None, project_root: str | os.PathLike | None = None) -> str:
    """Digest of the sources ``files`` (as from ``imported_code_files``; ``project:`` ones
    relative to ``project_root``), else all of lab/ and plugins/. A file that no longer
    exists counts as changed."""
    base = _code_base()
    project = Path(project_root) if project_root is not None else None
    h = hashlib.sha256()
    for rel in files if files is not None else all_code_files():
        if rel.startswith(PROJECT_PREFIX):
            path = (project / rel[len(PROJECT_PREFIX):]) if project is not None else None
        else:
            path = base / rel
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes() if path is not None and path.exists() else b"<missing>")
    return h.hexdigest()
