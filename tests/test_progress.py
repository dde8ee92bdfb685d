"""Live progress of pipeline stages (lab.pipeline.progress): reports from a stage's kernel,
the runner's bars and lines, and read_progress from another thread and process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import LabError
from lab.pipeline import progress
from lab.pipeline.progress import PROGRESS_FILE_ENV, read_progress, report
from lab.pipeline.runner import run_pipeline
from lab.plugins import make_plugin_manager
from tests.conftest import REPO, tiny_fraud_data, write_pyproject
from tests.test_pipeline_runner import make_notebook

STEPS = 5


@pytest.fixture(autouse=True)
def fresh_reporter(monkeypatch):
    """Each test starts with a reporter that has written nothing and no progress file named."""
    monkeypatch.setattr(progress, "_reporter", progress._Reporter())
    monkeypatch.delenv(PROGRESS_FILE_ENV, raising=False)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the kernel side --------------------------------------------------------------------------

def test_report_outside_a_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    for i in range(100_000):
        report(i, 100_000)
    elapsed = time.perf_counter() - started
    assert list(progress.track(range(3))) == [0, 1, 2]
    progress.flush()
    assert list(tmp_path.iterdir()) == []
    assert elapsed < 2.0  # about 0.2 µs a call here; generous for a loaded machine


def test_rate_limit_keeps_a_tight_loop_to_a_few_lines_and_always_the_final_count(tmp_path, monkeypatch):
    target = tmp_path / "progress" / "score.jsonl"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(target))
    for i in range(1, 100_001):
        report(i, total=100_000, unit="rows", what="rows scored")
    written = lines(target)
    assert 2 <= len(written) <= 300
    assert [r["done"] for r in written] == sorted(r["done"] for r in written)
    assert written[-1] == {**written[-1], "stage": "score", "done": 100_000, "total": 100_000,
                           "unit": "rows", "what": "rows scored"}

    # With no total there is no "final" call: the held-back last count is written by flush().
    other = tmp_path / "progress" / "load.jsonl"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(other))
    for i in range(1, 50_001):
        report(i, unit="rows")
    assert lines(other)[-1]["done"] < 50_000
    progress.flush()
    assert lines(other)[-1]["done"] == 50_000 and lines(other)[-1]["total"] is None

    # A new unit (a new phase of the stage) is written at once, whatever the rate limit.
    report(1, 10, unit="views")
    assert lines(other)[-1]["unit"] == "views"


def test_track_reports_each_item_and_the_end(tmp_path, monkeypatch):
    target = tmp_path / "t.jsonl"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(target))
    assert sum(progress.track(range(1000), unit="views")) == sum(range(1000))
    last = lines(target)[-1]
    assert (last["done"], last["total"], last["unit"]) == (1000, 1000, "views")


@pytest.mark.parametrize("args, fix", [(("many",), "done must be a number"), ((-1,), "0 or more"),
                                       ((1, "ten"), "total must be a number"), ((float("nan"),), "finite")])
def test_bad_reports_are_lab_errors_naming_the_fix(tmp_path, monkeypatch, args, fix):
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(tmp_path / "x.jsonl"))
    with pytest.raises(LabError, match=fix):
        report(*args)


# -- the pipeline: live, then finished ---------------------------------------------------------

@pytest.fixture
def counting_lab(tmp_path):
    """One stage that reports 1..STEPS, each after the test has seen the previous one."""
    write_pyproject(tmp_path, "[tool.lab.pipeline]\nretries = 0\n")
    make_notebook(tmp_path / "notebooks/count.ipynb", 'root = "."\nrun_dir = "."\n', f"""
        import time
        from pathlib import Path
        from lab.pipeline.progress import report

        for i in range(1, {STEPS} + 1):
            report(i, total={STEPS}, unit="steps", what="counting")
            ack = Path(root, f"ack{{i}}")
            deadline = time.monotonic() + 60
            while i < {STEPS} and not ack.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.15)  # past the rate limit: every step is written
        Path(root, "data").mkdir(exist_ok=True)
        Path(root, "data/count.txt").write_text(str(i))
    """)
    (tmp_path / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "count"
        notebook = "notebooks/count.ipynb"
        outputs = ["data/count.txt"]
    """))
    return tmp_path


def test_read_progress_follows_a_running_stage_then_shows_it_finished(counting_lab):
    config = load_config(counting_lab)
    assert read_progress(config) == {"run_id": None, "status": None, "stages": []}
    logs: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_pipeline(config, make_plugin_manager(), log=logs.append)
        except BaseException as exc:  # surfaced below
            failure.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    seen = []
    deadline = time.monotonic() + 120
    while len(seen) < STEPS - 1 and time.monotonic() < deadline and runner.is_alive():
        state = read_progress(config)
        stage = state["stages"][0] if state["stages"] else None
        if stage and stage["done"] == len(seen) + 1:
            assert state["status"] == "running" and stage["status"] == "running"
            assert (stage["total"], stage["unit"], stage["what"]) == (STEPS, "steps", "counting")
            assert stage["seconds"] >= 0
            seen.append(stage["done"])
            (counting_lab / f"ack{stage['done']}").touch()
        time.sleep(0.02)
    runner.join(120)
    assert not failure, failure
    assert seen == list(range(1, STEPS))

    done = read_progress(config)
    assert done["status"] == "finished" and done["run_id"]
    (stage,) = done["stages"]
    assert (stage["name"], stage["status"], stage["done"], stage["total"]) == ("count", "finished", STEPS, STEPS)
    # The runner's plain output: the stage's final count, among the lines the tests know.
    assert f"    count: {STEPS}/{STEPS} steps (counting)" in logs
    assert any(line.startswith("    count finished in") for line in logs)

    # Another process reads the same from the files.
    code = "import json, sys; from lab.config import load_config; from lab.pipeline.progress import read_progress; " \
           "print(json.dumps(read_progress(load_config(sys.argv[1]))))"
    out = subprocess.run([sys.executable, "-c", code, str(counting_lab)], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=True).stdout
    assert json.loads(out)["stages"][0]["done"] == STEPS

    # `lab run` again: nothing changed, the stage shows skipped, with no count.
    for i in range(1, STEPS):
        (counting_lab / f"ack{i}").touch()
    assert main(["--root", str(counting_lab), "run"]) == 0
    again = read_progress(config)
    assert again["run_id"] != done["run_id"]
    assert [(s["status"], s["done"]) for s in again["stages"]] == [("skipped", None)]


def test_a_run_whose_process_died_reads_as_failed(tmp_path):
    write_pyproject(tmp_path)
    config = load_config(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    run_dir = config.runs_path / "r1"
    with progress.RunProgress(config.runs_path, "r1", ["a", "b"], mode="off") as tracker:
        tracker.stage_started("a", 1)
        tracker.stage_ended("a", "finished", 1.5)
        tracker.stage_started("b", 1)
        (run_dir / "progress" / "b.jsonl").write_text(json.dumps({"done": 7, "total": None, "unit": "rows"}) + "\n")
        state = json.loads((run_dir / "progress" / "run.json").read_text())
        state["pid"] = int(dead)  # as if `lab run` had been killed mid-stage
        (run_dir / "progress" / "run.json").write_text(json.dumps(state))
        read = read_progress(config)
        assert read["status"] == "failed"
        assert [(s["name"], s["status"], s["done"]) for s in read["stages"]] == [("a", "finished", None),
                                                                                  ("b", "failed", 7)]
        assert "ended while the stage ran" in read["stages"][1]["error"]


# -- the displays ------------------------------------------------------------------------------

def test_plain_lines_stay_few_over_an_hour_of_reports():
    out: list[str] = []
    now = [0.0]
    shown = progress._Lines(out.append, clock=lambda: now[0])
    shown.start("train")
    for tick in range(4 * 3600):  # four reports a second for an hour
        now[0] = tick / 4
        shown.update("train", {"done": tick, "total": 14_400, "unit": "steps", "what": ""})
    shown.end("train", {"done": 14_400, "total": 14_400, "unit": "steps", "what": "fitting"}, "finished")
    assert 10 <= len(out) <= 40
    assert out[0] == "    train: 40/14,400 steps, 10 s"
    assert out[-1] == "    train: 14,400/14,400 steps (fitting)"


def test_bars_on_a_terminal_show_each_stage_count():
    from rich.console import Console

    buffer = io.StringIO()
    bars = progress._Bars(console=Console(file=buffer, force_terminal=True, width=110))
    bars.start("simulate")
    bars.update("simulate", {"done": 250, "total": 1000, "unit": "customers", "what": "replaying"})
    bars.end("simulate", {"done": 1000, "total": 1000, "unit": "customers", "what": "replaying"}, "finished")
    bars.start("train")
    bars.end("train", None, "failed")
    bars.close()
    text = buffer.getvalue()
    assert "1,000/1,000 customers" in text and "simulate · replaying" in text and "train failed" in text


# -- the instrumented stages --------------------------------------------------------------------

def test_the_simulate_stage_reports_customers_then_rows(tmp_path, monkeypatch):
    from plugins.fraud import stages

    target = tmp_path / "runs/r/progress/simulate.jsonl"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(target))
    summary = stages.simulate(tmp_path, tmp_path / "runs/r", exact=True, n_customers=60, n_terminals=150,
                              nb_days=45, start_date="2018-04-01", radius=15.0, seed=0)
    written = lines(target)
    customers = [r for r in written if r["unit"] == "customers"]
    assert customers and customers[-1]["total"] == 60 and customers[-1]["done"] <= 60
    assert written[-1] == {**written[-1], "stage": "simulate", "unit": "rows",
                           "done": summary["n_transactions"], "total": summary["n_transactions"]}


def test_a_sweep_reports_trials_and_epochs_through_the_callbacks(tmp_path, monkeypatch):
    from lab.training.sweep import default_sweep_storage, run_sweep
    from plugins.lightning_tabular.flavor import LightningMLP

    target = tmp_path / "train.jsonl"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(target))
    # Epochs come seconds apart in real training; here they are milliseconds apart.
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 0.0)
    tracker = progress.SweepProgress(n_trials=2, max_epochs=2)
    tracker.start()
    run_sweep(LightningMLP(), *tiny_fraud_data(600), ["a", "b", "c", "d"], n_trials=2, max_epochs=2, seed=3,
              storage=default_sweep_storage(tmp_path), study_name="s", workdir=tmp_path,
              callbacks=[tracker], on_trial=tracker.trial_finished)
    written = lines(target)
    assert written[0]["done"] == 0 and written[0]["what"] == "sweep starting"
    assert all(r["unit"] == "trials" and r["total"] == 2 for r in written)
    assert any("trial 1: epoch 2/2" in r["what"] for r in written)
    assert [r["done"] for r in written] == sorted(r["done"] for r in written) and written[-1]["done"] == 2
    assert written[-1]["what"].startswith("trial 2 complete at ")  # the pruner waits for 2 trials
