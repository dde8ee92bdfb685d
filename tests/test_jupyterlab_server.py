"""The JupyterLab server extension (plugins/jupyterlab_ext) in a real jupyter server.

One `jupyter server` on 127.0.0.1 with a token, rooted at a tiny lab (a registered model
v1 as champion and a v2 to promote, [tool.lab.gate] require_approval, a toy notebook
stage); the extension is enabled by the config file lab installs (shared-data), as after
`pip install -e .`. Every route of docs/jupyterlab.md is driven with httpx and checked
against the registry, the experiment store and the job files it must have changed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from lab.errors import NotFound
from lab.experiments import Experiment, ExperimentStore, Variant
from lab.monitoring.monitor import run_monitor
from lab.registry import Registry
from lab.serving.ledger import Ledger, PredictionRecord
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab
from plugins.jupyterlab_ext import views
from plugins.jupyterlab_ext.monitor_plots import QUALITY_METRICS
from plugins.jupyterlab_ext.views import find_lab
from tests._helpers import free_port, stage_notebook, stop_process
from tests._served_lab import SERVED_DAYS, SERVED_FROM, served_tiny_lab

pytestmark = pytest.mark.slow

TOKEN = "lab-test-token"


def _toy_stages(root: Path) -> None:
    stage_notebook(root / "notebooks/touch.ipynb", """
        from pathlib import Path
        Path(root, "data").mkdir(exist_ok=True)
        Path(root, "data/touched.txt").write_text("touched")
        print("touch stage done")
    """)
    stage_notebook(root / "notebooks/other.ipynb", "print('other')\n")
    (root / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "touch"
        notebook = "notebooks/touch.ipynb"
        outputs = ["data/touched.txt"]

        [[stage]]
        name = "other"
        notebook = "notebooks/other.ipynb"
    """))
    (root / "notebooks/scratch.ipynb").write_text((root / "notebooks/other.ipynb").read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A jupyter server on a tiny lab: ``(client, root)``; stopped by PID at the end."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "lab"
    root.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LAB_HOME"}
    env.update(JUPYTER_CONFIG_DIR=str(base / "jupyter-config"), JUPYTER_RUNTIME_DIR=str(base / "jupyter-runtime"))
    log = open(base / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
         "--ServerApp.open_browser=False", "--allow-root"],
        cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/", headers={"Authorization": f"token {TOKEN}"},
                          timeout=30)
    try:
        # The lab is built while the server starts: the extension finds it on the first request.
        tiny = build_tiny_lab(root)
        with open(root / "pyproject.toml", "a") as fh:
            fh.write("\n[tool.lab.gate]\nrequire_approval = true\n")
        with Registry.open(root / "registry.db", project_root=root) as registry:
            v1 = registry.get_model_version(tiny.model_name, 1)
            registry.register_model(tiny.model_name, run_id=None, flavor=v1.flavor, artifact_path=MODEL_ARTIFACT,
                                    metrics={"average_precision": 0.5}, lineage={"built_by": "test"})
        _toy_stages(root)
        deadline = time.monotonic() + 40
        while True:
            try:
                if client.get("api/status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (base / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (base / "server.log").read_text()[-3000:]
            time.sleep(0.1)
        found = client.get("lab/api/summary")
        assert found.status_code == 200, (
            f"{found.status_code} {found.text[:300]}: is the extension enabled? Reinstall lab "
            f"(pip install -e '.[test]') so its jupyter_server_config.d file is installed")
        yield client, root
    finally:
        client.close()
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def user(server):
    """The actor the server records for this token's user."""
    client, _ = server
    return "jupyterlab:" + client.get("api/me").json()["identity"]["username"]


def test_the_installed_config_enables_the_extension():
    """What `pip install -e .` installs (hatch shared-data); the server fixture relies on it."""
    installed = Path(sys.prefix) / "etc/jupyter/jupyter_server_config.d/lab_jupyterlab.json"
    assert installed.is_file(), "reinstall lab (pip install -e '.[test]'): its shared-data config file is missing"
    assert json.loads(installed.read_text()) == {"ServerApp": {"jpserver_extensions": {"plugins.jupyterlab_ext": True}}}
    from plugins import jupyterlab_ext

    assert jupyterlab_ext._jupyter_server_extension_points() == [{"module": "plugins.jupyterlab_ext"}]


def test_the_lab_is_found_walking_up_from_the_root_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_HOME", raising=False)
    (tmp_path / "pyproject.toml").write_text("[tool.lab]\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/pyproject.toml").write_text("[project]\nname = 'not-a-lab'\n")  # no [tool.lab]: passed
    (tmp_path / "pkg/deep").mkdir()
    assert find_lab(tmp_path / "pkg/deep") == tmp_path.resolve()
    assert find_lab(tmp_path) == tmp_path.resolve()


def test_outside_a_lab_and_before_a_registry(tmp_path, monkeypatch):
    """No lab above the root: a NotFound (404) naming the fix. A lab without a registry
    answers empty lists and creates nothing."""
    monkeypatch.delenv("LAB_HOME", raising=False)
    if find_lab(tmp_path) is not None:
        pytest.skip(f"{tmp_path} lies inside a lab ({find_lab(tmp_path)})")
    with pytest.raises(NotFound, match="LAB_HOME"):
        views.summary(views.Lab(tmp_path))
    (tmp_path / "pyproject.toml").write_text("[tool.lab]\n")  # found on the next call, no restart
    lab = views.Lab(tmp_path)
    assert views.runs(lab) == [] and views.models(lab) == [] and views.experiments(lab) == []
    assert views.monitoring(lab) == {"monitor": None, "monitor_error": None, "drift": [], "reports": [],
                                     "freshness": [], "quality": [], "quality_info": None}
    with pytest.raises(NotFound, match="no registry yet"):
        views.promote(lab, "m", 1, alias="champion", reason="", who="jupyterlab:x")
    assert not (tmp_path / "registry.db").exists()


def test_summary_and_authentication(server):
    client, root = server
    body = client.get("lab/api/summary").json()
    assert body["lab"] == str(root.resolve()) and body["model"] == "fraud"
    assert "lab_commands" in body["plugins"] and "duckdb_offline" in body["plugins"]
    anonymous = httpx.get(str(client.base_url) + "lab/api/summary", timeout=10)
    assert anonymous.status_code == 403
    assert client.get("lab/api/settings").status_code == 200  # JupyterLab's own routes under lab/api/ still work


def test_models_promote_gate_history_and_rollback(server, user):
    client, root = server
    models = client.get("lab/api/models").json()
    assert [m["name"] for m in models] == ["fraud"] and models[0]["aliases"] == {"champion": 1}
    versions = {v["version"]: v for v in models[0]["versions"]}
    assert versions[1]["aliases"] == ["champion"] and versions[2]["aliases"] == []
    assert versions[2]["lineage"] == {"built_by": "test"} and versions[2]["metrics"] == {"average_precision": 0.5}

    refused = client.post("lab/api/models/fraud/promote", json={"version": 2, "reason": "better"})
    assert refused.status_code == 409, refused.text
    assert [c["name"] for c in refused.json()["unmet"]] == ["approval"]
    assert "lab approve fraud 2" in refused.json()["error"]
    with Registry.open(root / "registry.db", project_root=root) as registry:
        assert registry.get_alias("fraud", "champion").version == 1  # refused: nothing moved
        registry.approve("fraud", 2, approver="alice", note="looked at it")

    promoted = client.post("lab/api/models/fraud/promote", json={"version": 2, "alias": "champion",
                                                                 "reason": "better"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["aliases"] == {"champion": 2}
    with Registry.open(root / "registry.db", project_root=root) as registry:
        assert registry.get_alias("fraud", "champion").version == 2
        event = registry.alias_history("fraud", "champion")[-1]
        assert (event["actor"], event["reason"], event["to_version"]) == (user, "better", 2)
        assert registry.events("alias.promote")[-1]["actor"] == user  # the audit log names the user too

    history = client.get("lab/api/models/fraud/history").json()
    assert history[-1]["kind"] == "alias" and history[-1]["actor"] == user
    assert history[-1]["evidence"]["criteria"][0]["name"] == "approval"
    assert any(h["kind"] == "approval" and "alice" in h["text"] for h in history)
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)  # newest last

    rolled = client.post("lab/api/models/fraud/rollback", json={"reason": "second thoughts"})
    assert rolled.status_code == 200 and rolled.json()["aliases"] == {"champion": 1}
    with Registry.open(root / "registry.db", project_root=root) as registry:
        last = registry.alias_history("fraud", "champion")[-1]
        assert (last["action"], last["actor"], last["to_version"]) == ("rollback", user, 1)
    again = client.post("lab/api/models/fraud/rollback", json={})
    assert again.status_code == 409 and "nothing to roll back to" in again.json()["error"]


@pytest.mark.parametrize("body, field", [
    ({"version": "two"}, "version"), ({"version": True}, "version"), ({}, "version"), ({"version": 0}, "version"),
    ({"version": 2, "alias": "no way"}, "alias"), ({"version": 2, "reason": 5}, "reason"),
    ({"version": 2, "colour": "red"}, "colour"), ([2], "JSON object"),
])
def test_bad_promotions_are_400_naming_the_field(server, body, field):
    client, _ = server
    answer = client.post("lab/api/models/fraud/promote", json=body)
    assert answer.status_code == 400 and field in answer.json()["error"], answer.text


def test_bad_input_and_unknown_names(server):
    client, _ = server
    not_json = client.post("lab/api/models/fraud/promote", content=b"{version: 2")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    for limit in ("abc", "0", "100000"):
        answer = client.get("lab/api/runs", params={"limit": limit})
        assert answer.status_code == 400 and "limit" in answer.json()["error"]
    unknown_model = client.post("lab/api/models/nope/promote", json={"version": 1})
    assert unknown_model.status_code == 404 and "fraud" in unknown_model.json()["error"]
    unknown_version = client.post("lab/api/models/fraud/promote", json={"version": 9})
    assert unknown_version.status_code == 404 and "9" in unknown_version.json()["error"]
    assert client.get("lab/api/models/nope/history").status_code == 404
    assert client.post("lab/api/experiments/nope/stop", json={}).status_code == 404


def test_experiments_list_and_stop(server, user):
    client, root = server
    with ExperimentStore.open(root / "registry.db") as store:
        store.create(Experiment("ranker", (Variant("control", 0.8), Variant("treatment", 0.1),
                                           Variant("held", 0.1, {"holdout": True})), unit="CUSTOMER_ID"))
        store.start("ranker")
    listed = {e["name"]: e for e in client.get("lab/api/experiments").json()}
    ranker = listed["ranker"]
    assert (ranker["status"], ranker["kind"], ranker["unit"]) == ("running", "experiment", "CUSTOMER_ID")
    assert ranker["variants"] == [{"name": "control", "weight": 0.8, "holdout": False},
                                  {"name": "treatment", "weight": 0.1, "holdout": False},
                                  {"name": "held", "weight": 0.1, "holdout": True}]
    assert ranker["stats"] is None  # nothing served yet
    assert {g["name"] for g in ranker["guardrails"]} == {"latency_ms", "error_rate"}

    with Ledger.open(root / "data/ledger.db") as ledger:  # requests the server routed by it
        for i, (variant, ms) in enumerate([("control", 4.0)] * 30 + [("treatment", 6.0)] * 20):
            ledger.append(PredictionRecord(i, "fraud", 1, {}, {}, 0.5, ms + (i % 3), experiment="ranker",
                                           variant=variant))
        assert ledger.flush()
    served = {e["name"]: e for e in client.get("lab/api/experiments").json()}["ranker"]
    assert served["stats"]["served"] == {"control": 30, "treatment": 20, "held": 0}
    assert served["stats"]["latency_ms_mean"]["control"] == pytest.approx(5.0, abs=0.1)
    latency = next(g for g in served["guardrails"] if g["name"] == "latency_ms")
    assert {r["variant"] for r in latency["results"]} == {"treatment", "held"}
    assert next(r for r in latency["results"] if r["variant"] == "treatment")["breached"]

    stopped = client.post("lab/api/experiments/ranker/stop", json={"reason": "enough"})
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    with ExperimentStore.open(root / "registry.db") as store:
        assert store.get("ranker").status == "stopped"
        row = store.audit("ranker")[-1]
        assert (row["action"], row["actor"], row["reason"]) == ("stop", user, "enough")
    twice = client.post("lab/api/experiments/ranker/stop", json={"reason": "again"})
    assert twice.status_code == 409 and "already stopped" in twice.json()["error"]
    bad = client.post("lab/api/experiments/ranker/stop", json={"why": "x"})
    assert bad.status_code == 400 and "reason" in bad.json()["error"]


def test_monitoring(server):
    client, root = server
    assert client.get("lab/api/monitoring").json()["monitor"] is None or (root / "data/monitor.json").exists()
    summary = {"model": "fraud", "status": "ok", "checks": {"volume": {"status": "ok"}}}
    (root / "data/monitor.json").write_text(json.dumps(summary))
    (root / "data/monitor.html").write_text("<html>monitor</html>")
    with Registry.open(root / "registry.db", project_root=root) as registry:
        for score in (0.1, 0.4):
            registry.record_drift(None, model_name="fraud", model_version=1, reference="a", current="b",
                                  scores={"TX_AMOUNT": {"score": score, "drifted": score > 0.3, "method": "ks"},
                                          "HOUR": {"score": 0.01, "drifted": False, "method": "ks"}})
    body = client.get("lab/api/monitoring").json()
    assert body["monitor"] == summary
    drift = {d["column"]: d for d in body["drift"]}
    assert set(drift) == {"TX_AMOUNT", "HOUR"} and drift["TX_AMOUNT"]["score"] == 0.4 and drift["TX_AMOUNT"]["drifted"]
    reports = {r["name"]: r["url"] for r in body["reports"]}
    assert reports["monitor"] == "/files/data/monitor.html"
    page = client.get(reports["monitor"].lstrip("/"))
    assert page.status_code == 200 and "monitor" in page.text


def _wait_job(client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get("lab/api/progress").json()["job"]
        if job["id"] == job_id and job["status"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_run_a_notebook_stage_and_its_progress(server):
    client, root = server
    not_stage = client.post("lab/api/stages/run", json={"notebook": "notebooks/scratch.ipynb"})
    assert not_stage.status_code == 404
    assert "touch (notebooks/touch.ipynb)" in not_stage.json()["error"] and "other" in not_stage.json()["error"]
    assert client.post("lab/api/stages/run", json={}).status_code == 400
    assert client.post("lab/api/stages/run", json={"notebook": 3}).status_code == 400

    with open(root / "runs/.lab-run.lock", "w") as held:  # a `lab run` going on in this lab
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = client.post("lab/api/stages/run", json={"notebook": "notebooks/touch.ipynb"})
        fcntl.flock(held, fcntl.LOCK_UN)
    assert busy.status_code == 409 and "another `lab run`" in busy.json()["error"]

    started = client.post("lab/api/stages/run", json={"notebook": "notebooks/touch.ipynb"})
    assert started.status_code == 200, started.text
    job_id = started.json()["job"]
    assert started.json()["stage"] == "touch"
    second = client.post("lab/api/stages/run", json={"notebook": "notebooks/touch.ipynb"})
    assert second.status_code == 409 and job_id in second.json()["error"]  # one job at a time

    job = _wait_job(client, job_id)
    assert job["status"] == "finished" and job["returncode"] == 0, job["log_tail"]
    assert (job["stage"], job["notebook"]) == ("touch", "notebooks/touch.ipynb")
    assert job["command"] == ["lab", "--root", str(root.resolve()), "run", "touch"]
    assert (root / "data/touched.txt").read_text() == "touched"
    assert "1 stage(s) ran" in job["log_tail"]
    folder = root / "runs/.jupyterlab" / job_id
    assert json.loads((folder / "exit.json").read_text())["returncode"] == 0 and (folder / "output.log").exists()
    progress = client.get("lab/api/progress").json()
    assert {"run_id", "stages", "job"} <= set(progress)

    runs = client.get("lab/api/runs", params={"limit": 5}).json()
    if progress["run_id"] is not None:  # the runner writes progress files (lab.pipeline.progress)
        assert progress["run_id"] == runs[0]["id"]
        assert [(s["name"], s["status"]) for s in progress["stages"]] == [("touch", "finished")]
    assert runs[0]["kind"] == "pipeline" and runs[0]["status"] == "finished" and runs[0]["seconds"] >= 0
    (stage,) = runs[0]["stages"]
    assert (stage["name"], stage["status"], stage["cached"], stage["attempt"]) == ("touch", "finished", False, 1)
    assert stage["notebook"].startswith(f"runs/{runs[0]['id']}/") and stage["notebook"].endswith("_touch.ipynb")
    assert (root / stage["notebook"]).exists() and stage["seconds"] > 0 and stage["error"] is None

    rerun = client.post("lab/api/stages/run", json={"notebook": "notebooks/touch.ipynb"}).json()["job"]
    assert _wait_job(client, rerun)["status"] == "finished"
    cached = client.get("lab/api/runs").json()[0]["stages"][0]
    assert (cached["status"], cached["cached"]) == ("skipped", True)  # unchanged: the runner's cache


# -- the Monitoring section's plots: freshness and live quality ----------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(config, summary, result)``: the served lab after ``lab monitor run``'s freshness and
    quality checks (recorded in the registry)."""
    config = served_tiny_lab(tmp_path_factory.mktemp("monitor-plots") / "lab")
    result = run_monitor(config, checks=("freshness", "quality"), emit=False)
    return config, json.loads((config.data_path / "monitor.json").read_text()), result


def test_monitoring_plots_freshness_per_view_from_the_summary(served):
    config, summary, _ = served
    body = views.monitoring(views.Lab(config.root))
    json.dumps(body, allow_nan=False)  # what the route sends
    checked = summary["checks"]["freshness"]
    assert checked["status"] == "breach" and checked["data"]["breaching"] == ["customer_spending"]
    rows = {r["view"]: r for r in body["freshness"]}
    assert list(rows) == [v["view"] for v in checked["data"]["views"]]
    for view in checked["data"]["views"]:
        row = rows[view["view"]]
        assert (row["age_s"], row["age_kind"], row["age_max_s"]) == (view["age_p50_s"], "served p50", view["age_max_s"])
        assert (row["limit_s"], row["breach_rate"], row["requests"]) == (
            view["freshness_s"], view["breach_rate"], view["requests"])
        assert row["max_breach_rate"] == checked["data"]["limit"] and row["materialized"]
    # Every feature was 60 s old: past the 30 s objective, within the 10 min one.
    assert rows["customer_spending"] == {**rows["customer_spending"], "age_s": 60.0, "limit_s": 30.0,
                                         "breach_rate": 1.0, "breached": True}
    assert rows["terminal_risk"] == {**rows["terminal_risk"], "age_s": 60.0, "limit_s": 600.0,
                                     "breach_rate": 0.0, "breached": False}
    assert rows["customer_spending"]["requests"] == SERVED_DAYS * 50


def test_monitoring_plots_live_quality_per_window_from_the_recorded_run(served):
    """The rows are the recorded ``live_quality`` run's windows: the same starts and metric
    values as the quality check computed again at the summary's moment."""
    from lab.monitoring.quality import live_quality

    config, summary, result = served
    body = views.monitoring(views.Lab(config.root))
    checked = summary["checks"]["quality"]
    assert checked["status"] == "ok" and checked["data"]["run_id"]
    info = body["quality_info"]
    assert (info["source"], info["run_id"], info["window_s"], info["model"]) == (
        "run", checked["data"]["run_id"], 86400.0, summary["model"])
    assert info["metrics"] == ["roc_auc", "brier"]  # the headline, then the loss the test watches
    assert info["tests"] == {"1": {"loss": "brier", "metric": "brier", "status": checked["data"]["versions"]["1"]
                                   ["test"]["status"], "degraded": False}}
    again = live_quality(config, as_of=dt.datetime.fromisoformat(summary["end"]) + dt.timedelta(days=1))
    expected = {(w.start.isoformat(), name): (value, w.n_labelled) for w in again.versions[1].windows
                for name, value in w.metrics.items() if name in QUALITY_METRICS and value is not None}
    got = {(r["window_start"], r["metric"]): (r["value"], r["n_labelled"]) for r in body["quality"]}
    assert got.keys() == expected.keys()
    for key, (value, labelled) in expected.items():
        assert got[key] == (pytest.approx(value), labelled), key
    starts = sorted({r["window_start"] for r in body["quality"] if r["metric"] == "roc_auc"})
    assert len(starts) >= 3 and starts[0] == f"{SERVED_FROM}T00:00:00"  # a line, from the first served day
    for r in body["quality"]:
        assert r["version"] == 1
        begin = dt.datetime.fromisoformat(r["window_start"])
        assert dt.datetime.fromisoformat(r["window_end"]) - begin == dt.timedelta(days=1)
        assert r["window"] == (begin - dt.datetime(1970, 1, 1)).days  # the registry's step
    aucs = [r["value"] for r in body["quality"] if r["metric"] == "roc_auc"]
    assert min(aucs) > 0.5  # labels drawn from the scores


def test_monitoring_plots_fall_back_and_never_fail(served, tmp_path):
    """The summary's last window when the check was not recorded; the newest live_quality
    run without a summary; a broken or half summary gives empty lists and a sentence."""
    config, summary, _ = served
    copy = tmp_path / "lab"
    shutil.copytree(config.root, copy)
    path = copy / "data" / "monitor.json"
    lab = views.Lab(copy)
    unrecorded = json.loads(json.dumps(summary))
    unrecorded["checks"]["quality"]["data"]["run_id"] = None
    last = unrecorded["checks"]["quality"]["data"]["versions"]["1"]["last_window"]
    last["metrics"].update(roc_auc=0.75, brier=0.2)  # a window with labels: one point per metric
    path.write_text(json.dumps(unrecorded))
    body = views.monitoring(lab)
    assert body["quality_info"]["source"] == "summary" and body["quality_info"]["window_s"] == 86400.0
    assert {(r["metric"], r["value"], r["window_start"]) for r in body["quality"]} == {
        ("roc_auc", 0.75, last["start"]), ("brier", 0.2, last["start"])}

    path.unlink()
    body = views.monitoring(lab)
    assert body["monitor"] is None and body["freshness"] == []
    assert body["quality_info"]["run_id"] == summary["checks"]["quality"]["data"]["run_id"]  # the newest run
    assert body["quality"] and body["quality_info"]["tests"]["1"]["metric"] == "brier"

    path.write_text('{"model": "fraud", "checks": {"freshness": {"status": "skipped", "detail": "no view"}, '
                    '"quality": {"status": "skipped"}}}')
    body = views.monitoring(lab)
    assert body["freshness"] == [] and body["monitor"]["checks"]["freshness"]["status"] == "skipped"
    path.write_text('{"checks": [{"name": "freshness", "data": {"views": [{"view": "v", "requests": 0, '
                    '"lag_s": 5.0, "watermark": null}, {"no view": 1}], "never_materialized": ["v"]}}]}')
    assert views.monitoring(lab)["freshness"] == [{
        "view": "v", "age_s": 5.0, "age_kind": "lag", "age_max_s": None, "limit_s": None, "breach_rate": None,
        "max_breach_rate": None, "requests": 0, "breached": True, "materialized": False}]
    path.write_text('{"model": "fraud", "checks": ')  # cut short
    body = views.monitoring(lab)
    assert body["monitor"] is None and "lab monitor run" in body["monitor_error"] and body["freshness"] == []
