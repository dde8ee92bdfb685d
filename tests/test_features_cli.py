"""``lab features ...`` end to end on a temporary fraud lab: load, training-set (built from
the model's spec, recorded in the registry), materialize, get, list, and the errors for
bad flags."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lab.features.digest import table_digest
from lab.registry import Registry
from tests._helpers import run_lab as lab


def test_training_set_is_written_atomically_and_recorded(small_fraud_lab, capsys):
    out = small_fraud_lab / "sets" / "train.parquet"
    assert lab(small_fraud_lab, "features", "training-set", "--start", "2018-04-10", "--end", "2018-04-16",
               "--out", str(out)) == 0
    printed = capsys.readouterr().out
    table = pq.read_table(out)
    digest = table_digest(table)
    assert f"wrote {table.num_rows} rows" in printed and digest in printed
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    with Registry.open(small_fraud_lab / "registry.db", project_root=small_fraud_lab) as reg:
        record = reg.get_dataset(digest)
    assert record["kind"] == "training_set" and record["rows"] == table.num_rows
    assert record["path"] == str(out.resolve())
    meta = record["meta"] if isinstance(record["meta"], dict) else json.loads(record["meta"])
    assert set(meta["views"]) == {"customer_spending", "terminal_risk"}
    assert (meta["start"], meta["end"]) == ("2018-04-10", "2018-04-16")
    assert (meta["model"], meta["source"]) == ("fraud", "transactions")
    # The spec's columns, in its order: id, time, entities, inputs, label, carry.
    assert table.column_names[:4] == ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID"]
    assert table.column_names[4:] == [*meta["feature_columns"], "TX_FRAUD", "TX_TIME_DAYS"]


def test_training_set_for_a_model_named_with_model(small_fraud_lab, capsys):
    out = small_fraud_lab / "sets" / "named.parquet"
    assert lab(small_fraud_lab, "features", "training-set", "--model", "fraud", "--start", "2018-04-10",
               "--end", "2018-04-12", "--out", str(out)) == 0
    assert pq.read_table(out).num_rows > 0
    capsys.readouterr()
    assert lab(small_fraud_lab, "features", "training-set", "--model", "churn", "--start", "2018-04-10",
               "--end", "2018-04-12", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error:") and "'churn'" in err and "declared: fraud" in err


def test_training_set_records_the_absolute_path_of_a_relative_out(small_fraud_lab, monkeypatch, capsys):
    """``--out`` is relative to the working directory, here inside the lab root; the
    registry keeps the absolute resolved path, so any process can find the file."""
    here = small_fraud_lab / "work" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert lab(small_fraud_lab, "features", "training-set", "--start", "2018-04-10", "--end", "2018-04-11",
               "--out", "../ts.parquet") == 0
    written = (small_fraud_lab / "work" / "ts.parquet").resolve()
    assert str(written) in capsys.readouterr().out
    with Registry.open(small_fraud_lab / "registry.db", project_root=small_fraud_lab) as reg:
        record = reg.get_dataset(table_digest(pq.read_table(written)))
    assert record["path"] == str(written)


def test_materialize_then_get_one_customer(small_fraud_lab, capsys):
    assert lab(small_fraud_lab, "features", "materialize", "--as-of", "2018-04-20T12:00:00") == 0
    assert "customer_spending" in capsys.readouterr().out
    customer = str(pq.read_table(small_fraud_lab / "tx.parquet").column("CUSTOMER_ID")[0])
    assert lab(small_fraud_lab, "features", "get", "customer_spending", customer) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["as_of"] == "2018-04-20T12:00:00"
    assert set(shown["features"]) == {f"CUSTOMER_ID_{k}_{n}DAY_WINDOW" for k in ("NB_TX", "AVG_AMOUNT")
                                      for n in (1, 7, 30)}
    assert lab(small_fraud_lab, "features", "get", "customer_spending", "999999") == 2
    assert "999999" in capsys.readouterr().err
    assert lab(small_fraud_lab, "features", "get", "no_such_view", "1") == 2
    assert "customer_spending" in capsys.readouterr().err  # the error lists the views


def test_materialize_defaults_to_the_latest_event(small_fraud_lab, capsys):
    assert lab(small_fraud_lab, "features", "materialize") == 0
    assert "as of 2018-04-30" in capsys.readouterr().out


def test_list_shows_views_with_versions(small_fraud_lab, capsys):
    assert lab(small_fraud_lab, "features", "list", "--json") == 0
    listed = {v["name"]: v for v in json.loads(capsys.readouterr().out)}
    assert listed["terminal_risk"]["label_delay_s"] == 7 * 86400
    assert len(listed["customer_spending"]["version"]) == 12


@pytest.mark.parametrize("argv, flag", [
    (["training-set", "--start", "2018-02-30", "--end", "2018-04-16", "--out", "x.parquet"], "--start"),
    (["training-set", "--start", "2018-04-10", "--end", "soon", "--out", "x.parquet"], "--end"),
    (["training-set", "--start", "2018-04-10", "--end", "2018-04-16", "--out", "x.csv"], "--out"),
    (["materialize", "--as-of", "noon"], "--as-of"),
])
def test_bad_flags_are_named_without_a_traceback(small_fraud_lab, capsys, argv, flag):
    assert lab(small_fraud_lab, "features", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error:") and flag in err and "Traceback" not in err
