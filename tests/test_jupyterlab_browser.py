"""The JupyterLab extension in a real browser: `jupyter lab` on a tiny lab, driven by
Playwright in Debian's headless chromium.

The lab (``served_tiny_lab``: days of served traffic, with the monitor's freshness and
quality checks run on it) has a champion v1 and a registered v2, drift recorded for a few
columns, a running experiment, and a pipeline run of its `prepare` stage; its pipeline.toml
has a second toy stage, `hello`. The test opens the lab sidebar, checks the Models rows
against the registry and the monitoring plots against the monitor's output, promotes v2
through the confirmation dialog and checks the registry's champion and audit log (actor
``jupyterlab:<user>``), opens the recorded run's executed notebook from Runs, then runs
`hello` from its notebook with the `lab:run-stage` command and waits for the sidebar to show
it finished.
Screenshots go to ``$LAB_SCREENSHOTS`` when it is set (``LAB_SCREENSHOTS=docs/images``
refreshes the ones docs/jupyterlab.md shows), else to the run's temporary folder, so a test
run leaves the repository as it was.

Needs the extension installed (``pip install -e .`` builds it) and /usr/bin/chromium
(``.ci/run`` installs it; the test is skipped only when it is absent).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from lab.config import load_config
from lab.experiments import Experiment, ExperimentStore, Variant
from lab.pipeline.runner import run_pipeline
from lab.plugins import get_plugin_manager, model_spec
from lab.registry import Registry
from lab.monitoring.monitor import run_monitor
from plugins.fraud.testing import MODEL_ARTIFACT
from tests import _browser
from tests._helpers import stage_notebook
from tests._served_lab import served_tiny_lab

pytestmark = pytest.mark.slow

if _browser.missing():
    pytest.skip(_browser.missing(), allow_module_level=True)
playwright_api = _browser.playwright_api()
TOKEN = _browser.TOKEN


class TinyLab(NamedTuple):
    root: Path
    model_name: str


def _make_lab(root: Path) -> dict:
    """A tiny lab that served traffic (``served_tiny_lab``) with the monitor's freshness and
    quality checks run, v1 champion, v2 registered, drift, an experiment and a recorded run."""
    config = served_tiny_lab(root)
    run_monitor(config, checks=("freshness", "quality"), emit=False)
    tiny = TinyLab(root, model_spec(get_plugin_manager(config), config).name)
    stage_notebook(root / "notebooks/prepare.ipynb", title="# prepare", body="""
        from pathlib import Path
        Path(root, "data").mkdir(exist_ok=True)
        Path(root, "data/prepared.txt").write_text("prepared")
    """)
    stage_notebook(root / "notebooks/hello.ipynb", title="# hello: a toy stage", body="""
        import time
        from pathlib import Path
        time.sleep(1.0)  # long enough for the sidebar to see it running
        Path(root, "data/hello.txt").write_text("hello from the stage")
    """)
    (root / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "prepare"
        notebook = "notebooks/prepare.ipynb"
        outputs = ["data/prepared.txt"]

        [[stage]]
        name = "hello"
        notebook = "notebooks/hello.ipynb"
        inputs = ["data/prepared.txt"]
        outputs = ["data/hello.txt"]
    """))
    with Registry.open(root / "registry.db", project_root=root) as registry:
        v1 = registry.get_model_version(tiny.model_name, 1)
        v2 = registry.register_model(
            tiny.model_name, run_id=None, flavor=v1.flavor, artifact_path=MODEL_ARTIFACT,
            metrics={**v1.metrics, "average_precision": 0.91}, lineage={"built_by": "test_jupyterlab_browser"})
        registry.record_drift(None, model_name=tiny.model_name, model_version=1, reference="train", current="week 1",
                              scores={"TX_AMOUNT": {"score": 0.31, "drifted": True, "method": "wasserstein"},
                                      "TX_DURING_NIGHT": {"score": 0.04, "drifted": False, "method": "jensen_shannon"},
                                      "TERMINAL_ID_RISK_7DAY_WINDOW": {"score": 0.02, "drifted": False,
                                                                       "method": "wasserstein"}})
    with ExperimentStore.open(root / "registry.db") as store:
        store.create(Experiment("ranker", (Variant("control", 0.5), Variant("treatment", 0.5)), unit="CUSTOMER_ID"))
        store.start("ranker")
    # The recorded run, as `lab run prepare` makes it (in process; its kernel-watch variable restored).
    config = load_config(root)
    before = os.environ.get("LAB_RUN_PID")
    try:
        run_pipeline(config, get_plugin_manager(config), only=["prepare"], log=lambda line: None)
    finally:
        if before is None:
            os.environ.pop("LAB_RUN_PID", None)
        else:
            os.environ["LAB_RUN_PID"] = before
    return {"model": tiny.model_name, "v2": v2.version}


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """``jupyter lab`` on 127.0.0.1 rooted at a tiny lab: ``(url, root, facts)``; stopped by PID."""
    base = tmp_path_factory.mktemp("jupyterlab-browser")
    root = base / "lab"
    facts = _make_lab(root)
    with _browser.jupyter_lab(base, root) as url:
        yield url, root, facts


@pytest.fixture(scope="module")
def page(jupyter_lab, tmp_path_factory):
    """A chromium page with JupyterLab loaded and the lab sidebar open."""
    url, _, _ = jupyter_lab
    with _browser.sidebar_page(url, tmp_path_factory.mktemp("chromium")) as page:
        yield page


_shot = _browser.shot


def test_models_rows_match_the_registry_and_promote_through_the_dialog(jupyter_lab, page):
    _, root, facts = jupyter_lab
    model = facts["model"]
    with Registry.open(root / "registry.db", project_root=root) as registry:
        versions = {v.version for v in registry.list_model_versions(model)}
        assert registry.aliases(model) == {"champion": 1}
    rows = page.locator(f'.lab-model-row[data-model="{model}"]')
    assert {int(v) for v in rows.evaluate_all("rows => rows.map(r => r.dataset.version)")} == versions
    champion_row = page.locator(f'.lab-model-row[data-model="{model}"][data-version="1"]')
    assert "champion" in champion_row.inner_text() and champion_row.locator(".lab-promote").count() == 0
    assert "average_precision 0.9100" in page.locator('.lab-model-row[data-version="2"]').inner_text()
    # Drift per column is drawn, the drifted one in the error colour.
    assert page.locator(".lab-drift-bar").count() == 3
    assert page.locator('.lab-drift-bar[data-column="TX_AMOUNT"] rect.lab-drift-drifted').count() == 1
    # Freshness per view against its objective (customer_spending's 30 s breached, terminal_risk's
    # 10 min kept) and live quality per daily window, from the monitor's summary and recorded run.
    fresh = page.locator(".lab-fresh-row")
    assert sorted(fresh.evaluate_all("rows => rows.map(r => [r.dataset.view, r.dataset.breached])")) == [
        ["customer_spending", "true"], ["terminal_risk", "false"]]
    assert page.locator('.lab-fresh-row[data-view="customer_spending"] rect.lab-fresh-breached').count() == 1
    points = page.locator('.lab-quality-plot[data-metric] .lab-quality-series[data-version="1"] .lab-quality-point')
    assert points.count() >= 3 * page.locator(".lab-quality-plot").count() >= 3

    page.locator(f'.lab-model-row[data-model="{model}"][data-version="{facts["v2"]}"] .lab-promote').click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for()
    assert "Promote to champion" in dialog.inner_text()
    dialog.locator(".lab-reason").fill("better AP, checked in the browser")
    _shot(page, "promote-dialog")
    dialog.locator("button.jp-mod-accept").click()
    page.locator('.lab-notice[data-section="models"]').wait_for()
    assert page.locator('.lab-error[data-section="models"]').count() == 0
    page.locator(f'.lab-model[data-model="{model}"] .lab-alias[data-alias="champion"]',
                 has_text=f"v{facts['v2']}").wait_for()

    with Registry.open(root / "registry.db", project_root=root) as registry:
        assert registry.aliases(model)["champion"] == facts["v2"]
        event = registry.alias_history(model, "champion")[-1]
    assert (event["to_version"], event["from_version"]) == (facts["v2"], 1)
    assert event["actor"].startswith("jupyterlab:") and len(event["actor"]) > len("jupyterlab:")
    assert event["reason"] == "better AP, checked in the browser"


def test_runs_open_the_executed_notebook(jupyter_lab, page):
    _, root, _ = jupyter_lab
    with Registry.open(root / "registry.db", project_root=root) as registry:
        run = registry.last_pipeline_run()
    shown = page.locator(f'.lab-run[data-run="{run["id"]}"]')
    assert shown.get_attribute("data-status") == "finished"
    stage = shown.locator('.lab-stage[data-stage="prepare"]')
    assert stage.get_attribute("data-status") == "finished" and "ran" in stage.inner_text()
    stage.locator(".lab-open-notebook").click()
    # The executed notebook (runs/<run id>/...) opens in a JupyterLab tab.
    page.locator(".jp-NotebookPanel:visible .jp-MarkdownOutput", has_text="prepare").first.wait_for()
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    assert "prepare" in tab.inner_text()


def _in_palette(page, text: str, command: str, tries: int = 4) -> bool:
    """Whether the command palette lists ``command`` when searched for ``text``. The
    shortcut can be swallowed while the notebook is still settling (a kernel starting,
    focus moving), so the palette is opened again, by the shortcut and by the View
    menu in turn, a few times."""
    palette = page.locator("#command-palette")
    item = palette.locator(f'.lm-CommandPalette-item[data-command="{command}"]').first
    for attempt in range(tries):
        try:
            page.locator(".jp-Notebook:visible").click(timeout=5_000)
            if attempt % 2 == 0:
                page.keyboard.press("Control+Shift+c")
            else:  # the View menu's entry, when the shortcut went astray
                page.locator(".lm-MenuBar-itemLabel", has_text="View").first.click(timeout=5_000)
                page.locator(".lm-Menu-itemLabel", has_text="Command Palette").first.click(timeout=5_000)
            palette.locator("input").wait_for(state="visible", timeout=5_000)
            palette.locator("input").fill(text)
            item.wait_for(state="attached", timeout=10_000)
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")
            continue
        page.keyboard.press("Escape")
        return True
    return False


def test_run_a_stage_from_its_notebook(jupyter_lab, page):
    url, root, _ = jupyter_lab
    page.goto(f"{url}lab/tree/notebooks/hello.ipynb?token={TOKEN}")
    # The workspace may bring back earlier tabs: make hello.ipynb the current one.
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="hello.ipynb").first.click()
    panel = page.locator(".jp-NotebookPanel:visible")
    assert panel.count() == 1
    # The command is in the palette (Ctrl+Shift+C), found by its label.
    assert _in_palette(page, "Run lab stage", "lab:run-stage")
    # The notebook toolbar's button runs the command lab:run-stage for this notebook.
    panel.locator(".lab-run-stage-button button, button.lab-run-stage-button").first.click()
    page.locator('.lab-notice[data-section="stage"]', has_text="started").or_(
        page.locator('.lab-progress[data-stage="hello"]')).or_(
        page.locator('.lab-error[data-section="stage"]')).first.wait_for()
    errors = page.locator('.lab-error[data-section="stage"]')
    assert errors.count() == 0, errors.all_inner_texts()
    page.locator('.lab-notice[data-section="stage"]', has_text="finished").wait_for(timeout=60_000)
    assert page.locator('.lab-error[data-section="stage"]').count() == 0
    assert (root / "data/hello.txt").read_text() == "hello from the stage"
    with Registry.open(root / "registry.db", project_root=root) as registry:
        run = registry.last_pipeline_run()
    latest = page.locator(f'.lab-run[data-run="{run["id"]}"]')
    latest.wait_for()
    assert latest.locator('.lab-stage[data-stage="hello"]').get_attribute("data-status") == "finished"
    page.locator("#lab-sidebar").evaluate("node => node.scrollTo(0, 0)")
    _shot(page, "sidebar")
