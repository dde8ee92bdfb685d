"""The acceptance test of a shared registry (issue 14): 250 promote/rollback calls from 4
processes at once on one PostgreSQL registry leave a consistent alias history: every
event's ``from_version`` is the previous event's ``to_version``, the live alias is the
last event's ``to_version``, and every event a worker wrote is in the history exactly
once (none lost, none duplicated). The same on a SQLite file, which is cheap.

Each worker makes its share of the calls in a seeded random order: promote a random
version (None when it already is the champion: nothing written) or roll back (refused
with a LabError when there is nothing to roll back to: nothing written)."""

from __future__ import annotations

import json
import multiprocessing
import random
import time

import pytest

from lab.errors import LabError
from lab.registry import Registry
from tests._postgres import postgres_fixture

postgres = postgres_fixture(scope="module")

CALLS, WORKERS, VERSIONS, MODEL = 250, 4, 5, "churn"


def _worker(target: str, root: str, out: str, start, errors) -> None:
    index = int(out.rsplit("_", 1)[1].split(".")[0])
    rng = random.Random(index)
    share = CALLS // WORKERS + (1 if index < CALLS % WORKERS else 0)
    written, noop, refused = [], 0, 0
    try:
        with Registry.open(target, project_root=root) as reg:
            start.wait(timeout=30)
            began = time.perf_counter()
            for _ in range(share):
                if rng.random() < 0.5:
                    event = reg.promote(MODEL, rng.randint(1, VERSIONS), actor=f"w{index}", reason="load")
                else:
                    try:
                        event = reg.rollback(MODEL, actor=f"w{index}", reason="load")
                    except LabError as exc:
                        assert "nothing to roll back to" in str(exc), exc
                        refused += 1
                        continue
                if event is None:
                    noop += 1
                else:
                    written.append([event["id"], event["from_version"], event["to_version"]])
            elapsed = time.perf_counter() - began
        with open(out, "w") as fh:
            json.dump({"written": written, "noop": noop, "refused": refused, "calls": share, "s": elapsed}, fh)
    except Exception as exc:  # reported to the parent, which fails the test with it
        errors.put(f"worker {index}: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_promotions_and_rollbacks_leave_a_consistent_history(backend, postgres, tmp_path):
    target = postgres.new_database("concurrency") if backend == "postgresql" else str(tmp_path / "registry.db")
    with Registry.open(target, project_root=tmp_path) as reg:
        for _ in range(VERSIONS):
            reg.register_model(MODEL, run_id=None, flavor="tabular_mlp", artifact_path="runs/models/churn",
                               metrics={}, lineage={})
        first = reg.promote(MODEL, 1, reason="start")

    outs = [str(tmp_path / f"out_{i}.json") for i in range(WORKERS)]
    # Each process gets its own out file (tests._helpers.run_at_once gives all the same arguments).
    problems = []
    ctx = multiprocessing.get_context("spawn")
    start, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(target, str(tmp_path), out, start, errors)) for out in outs]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    for p in procs:
        p.join(timeout=120)
    while not errors.empty():
        problems.append(errors.get())
    codes = [p.exitcode for p in procs]
    assert problems == [] and codes == [0] * WORKERS

    results = [json.loads(open(out).read()) for out in outs]
    assert sum(r["calls"] for r in results) == CALLS
    assert all(len(r["written"]) + r["noop"] + r["refused"] == r["calls"] for r in results)
    written = [tuple(w) for r in results for w in r["written"]]

    with Registry.open(target, project_root=tmp_path) as reg:
        history = reg.alias_history(MODEL, "champion")
        live = reg.get_alias(MODEL, "champion").version
        audit = [e for e in reg.events(limit=100_000) if e["kind"].startswith("alias.")]
    assert history[0]["id"] == first["id"]
    for before, after in zip(history, history[1:]):
        assert after["from_version"] == before["to_version"], (before, after)
    assert live == history[-1]["to_version"]
    ids = [e["id"] for e in history[1:]]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(w[0] for w in written)  # none lost, none twice
    assert {(e["id"], e["from_version"], e["to_version"]) for e in history[1:]} == set(written)
    assert len(audit) == len(history)  # each move has its audit row, in the same transaction
    assert len(written) > CALLS // 4  # the race was real: most calls moved the alias
    seconds = max(r["s"] for r in results)
    print(f"\n{backend}: {CALLS} calls from {WORKERS} processes in {seconds:.2f} s "
          f"({CALLS / seconds:.0f} calls/s), {len(written)} alias events")
