"""The whole notebook pipeline, run with papermill on a small simulated dataset in a temp lab."""

from __future__ import annotations

import json

import pytest

from lab.cli import main
from lab.config import load_config
from lab.registry import Registry
from tests.conftest import make_small_lab




# A project-local plugin: it sees every event and adds a Lightning callback to training.
PROBE = '''
import json
from pathlib import Path

import pytorch_lightning as pl

from lab import hookimpl

HERE = Path(__file__).parent


class EpochProbe(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        with open(HERE / "epochs.log", "a") as fh:
            fh.write(f"{trainer.current_epoch}\\n")


@hookimpl
def lab_trainer_callbacks(config, run_dir):
    return [EpochProbe()]


@hookimpl
def lab_on_event(event):
    with open(HERE / "events.log", "a") as fh:
        fh.write(json.dumps({"name": event.name, **event.payload}, default=str) + "\\n")
'''


@pytest.fixture
def small_lab(tmp_path):
    make_small_lab(tmp_path, extra='plugins = ["lab_probe"]\n')
    (tmp_path / "lab_probe.py").write_text(PROBE)
    return tmp_path


def read_events(lab) -> list[dict]:
    return [json.loads(line) for line in (lab / "events.log").read_text().splitlines()]


@pytest.mark.slow
def test_pipeline_end_to_end_then_cached(small_lab, capsys):
    assert main(["--root", str(small_lab), "run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "9 stage(s) ran, 0 skipped" in out
    assert "champion fraud v1 on its test window: average_precision" in out and "roc_auc" in out

    config = load_config(small_lab)
    with Registry.open(config.registry_path, project_root=small_lab) as reg:
        champion = reg.get_alias("fraud", "champion")
        assert champion is not None and champion.version == 1
        assert 0.5 < champion.metrics["roc_auc"] <= 1.0
        assert set(champion.metrics) >= {"roc_auc", "average_precision", "card_precision_at_100"}
        lineage = champion.lineage
        assert lineage["trainset_digest"] and lineage["feature_views"].keys() == {"customer_spending", "terminal_risk"}
        run = reg.get_run(champion.run_id)
        assert run["status"] == "finished" and len(reg.list_trials(champion.run_id)) == 2
        # One walk, no dead end: the train run logged the digest the features stage
        # recorded the training set under, with its source digest, window and views.
        assert run["data"] == {"training_set": lineage["trainset_digest"]}
        (data,) = reg.lineage("fraud", 1)["data"]
        (dataset,) = data["datasets"]
        assert data["digest"] == lineage["trainset_digest"] and dataset["path"] == "data/trainset.parquet"
        assert dataset["meta"]["source_digest"] and dataset["meta"]["start"] == "2018-04-25"
        assert dataset["meta"]["views"] == lineage["feature_views"]
        drift = reg.list_drift()
        assert len({d["column"] for d in drift}) == 15
        assert all(d["model_version"] == 1 and d["score"] >= 0 for d in drift)

    run_dirs = [p for p in config.runs_path.iterdir() if p.is_dir() and p.name != "models"]
    notebooks = sorted(p.name for p in run_dirs[0].glob("*.ipynb"))
    assert notebooks[0] == "01_simulate.ipynb" and len(notebooks) == 9
    assert (small_lab / "data/online.db").exists() and (small_lab / "data/drift.html").stat().st_size > 10_000
    monitored = json.loads((small_lab / "data/monitor.json").read_text())
    assert monitored["model"] == "fraud" and monitored["version"] == 1
    assert monitored["checks"]["freshness"]["status"] == "ok" and monitored["checks"]["volume"]["status"] == "skipped"
    assert monitored["checks"]["drift"]["status"] in ("ok", "breach") and (small_lab / "data/monitor.html").exists()
    evaluation = json.loads((small_lab / "data/evaluation.json").read_text())
    assert evaluation["gate"]["passed"] is True and evaluation["champion"] is None

    # The project plugin's callback ran inside the notebook kernels' training, and its
    # observer saw the stages and the promotion.
    assert len((small_lab / "epochs.log").read_text().split()) >= 2
    names = [e["name"] for e in read_events(small_lab)]
    assert names.count("stage.finished") == 9 and "model.promoted" in names and "model.registered" in names

    # Each stage is keyed by the platform code it imported: training depends on the
    # flavor and the sweep, not on the model server.
    with Registry.open(config.registry_path) as reg:
        train = reg.last_finished_stage("train")["outputs"]["code_files"]
    assert {"lab/steps/training.py", "plugins/fraud/spec.py", "lab/training/sweep.py",
            "plugins/lightning_tabular/flavor.py"} <= set(train)
    assert "plugins/litestar_serving/app.py" not in train and "lab/serving/ledger.py" not in train

    # Nothing changed: every stage is skipped, the champion is the same.
    assert main(["--root", str(small_lab), "run"]) == 0
    out = capsys.readouterr().out
    assert "0 stage(s) ran, 9 skipped" in out and "champion fraud v1" in out
    assert [e["name"] for e in read_events(small_lab)].count("stage.skipped") == 9
