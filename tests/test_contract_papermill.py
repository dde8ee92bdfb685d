"""The built-in papermill executor against the stage-executor contract."""

import pytest

from lab.testing.executors import StageExecutorContract
from plugins.papermill_executor import PapermillExecutor


class TestPapermillExecutor(StageExecutorContract):
    @pytest.fixture
    def executor(self):
        return PapermillExecutor()
