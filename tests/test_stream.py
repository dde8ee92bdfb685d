"""`lab stream` in process on the tiny lab: scores as the embedded predictor and the server
do, dead-letters bad events and goes on, bounds what is in flight, absorbs duplicates by
idempotency key, applies the declared policy when the model's alias moves, and its
commands refuse bad input in one line. The log backends' contract: test_stream_log.py; the
kill -9 acceptance: test_stream_kill.py."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import sys
import textwrap

import pytest

import lab
from lab import hookimpl
from lab.cli import main
from lab.config import load_config
from lab.errors import LabError
from lab.plugins import get_plugin_manager
from lab.registry import Registry
from lab.serving.ledger import Ledger
from lab.streaming import (MODEL_CHANGED, ConsumerOptions, SqliteEventLog, StreamConsumer, StreamStore,
                           open_event_log)
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab
from tests.redis_server import redis_url  # noqa: F401  (a fixture)

SINK = '''
import sqlite3, pathlib
CALLS = []

def collect(prediction):
    CALLS.append(prediction)
    # how far ahead of the committed offset the consumer has read when this side effect happens
    db = pathlib.Path(__file__).with_name("data") / "stream.db"
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT committed FROM offsets").fetchone()
    prediction["_committed_then"] = row[0] if row else 0
'''


@pytest.fixture(scope="module")
def tiny_lab_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("tiny-lab-stream"))


@pytest.fixture
def tiny(tiny_lab_template, tmp_path, monkeypatch):
    """A copy of the tiny lab with a collecting sink (``stream_sink.CALLS``), cwd set to it."""
    folder = tmp_path / "lab"
    shutil.copytree(tiny_lab_template.root, folder)
    (folder / "stream_sink.py").write_text(SINK)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("LAB_HOME", raising=False)
    monkeypatch.delitem(sys.modules, "stream_sink", raising=False)
    return dataclasses.replace(tiny_lab_template, root=folder)


def _configure(tiny, body: str) -> None:
    with (tiny.root / "pyproject.toml").open("a") as f:
        f.write("\n" + textwrap.dedent(body))


def _consumer(tiny, **overrides) -> StreamConsumer:
    config = load_config(tiny.root)
    options = ConsumerOptions.from_config(config, **{"wait_s": 0.0, **overrides})
    return StreamConsumer(config, get_plugin_manager(config), options)


def _publish(tiny, events) -> list[str]:
    config = load_config(tiny.root)
    with open_event_log(config, get_plugin_manager(config)) as log:
        return log.append(events)


def _calls():
    return sys.modules["stream_sink"].CALLS


def test_events_are_scored_as_the_embedded_predictor_scores_them(tiny):
    _configure(tiny, '[tool.lab.stream]\nsinks = ["stream_sink:collect"]\nbatch_size = 4\n')
    events = [tiny.transaction(i) for i in range(10)]
    ids = _publish(tiny, events)
    with _consumer(tiny) as consumer:
        summary = consumer.run(drain=True)
    assert summary["scored"] == 10 and summary["lag"] == 0 and summary["batches"] == 3
    with lab.load_model("fraud@champion", root=tiny.root, ledger=False) as predictor:
        expected = [predictor.predict(e) for e in events]
    calls = _calls()
    assert [c["log_id"] for c in calls] == ids
    for call, want in zip(calls, expected):
        assert call["idempotency_key"] == f"events/{call['log_id']}/fraud/v{tiny.model_version}"
        for key in ("event_id", "score", "features", "defaults", "stale", "model", "model_version"):
            assert call[key] == want[key], key
        # backpressure: nothing is read past the batch in hand (at most batch_size ahead of the commit)
        assert 0 < int(call["log_id"]) - call["_committed_then"] <= 4
    with StreamStore(load_config(tiny.root).stream_path) as store:
        rows = store.predictions("events", "scorer")
    assert [r["key"] for r in rows] == [c["idempotency_key"] for c in calls]
    with Ledger.open(load_config(tiny.root).ledger_path) as ledger:  # the server's ledger, keyed
        assert sorted(r["request_id"] for r in ledger.read(limit=100)) == sorted(r["key"] for r in rows)


def test_bad_events_go_to_the_dead_letters_with_the_reason_and_the_consumer_goes_on(tiny):
    good = tiny.transaction(1)
    missing = {k: v for k, v in tiny.transaction(3).items() if k != "TERMINAL_ID"}
    _publish(tiny, [good, "{not json", "[1, 2]", {**tiny.transaction(2), "TX_AMOUNT": "lots"}, missing,
                    {**tiny.transaction(4), "SURPRISE": 1}, tiny.transaction(5)])
    with _consumer(tiny, batch_size=3) as consumer:
        summary = consumer.run(drain=True)
    assert (summary["scored"], summary["dead_letter"], summary["lag"]) == (2, 5, 0)
    with StreamStore(load_config(tiny.root).stream_path) as store:
        reasons = [r["reason"] for r in store.dead_letters("events", "scorer")]
        assert [r["log_id"] for r in store.predictions("events", "scorer")] == ["1", "7"]
    assert reasons[0].startswith("not JSON") and "not a JSON object" in reasons[1]
    assert "'TX_AMOUNT'" in reasons[2] and "'TERMINAL_ID' is missing" in reasons[3] and "'SURPRISE'" in reasons[4]


def _second_version(tiny) -> None:
    config = load_config(tiny.root)
    with Registry.open(config.registry_path, project_root=tiny.root) as registry:
        version = registry.register_model("fraud", run_id=None, flavor="lightning_mlp", artifact_path=MODEL_ARTIFACT,
                                          metrics={}, lineage={"built_by": "test"})
        registry.promote("fraud", version.version, reason="test: the alias moves")


@pytest.mark.parametrize("policy, rescored", [("forward", 0), ("rescore", 3)])
def test_a_moved_alias_applies_the_declared_policy_and_records_it(tiny, policy, rescored):
    seen = []

    class Watcher:
        @hookimpl
        def lab_on_event(self, event):
            seen.append(event)

    _publish(tiny, [tiny.transaction(i) for i in range(4)])
    with _consumer(tiny, on_model_change=policy, refresh_s=3600) as consumer:
        consumer.pm.register(Watcher())
        consumer.run(drain=True)
        _second_version(tiny)
        _publish(tiny, [tiny.transaction(i) for i in range(4, 7)])  # after the move, scored with v1
        consumer.run(drain=True)
        assert consumer.version == 1 and consumer.check_model() and consumer.version == 2
        _publish(tiny, [tiny.transaction(7)])
        consumer.run(drain=True)
    with StreamStore(load_config(tiny.root).stream_path) as store:
        rows = store.predictions("events", "scorer")
        (change,) = store.model_changes("events", "scorer")
        assert store.model_state("events", "scorer")["model_version"] == 2
    assert (change["from_version"], change["to_version"], change["policy"]) == (1, 2, policy)
    assert change["rescored"] == rescored and change["alias_moved_at"]
    v2 = sorted(int(r["log_id"]) for r in rows if r["model_version"] == 2)
    assert v2 == ([5, 6, 7, 8] if policy == "rescore" else [8])
    assert len(rows) == 8 + rescored
    assert [e.payload["to_version"] for e in seen if e.name == MODEL_CHANGED] == [2]


def test_a_model_change_while_the_consumer_was_down_is_applied_at_start(tiny):
    _publish(tiny, [tiny.transaction(i) for i in range(3)])
    with _consumer(tiny, on_model_change="rescore") as consumer:
        consumer.run(drain=True)
    _second_version(tiny)
    with _consumer(tiny, on_model_change="rescore") as consumer:
        assert consumer.version == 2
    with StreamStore(load_config(tiny.root).stream_path) as store:
        (change,) = store.model_changes("events", "scorer")
    assert (change["from_version"], change["to_version"], change["rescored"]) == (1, 2, 0)  # all were older


def test_redis_a_batch_committed_but_not_acknowledged_is_absorbed_by_its_keys(tiny, redis_url):
    _configure(tiny, f'[tool.lab.stream]\nsinks = ["stream_sink:collect"]\n\n'
                     f'[tool.lab.redis_streams]\nurl = "{redis_url}"\nclaim_idle_s = 0.0\n')
    ids = _publish(tiny, [tiny.transaction(i) for i in range(5)])
    assert all("-" in i for i in ids)
    dying = _consumer(tiny, consumer="c1").open()
    try:  # a consumer that commits its predictions and dies before its XACK
        o = dying.options
        events = dying.log.read(o.group, o.consumer, 5)
        predictions, dead = dying._score(events)
        dying._deliver(predictions)
        dying.store.commit_batch(dying.log, o.group, o.consumer, events, predictions, dead)
    finally:
        dying.close()
    with _consumer(tiny, consumer="c2") as consumer:
        assert consumer.log.lag("scorer") == 5  # pending: delivered, never acknowledged
        summary = consumer.run(drain=True)
    assert (summary["scored"], summary["duplicate"], summary["lag"]) == (0, 5, 0)
    assert [c["log_id"] for c in _calls()] == ids + ids  # offered twice, same keys
    with StreamStore(load_config(tiny.root).stream_path) as store:
        assert len(store.predictions("events", "scorer")) == 5


def test_a_plugin_can_supply_the_event_log(tiny, tmp_path):
    class ElsewhereLog:
        @hookimpl
        def lab_event_log(self, config, stream):
            return SqliteEventLog(tmp_path / "elsewhere.db", stream)

    config = load_config(tiny.root)
    pm = get_plugin_manager(config)
    pm.register(ElsewhereLog())
    with open_event_log(config, pm, "other") as log:
        assert log.path == tmp_path / "elsewhere.db" and log.stream == "other"
    with open_event_log(config, get_plugin_manager(config)) as log:  # no plugin: data/stream.db
        assert log.path == config.stream_path and log.backend == "sqlite"


def test_publish_and_status_from_the_command_line(tiny, capsys):
    assert main(["stream", "status"]) == 0  # reading creates nothing
    assert "(not created yet)): 0 event(s)" in capsys.readouterr().out
    assert not (tiny.root / "data" / "stream.db").exists()
    good = tiny.root / "good.jsonl"
    good.write_text(json.dumps(tiny.transaction(1)) + "\n\n" + json.dumps(tiny.transaction(2)) + "\n")
    assert main(["stream", "publish", str(good), "--stream", "orders"]) == 0
    assert "appended 2 event(s) to stream orders (ids 1 .. 2)" in capsys.readouterr().out
    bad = tiny.root / "bad.jsonl"
    bad.write_text(json.dumps(tiny.transaction(3)) + "\n{oops\n")
    assert main(["stream", "publish", str(bad), "--stream", "orders"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error: ") and "line 2 is not JSON" in err and "nothing was appended" in err
    assert main(["stream", "status", "--stream", "orders"]) == 0
    out = capsys.readouterr().out
    assert "stream orders (sqlite" in out and "2 event(s)" in out and "no consumer group yet" in out
    assert main(["stream", "run", "--stream", "orders", "--drain", "--no-ledger"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["scored"] == 2
    assert main(["stream", "status", "--stream", "orders", "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert (group["group"], group["lag"], group["predictions"], group["model"]) == ("scorer", 0, 2, "fraud v1")


@pytest.mark.parametrize("args, config, message", [
    (["--model", "nosuch@champion"], "", "nosuch"),
    (["--model", "fraud@"], "", "write MODEL, MODEL@ALIAS or MODEL@VERSION"),
    (["--group", "two words"], "", "a consumer group name must be"),
    ([], '[tool.lab.stream]\nsinks = ["nowhere_module:f"]\n', "cannot import 'nowhere_module'"),
    ([], '[tool.lab.stream]\nsinks = ["no-colon"]\n', "is not \"module:function\""),
    ([], '[tool.lab.stream]\non_model_change = "later"\n', "on_model_change must be one of"),
    ([], '[tool.lab.redis_streams]\nurl = "redis://127.0.0.1:1/0"\n', "cannot reach Redis at redis://127.0.0.1:1/0"),
])
def test_bad_settings_are_one_line_errors_naming_the_fix(tiny, capsys, args, config, message):
    _configure(tiny, config)
    assert main(["stream", "run", "--drain", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error: ") and message in err and err.count("\n") == 1, err


def test_a_group_scores_one_model(tiny):
    with _consumer(tiny) as consumer:
        consumer.run(drain=True)
    with sqlite3.connect(load_config(tiny.root).stream_path) as conn:
        conn.execute("UPDATE model_state SET model_name = 'other'")
    with pytest.raises(LabError, match="scores model 'other', not 'fraud'.*use another --group"):
        _consumer(tiny).open()


def test_a_failing_sink_stops_the_consumer_before_the_commit_in_one_line(tiny, capsys):
    (tiny.root / "flaky_sink.py").write_text(
        "CALLS = []\n\ndef send(prediction):\n    CALLS.append(prediction['idempotency_key'])\n"
        "    if len(CALLS) == 3:\n        raise ConnectionError('the webhook is down')\n")
    _configure(tiny, '[tool.lab.stream]\nsinks = ["flaky_sink:send"]\nbatch_size = 4\n')
    _publish(tiny, [tiny.transaction(i) for i in range(6)])
    assert main(["stream", "run", "--drain", "--no-ledger"]) == 2
    banner, error = capsys.readouterr().err.splitlines()  # the consumer's start line, then the error
    assert banner.startswith("lab stream: events (sqlite ")
    assert error.startswith("lab: error: sink flaky_sink:send failed on events/3/fraud/v1 (ConnectionError: "
                            "the webhook is down); nothing of the batch was committed")
    assert main(["stream", "status", "--group", "scorer", "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert (group["lag"], group["predictions"], group["model"]) == (6, 0, "fraud v1")
