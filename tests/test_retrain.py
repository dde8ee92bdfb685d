"""``lab retrain``: due on drift, quality decay or the schedule; runs the retrain stages
through the real pipeline runner and registry; a gate that refuses stops it, and a
promotion around the gate is undone. The stages are small notebooks standing for the
train (with its validation gate) and register steps, so each case takes seconds."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError
from lab.monitoring.retrain import RETRAIN_FINISHED, RETRAIN_REFUSED, RETRAIN_STARTED, RetrainConfig, decide, retrain
from lab.plugins import get_plugin_manager
from lab.registry import Registry
from plugins.fraud.testing import build_tiny_lab
from tests._helpers import Events, stage_notebook

TRAIN = """
import json
from pathlib import Path
from lab.monitoring.validation import ValidationFailed
data = Path(root, "data")
batch = (data / "batch.txt").read_text()
if "corrupt" in batch:  # what the train step's validation gate does with a failing batch
    raise ValidationFailed("the data failed validation: amount range, unique TRANSACTION_ID")
(data / "candidate.json").write_text(json.dumps({"batch": batch, "gate": (data / "gate.txt").read_text()}))
"""

REGISTER = """
import json
from pathlib import Path
from lab.registry import Registry
data = Path(root, "data")
candidate = json.loads((data / "candidate.json").read_text())
passed = candidate["gate"].startswith("pass")
with Registry.open(Path(root, "registry.db"), project_root=root) as registry:
    version = registry.register_model("fraud", run_id=None, flavor="lightning_mlp", artifact_path="runs/models/fraud-v1",
                                      metrics={}, lineage={"gate": {"passed": passed, "reason": candidate["gate"]}})
    if passed or candidate["gate"] == "fail but promote":  # the second: a stage that goes around the gate
        registry.promote("fraud", version.version, reason="toy register")
(data / "registered.json").write_text(json.dumps({"version": version.version}))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    tiny = build_tiny_lab(tmp_path_factory.mktemp("retrain") / "lab")
    root = tiny.root
    (root / "notebooks").mkdir(exist_ok=True)
    stage_notebook(root / "notebooks/train.ipynb", TRAIN)
    stage_notebook(root / "notebooks/register.ipynb", REGISTER)
    (root / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "train"
        notebook = "notebooks/train.ipynb"
        inputs = ["data/batch.txt", "data/gate.txt"]
        outputs = ["data/candidate.json"]

        [[stage]]
        name = "register"
        notebook = "notebooks/register.ipynb"
        inputs = ["data/candidate.json"]
        outputs = ["data/registered.json"]

        [[stage]]
        name = "report"
        notebook = "notebooks/register.ipynb"
        inputs = ["data/registered.json"]
    """))
    return root


@pytest.fixture
def lab_dir(template, tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(template, root)
    (root / "data" / "batch.txt").write_text("week 1")
    (root / "data" / "gate.txt").write_text("pass: AUC up 0.02 (CI above 0)")
    return root


def _summary(root: Path, **statuses: str) -> None:
    checks = {name: {"status": statuses.get(name, "ok"), "detail": f"{name} {statuses.get(name, 'ok')}"}
              for name in ("drift", "score_drift", "freshness", "quality", "volume")}
    (root / "data" / "monitor.json").write_text(json.dumps({"model": "fraud", "checks": checks}))


def _run(root: Path, **kwargs):
    config = load_config(root)
    pm = get_plugin_manager(config)
    seen = Events()
    pm.register(seen, name="test-events")
    outcome = retrain(config, pm, monitor=False, log=lambda _: None, **kwargs)
    return outcome, [e.name for e in seen.seen if e.name.startswith("retrain.")]


def _champion(root: Path) -> int:
    with Registry.open(root / "registry.db", project_root=root) as registry:
        return registry.get_alias("fraud", "champion").version


def test_not_due_runs_nothing(lab_dir):
    _summary(lab_dir)
    outcome, fired = _run(lab_dir)
    assert outcome.status == "not_due" and fired == []
    assert not (lab_dir / "data" / "candidate.json").exists()


def test_drift_retrains_through_the_stages_up_to_register_and_promotes_what_passed(lab_dir):
    _summary(lab_dir, drift="breach")
    outcome, fired = _run(lab_dir)
    assert outcome.status == "promoted", outcome.detail
    assert outcome.decision.reasons == ["drift: drift breach"]
    assert (outcome.champion_before, outcome.champion_after, outcome.registered) == (1, 2, [2])
    assert _champion(lab_dir) == 2
    assert fired == [RETRAIN_STARTED, RETRAIN_FINISHED]
    assert not (lab_dir / "runs" / outcome.pipeline_run / "report.ipynb").exists()  # past register: not run
    with Registry.open(lab_dir / "registry.db", project_root=lab_dir) as registry:
        run = registry.get_run(outcome.run_id)
        assert run["kind"] == "retrain" and run["status"] == "finished"
    # The same data again: every stage cached, nothing new to learn from.
    again, _ = _run(lab_dir)
    assert again.status == "nothing_new" and _champion(lab_dir) == 2


def test_a_corrupted_batch_is_refused_and_nothing_downstream_runs(lab_dir):
    _summary(lab_dir, quality="breach")
    (lab_dir / "data" / "batch.txt").write_text("week 2, corrupt: amounts in cents")
    outcome, fired = _run(lab_dir)
    assert outcome.status == "refused" and "amount range" in outcome.detail
    assert outcome.registered == [] and _champion(lab_dir) == 1
    assert fired == [RETRAIN_STARTED, RETRAIN_REFUSED]
    assert not (lab_dir / "data" / "registered.json").exists()
    with Registry.open(lab_dir / "registry.db", project_root=lab_dir) as registry:
        assert registry.get_run(outcome.run_id)["status"] == "failed"


def test_a_failed_gate_registers_but_never_promotes(lab_dir):
    _summary(lab_dir, drift="breach")
    (lab_dir / "data" / "gate.txt").write_text("fail: AUC down 0.01")
    outcome, _ = _run(lab_dir)
    assert outcome.status == "trained" and outcome.registered == [2] and "fail: AUC down" in outcome.detail
    assert _champion(lab_dir) == 1


def test_a_promotion_around_the_gate_is_rolled_back(lab_dir):
    _summary(lab_dir, drift="breach")
    (lab_dir / "data" / "gate.txt").write_text("fail but promote")
    outcome, fired = _run(lab_dir)
    assert outcome.status == "refused" and "without a passed gate" in outcome.detail
    assert _champion(lab_dir) == 1 and fired[-1] == RETRAIN_REFUSED


def test_the_schedule_makes_a_retrain_due_once_the_champion_is_old_enough(lab_dir):
    (lab_dir / "pyproject.toml").write_text((lab_dir / "pyproject.toml").read_text()
                                            + "\n[tool.lab.retrain]\nevery_days = 7\non_drift = false\n")
    config = load_config(lab_dir)
    now = dt.datetime.now(dt.timezone.utc)
    drifted = {"checks": {"drift": {"status": "breach", "detail": "x"}}}
    assert not decide(config, "fraud", drifted, now=now).due  # drift is not watched here
    later = decide(config, "fraud", None, now=now + dt.timedelta(days=8))
    assert later.due and later.reasons[0].startswith("schedule: champion v1 has served 8.0 days")


def test_the_command_writes_the_outcome_and_exits_3_when_refused(lab_dir, capsys):
    _summary(lab_dir, drift="breach")
    (lab_dir / "data" / "batch.txt").write_text("corrupt")
    assert main(["--root", str(lab_dir), "retrain", "--no-monitor", "--json"]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "refused"
    assert json.loads((lab_dir / "data" / "retrain.json").read_text())["status"] == "refused"


def test_bad_settings_name_the_fix(lab_dir):
    with pytest.raises(ConfigError, match="every_days must be"):
        RetrainConfig(every_days=0)
    (lab_dir / "pyproject.toml").write_text((lab_dir / "pyproject.toml").read_text()
                                            + "\n[tool.lab.retrain]\nstages = [\"train\", \"deploy\"]\n")
    _summary(lab_dir, drift="breach")
    with pytest.raises(ConfigError, match="unknown stage.*deploy"):
        _run(lab_dir)
