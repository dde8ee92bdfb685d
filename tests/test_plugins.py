"""The plugin core: registration, discovery, tracing, and that every hook is documented and tested."""

import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from lab import hookimpl, hookspecs
from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError
from lab.plugins import DEFAULT_PLUGINS, feature_views, make_plugin_manager, model_flavor, plugin_table
from tests.conftest import REPO, write_pyproject

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("lab_"))


def test_there_are_hooks():
    assert {"lab_offline_store", "lab_online_store", "lab_stage_executor", "lab_feature_views",
            "lab_model_flavors", "lab_trainer_callbacks", "lab_http_routes", "lab_cli_commands",
            "lab_on_event"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 80, f"{hook} needs a docstring saying when, what and returns"
    assert f"`{hook}(" in (REPO / "docs" / "hooks.md").read_text(), f"{hook} missing from docs/hooks.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    # A test other than this file must call or implement the hook by name.
    sources = [p.read_text() for p in (REPO / "tests").glob("test_*.py") if p.name != "test_plugins.py"]
    assert any(re.search(rf"\b{hook}\b", s) for s in sources), f"no test exercises {hook}"


def test_builtins_are_loaded_under_entry_point_names():
    pm = make_plugin_manager()
    names = {row["name"] for row in plugin_table(pm)}
    assert {name for name, _ in DEFAULT_PLUGINS} <= names


def test_bare_manager_has_no_plugins():
    pm = make_plugin_manager(builtins=False, entry_points=False)
    assert plugin_table(pm) == []
    assert pm.hook.lab_offline_store(config=None) is None


def test_registering_a_class_names_the_fix():
    class MyPlugin:
        @hookimpl
        def lab_on_event(self, event):
            pass

    pm = make_plugin_manager(builtins=False, entry_points=False)
    with pytest.raises(ConfigError, match=r"forgotten the \(\)"):
        pm.register(MyPlugin)
    pm.register(MyPlugin())


def test_a_plugin_overrides_a_builtin_backend(bare_lab):
    class Fake:
        @hookimpl
        def lab_stage_executor(self, config):
            return "mine"

    pm = make_plugin_manager()
    assert type(pm.hook.lab_stage_executor(config=load_config(bare_lab))).__name__ == "PapermillExecutor"
    pm.register(Fake())
    assert pm.hook.lab_stage_executor(config=load_config(bare_lab)) == "mine"


def test_trace_env_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("LAB_TRACE_HOOKS", "1")
    pm = make_plugin_manager()
    pm.hook.lab_model_flavors()
    err = capsys.readouterr().err
    assert "[lab hook] lab_model_flavors ->" in err and "lightning_tabular" in err


def test_project_local_plugin_adds_a_command_and_sees_events(tmp_path, capsys, monkeypatch):
    write_pyproject(tmp_path, 'plugins = ["my_lab_plugin"]\n')
    (tmp_path / "my_lab_plugin.py").write_text(textwrap.dedent('''
        from lab import hookimpl
        from lab.cli import Command
        from lab.events import emit

        SEEN = []

        @hookimpl
        def lab_on_event(event):
            SEEN.append(event.name)

        def _run(args, ctx):
            emit(ctx.pm, "hello.said", who=args.who)
            print("hello", args.who, SEEN)

        @hookimpl
        def lab_cli_commands():
            return [Command("hello", "say hello", lambda p: p.add_argument("who"), _run)]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["--root", str(tmp_path), "hello", "world"]) == 0
        assert "hello world ['hello.said']" in capsys.readouterr().out
        assert main(["--root", str(tmp_path), "plugins"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"my_lab_plugin\s+local \(my_lab_plugin\.py\)\s+lab_cli_commands, lab_on_event", out)
    finally:
        sys.modules.pop("my_lab_plugin", None)


def test_lab_plugins_shows_project_plugins_as_local_not_as_lab(tmp_path, capsys, monkeypatch):
    write_pyproject(tmp_path, 'plugins = ["plain_local", "versioned_local", "local_pkg.hooks"]\n')
    hook = "from lab import hookimpl\n\n@hookimpl\ndef lab_on_event(event):\n    pass\n"
    (tmp_path / "plain_local.py").write_text(hook)
    (tmp_path / "versioned_local.py").write_text('__version__ = "2.3.1"\n' + hook)
    (tmp_path / "local_pkg").mkdir()
    (tmp_path / "local_pkg/__init__.py").write_text("")
    (tmp_path / "local_pkg/hooks.py").write_text(hook)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("plain_local", "versioned_local", "local_pkg", "local_pkg.hooks"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert main(["--root", str(tmp_path), "plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["plain_local"]["version"] == "local (plain_local.py)"
    assert rows["versioned_local"]["version"] == "2.3.1 (local versioned_local.py)"
    assert rows["local_pkg.hooks"]["version"] == "local (local_pkg/hooks.py)"
    assert rows["duckdb_offline"]["version"] == "lab 0.1.0"  # built-ins are still the platform's


def test_missing_project_plugin_is_a_clear_cli_error(tmp_path, capsys):
    write_pyproject(tmp_path, 'plugins = ["no_such_plugin_mod"]\n')
    assert main(["--root", str(tmp_path), "plugins"]) == 2
    assert "cannot import project plugin 'no_such_plugin_mod'" in capsys.readouterr().err


def test_duplicate_feature_view_names_are_an_error(bare_lab):
    from lab.features.views import Aggregation, FeatureView
    import datetime as dt

    view = FeatureView(name="user_activity", entity="USER_ID", source="t", timestamp="ts",
                       aggregations=(Aggregation("n", "x", "count", dt.timedelta(days=1)),))

    class Views:
        @hookimpl
        def lab_feature_views(self, config):
            return [view]

    pm = make_plugin_manager()
    pm.register(Views(), name="one")
    assert feature_views(pm, load_config(bare_lab))["user_activity"] is view
    pm.register(Views(), name="two")
    with pytest.raises(ConfigError, match="'user_activity' is defined by two plugins"):
        feature_views(pm, load_config(bare_lab))


def test_unknown_model_flavor_lists_the_known_ones():
    with pytest.raises(ConfigError, match="loaded flavors: lightning_mlp"):
        model_flavor(make_plugin_manager(), "xgboost")


def test_lab_plugins_lists_versions_and_hooks(bare_lab, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"duckdb_offline\s+lab 0\.1\.0\s+lab_offline_store", out)
    assert re.search(r"papermill_executor\s+\S+ \S+\s+lab_stage_executor", out)
