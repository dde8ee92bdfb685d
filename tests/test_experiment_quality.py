"""Online quality per variant: a real ledger file joined with labels that arrive later."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from lab.errors import LabError
from lab.experiments import Experiment, Variant
from lab.experiments.quality import variant_quality
from lab.serving.ledger import Ledger, PredictionRecord
from lab.training.metrics import average_precision, roc_auc

DAY0 = dt.datetime(2018, 9, 1)
LABEL_DELAY = dt.timedelta(days=7)
COLUMNS = {"id_column": "EVENT_ID", "label_column": "LABEL", "time_column": "EVENT_TIME", "label_delay": LABEL_DELAY}


def quality_of(ledger_path, experiment, labels, **kwargs):
    return variant_quality(ledger_path, experiment, labels, **{**COLUMNS, **kwargs})


@pytest.fixture
def ledger_path(tmp_path):
    """600 predictions of experiment "model_ab", events 0-599: even ids routed to
    control, odd ones to treatment, whose model scores better. Ids 600-649 were routed by
    the "shadow" variant. Event 10 was scored twice (the second score counts)."""
    rng = np.random.default_rng(11)
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        for i in range(600):
            variant = "control" if i % 2 == 0 else "treatment"
            positive = i % 9 == 0
            signal = 1.5 if variant == "treatment" else 0.5
            score = 1 / (1 + np.exp(-(signal * positive + rng.normal(0, 1))))
            version = 1 if variant == "control" else 2
            ledger.append(PredictionRecord(i, "scorer", version, {}, {}, float(score), 5.0,
                                           experiment="model_ab", variant=variant))
        for i in range(600, 650):
            ledger.append(PredictionRecord(i, "scorer", 3, {}, {}, 0.5, 5.0, experiment="model_ab", variant="shadow"))
        ledger.append(PredictionRecord(10, "scorer", 1, {}, {}, 0.999, 5.0, experiment="model_ab", variant="control"))
        ledger.append(PredictionRecord(None, "scorer", 1, {}, {}, 0.3, 5.0, experiment="model_ab", variant="control"))
        ledger.append(PredictionRecord(5, "scorer", 1, {}, {}, 0.3, 5.0, experiment="other", variant="control"))
    return path


@pytest.fixture
def labels():
    """Labels for events 0-579 (580-599 are not labelled yet; nor is the shadow's)."""
    ids = list(range(580))
    return pl.DataFrame({"EVENT_ID": ids, "LABEL": [int(i % 9 == 0) for i in ids],
                         "EVENT_TIME": [DAY0 + dt.timedelta(hours=i) for i in ids]})


def joined(ledger_path, labels, variant, *, as_of=None):
    """The test's own join: latest score per event of the variant, with its label."""
    import sqlite3

    with sqlite3.connect(ledger_path) as conn:
        rows = conn.execute("SELECT event_id, score FROM predictions WHERE experiment = 'model_ab' "
                            "AND variant = ? AND event_id IS NOT NULL ORDER BY id", [variant]).fetchall()
    latest = pl.DataFrame(rows, schema=["EVENT_ID", "score"], orient="row").unique(
        "EVENT_ID", keep="last")
    if as_of is not None:
        labels = labels.filter(pl.col("EVENT_TIME") + LABEL_DELAY <= as_of)
    return latest.join(labels, on="EVENT_ID")


def test_per_variant_auc_and_ap_equal_the_metrics_on_the_joined_rows(ledger_path, labels):
    quality = quality_of(ledger_path, "model_ab", labels)
    assert set(quality) == {"control", "treatment", "shadow"}
    for variant in ("control", "treatment"):
        rows = joined(ledger_path, labels, variant)
        q = quality[variant]
        assert q["n_labelled"] == rows.height == 290
        assert q["roc_auc"] == pytest.approx(roc_auc(rows["LABEL"], rows["score"]), abs=1e-12)
        assert q["average_precision"] == pytest.approx(average_precision(rows["LABEL"], rows["score"]), abs=1e-12)
        assert q["roc_auc"] == pytest.approx(roc_auc_score(rows["LABEL"], rows["score"]), abs=1e-12)
        assert q["average_precision"] == pytest.approx(average_precision_score(rows["LABEL"], rows["score"]))
    assert quality["control"]["n_predictions"] == 302  # 300, the rescore of event 10, one without an id
    assert quality["treatment"]["roc_auc"] > quality["control"]["roc_auc"]
    control_rows = joined(ledger_path, labels, "control")
    assert control_rows.filter(pl.col("EVENT_ID") == 10)["score"].item() == 0.999


def test_a_variant_without_labels_gets_none_and_a_reason(ledger_path, labels):
    experiment = Experiment("model_ab", (Variant("control", 0.5), Variant("treatment", 0.4), Variant("idle", 0.1)))
    quality = quality_of(ledger_path, experiment, labels)
    shadow = quality["shadow"]
    assert shadow["n_predictions"] == 50 and shadow["n_labelled"] == 0
    assert shadow["roc_auc"] is None and shadow["average_precision"] is None
    assert "no labelled predictions" in shadow["note"]
    assert quality["idle"]["n_predictions"] == 0 and "no predictions" in quality["idle"]["note"]
    assert quality["control"]["note"] == ""


def test_one_class_only_gives_none_and_says_so(ledger_path, labels):
    no_positive = labels.with_columns(LABEL=pl.lit(0))
    q = quality_of(ledger_path, "model_ab", no_positive)["treatment"]
    assert q["n_labelled"] == 290 and q["roc_auc"] is None and "both classes" in q["note"]


def test_labels_as_of_leaves_out_labels_not_known_yet(ledger_path, labels):
    # event i happened DAY0 + i hours; its label is known 7 days later
    as_of = DAY0 + LABEL_DELAY + dt.timedelta(hours=199)
    quality = quality_of(ledger_path, "model_ab", labels, labels_as_of=as_of)
    for variant in ("control", "treatment"):
        rows = joined(ledger_path, labels, variant, as_of=as_of)
        assert quality[variant]["n_labelled"] == rows.height == 100  # events 0-199
        assert quality[variant]["n_pending"] == 190  # 200-579: labelled, but not yet known
        assert quality[variant]["roc_auc"] == pytest.approx(roc_auc(rows["LABEL"], rows["score"]), abs=1e-12)
    # the boundary is inclusive: event 199's label is known exactly at as_of
    before = quality_of(ledger_path, "model_ab", labels, labels_as_of=as_of - dt.timedelta(seconds=1))
    assert before["treatment"]["n_labelled"] == 99
    # an aware time is converted to UTC; ISO text works too
    aware = as_of.replace(tzinfo=dt.timezone.utc).astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert quality_of(ledger_path, "model_ab", labels, labels_as_of=aware)["treatment"]["n_labelled"] == 100
    assert quality_of(ledger_path, "model_ab", labels,
                           labels_as_of=as_of.isoformat())["treatment"]["n_labelled"] == 100


def test_labels_from_a_parquet_file(ledger_path, labels, tmp_path):
    path = tmp_path / "labels.parquet"
    labels.write_parquet(path)
    assert quality_of(ledger_path, "model_ab", path) == quality_of(ledger_path, "model_ab", labels)
    assert quality_of(ledger_path, "model_ab", labels.to_arrow())["treatment"]["n_labelled"] == 290


def test_bad_input_is_a_clear_error(ledger_path, labels, tmp_path):
    with pytest.raises(LabError, match="no prediction ledger"):
        quality_of(tmp_path / "none.db", "model_ab", labels)
    with pytest.raises(LabError, match="no labels file"):
        quality_of(ledger_path, "model_ab", tmp_path / "none.parquet")
    with pytest.raises(LabError, match="lack column.*LABEL"):
        quality_of(ledger_path, "model_ab", labels.drop("LABEL"))
    with pytest.raises(LabError, match="labels_as_of needs the event time EVENT_TIME"):
        quality_of(ledger_path, "model_ab", labels.drop("EVENT_TIME"), labels_as_of=DAY0)
    with pytest.raises(LabError, match="must be 0 or 1"):
        quality_of(ledger_path, "model_ab", labels.with_columns(LABEL=pl.lit(2)))
    with pytest.raises(LabError, match="two different LABEL"):
        quality_of(ledger_path, "model_ab",
                        pl.concat([labels, labels.head(1).with_columns(LABEL=pl.lit(1) - pl.col("LABEL"))]))


def test_text_event_ids_are_matched_as_sent(tmp_path):
    """A lab whose requests carry text ids ("o-7"): the ledger keeps them as text and the
    label table's text column meets them; an integer id 7 is not the text "o-7"."""
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        for i in range(40):
            ledger.append(PredictionRecord(f"o-{i}", "scorer", 1, {}, {}, 0.9 if i % 4 == 0 else 0.2 + i / 100,
                                           5.0, experiment="text_ab", variant="control"))
        ledger.append(PredictionRecord(7, "scorer", 1, {}, {}, 0.5, 5.0, experiment="text_ab", variant="control"))
    labels = pl.DataFrame({"ORDER": [f"o-{i}" for i in range(30)], "LATE": [int(i % 4 == 0) for i in range(30)]})
    q = variant_quality(path, "text_ab", labels, id_column="ORDER", label_column="LATE")["control"]
    assert (q["n_predictions"], q["n_labelled"], q["n_positive"]) == (41, 30, 8)
    assert q["roc_auc"] == 1.0 and q["average_precision"] == 1.0
    with pytest.raises(LabError, match="ORDER in .* is Float64; an event id is a whole number or text"):
        variant_quality(path, "text_ab", labels.with_columns(pl.lit(1.5).alias("ORDER")), id_column="ORDER",
                        label_column="LATE")


def test_labels_as_of_without_an_event_time_column_names_the_fix(ledger_path, labels):
    with pytest.raises(LabError, match="labels_as_of needs the labels' event-time column; pass time_column"):
        variant_quality(ledger_path, "model_ab", labels, id_column="EVENT_ID", label_column="LABEL",
                        labels_as_of=DAY0)
    # without labels_as_of every label counts, whatever the delay
    assert variant_quality(ledger_path, "model_ab", labels, id_column="EVENT_ID",
                           label_column="LABEL")["treatment"]["n_labelled"] == 290
