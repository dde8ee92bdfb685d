"""``lab reproduce MODEL VERSION``: a version made by a real pipeline run (papermill stages)
re-run in a scratch copy of the lab, compared with what was registered, and each change
since (a parameter, a data row, a notebook cell, an unseeded stage) named as the cause."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

import pytest

from lab.config import load_config
from lab.pipeline.digest import path_digest
from lab.registry import Registry
from tests._helpers import run_lab, stage_notebook
from tests.conftest import write_pyproject

FIT = """
    import sys

    import numpy as np
    from lab.pipeline.context import StageContext

    sys.path.insert(0, root)
    import toy_rules  # the lab's own code, beside pyproject.toml

    with StageContext.open(root, run_dir) as ctx:
        xy = np.loadtxt(ctx.path("data/points.csv"), delimiter=",")
        x, y = xy[:, 0], xy[:, 1]
        slope = float(x @ y / (x @ x + ridge)) * toy_rules.FACTOR + noise * float(np.random.default_rng().normal())
        ctx.write_json("data/model.json", {"slope": slope})
"""

REGISTER = """
    from pathlib import Path

    import numpy as np
    from lab.pipeline.context import StageContext
    from lab.pipeline.digest import path_digest

    with StageContext.open(root, run_dir) as ctx:
        slope = ctx.read_json("data/model.json")["slope"]
        xy = np.loadtxt(ctx.path("data/points.csv"), delimiter=",")
        mae = float(np.mean(np.abs(xy[:, 1] - slope * xy[:, 0])))
        pipeline_run = Path(run_dir).name
        run_id = ctx.registry.start_run(kind="train", params={"slope": slope}, seeds={"seed": 0},
                                        parent_run_id=pipeline_run)
        ctx.registry.finish_run(run_id)
        version = ctx.registry.register_model(
            "toy", run_id=run_id, flavor="toy", artifact_path="data/model.json", metrics={"mae": mae},
            lineage={"pipeline_run_id": pipeline_run, "model_digest": path_digest(ctx.path("data/model.json"))})
        ctx.write_json("data/registered.json", {"version": version.version})
"""

PIPELINE = """
    [[stage]]
    name = "fit"
    notebook = "notebooks/fit.ipynb"
    inputs = ["data/points.csv"]
    outputs = ["data/model.json"]
    params = { ridge = 1.0, noise = NOISE }

    [[stage]]
    name = "register"
    notebook = "notebooks/register.ipynb"
    inputs = ["data/model.json", "data/points.csv"]
    outputs = ["data/registered.json"]

    [[stage]]
    name = "publish"
    notebook = "notebooks/publish.ipynb"
    inputs = ["data/registered.json"]
    outputs = ["data/published.txt"]
"""

FIT_PARAMS = 'root = "."\nrun_dir = "."\nridge = 0.0\nnoise = 0.0\n'


def make_toy_lab(root, *, noise: float = 0.0):
    """Three papermill stages: ``fit`` (a least-squares slope of data/points.csv, a source no
    stage writes, times the lab's own ``toy_rules.FACTOR``), ``register`` (the ``toy`` model
    with its MAE), ``publish`` (after it)."""
    write_pyproject(root, 'model_name = "toy"\n')
    (root / "toy_rules.py").write_text("FACTOR = 1.0\n")
    (root / "data").mkdir()
    (root / "data/points.csv").write_text("".join(f"{x},{2 * x + (-1) ** x * 0.5}\n" for x in range(1, 31)))
    stage_notebook(root / "notebooks/fit.ipynb", FIT, params=FIT_PARAMS)
    stage_notebook(root / "notebooks/register.ipynb", REGISTER)
    stage_notebook(root / "notebooks/publish.ipynb", """
        from pathlib import Path
        Path(root, "data/published.txt").write_text(Path(root, "data/registered.json").read_text())
    """)
    (root / "notebooks/pipeline.toml").write_text(textwrap.dedent(PIPELINE).replace("NOISE", repr(noise)))
    return root


@pytest.fixture
def toy_lab(tmp_path):
    return make_toy_lab(tmp_path / "lab")


def lab_state(root) -> dict:
    """What a reproduction must leave as it was: data/ files, model versions, aliases, runs
    other than reproduce runs, and the run folders."""
    config = load_config(root)
    with Registry.open(config.registry_path, project_root=root) as reg:
        versions = [v.to_dict() for v in reg.list_model_versions("toy")]
        aliases = reg.alias_history("toy") if versions and reg.aliases("toy") else []
        runs = [(r["id"], r["status"]) for r in reg.list_runs(limit=100) if r["kind"] != "reproduce"]
    return {"data": {p.name: path_digest(p) for p in sorted((root / "data").iterdir())}, "versions": versions,
            "aliases": aliases, "runs": runs,
            "run folders": sorted(p.name for p in (root / "runs").iterdir() if p.name != "reproduce")}


def reproduce_json(root, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = run_lab(root, "reproduce", "toy", "1", "--json", "--progress", "off", *extra)
    captured = capsys.readouterr()
    assert captured.out.startswith("{"), captured.err
    return rc, json.loads(captured.out)


def applied(report: dict) -> list[tuple]:
    return [(d["kind"], d["stage"], d["what"]) for d in report["differences"] if d["applied"]]


@pytest.mark.slow
def test_a_version_reproduces_exactly_in_a_scratch_copy_and_the_lab_is_left_alone(toy_lab, capsys):
    assert run_lab(toy_lab, "run", "fit", "register", "--progress", "off") == 0
    before = lab_state(toy_lab)
    capsys.readouterr()

    assert run_lab(toy_lab, "reproduce", "toy", "1", "--progress", "off") == 0
    out = capsys.readouterr().out
    assert re.search(r"^mae\s+\S+\s+\S+\s+0\s+yes$", out, re.M), out
    assert "model files (model_digest)" in out and ": same" in out
    assert "toy v1: reproduced exactly" in out and "no difference from the recorded run can be named" in out

    assert lab_state(toy_lab) == before  # no version, alias, run or data file of the lab changed
    with Registry.open(load_config(toy_lab).registry_path, project_root=toy_lab) as reg:
        (run,) = reg.list_runs(kind="reproduce")
        report = json.loads((toy_lab / run["artifacts"]["report"]).read_text())
    assert run["status"] == "finished" and run["params"]["reproduced"] is True and run["metrics"]["reproduced"] == 1
    assert run["params"]["model"] == "toy" and run["params"]["version"] == 1 and run["params"]["tolerance"] == 0
    # Up to the stage that registered the version (publish, defined after it, is not run), each
    # with its recorded parameters, with no cache.
    assert [(s["stage"], s["status"], s["params_from"]) for s in report["stages"]] == [
        ("fit", "finished", "recorded"), ("register", "finished", "recorded")]
    assert all(s["same_key"] and s["same_outputs"] for s in report["stages"])
    assert report["differences"] == [] and report["explanation"] == "reproduced exactly"
    scratch = toy_lab / report["scratch"]
    assert report["scratch"] == f"runs/reproduce/{run['id']}/lab"
    assert (scratch / "notebooks/pipeline.toml").exists() and (scratch / "runs").is_dir()
    assert not (scratch / "data").exists()  # the scratch copy's data is removed unless --keep


@pytest.mark.slow
def git(root, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=root,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_each_change_since_the_run_is_named_as_the_cause(toy_lab, capsys):
    # The lab is a git checkout, so the run records its commit and a code change is named by file.
    (toy_lab / ".gitignore").write_text("data/\nruns/\nregistry.db*\n")
    git(toy_lab, "init", "-q")
    git(toy_lab, "add", ".")
    git(toy_lab, "commit", "-q", "-m", "toy lab")
    assert run_lab(toy_lab, "run", "fit", "register", "--progress", "off") == 0
    pipeline = toy_lab / "notebooks/pipeline.toml"
    original_pipeline = pipeline.read_text()

    # A stage parameter changed in pipeline.toml: the re-run uses the recorded value and says so ...
    pipeline.write_text(original_pipeline.replace("ridge = 1.0", "ridge = 50.0"))
    rc, report = reproduce_json(toy_lab, capsys)
    assert rc == 0 and report["reproduced"]
    (param,) = report["differences"]
    assert (param["kind"], param["stage"], param["what"]) == ("params", "fit", "parameter ridge")
    assert (param["recorded"], param["now"], param["applied"]) == (1.0, 50.0, False)
    # ... and with --current-params today's value is what ran, and what moved the metric.
    rc, report = reproduce_json(toy_lab, capsys, "--current-params")
    (mae,) = report["metrics"]
    assert rc == 4 and not report["reproduced"] and mae["difference"] > 0 and not mae["within"]
    assert applied(report) == [("params", "fit", "parameter ridge")]
    assert "differences that can explain it: params, fit: parameter ridge (1.0 -> 50.0)" in report["explanation"]
    pipeline.write_text(original_pipeline)

    # A row of the source no stage writes.
    points = toy_lab / "data/points.csv"
    original_points = points.read_text()
    points.write_text(original_points.replace("1,1.5\n", "1,9.5\n", 1))
    rc, report = reproduce_json(toy_lab, capsys)
    assert rc == 4 and applied(report) == [("data", "fit, register", "input data/points.csv")]
    (cause,) = [d for d in report["differences"] if d["applied"]]
    assert cause["recorded"] != cause["now"] == path_digest(points)
    assert [s["same_key"] for s in report["stages"]] == [False, False]
    points.write_text(original_points)

    # A cell of the stage's notebook, at a tolerance wider than what it moves: within it, and still named.
    notebook = toy_lab / "notebooks/fit.ipynb"
    original_notebook = notebook.read_bytes()
    stage_notebook(toy_lab / "notebooks/fit.ipynb", FIT + "    ctx.write_json('data/model.json', {'slope': 2.5})\n",
                   params=FIT_PARAMS)
    rc, report = reproduce_json(toy_lab, capsys, "--tolerance", "10")
    (mae,) = report["metrics"]
    assert rc == 0 and report["reproduced"] and report["tolerance"] == 10 and 1 < mae["difference"] < 10
    assert applied(report) == [("notebook", "fit", "notebooks/fit.ipynb")]
    assert "code cell(s) 2 differ from the executed notebook" in report["differences"][0]["detail"]
    assert report["stages"][0]["differing_outputs"] == ["data/model.json"]
    assert report["explanation"] == "reproduced within 10; 1 difference(s) from the recorded run (notebook) did " \
                                    "not change the result"
    notebook.write_bytes(original_notebook)

    # The lab's own code the stage imported: named by git, against the commit the run recorded.
    (toy_lab / "toy_rules.py").write_text("FACTOR = 1.1\n")
    rc, report = reproduce_json(toy_lab, capsys)
    assert rc == 4 and applied(report) == [("code", "fit", "the code the stage imported")]
    assert f"changed since commit {git(toy_lab, 'rev-parse', 'HEAD')[:12]}: project:toy_rules.py" in \
        report["differences"][0]["detail"]

    # What cannot be re-run is a LabError naming the fix, and recorded as a failed reproduce run.
    points.unlink()
    assert run_lab(toy_lab, "reproduce", "toy", "1") == 2
    assert "read data/points.csv when the version was made" in capsys.readouterr().err
    with Registry.open(load_config(toy_lab).registry_path, project_root=toy_lab) as reg:
        assert reg.list_runs(kind="reproduce")[0]["status"] == "failed"
    pipeline.write_text(original_pipeline.split("[[stage]]\nname = \"register\"")[0])
    assert run_lab(toy_lab, "reproduce", "toy", "1") == 2
    assert "stage 'register', which registered toy v1, is no longer in notebooks/pipeline.toml" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_an_unseeded_stage_is_named_as_not_deterministic(tmp_path, capsys):
    lab = make_toy_lab(tmp_path / "lab", noise=0.01)
    assert run_lab(lab, "run", "fit", "register", "--progress", "off") == 0
    rc, report = reproduce_json(lab, capsys)
    assert rc == 4 and applied(report) == []
    fit, _ = report["stages"]
    assert fit["same_key"] is True and fit["same_outputs"] is False
    assert "fit ran with the same notebook, parameters, inputs and code as recorded, so a stage is not " \
           "deterministic here" in report["explanation"]


def test_unknown_models_versions_and_versions_without_a_pipeline_run_are_clear_errors(tmp_path, capsys):
    write_pyproject(tmp_path, 'model_name = "toy"\n')
    config = load_config(tmp_path)
    with Registry.open(config.registry_path, project_root=tmp_path) as reg:
        reg.register_model("toy", run_id=None, flavor="toy", artifact_path="model.json", metrics={"mae": 1.0},
                           lineage={})
    for argv, message in [
        (["nope", "1"], "no model named 'nope'; registered models: toy"),
        (["toy", "7"], "model 'toy' has no version 7; its versions are 1"),
        (["toy", "1"], "model 'toy' version 1 has no recorded pipeline run"),
        (["toy", "1", "--tolerance", "-1"], "--tolerance must be 0 or more"),
    ]:
        capsys.readouterr()
        assert run_lab(tmp_path, "reproduce", *argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    (tmp_path / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text()
                                             + "\n[tool.lab.reproduce]\ntolerance = -0.5\n")
    assert run_lab(tmp_path, "reproduce", "toy", "1") == 2
    assert "[tool.lab.reproduce] tolerance must be 0 or more" in capsys.readouterr().err
