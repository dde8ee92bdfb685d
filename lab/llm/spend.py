"""Spend ceilings for LLM calls: daily and monthly ceilings in USD, held with an atomic
reserve-then-settle in SQLite (``data/llm_spend.db``) so that concurrent requests, from
threads or from several processes, can never spend past a ceiling.

    [tool.lab.llm.spend]
    daily_usd = 20.0          # the whole lab, per UTC day; 0: no ceiling
    monthly_usd = 300.0       # per UTC calendar month
    user_daily_usd = 0.0      # every user, each on its own (0: none)
    user_monthly_usd = 0.0
    key_daily_usd = 0.0       # every API key, each on its own
    key_monthly_usd = 0.0
    degrade_at = 0.8          # above this share of a ceiling: the fallback model, less context
    reservation_timeout_s = 600
    input_margin = 1.1        # the estimate counts input tokens x this (a remote tokenizer may count more)

How it holds: before a call, ``reserve`` takes the write lock (``BEGIN IMMEDIATE``), sums
what the period has settled plus every reservation still open, and records a new open
reservation of the call's worst-case cost (input tokens and ``max_tokens`` of output at
the model's prices) only when that sum stays within every ceiling; otherwise it raises
``SpendCeilingReached`` (HTTP 429) and nothing is recorded. After the call, ``settle``
replaces the estimate by the actual cost (at most the estimate), or ``release`` drops it
when the provider failed and billed nothing. A reservation left open longer than
``reservation_timeout_s`` (a process that died mid-call) expires and stops counting, so the
timeout must exceed the slowest provider call; a late ``settle`` still records its cost.

Events ``llm.spend_threshold`` at 50, 80 and 95 % of each ceiling, once per ceiling and
period, on settled spend.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab.config import LabConfig, build_section
from lab.errors import ConfigError, LabError
from lab.events import emit
from lab.llm.settings import sub_table
from lab.sqlite import Database, Migration, run_script

SPEND_THRESHOLD = "llm.spend_threshold"
THRESHOLDS = (50, 80, 95)
"""Percent of a ceiling at which ``llm.spend_threshold`` is emitted, once per period."""


class SpendCeilingReached(LabError):
    """A call would spend past a ceiling; ``retry_after_s`` is the time until that
    ceiling's period ends (HTTP 429)."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SpendSettings:
    """``[tool.lab.llm.spend]``: ceilings in USD (0: none), ``degrade_at`` a share of a
    ceiling, ``reservation_timeout_s`` seconds."""

    daily_usd: float = 0.0
    monthly_usd: float = 0.0
    user_daily_usd: float = 0.0
    user_monthly_usd: float = 0.0
    key_daily_usd: float = 0.0
    key_monthly_usd: float = 0.0
    degrade_at: float = 0.8
    reservation_timeout_s: float = 600.0
    input_margin: float = 1.1

    def __post_init__(self) -> None:
        for name in ("daily_usd", "monthly_usd", "user_daily_usd", "user_monthly_usd", "key_daily_usd",
                     "key_monthly_usd"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[tool.lab.llm.spend] {name} must be 0 (no ceiling) or more, got "
                                  f"{getattr(self, name)}")
        if not 0 < self.degrade_at <= 1:
            raise ConfigError(f"[tool.lab.llm.spend] degrade_at must be in (0, 1], got {self.degrade_at}")
        if self.input_margin < 1:
            raise ConfigError(f"[tool.lab.llm.spend] input_margin must be 1 or more, got {self.input_margin}")
        if self.reservation_timeout_s <= 0:
            raise ConfigError("[tool.lab.llm.spend] reservation_timeout_s must be positive (seconds), got "
                              f"{self.reservation_timeout_s}")


def spend_settings(config: LabConfig) -> SpendSettings:
    return build_section(SpendSettings, sub_table(config, "spend"), "tool.lab.llm.spend")


def spend_path(config: LabConfig) -> Path:
    return config.data_path / "llm_spend.db"


def _schema(conn) -> None:
    run_script(conn, """
        CREATE TABLE reservations (
            id INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            day TEXT NOT NULL,
            month TEXT NOT NULL,
            user TEXT,
            key TEXT,
            model TEXT,
            estimate_usd REAL NOT NULL,
            actual_usd REAL,
            state TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released', 'expired')),
            closed_at REAL
        );
        CREATE INDEX reservations_day ON reservations (day, state);
        CREATE INDEX reservations_month ON reservations (month, state);
        CREATE INDEX reservations_open ON reservations (state, created_at);
        CREATE TABLE spend_thresholds (
            ceiling TEXT NOT NULL,
            period TEXT NOT NULL,
            percent INTEGER NOT NULL,
            at REAL NOT NULL,
            used_usd REAL NOT NULL,
            ceiling_usd REAL NOT NULL,
            PRIMARY KEY (ceiling, period, percent)
        );
    """)


MIGRATIONS = [Migration("0001_reservations", _schema)]

_USED = "COALESCE(SUM(CASE state WHEN 'settled' THEN actual_usd WHEN 'open' THEN estimate_usd ELSE 0 END), 0)"
_SETTLED = "COALESCE(SUM(CASE state WHEN 'settled' THEN actual_usd ELSE 0 END), 0)"


@dataclass(frozen=True)
class Reservation:
    """An open reservation: its row id and worst-case cost (USD)."""

    id: int
    estimate_usd: float
    user: str | None
    key: str | None


@dataclass(frozen=True)
class Ceiling:
    """One ceiling that applies to a call: ``name`` like ``daily`` or ``user:alice:monthly``."""

    name: str
    column: str  # "day" or "month"
    period: str  # "2026-12-02" or "2026-12"
    who_column: str | None  # "user", "key" or None (the whole lab)
    who: str | None
    usd: float


def _periods(now: float) -> tuple[str, str, float, float]:
    """UTC day and month of ``now`` (epoch seconds) and the seconds left in each."""
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    day_end = dt.datetime(t.year, t.month, t.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    month_end = dt.datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=dt.timezone.utc)
    return t.strftime("%Y-%m-%d"), t.strftime("%Y-%m"), day_end.timestamp() - now, month_end.timestamp() - now


class SpendLedger:
    """Reservations and settled costs in ``path`` (WAL), shared by every thread of this
    process (one locked connection) and by other processes (``BEGIN IMMEDIATE``).
    ``pm`` receives the threshold events (none when None); ``clock`` gives epoch seconds."""

    def __init__(self, path: str | Path, settings: SpendSettings, pm: Any = None,
                 clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.settings = settings
        self.pm = pm
        self._clock = clock
        self.db = Database.open_migrated(self.path, "llm_spend", MIGRATIONS, what="LLM spend ledger")

    @classmethod
    def for_config(cls, config: LabConfig, pm: Any = None, clock: Callable[[], float] = time.time) -> "SpendLedger":
        return cls(spend_path(config), spend_settings(config), pm, clock)

    def close(self) -> None:
        self.db.close()

    def ceilings(self, user: str | None, key: str | None, now: float | None = None) -> list[Ceiling]:
        """The ceilings that apply to a call by ``user`` with ``key`` at ``now``."""
        s = self.settings
        day, month, _, _ = _periods(self._clock() if now is None else now)
        table = [("daily", "day", day, None, None, s.daily_usd), ("monthly", "month", month, None, None, s.monthly_usd)]
        if user is not None:
            table += [(f"user:{user}:daily", "day", day, "user", user, s.user_daily_usd),
                      (f"user:{user}:monthly", "month", month, "user", user, s.user_monthly_usd)]
        if key is not None:
            table += [(f"key:{key}:daily", "day", day, "key", key, s.key_daily_usd),
                      (f"key:{key}:monthly", "month", month, "key", key, s.key_monthly_usd)]
        return [Ceiling(*row) for row in table if row[5] > 0]

    @staticmethod
    def _sum(conn, ceiling: Ceiling, what: str = _USED) -> float:
        sql = f"SELECT {what} AS usd FROM reservations WHERE {ceiling.column} = ?"
        params: list[Any] = [ceiling.period]
        if ceiling.who_column:
            sql += f" AND {ceiling.who_column} = ?"
            params.append(ceiling.who)
        return float(conn.execute(sql, params).fetchone()["usd"])

    def reserve(self, user: str | None, key: str | None, estimate_usd: float, model: str | None = None
                ) -> Reservation:
        """Record an open reservation of ``estimate_usd`` for a call, or raise
        ``SpendCeilingReached`` (nothing recorded) when settled + open + this estimate
        would cross any ceiling of its day or month."""
        if not (estimate_usd >= 0 and math.isfinite(estimate_usd)):
            raise LabError(f"a spend estimate must be a finite number of USD >= 0, got {estimate_usd!r}")
        now = self._clock()
        _, _, day_left, month_left = _periods(now)
        ceilings = self.ceilings(user, key, now)
        with self.db.write("reserve LLM spend") as conn:
            conn.execute("UPDATE reservations SET state = 'expired', closed_at = ? WHERE state = 'open' "
                         "AND created_at < ?", [now, now - self.settings.reservation_timeout_s])
            for ceiling in ceilings:
                used = self._sum(conn, ceiling)
                if used + estimate_usd > ceiling.usd + 1e-12:
                    raise SpendCeilingReached(
                        f"spend ceiling reached: {ceiling.name} is ${ceiling.usd:.4f} and ${used:.4f} is spent or "
                        f"reserved; this call may cost up to ${estimate_usd:.4f}. Raise [tool.lab.llm.spend] or "
                        "wait for the next period",
                        retry_after_s=day_left if ceiling.column == "day" else month_left)
            day, month, _, _ = _periods(now)
            rowid = conn.execute(
                "INSERT INTO reservations (created_at, day, month, user, key, model, estimate_usd, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'open')", [now, day, month, user, key, model, float(estimate_usd)]
            ).lastrowid
        return Reservation(rowid, float(estimate_usd), user, key)

    def settle(self, reservation: Reservation, actual_usd: float) -> float:
        """Replace the estimate by what the call cost, capped at the estimate; returns the
        amount recorded. Emits ``llm.spend_threshold`` for each level crossed."""
        actual = min(max(float(actual_usd), 0.0), reservation.estimate_usd)
        now = self._clock()
        crossed: list[dict] = []
        with self.db.write("settle LLM spend") as conn:
            row = conn.execute("SELECT state, created_at FROM reservations WHERE id = ?", [reservation.id]).fetchone()
            if row is None:
                raise LabError(f"no spend reservation {reservation.id} in {self.path}")
            if row["state"] in ("settled", "released"):
                raise LabError(f"spend reservation {reservation.id} is already {row['state']}")
            conn.execute("UPDATE reservations SET state = 'settled', actual_usd = ?, closed_at = ? WHERE id = ?",
                         [actual, now, reservation.id])
            for ceiling in self.ceilings(reservation.user, reservation.key, row["created_at"]):
                settled = self._sum(conn, ceiling, _SETTLED)
                for percent in THRESHOLDS:
                    if settled >= ceiling.usd * percent / 100:
                        cursor = conn.execute(
                            "INSERT OR IGNORE INTO spend_thresholds (ceiling, period, percent, at, used_usd, "
                            "ceiling_usd) VALUES (?, ?, ?, ?, ?, ?)",
                            [ceiling.name, ceiling.period, percent, now, settled, ceiling.usd])
                        if cursor.rowcount == 1:
                            crossed.append({"ceiling": ceiling.name, "period": ceiling.period, "percent": percent,
                                            "used_usd": settled, "ceiling_usd": ceiling.usd})
        if self.pm is not None:
            for payload in crossed:
                emit(self.pm, SPEND_THRESHOLD, **payload)
        return actual

    def release(self, reservation: Reservation) -> None:
        """Drop an open reservation: the call failed and nothing was billed."""
        with self.db.write("release LLM spend") as conn:
            conn.execute("UPDATE reservations SET state = 'released', actual_usd = 0, closed_at = ? "
                         "WHERE id = ? AND state IN ('open', 'expired')", [self._clock(), reservation.id])

    def fraction(self, user: str | None, key: str | None) -> float:
        """The largest share (settled + open) of any ceiling that applies; 0 with none."""
        ceilings = self.ceilings(user, key)
        if not ceilings:
            return 0.0
        with self.db.read() as conn:
            return max(self._sum(conn, c) / c.usd for c in ceilings)

    def report(self, now: float | None = None) -> list[dict]:
        """The lab's spend this day and month: settled, open and ceiling (USD) per global
        ceiling, per user and per key with a ceiling (the totals even without ceilings)."""
        now = self._clock() if now is None else now
        day, month, _, _ = _periods(now)
        s = self.settings
        rows = []
        with self.db.read() as conn:
            for column, period, ceiling, user_c, key_c in (("day", day, s.daily_usd, s.user_daily_usd, s.key_daily_usd),
                                                           ("month", month, s.monthly_usd, s.user_monthly_usd,
                                                            s.key_monthly_usd)):
                groups = [(None, None, ceiling)]
                for who_column, per_who in (("user", user_c), ("key", key_c)):
                    if per_who > 0:
                        whos = conn.execute(f"SELECT DISTINCT {who_column} AS w FROM reservations WHERE "
                                            f"{column} = ? AND {who_column} IS NOT NULL ORDER BY w", [period])
                        groups += [(who_column, r["w"], per_who) for r in whos.fetchall()]
                for who_column, who, usd in groups:
                    c = Ceiling("", column, period, who_column, who, usd)
                    settled = self._sum(conn, c, _SETTLED)
                    used = self._sum(conn, c)
                    rows.append({"scope": f"{who_column}:{who}" if who_column else "lab", "period": period,
                                 "settled_usd": settled, "open_usd": used - settled,
                                 "ceiling_usd": usd or None, "share": (used / usd) if usd else None})
        return rows

    def totals(self) -> dict[str, float]:
        """Counts and sums over the whole file, by state (tests and ``lab llm spend --json``)."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT state, COUNT(*) AS n, COALESCE(SUM(actual_usd), 0) AS actual, "
                                "COALESCE(SUM(estimate_usd), 0) AS estimate FROM reservations GROUP BY state").fetchall()
        return {r["state"]: {"n": r["n"], "actual_usd": r["actual"], "estimate_usd": r["estimate"]} for r in rows}
