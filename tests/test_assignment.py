"""Sticky hash assignment: determinism, weights, ramps, layers, and unit-id checks.

Statistical checks use 100k units and fail only when p < 0.001: a correct hash fails
each one about once in a thousand seeds, and the units are fixed, so they never flake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from lab.errors import ConfigError, LabError, NotFound
from lab.experiments import Assigner, Experiment, Variant, assign, bucket_ranges, layer_bucket, variant_bucket
from tests.conftest import REPO

UNITS = range(100_000)
P_MIN = 0.001


def experiment(name="ranker", weights=(("control", 0.5), ("treatment", 0.5)), **fields) -> Experiment:
    fields.setdefault("status", "running")
    return Experiment(name, tuple(Variant(n, w) for n, w in weights), **fields)


def counts(assigner: Assigner, name: str, units=UNITS) -> Counter:
    return Counter(assigner.variant(name, u) for u in units)


# -- determinism and unit ids ---------------------------------------------------------

def test_buckets_are_pinned_so_an_upgrade_never_reshuffles_live_experiments():
    # If these change, every running experiment silently reassigns its units.
    assert [variant_bucket("ranker", u) for u in (42, "alice", 0, -7)] == [8960, 3238, 2851, 8094]
    assert [layer_bucket("checkout", u) for u in (42, "alice")] == [8662, 9253]


def test_int_and_its_decimal_string_are_the_same_unit():
    e = experiment()
    assert all(assign(e, i) == assign(e, str(i)) for i in range(2000))
    assert assign(e, np.int64(42)) == assign(e, 42)


SCRIPT = """
import json, sys
from lab.experiments import Experiment, Variant, assign
e = Experiment("ranker", (Variant("control", 0.7), Variant("a", 0.2), Variant("b", 0.1)),
               layer="search", layer_share=(1000, 9000), status="running")
print(json.dumps([assign(e, u) for u in range(1000)] + [assign(e, f"user-{u}") for u in range(1000)]))
"""


def test_assignment_is_sticky_across_processes_with_different_hash_seeds():
    outputs = []
    for seed in ("1", "2"):  # str hashing differs per PYTHONHASHSEED; ours must not
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, env=env,
                             check=True)
        outputs.append(json.loads(out.stdout))
    e = experiment(weights=(("control", 0.7), ("a", 0.2), ("b", 0.1)), layer="search", layer_share=(1000, 9000))
    here = [assign(e, u) for u in range(1000)] + [assign(e, f"user-{u}") for u in range(1000)]
    assert outputs[0] == outputs[1] == here
    assert {"control", "a", "b", None} == set(here)


@pytest.mark.parametrize("bad, type_name", [
    (3.0, "float"), (None, "NoneType"), (True, "bool"), (b"u1", "bytes"), (["u1"], "list"), ((1,), "tuple"),
])
def test_a_unit_id_that_is_not_str_or_int_is_refused_by_name(bad, type_name):
    assigner = Assigner([experiment()])
    for call in (lambda: assign(experiment(), bad), lambda: assigner.variant("ranker", bad),
                 lambda: assigner.payload("ranker", bad), lambda: assigner.assignments(bad)):
        with pytest.raises(LabError, match=rf"unit id must be a str or an int, got {type_name}.*pass"):
            call()


def test_an_empty_unit_id_is_refused():
    with pytest.raises(LabError, match="empty string"):
        Assigner([experiment()]).variant("ranker", "")


# -- weights --------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [
    (("control", 0.5), ("treatment", 0.5)),
    (("control", 0.5), ("a", 0.3), ("b", 0.2)),
    (("control", 0.9), ("treatment", 0.1)),
])
def test_allocation_matches_the_weights_within_a_chi_square_bound(weights):
    e = experiment(weights=weights)
    seen = counts(Assigner([e]), "ranker")
    observed = [seen[name] for name, _ in weights]
    expected = [w * len(UNITS) for _, w in weights]
    assert sum(observed) == len(UNITS)
    assert stats.chisquare(observed, expected).pvalue > P_MIN, (observed, expected)


def test_string_ids_are_allocated_by_weight_too():
    weights = (("control", 0.8), ("treatment", 0.2))
    seen = counts(Assigner([experiment(weights=weights)]), "ranker", [f"cust-{i:07d}" for i in UNITS])
    assert stats.chisquare([seen["control"], seen["treatment"]], [80_000, 20_000]).pvalue > P_MIN


def variant_buckets(e: Experiment) -> np.ndarray:
    """The variant bucket of every unit in UNITS under ``e``'s salt (computed once per salt)."""
    if e.salt not in _BUCKETS_OF:
        _BUCKETS_OF[e.salt] = np.array([variant_bucket(e.salt, u) for u in UNITS])
    return _BUCKETS_OF[e.salt]


_BUCKETS_OF: dict[str, np.ndarray] = {}


def arms(e: Experiment) -> np.ndarray:
    """The variant index (declaration order) of every unit in UNITS, from ``e.buckets``
    alone; for a full-share running experiment this is what ``assign`` gives."""
    owner = np.full(10_000, -1)
    for i, v in enumerate(e.variants):
        for start, end in e.buckets[v.name]:
            owner[start:end] = i
    assert (owner >= 0).all()
    return owner[variant_buckets(e)]


def test_arms_agrees_with_the_assigner():
    e = experiment(weights=(("control", 0.5), ("a", 0.3), ("b", 0.2))).with_weights(
        {"control": 0.2, "a": 0.35, "b": 0.45})
    names = [v.name for v in e.variants]
    assert [names[i] for i in arms(e)[:5000]] == [Assigner([e]).variant("ranker", u) for u in range(5000)]


def test_raising_treatment_from_10_to_20_percent_reassigns_no_treatment_unit():
    before = experiment(weights=(("control", 0.9), ("treatment", 0.1)))
    after = before.with_weights({"control": 0.8, "treatment": 0.2})
    old, new = Assigner([before]), Assigner([after])
    moved = Counter()
    for u in UNITS:
        was, now = old.variant("ranker", u), new.variant("ranker", u)
        assert not (was == "treatment" and now != "treatment"), f"unit {u} left treatment"
        if was != now:
            moved[(was, now)] += 1
    assert set(moved) == {("control", "treatment")}  # the only move is control -> treatment
    assert stats.binomtest(moved[("control", "treatment")], len(UNITS), 0.1).pvalue > P_MIN


def test_ramping_three_arms_moves_only_control_units_and_only_as_many_as_needed():
    before = experiment(weights=(("control", 0.8), ("a", 0.1), ("b", 0.1)))
    after = before.with_weights({"control": 0.6, "a": 0.2, "b": 0.2})
    was, now = arms(before), arms(after)
    assert (now[was == 1] == 1).all() and (now[was == 2] == 2).all()  # no treatment unit reassigned
    moved = was != now
    assert set(zip(was[moved], now[moved])) == {(0, 1), (0, 2)}
    assert stats.binomtest(int(moved.sum()), len(UNITS), 0.2).pvalue > P_MIN  # 20 % of units move, no more


def test_changing_an_earlier_treatment_leaves_the_later_ones_alone():
    # Laid out end to end, shrinking "a" would shift "b"'s range and reassign b's units.
    before = experiment(weights=(("control", 0.6), ("a", 0.2), ("b", 0.2)))
    after = before.with_weights({"control": 0.7, "a": 0.1, "b": 0.2})
    assert after.buckets["b"] == before.buckets["b"]
    was, now = arms(before), arms(after)
    moved = was != now
    assert set(zip(was[moved], now[moved])) == {(1, 0)}
    assert stats.binomtest(int(moved.sum()), len(UNITS), 0.1).pvalue > P_MIN


@pytest.mark.parametrize("seed", [1, 2])
def test_random_weight_changes_move_units_only_from_shrinking_to_growing_arms(seed):
    rng = np.random.default_rng(seed)
    k = 4
    names = ["control", "a", "b", "c"]
    basis_points = np.array([7000, 1000, 1000, 1000])
    e = experiment(weights=tuple(zip(names, basis_points / 10_000)))
    steps = 25
    was = arms(e)
    for _ in range(steps):
        changed = basis_points.copy()
        chosen = rng.choice(k, size=int(rng.integers(2, k + 1)), replace=False)  # these arms change
        changed[chosen] = rng.multinomial(basis_points[chosen].sum(), rng.dirichlet(np.ones(len(chosen))))
        if rng.random() < 0.2:  # now and then switch an arm off
            changed[chosen[0]] += changed[chosen[1]]
            changed[chosen[1]] = 0
        old, new = basis_points / 10_000, changed / 10_000
        e = e.with_weights(dict(zip(names, new.tolist())))
        basis_points = changed
        now = arms(e)
        moved = was != now
        assert (old[was[moved]] > new[was[moved]]).all(), "a unit left an arm that did not shrink"
        assert (new[now[moved]] > old[now[moved]]).all(), "a unit joined an arm that did not grow"
        for i in range(k):  # whole buckets: each arm owns exactly its weight's share
            assert sum(end - start for start, end in e.buckets[names[i]]) == round(new[i] * 10_000)
        observed = np.bincount(now, minlength=k)
        live = new > 0
        assert (observed[~live] == 0).all()
        was = now
        if live.sum() > 1:
            p = stats.chisquare(observed[live], new[live] / new[live].sum() * len(UNITS)).pvalue
            assert p > P_MIN / steps, (observed, new)


def test_a_new_experiment_lays_treatments_from_the_bottom_and_control_at_the_top():
    e = experiment(weights=(("control", 0.6), ("a", 0.25), ("b", 0.15), ("off", 0.0)))
    assert bucket_ranges(e) == {"control": ((4000, 10000),), "a": ((0, 2500),), "b": ((2500, 4000),), "off": ()}
    assert "off" not in counts(Assigner([e]), "ranker", range(20_000))


def test_weights_become_whole_buckets_by_largest_remainder():
    thirds = experiment(weights=(("control", 1 / 3), ("a", 1 / 3), ("b", 1 / 3)))
    assert {n: sum(e - s for s, e in r) for n, r in thirds.buckets.items()} == {"control": 3334, "a": 3333, "b": 3333}
    # 0.29 * 10000 is 2899.9999999999995 in floating point: still 2900 buckets
    e = experiment(weights=(("control", 0.71), ("t", 0.29)))
    assert bucket_ranges(e) == {"control": ((2900, 10000),), "t": ((0, 2900),)}


def test_a_variant_whose_weight_is_unchanged_keeps_exactly_its_buckets():
    e = experiment(weights=(("control", 0.5), ("a", 0.2), ("b", 0.3)))
    for weights in ({"control": 0.4, "a": 0.3, "b": 0.3}, {"control": 0.4, "a": 0.1, "b": 0.5},
                    {"control": 0.6, "a": 0.1, "b": 0.3}):
        changed = e.with_weights(weights)
        for v in e.variants:
            if weights[v.name] == v.weight:
                assert changed.buckets[v.name] == e.buckets[v.name]
        e = changed
    assert e.with_weights(e.weights) == e


@pytest.mark.parametrize("buckets, message", [
    ({"control": [[0, 10000]]}, "must map every variant"),
    ({"control": [[0, 5000]], "treatment": [[4000, 10000]]}, "owns 6000 buckets but its weight 0.5 asks for 5000"),
    ({"control": [[0, 5000]], "treatment": [[4999, 9999]]}, "cover 0-10000 once, without overlaps"),
    ({"control": [[0, 5000]], "treatment": [[5000, 10001]]}, r"0 <= start < end <= 10000"),
    ({"control": [[0, 5000]], "treatment": [["5000", 10000]]}, r"ranges \[start, end\)"),
])
def test_explicit_buckets_are_checked(buckets, message):
    with pytest.raises(ConfigError, match=message):
        experiment(buckets=buckets)
    assert experiment(buckets={"control": [[0, 2500], [7500, 10000]], "treatment": [[2500, 7500]]}).buckets == {
        "control": ((0, 2500), (7500, 10000)), "treatment": ((2500, 7500),)}


# -- status and layer share -----------------------------------------------------------

def test_a_draft_assigns_nobody_and_a_stopped_experiment_returns_control():
    draft, stopped = experiment(status="draft"), experiment(status="stopped")
    assert {assign(draft, u) for u in range(2000)} == {None}
    assert {assign(stopped, u) for u in range(2000)} == {"control"}
    partial = experiment(status="stopped", layer_share=(0, 5000))
    assert {assign(partial, u) for u in range(2000)} == {"control", None}  # outside its share: not in it


def test_an_experiment_named_like_its_layer_still_splits_its_share_by_weight():
    # Without distinct layer/variant hashes, every unit in share 0-5000 would land in
    # treatment's buckets 0-5000 too.
    e = experiment(name="checkout", layer="checkout", layer_share=(0, 5000))
    seen = counts(Assigner([e]), "checkout")
    assert stats.chisquare([seen[None], len(UNITS) - seen[None]]).pvalue > P_MIN
    assert stats.chisquare([seen["control"], seen["treatment"]]).pvalue > P_MIN


def test_experiments_of_one_layer_are_mutually_exclusive_and_cover_their_shares():
    shares = {"red": (0, 3000), "green": (3000, 7000), "blue": (7000, 10000)}
    assigner = Assigner([experiment(name=n, layer="checkout", layer_share=s) for n, s in shares.items()])
    per_experiment = Counter()
    for u in UNITS:
        inside = assigner.assignments(u)
        assert len(inside) == 1, f"unit {u} is in {inside}"
        per_experiment.update(inside.keys())
    expected = [(s[1] - s[0]) / 10_000 * len(UNITS) for s in shares.values()]
    assert stats.chisquare([per_experiment[n] for n in shares], expected).pvalue > P_MIN


def test_experiments_in_different_layers_are_assigned_independently():
    assigner = Assigner([
        experiment(name="ranker", layer="search"),
        experiment(name="button", layer="checkout", weights=(("control", 0.7), ("blue", 0.3))),
    ])
    table = np.zeros((2, 2))
    rows, cols = {"control": 0, "treatment": 1}, {"control": 0, "blue": 1}
    for u in UNITS:
        table[rows[assigner.variant("ranker", u)], cols[assigner.variant("button", u)]] += 1
    assert stats.chi2_contingency(table).pvalue > P_MIN, table


def test_assigner_refuses_overlapping_live_experiments_of_a_layer_but_not_stopped_ones():
    a = experiment(name="a", layer="l", layer_share=(0, 6000))
    b = experiment(name="b", layer="l", layer_share=(5000, 10000))
    with pytest.raises(ConfigError, match=r"overlap in layer 'l'; free ranges: none"):
        Assigner([a, b])
    Assigner([a.with_status("stopped"), b])  # a stopped experiment gives its share back
    with pytest.raises(ConfigError, match="more than once"):
        Assigner([b, b])


# -- the serving path ---------------------------------------------------------------

def test_assigner_agrees_with_assign_and_gives_the_variant_payload():
    e = Experiment("model_version", (Variant("v1", 0.75, {"model_version": 1}),
                                     Variant("v2", 0.25, {"model_version": 2})),
                   kind="flag", layer="serving", layer_share=(0, 8000), status="running")
    assigner = Assigner([e], version=7)
    assert assigner.version == 7 and "model_version" in assigner and assigner.names == ["model_version"]
    for u in range(3000):
        chosen = assigner.variant("model_version", u)
        assert chosen == assign(e, u)
        payload = assigner.payload("model_version", u)
        assert payload == (None if chosen is None else {"model_version": int(chosen[1])})
    inside = [u for u in range(50) if assigner.variant("model_version", u)]
    for u in inside:
        assigner.payload("model_version", u)["model_version"] = 99  # a fresh dict: the caller may mutate it
    assert {assigner.payload("model_version", u)["model_version"] for u in inside} == {1, 2}
    with pytest.raises(NotFound, match="no experiment 'nope' in this Assigner; it has: model_version"):
        assigner.variant("nope", 1)


def test_a_single_variant_flag_sends_everyone_in_its_share_to_it():
    flag = Experiment("kill_switch", (Variant("on", 1.0),), kind="flag", layer="ops", status="running")
    assert {assign(flag, u) for u in range(1000)} == {"on"}
