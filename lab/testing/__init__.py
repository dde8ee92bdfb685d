"""Contract test suites for plugin authors (they import pytest).

Subclass one and give it a ``store`` fixture to prove a backend in a few lines::

    class TestMyStore(OfflineStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "db")
"""

from lab.testing.point_in_time import PointInTimeContract
from lab.testing.stores import OfflineStoreContract, OnlineStoreContract

__all__ = ["OfflineStoreContract", "OnlineStoreContract", "PointInTimeContract"]
