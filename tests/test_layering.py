"""The package graph is checked: import-linter's contracts in pyproject.toml hold.

The contracts say: `lab` never imports `plugins`; no plugin imports another; the
subpackages of `lab` form layers (nothing imports upward) and never import each other
in a circle. See docs/architecture.md, "Layers".
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO


def _contracts() -> list[dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == {"lab", "plugins"}
    return config["contracts"]


def _plugin_packages() -> set[str]:
    return {f"plugins.{p.name}" for p in (REPO / "plugins").iterdir() if (p / "__init__.py").is_file()}


def _lab_children() -> set[str]:
    children = set()
    for p in (REPO / "lab").iterdir():
        if p.is_dir() and (p / "__init__.py").is_file():
            children.add(p.name)
        elif p.suffix == ".py" and p.name != "__init__.py":
            children.add(p.stem)
    return children


def test_lint_imports_passes():
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.is_file(), "lint-imports is missing: install the test extra (pip install -e '.[test]')"
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " 0 broken" in out.stdout, out.stdout[-2000:]


def test_contracts_forbid_lab_importing_plugins():
    assert any(
        c["type"] == "forbidden" and set(c["source_modules"]) == {"lab"} and set(c["forbidden_modules"]) == {"plugins"}
        and not c.get("allow_indirect_imports") and not c.get("ignore_imports")
        for c in _contracts()
    )


def test_contracts_keep_every_plugin_independent():
    independent = [c for c in _contracts() if c["type"] == "independence"]
    assert independent, "no independence contract between the plugins"
    modules = set(independent[0]["modules"])
    assert modules == {"plugins.*"} or modules >= _plugin_packages(), (
        f"plugins missing from the independence contract: {sorted(_plugin_packages() - modules)}")
    assert not independent[0].get("ignore_imports")


def test_contracts_layer_every_lab_subpackage_without_cycles():
    layers = [c for c in _contracts() if c["type"] == "layers"]
    assert layers and layers[0]["containers"] == ["lab"] and layers[0].get("exhaustive") is True
    named = {m.strip().strip("()") for layer in layers[0]["layers"] for m in layer.replace(":", "|").split("|")}
    assert _lab_children() <= named | set(layers[0].get("exhaustive_ignores", []))
    assert not layers[0].get("ignore_imports")
    # Layers may still let siblings of one layer import each other; no circle is allowed at all.
    assert any(c["type"] == "acyclic_siblings" and "lab" in c["ancestors"] for c in _contracts())
