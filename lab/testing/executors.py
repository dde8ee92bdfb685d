"""Contract tests for stage executors: subclass ``StageExecutorContract``, give it an ``executor``.

    from lab.testing import StageExecutorContract

    class TestMyExecutor(StageExecutorContract):
        @pytest.fixture
        def executor(self):
            return MyExecutor()

The tests write tiny notebooks (plain nbformat-4 JSON, a ``parameters`` cell and code
cells) under ``tmp_path`` and run them with ``executor.execute``: parameters reach the
kernel and appear in the executed copy, a cell that raises becomes ``StageFailed`` with
the error's last line as ``summary`` (the executed copy still written), and a missing
notebook is ``StageFailed`` too. Each test starts a kernel, so the suite takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.pipeline.stage import StageFailed

PARAMS = {"greeting": "hello", "n": 3, "ratio": 0.25, "items": ["a", "b"]}


def write_notebook(path: Path, *cells: str, parameters: str = "") -> Path:
    """A minimal nbformat-4 notebook: a cell tagged ``parameters`` (if given), then ``cells``."""

    def code(i: int, source: str, tags: tuple[str, ...] = ()) -> dict:
        return {"cell_type": "code", "execution_count": None, "id": f"cell-{i}",
                "metadata": {"tags": list(tags)}, "outputs": [], "source": source}

    body = [code(0, parameters, ("parameters",))] if parameters else []
    body += [code(i, c) for i, c in enumerate(cells, start=1)]
    notebook = {
        "cells": body,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, indent=1))
    return path


def _sources(notebook: Path) -> str:
    return "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                     for c in json.loads(notebook.read_text())["cells"])


class StageExecutorContract:
    """Parameters in, executed notebook out, failures as ``StageFailed``."""

    @pytest.fixture
    def executor(self):
        raise NotImplementedError("override the `executor` fixture: return the StageExecutor to check")

    def test_runs_a_notebook_with_its_parameters(self, executor, tmp_path):
        notebook = write_notebook(
            tmp_path / "stage.ipynb",
            "import json\n"
            "with open('seen.json', 'w') as fh:\n"
            "    json.dump({'greeting': greeting, 'n': n, 'ratio': ratio, 'items': items}, fh)",
            parameters="greeting = 'default'\nn = 0\nratio = 1.0\nitems = []",
        )
        out = tmp_path / "runs" / "stage.out.ipynb"
        workdir = tmp_path / "cwd"
        workdir.mkdir()
        executor.execute(notebook, out, dict(PARAMS), workdir)
        # The kernel ran in cwd and saw the parameters, not the defaults ...
        assert json.loads((workdir / "seen.json").read_text()) == PARAMS
        # ... and the executed copy shows what was injected.
        assert out.is_file(), "the executed notebook was not written to output_notebook"
        injected, original = _sources(out), _sources(notebook)
        for name in PARAMS:
            assert injected.count(name) > original.count(name), f"parameter {name} is not injected in the executed notebook"
        assert "hello" in injected and "0.25" in injected
        assert "hello" not in original, "the source notebook must not be changed"

    def test_a_raising_notebook_is_stage_failed_with_the_last_line(self, executor, tmp_path):
        notebook = write_notebook(
            tmp_path / "broken.ipynb",
            "x = 41",
            "raise ValueError(f'the answer is not {x + n}')",
            parameters="n = 0",
        )
        out = tmp_path / "broken.out.ipynb"
        with pytest.raises(StageFailed) as caught:
            executor.execute(notebook, out, {"n": 1}, tmp_path)
        assert "ValueError: the answer is not 42" in caught.value.summary
        assert "\n" not in caught.value.summary.strip(), "summary is the error's last line, not a traceback"
        assert out.is_file(), "a failed stage still writes the executed notebook, for debugging"

    def test_a_missing_notebook_is_stage_failed(self, executor, tmp_path):
        with pytest.raises(StageFailed) as caught:
            executor.execute(tmp_path / "nowhere.ipynb", tmp_path / "out.ipynb", {}, tmp_path)
        assert caught.value.summary
