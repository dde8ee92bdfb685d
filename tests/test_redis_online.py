"""The Redis online store (plugins/redis_online) on a real redis-server: the same contract
suite as SQLite, the hook choosing it by config, one command per batch read, readers in
another process never seeing a mix, writers killed mid-write leaving one consistent
generation, the row encoding, and a lab served from Redis (load_model and a real
`lab serve`) answering as the same lab served from SQLite, through a Redis restart."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.plugins import get_plugin_manager
from lab.testing.stores import PROFILE, SECOND, SPEND, T0, OnlineStoreContract, spend_rows
from tests._helpers import stop_process
from tests.redis_server import start_redis

redis = pytest.importorskip("redis")

from plugins.redis_online.store import RedisOnlineSettings, RedisOnlineStore  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One redis-server for the module (stopped by PID); each test flushes it."""
    folder = tmp_path_factory.mktemp("redis")
    proc, url = start_redis(folder)
    try:
        yield url
    finally:
        stop_process(proc, 10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server):
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


@pytest.fixture
def online(redis_url):
    store = RedisOnlineStore(RedisOnlineSettings(url=redis_url))
    yield store
    store.close()


class TestRedisOnlineStore(OnlineStoreContract):
    @pytest.fixture
    def store(self, redis_url):
        s = RedisOnlineStore(RedisOnlineSettings(url=redis_url))
        yield s
        s.close()


# -- chosen by config ---------------------------------------------------------------------


def _lab(folder, extra: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "x"\nversion = "0"\n\n[tool.lab]\n{extra}')
    config = load_config(folder)
    return config, get_plugin_manager(config)


def test_a_lab_without_the_section_keeps_sqlite_and_one_with_it_gets_redis(tmp_path, redis_url):
    config, pm = _lab(tmp_path / "plain")
    store = pm.hook.lab_online_store(config=config)
    assert type(store).__name__ == "SQLiteOnlineStore"
    store.close()
    config, pm = _lab(tmp_path / "redis", f'\n[tool.lab.redis_online]\nurl = "{redis_url}"\nkey_prefix = "a:"\n')
    store = pm.hook.lab_online_store(config=config)
    try:
        assert isinstance(store, RedisOnlineStore) and store.settings.key_prefix == "a:"
        store.write(SPEND, spend_rows([1]), T0)
        assert redis.Redis.from_url(redis_url).exists(f"a:{{spend}}:{SPEND.version}")
    finally:
        store.close()


@pytest.mark.parametrize("table, fix", [
    ('url = "http://x"', "redis://"),
    ('urll = "redis://x"', "known keys"),
    ('url = "redis://x"\nwrite_batch = 0', "write_batch"),
    ('key_prefix = ""', "key_prefix"),
])
def test_bad_settings_are_a_config_error_naming_the_fix(tmp_path, table, fix):
    config, pm = _lab(tmp_path, f"\n[tool.lab.redis_online]\n{table}\n")
    with pytest.raises(ConfigError, match=fix):
        pm.hook.lab_online_store(config=config)


def test_two_prefixes_in_one_database_are_two_stores(redis_url):
    a = RedisOnlineStore(RedisOnlineSettings(url=redis_url, key_prefix="a:"))
    b = RedisOnlineStore(RedisOnlineSettings(url=redis_url, key_prefix="b:"))
    try:
        a.write(SPEND, spend_rows([1]), T0)
        assert b.read_with_watermark(SPEND, 1) == (None, None) and b.materialized() == {}
        assert list(a.materialized()) == [f"spend@{SPEND.version}"]
    finally:
        a.close()
        b.close()


def test_materialized_and_definitions_list_every_version_and_drop_version_removes_one(online):
    from lab.testing.stores import SPEND_V2

    online.write(SPEND, spend_rows([1, 2]), T0)
    online.write(SPEND_V2, spend_rows([1]), T0 + SECOND)
    listed = online.materialized()
    assert list(listed) == [f"spend@{SPEND.version}", f"spend@{SPEND_V2.version}"]
    assert listed[f"spend@{SPEND.version}"] | {"written_at": None, "definition": None} == {
        "view": "spend", "version": SPEND.version, "watermark": T0.isoformat(), "entity": "USER_ID", "rows": 2,
        "newest_event": None, "written_at": None, "definition": None}
    assert listed[f"spend@{SPEND_V2.version}"]["definition"] == SPEND_V2.definition()
    assert online.definitions("spend") == {SPEND.version: SPEND.definition(), SPEND_V2.version: SPEND_V2.definition()}
    assert online.definitions("nothing") == {}
    from lab.features.stores import pin_views  # a model trained on SPEND keeps reading it after SPEND_V2
    (pinned,) = pin_views([SPEND_V2], {"spend": SPEND.version}, online)
    assert pinned.version == SPEND.version and online.read(pinned, [2]) == [{"NB_1D": 2, "AVG_1D": 3.0}]
    assert online.drop_version("spend", SPEND.version) is True
    assert online.drop_version("spend", SPEND.version) is False
    assert list(online.materialized()) == [f"spend@{SPEND_V2.version}"]
    with pytest.raises(LabError, match="materialize"):  # the old definition now finds only the new version
        online.read(SPEND, [1])


def test_a_command_against_an_unreachable_redis_is_one_error_line_naming_the_fix(tmp_path, capsys):
    from lab.cli import main
    from tests._helpers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    _lab(tmp_path, f'model_name = "fraud"\n\n[tool.lab.fraud]\n\n[tool.lab.redis_online]\nurl = "{url}"\n')
    assert main(["--root", str(tmp_path), "features", "get", "customer_spending", "1"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("lab: error:") and url in err and "redis-server" in err and "Traceback" not in err


# -- keys and values ----------------------------------------------------------------------


def test_keys_given_as_text_or_numpy_find_integer_keys(online):
    online.write(SPEND, spend_rows([7, 8]), T0)
    assert online.read(SPEND, ["7", np.int64(8), " 8", 7.0, 7.5, "x", None]) == [
        {"NB_1D": 1, "AVG_1D": 1.5}, {"NB_1D": 2, "AVG_1D": 3.0}, {"NB_1D": 2, "AVG_1D": 3.0},
        {"NB_1D": 1, "AVG_1D": 1.5}, None, None, None]
    assert online.read_with_watermark(SPEND, "8") == ({"NB_1D": 2, "AVG_1D": 3.0}, T0)


def test_text_keys_are_matched_as_text(online):
    import pyarrow as pa

    online.write(PROFILE, pa.table({"CITY": ["42", "oslo"], "NAME": ["Answer", "Oslo"]}), T0)
    assert online.read(PROFILE, [42, "42", " 42", "oslo"]) == [{"NAME": "Answer"}, {"NAME": "Answer"}, None,
                                                                {"NAME": "Oslo"}]


def test_values_come_back_as_the_sqlite_store_gives_them(online, tmp_path):
    """Booleans as 0/1, times as ISO text, NaN as None: the model sees the same row from either store."""
    import pyarrow as pa

    from lab.features.views import FeatureView
    from plugins.sqlite_online.store import SQLiteOnlineStore

    view = FeatureView(name="mixed", entity="ID", source="s", timestamp="TS",
                       features=("FLAG", "WHEN", "X", "LABEL"))
    rows = pa.table({"ID": pa.array([1, 2], pa.int32()), "FLAG": [True, False],
                     "WHEN": pa.array([T0, None], pa.timestamp("us")), "X": [float("nan"), 1e-300],
                     "LABEL": ["é", None]})
    sqlite = SQLiteOnlineStore(tmp_path / "online.db")
    try:
        sqlite.write(view, rows, T0)
        online.write(view, rows, T0)
        mine = online.read(view, [1, 2])
        assert mine == sqlite.read(view, [1, 2])
        assert mine[0] == {"FLAG": 1, "WHEN": T0.isoformat(), "X": None, "LABEL": "é"}
    finally:
        sqlite.close()


def test_a_full_write_of_no_rows_empties_the_version_and_moves_its_watermark(online):
    online.write(SPEND, spend_rows([1, 2]), T0)
    assert online.write(SPEND, spend_rows([]), T0 + SECOND) == 0
    assert online.read_with_watermark(SPEND, 1) == (None, T0 + SECOND)
    assert online.state(SPEND).rows == 0


def test_aware_watermark_round_trips(online):
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    online.write(SPEND, spend_rows([1]), when)
    assert online.watermark(SPEND) == when and online.watermark(SPEND).utcoffset() == dt.timedelta(hours=2)


def test_unsupported_types_are_refused_and_nothing_written(online):
    import pyarrow as pa

    online.write(SPEND, spend_rows([1]), T0)
    bad = spend_rows([2]).set_column(1, "NB_1D", pa.array([[1, 2]]))
    with pytest.raises(LabError, match="NB_1D"):
        online.write(SPEND, bad, T0 + SECOND)
    with pytest.raises(LabError, match="USER_ID"):
        online.write(SPEND, spend_rows([2]).set_column(0, "USER_ID", pa.array([2.5])), T0 + SECOND)
    assert online.read_with_watermark(SPEND, 1) == ({"NB_1D": 1, "AVG_1D": 1.5}, T0)


# -- round trips and atomicity ------------------------------------------------------------


def test_a_batch_read_and_its_watermark_are_one_command(online, redis_url):
    online.write(SPEND, spend_rows(list(range(500))), T0)
    stats = redis.Redis.from_url(redis_url)
    stats.config_resetstat()  # the store's connection is open already: only its reads count from here
    rows, mark = online.read_many_with_watermark(SPEND, list(range(0, 200, 2)))
    assert mark == T0 and [r["NB_1D"] for r in rows] == [k + 1 for k in range(0, 200, 2)]
    assert online.read_with_watermark(SPEND, 3) == ({"NB_1D": 4, "AVG_1D": 6.0}, T0)
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.info("commandstats").items()}
    stats.close()
    assert calls == {"hmget": 2, "config|resetstat": 1}


READER = textwrap.dedent("""
    import datetime as dt, sys
    from lab.testing.stores import SPEND, T0
    from plugins.redis_online.store import RedisOnlineSettings, RedisOnlineStore
    store = RedisOnlineStore(RedisOnlineSettings(url=sys.argv[1]))
    seen = set()
    deadline = dt.datetime.now() + dt.timedelta(seconds=20)
    while len(seen) < int(sys.argv[2]) and dt.datetime.now() < deadline:
        rows, mark = store.read_many_with_watermark(SPEND, list(range(1200)))
        g = round((mark - T0).total_seconds())
        present = [r for r in rows if r is not None]
        assert len(present) == 600 + 600 * (g % 2), (g, len(present))
        assert all(r["NB_1D"] == g for r in present), g
        seen.add(g)
    print(len(seen))
""")


def test_readers_in_another_process_never_see_a_mix(online, redis_url):
    """A materialization staged in many batches is published at once: a reader sees
    every row of one generation with that generation's watermark, whatever it catches."""
    def generation(g):
        keys = list(range(600 + 600 * (g % 2)))
        return spend_rows(keys, counts=[g] * len(keys), means=[float(g)] * len(keys))

    writer = RedisOnlineStore(RedisOnlineSettings(url=redis_url, write_batch=50))
    writer.write(SPEND, generation(0), T0)
    reader = subprocess.Popen([sys.executable, "-c", READER, redis_url, "4"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    g = 0
    while reader.poll() is None:
        g += 1
        writer.write(SPEND, generation(g), T0 + g * SECOND)
    out, err = reader.communicate()
    writer.close()
    assert reader.returncode == 0, err
    assert g > 3 and int(out) >= 4  # the reader really saw the data change under it
    assert not [k for k in redis.Redis.from_url(redis_url).keys("*:staging:*")]  # no staging hash left behind


WRITER = textwrap.dedent("""
    import sys
    from lab.testing.stores import SPEND, T0, SECOND, spend_rows
    from plugins.redis_online.store import RedisOnlineSettings, RedisOnlineStore
    store = RedisOnlineStore(RedisOnlineSettings(url=sys.argv[1], write_batch=10, staging_ttl_s=600))
    keys = list(range(200_000))
    store.write(SPEND, spend_rows(keys, counts=[9] * len(keys)), T0 + SECOND)
""")


def test_a_writer_killed_mid_write_leaves_the_old_rows_and_its_staging_expires(online, redis_url):
    online.write(SPEND, spend_rows([1, 2]), T0)
    client = redis.Redis.from_url(redis_url)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, redis_url], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        staging = []
        while time.monotonic() < deadline and writer.poll() is None:
            staging = [k for k in client.keys("*:staging:*") if client.hlen(k) >= 100]
            if staging:
                break
            time.sleep(0.01)
        assert staging, "the writer never staged rows"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
    assert online.read_with_watermark(SPEND, 1) == ({"NB_1D": 1, "AVG_1D": 1.5}, T0)
    assert online.read(SPEND, [150]) == [None] and online.state(SPEND).rows == 2
    assert 0 < client.ttl(staging[0]) <= 600  # Redis drops the unfinished rows by itself
    online.write(SPEND, spend_rows([3]), T0 + 2 * SECOND)  # the rerun completes
    assert online.read_with_watermark(SPEND, 3) == ({"NB_1D": 1, "AVG_1D": 1.5}, T0 + 2 * SECOND)


def test_an_unreachable_redis_is_a_lab_error_naming_the_url(redis_url):
    from tests._helpers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisOnlineStore(RedisOnlineSettings(url=url, connect_timeout_s=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(LabError, match=f"{url}.*redis-server"):
            store.read_with_watermark(SPEND, 1)
        with pytest.raises(LabError, match=url):
            store.write(SPEND, spend_rows([1]), T0)
        assert time.monotonic() - started < 10
        assert store.ping() is False
    finally:
        store.close()


# -- a lab served from Redis answers as the same lab served from SQLite ---------------------

AS_OF = "2018-04-08T12:00:00"


def _cli(root, *argv) -> None:
    from lab.cli import main

    assert main(["--root", str(root), *argv]) == 0


def _answers(predictor, requests) -> list[dict]:
    out = []
    for request in requests:
        got = predictor.predict(request)
        got.pop("request_id"), got.pop("latency_ms")
        out.append(got)
    return out


def _redis_on(port: int, folder) -> subprocess.Popen:
    """redis-server again on ``port`` (empty: no persistence), ready when it answers PING."""
    proc = subprocess.Popen(["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                client.ping()
                return proc
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not come back"
                time.sleep(0.02)
    finally:
        client.close()


@pytest.fixture
def twin_labs(tmp_path):
    """One tiny lab materialized twice from the same offline data as of ``AS_OF``: into
    SQLite (the lab as built), and into its own redis-server (a copy configured with
    [tool.lab.redis_online], its SQLite file deleted, so nothing can come from there).
    Gives both roots, requests for every customer and an unknown one, and the Redis
    server (a one-item list: a test may replace it)."""
    from plugins.fraud.simulator import simulate
    from plugins.fraud.testing import build_tiny_lab

    server, url = start_redis(tmp_path / "redis")
    servers = [server]
    try:
        lab = build_tiny_lab(tmp_path / "sqlite_lab")
        tx = simulate(n_customers=25, n_terminals=40, nb_days=10, seed=3)
        tx.write_parquet(tmp_path / "tx.parquet")
        _cli(lab.root, "features", "load", "transactions", str(tmp_path / "tx.parquet"))
        redis_root = tmp_path / "redis_lab"
        shutil.copytree(lab.root, redis_root)
        (redis_root / "data" / "online.db").unlink()
        with (redis_root / "pyproject.toml").open("a") as f:
            f.write(f'\n[tool.lab.redis_online]\nurl = "{url}"\n')
        for root in (lab.root, redis_root):
            _cli(root, "features", "materialize", "--as-of", AS_OF)
        assert not (redis_root / "data" / "online.db").exists()
        when = dt.datetime.fromisoformat(AS_OF) + dt.timedelta(hours=3)
        customers = sorted(set(tx["CUSTOMER_ID"].to_list()))
        terminals = sorted(set(tx["TERMINAL_ID"].to_list()))
        requests = [lab.transaction(i, customer=c, terminal=terminals[i % len(terminals)], amount=5.0 + 7 * i,
                                    when=when + dt.timedelta(minutes=i))
                    for i, c in enumerate([*customers, 9999])]  # 9999: unknown, so the defaults
        yield lab.root, redis_root, requests, servers, url
    finally:
        for proc in servers:
            stop_process(proc, 10)


ANSWER = ("score", "features", "defaults", "feature_age_seconds")


@pytest.mark.slow
def test_a_lab_served_from_redis_answers_as_from_sqlite_and_rides_out_a_redis_restart(twin_labs, tmp_path):
    from lab.serving.predictor import load_model

    sqlite_root, redis_root, requests, servers, url = twin_labs
    with load_model("fraud", root=sqlite_root, ledger=False) as from_sqlite, \
            load_model("fraud", root=redis_root, ledger=False) as from_redis:
        assert isinstance(from_redis.store, RedisOnlineStore)
        assert type(from_sqlite.store).__name__ == "SQLiteOnlineStore"
        expected = _answers(from_sqlite, requests)
        assert _answers(from_redis, requests) == expected
    assert expected[-1]["defaults"] == {"customer_spending": True, "terminal_risk": False}
    assert sum(not a["defaults"]["customer_spending"] for a in expected) == len(requests) - 1
    assert len({a["score"] for a in expected}) > 5  # the features really differ between requests

    # a real `lab serve` of the Redis lab answers the same over HTTP ...
    import httpx

    from tests.conftest import lab_server

    with lab_server(redis_root, tmp_path / "serve.log", ready_s=60) as (base, proc):
        with httpx.Client(base_url=base, timeout=10) as http:
            for request, want in zip(requests, expected):
                got = http.post("/predict", json=request)
                assert got.status_code == 200, got.text
                assert {k: got.json()[k] for k in ANSWER} == {k: want[k] for k in ANSWER}

            # ... keeps answering without a 500 while Redis is down ...
            stop_process(servers.pop(), 10)
            for request in requests[:3]:
                down = http.post("/predict", json=request)
                assert down.status_code in (200, 503), down.text
                assert down.status_code == 503 or down.json()["fallback"] is True
            # ... reconnects by itself when Redis is back (empty: nothing persisted, so defaults) ...
            servers.append(_redis_on(int(url.rsplit(":", 1)[1].split("/")[0]), tmp_path / "redis"))
            back = http.post("/predict", json=requests[0])
            assert back.status_code == 200 and back.json()["defaults"] == {"customer_spending": True,
                                                                           "terminal_risk": True}
            # ... and serves the values again once the lab is materialized again.
            _cli(redis_root, "features", "materialize", "--as-of", AS_OF)
            for request, want in list(zip(requests, expected))[:5]:
                got = http.post("/predict", json=request)
                assert {k: got.json()[k] for k in ANSWER} == {k: want[k] for k in ANSWER}
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# -- the row encoding (codec.py): packed numbers, JSON otherwise, both in one version ---------


def test_event_times_naive_or_aware_round_trip_in_either_encoding(online):
    import pyarrow as pa

    from lab.features.stores import EVENT_TIME

    aware = dt.datetime(2024, 3, 10, 11, 0, tzinfo=dt.timezone.utc)
    packed = spend_rows([1, 2], event_times=[T0, None])  # numbers only: packed
    online.write(SPEND, packed, T0)
    utc = spend_rows([3]).append_column(EVENT_TIME, pa.array([aware], pa.timestamp("us", "UTC")))
    online.write(SPEND, utc, T0 + SECOND, upsert=True)
    first, second, third = online.row_times(SPEND, [1, 2, 3])
    assert (first.event_time, second.event_time, third.event_time) == (T0, None, aware)
    assert first.event_time.tzinfo is None and third.event_time.tzinfo is not None
    as_json = pa.table({"CITY": ["oslo", "rome"], "NAME": ["Oslo", None],
                        EVENT_TIME: pa.array([aware, None], pa.timestamp("us", "UTC"))})
    online.write(PROFILE, as_json, T0)  # a string feature: JSON
    oslo, rome = online.row_times(PROFILE, ["oslo", "rome"])
    assert (oslo.event_time, rome.event_time) == (aware, None)
    assert online.read(PROFILE, ["rome"]) == [{"NAME": None}]


def test_an_upsert_that_packs_otherwise_is_read_beside_the_packed_rows(online):
    import pyarrow as pa

    online.write(SPEND, spend_rows([1, 2]), T0)  # NB_1D int64, AVG_1D float64
    as_floats = spend_rows([2, 3], counts=[7, 8]).set_column(1, "NB_1D", pa.array([7.0, None]))
    online.write(SPEND, as_floats, T0 + SECOND, upsert=True)
    assert online.read(SPEND, [1, 2, 3]) == [{"NB_1D": 1, "AVG_1D": 1.5}, {"NB_1D": 7.0, "AVG_1D": 1.5},
                                             {"NB_1D": None, "AVG_1D": 3.0}]
    online.write(SPEND, spend_rows([4], counts=[2**62]), T0 + 2 * SECOND, upsert=True)  # packed again
    assert online.read(SPEND, [4, 2]) == [{"NB_1D": 2**62, "AVG_1D": 1.5}, {"NB_1D": 7.0, "AVG_1D": 1.5}]
    assert online.state(SPEND).rows == 4


def test_unsigned_and_boolean_features_pack_exactly(online):
    import pyarrow as pa

    from lab.features.views import FeatureView

    view = FeatureView(name="flags", entity="ID", source="s", timestamp="TS", features=("BIG", "OK", "SMALL"))
    rows = pa.table({"ID": pa.array([1, 2], pa.int64()), "BIG": pa.array([2**64 - 1, None], pa.uint64()),
                     "OK": [True, None], "SMALL": pa.array([-3, 4], pa.int8())})
    online.write(view, rows, T0)
    assert online.read(view, [1, 2]) == [{"BIG": 2**64 - 1, "OK": 1, "SMALL": -3}, {"BIG": None, "OK": None, "SMALL": 4}]


def test_a_read_of_more_keys_than_one_hmget_takes_is_one_multi(online, redis_url):
    keys = list(range(25_000))
    online.write(SPEND, spend_rows(keys, counts=keys), T0)
    stats = redis.Redis.from_url(redis_url)
    stats.config_resetstat()
    got = online.read(SPEND, [*reversed(keys), -5])
    assert [g["NB_1D"] for g in got[:-1]] == list(reversed(keys)) and got[-1] is None
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.info("commandstats").items()}
    stats.close()
    assert calls == {"multi": 1, "hmget": 2, "exec": 1, "config|resetstat": 1}


KILLED = textwrap.dedent("""
    import sys
    from lab.testing.stores import SPEND, T0, SECOND, spend_rows
    from plugins.redis_online.store import RedisOnlineSettings, RedisOnlineStore
    store = RedisOnlineStore(RedisOnlineSettings(url=sys.argv[1], write_batch=100))
    keys = list(range(3000))
    g = int(sys.argv[2])
    while True:  # generation g: every key's NB_1D is g, as of T0 + g seconds; replaced whole or upserted
        g += 1
        store.write(SPEND, spend_rows(keys, counts=[g] * len(keys)), T0 + g * SECOND, upsert=g % 2 == 0)
        print("wrote", g, flush=True)
""")


def test_kill_9_at_random_moments_of_writes_and_upserts_leaves_one_consistent_generation(online, redis_url):
    import random

    chance = random.Random(9)
    g = 0
    online.write(SPEND, spend_rows(list(range(3000)), counts=[0] * 3000), T0)
    for _ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", KILLED, redis_url, str(g)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(chance.randint(1, 3)):  # let it finish a few writes (each about 50 ms) ...
                assert writer.stdout.readline().startswith("wrote"), writer.stderr.read()
            time.sleep(chance.uniform(0.0, 0.08))  # ... then kill it at a random moment of the next
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(10)
        rows, mark = online.read_many_with_watermark(SPEND, list(range(3000)))
        g = round((mark - T0) / SECOND)
        assert {r["NB_1D"] for r in rows} == {g}, g  # every row of the generation the watermark names
        assert online.state(SPEND).rows == 3000
    assert g >= 5  # the writes went on from kill to kill
