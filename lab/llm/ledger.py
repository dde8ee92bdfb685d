"""The LLM ledger: every LLM call, answered or refused, in ``data/llm_ledger.db``.

For the gateway (engineer D), the recorder's signature is::

    LLMLedger.record(completion: Completion | None, request: ChatRequest, *, status: str,
                     prompt: dict | None = None, key: str | None = None, error: str | None = None,
                     latency_ms: float | None = None, request_id: str | None = None) -> int

``status`` is ``ok`` for an answer (``completion`` given; ``completion.cached`` marks a
cache hit), else why there is none: ``refused_rate``, ``refused_spend``,
``refused_budget``, ``error``, ... (lowercase words and ``_``). ``prompt`` is
``{"name", "version", "hash"}`` (``Prompt.ledger_fields()``), ``key`` the rate-limit key
or API key id. ``request_id`` defaults to ``request.metadata["request_id"]``. Returns the
row id.

One row per call: time (UTC ISO), request id, user, key id, prompt name, version and hash,
provider, model, tokens in and out (the provider's tokenizer), cost in US dollars,
latency in milliseconds, cached, status, error, the output text, and the flag
(``experiment``) and ``variant`` that picked the prompt version, if one did. The table is
append-only: triggers refuse UPDATE and DELETE, so it answers "what did the model say, to
whom, under which prompt version" for any day. Through ``lab.sqlite`` (WAL, named
migrations of owner ``llm_ledger``); one connection shared by a process's threads.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.llm.types import ChatRequest, Completion
from lab.sqlite import Database, Migration, append_only, insert, run_script, utc_now

__all__ = ["LLMLedger", "ledger_path", "OWNER", "STATUSES"]

OWNER = "llm_ledger"
STATUSES = ("ok", "refused_rate", "refused_spend", "refused_budget", "error")
"""The statuses the platform writes; others of the same shape are accepted (a plugin's)."""
_STATUS = re.compile(r"^[a-z][a-z_]{0,31}$")


def ledger_path(config) -> Path:
    """``data/llm_ledger.db`` under the lab's data folder."""
    return config.data_path / "llm_ledger.db"


def _create(conn) -> None:
    run_script(conn, """
        CREATE TABLE llm_calls (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            request_id TEXT,
            user TEXT,
            key_id TEXT,
            prompt_name TEXT,
            prompt_version INTEGER,
            prompt_hash TEXT,
            provider TEXT,
            model TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            latency_ms REAL,
            cached INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            error TEXT,
            finish_reason TEXT,
            output TEXT
        );
        CREATE INDEX llm_calls_at ON llm_calls (at);
        CREATE INDEX llm_calls_prompt ON llm_calls (prompt_name, prompt_version);
    """ + append_only("llm_calls"))


def _experiments(conn) -> None:
    """The flag (``experiment``) and ``variant`` that chose the call's prompt version."""
    run_script(conn, """
        ALTER TABLE llm_calls ADD COLUMN experiment TEXT;
        ALTER TABLE llm_calls ADD COLUMN variant TEXT;
        CREATE INDEX llm_calls_experiment ON llm_calls (experiment, variant);
    """)


MIGRATIONS = [Migration("0001_llm_calls", _create), Migration("0002_experiment_variant", _experiments)]


class LLMLedger:
    """The ledger file at ``path``, opened (and migrated) once; safe to share between
    threads. Each ``record`` is one committed write (an LLM call takes far longer)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = Database.open_migrated(self.path, OWNER, MIGRATIONS, what="LLM ledger")
        self._closed = threading.Event()

    @classmethod
    def for_lab(cls, config) -> "LLMLedger":
        return cls(ledger_path(config))

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._db.close()

    def __enter__(self) -> "LLMLedger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def record(self, completion: Completion | None, request: ChatRequest, *, status: str,
               prompt: dict | None = None, key: str | None = None, error: str | None = None,
               latency_ms: float | None = None, request_id: str | None = None) -> int:
        """Append one call (see the module for the fields); returns its row id."""
        if not isinstance(status, str) or not _STATUS.match(status):
            raise LabError(f"an LLM ledger status must be a lowercase word such as {', '.join(STATUSES)}; "
                           f"got {status!r}")
        if status == "ok" and completion is None:
            raise LabError("an LLM ledger row with status 'ok' needs the completion it answered")
        prompt = prompt or {}
        metadata = request.metadata or {}
        row = {
            "at": utc_now(),
            "request_id": request_id or metadata.get("request_id"),
            "user": request.user,
            "key_id": key,
            "prompt_name": prompt.get("name") or metadata.get("prompt_name"),
            "prompt_version": prompt.get("version") or metadata.get("prompt_version"),
            "prompt_hash": prompt.get("hash") or metadata.get("prompt_hash"),
            "provider": completion.provider if completion is not None else metadata.get("provider"),
            "model": completion.model if completion is not None else request.model,
            "input_tokens": completion.usage.input_tokens if completion is not None else 0,
            "output_tokens": completion.usage.output_tokens if completion is not None else 0,
            "cost_usd": float(completion.cost_usd) if completion is not None else 0.0,
            "latency_ms": latency_ms if latency_ms is not None else (
                completion.latency_ms if completion is not None else None),
            "cached": int(bool(completion.cached)) if completion is not None else 0,
            "status": status,
            "error": error,
            "finish_reason": completion.finish_reason if completion is not None else None,
            "output": completion.text if completion is not None else None,
            "experiment": metadata.get("experiment"),
            "variant": metadata.get("variant"),
        }
        with self._db.write("record an LLM call") as conn:
            return insert(conn, "llm_calls", row)

    __call__ = record  # a ledger is itself a recorder

    def calls(self, limit: int = 20, *, prompt: str | None = None, status: str | None = None) -> list[dict]:
        """The newest ``limit`` rows, newest first (one prompt's, one status's if given)."""
        where, params = self._where(prompt, status)
        return self._db.rows(f"SELECT * FROM llm_calls {where} ORDER BY id DESC LIMIT ?", [*params, int(limit)])

    def totals(self, *, prompt: str | None = None, status: str | None = None) -> list[dict]:
        """Per prompt name and version: calls, answered, cached, refused, errors, tokens in
        and out, cost (USD) and mean and max latency (ms)."""
        where, params = self._where(prompt, status)
        return self._db.rows(f"""
            SELECT prompt_name, prompt_version, COUNT(*) AS calls,
                   SUM(status = 'ok') AS ok, SUM(cached) AS cached,
                   SUM(status LIKE 'refused%') AS refused, SUM(status = 'error') AS errors,
                   SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
                   ROUND(SUM(cost_usd), 6) AS cost_usd,
                   AVG(latency_ms) AS mean_latency_ms, MAX(latency_ms) AS max_latency_ms
            FROM llm_calls {where}
            GROUP BY prompt_name, prompt_version ORDER BY prompt_name, prompt_version""", params)

    @staticmethod
    def _where(prompt: str | None, status: str | None) -> tuple[str, list]:
        clauses, params = [], []
        if prompt is not None:
            clauses.append("prompt_name = ?")
            params.append(prompt)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params
