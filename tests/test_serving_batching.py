"""Micro-batching (plugins/litestar_serving/batching.py): requests that arrive together are
scored together, and each answer is exactly what the request gets alone. Real tiny lab:
real SQLite online store, real model, real ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil

import httpx
import numpy as np
import pytest

from lab.config import load_config
from lab.plugins import feature_views, get_plugin_manager, model_flavor
from lab.registry import Registry
from lab.serving.ledger import read_predictions
from lab.serving.scoring import FeatureAssembler
from plugins.fraud.testing import build_tiny_lab
from plugins.litestar_serving import create_app
from plugins.litestar_serving.batching import MicroBatcher
from plugins.litestar_serving.limits import Unscored
from tests._helpers import started_app_client


@pytest.fixture(scope="module")
def lab_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("batching") / "lab")


@pytest.fixture
def labs(lab_template, tmp_path):
    """Two copies of the tiny lab (one ledger each)."""
    out = []
    for name in ("alone", "batched"):
        shutil.copytree(lab_template.root, tmp_path / name)
        out.append(dataclasses.replace(lab_template, root=tmp_path / name))
    return out


def mixed_requests(lab, n: int) -> list[dict]:
    """Known and unknown entities, fresh, stale (past the ttl) and back-dated requests."""
    out = []
    for i in range(n):
        when = lab.watermark + dt.timedelta(hours=1 + i)
        if i % 7 == 3:
            when = lab.watermark + dt.timedelta(days=400)  # past every view's ttl: stale
        if i % 7 == 5:
            when = lab.watermark - dt.timedelta(days=2)  # before the materialization: future
        customer = 987_654 if i % 5 == 4 else None
        out.append(lab.transaction(i, customer=customer, when=when, amount=10.0 + i))
    return out


def served_parts(config):
    pm = get_plugin_manager(config)
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        version = registry.get_alias("fraud", "champion")
    model = model_flavor(pm, version.flavor).load(config.root / version.artifact_path)
    views = feature_views(pm, config)
    store = pm.hook.lab_online_store(config=config)
    from lab.plugins import model_spec

    spec = model_spec(pm, config, None)
    assembler = FeatureAssembler(store, [views[v] for v in spec.views], spec.request_row, model.feature_names)
    return spec, model, assembler, store


def test_assembling_many_equals_assembling_each(lab_template):
    config = load_config(lab_template.root)
    spec, model, assembler, store = served_parts(config)
    try:
        requests = mixed_requests(lab_template, 40)
        for r in requests:
            r["TX_DATETIME"] = dt.datetime.fromisoformat(r["TX_DATETIME"])
        whens = [r["TX_DATETIME"] for r in requests]
        one_by_one = [assembler.assemble(r, w) for r, w in zip(requests, whens)]
        counted = assembler.counts()
        together = assembler.assemble_many(requests, whens)
        assert assembler.counts() == {k: 2 * v for k, v in counted.items()}  # counted as each would be
        assert counted["stale"] > 0 and counted["future"] > 0
        for a, b in zip(one_by_one, together):
            assert a.features == b.features and a.defaults == b.defaults and a.freshness == b.freshness
            assert np.array_equal(a.vector, b.vector) and a.vector.dtype == b.vector.dtype
        assert any(any(a.defaults.values()) for a in together)
        scores = model.predict(np.concatenate([a.vector for a in together]))
        assert np.array_equal(scores, np.concatenate([model.predict(a.vector) for a in one_by_one]))
    finally:
        store.close()


async def concurrently(app, bodies: list[dict]) -> list[httpx.Response]:
    async with started_app_client(app) as client:
        answers = await asyncio.gather(*(client.post("/predict", json=b, headers={"x-request-id": f"r{i}"})
                                         for i, b in enumerate(bodies)))
        return answers, (await client.get("/metrics")).text


def test_concurrent_requests_are_scored_together_and_answered_as_alone(labs):
    alone_lab, batched_lab = labs
    bodies = mixed_requests(batched_lab, 48)
    alone_app = create_app(load_config(alone_lab.root), max_batch=1)
    batched_app = create_app(load_config(batched_lab.root))
    assert alone_app.state.serving.batcher is None
    alone, alone_metrics = asyncio.run(concurrently(alone_app, bodies))
    batched, metrics = asyncio.run(concurrently(batched_app, bodies))
    counts = batched_app.state.serving.batcher.counts
    assert counts["largest"] > 1 and counts["batches"] < len(bodies), counts  # they did share
    assert counts["requests"] == len(bodies) and counts["fallbacks"] == 0
    assert f"lab_batches_total {float(counts['batches'])}" in metrics
    assert f"lab_batched_requests_total {float(len(bodies))}" in metrics
    assert "lab_batches_total" not in alone_metrics
    for a, b in zip(alone, batched):
        assert a.status_code == b.status_code == 200
        one, other = a.json(), b.json()
        one.pop("latency_ms"), other.pop("latency_ms")
        assert one == other
    rows = []
    for lab in labs:
        ledger = [dict(r) for r in read_predictions(lab.root / "data" / "ledger.db")]
        for row in ledger:
            row.pop("at"), row.pop("latency_ms")
        rows.append(sorted(ledger, key=lambda r: r["request_id"]))
    assert len(rows[0]) == len(bodies) and rows[0] == rows[1]


class FailsInBatches:
    """A model of the ScoringModel protocol that cannot score more than one row at a time."""

    invariant_batch_rows = 64

    def __init__(self, model):
        self.model, self.feature_names, self.task = model, model.feature_names, model.task

    def predict(self, x):
        if len(x) > 1:
            raise RuntimeError("one row at a time, please")
        return self.model.predict(x)


def test_a_batch_that_fails_is_scored_one_by_one(lab_template):
    config = load_config(lab_template.root)
    spec, model, assembler, store = served_parts(config)
    try:
        requests = mixed_requests(lab_template, 6)
        for r in requests:
            r["TX_DATETIME"] = dt.datetime.fromisoformat(r["TX_DATETIME"])
        picky = FailsInBatches(model)
        batcher = MicroBatcher(max_batch=64)

        broken = {k: v for k, v in requests[0].items() if k != "TERMINAL_ID"}  # the store cannot key it

        async def run():
            return await asyncio.gather(*(batcher.score(assembler, picky, r, r["TX_DATETIME"]) for r in requests),
                                        batcher.score(assembler, picky, broken, broken["TX_DATETIME"]),
                                        return_exceptions=True)

        before = assembler.counts()
        results = asyncio.run(run())
        batched = {k: v - before[k] for k, v in assembler.counts().items()}
        assert batcher.counts["fallbacks"] == 1 and batcher.counts["largest"] == 7
        before = assembler.counts()
        for r, (assembled, score) in zip(requests, results[:6]):
            alone = assembler.assemble(r, r["TX_DATETIME"])
            assert score == float(model.predict(alone.vector)[0]) and assembled.features == alone.features
        assert batched == {k: v - before[k] for k, v in assembler.counts().items()}  # counted once, as alone
        # the request the store cannot key met its own error, as it would alone
        assert isinstance(results[6], Unscored) and results[6].reason == "store_error"
    finally:
        store.close()


def test_alone_the_batcher_scores_at_once_and_batches_again_when_requests_come_together(lab_template):
    from plugins.litestar_serving.batching import PROBE_EVERY, SOLO_AFTER

    config = load_config(lab_template.root)
    spec, model, assembler, store = served_parts(config)
    try:
        requests = mixed_requests(lab_template, PROBE_EVERY + 4)
        for r in requests:
            r["TX_DATETIME"] = dt.datetime.fromisoformat(r["TX_DATETIME"])
        batcher = MicroBatcher()
        expected = [float(model.predict(assembler.assemble(r, r["TX_DATETIME"]).vector)[0]) for r in requests]

        async def one_at_a_time(rows):
            return [(await batcher.score(assembler, model, r, r["TX_DATETIME"]))[1] for r in rows]

        async def together(rows):
            return [s for _, s in await asyncio.gather(*(batcher.score(assembler, model, r, r["TX_DATETIME"])
                                                         for r in rows))]

        assert asyncio.run(one_at_a_time(requests[:SOLO_AFTER + 2])) == expected[:SOLO_AFTER + 2]
        assert batcher.at_once and batcher.counts["largest"] == 1  # light load: no extra turn of the loop
        # Requests arrive together: scored at once until the probe is queued; those after it join it.
        assert asyncio.run(together(requests)) == expected
        assert not batcher.at_once and 1 < batcher.counts["largest"] < len(requests)
        assert asyncio.run(together(requests)) == expected  # batching from the first request again
        assert batcher.counts["largest"] == len(requests)
    finally:
        store.close()
