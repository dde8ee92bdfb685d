"""API keys for the model server: who may call its admin routes, and ``/predict`` when
``[tool.lab.serve] predict_auth = "key"``.

A key is ``lab_<id>_<secret>``: ``id`` is 12 hex characters, the row's primary key, so
finding a key is one indexed read; ``secret`` is 32 random bytes (URL-safe base64). The
store keeps only the SHA-256 of the whole key (a fast hash is enough for 256 random
bits: there is nothing to guess a dictionary of) and compares digests in constant time
(``hmac.compare_digest``). The raw key is shown once, by ``create``, and is in no file.

Keys live in their own SQLite file (``[tool.lab.serve] keys``, default ``keys.db`` in
the project root), created readable by its owner only. It has its own migrations (owner
``keys``). A key is never deleted or edited: revoking stamps ``revoked_at``, once, and
triggers refuse any other UPDATE and every DELETE, so the table answers "which keys could
act on day X". A name belongs to one live key at a time; revoke it to reuse the name.

Each key holds scopes (``SCOPES``); ``admin`` holds all of them. The server keeps
verified keys in memory and drops them when the file changes (SQLite's
``data_version``), so a revocation takes effect on the next request, with no restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lab.errors import ConfigError, LabError, NotFound
from lab.events import current_actor
from lab.sqlite import Database, Migration, dumps, insert, loads, run_script, utc_now

__all__ = ["SCOPES", "ApiKey", "KeyStore", "keys_path", "parse_scopes"]

SCOPES: dict[str, str] = {
    "admin": "every scope below",
    "predict": "POST /predict, when [tool.lab.serve] predict_auth = \"key\"",
    "promote": "POST /admin/promote and POST /admin/rollback: move a model's alias",
    "flags": "GET and POST /admin/flags: read flags and experiments, change weights, start or stop one",
    "shadow": "POST /admin/shadow: start or stop shadow traffic to a challenger",
}
"""Every scope a key may hold, with what it allows."""

OWNER = "keys"
KEY_PREFIX = "lab_"
_KEY = re.compile(r"^lab_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def keys_path(config) -> Path:
    """The key file of the lab ``config``: ``[tool.lab.serve] keys``, under its root."""
    return config.root / config.serve.keys


def parse_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """Scope names, checked and in ``SCOPES`` order; a comma-separated string works too.
    An unknown or missing scope is a ``ConfigError`` listing the known ones."""
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    wanted = {s.strip() for s in scopes if s and s.strip()}
    known = ", ".join(SCOPES)
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ConfigError(f"unknown scope(s) {', '.join(unknown)}; scopes are: {known}")
    if not wanted:
        raise ConfigError(f"a key needs at least one scope (--scope NAME); scopes are: {known}")
    return tuple(s for s in SCOPES if s in wanted)


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _schema(conn: sqlite3.Connection) -> None:
    """Keys with their scopes and SHA-256 digest; revocation stamps a row once; no deletes."""
    run_script(conn, """
        CREATE TABLE "api_keys" (
            "id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "scopes" TEXT NOT NULL, "sha256" TEXT NOT NULL,
            "created_at" TEXT NOT NULL, "created_by" TEXT NOT NULL,
            "revoked_at" TEXT, "revoked_by" TEXT, "revoke_reason" TEXT
        );
        CREATE UNIQUE INDEX "idx_api_keys_live_name" ON "api_keys" ("name") WHERE "revoked_at" IS NULL;
        CREATE TRIGGER "api_keys_no_delete" BEFORE DELETE ON "api_keys"
        BEGIN SELECT RAISE(ABORT, 'api_keys is append-only: revoke a key instead'); END;
        CREATE TRIGGER "api_keys_revoke_only" BEFORE UPDATE ON "api_keys"
        WHEN OLD."revoked_at" IS NOT NULL OR NEW."revoked_at" IS NULL OR NEW."id" IS NOT OLD."id"
          OR NEW."name" IS NOT OLD."name" OR NEW."scopes" IS NOT OLD."scopes" OR NEW."sha256" IS NOT OLD."sha256"
          OR NEW."created_at" IS NOT OLD."created_at" OR NEW."created_by" IS NOT OLD."created_by"
        BEGIN SELECT RAISE(ABORT, 'an API key can only be revoked, once'); END;
    """)


MIGRATIONS: tuple[Migration, ...] = (Migration("0001_api_keys", _schema),)


@dataclass(frozen=True)
class ApiKey:
    """One key as stored (never its secret): ``id`` (the 12 hex characters after
    ``lab_``), ``name`` (the actor its actions are audited under), ``scopes``, and who
    made and revoked it, when."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: str
    created_by: str
    revoked_at: str | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None

    @property
    def live(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        """Whether this key may act in ``scope`` (``admin`` may act in every one)."""
        return scope in self.scopes or "admin" in self.scopes

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "created_at": self.created_at,
                "created_by": self.created_by, "revoked_at": self.revoked_at, "revoked_by": self.revoked_by,
                "revoke_reason": self.revoke_reason}


def _key(row: dict) -> ApiKey:
    return ApiKey(id=row["id"], name=row["name"], scopes=tuple(loads(row["scopes"])), created_at=row["created_at"],
                  created_by=row["created_by"], revoked_at=row["revoked_at"], revoked_by=row["revoked_by"],
                  revoke_reason=row["revoke_reason"])


def _create_private(path: Path) -> None:
    """Create ``path`` empty and readable by its owner only (SQLite gives its -wal and
    -shm files the same mode); an existing file is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class KeyStore:
    """The key file: create, list, revoke, and ``verify`` a presented key.

    Open with ``KeyStore.open(path)`` (``create=False``: a missing file is ``NotFound``
    and nothing is created). Safe to share between threads.
    """

    def __init__(self, database: Database):
        self._db = database
        self.path = database.path
        self._cache_lock = threading.Lock()
        self._seen_version: int | None = None
        self._verified: dict[str, tuple[str, ApiKey | None]] = {}  # id -> (digest, key or None if not live)
        self._live_count: int | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = True) -> "KeyStore":
        path = Path(path).resolve()
        if create:
            _create_private(path)
        return cls(Database.open_migrated(path, OWNER, MIGRATIONS, what="key store", create=create))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "KeyStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- managing keys (lab keys ...) --------------------------------------------------------

    def create(self, name: str, scopes: Iterable[str] | str, *, actor: str | None = None) -> tuple[ApiKey, str]:
        """A new key named ``name`` with ``scopes``: ``(the stored key, the raw key)``. The
        raw key exists only in the return value; store only what ``ApiKey`` holds."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"key name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-', starting "
                              "with a letter or digit (e.g. deploy-bot); it is the actor in the audit log")
        scopes = parse_scopes(scopes)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        raw = f"{KEY_PREFIX}{key_id}_{secret}"
        row = {"id": key_id, "name": name, "scopes": dumps(list(scopes), "scopes"), "sha256": _digest(raw),
               "created_at": utc_now(), "created_by": actor or current_actor()}
        with self._db.write(f"create API key {name!r}") as db:
            if self._db.one("SELECT 1 AS x FROM api_keys WHERE name = ? AND revoked_at IS NULL", [name]):
                raise LabError(f"a live key is already named {name!r}; pick another name, or revoke it first "
                               f"with `lab keys revoke {name}`")
            insert(db, "api_keys", row)
        self._forget()
        return _key({**row, "revoked_at": None, "revoked_by": None, "revoke_reason": None}), raw

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """Every key (or the live ones), oldest first."""
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        with self._db.read():
            rows = self._db.rows(f"SELECT * FROM api_keys {where} ORDER BY created_at, rowid")
        return [_key(r) for r in rows]

    def revoke(self, name_or_id: str, *, actor: str | None = None, reason: str = "") -> ApiKey:
        """Revoke the live key named ``name_or_id`` (or with that id); the server refuses
        it from its next request. ``NotFound`` names the live keys there are."""
        with self._db.write(f"revoke API key {name_or_id!r}") as db:
            row = self._db.one("SELECT * FROM api_keys WHERE revoked_at IS NULL AND (name = ? OR id = ?)",
                               [name_or_id, name_or_id])
            if row is None:
                live = [r["name"] for r in self._db.rows(
                    "SELECT name FROM api_keys WHERE revoked_at IS NULL ORDER BY name")]
                raise NotFound(f"no live API key named {name_or_id!r} in {self.path}; live keys: "
                               f"{', '.join(live) or 'none'} (see `lab keys list`)")
            stamp = {"revoked_at": utc_now(), "revoked_by": actor or current_actor(), "revoke_reason": reason or ""}
            db.execute("UPDATE api_keys SET revoked_at = ?, revoked_by = ?, revoke_reason = ? WHERE id = ?",
                       [*stamp.values(), row["id"]])
        self._forget()
        return _key({**row, **stamp})

    # -- checking a presented key (the server) ----------------------------------------------

    def _forget(self) -> None:
        # This connection's own writes do not move its data_version; other connections' do.
        with self._cache_lock:
            self._seen_version = None

    def _fresh(self) -> None:
        """Forget what was verified if another connection changed the file since."""
        version = self._db.one("PRAGMA data_version")["data_version"]
        if version != self._seen_version:
            self._verified.clear()
            self._live_count = None
            self._seen_version = version

    def live_count(self) -> int:
        """How many keys are live now (0: no key was ever made, or all are revoked)."""
        with self._cache_lock:
            self._fresh()
            if self._live_count is None:
                self._live_count = self._db.one("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")["n"]
            return self._live_count

    def verify(self, raw: str) -> ApiKey | None:
        """The live key ``raw`` is, or None: malformed, unknown, or revoked (one answer
        for all three, so a caller learns nothing about which). One indexed read per key
        id until the file changes; the digest is compared in constant time every time."""
        match = _KEY.match(raw) if isinstance(raw, str) else None
        if match is None:
            return None
        key_id = match.group(1)
        presented = _digest(raw)
        with self._cache_lock:
            self._fresh()
            cached = self._verified.get(key_id)
            if cached is None:
                row = self._db.one("SELECT * FROM api_keys WHERE id = ?", [key_id])
                if row is None:
                    return None  # not cached: an unknown id must not grow the cache
                cached = (row["sha256"], _key(row) if row["revoked_at"] is None else None)
                self._verified[key_id] = cached
        stored, key = cached
        if not hmac.compare_digest(stored, presented):
            return None
        return key
