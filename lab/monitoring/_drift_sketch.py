"""What drift compares, per column: a window's values read from a frame, or a reference
kept as a sketch (``ReferenceSketch``) so a repeated check never reads the reference again.

A numeric column is its finite values (sorted, for the exact comparison of two frames)
or a quantile ``Grid`` of them, with the moments; a categorical column is its value
counts (categories as text). Nulls, and NaN or infinite numbers, are counted apart
(``nulls``): the null share is compared on its own, never mixed into the distribution.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import polars as pl

from lab.atomic import atomic_write_text
from lab.errors import LabError
from lab.monitoring._drift_stats import Grid

FORMAT = "lab.drift.reference_sketch"
VERSION = 1
NUMERIC, CATEGORICAL = "numeric", "categorical"
_THREADED_ROWS = 50_000  # a frame this long: its columns are read on every core, one sort per core


@dataclass(frozen=True)
class NumericColumn:
    """A numeric column of ``rows`` rows: ``nulls`` of them null, NaN or infinite; the
    others sorted in ``values`` (a frame's window) or summarized by ``grid`` (a sketch)."""

    rows: int
    nulls: int
    mean: float | None
    std: float | None  # population standard deviation (ddof 0), as Evidently norms by
    values: np.ndarray | None = None
    grid: Grid | None = None
    kind = NUMERIC

    @property
    def n(self) -> int:
        return self.rows - self.nulls

    def as_grid(self, bins: int) -> Grid:
        return self.grid if self.grid is not None else Grid.of_sorted(self.values, bins)


@dataclass(frozen=True)
class CategoricalColumn:
    """A categorical column of ``rows`` rows: ``nulls`` null, the rest counted by value."""

    rows: int
    nulls: int
    counts: dict[str, int]
    kind = CATEGORICAL

    @property
    def n(self) -> int:
        return self.rows - self.nulls


def numeric_column(series: pl.Series, where: str, *, moments: bool = True, parallel: bool = True) -> NumericColumn:
    """``series`` as a ``NumericColumn`` with its finite values sorted (and their mean and
    standard deviation, unless ``moments`` is false); a column that is not numeric (or
    boolean) is a ``LabError`` saying to declare it categorical. ``parallel``: polars may
    sort on every core (false when columns are already read one per core: a
    single-threaded sort wastes less)."""
    dtype = series.dtype
    if not (dtype.is_numeric() or dtype == pl.Boolean):
        raise LabError(f"{where} column {series.name!r} is {dtype}, not numeric: pass it in categorical=[...] "
                       f"(or cast it to a number) to compare it")
    values = series.cast(pl.Float64).drop_nulls()
    if dtype.is_float() and not values.is_finite().all():
        values = values.filter(values.is_finite())
    values = values.sort(multithreaded=parallel and values.len() > _THREADED_ROWS).to_numpy()
    n = values.size
    return NumericColumn(rows=series.len(), nulls=series.len() - n,
                         mean=float(values.mean()) if n and moments else None,
                         std=float(values.std()) if n and moments else None,
                         values=values)


def categorical_column(series: pl.Series) -> CategoricalColumn:
    """``series``'s value counts, each value as text (``true``/``false`` for booleans)."""
    text = series.cast(pl.Utf8)
    counts = text.drop_nulls().value_counts()
    return CategoricalColumn(rows=series.len(), nulls=text.null_count(),
                             counts=dict(zip(counts[text.name].to_list(), counts["count"].to_list())))


def read_columns(frame: pl.DataFrame, columns: Sequence[str], categorical: Iterable[str], where: str,
                 convert: Callable[[NumericColumn], Any] | None = None) -> dict[str, Any]:
    """Each of ``columns`` of ``frame`` as a numeric (passed through ``convert`` when
    given) or, when named in ``categorical``, categorical column; a long frame's columns
    on a thread pool, one per core."""
    categorical = set(categorical)
    parallel = len(columns) > 1 and frame.height >= _THREADED_ROWS and (os.cpu_count() or 1) > 1

    def read(column: str):
        series = frame.get_column(column)
        if column in categorical:
            return categorical_column(series)
        col = numeric_column(series, where, parallel=not parallel)
        return convert(col) if convert else col

    return dict(zip(columns, map_columns(read, columns, parallel)))


def map_columns(fn: Callable[[str], Any], columns: Sequence[str], parallel: bool) -> list:
    """``[fn(c) for c in columns]``, on a pool of one thread per core when ``parallel``
    (sorts and array passes release the GIL)."""
    if not parallel:
        return [fn(c) for c in columns]
    with ThreadPoolExecutor(min(len(columns), os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, columns))


class ReferenceSketch:
    """A reference window kept small: per numeric column a quantile grid of ``bins``
    intervals with exact counts at each grid value, and the moments; per categorical
    column its value counts; per column its null count.

    Built once (``from_frame``) and saved as JSON (``save``, atomic); every later check
    compares a current window against it (``lab.monitoring.drift.compare``) without
    reading the reference again. Numeric comparisons against a sketch interpolate the
    CDF between grid values; the report carries the bound of that error per column.
    ``meta`` is free-form JSON the caller keeps with it (what window it describes).
    """

    def __init__(self, columns: dict[str, NumericColumn | CategoricalColumn], *, bins: int, rows: int,
                 meta: dict | None = None):
        self.columns = dict(columns)
        self.bins = int(bins)
        self.rows = int(rows)
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        kinds = ", ".join(f"{c}: {col.kind}" for c, col in self.columns.items())
        return f"ReferenceSketch({self.rows} rows, bins={self.bins}; {kinds})"

    @property
    def kinds(self) -> dict[str, str]:
        """Each column's kind, ``numeric`` or ``categorical``."""
        return {c: col.kind for c, col in self.columns.items()}

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, columns: Sequence[str] | None = None, categorical: Iterable[str] = (),
                   bins: int = 1000, meta: dict | None = None) -> "ReferenceSketch":
        """The sketch of ``frame``'s ``columns`` (default: all); ``categorical`` names the
        columns compared by category. ``bins``: numeric grid intervals (10 or more)."""
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 10:
            raise LabError(f"a reference sketch needs bins >= 10 (a whole number), got {bins!r}")
        frame = check_frame(frame, "reference")
        columns = check_columns(frame.columns, columns, categorical, "reference frame")
        def sketched(col: NumericColumn) -> NumericColumn:
            return NumericColumn(rows=col.rows, nulls=col.nulls, mean=col.mean, std=col.std,
                                 grid=Grid.of_sorted(col.values, bins))

        out = read_columns(frame, columns, categorical, "reference", convert=sketched)
        return cls(out, bins=bins, rows=frame.height, meta=meta)

    # -- JSON --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        columns: dict[str, Any] = {}
        for name, col in self.columns.items():
            if isinstance(col, NumericColumn):
                g = col.grid
                columns[name] = {"kind": NUMERIC, "rows": col.rows, "nulls": col.nulls, "mean": col.mean,
                                 "std": col.std, "values": g.values.tolist(), "le": g.le.tolist(),
                                 "lt": g.lt.tolist()}
            else:
                columns[name] = {"kind": CATEGORICAL, "rows": col.rows, "nulls": col.nulls,
                                 "counts": dict(col.counts)}
        return {"format": FORMAT, "version": VERSION, "rows": self.rows, "bins": self.bins, "meta": self.meta,
                "columns": columns}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the sketch as JSON at ``path`` (atomically); returns the path."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceSketch":
        """The sketch saved at ``path``; a missing or foreign file is a ``LabError``."""
        path = Path(path)
        fix = "rebuild it: ReferenceSketch.from_frame(reference).save(path)"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no reference sketch at {path}; {fix}") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"{path} is not a readable reference sketch ({exc}); {fix}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LabError(f"{path} is not a drift reference sketch; {fix}")
        if data.get("version") != VERSION:
            raise LabError(f"{path} is a reference sketch of version {data.get('version')!r}; this lab reads "
                           f"version {VERSION}: {fix}")
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"{path} is a damaged reference sketch ({type(exc).__name__}: {exc}); {fix}") from None

    @classmethod
    def _from_dict(cls, data: dict) -> "ReferenceSketch":
        columns: dict[str, NumericColumn | CategoricalColumn] = {}
        for name, item in data["columns"].items():
            rows, nulls = int(item["rows"]), int(item["nulls"])
            if item["kind"] == NUMERIC:
                values = np.asarray(item["values"], dtype=np.float64)
                grid = Grid(rows - nulls, values, np.asarray(item["le"], dtype=np.int64),
                            np.asarray(item["lt"], dtype=np.int64))
                if not (values.size == grid.le.size == grid.lt.size) or (values.size and grid.le[-1] != grid.n):
                    raise ValueError(f"column {name!r}: the grid's counts do not add up")
                columns[name] = NumericColumn(rows=rows, nulls=nulls, mean=item["mean"], std=item["std"], grid=grid)
            elif item["kind"] == CATEGORICAL:
                columns[name] = CategoricalColumn(rows=rows, nulls=nulls,
                                                  counts={str(k): int(v) for k, v in item["counts"].items()})
            else:
                raise ValueError(f"column {name!r} has kind {item['kind']!r}")
        return cls(columns, bins=int(data["bins"]), rows=int(data["rows"]), meta=data.get("meta") or {})


def check_frame(frame: Any, what: str) -> pl.DataFrame:
    """``frame`` as a polars frame with rows, or a ``LabError`` saying what to pass."""
    if not isinstance(frame, pl.DataFrame):
        if type(frame).__module__.split(".")[0] == "pandas":
            frame = pl.from_pandas(frame)
        else:
            raise LabError(f"the {what} must be a polars DataFrame or a ReferenceSketch, got {type(frame).__name__}")
    if frame.height == 0:
        raise LabError(f"the {what} frame has no rows: widen its window (or check its filter) so there is "
                       f"something to compare")
    return frame


def check_columns(available: Sequence[str], columns: Sequence[str] | None, categorical: Iterable[str],
                  where: str) -> list[str]:
    """``columns`` (default: ``available``) checked against ``available``, and
    ``categorical`` against ``columns``."""
    if isinstance(columns, str):
        columns = [columns]
    columns = list(available) if columns is None else list(dict.fromkeys(columns))
    if not columns:
        raise LabError("no columns to compare: name some in columns=[...]")
    missing = [c for c in columns if c not in available]
    if missing:
        raise LabError(f"unknown column(s) {', '.join(map(repr, missing))} in the {where}; it has "
                       f"{', '.join(available) or 'none'}: fix the names in columns=[...]")
    stray = [c for c in ([categorical] if isinstance(categorical, str) else categorical) if c not in columns]
    if stray:
        raise LabError(f"categorical column(s) {', '.join(map(repr, stray))} are not among the columns compared "
                       f"({', '.join(columns)}): fix the names, or add them to columns=[...]")
    return columns


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
