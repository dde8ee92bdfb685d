"""``lab experiment ...`` driven through ``lab.cli.main`` on a lab in tmp_path, with a
plugin that writes down every event."""

from __future__ import annotations

import json
import re
import sqlite3
import sys

import pytest

from lab.cli import main
from lab.events import EXPERIMENT_STARTED, EXPERIMENT_STOPPED, FLAG_CHANGED, GUARDRAIL_BREACHED
from lab.experiments import ExperimentStore, assign

PROBE = '''
"""Records every lab event as a JSON line in $EXPERIMENT_PROBE_OUT."""
import json, os
from lab import hookimpl

@hookimpl
def lab_on_event(event):
    with open(os.environ["EXPERIMENT_PROBE_OUT"], "a") as fh:
        fh.write(json.dumps({"name": event.name, "payload": event.payload, "actor": event.actor}) + "\\n")
'''

TABLES = ("experiments", "experiment_audit", "experiment_allocations")


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    """An empty lab of model "scorer" whose alpha default is 0.01, with an event-recording plugin."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0"\n\n[tool.lab]\nmodel_name = "scorer"\n'
        'plugins = ["experiment_probe"]\n\n'
        "[tool.lab.experiments]\nalpha = 0.01\n"
    )
    (tmp_path / "experiment_probe.py").write_text(PROBE)
    monkeypatch.setenv("EXPERIMENT_PROBE_OUT", str(tmp_path / "events.jsonl"))
    monkeypatch.setenv("LAB_ACTOR", "tester")
    monkeypatch.delitem(sys.modules, "experiment_probe", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the plugin manager adds the root
    return tmp_path


def lab(root, *args) -> int:
    return main(["--root", str(root), "experiment", *args])


def heard(root) -> list[dict]:
    path = root / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def row_counts(root) -> dict[str, int]:
    if not (root / "registry.db").exists():
        return dict.fromkeys(TABLES, 0)
    with sqlite3.connect(root / "registry.db") as conn:
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in present else 0 for t in TABLES}


def register_versions(root, count: int, model: str = "scorer") -> None:
    """``count`` versions of ``model`` in the lab's registry (the payloads name them)."""
    from lab.registry import Registry

    with Registry.open(root / "registry.db", project_root=root) as reg:
        for _ in range(count):
            reg.register_model(model, run_id=None, flavor="tabular_mlp", artifact_path="runs/models/m",
                               metrics={}, lineage={})


def test_create_start_ramp_stop_round_trip(lab_root, capsys):
    register_versions(lab_root, 3)
    assert lab(lab_root, "create", "ranker", "--variants", "control=0.9,treatment=0.1", "--layer", "search",
               "--layer-share", "0-8000", "--unit", "CUSTOMER_ID", "--metric", "ctr", "--metric-kind", "mean",
               "--payload", "treatment:model_version=3", "--payload", "control:model_version=2",
               "--reason", "new ranker") == 0
    assert "created experiment ranker (draft) in layer search 0-8000" in capsys.readouterr().out
    assert lab(lab_root, "start", "ranker") == 0
    assert lab(lab_root, "set-weights", "ranker", "control=0.8,treatment=0.2", "--reason", "ramp") == 0
    assert "control=0.9,treatment=0.1 -> control=0.8,treatment=0.2" in capsys.readouterr().out

    with ExperimentStore.open(lab_root / "registry.db") as store:
        e = store.get("ranker")
    assert (e.status, e.layer, e.layer_share, e.unit, e.metric, e.metric_kind) == (
        "running", "search", (0, 8000), "CUSTOMER_ID", "ctr", "mean")
    assert e.alpha == 0.01  # from [tool.lab.experiments]
    assert e.variant("treatment").payload == {"model_version": 3} and e.weights == {"control": 0.8, "treatment": 0.2}

    assert lab(lab_root, "status", "ranker") == 0
    out = capsys.readouterr().out
    assert "ranker  experiment  running  layer search 0-8000" in out
    # the ramp took control's top buckets; treatment kept its own
    assert "buckets 0-1000, 9000-10000" in out and "buckets 1000-9000" in out and '{"model_version": 3}' in out
    assert "set_weights" in out and "(ramp)" in out
    assert lab(lab_root, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "ranker"

    assert lab(lab_root, "stop", "ranker", "--reason", "guardrail") == 0
    assert "every unit now sees control" in capsys.readouterr().out
    assert lab(lab_root, "audit", "ranker", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in rows] == ["create", "start", "set_weights", "stop"]
    assert rows[-1]["reason"] == "guardrail" and rows[-1]["new"]["weights"] == {"control": 1.0, "treatment": 0.0}
    assert all(r["actor"] == "tester" for r in rows)
    assert lab(lab_root, "audit") == 0
    assert "running control=0.8,treatment=0.2 -> stopped control=1,treatment=0  (guardrail)" in capsys.readouterr().out

    events = heard(lab_root)
    assert [e["name"] for e in events] == [FLAG_CHANGED, EXPERIMENT_STARTED, FLAG_CHANGED, EXPERIMENT_STOPPED]
    assert events[2]["payload"]["old"] == {"control": 0.9, "treatment": 0.1}
    assert events[3]["payload"] == {"experiment": "ranker", "kind": "experiment", "status": "stopped",
                                    "weights": {"control": 1.0, "treatment": 0.0},
                                    "old": {"control": 0.8, "treatment": 0.2}, "reason": "guardrail"}


def test_a_flag_with_one_variant_and_stop_keeping_weights(lab_root, capsys):
    assert lab(lab_root, "create", "kill_switch", "--flag", "--variants", "on", "--layer", "ops") == 0
    assert lab(lab_root, "create", "rollout", "--flag", "--variants", "v1,v2", "--layer", "models") == 0
    assert lab(lab_root, "start", "rollout") == 0
    assert lab(lab_root, "stop", "rollout", "--keep-weights") == 0
    assert "weights on record: v1=0.5,v2=0.5" in capsys.readouterr().out
    with ExperimentStore.open(lab_root / "registry.db") as store:
        assert store.get("kill_switch").weights == {"on": 1.0}
        rollout = store.get("rollout")
    assert rollout.weights == {"v1": 0.5, "v2": 0.5} and {assign(rollout, u) for u in range(200)} == {"v1"}
    assert lab(lab_root, "status") == 0
    out = capsys.readouterr().out
    assert "kill_switch" in out and "flag       draft" in out and "rollout" in out


def test_a_flag_created_without_a_layer_has_its_own(lab_root, capsys):
    assert lab(lab_root, "create", "rollout", "--flag", "--variants", "v1=0.9,v2=0.1") == 0
    assert "created flag rollout (draft) in layer flag:rollout 0-10000" in capsys.readouterr().out
    assert lab(lab_root, "create", "ranker", "--variants", "control=0.5,treatment=0.5") == 0  # all of "default"
    assert "in layer default 0-10000" in capsys.readouterr().out
    assert lab(lab_root, "status") == 0
    out = capsys.readouterr().out
    assert "flag:rollout 0-10000" in out and "default 0-10000" in out


@pytest.mark.parametrize("args, message", [
    (["create", "x", "--variants", "control=0.5,treatment=0.6"], r"sum to 1\.1, not 1"),
    (["create", "x", "--variants", "control=0.5,treatment=0.5", "--alpha", "1.5"], "strictly between 0 and 1"),
    (["create", "x", "--variants", "control:0.5,treatment:0.5"], "cannot read 'control:0.5'.*control=0.5"),
    (["create", "x", "--variants", "a=0.5,a=0.5"], "appears twice"),
    (["create", "x", "--variants", "control=1"], "at least 2 .*add --flag for a single-variant flag"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--baseline", "1.5"],
     "^lab: error: --baseline must be a conversion rate strictly between 0 and 1"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--baseline", "0"], "^lab: error: --baseline must be"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--baseline", "-0.3"], "^lab: error: --baseline must be"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--power", "0.005"],
     r"^lab: error: --power 0\.005 is not above --alpha 0\.01"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--power", "1.2"], "^lab: error: --power must be"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--power", "0.9", "--alpha", "0.95"], "--power 0.9 is not above"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--mde", "0"], "^lab: error: --mde must be a positive"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--mde", "-0.01"], "^lab: error: --mde must be a positive"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--mde", "nan"], "^lab: error: --mde must be a positive"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--mde", "0.2", "--baseline", "0.9"], "lower --mde"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--payload", "b:model_version=2"],
     "model 'scorer' has no version 2; versions: none registered yet.*Register it first"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--payload", "b:model_version=two"],
     "model_version must be a whole number"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--payload", "c:k=1"], "names variant 'c'"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--payload", "a-k-1"], "VARIANT:KEY=VALUE"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--layer-share", "half"], "START-END"),
    (["create", "x", "--variants", "a=0.5,b=0.5", "--layer-share", "6000-3000"], "start < end"),
    (["create", "2x", "--variants", "a=0.5,b=0.5"], "must be an identifier"),
    (["start", "nope"], "no experiment or flag 'nope'.*`lab experiment status`"),
    (["stop", "nope"], "no experiment or flag 'nope'"),
    (["status", "nope"], "no experiment or flag 'nope'"),
    (["set-weights", "nope", "control=1"], "no experiment or flag 'nope'"),
    (["audit", "nope"], "no experiment or flag 'nope'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(lab_root, capsys, args, message):
    assert lab(lab_root, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert row_counts(lab_root) == dict.fromkeys(TABLES, 0) and heard(lab_root) == []


def test_bad_changes_to_an_existing_experiment_write_nothing(lab_root, capsys):
    assert lab(lab_root, "create", "ranker", "--variants", "control=0.9,treatment=0.1") == 0
    before, events = row_counts(lab_root), heard(lab_root)
    for args, message in [
        (["set-weights", "ranker", "control=0.9,treatment=0.2"], r"sum to 1\.1"),
        (["set-weights", "ranker", "control=0.5,blue=0.5"], "unknown variant.*'blue'.*missing treatment"),
        (["create", "other", "--variants", "a=0.5,b=0.5"],
         "overlaps 'ranker'.*layer 'default' has no free range left: stop one of its experiments"),
        (["create", "ranker", "--variants", "a=0.5,b=0.5", "--layer", "l2"], "already exists"),
        (["audit", "--limit", "0"], "at least 1"),
    ]:
        assert lab(lab_root, *args) == 2
        err = capsys.readouterr().err
        assert err.startswith("lab: error: ") and re.search(message, err), err
    assert lab(lab_root, "stop", "ranker") == 0
    assert lab(lab_root, "start", "ranker") == 2
    assert "only a draft can be started" in capsys.readouterr().err
    assert row_counts(lab_root)["experiment_audit"] == before["experiment_audit"] + 1  # just the stop
    assert [e["name"] for e in heard(lab_root)] == [e["name"] for e in events] + [EXPERIMENT_STOPPED]


# -- lab experiment check: guardrails on a real prediction ledger -------------------------

def write_ledger(path, experiment: str, means: dict[str, float], n: int = 500, seed: int = 3) -> None:
    """``n`` predictions per variant routed by ``experiment``, latencies around ``means``."""
    import numpy as np

    from lab.serving.ledger import Ledger, PredictionRecord

    rng = np.random.default_rng(seed)
    with Ledger.open(path) as ledger:
        for version, (variant, mean) in enumerate(means.items(), start=1):
            for ms in rng.normal(mean, 3.0, n).clip(min=1):
                ledger.append(PredictionRecord(
                    event_id=None, model_name="scorer", model_version=version, features={}, defaults={},
                    score=0.1, latency_ms=float(ms), experiment=experiment, variant=variant))


def test_check_stops_an_experiment_whose_treatment_is_30_percent_slower(lab_root, capsys):
    assert lab(lab_root, "create", "ranker", "--variants", "control=0.5,treatment=0.5") == 0
    assert lab(lab_root, "start", "ranker") == 0
    write_ledger(lab_root / "data" / "ledger.db", "ranker", {"control": 20.0, "treatment": 26.0})  # the lab's ledger
    capsys.readouterr()
    assert lab(lab_root, "check", "ranker") == 3
    out = capsys.readouterr().out
    assert re.search(r"latency_ms +treatment vs control: \+(29|30|31)\.\d% \[\+\d+\.\d%, \+\d+\.\d%\], n 500/500, "
                     r"one-sided p=\S+ \(sequential, alpha 0\.01, tolerance 0\.05\): BREACHED", out), out
    assert "error_rate     treatment vs control: not checked (no data" in out  # the ledger holds no errors
    assert "STOPPED ranker: a guardrail was breached; every unit now sees control" in out

    with ExperimentStore.open(lab_root / "registry.db") as store:
        experiment = store.get("ranker")
        stop = store.audit("ranker")[-1]
    assert experiment.status == "stopped" and experiment.weights == {"control": 1.0, "treatment": 0.0}
    assert (stop["action"], stop["actor"]) == ("stop", "lab experiment check")
    assert re.match(r"guardrail breached: latency_ms worse for 'treatment': \+(29|30|31)\.\d%", stop["reason"])
    names = [e["name"] for e in heard(lab_root)]
    assert names[-2:] == [GUARDRAIL_BREACHED, EXPERIMENT_STOPPED]

    assert lab(lab_root, "audit", "ranker") == 0
    assert "stop              by lab experiment check" in capsys.readouterr().out
    assert lab(lab_root, "check", "ranker") == 0  # already stopped: checked, nothing changes
    assert "breached, but ranker is stopped, not running: nothing changed" in capsys.readouterr().out
    assert [e["name"] for e in heard(lab_root)] == names


def test_check_leaves_an_unharmed_experiment_running(lab_root, tmp_path, capsys):
    assert lab(lab_root, "create", "ranker", "--variants", "control=0.5,treatment=0.5") == 0
    assert lab(lab_root, "start", "ranker") == 0
    ledger = tmp_path / "elsewhere.db"
    write_ledger(ledger, "ranker", {"control": 20.0, "treatment": 20.0})
    capsys.readouterr()
    assert lab(lab_root, "check", "ranker", "--ledger", str(ledger), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["status"], report["stopped"], report["ledger"]) == ("running", False, str(ledger))
    latency = next(r for r in report["results"] if r["guardrail"] == "latency_ms")
    assert (latency["n_control"], latency["n_variant"], latency["breached"]) == (500, 500, False)
    assert lab(lab_root, "check", "ranker", "--ledger", str(ledger)) == 0
    assert "no guardrail breached" in capsys.readouterr().out
    with ExperimentStore.open(lab_root / "registry.db") as store:
        assert store.get("ranker").status == "running"


def test_check_without_a_ledger_or_experiment_is_a_clear_error(lab_root, tmp_path, capsys):
    assert lab(lab_root, "create", "ranker", "--variants", "control=0.5,treatment=0.5") == 0
    capsys.readouterr()
    assert lab(lab_root, "check", "ranker", "--ledger", str(tmp_path / "none.db")) == 2
    assert "no prediction ledger at" in capsys.readouterr().err
    assert lab(lab_root, "check", "nope") == 2
    assert "no experiment or flag 'nope'" in capsys.readouterr().err


def test_a_mean_metric_takes_any_finite_baseline(lab_root, capsys):
    assert lab(lab_root, "create", "revenue", "--variants", "a=0.5,b=0.5", "--metric-kind", "mean",
               "--baseline", "42.5", "--mde", "1.5", "--power", "0.9") == 0
    with ExperimentStore.open(lab_root / "registry.db") as store:
        e = store.get("revenue")
    assert (e.baseline, e.mde, e.power) == (42.5, 1.5, 0.9)


def test_an_overlap_names_the_free_ranges_when_there_are_some(lab_root, capsys):
    assert lab(lab_root, "create", "ranker", "--variants", "a=0.5,b=0.5", "--layer-share", "0-6000") == 0
    assert lab(lab_root, "create", "other", "--variants", "a=0.5,b=0.5", "--layer-share", "5000-8000") == 2
    err = capsys.readouterr().err
    assert "Free ranges of layer 'default': 6000-10000; pick one of them (--layer-share START-END)" in err


def test_setting_the_current_weights_again_writes_nothing(lab_root, capsys):
    assert lab(lab_root, "create", "ranker", "--variants", "control=0.9,treatment=0.1") == 0
    assert lab(lab_root, "start", "ranker") == 0
    before, events = row_counts(lab_root), heard(lab_root)
    capsys.readouterr()
    for weights in ("control=0.9,treatment=0.1", "treatment=0.1,control=0.9", "control=0.90,treatment=0.10"):
        assert lab(lab_root, "set-weights", "ranker", weights, "--reason", "again") == 0
        assert "ranker: already at these weights (control=0.9,treatment=0.1); nothing recorded" in \
            capsys.readouterr().out
    assert row_counts(lab_root) == before and heard(lab_root) == events  # no audit row, no event
    with ExperimentStore.open(lab_root / "registry.db") as store:
        assert [r["action"] for r in store.audit("ranker")] == ["create", "start"]
        store.apply_allocation("ranker", {"control": 0.9, "treatment": 0.1}, source="thompson")
        assert [r["action"] for r in store.audit("ranker")] == ["create", "start"]
        assert store.allocations("ranker") == []
    assert row_counts(lab_root) == before
    assert lab(lab_root, "set-weights", "ranker", "control=0.8,treatment=0.2") == 0  # a real change is recorded
    assert row_counts(lab_root)["experiment_audit"] == before["experiment_audit"] + 1


def test_payload_model_versions_must_exist_at_create_and_at_start(lab_root, capsys):
    register_versions(lab_root, 1)
    args = ["--flag", "--variants", "control=0.9,treatment=0.1", "--payload", "control:model_version=1"]
    assert lab(lab_root, "create", "rollout", *args, "--payload", "treatment:model_version=2") == 2
    err = capsys.readouterr().err
    assert err.strip() == ("lab: error: --payload treatment:model_version=2: model 'scorer' has no version 2; "
                           "versions: 1. Register it first (`lab run` registers a new version) or name an "
                           "existing version (see `lab models scorer`)")
    assert row_counts(lab_root) == dict.fromkeys(TABLES, 0)
    assert lab(lab_root, "create", "rollout", *args, "--payload", "treatment:model_version=1") == 0

    # a draft stored through the library with a version that does not exist is refused at start
    from lab.experiments import Experiment, Variant

    with ExperimentStore.open(lab_root / "registry.db") as store:
        store.create(Experiment("canary", (Variant("control", 0.9, {"model_version": 1}),
                                           Variant("treatment", 0.1, {"model_version": 7})), kind="flag"))
    before = row_counts(lab_root)
    capsys.readouterr()
    assert lab(lab_root, "start", "canary") == 2
    err = capsys.readouterr().err
    assert "variant 'treatment' of flag 'canary' names model_version 7: model 'scorer' has no version 7" in err
    assert "versions: 1" in err and "Register it first" in err
    assert row_counts(lab_root) == before
    register_versions(lab_root, 6)  # now version 7 exists
    assert lab(lab_root, "start", "canary") == 0


def test_payload_versions_are_of_the_configured_model(lab_root, capsys):
    text = (lab_root / "pyproject.toml").read_text().replace('model_name = "scorer"', 'model_name = "churn"')
    (lab_root / "pyproject.toml").write_text(text)
    register_versions(lab_root, 2, model="scorer")
    assert lab(lab_root, "create", "x", "--variants", "a=0.5,b=0.5", "--payload", "b:model_version=2") == 2
    assert "model 'churn' has no version 2; versions: none registered yet" in capsys.readouterr().err
    register_versions(lab_root, 2, model="churn")
    assert lab(lab_root, "create", "x", "--variants", "a=0.5,b=0.5", "--payload", "b:model_version=2") == 0
