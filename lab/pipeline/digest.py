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


def imported_code_files() -> list[str]:
    """The platform's source files this process has imported (what a stage's code was)."""
    base = _code_base()
    out = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        try:
            rel = Path(path).resolve().relative_to(base).as_posix()
        except ValueError:
            continue
        if rel.split("/", 1)[0] in ("lab", "plugins") and rel.endswith(".py"):
            out.add(rel)
    return sorted(out)


def code_digest(files: list[str] | None = None) -> str:
    """Digest of the platform's sources: ``files`` (paths as from ``imported_code_files``),
    else all of lab/ and plugins/. A file that no longer exists counts as changed."""
    base = _code_base()
    h = hashlib.sha256()
    for rel in files if files is not None else all_code_files():
        path = base / rel
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes() if path.exists() else b"<missing>")
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
