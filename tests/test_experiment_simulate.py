"""``lab experiment simulate``: outcomes to try the report on, assigned by the real hash."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.experiments import Experiment, ExperimentStore, Variant, assign
from lab.experiments.outcomes import as_naive_utc, read_outcomes
from lab.experiments.report import experiment_results
from lab.experiments.simulate import parse_rates, simulate_outcomes
from lab.plugins import make_plugin_manager


@pytest.fixture
def config(bare_lab):
    return load_config(bare_lab)


def create(config, name="new_ranker", *, start=True, **fields) -> Experiment:
    experiment = Experiment(name, (Variant("control", 0.5), Variant("treatment", 0.5)), **fields)
    with ExperimentStore.open(config.registry_path) as store:
        store.create(experiment)
        if start:
            store.start(name)
    return experiment


def lab(config, *args) -> int:
    return main(["--root", str(config.root), "experiment", *args])


def simulate(config, *args) -> int:
    return lab(config, "simulate", "new_ranker", *args)


def test_the_report_reads_it_finds_the_effect_and_no_sample_ratio_mismatch(config, capsys):
    create(config, mde=0.01, baseline=0.10)
    out = config.root / "outcomes.parquet"
    assert simulate(config, "--units", "40000", "--rates", "control=0.10,treatment=0.13", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"wrote 40000 simulated units of new_ranker to {out}" in printed and "control 2" in printed

    frame = pl.read_parquet(out)
    assert frame.columns == ["unit_id", "value", "at"] and frame.height == 40_000
    assert frame["unit_id"].n_unique() == 40_000 and set(frame["value"].unique()) == {0, 1}
    with ExperimentStore.open(config.registry_path) as store:
        experiment = store.get("new_ranker")
    # the arms are the experiment's sticky assignment, not a coin of our own
    arms = [assign(experiment, u) for u in frame["unit_id"].head(2000)]
    rates = {a: frame["value"].head(2000).filter(pl.Series(arms) == a).mean() for a in ("control", "treatment")}
    assert rates["treatment"] > rates["control"]

    results = experiment_results(config, "new_ranker", out, pm=make_plugin_manager(builtins=False, entry_points=False))
    assert results["n_units"] == 40_000 and not results["warnings"]
    assert results["srm"]["checked"] and not results["srm"]["mismatch"]
    (comparison,) = results["comparisons"]
    assert comparison["significant"] and comparison["ci"][0] < 0.03 < comparison["ci"][1]
    assert results["sequential"]["time_axis"] == "time"


def test_one_seed_one_table_another_seed_another(config):
    create(config)
    with ExperimentStore.open(config.registry_path) as store:
        experiment, audit = store.get("new_ranker"), store.audit("new_ranker")
    rates = {"control": 0.1, "treatment": 0.2}
    first = simulate_outcomes(experiment, audit, units=3000, rates=rates, seed=5)
    again = simulate_outcomes(experiment, audit, units=3000, rates=rates, seed=5)
    other = simulate_outcomes(experiment, audit, units=3000, rates=rates, seed=6)
    assert first.frame.equals(again.frame) and first.arms == again.arms
    assert not first.frame.equals(other.frame)
    assert first.frame["unit_id"].equals(other.frame["unit_id"])  # the units and arms do not depend on the seed
    started = as_naive_utc(next(r["at"] for r in audit if r["action"] == "start"))
    at = first.frame["at"]
    assert at.is_sorted() and started <= at[0] and at[-1] <= started + dt.timedelta(days=14)


def test_the_same_seed_writes_the_same_file(config):
    create(config)
    a, b = config.root / "a.parquet", config.root / "b.csv"
    assert simulate(config, "--units", "500", "--rates", "control=0.1,treatment=0.1", "--seed", "3",
                    "--out", str(a)) == 0
    assert simulate(config, "--units", "500", "--rates", "control=0.1,treatment=0.1", "--seed", "3",
                    "--out", str(b)) == 0
    from_csv = pl.read_csv(b, try_parse_dates=True).with_columns(pl.col("at").cast(pl.Datetime("us")))
    assert pl.read_parquet(a).equals(from_csv)
    assert [p.name for p in config.root.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_mean_metric_draws_normal_values(config):
    create(config, metric="revenue", metric_kind="mean")
    with ExperimentStore.open(config.registry_path) as store:
        experiment, audit = store.get("new_ranker"), store.audit("new_ranker")
    simulated = simulate_outcomes(experiment, audit, units=4000, rates={"control": 10.0, "treatment": 12.0},
                                  seed=1, mean=True, std=2.0)
    by_arm = {r["variant"]: r for r in simulated.summary()}
    assert abs(by_arm["control"]["mean"] - 10) < 0.2 and abs(by_arm["treatment"]["mean"] - 12) < 0.2
    assert simulated.frame["value"].dtype == pl.Float64
    read_outcomes(simulated.frame, metric_kind="mean", experiment="new_ranker")


def test_a_layer_share_keeps_only_units_inside_it(config):
    create(config, layer_share=(0, 2500))
    with ExperimentStore.open(config.registry_path) as store:
        experiment, audit = store.get("new_ranker"), store.audit("new_ranker")
    simulated = simulate_outcomes(experiment, audit, units=1000, rates={"control": 0.1, "treatment": 0.1})
    assert simulated.frame.height == 1000 and None not in {assign(experiment, u) for u in simulated.frame["unit_id"]}
    assert simulated.frame["unit_id"].max() > 1000  # units outside the share were skipped


@pytest.mark.parametrize("args, needle", [
    (["--rates", "control=0.1"], "--rates must give every variant of experiment 'new_ranker' (control, treatment), "
                                 "once: missing treatment"),
    (["--rates", "control=0.1,treatment=0.1,extra=0.2"], "unknown extra"),
    (["--rates", "control=0.1,treatment=1.5"], "treatment=1.5 is not a rate between 0 and 1"),
    (["--rates", "control=high,treatment=0.1"], "cannot read 'control=high'"),
    (["--rates", "control=0.1,treatment=0.1", "--mean"],
     "has a proportion metric, so its outcomes are 0/1; drop --mean"),
    (["--rates", "control=0.1,treatment=0.1", "--units", "0"], "--units must be a whole number from 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(config, capsys, args, needle):
    create(config)
    if "--units" not in args:
        args = [*args, "--units", "100"]
    out = config.root / "outcomes.parquet"
    assert simulate(config, *args, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("lab: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_a_draft_has_no_assignment_and_the_out_file_must_be_a_table(config, capsys):
    create(config, start=False)
    assert simulate(config, "--units", "10", "--rates", "control=0.1,treatment=0.1", "--out", "o.parquet") == 2
    assert "is a draft" in capsys.readouterr().err
    with ExperimentStore.open(config.registry_path) as store:
        store.start("new_ranker")
    assert simulate(config, "--units", "10", "--rates", "control=0.1,treatment=0.1", "--out",
                    str(config.root / "o.json")) == 2
    assert "must end in .parquet or .csv" in capsys.readouterr().err


def test_parse_rates():
    assert parse_rates("control=0.10, treatment=0.11") == {"control": 0.10, "treatment": 0.11}
    with pytest.raises(ConfigError, match="appears twice"):
        parse_rates("a=0.1,a=0.2")
    with pytest.raises(ConfigError, match="cannot read ''"):
        parse_rates("")
    assert issubclass(ConfigError, LabError)
