"""A tiny lab that has served traffic: ledger rows over several days, their labels in the
offline source and freshness objectives, so ``lab monitor run``'s freshness and quality
checks have something to measure (the JupyterLab server and browser tests use it)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from lab.config import load_config
from lab.plugins import get_plugin_manager, model_spec
from lab.serving.ledger import Ledger, PredictionRecord
from plugins.fraud.testing import build_tiny_lab

SERVED_FROM = dt.date(2018, 5, 1)
SERVED_DAYS = 12  # with the views' 7-day label delay, the first days' labels are due by the window's end


def served_tiny_lab(root: Path):
    """A tiny lab that served ``SERVED_DAYS`` days of v1 traffic (every feature 60 s old at
    serving), its labels in the offline source, and freshness objectives of 30 s
    (``customer_spending``: breached) and 10 min (``terminal_risk``: kept): its config."""
    build_tiny_lab(root)
    with open(root / "pyproject.toml", "a") as fh:
        fh.write('\n[tool.lab.freshness]\ncustomer_spending = "30s"\nterminal_risk = "10m"\n')
    config = load_config(root)
    pm = get_plugin_manager(config)
    spec = model_spec(pm, config)
    rng = np.random.default_rng(3)
    rows = []
    with Ledger.open(config.ledger_path) as ledger:
        for day in range(SERVED_DAYS):
            for i in range(50):
                event_id = day * 1000 + i
                when = dt.datetime.combine(SERVED_FROM + dt.timedelta(days=day), dt.time()) + dt.timedelta(
                    seconds=int(rng.integers(0, 86_400)))
                score = float(rng.random())
                label = int(rng.random() < score)  # scores that rank the labels: an AUC well above 0.5
                features = {name: float(rng.normal()) for name in spec.features}
                ledger.append(PredictionRecord(
                    event_id=event_id, model_name=spec.name, model_version=1, features=features,
                    defaults={view: False for view in spec.views}, score=score, latency_ms=0.5,
                    request={spec.request.id: event_id, spec.request.timestamp: when.isoformat(), "CUSTOMER_ID": 1,
                             "TERMINAL_ID": 10, "TX_AMOUNT": 10.0},
                    feature_ages={view: 60.0 for view in spec.views}))
                rows.append((event_id, when, label))
    offline = pm.hook.lab_offline_store(config=config)
    try:
        ids, whens, labels = zip(*rows)
        offline.write_source(spec.source, pa.table({
            spec.request.id: pa.array(ids, pa.int64()), spec.request.timestamp: pa.array(whens, pa.timestamp("us")),
            "CUSTOMER_ID": pa.array([1] * len(ids), pa.int64()), "TERMINAL_ID": pa.array([10] * len(ids), pa.int64()),
            "TX_AMOUNT": pa.array([10.0] * len(ids), pa.float64()), spec.label: pa.array(labels, pa.int64())}))
    finally:
        offline.close()
    return config
