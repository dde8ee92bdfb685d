"""Content digests of Arrow tables: the identity of a source table or a training set.

``table_digest`` hashes what a table *holds* (schema and values, in row order), not how
it is laid out in memory: the same rows give the same digest whatever the chunking,
slicing or garbage under null slots. ``canonical_digest`` first sorts the rows, so it
also ignores row order; the offline store uses it for source tables (a set of events).

The byte stream fed to sha256, column by column, is: the column's name and Arrow type,
the row count, the validity of each row (one byte per row) and the values with nulls
replaced by a zero value: fixed-width values as little-endian bytes, strings and
binaries as int64 lengths followed by their concatenated bytes, anything else as JSON.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DIGEST_FORMAT = b"lab-table-digest-v1"


def _single_array(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 0:
        return pa.array([], type=column.type)
    if column.num_chunks == 1:
        return column.chunk(0)
    return pa.concat_arrays(column.chunks)


def _fixed_width_bytes(arr: pa.Array) -> bytes:
    if pa.types.is_boolean(arr.type):
        values = arr.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8)
        return values.tobytes()
    # Temporal and numeric types share a storage integer/float width; hash that storage.
    storage = arr
    if pa.types.is_temporal(arr.type):
        storage = arr.view(pa.int64() if arr.type.bit_width == 64 else pa.int32())
    zero = pa.scalar(0, type=storage.type)
    values = storage.fill_null(zero).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"), copy=False).tobytes()


def _binary_bytes(arr: pa.Array) -> bytes:
    arr = arr.cast(pa.large_binary()).fill_null(b"")
    offsets_buf, data_buf = arr.buffers()[1], arr.buffers()[2]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    lengths = np.diff(offsets).astype("<i8")
    data = b"" if data_buf is None or len(arr) == 0 else data_buf.to_pybytes()[offsets[0]: offsets[-1]]
    return lengths.tobytes() + data


def _column_bytes(arr: pa.Array) -> bytes:
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    t = arr.type
    fixed = pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
    if fixed or (pa.types.is_temporal(t) and t.bit_width in (32, 64)):
        return _fixed_width_bytes(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _binary_bytes(arr)
    if pa.types.is_null(t):
        return b""
    # Decimals, nested and other rare types: slow but well defined.
    return json.dumps(arr.to_pylist(), default=str, sort_keys=True).encode()


def table_digest(table: pa.Table) -> str:
    """sha256 (hex) of ``table``'s schema and values in row order; independent of chunking."""
    h = hashlib.sha256(_DIGEST_FORMAT)
    h.update(str(table.num_rows).encode() + b"\0")
    for name, column in zip(table.column_names, table.columns):
        arr = _single_array(column)
        h.update(name.encode() + b"\0" + str(column.type).encode() + b"\0")
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint8)
        h.update(valid.tobytes())
        h.update(_column_bytes(arr))
    return h.hexdigest()


def _sortable(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t) or pa.types.is_null(t))


def canonical_order(table: pa.Table) -> pa.Table:
    """``table`` with its rows sorted by every sortable column, left to right (nulls last)."""
    keys = [(name, "ascending", "at_end") for name, col in zip(table.column_names, table.columns) if _sortable(col.type)]
    if not keys or table.num_rows < 2:
        return table
    return table.take(pc.sort_indices(table, sort_keys=keys))


def canonical_digest(table: pa.Table) -> str:
    """``table_digest`` of the rows in canonical order: the same rows in any order agree."""
    return table_digest(canonical_order(table))
