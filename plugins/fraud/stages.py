"""The fraud lab's own stage: simulate. Every other stage is a platform step (``lab.steps``)."""

from __future__ import annotations

from lab.pipeline.context import StageContext
from plugins.fraud import simulator

TRANSACTIONS = "data/transactions.parquet"


def simulate(root, run_dir, *, exact, n_customers, n_terminals, nb_days, start_date, radius, seed) -> dict:
    """Simulate the transactions (the published dataset in exact mode) to ``data/transactions.parquet``."""
    with StageContext.open(root, run_dir) as ctx:
        frame = simulator.simulate(n_customers=n_customers, n_terminals=n_terminals, nb_days=nb_days,
                                   start_date=start_date, radius=radius, exact=exact, seed=seed)
        digest = simulator.write_parquet(frame, ctx.path(TRANSACTIONS))
    summary = simulator.summary(frame)
    summary["digest"] = digest
    return summary
