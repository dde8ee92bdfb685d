"""Rate limits for LLM calls: token buckets per user and per API key, counting requests
per minute and tokens per minute (``[tool.lab.llm.limits]``).

    [tool.lab.llm.limits]
    user_requests_per_min = 60      # 0: no limit
    user_tokens_per_min = 40000     # input tokens + max_tokens, at admission
    key_requests_per_min = 600
    key_tokens_per_min = 400000

A bucket holds at most one minute's allowance (the burst) and refills continuously at
allowance/60 per second. A request takes one request and ``tokens`` tokens from every
bucket that applies to it, or from none: all buckets are checked and taken under one lock,
so a refusal never leaves a partial charge. Unused output tokens are handed back after
the call (``refund``).

The buckets live in this process's memory: each server process (``lab serve --workers
N``) holds its own, so N workers admit up to N times the configured rate. Spend ceilings
(``lab.llm.spend``) are shared through SQLite and are the hard limit across processes.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from lab.config import LabConfig, build_section
from lab.errors import ConfigError, LabError
from lab.llm.settings import sub_table


class RateLimited(LabError):
    """A user or key went over its rate; try again after ``retry_after_s`` seconds (HTTP 429)."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLarge(LabError):
    """A request needs more tokens than a bucket can ever hold (HTTP 400)."""

    http_status = 400


@dataclass(frozen=True)
class LimitSettings:
    """``[tool.lab.llm.limits]``: allowances per minute; 0 means no limit."""

    user_requests_per_min: int = 0
    user_tokens_per_min: int = 0
    key_requests_per_min: int = 0
    key_tokens_per_min: int = 0

    def __post_init__(self) -> None:
        for name in ("user_requests_per_min", "user_tokens_per_min", "key_requests_per_min", "key_tokens_per_min"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[tool.lab.llm.limits] {name} must be 0 (no limit) or more, "
                                  f"got {getattr(self, name)}")


def limit_settings(config: LabConfig) -> LimitSettings:
    return build_section(LimitSettings, sub_table(config, "limits"), "tool.lab.llm.limits")


class TokenBucket:
    """``capacity`` units, refilled at ``per_s`` units per second, read on ``clock``
    (seconds; monotonic). Not locked: ``RateLimiter`` holds the lock."""

    def __init__(self, capacity: float, per_s: float, clock: Callable[[], float]):
        self.capacity = float(capacity)
        self.per_s = float(per_s)
        self._clock = clock
        self._level = float(capacity)
        self._at = clock()

    def level(self) -> float:
        """Units available now (refilled up to ``capacity``)."""
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._at) * self.per_s)
        self._at = now
        return self._level

    def wait_s(self, units: float) -> float:
        """Seconds until ``units`` are available (0 when they are now)."""
        missing = units - self.level()
        return 0.0 if missing <= 0 else missing / self.per_s

    def take(self, units: float) -> None:
        self._level -= units

    def give_back(self, units: float) -> None:
        self._level = min(self.capacity, self.level() + units)


@dataclass(frozen=True)
class Permit:
    """What one admitted request took: the buckets' names and its tokens."""

    buckets: tuple[tuple[str, str], ...]
    tokens: int


class RateLimiter:
    """Token buckets per user and per key, thread-safe, in this process only (see the
    module's docstring). ``clock`` is injectable for tests (seconds, monotonic)."""

    def __init__(self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}

    def _bucket(self, scope: str, who: str, unit: str, per_min: int) -> TokenBucket:
        key = (scope, who, unit)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(per_min, per_min / 60.0, self._clock)
        return bucket

    def _applicable(self, user: str | None, key: str | None) -> list[tuple[str, str, str, int]]:
        s = self.settings
        out = []
        if user is not None:
            out += [("user", user, "requests", s.user_requests_per_min), ("user", user, "tokens", s.user_tokens_per_min)]
        if key is not None:
            out += [("key", key, "requests", s.key_requests_per_min), ("key", key, "tokens", s.key_tokens_per_min)]
        return [item for item in out if item[3] > 0]

    def acquire(self, user: str | None, key: str | None, tokens: int) -> Permit:
        """Take one request and ``tokens`` tokens from every applicable bucket, or raise
        ``RateLimited`` (nothing taken) with the wait until all of them could admit it."""
        checks = self._applicable(user, key)
        with self._lock:
            waits = []
            for scope, who, unit, per_min in checks:
                units = 1 if unit == "requests" else tokens
                if units > per_min:
                    raise RequestTooLarge(
                        f"this request needs {units} tokens (input + max_tokens) but {scope} {who!r} may use at "
                        f"most {per_min} per minute ([tool.lab.llm.limits] {scope}_tokens_per_min); lower "
                        "max_tokens or shorten the input")
                wait = self._bucket(scope, who, unit, per_min).wait_s(units)
                if wait > 0:
                    waits.append((wait, f"{scope} {who!r} is over {per_min} {unit}/min"))
            if waits:
                wait, why = max(waits)
                raise RateLimited(f"rate limited: {why}; retry after {math.ceil(wait)} s", retry_after_s=wait)
            for scope, who, unit, per_min in checks:
                self._bucket(scope, who, unit, per_min).take(1 if unit == "requests" else tokens)
        return Permit(tuple((scope, who) for scope, who, unit, _ in checks if unit == "tokens"), tokens)

    def refund(self, permit: Permit, used_tokens: int) -> None:
        """Give back the tokens a request took but did not use (``permit.tokens -
        used_tokens``, never negative), e.g. unused output or a cache hit's."""
        unused = max(0, permit.tokens - used_tokens)
        if not unused:
            return
        with self._lock:
            for scope, who in permit.buckets:
                bucket = self._buckets.get((scope, who, "tokens"))
                if bucket is not None:
                    bucket.give_back(unused)
