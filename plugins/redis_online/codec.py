"""How one row is stored as one value of a version's hash.

Binary when every feature is a number (the common case): a tag byte ``0x01``, the
features packed little-endian (integers as int64, unsigned 64-bit as uint64, booleans as
0/1, floats and decimals as float64), the event time and the write time as int64
microseconds since the epoch, then a null mask (bit i: feature i is null; then a bit for
"no event time" and one for "the event time is aware"). Otherwise JSON: ``[features...,
event time as ISO text or null, write time in microseconds]`` (starts with ``[``).

Why: decoding is the read's cost. Measured with 100 rows of 10 float64 features per read
(redis-py's own parser, 2 cores): HMGET alone 0.4-0.6 ms, plus ``json.loads`` of each row
2.3-3.2 ms more, plus ``struct.unpack`` 0.1 ms more; the binary row is also 99 bytes
against about 200 of JSON.

Values come back as the SQLite store gives them: booleans as 0/1, NaN as None, decimals
as floats, times as ISO text, durations as text. The format is the version's (kept with
its watermark); an upsert whose columns pack differently is written as JSON, so rows of
both kinds can share a version.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lab.errors import LabError

TAG = 1
_JSON = 0x5B  # "["
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode
_NUMPY = {"q": "<i8", "Q": "<u8", "d": "<f8"}


def check_feature_type(name: str, t: pa.DataType) -> None:
    if not (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)
            or pa.types.is_decimal(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_temporal(t) or pa.types.is_null(t)):
        raise LabError(f"column {name!r} has type {t}, which the Redis online store cannot hold; "
                       "use numbers, strings or times")


def binary_format(schema: pa.Schema, names: Sequence[str]) -> str:
    """The struct letters of the features (``q``, ``Q``, ``d``), or "" when one is not a number."""
    letters = []
    for name in names:
        t = schema.field(name).type
        if pa.types.is_uint64(t):
            letters.append("Q")
        elif pa.types.is_integer(t) or pa.types.is_boolean(t):
            letters.append("q")
        elif pa.types.is_floating(t) or pa.types.is_decimal(t):
            letters.append("d")
        else:
            return ""
    return "".join(letters)


def _mask_bytes(n: int) -> int:
    return (n + 2 + 7) // 8


def encode_batches(rows: pa.Table, entity: str, names: Sequence[str], events, written_us: int, size: int,
                   fmt: str) -> Iterator[dict[str, bytes]]:
    """``{key text: encoded row}`` dicts of at most ``size`` rows; binary in ``fmt`` when it
    is not "", else JSON."""
    for start in range(0, rows.num_rows, size):
        part = rows.slice(start, size)
        keys = [str(k) for k in _cells(part.column(entity))]
        part_events = events.slice(start, size) if events is not None else None
        if fmt:
            values = _binary(part, names, part_events, written_us, fmt)
        else:
            columns = [_cells(part.column(n)) for n in names]
            columns.append(_cells(part_events) if part_events is not None else [None] * part.num_rows)
            columns.append([written_us] * part.num_rows)
            values = [v.encode() for v in map(_encode, zip(*columns))]
        yield dict(zip(keys, values))


def _binary(part: pa.Table, names: Sequence[str], events, written_us: int, fmt: str) -> list[bytes]:
    n, count = len(names), part.num_rows
    m = _mask_bytes(n)
    fields = [("tag", "u1")]
    fields += [(f"f{i}", _NUMPY[letter]) for i, letter in enumerate(fmt)]
    fields += [("event", "<i8"), ("written", "<i8"), ("mask", "u1", (m,))]
    out = np.zeros(count, dtype=np.dtype(fields))  # packed: no padding between fields
    out["tag"] = TAG
    nulls = np.zeros((count, n + 2), dtype=bool)
    for i, (name, letter) in enumerate(zip(names, fmt)):
        column = part.column(name)
        if pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type):
            column = column.cast(pa.int64() if letter == "q" else pa.float64())
        elif letter == "q" and not pa.types.is_int64(column.type):
            column = column.cast(pa.int64())
        elif letter == "d" and not pa.types.is_float64(column.type):
            column = column.cast(pa.float64())
        null = column.is_null()
        if letter == "d":
            null = pc.or_kleene(null, pc.is_nan(column))  # SQLite keeps a NaN as NULL
        nulls[:, i] = null.to_numpy(zero_copy_only=False)
        out[f"f{i}"] = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
    if events is not None:
        nulls[:, n] = events.is_null().to_numpy(zero_copy_only=False)
        nulls[:, n + 1] = events.type.tz is not None
        micros = pc.fill_null(events.cast(pa.timestamp("us", events.type.tz), safe=False).cast(pa.int64()), 0)
        out["event"] = micros.to_numpy(zero_copy_only=False)
    else:
        nulls[:, n] = True
    out["written"] = written_us
    out["mask"] = np.packbits(nulls, axis=1, bitorder="little")[:, :m]
    data = out.tobytes()
    size = out.dtype.itemsize
    return [data[i: i + size] for i in range(0, len(data), size)]


class RowDecoder:
    """Decodes the rows of one version (its feature names and binary format)."""

    def __init__(self, names: Sequence[str], fmt: str):
        self.names = tuple(names)
        self.n = n = len(self.names)
        self.fmt = fmt
        self._unpack = struct.Struct(f"<{fmt}qq{_mask_bytes(n)}s").unpack_from if fmt else None
        self._nulls = (1 << n) - 1  # the mask's feature bits

    def features(self, value: bytes) -> dict:
        if value[0] == _JSON or self._unpack is None:
            return dict(zip(self.names, json.loads(value)))
        cells = self._unpack(value, 1)
        row = dict(zip(self.names, cells))  # zip stops at the features
        if int.from_bytes(cells[-1], "little") & self._nulls:
            mask = cells[-1]
            for i, name in enumerate(self.names):
                if mask[i >> 3] >> (i & 7) & 1:
                    row[name] = None
        return row

    def times(self, value: bytes) -> tuple[dt.datetime | None, dt.datetime]:
        """``(event time or None, write time)`` of a stored row."""
        n = self.n
        if value[0] == _JSON or self._unpack is None:
            cells = json.loads(value)
            event, written = cells[n], cells[n + 1]
            return (None if event is None else dt.datetime.fromisoformat(event)), _EPOCH + dt.timedelta(
                microseconds=written)
        cells = self._unpack(value, 1)
        event, written, mask = cells[n], cells[n + 1], cells[n + 2]
        written_at = _EPOCH + dt.timedelta(microseconds=written)
        if mask[n >> 3] >> (n & 7) & 1:
            return None, written_at
        aware = mask[(n + 1) >> 3] >> ((n + 1) & 7) & 1
        return (_EPOCH if aware else _NAIVE_EPOCH) + dt.timedelta(microseconds=event), written_at


def _cells(column) -> list:
    """A column as the JSON-ready Python values the SQLite store would give back."""
    t = column.type
    if pa.types.is_boolean(t):
        return column.cast(pa.int8()).to_pylist()
    if pa.types.is_decimal(t):
        return column.cast(pa.float64()).to_pylist()
    if pa.types.is_floating(t):  # SQLite keeps a NaN as NULL; so do we
        return pc.if_else(pc.is_nan(column), pa.scalar(None, t), column).to_pylist()
    if pa.types.is_temporal(t):
        if pa.types.is_duration(t):
            return [None if v is None else str(v) for v in column.to_pylist()]
        return [None if v is None else v.isoformat() for v in column.to_pylist()]
    return column.to_pylist()
