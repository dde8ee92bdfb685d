"""Cost of the feedback figures and of the bandit's loop on a real ledger.

    .venv/bin/python benchmarks/bench_feedback.py [--rows 50000] [--new 1000]

Writes ``--rows`` predictions (15 features each, one experiment of control, b and a 10 %
holdout, units assigned by the real sticky hash) into a ledger in a temporary folder, then
times: ``feedback_from_files`` over all of them (twice); the /metrics collector's first
refresh and a refresh after ``--new`` more rows; a first bandit update counting every
outcome, the same update again (nothing new), and one after ``--new`` more rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from lab.experiments import Assigner, Experiment, ExperimentStore, Variant  # noqa: E402
from lab.experiments.bandit_loop import update_bandit  # noqa: E402
from lab.monitoring.feedback import feedback_from_files  # noqa: E402
from lab.serving.ledger import Ledger, PredictionRecord  # noqa: E402
from plugins.litestar_serving.feedback_metrics import FeedbackCollector  # noqa: E402

FEATURES = {f"f{i}": 0.5 for i in range(15)}


def timed(what: str, call):
    began = time.perf_counter()
    out = call()
    print(f"{what}: {time.perf_counter() - began:.3f} s")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--new", type=int, default=1_000)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    registry, ledger = folder / "registry.db", folder / "ledger.db"
    with ExperimentStore.open(registry) as store:
        store.create(Experiment("exp", (Variant("control", 0.45), Variant("b", 0.45),
                                        Variant("holdout", 0.1, {"holdout": True})), unit="user"))
        store.start("exp")
        assigner = Assigner.from_store(store)
    rng = np.random.default_rng(0)

    def write(lo: int, hi: int) -> None:
        with Ledger.open(ledger, queue_size=hi - lo + 1) as out:  # no record dropped for a full queue
            for i in range(lo, hi):
                out.append(PredictionRecord(i, "m", 1, FEATURES, {"v": False}, float(rng.random()), 1.0,
                                            request={"user": i, "amount": 12.5}, experiment="exp",
                                            variant=assigner.variant("exp", i)))

    def outcomes(n: int) -> pl.DataFrame:
        return pl.DataFrame({"event": np.arange(n), "ok": (rng.random(n) < 0.1).astype(np.int64)})

    n = args.rows
    write(0, n)
    for _ in range(2):
        [report] = timed(f"feedback_from_files, {n} rows", lambda: feedback_from_files(ledger, registry,
                                                                                      experiment="exp"))
    state = types.SimpleNamespace(model_name="m", ledger=types.SimpleNamespace(path=ledger),
                                  router=types.SimpleNamespace(registry_path=registry))
    collector = FeedbackCollector(state)
    timed("collector: first refresh", collector.refresh)
    write(n, n + args.new)
    timed(f"collector: refresh after {args.new} new rows", collector.refresh)
    kwargs = {"registry_path": registry, "ledger_path": ledger, "id_column": "event", "label_column": "ok"}
    table = outcomes(n + args.new)
    first = timed(f"bandit update, {n + args.new} rows", lambda: update_bandit("exp", table, seed=1, **kwargs))
    again = timed("bandit update again, nothing new", lambda: update_bandit("exp", table, **kwargs))
    write(n + args.new, n + 2 * args.new)
    table = outcomes(n + 2 * args.new)
    later = timed(f"bandit update after {args.new} new rows", lambda: update_bandit("exp", table, **kwargs))
    print(f"counted {first.n_counted}, then {again.n_counted}, then {later.n_counted}; "
          f"exploration {report.exploration_share:.3f}, holdout {report.holdout_share:.3f}")


if __name__ == "__main__":
    main()
