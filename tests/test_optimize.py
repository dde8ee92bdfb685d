"""lab optimize: an int8 quantization and a distilled student of a registered model, each
gated on the evaluation set against its parent, measured, and registered as a version
derived from it only when the gate passes. On the tiny fraud lab, with a real training
set file, registry, flavor and fresh measuring processes."""

from __future__ import annotations

import datetime as dt
import json
import textwrap

import numpy as np
import polars as pl
import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.pipeline.context import StageContext
from lab.plugins import get_plugin_manager, model_flavor, model_spec
from lab.registry import Registry
from lab.steps._common import split, window
from lab.steps.evaluation import score_metrics
from lab.steps.optimize import cost_per_1000, optimize_version, quality_gate
from plugins.fraud.features import FEATURE_COLUMNS
from plugins.fraud.testing import PYPROJECT, _training_rows, build_tiny_lab

TRAIN = '\n[tool.lab.train]\ntrain_start = "2018-07-01"\nseed = 5\n'
QUICK = "rounds = 1\none_row_calls = 20\nbatch_calls = 1\nbatch_rows = 200\nbootstrap_samples = 200\n"


def configure(root, optimize: str) -> None:
    """The lab's pyproject.toml: the tiny lab's, a training window and ``optimize`` as [tool.lab.optimize]."""
    (root / "pyproject.toml").write_text(PYPROJECT + TRAIN + "\n[tool.lab.optimize]\n" + textwrap.dedent(optimize))


def write_trainset(root) -> None:
    """21 days of 60 transactions like the tiny model's training rows, one card each (so the
    fraud protocol drops no test card): 7 training days, 7 of delay, 7 of test."""
    days, per_day = 21, 60
    x, y = _training_rows(list(FEATURE_COLUMNS), days * per_day, 11)
    i = np.arange(days * per_day)
    start = dt.datetime(2018, 7, 1)
    frame = pl.DataFrame({
        "TX_DATETIME": [start + dt.timedelta(days=int(k // per_day), minutes=int(k % per_day)) for k in i],
        "TX_TIME_DAYS": i // per_day, "CUSTOMER_ID": i,
        **{name: x[:, j] for j, name in enumerate(FEATURE_COLUMNS)}, "TX_FRAUD": y.astype(np.int64)})
    with StageContext(root=root, run_dir=root / "runs" / "setup") as ctx:
        ctx.write_dataset("data/trainset.parquet", frame, digest="trainset-of-the-optimize-test")


def versions(root) -> list:
    with Registry.open(root / "registry.db") as registry:
        return registry.list_model_versions("fraud")


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """The tiny lab's v1 optimized twice: with no drop allowed and a deliberately weak
    student (4 units, one epoch at a tiny learning rate), then with a loose tolerance
    and the default student, measured in full (RSS included)."""
    tiny = build_tiny_lab(tmp_path_factory.mktemp("optimize") / "lab")
    root = tiny.root
    write_trainset(root)
    configure(root, "max_quality_drop = 0.0\ndistill_epochs = 1\nstudent_params = {hidden_sizes = [4], lr = 1e-5}\n"
              "measure_load_rss = false\n" + QUICK)
    with StageContext(root=root, run_dir=root / "runs" / "strict") as ctx:
        strict = optimize_version(ctx, None, 1)
    after_strict = versions(root)
    configure(root, "max_quality_drop = 0.5\nrounds = 2\none_row_calls = 50\nbatch_calls = 2\nbatch_rows = 200\n"
              "bootstrap_samples = 200\n")
    with StageContext(root=root, run_dir=root / "runs" / "loose") as ctx:
        loose = optimize_version(ctx, None, 1)
    return {"root": root, "tiny": tiny, "strict": strict, "after_strict": after_strict, "loose": loose}


def by_name(report: dict) -> dict:
    return {v["name"]: v for v in report["variants"]}


def test_the_gate_refuses_a_worse_variant_at_no_tolerance_and_registers_only_what_passed(optimized):
    strict = by_name(optimized["strict"])
    student = strict["distilled"]
    assert student["gate"]["drop"] > 0.01 and not student["gate"]["passed"] and student["status"] == "refused"
    assert "version" not in student
    for variant in strict.values():  # whatever the quantization did, the rule is the drop against 0
        assert variant["status"] == ("registered" if variant["gate"]["drop"] <= 0 else "refused")
    registered = [v for v in optimized["after_strict"] if v.version != 1]
    assert sorted(v.lineage["method"] for v in registered) == sorted(
        v["method"] for v in strict.values() if v["status"] == "registered")


def test_the_gate_judges_the_metrics_of_the_evaluation_set(optimized):
    root, report = optimized["root"], optimized["loose"]
    config = load_config(root)
    pm = get_plugin_manager(config)
    spec = model_spec(pm, config)
    flavor = model_flavor(pm, "lightning_mlp")
    train = config.train
    _, test = split(spec, pl.read_parquet(root / "data/trainset.parquet"),
                    window(train.train_start, train.delta_train, train.delta_delay, train.delta_test))
    assert report["eval_rows"] == test.height == 420
    parent = score_metrics(spec, flavor.load(root / versions(root)[0].artifact_path), test)
    assert report["parent"]["metrics"] == pytest.approx(parent)
    for variant in report["variants"]:
        mine = score_metrics(spec, flavor.load(root / variant["artifact"]), test)
        assert variant["metrics"] == pytest.approx(mine)
        gate = variant["gate"]
        assert gate["drop"] == pytest.approx(parent["average_precision"] - mine["average_precision"])
        assert gate["drop_interval"]["low"] <= gate["drop"] <= gate["drop_interval"]["high"]
        assert gate["passed"] and variant["status"] == "registered"


def test_passed_variants_are_versions_derived_from_their_parent(optimized):
    root, report = optimized["root"], optimized["loose"]
    with Registry.open(root / "registry.db") as registry:
        for variant in report["variants"]:
            version = registry.get_model_version("fraud", variant["version"])
            lineage = version.lineage
            assert lineage["derived_from"]["model"] == "fraud" and lineage["derived_from"]["version"] == 1
            assert lineage["method"] == variant["method"] and lineage["gate"]["passed"]
            assert version.metrics == pytest.approx(variant["metrics"])
            if variant["registered_before"]:  # passed the strict run already: the same bytes, that version
                assert lineage["gate"]["max_quality_drop"] == 0.0
                continue
            assert lineage["gate"] == variant["gate"]
            assert lineage["measurements"]["one_row_p50_us"] == variant["measurements"]["one_row_p50_us"]
            run = registry.get_run(version.run_id)
            assert run["kind"] == "optimize" and run["params"]["parent_version"] == 1
            assert version.run_id == report["run_id"]
            assert run["data"]["training_set"] == "trainset-of-the-optimize-test"
        assert registry.get_alias("fraud", "champion").version == 1  # no alias moves
    assert {v["method"] for v in report["variants"]} == {"int8_dynamic_quantization", "distillation"}
    assert not by_name(report)["distilled"]["registered_before"]


def test_registered_versions_load_and_score_through_the_flavor(optimized):
    root, report = optimized["root"], optimized["loose"]
    flavor = model_flavor(get_plugin_manager(load_config(root)), "lightning_mlp")
    parent_version, *_ = versions(root)
    parent = flavor.load(root / parent_version.artifact_path)
    registered = {v.version: v for v in versions(root)}
    x = _training_rows(list(FEATURE_COLUMNS), 300, 3)[0]
    quantized, student = by_name(report)["quantized"], by_name(report)["distilled"]

    q_path = root / registered[quantized["version"]].artifact_path
    q = flavor.load(q_path)
    assert type(q).__name__ == "QuantizedMLP" and q.invariant_batch_rows == 1
    assert json.loads((q_path / "model.json").read_text())["quantization"]["dtype"] == "qint8"
    scores = q.predict(x)
    assert scores.shape == (300,) and ((scores >= 0) & (scores <= 1)).all()
    assert np.abs(scores - parent.predict(x)).max() < 0.05  # int8 weights: close to the parent, not equal
    assert np.array_equal(scores, flavor.load(root / quantized["artifact"]).predict(x))

    s_path = root / registered[student["version"]].artifact_path
    s = flavor.load(s_path)
    assert s.numpy_forward is not None  # served like any version: numpy for small batches
    widths, parent_widths = s.params["hidden_sizes"], parent.params["hidden_sizes"]
    assert len(widths) <= len(parent_widths) and max(widths) < max(parent_widths)
    assert student["measurements"]["artifact_bytes"] < report["parent"]["measurements"]["artifact_bytes"]
    assert np.array_equal(s.predict(x[:10]), flavor.load(root / student["artifact"]).predict(x[:10]))


def test_the_embedded_predictor_serves_the_derived_versions(optimized):
    import lab

    tiny, report = optimized["tiny"], optimized["loose"]
    requests = [tiny.transaction(i) for i in range(6)]
    with lab.load_model("fraud@1", root=tiny.root, ledger=False) as parent:
        expected = [r["score"] for r in parent.predict_many(requests)]
    for variant in report["variants"]:
        with lab.load_model(f"fraud@{variant['version']}", root=tiny.root, ledger=False) as predictor:
            answers = predictor.predict_many(requests)
        assert [a["model_version"] for a in answers] == [variant["version"]] * 6
        scores = np.array([a["score"] for a in answers])
        assert ((scores >= 0) & (scores <= 1)).all()
        if variant["name"] == "quantized":
            assert np.abs(scores - expected).max() < 0.05


def test_latency_memory_and_cost_are_measured_beside_the_parent(optimized):
    report = optimized["loose"]
    price = report["cost_model"]["price_per_cpu_hour"]
    models = {"parent": report["parent"]["measurements"],
              **{v["name"]: v["measurements"] for v in report["variants"]}}
    for m in models.values():
        assert m["one_row_p50_us"] > 0 and m["batch_p50_ms"] > 0 and m["batch_rows"] == 200 and m["threads"] == 1
        assert m["cost_per_1000_one_row"] == pytest.approx(cost_per_1000(m["cpu_us_per_prediction_one_row"] / 1e6,
                                                                          price))
        assert m["artifact_bytes"] > 0 and "rss_load_bytes" in m
    # The float parent scores a row in numpy, without torch; the int8 model needs torch loaded.
    assert models["quantized"]["rss_load_bytes"] > 50 * 2**20 > models["parent"]["rss_load_bytes"]
    assert by_name(report)["quantized"]["ratios"]["rss_load_bytes"] > 10


def test_the_cli_reruns_without_registering_the_same_models_twice(optimized, capsys):
    root = optimized["root"]
    configure(root, "max_quality_drop = 0.5\nmeasure_load_rss = false\n" + QUICK)
    before = [v.version for v in versions(root)]
    assert main(["--root", str(root), "optimize", "fraud", "1", "--method", "quantize", "--method", "distill"]) == 0
    out = capsys.readouterr().out
    assert "quantized" in out and "distilled" in out and "cost model" in out
    assert [v.version for v in versions(root)] == before  # the same bytes are the same versions
    report = json.loads((root / "data/optimized.json").read_text())
    assert {v["version"] for v in report["variants"]} == {v["version"] for v in optimized["loose"]["variants"]}
    assert main(["--root", str(root), "optimize", "fraud", "1", "--method", "distill",
                 "--max-quality-drop", "-1"]) == 2
    assert "max_quality_drop must be 0 or more" in capsys.readouterr().err


def test_a_flavor_without_the_optional_methods_is_refused_naming_them(boring_model):
    root = boring_model.root
    with StageContext(root=root, run_dir=root / "runs" / "optimize") as ctx:
        with pytest.raises(LabError, match="implements none of quantize, distill.*ModelFlavor.quantize"):
            optimize_version(ctx, "boring", 1)


def test_bad_settings_are_config_errors_naming_the_key(tmp_path):
    for body, message in (('methods = ["prune"]', "methods must be a non-empty list"),
                          ("max_quality_drop = -0.1", "max_quality_drop must be 0 or more"),
                          ("student_params = 3", "student_params must be a table"),
                          ("rounds = 0", "rounds = 0: each must be 1 or more")):
        (tmp_path / "pyproject.toml").write_text(f"[tool.lab.optimize]\n{body}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path)


def test_the_gate_rule_for_either_direction_and_on_the_interval():
    higher = quality_gate("average_precision", 0.80, 0.79, 0.005)
    assert higher["drop"] == pytest.approx(0.01) and not higher["passed"]
    assert quality_gate("average_precision", 0.80, 0.79, 0.01)["passed"]
    lower = quality_gate("rmse", 2.0, 1.9, 0.0)  # an error that fell is no drop
    assert lower["drop"] == pytest.approx(-0.1) and lower["passed"]
    interval = {"low": -0.03, "high": 0.01, "confidence": 0.95, "samples": 500, "method": "paired bootstrap"}
    point = quality_gate("roc_auc", 0.9, 0.895, 0.01, interval=interval)
    assert point["passed"] and point["drop_interval"]["high"] == pytest.approx(0.03)
    judged = quality_gate("roc_auc", 0.9, 0.895, 0.01, interval=interval, require_ci=True)
    assert not judged["passed"] and judged["judged_on"].startswith("upper bound")


def test_a_regression_model_quantizes_and_distills_in_label_units(tmp_path):
    from plugins.lightning_tabular.flavor import LightningMLP

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = (50 + 20 * x[:, 0] - 10 * x[:, 1] + rng.normal(size=600)).astype(np.float32)
    flavor = LightningMLP()
    fit = flavor.fit(x[:450], y[:450], x[450:], y[450:], list("abcd"), {"hidden_sizes": [16], "lr": 1e-2},
                     seed=0, workdir=tmp_path / "fit", max_epochs=2, task="regression")
    teacher = fit.model
    flavor.save(flavor.quantize(teacher), tmp_path / "q")
    q = flavor.load(tmp_path / "q")
    assert q.task == "regression" and np.abs(q.predict(x[450:]) - teacher.predict(x[450:])).max() < 1.0
    soft = teacher.predict(x)
    student = flavor.distill(teacher, x[:450], soft[:450], x[450:], soft[450:], None, seed=0,
                             workdir=tmp_path / "distill", max_epochs=30)
    assert student.params["hidden_sizes"] == [8]
    # In label units: the student tracks the teacher to within a fraction of the labels' spread (about 22).
    assert student.metrics["val_teacher_mae"] == pytest.approx(
        float(np.mean(np.abs(student.model.predict(x[450:]) - soft[450:]))), rel=1e-5)
    assert student.metrics["val_teacher_mae"] < 5.0
    again = flavor.distill(teacher, x[:450], soft[:450], x[450:], soft[450:], None, seed=0,
                           workdir=tmp_path / "again", max_epochs=30)
    assert np.array_equal(again.model.predict(x), student.model.predict(x))  # seeded: the same student
