"""Spend ceilings (lab.llm.spend): reserve-then-settle on a real SQLite file, threshold
events once per ceiling and period, expiry of stale reservations, per-user ceilings, the
settings' checks and ``lab llm spend``."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from lab.errors import ConfigError, LabError
from lab.llm.spend import SpendCeilingReached, SpendLedger, SpendSettings

NOON = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc).timestamp()


class Events:
    def __init__(self):
        self.seen = []

    from lab import hookimpl as _hookimpl

    @_hookimpl
    def lab_on_event(self, event):
        self.seen.append(event)


class PM:
    """A plugin manager holding only the event collector (pluggy, the real one)."""

    def __new__(cls, events):
        import pluggy

        from lab import hookspecs

        pm = pluggy.PluginManager("lab")
        pm.add_hookspecs(hookspecs)
        pm.register(events)
        return pm


def ledger(tmp_path, now, events=None, **settings):
    return SpendLedger(tmp_path / "llm_spend.db", SpendSettings(**settings), PM(events) if events else None,
                       clock=lambda: now[0])


def test_threshold_events_fire_once_per_level_and_period(tmp_path):
    now, events = [NOON], Events()
    spend = ledger(tmp_path, now, events, daily_usd=1.0, monthly_usd=100.0)
    fired = lambda: [(e.payload["ceiling"], e.payload["period"], e.payload["percent"]) for e in events.seen]  # noqa: E731
    for usd in (0.3, 0.15):  # 30 %, then 45 %: nothing yet
        spend.settle(spend.reserve(None, None, usd), usd)
    assert fired() == []
    spend.settle(spend.reserve(None, None, 0.1), 0.1)  # 55 %
    assert fired() == [("daily", "2026-12-02", 50)]
    spend.settle(spend.reserve(None, None, 0.45), 0.42)  # 97 %: 80 and 95 at once
    assert fired()[1:] == [("daily", "2026-12-02", 80), ("daily", "2026-12-02", 95)]
    spend.settle(spend.reserve(None, None, 0.01), 0.01)
    assert len(fired()) == 3  # each once
    now[0] += 86400  # the next day: a new period, the events again
    spend.settle(spend.reserve(None, None, 0.6), 0.6)
    assert fired()[3:] == [("daily", "2026-12-03", 50)]
    assert events.seen[-1].name == "llm.spend_threshold" and events.seen[-1].payload["ceiling_usd"] == 1.0
    spend.close()


def test_reserve_refuses_past_the_ceiling_and_records_nothing(tmp_path):
    now = [NOON]
    spend = ledger(tmp_path, now, daily_usd=1.0)
    open_one = spend.reserve("ann", None, 0.7)  # open reservations count
    with pytest.raises(SpendCeilingReached, match=r"daily is \$1.0000 and \$0.7000 is spent or reserved") as caught:
        spend.reserve("bob", None, 0.4)
    assert caught.value.http_status == 429
    assert caught.value.retry_after_s == pytest.approx(12 * 3600)  # until midnight UTC
    assert spend.totals() == {"open": {"n": 1, "actual_usd": 0, "estimate_usd": 0.7}}
    assert spend.settle(open_one, 0.9) == 0.7  # never above the estimate
    spend.reserve("bob", None, 0.3)  # exactly to the ceiling is allowed
    with pytest.raises(SpendCeilingReached):
        spend.reserve("bob", None, 0.0001)
    with pytest.raises(LabError, match="already settled"):
        spend.settle(open_one, 0.1)
    with pytest.raises(LabError, match="finite number"):
        spend.reserve(None, None, float("nan"))
    spend.close()


def test_per_user_ceilings_are_separate_and_release_frees_the_room(tmp_path):
    now = [NOON]
    spend = ledger(tmp_path, now, user_daily_usd=0.5, monthly_usd=10.0)
    r = spend.reserve("ann", "k1", 0.5)
    with pytest.raises(SpendCeilingReached, match="user:ann:daily"):
        spend.reserve("ann", "k2", 0.1)
    spend.reserve("bob", "k1", 0.5)  # bob has his own
    spend.release(r)  # the call failed: nothing billed
    spend.reserve("ann", "k2", 0.5)
    assert spend.fraction("ann", None) == pytest.approx(1.0)
    assert spend.fraction(None, None) == pytest.approx(0.1)  # 1.0 of the monthly 10
    rows = {(row["scope"], row["period"]): row for row in spend.report()}
    assert rows[("user:ann", "2026-12-02")]["open_usd"] == pytest.approx(0.5)
    assert rows[("lab", "2026-12")]["ceiling_usd"] == 10.0 and rows[("lab", "2026-12-02")]["ceiling_usd"] is None
    spend.close()


def test_stale_open_reservations_expire_but_a_late_settle_still_counts(tmp_path):
    now = [NOON]
    spend = ledger(tmp_path, now, daily_usd=1.0, reservation_timeout_s=60)
    stale = spend.reserve(None, None, 0.8)  # its process died mid-call
    now[0] += 30
    with pytest.raises(SpendCeilingReached):
        spend.reserve(None, None, 0.5)
    now[0] += 31
    fresh = spend.reserve(None, None, 0.5)  # the stale one expired
    assert {state: v["n"] for state, v in spend.totals().items()} == {"expired": 1, "open": 1}
    spend.settle(stale, 0.2)  # it did finish after all: what it cost is recorded
    spend.settle(fresh, 0.5)
    assert spend.totals()["settled"]["actual_usd"] == pytest.approx(0.7)
    spend.close()


def test_two_ledgers_on_one_file_share_the_ceiling(tmp_path):
    now = [NOON]
    a, b = ledger(tmp_path, now, daily_usd=1.0), ledger(tmp_path, now, daily_usd=1.0)
    a.reserve(None, None, 0.6)
    with pytest.raises(SpendCeilingReached):
        b.reserve(None, None, 0.6)
    a.close()
    b.close()


@pytest.mark.parametrize("table, message", [
    ({"daily_usd": -1.0}, "daily_usd must be 0"),
    ({"degrade_at": 1.5}, "degrade_at must be in"),
    ({"daily_usd": "ten"}, "daily_usd must be a number"),
    ({"dayly_usd": 1.0}, "unknown key"),
])
def test_bad_spend_settings_name_the_key(lab_pm, table, message):
    from lab.config import load_config
    from lab.llm.spend import spend_settings

    toml = "[tool.lab.llm.spend]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    pm = lab_pm(config=toml)
    with pytest.raises(ConfigError, match=message):
        spend_settings(load_config(pm.config.root))


def test_lab_llm_spend_prints_used_against_the_ceiling(lab_pm, capsys):
    from lab.cli import main

    pm = lab_pm(config="[tool.lab.llm.spend]\ndaily_usd = 2.0\n")
    spend = SpendLedger.for_config(pm.config)
    spend.settle(spend.reserve(None, None, 0.5), 0.5)
    spend.close()
    assert main(["llm", "spend"]) == 0
    out = capsys.readouterr().out
    assert "lab" in out and "0.5000" in out and "2.0000" in out and "25.0%" in out
    assert main(["llm", "spend", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["settled_usd"] == 0.5 and rows[0]["ceiling_usd"] == 2.0
