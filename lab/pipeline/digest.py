"""Content digests for stage inputs and for the platform's own code."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

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


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of the platform's Python sources (lab/ and plugins/): a code change reruns stages."""
    import lab
    import plugins

    h = hashlib.sha256()
    for pkg in (lab, plugins):
        base = Path(pkg.__file__).parent
        for f in sorted(base.rglob("*.py")):
            h.update(f.relative_to(base.parent).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
