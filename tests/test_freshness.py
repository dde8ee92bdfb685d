"""Freshness as a contract: a view's objective (declared, or set in [tool.lab.freshness])
leaves its version alone; a request finding values older than it is a breach, counted
in /metrics with each view's age, recorded in the ledger (every prediction's ages), and
announced by one event per view a minute, not one per request; `lab features status`
shows each view's watermark, lag, objective and breach rate from the ledger."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import time

import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError
from lab.events import FEATURE_FRESHNESS_BREACHED
from lab.features.freshness import FreshnessWatch, breach_rate, ledger_ages
from lab.plugins import feature_views, get_plugin_manager
from lab.serving.ledger import read_predictions
from lab.serving.scoring import freshness
from lab.testing.stores import SPEND, T0
from plugins.fraud.testing import build_tiny_lab
from tests._helpers import Events
from tests.test_serving import open_client, wait_ready

HOUR = dt.timedelta(hours=1)


def test_the_objective_is_validated_and_leaves_the_version_alone():
    with_objective = dataclasses.replace(SPEND, freshness=HOUR)
    assert with_objective.version == SPEND.version and with_objective.freshness_s == 3600.0
    assert SPEND.freshness_s is None
    for bad in (dt.timedelta(0), -HOUR, 3600):
        with pytest.raises(ConfigError, match="freshness"):
            dataclasses.replace(SPEND, freshness=bad)


def test_a_breach_is_an_age_over_the_objective_or_no_materialization():
    view = dataclasses.replace(SPEND, freshness=HOUR)
    assert not freshness(view, T0, T0 + HOUR).breached  # exactly the objective: met
    assert freshness(view, T0, T0 + HOUR + dt.timedelta(seconds=1)).breached
    assert not freshness(view, T0, T0 - HOUR).breached  # back-dated: flagged as future, not as a breach
    assert freshness(view, None, T0).breached  # never materialized: nothing fresh to serve
    assert not freshness(SPEND, T0, T0 + 1000 * HOUR).breached  # no objective, no breach
    assert not freshness(SPEND, None, T0).breached


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_watch_counts_every_breach_and_announces_one_per_view_a_minute():
    view = dataclasses.replace(SPEND, freshness=HOUR)
    other = dataclasses.replace(SPEND, name="other", freshness=HOUR)
    sent, clock = [], Clock()
    watch = FreshnessWatch([view, other], lambda name, payload: sent.append((name, payload)), clock=clock)
    late = {view.name: freshness(view, T0, T0 + 2 * HOUR), other.name: freshness(other, T0, T0)}
    for _ in range(500):
        watch.observe(late)
        clock.now += 0.1  # 500 requests over about 50 seconds
    assert watch.counts() == {"spend": 500}
    assert len(sent) == 1
    name, payload = sent[0]
    assert name == FEATURE_FRESHNESS_BREACHED
    assert payload == {"view": "spend", "age_seconds": 7200.0, "objective_s": 3600.0,
                       "watermark": T0.isoformat(), "breaches": 1, "interval_s": 60.0}
    clock.now = 1060.0  # a minute after the first event
    watch.observe(late)
    assert len(sent) == 2 and sent[1][1]["breaches"] == 500  # the 499 unannounced, and this one
    watch.observe({other.name: freshness(other, T0, T0 + 3 * HOUR)})  # another view has its own minute
    assert [p["view"] for _, p in sent] == ["spend", "spend", "other"]


def test_an_observer_that_raises_does_not_fail_the_request():
    view = dataclasses.replace(SPEND, freshness=HOUR)

    def broken(name, payload):
        raise RuntimeError("webhook down")

    watch = FreshnessWatch([view], broken)
    watch.observe({view.name: freshness(view, T0, T0 + 2 * HOUR)})
    assert watch.counts() == {"spend": 1} and watch.events == 1


def test_breach_rate():
    assert breach_rate([10.0, 4000.0, None, 3600.0], 3600.0) == 0.5
    assert breach_rate([10.0], None) is None and breach_rate([], 60.0) is None


# -- the server, the ledger, /metrics, the events and `lab features status` ----------------


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("tiny-freshness"))


@pytest.fixture
def freshness_lab(tiny_template, tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(tiny_template.root, root)
    with open(root / "pyproject.toml", "a") as f:
        f.write('\n[tool.lab.freshness]\ncustomer_spending = "1h"\n')
    return dataclasses.replace(tiny_template, root=root)


def test_the_config_sets_an_objective_and_names_a_bad_one(freshness_lab):
    config = load_config(freshness_lab.root)
    views = feature_views(get_plugin_manager(config), config)
    assert views["customer_spending"].freshness == HOUR and views["terminal_risk"].freshness is None
    with open(freshness_lab.root / "pyproject.toml", "a") as f:
        f.write('nope = "1h"\n')
    config = load_config(freshness_lab.root)
    with pytest.raises(ConfigError, match="'nope'"):
        feature_views(get_plugin_manager(config), config)


def test_served_breaches_are_counted_recorded_announced_and_reported(freshness_lab, capsys):
    config = load_config(freshness_lab.root)
    pm = get_plugin_manager(config)
    events = Events()
    pm.register(events, name="events-recorder")
    fresh_at = freshness_lab.watermark + dt.timedelta(minutes=30)
    late_at = freshness_lab.watermark + 3 * HOUR
    with open_client(freshness_lab.root, pm) as c:
        assert wait_ready(c).status_code == 200
        for i in range(6):
            when = fresh_at if i < 2 else late_at
            answer = c.post("/predict", json=freshness_lab.transaction(i + 1, when=when))
            assert answer.status_code == 200
        assert answer.json()["feature_age_seconds"]["customer_spending"] == 3 * 3600.0
        metrics = c.get("/metrics").text
        deadline = time.monotonic() + 10
        while not events.seen and time.monotonic() < deadline:  # emitted on a thread of its own
            time.sleep(0.01)
    assert 'lab_feature_freshness_breaches_total{view="customer_spending"} 4.0' in metrics
    assert 'lab_feature_freshness_breaches_total{view="terminal_risk"} 0.0' in metrics
    assert 'lab_feature_age_seconds_count{view="customer_spending"} 6.0' in metrics
    assert 'lab_feature_age_seconds_bucket{le="3600.0",view="customer_spending"} 2.0' in metrics
    breaches = [e for e in events.seen if e.name == FEATURE_FRESHNESS_BREACHED]
    assert len(breaches) == 1 and breaches[0].payload["view"] == "customer_spending"
    assert breaches[0].payload["age_seconds"] == 3 * 3600.0 and breaches[0].payload["objective_s"] == 3600.0
    # every prediction's ages are in the ledger
    rows = read_predictions(config.ledger_path)
    assert [r["feature_ages"]["customer_spending"] for r in rows] == [1800.0] * 2 + [3 * 3600.0] * 4
    assert set(rows[0]["feature_ages"]) == {"customer_spending", "terminal_risk"}
    since = dt.datetime.now(dt.timezone.utc) - HOUR
    assert ledger_ages(config.ledger_path, since)["customer_spending"] == [1800.0] * 2 + [10800.0] * 4
    assert ledger_ages(config.ledger_path, since, model="other") == {}
    # and `lab features status` reports them
    capsys.readouterr()
    assert main(["--root", str(freshness_lab.root), "features", "status", "--json"]) == 0
    status = {r["view"]: r for r in json.loads(capsys.readouterr().out)}
    spending = status["customer_spending"]
    assert spending["freshness_s"] == 3600.0 and spending["requests"] == 6
    assert spending["breach_rate"] == pytest.approx(4 / 6) and spending["age_max_s"] == 10800.0
    assert spending["watermark"] == freshness_lab.watermark.isoformat()
    assert status["terminal_risk"]["breach_rate"] is None  # no objective
    assert main(["--root", str(freshness_lab.root), "features", "status"]) == 0
    table = capsys.readouterr().out
    assert "customer_spending" in table and "66.7%" in table and "1.0h" in table
    assert main(["--root", str(freshness_lab.root), "features", "status", "--window", "soon"]) != 0
    assert "--window 'soon' is not a duration" in capsys.readouterr().err
