"""The ``lab`` console script: top-level help from a cache, everything else through ``lab.cli``.

``lab --help`` has to list every plugin's commands, which means loading the plugin
manager and scanning the installed entry points (about 100 ms). The text only changes
when the installed packages, the lab's pyproject.toml, its own modules or the platform's
code change, so it is kept in a cache keyed by exactly those (their paths, sizes and
modification times) and printed from there without importing pluggy, the config or any
plugin. A miss, or any problem with the cache, falls through to the full path, which
writes the cache. ``lab.cli`` does not import this module; this module imports only the standard library's lightest modules.
"""

from __future__ import annotations

import hashlib
import os
import sys

_HELP = (["--help"], ["-h"])


def _project_root() -> str:
    # As lab.config.find_root: LAB_HOME, else the nearest folder upwards with a pyproject.toml.
    if os.environ.get("LAB_HOME"):
        return os.path.abspath(os.environ["LAB_HOME"])
    here = os.getcwd()
    while True:
        if os.path.exists(os.path.join(here, "pyproject.toml")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return os.getcwd()
        here = parent


def _stamp(h, path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        h.update(f"{path}\0-\n".encode())
        return
    h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def _python_files(folder: str):
    for base, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(base, name)


def help_key(root: str) -> str:
    """What the top-level help text depends on, as one digest."""
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{root}\0{os.environ.get('LAB_TRACE_HOOKS', '')}\n".encode())
    for entry in sys.path:  # installing or removing a package changes its folder
        if entry and os.path.isdir(entry):
            _stamp(h, entry)
    code_base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in ("lab", "plugins"):
        for path in _python_files(os.path.join(code_base, package)):
            _stamp(h, path)
    _stamp(h, os.path.join(root, "pyproject.toml"))
    try:
        own = sorted(n for n in os.listdir(root) if n.endswith(".py"))
    except OSError:
        own = []
    for name in own:  # the lab's own plugin modules may add commands
        _stamp(h, os.path.join(root, name))
    return h.hexdigest()[:32]


def cache_path(key: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lab", f"help-{key}.txt")


def write_help_cache(text: str) -> None:
    """Keep ``text`` as the help of the current lab; a failure only costs speed."""
    try:
        path = cache_path(help_key(_project_root()))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        pass


def cached_help() -> str | None:
    try:
        with open(cache_path(help_key(_project_root()))) as fh:
            return fh.read()
    except OSError:
        return None


def main() -> int:
    argv = sys.argv[1:]
    if argv in _HELP and not os.environ.get("LAB_NO_HELP_CACHE"):
        text = cached_help()
        if text is None:
            from lab.cli import top_level_help
            from lab.errors import LabError

            try:
                text = top_level_help()
            except LabError:
                text = None  # the full path below prints the error as one line
            else:
                write_help_cache(text)
        if text is not None:
            sys.stdout.write(text)
            return 0
    from lab.cli import main as full_main

    return full_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
