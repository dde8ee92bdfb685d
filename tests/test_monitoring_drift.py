"""Native drift statistics (lab.monitoring.drift): the numbers against scipy, the verdict
(BH-adjusted significance and an effect threshold), power, sketches, windows and the step.

The data are seeded transaction-like frames: an amount (log-normal), flags, counts, a
customer's mean spend, a terminal's risk and a categorical payment channel. Every
statistical assertion runs on fixed seeds, and its bound leaves a margin a calibrated test
would pass far more often than nine runs in ten.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import textwrap

import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

import lab
from lab import steps
from lab.config import DriftConfig, load_config
from lab.errors import ConfigError, LabError
from lab.features.materialize import materialize
from lab.monitoring import _drift_stats as st
from lab.monitoring.drift import ReferenceSketch, compare, ledger_window, offline_window
from lab.plugins import feature_views, get_plugin_manager, model_spec
from lab.registry import Registry
from tests.conftest import write_pyproject

CATEGORICAL = ["channel"]


def transactions(n: int, seed: int, *, amount_scale: float = 1.0, new_share: float = 0.0,
                 null_share: float = 0.0) -> pl.DataFrame:
    """``n`` transaction-like rows; ``amount_scale`` multiplies the amounts, ``new_share``
    of the rows pay through a channel the reference never saw, ``null_share`` of the
    customers' mean spend is missing."""
    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, n)
    channel = rng.choice(["pos", "online", "atm"], n, p=[0.6, 0.3, 0.1]).astype(object)
    channel[rng.random(n) < new_share] = "wallet"
    avg = rng.gamma(4.0, 12.0, n)
    return pl.DataFrame({
        "amount": rng.lognormal(3.5, 0.8, n) * amount_scale,
        "night": (hour < 6).astype(np.int64),
        "weekend": rng.random(n) < 2 / 7,
        "customer_nb_tx_7d": rng.poisson(14, n),
        "customer_avg_amount_7d": pl.Series(np.where(rng.random(n) < null_share, np.nan, avg)).fill_nan(None),
        "terminal_risk_7d": rng.beta(0.5, 30.0, n),
        "channel": pl.Series(channel.tolist(), dtype=pl.Utf8),
    })


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    return transactions(20_000, seed=1)


# -- the numbers against an independent computation ------------------------------------

@pytest.mark.parametrize("n, m", [(40, 60), (700, 300), (12_000, 3_000)])
def test_ks_wasserstein_psi_and_js_agree_with_scipy_and_a_loop(n, m):
    rng = np.random.default_rng(n)
    for a, b in ((rng.normal(0, 1, n), rng.normal(0.2, 1.3, m)),  # continuous
                 (rng.integers(0, 6, n).astype(float), rng.integers(0, 7, m).astype(float))):  # ties
        report = compare(pl.DataFrame({"x": a}), pl.DataFrame({"x": b}))
        col = report.columns["x"]
        want = stats.ks_2samp(a, b)
        assert col.ks.statistic == pytest.approx(want.statistic, abs=1e-12)
        # exact distribution while both samples are small, then Smirnov's asymptotic form
        assert col.ks.p_value == pytest.approx(want.pvalue, rel=5e-3, abs=1e-12)
        assert col.wasserstein == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a), rel=1e-9)
        # PSI and JS on the reference's deciles, by a plain loop over the bins
        ref = np.sort(a)
        edges = sorted({ref[int(np.ceil(j * n / 10)) - 1] for j in range(1, 10)})
        bounds = [-np.inf, *edges, np.inf]
        e = np.array([np.sum((a > lo) & (a <= hi)) for lo, hi in zip(bounds, bounds[1:])]) / n
        g = np.array([np.sum((b > lo) & (b <= hi)) for lo, hi in zip(bounds, bounds[1:])]) / m
        ef, gf = np.maximum(e, 1e-4), np.maximum(g, 1e-4)
        assert col.psi == pytest.approx(sum((y - x) * np.log(y / x) for x, y in zip(ef, gf)), rel=1e-9)
        assert col.jensen_shannon == pytest.approx(jensenshannon(e, g), rel=1e-9)


def test_chi_square_and_js_of_categories_agree_with_scipy():
    a = pl.DataFrame({"c": ["x"] * 50 + ["y"] * 30 + ["z"] * 20})
    b = pl.DataFrame({"c": ["x"] * 30 + ["y"] * 30 + ["z"] * 25 + ["w"] * 15})
    col = compare(a, b, categorical=["c"]).columns["c"]
    table = np.array([[0, 50, 30, 20], [15, 30, 30, 25]])  # w, x, y, z
    statistic, p, df, _ = stats.chi2_contingency(table, correction=False)
    assert (col.chi_square.statistic, col.chi_square.p_value) == (pytest.approx(statistic), pytest.approx(p))
    assert col.jensen_shannon == pytest.approx(jensenshannon(table[0] / 100, table[1] / 100))
    assert col.new_categories == ("w",) and col.new_share == pytest.approx(0.15)
    assert col.ks is None and col.wasserstein is None and col.test == "chi_square"


def test_benjamini_hochberg_on_a_hand_example():
    # sorted: 0.005, 0.01, 0.03, 0.04 -> 4p/rank = 0.02, 0.02, 0.04, 0.04 (already monotone)
    assert st.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # a later smaller ratio carries down: 0.02*3/1 = 0.06 > 0.021*3/2 = 0.0315 -> both 0.0315
    assert st.benjamini_hochberg([0.021, 0.02, 0.9]).tolist() == pytest.approx([0.0315, 0.0315, 0.9])
    assert st.benjamini_hochberg([0.6, 0.9]).tolist() == pytest.approx([0.9, 0.9])


def test_a_reports_q_values_are_bh_over_its_columns(reference):
    report = compare(reference, transactions(1_500, seed=9, amount_scale=1.1), categorical=CATEGORICAL)
    cols = list(report.columns.values())
    assert [c.q_value for c in cols] == pytest.approx(st.benjamini_hochberg([c.p_value for c in cols]).tolist())


# -- the verdict -------------------------------------------------------------------------

def test_injected_drift_is_flagged_within_one_window(reference):
    """A day's window whose amounts are 25 % larger and where 6 % of the payments use a
    new channel: exactly those two columns are flagged, exact and against a sketch."""
    current = transactions(2_000, seed=5, amount_scale=1.25, new_share=0.06)
    sketch = ReferenceSketch.from_frame(reference, categorical=CATEGORICAL)
    for ref in (reference, sketch):
        report = compare(ref, current, categorical=CATEGORICAL)
        assert report.flagged == ["amount", "channel"] and report.drifted
        assert report.columns["amount"].reason.startswith("shift above threshold and significant")
        assert report.columns["channel"].new_categories == ("wallet",)
        assert report.columns["channel"].reason.endswith(
            f"new: wallet ({report.columns['channel'].new_share:.1%} of the current values)")
        assert 0.04 < report.columns["channel"].new_share < 0.08
    quiet = compare(reference, transactions(2_000, seed=6), categorical=CATEGORICAL)
    assert quiet.flagged == [] and not quiet.drifted


def test_false_alarms_over_100_unchanged_windows_stay_under_alpha(reference):
    """100 windows of 1,000 rows from the reference's distribution, against its sketch
    (what a scheduled check does). With the default thresholds no window may flag more
    often than alpha; with the thresholds at 0 (significance alone decides) the share
    of windows with any q < alpha is Simes' test's level, alpha: at most twice it here
    (a calibrated test exceeds 10 in 100 about one time in 90)."""
    sketch = ReferenceSketch.from_frame(reference, categorical=CATEGORICAL)
    significance_only = DriftConfig(numeric_threshold=0.0, categorical_threshold=0.0, null_threshold=0.0)
    alarms = significant = 0
    for window in range(100):
        current = transactions(1_000, seed=1_000 + window)
        alarms += compare(sketch, current, categorical=CATEGORICAL).drifted
        significant += compare(sketch, current, categorical=CATEGORICAL, config=significance_only).drifted
    assert alarms / 100 <= DriftConfig().alpha
    assert significant / 100 <= 2 * DriftConfig().alpha


def test_a_million_rows_do_not_flag_a_trivial_shift_and_a_hundred_flag_a_large_one():
    rng = np.random.default_rng(11)
    big = compare(pl.DataFrame({"x": rng.normal(0, 1, 1_000_000)}),
                  pl.DataFrame({"x": rng.normal(0.01, 1, 1_000_000)})).columns["x"]
    assert big.q_value < 1e-6 and big.wasserstein < 0.05 and not big.flagged
    assert big.reason.startswith("significant but trivial effect") and big.power == 1.0
    small = compare(pl.DataFrame({"x": rng.normal(0, 1, 100)}), pl.DataFrame({"x": rng.normal(1.0, 1, 100)}))
    assert small.flagged == ["x"] and small.columns["x"].wasserstein > 0.5


def test_tiny_windows_are_reported_underpowered_not_silently_quiet():
    rng = np.random.default_rng(12)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 12), "c": rng.choice(["a", "b"], 12)})
    cur = pl.DataFrame({"x": rng.normal(0.3, 1, 8), "c": rng.choice(["a", "b"], 8)})
    report = compare(ref, cur, categorical=["c"])
    assert report.flagged == [] and report.underpowered == ["x", "c"]
    for col in report.columns.values():
        assert col.underpowered and col.power < 0.2
        assert col.reason.startswith(f"underpowered: n too small to detect {col.effect} 0.1 at alpha 0.05")


def test_the_reported_power_matches_simulated_ks_tests():
    """At 1,000 against 1,000 values a shift of 0.1 sd (the threshold) is detected about
    half the time; the reported power must say so (400 seeded simulations: +-0.08 is
    over three standard errors)."""
    predicted = st.ks_power(0.1, 1_000, 1_000, 0.05)
    rng = np.random.default_rng(13)
    hits = 0
    for _ in range(400):
        a, b = np.sort(rng.normal(0, 1, 1_000)), np.sort(rng.normal(0.1, 1, 1_000))
        hits += st.ks_p_value(st.ecdf_gap(a, b)[0], 1_000, 1_000, a, b) < 0.05
    assert 0.3 < predicted < 0.7 and abs(hits / 400 - predicted) < 0.08


def test_null_share_is_compared_on_its_own(reference):
    current = transactions(3_000, seed=21, null_share=0.2)
    col = compare(reference, current, categorical=CATEGORICAL).columns["customer_avg_amount_7d"]
    assert col.flagged and col.null_reference == 0.0 and col.null_current == pytest.approx(0.2, abs=0.02)
    assert col.null_effect > 0.5 and col.null_q_value < 1e-9
    assert col.reason.startswith(f"null share 0 -> {col.null_current:.3g}: shift above threshold and significant")
    assert col.wasserstein < 0.1  # the values that are there did not move
    ignored = compare(reference, current, categorical=CATEGORICAL, config=DriftConfig(nulls="ignore"))
    assert not ignored.columns["customer_avg_amount_7d"].flagged
    assert ignored.columns["customer_avg_amount_7d"].null_test is None
    empty = compare(pl.DataFrame({"x": [1.0, 2.0]}), pl.DataFrame({"x": [None, None]}, schema={"x": pl.Float64}))
    assert empty.columns["x"].reason.endswith("no values to compare: the current window has only nulls")


def test_config_comes_from_the_labs_drift_table(tmp_path, reference):
    write_pyproject(tmp_path, "[tool.lab.drift]\nalpha = 0.01\nnumeric_threshold = 0.5\nhtml = false\n")
    config = load_config(tmp_path).drift
    assert (config.alpha, config.numeric_threshold, config.html) == (0.01, 0.5, False)
    current = transactions(2_000, seed=5, amount_scale=1.25)
    assert compare(reference, current, categorical=CATEGORICAL, config=config).flagged == []
    assert compare(reference, current, categorical=CATEGORICAL).flagged == ["amount"]
    write_pyproject(tmp_path, "[tool.lab.drift]\nalhpa = 0.01\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) alhpa in \[tool.lab.drift\]"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="numeric_effect must be one of 'wasserstein', 'psi'"):
        DriftConfig(numeric_effect="ks")


# -- sketches ------------------------------------------------------------------------------

def test_sketch_round_trip_gives_the_same_report_and_bounded_approximations(reference, tmp_path):
    sketch = ReferenceSketch.from_frame(reference, categorical=CATEGORICAL, meta={"window": "week 1"})
    path = sketch.save(tmp_path / "ref.json")
    loaded = ReferenceSketch.load(path)
    assert loaded.kinds == sketch.kinds and loaded.meta == {"window": "week 1"} and loaded.rows == 20_000
    current = transactions(2_000, seed=5, amount_scale=1.25, new_share=0.06)
    assert compare(loaded, current).to_dict() == compare(sketch, current).to_dict()
    exact, approx = compare(reference, current, categorical=CATEGORICAL), compare(loaded, current)
    assert approx.flagged == exact.flagged and not approx.exact and exact.exact
    for name, e in exact.columns.items():
        a = approx.columns[name]
        if e.kind == "categorical":  # counts are kept whole: nothing approximated
            assert a.chi_square == e.chi_square and a.approximation is None
            continue
        assert abs(a.ks.statistic - e.ks.statistic) <= a.approximation["ks"] + 1e-12
        assert abs(a.wasserstein - e.wasserstein) <= a.approximation["wasserstein"] + 1e-12
        assert a.approximation["ks"] < 0.01
    # a sketch on the current side too: both sides sketched, same verdict
    assert compare(loaded, ReferenceSketch.from_frame(current, categorical=CATEGORICAL)).flagged == exact.flagged
    json.loads(path.read_text())  # plain JSON, no NaN


def test_low_cardinality_columns_are_held_exactly_by_a_sketch():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, 5_000).astype(float), rng.integers(0, 3, 4_000).astype(float)
    sketch = ReferenceSketch.from_frame(pl.DataFrame({"x": a}), bins=10)
    col = compare(sketch, pl.DataFrame({"x": b})).columns["x"]
    assert col.ks.statistic == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert col.wasserstein == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a), rel=1e-9)


# -- bad input ----------------------------------------------------------------------------

def test_bad_input_is_a_lab_error_naming_the_fix(reference, tmp_path):
    current = transactions(500, seed=2)
    with pytest.raises(LabError, match=r"unknown column\(s\) 'amout' in the reference.*fix the names"):
        compare(reference, current, ["amout"])
    with pytest.raises(LabError, match="the current frame has no rows: widen its window"):
        compare(reference, current.head(0))
    with pytest.raises(LabError, match=r"column 'channel' is String, not numeric: pass it in categorical=\[\.\.\.\]"):
        compare(reference, current)
    with pytest.raises(LabError, match=r"the current frame has no column\(s\) 'amount' .*select the same columns"):
        compare(reference, current.drop("amount"), categorical=CATEGORICAL)
    with pytest.raises(LabError, match=r"categorical column\(s\) 'hour' are not among the columns compared"):
        compare(reference, current, ["amount"], categorical=["hour"])
    sketch = ReferenceSketch.from_frame(reference, ["amount", "channel"], categorical=CATEGORICAL)
    with pytest.raises(LabError, match=r"numeric in the reference sketch but were passed as categorical"):
        compare(sketch, current, ["amount"], categorical=["amount"])
    with pytest.raises(LabError, match="numeric in one sketch and categorical in the other"):
        compare(ReferenceSketch.from_frame(current, ["night"]),
                ReferenceSketch.from_frame(current, ["night"], categorical=["night"]))
    with pytest.raises(LabError, match="must be a polars DataFrame or a ReferenceSketch"):
        compare(reference, [1, 2, 3])
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(LabError, match="is not a drift reference sketch; rebuild it"):
        ReferenceSketch.load(tmp_path / "bad.json")
    with pytest.raises(LabError, match="no reference sketch at"):
        ReferenceSketch.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"alpha must be between 0 and 1"):
        DriftConfig(alpha=1.5)


# -- windows over a served lab, and the drift step -----------------------------------------

@pytest.fixture(scope="module")
def served_lab(tmp_path_factory):
    """The tiny fraud lab with 3 days of history in its offline store (3 customers, 3
    terminals), its online store materialized at the watermark, and 60 predictions in its
    ledger on the watermark's day: 30 ordinary amounts, then 30 four times larger."""
    from plugins.fraud.testing import build_tiny_lab

    tiny = build_tiny_lab(tmp_path_factory.mktemp("drift-lab"))
    config = load_config(tiny.root)
    pm = get_plugin_manager(config)
    views = feature_views(pm, config)
    rng = np.random.default_rng(4)
    n = 600
    when = [tiny.watermark - dt.timedelta(days=3) + dt.timedelta(minutes=int(x)) for x in
            np.sort(rng.integers(0, 3 * 24 * 60 + 600, n))]  # through 10:00 on the watermark's day
    history = pl.DataFrame({
        "TRANSACTION_ID": np.arange(1, n + 1), "TX_DATETIME": when,
        "CUSTOMER_ID": rng.choice(tiny.customers, n), "TERMINAL_ID": rng.choice(tiny.terminals, n),
        "TX_AMOUNT": np.round(rng.lognormal(3.5, 0.6, n), 2), "TX_FRAUD": (rng.random(n) < 0.05).astype(np.int64),
    }).with_columns(pl.col("TX_DATETIME").cast(pl.Datetime("us")))
    offline, online = pm.hook.lab_offline_store(config=config), pm.hook.lab_online_store(config=config)
    try:
        offline.write_source("transactions", history.to_arrow())
        materialize(offline, online, [views["customer_spending"], views["terminal_risk"]], tiny.watermark)
    finally:
        offline.close()
        online.close()
    amounts = np.round(rng.lognormal(3.5, 0.6, 60), 2) * np.repeat([1.0, 4.0], 30)
    requests = [tiny.transaction(10_000 + i, amount=float(a), when=tiny.watermark + dt.timedelta(hours=11, minutes=i))
                for i, a in enumerate(amounts)]
    with lab.load_model("fraud", root=tiny.root) as predictor:
        predictor.predict_many(requests)
    return tiny, views


def test_ledger_and_offline_windows_feed_compare(served_lab):
    tiny, views = served_lab
    config = load_config(tiny.root)
    spec = model_spec(get_plugin_manager(config), config, "fraud")
    day = tiny.watermark.date()
    live = ledger_window(config, spec, day, day)
    assert live.columns == [*spec.features, "score"] and live.height == 60
    assert live["TX_AMOUNT"].head(30).max() < live["TX_AMOUNT"].tail(30).min() * 1.5
    assert live["score"].is_between(0, 1).all()
    assert ledger_window(config, spec, day, day, version=tiny.model_version).height == 60
    with pytest.raises(LabError, match="holds no prediction of model 'fraud' with a request time on"):
        ledger_window(config, spec, day - dt.timedelta(days=2), day - dt.timedelta(days=1))
    pm = get_plugin_manager(config)
    offline = pm.hook.lab_offline_store(config=config)
    try:
        history = offline_window(offline, spec, day - dt.timedelta(days=3), day - dt.timedelta(days=1),
                                 views=list(views.values()))
        with pytest.raises(LabError, match=r"reads feature view\(s\) customer_spending, terminal_risk: pass them"):
            offline_window(offline, spec, day, day)
    finally:
        offline.close()
    assert history.columns == list(spec.features) and 400 < history.height < 600
    assert history.null_count().sum_horizontal().item() == 0
    # the live window's first half is ordinary traffic, its second half spends four times more
    calm = compare(history, live.head(30), ["TX_AMOUNT"])
    shifted = compare(history, live.tail(30), ["TX_AMOUNT"])
    assert calm.flagged == [] and shifted.flagged == ["TX_AMOUNT"]


PLUGIN = '''
import json
from pathlib import Path
import polars as pl
from lab import hookimpl
from lab.modelspec import ModelSpec, RequestField, RequestSchema

REQUEST = RequestSchema(
    title="Order",
    fields=(RequestField("ORDER_ID", "int", "the order"), RequestField("ORDERED_AT", "datetime", "when"),
            RequestField("SHOP_ID", "int", "the shop"), RequestField("BASKET", "float", "basket value"),
            RequestField("ITEMS", "int", "items")),
    id="ORDER_ID", timestamp="ORDERED_AT", entities=("SHOP_ID",),
    example={"ORDER_ID": 1, "ORDERED_AT": "2024-03-01T10:00:00", "SHOP_ID": 1, "BASKET": 20.0, "ITEMS": 2},
)

@hookimpl
def lab_model_specs(config):
    return [ModelSpec(name="orders", task="regression", label="MINUTES", source="orders",
                      features=("BASKET", "ITEMS", "DISTANCE"), views=(), request=REQUEST,
                      request_frame=lambda frame: frame, request_row=lambda request, rows: dict(request))]

@hookimpl
def lab_on_event(event):
    with (Path(__file__).parent / "events.log").open("a") as f:
        f.write(json.dumps({"name": event.name, **event.payload}) + "\\n")
'''


def _orders(n: int, start: dt.datetime, days: int, seed: int, *, basket_scale: float = 1.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "ORDER_ID": np.arange(n), "ORDERED_AT": [start + dt.timedelta(minutes=int(m)) for m in
                                                 np.sort(rng.integers(0, days * 24 * 60, n))],
        "SHOP_ID": rng.integers(1, 20, n), "BASKET": rng.gamma(3.0, 12.0, n) * basket_scale,
        "ITEMS": rng.poisson(3, n), "DISTANCE": rng.exponential(2.5, n), "MINUTES": rng.normal(30, 5, n),
    })


def test_the_drift_step_decides_natively_and_keeps_the_reference_sketch(tmp_path):
    root = tmp_path / "orders-lab"
    write_pyproject(root, 'model_name = "orders"\nplugins = ["orderslab"]\n\n[tool.lab.train]\n'
                          'train_start = "2024-03-01"\n')
    (root / "orderslab.py").write_text(textwrap.dedent(PLUGIN))
    (root / "data").mkdir()
    trainset = _orders(9_000, dt.datetime(2024, 3, 1), 21, seed=1)  # train, delay and test weeks
    trainset.write_parquet(root / "data/trainset.parquet")
    scores = _orders(1_500, dt.datetime(2024, 3, 22), 3, seed=2, basket_scale=1.3)
    scores.with_columns(score=pl.lit(0.5), model_version=pl.lit(1)).write_parquet(root / "data/scores.parquet")
    with Registry.open(root / "registry.db", project_root=root) as reg:
        run_id = reg.start_run(kind="pipeline")
    window = dict(train_start="2024-03-01", delta_train=7, delta_delay=7, delta_test=7)

    out = steps.drift(str(root), str(root / "runs" / run_id), **window)
    assert out["drifted"] == ["BASKET"] and out["columns"]["BASKET"]["drifted"] is True
    assert out["columns"]["BASKET"]["method"] == "ks+wasserstein"
    assert out["native"]["columns"]["BASKET"]["wasserstein"] > 0.2
    assert set(out["evidently"]) == {"BASKET", "ITEMS", "DISTANCE"}  # Evidently's page, shown not deciding
    assert (root / "data/drift.html").stat().st_size > 10_000
    written = json.loads((root / "data/drift.json").read_text())
    assert written["drifted"] == ["BASKET"] and written["native"]["exact"] is True
    with Registry.open(root / "registry.db", project_root=root) as reg:
        rows = {r["column"]: r for r in reg.list_drift(run_id=run_id)}
    assert set(rows) == {"BASKET", "ITEMS", "DISTANCE"} and rows["BASKET"]["drifted"] is True
    assert rows["BASKET"]["score"] == pytest.approx(out["native"]["columns"]["BASKET"]["effect_size"])
    assert not rows["ITEMS"]["drifted"] and rows["ITEMS"]["method"] == "ks+wasserstein"
    events = [json.loads(line) for line in (root / "events.log").read_text().splitlines()]
    assert [e for e in events if e["name"] == "drift.detected"] == [
        {"name": "drift.detected", "model": "orders", "columns": ["BASKET"]}]
    # the training window's sketch, beside the report, gives later checks the same verdict
    sketch = ReferenceSketch.load(root / "data/drift_reference.json")
    train_rows = trainset.filter(pl.col("ORDERED_AT") < dt.datetime(2024, 3, 8)).height
    assert sketch.meta == {"model": "orders", "window": "train 2024-03-01 +7d"} and sketch.rows == train_rows
    assert compare(sketch, scores.select("BASKET", "ITEMS", "DISTANCE")).flagged == ["BASKET"]

    # the page is optional: without it the native table is the page, the verdict the same
    shutil.rmtree(root / "runs" / run_id)
    plain = steps.drift(str(root), str(root / "runs" / run_id), html=False, **window)
    assert plain["drifted"] == ["BASKET"] and plain["evidently"] is None
    page = (root / "data/drift.html").read_text()
    assert "html = false" in page and "DRIFT: shift above threshold" in page
    with pytest.raises(ConfigError, match=r"unknown key\(s\) alhpa in \[tool.lab.drift\]"):
        steps.drift(str(root), str(root / "runs" / run_id), alhpa=0.1, **window)


def test_drift_config_is_a_frozen_dataclass_with_documented_defaults():
    config = DriftConfig()
    assert (config.alpha, config.numeric_effect, config.numeric_threshold, config.categorical_effect,
            config.categorical_threshold) == (0.05, "wasserstein", 0.1, "jensen_shannon", 0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.alpha = 0.1  # type: ignore[misc]
