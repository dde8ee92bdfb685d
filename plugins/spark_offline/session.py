"""One SparkSession per process, started on first use and stopped at exit.

pyspark is imported here, inside ``spark_session``, and nowhere at module level, so a
lab without ``[tool.lab.spark]`` never loads it (nor starts a JVM). Spark allows one
SparkContext per process: the first caller's master and static settings hold for the
process; a later caller asking another master gets a ``LabError`` instead of silently
the first one's.
"""

from __future__ import annotations

import atexit
import os
import threading

from lab.errors import LabError
from plugins.spark_offline.settings import SparkSettings

_LOCK = threading.Lock()
_SESSION = None
_MASTER: str | None = None


def spark_session(settings: SparkSettings):
    """The process's SparkSession, started with ``settings`` if none runs yet."""
    global _SESSION, _MASTER
    with _LOCK:
        if _SESSION is not None and _SESSION.sparkContext._jsc is not None:
            if settings.master != _MASTER:
                raise LabError(f"this process already runs Spark on {_MASTER!r}, not {settings.master!r}: one "
                               "SparkContext per process; use one [tool.lab.spark] master per process")
            return _SESSION
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise LabError("the Spark offline store needs pyspark: pip install -c requirements.lock '.[spark]' "
                           "(and Java 17 or newer on PATH)") from None
        conf = settings.spark_conf()
        if "spark.pyspark.python" in conf:  # pyspark reads the workers' Python from the environment
            os.environ.setdefault("PYSPARK_PYTHON", conf["spark.pyspark.python"])
        builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
        for key, value in conf.items():
            builder = builder.config(key, value)
        try:
            session = builder.getOrCreate()
        except Exception as exc:  # the JVM did not start: no Java, a bad master URL...
            raise LabError(f"Spark did not start on {settings.master!r}: {exc}; check Java 17+ "
                           "(java -version) and [tool.lab.spark] master") from None
        session.sparkContext.setLogLevel("ERROR")
        if _SESSION is None:
            atexit.register(stop_session)
        _SESSION, _MASTER = session, settings.master
        return session


def stop_session() -> None:
    """Stop the process's session (at exit; tests call it to end their JVM)."""
    global _SESSION, _MASTER
    with _LOCK:
        if _SESSION is not None:
            try:
                _SESSION.stop()
            finally:
                _SESSION, _MASTER = None, None
