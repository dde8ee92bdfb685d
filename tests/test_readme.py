"""README.md's commands work, in order, on a fresh lab after `make demo`.

A fresh lab is built in a temporary folder from this repository's lab files
(``pyproject.toml`` and ``notebooks/``; the fraud plugin comes from the installed
package), the demo runs there exactly as ``make demo`` runs it (``lab run``: the full,
exact dataset, a few minutes), then every ``sh`` block of the README's "After the demo"
section runs with bash, line by line as written, with ``set -euo pipefail``. Lines that
end in ``&`` start servers: their PIDs are recorded and exactly those are stopped at the
end, pass or fail. The README's ports are used when free; otherwise free ports are put in
their place (the test prints which).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests._helpers import free_port

REPO = Path(__file__).resolve().parent.parent
SECTION = "After the demo"
DEMO_TIMEOUT_S = 1200  # `lab run` on the exact dataset: about 2 minutes on a quiet 2-core machine
BLOCK_TIMEOUT_S = 900  # the first block trains a second version on the same data
READY_WAIT_S = 120  # the flag server loads two model versions before /readyz says 200


def readme_blocks(text: str) -> list[str]:
    """The ```sh blocks of the README's "After the demo" section, in order."""
    match = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no '## {SECTION}' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", match.group(1), re.S | re.M)
    assert blocks, f"README.md's '{SECTION}' section has no ```sh block"
    return blocks


def readme_ports(blocks: list[str]) -> list[int]:
    return sorted({int(p) for block in blocks for p in re.findall(r"--port (\d+)", block)})


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True




def as_script(block: str, lab_bin: str, ports: dict[int, int], pid_file: Path) -> str:
    """The block as a bash script: our lab binary and ports, and each `&` line's PID recorded."""
    text = block.replace(".venv/bin/lab", shlex.quote(lab_bin))
    for readme_port, port in ports.items():
        text = re.sub(rf"\b{readme_port}\b", str(port), text)
    lines = []
    for line in text.splitlines():
        # `cmd &   # comment` -> `cmd & echo $! >> pids   # comment` (the comment keeps its place)
        line = re.sub(r"(?<![&|])&(\s*(#.*)?)$", lambda m: f'& echo $! >> {shlex.quote(str(pid_file))}{m.group(1)}',
                      line)
        lines.append(line)
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"


def stop(pids: list[int]) -> None:
    """Stop exactly these processes: SIGTERM, then SIGKILL for any still there after 15 s."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_block(script: str, cwd: Path, log: Path, env: dict, timeout: float) -> tuple[int, str]:
    """Run a bash script in its own session, output to ``log`` (a pipe would be held open by the
    servers it starts); on timeout its session is killed. Returns (status, output)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = None
    text = log.read_text()
    assert status is not None, (f"the block did not finish within {timeout:.0f} s:\n{script}\n"
                                f"--- output ---\n{text[-6000:]}")
    return status, text


def wait_ready(port: int, seconds: float) -> float:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < seconds:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read()[:300]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"the server on port {port} was not ready within {seconds:.0f} s; last answer: {last}")


def json_objects(text: str) -> list[dict]:
    """Every JSON object that starts at a `{"` in ``text`` (curl prints its answer without a newline)."""
    found = []
    for match in re.finditer(r'\{"', text):
        try:
            value = json.JSONDecoder().raw_decode(text[match.start():])[0]
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


@pytest.fixture(scope="module")
def demo_lab(tmp_path_factory) -> Path:
    """A fresh lab after `make demo`: the lab files copied to a temporary folder and
    ``lab run`` run there (the full demo, a few minutes), once for the module's tests."""
    lab = tmp_path_factory.mktemp("readme") / "lab"
    lab.mkdir()
    shutil.copy2(REPO / "pyproject.toml", lab / "pyproject.toml")
    shutil.copytree(REPO / "notebooks", lab / "notebooks")
    started = time.monotonic()
    demo = subprocess.run([str(lab_command()), "run"], cwd=lab, env=lab_env(), capture_output=True, text=True,
                          timeout=DEMO_TIMEOUT_S)
    print(f"demo (lab run) {time.monotonic() - started:.0f} s")
    assert demo.returncode == 0, f"make demo's `lab run` failed:\n{demo.stdout[-4000:]}\n{demo.stderr[-4000:]}"
    assert "9 stage(s) ran" in demo.stdout and "champion fraud v1" in demo.stdout, demo.stdout[-2000:]
    return lab


def lab_command() -> Path:
    lab_bin = Path(sys.executable).parent / "lab"
    assert lab_bin.exists(), f"no lab command beside {sys.executable}; install the project (make test does)"
    return lab_bin


def lab_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "LAB_HOME"}


@pytest.mark.slow
def test_jupyterlab_shows_the_demo(demo_lab, tmp_path):
    """After `make demo`, `jupyter lab` in the lab shows the sidebar with the demo's
    pipeline run, its model and the monitor's checks; the screenshot docs/jupyterlab.md
    shows is taken here (``LAB_SCREENSHOTS=docs/images`` to refresh it)."""
    from tests import _browser

    if _browser.missing():
        pytest.skip(_browser.missing())
    from lab.registry import Registry

    with Registry.open(demo_lab / "registry.db", project_root=demo_lab) as registry:
        run = registry.last_pipeline_run()
        models = {m["name"]: m["aliases"] for m in registry.list_models()}
    stages = list(dict.fromkeys(s["stage"] for s in run["stages"]))  # a record as it starts, one as it ends
    assert len(stages) == 9 and all("champion" in a for a in models.values()), (stages, models)
    with _browser.jupyter_lab(tmp_path / "jupyter", demo_lab) as url, \
            _browser.sidebar_page(url, tmp_path / "chromium") as page:
        shown = page.locator(f'.lab-run[data-run="{run["id"]}"]')
        shown.wait_for()
        assert shown.get_attribute("data-status") == "finished"
        shown_stages = shown.locator(".lab-stage").evaluate_all("nodes => nodes.map(n => n.dataset.stage)")
        assert shown_stages == stages, (shown_stages, stages)
        for name, aliases in models.items():
            champion = page.locator(f'.lab-model-row[data-model="{name}"][data-version="{aliases["champion"]}"]')
            assert "champion" in champion.inner_text()
        page.locator('.lab-check[data-check="drift"]').wait_for()
        summary = json.loads((demo_lab / "data/monitor.json").read_text())
        views = [v["view"] for v in summary["checks"]["freshness"]["data"]["views"]]
        assert sorted(page.locator(".lab-fresh-row").evaluate_all("rows => rows.map(r => r.dataset.view)")) == \
            sorted(views) and views
        page.locator("#lab-sidebar").evaluate("node => node.scrollTo(0, 0)")
        _browser.shot(page, "demo")


@pytest.mark.slow
def test_the_demo_records_its_lineage_drift_and_monitor_and_a_rerun_skips_every_stage(demo_lab):
    """`make demo` end to end (the fixture's `lab run`): the champion's metrics, trials and
    lineage walk, drift per column, the monitor's summary and the evaluation gate; each
    stage keyed by the platform code it imported; and "run it again with nothing changed
    and every stage is skipped", as the README says. (Before the README's commands, which
    add versions.)"""
    from lab.config import load_config
    from lab.registry import Registry

    config = load_config(demo_lab)
    with Registry.open(config.registry_path, project_root=demo_lab) as reg:
        champion = reg.get_alias("fraud", "champion")
        assert champion is not None and champion.version == 1
        assert 0.5 < champion.metrics["roc_auc"] <= 1.0
        assert set(champion.metrics) >= {"roc_auc", "average_precision", "card_precision_at_100"}
        lineage = champion.lineage
        assert lineage["trainset_digest"] and lineage["feature_views"].keys() == {"customer_spending", "terminal_risk"}
        run = reg.get_run(champion.run_id)
        assert run["status"] == "finished" and reg.list_trials(champion.run_id)
        # One walk, no dead end: the train run logged the digest the features stage recorded
        # the training set under, with its source digest, window and views.
        assert run["data"] == {"training_set": lineage["trainset_digest"]}
        (data,) = reg.lineage("fraud", 1)["data"]
        (dataset,) = data["datasets"]
        assert data["digest"] == lineage["trainset_digest"] and dataset["path"] == "data/trainset.parquet"
        assert dataset["meta"]["source_digest"] and dataset["meta"]["views"] == lineage["feature_views"]
        drift = reg.list_drift()
        assert len({d["column"] for d in drift}) == 15
        assert all(d["model_version"] == 1 and d["score"] >= 0 for d in drift)
        # Each stage is keyed by the platform code it imported: training depends on the
        # flavor and the sweep, not on the model server.
        train = reg.last_finished_stage("train")["outputs"]["code_files"]
    assert {"lab/steps/training.py", "plugins/fraud/spec.py", "lab/training/sweep.py",
            "plugins/lightning_tabular/flavor.py"} <= set(train)
    assert "plugins/litestar_serving/app.py" not in train and "lab/serving/ledger.py" not in train

    run_dirs = [p for p in config.runs_path.iterdir() if p.is_dir() and (p / "01_simulate.ipynb").exists()]
    assert len(run_dirs) == 1 and len(list(run_dirs[0].glob("*.ipynb"))) == 9
    assert (demo_lab / "data/online.db").exists() and (demo_lab / "data/drift.html").stat().st_size > 10_000
    monitored = json.loads((demo_lab / "data/monitor.json").read_text())
    assert monitored["model"] == "fraud" and monitored["version"] == 1 and (demo_lab / "data/monitor.html").exists()
    assert {c["status"] for c in monitored["checks"].values()} <= {"ok", "breach", "skipped"}
    evaluation = json.loads((demo_lab / "data/evaluation.json").read_text())
    assert evaluation["gate"]["passed"] is True and evaluation["champion"] is None

    again = subprocess.run([str(lab_command()), "run", "--progress", "off"], cwd=demo_lab, env=lab_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 stage(s) ran, 9 skipped" in again.stdout and "champion fraud v1" in again.stdout, again.stdout[-2000:]


@pytest.mark.slow
def test_readme_commands_run_in_order_after_the_demo(demo_lab, tmp_path):
    fresh_lab, lab_bin, env = demo_lab, lab_command(), lab_env()
    blocks = readme_blocks((REPO / "README.md").read_text())
    ports = {p: p if port_is_free(p) else free_port() for p in readme_ports(blocks)}
    moved = {p: q for p, q in ports.items() if p != q}
    if moved:
        print(f"README ports in use here, replaced: {moved}")
    timings: dict[str, float] = {}

    pid_file = tmp_path / "server.pids"
    pid_file.touch()
    outputs = []
    try:
        for i, block in enumerate(blocks, start=1):
            script = as_script(block, str(lab_bin), ports, pid_file)
            started = time.monotonic()
            status, output = run_block(script, fresh_lab, tmp_path / f"block{i}.log", env, BLOCK_TIMEOUT_S)
            timings[f"README block {i}"] = time.monotonic() - started
            assert status == 0, f"README block {i} failed (exit {status}):\n{script}\n--- output ---\n{output[-6000:]}"
            outputs.append(output)
        servers = [int(p) for p in pid_file.read_text().split()]
        assert len(servers) == sum(len(re.findall(r"&\s*(#.*)?$", b, re.M)) for b in blocks)
        # The last server started (the flag server) becomes ready: both model versions load.
        flag_port = ports[int(re.findall(r"--port (\d+)", "\n".join(blocks))[-1])]
        timings["flag server ready"] = wait_ready(flag_port, READY_WAIT_S)
    finally:
        stop([int(p) for p in pid_file.read_text().split()])
        print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))

    for port in ports.values():  # the servers the README started are gone, not left listening
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"a server still listens on port {port}"
    first = outputs[0]
    answer = next((a for a in json_objects(first) if "score" in a), None)
    assert answer is not None, f"no /predict answer with a score in block 1's output:\n{first[-3000:]}"
    assert isinstance(answer["score"], float) and 0.0 <= answer["score"] <= 1.0, answer
    # The example is dated after the data ends, so it is scored on the materialized features, not on defaults.
    assert answer["defaults"] and not any(answer["defaults"].values()), answer
    assert "rolled back to version 1 (was version 2)" in first, first[-3000:]
    assert re.search(r"fraud: champion -> version 2|version 2 is already champion", first), first[-3000:]
    assert (fresh_lab / "ts.parquet").is_file() and (fresh_lab / "outcomes.parquet").is_file()
    reports = list((fresh_lab / "runs/experiments/new_ranker").glob("report-*.html"))
    assert len(reports) == 1, reports
    scale = outputs[-1]  # training beyond one run: reproduce, the job queue
    assert "fraud v1: reproduced exactly" in scale, scale[-3000:]
    assert re.search(r"^\d+\s+nap\s+finished\b", scale, re.M), scale[-3000:]
