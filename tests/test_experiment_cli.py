"""``lab experiment ...`` driven through ``lab.cli.main`` on a lab in tmp_path, with a
plugin that writes down every event."""

from __future__ import annotations

import json
import re
import sqlite3
import sys

import pytest

from lab.cli import main
from lab.events import EXPERIMENT_STARTED, EXPERIMENT_STOPPED, FLAG_CHANGED
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
    """An empty lab whose alpha default is 0.01, with an event-recording plugin."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0"\n\n[tool.lab]\nplugins = ["experiment_probe"]\n\n'
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
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def test_create_start_ramp_stop_round_trip(lab_root, capsys):
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
    (["create", "x", "--variants", "control=1"], "at least 2 .*kind='flag'"),
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
        (["create", "other", "--variants", "a=0.5,b=0.5"], "overlaps 'ranker'.*Free ranges of layer 'default': none"),
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
