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

Everything except the pool's threads runs on the event loop; no lock is needed.
"""

from __future__ import annotations

import asyncio
import collections
import math
from concurrent.futures import ThreadPoolExecutor
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
