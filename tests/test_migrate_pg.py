"""`lab migrate --to postgresql://...`: a lab's SQLite registry (with the experiment
store) and ledger copied into PostgreSQL in one transaction, verified by counts and
digests; never doubled, never partial; and the PostgreSQL stores carry on from the
copy (the next version number, the next ledger id).

The lab is made through the stores' own APIs (runs, metrics, data sets, trials, two model
versions, a promotion and a rollback, an approval, evidence, drift, a flag with its audit,
ledger rows with int and str event ids); `tests/test_serving_pg.py` migrates the tiny
fraud lab and serves it. One PostgreSQL for the module, a database per test.
"""

from __future__ import annotations

import itertools
import sqlite3

import pytest

from lab.cli import main
from lab.config import load_config
from lab.experiments import Experiment, ExperimentStore, Variant
from lab.migrate import table_digest
from lab.registry import Registry
from lab.serving.ledger import Ledger, read_predictions
from lab.testing.ledger import record
from tests._postgres import postgres_fixture

postgres = postgres_fixture(scope="module")
_numbers = itertools.count()


@pytest.fixture
def small_lab(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "small"\n\n[tool.lab]\nmodel_name = "m"\n')
    config = load_config(root)
    with Registry.open(config.registry_path, project_root=root) as registry:
        run = registry.start_run(kind="train", params={"lr": 0.1, "layers": [16, 8]}, seeds={"torch": 7})
        registry.log_metrics(run, {"roc_auc": 0.81, "loss": 0.5}, step=1)
        registry.log_metrics(run, {"roc_auc": 0.83}, step=2)
        registry.record_dataset(kind="training", name="train", digest="d" * 64, path="data/train.parquet", rows=400,
                                meta={"window": ["2026-01-01", "2026-01-31"]})
        registry.record_trial(run, number=0, params={"lr": 0.1}, value=0.81, state="COMPLETE")
        registry.finish_run(run)
        for _ in range(2):
            registry.register_model("m", run_id=run, flavor="sklearn", artifact_path="runs/model",
                                    metrics={"roc_auc": 0.83}, lineage={"run": run})
        registry.promote("m", 1, reason="first")
        registry.approve("m", 2, approver="ada", note="looks right")
        registry.record_evidence("m", 2, kind="offline", passed=True, summary="ci above", payload={"lo": 0.8})
        registry.promote("m", 2, reason="second")
        registry.rollback("m", reason="back")
        registry.record_drift(run, model_name="m", model_version=1, reference="ref", current="cur",
                              scores={"amount": {"score": 0.1, "drifted": False, "method": "psi"}})
    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("rollout", (Variant("control", 0.7, {"model_version": 1}),
                                            Variant("treatment", 0.3, {"model_version": 2})), kind="flag",
                                unit="user"))
        store.start("rollout", reason="go")
        store.set_weights("rollout", {"control": 0.5, "treatment": 0.5}, reason="ramp")
    with Ledger.open(config.ledger_path) as ledger:
        for i in range(300):
            ledger.append(record(i, event_id=i if i % 2 else f"e{i}", experiment="rollout", variant="control"))
    return root


def migrate(root, url, *extra) -> int:
    return main(["--root", str(root), "migrate", "--to", url, *extra])


def sqlite_counts(path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                 if r[0] not in ("lab_migrations", "sqlite_sequence")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


def pg_counts(url) -> dict[str, int]:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                        "AND table_name <> 'lab_migrations'")
            out = {}
            for (name,) in cur.fetchall():
                cur.execute(f'SELECT count(*) FROM "{name}"')
                out[name] = cur.fetchone()[0]
            return out
    finally:
        conn.close()


def test_migrate_copies_everything_and_the_stores_carry_on(small_lab, postgres, capsys):
    name = f"lab_{next(_numbers)}"
    postgres.new_database(name)
    url = postgres.url(name, password="s3cret")  # trust: any password logs in; it must never be printed
    config = load_config(small_lab)
    assert migrate(small_lab, url) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert f'registry = "{postgres.url(name, password="***")}"' in out and "ledger = " in out
    source = {**sqlite_counts(config.registry_path), **sqlite_counts(config.ledger_path)}
    target = pg_counts(url)
    assert {t: target[t] for t in source} == source and source["predictions"] == 300
    assert out.count("verified") == len(source)

    with Registry.open(config.registry_path, project_root=small_lab) as old, \
            Registry.open(url, project_root=small_lab) as new:
        assert new.alias_history("m") == old.alias_history("m")
        assert new.list_runs() == old.list_runs()
        assert new.approvals("m") == old.approvals("m") and new.evidence("m") == old.evidence("m")
        assert new.get_alias("m", "champion").version == 1
        assert new.register_model("m", run_id=None, flavor="sklearn", artifact_path="runs/model", metrics={},
                                  lineage={}).version == 3  # the copy's versions continue
        new.promote("m", 3, reason="on PostgreSQL")
    with ExperimentStore.open(config.registry_path) as old, ExperimentStore.open(url) as new:
        assert new.get("rollout") == old.get("rollout") and new.audit("rollout") == old.audit("rollout")
    before = read_predictions(config.ledger_path)
    assert read_predictions(url) == before  # ids, int and str event ids, JSON columns: as they were
    with Ledger.open(url) as ledger:
        ledger.append(record(1000))
    assert read_predictions(url)[-1]["id"] == before[-1]["id"] + 1  # the identity sequence moved past the copy


def test_a_second_migrate_is_refused_and_nothing_is_doubled(small_lab, postgres, capsys):
    url = postgres.new_database(f"lab_{next(_numbers)}")
    assert migrate(small_lab, url) == 0
    counts = pg_counts(url)
    assert migrate(small_lab, url) == 2
    assert "is not empty" in capsys.readouterr().err
    assert pg_counts(url) == counts


def test_a_table_postgresql_lacks_refuses_the_whole_copy_unless_forced(small_lab, postgres, capsys):
    config = load_config(small_lab)
    conn = sqlite3.connect(config.registry_path)
    conn.execute("CREATE TABLE team_notes (id INTEGER PRIMARY KEY, note TEXT)")
    conn.execute("INSERT INTO team_notes (note) VALUES ('kept in SQLite')")
    conn.commit()
    conn.close()
    url = postgres.new_database(f"lab_{next(_numbers)}")
    assert migrate(small_lab, url) == 2
    assert "no table 'team_notes'" in capsys.readouterr().err
    assert set(pg_counts(url).values()) == {0}  # not one row copied
    assert migrate(small_lab, url, "--force") == 0
    out = capsys.readouterr().out
    assert "left behind (no PostgreSQL table): registry:team_notes (1 rows)" in out
    assert pg_counts(url)["predictions"] == 300


def test_the_digest_ignores_order_and_sees_any_change():
    keep = lambda v, source: v  # noqa: E731
    rows = [(1, "a", 0.5), (2, "b", None), (3, "c", 1.0)]
    count, digest = table_digest(rows, [keep] * 3, source=True)
    assert (count, digest) == table_digest(list(reversed(rows)), [keep] * 3, source=True)
    assert digest != table_digest([(1, "a", 0.5), (2, "b", None), (3, "c", 1.5)], [keep] * 3, source=True)[1]
    assert digest != table_digest(rows[:2], [keep] * 3, source=True)[1]
    doubled = table_digest(rows + rows[:1], [keep] * 3, source=True)
    assert doubled[0] == 4 and doubled[1] != digest
