"""The plugin author's path holds together: the example plugin (examples/lab-plugin-example,
installed by `make test`'s install step) is loaded under its own name and version, its own
tests pass, it leaves other labs' defaults alone; lab's pytest plugin gives its fixtures;
and every code block docs/plugins.md includes is the example's code, word for word."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from lab.cli import main
from lab.testing import ModelFlavorContract
from lab.testing.boring import BoringLinearFlavor
from lab.testing.pytest_plugin import write_bare_pyproject
from tests.conftest import write_pyproject

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "lab-plugin-example"
GUIDE = REPO / "docs" / "plugins.md"
INCLUDE = re.compile(r"^<!-- include: (?P<target>\S+) -->\n```\w*\n(?P<body>.*?)^```$", re.M | re.S)


def test_the_example_is_loaded_under_its_own_name_and_version(bare_lab, capsys):
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["json_online"] == {"name": "json_online", "version": f"{meta['name']} {meta['version']}",
                                   "hooks": ["lab_cli_commands", "lab_online_store"]}
    assert (meta["name"], meta["version"]) == ("lab-plugin-example", "0.1.0")


def test_the_examples_own_tests_pass():
    """Its contract suite and fixture tests, as its author runs them (its own rootdir)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                          cwd=EXAMPLE, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\b25 passed\b", done.stdout), done.stdout[-500:]


def test_other_labs_keep_the_built_in_online_store(lab_pm):
    pm = lab_pm()
    assert pm.get_plugin("json_online") is not None  # loaded, and silent
    store = pm.hook.lab_online_store(config=pm.config)
    try:
        assert type(store).__name__ == "SQLiteOnlineStore"
    finally:
        store.close()


def test_labs_pytest_plugin_is_registered_and_its_bare_lab_is_the_conftests(request, tmp_path):
    assert request.config.pluginmanager.has_plugin("lab")
    write_bare_pyproject(tmp_path / "plugin")
    write_pyproject(tmp_path / "conftest")
    assert (tmp_path / "plugin" / "pyproject.toml").read_bytes() == (tmp_path / "conftest" / "pyproject.toml").read_bytes()


def test_loading_the_pytest_plugin_imports_no_data_library():
    code = ("import sys, lab.testing.pytest_plugin; "
            "print(sorted(m for m in ('polars', 'pyarrow', 'numpy', 'duckdb', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_boring_model_scores_through_the_default_store(boring_model, tiny_dataset):
    assert boring_model.version.version == 1 and boring_model.metrics["val_roc_auc"] > 0.6
    assert tiny_dataset.frame.height == 600 and tiny_dataset.path.exists()
    assert boring_model.materialize() == 20
    with boring_model.load() as model:
        answer = model.predict(boring_model.example)
    row = [answer["features"][name] for name in boring_model.spec.features]
    assert answer["score"] == pytest.approx(float(boring_model.model.predict(np.array([row]))[0]))
    assert answer["features"]["ENTITY_COUNT_7D"] > 0 and answer["defaults"] == {"entity_amounts": False}


def test_lab_pm_registers_extra_plugins_and_config(lab_pm):
    class Views:
        from lab import hookimpl

        @hookimpl
        def lab_feature_views(self, config):
            return []

    extra = Views()
    pm = lab_pm(extra, config="[tool.lab.mine]\nanswer = 42")
    assert pm.is_registered(extra) and pm.config.section("mine") == {"answer": 42}
    with pytest.raises(Exception, match="forgotten the"):
        lab_pm(Views)


class TestBoringFlavor(ModelFlavorContract):
    """The boring model's flavor is a real flavor: it passes lab's own contract."""

    @pytest.fixture
    def flavor(self):
        return BoringLinearFlavor()


# ------------------------------------------------------------------------------ the guide


def included_blocks(text: str) -> list[tuple[str, str]]:
    return [(m["target"], m["body"]) for m in INCLUDE.finditer(text)]


def source_of(target: str) -> str:
    """The text an include names: a whole file, ``FILE#region`` (the lines between
    ``# --8<-- [start:region]`` and ``# --8<-- [end:region]``) or ``FILE:START-END`` (lines)."""
    path, _, region = target.partition("#")
    path, _, lines = path.partition(":")
    text = (REPO / path).read_text()
    if region:
        found = re.search(rf"^[ \t]*# --8<-- \[start:{re.escape(region)}\]\n(.*?)^[ \t]*# --8<-- \[end:{re.escape(region)}\]\n",
                          text, re.M | re.S)
        assert found, f"{path} has no region {region!r}"
        return found.group(1)
    if lines:
        start, _, end = lines.partition("-")
        return "".join(text.splitlines(keepends=True)[int(start) - 1:int(end)])
    return text


def drifted(text: str) -> list[str]:
    return [target for target, body in included_blocks(text) if body != source_of(target)]


def test_every_block_the_guide_includes_is_the_examples_code():
    text = GUIDE.read_text()
    blocks = included_blocks(text)
    assert len(blocks) == len(re.findall(r"^<!-- include:", text, re.M)) >= 6, "an include marker is not followed by a code block"
    assert drifted(text) == []


def test_a_guide_block_that_differs_from_the_example_is_caught():
    text = GUIDE.read_text()
    changed = text.replace('json_online = "lab_plugin_example"', 'json_online = "lab_plugin_sample"', 1)
    assert changed != text
    assert drifted(changed) == ["examples/lab-plugin-example/pyproject.toml"]


def test_every_relative_link_of_the_guide_exists():
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", GUIDE.read_text()) if not re.match(r"[a-z]+:|#", t)]
    assert links and [link for link in links if not (GUIDE.parent / link.split("#")[0]).exists()] == []
