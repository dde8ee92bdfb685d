"""Thompson sampling: converges to the best arm, keeps every arm above its floor, reproducible, recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lab.errors import ConfigError
from lab.experiments.bandit import ThompsonBandit

ARMS = ("control", "b", "c")
RATES = {"control": 0.05, "b": 0.07, "c": 0.10}


def simulate(bandit: ThompsonBandit, rounds: int, units_per_round: int, seed: int) -> list[dict[str, float]]:
    """Run the bandit against Bernoulli arms: each round, traffic follows the allocation."""
    world = np.random.default_rng(seed)
    history = []
    for _ in range(rounds):
        weights = bandit.allocate(2_000)
        history.append(weights)
        units = world.multinomial(units_per_round, [weights[a] for a in bandit.arms])
        for arm, n in zip(bandit.arms, units):
            wins = int(world.binomial(n, RATES[arm]))
            bandit.update(arm, wins, int(n) - wins)
    return history


def test_allocation_converges_to_the_best_arm_and_respects_the_floor():
    bandit = ThompsonBandit(ARMS, floor=0.05, seed=7)
    history = simulate(bandit, rounds=30, units_per_round=2_000, seed=11)
    first, last = history[0], history[-1]
    assert first == pytest.approx({a: 1 / 3 for a in ARMS}, abs=0.03)  # no data: no favourite
    assert last["c"] > 0.85  # 0.10 beats 0.07 beats 0.05
    assert last["c"] == max(last.values())
    for weights in history:
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12)
        assert min(weights.values()) >= 0.05 - 1e-12
    # The weak arms are held at the floor, never below it, once the best is clear.
    assert last["control"] == pytest.approx(0.05, abs=0.01)


def test_floor_times_arms_bounds_the_best_arms_share():
    bandit = ThompsonBandit(["a", "b"], floor=0.2, seed=0)
    bandit.update("a", 0, 10_000)
    bandit.update("b", 5_000, 5_000)
    weights = bandit.allocate()
    assert weights == pytest.approx({"a": 0.2, "b": 0.8})


def test_choose_picks_arms_with_the_allocated_shares():
    bandit = ThompsonBandit(ARMS, floor=0.1, seed=3)
    bandit.update("control", 30, 970)
    bandit.update("b", 40, 960)
    bandit.update("c", 45, 955)
    expected = bandit.allocate(200_000)
    rng = np.random.default_rng(5)
    picks = [bandit.choose(rng) for _ in range(20_000)]
    for arm in ARMS:
        assert picks.count(arm) / len(picks) == pytest.approx(expected[arm], abs=0.015)


def test_same_seed_same_allocations_and_a_resumed_bandit_continues_identically():
    a = ThompsonBandit(ARMS, seed=42)
    b = ThompsonBandit(ARMS, seed=42)
    assert simulate(a, 5, 500, seed=1) == simulate(b, 5, 500, seed=1)
    saved = json.loads(json.dumps(a.state()))  # a state survives JSON
    resumed = ThompsonBandit.from_state(saved)
    assert resumed.posterior() == a.posterior()
    assert resumed.allocate() == a.allocate()
    assert resumed.choose() == a.choose()
    assert ThompsonBandit(ARMS, seed=1).allocate() != ThompsonBandit(ARMS, seed=2).allocate()


def test_posterior_starts_from_the_prior():
    bandit = ThompsonBandit(["a", "b"], prior_alpha=2, prior_beta=8)
    bandit.update("a", 3, 7)
    assert bandit.posterior() == {"a": (5.0, 15.0), "b": (2.0, 8.0)}


@pytest.mark.parametrize("kwargs, match", [
    ({"arms": ["a"]}, "at least two arms"),
    ({"arms": "ab"}, "list of variant names"),
    ({"arms": ["a", "a", "b"]}, "distinct; repeated: a"),
    ({"arms": ["a", ""]}, "non-empty strings"),
    ({"arms": ["a", "b", "c"], "floor": 0.4}, r"at most 1/3 = 0.3333"),
    ({"arms": ["a", "b"], "floor": -0.1}, r"floor is a share of traffic in \[0, 1\]"),
    ({"arms": ["a", "b"], "floor": True}, r"floor is a share of traffic"),
    ({"arms": ["a", "b"], "prior_alpha": 0}, "prior_alpha must be a positive number"),
])
def test_bad_arms_and_floors_are_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ThompsonBandit(**kwargs)


def test_bad_updates_are_rejected_and_change_nothing():
    bandit = ThompsonBandit(["a", "b"])
    with pytest.raises(ConfigError, match="no arm 'z'; the arms are a, b"):
        bandit.update("z", 1, 1)
    with pytest.raises(ConfigError, match="successes must be a whole number >= 0"):
        bandit.update("a", -1, 1)
    with pytest.raises(ConfigError, match="failures must be a whole number >= 0"):
        bandit.update("a", 1, 0.5)
    assert bandit.posterior() == {"a": (1.0, 1.0), "b": (1.0, 1.0)}
    with pytest.raises(ConfigError, match="n_draws must be at least 1"):
        bandit.allocate(0)
    with pytest.raises(ConfigError, match="not a saved ThompsonBandit state"):
        ThompsonBandit.from_state({"arms": ["a", "b"]})


# -- recording to a real registry file ---------------------------------------------------

@pytest.fixture
def store(tmp_path):
    from lab.experiments.store import ExperimentStore

    with ExperimentStore.open(tmp_path / "registry.db") as s:
        yield s


def three_arm_experiment(store, name="ranking"):
    from lab.experiments.model import Experiment, Variant

    store.create(Experiment(name, (Variant("control", 0.4), Variant("b", 0.3), Variant("c", 0.3))), actor="alice")
    return store.start(name, actor="alice")


def test_record_sets_the_weights_and_keeps_the_history_in_order(store):
    from lab.experiments.assignment import Assigner

    three_arm_experiment(store)
    bandit = ThompsonBandit(["c", "b", "control"], floor=0.05, seed=9)  # arm order need not match
    world = np.random.default_rng(2)
    written = []
    for _ in range(6):
        weights = bandit.record(store, "ranking", n_draws=2_000, actor="bandit-job")
        written.append(weights)
        assert list(weights) == ["control", "b", "c"]  # the experiment's order, control first
        for arm in ARMS:
            n = int(weights[arm] * 3_000)
            wins = int(world.binomial(n, RATES[arm]))
            bandit.update(arm, wins, n - wins)

    history = store.allocations("ranking")
    assert [h["weights"] for h in history] == written
    assert [h["source"] for h in history] == ["thompson"] * 6
    assert [h["actor"] for h in history] == ["bandit-job"] * 6
    assert [h["id"] for h in history] == sorted(h["id"] for h in history)
    assert store.get("ranking").weights == written[-1]
    assert written[-1]["c"] > written[0]["c"]
    changes = [a for a in store.audit("ranking") if a["action"] == "set_weights"]
    assert len(changes) == 6 and changes[-1]["new"] == written[-1]
    # one audit row per allocation: the weight change, written with its allocation row
    assert [a["action"] for a in store.audit("ranking")] == ["create", "start"] + ["set_weights"] * 6
    assert all(a["reason"] == "thompson allocation" and a["actor"] == "bandit-job" for a in changes)
    # Assignment follows the bandit: the served shares match the recorded weights.
    assigner = Assigner([store.get("ranking")])
    counts = {arm: 0 for arm in ARMS}
    for unit in range(20_000):
        counts[assigner.variant("ranking", unit)] += 1
    for arm in ARMS:
        assert counts[arm] / 20_000 == pytest.approx(written[-1][arm], abs=0.015)


def test_record_refuses_a_stopped_experiment_and_foreign_arms(store):
    from lab.errors import LabError

    three_arm_experiment(store)
    with pytest.raises(ConfigError, match=r"arms \(control, b\) are not the variants of 'ranking' \(control, b, c\)"):
        ThompsonBandit(["control", "b"]).record(store, "ranking")
    store.stop("ranking", actor="guardrail", reason="guardrail breached")
    audit = store.audit("ranking")
    with pytest.raises(LabError, match="is stopped; a bandit does not reallocate"):
        ThompsonBandit(ARMS).record(store, "ranking")
    assert store.allocations("ranking") == [] and store.audit("ranking") == audit
    assert store.get("ranking").weights == {"control": 1.0, "b": 0.0, "c": 0.0}
