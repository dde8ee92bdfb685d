"""The registry's ``lab`` commands, driven through ``lab.cli.main`` on a lab in tmp_path."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys

import pytest

from lab.cli import main
from lab.events import MODEL_PROMOTED, MODEL_ROLLED_BACK
from lab.registry import Registry

PROBE = '''
"""Records every lab event as a JSON line in $REGISTRY_PROBE_OUT."""
import json, os
from lab import hookimpl

@hookimpl
def lab_on_event(event):
    with open(os.environ["REGISTRY_PROBE_OUT"], "a") as fh:
        fh.write(json.dumps({"name": event.name, "payload": event.payload, "actor": event.actor}) + "\\n")
'''


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    """A lab with three versions of "fraud" and a plugin that writes down every event."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0"\n\n[tool.lab]\nplugins = ["registry_probe"]\n'
    )
    (tmp_path / "registry_probe.py").write_text(PROBE)
    monkeypatch.setenv("REGISTRY_PROBE_OUT", str(tmp_path / "events.jsonl"))
    monkeypatch.setenv("LAB_ACTOR", "tester")
    monkeypatch.delitem(sys.modules, "registry_probe", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the plugin manager adds the root
    with Registry.open(tmp_path / "registry.db", project_root=tmp_path) as reg:
        run_id = reg.start_run(kind="train", params={"lr": 0.01})
        reg.log_metrics(run_id, {"average_precision": 0.61})
        reg.log_data(run_id, "training_set", "d-train")
        reg.record_dataset(kind="training_set", name="fraud", digest="d-train", path="data/train.parquet", rows=10)
        reg.finish_run(run_id)
        for ap in (0.5, 0.6, 0.7):
            reg.register_model("fraud", run_id=run_id, flavor="tabular_mlp", artifact_path="runs/models/fraud",
                               metrics={"average_precision": ap}, lineage={})
    return tmp_path


def lab(root, *args) -> int:
    return main(["--root", str(root), *args])


def heard(root) -> list[dict]:
    path = root / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def alias_rows(root) -> int:
    with sqlite3.connect(root / "registry.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM alias_events").fetchone()[0]


def test_promote_then_rollback_prints_the_move_and_tells_plugins(lab_root, capsys):
    assert lab(lab_root, "promote", "fraud", "1") == 0
    assert capsys.readouterr().out.strip() == "fraud: champion -> version 1 (first time set)"
    assert lab(lab_root, "promote", "fraud", "3", "--reason", "beat v1 on AP") == 0
    assert capsys.readouterr().out.strip() == "fraud: champion -> version 3 (was version 1)"
    assert lab(lab_root, "rollback", "fraud", "--reason", "bad canary") == 0
    assert capsys.readouterr().out.strip() == "fraud: champion rolled back to version 1 (was version 3)"

    events = heard(lab_root)
    assert [(e["name"], e["payload"]) for e in events] == [
        (MODEL_PROMOTED, {"model": "fraud", "version": 1, "alias": "champion", "previous": None}),
        (MODEL_PROMOTED, {"model": "fraud", "version": 3, "alias": "champion", "previous": 1}),
        (MODEL_ROLLED_BACK, {"model": "fraud", "version": 1, "alias": "champion", "previous": 3}),
    ]
    assert {e["actor"] for e in events} == {"tester"}

    assert lab(lab_root, "history", "fraud") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "rollback" in lines[2] and "by tester" in lines[2] and "bad canary" in lines[2]


def test_rollback_with_nothing_before_exits_2_with_one_line(lab_root, capsys):
    assert lab(lab_root, "promote", "fraud", "2", "--alias", "challenger") == 0
    capsys.readouterr()
    assert lab(lab_root, "rollback", "fraud", "--alias", "challenger") == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error: nothing to roll back to") and err.count("\n") == 1
    assert lab(lab_root, "rollback", "fraud") == 2  # champion never set
    assert "has no alias 'champion'; its aliases: challenger" in capsys.readouterr().err
    assert [e["name"] for e in heard(lab_root)] == [MODEL_PROMOTED]


def test_promoting_an_unknown_version_exits_2_and_writes_nothing(lab_root, capsys):
    assert lab(lab_root, "promote", "fraud", "7") == 2
    err = capsys.readouterr().err
    assert "lab: error: model 'fraud' has no version 7; its versions are 1, 2, 3" in err
    assert "Traceback" not in err
    assert lab(lab_root, "promote", "frud", "1") == 2
    assert "registered models: fraud" in capsys.readouterr().err
    assert lab(lab_root, "promote", "fraud", "1", "--alias", "not-an-identifier") == 2
    assert "not a valid name" in capsys.readouterr().err
    assert alias_rows(lab_root) == 0
    assert heard(lab_root) == []


def event_rows(root) -> int:
    with sqlite3.connect(root / "registry.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def test_promoting_the_version_already_there_says_so_and_writes_nothing(lab_root, capsys):
    assert lab(lab_root, "promote", "fraud", "1") == 0
    capsys.readouterr()
    before = (alias_rows(lab_root), event_rows(lab_root), len(heard(lab_root)))
    assert lab(lab_root, "promote", "fraud", "1", "--reason", "again") == 0
    assert capsys.readouterr().out.strip() == "fraud: version 1 is already champion; nothing changed"
    assert (alias_rows(lab_root), event_rows(lab_root), len(heard(lab_root))) == before
    assert lab(lab_root, "promote", "fraud", "2", "--alias", "challenger") == 0
    assert lab(lab_root, "promote", "fraud", "2", "--alias", "challenger") == 0
    assert capsys.readouterr().out.strip().endswith("fraud: version 2 is already challenger; nothing changed")
    assert alias_rows(lab_root) == 2
    # So the history has no "1 -> 1" step, and one rollback goes back a real step.
    assert lab(lab_root, "promote", "fraud", "3") == 0
    assert lab(lab_root, "rollback", "fraud") == 0
    assert capsys.readouterr().out.strip().endswith("rolled back to version 1 (was version 3)")


def test_rollback_prints_the_move_it_made_not_a_later_one(lab_root, capsys, monkeypatch):
    """Another process promotes right after the rollback commits: the message still
    describes the rollback (from the event row it wrote), not the newest history row."""
    assert lab(lab_root, "promote", "fraud", "1") == 0
    assert lab(lab_root, "promote", "fraud", "3") == 0
    capsys.readouterr()
    real_rollback = Registry.rollback

    def rollback_then_someone_promotes(self, *args, **kwargs):
        result = real_rollback(self, *args, **kwargs)
        with Registry.open(lab_root / "registry.db", project_root=lab_root) as other:
            other.promote("fraud", 2, actor="someone else")
        return result

    monkeypatch.setattr(Registry, "rollback", rollback_then_someone_promotes)
    assert lab(lab_root, "rollback", "fraud") == 0
    assert capsys.readouterr().out.strip() == "fraud: champion rolled back to version 1 (was version 3)"
    assert heard(lab_root)[-1]["payload"] == {"model": "fraud", "version": 1, "alias": "champion", "previous": 3}


def test_models_lists_versions_aliases_and_metrics(lab_root, capsys):
    assert lab(lab_root, "promote", "fraud", "2") == 0
    capsys.readouterr()
    assert lab(lab_root, "models") == 0
    out = capsys.readouterr().out
    assert "fraud" in out and "3 versions" in out and "champion=v2" in out
    assert lab(lab_root, "models", "fraud") == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    assert "champion" in rows[1] and "average_precision=0.6" in rows[1]
    assert lab(lab_root, "models", "fraud", "--json") == 0
    assert [v["aliases"] for v in json.loads(capsys.readouterr().out)] == [[], ["champion"], []]
    assert lab(lab_root, "models", "nope") == 2
    assert "registered models: fraud" in capsys.readouterr().err


def test_runs_and_lineage(lab_root, capsys):
    assert lab(lab_root, "runs", "--kind", "train", "--limit", "5") == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    run_id = line.split()[0]
    assert "train" in line and "finished" in line and "average_precision=0.61" in line
    assert lab(lab_root, "runs", "--kind", "pipeline") == 0
    assert "no runs recorded yet" in capsys.readouterr().out

    assert lab(lab_root, "lineage", "fraud", "2") == 0
    out = capsys.readouterr().out
    assert f"run      {run_id}" in out and "d-train" in out and "rows=10" in out and "pyproject.toml sha256" in out
    assert lab(lab_root, "lineage", "fraud", "2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["run"]["params"] == {"lr": 0.01}
    assert lab(lab_root, "lineage", "fraud", "9") == 2
    assert "its versions are 1, 2, 3" in capsys.readouterr().err


def test_lineage_walks_from_a_pipeline_model_to_its_source_window_and_views(tmp_path, capsys):
    """The real features stage writes and records the training set; a training run logs
    the digest the file carries; `lab lineage` then reaches the data-set record with the
    source digest, the window and the feature-view versions (no dead end)."""
    from lab import steps
    from lab.pipeline.context import StageContext
    from lab.steps._common import TRAINSET
    from plugins.fraud import simulator
    from plugins.fraud.stages import TRANSACTIONS

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n\n[tool.lab]\n'
                                             'model_name = "fraud"\n\n[tool.lab.fraud]\n')
    frame = simulator.simulate(n_customers=40, n_terminals=80, nb_days=20, start_date="2018-04-01", seed=3)
    simulator.write_parquet(frame, tmp_path / TRANSACTIONS)
    built = steps.features(tmp_path, tmp_path / "runs/p1", source_path=TRANSACTIONS, train_start="2018-04-08",
                           delta_train=3, delta_delay=2, delta_test=2)

    with StageContext.open(tmp_path, tmp_path / "runs/p1") as ctx:  # what the train stage does
        digest = ctx.dataset_digest(TRAINSET)
        run_id = ctx.registry.start_run(kind="train", params={"n_trials": 1}, seeds={"seed": 1})
        ctx.registry.log_data(run_id, "training_set", digest)
        ctx.registry.finish_run(run_id)
        ctx.registry.register_model("fraud", run_id=run_id, flavor="tabular_mlp", artifact_path="runs/models/fraud/x",
                                    metrics={}, lineage={"trainset_digest": digest})
        views = {v.name: v.version for v in ctx.views.values()}
    assert digest == built["digest"]

    assert lab(tmp_path, "lineage", "fraud", "1", "--json") == 0
    walk = json.loads(capsys.readouterr().out)
    assert walk["run"]["id"] == run_id
    (data,) = walk["data"]  # the lineage value is the same digest, not a second entry
    assert (data["name"], data["digest"]) == ("run.training_set", built["digest"])
    (dataset,) = data["datasets"]
    assert dataset["kind"] == "training_set" and dataset["path"] == "data/trainset.parquet"
    assert dataset["rows"] == built["rows"] > 0
    audit = (tmp_path / "data/trainset.audit.json").read_bytes()
    assert dataset["meta"] == {"model": "fraud", "start": "2018-04-08", "end": "2018-04-14", "source": "transactions",
                               "source_digest": built["source_digest"], "views": views,
                               "leakage_audit": {"digest": hashlib.sha256(audit).hexdigest(),
                                                 "path": "data/trainset.audit.json"}}
    assert built["leakage_audit"]["digest"] == dataset["meta"]["leakage_audit"]["digest"]
    assert set(views) == {"customer_spending", "terminal_risk"} and all(views.values())

    assert lab(tmp_path, "lineage", "fraud", "1") == 0
    out = capsys.readouterr().out
    assert f"data     run.training_set {digest}" in out and "training_set fraud 2018-04-08..2018-04-14" in out
    assert f"leakage audit {built['leakage_audit']['digest']} data/trainset.audit.json" in out


def test_a_training_set_file_without_its_digest_names_the_stage_to_rerun(tmp_path):
    import polars as pl

    from lab.errors import LabError
    from lab.pipeline.context import StageContext

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n\n[tool.lab]\n')
    (tmp_path / "data").mkdir()
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "data/trainset.parquet")
    with StageContext.open(tmp_path, tmp_path / "runs/p1") as ctx:
        with pytest.raises(LabError, match="carries no data-set digest.*lab run features --force"):
            ctx.dataset_digest("data/trainset.parquet")
