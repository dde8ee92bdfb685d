"""Bounded scoring for the model server: at most N requests scoring at once, at most Q waiting.

``ScoringLimit(max_concurrency, max_queue)`` owns a pool of ``max_concurrency`` worker
threads. A request takes a slot (``acquire``), scores on the pool (``run``) and gives the
slot back when the work it started has finished, not when the request gives up on it:
a model or store that hangs keeps its slot, so hung work can never pile up past N
threads. A request that finds every slot taken waits in a first-come queue of at most
``max_queue`` requests; one that finds the queue full is refused at once with ``Busy``,
which the server answers with 503 and a ``Retry-After`` header.

With ``max_concurrency`` 0 there is no pool: the server scores on the event loop, one
request at a time by construction (the fastest path for a model that answers in well
under a millisecond), and nothing waits in a queue of ours.

On the pool, ``score_bounded`` also enforces the latency budget and the timeouts
(``Budget``): the store phase (feature assembly) and the model phase (predict) each wait
at most their timeout and never past the budget; a phase that times out or raises ends
as ``Unscored`` with a reason, which the server answers with the model's declared
fallback, flagged (see docs/serving.md, "Bounded and resilient").

Everything except the pool's threads runs on the event loop; no lock is needed.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from lab.errors import ConfigError, LabError


class Busy(Exception):
    """Every scoring slot is taken and the queue is full: answer 503 with Retry-After."""


def check_limits(max_concurrency: Any, max_queue: Any) -> None:
    """``ConfigError`` naming the key and the fix for a limit that is not a whole number >= 0."""
    for name, value in (("max_concurrency", max_concurrency), ("max_queue", max_queue)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"[tool.lab.serve] {name} must be a whole number, 0 or more (--{name.replace('_', '-')}),"
                              f" got {value!r}")


class ScoringLimit:
    """At most ``max_concurrency`` requests scoring at once on a pool of that many threads,
    at most ``max_queue`` waiting for a slot. ``scoring``, ``waiting`` and ``rejected``
    are live counts (for ``/metrics``). Use from the event loop only."""

    def __init__(self, max_concurrency: int, max_queue: int):
        check_limits(max_concurrency, max_queue)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.scoring = 0
        self.rejected = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._executor = (ThreadPoolExecutor(max_concurrency, thread_name_prefix="lab-score")
                          if max_concurrency else None)
        self._seconds = 0.0  # an average of recent scoring times, for Retry-After
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pooled(self) -> bool:
        """Whether requests score on the pool (False: inline on the event loop)."""
        return self._executor is not None

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def retry_after_s(self) -> int:
        """Whole seconds a refused client should wait: the time the queue ahead of it takes
        to drain at the recent pace, at least 1."""
        drain = self._seconds * (self.max_queue + self.max_concurrency) / max(self.max_concurrency, 1)
        return max(1, math.ceil(drain))

    def busy_detail(self) -> str:
        return (f"server busy: {self.scoring} request(s) scoring and {self.waiting} waiting, the most it takes "
                f"([tool.lab.serve] max_concurrency={self.max_concurrency}, max_queue={self.max_queue}); "
                f"retry after {self.retry_after_s()} s")

    async def acquire(self, timeout: float | None = None) -> None:
        """Take a scoring slot, waiting in the queue if need be. Raises ``Busy`` when the
        queue is full, ``TimeoutError`` when no slot came within ``timeout`` seconds."""
        if self.scoring < self.max_concurrency and not any(not w.done() for w in self._waiters):
            self.scoring += 1
            return
        if self.waiting >= self.max_queue:
            self.rejected += 1
            raise Busy(self.busy_detail())
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # the slot was handed over as we gave up
                self.release()
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def release(self) -> None:
        """Give a slot back: to the first request still waiting, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; ``scoring`` stays the same
                return
        self.scoring -= 1

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Start ``fn(*args)`` on the pool for a request holding a slot; the slot is released
        when ``fn`` returns or raises, even if the caller stopped waiting for it."""
        loop = asyncio.get_running_loop()
        started = loop.time()

        def done(_):
            try:
                loop.call_soon_threadsafe(self._finished, loop.time() - started)
            except RuntimeError:  # the loop is closed: the server has stopped
                pass

        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # shut down between the slot and the work
            self.release()
            raise LabError("the server is shutting down") from None
        future.add_done_callback(done)
        return asyncio.wrap_future(future)

    def _finished(self, seconds: float) -> None:
        self._seconds = 0.9 * self._seconds + 0.1 * seconds if self._seconds else seconds
        self.release()

    def close(self) -> None:
        """Stop taking work; threads still running finish on their own (never waited for:
        a hung model must not hold up shutdown)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


# -- the latency budget and the timeouts -------------------------------------------------


class Unscored(Exception):
    """A request could not be scored in time or at all. ``reason`` is what the response,
    the ledger and ``lab_fallbacks_total`` name (``store_timeout``, ``model_timeout``,
    ``store_error``, ``model_error``, ``queue_timeout``, ``store_circuit_open``,
    ``model_circuit_open``); ``dependency`` is ``store``,
    ``model`` or None (waiting for a slot); ``assembled`` the features when the store
    phase ended; ``error`` the exception a dependency raised (None for a timeout)."""

    def __init__(self, reason: str, dependency: str | None, detail: str, assembled: Any = None,
                 error: BaseException | None = None, retry_after: int | None = None):
        super().__init__(detail)
        self.reason, self.dependency, self.detail = reason, dependency, detail
        self.assembled, self.error, self.retry_after = assembled, error, retry_after


@dataclass(frozen=True)
class Budget:
    """``[tool.lab.serve]`` ``latency_budget_ms`` (the whole request), ``store_timeout_ms``
    (its online store reads) and ``model_timeout_ms`` (its predict); 0: not bounded."""

    latency_ms: float = 0.0
    store_timeout_ms: float = 0.0
    model_timeout_ms: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("latency_budget_ms", self.latency_ms), ("store_timeout_ms", self.store_timeout_ms),
                            ("model_timeout_ms", self.model_timeout_ms)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(f"[tool.lab.serve] {name} must be a number of milliseconds, 0 (none) or more, "
                                  f"got {value!r}")

    @property
    def bounded(self) -> bool:
        return bool(self.latency_ms or self.store_timeout_ms or self.model_timeout_ms)


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _retrieve(future: asyncio.Future) -> None:
    # Work nobody waits for any more (timed out): read its outcome so asyncio does not
    # report an exception that was never retrieved.
    if not future.cancelled():
        future.exception()


class _Failed(Exception):
    def __init__(self, dependency: str, error: BaseException, assembled: Any = None):
        super().__init__(str(error))
        self.dependency, self.error, self.assembled = dependency, error, assembled


async def score_bounded(limit: ScoringLimit, budget: Budget, started: float,
                        assemble: Callable[[], Any], predict: Callable[[Any], float]) -> tuple[Any, float]:
    """``(assembled, score)`` of one request, scored on ``limit``'s pool: ``assemble()``
    reads the stores, ``predict(assembled)`` runs the model. Each phase waits at most its
    timeout and never past ``started`` (a ``time.perf_counter()``) plus the latency
    budget. Raises ``Busy`` (queue full) or ``Unscored`` (a timeout, or a phase raised);
    work that timed out runs on and keeps its slot until it ends."""
    clock = time.perf_counter
    deadline = started + budget.latency_ms / 1000 if budget.latency_ms else None

    def wait_for(cap_ms: float, setting: str = "") -> tuple[float | None, str]:
        """Seconds this phase may still wait, and which setting bounds it."""
        cap = cap_ms / 1000 if cap_ms else None
        rest = deadline - clock() if deadline is not None else None
        if rest is not None and (cap is None or rest < cap):
            return max(rest, 0.0), f"the rest of the latency budget ([tool.lab.serve] latency_budget_ms={budget.latency_ms:g})"
        return cap, f"[tool.lab.serve] {setting}={cap_ms:g}"

    seconds, bound = wait_for(0.0)
    try:
        await limit.acquire(timeout=seconds)
    except TimeoutError:
        raise Unscored("queue_timeout", None, f"no scoring slot came free within {bound}") from None
    loop = asyncio.get_running_loop()
    stored = loop.create_future()

    def work():
        try:
            assembled = assemble()
        except Exception as exc:  # noqa: BLE001 - every store failure is the store's, whatever its type
            raise _Failed("store", exc) from exc
        loop.call_soon_threadsafe(_settle, stored, assembled)
        try:
            return assembled, predict(assembled)
        except Exception as exc:  # noqa: BLE001
            raise _Failed("model", exc, assembled) from exc

    running = limit.run(work)
    running.add_done_callback(_retrieve)
    seconds, bound = wait_for(budget.store_timeout_ms, "store_timeout_ms")
    done, _ = await asyncio.wait({stored, running}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    if not done:
        raise Unscored("store_timeout", "store", f"the online store did not answer within {bound}")
    if not running.done():
        seconds, bound = wait_for(budget.model_timeout_ms, "model_timeout_ms")
        done, _ = await asyncio.wait({running}, timeout=seconds)
        if not done:
            raise Unscored("model_timeout", "model", f"the model did not answer within {bound}", stored.result())
    try:
        return running.result()
    except _Failed as failed:
        raise Unscored(f"{failed.dependency}_error", failed.dependency, str(failed.error) or type(failed.error).__name__,
                       failed.assembled, failed.error) from None


def score_inline(assemble: Callable[[], Any], predict: Callable[[Any], float]) -> tuple[Any, float]:
    """``(assembled, score)`` on the calling thread (the event loop); a phase that raises
    becomes ``Unscored`` (``store_error`` or ``model_error``) as on the pool."""
    try:
        assembled = assemble()
    except Exception as exc:  # noqa: BLE001
        raise Unscored("store_error", "store", str(exc) or type(exc).__name__, None, exc) from None
    try:
        return assembled, predict(assembled)
    except Exception as exc:  # noqa: BLE001
        raise Unscored("model_error", "model", str(exc) or type(exc).__name__, assembled, exc) from None
