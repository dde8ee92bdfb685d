"""``lab init``: templates come from the ``lab_templates`` hook, a new lab is whole or absent,
``{{project}}`` becomes the lab's name, and the delivery template is a lab that loads."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from lab import hookimpl
from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.pipeline.stage import load_stages
from lab.plugins import make_plugin_manager
from lab.scaffold import Template, available_templates, default_project_name, find_template, init_lab
from tests.conftest import REPO


@pytest.fixture
def toy_template(tmp_path) -> Template:
    """A template with a text file, a binary file, a templated path and editor debris."""
    src = tmp_path / "toy"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pyproject.toml").write_text('[project]\nname = "{{project}}"\n\n[tool.lab]\nplugins = ["{{project}}_plugin"]\n')
    (src / "{{project}}_plugin.py").write_text('"""The {{project}} lab\'s plugin."""\n')
    (src / "pkg" / "logo.bin").write_bytes(b"\x89PNG\x00\xff{{project}}")
    (src / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"stale")
    (src / "run.sh").write_text("#!/bin/sh\necho {{project}}\n")
    (src / "run.sh").chmod(0o755)
    return Template("toy", "A toy template", src)


def offering(*templates):
    class Offer:
        @hookimpl
        def lab_templates(self):
            return list(templates)

    return Offer()


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


def test_init_copies_the_template_and_names_the_lab(tmp_path, toy_template):
    target = tmp_path / "labs" / "My Eta-lab"
    assert init_lab(target, toy_template) == target
    name = "my_eta_lab"
    assert tomllib.loads((target / "pyproject.toml").read_text())["project"]["name"] == name
    assert (target / f"{name}_plugin.py").read_text() == f'"""The {name} lab\'s plugin."""\n'
    assert (target / "pkg" / "logo.bin").read_bytes() == b"\x89PNG\x00\xff{{project}}"  # binary: as it is
    assert not (target / "pkg" / "__pycache__").exists()
    assert os.access(target / "run.sh", os.X_OK)
    assert siblings(target) == ["My Eta-lab"]  # no staging folder left behind


def test_an_explicit_name_wins(tmp_path, toy_template):
    init_lab(tmp_path / "x", toy_template, project_name="churn")
    assert (tmp_path / "x" / "churn_plugin.py").exists()
    with pytest.raises(ConfigError, match="must be a Python identifier"):
        init_lab(tmp_path / "y", toy_template, project_name="not-a-name")
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("folder, name", [
    ("My Lab-2", "my_lab_2"), ("2024 eta", "lab_2024_eta"), ("class", "class_lab"),
    ("---", "lab"), ("délivery__eta", "d_livery_eta"),
])
def test_default_project_name_is_a_python_name(folder, name):
    assert default_project_name(folder) == name
    assert name.isidentifier()


def test_an_empty_existing_folder_is_used(tmp_path, toy_template):
    (tmp_path / "empty").mkdir()
    init_lab(tmp_path / "empty", toy_template)
    assert (tmp_path / "empty" / "pyproject.toml").exists()


def test_init_into_the_current_empty_folder_keeps_it(tmp_path, monkeypatch, capsys):
    """`mkdir eta && cd eta && lab init . -t delivery`: the shell's folder is the lab, not a
    deleted folder that another one replaced."""
    here = tmp_path / "eta"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("LAB_HOME", raising=False)
    inode = here.stat().st_ino
    assert main(["init", ".", "--template", "delivery"]) == 0
    assert "created lab 'eta'" in capsys.readouterr().out
    assert here.stat().st_ino == inode
    assert "pyproject.toml" in os.listdir(".")
    assert load_config(".").model_name == "delivery_time"
    assert siblings(here) == ["eta"]


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path, toy_template):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty; choose another folder, or pass --force"):
        init_lab(target, toy_template)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert siblings(target) == ["busy", "toy"]


def test_force_adds_the_template_to_a_non_empty_folder(tmp_path, toy_template):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "pyproject.toml").write_text("old")
    init_lab(target, toy_template, force=True)
    assert (target / "notes.txt").read_text() == "mine"
    assert 'name = "busy"' in (target / "pyproject.toml").read_text()
    assert siblings(target) == ["busy", "toy"]


def test_a_file_is_not_a_folder(tmp_path, toy_template):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        init_lab(tmp_path / "f", toy_template)


def test_a_failed_copy_leaves_nothing(tmp_path, toy_template):
    (toy_template.path / "zz_dangling").symlink_to(tmp_path / "nowhere")  # copied last, after the rest
    target = tmp_path / "new"
    with pytest.raises(LabError, match="cannot create the lab"):
        init_lab(target, toy_template)
    assert not target.exists()
    assert siblings(target) == ["toy"]


def test_templates_come_from_the_hook(toy_template):
    pm = make_plugin_manager(builtins=False, entry_points=False)
    assert available_templates(pm) == {}
    pm.register(offering(toy_template))
    assert available_templates(pm) == {"toy": toy_template}
    assert pm.hook.lab_templates() == [[toy_template]]


def test_two_templates_with_one_name_are_an_error(toy_template):
    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(offering(toy_template))
    pm.register(offering(Template("toy", "again", toy_template.path)))
    with pytest.raises(ConfigError, match="two plugins offer a template called 'toy'"):
        available_templates(pm)


def test_a_hook_must_return_templates(tmp_path):
    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(offering({"name": "x", "path": str(tmp_path)}))
    with pytest.raises(ConfigError, match="return lab.scaffold.Template"):
        available_templates(pm)


def test_template_names_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="lower-case"):
        Template("My Template", "x", tmp_path)


def test_an_unknown_template_lists_the_known_ones(toy_template):
    with pytest.raises(ConfigError, match=r"no template 'nope'; known templates: toy"):
        find_template("nope", {"toy": toy_template})


def test_the_core_names_no_template():
    source = (REPO / "lab" / "scaffold.py").read_text().lower()
    assert "delivery" not in source and "fraud" not in source


# ---------------------------------------------------------------------------- the command

def test_cli_lists_templates_with_descriptions(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_HOME", raising=False)
    assert main(["init", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    delivery = [line for line in lines if line.split()[0] == "delivery"]
    assert delivery and "regression" in delivery[0]


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_HOME", raising=False)
    assert main(["init", "new", "--template", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error: no template 'nope'; known templates: ") and "delivery" in err
    assert err.count("\n") == 1
    assert main(["init", "new"]) == 2
    assert "needs --template NAME" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["init", "busy", "--template", "delivery"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_cli_creates_a_lab(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_HOME", raising=False)
    assert main(["init", "eta-lab", "--template", "delivery"]) == 0
    assert "created lab 'eta_lab'" in capsys.readouterr().out
    assert load_config(tmp_path / "eta-lab").model_name == "delivery_time"


# ---------------------------------------------------------------------------- the delivery template

@pytest.fixture
def delivery_lab(tmp_path) -> Path:
    template = find_template("delivery", available_templates())
    return init_lab(tmp_path / "eta", template)


def test_delivery_template_has_no_placeholder_left(delivery_lab):
    files = [p for p in delivery_lab.rglob("*") if p.is_file()]
    assert {"pyproject.toml", "README.md", ".gitignore", "pipeline.toml"} <= {p.name for p in files}
    for path in files:
        assert "{{project}}" not in path.read_text(), path
    assert tomllib.loads((delivery_lab / "pyproject.toml").read_text())["project"]["name"] == "eta"
    assert (delivery_lab / "README.md").read_text().startswith("# eta\n")


def test_delivery_template_config_loads(delivery_lab):
    config = load_config(delivery_lab)
    assert config.model_name == "delivery_time"
    assert config.plugins == ("delivery_lab",)
    assert config.gate.metric == "mae"
    assert set(config.section("delivery")) == {"n_stores", "n_couriers", "orders_per_day", "days", "start_date", "seed"}
    assert config.train.n_trials <= 3 and config.train.max_epochs <= 5  # about a minute on two cores


def test_delivery_template_comments_every_other_key(delivery_lab):
    """kedro-style: the platform's keys the lab does not set are there, commented, with a reason."""
    text = (delivery_lab / "pyproject.toml").read_text()
    for key in ("registry", "runs_dir", "data_dir", "retries", "min_delta", "host", "port", "alpha"):
        lines = [line for line in text.splitlines() if line.startswith(f"# {key} = ")]
        assert lines, f"{key} is not shown commented"
        assert all("#" in line[2:] for line in lines), f"{key} has no one-line reason"


def test_delivery_pipeline_stages_resolve(delivery_lab):
    config = load_config(delivery_lab)
    stages = load_stages(delivery_lab / "notebooks" / "pipeline.toml")
    assert [s.name for s in stages] == list(config.pipeline.stages)
    for stage in stages:
        assert (delivery_lab / stage.notebook).is_file(), stage.notebook
        for entry in stage.config:
            section, _, key = entry.partition(".")
            table = config.section(section) or getattr(config, section).__dict__
            assert not key or key in table, entry


def test_delivery_notebooks_are_thin_stages(delivery_lab):
    config = load_config(delivery_lab)
    for stage in load_stages(delivery_lab / "notebooks" / "pipeline.toml"):
        nb = json.loads((delivery_lab / stage.notebook).read_text())
        title, params, call = nb["cells"]
        assert title["cell_type"] == "markdown" and "".join(title["source"]).startswith("# ")
        assert params["metadata"]["tags"] == ["parameters"]
        source = "".join(params["source"])
        assert source.startswith('root = "."') and "run_dir" in source
        body = "".join(call["source"])
        expected = "delivery_lab.simulate(" if stage.name == "simulate" else f"steps.{stage.name}("
        assert f"result = {expected}root, run_dir" in body
        for name in (*stage.params, *_config_keys(config, stage)):
            assert f"{name}={name}" in body, (stage.name, name)


def _config_keys(config, stage) -> list[str]:
    keys = []
    for entry in stage.config:
        section, _, key = entry.partition(".")
        keys += [key] if key else list(config.section(section) or getattr(config, section).__dict__)
    return keys
