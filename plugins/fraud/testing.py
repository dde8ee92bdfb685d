"""A tiny servable lab, for tests and the serving benchmark.

``build_tiny_lab(folder)`` makes a real lab in ``folder``: a pyproject.toml, a model of
the built-in flavor trained for one epoch on a few hundred synthetic rows, registered
and promoted to champion in a real registry, and a few customers and terminals written
to the real online store. It uses the same plugin hooks the server does, so whatever
store and flavor plugins are installed are the ones exercised.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lab.config import load_config
from lab.plugins import feature_views, get_plugin_manager, model_flavor
from lab.registry import Registry
from plugins.fraud.features import FEATURE_COLUMNS

WATERMARK = dt.datetime(2018, 8, 1, 0, 0)
KNOWN_CUSTOMERS = (1, 2, 3)
KNOWN_TERMINALS = (10, 11, 12)
MODEL_ARTIFACT = "runs/models/fraud-v1"

PYPROJECT = """[project]
name = "tiny-serving-lab"
version = "0"

[tool.lab]
model_name = "fraud"

[tool.lab.fraud]
"""


@dataclass(frozen=True)
class TinyLab:
    root: Path
    model_name: str
    model_version: int
    watermark: dt.datetime
    customers: tuple[int, ...]
    terminals: tuple[int, ...]

    def transaction(self, i: int = 1, *, customer: int | None = None, terminal: int | None = None,
                    amount: float = 42.5, when: dt.datetime | None = None) -> dict:
        """A valid /predict body for a known customer and terminal (unless given)."""
        when = when or (self.watermark + dt.timedelta(hours=10, minutes=i % 60))
        return {
            "TRANSACTION_ID": i,
            "TX_DATETIME": when.isoformat(),
            "CUSTOMER_ID": self.customers[i % len(self.customers)] if customer is None else customer,
            "TERMINAL_ID": self.terminals[i % len(self.terminals)] if terminal is None else terminal,
            "TX_AMOUNT": amount,
        }


def _training_rows(feature_names: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(feature_names))).astype(np.float32)
    x[:, 0] = rng.gamma(2.0, 30.0, size=n)  # TX_AMOUNT-like
    y = ((x[:, 0] > 90) | (x[:, -1] > 1.2)).astype(np.float32)  # something learnable
    return x, y


def build_tiny_lab(folder: str | Path, *, rows: int = 400, seed: int = 7) -> TinyLab:
    """Write a servable lab into ``folder`` (created) and return what it holds."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    config = load_config(root)
    pm = get_plugin_manager(config)

    flavor = model_flavor(pm, "lightning_mlp")
    names = list(FEATURE_COLUMNS)
    x, y = _training_rows(names, rows, seed)
    split = rows * 3 // 4
    fit = flavor.fit(x[:split], y[:split], x[split:], y[split:], names,
                     {"hidden_sizes": [16], "batch_size": 128}, seed=seed,
                     workdir=root / "runs" / "train", max_epochs=1)
    flavor.save(fit.model, root / MODEL_ARTIFACT)

    with Registry.open(config.registry_path, project_root=root) as registry:
        version = registry.register_model(
            config.model_name, run_id=None, flavor=flavor.name, artifact_path=MODEL_ARTIFACT,
            metrics={k: float(v) for k, v in fit.metrics.items()}, lineage={"built_by": "build_tiny_lab"},
        )
        registry.promote(config.model_name, version.version, reason="tiny lab")

    views = feature_views(pm, config)
    store = pm.hook.lab_online_store(config=config)
    try:
        customer_view, terminal_view = views["customer_spending"], views["terminal_risk"]
        customers = {customer_view.entity: list(KNOWN_CUSTOMERS)}
        for name in customer_view.feature_names:
            customers[name] = [float(k * 3) if "NB_TX" in name else 50.0 + k for k in KNOWN_CUSTOMERS]
        terminals = {terminal_view.entity: list(KNOWN_TERMINALS)}
        for name in terminal_view.feature_names:
            terminals[name] = [float(k) if "NB_TX" in name else 0.1 for k in KNOWN_TERMINALS]
        # Counts are whole numbers in the offline store too.
        for table in (customers, terminals):
            for name in table:
                if "NB_TX" in name:
                    table[name] = [int(v) for v in table[name]]
        store.write(customer_view, pa.table(customers), WATERMARK)
        store.write(terminal_view, pa.table(terminals), WATERMARK)
    finally:
        store.close()
    return TinyLab(root, config.model_name, version.version, WATERMARK, KNOWN_CUSTOMERS, KNOWN_TERMINALS)
