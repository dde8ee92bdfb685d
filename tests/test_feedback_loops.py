"""Feedback loops: exploration, coverage, diversity and holdout share from a real ledger and
experiment store; the Thompson bandit's loop (outcomes counted once, allocation moved,
floors kept); the gauges on a real ServerMetrics' /metrics; bad input."""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import threading
import time

import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.experiments import Assigner, Experiment, ExperimentStore, Variant
from lab.experiments.bandit_loop import holdout_variants, loop_state, loop_updates, update_bandit
from lab.monitoring.feedback import (
    feedback_for,
    feedback_from_files,
    feedback_report,
    gini,
    normalized_entropy,
    write_feedback_summary,
)
from lab.serving.ledger import Ledger, PredictionRecord, read_predictions
from tests.conftest import write_pyproject

HOLDOUT = {"holdout": True}


def make_experiment(registry, name, weights, *, unit="user", holdout=None, start=True, layer=""):
    """Create (and start) an experiment whose variants have ``weights``; ``holdout`` names
    the variant declared ``{"holdout": true}``."""
    variants = tuple(Variant(n, w, HOLDOUT if n == holdout else {}) for n, w in weights.items())
    with ExperimentStore.open(registry) as store:
        store.create(Experiment(name, variants, unit=unit, layer=layer))
        if start:
            store.start(name)
        return store.get(name)


def write_rows(ledger_path, rows):
    """``rows``: dicts with event_id, variant, score, request and optionally at, fallback."""
    with Ledger.open(ledger_path) as ledger:
        for r in rows:
            ledger.append(PredictionRecord(
                r["event_id"], r.get("model", "ranker_model"), 1, {}, {}, r["score"], 1.0,
                request=r["request"], experiment=r["experiment"], variant=r["variant"], fallback=r.get("fallback"),
                **({"at": r["at"]} if "at" in r else {})))


# -- the report on a small case, by hand ------------------------------------------------------------

@pytest.fixture
def small_case(tmp_path):
    """Experiment "ranker" (unit "user", item field "slot"): control 0.45, treatment 0.45
    and a declared holdout 0.1, then a bandit allocation control 0.2, treatment 0.7.
    Ten ledger rows: four under the even split, six after the allocation, one of them a
    fallback; two served by the holdout."""
    registry, ledger = tmp_path / "registry.db", tmp_path / "ledger.db"
    make_experiment(registry, "ranker", {"control": 0.45, "treatment": 0.45, "holdout": 0.1}, holdout="holdout")
    time.sleep(0.002)
    with ExperimentStore.open(registry) as store:
        store.apply_allocation("ranker", {"control": 0.2, "treatment": 0.7, "holdout": 0.1}, source="thompson")
        audit = store.audit("ranker")
    started = next(r["at"] for r in audit if r["action"] == "start")
    moved = dt.datetime.fromisoformat(audit[-1]["at"])
    after = (moved + dt.timedelta(seconds=1)).isoformat()
    plan = [  # (user, slot, variant, score, phase, fallback)
        ("u1", "s1", "control", 0.05, started, None),
        ("u2", "s2", "treatment", 0.15, started, None),
        ("u3", "s3", "holdout", 0.50, started, None),
        ("u4", "s1", "control", 0.12, started, None),
        ("u5", "s2", "treatment", 0.95, after, None),
        ("u6", "s2", "treatment", 0.93, after, None),
        ("u7", "s1", "control", 0.55, after, None),
        ("u8", "s4", "holdout", 0.30, after, None),
        ("u1", "s1", "control", 0.11, after, None),
        ("u9", "s5", "treatment", 0.02, after, "model_timeout"),
    ]
    write_rows(ledger, [{"event_id": i, "variant": v, "score": s, "at": at, "fallback": fb, "experiment": "ranker",
                         "request": {"user": u, "slot": slot}} for i, (u, slot, v, s, at, fb) in enumerate(plan)])
    return registry, ledger


def test_exploration_coverage_diversity_and_holdout_match_the_hand_computed_values(small_case):
    registry, ledger = small_case
    [report] = feedback_from_files(ledger, registry, experiment="ranker", floor=0.1)
    assert (report.model, report.experiment, report.holdout) == ("ranker_model", "ranker", ("holdout",))
    assert (report.n_rows, report.n_fallback, report.n_holdout, report.n_decisions) == (10, 1, 2, 7)
    assert report.holdout_share == pytest.approx(2 / 10)
    assert report.declared_holdout_share == pytest.approx(0.1)
    # Even split: every decision is exploration (3). Then treatment is greedy: u7 and u1 on control (2).
    assert report.exploration_share == pytest.approx(5 / 7)
    assert report.expected_exploration_share == pytest.approx((3 + 4 * (1 - 0.7 / 0.9)) / 7)
    assert report.exploration_floor == pytest.approx(0.1 / 0.9)  # (2 arms - 1) * floor / (1 - holdout)
    assert report.at_floor is False
    # units: u1..u9 seen; u3, u8 (holdout) and u9 (fallback) never decided for by the model
    assert (report.units_seen, report.units_served, report.unit_coverage) == (9, 6, pytest.approx(6 / 9))
    # served variants: control u1, u4, u7, u1 = 4; treatment u2, u5, u6 = 3
    v = report.variants
    assert v.counts == {"control": 4, "treatment": 3} and v.categories == 2
    assert v.entropy == pytest.approx(-(4 / 7 * math.log(4 / 7) + 3 / 7 * math.log(3 / 7)) / math.log(2))
    assert v.gini == pytest.approx(2 * 1 / (2 * 2 * 7))  # |4-3| twice over 2 k^2 mean
    # score buckets of tenths: 0.05 0.15 0.12 0.95 0.93 0.55 0.11 -> buckets 0, 1, 1, 9, 9, 5, 1
    b = report.items
    assert b.counts == {"0": 1, "1": 3, "9": 2, "5": 1} and b.categories == 10
    assert report.item_coverage == pytest.approx(4 / 10)
    p = np.array([1, 3, 2, 1]) / 7
    assert b.entropy == pytest.approx(float(-(p * np.log(p)).sum() / math.log(10)))
    x = np.array([1, 3, 2, 1] + [0] * 6, dtype=float)
    assert b.gini == pytest.approx(float(np.abs(x[:, None] - x[None, :]).sum() / (2 * 10 ** 2 * x.mean())))

    # items named by a request field: s1..s5 seen, s1 and s2 decided on (4 and 3 times)
    [by_slot] = feedback_from_files(ledger, registry, experiment="ranker", item="slot")
    assert by_slot.items.counts == {"s1": 4, "s2": 3} and by_slot.items.categories == 5
    assert by_slot.item_coverage == pytest.approx(2 / 5)
    assert by_slot.exploration_floor is None  # no floor given and no bandit loop saved

    # Without the audit log, the weights served now are taken throughout: treatment greedy for all.
    with ExperimentStore.open(registry) as store:
        current = store.get("ranker")
    no_audit = feedback_report(read_predictions(ledger, include_fallbacks=True), experiment=current)
    assert no_audit.exploration_share == pytest.approx(4 / 7) and "no audit log" in no_audit.notes[0]

    d = report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert "exploration  71.4 %" in report.text() and "holdout      20.0 % (declared 10.0 %)" in report.text()


def test_entropy_and_gini_at_their_ends():
    assert normalized_entropy([5, 5, 5]) == pytest.approx(1.0) and gini([5, 5, 5]) == pytest.approx(0.0)
    assert normalized_entropy([9], k=3) == 0.0 and gini([9], k=3) == pytest.approx(2 / 3)
    assert normalized_entropy([]) is None and gini([0, 0]) is None


def test_a_model_without_experiment_is_greedy_and_the_summary_file_is_json(tmp_path):
    write_pyproject(tmp_path)
    config = load_config(tmp_path)
    write_rows(config.ledger_path, [{"event_id": i, "variant": None, "experiment": None, "score": (i + 0.5) / 10,
                                     "request": {"user": i % 3}} for i in range(10)])
    [report] = feedback_for(config, window=dt.timedelta(hours=1))
    assert report.experiment is None and report.exploration_share == 0.0 and report.holdout_share == 0.0
    assert report.items.counts == {str(i): 1 for i in range(10)} and report.items.entropy == pytest.approx(1.0)
    path, summary = write_feedback_summary(config, window=dt.timedelta(hours=1))
    assert path == config.root / "data" / "feedback.json"
    assert json.loads(path.read_text()) == summary and summary["reports"][0]["n_decisions"] == 10
    # a window that holds nothing reports nothing
    assert feedback_for(config, window=dt.timedelta(hours=1), as_of="2020-01-01T00:00:00") == []


# -- the bandit's loop ---------------------------------------------------------------------------------

RATES = {"control": 0.10, "b": 0.16, "holdout": 0.10}


class World:
    """Units arrive in rounds; each is served by its sticky variant under the weights in
    force, its prediction goes to the real ledger, its outcome (Bernoulli at its variant's
    rate) to the outcome table, known at once or (``late``) only in the next round."""

    def __init__(self, tmp_path, name, weights, *, holdout=None, seed=0):
        self.registry, self.ledger = tmp_path / "registry.db", tmp_path / "ledger.db"
        self.name = name
        make_experiment(self.registry, name, weights, holdout=holdout)
        self.rng = np.random.default_rng(seed)
        self.outcomes: dict[int, int | None] = {}
        self.held: dict[int, int] = {}
        self.next_id = 0

    def serve(self, n, *, late=0.0, at=None):
        with ExperimentStore.open(self.registry) as store:
            assigner = Assigner.from_store(store)
        rows = []
        for _ in range(n):
            event = self.next_id
            self.next_id += 1
            variant = assigner.variant(self.name, event)
            outcome = int(self.rng.random() < RATES[variant])
            if self.rng.random() < late:
                self.held[event] = outcome
                self.outcomes[event] = None
            else:
                self.outcomes[event] = outcome
            rows.append({"event_id": event, "variant": variant, "score": float(self.rng.random()),
                         "experiment": self.name, "request": {"user": event}, **({"at": at} if at else {})})
        write_rows(self.ledger, rows)
        return rows

    def release_late(self):
        self.outcomes.update(self.held)
        self.held = {}

    def table(self):
        return pl.DataFrame({"event": list(self.outcomes), "converted": list(self.outcomes.values())},
                            schema={"event": pl.Int64, "converted": pl.Int64})

    def update(self, **kwargs):
        return update_bandit(self.name, self.table(), registry_path=self.registry, ledger_path=self.ledger,
                             id_column="event", label_column="converted", **kwargs)

    def weights(self):
        with ExperimentStore.open(self.registry) as store:
            return store.get(self.name).weights


def test_the_loop_moves_traffic_to_the_better_arm_keeps_floors_and_counts_each_outcome_once(tmp_path):
    world = World(tmp_path, "offers", {"control": 0.45, "b": 0.45, "holdout": 0.1}, holdout="holdout", seed=3)
    history = []
    for round_ in range(8):
        world.release_late()
        world.serve(250, late=0.3)
        update = world.update(floor=0.05, seed=11)
        assert update.allocated and update.n_counted > 0
        weights = world.weights()
        history.append(weights)
        assert weights["holdout"] == pytest.approx(0.1)  # the bandit never moves the holdout
        assert min(weights["control"], weights["b"]) >= 0.05 - 1e-9  # nor an arm below its floor
        assert sum(weights.values()) == pytest.approx(1.0)
    # b (16 % against 10 %) gains traffic over the rounds, up to all the floor leaves it
    assert history[0]["b"] < 0.6 and history[-1]["b"] > 0.8 and history[-1]["b"] <= 0.85 + 1e-9
    assert np.mean([w["b"] for w in history[-3:]]) > np.mean([w["b"] for w in history[:3]]) + 0.1
    assert history[-1]["control"] == pytest.approx(0.05, abs=0.01)  # held at the floor

    # The same data again: nothing counted, posterior and weights untouched, no allocation written.
    state = loop_state(world.registry, "offers")
    with ExperimentStore.open(world.registry) as store:
        allocations = len(store.allocations("offers"))
    again = world.update()
    assert (again.n_counted, again.allocated) == (0, False)
    assert loop_state(world.registry, "offers")["posterior"] == state["posterior"] == again.posterior
    assert world.weights() == history[-1]
    with ExperimentStore.open(world.registry) as store:
        assert len(store.allocations("offers")) == allocations
    assert len(loop_updates(world.registry, "offers")) == 8

    # The outcomes held back come in later: counted once, and only they.
    late = {e: o for e, o in world.held.items()}
    world.release_late()
    before = loop_state(world.registry, "offers")["posterior"]
    latest = world.update()
    rows = {r["event_id"]: r["variant"] for r in read_predictions(world.ledger, experiment="offers")}
    for arm in ("control", "b"):
        mine = [o for e, o in late.items() if rows[e] == arm]
        assert latest.counted[arm] == {"successes": sum(mine), "failures": len(mine) - sum(mine)}
        assert latest.posterior[arm] == [before[arm][0] + sum(mine), before[arm][1] + len(mine) - sum(mine)]
    assert world.update().n_counted == 0
    # Every non-holdout event counted exactly once, in all.
    known = [e for e, o in world.outcomes.items() if o is not None and rows[e] != "holdout"]
    final = loop_state(world.registry, "offers")["posterior"]
    assert sum(a + b - 2 for a, b in final.values()) == len(known)
    with sqlite3.connect(world.registry) as conn:
        assert conn.execute("SELECT count(*) FROM bandit_counted WHERE experiment = 'offers'").fetchone()[0] == \
            len(known)


def test_outcomes_by_unit_count_once_when_due_and_expire_after_max_wait(tmp_path):
    registry, ledger = tmp_path / "registry.db", tmp_path / "ledger.db"
    make_experiment(registry, "units", {"control": 0.5, "b": 0.5})
    with ExperimentStore.open(registry) as store:
        arm = {u: Assigner.from_store(store).variant("units", u) for u in range(1, 7)}
    rows = [{"event_id": 10 * u + k, "variant": arm[u], "score": 0.5, "experiment": "units", "request": {"user": u}}
            for u in range(1, 6) for k in range(2 if u <= 2 else 1)]  # users 1 and 2 scored twice
    rows.append({"event_id": 60, "variant": arm[6], "score": 0.5, "experiment": "units", "request": {"user": 6},
                 "at": "2020-01-01T00:00:00+00:00"})  # long ago, and never an outcome
    write_rows(ledger, rows)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    outcomes = pl.DataFrame({"unit_id": [1, 2, 3, 4, 5], "value": [1, 0, 1, 0, 0],
                             "at": [now - dt.timedelta(days=2), now - dt.timedelta(hours=12)] + [now - dt.timedelta(days=3)] * 3})
    kwargs = {"registry_path": registry, "ledger_path": ledger, "id_column": "unit_id", "label_column": "value",
              "by": "unit", "time_column": "at", "label_delay": dt.timedelta(days=1), "seed": 0}
    first = update_bandit("units", outcomes, as_of=now, **kwargs)
    # units 1, 3, 4, 5 are due (time + 1 day <= now), each once; unit 2's is not yet; unit 6 expired
    assert (first.n_counted, first.pending, first.expired) == (4, 1, 0 + 1)
    by_arm = {a: sum(1 for u in (1, 3, 4, 5) if arm[u] == a) for a in ("control", "b")}
    assert {a: c["successes"] + c["failures"] for a, c in first.counted.items()} == by_arm
    later = update_bandit("units", outcomes, as_of=now + dt.timedelta(days=1), **kwargs)
    # unit 6's row is read again (unit 2's earlier one held the watermark), and is still expired
    assert (later.n_counted, later.pending, later.expired) == (1, 0, 1)
    assert later.counted[arm[2]] == {"successes": 0, "failures": 1}
    last = update_bandit("units", outcomes, as_of=now + dt.timedelta(days=2), **kwargs)
    assert (last.n_counted, last.rows_read, last.allocated) == (0, 0, False)  # all settled: nothing read
    with pytest.raises(LabError, match="joins outcomes by unit"):
        update_bandit("units", outcomes, **{**kwargs, "by": "event"})


def test_two_updates_at_once_count_each_outcome_once(tmp_path):
    world = World(tmp_path, "twice", {"control": 0.5, "b": 0.5}, seed=8)
    world.serve(400)
    results, errors = [], []

    def run():
        try:
            results.append(world.update(floor=0.05, seed=4))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(r.n_counted for r in results) == 400  # split between them any way, never both
    posterior = loop_state(world.registry, "twice")["posterior"]
    assert sum(a + b - 2 for a, b in posterior.values()) == 400
    assert world.update().n_counted == 0


def test_a_collapsed_loop_shows_low_diversity_and_exploration_at_the_floor(tmp_path):
    world = World(tmp_path, "feed", {"control": 0.5, "b": 0.5}, seed=5)
    # A healthy start: an even split is all exploration, the arms evenly served.
    early = world.serve(1000, at="2020-01-01T00:00:00+00:00")
    [fresh] = feedback_from_files(world.ledger, world.registry, experiment="feed", until="2020-01-02T00:00:00")
    assert fresh.exploration_share == 1.0 and fresh.variants.entropy > 0.99
    # A lopsided history makes the bandit put everything it may on b.
    world.outcomes.update({r["event_id"]: int(r["variant"] == "b") for r in early})
    update = world.update(floor=0.05, seed=1)
    assert world.weights() == pytest.approx({"control": 0.05, "b": 0.95}, abs=1e-3)
    world.serve(4000)
    [collapsed] = feedback_from_files(world.ledger, world.registry, experiment="feed", since="2020-01-02T00:00:00")
    assert collapsed.n_decisions == 4000 and collapsed.variants.counts["b"] > 0.93 * 4000
    assert collapsed.exploration_floor == pytest.approx(0.05)  # from the loop's saved floor
    assert collapsed.exploration_share == pytest.approx(collapsed.variants.counts["control"] / 4000)
    assert collapsed.exploration_share < 0.065 and collapsed.at_floor is True
    assert collapsed.variants.entropy < 0.35 and collapsed.variants.gini > 0.44
    assert collapsed.expected_exploration_share == pytest.approx(0.05, abs=1e-3)
    assert update.to_dict()["weights"] == world.weights()


# -- /metrics -------------------------------------------------------------------------------------------

def test_metrics_show_the_feedback_gauges_of_the_served_flag(small_case, tmp_path):
    from lab.experiments.routing import FlagRouter
    from lab.plugins import get_plugin_manager, model_spec
    from plugins.fraud.testing import PYPROJECT
    from plugins.litestar_serving.app import ServingState
    from plugins.litestar_serving.metrics import ServerMetrics

    registry, ledger_path = small_case
    [expected] = feedback_from_files(ledger_path, registry, experiment="ranker")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "pyproject.toml").write_text(PYPROJECT)
    config = load_config(tmp_path / "lab")
    spec = model_spec(get_plugin_manager(config), config)
    state = ServingState(model_name="ranker_model", alias="flag ranker", spec=spec)
    state.router = FlagRouter(registry, "ranker", "ranker_model", load_model=lambda version: None)
    metrics = ServerMetrics(state, ())
    assert "lab_feedback_holdout_share{" not in metrics.render().decode()  # no ledger yet: nothing computed
    state.ledger = Ledger.open(ledger_path)
    try:
        collector = metrics.feedback
        collector.refresh_s, collector.window = 0.0, dt.timedelta(days=3650)

        def scrape_until(done):
            deadline = time.monotonic() + 10
            while not done() and time.monotonic() < deadline:
                metrics.render()  # each scrape starts a refresh in the background when due
                time.sleep(0.02)
            return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}

        families = scrape_until(lambda: collector.reports)
        # Rows the server writes later are read once, by the next refresh, after the last row read.
        for i in range(3):
            state.ledger.append(PredictionRecord(100 + i, "ranker_model", 1, {}, {}, 0.5, 1.0, request={"user": "u1"},
                                                 experiment="ranker", variant="treatment"))
        state.ledger.flush()
        later = scrape_until(lambda: collector.reports and collector.reports[0].n_decisions == 10)
    finally:
        state.ledger.close()
    def value(name, **extra):
        [sample] = [s for s in families[name].samples
                    if s.labels == {"model": "ranker_model", "experiment": "ranker", **extra}]
        return sample.value

    assert value("lab_feedback_exploration_share") == pytest.approx(expected.exploration_share) == pytest.approx(5 / 7)
    assert value("lab_feedback_holdout_share") == pytest.approx(0.2)
    assert value("lab_feedback_unit_coverage") == pytest.approx(6 / 9)
    assert value("lab_feedback_item_coverage") == pytest.approx(0.4)
    assert value("lab_feedback_entropy", of="variants") == pytest.approx(expected.variants.entropy)
    assert value("lab_feedback_gini", of="score_buckets") == pytest.approx(expected.items.gini)
    assert value("lab_feedback_decisions") == 7
    [decisions] = later["lab_feedback_decisions"].samples
    assert decisions.value == 10 and len(collector._rows) == 13


# -- the command, and bad input ----------------------------------------------------------------------

def test_the_command_updates_and_reports_and_bad_input_names_the_fix(tmp_path, capsys):
    write_pyproject(tmp_path)
    config = load_config(tmp_path)
    make_experiment(config.registry_path, "promo", {"control": 0.5, "b": 0.5})
    write_rows(config.ledger_path, [{"event_id": i, "variant": "b" if i % 2 else "control", "score": 0.5,
                                     "experiment": "promo", "request": {"user": i}} for i in range(40)])
    outcomes = tmp_path / "outcomes.csv"
    pl.DataFrame({"event": list(range(40)), "ok": [i % 2 for i in range(40)]}).write_csv(outcomes)
    args = ["--root", str(tmp_path), "experiment", "bandit-update", "promo", "--outcomes", str(outcomes),
            "--id-column", "event", "--label-column", "ok", "--seed", "2"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["update"]["counted"] == {"control": {"successes": 0, "failures": 20},
                                        "b": {"successes": 20, "failures": 0}}
    assert out["update"]["weights"]["b"] == pytest.approx(0.95) and out["feedback"]["n_decisions"] == 40
    assert out["feedback"]["diversity"]["variants"]["entropy"] == pytest.approx(1.0)
    assert main(args) == 0 and "counted 0 new outcome(s)" in capsys.readouterr().out

    def error(argv) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    # a holdout declared from the command line, as docs/monitoring.md shows
    assert main(["--root", str(tmp_path), "experiment", "create", "held", "--variants", "control=0.45,b=0.45,holdout=0.1",
                 "--layer", "third", "--payload", "holdout:holdout=true"]) == 0
    with ExperimentStore.open(config.registry_path) as store:
        assert holdout_variants(store.get("held")) == ["holdout"]
    capsys.readouterr()

    assert "lab experiment status" in error(args[:4] + ["nope"] + args[5:])  # unknown experiment
    pl.DataFrame({"id": [1], "ok": [1]}).write_csv(tmp_path / "no_id.csv")
    message = error(args[:6] + [str(tmp_path / "no_id.csv")] + args[7:])
    assert "lack column(s) event" in message and "they have: id, ok" in message
    with pytest.raises(LabError, match="lab experiment status"):
        feedback_from_files(config.ledger_path, config.registry_path, experiment="nope")
    make_experiment(config.registry_path, "later", {"control": 0.5, "b": 0.5}, start=False, layer="other")
    with pytest.raises(LabError, match="lab experiment start later"):
        update_bandit("later", outcomes, registry_path=config.registry_path, ledger_path=config.ledger_path,
                      id_column="event", label_column="ok")
    with pytest.raises(ConfigError, match="at most 0.5"):
        update_bandit("promo", outcomes, registry_path=config.registry_path, ledger_path=config.ledger_path,
                      id_column="event", label_column="ok", floor=0.6)
    write_rows(config.ledger_path, [{"event_id": 100, "variant": "b", "score": 0.5, "experiment": "promo",
                                     "request": {"user": 100}}])
    pl.DataFrame({"event": [100], "ok": [3]}).write_csv(tmp_path / "counts.csv")
    with pytest.raises(LabError, match="must be 0 or 1"):
        update_bandit("promo", tmp_path / "counts.csv", registry_path=config.registry_path,
                      ledger_path=config.ledger_path, id_column="event", label_column="ok")
