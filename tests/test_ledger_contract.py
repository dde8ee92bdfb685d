"""The prediction-ledger contract (``lab.testing.ledger``) on SQLite and on PostgreSQL.

One PostgreSQL for the module (``tests/_postgres.py``), a fresh database per test.
"""

from __future__ import annotations

import itertools

import pytest

from lab.testing.ledger import LedgerContract
from tests._postgres import postgres_fixture

postgres = postgres_fixture(scope="module")
_numbers = itertools.count()


class TestSqliteLedger(LedgerContract):
    @pytest.fixture
    def ledger_target(self, tmp_path):
        return tmp_path / "data" / "ledger.db"


class TestPostgresLedger(LedgerContract):
    enforces_append_only = True

    @pytest.fixture
    def ledger_target(self, postgres):
        return postgres.new_database(f"ledger_{next(_numbers)}")

    def tamper(self, target, sql):
        import psycopg2

        conn = psycopg2.connect(target)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()


def test_the_postgresql_rows_have_the_sqlite_ledgers_columns():
    from lab.serving._pg_ledger import COLUMNS
    from lab.serving.ledger import _COLUMNS

    assert COLUMNS == _COLUMNS
