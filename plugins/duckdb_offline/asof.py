"""Latest-value retrieval as a search over the source, sorted once per call.

The ASOF join in SQL sorts the probes as well as the source, and the probes then have to be
sorted back into their input order. Here DuckDB sorts only the source, by
``(entity, event time, rowid)``, so each entity's rows are one run, oldest first and,
among equal times, the row written last at the end. Every entity gets a dense code (its
index among the source's distinct entities); a probe ``(entity, b = t - label_delay)``
searches its entity's run for the last row with event time ``<= b``, by steps of
descending powers of two, all probes at once in numpy. No row, or a row older than the
ttl, means no value. The answers come out in the probes' order: nothing is sorted back.

The rule is the one of ``sql.latest_sql``, and the tests hold both to one brute-force
oracle. This path takes integer and text keys of sources that fit in memory
(``max_cells``); anything else goes to the SQL join (``latest_values`` returns None).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lab.features.views import FeatureView
from plugins.duckdb_offline.sql import q, us

_KEY_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
              "VARCHAR"}
_NUMPY_TYPES = {"DOUBLE", "FLOAT", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER", "USMALLINT",
                "UTINYINT"}  # read with fetchnumpy: a plain array of the same width as Arrow's
_US_PER = {"s": 1_000_000, "ms": 1_000, "us": 1}
MAX_CELLS = 1 << 28  # source rows x (features + 2) read into memory at most (~2 GiB of 8-byte values)


def epoch_us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Integer epoch microseconds of a timestamp or date column without nulls (naive = UTC),
    rounded down as DuckDB's ``epoch_us`` does."""
    kind = column.type
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_date32(kind):
        return column.view(pa.int32()).to_numpy().astype(np.int64) * 86_400_000_000
    if pa.types.is_date64(kind):
        return column.view(pa.int64()).to_numpy() * 1_000
    raw = column.view(pa.int64()).to_numpy()
    if kind.unit == "ns":
        return np.floor_divide(raw, 1_000)
    return raw * _US_PER[kind.unit] if kind.unit != "us" else raw


def _probe_codes(probe_keys: pa.ChunkedArray, entities: pa.Array) -> np.ndarray | None:
    """Each probe's entity code (its index among ``entities``, which are sorted and
    distinct), -1 where unknown; None when the probe keys cannot be compared with the
    source's without SQL's casts. Integer keys in a dense range are looked up in a table
    indexed by key; others are hashed (``index_in``)."""
    if pa.types.is_integer(entities.type) != pa.types.is_integer(probe_keys.type):
        return None
    if not (pa.types.is_integer(probe_keys.type) or pa.types.is_string(probe_keys.type)
            or pa.types.is_large_string(probe_keys.type)):
        return None
    if pa.types.is_integer(entities.type):
        try:
            entities = entities.cast(pa.int64())
            probe_keys = probe_keys.cast(pa.int64())
        except pa.ArrowInvalid:  # an unsigned key past int64: SQL compares it
            return None
        known = entities.to_numpy()
        low, high = int(known[0]), int(known[-1])
        if high - low < 4 * len(known) + 1024 and low > np.iinfo(np.int64).min:
            table = np.full(high - low + 2, -1, dtype=np.int64)  # the last slot: outside the range
            table[known - low] = np.arange(len(known))
            keys = pc.fill_null(probe_keys, low - 1).to_numpy()
            keys = keys.astype(np.int64) if keys.dtype != np.int64 else keys
            return table[np.where((keys >= low) & (keys <= high), keys - low, high - low + 1)]
    elif probe_keys.type != entities.type:
        probe_keys = probe_keys.cast(entities.type)
    found = pc.index_in(probe_keys, value_set=entities)
    return pc.fill_null(found, -1).to_numpy().astype(np.int64)


_BLOCK = 1 << 18  # probes per unit of work: one block's search arrays stay in cache; threads share blocks
THREADS = max(1, min(4, os.cpu_count() or 1))
_POOL: ThreadPoolExecutor | None = None


def _each(fn, units: list) -> None:
    """``fn(unit)`` for every unit, on a few threads when there are several units (numpy
    releases the GIL in the searches and gathers)."""
    global _POOL
    if len(units) < 2 or THREADS == 1:
        for unit in units:
            fn(unit)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=THREADS,
                                   thread_name_prefix="lab-asof")
    for _ in _POOL.map(fn, units):
        pass


class SortedSource:
    """One view's source, sorted by (entity, event time, rowid), ready to be searched.

    ``entities`` are the distinct non-null keys in sorted order (an entity's code is its
    index); entity c's rows are ``first[c]`` up to, not including, ``first[c + 1]``.
    """

    def __init__(self, view: FeatureView, order: pa.Table, arrays: dict[str, np.ndarray], values: pa.Table | None):
        # Numeric feature columns without nulls as numpy arrays; the others as Arrow.
        self.view, self.arrays, self.values = view, arrays, values
        n = order.num_rows
        keys = order.column("k").combine_chunks()
        starts = np.ones(n, dtype=bool)
        starts[1:] = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        self.entities = keys.filter(pa.array(starts))
        # Code -1 (unknown) reads the last entry: an empty run at n.
        self.first = np.append(np.flatnonzero(starts), n)
        self.ends = np.append(self.first[1:], n)
        self.steps = int((self.ends - self.first).max()).bit_length()
        # The event times, and one more: found = -1 (no row, the first entity) reads it.
        self.padded = np.empty(n + 1, dtype=np.int64)
        self.padded[n] = np.iinfo(np.int64).max
        at = 0
        for chunk in order.column("e").chunks:
            self.padded[at:at + len(chunk)] = chunk.to_numpy()
            at += len(chunk)
        self.rowid = order.column("r").to_numpy()

    @classmethod
    def read(cls, con, view: FeatureView, types: dict[str, str], max_cells: int = MAX_CELLS) -> "SortedSource | None":
        """The view's source from an open connection, or None where this path does not
        apply: a key type it does not take, a source past ``max_cells``, no rows with a
        key and a time, or rowids with gaps (rows deleted by hand). ``types``: the source's
        DuckDB column types."""
        if types[view.entity] not in _KEY_TYPES:
            return None
        src, k, ts = q(view.source), q(view.entity), q(view.timestamp)
        rows, top = con.execute(f"SELECT count(*), max(rowid) FROM {src}").fetchall()[0]
        if rows * (len(view.features) + 2) > max_cells or (rows and top != rows - 1):
            return None  # too large, or rowids with gaps: positions would not be rowids
        # Sorted as rowids; the features read apart in rowid order (a plain scan keeps it),
        # which is cheaper than sorting them along.
        order = con.sql(f"SELECT {k} AS k, epoch_us({ts}) AS e, rowid AS r FROM {src} "
                        f"WHERE {k} IS NOT NULL AND {ts} IS NOT NULL ORDER BY k, e, rowid").to_arrow_table()
        if order.num_rows == 0:
            return None
        # Numeric columns straight into numpy (one copy, where Arrow then combining its
        # chunks took two); a column that turns out to hold nulls, and any other type,
        # as Arrow.
        numeric = [f for f in view.features if types.get(f) in _NUMPY_TYPES]
        arrays = con.sql(f"SELECT {', '.join(q(f) for f in numeric)} FROM {src}").fetchnumpy() if numeric else {}
        arrays = {f: a for f, a in arrays.items() if not isinstance(a, np.ma.MaskedArray)}
        rest = [f for f in view.features if f not in arrays]
        values = con.sql(f"SELECT {', '.join(q(f) for f in rest)} FROM {src}").to_arrow_table() if rest else None
        return cls(view, order, arrays, values)

    def codes(self, probe_keys: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
        return _probe_codes(probe_keys, self.entities)

    def lookup(self, codes: np.ndarray, t_us: np.ndarray, event_times: bool = False):
        """For probes (entity code, time): the row each reads as ``(rowids, hits)``, a
        rowid where ``hits``, and with ``event_times`` also that row's event time (epoch µs)."""
        view, first, ends, padded, rowid, steps = self.view, self.first, self.ends, self.padded, self.rowid, self.steps
        b = t_us - us(view.label_delay)
        ttl = us(view.ttl)
        probes = len(codes)
        picks = np.empty(probes, dtype=np.int64)  # 0 where no row
        hits = np.empty(probes, dtype=bool)
        times = np.empty(probes, dtype=np.int64) if event_times else None
        blocks = [slice(i, min(i + _BLOCK, probes)) for i in range(0, probes, _BLOCK)]

        def search(block: slice) -> None:  # every probe of the block at once, each in its entity's rows
            code, bound = codes[block], b[block]
            begin = first[code]
            last = ends[code] - 1
            found = begin - 1  # the last row known to be at or before b; none yet
            # Steps of 2^(k-1) ... 1 (their sum covers the longest run): a step's row is
            # taken when at or before b; a step past the run tests its last row instead,
            # which is taken only if every row of the run is at or before b.
            for step in (1 << np.arange(steps - 1, -1, -1)).tolist():
                candidate = np.minimum(found + step, last)
                np.copyto(found, candidate, where=padded[candidate] <= bound)
            # found: the entity's newest row at or before b (equal times: the largest rowid)
            hit = (found >= begin) & (bound - padded[found] <= ttl)
            hits[block] = hit
            picks[block] = np.where(hit, rowid[np.maximum(found, 0)], 0)
            if times is not None:
                times[block] = padded[found]

        _each(search, blocks)
        return (picks, hits, times) if event_times else (picks, hits)

    def gather(self, picks: np.ndarray, hits: np.ndarray) -> list[pa.Array]:
        """The features of rows ``picks``, null where not ``hits``."""
        probes = len(picks)
        blocks = [slice(i, min(i + _BLOCK, probes)) for i in range(0, probes, _BLOCK)]
        misses = probes - int(np.count_nonzero(hits))
        validity = pa.array(hits).buffers()[1] if misses else None  # one bitmap, shared by every column
        out, gathers = [], []
        for f in self.view.features:
            source = self.arrays.get(f)
            if source is not None:
                target = np.empty(probes, dtype=source.dtype)
                gathers += [(source, target, block) for block in blocks]
                out.append(pa.Array.from_buffers(pa.from_numpy_dtype(source.dtype), probes,
                                                 [validity, pa.py_buffer(target)], misses))
                continue
            column = self.values.column(f).combine_chunks()
            taken = column.take(pa.array(picks))  # nulls, text, booleans...: Arrow's take, the misses nulled
            out.append(pc.if_else(pa.array(hits), taken, pa.scalar(None, column.type)) if misses else taken)
        _each(lambda job: np.take(job[0], picks[job[2]], out=job[1][job[2]]), gathers)
        return out


def latest_values(con, view: FeatureView, types: dict[str, str], probe_keys: pa.ChunkedArray, t_us: np.ndarray,
                  max_cells: int = MAX_CELLS) -> pa.Table | None:
    """The view's features for every probe, in probe order; None when this path does not
    apply (see the module docstring). ``con`` is an open connection."""
    source = SortedSource.read(con, view, types, max_cells)
    if source is None:
        return None
    codes = source.codes(probe_keys)
    if codes is None:
        return None
    return pa.table(source.gather(*source.lookup(codes, t_us)), names=list(view.features))
