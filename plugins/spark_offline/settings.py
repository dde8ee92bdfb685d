"""``[tool.lab.spark]``: where Spark runs and where the offline store keeps its Parquet.

Read by the plugin only (``config.section("spark")``); a lab turns the plugin on by
having the table at all::

    [tool.lab.spark]
    master = "local[2]"            # or spark://host:7077, yarn, k8s://...: any master URL
    warehouse = "data/spark"       # the sources' Parquet, relative to the lab (or absolute)
    # app_name = "lab"
    [tool.lab.spark.conf]          # any Spark setting, applied when the session starts
    # "spark.sql.shuffle.partitions" = 8
    # "spark.executor.memory" = "4g"

Unquoted dotted keys (``spark.sql.shuffle.partitions = 8``) are TOML sub-tables; they
are joined back into one Spark key, so both spellings work.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lab.config import build_section
from lab.errors import ConfigError

WHERE = "tool.lab.spark"

LOCAL_DEFAULTS = {
    # One machine: a handful of shuffle partitions, not Spark's 200 (each costs a task).
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.ui.enabled": "false",
}
"""Defaults for a ``local[...]`` master only; ``[tool.lab.spark.conf]`` overrides them."""

DEFAULTS = {
    # Every instant the store hands Spark is epoch microseconds (naive = UTC); the session
    # zone only matters to a user's own SQL, and UTC keeps it the same on every machine.
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
"""Defaults for every master; ``[tool.lab.spark.conf]`` overrides them."""


@dataclass(frozen=True)
class SparkSettings:
    """The ``[tool.lab.spark]`` table, checked (unknown keys and wrong types: ConfigError)."""

    master: str = "local[2]"
    """The Spark master URL: ``local[N]`` (N worker threads in this process's JVM),
    ``spark://HOST:7077``, ``yarn``, ``k8s://...``. On a cluster, ``warehouse`` must be a
    folder the driver and every executor see at the same path (a shared mount)."""
    warehouse: str = "data/spark"
    """The folder of the sources' Parquet (one sub-folder per source), relative to the lab
    root unless absolute."""
    app_name: str = "lab"
    """The Spark application's name (the cluster's UI lists it)."""
    conf: Mapping[str, str] = field(default_factory=dict)
    """``[tool.lab.spark.conf]``: Spark settings, over ``DEFAULTS`` (and ``LOCAL_DEFAULTS``)."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> "SparkSettings":
        values = dict(table or {})
        conf = values.pop("conf", {})
        if not isinstance(conf, dict):
            raise ConfigError(f'[{WHERE}] conf must be a table of Spark settings such as '
                              f'{{ "spark.sql.shuffle.partitions" = 8 }}, got {conf!r}')
        settings = build_section(cls, values, WHERE)
        if not settings.master.strip():
            raise ConfigError(f'[{WHERE}] master is empty; write "local[2]" or a cluster URL such as '
                              '"spark://host:7077"')
        if not settings.warehouse.strip():
            raise ConfigError(f'[{WHERE}] warehouse is empty; write a folder such as "data/spark"')
        return dataclasses.replace(settings, conf=_flatten(conf, ""))

    def spark_conf(self) -> dict[str, str]:
        """Every setting the session starts with: the defaults, then ``conf``."""
        out = dict(DEFAULTS)
        if self.master.startswith("local"):
            out.update(LOCAL_DEFAULTS)
            # Python workers run this interpreter (its venv has lab and the plugins); on a
            # cluster the executors' own Python is the cluster's affair (spark.pyspark.python).
            out["spark.pyspark.python"] = sys.executable
        out.update(self.conf)
        return out

    def warehouse_path(self, root: Path) -> Path:
        path = Path(self.warehouse).expanduser()
        return path if path.is_absolute() else Path(root) / path


def _flatten(table: Mapping[str, Any], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)) or value is None:
            raise ConfigError(f"[{WHERE}.conf] {name} must be a string, number or boolean, got {value!r}")
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out
