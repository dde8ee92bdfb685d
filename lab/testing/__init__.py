"""Contract test suites for plugin authors (they import pytest).

Subclass one and give it a ``store`` fixture to prove a backend in a few lines::

    class TestMyStore(OfflineStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "db")

The suites load on first use (``__getattr__``): lab's pytest plugin
(``lab.testing.pytest_plugin``, loaded by every pytest run where lab is installed) lives
in this package, and must not cost each run the suites' imports (pyarrow, polars, numpy).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EventLogContract": "lab.testing.event_log",
    "StageExecutorContract": "lab.testing.executors",
    "FixedModelFlavor": "lab.testing.flavors",
    "ModelFlavorContract": "lab.testing.flavors",
    "ModelSpecContract": "lab.testing.modelspec",
    "check_model_spec": "lab.testing.modelspec",
    "PointInTimeContract": "lab.testing.point_in_time",
    "OfflineStoreContract": "lab.testing.stores",
    "OnlineStoreContract": "lab.testing.stores",
}

__all__ = [
    "EventLogContract", "FixedModelFlavor", "ModelFlavorContract", "ModelSpecContract", "OfflineStoreContract", "OnlineStoreContract",
    "PointInTimeContract", "StageExecutorContract", "check_model_spec",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
