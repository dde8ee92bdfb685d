"""``JsonOnlineStore``: lab's online store contract (``lab.features.stores.OnlineStore``)
kept in one JSON file per feature view.

Why it exists: it is the smallest complete online store, for a lab on one machine that
wants its served features in files a person can read, and the worked example of
docs/plugins.md. It passes ``lab.testing.OnlineStoreContract``.

Layout: ``<folder>/<view>.json`` holds every version of one view::

    {"format": 1, "versions": {"<version>": {
        "definition": {...}, "key_type": "INTEGER" | "TEXT",
        "watermark": ISO time, "written_at": ISO time (UTC),
        "rows": {"<key>": [{feature: value}, event time ISO or null, written at ISO (UTC)]}}}}

A write reads the file, changes one version and replaces the file atomically
(``lab.atomic``: temporary file, fsync, rename), under an exclusive ``fcntl`` lock on
``<view>.json.lock`` so two writers never lose each other's rows. A reader reads whole
files, so it sees one materialization or the next, never a mix; it keeps the parsed file
until the file is replaced (a new inode). Feature values must be JSON values (numbers,
strings, booleans, null); the store is meant for thousands of keys, not millions: every
write rewrites the view's file.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any, Sequence

from lab.atomic import atomic_write_text
from lab.errors import LabError
from lab.features.stores import EVENT_TIME, OnlineStore, RowTimes, ViewState, checked_rows, normalize_key
from lab.features.views import FeatureView

FORMAT = 1
_JSON_TYPES = (int, float, str, bool, type(None))


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --8<-- [start:store]
class JsonOnlineStore(OnlineStore):
    """Latest feature values per entity in ``folder`` (created on first write), one JSON
    file per view; see the module docstring for the format and its guarantees."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._cache: dict[str, tuple[tuple[int, int, int], dict]] = {}
        self._lock = threading.Lock()  # the cache is shared by the server's threads
    # --8<-- [end:store]

    # -- files ------------------------------------------------------------------------------

    def _path(self, view_name: str) -> Path:
        return self.folder / f"{view_name}.json"

    def _load(self, view_name: str) -> dict:
        """The view's file as a dict (empty when never written), parsed once per replacement."""
        path = self._path(view_name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {"format": FORMAT, "versions": {}}
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(view_name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:  # replaced between stat and read: read the new one
            return self._load(view_name)
        except ValueError as exc:
            raise LabError(f"{path} is not a JSON online-store file ({exc}); delete it and run "
                           "`lab features materialize` to write it again") from None
        if data.get("format") != FORMAT:
            raise LabError(f"{path} has format {data.get('format')!r}, this plugin reads {FORMAT}; "
                           "upgrade lab-plugin-example or rematerialize")
        with self._lock:
            self._cache[view_name] = (stamp, data)
        return data

    def _version(self, view: FeatureView, data: dict) -> dict | None:
        """This view version's part of ``data``; None if no version of the view was ever
        written; ``LabError`` naming ``lab features materialize`` if only others were."""
        versions = data["versions"]
        if view.version in versions:
            return versions[view.version]
        if versions:
            raise LabError(
                f"feature view {view.name!r} version {view.version} was never materialized in {self.folder} "
                f"(it holds version(s) {', '.join(sorted(versions))}); its definition changed: run "
                f"`lab features materialize` to write this version")
        return None

    # -- the contract -----------------------------------------------------------------------

    def write(self, view: FeatureView, rows, watermark: dt.datetime, *, upsert: bool = False) -> int:
        rows = checked_rows(view, rows, watermark)
        keys = rows.column(view.entity)
        key_type = "INTEGER" if _is_integer(keys.type) else "TEXT"
        columns = {name: rows.column(name).to_pylist() for name in view.feature_names}
        times = rows.column(EVENT_TIME).to_pylist() if EVENT_TIME in rows.column_names else [None] * rows.num_rows
        written_at = _now()
        new_rows: dict[str, list] = {}
        for i, key in enumerate(keys.to_pylist()):
            text = str(key)
            if text in new_rows:
                raise LabError(f"rows for view {view.name!r} repeat the key {key!r}; give each key once")
            values = {name: columns[name][i] for name in view.feature_names}
            bad = {name: type(v).__name__ for name, v in values.items() if not isinstance(v, _JSON_TYPES)}
            if bad:
                raise LabError(f"view {view.name!r}: the JSON online store keeps numbers, strings, booleans "
                               f"and nulls, not {bad}; cast those features in the view or use another store")
            new_rows[text] = [values, _iso(times[i]), _iso(written_at)]
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._path(view.name).with_suffix(".json.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per view at a time, across processes
            data = self._load(view.name)
            data = {"format": FORMAT, "versions": dict(data["versions"])}
            old = data["versions"].get(view.version)
            kept = dict(old["rows"]) if (upsert and old is not None) else {}
            if old is not None and old["key_type"] != key_type:
                raise LabError(f"view {view.name!r} was materialized with {old['key_type']} keys, now "
                               f"{key_type}; keep the entity column's type or redefine the view")
            kept.update(new_rows)
            data["versions"][view.version] = {
                "definition": view.definition(), "key_type": key_type, "watermark": _iso(watermark),
                "written_at": _iso(written_at), "rows": kept}
            atomic_write_text(self._path(view.name), json.dumps(data, separators=(",", ":")))
        return rows.num_rows

    # --8<-- [start:read]
    def _entries(self, view: FeatureView, keys: Sequence) -> tuple[list[list | None], dict | None]:
        part = self._version(view, self._load(view.name))
        if part is None:
            return [None] * len(keys), None
        stored = part["rows"]
        found = []
        for key in keys:
            key = normalize_key(key, part["key_type"])
            found.append(None if key is None else stored.get(str(key)))
        return found, part

    def read(self, view: FeatureView, keys: Sequence) -> list[dict | None]:
        entries, _ = self._entries(view, keys)
        return [None if e is None else dict(e[0]) for e in entries]
    # --8<-- [end:read]

    def read_with_watermark(self, view: FeatureView, key) -> tuple[dict | None, dt.datetime | None]:
        # One parsed file: the row and the watermark come from the same materialization.
        (entry,), part = self._entries(view, [key])
        return (None if entry is None else dict(entry[0])), (None if part is None else _time(part["watermark"]))

    def watermark(self, view: FeatureView) -> dt.datetime | None:
        part = self._load(view.name)["versions"].get(view.version)
        return None if part is None else _time(part["watermark"])

    def row_times(self, view: FeatureView, keys: Sequence) -> list[RowTimes | None]:
        entries, _ = self._entries(view, keys)
        return [None if e is None else RowTimes(_time(e[1]), _time(e[2])) for e in entries]

    def state(self, view: FeatureView) -> ViewState | None:
        part = self._load(view.name)["versions"].get(view.version)
        if part is None:
            return None
        events = [t for t in (_time(e[1]) for e in part["rows"].values()) if t is not None]
        return ViewState(version=view.version, watermark=_time(part["watermark"]), rows=len(part["rows"]),
                         newest_event_time=max(events, default=None), written_at=_time(part["written_at"]))

    def definitions(self, view_name: str) -> dict[str, dict]:
        return {version: part["definition"] for version, part in self._load(view_name)["versions"].items()}

    # -- for `lab json-online` --------------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        """One row per view version held: view, version, rows, watermark, written_at."""
        out = []
        for path in sorted(self.folder.glob("*.json")):
            for version, part in self._load(path.stem)["versions"].items():
                out.append({"view": path.stem, "version": version, "rows": len(part["rows"]),
                            "watermark": part["watermark"], "written_at": part["written_at"]})
        return out


def _is_integer(arrow_type) -> bool:
    import pyarrow as pa  # the store's own dependency, loaded with it

    return pa.types.is_integer(arrow_type)
