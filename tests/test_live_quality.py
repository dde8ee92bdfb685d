"""Live quality of a served model with late labels: a real ledger file, labels that become
known a week after their events, the sequential test of degradation, repeated daily.

The lab is generic: a scoring model ("scorer", classification) and an arrival-time model
("eta", regression), declared by a project plugin, whose feature view says labels come
7 days after their events. Version 1 of the scorer serves three events in four from day
0; version 2 serves the fourth from day 10. From day 20 on, 30 % of version 1's labels are
flipped (the world changed under it); version 2's are not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import shutil
import sys
import textwrap

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.monitoring._quality_stats import cumulative_summaries, watch
from lab.monitoring.quality import QUALITY_DEGRADED, QualityConfig, QualityMonitor, live_quality
from lab.registry import Registry
from lab.serving.ledger import Ledger, PredictionRecord
from lab.training.metrics import average_precision, mae, rmse, roc_auc
from tests._helpers import run_lab
from tests.conftest import write_pyproject

DAY0 = dt.datetime(2024, 3, 1)
DAY = dt.timedelta(days=1)
DELAY = 7 * DAY
DAYS, PER_DAY = 40, 320
DECAY_DAY, FLIP_SHARE = 20, 0.3
V2_FROM = 10
PLUGIN = "live_quality_lab"

LAB_PLUGIN = '''
"""A test lab's declarations: one view whose labels come 7 days late, two models."""
import datetime as dt

from lab import hookimpl
from lab.features.views import FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema

EVENTS = []

ENTITY_DAILY = FeatureView(name="entity_daily", entity="ENTITY", source="events", timestamp="EVENT_TIME",
                           features=("X",), label_delay=dt.timedelta(days=7))
ORDERS_DAILY = FeatureView(name="orders_daily", entity="STORE", source="orders", timestamp="ORDER_TIME",
                           features=("LOAD",), label_delay=dt.timedelta(days=1))


def _schema(id_, time, entity):
    return RequestSchema(
        fields=(RequestField(id_, "int"), RequestField(time, "datetime"), RequestField(entity, "int")),
        id=id_, timestamp=time, entities=(entity,),
        example={id_: 1, time: "2024-03-01T00:00:00", entity: 1})


SCORER = ModelSpec(name="scorer", task="classification", label="OUTCOME", source="events", features=("X",),
                   views=("entity_daily",), request=_schema("EVENT_ID", "EVENT_TIME", "ENTITY"),
                   request_frame=lambda frame: frame, request_row=lambda request, rows: {"X": 0.0})
ETA = ModelSpec(name="eta", task="regression", label="MINUTES", source="orders", features=("LOAD",),
                views=("orders_daily",), request=_schema("ORDER_ID", "ORDER_TIME", "STORE"),
                request_frame=lambda frame: frame, request_row=lambda request, rows: {"LOAD": 0.0})


@hookimpl
def lab_feature_views(config):
    return [ENTITY_DAILY, ORDERS_DAILY]


@hookimpl
def lab_model_specs(config):
    return [SCORER, ETA]


@hookimpl
def lab_on_event(event):
    EVENTS.append(event)
'''


def _time(i: int) -> dt.datetime:
    """Event ``i`` happens on day ``i // PER_DAY``, spread over the day."""
    day, k = divmod(i, PER_DAY)
    return DAY0 + day * DAY + (k + 0.5) / PER_DAY * DAY


def simulate(seed: int = 7) -> pl.DataFrame:
    """One row per event: its version (None: not served), calibrated score, label (None: never
    labelled, 2 % of events) and time. From DECAY_DAY on, FLIP_SHARE of version 1's labels flip."""
    rng = np.random.default_rng(seed)
    n = DAYS * PER_DAY
    ids = np.arange(n)
    day = ids // PER_DAY
    version = np.where(ids % 4 == 0, np.where(day >= V2_FROM, 2, 0), 1)
    score = rng.beta(0.6, 0.6 / 0.1 - 0.6, n)  # about 10 % positives, calibrated
    label = (rng.random(n) < score).astype(float)
    flip = (version == 1) & (day >= DECAY_DAY) & (rng.random(n) < FLIP_SHARE)
    label[flip] = 1 - label[flip]
    label[rng.random(n) < 0.02] = np.nan
    return pl.DataFrame({"EVENT_ID": ids, "version": version, "score": score,
                         "OUTCOME": pl.Series(label, nan_to_null=True),
                         "EVENT_TIME": [_time(int(i)) for i in ids]}).filter(pl.col("version") > 0)


def write_ledger(path, events: pl.DataFrame, model: str = "scorer", id_: str = "EVENT_ID",
                 time: str = "EVENT_TIME") -> None:
    """The predictions through the real Ledger, requests as the server logs them."""
    with Ledger.open(path) as ledger:
        for row in events.iter_rows(named=True):
            request = {id_: row[id_], time: row[time].isoformat(), "ENTITY": row[id_] % 50}
            assert ledger.append(PredictionRecord(row[id_], model, row["version"], {"X": 0.0}, {},
                                                  row["score"], 1.0, request=request))


@pytest.fixture(scope="module")
def world():
    return simulate()


@pytest.fixture(scope="module")
def served(tmp_path_factory, world):
    """The lab folder: its plugin, the scorer's ledger, and the label table as Parquet
    (events never labelled are absent from it)."""
    root = tmp_path_factory.mktemp("quality-lab")
    write_pyproject(root, f'plugins = ["{PLUGIN}"]\n')
    (root / f"{PLUGIN}.py").write_text(textwrap.dedent(LAB_PLUGIN))
    write_ledger(root / "data" / "ledger.db", world)
    world.filter(pl.col("OUTCOME").is_not_null()).select(
        "EVENT_ID", pl.col("OUTCOME").cast(pl.Int64), "EVENT_TIME").write_parquet(root / "labels.parquet")
    return root


@pytest.fixture
def lab_copy(served, tmp_path):
    """A copy of the served lab whose registry a test may write."""
    return shutil.copytree(served, tmp_path / "lab")


def labelled_known(world, version, as_of, day=None):
    """The test's own selection: the version's rows whose label is due by ``as_of``."""
    rows = world.filter((pl.col("version") == version) & pl.col("OUTCOME").is_not_null()
                        & (pl.col("EVENT_TIME") + DELAY <= as_of) & (pl.col("EVENT_TIME") <= as_of))
    if day is not None:
        rows = rows.filter(pl.col("EVENT_TIME").dt.date() == (DAY0 + day * DAY).date())
    return rows


# -- the acceptance: a decay detected, on a known day ---------------------------------------

def test_decay_after_promotion_is_detected_once_and_on_a_bounded_day(served, tmp_path):
    """Daily checks from day 10 (the early baseline's labels are all due) to day 34. The
    decay starts on day 20; its first labels are due on day 27, all of day 20's by day 28."""
    lab = shutil.copytree(served, tmp_path / "lab")
    monitor = QualityMonitor(lab, "scorer", labels=lab / "labels.parquet", record=False)
    verdicts = {}
    for d in range(10, 35):
        result = monitor.check(DAY0 + d * DAY)
        verdicts[d] = {v: q.test for v, q in result.versions.items()}
    fired = [d for d in verdicts if verdicts[d][1].degraded]
    assert fired and fired == list(range(fired[0], 35))  # once degraded, stays degraded
    assert fired[0] == 28  # the first check that sees a whole day of decayed labels
    first = verdicts[28][1]
    assert first.detected_at == DAY0 + 28 * DAY
    # the live rows (after the 3 baseline days) it took: days 3-20 of version 1's labelled traffic
    decayed_rows = first.detected_after - verdicts[27][1].live_n
    assert 0 < decayed_rows <= 250  # one day of version 1's traffic, at most
    assert first.p_value <= first.alpha and first.ci_lower > 0
    # before the decay's labels were due, no alarm and a CS containing no excess
    assert verdicts[10][1].status == "no test"  # the baseline is due, the first live labels not yet
    assert all(verdicts[d][1].status == "ok" and verdicts[d][1].ci_lower <= 0 for d in range(11, 28))
    # version 2 never decayed: no alarm; its baseline is its own first days (from day 10)
    assert not any(verdicts[d][2].degraded for d in verdicts if 2 in verdicts[d])
    assert verdicts[12][2].status == "baseline pending"
    assert verdicts[34][2].status == "ok" and verdicts[34][2].baseline.startswith("early (2024-03-11")
    # the event was emitted once, for version 1, and is in the registry's audit log
    assert [e.payload["version"] for e in monitor.alerts] == [1]
    plugin = sys.modules[PLUGIN]
    mine = [e for e in plugin.EVENTS if e.name == QUALITY_DEGRADED and e.payload["as_of"].startswith("2024-03-29")]
    assert len(mine) == 1 and mine[0].payload["model"] == "scorer"
    assert mine[0].payload["alpha"] == 0.05 and mine[0].payload["excess_ci"][0] > 0
    with Registry.open(lab / "registry.db") as registry:
        assert [e["payload"]["version"] for e in registry.events(QUALITY_DEGRADED)] == [1]
    # another monitor (another process, another day) does not alert again
    again = QualityMonitor(lab, "scorer", labels=lab / "labels.parquet", record=False)
    assert again.check(DAY0 + 36 * DAY).degraded == [1] and again.alerts == []


# -- the acceptance: the false-alarm rate is at most alpha ---------------------------------

RUNS = 200
MC_TOLERANCE = 2 * math.sqrt(0.05 * 0.95 / RUNS)
"""Two Monte Carlo standard errors of a rate of 0.05 over RUNS replays (0.031)."""


@pytest.mark.parametrize("baseline", ["early", "known"])
def test_false_alarm_rate_of_repeated_daily_checks_is_at_most_alpha(baseline):
    """200 seeded replays of 42 days of daily checks without any decay, through the
    function a check uses (``watch``: weekly segments, each at its share of alpha): the
    share of replays that ever alarm is at most alpha plus two Monte Carlo standard
    errors. The early baseline is 3 days; a known baseline is the true mean loss (as a
    registry metric would give)."""
    alpha, per_day, base_days, days = 0.05, 240, 3, 42
    rng = np.random.default_rng(2024)
    n = per_day * (base_days + days)
    p = rng.beta(0.6, 0.6 / 0.1 - 0.6, (RUNS, n))
    y = (rng.random((RUNS, n)) < p).astype(float)
    true_mean = float(np.mean(p * (1 - p)))  # E[(p - y)^2] for calibrated scores
    live_day = np.repeat(np.arange(days), per_day)
    looks = np.arange(days)  # each day's check sees the labels due by then: one more day of rows

    def watched(losses, r):
        base = losses[:per_day * base_days]
        kwargs = dict(baseline_mean=float(base.mean()), baseline_var=float(base.var(ddof=1)),
                      baseline_n=base.size) if baseline == "early" else dict(baseline_mean=true_mean)
        return watch(losses[per_day * base_days:], live_day // 7, live_day, looks, alpha=alpha, **kwargs)

    alarms = rejected = 0
    for r in range(RUNS):
        w = watched((p[r] - y[r]) ** 2, r)  # the Brier score per row
        alarms += w.alarm[0] >= 0
        rejected += w.p_value <= alpha
    assert alarms / RUNS <= alpha + MC_TOLERANCE
    assert rejected / RUNS <= alpha + MC_TOLERANCE  # the two-sided test too
    # and not vacuous: with 30 % of labels flipped from live day 17, the first 20 replays alarm within 2 days
    flip = (np.repeat(np.arange(-base_days, days), per_day) >= 17) & (rng.random(n) < 0.3)
    for r in range(20):
        decayed = np.where(flip, 1 - y[r], y[r])
        assert 17 <= watched((p[r] - decayed) ** 2, r).alarm[0] <= 18


def test_cumulative_summaries_equal_the_plain_mean_and_variance():
    rng = np.random.default_rng(3)
    x = rng.gamma(0.3, 2.0, 500) + 1e6  # a large offset: the centred sums keep their precision
    n, mean, var = cumulative_summaries(x, np.array([0, 1, 2, 77, 500]))
    assert list(n) == [0, 1, 2, 77, 500] and math.isnan(mean[0]) and math.isnan(var[1])
    for k, at in ((2, 2), (3, 77), (4, 500)):
        assert mean[k] == pytest.approx(x[:at].mean(), rel=1e-14)
        assert var[k] == pytest.approx(x[:at].var(ddof=1), rel=1e-9)


# -- what is joined: the delay, versions, metrics -------------------------------------------

def test_labels_not_due_by_as_of_are_not_used_and_metrics_match(served, world):
    as_of = DAY0 + 15 * DAY + dt.timedelta(hours=6)
    result = live_quality(served, "scorer", served / "labels.parquet", as_of=as_of)
    assert result.label_delay == DELAY  # the model's view's label_delay
    v1 = result.versions[1]
    expected = labelled_known(world, 1, as_of)
    assert v1.n_labelled == expected.height  # events up to day 8, 06:00
    made = world.filter((pl.col("version") == 1) & (pl.col("EVENT_TIME") <= as_of))
    assert v1.n_predictions == made.height  # requests after as_of are not there yet
    assert v1.n_pending == made.filter(pl.col("OUTCOME").is_not_null()).height - expected.height
    assert v1.metrics["roc_auc"] == pytest.approx(roc_auc(expected["OUTCOME"], expected["score"]), abs=1e-12)
    # day 8: partly due (events before 06:00); day 9: nothing due, yet predictions counted
    by_day = {w.start: w for w in v1.windows}
    day8, day9 = by_day[DAY0 + 8 * DAY], by_day[DAY0 + 9 * DAY]
    rows = labelled_known(world, 1, as_of, day=8)
    assert 0 < day8.n_labelled == rows.height < day8.n_predictions
    assert day9.n_labelled == 0 and day9.n_predictions == 240 and day9.metrics["roc_auc"] is None
    assert day9.n_pending + day9.n_unlabelled - day9.n_pending == day9.n_predictions
    assert "no labelled prediction" in day9.note
    # a window's classification metrics, against lab.training.metrics and scikit-learn
    rows = labelled_known(world, 1, as_of, day=5)
    m = by_day[DAY0 + 5 * DAY].metrics
    y, s = rows["OUTCOME"].to_numpy(), rows["score"].to_numpy()
    assert m["roc_auc"] == pytest.approx(roc_auc(y, s), abs=1e-12) == pytest.approx(roc_auc_score(y, s))
    assert m["average_precision"] == pytest.approx(average_precision(y, s), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, s), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, s), abs=1e-9)
    k = max(1, round(0.01 * y.size))
    assert m["precision_at_k"] == pytest.approx(y[np.argsort(-s, kind="stable")[:k]].mean())
    # version 2 started on day 10: alone with versions=[2]
    assert set(result.versions) == {1, 2}
    assert set(live_quality(served, "scorer", served / "labels.parquet", as_of=DAY0 + 9 * DAY).versions) == {1}
    later = live_quality(served, "scorer", served / "labels.parquet", as_of=DAY0 + 30 * DAY, versions=[2])
    assert set(later.versions) == {2}
    v2 = later.versions[2]
    assert v2.first_request.date() == (DAY0 + V2_FROM * DAY).date()
    expected = labelled_known(world, 2, DAY0 + 30 * DAY)
    assert v2.n_labelled == expected.height
    assert v2.metrics["roc_auc"] == pytest.approx(roc_auc(expected["OUTCOME"], expected["score"]), abs=1e-12)


def test_the_boundary_is_inclusive_and_a_later_score_of_an_event_counts(served, world, tmp_path):
    event = world.filter((pl.col("version") == 1) & pl.col("OUTCOME").is_not_null()).row(100, named=True)
    due = event["EVENT_TIME"] + DELAY
    labels = pl.read_parquet(served / "labels.parquet")
    at = live_quality(served, "scorer", labels, as_of=due).versions[1].n_labelled
    before = live_quality(served, "scorer", labels, as_of=due - dt.timedelta(microseconds=1)).versions[1].n_labelled
    assert at == before + 1
    # the same event scored again by version 1: one labelled row, with the later score
    lab = shutil.copytree(served, tmp_path / "lab")
    rescore = world.filter(pl.col("EVENT_ID") == event["EVENT_ID"]).with_columns(score=pl.lit(0.999))
    write_ledger(lab / "data" / "ledger.db", rescore)
    q = live_quality(lab, "scorer", labels, as_of=due, window=DAY * 1000).versions[1]
    assert q.n_labelled == at and q.n_predictions == world.filter(
        (pl.col("version") == 1) & (pl.col("EVENT_TIME") <= due)).height


def test_early_signals_need_no_labels(served, tmp_path):
    """Before any label is due: the score distribution per window, the share above the
    threshold, its PSI against the version's first windows, and the latest window's
    drift by the native statistics (lab.monitoring.drift)."""
    result = live_quality(served, "scorer", served / "labels.parquet", as_of=DAY0 + 5 * DAY)
    q = result.versions[1]
    assert q.n_labelled == 0 and q.test.status == "baseline pending"
    assert all(w.signals["above_threshold"] is not None and w.signals["psi"] < 0.2 for w in q.windows)
    assert q.psi_flagged == ()
    drift = q.score_drift
    assert drift["window"] == DAY0 + 4 * DAY and not drift["flagged"] and drift["test"] == "ks"
    assert (drift["n_reference"], drift["n_current"]) == (720, 240)
    assert live_quality(served, "scorer", served / "labels.parquet", as_of=DAY0 + 2 * DAY).versions[1].score_drift \
        is None  # the latest window is one of the first three
    # a day whose scores rose (a broken feature, say) is flagged the same day, labels or not
    lab = shutil.copytree(served, tmp_path / "lab")
    day = pl.DataFrame({"EVENT_ID": np.arange(10**6, 10**6 + 240), "version": 1,
                        "score": np.random.default_rng(1).beta(2.0, 3.0, 240),
                        "EVENT_TIME": [DAY0 + DAYS * DAY + (k + 0.5) / 240 * DAY for k in range(240)]})
    write_ledger(lab / "data" / "ledger.db", day)
    q = live_quality(lab, "scorer", lab / "labels.parquet", as_of=DAY0 + (DAYS + 1) * DAY, versions=[1]).versions[1]
    assert q.score_drift["flagged"] and q.score_drift["window"] == DAY0 + DAYS * DAY
    assert q.windows[-1].signals["psi_flagged"] and q.windows[-1].n_labelled == 0
    assert "score drift of 2024-04-10 against the first windows: FLAGGED" in live_quality(
        lab, "scorer", lab / "labels.parquet", as_of=DAY0 + (DAYS + 1) * DAY, versions=[1]).table()
    shifted = QualityConfig(threshold=0.05, max_psi=0.0)
    q = live_quality(served, "scorer", served / "labels.parquet", as_of=DAY0 + 5 * DAY,
                     quality_config=shifted).versions[1]
    assert q.windows[0].signals["above_threshold"] > 0.3 and len(q.psi_flagged) >= 1


def test_a_regression_model_gets_mae_and_rmse(lab_copy):
    """Version 3 of "eta": minutes off by about 4 until day 6, then 12 (a new road)."""
    rng = np.random.default_rng(5)
    n, per_day = 1200, 100
    ids = np.arange(n)
    times = [DAY0 + dt.timedelta(days=float(i) / per_day) for i in ids]
    truth = rng.gamma(4.0, 8.0, n)
    error = np.where(ids >= 6 * per_day, 12.0, 4.0) * rng.choice([-1, 1], n) * rng.exponential(1.0, n)
    events = pl.DataFrame({"ORDER_ID": ids, "version": 3, "score": truth + error, "ORDER_TIME": times})
    write_ledger(lab_copy / "data" / "ledger.db", events, model="eta", id_="ORDER_ID", time="ORDER_TIME")
    labels = pl.DataFrame({"ORDER_ID": ids, "MINUTES": truth, "ORDER_TIME": times})
    settings = QualityConfig(baseline_windows=2, min_labelled=50)
    result = live_quality(lab_copy, "eta", labels, as_of=DAY0 + 13 * DAY, quality_config=settings)
    assert result.task == "regression" and result.label_delay == DAY  # the eta view's delay
    q = result.versions[3]
    assert q.n_labelled == 1200 and q.test.loss == "absolute_error"
    for w in q.windows:
        day = (w.start - DAY0).days
        y, p = truth[day * per_day:(day + 1) * per_day], (truth + error)[day * per_day:(day + 1) * per_day]
        assert w.metrics["mae"] == pytest.approx(mae(y, p), rel=1e-12)
        assert w.metrics["rmse"] == pytest.approx(rmse(y, p), rel=1e-12)
        assert w.signals["above_threshold"] is None
    assert q.test.degraded and q.test.detected_at == DAY0 + 8 * DAY  # day 6's labels were due on day 7
    # the scorer's predictions in the same ledger are not the eta's
    assert live_quality(lab_copy, "scorer", lab_copy / "labels.parquet", as_of=DAY0 + 13 * DAY).task \
        == "classification"


def test_registry_and_given_baselines(lab_copy, world):
    labels = lab_copy / "labels.parquet"
    with Registry.open(lab_copy / "registry.db") as registry:
        registry.register_model("scorer", run_id=None, flavor="test", artifact_path="x", metrics={"brier": 0.02},
                                lineage={})
    # a registry Brier far below the live one: degraded from the first looks with enough rows
    q = live_quality(lab_copy, "scorer", labels, as_of=DAY0 + 12 * DAY, baseline="registry", versions=[1]).versions[1]
    assert q.test.baseline == "registry" and q.test.baseline_mean == 0.02 and q.test.degraded
    # day 0's 240 labels (due by day 8) are not enough at this mixing scale, days 0 and 1 are
    assert q.test.detected_at == DAY0 + 9 * DAY and q.test.detected_after == 475
    # the true mean Brier: no alarm before the decay
    truth = float(world.filter(pl.col("version") == 1).select(pl.col("score") * (1 - pl.col("score"))).mean().item())
    q = live_quality(lab_copy, "scorer", labels, as_of=DAY0 + 26 * DAY, baseline={1: truth},
                     versions=[1]).versions[1]
    assert q.test.status == "ok" and q.test.baseline == "given" and q.test.ci_lower <= 0 <= q.test.ci_upper
    with pytest.raises(LabError, match="records no 'log_loss' in the registry.*baseline=\"early\""):
        live_quality(lab_copy, "scorer", labels, as_of=DAY0 + 12 * DAY, baseline="registry",
                     quality_config=QualityConfig(loss="log_loss"))
    with pytest.raises(LabError, match="baseline=\"registry\".*version 2"):
        live_quality(lab_copy, "scorer", labels, as_of=DAY0 + 30 * DAY, baseline="registry", versions=[2])
    with pytest.raises(LabError, match="gives no mean loss for version 1"):
        live_quality(lab_copy, "scorer", labels, as_of=DAY0 + 12 * DAY, baseline={2: 0.1})


def test_a_recorded_check_keeps_window_metrics_in_a_registry_run(lab_copy):
    monitor = QualityMonitor(lab_copy, "scorer", labels=lab_copy / "labels.parquet")
    result = monitor.check(DAY0 + 12 * DAY)
    with Registry.open(lab_copy / "registry.db") as registry:
        run = registry.get_run(result.run_id)
        assert run["kind"] == "live_quality" and run["status"] == "finished"
        assert run["params"]["as_of"] == "2024-03-13T00:00:00" and run["params"]["quality.alpha"] == 0.05
        history = registry.metric_history(result.run_id, "v1.roc_auc")
        labelled = [w for w in result.versions[1].windows if w.metrics["roc_auc"] is not None]
        assert [h["step"] for h in history] == [w.index for w in labelled]
        assert [h["value"] for h in history] == [w.metrics["roc_auc"] for w in labelled]
        assert labelled[0].index == (DAY0 - dt.datetime(1970, 1, 1)).days
        assert run["metrics"]["v1.quality_p_value"] == result.versions[1].test.p_value
        assert run["metrics"]["v1.quality_degraded"] == 0.0


def test_json_and_text(served):
    result = live_quality(served, "scorer", served / "labels.parquet", as_of=DAY0 + 30 * DAY)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["degraded"] == [1] and data["versions"]["1"]["test"]["degraded"] is True
    assert data["versions"]["1"]["test"]["detected_at"] == "2024-03-29T00:00:00"
    assert data["versions"]["2"]["windows"][0]["n_unlabelled"] >= 0 and data["label_delay_s"] == 7 * 86400
    text = result.table()
    assert "DEGRADED since 2024-03-29" in text and "version 2:" in text and "always-valid p" in text


def test_the_command(lab_copy, capsys):
    args = ["monitor", "quality", "--model", "scorer", "--labels", str(lab_copy / "labels.parquet")]
    assert run_lab(lab_copy, *args, "--as-of", "2024-03-20T00:00:00") == 0
    assert "version 1:" in capsys.readouterr().out
    out = lab_copy / "quality.json"
    assert run_lab(lab_copy, *args, "--as-of", "2024-03-31T00:00:00", "--json", "--out", str(out)) == 3
    assert json.loads(capsys.readouterr().out)["degraded"] == [1] == json.loads(out.read_text())["degraded"]
    with Registry.open(lab_copy / "registry.db") as registry:
        assert len(registry.list_runs(kind="live_quality")) == 2
    assert run_lab(lab_copy, *args, "--baseline", "nope") == 2
    assert "--baseline 'nope' must be early, registry or a mean loss" in capsys.readouterr().err
    # without --labels: the model's offline source ("events"), once it holds the labels
    assert run_lab(lab_copy, "monitor", "quality", "--as-of", "2024-03-31T00:00:00") == 2
    assert "declares 2 models (eta, scorer); set [tool.lab] model_name" in capsys.readouterr().err
    assert run_lab(lab_copy, "monitor", "quality", "--model", "scorer", "--as-of", "2024-03-31T00:00:00") == 2
    assert "the model's source 'events' cannot give them" in capsys.readouterr().err
    assert run_lab(lab_copy, "features", "load", "events", str(lab_copy / "labels.parquet")) == 0
    assert run_lab(lab_copy, "monitor", "quality", "--model", "scorer", "--as-of", "2024-03-31T00:00:00",
                   "--no-record", "--json") == 3
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["labels"] == "source 'events'"


# -- bad input ------------------------------------------------------------------------------

def test_bad_input_names_the_fix(served, tmp_path):
    labels = pl.read_parquet(served / "labels.parquet")
    as_of = DAY0 + 20 * DAY
    with pytest.raises(LabError, match="lack column.*EVENT_ID.*Give the model's event id EVENT_ID"):
        live_quality(served, "scorer", labels.drop("EVENT_ID"), as_of=as_of)
    with pytest.raises(LabError, match="lack column.*OUTCOME"):
        live_quality(served, "scorer", labels.drop("OUTCOME"), as_of=as_of)
    with pytest.raises(LabError, match="lack column.*EVENT_TIME.*plus the label delay"):
        live_quality(served, "scorer", labels.drop("EVENT_TIME"), as_of=as_of)
    with pytest.raises(LabError, match="must be 0 or 1"):
        live_quality(served, "scorer", labels.with_columns(OUTCOME=pl.lit(3)), as_of=as_of)
    with pytest.raises(ConfigError, match="no plugin declares model 'nobody'.*declared: eta, scorer"):
        live_quality(served, "nobody", labels, as_of=as_of)
    config = load_config(served)
    spec = sys.modules[PLUGIN].ETA
    with pytest.raises(LabError, match="holds no prediction of model 'eta' \\(it has: scorer\\)"):
        live_quality(config, spec, labels, as_of=as_of)
    with pytest.raises(LabError, match="version\\(s\\) 9 .*versions there: 1, 2"):
        live_quality(served, "scorer", labels, as_of=as_of, versions=[9])
    with pytest.raises(LabError, match="no prediction ledger"):
        live_quality(load_config(tmp_path), spec, labels, as_of=as_of)
    with pytest.raises(LabError, match="no labels file"):
        live_quality(served, "scorer", tmp_path / "none.parquet", as_of=as_of)
    with pytest.raises(ConfigError, match="window 'daily' is not a length of time"):
        live_quality(served, "scorer", labels, as_of=as_of, window="daily")
    with pytest.raises(ConfigError, match="loss 'absolute_error' does not fit a classification model"):
        live_quality(served, "scorer", labels, as_of=as_of, quality_config=QualityConfig(loss="absolute_error"))
    with pytest.raises(LabError, match="cannot read 'yesterday' as a time"):
        live_quality(served, "scorer", labels, as_of="yesterday")
    for bad, message in (({"alpha": 1.5}, "alpha must be between 0 and 1"),
                         ({"baseline": "last_week"}, "baseline must be \"early\" or \"registry\""),
                         ({"precision_k": 0}, "precision_k must be"), ({"label_delay": "a week"}, "label_delay")):
        with pytest.raises(ConfigError, match=message):
            QualityConfig(**bad)
    (tmp_path / "pyproject.toml").write_text('[tool.lab.quality]\nalpha = "low"\n')
    with pytest.raises(ConfigError, match="tool.lab.quality\\] alpha must be a number"):
        QualityConfig.from_config(load_config(tmp_path))
    assert dataclasses.replace(QualityConfig(), alpha=0.01).alpha == 0.01
