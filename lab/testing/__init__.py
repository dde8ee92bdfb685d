"""Contract test suites for plugin authors (they import pytest).

Subclass one and give it a ``store`` fixture to prove a backend in a few lines::

    class TestMyStore(OfflineStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "db")
"""

from lab.testing.event_log import EventLogContract
from lab.testing.executors import StageExecutorContract
from lab.testing.flavors import FixedModelFlavor, ModelFlavorContract
from lab.testing.modelspec import ModelSpecContract, check_model_spec
from lab.testing.point_in_time import PointInTimeContract
from lab.testing.stores import OfflineStoreContract, OnlineStoreContract

__all__ = [
    "EventLogContract", "FixedModelFlavor", "ModelFlavorContract", "ModelSpecContract", "OfflineStoreContract", "OnlineStoreContract",
    "PointInTimeContract", "StageExecutorContract", "check_model_spec",
]
