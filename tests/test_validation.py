"""Data validation before training (``lab.monitoring.validation``): every check on small
hand-made frames, passing and failing; bad declarations naming their fix; the report on
disk; and the train step's gate on a small simulated fraud lab, which refuses a batch
with nulls in a required column, amounts in cents or a day loaded twice, and trains on a
clean one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from lab import hookimpl, steps
from lab.config import TrainConfig, load_config
from lab.errors import ConfigError, LabError
from lab.monitoring.validation import (
    CHECK_KINDS,
    Check,
    Expectations,
    ValidationFailed,
    ValidationReport,
    declared_expectations,
    validate,
    validate_training_data,
    with_max_drift,
)
from lab.plugins import get_plugin_manager
from lab.registry import Registry
from plugins.fraud.expectations import expected_fraud_rate, fraud_rate_band, per_day_band
from plugins.fraud.settings import FraudSettings
from plugins.fraud.simulator import simulate
from tests._helpers import run_lab
from tests.conftest import write_pyproject

DAY = dt.timedelta(days=1)
T0 = dt.datetime(2024, 3, 1, 12)


def frame(n_days: int = 10, per_day: int = 20) -> pl.DataFrame:
    """``per_day`` rows on each of ``n_days`` days: an id, a time, an amount in 1..100, a
    category and a 0/1 label (one in four)."""
    n = n_days * per_day
    return pl.DataFrame({
        "ID": list(range(n)),
        "AT": [T0 + (i // per_day) * DAY + dt.timedelta(minutes=i % per_day) for i in range(n)],
        "AMOUNT": [float(1 + (i * 37) % 100) for i in range(n)],
        "KIND": [("a", "b", "c")[i % 3] for i in range(n)],
        "LABEL": [int(i % 4 == 0) for i in range(n)],
    })


def names(report: ValidationReport, *, failed: bool = True) -> set[str]:
    return {c.name for c in report.checks if (not c.passed) == failed and not c.skipped}


def one(report: ValidationReport, name: str):
    (check,) = [c for c in report.checks if c.name == name]
    return check


# -- each check, on hand-made frames --------------------------------------------------------

def test_schema_checks_presence_and_type_family():
    exp = Expectations("events", schema={"ID": "int", "AT": "datetime", "AMOUNT": "number", "KIND": "str",
                                         "LABEL": "int", "GONE": "float"})
    report = validate(frame(), exp)
    assert names(report) == {"schema:GONE"} and "GONE is missing" in one(report, "schema:GONE").message
    assert names(report, failed=False) == {"schema:ID", "schema:AT", "schema:AMOUNT", "schema:KIND", "schema:LABEL"}

    wrong = validate(frame().with_columns(pl.col("ID").cast(pl.Utf8), pl.col("AMOUNT").cast(pl.Int32)),
                     Expectations("events", schema={"ID": "int", "AMOUNT": "float", "LABEL": "bool"}))
    assert names(wrong) == {"schema:ID", "schema:AMOUNT", "schema:LABEL"}
    assert one(wrong, "schema:ID").observed == "String" and one(wrong, "schema:ID").expected == "int"


def test_a_missing_declared_column_skips_the_checks_that_read_it():
    exp = Expectations("events", schema={"ID": "int", "GONE": "float"}, ranges={"GONE": (0, 1)},
                       max_null_share={"GONE": 0.0}, unique=["GONE"])
    report = validate(frame(), exp)
    assert [c.name for c in report.failed] == ["schema:GONE"]
    assert {c.name for c in report.skipped} == {"range:GONE", "nulls:GONE", "unique:GONE"}
    assert all("see schema:GONE" in c.message for c in report.skipped)


def test_ranges_are_inclusive_open_sided_and_count_nan_outside():
    data = frame()
    ok = validate(data, Expectations("events", ranges={"AMOUNT": (1.0, 100.0), "ID": (0, None),
                                                        "AT": (T0, T0 + 10 * DAY)}))
    assert ok.passed and len(ok.checks) == 3
    assert one(ok, "range:AMOUNT").observed["min"] == 1.0 and one(ok, "range:AMOUNT").observed["max"] == 100.0

    bad = data.with_columns(pl.when(pl.col("ID") == 3).then(float("nan")).when(pl.col("ID") == 4).then(250.0)
                            .otherwise(pl.col("AMOUNT")).alias("AMOUNT"))
    report = validate(bad, Expectations("events", ranges={"AMOUNT": (1.0, 100.0)}))
    check = one(report, "range:AMOUNT")
    assert not check.passed and check.observed["outside"] == 2 and 250.0 in check.observed["examples"]
    assert validate(data, Expectations("events", ranges={"AMOUNT": (None, 99.0)})).failed[0].observed["outside"] == 2
    assert validate(bad, Expectations("events", ranges={"AMOUNT": (1.0, None)})).failed[0].observed["outside"] == 1


def test_a_median_moves_with_a_unit_change():
    exp = Expectations("events", medians={"AMOUNT": (20.0, 80.0)})
    assert validate(frame(), exp).passed
    report = validate(frame().with_columns(pl.col("AMOUNT") * 100), exp)
    assert names(report) == {"median:AMOUNT"} and one(report, "median:AMOUNT").observed > 2000


def test_null_shares_count_nulls_and_nan():
    data = frame().with_columns(pl.when(pl.col("ID") < 4).then(None).otherwise(pl.col("AMOUNT")).alias("AMOUNT"),
                                pl.when(pl.col("ID") == 9).then(None).otherwise(pl.col("KIND")).alias("KIND"))
    data = data.with_columns(pl.when(pl.col("ID") == 5).then(float("nan")).otherwise(pl.col("AMOUNT")).alias("AMOUNT"))
    report = validate(data, Expectations("events", max_null_share={"AMOUNT": 0.02, "KIND": 0.01, "ID": 0.0}))
    assert names(report) == {"nulls:AMOUNT"} and one(report, "nulls:AMOUNT").observed == {"missing": 5, "share": 0.025}
    assert names(report, failed=False) == {"nulls:KIND", "nulls:ID"}


def test_total_rows():
    assert validate(frame(), Expectations("events", rows=(200, 200))).passed
    report = validate(frame(), Expectations("events", rows=(201, None)))
    assert names(report) == {"rows"} and one(report, "rows").observed == 200


def test_a_day_loaded_twice_shows_against_the_median_day_and_as_repeated_keys():
    data = frame()
    exp = Expectations("events", time_column="AT", per_day_vs_median=(0.7, 1.4), per_day_rows=(15, 25), unique=["ID"])
    assert validate(data, exp).passed
    twice = pl.concat([data, data.filter(pl.col("AT").dt.date() == dt.date(2024, 3, 4))])
    report = validate(twice, exp)
    assert names(report) == {"per_day_vs_median", "per_day_rows", "unique:ID"}
    ratio = one(report, "per_day_vs_median")
    assert ratio.observed["bad_days"] == 1 and ratio.observed["examples"] == [
        {"day": "2024-03-04", "rows": 40, "vs_median": 2.0}]
    assert one(report, "unique:ID").observed["extra_rows"] == 20


def test_a_missing_day_counts_as_zero_rows():
    gap = frame().filter(pl.col("AT").dt.date() != dt.date(2024, 3, 5))
    report = validate(gap, Expectations("events", time_column="AT", per_day_rows=(1, None)))
    check = one(report, "per_day_rows")
    assert not check.passed and check.observed["examples"] == [{"day": "2024-03-05", "rows": 0}]


def test_uniqueness_of_single_and_composite_keys():
    data = frame()
    exp = Expectations("events", unique=["ID", ("KIND", "LABEL", "AT")])
    assert validate(data, exp).passed
    report = validate(data.with_columns(pl.lit("a").alias("KIND"), pl.lit(T0).alias("AT")), exp)
    assert names(report) == {"unique:KIND+LABEL+AT"}
    assert one(report, "unique:KIND+LABEL+AT").observed["repeated_keys"] == 2  # label 0 and label 1


def test_label_rate_within_bounds_and_only_for_zero_one_labels():
    data = frame()  # one in four positive
    assert validate(data, Expectations("events", label="LABEL", label_rate=(0.2, 0.3))).passed
    low = validate(data, Expectations("events", label="LABEL", label_rate=(0.3, 0.5)))
    assert names(low) == {"label_rate:LABEL"} and one(low, "label_rate:LABEL").observed["rate"] == 0.25
    bools = data.with_columns(pl.col("LABEL").cast(pl.Boolean))
    assert validate(bools, Expectations("events", label="LABEL", label_rate=(0.2, 0.3))).passed
    other = validate(data.with_columns(pl.col("LABEL") * 2), Expectations("events", label="LABEL", label_rate=(0, 1)))
    assert "values other than 0 and 1" in one(other, "label_rate:LABEL").message


def test_drift_is_skipped_with_a_note_without_a_reference():
    report = validate(frame(), Expectations("events", max_drift=0.1), no_reference="no earlier training set")
    (check,) = report.checks
    assert check.skipped and check.passed and report.passed and check.message == "not checked: no earlier training set"


def drift_frames(n: int = 3000):
    """A reference and a current frame of the same distributions (two seeds): an id, a
    normal, an exponential and a 0/1 flag."""
    def draw(seed):
        rng = np.random.default_rng(seed)
        return pl.DataFrame({"ID": np.arange(n), "X": rng.normal(50.0, 10.0, n), "Y": rng.exponential(1.0, n),
                             "FLAG": rng.random(n) < 0.3})
    return draw(1), draw(2)


def test_drift_against_a_reference_passes_the_same_distribution_and_fails_a_shift():
    reference, current = drift_frames()
    exp = Expectations("events", max_drift=0.3, unique=["ID"])
    report = validate(current, exp, reference=reference, reference_name="the last training set")
    # a float threshold covers every numeric column but the keys
    assert report.passed and {c.name for c in report.checks} == {"unique:ID", "drift:X", "drift:Y", "drift:FLAG"}
    assert all(c.observed["size"] < 0.1 and c.observed["effect"] == "wasserstein"
               for c in report.checks if c.kind == "drift")
    shifted = validate(current.with_columns(pl.col("X") + 5.0), exp, reference=reference,
                       reference_name="the last training set")  # half a standard deviation
    check = one(shifted, "drift:X")
    assert names(shifted) == {"drift:X"} and 0.4 < check.observed["size"] < 0.6 and check.expected == 0.3
    assert "against the last training set" in check.message
    # a mapping names its columns and thresholds; a column the reference lacks is skipped with a note
    mapped = validate(current.with_columns(pl.col("X") + 5.0, pl.lit(1.0).alias("NEW")),
                      Expectations("events", max_drift={"X": 0.6, "NEW": 0.1}), reference=reference)
    assert mapped.passed and one(mapped, "drift:X").observed["size"] > 0.4
    assert one(mapped, "drift:NEW").skipped and "has no column NEW" in one(mapped, "drift:NEW").message


def test_the_settings_drift_threshold_replaces_the_declared_ones():
    assert with_max_drift(Expectations("e", max_drift={"X": 0.3, "Y": 0.2}), 0.9).max_drift == {"X": 0.9, "Y": 0.9}
    assert with_max_drift(Expectations("e", max_drift=0.3), 0.9).max_drift == 0.9
    assert with_max_drift(Expectations("e", max_drift=0.3), 0.0).max_drift == 0.3
    assert with_max_drift(Expectations("e", rows=(1, None)), 0.9).max_drift is None


def test_skipped_kinds_are_left_out():
    exp = Expectations("events", rows=(1000, None), unique=["ID"], max_null_share={"ID": 0.0})
    report = validate(frame(), exp, skip=["rows"])
    assert {c.kind for c in report.checks} == {"unique", "nulls"} and report.passed
    with pytest.raises(ConfigError, match="unknown check kind"):
        validate(frame(), exp, skip=["row"])


def test_duckdb_relations_arrow_tables_and_lazy_frames_are_read():
    data = frame()
    exp = Expectations("events", schema={"ID": "int", "AT": "datetime"}, unique=["ID"], rows=(200, 200))
    con = duckdb.connect()
    con.register("events", data.to_arrow())
    for given in (con.sql("SELECT * FROM events"), data.to_arrow(), data.lazy()):
        assert validate(given, exp).passed
    with pytest.raises(LabError, match="cannot validate a list"):
        validate([1, 2], exp)


# -- declarations that cannot be checked -----------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(ranges={"AMOUNT": (5, 1)}), r"lo 5 is above hi 1; swap them"),
    (dict(label_rate=(0.5, 0.1)), r"lo 0.5 is above hi 0.1"),
    (dict(per_day_vs_median=(2.0, 1.0)), r"swap them"),
    (dict(ranges={"AMOUNT": (None, None)}), r"give at least one bound"),
    (dict(ranges={"AMOUNT": 5}), r"must be a pair \(lo, hi\)"),
    (dict(max_null_share={"AMOUNT": 1.5}), r"share between 0 and 1"),
    (dict(label_rate=(0.0, 2.0)), r"between 0 and 1"),
    (dict(schema={"AMOUNT": "decimal"}), r"use one of int, float"),
    (dict(schema={"ID": "int"}, ranges={"AMOUNT": (0, 1)}), r"AMOUNT that its schema does not declare; add each"),
    (dict(max_drift=0), r"a drift score above 0"),
    (dict(unique=[("ID", 3)]), r"each a column name or a tuple of names"),
])
def test_a_bad_declaration_names_its_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Expectations("events", **kwargs)


def test_an_unknown_column_names_the_fix():
    with pytest.raises(LabError, match=r"name column\(s\) AMOUNTS that the data does not have .*fix the name"):
        validate(frame(), Expectations("events", ranges={"AMOUNTS": (0, 1)}))
    with pytest.raises(LabError, match="label_rate needs the label column; set label="):
        validate(frame(), Expectations("events", label_rate=(0, 1)))
    with pytest.raises(LabError, match="per-day row bounds need time_column="):
        validate(frame(), Expectations("events", per_day_rows=(1, None)))
    with pytest.raises(LabError, match="not a datetime or date column"):
        validate(frame(), Expectations("events", time_column="ID", per_day_rows=(1, None)))


# -- the report ----------------------------------------------------------------------------

def test_the_report_is_written_as_json_and_html_with_its_digest(tmp_path):
    bad = frame().with_columns(pl.lit(None, pl.Float64).alias("AMOUNT"))
    report = validate(bad, Expectations("events", max_null_share={"AMOUNT": 0.0}, unique=["ID"]))
    path = tmp_path / "out" / "validation.json"
    digest = report.write(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    data = json.loads(path.read_text())
    assert data["passed"] is False and data["failed"] == ["events nulls:AMOUNT"]
    assert {c["name"] for c in data["checks"]} == {"nulls:AMOUNT", "unique:ID"}
    assert set(data["checks"][0]) == {"name", "kind", "target", "passed", "observed", "expected", "message",
                                      "column", "skipped"}
    page = path.with_suffix(".html").read_text()
    assert "failed 1 check(s)" in page and "nulls:AMOUNT" in page and "<tr class=fail>" in page
    message = report.failure_message("data/x.json")
    assert "events nulls:AMOUNT (200 of 200 missing" in message and "Report: data/x.json" in message


def test_the_validation_settings_are_read_and_checked(tmp_path):
    write_pyproject(tmp_path, '[tool.lab.validation]\nenabled = false\nskip = ["drift"]\nmax_drift = 0.5\n')
    settings = load_config(tmp_path).validation
    assert (settings.enabled, settings.skip, settings.max_drift, settings.reference_rows) == (False, ("drift",), 0.5,
                                                                                               20000)
    write_pyproject(tmp_path, "[tool.lab.validation]\nmax_drift = -1\n")
    with pytest.raises(ConfigError, match=r"\[tool.lab.validation\] max_drift and reference_rows must be 0 or more"):
        load_config(tmp_path)
    assert set(CHECK_KINDS) >= {"schema", "range", "nulls", "rows", "per_day_vs_median", "unique", "label_rate",
                                "drift"}


# -- a model's training data ----------------------------------------------------------------

class _Spec:
    name, source, time_column, label = "m", "events", "AT", "LABEL"


class _View:
    name, feature_names = "amounts", ["AMOUNT"]


def test_training_data_targets_the_source_and_the_views_the_model_reads():
    data = frame()
    declared = [Expectations("events", unique=["ID"], label_rate=(0.2, 0.3), per_day_vs_median=(0.5, 1.5)),
                Expectations("amounts", ranges={"AMOUNT": (0.0, 10.0)}),
                Expectations("other_view", rows=(10**9, None))]
    report = validate_training_data(_Spec(), [_View()], data, data, declared, known_targets=["other_view"])
    # time column and label come from the spec; the view sees only its columns (+ time, label)
    assert names(report) == {"range:AMOUNT"} and report.meta["not_read"] == ["other_view"]
    assert report.meta["targets"]["amounts"]["columns"] == ["AT", "LABEL", "AMOUNT"]
    with pytest.raises(LabError, match="no source or feature view has that name; targets are amounts, events"):
        validate_training_data(_Spec(), [_View()], data, data, [Expectations("evnets", rows=(1, None))])
    with pytest.raises(LabError, match=r"view 'amounts' name column\(s\) ID, which the view does not make"):
        validate_training_data(_Spec(), [_View()], data, data, [Expectations("amounts", unique=["ID"])])


def test_a_plugin_declares_expectations_through_the_hook(tmp_path):
    class Declares:
        @hookimpl
        def lab_expectations(self, config):
            return [Expectations("events", rows=(1, None))]

    write_pyproject(tmp_path)
    config = load_config(tmp_path)
    pm = get_plugin_manager(config)
    pm.register(Declares(), name="declares")
    assert [e.target for e in declared_expectations(pm, config)] == ["events"]

    class Wrong:
        @hookimpl
        def lab_expectations(self, config):
            return [{"target": "events"}]

    pm.register(Wrong(), name="wrong")
    with pytest.raises(LabError, match="return a list of lab.monitoring.validation.Expectations"):
        declared_expectations(pm, config)


# -- the fraud lab's declarations -----------------------------------------------------------

def test_the_fraud_rate_band_follows_the_simulators_world():
    """The expected rate is within a few percent of the handbook's published steady state
    (0.84 % with 5,000 customers and 10,000 terminals, 2018-07-25 on), and ramps up."""
    world = FraudSettings()
    assert 0.0085 < expected_fraud_rate(world, 115) < 0.0095
    assert expected_fraud_rate(world, 0) < expected_fraud_rate(world, 10) < expected_fraud_rate(world, 40)
    lo, hi = fraud_rate_band(world, TrainConfig(train_start="2018-07-25"))
    assert lo < 0.0084 < hi
    assert per_day_band(world) == (0.7, 1.3) and per_day_band(FraudSettings(n_customers=40))[1] < 2


# -- the gate of the train step, on a small simulated fraud lab ------------------------------

PROBE = '''
import json
from pathlib import Path
from lab import hookimpl

@hookimpl
def lab_on_event(event):
    with open(Path(__file__).parent / "events.log", "a") as fh:
        fh.write(json.dumps({"name": event.name, **event.payload}) + "\\n")
'''
WINDOW = dict(train_start="2018-04-15", delta_train=7, delta_delay=7, delta_test=7)
LAB = f"""
model_name = "fraud"
plugins = ["probe"]

[tool.lab.fraud]
exact = false
n_customers = 250
n_terminals = 500
nb_days = 40

[tool.lab.train]
train_start = "{WINDOW['train_start']}"
"""


@pytest.fixture(scope="module")
def fraud_lab(tmp_path_factory) -> Path:
    """A fraud lab (250 customers, 500 terminals, 40 days from 2018-04-01, seed 3) with an
    event probe; tests write their batch to ``tx.parquet`` and build the training set."""
    root = tmp_path_factory.mktemp("validation_lab")
    write_pyproject(root, LAB)
    (root / "probe.py").write_text(PROBE)
    simulate(n_customers=250, n_terminals=500, nb_days=40, seed=3).write_parquet(root / "clean.parquet")
    with Registry.open(load_config(root).registry_path) as reg:  # the pipeline run the steps belong to
        (root / "run_id").write_text(reg.start_run(kind="pipeline"))
    return root


def run_dir(root: Path) -> Path:
    return root / "runs" / (root / "run_id").read_text()


def build(root: Path, batch: pl.DataFrame) -> None:
    """Load ``batch`` as the source and build the training set (the features step)."""
    batch.write_parquet(root / "tx.parquet")
    steps.features(root, run_dir(root), source_path="tx.parquet", **WINDOW)


def train(root: Path) -> dict:
    return steps.train(root, run_dir(root), n_trials=1, max_epochs=1, seed=0, **WINDOW)


def train_runs(root: Path) -> int:
    with Registry.open(load_config(root).registry_path) as reg:
        return len(reg.list_runs(kind="train"))


def in_window(col: str = "TX_DATETIME") -> pl.Expr:
    return pl.col(col).dt.date().is_between(dt.date(2018, 4, 15), dt.date(2018, 5, 5))


def nulls_in_amount(clean: pl.DataFrame) -> pl.DataFrame:
    return clean.with_columns(pl.when(in_window() & (pl.col("TRANSACTION_ID") % 50 == 0)).then(None)
                              .otherwise(pl.col("TX_AMOUNT")).alias("TX_AMOUNT"))


def amounts_in_cents(clean: pl.DataFrame) -> pl.DataFrame:
    return clean.with_columns(pl.col("TX_AMOUNT") * 100)


def a_day_twice(clean: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([clean, clean.filter(pl.col("TX_DATETIME").dt.date() == dt.date(2018, 4, 20))]).sort(
        "TX_DATETIME")


def test_a_clean_batch_passes_the_gate_and_trains(fraud_lab):
    build(fraud_lab, pl.read_parquet(fraud_lab / "clean.parquet"))
    info = train(fraud_lab)
    validation = info["validation"]
    assert validation["path"] == "data/trainset.validation.json"
    report = json.loads((fraud_lab / validation["path"]).read_text())
    assert report["passed"] is True and report["failed"] == []
    assert {c["target"] for c in report["checks"]} == {"transactions", "customer_spending", "terminal_risk"}
    assert {"range:TX_AMOUNT", "median:TX_AMOUNT", "unique:TRANSACTION_ID", "per_day_vs_median",
            "label_rate:TX_FRAUD", "nulls:TX_AMOUNT"} <= {c["name"] for c in report["checks"]}
    digest = hashlib.sha256((fraud_lab / validation["path"]).read_bytes()).hexdigest()
    with Registry.open(load_config(fraud_lab).registry_path) as reg:
        run = reg.get_run(info["run_id"])
        # lineage: the report's digest is a parameter of the run; the run's data is the training set only
        assert run["params"]["validation_report_digest"] == digest == validation["digest"]
        assert run["artifacts"]["validation_report"] == validation["path"]
        assert run["data"] == {"training_set": info["trainset_digest"]}
        # one data-set record per digest: the kept sample is not recorded again
        assert len([d for d in reg.list_datasets() if d["digest"] == info["trainset_digest"]]) == 1
    kept = fraud_lab / "data" / "validation" / f"{info['trainset_digest'][:16]}.parquet"
    assert pl.read_parquet_metadata(kept)["lab.dataset_digest"] == info["trainset_digest"]
    assert (fraud_lab / "data" / "candidate").exists()


@pytest.mark.parametrize("corrupt, expected", [
    (nulls_in_amount, {"transactions nulls:TX_AMOUNT"}),
    (amounts_in_cents, {"transactions range:TX_AMOUNT", "transactions median:TX_AMOUNT"}),
    (a_day_twice, {"transactions unique:TRANSACTION_ID", "transactions per_day_vs_median"}),
], ids=["nulls", "cents", "day_twice"])
def test_a_corrupted_batch_refuses_retraining(fraud_lab, corrupt, expected):
    build(fraud_lab, corrupt(pl.read_parquet(fraud_lab / "clean.parquet")))
    runs_before = train_runs(fraud_lab)
    with pytest.raises(ValidationFailed) as caught:
        train(fraud_lab)
    failed = set(caught.value.report.failed_names)
    assert expected <= failed
    message = str(caught.value)
    assert message.startswith("model 'fraud' was not trained: the data failed")
    assert all(name in message for name in expected) and "Report: data/trainset.validation.json" in message
    # nothing was trained: no new train run; the report on disk names the failures
    assert train_runs(fraud_lab) == runs_before
    report = json.loads((fraud_lab / "data" / "trainset.validation.json").read_text())
    assert report["passed"] is False and expected <= set(report["failed"])
    (event,) = [json.loads(line) for line in (fraud_lab / "events.log").read_text().splitlines()
                if json.loads(line)["name"] == "data.validation_failed"][-1:]
    assert expected <= set(event["checks"]) and event["model"] == "fraud"


def test_lab_data_validate_reports_and_fails_with_exit_3(fraud_lab, capsys):
    clean = pl.read_parquet(fraud_lab / "clean.parquet")
    build(fraud_lab, clean)
    capsys.readouterr()
    assert run_lab(fraud_lab, "data", "validate") == 0
    out = capsys.readouterr().out
    assert "passed" in out and "range:TX_AMOUNT" in out and "report: data/trainset.validation.json" in out
    amounts_in_cents(clean).write_parquet(fraud_lab / "cents.parquet")
    assert run_lab(fraud_lab, "data", "validate", "--target", "transactions", "--file",
                   str(fraud_lab / "cents.parquet"), "--out", "data/cents.json", "--json") == 3
    captured = capsys.readouterr()
    report = json.loads(captured.out[:captured.out.rindex("}") + 1])
    assert {c["target"] for c in report["checks"]} == {"transactions"}
    assert "transactions range:TX_AMOUNT" in report["failed"] and "transactions range:TX_AMOUNT" in captured.err
    assert (fraud_lab / "data" / "cents.html").exists()
    assert run_lab(fraud_lab, "data", "validate", "--target", "nowhere") == 2


def test_the_next_training_set_is_checked_for_drift_against_the_last_one(fraud_lab):
    """A passed set becomes the reference; the next window's is compared with it (and
    passes); amounts in cents in that window drift far past the threshold."""
    clean = pl.read_parquet(fraud_lab / "clean.parquet")
    first = gate(fraud_lab, clean, WINDOW)
    later = {**WINDOW, "train_start": "2018-04-18"}
    second = gate(fraud_lab, clean, later)
    assert second.passed and not [c for c in second.skipped if c.kind == "drift"]
    assert second.meta["reference"].startswith("the last training set (fraud 2018-04-15..2018-05-05")
    assert first.meta["training_set"] != second.meta["training_set"]
    assert all(c.observed["size"] < 0.3 for c in second.checks if c.kind == "drift")
    with pytest.raises(ValidationFailed) as caught:
        gate(fraud_lab, amounts_in_cents(clean), later)
    drift = caught.value.report.check("transactions", "drift:TX_AMOUNT")
    assert not drift.passed and drift.observed["size"] > 10
    assert "fraud 2018-04-18..2018-05-08" in drift.message  # against the second set, the last that passed


def gate(root: Path, batch: pl.DataFrame, window: dict) -> ValidationReport:
    """Build the training set of ``window`` from ``batch`` and run the train step's gate on it."""
    from lab.pipeline.context import StageContext
    from lab.steps._common import spec_of
    from lab.steps._common import window as split_window
    from lab.steps.training import validate_trainset

    batch.write_parquet(root / "tx.parquet")
    steps.features(root, run_dir(root), source_path="tx.parquet", **window)
    with StageContext.open(root, run_dir(root)) as ctx:
        spec = spec_of(ctx, None)
        digest = ctx.dataset_digest("data/trainset.parquet")
        validate_trainset(ctx, spec, pl.read_parquet(root / "data" / "trainset.parquet"),
                          split_window(**window), digest)
    data = json.loads((root / "data" / "trainset.validation.json").read_text())
    checks = [Check(**c) for c in data["checks"]]
    return ValidationReport(checks, data["meta"])
