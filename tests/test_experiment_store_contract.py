"""The experiment-store contract (``lab.testing.experiments.ExperimentStoreContract``)
against both built-in backends: the registry's SQLite file in tmp_path, and a real
PostgreSQL (one server for the module, a fresh database per test), chosen by
``ExperimentStore.open`` from the URL; and the registry and the store sharing one database."""

from __future__ import annotations

import itertools

import pytest

from lab.experiments import ExperimentStore
from lab.registry import Registry
from lab.testing.experiments import ExperimentStoreContract, ranker
from tests._postgres import postgres_fixture

postgres = postgres_fixture(scope="module")
_numbers = itertools.count()


class TestSqliteExperimentStore(ExperimentStoreContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        return lambda: ExperimentStore.open(tmp_path / "registry.db")


class TestPostgresExperimentStore(ExperimentStoreContract):
    @pytest.fixture
    def open_store(self, postgres):
        url = postgres.new_database(f"experiments_{next(_numbers)}")
        return lambda: ExperimentStore.open(url)


def test_registry_and_experiment_store_share_one_postgres_database(postgres, tmp_path):
    url = postgres.new_database("shared")
    with ExperimentStore.open(url) as store:
        store.create(ranker())
    with Registry.open(url, project_root=tmp_path) as reg:
        owners = {(m["owner"], m["name"]) for m in reg.migrations()}
        assert ("experiments", "0002_experiment_buckets") in owners and ("registry", "0001_tracking") in owners
    with ExperimentStore.open(url) as store:  # reopening applies nothing twice
        assert [e.name for e in store.list()] == ["ranker"]
