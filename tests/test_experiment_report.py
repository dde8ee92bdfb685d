"""The experiment report: results from a real registry file, and one real papermill render."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lab import hookimpl
from lab.cli import main
from lab.config import load_config
from lab.errors import LabError, NotFound
from lab.experiments import Experiment, ExperimentStore, Variant, assign
from lab.experiments.report import (
    SECTIONS,
    experiment_results,
    headline,
    label_columns,
    render_report,
    report_tables,
)
from lab.experiments.stats import sample_size_proportions, sequential_test_observations
from lab.pipeline.stage import StageExecutor, StageFailed
from lab.plugins import make_plugin_manager
from lab.serving.ledger import Ledger, PredictionRecord

START = dt.datetime(2026, 3, 2)


@pytest.fixture
def config(bare_lab):
    return load_config(bare_lab)


@pytest.fixture
def pm():
    """Built-in guardrails only: no plugin adds one."""
    return make_plugin_manager(builtins=False, entry_points=False)


def create(config, name="checkout", weights=(0.5, 0.5), start=True, **fields) -> Experiment:
    names = ["control"] + [f"treatment{i}" if len(weights) > 2 else "treatment" for i in range(1, len(weights))]
    experiment = Experiment(name, tuple(Variant(n, w) for n, w in zip(names, weights)), **fields)
    with ExperimentStore.open(config.registry_path) as store:
        store.create(experiment)
        if start:
            store.start(name)
        return store.get(name)


def simulate(experiment, n, rates, *, seed=7, pre_rho=None, mean_kind=False, start_id=0) -> pl.DataFrame:
    """One row per unit, assigned by the experiment's own hash, over 14 days."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start_id, start_id + n)
    arms = np.array([assign(experiment, int(u)) for u in ids])
    level = np.array([rates[a] for a in arms])
    if mean_kind:
        pre = rng.normal(0, 1, n)
        noise = rng.normal(0, 1, n)
        rho = pre_rho or 0.0
        value = level + 10 * (rho * pre + np.sqrt(1 - rho**2) * noise)
    else:
        pre = rng.normal(0, 1, n)
        value = (rng.random(n) < level).astype(int)
    at = np.datetime64(START, "us") + np.sort(rng.uniform(0, 14 * 86400e6, n)).astype("timedelta64[us]")
    return pl.DataFrame({"unit_id": ids, "value": value, "at": at, "pre": pre})


def comparison(results, variant="treatment"):
    return next(c for c in results["comparisons"] if c["variant"] == variant)


# --------------------------------------------------------------------------- statistics


def test_a_real_lift_is_significant_with_the_right_sign_and_covers_the_truth(config, pm):
    e = create(config, mde=0.01, baseline=0.10)
    outcomes = simulate(e, 30_000, {"control": 0.10, "treatment": 0.12})
    results = experiment_results(config, "checkout", outcomes, pm=pm)

    c = comparison(results)
    assert c["significant"] and c["effect"] > 0 and c["p_adjusted"] < 0.001
    assert c["ci"][0] < 0.02 < c["ci"][1]
    assert c["lift_ci"][0] < 0.2 < c["lift_ci"][1]
    # the arms are the experiment's own assignment, counted right
    arms = [assign(e, int(u)) for u in outcomes["unit_id"]]
    assert {r["variant"]: r["n"] for r in results["variants"]} == {
        "control": arms.count("control"), "treatment": arms.count("treatment")}
    assert results["assignment"]["derived"] and results["assignment"]["outside"] == 0
    seq = results["sequential"]["arms"]["treatment"]
    assert seq["rejected"] and seq["final_p"] < 0.05
    assert "SIGNIFICANT" in headline(results)[1]


def test_before_the_planned_sample_the_decision_is_the_sequential_one(config, pm):
    # Planned: 14,745 units per arm (10 % -> 11 %). About 5,000 per arm are in and the
    # fixed-horizon p is below alpha, but that p is only valid at the planned n: the
    # verdict must be the always-valid test's, with how far the sample has come.
    e = create(config, mde=0.01, baseline=0.10)
    outcomes = simulate(e, 10_000, {"control": 0.10, "treatment": 0.115}, seed=3)
    results = experiment_results(config, "checkout", outcomes, pm=pm)
    c, seq = comparison(results), results["sequential"]["arms"]["treatment"]
    assert c["p_value"] < 0.05 and seq["final_p"] > 0.05  # the situation of the defect
    decision = c["decision"]
    assert decision["basis"] == "sequential" and decision["significant"] is False
    assert decision["n"] == 10_000 and decision["planned"] == 2 * 14_745
    line = headline(results)[1]
    assert "SIGNIFICANT" not in line
    assert "not significant yet (sequential: always-valid p > alpha 0.05" in line and "10,000 of 29,490 planned units" in line
    table = report_tables(results)["comparisons"]
    assert table["decision"][0].startswith("not significant yet") and table["decided_by"][0] == "sequential"

    # at the planned sample the fixed-horizon test decides
    full = simulate(e, 30_000, {"control": 0.10, "treatment": 0.12}, seed=5)
    results = experiment_results(config, "checkout", full, pm=pm)
    decision = comparison(results)["decision"]
    assert decision["basis"] == "fixed-horizon" and decision["significant"] is True
    assert "SIGNIFICANT (fixed-horizon test at the planned sample" in headline(results)[1]

    # an experiment without a plan has no horizon: always the sequential verdict
    create(config, name="unplanned", layer="other")
    results = experiment_results(config, "unplanned", outcomes, pm=pm)
    decision = comparison(results)["decision"]
    assert decision["basis"] == "sequential" and decision["planned"] is None
    assert "no planned sample size" in headline(results)[1]


def test_holm_adjusts_across_treatment_arms(config, pm):
    e = create(config, weights=(0.34, 0.33, 0.33))
    outcomes = simulate(e, 12_000, {"control": 0.10, "treatment1": 0.13, "treatment2": 0.105})
    results = experiment_results(config, "checkout", outcomes, pm=pm)
    raw = sorted(c["p_value"] for c in results["comparisons"])
    adjusted = sorted(c["p_adjusted"] for c in results["comparisons"])
    assert adjusted[0] == pytest.approx(min(1.0, 2 * raw[0]))
    assert adjusted[1] == pytest.approx(max(adjusted[0], raw[1]))


def test_an_aa_test_raises_no_srm_flag(config, pm):
    e = create(config)
    results = experiment_results(config, "checkout", simulate(e, 20_000, {"control": 0.1, "treatment": 0.1}), pm=pm)
    assert results["srm"]["checked"] and not results["srm"]["mismatch"]
    assert results["srm"]["p_value"] > 0.001
    assert "SRM: p=" in "\n".join(headline(results)) and "MISMATCH" not in "\n".join(headline(results))


def test_a_52_48_split_on_a_50_50_experiment_flags_srm(config, pm):
    e = create(config)
    pool = simulate(e, 25_000, {"control": 0.1, "treatment": 0.1})
    arms = np.array([assign(e, int(u)) for u in pool["unit_id"]])
    # treatment exposures lost in logging: 10,400 control rows, 9,600 treatment rows
    keep = np.r_[np.flatnonzero(arms == "control")[:10_400], np.flatnonzero(arms == "treatment")[:9_600]]
    results = experiment_results(config, "checkout", pool[np.sort(keep)], pm=pm)
    srm = results["srm"]
    assert srm["observed"] == {"control": 10_400, "treatment": 9_600}
    assert srm["mismatch"] and srm["p_value"] < 0.001
    assert any("MISMATCH" in line for line in headline(results))


def test_cuped_narrows_the_interval_and_keeps_the_effect(config, pm):
    e = create(config, metric_kind="mean", metric="revenue")
    outcomes = simulate(e, 6_000, {"control": 50.0, "treatment": 51.0}, pre_rho=0.8, mean_kind=True)
    results = experiment_results(config, "checkout", outcomes, pm=pm)
    raw = comparison(results)
    adjusted = results["cuped"]["comparisons"][0]
    assert adjusted["ci"][1] - adjusted["ci"][0] < 0.7 * (raw["ci"][1] - raw["ci"][0])
    assert adjusted["ci"][0] < 1.0 < adjusted["ci"][1]
    assert results["cuped"]["variance_reduction"] == pytest.approx(0.64, abs=0.05)


def test_required_vs_achieved_agree_with_planning(config, pm):
    e = create(config, weights=(0.8, 0.2), mde=0.02, baseline=0.10, alpha=0.05, power=0.8)
    outcomes = simulate(e, 5_000, {"control": 0.1, "treatment": 0.1})
    results = experiment_results(config, "checkout", outcomes, pm=pm)
    plan = sample_size_proportions(0.10, 0.02, alpha=0.05, power=0.8, ratio=0.2 / 0.8)
    arms = {a["variant"]: a for a in results["sample_size"]["arms"]}
    assert arms["control"]["required"] == plan.n_per_arm
    assert arms["treatment"]["required"] == plan.n_treatment
    counts = {r["variant"]: r["n"] for r in results["variants"]}
    assert arms["treatment"]["achieved"] == counts["treatment"]
    assert arms["treatment"]["progress"] == pytest.approx(counts["treatment"] / plan.n_treatment)
    assert results["sample_size"]["days_to_go"] > 0  # treatment is short of its requirement

    create(config, name="unplanned", layer="other")
    unplanned = experiment_results(config, "unplanned", outcomes, pm=pm)["sample_size"]
    assert not unplanned["planned"] and unplanned["reason"].startswith("not planned")


def test_sequential_test_runs_at_equally_spaced_looks_over_time(config, pm):
    e = create(config, mde=0.02, baseline=0.1)
    outcomes = simulate(e, 8_000, {"control": 0.1, "treatment": 0.1})
    seq = experiment_results(config, "checkout", outcomes, looks=8, pm=pm)["sequential"]
    arm = seq["arms"]["treatment"]
    assert seq["tau"] == 0.02 and seq["time_axis"] == "time" and len(arm["n"]) == 8
    first, last = outcomes["at"].min(), outcomes["at"].max()
    gaps = np.diff([first] + arm["at"])
    assert max(gaps) - min(gaps) < dt.timedelta(milliseconds=1)  # equally spaced in time
    assert arm["at"][-1] == last
    assert arm["n"][-1] == len(outcomes)
    in_order = outcomes.sort("at")
    expected = sequential_test_observations(
        in_order["value"].to_numpy().astype(float), np.array([assign(e, int(u)) == "treatment"
                                                              for u in in_order["unit_id"]]),
        looks=np.array(arm["n"]), tau=0.02)
    assert arm["p_value"] == pytest.approx(expected.p_value.tolist())
    assert all(a >= b for a, b in zip(arm["p_value"], arm["p_value"][1:]))


def test_a_stopped_experiment_is_analysed_with_the_layout_it_ran_with(config, pm):
    e = create(config, weights=(0.9, 0.1))
    with ExperimentStore.open(config.registry_path) as store:
        store.set_weights("checkout", {"control": 0.5, "treatment": 0.5}, reason="ramp")
        running = store.get("checkout")
        store.stop("checkout", reason="guardrail breached: latency_ms")
    outcomes = simulate(running, 4_000, {"control": 0.1, "treatment": 0.1})
    results = experiment_results(config, "checkout", outcomes, pm=pm)
    arms = [assign(running, int(u)) for u in outcomes["unit_id"]]
    assert {r["variant"]: r["n"] for r in results["variants"]} == {
        "control": arms.count("control"), "treatment": arms.count("treatment")}
    assert results["weights"] == {"control": 0.5, "treatment": 0.5}
    assert results["status"]["stop_reason"] == "guardrail breached: latency_ms"
    assert any("weights changed while it ran" in w for w in results["warnings"])
    assert e.weights != running.weights


def test_a_logged_variant_is_checked_against_the_assignment(config, pm):
    e = create(config)
    outcomes = simulate(e, 2_000, {"control": 0.1, "treatment": 0.1})
    logged = [assign(e, int(u)) for u in outcomes["unit_id"]]
    logged[0] = "treatment" if logged[0] == "control" else "control"
    results = experiment_results(config, "checkout", outcomes.with_columns(variant=pl.Series(logged)), pm=pm)
    assert results["assignment"]["disagreements"] == 1
    assert results["assignment"]["examples"][0]["unit_id"] == 0
    assert any("logged in another arm" in w for w in results["warnings"])


def write_ledger(config, experiment, n, latency, seed=3):
    rng = np.random.default_rng(seed)
    with Ledger.open(config.ledger_path) as ledger:
        for i in range(n):
            variant = "control" if i % 2 else "treatment"
            ledger.append(PredictionRecord(
                event_id=i, model_name="fraud", model_version=1, features={}, defaults={},
                score=float(rng.random()), latency_ms=float(rng.normal(latency[variant], 2.0)),
                experiment=experiment, variant=variant))


def test_guardrails_come_from_the_ledger(config, pm):
    e = create(config)
    outcomes = simulate(e, 2_000, {"control": 0.1, "treatment": 0.1})
    assert experiment_results(config, "checkout", outcomes, pm=pm)["guardrails"]["status"] == "no data"
    write_ledger(config, "checkout", 2_000, {"control": 20.0, "treatment": 30.0})
    guard = experiment_results(config, "checkout", outcomes, pm=pm)["guardrails"]
    latency = next(r for r in guard["results"] if r["guardrail"] == "latency_ms")
    assert guard["status"] == "breached" and latency["breached"] and latency["n_variant"] == 1_000
    errors = next(r for r in guard["results"] if r["guardrail"] == "error_rate")
    assert errors["p_value"] is None and errors["note"]  # the ledger holds no failures


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error(config, pm, tmp_path):
    e = create(config)
    good = simulate(e, 500, {"control": 0.1, "treatment": 0.1})
    with pytest.raises(NotFound, match="lab experiment status"):
        experiment_results(config, "nope", good, pm=pm)
    with pytest.raises(LabError, match="no outcomes file"):
        experiment_results(config, "checkout", tmp_path / "missing.parquet", pm=pm)
    with pytest.raises(LabError, match="lacks column.*value"):
        experiment_results(config, "checkout", good.drop("value"), pm=pm)
    with pytest.raises(LabError, match="must be 0 or 1.*--metric-kind mean"):
        experiment_results(config, "checkout", good.with_columns(value=pl.lit(2.5)), pm=pm)
    with pytest.raises(LabError, match="one row per unit"):
        experiment_results(config, "checkout", pl.concat([good, good.head(3)]), pm=pm)
    with pytest.raises(LabError, match="looks must be"):
        experiment_results(config, "checkout", good, looks=0, pm=pm)
    create(config, name="drafty", start=False, layer="other")
    with pytest.raises(LabError, match="draft.*lab experiment start drafty"):
        experiment_results(config, "drafty", good, pm=pm)


def test_cli_bad_input_exits_2_naming_the_fix(config, tmp_path, capsys):
    e = create(config)
    csv = tmp_path / "outcomes.csv"
    simulate(e, 300, {"control": 0.1, "treatment": 0.1}).with_columns(value=pl.lit(3)).write_csv(csv)
    root = str(config.root)
    cases = [
        (["nope", "--outcomes", str(csv)], "no experiment"),
        (["checkout", "--outcomes", str(tmp_path / "none.csv")], "no outcomes file"),
        (["checkout", "--outcomes", str(csv)], "must be 0 or 1"),
    ]
    for args, message in cases:
        assert main(["--root", root, "experiment", "report", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lab: error: ") and re.search(message, err) and "Traceback" not in err
    assert not (config.runs_path / "experiments").exists()  # nothing was written


# --------------------------------------------------------------------------- labels for online quality


def spec_plugin(task: str):
    """A lab's plugin: a model over ``lab.testing.events`` reading its two views."""
    from lab.modelspec import ModelSpec, RequestField, RequestSchema
    from lab.testing.events import EVENT_VIEWS

    request = RequestSchema(
        fields=(RequestField("EVENT_ID", "int"), RequestField("EVENT_TIME", "datetime"),
                RequestField("USER_ID", "int"), RequestField("ITEM_ID", "int")),
        id="EVENT_ID", timestamp="EVENT_TIME", entities=("USER_ID", "ITEM_ID"),
        example={"EVENT_ID": 1, "EVENT_TIME": "2024-01-01T00:00:00", "USER_ID": 1, "ITEM_ID": 2})
    spec = ModelSpec(name="events_model", task=task, label="LABEL", source="events",
                     features=EVENT_VIEWS[0].feature_names, views=tuple(v.name for v in EVENT_VIEWS),
                     request=request, request_frame=lambda frame: frame, request_row=lambda request, rows: {})

    class EventsLab:
        @hookimpl
        def lab_feature_views(self, config):
            return list(EVENT_VIEWS)

        @hookimpl
        def lab_model_specs(self, config):
            return [spec]

    return EventsLab()


def test_labels_are_read_with_the_model_specs_columns_and_longest_view_delay(config):
    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(spec_plugin("classification"))
    assert label_columns(config, pm) == {"id_column": "EVENT_ID", "label_column": "LABEL",
                                         "time_column": "EVENT_TIME", "label_delay": dt.timedelta(days=7)}


def test_the_fraud_lab_joins_transactions_with_their_fraud_label_a_week_later(bare_lab):
    from tests.conftest import write_pyproject

    write_pyproject(bare_lab, 'model_name = "fraud"\n[tool.lab.fraud]\n')
    config = load_config(bare_lab)
    assert label_columns(config, make_plugin_manager()) == {
        "id_column": "TRANSACTION_ID", "label_column": "TX_FRAUD", "time_column": "TX_DATETIME",
        "label_delay": dt.timedelta(days=7)}


def test_labels_without_a_classification_model_name_the_fix(config, pm):
    e = create(config)
    good = simulate(e, 300, {"control": 0.1, "treatment": 0.1})
    labels = pl.DataFrame({"EVENT_ID": [1], "LABEL": [0]})
    with pytest.raises(LabError, match="online quality joins labels with the model's event ids.*declares 0 models"):
        experiment_results(config, "checkout", good, labels=labels, pm=pm)
    regression = make_plugin_manager(builtins=False, entry_points=False)
    regression.register(spec_plugin("regression"))
    with pytest.raises(LabError, match="needs a classification model; model 'events_model' is regression"):
        experiment_results(config, "checkout", good, labels=labels, pm=regression)


class BrokenExecutor(StageExecutor):
    """A stage executor that fails the way a raising notebook does."""

    def execute(self, notebook, output_notebook, params, cwd):
        output_notebook.parent.mkdir(parents=True, exist_ok=True)
        output_notebook.write_text("{}")
        raise StageFailed(notebook.stem, "ZeroDivisionError: division by zero", str(output_notebook))


class BrokenExecutorPlugin:
    @hookimpl
    def lab_stage_executor(self, config):
        return BrokenExecutor()


def test_a_failing_notebook_names_the_executed_notebook(config):
    e = create(config)
    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(BrokenExecutorPlugin())
    with pytest.raises(LabError, match=r"ZeroDivisionError.*executed notebook is at .*report-.*\.ipynb") as info:
        render_report(config, pm, "checkout", simulate(e, 500, {"control": 0.1, "treatment": 0.1}))
    executed = re.search(r"at (\S+\.ipynb)", str(info.value)).group(1)
    assert Path(executed).exists()
    assert not list((config.runs_path / "experiments" / "checkout").glob("*.html"))


# --------------------------------------------------------------------------- the notebook, for real


@pytest.mark.slow
def test_lab_experiment_report_renders_html_with_every_section(config, tmp_path, capsys):
    from tests.conftest import write_pyproject

    write_pyproject(config.root, 'model_name = "fraud"\n[tool.lab.fraud]\n')  # the labels are the fraud model's
    e = create(config, mde=0.01, baseline=0.10)
    outcomes = tmp_path / "outcomes.parquet"
    simulate(e, 20_000, {"control": 0.10, "treatment": 0.12}).write_parquet(outcomes)
    write_ledger(config, "checkout", 400, {"control": 20.0, "treatment": 20.0})
    labels = tmp_path / "labels.parquet"
    pl.DataFrame({"TRANSACTION_ID": range(400), "TX_FRAUD": [int(i % 7 == 0) for i in range(400)],
                  "TX_DATETIME": [START] * 400}).write_parquet(labels)

    status = main(["--root", str(config.root), "experiment", "report", "checkout", "--outcomes", str(outcomes),
                   "--labels", str(labels), "--looks", "10"])
    out = capsys.readouterr().out
    assert status == 0, out
    html_path = out.splitlines()[0].strip()
    assert re.fullmatch(rf"{re.escape(str(config.runs_path))}/experiments/checkout/report-\d{{8}}T\d{{6}}Z\.html",
                        html_path)
    assert "treatment vs control: effect +" in out and "SRM: p=" in out and "guardrails: " in out
    html = open(html_path, encoding="utf-8").read()
    assert "checkout" in html
    for title in SECTIONS:
        assert title in html
    assert html.count("data:image/png") >= 6  # one figure per section
    assert "report.experiment_results" not in html  # code cells are hidden
    assert "Traceback" not in html
