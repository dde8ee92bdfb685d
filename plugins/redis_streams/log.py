"""``RedisEventLog``: one Redis stream and its consumer groups (redis-py).

How the ``EventLog`` contract maps onto Redis:

- ``append``: XADD of every event in one MULTI/EXEC (all or none); ids are Redis's
  ``<ms>-<seq>``.
- ``read``: first the entries this consumer was handed and never acknowledged (XREADGROUP
  with id 0: a restart under the same name), then entries other consumers have held
  longer than ``claim_idle_s`` (XAUTOCLAIM: they died), then new ones (XREADGROUP ``>``,
  blocking up to ``wait_s``). An entry deleted while pending is acknowledged and skipped.
- ``acknowledge``: XACK, after the predictions are committed in ``data/stream.db``.
- ``lag``: the group's ``lag`` (entries not yet delivered) plus its ``pending`` (delivered,
  not acknowledged), from XINFO GROUPS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import redis

from lab.config import build_section
from lab.errors import ConfigError, LabError
from lab.streaming.log import EventLog, LogEvent, encode_payload

FIELD = "data"


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    claim_idle_s: float = 30.0
    key_prefix: str = "lab:"
    maxlen: int = 0

    @classmethod
    def from_table(cls, table: dict) -> "RedisSettings":
        settings = build_section(cls, table, "tool.lab.redis_streams")
        if not settings.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"[tool.lab.redis_streams] url must be redis://HOST:PORT/DB (or rediss://, unix://), "
                              f"got {settings.url!r}")
        if settings.claim_idle_s < 0 or settings.maxlen < 0:
            raise ConfigError("[tool.lab.redis_streams] claim_idle_s and maxlen must be 0 or more")
        return settings


def _ms(iso: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def _iso(entry_id: str) -> str:
    import datetime as dt

    ms = int(entry_id.split("-", 1)[0])
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="microseconds")


class RedisEventLog(EventLog):
    """One Redis stream (key ``key_prefix + stream``) and its consumer groups."""

    backend = "redis"
    transactional = False

    def __init__(self, settings: RedisSettings, stream: str):
        super().__init__(stream)
        self.settings = settings
        self.key = settings.key_prefix + stream
        self._redis = redis.Redis.from_url(settings.url, decode_responses=True, socket_connect_timeout=5)
        self._groups: set[str] = set()
        self._own_pending_done: set[tuple[str, str]] = set()
        self._claim_cursor: dict[str, str] = {}
        self._claimed_at: dict[str, float] = {}
        self._call(self._redis.ping)

    def _call(self, action, *args: Any, **kwargs: Any) -> Any:
        try:
            return action(*args, **kwargs)
        except redis.ConnectionError as exc:
            raise LabError(f"cannot reach Redis at {self.settings.url} ({exc}); start redis-server, or fix "
                           "[tool.lab.redis_streams] url") from None

    def describe(self) -> str:
        return f"redis {self.settings.url} key {self.key}"

    def close(self) -> None:
        self._redis.close()

    def append(self, events: Iterable[Any]) -> list[str]:
        payloads = [encode_payload(e) for e in events]
        pipe = self._redis.pipeline(transaction=True)
        trim = {"maxlen": self.settings.maxlen, "approximate": True} if self.settings.maxlen else {}
        for payload in payloads:
            pipe.xadd(self.key, {FIELD: payload}, **trim)
        return list(self._call(pipe.execute)) if payloads else []

    def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        try:
            self._call(self._redis.xgroup_create, self.key, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    def _events(self, entries, group: str) -> list[LogEvent]:
        out, gone = [], []
        for entry_id, fields in entries or ():
            if fields is None or FIELD not in fields:  # deleted (or not ours) while pending
                gone.append(entry_id)
                continue
            out.append(LogEvent(entry_id, fields[FIELD], _iso(entry_id)))
        if gone:
            self._call(self._redis.xack, self.key, group, *gone)
        return out

    def read(self, group: str, consumer: str, count: int, wait_s: float = 0.0) -> list[LogEvent]:
        self._ensure_group(group)
        mine = (group, consumer)
        if mine not in self._own_pending_done:
            reply = self._call(self._redis.xreadgroup, group, consumer, {self.key: "0"}, count=count)
            entries = reply[0][1] if reply else []
            if entries:
                return self._events(entries, group) or self.read(group, consumer, count, wait_s)
            self._own_pending_done.add(mine)
        claimed = self._claim(group, consumer, count)
        if claimed:
            return claimed
        block = int(wait_s * 1000) if wait_s > 0 else None  # BLOCK 0 would wait for ever
        reply = self._call(self._redis.xreadgroup, group, consumer, {self.key: ">"}, count=count, block=block)
        return self._events(reply[0][1] if reply else [], group)

    def _claim(self, group: str, consumer: str, count: int) -> list[LogEvent]:
        """Pending entries idle longer than ``claim_idle_s`` (their consumer died), now ours."""
        now = time.monotonic()
        if now - self._claimed_at.get(group, -1e9) < min(1.0, self.settings.claim_idle_s / 2):
            return []
        self._claimed_at[group] = now
        start = self._claim_cursor.get(group, "0-0")
        reply = self._call(self._redis.xautoclaim, self.key, group, consumer,
                           int(self.settings.claim_idle_s * 1000), start_id=start, count=count)
        cursor, entries = reply[0], reply[1]
        self._claim_cursor[group] = cursor
        if entries and cursor != "0-0":
            self._claimed_at[group] = -1e9  # more may be waiting: look again on the next read
        return self._events(entries, group)

    def acknowledge(self, group: str, consumer: str, events: Sequence[LogEvent]) -> None:
        if events:
            self._call(self._redis.xack, self.key, group, *[e.id for e in events])

    def _group_info(self, group: str) -> dict | None:
        try:
            groups = self._call(self._redis.xinfo_groups, self.key)
        except redis.ResponseError:  # no such key yet
            return None
        return next((g for g in groups if g["name"] == group), None)

    def lag(self, group: str) -> int:
        info = self._group_info(group)
        if info is None:
            return self.length()
        undelivered = info.get("lag")
        if undelivered is None:  # Redis cannot tell after deletions: count past the last delivered id
            undelivered = len(self._call(self._redis.xrange, self.key, f"({info['last-delivered-id']}", "+"))
        return int(undelivered) + int(info["pending"])

    def length(self) -> int:
        return int(self._call(self._redis.xlen, self.key))

    def groups(self) -> list[dict]:
        try:
            groups = self._call(self._redis.xinfo_groups, self.key)
        except redis.ResponseError:
            return []
        return [{"group": g["name"], "lag": self.lag(g["name"]), "pending": int(g["pending"]),
                 "consumers": int(g["consumers"]), "last_delivered": g["last-delivered-id"]} for g in groups]

    def consumed_since(self, group: str, since: str, after: str | None, count: int) -> list[LogEvent]:
        info = self._group_info(group)
        if info is None or info["last-delivered-id"] == "0-0":
            return []
        start = f"({after}" if after else f"{_ms(since)}-0"
        entries = self._call(self._redis.xrange, self.key, start, info["last-delivered-id"], count=count)
        return self._events(entries, group)
