"""Training-serving skew and training sets from logs, on a served tiny lab.

The tiny lab's offline store gets a small transaction history and its online store is
materialized from it as of the watermark; ``lab.load_model`` then fills the ledger with
real predictions. With online = offline every logged feature equals its offline
recomputation and the gate passes; after one view's online values are overwritten with
other numbers, the report names exactly that view's features and the gate fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lab
from lab import steps
from lab.cli import main
from lab.config import load_config
from lab.errors import LabError
from lab.features.materialize import materialize
from lab.monitoring.skew import REQUEST_TIME, SkewGateError, psi
from lab.plugins import feature_views, get_plugin_manager
from plugins.fraud.testing import build_tiny_lab
from tests.conftest import REPO

HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
# (customer, terminal, amount) of the predicted transactions, one per customer and terminal
# so that none sees another's transaction (the online values are as of the watermark).
PREDICTED = ((1, 10, 30.0), (2, 11, 75.5), (3, 12, 120.0))
CUSTOMER_FEATURES = {f"CUSTOMER_ID_{k}_{n}DAY_WINDOW" for k in ("NB_TX", "AVG_AMOUNT") for n in (1, 7, 30)}
TERMINAL_FEATURES = {f"TERMINAL_ID_{k}_{n}DAY_WINDOW" for k in ("NB_TX", "RISK") for n in (1, 7, 30)}


def _history(tiny) -> pa.Table:
    """A few transactions per customer and terminal, none near a window's edge at the
    watermark or ten hours later (so materialized and point-in-time values agree), plus
    the predicted transactions themselves, dated after the watermark."""
    w = tiny.watermark
    rows = []
    offsets = (12 * HOUR, 3 * DAY, 7 * DAY + 12 * HOUR, 10 * DAY, 20 * DAY, 25 * DAY)
    for c, t, _ in PREDICTED:
        for j, back in enumerate(offsets):
            rows.append((w - back, c, t, 10.0 * c + 3 * j, int((c + j) % 3 == 0)))
    for i, (c, t, amount) in enumerate(PREDICTED, start=1):
        rows.append((w + 10 * HOUR + i * dt.timedelta(minutes=1), c, t, amount, i % 2))
    when, customer, terminal, amount, fraud = zip(*rows)
    return pa.table({
        "TRANSACTION_ID": pa.array(range(1, len(rows) + 1), pa.int64()),
        "TX_DATETIME": pa.array(when, pa.timestamp("us")),
        "CUSTOMER_ID": pa.array(customer, pa.int64()),
        "TERMINAL_ID": pa.array(terminal, pa.int64()),
        "TX_AMOUNT": pa.array(amount, pa.float64()),
        "TX_FRAUD": pa.array(fraud, pa.int64()),
    })


def _requests(tiny, table: pa.Table) -> list[dict]:
    ids = table.column("TRANSACTION_ID").to_pylist()[-len(PREDICTED):]
    return [tiny.transaction(tx_id, customer=c, terminal=t, amount=amount,
                             when=tiny.watermark + 10 * HOUR + i * dt.timedelta(minutes=1))
            for i, (tx_id, (c, t, amount)) in enumerate(zip(ids, PREDICTED), start=1)]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    tiny = build_tiny_lab(tmp_path_factory.mktemp("tiny-lab-skew"))
    config = load_config(tiny.root)
    pm = get_plugin_manager(config)
    views = feature_views(pm, config)
    offline, online = pm.hook.lab_offline_store(config=config), pm.hook.lab_online_store(config=config)
    try:
        history = _history(tiny)
        offline.write_source("transactions", history)
        materialize(offline, online, [views["customer_spending"], views["terminal_risk"]], tiny.watermark)
    finally:
        offline.close()
        online.close()
    return tiny, _requests(tiny, history)


@pytest.fixture
def served(template, tmp_path):
    """A copy of the lab whose ledger holds one prediction per request."""
    tiny, requests = template
    shutil.copytree(tiny.root, tmp_path / "lab")
    tiny = dataclasses.replace(tiny, root=tmp_path / "lab")
    _predict(tiny, requests)
    return tiny, requests


def _predict(tiny, requests) -> list[dict]:
    with lab.load_model("fraud", root=tiny.root) as predictor:
        return predictor.predict_many(requests)


def _corrupt_terminal_risk(tiny) -> None:
    """Overwrite the terminal view's online rows with other values (a broken materializer)."""
    config = load_config(tiny.root)
    pm = get_plugin_manager(config)
    view = feature_views(pm, config)["terminal_risk"]
    store = pm.hook.lab_online_store(config=config)
    try:
        terminals = [t for _, t, _ in PREDICTED]
        rows = {view.entity: terminals}
        for name in view.feature_names:
            rows[name] = [7 + t for t in terminals] if "NB_TX" in name else [0.9] * len(terminals)
        store.write(view, pa.table(rows), tiny.watermark)
    finally:
        store.close()


def _cli(root, *args) -> int:
    return main(["--root", str(root), "features", *args])


def test_no_skew_every_feature_matches_and_the_gate_passes(served, capsys):
    tiny, _ = served
    out = steps.skew(str(tiny.root), str(tiny.root / "runs" / "skew"))
    assert out["passed"] and out["failing"] == [] and out["rows"] == len(PREDICTED)
    by_name = {f["feature"]: f for f in out["features"]}
    assert set(by_name) == CUSTOMER_FEATURES | TERMINAL_FEATURES | {"TX_AMOUNT", "TX_DURING_WEEKEND",
                                                                     "TX_DURING_NIGHT"}
    for name, f in by_name.items():
        assert f["match_share"] == 1.0 and f["mean_abs_diff"] == pytest.approx(0.0, abs=1e-9), name
        assert f["psi"] == 0.0 and f["recomputed_null"] == 0 and f["defaults_rows"] == 0, name
    assert by_name["TX_AMOUNT"]["view"] == REQUEST_TIME
    assert by_name["TERMINAL_ID_RISK_7DAY_WINDOW"]["view"] == "terminal_risk"
    # the customer counts hold the predicted transaction itself: served as count + 1, offline by its row
    assert json.loads((tiny.root / "data" / "skew.json").read_text())["passed"] is True
    assert "passed" in (tiny.root / "data" / "skew.txt").read_text()

    assert _cli(tiny.root, "skew", "--out", "reports/skew.json") == 0
    printed = capsys.readouterr().out
    assert "CUSTOMER_ID_NB_TX_1DAY_WINDOW" in printed and "passed" in printed
    assert json.loads((tiny.root / "reports" / "skew.json").read_text())["passed"] is True


def test_corrupted_online_values_name_exactly_that_views_features(served, capsys):
    tiny, requests = served
    _corrupt_terminal_risk(tiny)
    _predict(tiny, requests)
    with pytest.raises(SkewGateError) as caught:
        steps.skew(str(tiny.root), str(tiny.root / "runs" / "skew"))
    message = str(caught.value)
    assert "\n" not in message and "terminal_risk" in message
    assert all(name in message for name in TERMINAL_FEATURES)
    assert not any(name in message for name in CUSTOMER_FEATURES)
    report = json.loads((tiny.root / "data" / "skew.json").read_text())
    assert report["passed"] is False and report["rows"] == 2 * len(PREDICTED)
    assert set(report["failing"]) == TERMINAL_FEATURES and report["failing_views"] == ["terminal_risk"]
    by_name = {f["feature"]: f for f in report["features"]}
    for name in TERMINAL_FEATURES:
        assert by_name[name]["match_share"] == pytest.approx(0.5) and "mismatch" in by_name[name]["failing"]
        assert by_name[name]["mean_abs_diff"] > 0
    # the corrupted predictions alone: every row differs
    only_new = steps.skew(str(tiny.root), str(tiny.root / "runs" / "skew"), limit=len(PREDICTED), gate=False)
    assert {f["feature"] for f in only_new["features"] if f["match_share"] == 0.0} == TERMINAL_FEATURES
    assert {f["feature"] for f in only_new["features"] if f["match_share"] == 1.0} == \
        CUSTOMER_FEATURES | {"TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"}

    capsys.readouterr()
    assert _cli(tiny.root, "skew") == 3
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert captured.err.startswith("lab: error: training-serving skew in 6 feature(s)")
    assert all(name in captured.err for name in TERMINAL_FEATURES)
    assert _cli(tiny.root, "skew", "--no-gate") == 0
    # a stage's parameters (config = ["skew"], so `lab run --set skew.max_psi=...`) override the table
    loose = steps.skew(str(tiny.root), str(tiny.root / "runs" / "skew"), max_mismatch_share=0.6, max_psi=100)
    assert loose["passed"] and loose["thresholds"]["max_psi"] == 100
    with pytest.raises(LabError, match=r"unknown key\(s\) max_skew in \[tool.lab.skew\]"):
        steps.skew(str(tiny.root), str(tiny.root / "runs" / "skew"), max_skew=1)
    # a looser declared threshold passes it: the gate reads [tool.lab.skew]
    pyproject = tiny.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.lab.skew]\nmax_mismatch_share = 0.6\nmax_psi = 100.0\n")
    assert _cli(tiny.root, "skew") == 0


def test_in_source_compares_only_the_events_a_training_set_would_hold(served):
    tiny, requests = served
    # an event the offline source does not hold (yet): served with itself folded into the
    # customer's windows (count + 1), recomputed without it
    _predict(tiny, [{**requests[0], "TRANSACTION_ID": 10_000, "TX_AMOUNT": 999.0}])
    with pytest.raises(SkewGateError) as caught:
        steps.skew(str(tiny.root), str(tiny.root / "runs" / "skew"))
    assert "customer_spending: " in str(caught.value) and "terminal_risk" not in str(caught.value)
    out = steps.skew(str(tiny.root), str(tiny.root / "runs" / "skew"), in_source=True)
    assert out["passed"] and out["rows"] == len(PREDICTED)


PIPELINE = """
[[stage]]
name = "skew"
notebook = "notebooks/09_skew.ipynb"
config = ["skew"]
inputs = ["data/ledger.db"]
outputs = ["data/skew.json", "data/skew.txt"]
"""


def test_the_skew_stage_runs_in_the_pipeline_and_fails_the_run_on_skew(served, capsys):
    tiny, requests = served
    (tiny.root / "notebooks").mkdir()
    shutil.copyfile(REPO / "notebooks" / "09_skew.ipynb", tiny.root / "notebooks" / "09_skew.ipynb")
    (tiny.root / "notebooks" / "pipeline.toml").write_text(PIPELINE)
    pyproject = tiny.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.lab.pipeline]\nretries = 0\n")
    _corrupt_terminal_risk(tiny)  # one kernel run only (seconds each): the passing step is tested above
    _predict(tiny, requests)
    capsys.readouterr()
    assert main(["--root", str(tiny.root), "run"]) != 0
    out = capsys.readouterr().out
    assert "SkewGateError" in out and "terminal_risk" in out
    assert json.loads((tiny.root / "data" / "skew.json").read_text())["failing_views"] == ["terminal_risk"]


def test_logged_set_joins_only_the_labels_that_are_due(served, capsys):
    tiny, requests = served
    second = tiny.watermark + 10 * HOUR + 2 * dt.timedelta(minutes=1)
    as_of = (second + 7 * DAY).isoformat()  # default label delay: [tool.lab.train] delta_delay = 7 days
    out = tiny.root / "logged.parquet"
    assert _cli(tiny.root, "logged-set", "--out", str(out), "--as-of", as_of) == 0
    printed = capsys.readouterr().out
    assert "2 joined, 1 not due" in printed
    frame = pl.read_parquet(out)
    assert frame.height == len(PREDICTED)
    assert frame.columns[:4] == ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID"]
    assert {"request_TX_AMOUNT", "TX_AMOUNT", "TX_FRAUD", "model_version", "score", "request_id",
            "defaults_customer_spending", "defaults_terminal_risk"} <= set(frame.columns)
    assert frame["TRANSACTION_ID"].to_list() == [r["TRANSACTION_ID"] for r in requests]
    source = {r["TRANSACTION_ID"]: r["TX_FRAUD"] for r in _source_rows(tiny)}
    expected = [source[r["TRANSACTION_ID"]] for r in requests[:2]] + [None]
    assert frame["TX_FRAUD"].to_list() == expected
    assert frame["model_version"].to_list() == [tiny.model_version] * len(PREDICTED)
    with lab.load_model("fraud", root=tiny.root, ledger=False) as predictor:
        again = predictor.predict_many(requests)
    assert frame["score"].to_list() == [r["score"] for r in again]
    for name in CUSTOMER_FEATURES | TERMINAL_FEATURES:
        assert frame[name].to_list() == [r["features"][name] for r in again]

    assert _cli(tiny.root, "logged-set", "--out", str(out), "--as-of", as_of, "--labelled-only") == 0
    assert pl.read_parquet(out).height == 2


def _source_rows(tiny) -> list[dict]:
    config = load_config(tiny.root)
    store = get_plugin_manager(config).hook.lab_offline_store(config=config)
    try:
        return store.read_source("transactions", ["TRANSACTION_ID", "TX_FRAUD"]).to_pylist()
    finally:
        store.close()


def test_bad_input_is_a_one_line_error(template, tmp_path, capsys):
    tiny, _ = template
    shutil.copytree(tiny.root, tmp_path / "lab")
    root = tmp_path / "lab"
    assert _cli(root, "skew") == 2  # nothing served yet: no ledger
    assert "no prediction ledger" in capsys.readouterr().err
    tiny = dataclasses.replace(tiny, root=root)
    _predict(tiny, template[1][:1])
    for args, words in ((("skew", "--out", "x.csv"), "must end in .json"),
                        (("skew", "--start", "2018-13-01"), "is not a date"),
                        (("skew", "--start", "2019-01-01"), "no logged predictions"),
                        (("logged-set", "--out", "x.csv"), "must end in .parquet"),
                        (("logged-set", "--out", "x.parquet", "--label-delay-days", "-1"), "0 or more")):
        assert _cli(root, *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("lab: error:") and words in err and err.count("\n") == 1, (args, err)
    assert not (root / "x.parquet").exists()


def test_psi_is_zero_for_equal_samples_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=2000)
    assert psi(a, a.copy()) == 0.0
    assert psi(a, rng.normal(size=2000)) < 0.05
    assert psi(a, a + 1.0) > 0.5
    assert psi(np.array([0.0, 1.0, 1.0]), np.array([0.0, 1.0, 1.0])) == 0.0  # few values: one bin each
    assert psi(np.array([0.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0])) > 1.0
    assert issubclass(SkewGateError, LabError)  # the CLI and the pipeline show it as a one-line error


# -- any spec: a string entity, a latest-value view, offsets on the request times --------

def _plan_spec():
    import math as _math

    from lab.features.views import FeatureView
    from lab.modelspec import ModelSpec, RequestField, RequestSchema

    view = FeatureView(name="user_plan", entity="USER", source="plans", timestamp="CHANGED_AT",
                       features=("PRICE", "SEATS"), ttl=90 * DAY)

    def frame(df):
        return df.with_columns(pl.col("SPEND").log1p().alias("SPEND_LOG"))

    def row(request, rows):
        plan = rows["user_plan"] or {"PRICE": 0.0, "SEATS": 0}
        return {"SPEND_LOG": _math.log1p(request["SPEND"]), "PRICE": plan["PRICE"], "SEATS": plan["SEATS"]}

    schema = RequestSchema(
        fields=(RequestField("ID", "int"), RequestField("AT", "datetime"), RequestField("USER", "str"),
                RequestField("SPEND", "float")),
        id="ID", timestamp="AT", entities=("USER",),
        example={"ID": 1, "AT": "2024-05-01T10:00:00", "USER": "ada", "SPEND": 3.0})
    spec = ModelSpec(name="upsell", task="regression", label="REVENUE", source="sessions",
                     features=("SPEND_LOG", "PRICE", "SEATS"), views=("user_plan",), request=schema,
                     request_frame=frame, request_row=row)
    return spec, view


def test_any_spec_string_keys_latest_values_offsets_and_served_defaults(tmp_path):
    from lab.monitoring.skew import logged_predictions, recompute_features, skew_report
    from lab.serving.ledger import Ledger, PredictionRecord, read_predictions
    from lab.serving.scoring import FeatureAssembler

    (tmp_path / "pyproject.toml").write_text("[project]\nname = \"plans\"\nversion = \"0\"\n\n[tool.lab]\n")
    config = load_config(tmp_path)
    pm = get_plugin_manager(config)
    spec, view = _plan_spec()
    w = dt.datetime(2024, 5, 1)
    offline, online = pm.hook.lab_offline_store(config=config), pm.hook.lab_online_store(config=config)
    requests = [  # (id, sent time, user, spend): +02:00 is read as its wall clock, as the server does
        (1, "2024-05-01T09:00:00+02:00", "ada", 3.0), (2, "2024-05-01T12:00:00", "bob", 40.0),
        (3, "2024-05-01T13:30:00-05:00", "cyd", 7.5), (4, "2024-05-01T14:00:00", "zed", 1.0)]  # zed: unknown
    try:
        offline.write_source("plans", pa.table({
            "USER": ["ada", "bob", "cyd", "ada", "bob"],
            "CHANGED_AT": pa.array([w - 40 * DAY, w - 10 * DAY, w - 3 * DAY, w - 2 * DAY, w - HOUR],
                                   pa.timestamp("us")),
            "PRICE": [10.0, 25.0, 99.0, 12.5, 30.0], "SEATS": [1, 5, 20, 2, 6]}))
        materialize(offline, online, [view], w)
        assembler = FeatureAssembler(online, [view], spec.request_row, spec.features)
        with Ledger.open(config.ledger_path) as ledger:
            for event_id, sent, user, spend in requests:
                when = dt.datetime.fromisoformat(sent)
                request = {"ID": event_id, "AT": when.replace(tzinfo=None), "USER": user, "SPEND": spend}
                got = assembler.assemble(request, when.replace(tzinfo=None))
                ledger.append(PredictionRecord(event_id=event_id, model_name="upsell", model_version=1,
                                               features=got.features, defaults=got.defaults, score=1.0,
                                               latency_ms=0.1, request={**request, "AT": sent}))
        logged = logged_predictions(spec, read_predictions(config.ledger_path, model_name="upsell"))
        assert logged.requests["AT"].to_list()[0] == dt.datetime(2024, 5, 1, 9)
        report = skew_report(spec, [view], logged, recompute_features(offline, [view], spec, logged.requests),
                             config.skew)
    finally:
        offline.close()
        online.close()
    by_name = {f.feature: f for f in report.features}
    assert by_name["SPEND_LOG"].view == REQUEST_TIME and by_name["SPEND_LOG"].match_share == 1.0
    for name in ("PRICE", "SEATS"):  # zed: served the request_row's 0 default, offline has no value
        assert by_name[name].matches == 3 and by_name[name].recomputed_null == 1
        assert by_name[name].defaults_rows == 1 and "mismatch" in by_name[name].failing
    assert report.defaults == {"user_plan": 1}
    with pytest.raises(SkewGateError, match=r"user_plan: PRICE .*SEATS"):
        report.check()
