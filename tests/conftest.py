"""Shared fixtures: a bare lab in a temporary folder, and helpers to make one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def write_pyproject(folder: Path, body: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = \"demo-lab\"\nversion = \"0\"\n\n[tool.lab]\n" + textwrap.dedent(body))
    return path


@pytest.fixture
def bare_lab(tmp_path, monkeypatch) -> Path:
    """An empty lab folder (a pyproject.toml with an empty [tool.lab]); cwd is set to it."""
    write_pyproject(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_HOME", raising=False)
    return tmp_path
