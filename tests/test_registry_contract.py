"""The registry contract (``lab.testing.registry.RegistryContract``) against both built-in
backends: a SQLite file in tmp_path, and a real PostgreSQL (one server for the module, a
fresh database per test), chosen by ``Registry.open`` from the URL."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

from lab import postgres as pg
from lab.errors import LabError, NotFound
from lab.registry import Registry
from lab.testing.registry import RegistryContract
from tests._helpers import free_port
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


# -- choosing the backend by URL, and what a URL may reveal ------------------------------------

def test_a_postgresql_registry_setting_reaches_registry_open_through_the_config(postgres, project):
    from lab.config import LabConfig
    from lab.experiments import ExperimentStore

    url = postgres.new_database("configured")
    config = LabConfig(root=project, registry=url)
    assert config.registry_path == url
    with Registry.open(config.registry_path, project_root=config.root) as reg:
        reg.register_model("churn", run_id=None, flavor="f", artifact_path="runs/m", metrics={}, lineage={})
    with ExperimentStore.open(config.registry_path) as store:
        assert store.version() == 0
    with Registry.open(Path(config.registry_path), project_root=project) as reg:  # a path made of the URL
        assert [v.version for v in reg.list_model_versions("churn")] == [1]
    assert not (project / "registry.db").exists()


def test_a_password_in_the_url_is_masked_everywhere_it_shows(postgres, project):
    url = postgres.new_database("secret").replace("postgres@", "postgres:hunter2@")
    with Registry.open(url, project_root=project) as reg:
        assert reg.path == url.replace("hunter2", "***")
        with pytest.raises(NotFound) as caught:
            reg.get_run("nope")
        assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
        reg.start_run(kind="train")
        assert "hunter2" not in json.dumps(reg.list_runs(), default=str)
    dead = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(LabError, match=r"cannot connect to postgresql://postgres:\*\*\*@.*check that the server runs") \
            as caught:
        Registry.open(dead, project_root=project)
    assert "hunter2" not in str(caught.value)
    assert pg.mask_url("postgresql://u:p@h/db?password=p&sslmode=require") == \
        "postgresql://u:***@h/db?password=***&sslmode=require"


def test_a_missing_driver_names_the_extra_to_install(monkeypatch, project):
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(LabError, match=r"pip install 'lab\[postgres\]'"):
        Registry.open("postgresql://postgres@127.0.0.1:1/db", project_root=project)


def test_sqlite_sql_is_translated_outside_quotes_only():
    assert pg.translate("SELECT * FROM t WHERE a = ? AND b LIKE '%?' AND \"c?\" = ?") == \
        "SELECT * FROM t WHERE a = %s AND b LIKE '%%?' AND \"c?\" = %s"
    assert pg.translate("INSERT OR IGNORE INTO t (a) VALUES (?)") == \
        "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    assert pg.is_url("postgresql://u@h/db") and pg.is_url(Path("postgresql://u@h/db")) and not pg.is_url("x.db")
