"""``SparkOfflineStore``: sources as Parquet in a warehouse folder, retrieval in Spark.

Storage (``layout``): one Parquet file per source version and a pointer file replaced by
a rename, so every write is atomic; hidden columns give each row its written position and
each time column its epoch microseconds. Reads of whole tables and of a day window
(``read_source``, ``scan_source``) go straight to the Parquet with pyarrow: they end in
this process's memory anyway, and need no JVM. Point-in-time retrieval
(``get_historical_features``), ``latest_rows`` and batch scoring (``scoring``) run in
Spark (``pit``), on whatever master ``[tool.lab.spark]`` names.

The answers are the DuckDB store's, value for value (the contract suites and
``tests/test_spark_offline.py`` hold both to the brute-force reference and to each
other); float sums may differ in the last bits, as they add the same numbers in another
order.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lab.errors import LabError
from lab.features.digest import canonical_digest
from lab.features.stores import EVENT_TIME, OfflineStore, check_entity_rows
from lab.features.views import FeatureView
from plugins.spark_offline import pit
from plugins.spark_offline.layout import HIDDEN, ROW, Layout, check_columns, check_name, epoch_us, us_column
from plugins.spark_offline.session import spark_session
from plugins.spark_offline.settings import SparkSettings

_DAY_US = 86_400_000_000


def _as_arrow(data, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_arrow"):  # a polars DataFrame
        return data.to_arrow()
    raise LabError(f"{what} must be a pyarrow.Table (or a polars DataFrame), got {type(data).__name__}")


class SparkOfflineStore(OfflineStore):
    """The offline store of a lab with ``[tool.lab.spark]``: Parquet under ``warehouse``,
    point-in-time joins in the process's SparkSession (started on first need)."""

    def __init__(self, warehouse: str | Path, settings: SparkSettings | None = None):
        self.settings = settings or SparkSettings()
        self.layout = Layout(Path(warehouse))

    def __repr__(self) -> str:
        return f"SparkOfflineStore({str(self.layout.root)!r}, master={self.settings.master!r})"

    @property
    def spark(self):
        """The process's SparkSession (``session.spark_session``)."""
        return spark_session(self.settings)

    def frame(self, name: str):
        """Source ``name`` as a Spark DataFrame (hidden columns included)."""
        path = self.layout.file(name).parent
        return self.spark.read.parquet(path.resolve().as_uri())

    # -- source tables -------------------------------------------------------------

    def write_source(self, name: str, data: pa.Table) -> str:
        """Replace source ``name`` with ``data`` atomically; return its digest (the
        ``canonical_digest`` of the rows as stored: row order and chunking ignored)."""
        check_name(name)
        data = _as_arrow(data, "source data")
        check_columns(name, data)
        return self.layout.write(name, data, canonical_digest)["digest"]

    def source_digest(self, name: str) -> str:
        return self.layout.require(name)["digest"]

    def sources(self) -> dict[str, int]:
        """Every source with its row count."""
        return {n: self.layout.require(n)["rows"] for n in self.layout.names()}

    def _visible(self, name: str, pointer: dict, columns: Sequence[str] | None) -> list[str]:
        have = [c for c in self.layout.schema(name, pointer).names if not c.startswith(HIDDEN)]
        if columns is None:
            return have
        missing = [c for c in columns if c not in have]
        if missing:
            raise LabError(f"source {name!r} has no column(s) {', '.join(missing)}; it has {', '.join(have)}")
        return list(columns)

    def read_source(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of ``name`` in the order they were written (or only ``columns``)."""
        pointer = self.layout.require(name)
        wanted = self._visible(name, pointer, columns)
        return pq.read_table(self.layout.file(name, pointer), columns=wanted)

    def scan_source(self, name: str, *, time_column: str, start: dt.date, end: dt.date,
                    columns: Sequence[str] | None = None, batch_rows: int = 50_000) -> Iterator[pa.Table]:
        """The rows dated ``start`` .. ``end`` (wall clock) in time order, in tables of at
        most ``batch_rows`` rows. The day filter is pushed into the Parquet read (row
        groups outside the window are skipped); memory holds the window, not the table.
        A column zoned other than UTC goes the contract's default way (wall clock there)."""
        if batch_rows < 1:
            raise LabError(f"batch_rows must be at least 1, got {batch_rows!r}")
        pointer = self.layout.require(name)
        wanted = self._visible(name, pointer, columns)
        self._visible(name, pointer, [time_column])
        kind = self.layout.schema(name, pointer).field(time_column).type
        if getattr(kind, "tz", None) not in (None, "UTC", "+00:00", "Etc/UTC"):
            yield from super().scan_source(name, time_column=time_column, start=start, end=end, columns=columns,
                                           batch_rows=batch_rows)
            return
        if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
            raise LabError(f"source {name!r}: {time_column!r} is {kind}, not a timestamp")
        lo = (start - dt.date(1970, 1, 1)).days * _DAY_US
        hi = ((end - dt.date(1970, 1, 1)).days + 1) * _DAY_US
        e = us_column(time_column)
        import pyarrow.dataset as ds

        table = ds.dataset(self.layout.file(name, pointer), format="parquet").to_table(
            columns=[*dict.fromkeys(wanted), e, ROW], filter=(ds.field(e) >= lo) & (ds.field(e) < hi))
        table = table.sort_by([(e, "ascending"), (ROW, "ascending")]).select(wanted)
        for offset in range(0, table.num_rows, batch_rows):
            yield table.slice(offset, batch_rows)

    # -- point-in-time retrieval ---------------------------------------------------

    def _schemas(self, views: Sequence[FeatureView]) -> dict[str, pa.Schema]:
        out = {}
        for view in views:
            schema = self.layout.schema(view.source)
            pit.check_view(view, schema)
            out[view.name] = schema
        return out

    def get_historical_features(self, entity_rows: pa.Table, views: Sequence[FeatureView],
                                timestamp_column: str) -> pa.Table:
        """Every view's features as of each entity row's time (``pit``), in Spark; the
        result keeps the entity rows' order and columns."""
        entity_rows = _as_arrow(entity_rows, "entity_rows")
        views = list(views)
        check_entity_rows(entity_rows, views, timestamp_column)
        schemas = self._schemas(views)
        pit.probe_keys(entity_rows, views, schemas)
        keys = list(dict.fromkeys(v.entity for v in views))
        probes = pa.table([pa.array(np.arange(entity_rows.num_rows, dtype=np.int64)),
                           *[_spark_key(entity_rows.column(k)) for k in keys],
                           epoch_us(entity_rows.column(timestamp_column))],
                          names=[pit.PROBE_ROW, *keys, pit.PROBE_T])
        out = entity_rows
        if not views:
            return out
        frame = self.spark.createDataFrame(probes) if entity_rows.num_rows else None
        for view in views:
            schema = schemas[view.name]
            types = pit.output_types(view, schema)
            if frame is None:
                result = pa.table({n: pa.array([], t) for n, t in types.items()})
            else:
                key_type = pit.key_spark_type(schema.field(view.entity).type)
                answer = pit.view_frame(frame, self.frame(view.source), view, schema, key_type)
                result = answer.toArrow()
                result = result.take(pc.sort_indices(result.column(ROW)))
                if result.num_rows != entity_rows.num_rows:  # pragma: no cover - a bug, not input
                    raise LabError(f"feature view {view.name!r}: got {result.num_rows} rows for "
                                   f"{entity_rows.num_rows} entity rows")
            for name in view.feature_names:
                out = out.append_column(name, _cast(result.column(name), types[name]))
        return out

    def latest_rows(self, view: FeatureView, as_of: dt.datetime) -> pa.Table | None:
        """Every entity's latest-value features and event time at ``as_of``: one Spark
        aggregation per entity (the newest visible row by event time, then the row written
        last), instead of the generic path's read and join. None for windowed views and
        date-typed event times (the generic path answers those)."""
        if view.aggregations:
            return None
        from pyspark.sql import functions as F

        schema = self._schemas([view])[view.name]
        kind = schema.field(view.timestamp).type
        if not pa.types.is_timestamp(kind):
            return None
        at = int(epoch_us(pa.array([as_of], pa.timestamp("us", "UTC") if as_of.tzinfo else pa.timestamp("us")))[0]
                 .as_py())
        delay, ttl = pit.us(view.label_delay), pit.us(view.ttl)
        e = pit._c(us_column(view.timestamp))
        known = e + F.lit(delay)
        visible = e.isNotNull() & (known <= F.lit(at)) & (F.lit(at) - known <= F.lit(ttl))
        newest = F.max(F.when(visible, F.struct(e.alias("e"), pit._c(ROW).alias("r"),
                                                *[pit._c(f).alias(f"f{i}") for i, f in enumerate(view.features)])))
        rows = (self.frame(view.source).where(pit._c(view.entity).isNotNull()).groupBy(pit._c(view.entity))
                .agg(newest.alias("v"))
                .select(pit._c(view.entity), *[F.col(f"v.f{i}").alias(f) for i, f in enumerate(view.features)],
                        F.col("v.e").alias(EVENT_TIME))).toArrow()
        rows = rows.take(pc.sort_indices(rows.column(view.entity)))
        zone = "UTC" if kind.tz is not None else None
        event = pa.array(rows.column(EVENT_TIME).combine_chunks().cast(pa.int64())).view(pa.timestamp("us", zone))
        types = pit.output_types(view, schema)
        return pa.table([_cast(rows.column(view.entity), schema.field(view.entity).type),
                         *[_cast(rows.column(f), types[f]) for f in view.features], event],
                        names=[view.entity, *view.features, EVENT_TIME])


def _spark_key(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """An entity key column Spark can take from Arrow (unsigned integers widened)."""
    if pa.types.is_unsigned_integer(column.type):
        return column.cast(pa.int64()) if column.type.bit_width < 64 else column.cast(pa.decimal128(20, 0))
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _cast(column, kind: pa.DataType):
    try:
        return column.cast(kind) if column.type != kind else column
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # pragma: no cover - keep Spark's type
        return column


