"""A circuit breaker per dependency of the model server (the online store, the model).

After ``failures`` consecutive failures or timeouts of its dependency a breaker
**opens**: for ``open_s`` seconds requests do not call the dependency at all and get
the model's declared fallback at once, flagged ``store_circuit_open`` or
``model_circuit_open`` (or a 503 with Retry-After when no fallback is declared), so a
dead store or model costs nothing per request and is given time to recover. Then it
**half-opens**: one request, the probe, calls the dependency; its success closes the
breaker, its failure opens it again for ``open_s``. While the probe is out, the others
still get the fallback; a probe that never reports (its request ended before reaching
the dependency) is replaced after ``open_s``.

Used from the event loop only (the handler records every outcome there): no lock.
``failures`` 0 switches the breaker off (always closed).
"""

from __future__ import annotations

import math
import time
from typing import Callable

from lab.errors import ConfigError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

WHAT = {"store": "the online store", "model": "the model"}


def check_breaker(failures, open_s) -> None:
    """``ConfigError`` naming the key when a breaker setting is out of range."""
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
        raise ConfigError(f"[tool.lab.serve] breaker_failures must be a whole number, 0 (no breaker) or more, "
                          f"got {failures!r}")
    if isinstance(open_s, bool) or not isinstance(open_s, (int, float)) or not math.isfinite(open_s) or open_s <= 0:
        raise ConfigError(f"[tool.lab.serve] breaker_open_s must be a number of seconds above 0, got {open_s!r}")


class CircuitBreaker:
    """The breaker of one dependency (``name``: ``store`` or ``model``)."""

    def __init__(self, name: str, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic):
        check_breaker(failures, open_s)
        self.name, self.failures, self.open_s, self.clock = name, failures, float(open_s), clock
        self._state = CLOSED
        self.consecutive = 0
        self.opened = 0  # times it opened since start
        self._opened_at = 0.0
        self._probe_at: float | None = None
        self.last_error = ""

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() - self._opened_at >= self.open_s:
            self._state, self._probe_at = HALF_OPEN, None
        return self._state

    def allow(self) -> bool:
        """Whether this request may call the dependency (half-open: only the probe)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN:
            now = self.clock()
            if self._probe_at is None or now - self._probe_at >= self.open_s:
                self._probe_at = now
                return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        if self._state != CLOSED:
            self._state, self._probe_at = CLOSED, None

    def failure(self, error: str = "") -> None:
        self.consecutive += 1
        self.last_error = error or self.last_error
        if not self.failures:
            return
        if self._state == HALF_OPEN or (self._state == CLOSED and self.consecutive >= self.failures):
            self._state, self._opened_at, self._probe_at = OPEN, self.clock(), None
            self.opened += 1

    def retry_after_s(self) -> int:
        """Whole seconds until it half-opens (at least 1)."""
        if self._state != OPEN:
            return 1
        return max(1, math.ceil(self.open_s - (self.clock() - self._opened_at)))

    def describe(self) -> str:
        """The sentence for ``/readyz`` warnings and error details."""
        state = self.state
        what = WHAT.get(self.name, self.name)
        why = f" (last: {self.last_error})" if self.last_error else ""
        if state == OPEN:
            return (f"the circuit breaker of {what} is open after {self.consecutive} consecutive failure(s) or "
                    f"timeout(s){why}: requests get the model's fallback without calling it for "
                    f"{self.retry_after_s()} s more, then one probe tries it")
        if state == HALF_OPEN:
            return f"the circuit breaker of {what} is half-open: the next request probes it{why}"
        return f"the circuit breaker of {what} is closed"


STORE_READS = ("ok", "store_error", "store_timeout", "store_circuit_open")
"""``lab_online_store_reads_total``'s outcomes: answered, failed, too slow, not called (open breaker)."""


class StoreAvailability:
    """The online store's availability as the requests met it: the share of store reads
    that answered among the last ``window_s`` seconds' reads, at most the last ``last``
    of them (a request its open breaker kept from the store counts as a failed read: the
    store was not available to it). 1.0 when no read is in the window. Counts every
    outcome since start (``STORE_READS``). Recorded from the event loop; read at a scrape
    (a worker's publisher thread too), hence the lock."""

    def __init__(self, window_s: float = 60.0, last: int = 100, clock: Callable[[], float] = time.monotonic):
        import threading
        from collections import deque

        self.window_s, self.clock = float(window_s), clock
        self._lock = threading.Lock()
        self._reads: deque[tuple[float, bool]] = deque(maxlen=last)
        self.counts = dict.fromkeys(STORE_READS, 0)

    def record(self, outcome: str) -> None:
        """One request's store read: ``ok`` or its failure reason (``STORE_READS``)."""
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            self._reads.append((self.clock(), outcome == "ok"))

    def rate(self) -> float:
        """Successful reads / reads in the window (1.0 with none)."""
        since = self.clock() - self.window_s
        with self._lock:
            reads = self._reads
            while reads and reads[0][0] < since:
                reads.popleft()
            if not reads:
                return 1.0
            return sum(ok for _, ok in reads) / len(reads)

    def snapshot(self) -> tuple[float, dict[str, int]]:
        """``(rate(), counts)`` at once."""
        rate = self.rate()
        with self._lock:
            return rate, dict(self.counts)
