"""``lab run --set SECTION.KEY=VALUE``: a setting for this run only, in the stage's cache key."""

from __future__ import annotations

import textwrap

import pytest

from lab.cli import main
from lab.config import load_config
from tests.conftest import write_pyproject
from tests.test_pipeline_runner import make_notebook


@pytest.fixture
def seed_lab(tmp_path):
    """One stage that writes the seed it was given to data/seed.txt."""
    write_pyproject(tmp_path, """
        model_name = "toy"
        [tool.lab.train]
        seed = 3
    """)
    make_notebook(tmp_path / "notebooks/train.ipynb", 'root = "."\nrun_dir = "."\nseed = 0\n', """
        from lab.pipeline.context import StageContext

        # Through a StageContext, as real steps do: the stage is keyed by the code it imported.
        with StageContext.open(root, run_dir) as ctx:
            ctx.path("data").mkdir(exist_ok=True)
            ctx.path("data/seed.txt").write_text(str(seed))
    """)
    (tmp_path / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "train"
        notebook = "notebooks/train.ipynb"
        config = ["train.seed"]
        outputs = ["data/seed.txt"]
    """))
    return tmp_path


def run(lab, *args) -> int:
    return main(["--root", str(lab), "run", *args])


@pytest.mark.slow
def test_set_reruns_the_stage_with_the_value_and_leaves_the_file_alone(seed_lab, capsys):
    before = (seed_lab / "pyproject.toml").read_text()
    assert run(seed_lab) == 0
    assert (seed_lab / "data/seed.txt").read_text() == "3"
    assert run(seed_lab) == 0 and "0 stage(s) ran, 1 skipped" in capsys.readouterr().out

    assert run(seed_lab, "--set", "train.seed=7") == 0
    assert "1 stage(s) ran, 0 skipped" in capsys.readouterr().out
    assert (seed_lab / "data/seed.txt").read_text() == "7"
    assert run(seed_lab, "--set", "train.seed=7") == 0  # the same override is cached like any parameter
    assert "0 stage(s) ran, 1 skipped" in capsys.readouterr().out

    assert (seed_lab / "pyproject.toml").read_text() == before and load_config(seed_lab).train.seed == 3
    assert run(seed_lab) == 0  # back to the file's value: its outputs changed since, so it runs again
    assert (seed_lab / "data/seed.txt").read_text() == "3"


@pytest.mark.parametrize("item, needle", [
    ("train.seed=seven", "lab: error: --set train.seed=seven: [tool.lab.train] seed must be a number"),
    ("train.sed=7", "unknown key(s) sed in [tool.lab.train]"),
    ("nope.x=1", "unknown section [tool.lab.nope]"),
])
def test_a_bad_set_is_one_line_and_runs_nothing(seed_lab, capsys, item, needle):
    assert run(seed_lab, "--set", item) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (seed_lab / "data").exists() and not (seed_lab / "runs").exists()


def test_help_names_set(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--set SECTION.KEY=VALUE" in capsys.readouterr().out
