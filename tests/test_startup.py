"""Fast start: `lab --help`, `lab plugins` and an unchanged `lab run` load no heavy library.

Each command runs in a fresh interpreter, which then lists the heavy modules it holds.
Every built-in plugin keeps its top level light; the libraries load inside the hook or
method that needs them. benchmarks/bench_startup.py measures the time this saves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests.conftest import REPO, write_pyproject

HEAVY = ("pandas", "polars", "torch", "pytorch_lightning", "lightning", "duckdb", "litestar", "optuna",
         "evidently", "papermill", "sqlite_utils", "uvicorn", "matplotlib", "scipy", "sklearn", "numpy",
         "pyarrow")

# Runs `lab ARGS` in this interpreter, then prints the heavy modules it loaded as the last line.
PROBE = textwrap.dedent(f"""
    import json, sys
    from lab.cli import main
    try:
        status = main(sys.argv[1:])
    except SystemExit as exc:
        status = exc.code
    sys.stdout.flush()
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
    print("\\n" + json.dumps({{"status": status, "heavy": heavy}}))
""")


def lab(cwd, *args: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_HOME", "LAB_TRACE_HOOKS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    *printed, last = out.stdout.rstrip("\n").split("\n")
    return json.loads(last), "\n".join(printed) + out.stderr


def top_level(modules: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules})


@pytest.mark.parametrize("where", ["small lab", "fraud lab"])
def test_lab_help_lists_every_command_and_loads_nothing_heavy(tmp_path, where):
    cwd = write_pyproject(tmp_path).parent if where == "small lab" else REPO
    result, printed = lab(cwd, "--help")
    assert result["status"] == 0
    for command in ("plugins", "run", "promote", "rollback", "models", "history", "runs", "lineage",
                    "features", "experiment", "init", "serve"):
        assert f"\n    {command} " in printed or f"\n    {command}\n" in printed, f"lab --help lacks {command}"
    assert top_level(result["heavy"]) == []


def test_lab_plugins_loads_nothing_heavy(tmp_path):
    write_pyproject(tmp_path)
    result, printed = lab(tmp_path, "plugins")
    assert result["status"] == 0
    assert "lab_commands" in printed and "lab_cli_commands" in printed
    assert top_level(result["heavy"]) == []


def test_unchanged_lab_run_loads_nothing_heavy(tmp_path):
    """A run whose every stage is skipped needs neither papermill nor a kernel nor data libraries."""
    write_pyproject(tmp_path, '[tool.lab.pipeline]\nstages = ["touch"]\n')
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell('root = "."\nrun_dir = "."\n')
    params.metadata["tags"] = ["parameters"]
    # The stage imports no platform code, and says so (as StageContext would), so that its
    # cache key does not follow edits elsewhere in lab/ and plugins/.
    nb.cells = [params, new_code_cell(
        'import os\nfrom pathlib import Path\nPath(root, "out.txt").write_text("x")\n'
        'record = Path(os.environ["LAB_STAGE_CODE_RECORD"])\n'
        'record.parent.mkdir(parents=True, exist_ok=True)\nrecord.write_text("[]")\n')]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks/touch.ipynb")
    (tmp_path / "notebooks/pipeline.toml").write_text(
        '[[stage]]\nname = "touch"\nnotebook = "notebooks/touch.ipynb"\noutputs = ["out.txt"]\n')

    first, printed = lab(tmp_path, "run")
    assert "1 stage(s) ran" in printed and "papermill" in first["heavy"]
    again, printed = lab(tmp_path, "run")
    assert "0 stage(s) ran, 1 skipped" in printed, printed
    assert top_level(again["heavy"]) == []


def test_every_core_command_names_functions_that_exist():
    from lab.cli import resolve
    from lab.commands import COMMANDS
    from lab.experiments.commands import STOPPED_EXIT

    for cmd in COMMANDS:
        assert callable(resolve(cmd, "add_arguments")) and callable(resolve(cmd, "run")), cmd.name
    assert f"exit {STOPPED_EXIT}" in next(c for c in COMMANDS if c.name == "experiment check").help


def test_a_command_named_by_reference_loads_its_module_only_when_used(tmp_path, monkeypatch, capsys):
    from lab.cli import main

    write_pyproject(tmp_path, 'plugins = ["hello_plugin"]\n')
    (tmp_path / "hello_plugin.py").write_text(textwrap.dedent('''
        from lab import hookimpl
        from lab.cli import Command

        @hookimpl
        def lab_cli_commands():
            return [Command("hello", "say hello", "hello_cmds:add_arguments", "hello_cmds:run"),
                    Command("broken", "cannot load", "hello_cmds:add_arguments", "no_such_module:run")]
    '''))
    (tmp_path / "hello_cmds.py").write_text(textwrap.dedent('''
        def add_arguments(p):
            p.add_argument("who")

        def run(args, ctx):
            print("hello", args.who)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LAB_HOME", raising=False)
    root = ["--root", str(tmp_path)]
    try:
        with pytest.raises(SystemExit):
            main([*root, "--help"])
        assert "say hello" in capsys.readouterr().out and "hello_cmds" not in sys.modules
        assert main([*root, "hello", "world"]) == 0
        assert capsys.readouterr().out == "hello world\n"
        with pytest.raises(SystemExit):
            main([*root, "hello", "--help"])
        assert "who" in capsys.readouterr().out
        assert main([*root, "broken", "x"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lab: error: the command 'lab broken' names 'no_such_module:run'") and err.count("\n") == 1
    finally:
        for module in ("hello_plugin", "hello_cmds"):
            sys.modules.pop(module, None)


def _console(cwd, cache, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """The installed entry point (lab.launch:main) as the console script runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_HOME", "LAB_TRACE_HOOKS", "LAB_NO_HELP_CACHE")}
    env.update(PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(cache), **extra_env)
    code = ("import json, sys; from lab.launch import main; status = main(); sys.stdout.flush(); "
            "print('\\n' + json.dumps([status, sorted(m for m in sys.modules if m in ('pluggy', 'lab.config'))]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_help_is_cached_until_the_lab_changes_and_the_cached_path_loads_no_plugin_machinery(tmp_path):
    lab_dir = write_pyproject(tmp_path / "lab").parent
    cache = tmp_path / "cache"
    first = _console(lab_dir, cache, "--help")
    *text, last = first.stdout.rstrip("\n").split("\n")
    assert json.loads(last) == [0, ["lab.config", "pluggy"]]  # a miss takes the full path ...
    assert len(list((cache / "lab").glob("help-*.txt"))) == 1  # ... and keeps the text
    second = _console(lab_dir, cache, "--help")
    *text2, last2 = second.stdout.rstrip("\n").split("\n")
    assert text2 == text and json.loads(last2) == [0, []]  # a hit: same text, no pluggy, no config
    uncached = _console(lab_dir, cache, "--help", LAB_NO_HELP_CACHE="1")
    assert uncached.stdout.split("\n")[:len(text)] == text

    # A project plugin that adds a command: pyproject.toml and the module changed, so the
    # cached text is not used and the new command is listed.
    (lab_dir / "hello_cmd.py").write_text(textwrap.dedent("""
        from lab import hookimpl
        from lab.cli import Command

        @hookimpl
        def lab_cli_commands():
            return [Command("hello", "say hello from this lab", lambda p: None, lambda a, c: 0)]
    """))
    (lab_dir / "pyproject.toml").write_text((lab_dir / "pyproject.toml").read_text()
                                           .replace("[tool.lab]\n", '[tool.lab]\nplugins = ["hello_cmd"]\n'))
    third = _console(lab_dir, cache, "--help")
    assert "say hello from this lab" in third.stdout
