"""Variant buckets: whole buckets from weights, and moving as few as possible when they change.

Pure functions over bucket ranges ``[start, end)`` in ``[0, BUCKETS)``; ``model`` uses
them to lay out a new experiment and to rebalance it on a weight change, ``assignment``
to find the variant that owns a unit's bucket.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from lab.errors import ConfigError

BUCKETS = 10_000
"""Buckets a unit hashes into, for the layer and for the variant; weights are realized
to 1/BUCKETS."""

Ranges = tuple[tuple[int, int], ...]
"""Bucket ranges ``[start, end)``, sorted, disjoint, none empty."""


def span(ranges: Sequence[tuple[int, int]]) -> int:
    """How many buckets ``ranges`` cover (they must not overlap)."""
    return sum(end - start for start, end in ranges)


def merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted, with touching ones joined and empty ones dropped."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def apportion(weights: Sequence[float], total: int = BUCKETS) -> list[int]:
    """Whole buckets for each weight, summing to exactly ``total`` (largest remainder).

    Each weight gets the floor of its exact share ``w / sum(weights) * total``; the
    buckets left over go one each to the largest fractional parts, the earlier weight
    first on a tie. A zero weight gets none. Shares are rounded to 1e-6 of a bucket first,
    so ``0.29 * 10000`` (2899.9999999999995 in floating point) counts as 2900.
    """
    weight_sum = math.fsum(weights)
    if weight_sum <= 0:
        return [0] * len(weights)
    quotas = [round(w / weight_sum * total, 6) for w in weights]
    counts = [math.floor(q) for q in quotas]
    candidates = sorted((i for i, w in enumerate(weights) if w > 0), key=lambda i: (counts[i] - quotas[i], i))
    for i in candidates[:total - sum(counts)]:
        counts[i] += 1
    return counts


def rebalance(current: Mapping[str, Ranges], targets: Mapping[str, int]) -> dict[str, Ranges]:
    """New bucket ranges in which each variant owns ``targets[name]`` buckets, moving as
    few as possible: a variant that shrinks gives up buckets from the end of its ranges
    (its highest first), one that grows takes free buckets (``_take``), one whose count
    is unchanged keeps exactly its ranges. So a unit only ever moves out of a variant that
    shrank and into one that grew. ``targets`` must sum to ``BUCKETS``.
    """
    if sum(targets.values()) != BUCKETS or set(targets) != set(current):
        raise ConfigError(f"bucket targets must name the variants {sorted(current)} and sum to {BUCKETS}, "
                          f"got {dict(targets)}")
    owned = {name: merge(current[name]) for name in targets}
    released: list[tuple[int, int]] = []
    for name, target in targets.items():
        surplus = span(owned[name]) - target
        while surplus > 0:
            start, end = owned[name].pop()
            cut = max(start, end - surplus)
            if cut > start:
                owned[name].append((start, cut))
            released.append((cut, end))
            surplus -= end - cut
    free = merge(released)
    for name, target in targets.items():
        need = target - span(owned[name])
        if need > 0:
            taken, free = _take(owned[name], free, need)
            owned[name] = merge(owned[name] + taken)
    return {name: tuple(owned[name]) for name in targets}


def _take(own: list[tuple[int, int]], free: list[tuple[int, int]], need: int):
    """``need`` buckets out of ``free`` for a variant owning ``own``: first from free runs
    touching its ranges (so they stay few), then the lowest run that holds all that is
    still needed, then the lowest runs in turn. Returns ``(taken, free left)``."""
    free, taken = list(free), []
    ends, starts = {e for _, e in own}, {s for s, _ in own}

    def cut(i: int, amount: int, from_top: bool) -> None:
        nonlocal need
        start, end = free[i]
        amount = min(amount, end - start)
        taken.append((end - amount, end) if from_top else (start, start + amount))
        free[i] = (start, end - amount) if from_top else (start + amount, end)
        need -= amount

    for i, (start, end) in enumerate(free):
        if need and (start in ends or end in starts):
            cut(i, need, from_top=start not in ends)
    fits = [i for i, (start, end) in enumerate(free) if end - start >= need > 0]
    if fits:
        cut(fits[0], need, from_top=False)
    for i in range(len(free)):
        if need:
            cut(i, need, from_top=False)
    return taken, [r for r in free if r[1] > r[0]]
