"""``lab init``: a new lab from a template that a plugin ships.

A template is a folder (``pyproject.toml`` with a commented ``[tool.lab]``,
``notebooks/`` with ``pipeline.toml``, the lab's own plugin module, a README) offered by a
plugin through the ``lab_templates`` hook. ``init_lab`` copies it into the new folder and
replaces ``{{project}}`` in text files and in paths with the lab's name. The core names
no template: ``lab init --list`` shows what the installed plugins offer.

Nothing is written partially: the copy is made in a hidden sibling folder, then renamed
into place (a new folder) or moved in file by file with ``pyproject.toml`` last (an
existing empty folder, which may be the shell's current one), so a failure or a kill
leaves no lab or a whole one.
"""

from __future__ import annotations

import argparse
import fnmatch
import keyword
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from lab.atomic import fsync_dir
from lab.cli import Command, Context
from lab.errors import ConfigError, LabError
from lab.plugins import make_plugin_manager

PLACEHOLDER = "{{project}}"
# Left behind by editors, Python and Jupyter in a template folder; never part of a lab.
_IGNORED = ("__pycache__", "*.pyc", ".ipynb_checkpoints", ".DS_Store")
_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Template:
    """A project template: ``name`` for ``--template``, a one-line ``description`` for
    ``--list``, and the ``path`` of the folder copied into a new lab."""

    name: str
    description: str
    path: Path

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TEMPLATE_NAME.match(self.name):
            raise ConfigError(f"template name {self.name!r} must be lower-case letters, digits, - or _")
        object.__setattr__(self, "path", Path(self.path))


def available_templates(pm=None) -> dict[str, Template]:
    """Every template the loaded plugins offer, by name (sorted).

    ``lab init`` runs outside any lab, so the default manager has the built-ins and the
    installed entry points, and no project plugins.
    """
    if pm is None:
        pm = make_plugin_manager()
    found: dict[str, Template] = {}
    for batch in pm.hook.lab_templates():
        for template in batch or []:
            if not isinstance(template, Template):
                raise ConfigError(f"a lab_templates hook returned {template!r}; return lab.scaffold.Template objects")
            if template.name in found:
                raise ConfigError(f"two plugins offer a template called {template.name!r}; rename one")
            found[template.name] = template
    return dict(sorted(found.items()))


def find_template(name: str, templates: dict[str, Template]) -> Template:
    """The template called ``name``; the error lists the known ones."""
    if name not in templates:
        known = ", ".join(templates) or "none (no loaded plugin offers one)"
        raise ConfigError(f"no template {name!r}; known templates: {known}")
    return templates[name]


def default_project_name(folder: str | os.PathLike) -> str:
    """The lab's name from its folder: lower case, a valid Python and package name."""
    name = re.sub(r"[^0-9a-z_]+", "_", Path(folder).name.lower()).strip("_")
    name = re.sub(r"_+", "_", name) or "lab"
    if name[0].isdigit():
        name = f"lab_{name}"
    if keyword.iskeyword(name):
        name = f"{name}_lab"
    return name


def init_lab(target: str | os.PathLike, template: Template, *, project_name: str | None = None,
             force: bool = False) -> Path:
    """Create a lab in ``target`` from ``template``; returns the lab's folder.

    ``target`` may be missing (the finished copy is renamed into place) or empty (the
    files are moved in, ``pyproject.toml`` last, so the folder is a lab only once whole);
    a non-empty folder is refused unless ``force``, which adds the template's files to it,
    each replacing a file of the same name. ``project_name`` defaults to ``target``'s
    name made valid.
    """
    target = Path(target).absolute()
    name = project_name if project_name is not None else default_project_name(target)
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(f"lab name {name!r} must be a Python identifier (letters, digits, _); pass another --name")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file; choose a folder for the new lab")
    existing = target.is_dir() and any(target.iterdir())
    if existing and not force:
        raise ConfigError(f"{target} is not empty; choose another folder, or pass --force to add the template's files to it")
    if not template.path.is_dir():
        raise ConfigError(f"template {template.name!r} has no folder at {template.path}; reinstall the plugin offering it")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling holds the copy until it is whole (mkdtemp's own folder is private,
    # so the lab is a folder made inside it, with the usual permissions).
    holder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".lab-init", dir=target.parent))
    staging = holder / target.name
    try:
        staging.mkdir()
        _render(template.path, staging, name)
        if target.exists():  # keep the folder itself: it may be someone's current directory
            _merge(staging, target)
        else:
            os.replace(staging, target)  # one rename: the lab appears whole
        fsync_dir(target.parent)
    except OSError as exc:
        raise LabError(f"cannot create the lab in {target}: {exc}") from None
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return target


def _ignored(rel: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in rel.parts for pattern in _IGNORED)


def _walk(source: Path):
    """Every folder and file under ``source``, following folder links: a template may link
    to files its plugin also uses (a demo's notebooks, say)."""
    for folder, dirs, files in os.walk(source, followlinks=True):
        for entry in (*dirs, *files):
            yield Path(folder) / entry


def _render(source: Path, dest: Path, name: str) -> None:
    """Copy ``source`` into ``dest``, with ``{{project}}`` replaced in text files and paths."""
    for src in sorted(_walk(source)):
        rel = src.relative_to(source)
        if _ignored(rel):
            continue
        out = dest / str(rel).replace(PLACEHOLDER, name)
        if src.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        data = src.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass  # binary: copied as it is
        else:
            if PLACEHOLDER in text:
                data = text.replace(PLACEHOLDER, name).encode("utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        shutil.copymode(src, out)


def _merge(staging: Path, target: Path) -> None:
    """Move every file of ``staging`` into the existing ``target``, one rename per file,
    ``pyproject.toml`` last: the folder is a lab only once everything else is there."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    for src in sorted(files, key=lambda p: p.relative_to(staging) == Path("pyproject.toml")):
        out = target / src.relative_to(staging)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, out)


# ---------------------------------------------------------------------------- lab init

def _init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", metavar="DIR", help="folder for the new lab (created if missing; must be empty)")
    p.add_argument("--template", "-t", metavar="NAME", help="the template to start from (see --list)")
    p.add_argument("--list", action="store_true", help="list the templates the installed plugins offer")
    p.add_argument("--name", help="the lab's Python name (default: DIR's name made into one)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder; the template's files replace files of the same name")


def _init_run(args: argparse.Namespace, ctx: Context) -> int:
    templates = available_templates()
    if args.list:
        if not templates:
            print("no templates: no loaded plugin answers lab_templates")
        width = max((len(n) for n in templates), default=0)
        for template in templates.values():
            print(f"{template.name:<{width}}  {template.description}")
        return 0
    if not args.template:
        raise ConfigError(f"lab init needs --template NAME; known templates: {', '.join(templates) or 'none'}")
    if not args.dir:
        raise ConfigError("lab init needs a folder: lab init DIR --template NAME")
    template = find_template(args.template, templates)
    folder = init_lab(args.dir, template, project_name=args.name, force=args.force)
    name = args.name or default_project_name(folder)
    print(f"created lab {name!r} in {folder} from the {template.name!r} template")
    print(f"next: cd {args.dir} && lab run, then lab serve (see README.md there)")
    return 0


INIT_COMMAND = Command(
    "init", "create a new lab from a template (lab init DIR --template NAME; --list shows them)",
    _init_args, _init_run,
)
