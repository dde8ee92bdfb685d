"""The platform names no lab: nothing under ``lab/`` or ``plugins/`` outside the fraud
lab's own plugin (``plugins/fraud/``) says "fraud", in code, docstrings, notebooks,
templates or file names. A platform module that needs a demo field is missing a hook."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("lab", "plugins")
THE_LAB = REPO / "plugins" / "fraud"
WORD = re.compile("fraud", re.IGNORECASE)
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}


def platform_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*")):
            if not path.is_file() or SKIPPED_DIRS & set(path.parts) or path.suffix in (".pyc", ".pyo"):
                continue
            if path == THE_LAB or THE_LAB in path.parents:
                continue
            files.append(path)
    return files


def mentions(path: Path, root: Path = REPO) -> list[str]:
    """``file:line: text`` for each line of ``path`` (and its name) that says fraud."""
    where = path.relative_to(root).as_posix()
    found = [f"{where}: the file's name"] if WORD.search(where) else []
    data = path.read_bytes()
    if b"\0" in data:  # binary: only its name counts
        return found
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if WORD.search(line):
            found.append(f"{where}:{number}: {line.strip()[:120]}")
    return found


def test_the_platform_and_its_backends_name_no_fraud():
    files = platform_files()
    assert len(files) > 50 and any(p.name == "hookspecs.py" for p in files)  # the walk found the platform
    found = [hit for path in files for hit in mentions(path, REPO)]
    assert not found, ("lab/ and plugins/ (but plugins/fraud/) must not name the fraud lab; move it into "
                       "plugins/fraud or say it neutrally:\n" + "\n".join(found))


def test_the_check_sees_a_mention_anywhere_in_a_file(tmp_path):
    """The scan is case-insensitive, reads every line and names file and line."""
    sample = tmp_path / "module.py"
    sample.write_text('"""Scores events."""\nLABEL = "is_Fraudulent"\n')
    assert mentions(sample, tmp_path) == ['module.py:2: LABEL = "is_Fraudulent"']
    named = tmp_path / "FRAUD_rules.toml"
    named.write_text("x = 1\n")
    assert mentions(named, tmp_path) == ["FRAUD_rules.toml: the file's name"]
