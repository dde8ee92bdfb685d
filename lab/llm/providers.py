"""Failures of LLM providers, retries with backoff, and a circuit breaker.

A provider's call fails in two ways the caller handles differently: a *retryable* failure
(the server is overloaded or down: HTTP 429, 5xx, a timeout, a refused connection) is
tried again after an exponentially growing, fully jittered wait (``with_retries``); any
other (HTTP 4xx: the request itself is wrong) is raised at once. A ``CircuitBreaker`` in
front of a provider stops sending requests after N consecutive retryable failures, so a
dead upstream costs callers microseconds (``ProviderUnavailable``, HTTP 503) instead of a
timeout each, and lets one trial call through after ``open_s`` seconds.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, TypeVar

from lab.errors import LabError

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class ProviderError(LabError):
    """A provider's call failed. ``retryable``: trying again may succeed (429, 5xx,
    timeouts, connection errors); ``upstream_status``: the HTTP status the provider's
    server answered (None when none came back); ``http_status``: what a lab server
    answers its own client (502 by default, 504 for a timeout, 503 when unavailable);
    ``retry_after_s``: the wait the server asked for (its Retry-After header), seconds."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retryable: bool = False,
        upstream_status: int | None = None,
        http_status: int = 502,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.http_status = http_status
        self.retry_after_s = retry_after_s


class ProviderUnavailable(ProviderError):
    """The provider's circuit breaker is open: no request was sent. ``retry_after_s`` says
    when it lets a trial call through. HTTP 503."""

    def __init__(self, message: str, *, provider: str | None = None, retry_after_s: float | None = None):
        super().__init__(message, provider=provider, retryable=False, http_status=503, retry_after_s=retry_after_s)


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (0 = the first retry), in seconds: "full
    jitter", uniform in [0, min(max_s, base_s * 2**attempt)], which spreads many clients'
    retries apart; without ``rng``, the upper bound itself."""
    cap = min(max_s, base_s * (2 ** attempt))
    return cap if rng is None else rng.uniform(0.0, cap)


def with_retries(
    call: Callable[[], T],
    *,
    retries: int = 2,
    base_s: float = 0.5,
    max_s: float = 8.0,
    retry_after_max_s: float | None = None,
    seed: int | None = None,
    jitter: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, ProviderError, float], None] | None = None,
) -> T:
    """``call()``, tried again up to ``retries`` times while it raises a retryable
    ``ProviderError``; any other exception is raised at once.

    The wait before retry ``i`` is ``backoff_s(i)`` (full jitter, seeded by ``seed`` when
    given; ``jitter=False`` waits the bound). A server's Retry-After is honoured: the wait
    is at least that long; when it asks for more than ``retry_after_max_s`` seconds (default
    ``max_s``) there is no retry and the error (with its ``retry_after_s``) is raised.
    ``on_retry(i, error, wait_s)`` is called before each wait (logs, metrics, tests).
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    rng = (random.Random(seed) if seed is not None else random.Random()) if jitter else None
    limit = max_s if retry_after_max_s is None else retry_after_max_s
    attempt = 0
    while True:
        try:
            return call()
        except ProviderError as exc:
            if not exc.retryable or attempt >= retries:
                raise
            wait = backoff_s(attempt, base_s=base_s, max_s=max_s, rng=rng)
            if exc.retry_after_s is not None:
                if exc.retry_after_s > limit:
                    raise
                wait = max(wait, exc.retry_after_s)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            sleep(wait)
            attempt += 1


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failed calls -> half-open ``open_s``
    seconds later, when exactly one trial call goes through: its success closes the
    breaker, its failure opens it for another ``open_s``. While open (and while the trial
    is in flight) ``call`` raises ``ProviderUnavailable`` without calling. Thread-safe.

    A failure is a retryable ``ProviderError`` or any exception that is not a
    ``ProviderError``; a non-retryable one (a 4xx: the server is up, the request was
    wrong) counts as a success. ``failures=0`` turns the breaker off. ``clock`` returns
    seconds (``time.monotonic``; tests pass a fake one)."""

    def __init__(self, failures: int = 5, open_s: float = 30.0, *, name: str = "provider",
                 clock: Callable[[], float] = time.monotonic):
        if failures < 0 or open_s < 0:
            raise ValueError("failures and open_s must be >= 0")
        self.failures = failures
        self.open_s = open_s
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.opened_count = 0  # times it went from closed or half-open to open

    @property
    def state(self) -> str:
        """"closed", "open" or "half_open" (open past ``open_s`` reads as half-open)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.open_s:
                return HALF_OPEN
            return self._state

    def before_call(self) -> None:
        """Let a call through or raise ``ProviderUnavailable``; a call let through must be
        followed by ``record_success`` or ``record_failure``."""
        if self.failures == 0:
            return
        with self._lock:
            if self._state == CLOSED:
                return
            now = self._clock()
            if self._state == OPEN and now - self._opened_at >= self.open_s:
                self._state = HALF_OPEN
                self._trial_in_flight = False
            if self._state == HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return
            wait = max(0.0, self.open_s - (now - self._opened_at)) if self._state == OPEN else None
        raise ProviderUnavailable(
            f"provider {self.name!r} is unavailable: its circuit breaker is open after {self.failures} "
            f"consecutive failures" + (f"; a trial call goes through in {wait:.1f} s" if wait is not None
                                       else "; a trial call is in flight") +
            ". Check the provider's server, or route to a fallback model",
            provider=self.name, retry_after_s=wait,
        )

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._consecutive = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            if self.failures == 0:
                return
            self._trial_in_flight = False
            if self._state == HALF_OPEN:
                self._open()
                return
            self._consecutive += 1
            if self._state == CLOSED and self._consecutive >= self.failures:
                self._open()

    def _open(self) -> None:
        self._state = OPEN
        self._opened_at = self._clock()
        self._consecutive = 0
        self.opened_count += 1

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` through the breaker (see the class docstring for what counts)."""
        self.before_call()
        try:
            result = fn()
        except ProviderError as exc:
            (self.record_failure if exc.retryable else self.record_success)()
            raise
        except Exception:
            self.record_failure()
            raise
        except BaseException:  # Ctrl+C, SystemExit: says nothing about the provider
            with self._lock:
                self._trial_in_flight = False
            raise
        self.record_success()
        return result
