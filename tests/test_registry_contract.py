"""The registry contract (``lab.testing.registry.RegistryContract``) against both built-in
backends: a SQLite file in tmp_path, and a real PostgreSQL (one server for the module, a
fresh database per test), chosen by ``Registry.open`` from the URL."""

from __future__ import annotations

import itertools

import pytest

from lab.registry import Registry
from lab.testing.registry import RegistryContract
from tests._postgres import postgres_fixture

postgres = postgres_fixture(scope="module")
_numbers = itertools.count()


@pytest.fixture
def project(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    return tmp_path


class TestSqliteRegistry(RegistryContract):
    @pytest.fixture
    def registry(self, project):
        with Registry.open(project / "registry.db") as reg:
            yield reg


class TestPostgresRegistry(RegistryContract):
    @pytest.fixture
    def registry(self, postgres, project):
        url = postgres.new_database(f"registry_{next(_numbers)}")
        with Registry.open(url, project_root=project) as reg:
            yield reg
