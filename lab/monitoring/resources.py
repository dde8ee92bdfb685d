"""A serving process's memory over time, and a detector of a steady leak in it.

A model server that keeps a reference per request (a cache without a bound, a list of
inputs kept for debugging, tensors held by an autograd graph) grows until the kernel
kills it. This module notices that growth while it is still small, for any process:

- ``RssSampler`` reads the process's resident set size (RSS, bytes) and, when torch is
  already imported and CUDA is available, the bytes CUDA tensors hold, together with how
  many requests the process had answered, into a ``ResourceTrack``: a bounded ring of
  ``ResourceSample`` (time, requests, RSS[, CUDA]).
- ``LeakDetector`` judges one series of it (RSS, or CUDA): a robust slope (Theil-Sen,
  the median of the pairwise slopes) of the bytes against requests answered
  (bytes/request: the memory a request leaves behind) and against time (bytes/hour),
  and a Mann-Kendall test of an upward trend (one-sided p, its variance corrected for the
  autocorrelation of the series, Hamed and Rao 1998). The series is suspected of a leak
  when p < ``alpha`` AND it grows by at least ``min_bytes_per_request`` per request or
  ``min_mib_per_hour`` per hour AND by at least ``min_growth_mib`` over the judged
  samples; the samples of the warm-up (the first ``warmup_s`` seconds and
  ``warmup_requests`` requests: allocators, caches and lazy imports grow early and then
  stop) are never judged. Defaults: ``[tool.lab.resources]`` (``lab.config.ResourcesConfig``).

The server's side (a sampling thread, ``/metrics``, the ``serving.leak_suspected`` event,
draining and restarting a flagged process) is the serving plugin's. This module imports
numpy only; torch is read from ``sys.modules``, never imported. docs/monitoring.md.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from lab.config import ResourcesConfig

LEAK_SUSPECTED = "serving.leak_suspected"
"""The event a server emits (``lab.events``) once, when a series is first suspected of a leak."""

MIB = 1024 * 1024
HOUR_S = 3600.0
_Z_975 = 1.959963984540054  # the two-sided 5 % point of the normal: which autocorrelations count


# -- what is measured -------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceSample:
    """One reading: ``t`` seconds (a monotonic clock), ``requests`` answered so far,
    ``rss`` bytes resident, ``cuda`` bytes held by CUDA tensors (None: no CUDA)."""

    t: float
    requests: int
    rss: int
    cuda: int | None = None


def rss_bytes() -> int:
    """This process's resident set size in bytes, now: Linux's ``/proc/self/statm`` (one
    read, about 10 us), else psutil if it is installed, else the peak RSS so far
    (``getrusage``; a peak never falls, so a leak still shows, a drop does not)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: only where /proc is not

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - not installed, or not allowed: the peak then
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cuda_allocated_bytes() -> int | None:
    """Bytes held by CUDA tensors on every device of this process (torch's caching
    allocator's ``memory_allocated``), when torch is already imported and CUDA is
    available; None otherwise. Never imports torch nor initializes CUDA (before anything
    is on the GPU it is 0)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        if not cuda.is_available():
            return None
        if not cuda.is_initialized():
            return 0
        return int(sum(cuda.memory_allocated(i) for i in range(cuda.device_count())))
    except Exception:  # noqa: BLE001 - a broken driver must not stop the sampling
        return None


class ResourceTrack:
    """The latest ``capacity`` samples, oldest first (a ring: one more drops the oldest).
    ``first`` is the first sample ever added (kept when the ring drops it): the warm-up
    is counted from it.
    Appended by one thread; ``samples()`` copies, so a reader on another thread sees a
    consistent list."""

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError(f"a track needs room for 2 samples or more, got {capacity}")
        self.capacity = capacity
        self._ring: deque[ResourceSample] = deque(maxlen=capacity)
        self.first: ResourceSample | None = None

    def add(self, sample: ResourceSample) -> None:
        if self.first is None:
            self.first = sample
        self._ring.append(sample)

    def samples(self) -> list[ResourceSample]:
        return list(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def latest(self) -> ResourceSample | None:
        return self._ring[-1] if self._ring else None


class RssSampler:
    """Takes a ``ResourceSample`` of this process into ``track`` at each ``sample()``:
    RSS, CUDA allocated bytes and ``requests()`` (the requests answered so far, a
    counter that only grows). ``clock`` is in seconds (default ``time.monotonic``);
    ``rss`` and ``cuda`` read the memory (defaults: ``rss_bytes``, ``cuda_allocated_bytes``)."""

    def __init__(self, track: ResourceTrack, requests: Callable[[], int], *,
                 clock: Callable[[], float] = time.monotonic, rss: Callable[[], int] = rss_bytes,
                 cuda: Callable[[], int | None] = cuda_allocated_bytes):
        self.track, self.requests, self.clock, self.rss, self.cuda = track, requests, clock, rss, cuda

    def sample(self) -> ResourceSample:
        sample = ResourceSample(self.clock(), int(self.requests()), self.rss(), self.cuda())
        self.track.add(sample)
        return sample


# -- the statistics ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The index pairs i < j of ``n`` values (a series' length changes rarely: cached)."""
    return np.triu_indices(n, k=1)


def _median_slope(dx: np.ndarray, dy: np.ndarray) -> float | None:
    keep = dx > 0
    kept = int(keep.sum())
    if kept < max(1, len(dx) // 2):
        return None
    return float(np.median(dy[keep] / dx[keep]))


def theil_sen(x: Sequence[float], y: Sequence[float]) -> float | None:
    """The Theil-Sen slope of ``y`` against ``x``: the median of (y_j - y_i) / (x_j - x_i)
    over the pairs with x_j > x_i (pairs at the same x say nothing of the slope); None
    when fewer than half the pairs have distinct x (no requests between the samples, say).
    Robust: up to 29 % of the points can be anywhere (a GC sawtooth's peaks, a spike)
    without moving it far."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 2:
        return None
    i, j = _pairs(len(xs))
    return _median_slope(xs[j] - xs[i], ys[j] - ys[i])


def mann_kendall_p(y: Sequence[float], t: Sequence[float] | None = None, slope: float | None = None) -> float:
    """One-sided p-value of the Mann-Kendall test that ``y`` (in time order) trends
    upward: S = the sum of sign(y_j - y_i) over i < j, its variance with ties, and
    Z = (S - 1) / sd (continuity correction), p = P(N(0,1) >= Z).

    Memory readings are autocorrelated (an allocator's arena, a GC sawtooth), which
    makes the plain test see trends in flat noise, so the variance is multiplied by Hamed
    and Rao's (1998) factor: 1 + 2 / (n(n-1)(n-2)) * sum over lags k of
    (n-k)(n-k-1)(n-k-2) rho_k, with rho_k the autocorrelation at lag k of the ranks of
    the series less its Theil-Sen trend (against ``t``, default the index; ``slope``, when
    the caller has it already), counting only the lags significant at 5 %; the factor is
    never below 1 (the test stays at least as cautious as the plain one). 1.0 for fewer
    than 4 values."""
    ys = np.asarray(y, dtype=np.float64)
    n = len(ys)
    if n < 4:
        return 1.0
    ts = np.arange(n, dtype=np.float64) if t is None else np.asarray(t, dtype=np.float64)
    i, j = _pairs(n)
    dy = ys[j] - ys[i]
    if slope is None:
        slope = _median_slope(ts[j] - ts[i], dy)
    return _mann_kendall(ys, ts, dy, slope)


def _mann_kendall(ys: np.ndarray, ts: np.ndarray, dy: np.ndarray, slope: float | None) -> float:
    """``mann_kendall_p`` given the pairwise differences ``dy`` (in ``_pairs`` order)."""
    n = len(ys)
    s = float(np.sign(dy).sum())
    if s <= 0:
        return 1.0
    _, counts = np.unique(ys, return_counts=True)
    ties = counts[counts > 1].astype(np.float64)
    variance = (n * (n - 1) * (2 * n + 5) - float((ties * (ties - 1) * (2 * ties + 5)).sum())) / 18.0
    variance *= _autocorrelation_factor(ys, ts, slope)
    if variance <= 0:
        return 0.0
    z = (s - 1.0) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _autocorrelation_factor(ys: np.ndarray, ts: np.ndarray, slope: float | None) -> float:
    """Hamed and Rao's n/n*, at least 1 (see ``mann_kendall_p``)."""
    n = len(ys)
    ranks = _ranks(ys - (slope or 0.0) * ts)
    centred = ranks - ranks.mean()
    denominator = float(centred @ centred)
    if denominator == 0:
        return 1.0
    full = np.correlate(centred, centred, mode="full")[n:] / denominator  # lags 1 .. n-1
    lags = np.arange(1, n, dtype=np.float64)
    significant = np.abs(full) > _Z_975 / math.sqrt(n)
    weights = (n - lags) * (n - lags - 1) * (n - lags - 2)
    factor = 1.0 + 2.0 / (n * (n - 1) * (n - 2)) * float((weights * full)[significant].sum())
    return max(factor, 1.0)


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


# -- the verdict ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryTrend:
    """The detector's reading of one memory series (``memory``: ``rss`` or ``cuda``).

    ``samples``: how many were judged (past the warm-up, in the ring); ``bytes_per_request``:
    the Theil-Sen slope against requests answered (None without requests between the
    samples), the memory one request leaves behind; ``bytes_per_hour``: against time;
    ``growth_bytes``: the time slope over the judged span (first to last sample);
    ``p_value``: Mann-Kendall's, one-sided (1.0 before any verdict); ``suspected``: a
    steady leak by every criterion; ``why``: one line saying what decided it."""

    memory: str
    samples: int
    bytes_per_request: float | None
    bytes_per_hour: float
    growth_bytes: float
    p_value: float
    suspected: bool
    why: str
    latest_bytes: int = 0
    span_s: float = 0.0
    requests: int = 0  # answered during the judged span

    def describe(self) -> str:
        """One line for logs and the readiness reason."""
        per_request = "n/a" if self.bytes_per_request is None else f"{self.bytes_per_request / 1024:.1f} KiB"
        return (f"{self.memory} grows {per_request}/request, {self.bytes_per_hour / MIB:.1f} MiB/hour, "
                f"{self.growth_bytes / MIB:.1f} MiB over {self.samples} samples ({self.span_s:.0f} s, "
                f"{self.requests} requests), Mann-Kendall p = {self.p_value:.2g}")

    def payload(self) -> dict:
        """The numbers, for an event's payload."""
        return {"memory": self.memory, "bytes_per_request": self.bytes_per_request,
                "bytes_per_hour": self.bytes_per_hour, "growth_bytes": self.growth_bytes, "p_value": self.p_value,
                "samples": self.samples, "span_s": self.span_s, "requests": self.requests,
                "latest_bytes": self.latest_bytes}


class LeakDetector:
    """Judges a ``ResourceTrack`` against ``settings`` (``[tool.lab.resources]``).

    The warm-up ends at the first sample at least ``warmup_s`` seconds after the track's
    first and with at least ``warmup_requests`` requests answered since it; only samples
    from there on (those still in the ring) are judged, and nothing before
    ``min_samples`` of them. Stateless but for the warm-up's end, found once."""

    def __init__(self, settings: ResourcesConfig):
        self.settings = settings
        self.warm_at: float | None = None  # the time of the first sample past the warm-up

    def judge(self, track: ResourceTrack) -> dict[str, MemoryTrend]:
        """``{"rss": MemoryTrend, "cuda": ...}`` (``cuda`` only when every judged sample has it)."""
        samples = self._judged(track)
        out = {"rss": self.trend("rss", samples, [s.rss for s in samples])}
        if samples and all(s.cuda is not None for s in samples):
            out["cuda"] = self.trend("cuda", samples, [s.cuda for s in samples])
        return out

    def _judged(self, track: ResourceTrack) -> list[ResourceSample]:
        samples, first = track.samples(), track.first
        if first is None:
            return []
        if self.warm_at is None:
            s = self.settings
            warm = next((x for x in samples if x.t - first.t >= s.warmup_s
                         and x.requests - first.requests >= s.warmup_requests), None)
            if warm is None:
                return []
            self.warm_at = warm.t
        return [x for x in samples if x.t >= self.warm_at]

    def trend(self, memory: str, samples: Sequence[ResourceSample], values: Sequence[float]) -> MemoryTrend:
        """The ``MemoryTrend`` of ``values`` (bytes), one per sample of ``samples``."""
        s = self.settings
        n = len(samples)
        latest = int(values[-1]) if n else 0
        if n < s.min_samples:
            why = "warming up" if self.warm_at is None else f"{n} of {s.min_samples} samples past the warm-up"
            return MemoryTrend(memory, n, None, 0.0, 0.0, 1.0, False, why, latest)
        t = np.array([x.t for x in samples], dtype=np.float64)
        requests = np.array([x.requests for x in samples], dtype=np.float64)
        y = np.asarray(values, dtype=np.float64)
        i, j = _pairs(n)  # every statistic below reads the same pairwise differences
        dy = y[j] - y[i]
        per_s = _median_slope(t[j] - t[i], dy) or 0.0
        per_request = _median_slope(requests[j] - requests[i], dy)
        span = float(t[-1] - t[0])
        growth = per_s * span
        p = _mann_kendall(y, t, dy, per_s)
        fast = (per_request is not None and per_request >= s.min_bytes_per_request) or \
            per_s * HOUR_S >= s.min_mib_per_hour * MIB
        if p >= s.alpha:
            why = f"no upward trend (p = {p:.2g} >= alpha {s.alpha:g})"
        elif not fast:
            why = (f"an upward trend below the thresholds ({s.min_bytes_per_request:g} bytes/request, "
                   f"{s.min_mib_per_hour:g} MiB/hour)")
        elif growth < s.min_growth_mib * MIB:
            why = f"an upward trend, but under {s.min_growth_mib:g} MiB over the window"
        else:
            why = "a steady upward trend above every threshold"
        suspected = p < s.alpha and fast and growth >= s.min_growth_mib * MIB
        return MemoryTrend(memory, n, per_request, per_s * HOUR_S, growth, p, suspected, why, latest, span,
                           int(requests[-1] - requests[0]))
