"""Adaptive micro-batching: requests that arrive together are scored together.

When requests score on the event loop (``max_concurrency`` 0, the default), each one's
store reads and forward used to run the moment its handler reached them, one request at
a time. ``MicroBatcher.score`` instead queues the request and, at the end of the current
turn of the event loop (or after ``max_wait_s``, if set), scores everything queued by
then: one online-store query per feature view for the whole batch
(``FeatureAssembler.assemble_many``) and one forward for up to the model's
``invariant_batch_rows`` rows. Under one connection a batch is one request and nothing
waits; under many, the requests that arrived in the same turn share the work.

Adaptive: after ``SOLO_AFTER`` batches of one request in a row (one connection, or light
load), requests are scored at once, as before batching, without the extra turn of the
loop; every ``PROBE_EVERY``-th request is still queued, and a probe that finds company
(or any request that finds one queued) turns batching back on.

Every answer is exactly the one-at-a-time answer: the assembly is the same per request,
and the forward is batched only for a model that says a row scores the same alone or in
a batch (``invariant_batch_rows``; another model scores row by row). Anything that
raises in a batch (a store error, a bad feature, a model error) sends each of its
requests down the one-at-a-time path (``score_inline``), so each meets its own error
or fallback as before. Requests are grouped by the model that scores them (a flag routes
to several). Counters: ``batches``, ``requests``, ``largest``, ``fallbacks`` (batches
scored one by one after an error).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from plugins.litestar_serving.limits import score_inline


SOLO_AFTER = 8
"""Batches of one in a row after which requests are scored at once (no queueing)."""
PROBE_EVERY = 16
"""While scoring at once, every this many requests one is queued to see whether others come."""


class MicroBatcher:
    """Queues requests from the event loop and scores them in batches of at most
    ``max_batch``; ``max_wait_s`` (0: none) is how long a batch may wait for more once its
    first request is queued. Use from the event loop only."""

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.0):
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self._pending: list[tuple] = []
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._solo = 0  # batches of one in a row
        self._since_probe = 0
        self.at_once = False  # scoring each request at once (light load)
        self.counts = {"batches": 0, "requests": 0, "largest": 0, "fallbacks": 0}

    async def score(self, assembler: Any, model: Any, fields: dict, when: Any) -> tuple[Any, float]:
        """``(assembled, score)`` for one request, as ``score_inline`` gives it (raises its
        ``Unscored`` the same way), scored with the others queued in this turn."""
        if self.at_once and not self._pending:
            self._since_probe += 1
            if self._since_probe < PROBE_EVERY:
                self.counts["batches"] += 1
                self.counts["requests"] += 1
                self.counts["largest"] = max(self.counts["largest"], 1)
                return score_inline(lambda: assembler.assemble(fields, when),
                                    lambda a: float(model.predict(a.vector)[0]))
            self._since_probe = 0  # a probe: queued like any batch
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((assembler, model, fields, when, future))
        if len(self._pending) >= self.max_batch:
            self._run()
        elif self._handle is None:
            self._handle = (loop.call_later(self.max_wait_s, self._run) if self.max_wait_s
                            else loop.call_soon(self._run))
        return await future

    def _run(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        self.counts["batches"] += 1
        self.counts["requests"] += len(batch)
        self.counts["largest"] = max(self.counts["largest"], len(batch))
        self._solo = self._solo + 1 if len(batch) == 1 else 0
        self.at_once = self._solo >= SOLO_AFTER
        groups: dict[tuple[int, int], list[tuple]] = {}
        for item in batch:
            groups.setdefault((id(item[0]), id(item[1])), []).append(item)
        try:
            for items in groups.values():
                self._score_group(items)
        finally:  # whatever escaped (not an Exception), no request waits forever
            for item in batch:
                if not item[4].done():
                    item[4].set_exception(RuntimeError("the batch this request was in did not finish"))

    def _score_group(self, items: list[tuple]) -> None:
        assembler, model = items[0][0], items[0][1]
        live = [item for item in items if not item[4].done()]  # a request may have gone (cancelled)
        if not live:
            return
        if len(live) > 1:
            try:
                assembled = assembler.assemble_many([item[2] for item in live], [item[3] for item in live],
                                                    count=False)
                scores = _predict(model, [a.vector for a in assembled])
            except Exception:  # noqa: BLE001 - one by one below: each request meets its own error
                self.counts["fallbacks"] += 1
            else:
                for item, features, score in zip(live, assembled, scores):
                    assembler.count(features)
                    item[4].set_result((features, score))
                return
        for _, _, fields, when, future in live:
            try:
                future.set_result(score_inline(lambda: assembler.assemble(fields, when),
                                               lambda a: float(model.predict(a.vector)[0])))
            except Exception as exc:  # noqa: BLE001 - Unscored, or a bug: the request's own
                future.set_exception(exc)


def _predict(model: Any, vectors: list[np.ndarray]) -> list[float]:
    """One score per (1, n) vector: in batches of the model's ``invariant_batch_rows``
    (each row scoring as it would alone), else one row at a time."""
    rows = max(1, int(getattr(model, "invariant_batch_rows", 1) or 1))
    scores: list[float] = []
    for start in range(0, len(vectors), rows):
        chunk = vectors[start:start + rows]
        if len(chunk) == 1:
            scores.append(float(model.predict(chunk[0])[0]))
            continue
        out = model.predict(np.concatenate(chunk))
        if np.shape(out) != (len(chunk),):
            raise ValueError(f"the model returned shape {np.shape(out)} for {len(chunk)} rows")
        scores.extend(float(v) for v in out)
    return scores
