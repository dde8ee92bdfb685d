"""``RedisOnlineStore``: the latest feature values per entity, in Redis (redis-py).

Layout, for a view ``spend`` at version ``V`` under the prefix ``lab:online:`` (the braces
are a Redis Cluster hash tag: every key of a view lives in one slot, so its MULTI works
there too):

- ``lab:online:{spend}:V`` — one hash per view version: field = the entity key as text
  (an integer key as its decimal digits), value = the row (``codec.py``: packed binary
  when every feature is a number, else JSON), with its event time and write time. One
  more field, ``b"\\xff"`` (never the UTF-8 of a key), holds
  ``watermark<TAB>key_type<TAB>format``: a read of N entities is one HMGET of that field
  and the N keys, so the rows and their watermark come from one command, one round trip,
  one state of the store.
- ``lab:online:{spend}:versions`` — field = version, value = that version's summary as
  JSON (watermark, entity, key type, features, newest event time, last write, definition).
- ``lab:online:{spend}:gen`` — a counter naming each materialization's staging hash,
  ``lab:online:{spend}:V:staging:<n>``.
- ``lab:online:views`` — the set of view names written, for ``materialized``.

Why one hash per version rather than a hash or a string per entity: measured on this
machine with 100,000 rows of 8 small JSON-encoded features, a hash per entity cost 128
bytes per row and 6.7 ms to read 100 entities (one HMGET each, pipelined), a string per
entity 96 bytes and 0.88 ms (MGET), one hash per version 90 bytes and 0.61 ms (one
HMGET); the single hash also lets a materialization be published by one RENAME and
dropped by one UNLINK.

Atomicity. Redis has no multi-command snapshot, but a MULTI/EXEC block runs whole, with
no other client's command in between, and nothing of it if the client dies before EXEC.
A full ``write`` streams its rows in pipelined batches into a fresh staging hash that no
reader looks at (it expires after ``staging_ttl_s`` if the writer dies), then publishes
it in one MULTI: UNLINK the old hash (freed in the background), RENAME the staging hash
into its place, set the watermark field and the version summary. A reader's HMGET runs
before or after that block, so it sees the old materialization or the new one, never a
mix; a writer killed at any moment leaves the old one. An ``upsert`` sends its rows, the
watermark and the summary in one MULTI (WATCHing the hash, retried if another writer
moved it): all of it or none. With Redis persistence off (the tests) a Redis restart
loses everything; with AOF ``appendfsync always`` an acknowledged EXEC survives a crash.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import redis

from lab.config import build_section
from lab.errors import ConfigError, LabError
from lab.features.stores import EVENT_TIME, OnlineStore, RowTimes, ViewState, checked_rows, normalize_key
from lab.features.views import FeatureView
from plugins.redis_online.codec import RowDecoder, binary_format, check_feature_type, encode_batches

META = b"\xff"  # the watermark field of a version's hash; no str key encodes to it
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_READ_CHUNK = 20_000  # fields per HMGET; several run in one MULTI
_WATCH_TRIES = 20
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode
_decode = json.loads


@dataclass(frozen=True)
class RedisOnlineSettings:
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "lab:online:"
    socket_timeout_s: float = 1.0
    connect_timeout_s: float = 1.0
    write_batch: int = 5000
    staging_ttl_s: int = 86400

    @classmethod
    def from_table(cls, table: dict) -> "RedisOnlineSettings":
        settings = build_section(cls, table, "tool.lab.redis_online")
        if not settings.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"[tool.lab.redis_online] url must be redis://HOST:PORT/DB (or rediss://, unix://), "
                              f"got {settings.url!r}")
        if not settings.key_prefix:
            raise ConfigError("[tool.lab.redis_online] key_prefix must not be empty")
        if settings.socket_timeout_s <= 0 or settings.connect_timeout_s <= 0:
            raise ConfigError("[tool.lab.redis_online] socket_timeout_s and connect_timeout_s must be above 0")
        if settings.write_batch < 1 or settings.staging_ttl_s < 1:
            raise ConfigError("[tool.lab.redis_online] write_batch and staging_ttl_s must be at least 1")
        return settings


class RedisOnlineStore(OnlineStore):
    """The online store in the Redis database at ``settings.url``, under ``settings.key_prefix``.

    Safe to share between threads (redis-py's connection pool) and processes. Connects
    lazily: nothing is sent before the first read or write.
    """

    def __init__(self, settings: RedisOnlineSettings | str):
        if isinstance(settings, str):
            settings = RedisOnlineSettings(url=settings)
        self.settings = settings
        self._client = redis.Redis.from_url(
            settings.url, socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.connect_timeout_s, decode_responses=False)
        self._keys: dict[tuple[str, str], bytes] = {}
        self._marks: dict[tuple[bytes, bytes], tuple] = {}  # (hash, watermark field) -> parsed, for the hot path

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.settings.url!r}, key_prefix={self.settings.key_prefix!r})"

    # -- keys --------------------------------------------------------------------------

    def _view_key(self, name: str, suffix: str) -> str:
        return f"{self.settings.key_prefix}{{{name}}}:{suffix}"

    def _live(self, view: FeatureView) -> bytes:
        """The hash of this view version's rows (cached: the read path is hot)."""
        cache_key = (view.name, view.version)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) > 1024:
                self._keys.clear()
            key = self._keys[cache_key] = self._view_key(view.name, view.version).encode()
        return key

    @property
    def _views_key(self) -> str:
        return f"{self.settings.key_prefix}views"

    def _unavailable(self, exc: redis.RedisError, doing: str) -> LabError:
        return LabError(f"the Redis online store at {self.settings.url} failed to {doing}: {exc}; "
                        "check that redis-server runs there ([tool.lab.redis_online] url)")

    # -- writing -------------------------------------------------------------------------

    def write(self, view: FeatureView, rows: pa.Table, watermark: dt.datetime, *, upsert: bool = False) -> int:
        """Replace ``view``'s rows (or, with ``upsert``, the rows of the keys given) and its
        watermark, atomically (see the module docstring); return the number of rows written."""
        rows = checked_rows(view, rows, watermark)
        keys = rows.column(view.entity)
        key_type = _key_type(view.entity, keys.type)
        for name in view.feature_names:
            check_feature_type(name, rows.schema.field(name).type)
        events = rows.column(EVENT_TIME) if EVENT_TIME in rows.column_names else None
        if pc.count_distinct(keys).as_py() != rows.num_rows:
            raise LabError(f"rows for view {view.name!r} repeat an entity key; give one row per key. "
                           "The previous rows are kept.")
        written_at = dt.datetime.now(dt.timezone.utc)
        newest = pc.max(events).as_py() if events is not None else None
        fmt = binary_format(rows.schema, view.feature_names)
        summary = {"version": view.version, "watermark": watermark.isoformat(), "entity": view.entity,
                   "key_type": key_type, "format": fmt, "features": list(view.feature_names),
                   "newest_event": None, "written_at": written_at.isoformat(),
                   "definition": view.definition()}

        def batches(fmt: str):
            return encode_batches(rows, view.entity, view.feature_names, events, _micros(written_at),
                                  self.settings.write_batch, fmt)

        try:
            if upsert:
                return self._upsert(view, batches, rows.num_rows, newest, summary)
            summary["newest_event"] = _iso(newest)
            return self._replace(view, batches(fmt), rows.num_rows, summary)
        except redis.RedisError as exc:
            raise self._unavailable(exc, f"write view {view.name!r}") from None

    def _replace(self, view: FeatureView, batches, count: int, summary: dict) -> int:
        client = self._client
        live = self._live(view)
        versions = self._view_key(view.name, "versions")
        client.sadd(self._views_key, view.name)
        generation = client.incr(self._view_key(view.name, "gen"))
        staging = self._view_key(view.name, f"{view.version}:staging:{generation}")
        ttl = self.settings.staging_ttl_s
        try:
            for batch in batches:
                pipe = client.pipeline(transaction=False)
                pipe.hset(staging, mapping=batch)
                pipe.expire(staging, ttl)
                pipe.execute()
            with client.pipeline() as pipe:
                pipe.watch(staging)  # an expired (or touched) staging hash aborts the flip
                staged = pipe.hlen(staging)
                if staged != count:
                    raise LabError(f"the materialization of view {view.name!r} staged {staged} of {count} rows "
                                   f"(expired after staging_ttl_s = {ttl}?); the previous rows are kept, run it again")
                pipe.multi()
                pipe.unlink(live)
                if count:
                    pipe.rename(staging, live)
                    pipe.persist(live)
                pipe.hset(live, META, _hot(summary))
                pipe.hset(versions, view.version, _encode(summary))
                pipe.execute()
        except redis.WatchError:
            raise LabError(f"the staged rows of view {view.name!r} changed or expired before they were published; "
                           "the previous rows are kept, run the materialization again") from None
        finally:
            try:
                client.unlink(staging)  # nothing once published; the unfinished rows otherwise
            except redis.RedisError:
                pass  # it expires after staging_ttl_s
        return count

    def _upsert(self, view: FeatureView, batches, count: int, newest, summary: dict) -> int:
        key_type, wanted = summary["key_type"], summary["format"]
        live = self._live(view)
        versions = self._view_key(view.name, "versions")
        self._client.sadd(self._views_key, view.name)
        with self._client.pipeline() as pipe:
            for _ in range(_WATCH_TRIES):
                try:
                    pipe.watch(live, versions)
                    raw = pipe.hget(versions, view.version)
                    before = _decode(raw) if raw is not None else None
                    if before is not None and before["key_type"] != key_type:
                        raise LabError(f"view {view.name!r} is stored with {before['key_type']} keys, but these rows "
                                       f"have {key_type} keys; materialize it whole (not incrementally)")
                    summary["newest_event"] = _iso(_later(newest, before["newest_event"] if before else None))
                    if before is not None and before["format"] != wanted:
                        summary["format"] = before["format"]  # the version's rows keep theirs
                        encoded = list(batches(""))  # these rows pack otherwise: JSON, readable beside them
                    else:
                        summary["format"] = wanted
                        encoded = list(batches(wanted))  # sent whole in one MULTI; an upsert is the changed keys only
                    pipe.multi()
                    if before is None:
                        pipe.unlink(live)  # nothing of another materialization may stay mixed in
                    for batch in encoded:
                        pipe.hset(live, mapping=batch)
                    pipe.hset(live, META, _hot(summary))
                    pipe.hset(versions, view.version, _encode(summary))
                    pipe.execute()
                    return count
                except redis.WatchError:
                    continue
        raise LabError(f"view {view.name!r} was written by another writer {_WATCH_TRIES} times during one upsert; "
                       "run one materialization at a time")

    # -- reading -------------------------------------------------------------------------

    def _mark(self, view: FeatureView, live: bytes, raw: bytes) -> tuple[dt.datetime, str, RowDecoder]:
        """The watermark field parsed: watermark, key type and the rows' decoder."""
        found = self._marks.get((live, raw))
        if found is None:
            text, key_type, fmt = raw.decode().split("\t")
            if len(self._marks) > 256:  # a long-lived server sees one per materialization
                self._marks.clear()
            found = self._marks[(live, raw)] = (dt.datetime.fromisoformat(text), key_type,
                                                RowDecoder(view.feature_names, fmt))
        return found

    def _lookup(self, view: FeatureView, keys: list) -> tuple[list, dt.datetime | None, RowDecoder | None]:
        """``(stored value or None per key, watermark, decoder)`` from one HMGET (several in
        one MULTI for many keys); ``([None]*n, None, None)`` when this version was never written."""
        fields: list = [META]
        slots = []  # per key: index of its field as an integer key, and as a text key (-1: none)
        for key in keys:
            if type(key) is int:
                slots.append((len(fields), len(fields)))
                fields.append(str(key))
                continue
            as_int, as_text = normalize_key(key, "INTEGER"), normalize_key(key, "TEXT")
            i = t = -1
            if as_int is not None:
                i = len(fields)
                fields.append(str(as_int))
            if as_text is not None:
                if i >= 0 and as_text == fields[i]:
                    t = i
                else:
                    t = len(fields)
                    fields.append(as_text)
            slots.append((i, t))
        live = self._live(view)
        try:
            if len(fields) <= _READ_CHUNK:
                got = self._client.execute_command("HMGET", live, *fields)
            else:
                pipe = self._client.pipeline(transaction=True)
                for start in range(0, len(fields), _READ_CHUNK):
                    pipe.hmget(live, fields[start: start + _READ_CHUNK])
                got = [value for part in pipe.execute() for value in part]
        except redis.RedisError as exc:
            raise self._unavailable(exc, f"read view {view.name!r}") from None
        if got[0] is None:
            self._refuse_other_version(view)
            return [None] * len(keys), None, None
        mark, key_type, decoder = self._mark(view, live, got[0])
        pick = 0 if key_type == "INTEGER" else 1
        return [got[s[pick]] if s[pick] >= 0 else None for s in slots], mark, decoder

    def read(self, view: FeatureView, keys: Sequence) -> list[dict | None]:
        """Each key's features (a dict by feature name), in order; None for an unknown key.
        Raises when another version of the view is stored but not this one."""
        values, _, decoder = self._lookup(view, list(keys))
        return [None if v is None else decoder.features(v) for v in values]

    def read_with_watermark(self, view: FeatureView, key) -> tuple[dict | None, dt.datetime | None]:
        """``(row, watermark)`` for one key from one HMGET (one round trip, one state)."""
        if type(key) is int:  # the server's common case, without the general conversions
            live = self._live(view)
            try:
                raw, value = self._client.execute_command("HMGET", live, META, str(key))
            except redis.RedisError as exc:
                raise self._unavailable(exc, f"read view {view.name!r}") from None
            if raw is None:
                self._refuse_other_version(view)
                return None, None
            mark, _, decoder = self._mark(view, live, raw)  # str(key) is an int key's field for either key type
            return (None if value is None else decoder.features(value)), mark
        values, mark, decoder = self._lookup(view, [key])
        return (None if values[0] is None else decoder.features(values[0])), mark

    def read_many_with_watermark(self, view: FeatureView, keys: Sequence) -> tuple[list, dt.datetime | None]:
        """``([row or None per key], watermark)`` from one HMGET: what ``read_with_watermark``
        gives for each key, for the server scoring several requests together."""
        values, mark, decoder = self._lookup(view, list(keys))
        return [None if v is None else decoder.features(v) for v in values], mark

    def row_times(self, view: FeatureView, keys: Sequence) -> list[RowTimes | None]:
        """Each key's event time (of the newest source row behind it) and write time."""
        values, _, decoder = self._lookup(view, list(keys))
        return [None if v is None else RowTimes(*decoder.times(v)) for v in values]

    def watermark(self, view: FeatureView) -> dt.datetime | None:
        """The ``as_of`` time of this view version's last materialization, or None."""
        return self._lookup(view, [])[1]

    def state(self, view: FeatureView) -> ViewState | None:
        """This view version's watermark, row count, newest event time and last write."""
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._view_key(view.name, "versions"), view.version)
            pipe.hlen(self._live(view))
            raw, length = pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc, f"read view {view.name!r}") from None
        if raw is None:  # only tells: this version was never written (whatever other versions are)
            return None
        summary = _decode(raw)
        return ViewState(view.version, dt.datetime.fromisoformat(summary["watermark"]), max(length - 1, 0),
                         _parse(summary["newest_event"]), dt.datetime.fromisoformat(summary["written_at"]))

    def _refuse_other_version(self, view: FeatureView) -> None:
        """Raise when the store holds another version of ``view`` but not this one."""
        try:
            stored = self._client.hgetall(self._view_key(view.name, "versions"))
        except redis.RedisError as exc:
            raise self._unavailable(exc, f"read view {view.name!r}") from None
        others = [_decode(v) for k, v in stored.items() if k.decode() != view.version]
        if others:
            other = max(others, key=lambda s: s["written_at"])
            raise LabError(
                f"the online store holds view {view.name!r} version {other['version']} (as of {other['watermark']}), "
                f"but the definition is now version {view.version}; run `lab features materialize`")

    def materialized(self) -> dict[str, dict]:
        """Every materialized view version, by ``name@version``: view, version, watermark,
        entity, row count, newest event time, write time and definition."""
        try:
            names = sorted(n.decode() for n in self._client.smembers(self._views_key))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(self._view_key(name, "versions"))
            per_view = pipe.execute()
            found = []
            pipe = self._client.pipeline(transaction=False)
            for name, stored in zip(names, per_view):
                for version, raw in stored.items():
                    found.append((name, _decode(raw)))
                    pipe.hlen(self._view_key(name, version.decode()))
            lengths = pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc, "list the materialized views") from None
        found = sorted(zip(found, lengths), key=lambda f: (f[0][0], f[0][1]["written_at"]))
        return {f"{name}@{s['version']}": {"view": name, "version": s["version"], "watermark": s["watermark"],
                                            "entity": s["entity"], "rows": max(length - 1, 0),
                                            "newest_event": s["newest_event"], "written_at": s["written_at"],
                                            "definition": s.get("definition")}
                for (name, s), length in found}

    def definitions(self, view_name: str) -> dict[str, dict]:
        """The definition of every stored version of ``view_name``, by version (serving
        reads the version a model was trained on: ``lab.features.stores.pin_views``)."""
        try:
            stored = self._client.hgetall(self._view_key(view_name, "versions"))
        except redis.RedisError as exc:
            raise self._unavailable(exc, f"read the versions of view {view_name!r}") from None
        return {version.decode(): summary["definition"] for version, summary in
                ((v, _decode(raw)) for v, raw in stored.items()) if summary.get("definition")}

    def drop_version(self, view_name: str, version: str) -> bool:
        """Delete one stored view version (its rows and watermark); False when absent."""
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.unlink(self._view_key(view_name, version))
            pipe.hdel(self._view_key(view_name, "versions"), version)
            _, gone = pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc, f"drop view {view_name!r} version {version}") from None
        return bool(gone)

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Close the connections (a later call reconnects)."""
        self._client.close()


# -- encoding ---------------------------------------------------------------------------

def _key_type(name: str, t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "INTEGER"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_temporal(t):
        return "TEXT"
    raise LabError(f"entity column {name!r} has type {t}; the Redis online store keys rows by integers, "
                   "strings or times")


def _hot(summary: dict) -> bytes:
    """The watermark field of a version's hash: what a read needs beside the rows."""
    return f"{summary['watermark']}\t{summary['key_type']}\t{summary['format']}".encode()


def _micros(when: dt.datetime) -> int:
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def _iso(value) -> str | None:
    return None if value is None else value.isoformat()


def _parse(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def _later(new: dt.datetime | None, old_text: str | None) -> dt.datetime | None:
    """The later of a new newest event time and the stored one (ISO text)."""
    old = _parse(old_text)
    if new is None or old is None:
        return new if old is None else old
    try:
        return max(new, old)
    except TypeError:  # one naive, one aware: the new rows speak for the source as it is now
        return new

