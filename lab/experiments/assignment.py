"""Sticky assignment: which variant of an experiment a unit sees, from a hash alone.

A unit's variant is a pure function of (salt, unit id), so every process, restart and
machine agrees without storing anything per unit. Two 64-bit BLAKE2b hashes decide it:

1. the **layer bucket**, ``hash("L" + layer, unit) % 10000``, picks which experiment of
   the layer owns the unit (each owns a disjoint ``layer_share`` range), so a unit is
   in at most one experiment per layer, and layers are independent of each other;
2. the **variant bucket**, ``hash("E" + salt, unit) % 10000``, picks the variant: the
   one whose stored bucket ranges (``Experiment.buckets``) hold it. A weight change
   moves buckets only out of variants that shrank and into variants that grew
   (``lab.experiments.model.rebalance``), so nobody in an arm that kept or raised its
   weight is reassigned.

The ``L``/``E`` prefixes keep a layer's hash apart from an experiment's even when the
experiment is named like its layer. Unit ids are ``str`` or ``int``; an int hashes as
its decimal text, so ``42`` and ``"42"`` are the same unit.

``assign(experiment, unit)`` is the plain function; ``Assigner`` compiles a list of
experiments once for serving (about a microsecond per call; see
``benchmarks/bench_assignment.py``).
"""

from __future__ import annotations

import numbers
from bisect import bisect_right
from hashlib import blake2b
from typing import Any, Iterable

from lab.errors import ConfigError, LabError, NotFound
from lab.experiments.model import BUCKETS, Experiment, Ranges, free_ranges


def unit_key(unit_id: Any) -> bytes:
    """The bytes a unit id hashes as; a LabError for anything but a non-empty str or an int."""
    kind = type(unit_id)
    if kind is str and unit_id:
        return unit_id.encode()
    if kind is int:
        return str(unit_id).encode()  # 42 and "42" are one unit
    return _slow_unit_key(unit_id)


def _slow_unit_key(unit_id: Any) -> bytes:
    if isinstance(unit_id, bool):
        raise LabError(f"unit id must be a str or an int, got bool {unit_id!r}; "
                       "a bool is not a unit id: pass the customer or request id")
    if isinstance(unit_id, str):
        if not unit_id:
            raise LabError("unit id is an empty string; pass the id of the customer, session or request")
        return str(unit_id).encode()
    if isinstance(unit_id, numbers.Integral):  # numpy and other integer types
        return str(int(unit_id)).encode()
    hint = ("pass int(unit_id) if it is a whole number, or str(unit_id)"
            if isinstance(unit_id, numbers.Real) else "pass str(unit_id) or the integer id")
    raise LabError(f"unit id must be a str or an int, got {type(unit_id).__name__} {unit_id!r}; {hint}")


_from_bytes = int.from_bytes  # a global name: one lookup fewer on the hot path


def _hash_bucket(prefix: bytes, key: bytes) -> int:
    return _from_bytes(blake2b(prefix + key, digest_size=8).digest(), "big") % BUCKETS


def _layer_prefix(layer: str) -> bytes:
    return b"L" + layer.encode() + b"\x00"


def _salt_prefix(salt: str) -> bytes:
    return b"E" + salt.encode() + b"\x00"


def layer_bucket(layer: str, unit_id: Any) -> int:
    """The unit's bucket in ``layer``, in ``[0, 10000)``; it decides the layer's experiment."""
    return _hash_bucket(_layer_prefix(layer), unit_key(unit_id))


def variant_bucket(salt: str, unit_id: Any) -> int:
    """The unit's bucket under ``salt`` (an experiment's), in ``[0, 10000)``; it decides the variant."""
    return _hash_bucket(_salt_prefix(salt), unit_key(unit_id))


def bucket_ranges(experiment: Experiment) -> dict[str, Ranges]:
    """Each variant's variant-bucket ranges ``[start, end)``, as stored with the
    experiment; a variant of weight 0 owns none."""
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"bucket_ranges() takes an Experiment, got {type(experiment).__name__}")
    return dict(experiment.buckets)


class _Compiled:
    """One experiment reduced to what the hot path needs."""

    __slots__ = ("name", "live", "stopped", "full_share", "lo", "hi", "layer_prefix", "salt_prefix",
                 "starts", "owners", "payloads", "control")

    def __init__(self, e: Experiment):
        self.name = e.name
        self.live = e.status != "draft"
        self.stopped = e.status == "stopped"
        self.lo, self.hi = e.layer_share
        self.full_share = e.layer_share == (0, BUCKETS)
        self.layer_prefix = _layer_prefix(e.layer)
        self.salt_prefix = _salt_prefix(e.salt)
        # The ranges cover [0, BUCKETS) exactly, so the range holding a bucket is the
        # last one starting at or below it.
        starts = sorted((start, name) for name, ranges in e.buckets.items() for start, _ in ranges)
        self.starts = [start for start, _ in starts]
        self.owners = [name for _, name in starts]
        self.payloads = {v.name: v.payload for v in e.variants}
        self.control = e.control.name

    def variant(self, key: bytes) -> str | None:
        # _hash_bucket inlined: this is the serving hot path.
        if not self.live:
            return None
        if not self.full_share:
            layer = _from_bytes(blake2b(self.layer_prefix + key, digest_size=8).digest(), "big") % BUCKETS
            if not self.lo <= layer < self.hi:
                return None
        if self.stopped:
            return self.control
        chosen = _from_bytes(blake2b(self.salt_prefix + key, digest_size=8).digest(), "big") % BUCKETS
        return self.owners[bisect_right(self.starts, chosen) - 1]


def assign(experiment: Experiment, unit_id: Any) -> str | None:
    """The variant name ``unit_id`` sees in ``experiment``.

    Returns None for a draft, and for a unit outside the experiment's layer share (it
    belongs to another experiment of the layer, or to none). A running experiment
    returns the unit's variant by weight. A stopped experiment returns control for every
    unit in its share, whatever weights it was stopped with. Raises LabError when the
    unit id is not a str or an int.
    """
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"assign() takes an Experiment, got {type(experiment).__name__}")
    return _Compiled(experiment).variant(unit_key(unit_id))


def check_layers(experiments: Iterable[Experiment]) -> None:
    """Raise a ConfigError if two live (draft or running) experiments of one layer own
    overlapping ranges; the message names the layer's free ranges."""
    by_layer: dict[str, list[Experiment]] = {}
    for e in experiments:
        if e.status != "stopped":
            by_layer.setdefault(e.layer, []).append(e)
    for layer, members in by_layer.items():
        members.sort(key=lambda e: e.layer_share)
        for a, b in zip(members, members[1:]):
            if b.layer_share[0] < a.layer_share[1]:
                free = free_ranges([e.layer_share for e in members])
                raise ConfigError(
                    f"experiments {a.name!r} {a.layer_share} and {b.name!r} {b.layer_share} overlap in layer "
                    f"{layer!r}; free ranges: {format_ranges(free)}"
                )


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}-{b}" for a, b in ranges) or "none"


class Assigner:
    """Experiments compiled for serving: ``variant(name, unit)`` in about a microsecond.

    Build it from the experiments to serve (usually ``Assigner.from_store(store)``);
    rebuild when ``store.version()`` moves past ``assigner.version`` (``is_stale``).
    It raises ConfigError if two live experiments of one layer overlap.
    """

    def __init__(self, experiments: Iterable[Experiment], *, version: int | None = None):
        experiments = list(experiments)
        for e in experiments:
            if not isinstance(e, Experiment):
                raise ConfigError(f"Assigner takes Experiment objects, got {type(e).__name__}")
        names = [e.name for e in experiments]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"experiment(s) {', '.join(twice)} given more than once to Assigner")
        check_layers(experiments)
        self._compiled = {e.name: _Compiled(e) for e in experiments}
        self.experiments = {e.name: e for e in experiments}
        self.version = version

    @classmethod
    def from_store(cls, store) -> "Assigner":
        """Every experiment in an ``ExperimentStore``, stamped with the store's version."""
        version = store.version()  # read first: a change after it makes us stale, never missed
        return cls(store.list(), version=version)

    def is_stale(self, store) -> bool:
        """True when the store has changed since this Assigner was built from it."""
        return store.version() != self.version

    @property
    def names(self) -> list[str]:
        return list(self._compiled)

    def __contains__(self, name: object) -> bool:
        return name in self._compiled

    def _get(self, name: str) -> _Compiled:
        try:
            return self._compiled[name]
        except (KeyError, TypeError):
            raise NotFound(f"no experiment {name!r} in this Assigner; it has: "
                           f"{', '.join(sorted(self._compiled)) or 'none'}") from None

    def variant(self, name: str, unit_id: Any) -> str | None:
        """The variant of experiment ``name`` for ``unit_id``; None outside its share or
        for a draft, control once stopped (see ``assign``)."""
        compiled = self._compiled.get(name) if type(name) is str else None
        if compiled is None:
            compiled = self._get(name)
        kind = type(unit_id)
        if kind is str and unit_id:
            key = unit_id.encode()
        elif kind is int:
            key = str(unit_id).encode()
        else:
            key = _slow_unit_key(unit_id)
        return compiled.variant(key)

    def payload(self, name: str, unit_id: Any) -> dict | None:
        """The payload of the unit's variant (a fresh dict), or None when ``variant`` is None."""
        chosen = self.variant(name, unit_id)
        return None if chosen is None else dict(self._compiled[name].payloads[chosen])

    def assignments(self, unit_id: Any) -> dict[str, str]:
        """``{experiment: variant}`` for every experiment the unit is in."""
        key = unit_key(unit_id)
        out = {}
        for name, compiled in self._compiled.items():
            chosen = compiled.variant(key)
            if chosen is not None:
                out[name] = chosen
        return out
