"""In-process assignment cost: ``Assigner.variant`` against a plain dict lookup of a
precomputed unit -> variant map, same units, same run.

    .venv/bin/python benchmarks/bench_assignment.py [--units 100000] [--batch 1000]

Calls are timed in batches of --batch (a timer call per lookup would cost more than
the dict lookup itself); a figure is the median over batches of the time per call.
Cases: an experiment owning its whole layer (one hash), one owning half of its layer
(two hashes: layer, then variant), the same with string ids, one whose buckets are
split into many ranges by 40 weight changes, and the uncompiled ``assign()`` for scale. The dict map is built from the Assigner, and checked equal.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.experiments import Assigner, Experiment, Variant, assign  # noqa: E402


def per_call_ns(call, units: list, batch: int) -> float:
    """Median over batches of the nanoseconds per ``call(unit)``."""
    samples = []
    for start in range(0, len(units) - batch + 1, batch):
        chunk = units[start:start + batch]
        began = time.perf_counter_ns()
        for u in chunk:
            call(u)
        samples.append((time.perf_counter_ns() - began) / len(chunk))
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)

    experiments = [
        Experiment("ranker", (Variant("control", 0.8), Variant("treatment", 0.2, {"model_version": 2})),
                   layer="search", status="running"),
        Experiment("button", (Variant("control", 0.5), Variant("blue", 0.3), Variant("green", 0.2)),
                   layer="checkout", layer_share=(0, 5000), status="running"),
    ]
    # The same arms after 40 weight changes: their buckets lie in many ranges (bisect).
    rng = random.Random(7)
    ramped = Experiment("ramped", (Variant("control", 0.4), Variant("a", 0.3), Variant("b", 0.3)),
                        layer="ranking", status="running")
    for _ in range(40):
        cuts = sorted(rng.randrange(10_001) for _ in range(2))
        ramped = ramped.with_weights({"control": cuts[0] / 10_000, "a": (cuts[1] - cuts[0]) / 10_000,
                                      "b": (10_000 - cuts[1]) / 10_000})
    experiments.append(ramped)
    assigner = Assigner(experiments)
    int_units = list(range(args.units))
    str_units = [f"cust-{i:08d}" for i in int_units]

    ranges = sum(len(r) for r in ramped.buckets.values())
    print(f"{args.units} units, batches of {args.batch}; median ns per call")
    print(f"{'case':<44} {'Assigner':>10} {'dict':>8} {'ratio':>7}")
    for label, name, units in [("whole layer, int ids (1 hash)", "ranker", int_units),
                               ("half a layer, int ids (2 hashes)", "button", int_units),
                               ("half a layer, str ids (2 hashes)", "button", str_units),
                               (f"whole layer, {ranges} bucket ranges after 40 ramps", "ramped", int_units)]:
        mapping = {u: assigner.variant(name, u) for u in units}
        assert all(mapping[u] == assign(assigner.experiments[name], u) for u in units[:2000])
        variant = assigner.variant
        ours = per_call_ns(lambda u: variant(name, u), units, args.batch)
        lookup = mapping.get
        plain = per_call_ns(lambda u: lookup(u), units, args.batch)
        print(f"{label:<44} {ours:>10.0f} {plain:>8.0f} {ours / plain:>6.1f}x")
    slow = per_call_ns(lambda u: assign(experiments[1], u), int_units[:20_000], args.batch)
    print(f"{'assign() without compiling, half a layer':<44} {slow:>10.0f}")
    payload = per_call_ns(lambda u: assigner.payload("ranker", u), int_units, args.batch)
    print(f"{'Assigner.payload, whole layer':<44} {payload:>10.0f}")


if __name__ == "__main__":
    main()
