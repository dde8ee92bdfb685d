"""``kill -9`` during ``lab features materialize``, 20 times at random moments: each view
is left at its old watermark with its old rows or at the new one with the new rows
(the watermark moves only in the transaction that writes the rows it covers), the rerun
completes, and the online store then equals the offline point-in-time values."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.config import load_config
from lab.features.materialize import materialize_views
from lab.features.stores import EVENT_TIME
from lab.plugins import feature_views, get_plugin_manager
from plugins.duckdb_offline import DuckDBOfflineStore
from plugins.sqlite_online import SQLiteOnlineStore
from tests.conftest import fraud_lab_with_transactions

ROOT = Path(__file__).resolve().parent.parent
KILLS = 20
START = dt.datetime(2018, 4, 10, 0, 0)


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    return fraud_lab_with_transactions(tmp_path_factory.mktemp("lab"),
                                       n_customers=60, n_terminals=100, nb_days=16, seed=7)


def command(root: Path, as_of: dt.datetime, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lab.cli", "--root", str(root), "features", "materialize",
            "--as-of", as_of.isoformat(), *extra]


def offline_values(offline, views, times) -> dict:
    """``{(view name, time): (rows, event times) for every entity}`` from one
    point-in-time retrieval per view over every entity at every time."""
    import pyarrow as pa

    from lab.features.materialize import AS_OF_COLUMN, _with_event_times, entity_rows_at

    out = {}
    for view in views:
        keys = entity_rows_at(offline, view, times[0]).column(view.entity)
        probes = pa.table({view.entity: pa.concat_arrays([keys.combine_chunks()] * len(times)),
                           AS_OF_COLUMN: pa.array([t for t in times for _ in range(len(keys))], pa.timestamp("us"))})
        rows = offline.get_historical_features(probes, [view], AS_OF_COLUMN)
        source = offline.read_source(view.source, [view.entity, view.timestamp])
        for i, at in enumerate(times):
            part = rows.slice(i * len(keys), len(keys)).select([view.entity, *view.feature_names])
            part = _with_event_times(view, part, source, at)
            out[view.name, at] = (part.column(view.entity).to_pylist(),
                                  part.select(view.feature_names).to_pylist(), part.column(EVENT_TIME).to_pylist())
    return out


def assert_online_equals_offline(expected, online, views, allowed: set) -> dict:
    """Each view's watermark is one of ``allowed``, and its rows, event times included,
    equal the offline values at that watermark for every entity."""
    marks = {}
    for view in views:
        state = online.state(view)
        mark = None if state is None else state.watermark
        assert mark in allowed, (view.name, mark, allowed)
        marks[view.name] = mark
        keys, rows, event_times = expected[view.name, mark]
        assert online.read(view, keys) == rows, view.name
        assert [t.event_time for t in online.row_times(view, keys)] == event_times, view.name
        assert state.rows == len(keys)
    return marks


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_views_consistent_and_the_rerun_completes(small_lab):
    config = load_config(small_lab)
    views = list(feature_views(get_plugin_manager(config), config).values())
    offline = DuckDBOfflineStore(config.root / "data" / "offline.duckdb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = [START + dt.timedelta(hours=5 * i) for i in range(KILLS + 1)]
    expected = offline_values(offline, views, times)
    # Measure one whole run; each kill falls at a random moment within the same span
    # (past the first third: the interpreter's start-up writes nothing).
    spans = []
    for extra in ((), ("--full",)):
        began = time.monotonic()
        subprocess.run(command(small_lab, START, *extra), cwd=small_lab, env=env, check=True, capture_output=True)
        spans.append(time.monotonic() - began)
    run_s = max(spans)  # the slower: under load the killed runs are slow too, and most kills would hit start-up
    rng = random.Random(20)
    outcomes = {"old": 0, "new": 0, "mixed": 0, "finished": 0}
    for previous, as_of in zip(times, times[1:]):
        extra = ("--full",) if as_of.hour % 4 == 3 else ()  # incremental mostly, a full rewrite now and then
        errors = small_lab / "killed.err"
        with open(errors, "w") as err:
            proc = subprocess.Popen(command(small_lab, as_of, *extra), cwd=small_lab, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err)
            time.sleep(rng.uniform(run_s / 3, run_s))  # the random moment of the kill, not a synchronisation
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode in (0, -signal.SIGKILL), errors.read_text()  # killed, or done: never failed
        online = SQLiteOnlineStore(config.online_store_path)
        try:
            marks = assert_online_equals_offline(expected, online, views, {previous, as_of})
            moved = {m == as_of for m in marks.values()}
            outcomes["finished" if proc.returncode == 0 else
                     "new" if moved == {True} else "old" if moved == {False} else "mixed"] += 1
            # the rerun completes and catches up
            done = materialize_views(offline, online, views, as_of)
            assert all(d.as_of == as_of for d in done)
            assert_online_equals_offline(expected, online, views, {as_of})
        finally:
            online.close()
    print("kill outcomes:", outcomes, f"run {run_s:.2f} s")
    assert sum(outcomes.values()) == KILLS
