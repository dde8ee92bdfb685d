"""The pipeline runner on toy notebooks: caching, retries, resume, declared outputs, events."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from lab import hookimpl
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.pipeline.runner import run_pipeline
from lab.plugins import make_plugin_manager
from lab.registry import Registry
from tests.conftest import write_pyproject


def make_notebook(path: Path, params: str, body: str) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = new_code_cell(textwrap.dedent(params))
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell("# toy"), cell, new_code_cell(textwrap.dedent(body))]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def toy_lab(tmp_path):
    """Two stages: `make` writes data/a.txt from a parameter; `use` fails until data/ok exists."""
    write_pyproject(tmp_path, """
        [tool.lab.pipeline]
        stages = ["make", "use"]
        retries = 1
    """)
    make_notebook(tmp_path / "notebooks/make.ipynb", 'root = "."\nrun_dir = "."\nword = "x"\n', """
        from pathlib import Path
        Path(root, "data").mkdir(exist_ok=True)
        Path(root, "data/a.txt").write_text(word)
        with open(Path(root, "calls.log"), "a") as fh:
            fh.write("make\\n")
    """)
    make_notebook(tmp_path / "notebooks/use.ipynb", 'root = "."\nrun_dir = "."\n', """
        from pathlib import Path
        with open(Path(root, "calls.log"), "a") as fh:
            fh.write("use\\n")
        if not Path(root, "data/ok").exists():
            raise RuntimeError("data/ok is missing")
        Path(root, "data/b.txt").write_text(Path(root, "data/a.txt").read_text().upper())
    """)
    (tmp_path / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "make"
        notebook = "notebooks/make.ipynb"
        outputs = ["data/a.txt"]
        params = { word = "hello" }

        [[stage]]
        name = "use"
        notebook = "notebooks/use.ipynb"
        inputs = ["data/a.txt"]
        outputs = ["data/b.txt"]
    """))
    return tmp_path


def calls(root: Path) -> list[str]:
    path = root / "calls.log"
    return path.read_text().split() if path.exists() else []


class Recorder:
    def __init__(self):
        self.events = []
        self.wrapped = []

    @hookimpl
    def lab_on_event(self, event):
        self.events.append((event.name, event.payload.get("stage")))

    @hookimpl(wrapper=True)
    def lab_execute_stage(self, stage):
        result = yield
        self.wrapped.append((stage.name, result["seconds"] >= 0))
        return result


def test_failure_retries_then_resume_then_cache(toy_lab):
    config = load_config(toy_lab)
    pm = make_plugin_manager()
    rec = Recorder()
    pm.register(rec)
    logs: list[str] = []

    # `use` fails twice (1 + retries), the run stops and keeps the executed notebook.
    with pytest.raises(LabError) as info:
        run_pipeline(config, pm, log=logs.append)
    assert "failed after 2 attempt(s)" in str(info.value) and "resumes from 'use'" in str(info.value)
    assert calls(toy_lab) == ["make", "use", "use"]
    assert ("stage.failed", "use") in rec.events and ("stage.finished", "make") in rec.events
    with Registry.open(config.registry_path) as reg:
        failed = reg.last_pipeline_run()
        assert failed["status"] == "failed"
    kept = list((config.runs_path / failed["id"]).glob("02_use*.ipynb"))
    assert len(kept) == 2 and "data/ok is missing" in kept[0].read_text()

    # Fix the cause: the same run resumes, `make` is not run again.
    (toy_lab / "data/ok").write_text("")
    result = run_pipeline(config, pm, log=logs.append)
    assert result.resumed and result.run_id == failed["id"]
    assert [s.status for s in result.stages] == ["skipped", "finished"]
    assert calls(toy_lab) == ["make", "use", "use", "use"]
    assert (toy_lab / "data/b.txt").read_text() == "HELLO"
    assert ("make", True) not in rec.wrapped[1:] and ("use", True) in rec.wrapped

    # Nothing changed: a new run skips everything.
    again = run_pipeline(config, pm, log=logs.append)
    assert not again.resumed and again.run_id != result.run_id
    assert [s.status for s in again.stages] == ["skipped", "skipped"]
    assert calls(toy_lab) == ["make", "use", "use", "use"]


def test_changed_parameter_or_input_or_missing_output_reruns(toy_lab):
    (toy_lab / "data").mkdir()
    (toy_lab / "data/ok").write_text("")
    config = load_config(toy_lab)
    pm = make_plugin_manager()
    run_pipeline(config, pm, log=lambda m: None)
    assert calls(toy_lab) == ["make", "use"]

    # A changed parameter reruns `make`; its output is unchanged, so `use` stays cached.
    toml = toy_lab / "notebooks/pipeline.toml"
    toml.write_text(toml.read_text().replace('word = "hello"', 'word = "hello", extra = 1'))
    run_pipeline(config, pm, log=lambda m: None)
    assert calls(toy_lab) == ["make", "use", "make"]

    # A changed input reruns its consumer.
    toml.write_text(toml.read_text().replace('word = "hello"', 'word = "bye"'))
    run_pipeline(config, pm, log=lambda m: None)
    assert calls(toy_lab) == ["make", "use", "make", "make", "use"]
    assert (toy_lab / "data/b.txt").read_text() == "BYE"

    # A deleted output reruns the stage that declared it.
    (toy_lab / "data/b.txt").unlink()
    run_pipeline(config, pm, log=lambda m: None)
    assert calls(toy_lab)[-1] == "use" and (toy_lab / "data/b.txt").exists()

    # --force reruns everything.
    result = run_pipeline(config, pm, force=True, log=lambda m: None)
    assert [s.status for s in result.stages] == ["finished", "finished"]


def test_undeclared_output_fails_the_stage(toy_lab):
    toml = toy_lab / "notebooks/pipeline.toml"
    toml.write_text(toml.read_text().replace('outputs = ["data/a.txt"]', 'outputs = ["data/a.txt", "data/never.txt"]'))
    config = load_config(toy_lab, pipeline={"stages": ("make",), "retries": 0})
    with pytest.raises(LabError, match="failed after 1 attempt"):
        run_pipeline(config, make_plugin_manager(), log=lambda m: None)


def test_missing_input_names_the_producer(toy_lab):
    config = load_config(toy_lab, pipeline={"stages": ("use",), "retries": 0})
    with pytest.raises(LabError, match="needs data/a.txt, which does not exist"):
        run_pipeline(config, make_plugin_manager(), log=lambda m: None)


def test_unknown_stage_names_are_config_errors(toy_lab):
    config = load_config(toy_lab)
    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(config, make_plugin_manager(), only=["nope"], log=lambda m: None)
    bad = load_config(toy_lab, pipeline={"stages": ("make", "ghost")})
    with pytest.raises(ConfigError, match="not defined in notebooks/pipeline.toml"):
        run_pipeline(bad, make_plugin_manager(), log=lambda m: None)


def test_a_plugin_can_replace_the_stage_executor(toy_lab):
    ran = []

    class InlineExecutor:
        def execute(self, notebook, output_notebook, params, cwd):
            ran.append(notebook.name)
            Path(cwd, "data").mkdir(exist_ok=True)
            Path(cwd, "data/a.txt").write_text("inline")
            output_notebook.write_text("{}")

    class Plugin:
        @hookimpl
        def lab_stage_executor(self, config):
            return InlineExecutor()

    pm = make_plugin_manager()
    pm.register(Plugin())
    config = load_config(toy_lab, pipeline={"stages": ("make",), "retries": 0})
    run_pipeline(config, pm, log=lambda m: None)
    assert ran == ["make.ipynb"] and calls(toy_lab) == []


class InProcessExecutor:
    """Runs a toy notebook's code cells in this process (parameters cell overridden),
    so cache tests need no kernel start-up; the runner around it is the real one."""

    def execute(self, notebook, output_notebook, params, cwd):
        nb = nbformat.read(notebook, as_version=4)
        scope: dict = {}
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            exec(cell.source, scope)
            if "parameters" in cell.metadata.get("tags", []):
                scope.update(params)
        Path(output_notebook).write_text("{}")


class InProcess:
    @hookimpl
    def lab_stage_executor(self, config):
        return InProcessExecutor()


def test_a_cache_hit_is_void_when_outputs_hold_another_configurations_bytes(toy_lab):
    (toy_lab / "data").mkdir()
    (toy_lab / "data/ok").write_text("")
    config = load_config(toy_lab)
    pm = make_plugin_manager()
    pm.register(InProcess())
    toml = toy_lab / "notebooks/pipeline.toml"

    def run_with(word: str) -> list[str]:
        toml.write_text(toml.read_text().replace('word = "hello"', f'word = "{word}"')
                        .replace('word = "bye"', f'word = "{word}"'))
        return [s.status for s in run_pipeline(config, pm, log=lambda m: None).stages]

    assert run_with("hello") == ["finished", "finished"]
    assert run_with("bye") == ["finished", "finished"]
    assert (toy_lab / "data/b.txt").read_text() == "BYE"
    # Back to the first configuration: its records exist, but the outputs on disk are
    # the second one's, so both stages run again and the outputs are the first one's.
    assert run_with("hello") == ["finished", "finished"]
    assert (toy_lab / "data/a.txt").read_text() == "hello"
    assert (toy_lab / "data/b.txt").read_text() == "HELLO"
    assert calls(toy_lab) == ["make", "use"] * 3
    # Unchanged now: skipped, and the skip carries the digests it checked.
    assert run_with("hello") == ["skipped", "skipped"]
    # An output edited by hand is not trusted either.
    (toy_lab / "data/b.txt").write_text("tampered")
    assert run_with("hello") == ["skipped", "finished"]
    assert (toy_lab / "data/b.txt").read_text() == "HELLO"
    with Registry.open(config.registry_path) as reg:
        last = reg.last_finished_stage("use")
    assert last["output_digests"] == {"data/b.txt": hashlib.sha256(b"HELLO").hexdigest()}


def test_stage_records_from_before_output_digests_rerun_once(toy_lab):
    """A registry.db made before stage output digests is migrated on open; a finished record
    in it carries none, so its stage runs once more (then it is cached as usual)."""
    from lab import sqlite as layer
    from lab.pipeline.runner import cache_key, select_stages, stage_params
    from lab.registry import MIGRATIONS

    config = load_config(toy_lab, pipeline={"stages": ("make",), "retries": 0})
    (stage,) = select_stages(config)
    database = layer.Database.open(config.registry_path)
    try:
        database.migrate("registry", MIGRATIONS[:4])
        with database.write() as db:
            assert "output_digests" not in {r["name"] for r in db.execute("PRAGMA table_info(stage_records)")}
            layer.insert(db, "runs", {"id": "old", "kind": "pipeline", "status": "finished", "started_at": "2026-01-01"})
            key, _ = cache_key(config, None, stage, stage_params(config, stage, toy_lab / "runs/old"), {})
            layer.insert(db, "stage_records", {"pipeline_run_id": "old", "stage": "make", "status": "finished",
                                               "attempt": 1, "cache_key": key, "outputs": "{}", "at": "2026-01-01"})
    finally:
        database.close()
    (toy_lab / "data").mkdir()
    (toy_lab / "data/a.txt").write_text("left by someone else")

    pm = make_plugin_manager()
    pm.register(InProcess())
    with Registry.open(config.registry_path) as reg:
        assert "0005_stage_output_digests" in [m["name"] for m in reg.migrations()]
        assert reg.find_stage_cache("make", key)["output_digests"] is None
    assert [s.status for s in run_pipeline(config, pm, log=lambda m: None).stages] == ["finished"]
    assert (toy_lab / "data/a.txt").read_text() == "hello"
    assert [s.status for s in run_pipeline(config, pm, log=lambda m: None).stages] == ["skipped"]


def test_editing_the_labs_own_module_reruns_the_stages_that_imported_it(tmp_path):
    # A lab's plugin module (beside pyproject.toml) is code the stage ran, as lab/ is:
    # the kernel records it through StageContext and the cache key covers its bytes.
    write_pyproject(tmp_path, "")
    (tmp_path / "my_rules.py").write_text("WORD = 'one'\n")
    make_notebook(tmp_path / "notebooks/make.ipynb", 'root = "."\nrun_dir = "."\n', """
        import sys
        from pathlib import Path
        sys.path.insert(0, root)
        import my_rules
        from lab.pipeline.context import StageContext
        with StageContext.open(root, run_dir):
            Path(root, "data").mkdir(exist_ok=True)
            Path(root, "data/a.txt").write_text(my_rules.WORD)
    """)
    (tmp_path / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "make"
        notebook = "notebooks/make.ipynb"
        outputs = ["data/a.txt"]
    """))
    config = load_config(tmp_path)
    pm = make_plugin_manager()

    def run() -> str:
        return run_pipeline(config, pm, log=lambda m: None).stages[0].status

    assert run() == "finished"
    with Registry.open(config.registry_path) as reg:
        assert "project:my_rules.py" in reg.last_finished_stage("make")["outputs"]["code_files"]
    assert run() == "skipped"
    (tmp_path / "my_rules.py").write_text("WORD = 'two'\n")
    assert run() == "finished"
    assert (tmp_path / "data/a.txt").read_text() == "two"


def test_code_files_skip_modules_without_a_real_path(tmp_path, monkeypatch):
    """A module object whose ``__file__`` is a bare name (torch.ops has "_ops.py") is not a
    file of the lab, even when the working folder is the lab's: resolving the name there
    would record a ``project:`` file that does not exist."""
    import sys
    import types

    from lab.pipeline.digest import imported_code_files

    (tmp_path / "own_plugin.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    bare = types.ModuleType("lab_test_bare_ops")
    bare.__file__ = "_ops.py"
    monkeypatch.setitem(sys.modules, "lab_test_bare_ops", bare)
    import own_plugin  # noqa: F401 - a real module of the lab: recorded

    monkeypatch.delitem(sys.modules, "own_plugin")
    monkeypatch.setitem(sys.modules, "own_plugin", own_plugin)
    files = [f for f in imported_code_files(tmp_path) if f.startswith("project:")]
    assert files == ["project:own_plugin.py"]
