"""How a source lives in the warehouse: Parquet plus a pointer, replaced atomically.

``<warehouse>/<source>/_current.json`` names the version folder that holds the source
now (``<source>/v-<ns>-<hex>/part-00000.parquet``), with its digest and row count. A
write makes a new version folder, then replaces the pointer (``lab.atomic``: a rename),
so a reader sees the old or the new table, never a mix; a crash before the rename leaves
the old one. The version before the current one is kept for readers still on it; older
ones are removed.

Hidden columns, written beside the user's and never returned by ``read_source``:

- ``__lab_row``: the row's position in the table as written (int64): the read order,
  and the tie-break "among rows with one entity and event time, the one written last";
- ``__lab_us__<col>`` for each timestamp or date column: its epoch microseconds (int64,
  naive = UTC, rounded down as DuckDB's ``epoch_us``; null where the value is). Spark
  then compares integers: no session time zone, no TIMESTAMP/TIMESTAMP_NTZ question.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lab.atomic import atomic_path, atomic_write_text
from lab.errors import LabError, NotFound

ROW = "__lab_row"
US_PREFIX = "__lab_us__"
HIDDEN = "__lab_"
POINTER = "_current.json"
PART = "part-00000.parquet"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
ROW_GROUP = 1 << 20  # rows per Parquet row group: Spark splits a file into tasks by row group
_US_PER = {"s": 1_000_000, "ms": 1_000, "us": 1}


def us_column(name: str) -> str:
    """The hidden epoch-microsecond column of timestamp column ``name``."""
    return US_PREFIX + name


def is_time(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date(kind)


def epoch_us(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Integer epoch microseconds of a timestamp or date column, nulls kept (naive = UTC;
    nanoseconds rounded down)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = column.type
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_date32(kind):
        raw = column.view(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64) * 86_400_000_000
    elif pa.types.is_date64(kind):
        raw = column.view(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False) * 1_000
    else:
        raw = column.view(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        raw = np.floor_divide(raw, 1_000) if kind.unit == "ns" else raw * _US_PER[kind.unit]
    return pa.array(raw, pa.int64(), mask=~valid if not valid.all() else None)


def check_name(name) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise LabError(f"source name {name!r} must be letters, digits and _, starting with a letter")


def check_columns(name: str, table: pa.Table) -> None:
    names = table.column_names
    if table.num_columns == 0:
        raise LabError(f"source {name!r}: the table has no columns")
    if "" in names or len(set(names)) != len(names):
        raise LabError(f"source {name!r}: column names must be non-empty and distinct, got {names}")
    hidden = [c for c in names if c.startswith(HIDDEN)]
    if hidden:
        raise LabError(f"source {name!r}: column(s) {', '.join(hidden)} start with {HIDDEN}, which the store "
                       "keeps for itself; rename them")


def with_hidden(table: pa.Table) -> pa.Table:
    """``table`` plus ``__lab_row`` and the ``__lab_us__`` column of each time column."""
    out = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    for name, column in zip(table.column_names, table.columns):
        if is_time(column.type):
            out = out.append_column(us_column(name), epoch_us(column))
    return out


class Layout:
    """The sources under one warehouse folder (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def pointer(self, name: str) -> dict | None:
        path = self.root / name / POINTER
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def require(self, name: str) -> dict:
        found = self.pointer(name) if isinstance(name, str) and NAME.match(name or "") else None
        if found is None:
            raise NotFound(f"no source {name!r} in the Spark offline store {self.root}; sources there: "
                           f"{', '.join(self.names()) or 'none'}")
        return found

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / POINTER).is_file())

    def file(self, name: str, pointer: dict | None = None) -> Path:
        """The Parquet file of the source's current version."""
        pointer = pointer or self.require(name)
        return self.root / name / pointer["version"] / PART

    def schema(self, name: str, pointer: dict | None = None) -> pa.Schema:
        """The stored schema, hidden columns included."""
        return pq.read_schema(self.file(name, pointer))

    def write(self, name: str, table: pa.Table, digest_of) -> dict:
        """Store ``table`` (with its hidden columns) as the new version of ``name``; the
        pointer records ``digest_of(the table as read back)``. Returns the pointer."""
        folder = self.root / name
        version = f"v-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        target = folder / version
        target.mkdir(parents=True)
        try:
            with atomic_path(target / PART) as tmp:
                pq.write_table(with_hidden(table), tmp, row_group_size=ROW_GROUP)
            stored = pq.read_table(target / PART)
            visible = stored.select([c for c in stored.column_names if not c.startswith(HIDDEN)])
            pointer = {"version": version, "digest": digest_of(visible), "rows": stored.num_rows,
                       "written_at": time.time()}
        except (pa.ArrowException, OSError, ValueError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise LabError(f"cannot write source {name!r} as Parquet; the old table is kept: {exc}") from None
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        previous = self.pointer(name)
        atomic_write_text(folder / POINTER, json.dumps(pointer, sort_keys=True))
        keep = {version, previous["version"]} if previous else {version}
        for old in folder.iterdir():
            if old.is_dir() and old.name.startswith("v-") and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return pointer
