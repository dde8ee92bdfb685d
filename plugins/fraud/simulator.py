"""Card-transaction fraud simulator: the flagship demo data (specs/fraud-simulator.md).

Two modes share one world model (customers, terminals, who may use which) and one
fraud labeller; they differ only in where the random numbers come from:

* ``exact=True`` replays the legacy global random streams in the published order, so
  the default parameters give the published dataset row for row, in a few seconds;
* ``exact=False`` (default) draws the same distributions from a numpy ``Generator``
  seeded by ``seed``, vectorized: the full default size in about a second.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import numbers
import random
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lab.atomic import atomic_path
from lab.errors import ConfigError, LabError
from lab.pipeline.progress import report

COLUMNS = [
    "TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
    "TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO",
]
SCHEMA = {
    "TRANSACTION_ID": pl.Int64, "TX_DATETIME": pl.Datetime("us"), "CUSTOMER_ID": pl.Int64,
    "TERMINAL_ID": pl.Int64, "TX_AMOUNT": pl.Float64, "TX_TIME_SECONDS": pl.Int64,
    "TX_TIME_DAYS": pl.Int64, "TX_FRAUD": pl.Int64, "TX_FRAUD_SCENARIO": pl.Int64,
}

DAY_SECONDS = 86_400
AREA = 100.0                       # customers and terminals live on a 100 x 100 square
FRAUD_AMOUNT = 220.0               # scenario 1: any larger amount is fraud
TERMINALS_PER_DAY, TERMINAL_DAYS = 2, 28   # scenario 2
CUSTOMERS_PER_DAY, CUSTOMER_DAYS = 3, 14   # scenario 3

__all__ = ["COLUMNS", "SCHEMA", "content_digest", "profiles", "simulate", "summary",
           "terminals_within", "write_parquet"]


# -- public API ------------------------------------------------------------------------

def simulate(*, n_customers: int = 5000, n_terminals: int = 10000, nb_days: int = 183,
             start_date: str | dt.date = "2018-04-01", radius: float = 5.0,
             exact: bool = False, seed: int = 0) -> pl.DataFrame:
    """Simulate card transactions with fraud labels; returns a frame with ``COLUMNS``.

    Rows are sorted by ``TX_DATETIME`` and ``TRANSACTION_ID`` is the 0-based row number.
    ``exact=True`` ignores ``seed`` and reproduces the published dataset (1,754,155 rows
    with the defaults); otherwise ``seed`` fixes the draws. Raises ``ConfigError``
    naming the argument when one is out of range.
    """
    start = _check_args(n_customers, n_terminals, nb_days, start_date, radius, exact, seed)
    world = _World(n_customers, n_terminals, radius, exact, seed)
    if exact:
        tx = _exact_transactions(world, nb_days)
        # The published generator sorts a datetime64 column with pandas' default
        # (unstable) quicksort. numpy's datetime argsort is still the classic introsort,
        # whereas int64 argsort may dispatch to a SIMD sort with another tie order.
        order = np.argsort(tx["seconds"].view("datetime64[s]"), kind="quicksort")
        picks: _LegacyPicks | _GeneratorPicks = _LegacyPicks()
    else:
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
        tx = _fast_transactions(world, nb_days, rng)
        order = np.argsort(tx["seconds"], kind="stable")  # ties keep customer order
        picks = _GeneratorPicks(rng)
    tx = {name: values[order] for name, values in tx.items()}
    _label_fraud(tx, n_customers, n_terminals, picks)
    frame = _frame(tx, start)
    report(frame.height, frame.height, "rows", "transactions simulated")  # a no-op outside `lab run`
    return frame


def profiles(*, n_customers: int = 5000, n_terminals: int = 10000, radius: float = 5.0,
             exact: bool = False, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The customer and terminal profiles behind ``simulate`` with the same arguments.

    Returns ``(customers, terminals)``: customers with CUSTOMER_ID, X, Y, MEAN_AMOUNT,
    STD_AMOUNT, MEAN_NB_TX_PER_DAY, NB_TERMINALS; terminals with TERMINAL_ID, X, Y.
    """
    _check_args(n_customers, n_terminals, 1, "2000-01-01", radius, exact, seed)
    w = _World(n_customers, n_terminals, radius, exact, seed)
    customers = pl.DataFrame({
        "CUSTOMER_ID": np.arange(n_customers, dtype=np.int64),
        "X": w.customer_xy[:, 0], "Y": w.customer_xy[:, 1],
        "MEAN_AMOUNT": w.mean_amount, "STD_AMOUNT": w.mean_amount / 2,
        "MEAN_NB_TX_PER_DAY": w.mean_nb_tx, "NB_TERMINALS": np.diff(w.indptr),
    })
    terminals = pl.DataFrame({"TERMINAL_ID": np.arange(n_terminals, dtype=np.int64),
                              "X": w.terminal_xy[:, 0], "Y": w.terminal_xy[:, 1]})
    return customers, terminals


def terminals_within(customer_xy: np.ndarray, terminal_xy: np.ndarray,
                     radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Terminals at Euclidean distance strictly below ``radius`` of each customer.

    Returns CSR arrays ``(indptr, indices)``: customer ``c`` may use terminals
    ``indices[indptr[c]:indptr[c + 1]]``, in ascending id order. The distance is
    computed as the published generator does (sqrt of the summed squares), so the
    boundary cases agree; a grid of cells at least ``radius`` wide keeps it linear.
    """
    cxy, txy = np.asarray(customer_xy, float), np.asarray(terminal_xy, float)
    n_c = len(cxy)
    if n_c == 0 or len(txy) == 0:
        return np.zeros(n_c + 1, np.int64), np.zeros(0, np.int64)
    lo = np.minimum(cxy.min(0), txy.min(0))
    span = float(np.max(np.maximum(cxy.max(0), txy.max(0)) - lo))
    # The margin keeps a rounding in floor() from hiding a neighbour two cells away.
    cell = max(float(radius), span / 1024, 1e-12) * (1 + 1e-9)
    c_cell = np.floor((cxy - lo) / cell).astype(np.int64)
    t_cell = np.floor((txy - lo) / cell).astype(np.int64)
    gx, gy = (np.maximum(c_cell.max(0), t_cell.max(0)) + 1).tolist()
    t_key = t_cell[:, 0] * gy + t_cell[:, 1]
    t_by_cell = np.argsort(t_key, kind="stable")
    cell_start = np.concatenate([[0], np.cumsum(np.bincount(t_key, minlength=gx * gy))])
    # For every customer and each of the 9 surrounding cells: that cell's terminal range.
    nx = (c_cell[:, 0:1] + np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1])).ravel()
    ny = (c_cell[:, 1:2] + np.array([-1, 0, 1, -1, 0, 1, -1, 0, 1])).ravel()
    owner = np.repeat(np.arange(n_c), 9)
    inside = (nx >= 0) & (nx < gx) & (ny >= 0) & (ny < gy)
    key = (nx * gy + ny)[inside]
    owner, first = owner[inside], cell_start[key]
    length = cell_start[key + 1] - first
    owner = np.repeat(owner, length)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(length) - length, length)
    cand = t_by_cell[np.repeat(first, length) + offset]
    dist = np.sqrt(np.square(cxy[owner, 0] - txy[cand, 0]) + np.square(cxy[owner, 1] - txy[cand, 1]))
    near = dist < radius
    owner, cand = owner[near], cand[near]
    ordered = np.lexsort((cand, owner))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n_c))]).astype(np.int64)
    return indptr, cand[ordered].astype(np.int64)


def content_digest(df: pl.DataFrame) -> str:
    """SHA-256 (hex) of a frame's content: column names, dtypes and values in row order.

    It hashes the values themselves, so it does not change with the file format or the
    Parquet writer's version; equal frames give equal digests.
    """
    h = hashlib.sha256(b"lab-frame-digest-v1\n")
    for series in df.get_columns():
        h.update(f"{series.name}\x1f{series.dtype}\x1f{len(series)}\x1f{series.null_count()}\n".encode())
        physical = series.to_physical()
        if physical.dtype.is_integer() or physical.dtype.is_float():
            if series.null_count():
                h.update(np.packbits(series.is_null().to_numpy()).tobytes())
                physical = physical.fill_null(0)
            values = physical.to_numpy()
            h.update(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
            continue
        # Anything else (strings, booleans, nested): a length-prefixed text of each value.
        for value in series.to_list():
            text = "\x00" if value is None else str(value)
            h.update(len(text).to_bytes(8, "little") + text.encode())
    return h.hexdigest()


def write_parquet(df: pl.DataFrame, path: str | Path) -> str:
    """Write ``df`` to ``path`` as Parquet, atomically; returns ``content_digest(df)``.

    A failed write leaves any previous file at ``path`` untouched and no temporary file.
    """
    if not isinstance(df, pl.DataFrame):
        raise ConfigError(f"write_parquet needs a polars DataFrame, got {type(df).__name__}; "
                          "pass the frame simulate() returns")
    digest = content_digest(df)
    try:
        with atomic_path(path) as tmp:
            df.write_parquet(tmp)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LabError(f"could not write Parquet to {path}: {exc}; check the folder is "
                       "writable and the columns are plain types") from exc
    return digest


def summary(df: pl.DataFrame) -> dict[str, Any]:
    """Headline figures of a simulated frame: the ones the spec publishes.

    Returns n_transactions, n_fraud, fraud_rate (a fraction, not a percentage),
    scenario_counts {1: .., 2: .., 3: ..} and first_row (a dict, or None when empty).
    """
    n = df.height
    n_fraud = int(df["TX_FRAUD"].cast(pl.Int64).sum()) if n else 0
    counts = df["TX_FRAUD_SCENARIO"].value_counts()
    by_label = dict(zip(counts["TX_FRAUD_SCENARIO"].to_list(), counts["count"].to_list()))
    return {
        "n_transactions": n, "n_fraud": n_fraud, "fraud_rate": n_fraud / n if n else 0.0,
        "scenario_counts": {s: int(by_label.get(s, 0)) for s in (1, 2, 3)},
        "first_row": df.row(0, named=True) if n else None,
    }


# -- arguments ---------------------------------------------------------------------------

def _check_args(n_customers, n_terminals, nb_days, start_date, radius, exact, seed) -> dt.date:
    for name, value, least in (("n_customers", n_customers, 1), ("n_terminals", n_terminals, 1),
                               ("nb_days", nb_days, 1), ("seed", seed, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
            kind = "a positive integer" if least else "a non-negative integer"
            raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if (not isinstance(radius, numbers.Real) or isinstance(radius, bool)
            or not math.isfinite(radius) or radius <= 0):
        raise ConfigError(f"radius must be a positive finite number, got {radius!r}")
    if not isinstance(exact, bool):
        raise ConfigError(f"exact must be true or false, got {exact!r}")
    bad_date = ConfigError(f"start_date must be an ISO date such as '2018-04-01', got {start_date!r}")
    if isinstance(start_date, dt.datetime) or not isinstance(start_date, (str, dt.date)):
        raise bad_date
    if isinstance(start_date, dt.date):
        return start_date
    try:
        return dt.date.fromisoformat(start_date)
    except ValueError:
        raise bad_date from None


# -- the world: customers, terminals and who may use which ----------------------------------

class _World:
    """Profiles drawn in the published order (exact) or from ``seed`` (fast)."""

    def __init__(self, n_customers: int, n_terminals: int, radius: float, exact: bool, seed: int):
        if exact:  # legacy seeds 0 and 1; uniform(a, b) is a + (b - a) * next double
            u = np.random.RandomState(0).random_sample((n_customers, 4))
            v = np.random.RandomState(1).random_sample((n_terminals, 2))
        else:
            rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
            u, v = rng.random((n_customers, 4)), rng.random((n_terminals, 2))
        self.customer_xy = AREA * u[:, :2]
        self.mean_amount = 5 + 95 * u[:, 2]
        self.mean_nb_tx = 4 * u[:, 3]
        self.terminal_xy = AREA * v
        self.indptr, self.indices = terminals_within(self.customer_xy, self.terminal_xy, radius)


def _exact_transactions(w: _World, nb_days: int) -> dict[str, np.ndarray]:
    """Per customer, reseed both legacy streams with its id and replay its draws."""
    seconds: list[int] = []
    amounts: list[float] = []
    terminals: list[int] = []
    made = np.zeros(len(w.mean_amount), dtype=np.int64)  # transactions per customer
    add_second, add_amount = seconds.append, amounts.append
    for c in range(len(w.mean_amount)):
        lo, hi = int(w.indptr[c]), int(w.indptr[c + 1])
        if lo == hi:  # no terminal in reach: it makes no transactions, and the
            continue  # per-customer reseeding means skipping its draws changes nothing
        rs = np.random.RandomState(c)
        # normal(loc, scale) is loc + scale * gauss bit for bit (a test checks it);
        # the scalar standard_normal call is 2.5x cheaper.
        poisson, gauss, uniform = rs.poisson, rs.standard_normal, rs.uniform
        lam, mean = float(w.mean_nb_tx[c]), float(w.mean_amount[c])
        std, ceiling = mean / 2, mean * 2
        start = len(seconds)
        for day in range(nb_days):
            base = day * DAY_SECONDS
            for _ in range(poisson(lam)):
                t = int(43200.0 + 20000.0 * gauss())
                if 0 < t < DAY_SECONDS:  # an amount is drawn only for a kept time
                    amount = mean + std * gauss()
                    if amount < 0:
                        amount = uniform(0, ceiling)
                    add_second(base + t)
                    add_amount(amount)
        made[c] = len(seconds) - start
        report(c + 1, len(made), "customers", "replaying each customer's draws")  # rate-limited
        choose = random.Random(c).choice  # same stream as random.seed(c)
        reach = range(lo, hi)
        terminals += [choose(reach) for _ in range(made[c])]
    return {
        "seconds": np.array(seconds, dtype=np.int64),
        "customer": np.repeat(np.arange(len(made), dtype=np.int64), made),
        "terminal": w.indices[np.array(terminals, dtype=np.int64)],
        "amount": np.round(np.array(amounts, dtype=np.float64), 2),
    }


def _fast_transactions(w: _World, nb_days: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The same distributions as the exact replay, drawn in whole arrays."""
    n_c = len(w.mean_amount)
    counts = rng.poisson(w.mean_nb_tx[:, None], size=(n_c, nb_days)).ravel()
    customer = np.repeat(np.repeat(np.arange(n_c), nb_days), counts)
    day = np.repeat(np.tile(np.arange(nb_days, dtype=np.int64), n_c), counts)
    t = rng.normal(43200.0, 20000.0, size=len(customer)).astype(np.int64)  # truncates like int()
    degree = np.diff(w.indptr)
    keep = (t > 0) & (t < DAY_SECONDS) & (degree[customer] > 0)
    customer, day, t = customer[keep], day[keep], t[keep]
    mean = w.mean_amount[customer]
    amount = rng.normal(mean, mean / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    terminal = w.indices[w.indptr[customer] + rng.integers(0, degree[customer])]
    return {"seconds": day * DAY_SECONDS + t, "customer": customer.astype(np.int64),
            "terminal": terminal, "amount": np.round(amount, 2)}


# -- fraud -----------------------------------------------------------------------------------

class _LegacyPicks:
    """pandas ``sample(n=k, random_state=d)`` and ``random.seed(d); random.sample``."""

    def ids(self, day: int, population: int, k: int) -> np.ndarray:
        # pandas draws RandomState(d).choice(len, k, replace=False): a permutation's head.
        return np.random.RandomState(day).choice(population, min(k, population), replace=False)

    def rows(self, day: int, rows: np.ndarray, k: int) -> np.ndarray:
        return np.array(random.Random(day).sample(rows.tolist(), k), dtype=np.int64)


class _GeneratorPicks:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def ids(self, day: int, population: int, k: int) -> np.ndarray:
        return self.rng.choice(population, min(k, population), replace=False)

    def rows(self, day: int, rows: np.ndarray, k: int) -> np.ndarray:
        return self.rng.choice(rows, k, replace=False)


def _label_fraud(tx: dict[str, np.ndarray], n_customers: int, n_terminals: int, picks) -> None:
    """Apply scenarios 1, 2, 3 in order (later labels win); adds day, fraud, scenario."""
    n = len(tx["seconds"])
    day = tx["seconds"] // DAY_SECONDS
    amount = tx["amount"]
    scenario = np.zeros(n, dtype=np.int64)
    scenario[amount > FRAUD_AMOUNT] = 1
    n_days = int(day.max()) + 1 if n else 0
    days = range(n_days - 1)  # compromises start on days 0 .. last day - 1
    # Scenario 2: each day d, 2 terminals leak all their rows on days d .. d+27.
    windows = [(int(t), d) for d in days for t in picks.ids(d, n_terminals, TERMINALS_PER_DAY)]
    scenario[_rows_in_windows(tx["terminal"], day, n_days, windows, TERMINAL_DAYS)] = 2
    # Scenario 3: each day d, 3 customers; a third of their rows on days d .. d+13 turn
    # fraudulent with 5x the amount (again if drawn on several days, as published).
    victims = [picks.ids(d, n_customers, CUSTOMERS_PER_DAY) for d in days]
    if victims:
        rows = np.flatnonzero(np.isin(tx["customer"], np.concatenate(victims)))
        key = tx["customer"][rows] * n_days + day[rows]
        by_key = np.argsort(key, kind="stable")
        rows, key = rows[by_key], key[by_key]
    for d, customers in zip(days, victims):
        lo = np.searchsorted(key, customers * n_days + d)
        hi = np.searchsorted(key, customers * n_days + min(d + CUSTOMER_DAYS, n_days))
        window = np.sort(np.concatenate([rows[:0]] + [rows[i:j] for i, j in zip(lo, hi)]))  # row order
        chosen = picks.rows(d, window, len(window) // 3)
        amount[chosen] *= 5
        scenario[chosen] = 3
    tx.update(day=day, amount=amount, scenario=scenario, fraud=(scenario > 0).astype(np.int64))


def _rows_in_windows(entity: np.ndarray, day: np.ndarray, n_days: int,
                     windows: list[tuple[int, int]], length: int) -> np.ndarray:
    """Rows whose (entity, day) falls in a window (entity, first day) of ``length`` days."""
    if not windows:
        return np.zeros(0, dtype=np.int64)
    ent, first = np.array(windows, dtype=np.int64).T
    picked = np.unique(ent)  # a few hundred entities: a small entity x day table
    slot = np.minimum(np.searchsorted(picked, entity), len(picked) - 1)
    rows = np.flatnonzero(picked[slot] == entity)
    depth = np.zeros((len(picked), n_days + 1), dtype=np.int64)  # +1 at start, -1 past end
    np.add.at(depth, (np.searchsorted(picked, ent), first), 1)
    np.add.at(depth, (np.searchsorted(picked, ent), np.minimum(first + length, n_days)), -1)
    covered = np.cumsum(depth, axis=1) > 0
    return rows[covered[slot[rows], day[rows]]]


def _frame(tx: dict[str, np.ndarray], start: dt.date) -> pl.DataFrame:
    epoch_us = (dt.datetime.combine(start, dt.time()) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    stamps = pl.Series(epoch_us + tx["seconds"] * 1_000_000, dtype=pl.Int64).cast(pl.Datetime("us"))
    return pl.DataFrame({
        "TRANSACTION_ID": np.arange(len(stamps), dtype=np.int64), "TX_DATETIME": stamps,
        "CUSTOMER_ID": tx["customer"], "TERMINAL_ID": tx["terminal"], "TX_AMOUNT": tx["amount"],
        "TX_TIME_SECONDS": tx["seconds"], "TX_TIME_DAYS": tx["day"],
        "TX_FRAUD": tx["fraud"], "TX_FRAUD_SCENARIO": tx["scenario"],
    }, schema=SCHEMA)
