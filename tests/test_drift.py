"""The built-in drift report (Evidently) through the lab_drift_report hook."""

import numpy as np
import pandas as pd
import pytest

from lab.config import load_config
from lab.errors import LabError
from lab.plugins import make_plugin_manager


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    n = 2000
    reference = pd.DataFrame({"amount": rng.gamma(2, 30, n), "risk": rng.uniform(0, 1, n),
                              "night": rng.integers(0, 2, n)})
    current = pd.DataFrame({"amount": rng.gamma(2, 30, n) * 1.8, "risk": rng.uniform(0, 1, n),
                            "night": rng.integers(0, 2, n)})
    return reference, current


def test_shifted_column_is_flagged_and_report_written(bare_lab, frames, tmp_path):
    reference, current = frames
    pm = make_plugin_manager()
    html = tmp_path / "drift.html"
    scores = pm.hook.lab_drift_report(config=load_config(bare_lab), reference=reference, current=current,
                                      columns=["amount", "risk", "night"], html_path=str(html))
    assert set(scores) == {"amount", "risk", "night"}
    assert scores["amount"]["drifted"] is True
    assert scores["risk"]["drifted"] is False and scores["night"]["drifted"] is False
    assert all(isinstance(s["score"], float) and s["method"] for s in scores.values())
    assert html.stat().st_size > 10_000 and "<html" in html.read_text()[:2000].lower()


def test_missing_column_is_a_clear_error(bare_lab, frames, tmp_path):
    reference, current = frames
    pm = make_plugin_manager()
    with pytest.raises(LabError, match=r"column\(s\) \['ghost'\] are missing"):
        pm.hook.lab_drift_report(config=load_config(bare_lab), reference=reference, current=current,
                                 columns=["amount", "ghost"], html_path=str(tmp_path / "d.html"))
    assert not (tmp_path / "d.html").exists()


def test_views_come_from_a_labs_plugin_and_flavors_from_the_backends(bare_lab):
    pm = make_plugin_manager()
    views = [v for batch in pm.hook.lab_feature_views(config=load_config(bare_lab)) for v in batch]
    assert views == []  # the platform defines no view; a lab's plugin does
    (bare_lab / "pyproject.toml").write_text((bare_lab / "pyproject.toml").read_text() + "\n[tool.lab.fraud]\n")
    views = [v for batch in pm.hook.lab_feature_views(config=load_config(bare_lab)) for v in batch]
    assert {v.name for v in views} == {"customer_spending", "terminal_risk"}
    terminal = next(v for v in views if v.name == "terminal_risk")
    assert terminal.label_delay.days == 7 and len(terminal.feature_names) == 6
    flavors = [f.name for batch in pm.hook.lab_model_flavors() for f in batch]
    assert flavors == ["lightning_mlp"]
